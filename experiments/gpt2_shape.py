"""The speed scripts' workload: a GPT-2-small-shaped model with random weights and 50 random prompt pairs."""

from __future__ import annotations

import os
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
