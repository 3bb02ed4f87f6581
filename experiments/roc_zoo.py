"""ACDC against planted ground truth: a threshold sweep on every zoo model.

For each zoo entry (hand-built model, its task, its planted edges; resample ablation, the
entry's metric), sweeps ACDC over a log grid of thresholds and reports edge and node AUC (both
the trapezoid and the ACDC paper's pessimistic staircase), the circuit at the best threshold
(largest TPR - FPR), the thresholds that recover exactly the planted edges, and the time.

    python experiments/roc_zoo.py                  # ~15 s on 2 CPU cores
    python experiments/roc_zoo.py --n-thresholds 40 --out experiments/results

Writes roc_zoo.json, roc_zoo.md (the table) and roc_zoo.png (ROC plots) under --out.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from roc_common import sweep_row, write  # noqa: E402

import acdc  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    ap.add_argument("--n-thresholds", type=int, default=22)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    for name in acdc.zoo.available():
        t0 = time.perf_counter()
        entry = acdc.zoo.load(name, seed=args.seed)
        build = time.perf_counter() - t0
        r = acdc.roc(
            entry.model, entry.task, truth=entry.truth, ablation=entry.ablation, n_thresholds=args.n_thresholds,
            progress=False, **({} if entry.graph is None else {"graph": entry.graph, "transcoders": entry.transcoders}),  # feature-chain: its graph, transcoders
        )
        rows.append(sweep_row(name, r, build))
    extra = {"machine": platform.platform(), "threads": args.threads, "seed": args.seed, "torch": torch.__version__}
    write(rows, args.out, "roc_zoo", "ACDC on the planted-circuit zoo (resample ablation)", extra)


if __name__ == "__main__":
    main()
