# Two commands do everything on a fresh machine:
#   make demo   set up, then discover a small built-in model's circuit offline (prints it, saves JSON)
#   make test   set up, then run the test suite
.PHONY: setup demo test test-fast bench lint

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/python -m acdc.demo --out out/demo

test: setup
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q

test-fast: setup
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -m "not slow and not real"

bench: setup
	.venv/bin/python experiments/bench_acdc.py

lint: setup
	.venv/bin/ruff check acdc tests experiments
	.venv/bin/basedpyright
