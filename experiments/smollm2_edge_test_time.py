"""What one ACDC edge test costs on SmolLM2-135M-Instruct, and how much of it is the unembedding.

    python experiments/smollm2_edge_test_time.py [--threads 2] [--edges 8]

IOI, 50 prompts (seed 0), logit difference. For edges into layers 29, 28 and 20 (the last
``--edges`` of each in ACDC's order), in the full circuit (every edge downstream kept: the
slowest state), the median time of one test (`PatchState.propagate` of the circuit minus that
edge, then the metric) with the logits over every vocabulary column and over the answers'
columns only (`Metric.narrow`, what `run_acdc` does); and the time of the full unembedding of
50 rows alone. Writes experiments/results/smollm2_edge_test_time.{md,json}.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from smollm2_common import ROOT, load, write

import acdc
from acdc.api import prepare


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--edges", type=int, default=8)
    ap.add_argument("--layers", type=int, nargs="+", default=[29, 28, 20])
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args(argv)
    model, tf = load(args.threads)
    task = acdc.tasks.ioi(model, 50, seed=0)
    p, metric, batch = prepare(model, task, metric="logit_diff")
    g = p.graph
    cols, narrowed = metric.narrow(batch)
    assert cols is not None
    rows = []
    for layer in args.layers:
        ids = (g.dst_layer[g.edge_dst] == layer).nonzero().squeeze(1).flip(0)[: args.edges].tolist()
        ms = {}
        for name, vocab, b in (("every column", None, batch), ("answers' columns", cols, narrowed)):
            state = p.state(vocab)
            times = []
            for e in ids:
                cand = state.keep.clone()
                cand[g.edge_dst[e], g.edge_src[e]] = False
                t0 = time.perf_counter()
                metric.loss(state.propagate(cand).logits[0], b)
                times.append(time.perf_counter() - t0)
            ms[name] = 1000 * statistics.median(times)
        rows.append((layer, ms["every column"], ms["answers' columns"]))
    x = torch.randn(50, tf.arch.d_model, dtype=tf.dtype)
    tf.unembed(x)
    t0 = time.perf_counter()
    for _ in range(10):
        tf.unembed(x)
    unembed_ms = 100 * (time.perf_counter() - t0)
    lines = ["# One ACDC edge test on SmolLM2-135M-Instruct (IOI, 50 prompts, logit difference)", "",
             f"`python experiments/smollm2_edge_test_time.py --threads {args.threads} --edges {args.edges}`: median of "
             f"{args.edges} edges into each layer, full circuit (every edge downstream kept). The answers' columns: "
             f"{len(cols)} of {tf.arch.d_vocab:,}. The full unembedding of 50 rows alone: {unembed_ms:.1f} ms.", "",
             "| destination layer | every column (ms) | answers' columns (ms) | speed-up |", "|---|---|---|---|"]
    lines += [f"| {layer} | {a:.1f} | {b:.1f} | {a / b:.1f}x |" for layer, a, b in rows]
    data = {"answer_columns": len(cols), "unembed_50_rows_ms": round(unembed_ms, 2),
            "ms_per_test": {str(layer): {"every_column": round(a, 2), "answer_columns": round(b, 2)} for layer, a, b in rows}}
    write(args.out, "smollm2_edge_test_time", data, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
