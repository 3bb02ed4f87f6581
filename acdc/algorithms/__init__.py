"""Circuit discovery algorithms: one contract, one registry.

Every algorithm is a function ``(patcher, metric, batch, *, progress=False, **options) -> Scores``
that reads the task through the patching engine (`acdc.Patcher`, the `Metric` oriented
lower-is-better, the `Batch` it scores) and returns one score per edge. A method that decides
which edges to keep (ACDC) also fills ``Scores.selected``; ``scores.selection()`` is then its
circuit, and for the others ``scores.top(n)``, ``.threshold(t)`` or ``.greedy(n)`` choose one.
A new method is one file here and one entry in `ALGORITHMS` (Edge Pruning was: `edge_pruning.py`).
"""

from __future__ import annotations

from collections.abc import Callable

from ..scores import Scores
from .acdc import run_acdc
from .attribution import eap, eap_ig_activations, eap_ig_inputs
from .edge_pruning import edge_pruning

__all__ = ["ALGORITHMS", "Algorithm", "get_algorithm"]

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


def get_algorithm(name: str) -> Algorithm:
    """The algorithm registered as ``name``; a one-line ValueError listing the choices otherwise."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(ALGORITHMS)}") from None
