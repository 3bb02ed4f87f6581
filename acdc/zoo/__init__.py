"""The zoo: small transformers with a circuit planted by hand, so ground truth needs no download.

Each entry is an ordinary GPT-2 (Hugging Face ``GPT2LMHeadModel``, wrapped by `acdc.load_model`)
whose weights make a known set of edges carry a task; every other head and MLP is a random
distractor. An entry bundles the model, its task and its true edges:

    >>> import acdc
    >>> entry = acdc.zoo.load("induction")
    >>> circuit = acdc.discover(entry.model, entry.task, threshold=1e-3, progress=False)
    >>> acdc.score(circuit, entry.truth).edges.tpr
    1.0

Entries: ``induction`` (previous-token head -> induction head by K-composition), ``ioi``
(duplicate-token -> S-inhibition -> name mover, ABC corrupt), ``modular-sum`` (two heads move
the operands into an MLP that looks up their sum), ``feature-chain`` (a feature of m0, moved by
a head, drives a feature of m1: a circuit between transcoder features). The truth is what carries the task under the
entry's ablation (resample): inputs that are identical in clean and corrupt prompts (positions,
fixed template words) carry nothing, so their edges are not true edges even when weights read them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..graph import Graph
from ..known import KnownCircuit
from ..tasks import Task
from ..transcoders import FeatureDictionary
from .builder import PlantedGPT2, Residual, WordTokenizer

__all__ = ["ZooEntry", "available", "load", "PlantedGPT2", "Residual", "WordTokenizer"]


@dataclass(frozen=True, eq=False)
class ZooEntry:
    """A planted-circuit model with its task and true edges.

    model:     a TransformerLens bridge (what `acdc.load_model` returns).
    task:      clean/corrupt prompts, answers, default metric.
    truth:     the planted edges and their node classes.
    tokenizer: word-level tokenizer of the toy vocabulary (decode prompts for reading).
    ablation:  the ablation the plant was built for.
    positional_truth: the planted edges at the task's named positions, where the entry has them (ioi).
    transcoders, graph: for a feature-level plant (feature-chain; clt-chain: a cross-layer transcoder), its transcoders and the feature
                      graph its truth is named in (pass ``graph=entry.graph, transcoders=entry.transcoders`` to discover / attribute).
    """

    name: str
    description: str
    model: Any
    task: Task
    truth: KnownCircuit
    tokenizer: WordTokenizer
    ablation: str = "resample"
    positional_truth: KnownCircuit | None = None
    transcoders: FeatureDictionary | None = None
    graph: Graph | None = None

    def __repr__(self) -> str:
        return f"ZooEntry({self.name!r}: {self.truth.n_edges} true edges; {self.task!r})"


def _builders() -> dict[str, Callable[..., ZooEntry]]:
    from . import clt_chain, feature_chain, induction, ioi, modular_sum

    return {"induction": induction.build, "ioi": ioi.build, "modular-sum": modular_sum.build, "feature-chain": feature_chain.build,
            "clt-chain": clt_chain.build}


def available() -> list[str]:
    """Names of the zoo's entries."""
    return sorted(_builders())


def load(name: str, *, n_prompts: int | None = None, seed: int = 0) -> ZooEntry:
    """Build a zoo entry (weights and prompts are deterministic given ``seed``)."""
    builders = _builders()
    if name not in builders:
        raise ValueError(f"unknown zoo entry {name!r}; available: {', '.join(available())}")
    kwargs: dict[str, Any] = {"seed": seed}
    if n_prompts is not None:
        if n_prompts < 1:
            raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
        kwargs["n_prompts"] = n_prompts
    entry = builders[name](**kwargs)
    recipe = {"task": f"zoo:{name}", "n_prompts": entry.task.n_prompts, "seed": seed}  # what remakes these prompts
    return dataclasses.replace(entry, task=dataclasses.replace(entry.task, recipe=recipe))
