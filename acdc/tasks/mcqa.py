"""Multiple choice, as MIB's MCQA task poses it (Mueller et al. 2025): find the option that matches a stated fact
and answer with its letter.

    "The banana is yellow. What color is the banana?\nA. red\nB. yellow\nC. blue\nD. green\nAnswer:" -> " B"

Generated offline: an object, its stated color, and the color among ``n_options`` distinct colors at a random
letter. The corrupt prompt is the same text with the options in another order, so the right color sits at
another letter: correct = the clean prompt's letter, incorrect = the corrupt prompt's (a circuit that copies the
letter of the stated color moves the logit difference from one to the other). Every color and letter is one
token with a leading space, so clean and corrupt have the same length. ``split``: "discovery", "validation",
"test" use disjoint thirds of the objects and colors and their own question wording.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .base import Task, pair_batch, recorded, split_index
from .text import single_tokens, tokenizer_of

__all__ = ["COLORS", "OBJECTS", "QUESTIONS", "mcqa"]

COLORS = ["red", "blue", "green", "yellow", "black", "white", "brown", "pink", "purple", "orange", "gray", "gold",
          "silver", "violet", "beige", "navy", "tan", "teal", "cyan", "maroon", "olive", "lime", "ivory", "amber",
          "coral", "grey", "magenta"]
OBJECTS = ["ball", "car", "hat", "cup", "book", "shirt", "door", "pen", "box", "chair", "lamp", "bag", "kite", "boat",
           "bike", "coat", "shoe", "bowl", "key", "flag", "rug", "mug", "vase", "sock"]
QUESTIONS = {
    "all": "The {obj} is {color}. What color is the {obj}?",
    "discovery": "The {obj} is {color}. What color is the {obj}?",
    "validation": "Someone painted the {obj} {color}. Which color does the {obj} have?",
    "test": "My {obj} is {color}. Tell me the color of my {obj}.",
}
LETTERS = "ABCDEFGH"


@recorded("mcqa")
def mcqa(
    model_or_tokenizer: Any,
    n_prompts: int = 100,
    *,
    seed: int = 0,
    n_options: int = 4,
    metric: str = "logit_diff",
    colors: Sequence[str] = COLORS,
    objects: Sequence[str] = OBJECTS,
    split: str = "all",
) -> Task:
    """``n_prompts`` seeded multiple-choice prompts with reordered-option twins (module docstring).

    n_options: 2..8 options, lettered A, B, ...; colors, objects: the words to draw from (only those that are one
    token with a leading space are used; `task.notes` says how many); split: "all" or one of the three sets.
    """
    k = split_index(split)
    if not 2 <= n_options <= len(LETTERS):
        raise ValueError(f"n_options must be in 2..{len(LETTERS)}, got {n_options}")
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    if k is not None:
        colors, objects = list(colors)[k::3], list(objects)[k::3]
    tok = tokenizer_of(model_or_tokenizer)
    given = (len(colors), len(objects))
    colors, objects = single_tokens(tok, colors), single_tokens(tok, objects)
    letters = single_tokens(tok, list(LETTERS[:n_options]))
    if len(letters) < n_options:
        raise ValueError(f"the option letters {LETTERS[:n_options]} are not all single tokens with a leading space here")
    if len(colors) < n_options or not objects:
        raise ValueError(f"mcqa needs at least {n_options} colors and one object that are single tokens; "
                         f"got {len(colors)} colors and {len(objects)} objects")
    rng = random.Random(seed)
    clean, corrupt, good, bad = [], [], [], []
    for _ in range(n_prompts):
        obj = rng.choice(objects)
        options = rng.sample(colors, n_options)
        right = options[0]
        order = options[:]
        rng.shuffle(order)
        other = order[:]
        while other.index(right) == order.index(right):  # the right color at another letter
            rng.shuffle(other)
        question = QUESTIONS[split].format(obj=obj, color=right)

        def text(opts: list[str], question: str = question) -> str:
            return question + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(opts)) + "\nAnswer:"

        clean.append(text(order))
        corrupt.append(text(other))
        good.append(LETTERS[order.index(right)])
        bad.append(LETTERS[other.index(right)])
    task = pair_batch(tok, clean, corrupt, good, bad, metric=metric, name="mcqa" + ("" if split == "all" else f"-{split}"))
    return replace(task, notes=f"single tokens in this tokenizer: {len(colors)} of {given[0]} colors, "
                               f"{len(objects)} of {given[1]} objects")
