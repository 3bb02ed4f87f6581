"""Induction: a previous-token head feeds an induction head by K-composition.

Prompts are ``<bos> t1 .. th t1 .. t(h-1)``; the model predicts ``th`` at the last position.
Corrupt prompts are fresh random repeated sequences.

- a0.h0 (previous token) attends from position i to i-1 (by positions) and copies that token
  into a "previous token" feature.
- a1.h0 (induction) queries with the current token against the keys' "previous token" feature,
  so it attends to the token after the earlier occurrence, and copies it to the output.

True edges: input->a0.h0<v>, a0.h0->a1.h0<k>, input->a1.h0<q>, input->a1.h0<v>, a1.h0->logits.
"""

from __future__ import annotations

import torch

from ..known import from_spec
from ..model import load_model
from ..tasks import Task
from .builder import PlantedGPT2, WordTokenizer

BETA = 20.0   # attention score of a planted match
GAMMA = 10.0  # logit of a fully copied token


def build(*, n_prompts: int = 32, half: int = 6, vocab_size: int = 24, seed: int = 0):
    from . import ZooEntry

    n_ctx = 2 * half
    p = PlantedGPT2(n_layers=2, n_heads=4, d_model=128, d_mlp=256, vocab_size=vocab_size, n_ctx=n_ctx, seed=seed)
    r = p.resid
    tok, pos = r.alloc("token", vocab_size), r.alloc("position", n_ctx)
    prev, out = r.alloc("previous token", vocab_size), r.alloc("output", vocab_size)
    p.W_E[:] = tok
    p.W_pos[:] = pos
    p.W_U[:, 1:] = GAMMA * out[1:].T
    p.head(0, 0, qk=[(pos[1:], pos[:-1], BETA)], ov=[(tok, prev)])
    p.head(1, 0, qk=[(tok[1:], prev[1:], BETA)], query_bias=[(tok[:1], BETA / 2)], ov=[(tok[1:], out[1:])])
    model = load_model(p.build())

    gen = torch.Generator().manual_seed(1000 + seed)

    def sample() -> tuple[torch.Tensor, torch.Tensor]:
        seqs = torch.stack([torch.randperm(vocab_size - 1, generator=gen)[:half] + 1 for _ in range(n_prompts)])
        bos = torch.zeros(n_prompts, 1, dtype=torch.long)
        return torch.cat([bos, seqs, seqs[:, :-1]], dim=1), seqs[:, -1]

    clean, correct = sample()
    corrupt, incorrect = sample()
    clash = incorrect == correct
    incorrect[clash] = (incorrect[clash] % (vocab_size - 1)) + 1  # keep the two answers distinct
    task = Task.from_tokens(
        clean, corrupt, correct=correct, incorrect=incorrect, metric="kl", name="zoo-induction",
        vocab_size=vocab_size,
    )
    truth = from_spec({
        "name": "zoo-induction",
        "model": {"n_layers": 2, "n_heads": 4},
        "classes": {"previous token": ["a0.h0"], "induction": ["a1.h0"]},
        "rules": [
            {"from": "input", "to": "a0.h0", "inputs": "v"},
            {"from": "a0.h0", "to": "a1.h0", "inputs": "k"},
            {"from": "input", "to": "a1.h0", "inputs": "qv"},
            {"from": "a1.h0", "to": "logits"},
        ],
    })
    words = ["<bos>"] + [f"t{i}" for i in range(1, vocab_size)]
    return ZooEntry("induction", __doc__.strip().splitlines()[0], model, task, truth, WordTokenizer(words))
