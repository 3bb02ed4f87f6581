"""Indirect object identification (Wang et al. 2022, arXiv:2211.00593).

"When Mary and John went to the store, John gave a drink to" -> " Mary" (the indirect object,
IO), not " John" (the subject, S). Templates are the IOI paper's BABA templates; ABBA swaps the
first two names. Corrupt prompts ("ABC", as in the ACDC paper) replace all three names by
fresh, distinct names, keeping template, place and object, so each pair has the same length.
Prompts of different templates are right-padded; each is scored at its own last token.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from .base import Task
from .text import pair_batch, single_tokens, tokenizer_of

__all__ = ["ioi", "TEMPLATES", "NAMES", "PLACES", "OBJECTS"]

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


def ioi(
    model_or_tokenizer: Any,
    n_prompts: int = 100,
    *,
    seed: int = 0,
    order: Literal["mixed", "ABBA", "BABA"] = "mixed",
    metric: str = "logit_diff",
) -> Task:
    """``n_prompts`` seeded IOI prompts with ABC corrupt twins; answers IO (correct) vs S.

    Only names, places and objects that are one token with a leading space are used.
    """
    if order not in ("mixed", "ABBA", "BABA"):
        raise ValueError(f"order must be 'mixed', 'ABBA' or 'BABA', got {order!r}")
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    tok = tokenizer_of(model_or_tokenizer)
    names = single_tokens(tok, NAMES)
    places, objects = single_tokens(tok, PLACES), single_tokens(tok, OBJECTS)
    if len(names) < 5:
        raise ValueError(f"only {len(names)} IOI names are single tokens in this tokenizer; need at least 5")
    rng = random.Random(seed)
    clean, corrupt, io, s = [], [], [], []
    for i in range(n_prompts):
        template = rng.choice(TEMPLATES)
        abba = order == "ABBA" or (order == "mixed" and i % 2 == 0)
        a, b, c, d, e = rng.sample(names, 5)
        place, obj = rng.choice(places), rng.choice(objects)

        first, second = (a, b) if abba else (b, a)
        clean.append(_fill(template, first, second, b, place, obj))
        corrupt.append(_fill(template, c, d, e, place, obj))
        io.append(a)
        s.append(b)
    return pair_batch(tok, clean, corrupt, io, s, metric=metric, name="ioi")


def _fill(template: str, first: str, second: str, subject: str, place: str, obj: str) -> str:
    """Put the names (first two, then the subject's repeat), place and object into a template."""
    t = template.replace("[B] and [A]", f"{first} and {second}", 1).replace("[B]", subject)
    return t.replace("[PLACE]", place).replace("[OBJECT]", obj)
