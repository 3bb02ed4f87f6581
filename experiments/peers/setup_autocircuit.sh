#!/usr/bin/env bash
# AutoCircuit in its own virtual environment (it needs an older TransformerLens than acdc).
# The pins are the ones that worked on this machine (see ../shared/peers.md); CPU torch first.
set -euo pipefail
VENV=${1:-experiments/.venv-autocircuit}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import auto_circuit" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "torch==2.13.0"
"$VENV/bin/pip" install -q --disable-pip-version-check auto-circuit==1.0.1 attrs "transformer-lens==1.19.0" "pyarrow==21.0.0"
"$VENV/bin/pip" install -q --disable-pip-version-check "transformers==4.57.6" "numpy<2"
"$VENV/bin/pip" install -q --disable-pip-version-check "pandas<2.1" typeguard psutil
"$VENV/bin/python" -c "import auto_circuit, transformer_lens; print('auto-circuit ready')"
