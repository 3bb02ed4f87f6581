"""Named token positions: which role each token of each prompt plays (IO, S1, S2, END, other...).

A positional graph has one edge per (source, destination, position): the edge ``u -> v @ p``
carries u's output into v's input at the tokens of position ``p`` (the same residual position;
attention moves information between positions inside a head). Positions are either token
indices (every prompt the same length: `Positions.tokens`) or named roles a task marks in each
prompt (`Positions.named`), so prompts of different lengths align by role, not by index.

Every token of every prompt (padding included) belongs to exactly one position; the tokens no
role claims belong to ``"other"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Positions", "REST", "check_names", "token_names"]

REST = "other"  # the position of every token no named role claims


def token_names(n: int) -> tuple[str, ...]:
    """Names of token-index positions: "0", "1", ..., str(n - 1)."""
    return tuple(str(i) for i in range(n))


def check_names(names: Sequence[str]) -> tuple[str, ...]:
    """Position names as a tuple: at least one, distinct, non-empty, no '@' or spaces (they end edge names)."""
    out = tuple(str(n) for n in names)
    if not out:
        raise ValueError("positions need at least one name")
    if len(set(out)) != len(out):
        raise ValueError(f"position names must be distinct, got {list(out)}")
    bad = [n for n in out if not n or "@" in n or any(c.isspace() for c in n)]
    if bad:
        raise ValueError(f"position names must be non-empty without '@' or spaces (they end edge names), got {bad}")
    return out


@dataclass(frozen=True, eq=False)
class Positions:
    """Which named position each token of each prompt belongs to.

    names:   the positions, in display order (left to right in the grid rendering).
    index:   [batch, pos] long in [0, len(names)): the position of each token.
    example: optional text of each position in one example prompt (labels for the rendering),
             e.g. (" Mary", " John", " went", " John", " to", "...").
    """

    names: tuple[str, ...]
    index: Tensor
    example: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        names = check_names(self.names)
        object.__setattr__(self, "names", names)
        idx = torch.as_tensor(self.index, dtype=torch.long).cpu()
        if idx.dim() != 2 or idx.numel() == 0:
            raise ValueError(f"position index must be a non-empty [batch, pos] tensor, got shape {tuple(idx.shape)}")
        if int(idx.min()) < 0 or int(idx.max()) >= len(names):
            raise ValueError(f"position index values must lie in [0, {len(names)}), one per name in {list(names)}")
        object.__setattr__(self, "index", idx)
        if self.example is not None:
            ex = tuple(str(x) for x in self.example)
            if len(ex) != len(names):
                raise ValueError(f"example needs one label per position ({len(names)}), got {len(ex)}")
            object.__setattr__(self, "example", ex)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def single(cls, batch: int, pos: int, name: str = "all") -> Positions:
        """One position covering every token: the positional graph then equals the plain one."""
        return cls((name,), torch.zeros(batch, pos, dtype=torch.long))

    @classmethod
    def tokens(cls, batch: int, pos: int) -> Positions:
        """One position per token index, named "0", "1", ... (prompts must align by index)."""
        return cls(token_names(pos), torch.arange(pos).expand(batch, pos).clone())

    @classmethod
    def named(
        cls,
        marks: Mapping[str, Sequence[int] | Tensor],
        batch: int,
        pos: int,
        *,
        rest: str | None = REST,
        example: Sequence[str] | None = None,
    ) -> Positions:
        """Positions from marks: name -> the token index of that role in each prompt ([batch]).

        Tokens no mark claims belong to ``rest`` ("other"); ``rest=None`` requires every token
        to be marked. Two roles on one token are refused (say which prompt).
        """
        names = list(marks)
        if rest is not None and rest in names:
            raise ValueError(f"{rest!r} is the name of the unmarked tokens; mark your roles with other names")
        full = [*names, rest] if rest is not None else names
        index = torch.full((batch, pos), -1, dtype=torch.long)
        for k, name in enumerate(names):
            at = torch.as_tensor(marks[name], dtype=torch.long).reshape(-1)
            if at.shape != (batch,):
                raise ValueError(f"position {name!r} needs one token index per prompt ({batch}), got {tuple(at.shape)}")
            if int(at.min()) < 0 or int(at.max()) >= pos:
                raise ValueError(f"position {name!r}: token indices must lie in [0, {pos}), got {at.min()}..{at.max()}")
            rows = torch.arange(batch)
            clash = index[rows, at] >= 0
            if bool(clash.any()):
                i = int(clash.nonzero()[0])
                other = full[int(index[i, at[i]])]
                raise ValueError(f"prompt {i}: token {int(at[i])} is both {other!r} and {name!r}; mark distinct tokens")
            index[rows, at] = k
        if rest is not None:
            index[index < 0] = len(names)
        elif bool((index < 0).any()):
            i, t = (int(x) for x in (index < 0).nonzero()[0])
            raise ValueError(f"prompt {i}: token {t} has no position; mark it or pass rest='other'")
        return cls(tuple(full), index, None if example is None else tuple(example))

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.names)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.index.shape[0]), int(self.index.shape[1]))

    def name_index(self, name: str) -> int:
        """Index of position ``name``; a one-line error listing the names otherwise."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"no position {name!r}; positions are {', '.join(self.names)}") from None

    def mask(self, name: str) -> Tensor:
        """[batch, pos] bool: the tokens of position ``name``."""
        return self.index == self.name_index(name)

    def first_index(self, name: str) -> Tensor:
        """[batch] the first token index of ``name`` in each prompt (-1 where the prompt has none)."""
        m = self.mask(name)
        first = m.to(torch.int8).argmax(1)
        return torch.where(m.any(1), first, torch.full_like(first, -1))

    def __repr__(self) -> str:
        b, s = self.shape
        return f"Positions({', '.join(self.names)}; {b} prompts x {s} tokens)"
