"""Circuits against ground truth: confusion counts, ROC curves and their AUCs. Pure functions, no runs.

Levels:
- ``"edge"``: every edge of the graph is a positive (in the truth) or a negative.
- ``"node"``: heads and MLPs (``input`` and ``logits`` are in every non-empty circuit, so they
  are left out); a node is in a circuit when one of its edges is.

AUCs (both over the ROC's points plus (0, 0) and (1, 1), sorted by FPR, with TPR made monotone
by taking the best TPR reached at or below each FPR):
- `ROC.auc`: the trapezoid rule, linear between points. For a ranking of scores this is the
  standard ROC AUC (as ``sklearn.metrics.roc_auc_score``).
- `ROC.auc_pessimistic`: the ACDC paper's (Conmy et al. 2023) staircase: between two points the
  TPR stays at the left point's value, i.e. only measured circuits count, never interpolation.
  It is never above `ROC.auc`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from .circuit import Circuit
from .graph import Graph
from .known import KnownCircuit
from .plots import figure_or_axes, save
from .scores import Scores

__all__ = ["Confusion", "Recovery", "ROC", "as_mask", "node_mask", "node_universe", "recovery", "threshold_grid"]

Level = Literal["edge", "node"]
CircuitLike = Circuit | KnownCircuit | Tensor | Iterable[str]


@dataclass(frozen=True)
class Confusion:
    """Counts of a found set against a true set; ratios are NaN where undefined (0 / 0)."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def tpr(self) -> float:
        """True-positive rate (recall): found true / all true."""
        return _ratio(self.tp, self.tp + self.fn)

    recall = tpr

    @property
    def fpr(self) -> float:
        """False-positive rate: found false / all false."""
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def precision(self) -> float:
        """Found true / all found."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def exact(self) -> bool:
        """Found exactly the true set."""
        return self.fp == 0 and self.fn == 0

    def as_dict(self) -> dict[str, Any]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
                "tpr": self.tpr, "fpr": self.fpr, "precision": self.precision}


@dataclass(frozen=True)
class Recovery:
    """How well a circuit recovers a true one, at edge and node level."""

    edges: Confusion
    nodes: Confusion

    def __str__(self) -> str:
        e, n = self.edges, self.nodes
        return (
            f"edges: TPR {e.tpr:.3f} FPR {e.fpr:.4f} precision {e.precision:.3f} "
            f"(TP {e.tp}, FP {e.fp}, FN {e.fn}); nodes: TPR {n.tpr:.3f} FPR {n.fpr:.4f} (TP {n.tp}, FP {n.fp}, FN {n.fn})"
        )


def recovery(circuit: CircuitLike, truth: CircuitLike, *, graph: Graph | None = None) -> Recovery:
    """Edge- and node-level TP/FP/FN/TN of ``circuit`` against ``truth``.

    Either may be a `Circuit`, a `KnownCircuit`, an edge mask [n_edges] or edge names. The graph
    comes from the first `Circuit` or `KnownCircuit` given (or pass ``graph``). A positional circuit
    scored against a known circuit without positions counts an edge as found when it is kept at
    any position.
    """
    g = _graph_of(graph, circuit, truth)
    if isinstance(truth, KnownCircuit) and g.positions is not None and truth.graph().positions is None:
        # a positional circuit against a truth without positions: an edge is found if kept at any position
        found = as_mask(circuit, g).view(-1, g.n_positions).any(1)
        g = g.plain
        true = as_mask(truth, g)
    else:
        found, true = as_mask(circuit, g), as_mask(truth, g)
    return Recovery(_confusion(found, true), _confusion(node_mask(g, found), node_mask(g, true)))


def node_mask(graph: Graph, edge_mask: Tensor) -> Tensor:
    """[n_nodes] bool over `node_universe` (heads and MLPs): nodes touched by a kept edge."""
    src, dst = _node_of_edges(graph)
    used = torch.zeros(len(node_universe(graph)) + 1, dtype=torch.bool)  # last slot: input/logits
    m = edge_mask.to(torch.bool)
    used[src[m]] = True
    used[dst[m]] = True
    return used[:-1]


def node_universe(graph: Graph) -> list[str]:
    """Names of the heads and MLPs of ``graph``, in forward order (the node-level universe)."""
    return [n.name for n in graph.components()]


@dataclass(frozen=True, eq=False)
class ROC:
    """Points of a ROC curve against a truth, and the circuits that made them (for sweeps).

    fpr, tpr: one entry per point, in the order measured.
    params:   what made each point: the ACDC threshold, or the score cut of a ranking.
    """

    level: Level
    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    params: tuple[float, ...]
    n_positive: int
    n_negative: int
    circuits: tuple[Circuit, ...] = ()
    seconds: float = math.nan
    truth: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_circuits(
        cls, circuits: Sequence[CircuitLike], truth: CircuitLike, *, level: Level = "edge",
        params: Sequence[float] | None = None, graph: Graph | None = None, seconds: float = math.nan,
    ) -> ROC:
        """One point per circuit (e.g. an ACDC threshold sweep); ``params`` default to thresholds."""
        check_level(level)
        if not circuits:
            raise ValueError("a ROC needs at least one circuit")
        g = _graph_of(graph, *circuits, truth)
        found = torch.stack([as_mask(c, g) for c in circuits])
        true = as_mask(truth, g)
        if level == "node":
            found = torch.stack([node_mask(g, f) for f in found])
            true = node_mask(g, true)
        tp = (found & true).sum(1)
        fp = (found & ~true).sum(1)
        p, n = int(true.sum()), int((~true).sum())
        if params is None:
            params = [float(c.settings.get("threshold", math.nan)) if isinstance(c, Circuit) else math.nan for c in circuits]
        return cls(
            level, tuple((fp / max(n, 1)).tolist()), tuple((tp / max(p, 1)).tolist()), tuple(float(x) for x in params),
            p, n, tuple(c for c in circuits if isinstance(c, Circuit)), seconds, truth,
        )

    @classmethod
    def from_scores(
        cls, scores: Scores | Circuit | Tensor, truth: CircuitLike, *, level: Level = "edge",
        graph: Graph | None = None, absolute: bool = True,
    ) -> ROC:
        """Rank edges by score (by |score| unless ``absolute=False``; NaN never enters) and sweep the cut.

        ``scores``: `Scores` (from `acdc.attribute`), a `Circuit`'s scores, or a tensor [n_edges].

        At node level a node's score is the best score of its edges, so the node curve is the
        one traced by the same edge cuts.
        """
        check_level(level)
        if isinstance(scores, (Scores, Circuit)):
            g = scores.graph
            s = scores.values if isinstance(scores, Scores) else scores.scores
        else:
            g = _graph_of(graph, truth)
            s = torch.as_tensor(scores, dtype=torch.float64)
            if s.shape != (g.n_edges,):
                raise ValueError(f"scores need one entry per edge ({g.n_edges}), got shape {tuple(s.shape)}")
        s = s.abs() if absolute else s.clone()
        s = torch.where(s.isnan(), torch.full_like(s, -math.inf), s)
        true = as_mask(truth, g)
        if level == "node":
            src, dst = _node_of_edges(g)
            n_nodes = len(node_universe(g))
            node_s = torch.full((n_nodes + 1,), -math.inf, dtype=torch.float64)
            node_s.scatter_reduce_(0, src, s, reduce="amax")
            node_s.scatter_reduce_(0, dst, s, reduce="amax")
            s, true = node_s[:-1], node_mask(g, true)
        order = torch.argsort(s, descending=True, stable=True)
        s_sorted, t_sorted = s[order], true[order]
        keep = torch.isfinite(s_sorted)
        s_sorted, t_sorted = s_sorted[keep], t_sorted[keep]
        tp, fp = torch.cumsum(t_sorted, 0), torch.cumsum(~t_sorted, 0)
        last = torch.ones_like(s_sorted, dtype=torch.bool)  # last index of each run of tied scores
        last[:-1] = s_sorted[1:] != s_sorted[:-1]
        p, n = int(true.sum()), int((~true).sum())
        return cls(
            level, tuple((fp[last] / max(n, 1)).tolist()), tuple((tp[last] / max(p, 1)).tolist()),
            tuple(s_sorted[last].tolist()), p, n, (), math.nan, truth,
        )

    # ------------------------------------------------------------------ summaries
    def curve(self) -> tuple[list[float], list[float]]:
        """(fpr, tpr) of the curve the AUCs integrate: sorted, with (0,0) and (1,1), TPR monotone."""
        pts = sorted(zip(self.fpr, self.tpr))
        xs, ys = [0.0] + [x for x, _ in pts] + [1.0], [0.0] + [y for _, y in pts] + [1.0]
        best = 0.0
        for i, y in enumerate(ys):
            best = max(best, y)
            ys[i] = best
        return xs, ys

    @property
    def auc(self) -> float:
        """Trapezoid-rule area under the curve (standard ROC AUC for score rankings)."""
        xs, ys = self.curve()
        return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))

    @property
    def auc_pessimistic(self) -> float:
        """The ACDC paper's staircase area: TPR held at the left point until the next FPR."""
        xs, ys = self.curve()
        return sum((x1 - x0) * y0 for x0, x1, y0 in zip(xs, xs[1:], ys))

    def best(self) -> int:
        """Index of the point with the largest TPR - FPR (ties: the smallest FPR)."""
        if not self.fpr:
            raise ValueError("empty ROC")
        return max(range(len(self.fpr)), key=lambda i: (self.tpr[i] - self.fpr[i], -self.fpr[i]))

    def exact(self) -> list[int]:
        """Indices of the points that are exactly the truth (TPR 1, FPR 0)."""
        return [i for i, (f, t) in enumerate(zip(self.fpr, self.tpr)) if f == 0 and t == 1]

    def at_level(self, level: Level) -> ROC:
        """The same sweep scored at another level (needs the stored circuits)."""
        if level == self.level:
            return self
        if not self.circuits:
            raise ValueError("this ROC keeps no circuits; rebuild it with from_scores(..., level=...)")
        return ROC.from_circuits(self.circuits, self.truth, level=level, params=self.params, seconds=self.seconds)

    def plot(self, path: str | Path | None = None, *, ax: Any = None, label: str | None = None) -> Any:
        """The curve the AUC integrates (`curve`), its measured points marked, the diagonal dotted.

        ``plot(path)`` writes the figure and returns the path; ``plot(ax=ax)`` draws into your axes
        (e.g. ACDC and EAP-IG on one plot) and returns them. The legend gives the AUC.
        """
        plt, fig, ax, out = figure_or_axes(path, ax, (4.0, 4.0))
        xs, ys = self.curve()
        text = f"AUC {self.auc:.3f}"
        line = ax.plot(xs, ys, label=f"{label} ({text})" if label else text)[0]
        ax.scatter(self.fpr, self.tpr, s=12, color=line.get_color(), zorder=3)
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"false-positive rate ({self.level}s)")
        ax.set_ylabel("true-positive rate")
        ax.legend(loc="lower right", fontsize="small")
        return ax if fig is None else save(plt, fig, out)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level, "auc": self.auc, "auc_pessimistic": self.auc_pessimistic,
            "n_positive": self.n_positive, "n_negative": self.n_negative,
            "points": [{"param": p, "fpr": f, "tpr": t} for p, f, t in zip(self.params, self.fpr, self.tpr)],
            "seconds": None if math.isnan(self.seconds) else self.seconds,
        }

    def __repr__(self) -> str:
        return f"ROC({self.level}: {len(self.fpr)} points, AUC {self.auc:.4f}, pessimistic AUC {self.auc_pessimistic:.4f})"


def threshold_grid(scale: float, n: int = 22, decades: float = 6.0) -> list[float]:
    """Log-spaced ACDC thresholds from ``scale * 10**-decades`` to ``2 * scale``."""
    if not scale > 0:
        raise ValueError(f"threshold scale must be > 0, got {scale}")
    hi = math.log10(2 * scale)
    lo = math.log10(scale) - decades
    return [10 ** (lo + (hi - lo) * i / (n - 1)) for i in range(n)]


# ---------------------------------------------------------------------- helpers
def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def check_level(level: str) -> None:
    if level not in ("edge", "node"):
        raise ValueError(f"level must be 'edge' or 'node', got {level!r}")


def _graph_of(graph: Graph | None, *items: Any) -> Graph:
    if graph is not None:
        return graph
    for x in items:
        if isinstance(x, Circuit):
            return x.graph
    for x in items:
        if isinstance(x, KnownCircuit):
            return x.graph()
    raise ValueError("cannot tell the graph from edge masks or names alone; pass graph=")


def as_mask(x: CircuitLike, g: Graph) -> Tensor:
    """[n_edges] bool over ``g`` of a `Circuit`, `KnownCircuit`, edge mask or edge names."""
    if isinstance(x, Circuit):
        g.check_fits(x.graph, "this circuit")
        return x.in_graph
    if isinstance(x, KnownCircuit):
        return x.mask(g)
    if isinstance(x, str):
        raise ValueError("pass edge names as a list, not a single string")
    return g.edge_mask(x if isinstance(x, Tensor) else list(x))


def _node_of_edges(g: Graph) -> tuple[Tensor, Tensor]:
    """Node-universe index of each edge's source and destination node (input/logits -> last slot)."""
    is_node = torch.tensor([n.kind.component for n in g.sources])
    of_source = torch.full((len(g.sources) + 1,), int(is_node.sum()), dtype=torch.long)  # slot -1: logits
    of_source[:-1][is_node] = torch.arange(int(is_node.sum()))
    return of_source[g.edge_src], of_source[g.dst_node_src[g.edge_dst]]


def _confusion(found: Tensor, true: Tensor) -> Confusion:
    found, true = found.to(torch.bool), true.to(torch.bool)
    return Confusion(
        int((found & true).sum()), int((found & ~true).sum()), int((~found & true).sum()), int((~found & ~true).sum())
    )
