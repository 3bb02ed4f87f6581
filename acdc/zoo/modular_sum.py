"""Modular sum through an MLP: two heads move the operands, an MLP looks up their sum.

Prompts: ``<bos> x + y =`` with digits x, y in 0..p-1; the answer is (x + y) mod p at ``=``.
Corrupt prompts have fresh random operands.

- a0.h0 and a0.h1 attend from ``=`` to x and to y (by position) and copy them into two
  operand features.
- m1 has one neuron per operand pair that fires only when both match (the GELU does the AND)
  and writes the sum.

True edges: input->a0.h0<v>, input->a0.h1<v>, a0.h0->m1, a0.h1->m1, m1->logits.
"""

from __future__ import annotations

import torch

from ..known import from_spec
from ..loading import load_model
from ..tasks import Task
from .builder import PlantedGPT2, WordTokenizer

BETA = 20.0
GAMMA = 10.0
NEURON = 10.0  # pre-activation scale of the lookup neurons


def build(*, n_prompts: int = 32, modulus: int = 5, seed: int = 0):
    from . import ZooEntry

    m = modulus
    words = ["<bos>", *(str(i) for i in range(m)), "+", "="]
    tok = WordTokenizer(words)
    digits = torch.arange(1, m + 1)
    p = PlantedGPT2(n_layers=2, n_heads=4, d_model=64, d_mlp=128, vocab_size=len(words), n_ctx=5, seed=seed)
    r = p.resid
    t, pos = p.one_hot_inputs()
    x_feat, y_feat, out = r.alloc("x", m), r.alloc("y", m), r.alloc("output", m)
    p.W_U[:, digits] = GAMMA * out.T
    p.head(0, 0, query_bias=[(pos[1:2], BETA)], ov=[(t[digits], x_feat)])
    p.head(0, 1, query_bias=[(pos[3:4], BETA)], ov=[(t[digits], y_feat)])
    a, b = torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")
    a, b = a.flatten(), b.flatten()
    w_in = NEURON * (x_feat[a] + y_feat[b]).T          # [d_model, m*m]
    b_in = torch.full((m * m,), -1.5 * NEURON)
    w_out = out[(a + b) % m] / (0.5 * NEURON)           # [m*m, d_model]
    p.mlp(1, w_in, b_in, w_out)
    model = load_model(p.build())

    gen = torch.Generator().manual_seed(1000 + seed)

    def sample() -> tuple[torch.Tensor, torch.Tensor]:
        xy = torch.randint(0, m, (n_prompts, 2), generator=gen)
        toks = torch.stack([
            torch.zeros(n_prompts, dtype=torch.long), digits[xy[:, 0]],
            torch.full((n_prompts,), tok.index["+"]), digits[xy[:, 1]], torch.full((n_prompts,), tok.index["="]),
        ], dim=1)
        return toks, digits[(xy[:, 0] + xy[:, 1]) % m]

    clean, correct = sample()
    corrupt, incorrect = sample()
    clash = incorrect == correct
    incorrect[clash] = digits[incorrect[clash] % m]  # token id = digit + 1, so this is the next digit mod m
    task = Task.from_tokens(
        clean, corrupt, correct=correct, incorrect=incorrect, metric="kl", name="zoo-modular-sum",
        vocab_size=len(words),
    )
    truth = from_spec({
        "name": "zoo-modular-sum",
        "model": {"n_layers": 2, "n_heads": 4},
        "classes": {"operand movers": ["a0.h0", "a0.h1"], "lookup MLP": ["m1"]},
        "rules": [
            {"from": "input", "to": "operand movers", "inputs": "v"},
            {"from": "operand movers", "to": "lookup MLP"},
            {"from": "lookup MLP", "to": "logits"},
        ],
    })
    return ZooEntry("modular-sum", (__doc__ or "").strip().splitlines()[0], model, task, truth, tok)
