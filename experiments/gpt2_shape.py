"""The speed scripts' workload: a GPT-2-small-shaped model with random weights and 50 random prompt pairs."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

import acdc


def random_model_and_task(layers: int = 12, prompts: int = 50, tokens: int = 15) -> tuple[Any, acdc.Task]:
    """A seeded random GPT-2 (``layers`` layers, GPT-2 small otherwise) and prompts of random tokens, random answers."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = acdc.load_model(GPT2LMHeadModel(GPT2Config(n_layer=layers)))
    gen = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(0, 50257, (2, prompts, tokens), generator=gen)
    answers = torch.randint(0, 50257, (2, prompts), generator=gen)
    return model, acdc.Task.from_tokens(clean, corrupt, correct=answers[0], incorrect=answers[1])


RESULTS = Path(__file__).resolve().parent / "results"


def workload(description: str, argv: Sequence[str] | None = None,
             extra: Callable[[argparse.ArgumentParser], None] | None = None) -> tuple[argparse.Namespace, Any, acdc.Task]:
    """The speed scripts' shared flags (--threads, --layers, --out, and ``extra``'s), threads set, the workload built."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--out", type=Path, default=RESULTS)
    if extra is not None:
        extra(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    return (args, *random_model_and_task(args.layers))


def best_of(fn: Callable[[], Any], reps: int) -> float:
    """The fastest of ``reps`` runs of ``fn``, in seconds."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)
