"""Indirect object identification (Wang et al. 2022, arXiv:2211.00593).

"When Mary and John went to the store, John gave a drink to" -> " Mary" (the indirect object,
IO), not " John" (the subject, S). Templates are the IOI paper's BABA templates; ABBA swaps the
first two names. Prompts of different templates are right-padded; each is scored at its own
last token. Every prompt carries the IOI paper's named positions (``task.positions``): IO, S1,
S1+1, S2, END (the scored token) and "other", so positional circuits align prompts of different
templates by role. Two corrupt distributions, both keeping template, place and object so each pair has
the same length:

- ``"ABC"`` (the IOI paper's p_ABC, used by the ACDC paper): all three names replaced by three
  fresh, distinct names, so the prompt says nothing about which name is the answer.
- ``"S2-IO"`` (the IOI paper's flipped prompts): the subject's second mention (S2) replaced by the
  IO name, so the other name is repeated and the correct answer flips to S.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import torch

from ..positions import REST, Positions
from .base import THREE_WAY, Task, pair_batch, recorded
from .text import example_labels, single_tokens, token_index, tokenizer_of

__all__ = ["ioi", "CORRUPTIONS", "SPLITS", "SPLIT_OBJECTS", "SPLIT_PLACES", "SPLIT_TEMPLATES", "TEMPLATES", "NAMES",
           "PLACES", "OBJECTS", "POSITIONS"]

CORRUPTIONS = ("ABC", "S2-IO")
SPLITS = ("all", *THREE_WAY, "half-discovery", "half-held-out")

TEMPLATES = [
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to",
]

NAMES = [
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda", "Daniel",
    "David", "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon", "Jason", "Justin", "Sarah",
    "William", "Jonathan", "Stephanie", "Brian", "Nicole", "Nicholas", "Anthony", "Heather", "Eric",
    "Elizabeth", "Adam", "Megan", "Melissa", "Kevin", "Steven", "Thomas", "Timothy", "Christina", "Kyle",
    "Rachel", "Laura", "Lauren", "Amber", "Brittany", "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy",
    "Crystal", "Michelle", "Tiffany", "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca",
    "Jacob", "Stephen", "Patrick", "Sean", "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara", "Dustin",
    "Paul", "Angela", "Tyler", "Scott", "Katherine", "Andrea", "Gregory", "Erica", "Mary", "Travis", "Lisa",
    "Kenneth", "Bryan", "Lindsey", "Kristen", "Jose", "Alexander", "Jesse", "Katie", "Lindsay", "Shannon",
    "Vanessa", "Courtney", "Christine", "Alicia", "Cody", "Allison", "Bradley", "Samuel",
]
PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station"]
OBJECTS = ["ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack"]

# The three-way splits (issue 40): each split has its own sentence structures, names (every third of NAMES),
# places and objects, so a circuit chosen on discovery + validation prompts is tested on prompts that share
# nothing with them but the task. Discovery: a main clause, then the giving ("Then, B and A went ... B gave");
# validation: a subordinate clause first ("When B and A got ..., B gave"); test: frames of neither kind.
SPLIT_TEMPLATES = {
    "discovery": [t for t in TEMPLATES if t.startswith(("Then,", "Afterwards,", "After the lunch,"))],
    "validation": [t for t in TEMPLATES if t.startswith(("After [B]", "When [B]", "While [B]"))],
    "test": [
        "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to",
        "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to",
        "It was at the [PLACE] that [B] and [A] met, and [B] handed a [OBJECT] to",
        "Both [B] and [A] wanted the [OBJECT] from the [PLACE], but [B] gave it to",
        "On the way to the [PLACE], [B] and [A] found a [OBJECT], and [B] gave it to",
    ],
}
SPLIT_PLACES = {
    "discovery": [*PLACES, "kitchen", "hall", "castle", "village"],
    "validation": ["park", "library", "church", "market", "beach", "airport", "bank", "museum", "gym", "farm", "hotel", "zoo"],
    "test": ["bakery", "pool", "lake", "theater", "mall", "river", "forest", "bar", "club", "stadium", "island", "city"],
}
SPLIT_OBJECTS = {
    "discovery": [*OBJECTS, "guitar", "chair", "knife", "rope"],
    "validation": ["book", "ball", "key", "letter", "cake", "gift", "hat", "pen", "phone", "flower", "watch", "bag"],
    "test": ["cup", "bottle", "card", "box", "coin", "camera", "map", "ticket", "shirt", "toy", "lamp", "candle"],
}


@recorded("ioi")
def ioi(
    model_or_tokenizer: Any,
    n_prompts: int = 100,
    *,
    seed: int = 0,
    order: Literal["mixed", "ABBA", "BABA"] = "mixed",
    corrupt: Literal["ABC", "S2-IO"] = "ABC",
    metric: str = "logit_diff",
    templates: Sequence[str] = TEMPLATES,
    names: Sequence[str] = NAMES,
    places: Sequence[str] = PLACES,
    objects: Sequence[str] = OBJECTS,
    split: Literal["all", "discovery", "validation", "test", "half-discovery", "half-held-out"] = "all",
) -> Task:
    """``n_prompts`` seeded IOI prompts with corrupt twins; answers IO (correct) vs S.

    order: "ABBA", "BABA" or "mixed" (alternating). corrupt: "ABC" or "S2-IO" (module docstring).
    metric: "logit_diff" (IO - S), "prob_diff" or "kl". templates, names, places, objects
    default to the IOI paper's; a template reads "... [B] and [A] ... [B] ..." (BABA order) with
    optional [PLACE] and [OBJECT]. Only words that are one token with a leading space are used.
    split: "discovery", "validation" or "test" (the protocol's three sets) share no sentence structure,
    template, name, place or object: with the default lists, `SPLIT_TEMPLATES`, every third name of NAMES,
    `SPLIT_PLACES` and `SPLIT_OBJECTS`; with lists of your own, every third entry of each. Choose every
    setting on validation prompts and score test prompts once. "half-discovery" / "half-held-out": the
    older two-way split (even and odd templates and names; places and objects shared), kept so earlier
    results reproduce. "all" uses every default template, name, place and object.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    if split in THREE_WAY:
        k = THREE_WAY.index(split)
        templates = SPLIT_TEMPLATES[split] if templates is TEMPLATES else list(templates)[k::3]
        places = SPLIT_PLACES[split] if places is PLACES else list(places)[k::3]
        objects = SPLIT_OBJECTS[split] if objects is OBJECTS else list(objects)[k::3]
        names = list(names)[k::3]
        if not templates:
            raise ValueError(f"split {split!r} needs at least three templates (one per split), got {len(templates)}")
    elif split != "all":
        if len(templates) < 2:
            raise ValueError(f"split {split!r} needs at least two templates (one per half), got {len(templates)}")
        half = 0 if split == "half-discovery" else 1
        templates, names = list(templates)[half::2], list(names)[half::2]
    for t in templates:
        if "[B] and [A]" not in t or "[B]" not in t.split("[B] and [A]", 1)[1]:
            raise ValueError(f"IOI template {t!r} needs '[B] and [A]' followed later by '[B]'")
    if order not in ("mixed", "ABBA", "BABA"):
        raise ValueError(f"order must be 'mixed', 'ABBA' or 'BABA', got {order!r}")
    if corrupt not in CORRUPTIONS:
        raise ValueError(f"corrupt must be one of {', '.join(map(repr, CORRUPTIONS))}, got {corrupt!r}")
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    tok = tokenizer_of(model_or_tokenizer)
    given = (len(names), len(places), len(objects))
    names = single_tokens(tok, names)
    places, objects = single_tokens(tok, places), single_tokens(tok, objects)
    notes = (f"single tokens in this tokenizer: {len(names)} of {given[0]} names, {len(places)} of {given[1]} places, "
             f"{len(objects)} of {given[2]} objects")
    for slot, words in (("[PLACE]", places), ("[OBJECT]", objects)):
        if not words and any(slot in t for t in templates):
            raise ValueError(f"no {slot} word is a single token in this tokenizer; pass other words")
    places, objects = places or [""], objects or [""]
    if len(names) < 5:
        raise ValueError(f"only {len(names)} IOI names are single tokens in this tokenizer; need at least 5")
    rng = random.Random(seed)
    clean, corrupted, io, s, used, ends = [], [], [], [], [], []
    for i in range(n_prompts):
        template = rng.choice(list(templates))
        used.append(template)
        abba = order == "ABBA" or (order == "mixed" and i % 2 == 0)
        a, b, c, d, e = rng.sample(names, 5)
        place, obj = rng.choice(places), rng.choice(objects)

        first, second = (a, b) if abba else (b, a)
        text, (end1, end2, end_s2) = _fill(template, first, second, b, place, obj)
        clean.append(text)
        ends.append((text, end1 if abba else end2, end2 if abba else end1, end_s2))  # IO, S1, S2 character ends
        if corrupt == "ABC":
            corrupted.append(_fill(template, c, d, e, place, obj)[0])
        else:  # S2-IO: the IO name is the repeated one
            corrupted.append(_fill(template, first, second, a, place, obj)[0])
        io.append(a)
        s.append(b)
    name = ("ioi" if corrupt == "ABC" else f"ioi-{corrupt}") + ("" if split == "all" else f"-{split}")
    task = pair_batch(tok, clean, corrupted, io, s, metric=metric, name=name)
    lengths: dict[str, set[int]] = {}
    for template, last in zip(used, task.answer_pos.tolist(), strict=True):
        lengths.setdefault(template, set()).add(int(last) + 1)
    for template, seen in lengths.items():  # positions align by role only if they align by index
        if len(seen) > 1:
            raise ValueError(f"IOI template {template!r} tokenizes to {sorted(seen)} tokens for different words; "
                             "pass names, places and objects that tokenize alike")
    ids = {t: i for i, t in enumerate(templates)}
    return replace(task, notes=notes, template=torch.tensor([ids[t] for t in used]),
                   positions=_positions(tok, task, ends))


POSITIONS = ("IO", "S1", "S1+1", "S2", "END", REST)


def _positions(tok: Any, task: Task, ends: list[tuple[str, int, int, int]]) -> Positions:
    """The IOI paper's named positions of every prompt: IO, S1, S1+1, S2, END and the other tokens."""
    marks: dict[str, list[int]] = {name: [] for name in POSITIONS[:-1]}
    for i, (text, io, s1, s2) in enumerate(ends):
        where = f"IOI prompt {i}"
        marks["IO"].append(token_index(tok, text, io, where))
        marks["S1"].append(token_index(tok, text, s1, where))
        marks["S1+1"].append(marks["S1"][-1] + 1)
        marks["S2"].append(token_index(tok, text, s2, where))
    marks["END"] = task.answer_pos.tolist()
    b, n = task.clean.shape
    pos = Positions.named(marks, b, n)
    return replace(pos, example=example_labels(tok, task.clean, pos))


def _fill(template: str, first: str, second: str, subject: str, place: str, obj: str) -> tuple[str, tuple[int, int, int]]:
    """Put the names (first two, then the subject's repeat), place and object into a template.

    Returns the text and the character ends of the first name, the second and the repeat.
    """
    t = template.replace("[PLACE]", place).replace("[OBJECT]", obj)
    head, tail = t.split("[B] and [A]", 1)
    pre = f"{head}{first} and {second}"
    at = tail.index("[B]")
    return pre + tail.replace("[B]", subject), (len(head) + len(first), len(pre), len(pre) + at + len(subject))
