"""Finding circuits: discover (ACDC), attribute (EAP, EAP-IG), roc (a threshold sweep against a truth), compare (methods x tasks x seeds)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from ..algorithms.acdc import ACDCOptions
from ..algorithms.eap import AttributionOptions
from .common import (
    TASKS,
    CLIError,
    every_edge_flag,
    finish,
    force_flag,
    hub_model,
    option_flags,
    options_from,
    positive,
    run_flags,
    setup_run,
    sweep_flags,
    task_pair,
    task_sets,
    zoo_entry,
    zoo_pair,
    zoo_sets,
)


def add_discover(sub: Any) -> None:
    """The `discover` command's parser."""
    d = sub.add_parser("discover", help="find a circuit with ACDC; writes circuit.json, circuit.png, summary.txt",
                       description="Find a circuit with ACDC and write circuit.json (EAP-IG/MIB format), "
                       "circuit.png and summary.txt to the output folder.")
    run_flags(d, default_out="out")
    every_edge_flag(d)
    option_flags(d, ACDCOptions)
    d.add_argument("--positions", default=None, choices=("named", "tokens"),
                   help="edges at token positions: the task's named roles (IOI: IO, S1, S1+1, S2, END) or token indices")
    d.add_argument("--truth", default=None, help="score against a known circuit (ioi, greater-than, docstring), "
                   "zoo:NAME or a circuit JSON (zoo models: their planted circuit by default)")
    d.set_defaults(run=_discover, writes=("circuit.json", "circuit.png", "comparison.png", "summary.txt"))


def add_attribute(sub: Any) -> None:
    """The `attribute` command's parser."""
    a = sub.add_parser("attribute", help="score every edge with EAP / EAP-IG; writes scores.json, circuit.json, summary.txt",
                       description="Attribution patching: one score per edge (scores.json), and the circuit of the "
                       "--top edges (circuit.json, circuit.png).")
    run_flags(a, default_out="out")
    every_edge_flag(a)
    option_flags(a, AttributionOptions, only=("method", "steps", "gim"), defaults={"method": "eap-ig-inputs"})
    a.add_argument("--top", type=positive, default=50, help="edges in the circuit written (largest |score|; default 50)")
    a.add_argument("--positions", default=None, choices=("named", "tokens"),
                   help="edges at token positions: the task's named roles or token indices")
    a.add_argument("--truth", default=None, help="known circuit, zoo:NAME or circuit JSON to score against")
    a.set_defaults(run=_attribute, writes=("scores.json", "circuit.json", "circuit.png", "comparison.png", "summary.txt"))


def add_roc(sub: Any) -> None:
    """The `roc` command's parser."""
    o = sub.add_parser("roc", help="sweep ACDC thresholds against a truth; writes roc.json and summary.txt",
                       description="Run ACDC at a grid of thresholds and score each circuit against the truth (ROC, AUC).")
    run_flags(o, default_out="out")
    o.add_argument("--truth", default=None, help="known circuit, zoo:NAME or circuit JSON (zoo models: their own)")
    o.add_argument("--n-thresholds", type=positive, default=22, help="thresholds in the log-spaced grid (default 22)")
    sweep_flags(o)
    o.set_defaults(run=_roc, writes=("roc.json", "summary.txt"))


def add_compare(sub: Any) -> None:
    """The `compare` command's parser."""
    c = sub.add_parser("compare", help="methods x tasks x seeds: each method's circuit and its faithfulness on discovery and "
                       "held-out prompts; writes comparison.md/.csv/.json",
                       description="Run every --methods on every --tasks for every --seeds: each method's circuit "
                       "(ACDC's and Edge Pruning's own; the --edges best-scored edges of the others) and its normalized "
                       "faithfulness on the discovery prompts and on held-out prompts (IOI: its held-out templates and "
                       "names; other tasks and zoo models: prompts drawn with seed + 10000). Writes comparison.md (mean "
                       "± sd over seeds), comparison.csv (every row) and comparison.json.")
    c.add_argument("--model", required=True, help="as discover's --model")
    c.add_argument("--tasks", nargs="+", choices=TASKS, default=None, help="tasks (default for zoo models: the entry's own)")
    c.add_argument("--methods", nargs="+", default=["eap", "eap-ig-inputs", "acdc:threshold=0.05"],
                   help="registered methods, each NAME or NAME:KEY=VALUE,KEY=VALUE (e.g. acdc:threshold=0.01, "
                   "eap-ig-inputs:steps=10, edge-pruning:target=0.02,steps=100; default: eap eap-ig-inputs acdc:threshold=0.05); "
                   "with --protocol, KEY=A|B|C lists candidates chosen on validation prompts (acdc:threshold=0.02|0.05|0.1)")
    c.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the prompts (and of seeded methods; default 0)")
    c.add_argument("--edges", type=float, nargs="+", default=[0.01], help="circuit size of the scoring methods: a count "
                   "(>= 1) or a fraction of the edges (< 1; default 0.01); several with --protocol: candidates chosen on "
                   "validation prompts")
    c.add_argument("--protocol", action="store_true", help="discovery, validation and test prompts (the tasks' split= sets; "
                   "zoo models: three seeds): every candidate setting chosen on validation, the circuit scored once on test "
                   "with a 95%% bootstrap interval")
    c.add_argument("--grid", action="store_true", help="with --protocol: also the robustness grid on test prompts and its verdict")
    c.add_argument("--curves", action="store_true", help="also MIB's CPR and CMD on the held-out (with --protocol: test) prompts")
    c.add_argument("--n-prompts", type=positive, default=None, help="prompts per task (default: the task's)")
    c.add_argument("--metric", default=None, help="default: each task's")
    c.add_argument("--ablation", default=None, help="default: resample (zoo models: the entry's)")
    c.add_argument("--device", default=None, help="torch device (default: the model's)")
    c.add_argument("-o", "--out", type=Path, default=Path("out"), help="output folder (default: out/)")
    force_flag(c)
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep_flags(c)
    c.set_defaults(run=_compare, writes=("comparison.md", "comparison.json", "comparison.csv"))


def _discover(args: argparse.Namespace) -> int:
    from ..api import discover

    options = options_from(args, ACDCOptions)  # checked before the model loads
    s = setup_run(args)
    model, task, truth, classes, ablation, graph = s.model, s.task, s.truth, s.classes, s.ablation, s.graph
    print(f"acdc discover: {args.model}, {task}, threshold {args.threshold}, {ablation} ablation")
    t0 = time.perf_counter()
    circuit = discover(model, task, metric=args.metric, ablation=ablation, progress=not args.no_progress,
                       positions=args.positions, graph=graph, transcoders=s.transcoders, checkpoint_if_long=args.out / "acdc.checkpoint.json",
                       **dataclasses.asdict(options))
    lines = [circuit.summary(max_edges=40), f"ACDC took {time.perf_counter() - t0:.1f} s"]
    finish(args.out, circuit, truth, classes, lines, every_edge=args.every_edge)
    return 0


def _attribute(args: argparse.Namespace) -> int:
    from ..api import attribute

    AttributionOptions(method=args.method, steps=args.steps, gim=args.gim)  # checked before the model loads

    s = setup_run(args)
    model, task, truth, classes, ablation, graph = s.model, s.task, s.truth, s.classes, s.ablation, s.graph
    print(f"acdc attribute: {args.model}, {task}, {args.method}{' with GIM' if args.gim else ''}, {ablation} ablation")
    scores = attribute(model, task, method=args.method, steps=args.steps, gim=args.gim, metric=args.metric, ablation=ablation,
                       progress=not args.no_progress, positions=args.positions, graph=graph, transcoders=s.transcoders)
    circuit = scores.top(min(args.top, scores.graph.n_edges))
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [repr(scores), f"wrote {scores.to_json(args.out / 'scores.json', overwrite=True, every_edge=args.every_edge)}", circuit.summary(max_edges=40)]
    finish(args.out, circuit, truth, classes, lines, every_edge=args.every_edge)
    return 0


def _roc(args: argparse.Namespace) -> int:
    import json

    from ..api import roc

    s = setup_run(args)
    model, task, truth, ablation = s.model, s.task, s.truth, s.ablation
    if truth is None:
        raise CLIError("a ROC needs a truth: pass --truth (a known circuit, zoo:NAME or a circuit JSON)")
    curve = roc(model, task, truth=truth, metric=args.metric, ablation=ablation, n_thresholds=args.n_thresholds,
                progress=not args.no_progress, graph=s.graph, transcoders=s.transcoders, executor=args.executor, results=args.results,
                workers=args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "roc.json"
    path.write_text(json.dumps({"edge": curve.to_dict(), "node": curve.at_level("node").to_dict()}, indent=1))
    text = f"{curve!r}\nnode level: {curve.at_level('node')!r}\nwrote {path}"
    (args.out / "summary.txt").write_text(text + "\n")
    print(text)
    return 0


def _method(spec: str, choose: bool = False) -> Any:
    """``NAME`` or ``NAME:KEY=VALUE,...`` as a `Method` (values read as JSON where they parse: numbers, true); with
    ``choose``, ``KEY=A|B|C`` lists candidates (`Method.choose`)."""
    import json

    from ..comparison import Method

    def parsed(value: str) -> Any:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value

    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    chosen: dict[str, list[Any]] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise CLIError(f"--methods {spec!r}: options go as NAME:KEY=VALUE,KEY=VALUE")
        if "|" in value:
            if not choose:
                raise CLIError(f"--methods {spec!r}: candidates (KEY=A|B) are chosen on validation prompts: add --protocol")
            chosen[key.replace("-", "_")] = [parsed(v) for v in value.split("|")]
        else:
            options[key.replace("-", "_")] = parsed(value)
    return Method(name, options, label=spec, choose=chosen)


def _compare(args: argparse.Namespace) -> int:
    import json
    from functools import partial

    from ..comparison import compare

    methods = [_method(m, choose=args.protocol) for m in args.methods]  # checked before the model loads
    sizes = [int(e) if e >= 1 and e == int(e) else e for e in args.edges]
    if (len(sizes) > 1 or args.grid or any(m.choose for m in methods)) and not args.protocol:
        raise CLIError("several --edges, --grid and candidate lists (KEY=A|B) choose or report on validation and test "
                       "prompts: add --protocol")
    edges: Any = sizes if args.protocol else sizes[0]
    inputs: dict[str, Any] = {"metric": args.metric}
    if args.model.startswith("zoo:"):
        if args.tasks:
            raise CLIError(f"zoo models come with their own task; drop --tasks {' '.join(args.tasks)}")
        entry = zoo_entry(args.model, n_prompts=args.n_prompts)
        model, name = entry.model, args.model.split(":", 1)[1]
        tasks: dict[str, Any] = {name: partial(zoo_sets if args.protocol else zoo_pair, name, args.n_prompts)}
        inputs["ablation"] = args.ablation or entry.ablation
        if entry.graph is not None:
            inputs["graph"], inputs["transcoders"] = entry.graph, entry.transcoders
    else:
        if not args.tasks:
            raise CLIError(f"--tasks is needed for hub models (some of {', '.join(TASKS)})")
        model = hub_model(args)
        tasks = {t: partial(task_sets if args.protocol else task_pair, t, model, args.n_prompts) for t in args.tasks}
        inputs["ablation"] = args.ablation or "resample"
    table = compare(model, tasks, methods=methods, seeds=args.seeds, edges=edges, curves=args.curves, grid=args.grid,
                    progress=not args.no_progress, executor=args.executor, results=args.results, workers=args.workers,
                    **inputs)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    text = table.to_markdown()
    (out / "comparison.md").write_text(text + "\n")
    (out / "comparison.json").write_text(json.dumps(table.to_dict(), indent=1))
    table.to_csv(out / "comparison.csv", overwrite=True)
    print(text)
    print(f"wrote {out / 'comparison.md'}, comparison.csv, comparison.json")
    return 0


