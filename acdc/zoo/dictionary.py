"""A planted dictionary: a GPT-2 whose first MLP computes a known sparse set of features.

Ground truth for transcoder training. The residual stream is split into orthonormal directions
(`Residual`): 24 *input* features e_i, 24 *output* features d_i, one per position, and junk. Each
of the 128 tokens embeds as 1 to 3 input features with magnitudes in [0.5, 1.5] (its known input
pattern), and head a0.h0 copies the previous token's input features onto each position, so the
features that meet in a position vary freely (the dictionary is identifiable; with the token
alone every combination would be one fixed pattern). MLP 0 is a ReLU layer whose neuron i reads
e_i and writes d_i::

    MLP_0(x) = sum_i relu(G <LN(x), e_i> - G * 0.3) d_i / G

so feature i is active exactly when the position carries e_i above 0.3, with activation
``m_i - 0.3`` (m_i: the token's magnitude plus the previous token's). Head a0.h1 and layer 1 are random distractors that write junk (plus a small
leak anywhere), which the MLP input carries as noise. A transcoder of layer 0 that has found the
dictionary has, for each planted feature, a feature whose encoder direction is e_i and whose
decoder direction is d_i (LayerNorm here is close to a scaled identity on mean-zero directions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..loading import load_model
from .builder import PlantedGPT2, WordTokenizer

__all__ = ["PlantedDictionary", "build"]

N_FEATURES = 24
VOCAB = 128
GAIN = 4.0
THRESHOLD = 0.3
NOISE = 0.3  # norm of each token's random component, in every direction


@dataclass(frozen=True, eq=False)
class PlantedDictionary:
    """model: the bridge; layer: the MLP that computes the dictionary; encoder, decoder: the planted
    directions [n, d_model] (unit norm); token_features: [vocab, n] each token's feature magnitudes."""

    model: Any
    layer: int
    encoder: Tensor
    decoder: Tensor
    token_features: Tensor
    tokenizer: WordTokenizer
    context: int

    def sample(self, index: int, gen: torch.Generator) -> Tensor:
        """One sequence [context] of uniformly random tokens (the stream's ``make``)."""
        return torch.randint(0, VOCAB, (self.context,), generator=gen)


def build(*, seed: int = 0, context: int = 16) -> PlantedDictionary:
    words = [f"w{i}" for i in range(VOCAB)]
    p = PlantedGPT2(n_layers=2, n_heads=2, d_model=96, d_mlp=32, vocab_size=VOCAB, n_ctx=context, seed=seed, act="relu")
    r = p.resid
    enc, dec, pos = r.alloc("input", N_FEATURES), r.alloc("output", N_FEATURES), r.alloc("position", context)
    gen = torch.Generator().manual_seed(seed + 77)
    mags = torch.zeros(VOCAB, N_FEATURES)
    for t in range(VOCAB):
        k = int(torch.randint(1, 4, (1,), generator=gen))
        feats = torch.randperm(N_FEATURES, generator=gen)[:k]
        mags[t, feats] = 0.5 + torch.rand(k, generator=gen)
    noise = torch.randn(VOCAB, 96, generator=gen)
    noise = NOISE * (noise - noise.mean(1, keepdim=True)) / 96**0.5  # every direction varies (a real stream is full rank)
    p.W_E[:] = mags @ enc + noise
    p.W_pos[:] = pos
    p.head(0, 0, qk=[(pos[1:], pos[:-1], 20.0)], ov=[(enc, enc)])  # previous-token head: copies the input features
    p.W_U[:] = 4.0 * dec.T @ (mags > 0).float().T  # logits favour tokens that share the output features
    p.mlp(0, GAIN * enc.T, torch.full((N_FEATURES,), -GAIN * THRESHOLD), dec / GAIN)
    model = load_model(p.build())
    return PlantedDictionary(model, 0, enc.clone(), dec.clone(), mags, WordTokenizer(words), context)
