"""Attribution graphs: attribution-graph (one prompt through transcoders) and explore-graph (in the browser)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .common import TASKS, CLIError, force_flag, make_task, positive, serve_flags, zoo_entry


def add_attribution_graph(sub: Any) -> None:
    """The `attribution-graph` command's parser."""
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
    ag.add_argument("--max-logits", type=positive, default=10, help="at most this many logit nodes (default 10)")
    ag.add_argument("--batch-size", type=positive, default=64, help="targets per backward pass (default 64)")
    ag.add_argument("--max-feature-nodes", type=positive, default=None, help="keep at most this many features, the most "
                    "influential first (circuit-tracer's max_feature_nodes; default: every active feature)")
    ag.add_argument("--targets", nargs="+", default=None, metavar="TOKEN", help="explain these tokens' logits instead of the "
                    "most probable ones (one-token text, e.g. ' Mary', or ids)")
    ag.add_argument("--logit-diff", nargs=2, default=None, metavar=("GOOD", "BAD"), help="explain the logit difference "
                    "logit(GOOD) - logit(BAD) (one target node; with --targets, after them)")
    ag.add_argument("--max-memory-gb", type=float, default=None, help="refuse a graph whose memory estimate is over this "
                    "(default: the memory available)")
    ag.add_argument("--device", default=None, help="torch device (default: the model's)")
    ag.add_argument("-o", "--out", type=Path, default=Path("attribution-graph"), help="output folder (default: attribution-graph/)")
    force_flag(ag)
    ag.add_argument("--no-progress", action="store_true", help="no progress bar")
    ag.set_defaults(run=_attribution_graph, writes=("graph", "graph.json"))


def add_explore_graph(sub: Any) -> None:
    """The `explore-graph` command's parser."""
    xg = sub.add_parser("explore-graph", help="an attribution graph in the browser: prune thresholds, inputs and outputs, labels",
                        description="Serve a page on 127.0.0.1 that draws an attribution graph by layer and position: acdc's "
                        "saved graph (pruned exactly at each threshold) or a graph JSON in circuit-tracer's schema (its "
                        "nodes and links filtered). Labels are saved into the graph's files.")
    xg.add_argument("graph", type=Path, help="a folder written by `acdc attribution-graph` (its graph/) or a circuit-tracer graph JSON")
    serve_flags(xg)
    xg.set_defaults(run=_explore_graph)


def _attribution_graph(args: argparse.Namespace) -> int:

    from ..api import attribution_graph
    from ..transcoders import load_dictionary

    ts: Any = None
    if args.model.startswith("zoo:"):
        entry = zoo_entry(args.model)
        model, task = entry.model, entry.task
        ts = entry.transcoders
    else:
        from ..loading import load_model

        try:
            model = load_model(args.model, device=args.device)
        except OSError as err:
            raise CLIError(f"could not load {args.model!r} ({str(err).splitlines()[0]}); hub models need internet "
                           "the first time, or try --model zoo:feature-chain offline") from None
        task = None if args.task is None else make_task(args.task, model, None, 0)
    if args.transcoders is not None:
        try:
            ts = load_dictionary(args.transcoders, model)
        except (OSError, ValueError) as err:
            raise CLIError(f"--transcoders {args.transcoders}: {str(err).splitlines()[0]}") from None
    if ts is None:
        raise CLIError("an attribution graph needs transcoders: pass --transcoders DIR (a zoo entry with its own: zoo:feature-chain)")
    if args.prompt is not None:
        if not args.prompt.strip():
            raise CLIError("--prompt is empty: give the text whose next token the graph explains")
        prompt: Any = args.prompt
    elif task is not None:
        if not 0 <= args.prompt_index < task.clean.shape[0]:
            raise CLIError(f"--prompt-index {args.prompt_index}: the task has {task.clean.shape[0]} prompts")
        prompt = task.clean[args.prompt_index, : int(task.answer_pos[args.prompt_index].max()) + 1]
    else:
        raise CLIError("pass --prompt TEXT (or --task NAME to take one of its prompts)")
    t0 = time.perf_counter()
    targets: list[Any] | None = None
    if args.targets or args.logit_diff:
        from ..api.graphs import logit_diff_target

        def tok(t: str) -> int | str:
            return int(t) if t.isdigit() else t
        try:
            targets = [tok(t) for t in args.targets or []]
            if args.logit_diff:
                targets.append(logit_diff_target(model, *(tok(t) for t in args.logit_diff)))
        except ValueError as err:
            raise CLIError(str(err)) from None
    try:
        graph = attribution_graph(model, prompt, transcoders=ts, max_logits=args.max_logits, batch_size=args.batch_size,
                                  max_feature_nodes=args.max_feature_nodes, max_memory_gb=args.max_memory_gb,
                                  targets=targets, progress=not args.no_progress)
    except ValueError as err:
        if "target" not in str(err):
            raise
        raise CLIError(str(err)) from None
    except MemoryError as err:
        raise CLIError(str(err).replace("max_feature_nodes=", "--max-feature-nodes ")) from None
    seconds = time.perf_counter() - t0
    kept = graph.prune(args.node_threshold, args.edge_threshold)
    out: Path = args.out
    saved = graph.save(out / "graph", overwrite=True)
    path = graph.to_json(out / "graph.json", node_threshold=args.node_threshold, edge_threshold=args.edge_threshold, overwrite=True)
    active = graph.info["active_features"]
    feats = f"{graph.n_features} active features" if graph.n_features == active else f"{graph.n_features} of {active} active features"
    print(f"acdc attribution-graph: {''.join(graph.token_strs)!r}: {feats}, {graph.n_nodes} nodes "
          f"in {seconds:.1f} s; replacement {graph.replacement_score:.3f}, completeness {graph.completeness_score:.3f}; "
          f"pruned to {kept.n_nodes} nodes, {kept.n_edges} edges")
    print(f"wrote {saved}/ (acdc explore-graph {saved}) and {path} (circuit-tracer's format)")
    return 0


def _explore_graph(args: argparse.Namespace) -> int:
    from ..explorer import AttributionExplorer, serve

    try:
        explorer = AttributionExplorer.open(args.graph)
    except ValueError as err:
        raise CLIError(str(err).splitlines()[0]) from None
    print(f"acdc explore-graph: {args.graph}")
    serve(explorer, args.port, open_browser=not args.no_browser)
    return 0


