"""Miniature IOI: duplicate-token head -> S-inhibition head -> name mover, with ABC corrupt prompts.

Prompts (made by `acdc.tasks.ioi` from one template): ``<bos> When A and B went PLACE , B gave
a OBJECT to`` (or with A and B swapped, the IOI paper's ABBA and BABA orders); the answer is the
indirect object A, the wrong answer the subject B. Corrupt prompts replace all three names by
three fresh, distinct names (ABC).

- a0.h0 (duplicate token) attends from a name to an earlier copy of it and writes which name is
  duplicated into a "duplicate" feature (at S2).
- a1.h0 (S-inhibition) attends to the position holding a duplicate flag and moves the name into
  an "inhibit" feature at the last position.
- a2.h0 (name mover) attends to names, except the inhibited one, and copies the name it finds.

True edges: input->a0.h0<q,k,v>, a0.h0->a1.h0<k,v>, a1.h0->a2.h0<q>, input->a2.h0<k,v>,
a2.h0->logits. Metric: logit difference IO - S.

At token positions (``positional_truth``, over the task's IO, S1, S1+1, S2, END, other): the
duplicate-token head queries at S2 and finds S1 (k, v at S1); the S-inhibition head reads it at S2
(k, v) and acts at END (its query needs nothing that differs, so no query edge); the name mover
queries at END with the inhibition, keys on both mentions of S to avoid them (k at S1, S2) and
copies IO's value (v at IO); the logits read END.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..known import from_spec
from ..loading import load_model
from ..tasks import ioi
from .builder import PlantedGPT2, WordTokenizer

NAMES = ["Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
PLACES = ["home", "out", "away"]
OBJECTS = ["book", "drink", "ring", "key"]
WORDS = ["<bos>", *NAMES, "When", "and", "went", *PLACES, ",", "gave", "a", *OBJECTS, "to"]
TEMPLATE = "When [B] and [A] went [PLACE] , [B] gave a [OBJECT] to"  # acdc.tasks.ioi's notation
BETA = 20.0
GAMMA = 10.0


def build(*, n_prompts: int = 32, seed: int = 0):
    from . import ZooEntry

    tok = WordTokenizer(WORDS)
    n_ctx = 13
    names = torch.tensor([tok.index[n] for n in NAMES])
    p = PlantedGPT2(n_layers=3, n_heads=4, d_model=128, d_mlp=256, vocab_size=len(WORDS), n_ctx=n_ctx, seed=seed)
    r = p.resid
    t, pos = r.alloc("token", len(WORDS)), r.alloc("position", n_ctx)
    is_name = r.alloc("is name", 1)
    dup, inhibit, out = (r.alloc(f, len(NAMES)) for f in ("duplicate", "inhibit", "output"))
    p.W_E[:] = t
    p.W_E[names] += is_name
    p.W_pos[:] = pos
    p.W_U[:, names] = GAMMA * out.T
    p.head(0, 0, qk=[(t[names], t[names], BETA), (pos, pos, -BETA)], query_bias=[(t[:1], BETA / 2)], ov=[(t[names], dup)])
    p.head(1, 0, query_bias=[(dup, BETA), (t[:1], BETA / 2)], ov=[(dup, inhibit)])
    p.head(2, 0, query_bias=[(is_name, BETA)], qk=[(inhibit, t[names], -2 * BETA)], ov=[(t[names], out)])
    model = load_model(p.build())

    task = ioi(
        tok, n_prompts, seed=1000 + seed, templates=[TEMPLATE], names=NAMES, places=PLACES, objects=OBJECTS
    )
    task = replace(task, name="zoo-ioi")
    truth = from_spec({
        "name": "zoo-ioi",
        "model": {"n_layers": 3, "n_heads": 4},
        "classes": {"duplicate token": ["a0.h0"], "s-inhibition": ["a1.h0"], "name mover": ["a2.h0"]},
        "rules": [
            {"from": "input", "to": "duplicate token", "inputs": "qkv"},
            {"from": "duplicate token", "to": "s-inhibition", "inputs": "kv"},
            {"from": "s-inhibition", "to": "name mover", "inputs": "q"},
            {"from": "input", "to": "name mover", "inputs": "kv"},
            {"from": "name mover", "to": "logits"},
        ],
    })
    positional = from_spec({
        "name": "zoo-ioi-positional",
        "model": {"n_layers": 3, "n_heads": 4},
        "positions": list(task.positions.names) if task.positions is not None else [],
        "classes": {"duplicate token": ["a0.h0"], "s-inhibition": ["a1.h0"], "name mover": ["a2.h0"]},
        "rules": [
            {"from": "input", "to": "duplicate token", "inputs": "q", "at": "S2"},
            {"from": "input", "to": "duplicate token", "inputs": "kv", "at": "S1"},
            {"from": "duplicate token", "to": "s-inhibition", "inputs": "kv", "at": "S2"},
            {"from": "s-inhibition", "to": "name mover", "inputs": "q", "at": "END"},
            {"from": "input", "to": "name mover", "inputs": "k", "at": ["S1", "S2"]},
            {"from": "input", "to": "name mover", "inputs": "v", "at": "IO"},
            {"from": "name mover", "to": "logits", "at": "END"},
        ],
    })
    return ZooEntry("ioi", (__doc__ or "").strip().splitlines()[0], model, task, truth, tok, positional_truth=positional)
