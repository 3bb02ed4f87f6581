"""Positional EAP against plain EAP on a GPT-2-small-shaped model (random weights).

    python experiments/positional_speed.py            # ~2 min on 2 CPU threads

50 clean / 50 corrupt prompts of 15 random tokens, random answers; EAP on the plain graph
(32,491 edges) and on the token-positional graph (15 positions: 487,365 edges), each timed
``--reps`` times in alternation (the best run counts). Also times one patched run of a random
positional circuit against a plain one. Writes positional_speed.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from gpt2_shape import best_of, workload  # noqa: E402

import acdc  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args, model, task = workload((__doc__ or "").splitlines()[0], argv,
                                 lambda ap: ap.add_argument("--reps", type=int, default=3))
    gen = torch.Generator().manual_seed(1)  # the random circuits below
    plain_p, m, batch = acdc.api.prepare(model, task)
    pos_p, _, _ = acdc.api.prepare(model, task, positions="tokens")
    eap = acdc.algorithms.get_algorithm("eap")
    plain_s, pos_s = eap(plain_p, m, batch), eap(pos_p, m, batch)  # warm-up, and a check below
    t_plain = t_pos = float("inf")
    for _ in range(args.reps):  # alternate, so load on the machine hits both alike
        t_plain = min(t_plain, best_of(lambda: eap(plain_p, m, batch), 1))
        t_pos = min(t_pos, best_of(lambda: eap(pos_p, m, batch), 1))
    summed = pos_s.values.view(-1, 15).sum(1)
    err = float((summed - plain_s.values).abs().max() / plain_s.values.abs().max())
    mask = torch.rand(plain_p.graph.n_edges, generator=gen) < 0.5
    pos_mask = mask.repeat_interleave(15) & (torch.rand(pos_p.graph.n_edges, generator=gen) < 0.9)
    r_plain = best_of(lambda: plain_p.logits(mask), args.reps)
    r_pos = best_of(lambda: pos_p.logits(pos_mask), args.reps)
    text = (
        "# Positional speed (`python experiments/positional_speed.py`)\n\n"
        f"GPT-2-small shape ({args.layers} layers, random weights), 50 x 15 tokens, {args.threads} threads, "
        f"best of {args.reps}.\n\n"
        "| | plain graph | 15 token positions | ratio |\n|---|---|---|---|\n"
        f"| edges | {plain_p.graph.n_edges:,} | {pos_p.graph.n_edges:,} | {pos_p.graph.n_edges / plain_p.graph.n_edges:.0f}x |\n"
        f"| EAP (s) | {t_plain:.2f} | {t_pos:.2f} | {t_pos / t_plain:.2f}x |\n"
        f"| one patched run of a random circuit (s) | {r_plain:.2f} | {r_pos:.2f} | {r_pos / r_plain:.2f}x |\n\n"
        f"Positional scores summed over positions equal the plain scores (largest relative difference {err:.1e}).\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "positional_speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
