"""Per-edge scores: what every discovery algorithm returns, and the ways to turn them into a `Circuit`.

`Scores.values[i]` belongs to ``graph.edges[i]`` (same names and order as the graph). A method
that decides which edges to keep (ACDC) also sets ``selected``, and `selection()` is that
circuit. Otherwise choose one: the selections rank edges by the absolute score, `top(n)` takes
the n largest anywhere, `threshold(t)` takes every edge with ``|score| >= t``, and `greedy(n)`
grows a connected circuit from the logits (EAP-IG's greedy selection: repeatedly add the best
edge into a node already in the circuit).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .circuit import Circuit, graph_json, read_graph_json, read_json, same_values, write_json
from .files import claim
from .graph import Graph

__all__ = ["Scores"]


@dataclass(eq=False)
class Scores:
    """Attribution scores, one per edge.

    graph:    the model's graph.
    values:   [n_edges] float64; the (measured or predicted) change of the loss, i.e. the metric
              oriented lower-is-better, when the edge is ablated: positive means removing the
              edge hurts. NaN where a method did not test an edge.
    settings: how they were computed (method, steps, metric, ablation, seconds).
    selected: [n_edges] bool, the edges the method itself chose to keep (ACDC), or None.
    trace:    the metric after each step of a method that prunes step by step (ACDC).
    """

    graph: Graph
    values: Tensor
    settings: dict[str, Any] = field(default_factory=dict)
    selected: Tensor | None = None
    trace: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.values = torch.as_tensor(self.values, dtype=torch.float64).cpu()
        if self.values.shape != (self.graph.n_edges,):
            raise ValueError(f"values need one entry per edge ({self.graph.n_edges}), got shape {tuple(self.values.shape)}")
        if self.selected is not None:
            self.selected = torch.as_tensor(self.selected, dtype=torch.bool).cpu()
            if self.selected.shape != (self.graph.n_edges,):
                raise ValueError(f"selected needs one entry per edge ({self.graph.n_edges})")

    def selection(self) -> Circuit:
        """The circuit the method chose itself (ACDC's kept edges)."""
        if self.selected is None:
            method = self.settings.get("method", "this method")
            raise ValueError(
                f"{method} scores edges but selects none; choose a circuit with top(n), threshold(t) or greedy(n)"
            )
        return Circuit(self.graph, self.selected, self.values.clone(), list(self.trace), dict(self.settings))

    def to_json(self, path: str | Path, *, overwrite: bool = False, every_edge: bool = False) -> Path:
        """Save as graph JSON (the format of `Circuit.to_json`; ``in_graph`` is the method's own selection, or no
        edge); `Scores.from_json` loads it back. Compact unless ``every_edge``, which writes every edge's score
        where EAP-IG and MIB's evaluation read them. An existing file is refused unless ``overwrite``."""
        path = claim(path, overwrite)
        in_graph = self.selected if self.selected is not None else torch.zeros(self.graph.n_edges, dtype=torch.bool)
        extra = {"kind": "scores", "settings": self.settings, "metric_trace": [float(x) for x in self.trace],
                 "has_selection": self.selected is not None}
        return write_json(graph_json(self.graph, in_graph, self.values, extra, every_edge=every_edge), path)

    @classmethod
    def from_json(cls, path: str | Path) -> Scores:
        """Load scores saved by `to_json` (or any graph JSON: its edge scores, no selection)."""
        graph, in_graph, values, extra = read_graph_json(read_json(path))
        selected = in_graph if extra.get("has_selection") else None
        return cls(graph, values, dict(extra.get("settings", {})), selected, list(extra.get("metric_trace", [])))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Scores):
            return NotImplemented
        sel = (self.selected is None) == (other.selected is None) and (
            self.selected is None or torch.equal(self.selected, other.selected)  # type: ignore[arg-type]
        )
        return (
            self.graph.config() == other.graph.config() and sel
            and same_values(self.values, other.values)
            and self.settings == other.settings and [float(x) for x in self.trace] == [float(x) for x in other.trace]
        )

    def __getitem__(self, edge: str) -> float:
        return float(self.values[self.graph.edge_index(edge)])

    def __len__(self) -> int:
        return self.graph.n_edges

    def __repr__(self) -> str:
        method = self.settings.get("method", "?")
        return f"Scores({method}, {self.graph.n_edges} edges, max |score| {float(self.values.abs().max()):.4g})"

    def ranking(self) -> list[str]:
        """Edge names from the largest |score| to the smallest (ties in graph order)."""
        order = torch.argsort(-self.values.abs(), stable=True)
        return [self.graph.edges[i].name for i in order.tolist()]

    def circuit(self, mask: Tensor, how: str) -> Circuit:
        """A `Circuit` of the masked edges, carrying every edge's score."""
        return Circuit(self.graph, mask, self.values.clone(), settings={**self.settings, "selection": how})

    def top(self, n: int) -> Circuit:
        """The ``n`` edges with the largest |score|."""
        self._check_n(n)
        mask = torch.zeros(self.graph.n_edges, dtype=torch.bool)
        mask[torch.argsort(-self.values.abs(), stable=True)[:n]] = True
        return self.circuit(mask, f"top {n}")

    def threshold(self, t: float) -> Circuit:
        """Every edge with |score| >= t."""
        if not isinstance(t, (int, float)) or math.isnan(t) or t < 0:
            raise ValueError(f"threshold must be a number >= 0, got {t!r}")
        return self.circuit(self.values.abs() >= t, f"|score| >= {t:g}")

    def greedy(self, n: int) -> Circuit:
        """A connected circuit of ``n`` edges grown from the logits.

        Start with the logits node; repeatedly add the highest-|score| edge whose destination
        node is already in the circuit (and with it its source node). Every chosen edge thus
        has a path to the logits.
        """
        self._check_n(n)
        g = self.graph
        dst_node = [g.destinations[d].node.name for d in g.edge_dst.tolist()]
        src_node = [g.sources[s].name for s in g.edge_src.tolist()]
        into: dict[str, list[int]] = {}
        for i, d in enumerate(dst_node):
            into.setdefault(d, []).append(i)
        mag = self.values.abs().tolist()
        heap: list[tuple[float, int]] = []
        reached: set[str] = set()

        def reach(node: str) -> None:
            if node not in reached:
                reached.add(node)
                for i in into.get(node, []):
                    heapq.heappush(heap, (-mag[i], i))

        reach("logits")
        mask = torch.zeros(g.n_edges, dtype=torch.bool)
        for _ in range(n):
            if not heap:
                break
            _, i = heapq.heappop(heap)
            mask[i] = True
            reach(src_node[i])
        return self.circuit(mask, f"greedy {n}")

    def _check_n(self, n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= self.graph.n_edges:
            raise ValueError(f"n must be an integer in [0, {self.graph.n_edges}], got {n!r}")
