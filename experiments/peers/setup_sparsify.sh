#!/usr/bin/env bash
# A side venv with EleutherAI sparsify (PyPI eai-sparsify 1.3.3) and the CPU torch, for experiments/peers/sparsify_transcoders.py.
set -euo pipefail
VENV=${1:-/tmp/sparsify-venv}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu || "$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q eai-sparsify==1.3.3 numpy
echo "sparsify venv ready: $VENV"
