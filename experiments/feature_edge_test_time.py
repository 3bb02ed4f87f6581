"""What one ACDC edge test costs on a feature graph, against the same edge's test on the plain graph.

    python experiments/feature_edge_test_time.py [--model gpt2-shape|smollm2] [--threads 2] [--edges 6]
    python experiments/feature_edge_test_time.py --graph positions    # a token-positional graph instead

The model: a GPT-2-small-shaped model with random weights and 50 prompt pairs of 15 random tokens
(`gpt2_shape.py`), or the real SmolLM2-135M-Instruct on 20 IOI prompts (seed 0). Transcoders on
every layer, with random weights shaped like the ones acdc trains on SmolLM2 (TopK, k=32, a skip
path, 8 x d_model features; ``--activation relu`` for ReLU ones; trained weights cannot be had
offline here, and a test's cost depends on the shapes and on which nodes change, not on what the
features mean); the feature graph holds the ``--top`` most active features of each layer on the
task's prompts, an error and a skip node per layer. For edges that both graphs have (heads and the
input into heads and MLP inputs) into an early, a middle and a late layer (the last ``--edges`` of
each in ACDC's order), in the full circuit (every edge downstream kept: the slowest state), the
median time of one test: `reference_state(vocab).propagate` of the circuit minus that edge, then the
metric (logit difference, the answers' columns only, as `run_acdc` does). The script uses only the
public surface that older versions have too, so a clean clone of an older commit runs it as well
(the before/after columns of the note). Writes experiments/results/feature_edge_test_time_{model}.{md,json}.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from gpt2_shape import RESULTS, random_model_and_task

import acdc
from acdc.api import prepare
from acdc.model import Transformer
from acdc.transcoders import ModelInfo, Transcoder, TranscoderConfig, TranscoderSet


def random_transcoders(tf: Transformer, activation: str, width: int, k: int, seed: int = 0) -> TranscoderSet:
    """A transcoder on every layer with random weights (encoder columns and decoder rows of unit scale)."""
    gen = torch.Generator().manual_seed(seed)
    d = tf.arch.d_model
    out = {}
    for layer in range(tf.arch.n_layers):
        tc = Transcoder(TranscoderConfig(d, width, activation, k if activation == "topk" else None, True))
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(d, width, generator=gen) / d**0.5)
            tc.b_enc.fill_(-0.5 if activation != "topk" else 0.0)  # ReLU: a sparse code
            tc.W_dec.copy_(torch.randn(width, d, generator=gen) / width**0.5)
            assert tc.W_skip is not None
            tc.W_skip.copy_(torch.randn(d, d, generator=gen) / d)
        out[layer] = tc
    return TranscoderSet(out, ModelInfo.of(tf, "random (feature_edge_test_time.py)"), source="random weights")


def model_and_task(name: str) -> tuple[Any, acdc.Task]:
    """The model and prompts these scripts time: SmolLM2 on 20 IOI prompts, or the GPT-2-small-shaped random model."""
    if name == "smollm2":
        model = acdc.load_model("smollm2-135m-instruct")
        return model, acdc.tasks.ioi(model, 20, seed=0)
    return random_model_and_task(12)


def median_test_ms(p, metric, batch, edges: list[tuple[int, ...]]) -> float:
    """Median milliseconds of one edge test from the full circuit, over ``edges`` ((dst row, src index) or,
    in a positional graph, (dst row, src index, position))."""
    vocab, narrowed = metric.narrow(batch)
    state = p.reference_state(vocab)
    times = []
    for at in [edges[0], *edges]:  # the first test once more as a warm-up
        cand = state.keep.clone()
        cand[at] = False
        t0 = time.perf_counter()
        metric.loss(state.propagate(cand).logits[0], narrowed)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[1:])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", choices=["gpt2-shape", "smollm2"], default="gpt2-shape")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--edges", type=int, default=6, help="edges timed per destination layer")
    ap.add_argument("--layers", type=int, nargs="*", help="destination layers (default: 1, the middle one, the last)")
    ap.add_argument("--graph", choices=["features", "positions"], default="features",
                    help="features: transcoders on every layer; positions: every token a position (the edge at the last token)")
    ap.add_argument("--activation", choices=["topk", "relu"], default="topk")
    ap.add_argument("--top", type=int, default=64, help="features per layer in the feature graph")
    ap.add_argument("--label", default="", help="a name for this code version in the results (e.g. before, after)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, task = model_and_task(args.model)
    tf = Transformer.from_bridge(model)
    a = tf.arch
    plain = acdc.Graph.from_model(model)
    n_tok = int(task.clean.shape[1])
    if args.graph == "features":
        ts = random_transcoders(tf, args.activation, 8 * a.d_model, 32)
        chosen = acdc.active_features(model, ts, task, top=args.top)
        feats = acdc.Graph.from_model(model, transcoders=ts, features=chosen)
        # the dictionary goes to the engine (older versions read it off the graph and take no transcoders=)
        given = {"transcoders": ts} if "transcoders" in inspect.signature(prepare).parameters else {}
        fp, _, _ = prepare(model, task, metric="logit_diff", graph=feats, **given)
    else:
        chosen = {}
        feats = acdc.Graph.from_model(model, positions=[str(i) for i in range(n_tok)])
        fp, _, _ = prepare(model, task, metric="logit_diff", graph=feats, positions="tokens")
    layers = args.layers or [1, a.n_layers // 2, a.n_layers - 1]
    pp, metric, batch = prepare(model, task, metric="logit_diff", graph=plain)
    rows = []
    for layer in layers:
        # edges of both graphs (sources: the input and heads) into this layer, the last ones in ACDC's order
        both = [e for e in plain.edges if e.dst.node.layer == layer and e.src.name in feats.src_index
                and e.dst.node.name != "logits"][-args.edges:]
        on_plain = [(plain.dst_index[e.dst.name], plain.src_index[e.src.name]) for e in both]
        on_feats = [(feats.dst_index[e.dst.name], feats.src_index[e.src.name]) + ((n_tok - 1,) if args.graph == "positions" else ())
                    for e in both]
        t_plain = median_test_ms(pp, metric, batch, on_plain)
        t_feats = median_test_ms(fp, metric, batch, on_feats)
        rows.append({"layer": layer, "edges": [e.name for e in both], "plain_ms": round(t_plain, 2),
                     "other_ms": round(t_feats, 2), "ratio": round(t_feats / t_plain, 2)})
        print(f"layer {layer}: plain {t_plain:.1f} ms, {args.graph} graph {t_feats:.1f} ms ({t_feats / t_plain:.2f}x)", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    n_feat = sum(len(v) for v in chosen.values())
    data = {"model": args.model, "graph": args.graph, "label": args.label, "commit": commit, "activation": args.activation, "top": args.top,
            "features": n_feat, "plain_edges": plain.n_edges, "feature_edges": feats.n_edges,
            "prompts": int(task.clean.shape[0]), "tokens": int(task.clean.shape[1]), "layers": rows,
            "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}}
    what = (f"random {args.activation} skip transcoders ({8 * a.d_model} features) on every layer, {n_feat} features in the "
            f"graph ({args.top} per layer)" if args.graph == "features" else f"every token a position, the edge at token {n_tok - 1}")
    lines = [f"# One ACDC edge test: {args.graph} graph against plain graph ({args.model}{', ' + args.label if args.label else ''})", "",
             f"`python experiments/feature_edge_test_time.py --model {args.model} --graph {args.graph} --threads {args.threads} "
             f"--edges {args.edges} --activation {args.activation} --top {args.top}` at commit {commit}: {data['prompts']} prompts x "
             f"{data['tokens']} tokens; {what}; {plain.n_edges:,} edges plain, {feats.n_edges:,} in the other graph. Median of "
             f"{args.edges} edges per layer from the full circuit.", "",
             f"| destination layer | plain graph (ms) | {args.graph} graph (ms) | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['plain_ms']:.1f} | {r['other_ms']:.1f} | {r['ratio']:.2f}x |" for r in rows]
    stem = (f"feature_edge_test_time_{args.model}_{args.activation}" if args.graph == "features"
            else f"positional_edge_test_time_{args.model}") + (f"_{args.label}" if args.label else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
