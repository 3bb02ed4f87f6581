#!/usr/bin/env bash
# Set up everything acdc needs on a fresh Debian/Ubuntu machine (idempotent):
# the graphviz `dot` binary, a virtual environment in .venv with the CPU build of torch,
# and acdc itself with its dev extras. Safe to run again; it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dot >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing graphviz (dot) with apt-get" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz) >/dev/null 2>&1 \
      || echo "setup: could not install graphviz; images will not render (apt-get install graphviz)" >&2
  else
    echo "setup: graphviz's dot not found; install it (apt-get install graphviz / brew install graphviz) to render images" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.acdc-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # The CPU build of torch first: an unpinned torch would pull gigabytes of CUDA packages.
  .venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import acdc, torch, transformer_lens" 
  touch "$stamp"
fi
