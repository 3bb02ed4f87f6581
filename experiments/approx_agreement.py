"""How far the approximate mode (`discover(prefilter=f)`) strays from exact ACDC.

For each zoo model and a few thresholds, runs exact ACDC and the prefiltered run (only the top
fraction f of edges by |EAP-IG score| is tested), and reports the edges both keep, the edge
Jaccard index, the truth recovered by each, the number of tested edges and the time.

    python experiments/approx_agreement.py            # writes experiments/results/approx_agreement.{json,md}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import acdc

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = {"induction": [1e-4, 1e-2], "ioi": [1e-2, 0.1], "modular-sum": [1e-4, 1e-2]}


def compare(entry: acdc.zoo.ZooEntry, threshold: float, fraction: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    exact = acdc.discover(entry.model, entry.task, threshold=threshold, progress=False)
    t_exact = time.perf_counter() - t0
    t0 = time.perf_counter()
    approx = acdc.discover(entry.model, entry.task, threshold=threshold, progress=False, prefilter=fraction)
    t_approx = time.perf_counter() - t0
    a, b = set(exact.edges), set(approx.edges)
    return {
        "model": entry.name, "threshold": threshold, "prefilter": fraction,
        "exact_edges": len(a), "approx_edges": len(b), "both": len(a & b),
        "jaccard": len(a & b) / len(a | b) if a | b else 1.0,
        "exact_tpr": acdc.recovery(exact, entry.truth).edges.tpr, "approx_tpr": acdc.recovery(approx, entry.truth).edges.tpr,
        "exact_fpr": acdc.recovery(exact, entry.truth).edges.fpr, "approx_fpr": acdc.recovery(approx, entry.truth).edges.fpr,
        "tested_exact": int((~exact.scores.isnan()).sum()), "tested_approx": int((~approx.scores.isnan()).sum()),
        "seconds_exact": round(t_exact, 3), "seconds_approx": round(t_approx, 3),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    for name, thresholds in THRESHOLDS.items():
        entry = acdc.zoo.load(name)
        for t in thresholds:
            for f in args.fractions:
                rows.append(compare(entry, t, f))
                r = rows[-1]
                print(f"{name:12s} t={t:<7g} f={f:<5g} jaccard {r['jaccard']:.3f}  TPR {r['exact_tpr']:.2f}->{r['approx_tpr']:.2f}"
                      f"  FPR {r['exact_fpr']:.3f}->{r['approx_fpr']:.3f}  tested {r['tested_exact']}->{r['tested_approx']}")
    head = "| model | threshold | prefilter | edges exact / approx / both | Jaccard | TPR exact / approx | FPR exact / approx | tested exact / approx | seconds exact / approx |\n"
    head += "|---|---|---|---|---|---|---|---|---|\n"
    lines = [
        f"| {r['model']} | {r['threshold']:g} | {r['prefilter']:g} | {r['exact_edges']} / {r['approx_edges']} / {r['both']} | "
        f"{r['jaccard']:.3f} | {r['exact_tpr']:.2f} / {r['approx_tpr']:.2f} | {r['exact_fpr']:.3f} / {r['approx_fpr']:.3f} | "
        f"{r['tested_exact']} / {r['tested_approx']} | {r['seconds_exact']} / {r['seconds_approx']} |"
        for r in rows
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "approx_agreement.json").write_text(json.dumps(rows, indent=1))
    (args.out / "approx_agreement.md").write_text(head + "\n".join(lines) + "\n")
    print(f"wrote {args.out / 'approx_agreement.md'}")


if __name__ == "__main__":
    main()
