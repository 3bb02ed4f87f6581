"""Two-operand arithmetic, as in MIB's arithmetic task (Mueller et al. 2025): the first token of a sum or a
difference.

    "37 + 45 =" -> " 82" (GPT-2: one token), or its first digit " 8" (tokenizers that write numbers digit by digit)

Generated offline. The corrupt prompt has other operands of the same token length whose result starts with
another token: correct = the clean result's first token, incorrect = the corrupt result's (the logit difference
asks whether the circuit computes from the operands it is given). ``split``: "discovery", "validation", "test" use
disjoint thirds of the first operands (a mod 3) and their own wording.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from .base import Task, recorded, split_index
from .text import encode, tokenize_pairs, tokenizer_of, try_encode, vocab_size_of

__all__ = ["TEMPLATES", "arithmetic"]

TEMPLATES = {
    "all": "{a} {op} {b} =",
    "discovery": "{a} {op} {b} =",
    "validation": "Compute {a} {op} {b}. The result is",
    "test": "What is {a} {op} {b}? It is",
}


@recorded("arithmetic")
def arithmetic(
    model_or_tokenizer: Any,
    n_prompts: int = 100,
    *,
    seed: int = 0,
    op: str = "+",
    low: int = 10,
    high: int = 99,
    metric: str = "logit_diff",
    split: str = "all",
) -> Task:
    """``n_prompts`` seeded "a op b" prompts (a, b in [low, high]; op "+" or "-", a >= b for "-") with
    other-operand twins (module docstring). The answer is the first token of " {result}"; a tokenizer that writes
    the space as its own token gets prompts that end with it and the result's first digit as the answer."""
    k = split_index(split)
    if op not in ("+", "-"):
        raise ValueError(f"op must be '+' or '-', got {op!r}")
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    tok = tokenizer_of(model_or_tokenizer)
    firsts = [a for a in range(low, high + 1) if k is None or a % 3 == k]
    if not firsts:
        raise ValueError(f"no first operand in [{low}, {high}] for split {split!r}")
    template = TEMPLATES[split]

    def result(a: int, b: int) -> int:
        return a + b if op == "+" else a - b

    # digit tokenizers (SmolLM2, Llama 3) write " 150" as " ", "1", "5", "0": the prompt then ends with the space
    # and the answer is the first digit
    space = try_encode(tok, " ")
    spaced = bool(space) and (try_encode(tok, " 150") or [])[:1] == space[:1] and len(space) == 1

    def first_token(n: int) -> int:
        ids = try_encode(tok, f"{n}" if spaced else f" {n}")
        if not ids:
            raise ValueError(f"arithmetic: {n} does not tokenize here")
        return ids[0]

    def prompt(a: int, b: int) -> str:
        return template.format(a=a, b=b, op=op) + (" " if spaced else "")

    rng = random.Random(seed)
    clean, corrupt, good, bad = [], [], [], []
    for i in range(n_prompts):
        for _ in range(1000):
            a = rng.choice(firsts)
            b = rng.randint(low, a if op == "-" else high)
            c = rng.choice(firsts)
            d = rng.randint(low, c if op == "-" else high)
            same_length = len(encode(tok, prompt(a, b))) == len(encode(tok, prompt(c, d)))
            if same_length and first_token(result(a, b)) != first_token(result(c, d)):
                break
        else:
            raise ValueError(f"arithmetic prompt {i}: no corrupt operands of the same length with another answer token")
        clean.append(prompt(a, b))
        corrupt.append(prompt(c, d))
        good.append(first_token(result(a, b)))
        bad.append(first_token(result(c, d)))
    clean_t, corrupt_t, last = tokenize_pairs(tok, clean, corrupt, "arithmetic")
    return Task.from_tokens(clean_t, corrupt_t, correct=torch.tensor(good), incorrect=torch.tensor(bad), answer_pos=last,
                            metric=metric, name="arithmetic" + ("" if split == "all" else f"-{split}"),
                            vocab_size=vocab_size_of(tok))
