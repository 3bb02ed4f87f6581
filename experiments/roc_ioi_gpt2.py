"""ACDC on IOI in GPT-2 small, scored against the IOI circuit (Wang et al. 2022) as the ACDC paper did.

With real weights (needs internet once, for the model and its tokenizer):

    python experiments/roc_ioi_gpt2.py                       # full sweep: hours on a CPU
    python experiments/roc_ioi_gpt2.py --view heads-only --n-thresholds 10

Offline, on a GPT-2-small-shaped model with RANDOM weights (the pipeline runs end to end; the
numbers mean nothing, since a random model has no IOI circuit):

    python experiments/roc_ioi_gpt2.py --random-weights --tokenizer tests/data/gpt2-tokenizer

Writes roc_ioi_gpt2[_random].json, .md and .png under --out.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from roc_common import sweep_row, write  # noqa: E402

import acdc  # noqa: E402
from acdc.tasks.text import bpe_tokenizer  # noqa: E402

WARNING = (
    "WARNING: --random-weights: this GPT-2-small-shaped model has random weights and no IOI circuit. "
    "Every number below only shows that the pipeline runs; it says nothing about ACDC or IOI."
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random-weights", action="store_true", help="offline smoke run; results are meaningless")
    ap.add_argument("--tokenizer", type=Path, default=ROOT / "tests" / "data" / "gpt2-tokenizer",
                    help="folder with GPT-2 vocab.json and merges.txt (only with --random-weights)")
    ap.add_argument("--view", default="with-mlps", choices=["with-mlps", "heads-only"])
    ap.add_argument("--n-prompts", type=int, default=None, help="default 100 (20 with --random-weights)")
    ap.add_argument("--n-thresholds", type=int, default=None, help="default 22 (3 with --random-weights)")
    ap.add_argument("--decades", type=float, default=None, help="grid span below the full effect (default 6; 1.5 random)")
    ap.add_argument("--metric", default="kl", choices=["kl", "logit_diff"])
    ap.add_argument("--ablation", default="resample", choices=list(acdc.ABLATIONS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rand = args.random_weights
    n_prompts = args.n_prompts or (20 if rand else 100)
    n_thr = args.n_thresholds or (3 if rand else 22)
    decades = args.decades if args.decades is not None else (1.5 if rand else 6.0)

    t0 = time.perf_counter()
    if rand:
        print(WARNING)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        try:
            tok = bpe_tokenizer(args.tokenizer)
        except ValueError as err:
            raise SystemExit(f"{err}; pass --tokenizer DIR") from None
        model = acdc.load_model(GPT2LMHeadModel(GPT2Config()))
    else:
        model = acdc.load_model("gpt2")
        tok = model.tokenizer
    task = acdc.tasks.ioi(tok, n_prompts, seed=0, metric=args.metric)
    truth = acdc.known.load("ioi", view=args.view)
    build = time.perf_counter() - t0
    print(f"model ready in {build:.1f}s; {task}; truth {truth}")

    r = acdc.roc(model, task, truth=truth, ablation=args.ablation, n_thresholds=n_thr, decades=decades)
    print(f"thresholds {', '.join(f'{t:.3g}' for t in r.params)}")
    row = sweep_row(f"IOI GPT-2 small ({args.view})" + (" RANDOM WEIGHTS" if rand else ""), r, build)
    extra = {
        "random_weights": rand, "warning": WARNING if rand else None, "view": args.view, "metric": args.metric,
        "ablation": args.ablation, "n_prompts": n_prompts, "machine": platform.platform(), "threads": args.threads,
    }
    stem = "roc_ioi_gpt2_random" if rand else "roc_ioi_gpt2"
    title = "ACDC on IOI, GPT-2 small" + (" - RANDOM WEIGHTS: numbers mean nothing" if rand else "")
    write([row], args.out, stem, title, extra)
    if rand:
        print(WARNING)


if __name__ == "__main__":
    main()
