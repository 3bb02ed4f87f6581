"""Finding circuits: `discover` (ACDC), `attribute` (EAP, EAP-IG), `prune_edges` (Edge Pruning), `roc` (a threshold sweep)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from torch import Tensor
from typing_extensions import Unpack

from ..algorithms import get_algorithm
from ..algorithms.acdc import ACDCOptions, run_acdc, run_fingerprint
from ..algorithms.acdc import check_options as check_acdc
from ..algorithms.eap import METHODS, AttributionOptions, attribution_scores
from ..algorithms.edge_pruning import EdgePruningOptions
from ..circuit import Circuit
from ..evaluation import ROC, CircuitLike, Level, check_level, threshold_grid
from ..executors import ExecutorLike, check_executor, resolve_executor, run_sweep
from ..inputs import Prompts, check_threshold
from ..loading import ModelLike
from ..metrics import Batch, Metric
from ..patching import Patcher
from ..scores import Scores
from ..tasks import Task
from .faithfulness import full_and_empty
from .prepare import DiscoverOptions, Inputs, prepare
from .sweeps import circuit_from_record, circuit_record, given, portable


def discover(
    model: ModelLike,
    clean: Prompts | Task,
    corrupt: Prompts | None = None,
    *,
    threshold: float,
    progress: bool = True,
    prefilter_scores: Tensor | Scores | None = None,
    **options: Unpack[DiscoverOptions],
) -> Circuit:
    """Find the circuit of ``model`` on a task with ACDC.

    Args:
        model: a model from `acdc.load_model` (or an in-memory Hugging Face model, or a name).
        clean, corrupt: token ids [batch, pos] or lists of strings, paired prompt by prompt;
            or an `acdc.tasks.Task` as ``clean`` (its prompts, answers, positions and metric).
        threshold: keep an edge when removing it raises the metric by at least this (>= 0).
        progress: show a progress bar.
        prefilter_scores: with ``prefilter``, attribution scores computed before (a `Scores` or
            [n_edges]) instead of computing them again.
        options: ACDC's (`acdc.algorithms.acdc.ACDCOptions`, where each is described):
            abs_value, speculate (K edges per batched pass, exact), prefilter (APPROXIMATE: test
            only the top fraction of edges by attribution; the circuit's settings say
            ``approximate="prefilter"``), prefilter_method, checkpoint (a JSON file; run the same
            call again to resume a killed run, with the result an uninterrupted run gives),
            checkpoint_every (seconds).
            And what to run on, as for every entry point:
            metric: "kl" (default unless the task names one; KL to the full model at the answer
                position), "logit_diff", "prob_diff", or a callable
                ``(logits [rows, vocab], batch: acdc.Batch) -> scalar`` (lower is better; wrap
                in `acdc.Metric(..., higher_is_better=True)` otherwise).
            ablation: "resample" (corrupt run, prompt by prompt), "mean" or "zero".
            answers: ``(correct, incorrect)`` token ids, each [batch] or [batch, k] (or
                single-token strings), needed by "logit_diff" and "prob_diff".
            answer_pos: position each prompt is scored at (default: the last).
            split_qkv: separate edges into each head's q, k and v inputs (default True).
            graph: a prebuilt graph (else built from the model).
            positions: edges at token positions: "named" (the task's roles, e.g. IOI's IO, S1,
                S1+1, S2, END, other), "tokens" (one position per token index; prompts must
                align), or an `acdc.Positions`; default None, edges at every token at once.
    """
    rest: dict[str, Any] = dict(options)
    acdc_options = ACDCOptions(threshold=threshold, **{k: rest.pop(k) for k in ACDCOptions.names() if k in rest})
    patcher, m, batch = prepare(model, clean, corrupt, **rest)
    scores = run_acdc(patcher, m, batch, acdc_options, progress=progress,
                      prefilter_scores=prefilter_scores.values if isinstance(prefilter_scores, Scores) else prefilter_scores)
    return _with_position_labels(scores, patcher).selection()


def attribute(
    model: ModelLike,
    clean: Prompts | Task,
    corrupt: Prompts | None = None,
    *,
    method: str = "eap",
    steps: int = 5,
    grid: str = "right",
    progress: bool = True,
    **inputs: Unpack[Inputs],
) -> Scores:
    """Score every edge with attribution patching: "eap", "eap-ig-inputs" or "eap-ig-activations".

    Same inputs as `discover` (a `Task` works too); ``steps`` is the number of integrated-gradient
    points (EAP-IG with steps=1 is EAP) and ``grid`` where they lie: "right" (k/steps, k = 1..steps;
    the default) or "left" (k = 0..steps-1, as EAP-IG's edge-level EAP-IG-inputs). Scores are the first-order change of the loss (the
    metric oriented lower-is-better) when an edge alone is ablated; select a circuit with
    ``scores.top(n)``, ``scores.threshold(t)`` or ``scores.greedy(n)``. With ``metric="kl"`` the
    gradient at the clean run is zero, so EAP gives zeros there (a `VanishingScoresWarning` says
    so): use EAP-IG or a difference metric. ``progress``: a bar over the gradient passes.
    """
    if method not in METHODS:
        raise ValueError(
            f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)} "
            "(ACDC runs with acdc.discover(..., threshold=...))"
        )
    algorithm = get_algorithm(method)
    options = AttributionOptions(method=method, steps=steps, grid=grid)  # checked before any run
    patcher, m, batch = prepare(model, clean, corrupt, **inputs)
    return _with_position_labels(algorithm(patcher, m, batch, progress=progress, **options.algorithm_options()), patcher)


def prune_edges(
    model: ModelLike,
    clean: Prompts | Task,
    corrupt: Prompts | None = None,
    *,
    target: float = 0.05,
    steps: int = 200,
    progress: bool = True,
    edge_pruning: dict[str, Any] | None = None,
    **inputs: Unpack[Inputs],
) -> Circuit:
    """Edge Pruning (Bhaskar et al. 2024; `acdc.algorithms.edge_pruning`): a learned mask over the
    edges, trained to keep the full model's behaviour with ``target`` of the edges. Same inputs as
    `discover`; ``edge_pruning``: its other options (``lr``, ``warmup``, ``loss="kl" | "metric"``,
    ``seed``, ...: `EdgePruningOptions`). Returns the circuit (edges whose gate ends above 0.5),
    every edge scored by ``sigmoid(log_alpha)``.
    """
    options = {"target": target, "steps": steps, **(edge_pruning or {})}
    EdgePruningOptions(**options)  # checked before any run
    patcher, m, batch = prepare(model, clean, corrupt, **inputs)
    return get_algorithm("edge-pruning")(patcher, m, batch, progress=progress, **options).selection()


def _with_position_labels(scores: Scores, patcher: Patcher) -> Scores:
    """Record the example prompt's text at each position (the grid rendering's labels) in the settings."""
    pos = patcher.positions
    if pos is not None and pos.example is not None:
        scores.settings["position_labels"] = list(pos.example)
    return scores


def roc(
    model: ModelLike,
    clean: Prompts | Task,
    corrupt: Prompts | None = None,
    *,
    truth: CircuitLike,
    thresholds: Sequence[float] | None = None,
    n_thresholds: int = 22,
    decades: float = 6.0,
    level: Level = "edge",
    abs_value: bool = False,
    prefilter: float | None = None,
    prefilter_method: str = "eap-ig-inputs",
    progress: bool = True,
    executor: ExecutorLike = None,
    results: str | Path | None = None,
    workers: int | None = None,
    threads: int | None = None,
    **inputs: Unpack[Inputs],
) -> ROC:
    """Sweep ACDC over thresholds (default: an ``n_thresholds`` `threshold_grid` spanning
    ``decades`` below the effect of ablating every edge, so the grid fits the metric).

    ``clean`` may be a `Task`; ``inputs`` are those of `discover`. One patcher serves every
    threshold. Returns the ROC with its circuits. ``progress``: a bar over the thresholds, and
    (serial) each threshold's ACDC bar below it while it runs.

    ``executor``: where the thresholds run (`acdc.executors`: serial by default, ``"ray"`` or a Ray
    address for one ACDC run per worker at a time, each worker building the patcher once);
    ``results=DIR`` keeps each threshold's circuit as JSON there, and a sweep started again skips the
    thresholds already done; ``workers``, ``threads``: how many Ray workers, and torch threads each (default:
    this process's count, with which the circuits are the same, bit for bit, whichever runs them).
    ``prefilter=f`` (APPROXIMATE, as `discover`'s): every threshold tests the same top fraction f of edges,
    ranked once by ``prefilter_method``.
    """
    check_level(level)
    check_executor(executor)
    check_acdc(prefilter=prefilter, prefilter_method=prefilter_method)
    if thresholds is not None:
        thresholds = [check_threshold(t) for t in thresholds]
    patcher, metric, batch = prepare(model, clean, corrupt, **inputs)
    if thresholds is None:
        full, gone = full_and_empty(patcher, metric, batch)
        thresholds = threshold_grid(abs(gone - full) or 1.0, n=n_thresholds, decades=decades)
    t0 = time.perf_counter()
    ranking = None if prefilter is None else attribution_scores(patcher, metric, batch, method=prefilter_method, steps=5,
                                                                 progress=progress)  # one ranking for every threshold
    serial = resolve_executor(executor)[0] == "serial"
    setup = partial(given, _ACDCSweep(patcher, metric, batch, ranking, progress)) if serial else partial(
        _acdc_setup, *portable(model, clean, corrupt, inputs), ranking)
    items = [(f"threshold={t!r}", {"threshold": t, "abs_value": abs_value, "prefilter": prefilter,
                                   "prefilter_method": prefilter_method}) for t in thresholds]
    done = run_sweep(setup, _acdc_item, items, executor=executor, results=results, workers=workers, threads=threads,
                     fingerprint=run_fingerprint(patcher, metric, batch, patcher.tf.fingerprint()), progress=progress, desc="ACDC thresholds")
    seconds = time.perf_counter() - t0
    circuits = [circuit_from_record(patcher.graph, d) for d in done]
    return ROC.from_circuits(circuits, truth, level=level, params=thresholds, graph=patcher.graph, seconds=seconds)


@dataclass(frozen=True)
class _ACDCSweep:
    """What every threshold of an ACDC sweep shares: the patcher, metric and batch, the prefilter's ranking."""

    patcher: Patcher
    metric: Metric
    batch: Batch
    ranking: Tensor | None  # [n_edges] attribution scores (prefilter), or None
    progress: bool  # each threshold's own ACDC bar (serial only)


def _acdc_setup(model: ModelLike, clean: Any, corrupt: Any, inputs: dict[str, Any], ranking: Tensor | None) -> _ACDCSweep:
    """A worker's state for ACDC sweeps (no inner progress bars)."""
    return _ACDCSweep(*prepare(model, clean, corrupt, **inputs), ranking, False)


def _acdc_item(state: _ACDCSweep, item: dict[str, Any]) -> dict[str, Any]:
    """One threshold of an ACDC sweep: the circuit as its JSON dict."""
    found = run_acdc(state.patcher, state.metric, state.batch, threshold=item["threshold"], abs_value=item["abs_value"],
                     prefilter=item["prefilter"], prefilter_method=item["prefilter_method"], prefilter_scores=state.ranking,
                     progress=state.progress, leave=False).selection()
    return circuit_record(found)


