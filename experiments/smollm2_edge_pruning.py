"""Edge Pruning on the real SmolLM2-135M-Instruct: IOI, a learned mask at a target fraction of edges.

    python experiments/smollm2_edge_pruning.py [--threads 2] [--steps 200] [--target 0.01] [--n-prompts 50]

`acdc.prune_edges` on IOI's discovery split (seed 0; logit difference, resample ablation, KL to the
full model as the training loss), then the circuit's faithfulness on the discovery prompts and on
the held-out split (the other templates and names, seed 1). Prints and writes the seconds per step,
the peak memory, the circuit's size and both faithfulness numbers to
experiments/results/smollm2_edge_pruning_t{target}_s{steps}.{md,json}. A run of a few steps
(``--steps 2``) measures the cost of a step with every gate open, the slowest.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from smollm2_common import ROOT, load, write

import acdc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--target", type=float, default=0.01)
    ap.add_argument("--n-prompts", type=int, default=50)
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args(argv)
    model, _ = load(args.threads)
    task = acdc.tasks.ioi(model, args.n_prompts, seed=0, split="discovery")
    held_out = acdc.tasks.ioi(model, args.n_prompts, seed=1, split="held-out")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    t0 = time.perf_counter()
    circuit = acdc.prune_edges(model, task, target=args.target, steps=args.steps, metric="logit_diff")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    f_in, f_out = acdc.faithfulness(model, task, circuit), acdc.faithfulness(model, held_out, circuit)
    data = {"steps": args.steps, "target": args.target, "prompts": args.n_prompts, "seconds": round(seconds, 1),
            "seconds_per_step": round(seconds / args.steps, 2), "rss_before_gb": round(base, 2), "peak_rss_gb": round(peak, 2),
            "edges": circuit.n_edges, "graph_edges": circuit.graph.n_edges,
            "faithfulness": {"discovery": f_in.normalized, "held_out": f_out.normalized}}
    md = [f"# Edge Pruning on SmolLM2-135M-Instruct (IOI, {args.n_prompts} discovery prompts)", "",
          f"`python experiments/smollm2_edge_pruning.py --threads {args.threads} --steps {args.steps} --target {args.target:g} "
          f"--n-prompts {args.n_prompts}`", "",
          f"| steps | seconds per step | peak memory (GB; before: {base:.2f}) | edges kept | normalized faithfulness, discovery | held-out |"
          , "|---|---|---|---|---|---|",
          f"| {args.steps} | {seconds / args.steps:.1f} | {peak:.2f} | {circuit.n_edges} | {f_in.normalized:.3f} | {f_out.normalized:.3f} |", ""]
    write(args.out, f"smollm2_edge_pruning_t{args.target:g}_s{args.steps}", data, "\n".join(md))


if __name__ == "__main__":
    main()
