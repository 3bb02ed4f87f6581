"""The first real circuit: indirect object identification in SmolLM2-135M-Instruct.

    python experiments/smollm2_ioi.py              # ~5 min on 2 CPU threads; needs acdc[smollm2]

1. Behaviour: the logit difference IO - S and the accuracy (IO above S) on ABBA and BABA prompts.
2. Circuits: EAP-IG (inputs, 5 steps) on 50 mixed prompts, greedy circuits of n edges at a few sizes, and
   ACDC prefiltered to the top 1% of edges by those scores at a few thresholds (APPROXIMATE);
   for each, the logit difference it keeps (the rest resample-ablated) and MIB's normalized
   faithfulness (LD(C) - LD(empty)) / (LD(model) - LD(empty)).
3. Head diagnostics from attention patterns and the heads' direct effect, independent of
   patching (the IOI paper's classes): name mover (END attends to IO, writes IO over S),
   negative name mover (the same, writing against IO), S-inhibition (END attends to S2),
   induction (S2 attends to S1+1), duplicate token (S2 attends to S1), previous token (S1+1
   attends to S1). A head gets a class when its mean attention there is at least --attn.
4. Which classes the circuits' heads have, beside GPT-2 small's known IOI circuit (relative depth).

Writes smollm2_ioi.json, .md and .png (the ACDC circuit, heads coloured by diagnosed class).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from smollm2_common import ROOT, heads_of, load, top_heads, write  # noqa: E402

import acdc  # noqa: E402
from acdc.algorithms import ALGORITHMS  # noqa: E402
from acdc.api import prepare  # noqa: E402

CLASSES = ("name mover", "negative name mover", "s-inhibition", "induction", "duplicate token", "previous token")


def positions(task: acdc.Task) -> dict[str, torch.Tensor]:
    """IO, S1, S1+1, S2 and END per prompt, found from the answer tokens in the clean prompt."""
    out: dict[str, list[int]] = {k: [] for k in ("IO", "S1", "S1+1", "S2", "END")}
    for row, io, s, end in zip(task.clean.tolist(), task.correct.tolist(), task.incorrect.tolist(),
                               task.answer_pos.tolist(), strict=True):
        s_at = [i for i, t in enumerate(row[: end + 1]) if t == s]
        out["IO"].append(row.index(io))
        out["S1"].append(s_at[0])
        out["S1+1"].append(s_at[0] + 1)
        out["S2"].append(s_at[1])
        out["END"].append(end)
    return {k: torch.tensor(v) for k, v in out.items()}


def diagnose(tf, task: acdc.Task, patcher, attn: float) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Per-head scores [n_layers, n_heads] and the classes they give (a head takes its best class)."""
    pat = tf.attention_patterns(task.clean)  # [L, H, B, S, S]
    pos = positions(task)
    b = torch.arange(task.n_prompts)

    def attends(q: str, k: str) -> torch.Tensor:
        return pat[:, :, b, pos[q], pos[k]].mean(-1)

    # direct effect of each head's output at END on logit(IO) - logit(S), through the final norm's scale
    g, a = patcher.graph, tf.arch
    final = patcher.clean.resid_pre[-1][b, pos["END"]]  # [B, d]
    scale = (final.pow(2).mean(-1, keepdim=True) + a.eps).rsqrt() * tf.w["lnf_w"]  # RMSNorm's linear part
    direction = tf.w["W_U"][:, task.correct].T - tf.w["W_U"][:, task.incorrect].T  # [B, d]
    srcs = torch.tensor([g.head_src(L, h) for L in range(a.n_layers) for h in range(a.n_heads)])
    outs = patcher.clean.sources[srcs][:, b, pos["END"]]  # [L*H, B, d]
    dla = (outs * scale * direction).sum(-1).mean(-1).view(a.n_layers, a.n_heads)
    scores = {
        "END->IO": attends("END", "IO"), "END->S2": attends("END", "S2"), "S2->S1+1": attends("S2", "S1+1"),
        "S2->S1": attends("S2", "S1"), "S1+1->S1": attends("S1+1", "S1"), "direct effect": dla,
    }
    by_class = {
        "name mover": scores["END->IO"] * (dla > 0), "negative name mover": scores["END->IO"] * (dla < 0),
        "s-inhibition": scores["END->S2"], "induction": scores["S2->S1+1"], "duplicate token": scores["S2->S1"],
        "previous token": scores["S1+1->S1"],
    }
    stacked = torch.stack([by_class[c] for c in CLASSES])  # [C, L, H]
    best, which = stacked.max(0)
    classes: dict[str, list[str]] = {c: [] for c in CLASSES}
    for L in range(a.n_layers):
        for h in range(a.n_heads):
            if float(best[L, h]) >= attn:
                classes[CLASSES[int(which[L, h])]].append(f"a{L}.h{h}")
    return scores, classes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n-prompts", type=int, default=50)
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200, 500, 1000])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    ap.add_argument("--prefilter", type=float, default=0.01)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--attn", type=float, default=0.3, help="mean attention that gives a head its class")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args(argv)
    model, tf = load(args.threads)
    t_start = time.perf_counter()

    behaviour = {}
    for order in ("ABBA", "BABA"):
        t = acdc.tasks.ioi(model, args.n_prompts, seed=1, order=order)
        p, metric, batch = prepare(model, t)
        rows = torch.arange(t.n_prompts)
        ld = (p.clean.logits[rows, t.correct] - p.clean.logits[rows, t.incorrect])
        behaviour[order] = {"logit_diff": round(float(ld.mean()), 4), "accuracy": round(float((ld > 0).float().mean()), 4)}
        del p

    task = acdc.tasks.ioi(model, args.n_prompts, seed=0)
    patcher, metric, batch = prepare(model, task)
    n = patcher.graph.n_edges
    full = metric(patcher.logits(torch.zeros(n, dtype=torch.bool)), batch)
    empty = metric(patcher.logits(torch.ones(n, dtype=torch.bool)), batch)

    def kept(circuit: acdc.Circuit) -> dict[str, float]:
        ld = metric(patcher.logits(circuit), batch)
        return {"logit_diff": round(ld, 4), "normalized": round((ld - empty) / (full - empty), 4)}

    t0 = time.perf_counter()
    scores = ALGORITHMS["eap-ig-inputs"](patcher, metric, batch, steps=args.steps)
    eap_seconds = time.perf_counter() - t0
    greedy = {k: scores.greedy(k) for k in args.sizes}
    eap_rows = [{"edges": k, **kept(c), "heads": len(heads_of(c))} for k, c in greedy.items()]
    acdc_rows, circuits = [], []
    for thr in args.thresholds:
        t0 = time.perf_counter()
        c = ALGORITHMS["acdc"](patcher, metric, batch, threshold=thr, prefilter=args.prefilter,
                               prefilter_scores=scores.values).selection()
        circuits.append(c)
        acdc_rows.append({"threshold": thr, "edges": c.n_edges, "heads": len(heads_of(c)), "tested": c.settings["n_tested"],
                          "seconds": round(time.perf_counter() - t0, 1), **kept(c)})

    diag, classes = diagnose(tf, task, patcher, args.attn)
    found = {"eap-ig greedy 200": heads_of(scores.greedy(200)), **{f"acdc t={r['threshold']}": heads_of(c)
                                                                for r, c in zip(acdc_rows, circuits, strict=True)}}
    class_of = {h: c for c, hs in classes.items() for h in hs}
    gpt2 = acdc.known.load("ioi")
    depth = {c: sorted({round(int(h[1:].split(".")[0]) / 12, 2) for h in hs}) for c, hs in gpt2.classes.items()}
    smol_depth = {c: sorted({round(int(h[1:].split(".")[0]) / tf.arch.n_layers, 2) for h in hs}) for c, hs in classes.items()}

    png = None
    if circuits:
        from acdc.render import DotNotFoundError

        try:
            chosen = circuits[len(circuits) // 2]
            png = acdc.render(chosen, args.out / "smollm2_ioi.png", classes={c: hs for c, hs in classes.items() if hs},
                              title=f"SmolLM2-135M IOI, ACDC prefiltered to {args.prefilter:.0%} of edges, "
                                    f"threshold {chosen.settings['threshold']}, {chosen.n_edges} edges")
        except DotNotFoundError as err:
            print(f"no image: {err}")

    data = {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)", "n_prompts": args.n_prompts, "notes": task.notes,
        "behaviour": behaviour, "full_logit_diff": full, "empty_logit_diff": empty, "graph_edges": n,
        "eap_ig_seconds": round(eap_seconds, 1), "eap_ig": eap_rows, "acdc": acdc_rows,
        "classes": classes, "found_heads": {k: [(h, class_of.get(h, "")) for h in v] for k, v in found.items()},
        "top_heads": {k: top_heads(v, 5) for k, v in diag.items()},
        "relative_depth": {"gpt2": depth, "smollm2": smol_depth}, "seconds": round(time.perf_counter() - t_start, 1),
    }
    md = [f"# IOI in SmolLM2-135M-Instruct ({args.n_prompts} prompts; `python experiments/smollm2_ioi.py`)", "",
          f"Tokenizer: {task.notes}. Graph: {n:,} edges (q/k/v per query head; 9 query / 3 key-value heads).", "",
          "| prompts | logit diff IO - S | accuracy |", "|---|---|---|"]
    md += [f"| {o} | {b['logit_diff']:.3f} | {b['accuracy']:.0%} |" for o, b in behaviour.items()]
    md += ["", f"Mixed prompts: full model {full:.3f}, every edge resample-ablated {empty:.3f}.", "",
           f"EAP-IG (inputs, {args.steps} steps): {eap_seconds:.0f} s. Circuits of n edges grown greedily from the logits by |score| (EAP-IG's selection):", "",
           "| edges | heads | logit diff kept | normalized |", "|---|---|---|---|"]
    md += [f"| {r['edges']} | {r['heads']} | {r['logit_diff']:.3f} | {r['normalized']:.3f} |" for r in eap_rows]
    md += ["", f"ACDC, APPROXIMATE: only the top {args.prefilter:.0%} of edges by EAP-IG score tested:", "",
           "| threshold | edges | heads | tested | seconds | logit diff kept | normalized |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r['threshold']} | {r['edges']} | {r['heads']} | {r['tested']} | {r['seconds']} | {r['logit_diff']:.3f} | "
           f"{r['normalized']:.3f} |" for r in acdc_rows]
    md += ["", f"Head classes from attention patterns (mean attention >= {args.attn}) and direct effect:", "",
           "| class | SmolLM2 heads | relative depth (SmolLM2) | relative depth (GPT-2 small, known) |", "|---|---|---|---|"]
    md += [f"| {c} | {', '.join(classes[c]) or '-'} | {smol_depth[c] or '-'} | {depth.get(c, '-')} |" for c in CLASSES]
    md += ["", "Heads the circuits contain, with their diagnosed class:", ""]
    md += [f"- {k}: {', '.join(f'{h} ({cl})' if cl else h for h, cl in v) or 'none'}" for k, v in data["found_heads"].items()]
    md += ["", "Top heads by each diagnostic:", ""]
    md += [f"- {k}: {', '.join(f'{h} {s:.2f}' for h, s in v)}" for k, v in data["top_heads"].items()]
    if png is not None:
        md += ["", f"![ACDC circuit]({png.name})"]
    write(args.out, "smollm2_ioi", data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
