"""What a run is given, turned into checked tensors: one default and one validation per input.

Token batches (ids, nested lists or strings), the positions each prompt is scored at, answer
token ids, the ablation kind and the ACDC threshold. Every entry point (`Patcher`, `Task`,
`acdc.discover`, the CLI) goes through these functions, so a mistake gets the same one-line
message wherever it is made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

__all__ = [
    "ABLATIONS",
    "Ablation",
    "AnswerIds",
    "Answers",
    "Prompts",
    "Tokenizer",
    "answer_positions",
    "as_tokens",
    "check_ablation",
    "check_threshold",
    "encode",
    "parse_answers",
    "single_token_id",
    "tokenizer_of",
    "try_encode",
]

Ablation = Literal["resample", "mean", "zero"]
# Prompts: token ids [batch, pos] (a tensor or nested int lists), strings (one prompt each; needs a tokenizer) or one string.
Prompts = Tensor | Sequence[str] | Sequence[Sequence[int]] | str
# One side of the answers: token ids per prompt ([batch] or [batch, k]), or single-token strings.
AnswerIds = Tensor | Sequence[int] | Sequence[Sequence[int]] | Sequence[str] | str | int
# (correct, incorrect), or a [batch, 2] tensor.
Answers = tuple[AnswerIds, AnswerIds] | list[AnswerIds] | Tensor
ABLATIONS: tuple[str, ...] = ("resample", "mean", "zero")


class Tokenizer(Protocol):
    """What acdc needs of a tokenizer (any Hugging Face tokenizer has it)."""

    def encode(self, text: str, *args: Any, **kwargs: Any) -> Any: ...


def check_ablation(ablation: Any) -> Ablation:
    """``ablation`` if it is one of `ABLATIONS`; a one-line ValueError otherwise."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    return ablation


def check_threshold(threshold: Any) -> float:
    """``threshold`` as a float if it is a number >= 0; a one-line ValueError otherwise."""
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or math.isnan(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    return float(threshold)


def as_tokens(x: Any, model: Any, what: str) -> Tensor:
    """Token ids [batch, pos] from a tensor, nested int lists, or strings (needs a tokenizer)."""
    if isinstance(x, str):  # one prompt
        x = [x]
    if isinstance(x, Sequence) and len(x) == 0 or isinstance(x, Tensor) and x.numel() == 0:
        raise ValueError(f"{what} prompts are empty: pass at least one prompt (a list of strings or token ids [batch, pos])")
    if isinstance(x, Tensor):
        t = x
    elif isinstance(x, Sequence) and all(isinstance(s, str) for s in x):
        tok = getattr(model, "tokenizer", None)
        if tok is None or not hasattr(model, "to_tokens"):
            raise ValueError(
                f"{what} prompts are strings but the model has no tokenizer; pass token ids, or "
                f"load the model with acdc.load_model(model, tokenizer=...)"
            )
        rows = [model.to_tokens(s)[0] for s in x]
        lengths = sorted({len(r) for r in rows})
        if len(lengths) != 1:
            raise ValueError(
                f"{what} prompts tokenize to different lengths {lengths}; make every prompt "
                f"the same number of tokens"
            )
        t = torch.stack(rows)
    else:
        try:
            t = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{what} must be token ids [batch, pos] or a list of strings") from None
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.numel() == 0 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"{what} must be integer token ids of shape [batch, pos], got {tuple(t.shape)} {t.dtype}")
    return t.long()


def answer_positions(answer_pos: Any, batch: int, n_pos: int) -> Tensor:
    """[batch, P] answer positions from None (the last token), an int, [batch] or [batch, P].

    The one place answer positions get their default and their checks. Negative positions
    count from the end. Several positions per prompt must be strictly increasing (each scored
    once, in order).
    """
    if answer_pos is None:
        return torch.full((batch, 1), n_pos - 1, dtype=torch.long)
    try:
        t = torch.as_tensor(answer_pos, dtype=torch.long)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"answer_pos must be an int or integer positions, got {answer_pos!r}") from None
    if t.dim() == 0:
        t = t.expand(batch)
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2 or t.shape[0] != batch or t.shape[1] == 0:
        raise ValueError(
            f"answer_pos must be an int, one position per prompt [{batch}] or several [{batch}, P], "
            f"got shape {tuple(t.shape)}"
        )
    t = torch.where(t < 0, t + n_pos, t)
    if bool((t < 0).any() or (t >= n_pos).any()):
        raise ValueError(f"answer_pos must lie in [0, {n_pos}) (prompts have {n_pos} tokens)")
    if t.shape[1] > 1 and bool((t[:, 1:] <= t[:, :-1]).any()):
        raise ValueError("several answer positions per prompt must be strictly increasing along each row")
    return t.clone()


# ---------------------------------------------------------------------- text
def tokenizer_of(model_or_tokenizer: Any) -> Any:
    """The tokenizer of a bridge (``.tokenizer``), or the argument itself if it can encode."""
    tok = getattr(model_or_tokenizer, "tokenizer", None) or model_or_tokenizer
    if not hasattr(tok, "encode"):
        raise ValueError("need a tokenizer (or a model with one) to build text tasks; load the model with a tokenizer")
    return tok


def token_texts(tok: Any, ids: list[int]) -> list[str]:
    """Each id's text alone (``decode([id])``); the ids as numbers where there is no tokenizer."""
    if tok is None:
        return [str(i) for i in ids]
    return [tok.decode([i]) for i in ids]


def encode(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    try:
        return list(tok.encode(text, add_special_tokens=False))
    except TypeError:
        return list(tok.encode(text))


def try_encode(tok: Tokenizer, text: str) -> list[int] | None:
    """``encode``, or None where the tokenizer refuses the text (a word-level vocabulary)."""
    try:
        return encode(tok, text)
    except (ValueError, KeyError):
        return None


def single_token_id(tok: Tokenizer, text: str, label: str) -> int:
    """The id of ``text`` if it is exactly one token; a one-line ValueError otherwise."""
    enc = encode(tok, text)
    if len(enc) != 1:
        raise ValueError(f"{label} answer {text!r} is {len(enc)} tokens; answers must be single tokens")
    return enc[0]


def parse_answers(answers: Any, n_prompts: int, model: Any = None) -> tuple[Tensor, Tensor]:
    """``(correct, incorrect)`` token-id tensors, each [batch] or [batch, k] (k per prompt).

    Accepts a pair of sequences/tensors, or a [batch, 2] tensor. Strings must be single tokens
    of the model's tokenizer.
    """
    if isinstance(answers, Tensor) and answers.dim() == 2 and answers.shape[1] == 2:
        pair = (answers[:, 0], answers[:, 1])
    elif isinstance(answers, (tuple, list)) and len(answers) == 2:
        pair = (answers[0], answers[1])
    else:
        raise ValueError("answers must be (correct, incorrect), each with one entry per prompt")
    out = []
    for name, x in zip(("correct", "incorrect"), pair, strict=True):
        t = _answer_ids(x, model, name)
        if t.dim() == 0:
            t = t.expand(n_prompts)
        if t.shape[0] != n_prompts:
            raise ValueError(f"{name} answers: need one per prompt ({n_prompts}), got {t.shape[0]}")
        out.append(t.long())
    return out[0], out[1]


def _answer_ids(x: Any, model: Any, name: str) -> Tensor:
    if isinstance(x, str) or (isinstance(x, Sequence) and x and all(isinstance(s, str) for s in x)):
        tok = getattr(model, "tokenizer", None)
        if tok is None:
            raise ValueError(f"{name} answers are strings but the model has no tokenizer; pass token ids")
        ids = [single_token_id(tok, w, name) for w in ([x] if isinstance(x, str) else x)]
        return torch.tensor(ids[0] if isinstance(x, str) else ids)
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} answers must be token ids or single-token strings, got {x!r}") from None
