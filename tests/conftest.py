"""Shared fixtures: tiny random-weight models built offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path

import pytest
import torch

import acdc


def tiny_gpt2(n_layer: int = 2, n_head: int = 4, d: int = 32, vocab: int = 50, seed: int = 0):
    """A random GPT-2 with weights large enough that every edge matters."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=d, vocab_size=vocab, n_positions=32,
        initializer_range=0.2, bos_token_id=0, eos_token_id=0,
    )
    return acdc.load_model(GPT2LMHeadModel(cfg))


def tiny_neox(n_layer: int = 2, n_head: int = 4, d: int = 32, vocab: int = 50, seed: int = 0):
    """A random GPT-NeoX (Pythia-style: rotary, parallel attention and MLP)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        num_hidden_layers=n_layer, num_attention_heads=n_head, hidden_size=d,
        intermediate_size=4 * d, vocab_size=vocab, max_position_embeddings=32,
        rotary_pct=0.5, initializer_range=0.2, bos_token_id=0, eos_token_id=0,
    )
    return acdc.load_model(GPTNeoXForCausalLM(cfg))


@pytest.fixture(scope="session")
def gpt2_model():
    return tiny_gpt2(n_layer=3, n_head=4)


@pytest.fixture(scope="session")
def neox_model():
    return tiny_neox()


def random_tokens(batch: int = 4, pos: int = 6, vocab: int = 50, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, vocab, (batch, pos), generator=gen),
        torch.randint(0, vocab, (batch, pos), generator=gen),
    )


def random_answers():
    """(correct, incorrect) token ids for the 4 prompts of `random_tokens`."""
    return torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])


class Killed(Exception):
    """Raised by `kill_after`'s callback: a run stopped from outside, as a killed process would be."""


def kill_after(n: int):
    """An ACDC callback that raises `Killed` at the n-th tested edge."""
    seen: list[int] = []

    def callback(edge, delta, removed):
        seen.append(edge)
        if len(seen) == n:
            raise Killed

    return callback


def logit_diff_loss(logits):
    """The loss acdc minimises for logit_diff at the last position: minus the mean correct - incorrect logit."""
    correct, incorrect = random_answers()
    last = logits[:, -1]
    rows = torch.arange(4)
    return -(last[rows, correct] - last[rows, incorrect]).mean()


GPT2_TOKENIZER = Path(__file__).resolve().parent / "data" / "gpt2-tokenizer"


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """The real GPT-2 tokenizer, shipped as test data (tests/data/gpt2-tokenizer, MIT)."""
    from acdc.tasks.text import bpe_tokenizer

    return bpe_tokenizer(GPT2_TOKENIZER)
