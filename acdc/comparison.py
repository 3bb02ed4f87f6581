"""Methods compared over tasks and seeds: one sweep, serial or on a Ray cluster.

    table = acdc.compare(model, {"ioi": lambda s: (acdc.tasks.ioi(model, 50, seed=s, split="discovery"),
                                                   acdc.tasks.ioi(model, 50, seed=s, split="held-out"))},
                         methods=["eap", "eap-ig-inputs", Method("acdc", {"threshold": 0.05})],
                         seeds=[0, 1, 2], edges=0.01, executor="ray")
    print(table.to_markdown())

Each (task, seed, method) is one item of `acdc.executors.run_sweep`: the method runs on the task's
discovery prompts, its circuit is the method's own selection (ACDC, Edge Pruning) or its ``edges``
best-scored edges, and the circuit is scored by normalized faithfulness, (m(C) - m({})) / (m(M) - m({})),
on the discovery prompts and, where the task gives them, on held-out prompts (with ``curves=True``
also MIB's CPR and CMD there, for the methods that score every edge). A worker builds each task's
patchers once and keeps them for the items that follow, so items run task by task, seed by seed.
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

from typing_extensions import Unpack

from .algorithms import SEEDED, check_algorithm_options, get_algorithm
from .api.faithfulness import full_and_empty
from .api.options import Inputs, SweepInputs, names_of, take
from .api.prepare import prepare
from .api.sweeps import circuit_from_record, circuit_record, given, portable
from .circuit import Circuit
from .executors import SweepOptions, resolve_executor, run_sweep
from .faithfulness_math import MIB_FRACTIONS, FaithfulnessCurve
from .files import claim
from .graph import Graph
from .loading import ModelLike, load_model
from .metrics import Batch, Metric
from .model import Transformer
from .patching import Patcher
from .tasks import Task

__all__ = ["Comparison", "Method", "TaskSource", "compare"]

# A task of a comparison: one Task for every seed, a (discovery, held-out) pair, or a function of the
# seed returning either (called here, in the calling process, once per seed).
TaskSource = Task | tuple[Task, Task] | Callable[[int], "Task | tuple[Task, Task]"]


@dataclass(frozen=True)
class Method:
    """One column of a comparison: a registered algorithm (`acdc.ALGORITHMS`) with its options.

    ``label`` names it in the table (default: the name, then the options, ``acdc threshold=0.05``).
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None

    def __post_init__(self) -> None:
        if "progress" in self.options:
            raise ValueError("a comparison sets progress itself; drop it from the method's options")
        check_algorithm_options(self.name, self.options)  # one line for an unknown name or option, before anything runs

    @property
    def title(self) -> str:
        if self.label:
            return self.label
        return " ".join([self.name, *(f"{k}={v}" for k, v in sorted(self.options.items()))])


@dataclass(frozen=True)
class Comparison:
    """The rows of a comparison, one per (task, seed, method), in the sweep's order.

    Each row: task, seed, method, edges (the circuit's size), faithfulness (normalized, discovery
    prompts), held_out (the same on held-out prompts, or None), cpr / cmd (MIB's areas on held-out
    prompts, or None), seconds (the method's own time on its worker). ``circuits`` holds each row's
    circuit (its kept edges, with their scores).
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
        """One row per (task, method): the mean and sample standard deviation over seeds of each number."""
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in self.rows:
            groups.setdefault((r["task"], r["method"]), []).append(r)
        out = []
        for (task, method), rows in groups.items():
            row: dict[str, Any] = {"task": task, "method": method, "seeds": len(rows)}
            for k in ("edges", "faithfulness", "held_out", "cpr", "cmd", "seconds"):
                vals = [float(r[k]) for r in rows if r.get(k) is not None and not math.isnan(float(r[k]))]
                row[k] = statistics.fmean(vals) if vals else None
                row[k + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else None
            out.append(row)
        return out

    def to_markdown(self) -> str:
        """The summary as a Markdown table (mean ± sd over seeds)."""
        def cell(r: dict[str, Any], k: str, fmt: str) -> str:
            if r[k] is None:
                return "-"
            return format(r[k], fmt) + ("" if r[k + "_sd"] is None else " ± " + format(r[k + "_sd"], fmt))

        lines = ["| task | method | seeds | edges | faithfulness (discovery) | faithfulness (held-out) | CPR | CMD | seconds |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in self.summary():
            lines.append(f"| {r['task']} | {r['method']} | {r['seeds']} | {cell(r, 'edges', '.0f')} | "
                         f"{cell(r, 'faithfulness', '.3f')} | {cell(r, 'held_out', '.3f')} | {cell(r, 'cpr', '.3f')} | "
                         f"{cell(r, 'cmd', '.3f')} | {cell(r, 'seconds', '.1f')} |")
        return "\n".join(lines)

    def to_csv(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Every row (not the summary) as CSV; an existing file is refused unless ``overwrite``."""
        path = claim(path, overwrite)
        keys = ["task", "seed", "method", "edges", "faithfulness", "held_out", "cpr", "cmd", "seconds"]
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
    edges: int | float = 0.01,
    curves: bool = False,
    progress: bool = True,
    **options: Unpack[SweepInputs],
) -> Comparison:
    """Every method on every task for every seed (see the module docstring).

    tasks: name -> a `Task`, a (discovery, held-out) pair of them, or a function of the seed
        returning either (a task's prompts then differ per seed);
    methods: registered names or `Method` (name, options, label; ACDC needs its threshold:
        ``Method("acdc", {"threshold": 0.05})``); a method whose result depends on a
        random seed (`acdc.algorithms.SEEDED`: Edge Pruning) gets the row's seed unless its options set one;
    edges: the circuit of a method that only scores edges: this many best-scored edges (an int), or
        this fraction of the graph's edges (a float below 1);
    curves: also MIB's faithfulness curve on the held-out prompts (CPR, CMD), for methods that score
        every edge;
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
    if isinstance(edges, bool) or not isinstance(edges, (int, float)) or edges <= 0 or (isinstance(edges, float) and edges > 1):
        raise ValueError(f"edges must be a count >= 1 or a fraction in (0, 1], got {edges!r}")
    ms = [m if isinstance(m, Method) else Method(m) for m in methods]
    titles = [m.title for m in ms]
    if not ms or len(set(titles)) != len(titles):
        raise ValueError(f"methods need distinct labels (pass Method(..., label=...)), got {titles}")
    built = {(name, s): _pair(name, source, s) for name, source in tasks.items() for s in seeds}
    items = [(f"{name}/seed={s}/{m.title}", {"task": name, "seed": s, "method": m.title, "algorithm": m.name,
                                               "options": dict(m.options), "edges": edges, "curves": curves})
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


def _pair(name: str, source: TaskSource, seed: int) -> tuple[Task, Task | None]:
    got = source(seed) if callable(source) and not isinstance(source, Task) else source
    if isinstance(got, Task):
        return got, None
    if isinstance(got, tuple) and len(got) == 2 and all(isinstance(t, Task) for t in got):
        return got[0], got[1]
    raise ValueError(f"task {name!r} must be a Task, a (discovery, held-out) pair of Tasks or a function of the seed "
                     f"returning one; got {type(got).__name__}")


def _fingerprint(model: ModelLike, built: Mapping[tuple[str, int], tuple[Task, Task | None]], inputs: Mapping[str, Any]) -> str:
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


def _graph(model: ModelLike, built: Mapping[tuple[str, int], tuple[Task, Task | None]], inputs: Mapping[str, Any]) -> Graph:
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


class _CompareState:
    """A worker's state: the model and the tasks, each task's patchers built when first needed.

    Only the latest (task, seed) is kept: items come task by task, seed by seed.
    """

    def __init__(self, model: ModelLike, built: Mapping[tuple[str, int], tuple[Task, Task | None]], inputs: dict[str, Any]):
        self.model, self.built, self.inputs = model, built, inputs
        self._key: tuple[str, int] | None = None
        self._scored: tuple[_Scored, _Scored | None] | None = None

    def scored(self, task: str, seed: int) -> tuple[_Scored, _Scored | None]:
        if self._key != (task, seed) or self._scored is None:
            self._scored = None  # the previous task's caches go before the next one's are built
            pair = self.built[(task, seed)]
            self._scored = (self._prepare(pair[0]), None if pair[1] is None else self._prepare(pair[1]))
            self._key = (task, seed)
        return self._scored

    def _prepare(self, task: Task) -> _Scored:
        patcher, metric, batch = prepare(self.model, task, **self.inputs)
        full, empty = full_and_empty(patcher, metric, batch)
        return _Scored(patcher, metric, batch, full, empty)


def _compare_item(state: _CompareState, item: dict[str, Any]) -> dict[str, Any]:
    """One (task, seed, method): run it, choose its circuit, score that on discovery and held-out prompts."""
    disc, held = state.scored(item["task"], item["seed"])
    options = dict(item["options"])
    if item["algorithm"] in SEEDED:
        options.setdefault("seed", item["seed"])
    t0 = time.perf_counter()
    scores = get_algorithm(item["algorithm"])(disc.patcher, disc.metric, disc.batch, progress=False, **options)
    seconds = time.perf_counter() - t0
    g = disc.patcher.graph
    n = int(item["edges"]) if isinstance(item["edges"], int) else max(1, math.ceil(item["edges"] * g.n_edges))
    circuit = scores.selection() if scores.selected is not None else scores.top(min(n, g.n_edges))
    row: dict[str, Any] = {"task": item["task"], "seed": item["seed"], "method": item["method"],
                           "edges": int(circuit.in_graph.sum()), "faithfulness": disc.normalized(circuit),
                           "held_out": None if held is None else held.normalized(circuit), "cpr": None, "cmd": None,
                           "seconds": round(seconds, 3)}
    if item["curves"] and held is not None and scores.selected is None:
        sizes = [max(1, min(g.n_edges, math.ceil(f * g.n_edges))) for f in MIB_FRACTIONS]
        curve = FaithfulnessCurve.from_values(list(MIB_FRACTIONS), [held.normalized(scores.top(k)) for k in sizes])
        row["cpr"], row["cmd"] = curve.cpr, curve.cmd
    return {"row": row, "circuit": circuit_record(circuit, kept_only=True)}
