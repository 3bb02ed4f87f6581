"""The one-call Python API: ``acdc.discover(model, clean, corrupt, threshold=...)``."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, TypedDict

import torch
from torch import Tensor
from typing_extensions import Unpack

from .algorithms.acdc import run_acdc
from .circuit import Circuit
from .graph import Graph
from .metrics import Batch, Metric, MetricLike, resolve_metric, scored_rows
from .patching import ABLATIONS, Patcher
from .scores import Scores
from .tasks import Task
from .tasks.text import single_token_id

__all__ = ["attribute", "discover", "make_batch", "parse_answers"]


def discover(
    model: Any,
    clean: Any,
    corrupt: Any = None,
    *,
    threshold: float,
    metric: MetricLike | None = None,
    ablation: str = "resample",
    answers: Any = None,
    answer_pos: int | Sequence[int] | Tensor | None = None,
    abs_value: bool = False,
    split_qkv: bool = True,
    graph: Graph | None = None,
    progress: bool = True,
    speculate: int | None = None,
    prefilter: float | None = None,
    prefilter_method: str = "eap-ig-inputs",
) -> Circuit:
    """Find the circuit of ``model`` on a task with ACDC.

    Args:
        model: a model from `acdc.load_model` (or an in-memory Hugging Face model).
        clean, corrupt: token ids [batch, pos] or lists of strings, paired prompt by prompt;
            or an `acdc.tasks.Task` as ``clean`` (its prompts, answers, positions and metric).
        threshold: keep an edge when removing it raises the metric by at least this (>= 0).
        metric: "kl" (default unless the task names one; KL to the full model at the answer position), "logit_diff",
            "prob_diff", or a callable ``(logits [batch, vocab], batch: acdc.Batch) -> scalar``
            (lower is better; wrap in `acdc.Metric(..., higher_is_better=True)` otherwise).
        ablation: "resample" (corrupt run, prompt by prompt), "mean" or "zero".
        answers: ``(correct, incorrect)`` token ids, each [batch] or [batch, k] (or
            single-token strings), needed by "logit_diff" and "prob_diff".
        answer_pos: position each prompt is scored at (default: the last).
        abs_value: threshold the absolute change of the metric.
        split_qkv: separate edges into each head's q, k and v inputs.
        graph: a prebuilt graph (else built from the model).
        progress: show a progress bar.
        speculate: evaluate up to this many edges into one destination per batched pass (exact;
            see `run_acdc`); default 8 on an accelerator, 1 on a CPU.
        prefilter: APPROXIMATE mode. Test only this fraction of edges, the ones with the largest
            |attribution score| (``prefilter_method``, 5 steps); remove the rest untested. The
            circuit's settings say ``approximate="prefilter"``. Off (exact ACDC) by default.
    """
    check_threshold(threshold)
    patcher, m, batch = prepare(
        model, clean, corrupt, metric=metric, ablation=ablation, answers=answers,
        answer_pos=answer_pos, split_qkv=split_qkv, graph=graph,
    )
    if speculate is None:
        speculate = 8 if patcher.tf.device.type != "cpu" else 1
    skip, settings = None, {}
    if prefilter is not None:
        skip, settings = prefilter_edges(patcher, m, batch, prefilter, prefilter_method)
    return run_acdc(
        patcher, m, batch, float(threshold), abs_value=abs_value, progress=progress, speculate=speculate,
        skip=skip, settings=settings,
    )


def prefilter_edges(patcher: Patcher, metric: Metric, batch: Batch, keep: float, method: str) -> tuple[Tensor, dict[str, Any]]:
    """APPROXIMATE: the edges outside the top ``keep`` fraction by |attribution score|.

    `discover(prefilter=...)` removes them without testing; the settings record that the result
    is approximate.
    """
    from .algorithms.attribution import attribution_scores

    if not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ValueError(f"prefilter must be a fraction in (0, 1], got {keep!r}")
    t0 = time.perf_counter()
    values = attribution_scores(patcher, metric, batch, method=method, steps=5)
    n_keep = max(1, math.ceil(keep * len(values)))
    tested = torch.zeros(len(values), dtype=torch.bool)
    tested[torch.argsort(-values.abs(), stable=True)[:n_keep]] = True
    info = {"approximate": "prefilter", "prefilter": float(keep), "prefilter_method": method,
            "prefilter_seconds": round(time.perf_counter() - t0, 3)}
    return ~tested, info


class Inputs(TypedDict, total=False):
    """Keyword arguments that say what to run on, shared by `discover` and `attribute`."""

    metric: MetricLike | None
    ablation: str
    answers: Any
    answer_pos: int | Sequence[int] | Tensor | None
    split_qkv: bool
    graph: Graph | None


def attribute(
    model: Any,
    clean: Any,
    corrupt: Any = None,
    *,
    method: str = "eap",
    steps: int = 5,
    progress: bool = False,
    **inputs: Unpack[Inputs],
) -> Scores:
    """Score every edge with attribution patching: "eap", "eap-ig-inputs" or "eap-ig-activations".

    Same inputs as `discover` (a `Task` works too); ``steps`` is the number of integrated-gradient
    points (EAP-IG with steps=1 is EAP). Scores are the first-order change of the loss (the
    metric oriented lower-is-better) when an edge alone is ablated; select a circuit with
    ``scores.top(n)``, ``scores.threshold(t)`` or ``scores.greedy(n)``. With ``metric="kl"`` the
    gradient at the clean run is zero, so EAP gives zeros there: use EAP-IG or a difference metric.
    ``inputs``: metric, ablation, answers, answer_pos, split_qkv, graph, as for `discover`.
    """
    from .algorithms.attribution import attribution_scores

    patcher, m, batch = prepare(model, clean, corrupt, **inputs)
    ablation = inputs.get("ablation", "resample")
    t0 = time.perf_counter()
    values = attribution_scores(patcher, m, batch, method=method, steps=steps, progress=progress)
    settings = {
        "method": method, "steps": steps if method != "eap" else 1, "metric": m.name, "ablation": ablation,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return Scores(patcher.graph, values, settings)


def check_threshold(threshold: Any) -> None:
    """Raise a one-line ValueError unless ``threshold`` is a number >= 0."""
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or math.isnan(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")


def prepare(
    model: Any,
    clean: Any,
    corrupt: Any = None,
    *,
    metric: MetricLike | None = None,
    ablation: str = "resample",
    answers: Any = None,
    answer_pos: int | Sequence[int] | Tensor | None = None,
    split_qkv: bool = True,
    graph: Graph | None = None,
) -> tuple[Patcher, Metric, Batch]:
    """Validate the inputs of `discover` and build the patcher, metric and batch it runs on.

    ``clean`` may be an `acdc.tasks.Task`; its answers, positions and metric fill whatever
    is not passed explicitly.
    """
    if isinstance(clean, Task):
        if corrupt is not None:
            raise ValueError("pass either a Task or clean and corrupt prompts, not both")
        task = clean
        clean, corrupt = task.clean, task.corrupt
        answers = answers if answers is not None else task.answers
        answer_pos = answer_pos if answer_pos is not None else task.answer_pos
        metric = metric if metric is not None else task.metric
    elif corrupt is None:
        raise ValueError("corrupt prompts are missing: call discover(model, clean, corrupt, ...) or pass a Task")
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    m = resolve_metric(metric if metric is not None else "kl")
    from .model import load_model

    bridge = load_model(model)
    g = graph if graph is not None else Graph.from_model(bridge, split_qkv=split_qkv)
    patcher = Patcher(bridge, clean, corrupt, graph=g, ablation=ablation, answer_pos=answer_pos)
    batch = make_batch(patcher, answers, bridge)
    if m.needs_answers and batch.correct is None:
        raise ValueError(f"metric {m.name!r} needs answers=(correct, incorrect) token ids")
    return patcher, m, batch


def make_batch(patcher: Patcher, answers: Any = None, model: Any = None) -> Batch:
    """The `Batch` metrics read, for a patcher's prompts and optional answers.

    With P scored positions per prompt, answers [batch, P] (or [batch, P, k]) are flattened to
    one row per scored position, matching the logits' rows.
    """
    n, n_scored = patcher.answer_pos.shape
    correct, incorrect = parse_answers(answers, n, model) if answers is not None else (None, None)
    if correct is not None:
        correct, incorrect = (scored_rows(t, n_scored, name) for t, name in ((correct, "correct"), (incorrect, "incorrect")))
    dev = patcher.tf.device
    return Batch(
        clean=patcher.clean_tokens,
        corrupt=patcher.corrupt_tokens,
        answer_pos=patcher.answer_pos,
        correct=None if correct is None else correct.to(dev),
        incorrect=None if incorrect is None else incorrect.to(dev),
        clean_logits=patcher.clean.logits,
    )


def parse_answers(answers: Any, n_prompts: int, model: Any = None) -> tuple[Tensor, Tensor]:
    """``(correct, incorrect)`` token-id tensors, each [batch] or [batch, k].

    Accepts a pair of sequences/tensors, or a [batch, 2] tensor. Strings must be single tokens.
    """
    if isinstance(answers, Tensor) and answers.dim() == 2 and answers.shape[1] == 2:
        pair = (answers[:, 0], answers[:, 1])
    elif isinstance(answers, (tuple, list)) and len(answers) == 2:
        pair = (answers[0], answers[1])
    else:
        raise ValueError("answers must be (correct, incorrect), each with one entry per prompt")
    out = []
    for name, x in zip(("correct", "incorrect"), pair):
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
    return torch.as_tensor(x)
