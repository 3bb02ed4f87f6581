"""The one room that runs things: build a `Patcher` for a task, run an algorithm, sweep thresholds.

    circuit = acdc.discover(model, task, threshold=0.05)          # ACDC -> Circuit
    scores = acdc.attribute(model, task, method="eap-ig-inputs")  # EAP / EAP-IG -> Scores
    curve = acdc.roc(model, task, truth=acdc.known.load("ioi"))   # ACDC threshold sweep -> ROC

Everything below this module is data, the engine, the algorithms and pure evaluation; the CLI
and the demo are thin layers above it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import Tensor
from typing_extensions import Unpack

from .algorithms import get_algorithm
from .algorithms.acdc import ACDCOptions, run_acdc, run_fingerprint
from .algorithms.acdc import check_options as check_acdc
from .algorithms.attribution import METHODS, AttributionOptions, attribution_scores
from .algorithms.attribution_graph import build_attribution_graph
from .algorithms.edge_pruning import EdgePruningOptions
from .attribution_graphs import AttributionGraph
from .circuit import Circuit
from .evaluation import ROC, CircuitLike, Level, as_mask, check_level, threshold_grid
from .executors import ExecutorLike, check_executor, resolve_executor, run_sweep
from .faithfulness_math import (
    MIB_FRACTIONS,
    Completeness,
    Faithfulness,
    FaithfulnessCurve,
    FaithfulnessGrid,
    Minimality,
)
from .graph import Graph
from .inputs import Answers, Prompts, as_tokens, check_ablation, check_threshold, parse_answers
from .known import KnownCircuit
from .loading import ModelLike, load_model
from .metrics import Batch, Metric, MetricLike, per_prompt, resolve_metric, scored_rows
from .model import Transformer
from .patching import Patcher
from .positions import Positions, token_names
from .progress import bar
from .scores import Scores
from .tasks import Task
from .transcoders import TranscoderSet

__all__ = [
    "attribution_graph",
    "DEFAULT_GRID", "FaithfulnessSetting", "Inputs", "attribute", "completeness", "discover", "faithfulness", "faithfulness_curve", "prune_edges",
    "faithfulness_grid", "make_batch", "minimality", "prepare", "roc",
]

LEVELS = ("edge", "node")
POSITION_MODES = ("circuit", "all")
DIRECTIONS = ("clean-complement", "clean-circuit", "corrupt-circuit", "corrupt-complement")
AVERAGES = ("ratio-of-means", "mean-of-ratios")


@dataclass(frozen=True)
class FaithfulnessSetting:
    """One faithfulness setting (Miller et al.'s axes), declared once: `faithfulness` takes its fields,
    each entry of `faithfulness_grid`'s grid is one, and the CLI's faithfulness flags are made from it.
    ``__post_init__`` checks every value, so a bad setting is refused before any model runs."""

    level: str = field(default="edge", metadata={
        "help": "edge: ablate the edges outside the circuit; node: the outputs of the nodes outside it", "choices": LEVELS})
    direction: str = field(default="clean-complement", metadata={
        "help": "which side is patched (clean prompts with the complement ablated is the usual)", "choices": DIRECTIONS})
    average: str = field(default="ratio-of-means", metadata={
        "help": "which ratio is reported first (the IOI paper's ratio of means, or the mean of per-prompt ratios)",
        "choices": AVERAGES})
    at: str = field(default="circuit", metadata={
        "help": "positional circuits: keep its edges only at its positions, or at every position", "choices": POSITION_MODES})
    mean_over: str | int = field(default="batch", metadata={
        "help": "with mean ablation: the reference set averaged (batch, template, or a number of prompts)"})
    ablation: str | None = field(default=None, metadata={"help": "default: the run's"})
    metric: MetricLike | None = field(default=None, metadata={"help": "default: the task's"})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FaithfulnessSetting:
        """A setting from a dict of its fields; a one-line error naming an unknown one."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown faithfulness setting {', '.join(map(repr, unknown))}; the settings are "
                             f"{', '.join(f.name for f in fields(cls))}")
        return cls(**d)

    def __post_init__(self) -> None:
        for name, choices in (("level", LEVELS), ("direction", DIRECTIONS), ("average", AVERAGES), ("at", POSITION_MODES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(choices)}")
        if self.ablation is not None:
            check_ablation(self.ablation)
        if self.mean_over != "batch" and self.ablation not in (None, "mean"):
            raise ValueError(f"mean_over={self.mean_over!r} needs ablation='mean'")


class Inputs(TypedDict, total=False):
    """Keyword arguments that say what to run on, shared by `discover`, `attribute` and `roc`."""

    metric: MetricLike | None
    ablation: str
    answers: Answers | None
    answer_pos: int | Sequence[int] | Tensor | None
    split_qkv: bool
    graph: Graph | None
    positions: str | Positions | None


class DiscoverOptions(Inputs, total=False):
    """`discover`'s keywords, for type checkers: what to run on (`Inputs`) and ACDC's options.

    The ACDC ones are `ACDCOptions`' fields (defaults, checks and help live there; a test keeps
    this list equal to them).
    """

    abs_value: bool
    speculate: int | None
    prefilter: float | None
    prefilter_method: str
    checkpoint: str | Path | None
    checkpoint_every: float


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
        full, gone = _full_and_empty(patcher, metric, batch)
        thresholds = threshold_grid(abs(gone - full) or 1.0, n=n_thresholds, decades=decades)
    t0 = time.perf_counter()
    ranking = None if prefilter is None else attribution_scores(patcher, metric, batch, method=prefilter_method, steps=5,
                                                                 progress=progress)  # one ranking for every threshold
    serial = resolve_executor(executor)[0] == "serial"
    setup = partial(_given, _ACDCSweep(patcher, metric, batch, ranking, progress)) if serial else partial(
        _acdc_setup, *_portable(model, clean, corrupt, inputs), ranking)
    items = [(f"threshold={t!r}", {"threshold": t, "abs_value": abs_value, "prefilter": prefilter,
                                   "prefilter_method": prefilter_method}) for t in thresholds]
    done = run_sweep(setup, _acdc_item, items, executor=executor, results=results, workers=workers, threads=threads,
                     fingerprint=run_fingerprint(patcher, metric, batch, patcher.tf.fingerprint()), progress=progress, desc="ACDC thresholds")
    seconds = time.perf_counter() - t0
    circuits = [_circuit_from_record(patcher.graph, d) for d in done]
    return ROC.from_circuits(circuits, truth, level=level, params=thresholds, graph=patcher.graph, seconds=seconds)


def _given(state: Any) -> Any:
    """A sweep's setup that hands over state built already (the serial executor)."""
    return state


def _portable(model: ModelLike, clean: Any, corrupt: Any, inputs: Inputs | dict[str, Any]) -> tuple[Any, Any, Any, dict[str, Any]]:
    """The inputs of `prepare` in a form a Ray worker can rebuild: a model name or path stays (each worker
    loads it), any other model becomes the engine's own `Transformer` (a bridge does not pickle), with
    text prompts and answers turned into token ids here, where the tokenizer is."""
    rest = dict(inputs)
    if isinstance(model, (str, Path)):
        return model, clean, corrupt, rest
    bridge: Any = load_model(model)  # a bridge or the engine's own model
    tf = Transformer.of(bridge)
    if not isinstance(clean, Task):
        clean, corrupt = as_tokens(clean, bridge, "clean"), as_tokens(corrupt, bridge, "corrupt")
        if rest.get("answers") is not None:
            rest["answers"] = parse_answers(rest["answers"], int(clean.shape[0]), bridge)
    return tf, clean, corrupt, rest


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
    return _circuit_record(found)


def _circuit_record(c: Circuit, kept_only: bool = False) -> dict[str, Any]:
    """A sweep's compact JSON of a circuit (kept and tested edge indices, scores, trace, settings): the
    graph stays with the sweep, so a 123,211-edge circuit costs milliseconds, not the seconds of `Circuit.to_dict`.
    ``kept_only``: the scores of the kept edges only (a method that scores every edge: the others read back NaN)."""
    tested = c.in_graph.nonzero().squeeze(1) if kept_only else (~c.scores.isnan()).nonzero().squeeze(1)
    return {"kept": c.in_graph.nonzero().squeeze(1).tolist(), "tested": tested.tolist(), "scores": c.scores[tested].tolist(),
            "metric_trace": [float(x) for x in c.metric_trace], "settings": c.settings}


def _circuit_from_record(g: Graph, d: dict[str, Any]) -> Circuit:
    """`_circuit_record` back, on the sweep's own graph object (a feature graph keeps its transcoders)."""
    keep = torch.zeros(g.n_edges, dtype=torch.bool)
    keep[d["kept"]] = True
    scores = torch.full((g.n_edges,), math.nan, dtype=torch.float64)
    scores[d["tested"]] = torch.tensor(d["scores"], dtype=torch.float64)
    return Circuit(g, keep, scores, list(d["metric_trace"]), dict(d["settings"]))


def faithfulness(
    model: ModelLike,
    task: Task,
    circuit: CircuitLike,
    *,
    level: str = "edge",
    direction: str = "clean-complement",
    average: str = "ratio-of-means",
    mean_over: str | int = "batch",
    at: str = "circuit",
    seed: int = 0,
    progress: bool = True,
    **inputs: Unpack[Inputs],
) -> Faithfulness:
    """How much of the behaviour ``circuit`` keeps: m(M), m(C), m({}), ratios, per prompt, spread.

    Args:
        task: an `acdc.Task` (prompts, answers, positions, default metric).
        circuit: a `Circuit`, `KnownCircuit`, edge mask or edge names for this model's graph.
        level: "edge" (ablate the edges outside the circuit) or "node" (ablate the output of
            every node outside it; the input node always stays).
        direction: which side is patched. "clean-complement" (clean prompts, everything outside
            the circuit ablated: the usual), "clean-circuit" (clean prompts, the circuit ablated),
            "corrupt-circuit" (corrupt prompts, the clean circuit patched in), "corrupt-complement"
            (corrupt prompts, the clean complement patched in). In the corrupt directions the
            patched-in value is the clean run's (its mean for ``ablation="mean"``, zero for "zero"),
            m(M) patches every edge in and m({}) none.
        average: which ratio is `Faithfulness.ratio`: "ratio-of-means" (m(C) / m(M), the IOI
            paper's) or "mean-of-ratios" (the mean of each prompt's ratio); both are reported.
        mean_over: with ``ablation="mean"``, the reference set averaged: "batch" (every corrupt
            prompt), "template" (the prompts of each prompt's own template, as the IOI paper;
            needs ``task.template``), or an int k (k corrupt prompts drawn with ``seed``).
        at: for a positional circuit (edges at token positions), where its edges are kept:
            "circuit" (only at its positions; every other edge x position is ablated) or "all"
            (an edge kept at any position is kept at every position, as a plain circuit; only
            edges outside it are ablated, at every token). A positional circuit runs on the
            task's named positions (or token positions "0", "1", ...).
        progress: a bar over the patched runs.
        inputs: metric ("logit_diff", "prob_diff", "kl", "accuracy" or your own; default the
            task's), ablation ("resample", "mean", "zero"), answers, answer_pos, split_qkv, graph.
    """
    setting = FaithfulnessSetting(level=level, direction=direction, average=average, mean_over=mean_over, at=at)
    runs = _FaithfulnessRuns(model, task, circuit, seed=seed, inputs=inputs)
    return runs.measure(setting, progress=progress)


class _FaithfulnessRuns:
    """The patchers faithfulness settings need, built once each (clean/corrupt x ablation x reference set)."""

    def __init__(self, model: Any, task: Any, circuit: CircuitLike, *, seed: int, inputs: Inputs):
        self.task, self.seed = task, seed
        rest: dict[str, Any] = dict(inputs)
        self.ablation: str = rest.pop("ablation", "resample")
        own = circuit.graph if isinstance(circuit, Circuit) else circuit.graph() if isinstance(circuit, KnownCircuit) else None
        if own is not None and own.positions is not None and "positions" not in rest and "graph" not in rest:
            rest["positions"] = "tokens" if own.positions == token_names(int(task.clean.shape[1])) else "named"
        if own is not None and own.split_mlps and "graph" not in rest:  # a circuit of neurons or features runs on its own graph
            rest["graph"] = own
        base, self.m, self.batch = prepare(model, task, ablation=self.ablation, **rest)
        self.graph = base.graph
        self.circuit = as_mask(circuit, self.graph)
        self._patchers: dict[tuple[str, str, bool], Patcher] = {(self.ablation, "batch", False): base}
        self._logits: dict[tuple[int, bytes], Tensor] = {}  # (patcher, ablated mask) -> logits, shared by settings

    def logits(self, p: Patcher, mask: Tensor) -> Tensor:
        """Logits of ``p`` with ``mask`` ablated; the two extremes come from the cached runs where they can."""
        key = (id(p), mask.numpy().tobytes())
        if key not in self._logits:
            self._logits[key] = p.masked_logits(mask)
        return self._logits[key]

    def circuit_nodes(self) -> list[str]:
        """The heads and MLPs the circuit touches, in forward order."""
        g, keep = self.graph, self.circuit
        used = {g.sources[s].name for s in g.edge_src[keep].tolist()}
        used |= {g.destinations[d].node.name for d in g.edge_dst[keep].tolist()}
        return [n.name for n in g.components() if n.name in used]

    def node_metric(self, nodes: Sequence[str]) -> float:
        """The metric with the output of every node outside ``nodes`` ablated (the input stays)."""
        kept = set(nodes) | {"input"}
        ablated = ~self.graph.edges_out_of(kept)
        return self.m(self.logits(self.patcher(self.ablation, "batch", False), ablated), self.batch)

    def patcher(self, ablation: str, mean_over: str | int, swapped: bool) -> Patcher:
        key = (ablation, str(mean_over), swapped)
        if key not in self._patchers:
            base = next(iter(self._patchers.values()))
            weights = _mean_weights(self.task, mean_over, self.seed, ablation)
            clean, corrupt = (base.corrupt_tokens, base.clean_tokens) if swapped else (base.clean_tokens, base.corrupt_tokens)
            self._patchers[key] = Patcher(base.tf, clean, corrupt, graph=self.graph, ablation=ablation,  # type: ignore[arg-type]
                                          answer_pos=base.answer_pos, mean_weights=weights, positions=base.positions)
        return self._patchers[key]

    def measure(self, setting: FaithfulnessSetting, progress: bool = False) -> Faithfulness:
        level, direction, average, at = setting.level, setting.direction, setting.average, setting.at
        mean_over, metric = setting.mean_over, setting.metric
        ablation = str(setting.ablation or self.ablation)
        if mean_over != "batch" and ablation != "mean":
            raise ValueError(f"mean_over={mean_over!r} needs ablation='mean'")
        m = self.m if metric is None else resolve_metric(metric)
        if m.needs_answers and self.batch.correct is None:
            raise ValueError(f"metric {m.name!r} needs answers=(correct, incorrect) token ids")
        g, keep = self.graph, self.circuit
        if g.positions is not None and at == "all":  # kept at one position -> kept at every position
            keep = keep.view(-1, g.n_positions).any(1, keepdim=True).expand(-1, g.n_positions).reshape(-1)
        if level == "node":
            nodes = {g.sources[s].name for s in g.edge_src[keep].tolist()}
            nodes |= {g.destinations[d].node.name for d in g.edge_dst[keep].tolist()} | {"input"}
            keep = g.edges_out_of(nodes)
        # corrupt directions: the same engine with the roles swapped, so "ablated" means the clean values
        run_on = self.patcher(ablation, mean_over, swapped=direction.startswith("corrupt"))
        everything, nothing = torch.ones(g.n_edges, dtype=torch.bool), torch.zeros(g.n_edges, dtype=torch.bool)
        ablated = {"clean-complement": ~keep, "clean-circuit": keep, "corrupt-circuit": keep, "corrupt-complement": ~keep}
        full, empty = (nothing, everything) if direction.startswith("clean") else (everything, nothing)

        def measure(mask: Tensor) -> tuple[float, Tensor]:
            logits = self.logits(run_on, mask)
            return m(logits, self.batch), per_prompt(m, logits, self.batch)

        masks = [full, ablated[direction], empty]
        (mm, pm), (mc, pc), (me, pe) = (measure(x) for x in bar(masks, desc="faithfulness runs", disable=not progress))
        settings: dict[str, Any] = {"level": level, "direction": direction, "average": average, "ablation": ablation,
                                    "metric": m.name, "circuit_edges": int(keep.sum())}
        if ablation == "mean":
            settings["mean_over"] = mean_over
        if g.positions is not None:
            settings["at"] = at
        return Faithfulness(mm, mc, me, pm, pc, pe, settings)


def completeness(
    model: ModelLike,
    task: Task,
    circuit: CircuitLike,
    *,
    classes: Any = None,
    n_random: int = 5,
    greedy_steps: int = 0,
    seed: int = 0,
    **inputs: Unpack[Inputs],
) -> Completeness:
    """The IOI paper's completeness: F(C minus K) against F(M minus K) for sets K of the circuit's nodes.

    F is the metric with every node outside the kept set ablated (node level; the input stays).
    The sets K: the empty set, each class's nodes in the circuit (``classes``: class -> nodes, or a
    `KnownCircuit`; default the circuit's own classes when it is a `KnownCircuit`), ``n_random``
    random halves of the circuit's nodes (seeded), and ``greedy_steps`` steps of the IOI authors'
    greedy search (add the node that most increases |F(C minus K) - F(M minus K)|).
    """
    runs = _FaithfulnessRuns(model, task, circuit, seed=seed, inputs=inputs)
    if classes is None:
        classes = getattr(circuit, "classes", None)
    mapping = dict(getattr(classes, "classes", classes) or {})
    in_c = runs.circuit_nodes()
    everything = [n.name for n in runs.graph.components()]
    rows: list[tuple[str, tuple[str, ...], float, float]] = []

    def row(label: str, k: Sequence[str]) -> tuple[str, tuple[str, ...], float, float]:
        drop = set(k)
        return (label, tuple(k), runs.node_metric([n for n in in_c if n not in drop]),
                runs.node_metric([n for n in everything if n not in drop]))

    rows.append(row("empty", []))
    for cls, members in mapping.items():
        k = [n for n in in_c if n in set(members)]
        if k:
            rows.append(row(f"class {cls}", k))
    gen = torch.Generator().manual_seed(seed)
    for i in range(n_random):
        pick = torch.randperm(len(in_c), generator=gen)[: len(in_c) // 2].tolist()
        rows.append(row(f"random half {i + 1}", [in_c[j] for j in sorted(pick)]))
    k_greedy: list[str] = []
    for step in range(min(greedy_steps, len(in_c))):
        best = max((row(f"greedy {step + 1}", [*k_greedy, v]) for v in in_c if v not in k_greedy),
                   key=lambda r: abs(r[2] - r[3]))
        rows.append(best)
        k_greedy = list(best[1])
    return Completeness(tuple(rows))


def minimality(
    model: ModelLike,
    task: Task,
    circuit: CircuitLike,
    *,
    k_sets: Any = None,
    **inputs: Unpack[Inputs],
) -> Minimality:
    """The IOI paper's minimality: |F(C minus (K_v + v)) - F(C minus K_v)| for every node v of the circuit.

    ``k_sets``: node -> the nodes K_v removed with it (the IOI paper chose them by hand, e.g. the
    other heads of v's class); default the empty set, so the score is v's own effect in the circuit.
    """
    runs = _FaithfulnessRuns(model, task, circuit, seed=0, inputs=inputs)
    in_c = runs.circuit_nodes()
    k_sets = dict(k_sets or {})
    scores = []
    for v in in_c:
        k = set(k_sets.get(v, ())) - {v}
        without_k = runs.node_metric([n for n in in_c if n not in k])
        without_both = runs.node_metric([n for n in in_c if n not in k and n != v])
        scores.append((v, abs(without_both - without_k)))
    return Minimality(tuple(scores))


DEFAULT_GRID: tuple[dict[str, Any], ...] = (
    {},  # edge, resample, clean-complement, the task's metric, ratio of means
    {"ablation": "mean"},
    {"ablation": "zero"},
    {"level": "node"},
    {"level": "node", "ablation": "mean"},
    {"direction": "clean-circuit"},
    {"direction": "corrupt-circuit"},
    {"direction": "corrupt-complement"},
    {"average": "mean-of-ratios"},
    {"metric": "prob_diff"},
)


def faithfulness_grid(
    model: ModelLike,
    task: Task,
    circuit: CircuitLike,
    *,
    grid: Sequence[dict[str, Any] | FaithfulnessSetting] = DEFAULT_GRID,
    reference_sizes: Sequence[int] = (),
    seed: int = 0,
    progress: bool = True,
    executor: ExecutorLike = None,
    results: str | Path | None = None,
    workers: int | None = None,
    threads: int | None = None,
    **inputs: Unpack[Inputs],
) -> FaithfulnessGrid:
    """Faithfulness under many settings at once (Miller et al.'s axes), sharing runs between them.

    grid: settings, each a `FaithfulnessSetting` or a dict of its fields (level, ablation,
        direction, average, metric, mean_over, at); missing ones take their defaults. The default grid varies one axis at
        a time from the usual setting (10 settings).
    reference_sizes: also mean ablation over k drawn prompts for each k here (faithfulness
        against the reference-set size).
    progress: a bar over the settings.
    executor, results, workers, threads: as `roc`'s (each Ray worker builds its patchers once; a setting with a
        metric of your own needs a picklable function there).
    Returns a `FaithfulnessGrid`: ``.rows``, ``.to_markdown()``, ``.to_csv(path)``, ``.plot(path)``.
    """
    check_executor(executor)
    settings = [x if isinstance(x, FaithfulnessSetting) else FaithfulnessSetting.from_dict(x) for x in grid]
    settings += [FaithfulnessSetting(ablation="mean", mean_over=int(k)) for k in reference_sizes]
    runs = _FaithfulnessRuns(model, task, circuit, seed=seed, inputs=inputs)
    serial = resolve_executor(executor)[0] == "serial"
    if serial:
        setup = partial(_given, runs)
    else:
        m, t, _, rest = _portable(model, task, None, inputs)
        setup = partial(_faithfulness_setup, m, t, circuit, seed, rest)
    items = [(f"setting={i}", {f.name: getattr(x, f.name) for f in fields(x)}) for i, x in enumerate(settings)]
    base = next(iter(runs._patchers.values()))
    done = run_sweep(setup, _faithfulness_item, items, executor=executor, results=results, workers=workers, threads=threads,
                     fingerprint=run_fingerprint(base, runs.m, runs.batch, base.tf.fingerprint(), runs.circuit.nonzero().tolist(), seed),
                     progress=progress, desc="faithfulness settings")
    return FaithfulnessGrid(tuple(Faithfulness.from_dict(d) for d in done))


def _faithfulness_setup(model: ModelLike, task: Any, circuit: CircuitLike, seed: int, inputs: dict[str, Any]) -> _FaithfulnessRuns:
    """A worker's state for faithfulness sweeps: the patchers, built as each setting first needs them."""
    return _FaithfulnessRuns(model, task, circuit, seed=seed, inputs=inputs)  # type: ignore[arg-type]


def _faithfulness_item(runs: _FaithfulnessRuns, item: dict[str, Any]) -> dict[str, Any]:
    """One faithfulness setting, as `Faithfulness.to_dict`."""
    return runs.measure(FaithfulnessSetting(**item)).to_dict()


def faithfulness_curve(
    model: ModelLike,
    task: Task,
    scores: Scores,
    *,
    fractions: Sequence[float] = MIB_FRACTIONS,
    selection: str = "top",
    progress: bool = True,
    **inputs: Unpack[Inputs],
) -> FaithfulnessCurve:
    """MIB's curve: normalized faithfulness of the circuits of the best-scored edges at each fraction.

    The circuit at fraction f is ``scores.top(ceil(f * n_edges))`` (``selection="greedy"``: grown
    from the logits); everything outside it is ablated on the clean prompts. One patcher serves
    every fraction. CPR and CMD are the curve's areas (`FaithfulnessCurve`). ``progress``: a bar
    over the fractions.
    """
    if selection not in ("top", "greedy"):
        raise ValueError(f"unknown selection {selection!r}; choose top or greedy")
    patcher, m, batch = prepare(model, task, **inputs)
    g = patcher.graph
    g.check_fits(scores.graph, "these scores")
    full, empty = _full_and_empty(patcher, m, batch)
    sizes = [max(1, min(g.n_edges, math.ceil(f * g.n_edges))) for f in fractions]
    values = []
    for k in bar(sizes, desc="faithfulness curve", unit="circuit", disable=not progress):
        c = scores.top(k) if selection == "top" else scores.greedy(k)
        values.append((m(patcher.logits(c), batch) - empty) / (full - empty) if full != empty else math.nan)
    curve = FaithfulnessCurve.from_values(list(fractions), values)
    return FaithfulnessCurve(curve.fractions, curve.values, tuple(sorted(sizes)))


def attribution_graph(
    model: Any,
    prompt: str | Tensor | Sequence[int],
    *,
    transcoders: TranscoderSet,
    max_logits: int = 10,
    logit_prob: float = 0.95,
    batch_size: int = 64,
    skip_first: bool = True,
    progress: bool = True,
) -> AttributionGraph:
    """The attribution graph of one prompt (circuit-tracer's method, `acdc.attribution_graphs`):
    every direct effect between its active transcoder features, error nodes, token embeddings and
    top logits in the local replacement model (attention patterns and norm scales frozen).

    prompt: text (tokenized as the model does, BOS included) or token ids [S];
    transcoders: an `acdc.TranscoderSet` (any subset of layers: an MLP without one is all error);
    max_logits, logit_prob: the logit nodes (the most probable tokens until ``logit_prob``, at most
        ``max_logits``); batch_size: targets per backward pass; skip_first: no features at
        position 0 (circuit-tracer's convention).
    Returns an `AttributionGraph`: ``.prune()``, ``.replacement_score``, ``.completeness_score``,
    ``.to_json(path)`` (circuit-tracer's graph file), ``.save`` / ``AttributionGraph.load``.
    """
    tf = Transformer.of(model)
    tokens = as_tokens(prompt, model, "prompt") if isinstance(prompt, str) else torch.as_tensor(prompt)
    if tokens.dim() == 2 and tokens.shape[0] != 1:
        raise ValueError(f"an attribution graph explains one prompt; got {tokens.shape[0]}")
    tok = getattr(model, "tokenizer", None)
    decode = (lambda t: tok.decode([t])) if tok is not None and hasattr(tok, "decode") else None
    return build_attribution_graph(tf, tokens.reshape(-1), transcoders, max_logits=max_logits, logit_prob=logit_prob,
                                   batch_size=batch_size, skip_first=skip_first, decode=decode, progress=progress)


def prepare(
    model: ModelLike,
    clean: Prompts | Task,
    corrupt: Prompts | None = None,
    *,
    metric: MetricLike | None = None,
    ablation: str = "resample",
    answers: Answers | None = None,
    answer_pos: int | Sequence[int] | Tensor | None = None,
    split_qkv: bool = True,
    graph: Graph | None = None,
    mean_weights: Tensor | None = None,
    positions: str | Positions | None = None,
) -> tuple[Patcher, Metric, Batch]:
    """Build the patcher, metric and batch an algorithm runs on, from the inputs of `discover`.

    ``clean`` may be an `acdc.tasks.Task`; its answers, positions and metric fill whatever
    is not passed explicitly.
    """
    task: Task | None = None
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
    # Every check the inputs alone allow comes before the model runs (the clean and corrupt caches).
    m = resolve_metric(metric if metric is not None else "kl")
    check_ablation(ablation)
    if m.needs_answers and answers is None:
        raise ValueError(f"metric {m.name!r} needs answers=(correct, incorrect) token ids")
    bridge = load_model(model)
    clean_t, corrupt_t = as_tokens(clean, bridge, "clean"), as_tokens(corrupt, bridge, "corrupt")
    parsed = None if answers is None else parse_answers(answers, int(clean_t.shape[0]), bridge)
    if graph is not None:
        if graph.features is None:  # a feature graph's fit is checked by its transcoders (TranscoderSet.check_model)
            Graph.from_model(bridge, mlp_units=graph.mlp_units).check_fits(graph, "this graph", qkv=False, positions=False)
    pos = _positions(positions, task, clean_t, bridge, graph)
    if graph is None:
        g = Graph.from_model(bridge, split_qkv=split_qkv, positions=None if pos is None else pos.names)
    else:  # a graph without positions (a feature graph, say) asked for at positions gets them
        g = graph.with_positions(pos.names) if pos is not None and graph.positions is None else graph
    patcher = Patcher(bridge, clean_t, corrupt_t, graph=g, ablation=ablation, answer_pos=answer_pos,  # type: ignore[arg-type]
                      mean_weights=mean_weights, positions=pos)
    return patcher, m, make_batch(patcher, parsed, bridge)


def make_batch(patcher: Patcher, answers: Any = None, model: Any = None) -> Batch:
    """The `Batch` metrics read, for a patcher's prompts and optional answers.

    With P scored positions per prompt, answers [batch, P] (or [batch, P, k]) are flattened to
    one row per scored position, matching the logits' rows.
    """
    n, n_scored = patcher.answer_pos.shape
    correct: Tensor | None = None
    incorrect: Tensor | None = None
    if answers is not None:
        c, i = parse_answers(answers, n, model)
        correct, incorrect = scored_rows(c, n_scored, "correct"), scored_rows(i, n_scored, "incorrect")
    dev = patcher.tf.device
    return Batch(
        clean=patcher.clean_tokens,
        corrupt=patcher.corrupt_tokens,
        answer_pos=patcher.answer_pos,
        correct=None if correct is None else correct.to(dev),
        incorrect=None if incorrect is None else incorrect.to(dev),
        clean_logits=patcher.clean.logits,
    )


def _positions(positions: str | Positions | None, task: Task | None, clean: Any, model: Any,
               graph: Graph | None) -> Positions | None:
    """The positions asked for: "named" (the task's), "tokens", an `acdc.Positions`, or None.

    With a positional ``graph`` and no positions given, the task's named positions.
    """
    if positions is None and graph is not None and graph.positions is not None:
        positions = "named" if task is not None and task.positions is not None else "tokens"
    if positions is None or isinstance(positions, Positions):
        return positions
    if positions == "named":
        if task is None or task.positions is None:
            what = "these prompts" if task is None else f"task {task.name!r}"
            raise ValueError(f"{what} name no positions; pass positions='tokens' (prompts aligned by index), an "
                             "acdc.Positions, or a task with positions (acdc.tasks.ioi, Task.from_pairs(..., positions=))")
        return task.positions
    if positions == "tokens":
        b, s = as_tokens(clean, model, "clean").shape
        return Positions.tokens(b, s)
    raise ValueError(f"positions must be 'named', 'tokens', an acdc.Positions or None, got {positions!r}")


def _mean_weights(task: Any, mean_over: str | int, seed: int, ablation: str) -> Tensor | None:
    """The [batch, batch] weights of mean ablation over a reference set (None: the whole batch)."""
    if mean_over == "batch":
        return None
    if ablation != "mean":
        raise ValueError(f"mean_over={mean_over!r} needs ablation='mean'")
    n = task.n_prompts
    if mean_over == "template":
        if getattr(task, "template", None) is None:
            raise ValueError("mean_over='template' needs a task with template ids (e.g. acdc.tasks.ioi)")
        same = (task.template[:, None] == task.template[None, :]).double()
        return same / same.sum(1, keepdim=True)
    if isinstance(mean_over, int) and not isinstance(mean_over, bool) and 1 <= mean_over <= n:
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:mean_over]
        w = torch.zeros(n, n, dtype=torch.float64)
        w[:, pick] = 1.0 / mean_over
        return w
    raise ValueError(f"mean_over must be 'batch', 'template' or a number of prompts in [1, {n}], got {mean_over!r}")


def _full_and_empty(patcher: Patcher, metric: Metric, batch: Batch) -> tuple[float, float]:
    """The metric of the full model (nothing ablated) and of the empty circuit (every edge ablated)."""
    empty = patcher.masked_logits(torch.ones(patcher.graph.n_edges, dtype=torch.bool))
    return metric(patcher.clean.logits, batch), metric(empty, batch)

