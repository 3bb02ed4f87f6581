"""Offline demo: discover the circuit of a small built-in model, print it, save it as JSON.

The model is a 3-layer, 4-head GPT-2 with random weights built in memory (nothing is
downloaded). The task: prompts of random tokens whose corrupt twin differs only in the first
token, so every edge that matters carries information from position 0 to the last position.

    python -m acdc.demo --out out/demo
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

__all__ = ["demo_model", "demo_task", "main"]


def demo_model(seed: int = 0):
    """A small random-weight GPT-2 as a TransformerLens bridge (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from .model import load_model

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=3, n_head=4, n_embd=64, vocab_size=100, n_positions=32,
                     initializer_range=0.15, bos_token_id=0, eos_token_id=0)
    return load_model(GPT2LMHeadModel(cfg))


def demo_task(n_prompts: int = 24, n_tokens: int = 8, vocab: int = 100, seed: int = 1):
    """Clean prompts and corrupt twins that differ only in their first token."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, vocab, (n_prompts, n_tokens), generator=gen)
    corrupt = clean.clone()
    corrupt[:, 0] = (clean[:, 0] + torch.randint(1, vocab, (n_prompts,), generator=gen)) % vocab
    return clean, corrupt


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="acdc offline demo")
    ap.add_argument("--out", default="out/demo", help="folder for circuit.json")
    ap.add_argument("--threshold", type=float, default=0.02)
    args = ap.parse_args(argv)

    from .api import discover
    from .circuit import Circuit

    model = demo_model()
    clean, corrupt = demo_task()
    print(f"model: GPT-2 shape, {model.cfg.n_layers} layers x {model.cfg.n_heads} heads, random weights (built offline)")
    print(f"task: {clean.shape[0]} prompts x {clean.shape[1]} tokens; corrupt twins differ in the first token")
    t0 = time.perf_counter()
    circuit = discover(model, clean, corrupt, threshold=args.threshold, metric="kl", ablation="resample")
    print(f"ACDC took {time.perf_counter() - t0:.2f}s")
    print(circuit.summary(max_edges=20))
    out = Path(args.out)
    path = circuit.to_json(out / "circuit.json")
    assert Circuit.from_json(path) == circuit
    print(f"saved {path} (EAP-IG/MIB graph JSON; reloads identically)")


if __name__ == "__main__":
    main()
