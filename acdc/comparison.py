"""Methods compared over tasks and seeds: one sweep, serial or on a Ray cluster.

    table = acdc.compare(model, {"ioi": lambda s: (acdc.tasks.ioi(model, 50, seed=s, split="discovery"),
                                                   acdc.tasks.ioi(model, 50, seed=s, split="test"))},
                         methods=["eap", "eap-ig-inputs", Method("acdc", {"threshold": 0.05})],
                         seeds=[0, 1, 2], edges=0.01, executor="ray")
    print(table.to_markdown())

Each (task, seed, method) is one item of `acdc.executors.run_sweep`: the method runs on the task's
discovery prompts, its circuit is the method's own selection (ACDC, Edge Pruning) or its ``edges``
best-scored edges, and the circuit is scored by normalized faithfulness, (m(C) - m({})) / (m(M) - m({})),
on the discovery prompts and, where the task gives them, on held-out prompts (with ``curves=True``
also MIB's CPR and CMD there, for the methods that score every edge). A worker builds each task's
patchers once and keeps them for the items that follow, so items run task by task, seed by seed.

**The protocol** (issue 40): give a task as (discovery, validation, test) prompts, e.g. the three
``split=`` sets of `acdc.tasks.ioi`, and every setting is chosen on validation prompts alone: each
option value a `Method` lists in ``choose`` (ACDC's threshold, Edge Pruning's target) and each
candidate size in ``edges`` (for methods that only score edges) gives one circuit; the one whose
validation faithfulness is nearest 1 (|1 - F|, MIB's CMD view: overshooting is as far as falling
short; ties go to the smaller circuit) is the row's circuit, scored once on the test prompts with a
bootstrap interval over prompts, and with ``grid=True`` under the robustness grid there (a verdict:
holds under every setting, or under which it fails). ``Comparison.summary`` adds an interval over
discovery seeds. No number in a row is chosen on the prompts it is reported on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from typing_extensions import Unpack

from .algorithms import SEEDED, check_algorithm_options, get_algorithm
from .api.faithfulness import DEFAULT_GRID, FaithfulnessSetting, _FaithfulnessRuns, full_and_empty
from .api.options import Inputs, SweepInputs, names_of, take
from .api.prepare import prepare
from .api.sweeps import circuit_from_record, circuit_record, given, portable
from .circuit import Circuit
from .executors import SweepOptions, resolve_executor, run_sweep
from .faithfulness_math import MIB_FRACTIONS, Faithfulness, FaithfulnessCurve, FaithfulnessGrid
from .files import claim
from .graph import Graph
from .loading import ModelLike, load_model
from .metrics import Batch, Metric, per_prompt
from .model import Transformer
from .patching import Patcher
from .tasks import Task

__all__ = ["Comparison", "Method", "TaskSource", "compare"]

# A task of a comparison: one Task for every seed, a (discovery, held-out) pair, a (discovery, validation, test)
# triple, or a function of the seed returning one of them (called here, in the calling process, once per seed).
TaskSet = Task | tuple[Task, Task] | tuple[Task, Task, Task]
TaskSource = TaskSet | Callable[[int], TaskSet]


@dataclass(frozen=True)
class Method:
    """One column of a comparison: a registered algorithm (`acdc.ALGORITHMS`) with its options.

    ``label`` names it in the table (default: the name, then the options, ``acdc threshold=0.05``).
    ``choose``: options whose value is chosen on validation prompts, name -> the candidates
    (``Method("acdc", choose={"threshold": [0.02, 0.05, 0.1]})``); needs tasks given with validation prompts.
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None
    choose: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "progress" in self.options or "progress" in self.choose:
            raise ValueError("a comparison sets progress itself; drop it from the method's options")
        both = sorted(set(self.options) & set(self.choose))
        if both:
            raise ValueError(f"option(s) {both} are both fixed and chosen; give each in options or in choose, not both")
        for k, values in self.choose.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"choose[{k!r}] must be a non-empty list of candidate values, got {values!r}")
        check_algorithm_options(self.name, {**self.options, **{k: v[0] for k, v in self.choose.items()}})

    def candidates(self) -> list[dict[str, Any]]:
        """Every combination of the chosen options' values, each merged into the fixed options."""
        combos: list[dict[str, Any]] = [dict(self.options)]
        for k, values in self.choose.items():
            combos = [{**c, k: v} for c in combos for v in values]
        return combos

    @property
    def title(self) -> str:
        if self.label:
            return self.label
        chosen = [f"{k}∈{{{','.join(map(str, v))}}}" for k, v in sorted(self.choose.items())]
        return " ".join([self.name, *(f"{k}={v}" for k, v in sorted(self.options.items())), *chosen])


@dataclass(frozen=True)
class Comparison:
    """The rows of a comparison, one per (task, seed, method), in the sweep's order.

    Each row: task, seed, method, edges (the circuit's size), faithfulness (normalized, discovery
    prompts), held_out (the same on held-out prompts, or None), cpr / cmd (MIB's areas on held-out
    prompts, or None), seconds (the method's own time on its worker). ``circuits`` holds each row's
    circuit (its kept edges, with their scores). Tasks given as (discovery, validation, test) add: chosen
    (the options and size picked on validation), candidates (how many were tried), validation, test,
    test_low / test_high (a 95% bootstrap interval over test prompts), test_distance (|1 - test|); CPR / CMD
    are then on test prompts; with ``grid=True`` also verdict and grid (setting -> normalized, on test prompts).
    """

    rows: tuple[dict[str, Any], ...]
    circuits: tuple[Circuit, ...] = field(repr=False, compare=False)

    def circuit(self, task: str, method: str, seed: int) -> Circuit:
        """The circuit a method found on a task's discovery prompts for a seed."""
        for r, c in zip(self.rows, self.circuits, strict=True):
            if (r["task"], r["method"], r["seed"]) == (task, method, seed):
                return c
        raise KeyError(f"no row for task={task!r}, method={method!r}, seed={seed}")

    def summary(self) -> list[dict[str, Any]]:
        """One row per (task, method): the mean and sample standard deviation over seeds of each number; with test
        prompts also test_seeds_low / test_seeds_high, a 95% bootstrap interval of the mean test value over the
        discovery seeds (None with one seed)."""
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in self.rows:
            groups.setdefault((r["task"], r["method"]), []).append(r)
        out = []
        for (task, method), rows in groups.items():
            row: dict[str, Any] = {"task": task, "method": method, "seeds": len(rows)}
            for k in ("edges", "faithfulness", "held_out", "validation", "test", "test_distance", "cpr", "cmd", "seconds"):
                vals = [float(r[k]) for r in rows if r.get(k) is not None and not math.isnan(float(r[k]))]
                row[k] = statistics.fmean(vals) if vals else None
                row[k + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else None
            tests = [float(r["test"]) for r in rows if r.get("test") is not None]
            row["test_seeds_low"], row["test_seeds_high"] = bootstrap_mean(tests) if len(tests) > 1 else (None, None)
            out.append(row)
        return out

    def to_markdown(self) -> str:
        """The summary as a Markdown table (mean ± sd over seeds); with test prompts, the protocol's table."""
        def cell(r: dict[str, Any], k: str, fmt: str) -> str:
            if r[k] is None:
                return "-"
            return format(r[k], fmt) + ("" if r[k + "_sd"] is None else " ± " + format(r[k + "_sd"], fmt))

        if any(r.get("test") is not None for r in self.rows):
            return self._protocol_markdown(cell)

        lines = ["| task | method | seeds | edges | faithfulness (discovery) | faithfulness (held-out) | CPR | CMD | seconds |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in self.summary():
            lines.append(f"| {_md(r['task'])} | {_md(r['method'])} | {r['seeds']} | {cell(r, 'edges', '.0f')} | "
                         f"{cell(r, 'faithfulness', '.3f')} | {cell(r, 'held_out', '.3f')} | {cell(r, 'cpr', '.3f')} | "
                         f"{cell(r, 'cmd', '.3f')} | {cell(r, 'seconds', '.1f')} |")
        return "\n".join(lines)

    def _protocol_markdown(self, cell: Callable[[dict[str, Any], str, str], str]) -> str:
        """One line per row (the chosen setting, validation, test with its interval, the verdict), then the summary."""
        curves = any(r.get("cpr") is not None for r in self.rows)
        lines = ["| task | method | seed | chosen on validation | edges | discovery | validation | test (95% interval) | "
                 "\\|1 - test\\| |" + (" CPR / CMD (test) |" if curves else "") + " robustness on test |",
                 "|---|---|---|---|---|---|---|---|---|" + ("---|" if curves else "") + "---|"]
        for r in self.rows:
            test = "-" if r.get("test") is None else f"{r['test']:.3f} ({r['test_low']:.3f}..{r['test_high']:.3f})"
            dist = "-" if r.get("test_distance") is None else f"{r['test_distance']:.3f}"
            areas = "" if not curves else " - |" if r.get("cpr") is None else f" {r['cpr']:.3f} / {r['cmd']:.3f} |"
            lines.append(f"| {_md(r['task'])} | {_md(r['method'])} | {r['seed']} | {_md(r.get('chosen') or '-')} | {r['edges']} | "
                         f"{r['faithfulness']:.3f} | {r['validation']:.3f} | {test} | {dist} |{areas} {_md(r.get('verdict') or '-')} |")
        summary = self.summary()
        if any(s["seeds"] > 1 for s in summary):
            lines += ["", "| task | method | seeds | edges | test (mean ± sd) | 95% interval over seeds |", "|---|---|---|---|---|---|"]
            for s in summary:
                over = "-" if s["test_seeds_low"] is None else f"{s['test_seeds_low']:.3f}..{s['test_seeds_high']:.3f}"
                lines.append(f"| {_md(s['task'])} | {_md(s['method'])} | {s['seeds']} | {cell(s, 'edges', '.0f')} | "
                             f"{cell(s, 'test', '.3f')} | {over} |")
        return "\n".join(lines)

    def to_csv(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Every row (not the summary) as CSV; an existing file is refused unless ``overwrite``."""
        path = claim(path, overwrite)
        keys = ["task", "seed", "method", "chosen", "candidates", "edges", "faithfulness", "held_out", "validation",
                "test", "test_low", "test_high", "test_distance", "verdict", "cpr", "cmd", "seconds"]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)
        return path

    def to_dict(self) -> dict[str, Any]:
        return {"format": "acdc-comparison", "rows": list(self.rows), "summary": self.summary()}


def compare(
    model: ModelLike,
    tasks: Mapping[str, TaskSource],
    *,
    methods: Sequence[str | Method] = ("eap", "eap-ig-inputs"),
    seeds: Sequence[int] = (0,),
    edges: int | float | Sequence[int | float] = 0.01,
    curves: bool = False,
    grid: bool | Sequence[dict[str, Any]] = False,
    within: float = 0.2,
    progress: bool = True,
    **options: Unpack[SweepInputs],
) -> Comparison:
    """Every method on every task for every seed (see the module docstring).

    tasks: name -> a `Task`, a (discovery, held-out) pair of them, a (discovery, validation, test) triple (the
        protocol: module docstring), or a function of the seed returning one (a task's prompts then differ per seed);
    methods: registered names or `Method` (name, options, label; ACDC needs its threshold:
        ``Method("acdc", {"threshold": 0.05})``); a method whose result depends on a
        random seed (`acdc.algorithms.SEEDED`: Edge Pruning) gets the row's seed unless its options set one;
    edges: the circuit of a method that only scores edges: this many best-scored edges (an int), or
        this fraction of the graph's edges (a float below 1); a list of them: candidates, chosen on validation
        prompts (tasks given as triples);
    curves: also MIB's faithfulness curve on the held-out (or test) prompts (CPR, CMD), for methods that score
        every edge;
    grid: with test prompts, also the chosen circuit's faithfulness on them under the robustness grid (True: the
        default grid of `acdc.faithfulness_grid`, with mean ablation aligned by role where the task names positions;
        or a list of settings) and its verdict at |1 - normalized| <= ``within``;
    executor, results, workers, threads: as `acdc.roc`'s (Ray workers build each task's patchers once;
        with the same torch thread count the numbers equal a serial run's bit for bit);
    inputs: as `acdc.discover`'s (metric, ablation, graph, ...), the same for every task.
    """
    sweep_kw, inputs = take("compare", options, names_of(SweepOptions), names_of(Inputs))
    sweep = SweepOptions(**sweep_kw)
    if not tasks:
        raise ValueError("compare needs at least one task")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {list(seeds)}")
    sizes = list(edges) if isinstance(edges, Sequence) else [edges]
    for e in sizes:
        if isinstance(e, bool) or not isinstance(e, (int, float)) or e <= 0 or (isinstance(e, float) and e > 1):
            raise ValueError(f"edges must be a count >= 1 or a fraction in (0, 1] (or a list of them), got {e!r}")
    if not sizes:
        raise ValueError("edges must be a count, a fraction or a non-empty list of them")
    if not 0 < within < 1:
        raise ValueError(f"within must lie in (0, 1), got {within!r}")
    ms = [m if isinstance(m, Method) else Method(m) for m in methods]
    titles = [m.title for m in ms]
    if not ms or len(set(titles)) != len(titles):
        raise ValueError(f"methods need distinct labels (pass Method(..., label=...)), got {titles}")
    built = {(name, s): _sets(name, source, s) for name, source in tasks.items() for s in seeds}
    choosing = len(sizes) > 1 or any(m.choose for m in ms)
    for (name, _seed), got in built.items():
        if got[2] is None and (choosing or grid):
            why = "choosing among candidates" if choosing else "the robustness grid (on test prompts)"
            raise ValueError(f"{why} needs task {name!r} given as (discovery, validation, test) prompts, e.g. "
                             "acdc.tasks.ioi(model, n, split=...) for each split; never choose on the prompts you report")
    settings = [] if grid is False else list(DEFAULT_GRID) if grid is True else list(grid)
    items = [(f"{name}/seed={s}/{m.title}", {"task": name, "seed": s, "method": m.title, "algorithm": m.name,
                                               "candidates": m.candidates(), "edges": sizes, "curves": curves,
                                               "grid": settings, "within": within})
             for name in tasks for s in seeds for m in ms]
    serial = resolve_executor(sweep.executor)[0] == "serial"
    if serial:
        setup = partial(given, _CompareState(model, built, dict(inputs)))
    else:
        m0, _, _, rest = portable(model, next(iter(built.values()))[0], None, inputs)
        setup = partial(_CompareState, m0, built, rest)
    done = run_sweep(setup, _compare_item, items, **sweep.run_sweep_options(),
                     fingerprint=_fingerprint(model, built, inputs), progress=progress, desc="compare")
    graph = _graph(model, built, inputs)
    return Comparison(tuple(d["row"] for d in done), tuple(circuit_from_record(graph, d["circuit"]) for d in done))


Sets = tuple[Task, Task | None, Task | None]  # discovery, held-out or validation, test


def _sets(name: str, source: TaskSource, seed: int) -> Sets:
    got = source(seed) if callable(source) and not isinstance(source, Task) else source
    if isinstance(got, Task):
        return got, None, None
    if isinstance(got, tuple) and len(got) in (2, 3) and all(isinstance(t, Task) for t in got):
        return (got[0], got[1], None) if len(got) == 2 else (got[0], got[1], got[2])
    raise ValueError(f"task {name!r} must be a Task, a (discovery, held-out) pair or a (discovery, validation, test) "
                     f"triple of Tasks, or a function of the seed returning one; got {type(got).__name__}")


def bootstrap_mean(values: Sequence[float], *, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval of the mean of ``values`` (drawn with replacement ``resamples`` times)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.tensor(list(values), dtype=torch.float64)
    means = x[torch.randint(0, len(x), (resamples, len(x)), generator=gen)].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return float(lo), float(hi)


def _fingerprint(model: ModelLike, built: Mapping[tuple[str, int], Sets], inputs: Mapping[str, Any]) -> str:
    """What decides the rows: the model's weights, every task's prompts and answers, the shared inputs."""
    h = hashlib.sha256()
    loaded: Any = load_model(model)  # a bridge or the engine's own model
    tf = Transformer.of(loaded)
    h.update(tf.fingerprint().encode())
    for key in sorted(built):
        h.update(repr(key).encode())
        for t in built[key]:
            for x in (None, None, None, None) if t is None else (t.clean, t.corrupt, t.correct, t.answer_pos):
                h.update(b"-" if x is None else x.detach().cpu().numpy().tobytes())
    h.update(json.dumps({k: v if isinstance(v, (str, int, float, bool)) or v is None else type(v).__name__
                         for k, v in sorted(inputs.items())}).encode())
    return h.hexdigest()[:16]


def _graph(model: ModelLike, built: Mapping[tuple[str, int], Sets], inputs: Mapping[str, Any]) -> Graph:
    """The graph every row's circuit lives on (the one `prepare` builds for these inputs)."""
    given = inputs.get("graph")
    if isinstance(given, Graph) and inputs.get("positions") is None:
        return given
    split = bool(inputs.get("split_qkv", True))
    if inputs.get("positions") is None:
        return Graph.from_model(load_model(model), split_qkv=split)
    patcher, _, _ = prepare(model, next(iter(built.values()))[0], **inputs)  # positions come from the task
    return patcher.graph


@dataclass
class _Scored:
    """A task's prompts prepared once: the patcher, metric, batch and the full / empty metric."""

    patcher: Patcher
    metric: Metric
    batch: Batch
    full: float
    empty: float

    def normalized(self, circuit: Circuit) -> float:
        if self.full == self.empty:
            return math.nan
        return (self.metric(self.patcher.logits(circuit), self.batch) - self.empty) / (self.full - self.empty)

    def faithfulness(self, circuit: Circuit) -> Faithfulness:
        """The circuit's faithfulness with each prompt's values (for the bootstrap interval over prompts)."""
        p, m, b = self.patcher, self.metric, self.batch
        every = torch.ones(p.graph.n_edges, dtype=torch.bool)
        logits = [p.clean.logits, p.logits(circuit), p.masked_logits(every)]
        (mm, mc, me), (pm, pc, pe) = (m(x, b) for x in logits), (per_prompt(m, x, b) for x in logits)
        return Faithfulness(mm, mc, me, pm, pc, pe, settings={"metric": m.name})


class _CompareState:
    """A worker's state: the model and the tasks, each task's patchers built when first needed.

    Only the latest (task, seed) is kept: items come task by task, seed by seed.
    """

    def __init__(self, model: ModelLike, built: Mapping[tuple[str, int], Sets], inputs: dict[str, Any]):
        self.model, self.built, self.inputs = model, built, inputs
        self._key: tuple[str, int] | None = None
        self._scored: tuple[_Scored, _Scored | None, _Scored | None] | None = None

    def scored(self, task: str, seed: int) -> tuple[_Scored, _Scored | None, _Scored | None]:
        if self._key != (task, seed) or self._scored is None:
            self._scored = None  # the previous task's caches go before the next one's are built
            sets = self.built[(task, seed)]
            self._scored = (self._prepare(sets[0]), *(None if t is None else self._prepare(t) for t in sets[1:]))  # type: ignore[assignment]
            self._key = (task, seed)
        return self._scored  # type: ignore[return-value]

    def grid(self, task: str, seed: int, circuit: Circuit, settings: Sequence[dict[str, Any] | FaithfulnessSetting]) -> FaithfulnessGrid:
        """The circuit's faithfulness on the test prompts under each setting (role-aligned mean ablation added to the
        default grid where the task names positions, as `acdc.faithfulness_grid` does)."""
        test = self.built[(task, seed)][2]
        assert test is not None
        runs = _FaithfulnessRuns(self.model, test, circuit, seed=seed, inputs=self.inputs)  # type: ignore[arg-type]
        chosen = [x if isinstance(x, FaithfulnessSetting) else FaithfulnessSetting.from_dict(x) for x in settings]
        if list(settings) == list(DEFAULT_GRID) and getattr(test, "positions", None) is not None:
            chosen.append(FaithfulnessSetting(ablation="mean", mean_over="role"))
        return FaithfulnessGrid(tuple(runs.measure(x) for x in chosen))

    def _prepare(self, task: Task) -> _Scored:
        patcher, metric, batch = prepare(self.model, task, **self.inputs)
        full, empty = full_and_empty(patcher, metric, batch)
        return _Scored(patcher, metric, batch, full, empty)


def _compare_item(state: _CompareState, item: dict[str, Any]) -> dict[str, Any]:
    """One (task, seed, method): run it (once per candidate setting), choose its circuit (on validation prompts
    where the task has them), score that on discovery and held-out prompts, or on test prompts once."""
    disc, held, test = state.scored(item["task"], item["seed"])
    g = disc.patcher.graph
    seconds, tried = 0.0, []  # (|1 - F_val|, edges, order, circuit, scores, chosen)
    for options in item["candidates"]:
        options = dict(options)
        if item["algorithm"] in SEEDED:
            options.setdefault("seed", item["seed"])
        t0 = time.perf_counter()
        scores = get_algorithm(item["algorithm"])(disc.patcher, disc.metric, disc.batch, progress=False, **options)
        seconds += time.perf_counter() - t0
        sized = [(None, scores.selection())] if scores.selected is not None else [
            (e, scores.top(min(_count(e, g.n_edges), g.n_edges))) for e in item["edges"]]
        for e, circuit in sized:
            chosen = {k: options[k] for k in sorted(_varied(item["candidates"]))}
            if e is not None and len(item["edges"]) > 1:
                chosen["edges"] = e
            far = abs(1 - held.normalized(circuit)) if test is not None and held is not None else 0.0
            tried.append((math.inf if math.isnan(far) else far, int(circuit.in_graph.sum()), len(tried), circuit, scores, chosen))
    _, _, _, circuit, scores, chosen = min(tried, key=lambda t: t[:3])
    row: dict[str, Any] = {"task": item["task"], "seed": item["seed"], "method": item["method"],
                           "edges": int(circuit.in_graph.sum()), "faithfulness": disc.normalized(circuit),
                           "held_out": None if held is None or test is not None else held.normalized(circuit),
                           "cpr": None, "cmd": None, "seconds": round(seconds, 3)}
    reported = held if test is None else test
    if test is not None and held is not None:
        f = test.faithfulness(circuit)
        lo, hi = f.interval("normalized")
        row.update(chosen=", ".join(f"{k}={v}" for k, v in chosen.items()), candidates=len(tried),
                   validation=held.normalized(circuit), test=f.normalized, test_low=lo, test_high=hi,
                   test_distance=abs(1 - f.normalized))
        if item["grid"]:
            grid = state.grid(item["task"], item["seed"], circuit, item["grid"])
            row["verdict"] = grid.verdict(item["within"])
            row["grid"] = {grid.label(x): x.normalized for x in grid.rows}
    if item["curves"] and reported is not None and scores.selected is None:
        sizes = [max(1, min(g.n_edges, math.ceil(f * g.n_edges))) for f in MIB_FRACTIONS]
        curve = FaithfulnessCurve.from_values(list(MIB_FRACTIONS), [reported.normalized(scores.top(k)) for k in sizes])
        row["cpr"], row["cmd"] = curve.cpr, curve.cmd
    return {"row": row, "circuit": circuit_record(circuit, kept_only=True)}


def _md(x: object) -> str:
    """A Markdown table cell: its pipes escaped."""
    return str(x).replace("|", "\\|")


def _count(e: int | float, n_edges: int) -> int:
    """A size given as a count (int) or a fraction of the graph's edges (float)."""
    return int(e) if isinstance(e, int) else max(1, math.ceil(e * n_edges))


def _varied(candidates: Sequence[Mapping[str, Any]]) -> set[str]:
    """The options whose value differs between candidates (the chosen ones)."""
    keys = {k for c in candidates for k in c}
    return {k for k in keys if len({repr(c.get(k)) for c in candidates}) > 1}
