"""Faithfulness runs: how much of the behaviour a circuit keeps, under one setting, a grid, or a size curve (MIB's CPR/CMD)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any

import torch
from torch import Tensor
from typing_extensions import Unpack

from ..algorithms.acdc import run_fingerprint
from ..circuit import Circuit
from ..evaluation import CircuitLike, as_mask
from ..executors import SweepOptions, resolve_executor, run_sweep
from ..faithfulness_math import (
    MIB_FRACTIONS,
    Completeness,
    Faithfulness,
    FaithfulnessCurve,
    FaithfulnessGrid,
    Minimality,
)
from ..inputs import check_ablation
from ..known import KnownCircuit
from ..loading import ModelLike
from ..metrics import Batch, Metric, MetricLike, per_prompt, resolve_metric
from ..mib import mib_top
from ..patching import Patcher
from ..positions import token_names
from ..progress import bar
from ..scores import Scores
from ..tasks import Task
from .options import FaithfulnessOptions, Inputs, SweepInputs, names_of, take
from .prepare import prepare
from .sweeps import given, portable

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
        "help": "with mean ablation: the reference set averaged (batch, template, role, or a number of prompts)"})
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


def faithfulness(
    model: ModelLike,
    task: Task,
    circuit: CircuitLike,
    *,
    seed: int = 0,
    progress: bool = True,
    **options: Unpack[FaithfulnessOptions],
) -> Faithfulness:
    """How much of the behaviour ``circuit`` keeps: m(M), m(C), m({}), ratios, per prompt, spread.

    Args:
        task: an `acdc.Task` (prompts, answers, positions, default metric).
        circuit: a `Circuit`, `KnownCircuit`, edge mask or edge names for this model's graph.
        options, as keywords: the setting (`FaithfulnessSetting`'s fields, defaults there) and what to run on.
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
            needs ``task.template``), "role" (each token the mean over every prompt's tokens of the same
            named position, IO, S1, END, ...: prompts of different templates aligned by role, not by
            absolute position; needs ``task.positions``), or an int k (k corrupt prompts drawn with ``seed``).
        at: for a positional circuit (edges at token positions), where its edges are kept:
            "circuit" (only at its positions; every other edge x position is ablated) or "all"
            (an edge kept at any position is kept at every position, as a plain circuit; only
            edges outside it are ablated, at every token). A positional circuit runs on the
            task's named positions (or token positions "0", "1", ...).
        progress: a bar over the patched runs.
        inputs: metric ("logit_diff", "prob_diff", "kl", "accuracy" or your own; default the
            task's), ablation ("resample", "mean", "zero"), answers, answer_pos, split_qkv, graph.
    """
    setting_kw, inputs = take("faithfulness", options, names_of(FaithfulnessSetting, but=("ablation", "metric")), names_of(Inputs))
    setting = FaithfulnessSetting(**setting_kw)
    runs = _FaithfulnessRuns(model, task, circuit, seed=seed, inputs=inputs)  # type: ignore[arg-type]
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
        self.patchers: dict[tuple[str, str, bool], Patcher] = {(self.ablation, "batch", False): base}
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
        if key not in self.patchers:
            base = next(iter(self.patchers.values()))
            weights = mean_weights_for(self.task, mean_over, self.seed, ablation)
            clean, corrupt = (base.corrupt_tokens, base.clean_tokens) if swapped else (base.clean_tokens, base.corrupt_tokens)
            self.patchers[key] = Patcher(base.tf, clean, corrupt, graph=self.graph, ablation=ablation,  # type: ignore[arg-type]
                                          answer_pos=base.answer_pos, mean_weights=weights, positions=base.positions,
                                          transcoders=base.transcoders)
        return self.patchers[key]

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
    runs = _FaithfulnessRuns(model, task, circuit, seed=seed, inputs=take("completeness", inputs, names_of(Inputs))[0])  # type: ignore[arg-type]
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
    runs = _FaithfulnessRuns(model, task, circuit, seed=0, inputs=take("minimality", inputs, names_of(Inputs))[0])  # type: ignore[arg-type]
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
    **options: Unpack[SweepInputs],
) -> FaithfulnessGrid:
    """Faithfulness under many settings at once (Miller et al.'s axes), sharing runs between them.

    grid: settings, each a `FaithfulnessSetting` or a dict of its fields (level, ablation,
        direction, average, metric, mean_over, at); missing ones take their defaults. The default grid varies one axis at
        a time from the usual setting (10 settings; 11 with mean ablation aligned by role for a task with named
        positions). `FaithfulnessGrid.verdict` says under which settings the circuit holds.
    reference_sizes: also mean ablation over k drawn prompts for each k here (faithfulness
        against the reference-set size).
    progress: a bar over the settings.
    executor, results, workers, threads: as `roc`'s (each Ray worker builds its patchers once; a setting with a
        metric of your own needs a picklable function there).
    Returns a `FaithfulnessGrid`: ``.rows``, ``.to_markdown()``, ``.to_csv(path)``, ``.plot(path)``.
    """
    sweep_kw, inputs = take("faithfulness_grid", options, names_of(SweepOptions), names_of(Inputs))
    sweep = SweepOptions(**sweep_kw)
    settings = [x if isinstance(x, FaithfulnessSetting) else FaithfulnessSetting.from_dict(x) for x in grid]
    if grid is DEFAULT_GRID and getattr(task, "positions", None) is not None:  # prompts aligned by role, where named
        settings.append(FaithfulnessSetting(ablation="mean", mean_over="role"))
    settings += [FaithfulnessSetting(ablation="mean", mean_over=int(k)) for k in reference_sizes]
    runs = _FaithfulnessRuns(model, task, circuit, seed=seed, inputs=take("minimality", inputs, names_of(Inputs))[0])  # type: ignore[arg-type]  # type: ignore[arg-type]
    serial = resolve_executor(sweep.executor)[0] == "serial"
    if serial:
        setup = partial(given, runs)
    else:
        m, t, _, rest = portable(model, task, None, inputs)
        setup = partial(_faithfulness_setup, m, t, circuit, seed, rest)
    items = [(f"setting={i}", {f.name: getattr(x, f.name) for f in fields(x)}) for i, x in enumerate(settings)]
    base = next(iter(runs.patchers.values()))
    done = run_sweep(setup, _faithfulness_item, items, **sweep.run_sweep_options(),
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
    absolute: bool = True,
    progress: bool = True,
    **inputs: Unpack[Inputs],
) -> FaithfulnessCurve:
    """MIB's curve: normalized faithfulness of the circuits of the best-scored edges at each fraction.

    The circuit at fraction f is ``scores.top(ceil(f * n_edges))`` (``selection="greedy"``: grown
    from the logits; ``selection="mib"``: MIB's own rule, `acdc.mib_top`: the floor of f * n_edges by
    |score|, or by signed score without ``absolute``, pruned to the edges on input-to-logits paths, so the
    values equal MIB's evaluation code's); everything outside it is ablated on the clean prompts. One patcher
    serves every fraction. CPR and CMD are the curve's areas (`FaithfulnessCurve`). ``progress``: a bar
    over the fractions.
    """
    if selection not in ("top", "greedy", "mib"):
        raise ValueError(f"unknown selection {selection!r}; choose top, greedy or mib")
    if not absolute and selection != "mib":
        raise ValueError("absolute=False (ranking by signed score) is MIB's option; pass selection='mib'")
    patcher, m, batch = prepare(model, task, **take("faithfulness_curve", inputs, names_of(Inputs))[0])
    g = patcher.graph
    g.check_fits(scores.graph, "these scores")
    full, empty = full_and_empty(patcher, m, batch)
    if selection == "mib":
        circuits = [mib_top(scores, f, absolute=absolute) for f in fractions]
        sizes = [c.n_edges for c in circuits]
    else:
        sizes = [max(1, min(g.n_edges, math.ceil(f * g.n_edges))) for f in fractions]
        circuits = [scores.top(k) if selection == "top" else scores.greedy(k) for k in sizes]
    values = []
    for c in bar(circuits, desc="faithfulness curve", unit="circuit", disable=not progress):
        values.append((m(patcher.logits(c), batch) - empty) / (full - empty) if full != empty else math.nan)
    curve = FaithfulnessCurve.from_values(list(fractions), values)
    order = sorted(range(len(fractions)), key=lambda i: fractions[i])  # the sizes in the curve's order
    return FaithfulnessCurve(curve.fractions, curve.values, tuple(sizes[i] for i in order))


def mean_weights_for(task: Any, mean_over: str | int, seed: int, ablation: str) -> Tensor | None:
    """The [batch, batch] weights of mean ablation over a reference set (None: the whole batch)."""
    if mean_over == "batch":
        return None
    if ablation != "mean":
        raise ValueError(f"mean_over={mean_over!r} needs ablation='mean'")
    n = task.n_prompts
    if mean_over == "role":
        return role_weights(task)
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
    raise ValueError(f"mean_over must be 'batch', 'template', 'role' or a number of prompts in [1, {n}], got {mean_over!r}")


def role_weights(task: Any) -> Tensor:
    """[B * S, B * S] token weights of mean ablation aligned by role: token (i, t) of named position r takes the
    mean of the corrupt run over every prompt's tokens of position r, those at or before each prompt's last scored
    token (the padding after it reads nothing scored); prompt-major, as `Patcher`'s ``mean_weights`` takes them."""
    positions = getattr(task, "positions", None)
    if positions is None:
        raise ValueError("mean_over='role' needs a task with named positions (task.positions, e.g. acdc.tasks.ioi)")
    role = positions.index.reshape(-1)  # [B * S]
    B, S = positions.index.shape
    last = torch.as_tensor(task.answer_pos).reshape(B, -1).max(1).values.cpu()
    live = (torch.arange(S)[None, :] <= last[:, None]).reshape(-1)
    same = (role[:, None] == role[None, :]).double()
    w = same * live[None, :].double()
    empty = w.sum(1) == 0  # a role with no live token anywhere: its mean over every token of it
    w[empty] = same[empty]
    return w / w.sum(1, keepdim=True)


def full_and_empty(patcher: Patcher, metric: Metric, batch: Batch) -> tuple[float, float]:
    """The metric of the full model (nothing ablated) and of the empty circuit (every edge ablated)."""
    empty = patcher.masked_logits(torch.ones(patcher.graph.n_edges, dtype=torch.bool))
    return metric(patcher.clean.logits, batch), metric(empty, batch)


