"""Circuit discovery algorithms: one contract, one registry.

Every algorithm is a function ``(patcher, metric, batch, *, progress=False, **options) -> Scores``
that reads the task through the patching engine (`acdc.Patcher`, the `Metric` oriented
lower-is-better, the `Batch` it scores) and returns one score per edge. A method that decides
which edges to keep (ACDC) also fills ``Scores.selected``; ``scores.selection()`` is then its
circuit, and for the others ``scores.top(n)``, ``.threshold(t)`` or ``.greedy(n)`` choose one.
A new method is one file here and one entry in `ALGORITHMS` (Edge Pruning was: `edge_pruning.py`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

from ..scores import Scores
from .acdc import ACDCOptions, run_acdc
from .eap import eap, eap_ig_activations, eap_ig_inputs
from .edge_pruning import EdgePruningOptions, edge_pruning

__all__ = ["ALGORITHMS", "SEEDED", "Algorithm", "check_algorithm_options", "get_algorithm"]

# ``(patcher: Patcher, metric: Metric, batch: Batch, *, progress: bool = False, **options) -> Scores``;
# each method takes its own keyword options (ACDC: threshold, ...; EAP-IG: steps).
Algorithm = Callable[..., Scores]


ALGORITHMS: dict[str, Algorithm] = {
    "acdc": run_acdc,
    "eap": eap,
    "eap-ig-inputs": eap_ig_inputs,
    "eap-ig-activations": eap_ig_activations,
    "edge-pruning": edge_pruning,
}

# The algorithms whose result depends on a random seed (they take ``seed=``): a comparison over seeds
# passes each row's seed to these, and only varies the prompts for the others.
SEEDED: frozenset[str] = frozenset({"edge-pruning"})


def get_algorithm(name: str) -> Algorithm:
    """The algorithm registered as ``name``; a one-line ValueError listing the choices otherwise."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(ALGORITHMS)}") from None


# The options dataclasses of the algorithms that take their options as ``**options`` (they check the values too).
_OPTIONS: dict[str, type] = {"acdc": ACDCOptions, "edge-pruning": EdgePruningOptions}


def check_algorithm_options(name: str, options: Mapping[str, object]) -> None:
    """A one-line ValueError when ``options`` are not what algorithm ``name`` takes (unknown keys, bad values,
    a required one missing), before anything runs."""
    algorithm = get_algorithm(name)
    try:
        if name in _OPTIONS:
            _OPTIONS[name](**options)
        else:
            inspect.signature(algorithm).bind(None, None, None, **options)
    except TypeError as err:
        params = [p for p in inspect.signature(_OPTIONS[name]).parameters] if name in _OPTIONS else [
            p.name for p in inspect.signature(algorithm).parameters.values() if p.kind == p.KEYWORD_ONLY and p.name != "progress"]
        raise ValueError(f"{name}: options {dict(options)} do not fit ({err}); its options are {', '.join(params) or 'none'}") from None
