'''Docstring (Heimersheim & Janiak 2023, "A circuit for Python docstrings in a 4-layer
attention-only transformer"), the task as the ACDC paper ran it.

A Python function whose docstring lists its parameters; the model must name the next one::

    def port(self, load, size, files, last):
        """oil column piece

        :param load: crime population
        :param size: unit dark
        :param

-> " files". The settings are the ACDC paper's: 2 definition arguments before the matching
ones, 3 matching arguments (documented in order), 1 after, a 3-word description and 2-word
parameter descriptions; so the definition has 6 arguments, the docstring documents the first
two matching ones and the prompt stops at the third ``:param``. Correct answer: the third
matching argument; incorrect answers: the definition's other 5 arguments (metric "logit_diff"
is the correct logit minus their mean). All words are one token with a leading space (and the
description's first word also without), so every prompt has the same length.

Corrupt distributions (the paper's names): ``"random_random"`` (the ACDC paper's choice:
definition and docstring arguments replaced by fresh random names, different from each other),
``"random_def"`` (definition arguments only), ``"random_doc"`` (docstring arguments only).
'''

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from .base import Task, recorded
from .text import named_positions, single_token_id, single_tokens, tokenize_pairs, tokenizer_of, vocab_size_of

__all__ = ["docstring", "CORRUPTIONS", "WORDS"]

CORRUPTIONS = ("random_random", "random_def", "random_doc")

# common short English words; those that are one token in the model's tokenizer are used for
# function names, argument names and descriptions alike
WORDS = list(dict.fromkeys([
    "load", "size", "files", "last", "port", "oil", "column", "piece", "crime", "population", "unit",
    "dark", "name", "data", "value", "key", "path", "file", "line", "text", "user", "item", "list",
    "node", "edge", "graph", "table", "row", "field", "type", "mode", "state", "group", "order",
    "image", "color", "shape", "width", "height", "length", "count", "index", "start", "end",
    "step", "limit", "rate", "time", "date", "year", "month", "day", "hour", "week", "price",
    "cost", "money", "bank", "card", "code", "test", "result", "error", "message", "content",
    "page", "link", "host", "server", "client", "query", "token", "target", "source", "parent",
    "child", "tree", "root", "leaf", "block", "chunk", "batch", "layer", "model", "input",
    "output", "filter", "sort", "search", "match", "pattern", "format", "style", "theme", "font",
    "title", "label", "tag", "note", "comment", "post", "share", "view", "window", "frame",
    "box", "cell", "grid", "map", "point", "line", "circle", "square", "angle", "speed",
    "force", "mass", "energy", "power", "light", "sound", "water", "fire", "earth", "air",
    "stone", "wood", "metal", "glass", "paper", "book", "story", "song", "game", "player",
    "team", "score", "match", "round", "level", "stage", "world", "city", "country", "river",
    "lake", "sea", "island", "forest", "field", "garden", "house", "room", "door", "wall",
    "floor", "roof", "road", "bridge", "car", "train", "ship", "plane", "horse", "dog", "cat",
    "bird", "fish", "tree", "flower", "fruit", "apple", "bread", "milk", "cheese", "meat",
]))

N_DEF_PREFIX, N_MATCHING, N_DEF_SUFFIX, DESC_LEN, ARG_DESC_LEN = 2, 3, 1, 3, 2


@recorded("docstring")
def docstring(
    model_or_tokenizer: Any,
    n_prompts: int = 50,
    *,
    seed: int = 0,
    corrupt: Literal["random_random", "random_def", "random_doc"] = "random_random",
    metric: str = "logit_diff",
    words: Sequence[str] = WORDS,
) -> Task:
    """``n_prompts`` seeded docstring prompts with corrupt twins (module docstring)."""
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    if corrupt not in CORRUPTIONS:
        raise ValueError(f"corrupt must be one of {', '.join(map(repr, CORRUPTIONS))}, got {corrupt!r}")
    tok = tokenizer_of(model_or_tokenizer)
    usable = sorted(set(single_tokens(tok, words)) & set(single_tokens(tok, words, prefix="")))
    n_args, n_doc = N_DEF_PREFIX + N_MATCHING + N_DEF_SUFFIX, N_MATCHING - 1
    need = 1 + 2 * n_args + n_doc  # function name, arguments, fresh definition and docstring names
    if len(usable) < need:
        raise ValueError(f"only {len(usable)} docstring words are single tokens in this tokenizer; need {need}")
    rng = random.Random(seed)
    clean, corrupted, correct, incorrect, marks = [], [], [], [], []
    for _ in range(n_prompts):
        picked = rng.sample(usable, need)
        fn, args = picked[0], picked[1 : 1 + n_args]
        fresh_def, fresh_doc = picked[1 + n_args : 1 + 2 * n_args], picked[1 + 2 * n_args :]
        desc = [rng.choice(usable) for _ in range(DESC_LEN)]
        arg_desc = [[rng.choice(usable) for _ in range(ARG_DESC_LEN)] for _ in range(n_doc)]
        documented = args[N_DEF_PREFIX : N_DEF_PREFIX + n_doc]
        clean.append(_prompt(fn, args, documented, desc, arg_desc))
        new_def = fresh_def if corrupt in ("random_random", "random_def") else args
        new_doc = fresh_doc if corrupt in ("random_random", "random_doc") else documented
        corrupted.append(_prompt(fn, new_def, new_doc, desc, arg_desc))
        answer = args[N_DEF_PREFIX + N_MATCHING - 1]
        matching = args[N_DEF_PREFIX : N_DEF_PREFIX + N_MATCHING]
        marks.append([f", {a}" for a in matching] + [f":param {a}" for a in documented])
        correct.append(single_token_id(tok, " " + answer, "docstring correct"))
        incorrect.append([single_token_id(tok, " " + a, "docstring incorrect") for a in args if a != answer])
    clean_t, corrupt_t, last = tokenize_pairs(tok, clean, corrupted, "docstring")
    task = Task.from_tokens(
        clean_t, corrupt_t, correct=correct, incorrect=incorrect, answer_pos=last, metric=metric,
        name="docstring", vocab_size=vocab_size_of(tok),
    )
    names = ["A_def", "B_def", "C_def", "A_doc", "B_doc"]
    positions = named_positions(tok, clean, clean_t, last, {
        **{n: [m[j] for m in marks] for j, n in enumerate(names)}, "END": -1,
    }, "docstring")
    return replace(task, positions=positions,
                   notes=f"single tokens in this tokenizer (with and without a space): {len(usable)} of {len(words)} words")


def _prompt(fn: str, args: Sequence[str], documented: Sequence[str], desc: Sequence[str], arg_desc: Sequence[Sequence[str]]) -> str:
    """The function header, its description and the documented parameters, up to ``:param``."""
    lines = [f"def {fn}(self, {', '.join(args)}):", f'    """{" ".join(desc)}', ""]
    lines += [f"    :param {a}: {' '.join(d)}" for a, d in zip(documented, arg_desc, strict=True)]
    lines.append("    :param")
    return "\n".join(lines)
