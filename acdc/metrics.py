"""Metrics on the logits at the answer positions, with their direction made explicit.

A metric maps ``(logits, batch) -> scalar`` where ``logits`` is ``[rows, d_vocab]``, one row per
scored position (``batch * P``, prompt-major; P = 1 unless a task scores several positions per
prompt) and ``batch`` is a `Batch` whose answers and clean logits have the same rows. ACDC
minimises, so `Metric.loss` turns any metric into lower-is-better: KL as is, logit and
probability differences negated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Batch", "Metric", "accuracy", "kl_divergence", "logit_diff", "per_prompt", "prob_diff", "resolve_metric", "year_prob_diff",
    "scored_rows", "METRICS",
]


@dataclass(frozen=True)
class Batch:
    """What a metric may read besides the patched logits.

    clean, corrupt: [batch, pos] token ids.
    answer_pos:     [batch, P] positions each prompt is scored at.
    correct:        [rows] or [rows, k] correct answer token ids (-1 pads), or None;
                    rows = batch * P, one per scored position.
    incorrect:      same for the incorrect answers, or None.
    clean_logits:   [rows, d_vocab] full model's logits at the scored positions.
    """

    clean: Tensor
    corrupt: Tensor
    answer_pos: Tensor
    correct: Tensor | None
    incorrect: Tensor | None
    clean_logits: Tensor


@dataclass(frozen=True)
class Metric:
    """A named metric and its direction. ``fn(logits, batch)`` returns a 0-d tensor.

    ``reads_answers_only``: ``fn`` reads nothing but the answers' logits (``logits.gather`` at
    ``batch.correct`` / ``batch.incorrect``), so it can run on those columns alone (`narrow`:
    ACDC then unembeds a few columns, not the vocabulary). A metric that normalises over the
    vocabulary (KL, probabilities) reads every column.
    """

    name: str
    fn: Callable[[Tensor, Batch], Tensor]
    higher_is_better: bool = False
    needs_answers: bool = False
    reads_answers_only: bool = False

    def narrow(self, batch: Batch) -> tuple[Tensor | None, Batch]:
        """(the vocabulary columns this metric reads on ``batch`` [k], the batch with its answers
        renumbered into them and its clean logits cut to them); (None, batch) when it reads them all.
        ``metric(logits[:, cols], narrowed)`` equals ``metric(logits, batch)``."""
        if not self.reads_answers_only or batch.correct is None or batch.incorrect is None:
            return None, batch
        ids = torch.cat([batch.correct.reshape(-1), batch.incorrect.reshape(-1)])
        cols = torch.unique(ids[ids >= 0])  # sorted
        def renumber(t: Tensor) -> Tensor:
            return torch.where(t >= 0, torch.searchsorted(cols, t.clamp(min=0)), t)
        narrowed = Batch(batch.clean, batch.corrupt, batch.answer_pos, renumber(batch.correct), renumber(batch.incorrect),
                         batch.clean_logits.index_select(-1, cols.to(batch.clean_logits.device)))
        return cols, narrowed

    def __call__(self, logits: Tensor, batch: Batch) -> float:
        return float(self.fn(logits, batch))

    def loss(self, logits: Tensor, batch: Batch) -> float:
        """The metric oriented so that lower is better (what ACDC thresholds)."""
        value = self(logits, batch)
        return -value if self.higher_is_better else value

    def loss_tensor(self, logits: Tensor, batch: Batch) -> Tensor:
        """`loss` as a 0-d tensor that gradients flow through (for attribution)."""
        value = self.fn(logits, batch)
        return -value if self.higher_is_better else value


def kl_divergence(logits: Tensor, batch: Batch) -> Tensor:
    """KL(full model || patched) at the scored positions, averaged over them."""
    ref = batch.clean_logits.log_softmax(-1)
    new = logits.log_softmax(-1)
    return (ref.exp() * (ref - new)).sum(-1).mean()


def _answer_values(values: Tensor, ids: Tensor | None, reduce: str) -> Tensor:
    """Per-row mean (or sum) of ``values`` at answer ids [rows] or [rows, k] (-1 = pad)."""
    if ids is None:
        raise ValueError("this metric needs answers: pass answers=(correct, incorrect) token ids")
    ids = ids.to(values.device)
    if ids.dim() == 1:
        ids = ids[:, None]
    valid = ids >= 0
    picked = values.gather(-1, ids.clamp(min=0)) * valid
    total = picked.sum(-1)
    return total / valid.sum(-1).clamp(min=1) if reduce == "mean" else total


def scored_rows(answers: Tensor, n_scored: int, name: str = "answers") -> Tensor:
    """Answers per prompt -> answers per scored row (prompt-major), for P scored positions.

    P == 1: [batch] or [batch, k] (k answers, -1 pads) as given. P > 1: [batch, P] (one answer
    per position) or [batch, P, k], flattened to [batch * P] or [batch * P, k].
    """
    if n_scored == 1:
        return answers.squeeze(1) if answers.dim() == 3 else answers
    if answers.dim() not in (2, 3) or answers.shape[1] != n_scored:
        raise ValueError(
            f"{name} answers: with {n_scored} scored positions per prompt they must be [batch, {n_scored}] "
            f"or [batch, {n_scored}, k], got shape {tuple(answers.shape)}"
        )
    return answers.reshape(-1, *answers.shape[2:])


def logit_diff(logits: Tensor, batch: Batch) -> Tensor:
    """Mean over scored rows of logit(correct) - logit(incorrect)."""
    return (
        _answer_values(logits, batch.correct, "mean") - _answer_values(logits, batch.incorrect, "mean")
    ).mean()


def prob_diff(logits: Tensor, batch: Batch) -> Tensor:
    """Mean over scored rows of P(correct) - P(incorrect) (sums over answer sets)."""
    probs = logits.softmax(-1)
    return (_answer_values(probs, batch.correct, "sum") - _answer_values(probs, batch.incorrect, "sum")).mean()


def year_prob_diff(logits: Tensor, batch: Batch) -> Tensor:
    """Greater-than's probability difference for a year written digit by digit (`acdc.tasks.greater_than` with
    ``metric="year_prob_diff"``): two scored rows per prompt, the tens digit's distribution P0 and, at the tens digit t
    the prompt goes on with, the units digit's P1. P(greater) = P0(correct_0) + P0(t) P1(correct_1), P(not greater) =
    P0(incorrect_0) + P0(t) P1(incorrect_1); the mean over prompts of their difference."""
    n, n_scored = batch.answer_pos.shape
    if n_scored != 2:
        raise ValueError(f"year_prob_diff scores two rows per prompt (the tens digit, then the units digit); got {n_scored}")
    probs = logits.softmax(-1).view(n, 2, -1)
    pos1 = batch.answer_pos[:, 1].to(logits.device)
    t = batch.clean.to(logits.device)[torch.arange(n, device=logits.device), pos1]  # the tens digit the prompt goes on with
    p_t = probs[:, 0].gather(-1, t[:, None])[:, 0]
    corr = _answer_values(probs.reshape(2 * n, -1), batch.correct, "sum").view(n, 2)
    inc = _answer_values(probs.reshape(2 * n, -1), batch.incorrect, "sum").view(n, 2)
    return ((corr[:, 0] + p_t * corr[:, 1]) - (inc[:, 0] + p_t * inc[:, 1])).mean()


def accuracy(logits: Tensor, batch: Batch) -> Tensor:
    """Share of scored rows whose (first) correct answer beats every incorrect answer."""
    correct = _answer_values(logits, None if batch.correct is None else _first(batch.correct), "sum")
    ids = batch.incorrect
    if ids is None:
        raise ValueError("this metric needs answers: pass answers=(correct, incorrect) token ids")
    ids = ids.to(logits.device)
    ids = ids[:, None] if ids.dim() == 1 else ids
    wrong = logits.gather(-1, ids.clamp(min=0)).masked_fill(ids < 0, -math.inf).max(-1).values
    return (correct > wrong).to(logits.dtype).mean()


def _first(ids: Tensor) -> Tensor:
    return ids if ids.dim() == 1 else ids[:, 0]


def per_prompt(metric: Metric, logits: Tensor, batch: Batch) -> Tensor:
    """[n_prompts] the metric (in its own sign) on each prompt's scored rows alone."""
    n, n_scored = batch.answer_pos.shape
    out = []
    for i in range(n):
        rows = slice(i * n_scored, (i + 1) * n_scored)
        sub = Batch(
            clean=batch.clean[i : i + 1], corrupt=batch.corrupt[i : i + 1], answer_pos=batch.answer_pos[i : i + 1],
            correct=None if batch.correct is None else batch.correct[rows],
            incorrect=None if batch.incorrect is None else batch.incorrect[rows],
            clean_logits=batch.clean_logits[rows],
        )
        out.append(metric(logits[rows], sub))
    return torch.tensor(out, dtype=torch.float64)


METRICS: dict[str, Metric] = {
    "kl": Metric("kl", kl_divergence, higher_is_better=False),
    "logit_diff": Metric("logit_diff", logit_diff, higher_is_better=True, needs_answers=True, reads_answers_only=True),
    "prob_diff": Metric("prob_diff", prob_diff, higher_is_better=True, needs_answers=True),
    "year_prob_diff": Metric("year_prob_diff", year_prob_diff, higher_is_better=True, needs_answers=True),
    "accuracy": Metric("accuracy", accuracy, higher_is_better=True, needs_answers=True, reads_answers_only=True),
}

MetricLike = str | Metric | Callable[[Tensor, Batch], Tensor]


def resolve_metric(metric: MetricLike) -> Metric:
    """A `Metric` from a name, a `Metric`, or a callable (taken as lower-is-better)."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        try:
            return METRICS[metric]
        except KeyError:
            raise ValueError(
                f"unknown metric {metric!r}; choose one of {', '.join(METRICS)} or pass a callable "
                f"(logits, batch) -> scalar"
            ) from None
    if callable(metric):
        name = getattr(metric, "__name__", "custom")
        return Metric(name, lambda logits, batch: torch.as_tensor(metric(logits, batch)))
    raise TypeError(f"metric must be a name, a Metric or a callable, got {type(metric).__name__}")
