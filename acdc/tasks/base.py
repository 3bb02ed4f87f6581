"""A task: paired clean/corrupt prompts, where each is scored, its answers and its metric.

A `Task` is plain data (token-id tensors); every task generator (IOI, greater-than, the zoo's
planted tasks, your own pairs) returns one, and `acdc.discover(model, task, ...)` reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ..inputs import answer_positions, single_token_id, tokenizer_of
from ..metrics import scored_rows
from ..positions import Positions
from .text import named_positions, tokenize_pairs, vocab_size_of

__all__ = ["Task", "pair_batch"]


@dataclass(frozen=True, eq=False)
class Task:
    """Clean and corrupt prompts for circuit discovery, validated on construction.

    clean, corrupt:     [batch, pos] token ids, paired prompt by prompt.
    answer_pos:         [batch] position each prompt is scored at, or [batch, P] several
                        (strictly increasing per prompt; the metric averages over all of them).
    correct, incorrect: [batch] or [batch, k] token ids (k > 1 pads with -1), or None when the
                        metric needs no answers (KL); with P positions, [batch, P] or [batch, P, k].
    metric:             name of the default metric ("kl", "logit_diff", "prob_diff"); if not
                        given, "logit_diff" when the task has answers, else "kl".
    vocab_size:         if given, every token id must be below it.
    notes:              what a generator had to adapt (e.g. how many names are single tokens here).
    template:           [batch] template id of each prompt (IOI), or None; mean ablation per template uses it.
    positions:          the named position of every token (`acdc.Positions`: IO, S1, S2, END, ...),
                        or None; positional graphs (``discover(..., positions="named")``) use it.
    recipe:             how to make these prompts again: the generator and its arguments (``{"task": "ioi",
                        "n_prompts": 20, "seed": 0, "split": "discovery", ...}``; `acdc.tasks.remake`), or None
                        for prompts given by hand. A circuit found on the task records it (``settings["task"]``).
    """

    clean: Tensor
    corrupt: Tensor
    answer_pos: Tensor
    correct: Tensor | None = None
    incorrect: Tensor | None = None
    metric: str | None = None
    name: str = "custom"
    vocab_size: int | None = None
    notes: str = ""
    template: Tensor | None = None
    positions: Positions | None = None
    recipe: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        c, k = self.clean, self.corrupt
        where = f"task {self.name!r}"
        if c.dim() != 2 or c.shape[0] == 0 or c.shape[1] == 0:
            raise ValueError(f"{where}: clean tokens must be a non-empty [batch, pos] tensor, got shape {tuple(c.shape)}")
        if k.shape != c.shape:
            raise ValueError(
                f"{where}: clean {tuple(c.shape)} and corrupt {tuple(k.shape)} differ in shape; "
                "pair each clean prompt with a corrupt prompt of the same length"
            )
        b, s = c.shape
        try:
            pos = answer_positions(self.answer_pos, b, s)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if pos.shape[1] == 1 and torch.as_tensor(self.answer_pos).dim() < 2:
            pos = pos[:, 0]  # one position per prompt: kept as [batch]
        object.__setattr__(self, "answer_pos", pos)
        if self.template is not None and tuple(self.template.shape) != (b,):
            raise ValueError(f"{where}: template needs one id per prompt [{b}], got shape {tuple(self.template.shape)}")
        if self.positions is not None and self.positions.shape != (b, s):
            raise ValueError(f"{where}: positions are for {self.positions.shape[0]} prompts x "
                             f"{self.positions.shape[1]} tokens, the prompts are {b} x {s}")
        if self.metric is None:
            object.__setattr__(self, "metric", "kl" if self.correct is None else "logit_diff")
        if (self.correct is None) != (self.incorrect is None):
            raise ValueError(f"{where}: give both correct and incorrect answers, or neither")
        for label, ans in (("correct", self.correct), ("incorrect", self.incorrect)):
            if ans is None:
                continue
            if ans.dim() not in (1, 2, 3) or ans.shape[0] != b:
                raise ValueError(f"{where}: {label} answers need one row per prompt ({b}), got shape {tuple(ans.shape)}")
            if pos.dim() == 2 and pos.shape[1] > 1:
                try:
                    scored_rows(ans, pos.shape[1], label)
                except ValueError as err:
                    raise ValueError(f"{where}: {err}") from None
        if self.vocab_size is not None:
            for label, t in (("clean", c), ("corrupt", k), ("correct", self.correct), ("incorrect", self.incorrect)):
                if t is None:
                    continue
                real = t[t >= 0] if label in ("correct", "incorrect") else t
                if real.numel() and (int(real.min()) < 0 or int(real.max()) >= self.vocab_size):
                    raise ValueError(f"{where}: {label} token ids must lie in [0, {self.vocab_size - 1}]")

    @classmethod
    def from_tokens(
        cls,
        clean: Any,
        corrupt: Any,
        *,
        correct: Any = None,
        incorrect: Any = None,
        answer_pos: int | Sequence[int] | Tensor | None = None,
        metric: str | None = None,
        name: str = "custom",
        vocab_size: int | None = None,
    ) -> Task:
        """A task from token ids (tensors or nested lists); answer_pos defaults to the last token."""
        c = torch.as_tensor(clean, dtype=torch.long)
        k = torch.as_tensor(corrupt, dtype=torch.long)
        pos = torch.tensor(-1) if answer_pos is None else torch.as_tensor(answer_pos, dtype=torch.long)
        ans = [_answer_tensor(a, label, name) for a, label in ((correct, "correct"), (incorrect, "incorrect"))]
        return cls(c, k, pos, ans[0], ans[1], metric=metric, name=name, vocab_size=vocab_size)

    @classmethod
    def from_pairs(
        cls,
        pairs: Sequence[tuple[str, str, Any, Any]],
        model_or_tokenizer: Any,
        *,
        metric: str | None = None,
        name: str = "custom",
        positions: Mapping[str, Any] | None = None,
    ) -> Task:
        """A task from ``(clean_text, corrupt_text, correct, incorrect)`` tuples.

        Prompts get the tokenizer's BOS and are right-padded; each is scored at its last token.
        Answers are used exactly as written (so write ``" Mary"`` with its leading space for
        GPT-2), each one token; a list of them, or token ids, gives several answers per prompt.

        ``positions`` names roles for positional circuits: name -> a substring of the clean
        prompt (the role is the last token of its first occurrence), a token index (BOS counted;
        -1 is each prompt's last token), or a list with one of those per pair, e.g.
        ``{"S2": [" John gave", ...], "END": -1}``; every other token is "other".
        """
        pairs = list(pairs)
        if not pairs:
            raise ValueError(f"task {name!r}: no pairs given; pass [(clean_text, corrupt_text, correct, incorrect), ...]")
        for i, p in enumerate(pairs):
            if not isinstance(p, (tuple, list)) or len(p) != 4:
                raise ValueError(f"task {name!r}: pair {i} must be (clean_text, corrupt_text, correct, incorrect)")
        tok = tokenizer_of(model_or_tokenizer)
        clean, corrupt, last = tokenize_pairs(tok, [p[0] for p in pairs], [p[1] for p in pairs], f"task {name!r}")

        def ids(x: Any, label: str) -> list[int]:
            items = list(x) if isinstance(x, (list, tuple)) else [x]
            if not items:
                raise ValueError(f"task {name!r}: {label} answer list is empty")
            return [int(a) if isinstance(a, int) else single_token_id(tok, str(a), f"task {name!r} {label}") for a in items]

        answers = []
        for col, label in ((2, "correct"), (3, "incorrect")):
            rows = [ids(p[col], f"prompt {i} {label}") for i, p in enumerate(pairs)]
            width = max(len(r) for r in rows)
            t = torch.full((len(rows), width), -1, dtype=torch.long)
            for i, r in enumerate(rows):
                t[i, : len(r)] = torch.tensor(r)
            answers.append(t[:, 0] if width == 1 else t)
        task = cls.from_tokens(
            clean, corrupt, correct=answers[0], incorrect=answers[1], answer_pos=last, metric=metric, name=name,
            vocab_size=vocab_size_of(tok),
        )
        if positions is None:
            return task
        pos = named_positions(tok, [p[0] for p in pairs], clean, last, positions, f"task {name!r}")
        return replace(task, positions=pos)

    @property
    def answers(self) -> tuple[Tensor, Tensor] | None:
        """``(correct, incorrect)`` or None."""
        return None if self.correct is None else (self.correct, self.incorrect)  # type: ignore[return-value]

    @property
    def n_prompts(self) -> int:
        return int(self.clean.shape[0])

    def fingerprint(self) -> str:
        """12 hex digits that tell these prompts apart (a SHA-256 of the clean and corrupt token ids)."""
        import hashlib

        h = hashlib.sha256()
        for t in (self.clean, self.corrupt):
            h.update(repr(tuple(t.shape)).encode())
            h.update(t.to("cpu", torch.long).contiguous().numpy().tobytes())
        return h.hexdigest()[:12]

    def record(self) -> dict[str, Any]:
        """What a circuit found on this task keeps of it: its name, prompt count and fingerprint, and its
        `recipe` (the generator and arguments that make the same prompts again) where it has one."""
        return {**(self.recipe or {}), "name": self.name, "n_prompts": self.n_prompts, "prompts": self.fingerprint()}

    def __repr__(self) -> str:
        return f"Task({self.name!r}, {self.n_prompts} prompts x {self.clean.shape[1]} tokens, metric={self.metric!r})"


def _answer_tensor(x: Any, label: str, name: str) -> Tensor | None:
    """Answer token ids as a tensor; a one-line error for text (which needs a tokenizer)."""
    if x is None:
        return None
    if isinstance(x, str) or (isinstance(x, Sequence) and any(isinstance(a, str) for a in x)):
        raise ValueError(
            f"task {name!r}: {label} answers must be token ids, got text; use Task.from_pairs(pairs, tokenizer) "
            "for text answers"
        )
    try:
        return torch.as_tensor(x, dtype=torch.long)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"task {name!r}: {label} answers must be integer token ids ({err})") from None


THREE_WAY = ("discovery", "validation", "test")


def split_index(split: str) -> int | None:
    """Which third of a generator's word lists a split draws from (0, 1, 2 for "discovery", "validation", "test"),
    or None for "all"; a one-line error for any other name."""
    if split == "all":
        return None
    if split not in THREE_WAY:
        raise ValueError(f"split must be 'all', 'discovery', 'validation' or 'test', got {split!r}")
    return THREE_WAY.index(split)


def pair_batch(
    tok: Any,
    clean: Sequence[str],
    corrupt: Sequence[str],
    correct: Sequence[str],
    incorrect: Sequence[str],
    *,
    metric: str,
    name: str,
) -> Task:
    """Tokenize paired prompts (BOS prepended), right-pad, and score each at its last token.

    Answers are words, tokenized with a leading space; each must be one token.
    """
    clean_t, corrupt_t, last = tokenize_pairs(tok, clean, corrupt, name)
    answers = [
        [single_token_id(tok, " " + w, f"{name} {label}") for w in words]
        for label, words in (("correct", correct), ("incorrect", incorrect))
    ]
    return Task.from_tokens(
        clean_t, corrupt_t, correct=answers[0], incorrect=answers[1], answer_pos=last, metric=metric,
        name=name, vocab_size=vocab_size_of(tok),
    )


def describe_record(rec: dict[str, Any]) -> str:
    """A task record (`Task.record`) in words: "20 prompts of ioi (seed 0, split discovery)"."""
    extras = [f"{k} {rec[k]}" for k in ("seed", "split", "corrupt", "order") if k in rec]
    name = rec.get("task") or rec.get("name", "a task")
    return f"{rec.get('n_prompts', '?')} prompts of {name}" + (f" ({', '.join(extras)})" if extras else "")


def scoring_note(task: Task, found: Any) -> str:
    """Which prompts a circuit is scored on (``task``), and whether they are those it was found on (``found``: the
    circuit's ``settings["task"]``, `Task.record`, or None)."""
    now = task.record()
    text = f"scoring {describe_record(now)}"
    if not isinstance(found, dict):
        return text + " (the circuit's file does not say which prompts it was found on)"
    if found.get("prompts") == now["prompts"]:
        return text + ": the prompts the circuit was found on"
    return text + f"; the circuit was found on {describe_record(found)}"


def recorded(generator: str) -> Any:
    """Decorate a task generator ``f(model_or_tokenizer, n_prompts, *, seed, ...)`` so that its tasks carry their
    `Task.recipe`: the generator's name and every argument but the model that is a plain JSON value (a
    tensor or other object among them makes the recipe not remakeable: ``"remakeable": False``)."""
    import functools
    import inspect
    import json

    def wrap(fn: Any) -> Any:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def made(*args: Any, **kwargs: Any) -> Task:
            task = fn(*args, **kwargs)
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            recipe: dict[str, Any] = {"task": generator}
            for k, v in list(bound.arguments.items())[1:]:
                v = list(v) if isinstance(v, tuple) else v
                try:
                    json.dumps(v)
                except TypeError:
                    if v is not None and v is not sig.parameters[k].default:
                        recipe["remakeable"] = False
                    continue
                if v != (list(sig.parameters[k].default) if isinstance(sig.parameters[k].default, tuple)
                         else sig.parameters[k].default) or k in ("n_prompts", "seed"):
                    recipe[k] = v
            return replace(task, recipe=recipe)
        return made
    return wrap

