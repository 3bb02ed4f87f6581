"""Feature circuits on the real SmolLM2-135M-Instruct, with the transcoders of experiments/smollm2_transcoders.py.

    python experiments/smollm2_feature_circuits.py [--threads 2]

1. Attribution graphs (`acdc.attribution_graph`) of an IOI prompt and an induction prompt (a repeated
   sentence whose second copy ends one word early: " pear", p = 0.57, not " apple", 0.18): time and
   memory on this CPU, size, replacement and completeness scores, pruned size (circuit-tracer's
   thresholds 0.8 / 0.98), the most influential features, and their pages over held-out text.
2. The IOI feature circuit: a feature graph of the features active on the task's prompts (the
   ``--top`` strongest per layer), EAP-IG-inputs scores, and how much of the logit difference the
   circuits of the top edges keep (normalized faithfulness under resample ablation), with the share
   of their edges that leave features, error nodes and heads.

Needs the transcoder set at ~/.cache/acdc/transcoders/smollm2-sotu (made by smollm2_transcoders.py;
``--transcoders`` for another). Writes experiments/results/smollm2_feature_circuits.{md,json},
smollm2_attribution_features.html (feature pages) and the pruned graphs in circuit-tracer's JSON
(``smollm2_attribution_{ioi,induction}.json``, pruned harder, 0.5 / 0.9, to stay small).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from smollm2_common import ROOT, load, write

import acdc
from acdc.loading import cache_dir
from acdc.transcoders import feature_pages, feature_report, text_stream


def rss_gb() -> float:
    """The process's peak resident memory so far, GB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def top_features(g: acdc.AttributionGraph, k: int) -> list[tuple[str, float]]:
    """The k features with the largest influence on the logits (circuit-tracer's node influence)."""
    
    influence = g.influence()[: g.n_features]
    order = influence.argsort(descending=True)[:k].tolist()
    return [(g.node_name(i), round(float(influence[i]), 4)) for i in order]


def graph_row(name: str, g: acdc.AttributionGraph, seconds: float, peak: float, base: float) -> dict:
    kept = g.prune()
    return {"prompt": name, "tokens": g.n_pos, "text": "".join(g.token_strs), "features": g.n_features, "nodes": g.n_nodes,
            "seconds": round(seconds, 1), "peak_rss_gb": round(peak, 2), "rss_before_gb": round(base, 2),
            "adjacency_gb": round(g.adjacency.numel() * 4 / 1e9, 2), "replacement": round(g.replacement_score, 3),
            "completeness": round(g.completeness_score, 3), "pruned_nodes": kept.n_nodes, "pruned_edges": kept.n_edges,
            "logits": [(s, round(float(p), 3)) for s, p in zip(g.logit_strs, g.logit_probs.tolist(), strict=True)][:5],
            "top_features": top_features(g, 10)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--transcoders", type=Path, default=cache_dir() / "transcoders" / "smollm2-sotu")
    ap.add_argument("--n-prompts", type=int, default=20, help="IOI prompts of the task circuit")
    ap.add_argument("--top", type=int, default=64, help="features per layer in the task's feature graph")
    ap.add_argument("--pages-sequences", type=int, default=128)
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 64, 128, 256], help="batch sizes to time on the IOI prompt")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args(argv)
    model, tf = load(args.threads)
    if not (args.transcoders / "config.json").exists():
        raise SystemExit(f"no transcoders at {args.transcoders}: run experiments/smollm2_transcoders.py first (or --transcoders DIR)")
    ts = acdc.load_transcoders(args.transcoders, model)

    # 1. attribution graphs of one IOI and one induction prompt
    ioi_prompt = model.to_tokens("When Mary and John went to the store, John gave a drink to")[0]
    ind_prompt = model.to_tokens("The lazy dog ate a green pear. The lazy dog ate a green")[0]  # -> " pear" (0.57)
    graphs, rows = {}, []
    for name, tokens in (("ioi", ioi_prompt), ("induction", ind_prompt)):
        base = rss_gb()
        t0 = time.perf_counter()
        g = acdc.attribution_graph(model, tokens, transcoders=ts, progress=False)
        seconds = time.perf_counter() - t0
        rows.append(graph_row(name, g, seconds, rss_gb(), base))
        g.to_json(args.out / f"smollm2_attribution_{name}.json", node_threshold=0.5, edge_threshold=0.9,
                  scan="acdc smollm2-sotu (TopK 4608, skip)")
        graphs[name] = g
        print(rows[-1])
    batch_times = {}  # after the graphs, so their memory is measured first
    for bs in args.batch_sizes:  # targets per backward pass: the speed knob (the graph is the same)
        t0 = time.perf_counter()
        acdc.attribution_graph(model, ioi_prompt, transcoders=ts, batch_size=bs, progress=False)
        batch_times[bs] = round(time.perf_counter() - t0, 1)
        print("batch", bs, batch_times[bs], "s")
    picks = []
    for r in rows:
        for n, _ in r["top_features"][:6]:
            layer, f = n.split("@")[0][1:].split(".f")
            if (int(layer), int(f)) not in picks:
                picks.append((int(layer), int(f)))
    heldout = text_stream("sotu-heldout", model.tokenizer, 128, seed=0)
    t0 = time.perf_counter()
    report = feature_report(tf, ts, None, picks, heldout, sequences=args.pages_sequences, tokenizer=model.tokenizer)
    pages_s = time.perf_counter() - t0
    feature_pages(report, args.out / "smollm2_attribution_features.html",
                  title="SmolLM2-135M: the most influential features of the IOI and induction attribution graphs")

    # 2. the IOI feature circuit
    task = acdc.tasks.ioi(model, args.n_prompts, seed=0)
    chosen = acdc.active_features(model, ts, task, top=args.top)
    graph = acdc.Graph.from_model(model, transcoders=ts, features=chosen)
    t0 = time.perf_counter()
    scores = acdc.attribute(model, task, method="eap-ig-inputs", graph=graph, progress=False)
    eap_s = time.perf_counter() - t0
    circuit_rows = []
    for k in (100, 300, 1000, 3000):
        c = scores.top(k)
        f = acdc.faithfulness(model, task, c)
        kinds = {"feature": 0, "error": 0, "skip": 0, "head": 0, "input": 0, "mlp": 0}
        for e in c.edges:
            kinds[str(graph.sources[graph.src_index[e.split("->")[0]]].kind)] += 1
        circuit_rows.append({"edges": k, "normalized": round(float(f.normalized), 3), **{f"from_{a}": b for a, b in kinds.items()}})
        print(circuit_rows[-1])
    top_nodes = sorted({e.split("->")[0] for e in scores.top(100).edges if ".f" in e.split("->")[0]})[:12]

    data = {"graphs": rows, "batch_seconds": batch_times, "pages_seconds": round(pages_s, 1), "pages": [fi.name for fi in report],
            "ioi_circuit": {"prompts": args.n_prompts, "features_per_layer": args.top, "feature_sources": graph.features.n_features,
                            "edges": graph.n_edges, "eap_ig_seconds": round(eap_s, 1), "circuits": circuit_rows,
                            "features_in_top_100_edges": top_nodes}}
    md = ["# Feature circuits on SmolLM2-135M-Instruct", "",
          f"Transcoders: {ts!r}. Command: `python experiments/smollm2_feature_circuits.py --threads {args.threads}`.", "",
          "## Attribution graphs (circuit-tracer's method; acdc.attribution_graph)", "",
          "| prompt | tokens | features | nodes | seconds | peak RSS (GB; before) | replacement | completeness | pruned nodes / edges (0.8 / 0.98) |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['prompt']}: `{r['text']!s}` | {r['tokens']} | {r['features']} | {r['nodes']} | {r['seconds']} | "
                  f"{r['peak_rss_gb']} ({r['rss_before_gb']}) | {r['replacement']} | {r['completeness']} | "
                  f"{r['pruned_nodes']} / {r['pruned_edges']:,} |")
    md += ["", "The same IOI graph at other batch sizes (targets per backward pass; seconds): "
           + ", ".join(f"{b}: {t}" for b, t in batch_times.items()) + " (default 64)."]
    for r in rows:
        md += ["", f"**{r['prompt']}**: top logits {', '.join(f'`{s}` {p}' for s, p in r['logits'])}; most influential features "
               + ", ".join(f"`{n}` ({v})" for n, v in r["top_features"])]
    md += ["", f"Pages of the top features ({len(picks)}; {args.pages_sequences} held-out sequences of 128 tokens, {pages_s:.0f} s): "
           "`smollm2_attribution_features.html`.", "",
           "## The IOI feature circuit (EAP-IG-inputs on a feature graph)", "",
           f"{args.n_prompts} IOI prompts (ABC corrupt), the {args.top} most active features per layer on them "
           f"({graph.features.n_features} feature nodes, plus an error and a skip node per layer), {graph.n_edges:,} edges; "
           f"scoring took {eap_s:.0f} s.", "",
           "| edges | normalized faithfulness (resample) | from features | from error nodes | from skip nodes | from heads | from input |",
           "|---|---|---|---|---|---|---|"]
    for r in circuit_rows:
        md.append(f"| {r['edges']} | {r['normalized']} | {r['from_feature']} | {r['from_error']} | {r['from_skip']} | {r['from_head']} | {r['from_input']} |")
    md += ["", "Features among the sources of the top 100 edges: " + (", ".join(f"`{n}`" for n in top_nodes) or "none"), ""]
    write(args.out, "smollm2_feature_circuits", data, "\n".join(md))


if __name__ == "__main__":
    main()
