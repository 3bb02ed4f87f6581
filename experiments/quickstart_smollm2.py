"""The README's quickstart on the real SmolLM2-135M-Instruct, timed step by step.

    python experiments/quickstart_smollm2.py                  # the README's numbers (20 prompts)
    python experiments/quickstart_smollm2.py --fresh-cache    # also time the first load (GGUF -> cache)

Writes experiments/results/quickstart_smollm2.md and .json (or to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-prompts", type=int, default=20)
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--prefilter", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fresh-cache", action="store_true", help="load into an empty cache first (times the conversion)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    import acdc

    torch.set_num_threads(args.threads)
    times: dict[str, float] = {}
    if args.fresh_cache:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["ACDC_CACHE"] = cache
            t = time.perf_counter()
            acdc.load_model("smollm2-135m-instruct")
            times["first load (empty cache)"] = time.perf_counter() - t
        os.environ.pop("ACDC_CACHE")
    t = time.perf_counter()
    model = acdc.load_model("smollm2-135m-instruct")
    times["load"] = time.perf_counter() - t
    task = acdc.tasks.ioi(model, args.n_prompts)
    t = time.perf_counter()
    circuit = acdc.discover(model, task, threshold=args.threshold, prefilter=args.prefilter, progress=not args.no_progress)
    times["discover"] = time.perf_counter() - t
    t = time.perf_counter()
    f = acdc.faithfulness(model, task, circuit, progress=not args.no_progress)
    times["faithfulness"] = time.perf_counter() - t
    result = {
        "n_prompts": args.n_prompts, "threshold": args.threshold, "prefilter": args.prefilter, "threads": args.threads,
        "graph_edges": circuit.graph.n_edges, "circuit_edges": circuit.n_edges, "n_tested": circuit.settings["n_tested"],
        "normalized": f.normalized, "ratio": f.ratio, "seconds": {k: round(v, 1) for k, v in times.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quickstart_smollm2.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# The README quickstart on SmolLM2-135M-Instruct (`python experiments/quickstart_smollm2.py`)", "",
        f"IOI, {args.n_prompts} prompts, ACDC at threshold {args.threshold} on the top {args.prefilter:.0%} of edges "
        f"by EAP-IG (approximate), {args.threads} threads.", "",
        f"Circuit: {circuit.n_edges} of {circuit.graph.n_edges:,} edges ({result['n_tested']} tested); on the same "
        f"prompts it keeps logit difference ratio {f.ratio:.3f}, normalized {f.normalized:.3f}.", "",
        "| step | seconds |", "|---|---|", *[f"| {k} | {v:.1f} |" for k, v in times.items()],
    ]
    (args.out / "quickstart_smollm2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
