"""Induction: a previous-token head feeds an induction head by K-composition.

Prompts are `acdc.tasks.induction`'s: ``<bos> t1 .. th t1 .. th``, scored at every repeated
token but the last (predict the next one); corrupt prompts are the same tokens shuffled.

- a0.h0 (previous token) attends from position i to i-1 (by positions) and copies that token
  into a "previous token" feature.
- a1.h0 (induction) queries with the current token against the keys' "previous token" feature,
  so it attends to the token after the earlier occurrence, and copies it to the output.

True edges: input->a0.h0<v>, a0.h0->a1.h0<k>, input->a1.h0<q>, input->a1.h0<v>, a1.h0->logits.
"""

from __future__ import annotations

from dataclasses import replace

from ..known import from_spec
from ..loading import load_model
from ..tasks import induction
from .builder import PlantedGPT2, WordTokenizer

BETA = 20.0   # attention score of a planted match
GAMMA = 10.0  # logit of a fully copied token


def build(*, n_prompts: int = 32, half: int = 6, vocab_size: int = 24, seed: int = 0):
    from . import ZooEntry

    n_ctx = 2 * half + 1
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

    task = induction(vocab_size, n_prompts, half=half, seed=1000 + seed, tokens=range(1, vocab_size), bos=0)
    task = replace(task, name="zoo-induction")
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
    return ZooEntry("induction", (__doc__ or "").strip().splitlines()[0], model, task, truth, WordTokenizer(words))
