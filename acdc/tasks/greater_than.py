"""Greater-than (Hanna, Liu & Variengien 2023, arXiv:2305.00586).

"The war lasted from the year 1732 to the year 17" -> a two-digit year above 32. The corrupt
prompt starts the span at "01" ("... from the year 1701 to the year 17"), where every ending is
as good as any other. Each prompt is scored at its last token (the century); the answers are
the two-digit tokens "00".."99": correct = the years greater than YY, incorrect = the years
less than or equal to it, and the metric "prob_diff" is P(greater) - P(less or equal), the
paper's probability difference.

Years follow the paper: YY in 02..98, kept only where " {century}{YY}" is the two tokens
" {century}" and "YY" (so the prompt ends where the model must produce the second half of a
year), and the nouns are the paper's event nouns that are one token with a leading space.
Named positions: NOUN, YY (the start year's last two digits), END (the scored century), other.

Tokenizers that write numbers digit by digit (SmolLM2, Llama 3) get the digit variant
(``digits=True``, task name "greater-than-digits"): the prompt is the same text, ending at the
century's last digit, and the answer is the next digit, the end year's tens digit. With start
year YY = 10 t + u, correct = the digits above t, incorrect = the digits below it (t itself could
go either way, so it counts for neither), t in 1..8 so both are non-empty; the corrupt start year
"01" (t = 0) again makes no tens digit wrong. ``metric="year_prob_diff"`` scores the two-digit year as the
paper's probability difference does, t counted: the prompt continues with the tens digit t, is scored at the
century (the tens digit a) and at t (the units digit b given t), and P(end year > YY) = sum_{a > t} P(a) +
P(t) sum_{b > u} P(b | t), P(end year <= YY) = sum_{a < t} P(a) + P(t) sum_{b <= u} P(b | t).

``corrupt``: "01" (the paper's: every corrupt prompt starts at 01, so a circuit that only pushes the answer
up scores as well as one that compares) or "random" (each prompt's corrupt start year drawn from the usable
years with another tens digit: the corrupt run favours other answers, prompt by prompt). ``tens``: only start
years with these tens digits (results per t: one task per digit).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from .base import Task, recorded, split_index
from .text import encode, named_positions, single_tokens, tokenize_pairs, tokenizer_of, try_encode, vocab_size_of

__all__ = ["greater_than", "NOUNS", "SPLIT_TEMPLATES", "TEMPLATE"]

TEMPLATE = "The {noun} lasted from the year {century}{yy} to the year {century}"
# the protocol's three sets (issue 40): the paper's sentence for discovery, two others for validation and test
SPLIT_TEMPLATES = {
    "discovery": TEMPLATE,
    "validation": "The {noun} started in the year {century}{yy} and ended in the year {century}",
    "test": "The {noun} ran from the year {century}{yy} until the year {century}",
}

NOUNS = [
    "abduction", "accord", "affair", "agreement", "appraisal", "assault", "assessment", "attack",
    "attempt", "campaign", "captivity", "case", "challenge", "chaos", "clash", "collaboration",
    "coma", "competition", "confrontation", "consequence", "conspiracy", "construction",
    "consultation", "contact", "contract", "convention", "cooperation", "custody", "deal",
    "decline", "decrease", "demonstrations", "development", "disagreement", "disorder", "dispute",
    "domination", "dynasty", "effect", "effort", "employment", "endeavor", "engagement",
    "epidemic", "evaluation", "exchange", "existence", "expansion", "expedition", "experiments",
    "fall", "fame", "flights", "friendship", "growth", "hardship", "hostility", "illness",
    "impact", "imprisonment", "improvement", "incarceration", "increase", "insurgency",
    "invasion", "investigation", "journey", "kingdom", "marriage", "modernization", "negotiation",
    "notoriety", "obstruction", "operation", "order", "outbreak", "outcome", "overhaul",
    "patrols", "pilgrimage", "plague", "plan", "practice", "process", "program", "progress",
    "project", "pursuit", "quest", "raids", "reforms", "reign", "relationship", "retaliation",
    "riot", "rise", "rivalry", "romance", "rule", "sanctions", "shift", "siege", "slump",
    "stature", "stint", "strikes", "study", "test", "testing", "tests", "therapy", "tour",
    "tradition", "treaty", "trial", "trip", "unemployment", "voyage", "warfare", "work", "war",
]


@recorded("greater-than")
def greater_than(
    model_or_tokenizer: Any,
    n_prompts: int = 100,
    *,
    seed: int = 0,
    centuries: Sequence[int] = (17,),
    metric: str = "prob_diff",
    nouns: Sequence[str] = NOUNS,
    digits: bool = False,
    corrupt: str = "01",
    tens: Sequence[int] | None = None,
    split: str = "all",
) -> Task:
    """``n_prompts`` seeded greater-than prompts with "01" corrupt twins.

    centuries: the first two digits of the years (the paper's examples use 17; it also ran
    11..17). metric: "prob_diff" (the paper's), "logit_diff" (mean logit of greater years minus
    mean of the others), "kl", or with ``digits`` "year_prob_diff" (the two-digit year, t counted). digits: the
    digit variant for tokenizers that split numbers into digits; corrupt: "01" or "random"; tens: the start years'
    tens digits to draw from (the module docstring). split: "discovery", "validation" or "test" (the protocol's three
    sets: each its own sentence, `SPLIT_TEMPLATES`, and every third noun, so they share no template and no noun) or
    "all" (the paper's sentence, every noun).
    """
    k = split_index(split)
    template = TEMPLATE if split == "all" else SPLIT_TEMPLATES[split]
    if k is not None:
        nouns = list(nouns)[k::3]
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    if corrupt not in ("01", "random"):
        raise ValueError(f"corrupt must be '01' (the paper's) or 'random', got {corrupt!r}")
    if metric == "year_prob_diff" and not digits:
        raise ValueError("metric='year_prob_diff' scores a year written digit by digit (digits=True); with two-digit "
                         "year tokens 'prob_diff' already scores the whole year")
    if not centuries or any(not 10 <= int(c) <= 99 for c in centuries):
        raise ValueError(f"centuries must be two-digit numbers such as 17, got {list(centuries)!r}")
    tok = tokenizer_of(model_or_tokenizer)
    if digits:
        one = [try_encode(tok, str(n)) or [] for n in range(10)]
        if any(len(ids) != 1 for ids in one):
            raise ValueError("greater-than with digits=True needs every digit 0..9 to be one token")
        answer_ids = torch.tensor([ids[0] for ids in one])  # the ten digits
    else:
        two_digit = [try_encode(tok, f"{n:02d}") or [] for n in range(100)]
        missing = [f"{n:02d}" for n, ids in enumerate(two_digit) if len(ids) != 1]
        if missing:
            raise ValueError(
                f"greater-than needs every two-digit number 00..99 to be one token; this tokenizer splits "
                f"{len(missing)} of them (e.g. {missing[0]!r}); for a tokenizer that writes numbers digit by "
                "digit, pass digits=True"
            )
        answer_ids = torch.tensor([ids[0] for ids in two_digit])  # the hundred two-digit years
    usable = single_tokens(tok, nouns)
    if not usable:
        raise ValueError("no greater-than noun is a single token with a leading space in this tokenizer")
    span = range(10, 90) if digits else range(2, 99)  # digits: tens digit 1..8
    if tens is not None:
        bad = sorted({int(t) for t in tens} - {yy // 10 for yy in span})
        if bad or not tens:
            raise ValueError(f"tens must be start-year tens digits in {span[0] // 10}..{span[-1] // 10}, got {list(tens)!r}")
        span = [yy for yy in span if yy // 10 in {int(t) for t in tens}]
    years = {c: [yy for yy in span if _splits_as_year(tok, int(c), yy, digits)] for c in centuries}
    if not any(years.values()) or any(not _splits_as_year(tok, int(c), 1, digits) for c in centuries):
        raise ValueError(
            f"no year of centuries {list(centuries)} tokenizes as ' CC' + 'YY'; greater-than needs a tokenizer "
            "that splits years like GPT-2's (or, with digits=True, into digits)"
        )
    rng = random.Random(seed)
    pool = [(c, yy) for c in centuries for yy in years[c]]
    every_year = {c: [yy for yy in (range(10, 100) if digits else range(2, 100)) if _splits_as_year(tok, int(c), yy, digits)]
                  for c in centuries}
    two = metric == "year_prob_diff"
    clean, corrupted, chosen, used, cents = [], [], [], [], []
    for _ in range(n_prompts):
        century, yy = rng.choice(pool)
        noun = rng.choice(usable)
        if corrupt == "random":  # another start year whose tens digit differs
            other = rng.choice([y for y in every_year[century] if y // 10 != yy // 10])
        else:
            other = 1
        end = str(yy // 10) if two else ""  # year_prob_diff: the prompt goes on with the tens digit t
        clean.append(template.format(noun=noun, century=century, yy=f"{yy:02d}") + end)
        corrupted.append(template.format(noun=noun, century=century, yy=f"{other:02d}") + end)
        chosen.append(yy)
        used.append(noun)
        cents.append(century)
    clean_t, corrupt_t, last = tokenize_pairs(tok, clean, corrupted, "greater-than")
    suffix = "" if split == "all" else f"-{split}"
    positions = named_positions(tok, clean, clean_t, last, {  # the last token of each mark
        "NOUN": [f"The {noun}" for noun in used], "YY": [f"the year {c}{yy:02d}" for c, yy in zip(cents, chosen, strict=True)],
        "END": -2 if two else -1, **({"TENS": -1} if two else {}),
    }, "greater-than")
    yy_t = torch.tensor(chosen)[:, None]
    if two:  # scored at the century (the tens digit) and at t (the units digit given t): [n, 2, 10]
        if any(clean_t[i, last[i]] != answer_ids[y // 10] for i, y in enumerate(chosen)):
            raise ValueError("greater-than: the tens digit after the century is not its own token in this tokenizer")
        t, u, every = yy_t // 10, yy_t % 10, torch.arange(10)[None, :]
        correct = torch.stack([torch.where(every > t, answer_ids[None, :], -1), torch.where(every > u, answer_ids[None, :], -1)], 1)
        incorrect = torch.stack([torch.where(every < t, answer_ids[None, :], -1), torch.where(every <= u, answer_ids[None, :], -1)], 1)
        pos = torch.tensor(last)
        task = Task.from_tokens(
            clean_t, corrupt_t, correct=correct, incorrect=incorrect, answer_pos=torch.stack([pos - 1, pos], 1), metric=metric,
            name="greater-than-digits" + suffix, vocab_size=vocab_size_of(tok),
        )
        return replace(task, positions=positions)
    if digits:  # correct: tens digits > t; incorrect: < t; each row padded with -1 to all 10 digits
        t, every = yy_t // 10, torch.arange(10)[None, :]
        correct = torch.where(every > t, answer_ids[None, :], -1)
        incorrect = torch.where(every < t, answer_ids[None, :], -1)
    else:  # correct: years > YY; incorrect: years <= YY; each row padded with -1 to all 100 years
        all_years = torch.arange(100)[None, :]
        correct = torch.where(all_years > yy_t, answer_ids[None, :], -1)
        incorrect = torch.where(all_years <= yy_t, answer_ids[None, :], -1)
    task = Task.from_tokens(
        clean_t, corrupt_t, correct=correct, incorrect=incorrect, answer_pos=last, metric=metric,
        name=("greater-than-digits" if digits else "greater-than") + suffix, vocab_size=vocab_size_of(tok),
    )
    return replace(task, positions=positions)


def _splits_as_year(tok: Any, century: int, yy: int, digits: bool = False) -> bool:
    """Whether " {century}{yy}" is the tokens " {century}" (one token; with ``digits``, any number) then "{yy}"."""
    head = try_encode(tok, f" {century}")
    return (head is not None and (digits or len(head) == 1)
            and try_encode(tok, f" {century}{yy:02d}") == head + encode(tok, f"{yy:02d}"))
