"""Induction in SmolLM2-135M-Instruct: induction heads from attention patterns, and the discovered circuit.

    python experiments/smollm2_induction.py        # ~3 min on 2 CPU threads; needs acdc[smollm2]

On repeated random tokens ``[BOS] r1..rh r1..rh`` (acdc.tasks.induction; corrupt: the same tokens
shuffled):

1. Behaviour: the loss on the first and on the second copy (induction makes the second cheap).
2. Every head's induction score (mean attention from a repeated token to the token after its
   earlier occurrence) and previous-token score (mean attention to the token before), from
   attention patterns only.
3. The circuit: EAP-IG (inputs, KL to the full model over the repeated positions), and circuits
   of n edges grown greedily from the logits by |score| at a few sizes; which of the top-10
   induction and previous-token heads each contains, and the KL each keeps.

Writes smollm2_induction.json and .md.
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n-prompts", type=int, default=20)
    ap.add_argument("--half", type=int, default=10, help="random tokens per copy")
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 500, 1000])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args(argv)
    model, tf = load(args.threads)
    t_start = time.perf_counter()
    h = args.half
    task = acdc.tasks.induction(model, args.n_prompts, half=h, seed=0)

    with torch.no_grad():
        logits = tf.unembed(tf.run(task.clean).resid_pre[-1])  # [B, S, V]
    o = int(task.answer_pos[0, 0]) - h  # 1 with a BOS first: copies at o..o+h-1 and o+h..o+2h-1
    logp = logits.log_softmax(-1)[:, :-1].gather(-1, task.clean[:, 1:, None])[..., 0]  # predicting token t+1
    loss_first = float(-logp[:, o : o + h - 1].mean())  # next tokens inside the first copy
    loss_second = float(-logp[:, o + h : o + 2 * h - 1].mean())  # next tokens inside the second copy

    pat = tf.attention_patterns(task.clean)  # [L, H, B, S, S]
    q = torch.arange(o + h, o + 2 * h)  # every repeated token; its earlier occurrence is q - h
    induction = pat[..., q, q - h + 1].mean((-1, -2))
    q_all = torch.arange(o + 1, o + 2 * h)
    previous = pat[..., q_all, q_all - 1].mean((-1, -2))
    top_ind, top_prev = top_heads(induction, 10), top_heads(previous, 10)

    patcher, metric, batch = prepare(model, task)
    n = patcher.graph.n_edges
    empty = metric(patcher.logits(torch.ones(n, dtype=torch.bool)), batch)
    t0 = time.perf_counter()
    scores = ALGORITHMS["eap-ig-inputs"](patcher, metric, batch, steps=args.steps)
    eap_seconds = time.perf_counter() - t0
    rows = []
    for k in args.sizes:
        c = scores.greedy(k)
        heads = set(heads_of(c))
        rows.append({"edges": k, "heads": len(heads), "kl": round(metric(patcher.logits(c), batch), 4),
                     "top10_induction_in": sum(hd in heads for hd, _ in top_ind),
                     "top10_previous_in": sum(hd in heads for hd, _ in top_prev)})

    data = {"model": "SmolLM2-135M-Instruct", "n_prompts": args.n_prompts, "half": h, "loss_first_copy": round(loss_first, 3),
            "loss_second_copy": round(loss_second, 3), "top_induction": top_ind, "top_previous_token": top_prev,
            "kl_empty": round(empty, 4), "eap_ig_seconds": round(eap_seconds, 1), "circuits": rows,
            "seconds": round(time.perf_counter() - t_start, 1)}
    md = [f"# Induction in SmolLM2-135M-Instruct ({args.n_prompts} prompts of 2 x {h} random tokens; "
          "`python experiments/smollm2_induction.py`)", "",
          f"Loss on the next token: {loss_first:.2f} inside the first copy, {loss_second:.2f} inside the second.", "",
          f"Top induction heads (attention to the token after the earlier occurrence): "
          f"{', '.join(f'{x} {s:.2f}' for x, s in top_ind)}", "",
          f"Top previous-token heads: {', '.join(f'{x} {s:.2f}' for x, s in top_prev)}", "",
          f"EAP-IG (inputs, {args.steps} steps, KL to the full model at the {h - 1} repeated positions): "
          f"{eap_seconds:.0f} s; every edge resample-ablated gives KL {empty:.3f}. Circuits of n edges grown greedily from the logits by |score| (EAP-IG's selection):", "",
          "| edges | heads | KL kept (0 = the full model) | top-10 induction heads in it | top-10 previous-token heads in it |",
          "|---|---|---|---|---|"]
    md += [f"| {r['edges']} | {r['heads']} | {r['kl']:.3f} | {r['top10_induction_in']} | {r['top10_previous_in']} |" for r in rows]
    write(args.out, "smollm2_induction", data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
