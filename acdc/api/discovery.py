"""Finding circuits: `discover` (ACDC), `attribute` (EAP, EAP-IG), `prune_edges` (Edge Pruning), `roc` (a threshold sweep)."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from torch import Tensor
from typing_extensions import Unpack

from ..algorithms import get_algorithm
from ..algorithms.acdc import ACDCOptions, run_acdc, run_fingerprint
from ..algorithms.eap import METHODS, AttributionOptions, attribution_scores
from ..algorithms.edge_pruning import EdgePruningOptions
from ..circuit import Circuit
from ..evaluation import ROC, CircuitLike, Level, check_level, threshold_grid
from ..executors import SweepOptions, resolve_executor, run_sweep
from ..inputs import Prompts, check_threshold
from ..loading import ModelLike
from ..metrics import Batch, Metric
from ..patching import Patcher
from ..scores import Scores
from ..tasks import Task
from .faithfulness import full_and_empty
from .options import AttributeOptions, DiscoverOptions, Inputs, PruneOptions, ROCOptions, names_of, take
from .prepare import prepare
from .sweeps import circuit_from_record, circuit_record, given, portable


def discover(
    model: ModelLike,
    clean: Prompts | Task,
    corrupt: Prompts | None = None,
    *,
    threshold: float,
    progress: bool = True,
    prefilter_scores: Tensor | Scores | None = None,
    checkpoint_if_long: str | Path | None = None,
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
        checkpoint_if_long: where to checkpoint if the run turns out long (estimated over 10 minutes,
            which a `LongRunWarning` says with what shortens it) and no ``checkpoint`` is given; a file there
            from an earlier run of the same call is resumed.
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
    acdc_kw, inputs = take("discover", options, names_of(ACDCOptions, but=("threshold",)), names_of(Inputs))
    acdc_options = ACDCOptions(threshold=threshold, **acdc_kw)
    patcher, m, batch = prepare(model, clean, corrupt, **inputs)
    scores = run_acdc(patcher, m, batch, acdc_options, progress=progress, checkpoint_if_long=checkpoint_if_long,
                      prefilter_scores=prefilter_scores.values if isinstance(prefilter_scores, Scores) else prefilter_scores)
    return _recorded(_with_position_labels(scores, patcher), clean).selection()


def attribute(
    model: ModelLike,
    clean: Prompts | Task,
    corrupt: Prompts | None = None,
    *,
    progress: bool = True,
    **options: Unpack[AttributeOptions],
) -> Scores:
    """Score every edge with attribution patching: ``method`` "eap" (the default), "eap-ig-inputs" or
    "eap-ig-activations".

    Same inputs as `discover` (a `Task` works too); the options are `AttributionOptions`' fields:
    ``method``, ``steps`` (integrated-gradient points, default 5; EAP-IG with steps=1 is EAP) and ``grid``
    where they lie: "right" (k/steps, k = 1..steps; the default) or "left" (k = 0..steps-1, as EAP-IG's
    edge-level EAP-IG-inputs). Scores are the first-order change of the loss (the
    metric oriented lower-is-better) when an edge alone is ablated; select a circuit with
    ``scores.top(n)``, ``scores.threshold(t)`` or ``scores.greedy(n)``. With ``metric="kl"`` the
    gradient at the clean run is zero, so EAP gives zeros there (a `VanishingScoresWarning` says
    so): use EAP-IG or a difference metric. ``progress``: a bar over the gradient passes.
    """
    attr_kw, inputs = take("attribute", options, names_of(AttributionOptions), names_of(Inputs))
    method = attr_kw.get("method", "eap")
    if method not in METHODS:
        raise ValueError(
            f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)} "
            "(ACDC runs with acdc.discover(..., threshold=...))"
        )
    chosen = AttributionOptions(**attr_kw)  # checked before any run
    patcher, m, batch = prepare(model, clean, corrupt, **inputs)
    algorithm = get_algorithm(chosen.method)
    return _recorded(_with_position_labels(algorithm(patcher, m, batch, progress=progress, **chosen.algorithm_options()), patcher),
                     clean)


def prune_edges(
    model: ModelLike,
    clean: Prompts | Task,
    corrupt: Prompts | None = None,
    *,
    progress: bool = True,
    edge_pruning: dict[str, Any] | None = None,
    **options: Unpack[PruneOptions],
) -> Circuit:
    """Edge Pruning (Bhaskar et al. 2024; `acdc.algorithms.edge_pruning`): a learned mask over the
    edges, trained to keep the full model's behaviour with ``target`` of the edges (default 0.05).
    Same inputs as `discover`; the options are `EdgePruningOptions`' fields, as keywords (``target``,
    ``steps``, ``lr``, ``warmup``, ``loss="kl" | "metric"``, ``seed``, ...). Returns the circuit (edges whose
    gate ends above 0.5), every edge scored by ``sigmoid(log_alpha)``. ``edge_pruning`` (a dict of the
    same options) is the older spelling, deprecated.
    """
    if edge_pruning is not None:
        warnings.warn("prune_edges(edge_pruning={...}) is deprecated: pass Edge Pruning's options as keywords, "
                      "prune_edges(..., lr=0.3)", DeprecationWarning, stacklevel=2)
        options = {**options, **edge_pruning}  # type: ignore[typeddict-item]
    prune_kw, inputs = take("prune_edges", options, names_of(EdgePruningOptions), names_of(Inputs))
    chosen = EdgePruningOptions(**prune_kw)  # checked before any run
    patcher, m, batch = prepare(model, clean, corrupt, **inputs)
    return _recorded(get_algorithm("edge-pruning")(patcher, m, batch, progress=progress, **dataclasses.asdict(chosen)),
                     clean).selection()


def _recorded(scores: Scores, clean: Any) -> Scores:
    """Record the task the scores were found on (`Task.record`: name, prompt count, fingerprint, recipe), so that
    a circuit's file says which prompts it was found on and the CLI and explorer score it on the same ones."""
    if isinstance(clean, Task):
        scores.settings["task"] = clean.record()
    return scores


def _with_position_labels(scores: Scores, patcher: Patcher) -> Scores:
    """Record the example prompt's text at each position (the grid rendering's labels) in the settings."""
    pos = patcher.positions
    if pos is not None and pos.example is not None:
        scores.settings["position_labels"] = list(pos.example)
    return scores


# ACDC options a threshold sweep does not share: the threshold is swept; a sweep resumes with ``results=``
SWEPT = ("threshold", "checkpoint", "checkpoint_every")


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
    progress: bool = True,
    **options: Unpack[ROCOptions],
) -> ROC:
    """Sweep ACDC over thresholds (default: an ``n_thresholds`` `threshold_grid` spanning
    ``decades`` below the effect of ablating every edge, so the grid fits the metric).

    ``clean`` may be a `Task`; ``inputs`` are those of `discover`. One patcher serves every
    threshold. Returns the ROC with its circuits. ``progress``: a bar over the thresholds, and
    (serial) each threshold's ACDC bar below it while it runs.

    Options, as keywords: ACDC's that every threshold shares (``abs_value``, ``speculate``, ``prefilter``,
    ``prefilter_method``: `ACDCOptions`), where the sweep runs (`SweepOptions`) and what to run on.
    ``executor``: where the thresholds run (`acdc.executors`: serial by default, ``"ray"`` or a Ray
    address for one ACDC run per worker at a time, each worker building the patcher once);
    ``results=DIR`` keeps each threshold's circuit as JSON there, and a sweep started again skips the
    thresholds already done; ``workers``, ``threads``: how many Ray workers, and torch threads each (default:
    this process's count, with which the circuits are the same, bit for bit, whichever runs them).
    ``prefilter=f`` (APPROXIMATE, as `discover`'s): every threshold tests the same top fraction f of edges,
    ranked once by ``prefilter_method``.
    """
    check_level(level)
    acdc_kw, sweep_kw, inputs = take("roc", options, names_of(ACDCOptions, but=SWEPT), names_of(SweepOptions), names_of(Inputs))
    sweep = SweepOptions(**sweep_kw)
    shared = ACDCOptions(threshold=0.0, **acdc_kw)  # checked before any run; each threshold replaces 0.0
    if thresholds is not None:
        thresholds = [check_threshold(t) for t in thresholds]
    patcher, metric, batch = prepare(model, clean, corrupt, **inputs)
    if thresholds is None:
        full, gone = full_and_empty(patcher, metric, batch)
        thresholds = threshold_grid(abs(gone - full) or 1.0, n=n_thresholds, decades=decades)
    t0 = time.perf_counter()
    ranking = None if shared.prefilter is None else attribution_scores(
        patcher, metric, batch, method=shared.prefilter_method, steps=5, progress=progress)  # one ranking for every threshold
    serial = resolve_executor(sweep.executor)[0] == "serial"
    setup = partial(given, _ACDCSweep(patcher, metric, batch, ranking, progress)) if serial else partial(
        _acdc_setup, *portable(model, clean, corrupt, inputs), ranking)
    items = [(f"threshold={t!r}", {"threshold": t, "abs_value": shared.abs_value, "prefilter": shared.prefilter,
                                   "prefilter_method": shared.prefilter_method,
                                   # speculate changes no result: in the payload (which a resumed sweep compares) only when set;
                                   # faithful_within, only when set (a sweep's results folder from before it stays valid)
                                   **({} if shared.speculate is None else {"speculate": shared.speculate}),
                                   **({} if shared.faithful_within is None else {"faithful_within": shared.faithful_within})})
             for t in thresholds]
    done = run_sweep(setup, _acdc_item, items, **sweep.run_sweep_options(),
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
                     prefilter=item["prefilter"], prefilter_method=item["prefilter_method"], speculate=item.get("speculate"),
                     faithful_within=item.get("faithful_within"), prefilter_scores=state.ranking,
                     progress=state.progress, leave=False).selection()
    return circuit_record(found)


