"""A discovered circuit: kept edges, per-edge scores, the metric trace and the settings.

Saved as JSON in the EAP-IG / MIB graph format (``cfg``, ``nodes``, ``edges`` with ``score`` and
``in_graph``), so circuits load in either library; acdc's extras (settings, metric trace) sit
under an ``"acdc"`` key that other readers ignore. Never pickled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .graph import Graph

__all__ = ["Circuit"]

FORMAT_VERSION = 1


@dataclass(eq=False)
class Circuit:
    """The result of circuit discovery.

    graph:        the model's graph (names, order).
    in_graph:     [n_edges] bool, the kept edges.
    scores:       [n_edges] float64, the measured effect of each edge (NaN where untested).
    metric_trace: metric of the current circuit after each tested edge, in visiting order.
    settings:     how it was found (method, metric, threshold, ablation, ...).
    """

    graph: Graph
    in_graph: Tensor
    scores: Tensor
    metric_trace: list[float] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.graph.n_edges
        self.in_graph = torch.as_tensor(self.in_graph, dtype=torch.bool).cpu()
        self.scores = torch.as_tensor(self.scores, dtype=torch.float64).cpu()
        if self.in_graph.shape != (n,) or self.scores.shape != (n,):
            raise ValueError(f"in_graph and scores need one entry per edge ({n})")

    # ------------------------------------------------------------------ views
    @property
    def edges(self) -> list[str]:
        """Names of the kept edges, in canonical order."""
        return [self.graph.edges[i].name for i in self.in_graph.nonzero().squeeze(1).tolist()]

    @property
    def n_edges(self) -> int:
        return int(self.in_graph.sum())

    @property
    def nodes(self) -> list[str]:
        """Nodes touching a kept edge, in forward order."""
        g = self.graph
        idx = self.in_graph.nonzero().squeeze(1)
        used = {g.sources[s].name for s in g.edge_src[idx].tolist()}
        used |= {g.destinations[d].node.name for d in g.edge_dst[idx].tolist()}
        return [n.name for n in g.nodes if n.name in used]

    def edge_score(self, edge: str) -> float:
        """Measured effect of one edge (NaN if it was never tested)."""
        return float(self.scores[self.graph.edge_index(edge)])

    def live_mask(self) -> Tensor:
        """[n_edges] bool: kept edges on some path from ``input`` to ``logits`` in the circuit."""
        g = self.graph
        kept = self.in_graph.tolist()
        src = [g.sources[s].name for s in g.edge_src.tolist()]
        dst = [g.destinations[d].node.name for d in g.edge_dst.tolist()]
        from_input, to_logits = {"input"}, {"logits"}
        for i in range(g.n_edges):  # edges are sorted by destination in forward order
            if kept[i] and src[i] in from_input:
                from_input.add(dst[i])
        for i in reversed(range(g.n_edges)):
            if kept[i] and dst[i] in to_logits:
                to_logits.add(src[i])
        alive = from_input & to_logits
        return torch.tensor([kept[i] and src[i] in alive and dst[i] in alive for i in range(g.n_edges)], dtype=torch.bool)

    def to_networkx(self, *, multi: bool = False, classes: Any = None) -> Any:
        """The kept edges as a ``networkx.DiGraph`` (or ``MultiDiGraph`` with ``multi=True``).

        DiGraph: one edge per (source, destination node); ``qkv`` lists the head inputs it enters
        ("", "q", "kv", ...), ``score`` is the strongest of their effects (NaN if untested) and
        ``score_q`` / ``score_k`` / ``score_v`` give each one. MultiDiGraph: one edge per graph
        edge, keyed by its q/k/v letter, with ``qkv``, ``score`` and ``name``. Nodes carry
        ``layer``, ``kind``, ``head`` and, when ``classes`` (class -> nodes, or a KnownCircuit)
        is given, ``class``.
        """
        import networkx as nx

        g = self.graph.to_networkx(self.in_graph, self.scores)
        g.remove_nodes_from([n for n in list(g.nodes) if g.degree(n) == 0])
        cls_of = {m: c for c, members in getattr(classes, "classes", classes or {}).items() for m in members}
        for name, attrs in g.nodes(data=True):
            if name in cls_of:
                attrs["class"] = cls_of[name]
        if multi:
            return g
        out = nx.DiGraph()
        out.add_nodes_from(g.nodes(data=True))
        for u, v, attrs in g.edges(data=True):
            score = math.nan if attrs["score"] is None else attrs["score"]
            if not out.has_edge(u, v):
                out.add_edge(u, v, qkv="", score=math.nan)
            e = out[u][v]
            if attrs["qkv"]:
                e["qkv"] = "".join(sorted(e["qkv"] + attrs["qkv"], key="qkv".index))
                e[f"score_{attrs['qkv']}"] = score
            if math.isnan(e["score"]) or (not math.isnan(score) and abs(score) > abs(e["score"])):
                e["score"] = score
        return out

    def to_graphml(self, path: str | Path, *, classes: Any = None) -> Path:
        """Write the kept edges as GraphML (the `to_networkx` DiGraph and its attributes)."""
        import networkx as nx

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        nx.write_graphml(self.to_networkx(classes=classes), path)
        return path

    def __repr__(self) -> str:
        s = self.settings
        desc = ", ".join(f"{k}={s[k]}" for k in ("method", "metric", "threshold", "ablation") if k in s)
        return f"Circuit({self.n_edges} of {self.graph.n_edges} edges, {len(self.nodes)} nodes; {desc})"

    def summary(self, max_edges: int = 30) -> str:
        """A short human-readable listing of the circuit."""
        lines = [repr(self)]
        order = sorted(self.in_graph.nonzero().squeeze(1).tolist(), key=lambda i: -abs(float(self.scores[i])) if not math.isnan(self.scores[i]) else 0)
        for i in order[:max_edges]:
            lines.append(f"  {self.graph.edges[i].name:28s} {float(self.scores[i]):+.4g}")
        if len(order) > max_edges:
            lines.append(f"  ... {len(order) - max_edges} more")
        return "\n".join(lines)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        g = self.graph
        node_names = set(self.nodes)
        edges = {}
        for i, e in enumerate(g.edges):
            s = float(self.scores[i])
            edges[e.name] = {"score": None if math.isnan(s) else s, "in_graph": bool(self.in_graph[i])}
        return {
            "cfg": g.config(),
            "nodes": {n.name: n.name in node_names for n in g.nodes},
            "edges": edges,
            "acdc": {
                "format_version": FORMAT_VERSION,
                "settings": self.settings,
                "metric_trace": [float(x) for x in self.metric_trace],
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Circuit:
        try:
            graph = Graph.from_config(d["cfg"])
            edges = d["edges"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a circuit JSON (EAP-IG/MIB format needs 'cfg' and 'edges'): missing {err}") from None
        in_graph = torch.zeros(graph.n_edges, dtype=torch.bool)
        scores = torch.full((graph.n_edges,), math.nan, dtype=torch.float64)
        for name, info in edges.items():
            i = graph.edge_index(name)
            in_graph[i] = bool(info.get("in_graph", False))
            s = info.get("score")
            if s is not None:
                scores[i] = float(s)
        extra = d.get("acdc", {})
        return cls(graph, in_graph, scores, list(extra.get("metric_trace", [])), dict(extra.get("settings", {})))

    def to_json(self, path: str | Path) -> Path:
        """Write the circuit as JSON (EAP-IG/MIB format); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), allow_nan=False))
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> Circuit:
        """Load a circuit written by `to_json` or by EAP-IG's ``Graph.to_json``."""
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Circuit):
            return NotImplemented
        return (
            self.graph.config() == other.graph.config()
            and torch.equal(self.in_graph, other.in_graph)
            and torch.equal(self.scores.isnan(), other.scores.isnan())
            and torch.equal(self.scores.nan_to_num(), other.scores.nan_to_num())
            and [float(x) for x in self.metric_trace] == [float(x) for x in other.metric_trace]
            and self.settings == other.settings
        )
