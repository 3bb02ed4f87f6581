"""The offline demo."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_demo(sub: Any) -> None:
    """The `demo` command's parser."""
    m = sub.add_parser("demo", help="the offline demo: discover, render and score a planted circuit",
                       description="Discover the circuit planted in a zoo model, render it and score it (offline).")
    m.add_argument("--model", default="zoo:ioi", help="zoo:ioi, zoo:induction or zoo:modular-sum (default zoo:ioi)")
    m.add_argument("-o", "--out", type=Path, default=Path("out/demo"), help="output folder (default: out/demo)")
    m.add_argument("--threshold", type=float, default=0.1)
    m.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ..demo import main as demo_main

    demo_main(["--out", str(args.out), "--model", args.model, "--threshold", str(args.threshold)])
    return 0


