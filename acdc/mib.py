"""MIB's circuit track (Mueller et al. 2025): its submission layout and its rule for a circuit of a given size.

A submission is one folder per method holding one folder per task and model, named ``{task}_{model}``
(``ioi_gpt2``, ``arc-easy_llama3``), each with either

- one importance file: every edge's score, in EAP-IG's graph JSON (``importances.json``), or
- nine binary circuits, one with at most each of 0.1, 0.2, 0.5, 1, 2, 5, 10, 20 and 50% of the edges
  (``circuit_{fraction}.json``, every edge listed with ``in_graph``).

MIB's evaluation (`MIB_circuit_track.evaluation.evaluate_area_under_curve`) builds the circuit at a fraction
f of the N edges as EAP-IG's ``Graph.apply_topn(int(f * N), absolute, prune=True)``: the floor of f * N
edges by score (by |score| with ``absolute``, the signed score without, which is ``run_evaluation.py``'s
default), then pruned to the edges on some path from ``input`` to ``logits``. `mib_top` is that rule, and
the nine binary circuits are made with it. Scores are acdc's sign: positive where removing the edge lowers
the task metric, as in EAP-IG (where the score is the gradient of the loss, the negated metric, times the
corrupt-minus-clean difference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch

from .circuit import Circuit
from .files import claim
from .scores import Scores

__all__ = ["SUBMISSION_FRACTIONS", "export_mib", "mib_top", "read_mib"]

SUBMISSION_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def mib_top(scores: Scores, fraction: float, *, absolute: bool = True) -> Circuit:
    """MIB's circuit of ``fraction`` of the edges: the best ``floor(fraction * n_edges)`` by |score| (by score
    without ``absolute``; untested NaN scores last), pruned to the edges on a path from input to logits."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}")
    g = scores.graph
    n = int(fraction * g.n_edges)
    key = scores.values.abs() if absolute else scores.values.clone()
    key[torch.isnan(key)] = -math.inf
    mask = torch.zeros(g.n_edges, dtype=torch.bool)
    mask[torch.argsort(-key, stable=True)[:n]] = True
    top = scores.circuit(mask, f"MIB top {n}")
    return scores.circuit(top.live_mask(), f"MIB top {n}, pruned")


def export_mib(folder: str | Path, scores: Mapping[str, Scores], *, method: str, circuits: bool = False,
               absolute: bool = True, overwrite: bool = False) -> list[Path]:
    """Write a MIB submission: ``folder/method/{task}_{model}/`` for each ``"{task}_{model}"`` key of ``scores``,
    with ``importances.json`` (every edge's score) or, with ``circuits``, the nine binary circuits of `mib_top`
    (``absolute`` as there). Returns the files written; an existing file is refused unless ``overwrite``."""
    if not method or "/" in method:
        raise ValueError(f"method names the submission's folder: a non-empty name without '/', got {method!r}")
    written = []
    for key, s in scores.items():
        if key.count("_") != 1 or not all(key.split("_")):
            raise ValueError(f"MIB names a task and model folder '{{task}}_{{model}}' (one underscore, e.g. 'ioi_gpt2'), "
                             f"got {key!r}")
        where = Path(folder) / method / key
        where.mkdir(parents=True, exist_ok=True)
        if not circuits:
            written.append(Scores(s.graph, s.values, dict(s.settings)).to_json(
                claim(where / "importances.json", overwrite), overwrite=True, every_edge=True))
            continue
        for f in SUBMISSION_FRACTIONS:
            c = mib_top(s, f, absolute=absolute)
            written.append(c.to_json(claim(where / f"circuit_{f:g}.json", overwrite), overwrite=True, every_edge=True))
    return written


def read_mib(path: str | Path) -> Scores | Circuit:
    """A file of a MIB submission read back: an importance file as `Scores`, a binary circuit as a `Circuit`."""
    p = Path(path)
    return Scores.from_json(p) if p.name == "importances.json" else Circuit.from_json(p)
