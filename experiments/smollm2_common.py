"""Shared pieces of the SmolLM2 experiments: loading, head tables, writing results."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

import acdc
from acdc.model import Transformer

ROOT = Path(__file__).resolve().parent.parent


def load(threads: int) -> tuple[Any, Transformer]:
    """SmolLM2-135M-Instruct as a bridge and as the engine's model (needs acdc[smollm2])."""
    torch.set_num_threads(threads)
    model = acdc.load_model("smollm2-135m-instruct")
    return model, Transformer.from_bridge(model)


def heads_of(circuit: acdc.Circuit) -> list[str]:
    """The attention heads a circuit touches, in forward order."""
    return [n for n in circuit.nodes if n.startswith("a")]


def top_heads(scores: torch.Tensor, k: int) -> list[tuple[str, float]]:
    """The k heads with the largest score [n_layers, n_heads], as (name, score)."""
    n_heads = scores.shape[1]
    order = torch.argsort(scores.flatten(), descending=True)[:k].tolist()
    return [(f"a{i // n_heads}.h{i % n_heads}", round(float(scores.flatten()[i]), 4)) for i in order]


def write(out: Path, stem: str, data: dict[str, Any], markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data["machine"] = {"platform": platform.platform(), "threads": torch.get_num_threads(),
                       "date": time.strftime("%Y-%m-%d")}
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {out / stem}.json, .md")
