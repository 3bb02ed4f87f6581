"""Induction: a random token sequence repeated once, scored on the repeated half.

Clean prompts are ``[BOS] r1 .. rh r1 .. rh`` with r1..rh distinct random tokens. At the
repeat of r_j (j < h) an induction circuit predicts r_(j+1) by finding the earlier r_j and
copying what followed it, so every such position is scored (P = h - 1 positions per prompt,
metric averaged over them). Corrupt prompts are the same tokens shuffled (BOS kept first),
which keeps the token statistics and destroys the repetition.

Answers per scored position: correct = the true next token r_(j+1); incorrect = the token at
that place in the shuffled prompt (what a position-only copy would guess). Default metric KL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from ..positions import REST, Positions
from .base import Task, recorded, split_index

__all__ = ["induction"]


@recorded("induction")
def induction(
    model_or_vocab: Any,
    n_prompts: int = 50,
    *,
    half: int = 10,
    seed: int = 0,
    tokens: Sequence[int] | torch.Tensor | None = None,
    bos: int | None = None,
    metric: str = "kl",
    split: str = "all",
) -> Task:
    """``n_prompts`` repeated random sequences of ``half`` tokens, with shuffled corrupt twins.

    model_or_vocab: a model (its ``cfg.d_vocab`` and tokenizer's BOS are used) or a vocabulary size.
    tokens: the token ids to draw from (default: every id except the BOS).
    bos: id put first in every prompt (default: the tokenizer's BOS, else none).
    split: "discovery", "validation" or "test" draw from disjoint thirds of the token pool (ids = 0, 1, 2 mod 3),
    so the three sets share no token; "all" from the whole pool.
    """
    k = split_index(split)
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    if half < 2:
        raise ValueError(f"half must be >= 2 (the repeat needs a next token to predict), got {half}")
    vocab, bos = _vocab_and_bos(model_or_vocab, bos)
    pool = torch.as_tensor(tokens, dtype=torch.long) if tokens is not None else torch.arange(vocab)
    if bos is not None and tokens is None:
        pool = pool[pool != bos]
    if k is not None:
        pool = pool[pool % 3 == k]
    if pool.numel() < half:
        raise ValueError(f"need at least half={half} distinct tokens to draw from, got {pool.numel()}")
    if bool((pool < 0).any() | (pool >= vocab).any()):
        raise ValueError(f"tokens must lie in [0, {vocab - 1}]")
    gen = torch.Generator().manual_seed(seed)
    seqs = torch.stack([pool[torch.randperm(pool.numel(), generator=gen)[:half]] for _ in range(n_prompts)])
    clean = torch.cat([seqs, seqs], dim=1)
    corrupt = torch.stack([row[torch.randperm(row.numel(), generator=gen)] for row in clean])
    offset = 0
    if bos is not None:
        first = torch.full((n_prompts, 1), bos, dtype=torch.long)
        clean, corrupt, offset = torch.cat([first, clean], 1), torch.cat([first, corrupt], 1), 1
    # the repeat of r_j sits at offset + half + j - 1 (j = 1..h-1) and predicts r_(j+1)
    positions = offset + half + torch.arange(half - 1)
    answer_pos = positions.expand(n_prompts, -1)
    correct = clean[:, positions + 1]
    incorrect = corrupt[:, positions + 1]
    task = Task.from_tokens(
        clean, corrupt, correct=correct, incorrect=incorrect, answer_pos=answer_pos, metric=metric,
        name="induction" + ("" if split == "all" else f"-{split}"), vocab_size=vocab,
    )
    # named positions: the first copy, the second copy, and the BOS ("other")
    index = torch.full(clean.shape, 2, dtype=torch.long)
    index[:, offset : offset + half] = 0
    index[:, offset + half :] = 1
    return replace(task, positions=Positions(("first", "second", REST), index))


def _vocab_and_bos(model_or_vocab: Any, bos: int | None) -> tuple[int, int | None]:
    if isinstance(model_or_vocab, int):
        return model_or_vocab, bos
    cfg = getattr(model_or_vocab, "cfg", None) or getattr(model_or_vocab, "config", None)
    vocab = getattr(cfg, "d_vocab", None) or getattr(cfg, "vocab_size", None)
    if vocab is None:
        raise ValueError("pass a model (with cfg.d_vocab) or a vocabulary size as the first argument")
    if bos is None:
        tok = getattr(model_or_vocab, "tokenizer", None)
        bos = getattr(tok, "bos_token_id", None)
    return int(vocab), bos
