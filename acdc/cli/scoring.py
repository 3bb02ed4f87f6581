"""Scoring circuits: faithfulness (one setting or the grid) and recovery of a known circuit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .common import (
    check_circuit_fits,
    load_circuit,
    load_truth,
    option_flags,
    positive,
    recovery_text,
    run_flags,
    scoring_note,
    setup_run,
    sweep_flags,
    use_recorded_task,
)


def add_faithfulness(sub: Any) -> None:
    """The `faithfulness` command's parser."""
    from ..api import FaithfulnessSetting

    f = sub.add_parser("faithfulness", help="how much of the behaviour a circuit JSON keeps; writes faithfulness.json/.md "
                       "(with --grid: faithfulness_grid.md/.csv/.png)",
                       description="Faithfulness of a circuit (IOI ratio, MIB normalized, per-prompt spread) under one "
                       "setting, or with --grid the report: many settings (table, CSV, box plot), Miller et al.'s "
                       "three findings checked, and faithfulness against the --reference-sizes. Writes "
                       "faithfulness.json and faithfulness.md to the output folder; with --grid instead "
                       "faithfulness_grid.md, faithfulness_grid.csv, faithfulness_grid.png (box plot) and, with two or "
                       "more --reference-sizes, faithfulness_reference_sizes.png.")
    f.add_argument("circuit", type=Path, help="circuit JSON for this model")
    run_flags(f, default_out="out")
    option_flags(f, FaithfulnessSetting, only=("level", "direction", "average", "at"))
    f.add_argument("--grid", action="store_true", help="the default grid of settings (one axis varied at a time)")
    f.add_argument("--reference-sizes", type=positive, nargs="*", default=[], help="with --grid: mean ablation over k prompts")
    sweep_flags(f)
    f.set_defaults(run=_faithfulness, writes=lambda a: (
        ("faithfulness_grid.md", "faithfulness_grid.csv", "faithfulness_grid.png", "faithfulness_reference_sizes.png") if a.grid
        else ("faithfulness.json", "faithfulness.md")))


def add_recovery(sub: Any) -> None:
    """The `recovery` command's parser."""
    s = sub.add_parser("recovery", aliases=["score"], help="how well a circuit JSON recovers a known circuit",
                       description="Edge- and node-level TP/FP/FN/TN, TPR, FPR and precision of a circuit.")
    s.add_argument("circuit", type=Path, help="circuit JSON")
    s.add_argument("--truth", required=True, help="known circuit (ioi, greater-than, docstring), zoo:NAME or a circuit JSON")
    s.add_argument("--view", default=None, help="view of the known circuit (e.g. ioi: with-mlps, heads-only)")
    s.set_defaults(run=_recovery_cmd)


def _faithfulness(args: argparse.Namespace) -> int:
    import json

    from ..api import faithfulness, faithfulness_grid

    circuit = load_circuit(args.circuit)
    use_recorded_task(args, circuit)
    s = setup_run(args)
    model, task, ablation = s.model, s.task, s.ablation
    circuit = check_circuit_fits(circuit, s, args)
    print(scoring_note(task, circuit))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.grid:
        from ..api import DEFAULT_GRID

        settings = [*DEFAULT_GRID, {"at": "all"}] if circuit.graph.positions is not None else list(DEFAULT_GRID)
        if getattr(task, "positions", None) is not None:  # prompts aligned by role (as faithfulness_grid's default)
            settings.append({"ablation": "mean", "mean_over": "role"})
        grid = faithfulness_grid(model, task, circuit, grid=settings, reference_sizes=args.reference_sizes,
                                 metric=args.metric, ablation=ablation, transcoders=s.transcoders, executor=args.executor, results=args.results,
                                 workers=args.workers)
        text = grid.to_markdown() + f"\nVerdict: {grid.verdict()}\n"
        paths = [grid.to_csv(out / "faithfulness_grid.csv", overwrite=True)]
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
                     metric=args.metric, ablation=ablation, at=args.at, transcoders=s.transcoders)
    (out / "faithfulness.json").write_text(json.dumps(f.to_dict(), indent=1))
    s = f.summary
    text = (f"{f!r}\nm(M) {f.model_metric:.4g}, m(C) {f.circuit_metric:.4g}, m(empty) {f.empty_metric:.4g}; "
            f"ratio {f.ratio:.3f}, normalized {f.normalized:.3f}; per prompt: median {s.median:.3f}, IQR {s.iqr:.3f}, "
            f"95% CI of the mean [{s.ci95[0]:.3f}, {s.ci95[1]:.3f}], {s.within_20pct:.0%} within 20%, "
            f"{len(f.small_prompts)} prompts with a tiny |m(M)|")
    (out / "faithfulness.md").write_text(text + "\n")
    print(text + f"\nwrote {out / 'faithfulness.json'}")
    return 0


def _recovery_cmd(args: argparse.Namespace) -> int:
    circuit = load_circuit(args.circuit)
    truth = load_truth(args.truth, view=args.view)
    print(recovery_text(circuit, truth))
    return 0


