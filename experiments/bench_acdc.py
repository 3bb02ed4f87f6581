"""ACDC speed on a GPT-2-small-shaped model with random weights (no download).

Measures, on 50 prompts x 15 tokens (random ids; corrupt = other random ids):
  - one full forward pass of acdc's engine (and of the TransformerLens bridge, for reference);
  - ACDC edges per second for edges into layers 11, 6 and 0, in two circuit states:
      worst: the full circuit (every edge downstream kept, nothing can be skipped) - the state
             every test sees in a library that reruns the model from scratch;
      acdc:  the state a real ACDC run is in when it reaches that layer (`--acdc-run`, slow);
  - the edge-count-weighted average over those layers (total edges / total time), and an
    estimate of a full one-threshold ACDC run from per-layer timings;
  - peak resident memory.
Prints one line and writes JSON (default experiments/results/bench_acdc.json).

    python experiments/bench_acdc.py                 # ~2 minutes on 2 CPU cores
    python experiments/bench_acdc.py --edges 40 --threads 2
"""

from __future__ import annotations

import argparse
import json
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

from peak_memory import peak_kib  # noqa: E402

import acdc  # noqa: E402
from acdc.api import make_batch  # noqa: E402
from acdc.metrics import resolve_metric  # noqa: E402


def gpt2_small_random(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return acdc.load_model(GPT2LMHeadModel(GPT2Config()))


def peak_rss_gb() -> float:
    return peak_kib() / 2**20


def time_edges(patcher, metric, batch, layer: int, n_edges: int, narrow: bool = False) -> tuple[float, int]:
    """Seconds per edge for the last ``n_edges`` edges (in ACDC order) into ``layer``, full circuit;
    ``narrow``: the logits of the metric's columns only, as `run_acdc` does (`Metric.narrow`)."""
    g = patcher.graph
    vocab, batch = metric.narrow(batch) if narrow else (None, batch)
    state = patcher.state(vocab)
    ids = (g.dst_layer[g.edge_dst] == layer).nonzero().squeeze(1).flip(0)[:n_edges].tolist()
    edge_dst, edge_src = g.edge_dst.tolist(), g.edge_src.tolist()
    # warm-up
    cand = state.keep.clone()
    cand[edge_dst[ids[0]], edge_src[ids[0]]] = False
    metric.loss(state.propagate(cand).logits[0], batch)
    t0 = time.perf_counter()
    for e in ids:
        cand = state.keep.clone()
        cand[edge_dst[e], edge_src[e]] = False
        metric.loss(state.propagate(cand).logits[0], batch)
    return (time.perf_counter() - t0) / len(ids), len(ids)


def real_acdc(patcher, metric, batch, threshold: float, seconds: float) -> dict:
    """Time a real ACDC run (circuit state as ACDC leaves it) for ``seconds``, per layer."""
    from acdc.algorithms.acdc import run_acdc

    g = patcher.graph
    layer_of = g.dst_layer[g.edge_dst].tolist()
    stats: dict[int, list[float]] = {}
    t_start = last = time.perf_counter()

    def on_edge(e: int, delta: float, removed: bool) -> bool:
        nonlocal last
        now = time.perf_counter()
        stats.setdefault(layer_of[e], [0, 0.0])
        stats[layer_of[e]][0] += 1
        stats[layer_of[e]][1] += now - last
        last = now
        return now - t_start > seconds

    c = run_acdc(patcher, metric, batch, threshold=threshold, callback=on_edge).selection()
    total = time.perf_counter() - t_start
    tested = sum(v[0] for v in stats.values())
    return {
        "threshold": threshold,
        "seconds": total,
        "tested": tested,
        "edges_per_s": tested / total,
        "kept_so_far": c.n_edges,
        "finished": not c.settings.get("stopped_early", False),
        "layers": {k: {"tested": v[0], "edges_per_s": v[0] / v[1]} for k, v in sorted(stats.items(), reverse=True)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=15)
    ap.add_argument("--layers", type=int, nargs="+", default=[11, 6, 0])
    ap.add_argument("--edges", type=int, default=30, help="edges timed per layer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--metric", default="kl")
    ap.add_argument("--acdc-seconds", type=float, default=0, help="also time a real ACDC run for this long")
    ap.add_argument("--acdc-threshold", type=float, default=1e-4)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bench_acdc.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = gpt2_small_random()
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, model.cfg.d_vocab, (args.prompts, args.tokens), generator=gen)
    corrupt = torch.randint(0, model.cfg.d_vocab, (args.prompts, args.tokens), generator=gen)

    t0 = time.perf_counter()
    patcher = acdc.Patcher(model, clean, corrupt)
    setup_s = time.perf_counter() - t0
    metric = resolve_metric(args.metric)
    batch = make_batch(patcher)
    g = patcher.graph

    def best_of(fn, n=3):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    with torch.no_grad():
        fwd_engine = best_of(lambda: patcher.tf.run(clean))
        fwd_bridge = best_of(lambda: model(clean))

    per_layer = {}
    for layer in args.layers:
        sec, n = time_edges(patcher, metric, batch, layer, args.edges)
        n_into = int((g.dst_layer[g.edge_dst] == layer).sum())
        per_layer[layer] = {"s_per_edge": sec, "edges_per_s": 1 / sec, "edges_timed": n, "edges_into_layer": n_into}
    real = real_acdc(patcher, metric, batch, args.acdc_threshold, args.acdc_seconds) if args.acdc_seconds else None
    total_edges = sum(v["edges_into_layer"] for v in per_layer.values())
    total_time = sum(v["edges_into_layer"] * v["s_per_edge"] for v in per_layer.values())
    weighted = total_edges / total_time
    # full-run estimate: interpolate seconds per edge linearly in layer between measured layers
    measured = sorted(per_layer)
    est = 0.0
    for layer in range(g.n_layers + 1):
        n_into = int((g.dst_layer[g.edge_dst] == layer).sum())
        lo = max([m for m in measured if m <= layer], default=measured[0])
        hi = min([m for m in measured if m >= layer], default=measured[-1])
        if lo == hi:
            s = per_layer[lo]["s_per_edge"]
        else:
            f = (layer - lo) / (hi - lo)
            s = (1 - f) * per_layer[lo]["s_per_edge"] + f * per_layer[hi]["s_per_edge"]
        est += n_into * s
    result = {
        "model": "gpt2-small shape, random weights",
        "prompts": args.prompts,
        "tokens": args.tokens,
        "threads": args.threads,
        "metric": args.metric,
        "state": "worst case: full circuit (every downstream edge kept)",
        "setup_s": setup_s,
        "forward_engine_s": fwd_engine,
        "forward_bridge_s": fwd_bridge,
        "layers": per_layer,
        "weighted_edges_per_s": weighted,
        "full_run_estimate_s": est,
        "real_acdc": real,
        "peak_rss_gb": peak_rss_gb(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    layers_txt = " ".join(f"L{k}={v['edges_per_s']:.2f}/s" for k, v in per_layer.items())
    if real:
        print(f"real ACDC run (threshold {real['threshold']}, {real['seconds']:.0f}s): {real['tested']} edges tested, "
              f"{real['edges_per_s']:.1f}/s; per layer: " + " ".join(f"L{k}={v['edges_per_s']:.1f}/s" for k, v in real["layers"].items()))
    print(
        f"ACDC edges/s ({args.threads} threads, {args.prompts}x{args.tokens}, worst case): {layers_txt} "
        f"weighted={weighted:.2f}/s full-run~{est / 3600:.1f}h forward={fwd_engine:.2f}s "
        f"(bridge {fwd_bridge:.2f}s) peak_rss={result['peak_rss_gb']:.2f}GB -> {out}"
    )


if __name__ == "__main__":
    main()
