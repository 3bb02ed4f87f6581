#!/usr/bin/env bash
# acdc's reader of EleutherAI clt-training's cross-layer transcoders against folders and outputs made by its own code,
# in its own venv (made here if missing). Writes experiments/results/clt_training_reader.md.
#   bash experiments/peers/check_clt_training_reader.sh [SOURCE]     (run from the repository root, after make setup)
# SOURCE: a clt-training checkout or git directory (default: cloned from GitHub). clt-training is not on PyPI; the
# check runs its commit 998af17, the last before cf9821f ("Remove preacts completely"), whose CrossLayerRunner fails on
# any CLT of more than one layer (ForwardOutput is built with two arguments too many when an earlier layer decodes).
set -euo pipefail
commit=998af17
venv=/tmp/cltt-venv
src=$(mktemp -d)
given=${1:-}
if [ -z "$given" ]; then
  git clone -q https://github.com/EleutherAI/clt-training "$src/repo" && git -C "$src/repo" archive "$commit" | tar -x -C "$src"
elif [ -d "$given/objects" ]; then  # a bare git directory (a mirror)
  git --git-dir "$given" archive "$commit" | tar -x -C "$src"
else
  git -C "$given" archive "$commit" | tar -x -C "$src"
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu || "$venv/bin/pip" install -q torch==2.13.0
  "$venv/bin/pip" install -q einops natsort simple-parsing safetensors huggingface-hub transformers triton numpy
fi
out=$(mktemp -d)
"$venv/bin/python" experiments/peers/clt_training_clt.py "$src" "$out" > /dev/null
echo "clt-training $commit ($(grep -m1 '^version' "$src/pyproject.toml" | tr -d ' "' | cut -d= -f2))" > "$out/version.txt"
.venv/bin/python experiments/peers/check_clt_training_reader.py "$out"
