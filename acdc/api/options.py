"""Every entry point's keywords, in one style: flat keywords, each group declared once.

A group of options is declared once, as a dataclass whose fields carry their defaults, help text
and checks: `acdc.algorithms.acdc.ACDCOptions`, `acdc.algorithms.eap.AttributionOptions`,
`acdc.algorithms.edge_pruning.EdgePruningOptions`, `acdc.api.faithfulness.FaithfulnessSetting`,
`acdc.executors.SweepOptions`; what to run on is `prepare`'s keywords (`Inputs`). An entry point takes
its groups' fields as flat keywords (``acdc.prune_edges(model, task, target=0.05, lr=0.3)``), sorts them
with `take` (a keyword no group has is one clear error naming the entry point), and builds each group's
dataclass, which checks the values before any model runs. The CLI makes its flags from the same fields
(`acdc.cli.common.option_flags`).

The TypedDicts below only tell type checkers the keywords (``**options: Unpack[...]``); a test keeps each
equal to its groups' fields.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from torch import Tensor

from ..executors import ExecutorLike
from ..graph import Graph
from ..inputs import Answers
from ..metrics import MetricLike
from ..positions import Positions
from ..transcoders import FeatureDictionary

__all__ = ["AttributeOptions", "DiscoverOptions", "FaithfulnessOptions", "Inputs", "PruneOptions", "ROCOptions",
           "SweepInputs", "names_of", "take"]

# where a keyword that an entry point does not take belongs (the usual mix-ups)
ELSEWHERE = {
    "method": "attribution methods run with acdc.attribute(..., method=...)",
    "threshold": "ACDC's threshold is acdc.discover's (acdc.roc sweeps thresholds)",
    "target": "Edge Pruning's target is acdc.prune_edges's",
    "edge_pruning": "pass Edge Pruning's options as keywords: acdc.prune_edges(..., lr=0.3)",
}


def names_of(group: type | Sequence[str], but: Sequence[str] = ()) -> tuple[str, ...]:
    """The keyword names of an options group: a dataclass's fields, a TypedDict's keys, or names given."""
    if isinstance(group, type) and dataclasses.is_dataclass(group):
        got = tuple(f.name for f in dataclasses.fields(group))
    elif isinstance(group, type):
        got = tuple(group.__annotations__)  # a TypedDict's keys, its bases' included
    else:
        got = tuple(group)
    return tuple(n for n in got if n not in but)


def take(entry: str, given: Mapping[str, Any], *groups: tuple[str, ...]) -> list[dict[str, Any]]:
    """Sort keywords ``given`` into one dict per group (each group's names, `names_of`), in order. A keyword
    no group has raises a TypeError that names ``entry``, where the keyword belongs or the closest option,
    and every option ``entry`` takes."""
    rest = dict(given)
    out = [{k: rest.pop(k) for k in list(rest) if k in names} for names in groups]
    if rest:
        allowed = sorted({n for names in groups for n in names})
        bad = next(iter(rest))
        close = difflib.get_close_matches(bad, allowed, n=1)
        hint = f" ({ELSEWHERE[bad]})." if bad in ELSEWHERE else f"; did you mean {close[0]!r}?" if close else "."
        raise TypeError(f"{entry}() has no option {bad!r}{hint} Its options: {', '.join(allowed)}")
    return out


class Inputs(TypedDict, total=False):
    """What to run on: `prepare`'s keywords, taken by every entry point that runs a task."""

    metric: MetricLike | None
    ablation: str
    answers: Answers | None
    answer_pos: int | Sequence[int] | Tensor | None
    split_qkv: bool
    graph: Graph | None
    transcoders: FeatureDictionary | None
    mean_weights: Tensor | None
    positions: str | Positions | None


class DiscoverOptions(Inputs, total=False):
    """`discover`'s keywords: what to run on and `ACDCOptions`' fields (threshold is `discover`'s own)."""

    abs_value: bool
    speculate: int | None
    prefilter: float | None
    prefilter_method: str
    checkpoint: str | Path | None
    checkpoint_every: float
    faithful_within: float | None


class AttributeOptions(Inputs, total=False):
    """`attribute`'s keywords: what to run on and `AttributionOptions`' fields."""

    method: str
    steps: int
    grid: str
    gim: bool


class PruneOptions(Inputs, total=False):
    """`prune_edges`'s keywords: what to run on and `EdgePruningOptions`' fields."""

    target: float
    steps: int
    lr: float
    lagrangian_lr: float
    warmup: float
    loss: str
    init: float
    seed: int


class SweepInputs(Inputs, total=False):
    """What to run on and where a sweep runs (`SweepOptions`' fields): `compare`'s, `faithfulness_grid`'s keywords."""

    executor: ExecutorLike
    results: str | Path | None
    workers: int | None
    threads: int | None


class ROCOptions(SweepInputs, total=False):
    """`roc`'s keywords: a sweep's, and the `ACDCOptions` every threshold shares."""

    abs_value: bool
    speculate: int | None
    prefilter: float | None
    prefilter_method: str
    faithful_within: float | None


class FaithfulnessOptions(Inputs, total=False):
    """`faithfulness`'s keywords: what to run on and `FaithfulnessSetting`'s fields (its metric and ablation
    are the run's)."""

    level: str
    direction: str
    average: str
    mean_over: str | int
    at: str
