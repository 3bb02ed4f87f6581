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
arguments) and one line on stderr."""

from __future__ import annotations

import argparse
import sys
import warnings

from . import demo, discovery, graphs, scoring, transcoders, viewing
from .common import CLIError, Parser, guard_outputs

__all__ = ["main"]

# Every command in the order `acdc --help` lists them; each module owns its commands' parsers and handlers.
COMMANDS = (discovery.add_discover, discovery.add_attribute, discovery.add_roc, discovery.add_compare, scoring.add_faithfulness,
            viewing.add_render, scoring.add_recovery, viewing.add_explore, graphs.add_attribution_graph,
            graphs.add_explore_graph, viewing.add_export_html, transcoders.add_transcoders, demo.add_demo)


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.command is None:
        ap.print_help()
        return 2
    with warnings.catch_warnings():  # the library's warnings as one line each, named for the command
        warnings.filterwarnings("default", module=r"acdc(\.|$)")  # acdc's own are always shown, once each
        warnings.showwarning = lambda message, category, *_, **__: print(
            f"acdc {args.command}: {category.__name__}: {message}", file=sys.stderr)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "device", None) is not None:
            from ..loading import check_device

            check_device(args.device)  # a device this machine lacks: one line, before any model loads
        guard_outputs(args)  # earlier results in -o: refused before anything runs (--force replaces them)
        return int(args.run(args) or 0)
    except Exception as err:
        from ..render import DotNotFoundError

        if not isinstance(err, (CLIError, ValueError, OSError, NotImplementedError, DotNotFoundError)):
            raise
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"acdc {args.command}: error: {msg}", file=sys.stderr)
        return 1



def _parser() -> argparse.ArgumentParser:
    from .._version import __version__
    ap = Parser(prog="acdc", description="Automatic circuit discovery for transformer language models.")
    ap.add_argument("--version", action="version", version=f"acdc {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="{discover,attribute,roc,compare,faithfulness,render,recovery,score,explore,export-html,"
                            "attribution-graph,explore-graph,transcoders,demo}",
                            parser_class=Parser)
    for add in COMMANDS:
        add(sub)
    return ap
