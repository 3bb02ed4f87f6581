"""Ground-truth circuits stored as data, in the project's edge names.

Each JSON file here names its model shape, its node classes (e.g. IOI's name movers), the groups
its rules refer to, and *rules*: ``{"from": A, "to": B, "inputs": "qkv"}`` means every edge from
a node of A into a node of B (through the listed q/k/v inputs when B is a head) that the model's
graph has, i.e. with the sender earlier in the forward pass. ``views`` add rules (IOI "with-mlps"
is the truth the ACDC paper scored; "heads-only" drops every MLP edge).

    >>> from acdc import known
    >>> ioi = known.load("ioi", view="heads-only")
    >>> len(ioi.edges), ioi.node_class("a9.h9")
    (182, 'name mover')

A positional spec lists ``"positions"`` (e.g. IOI's IO, S1, S1+1, S2, END, other) and each rule
says ``"at"``: the position(s) of its edges (``"ioi-positional"``: the IOI paper's classes at their
positions). Its edges are named ``src->dst@POS`` and score against positional graphs.

`KnownCircuit` is also what the zoo's planted models return as their truth, and what
`acdc.recovery` and `acdc.roc` compare against.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from torch import Tensor

from ..circuit import Circuit
from ..graph import Graph, parse_node

__all__ = ["KnownCircuit", "available", "load", "from_spec"]

_FILES = {
    "ioi": "ioi_gpt2.json",
    "ioi-positional": "ioi_positional_gpt2.json",
    "greater-than": "greaterthan_gpt2.json",
    "docstring": "docstring_attn4l.json",
}


@dataclass(frozen=True, eq=False)
class KnownCircuit:
    """A ground-truth circuit: its edges (canonical order), node classes and model shape.

    graph_config: the `Graph` config of the model shape the edges are named for.
    classes:      class name -> node names (for scoring by class and colouring renders).
    edges:        true edge names, in the graph's canonical order.
    """

    name: str
    graph_config: dict[str, Any]
    edges: tuple[str, ...]
    classes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    view: str = ""
    title: str = ""
    source: str = ""

    def graph(self) -> Graph:
        """The graph of the model shape these edges are named for (q/k/v split)."""
        return Graph.from_config(self.graph_config)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def nodes(self) -> tuple[str, ...]:
        """Heads and MLPs touched by a true edge, in forward order (no ``input``/``logits``)."""
        return tuple(_touched_nodes(self.graph(), self.edges))

    def node_class(self, node: str) -> str | None:
        """The class of a node, or None if it has none."""
        for cls, members in self.classes.items():
            if node in members:
                return cls
        return None

    def mask(self, graph: Graph | None = None) -> Tensor:
        """[n_edges] bool over ``graph`` (default: its own); q/k/v merge if the graph does not split them."""
        g = graph if graph is not None else self.graph()
        g.check_fits(self.graph(), f"known circuit {self.name!r}", qkv=False, features=False)
        names = self.edges if g.split_qkv else {_strip_qkv(e) for e in self.edges}
        return g.edge_mask(names)

    def as_circuit(self, graph: Graph | None = None) -> Circuit:
        """The truth as a `Circuit` (scores NaN), e.g. to render or save it."""
        g = graph if graph is not None else self.graph()
        scores = torch.full((g.n_edges,), float("nan"), dtype=torch.float64)
        settings = {"method": "known", "name": self.name, "view": self.view}
        return Circuit(g, self.mask(g), scores, settings=settings)

    def __repr__(self) -> str:
        v = f", view={self.view!r}" if self.view else ""
        return f"KnownCircuit({self.name!r}{v}: {self.n_edges} edges, {len(self.nodes)} nodes, {len(self.classes)} classes)"


def available() -> list[str]:
    """Names of the stored known circuits."""
    return sorted(_FILES)


def load(name: str, view: str | None = None) -> KnownCircuit:
    """Load a stored known circuit (``"ioi"``, ``"greater-than"``, ``"docstring"``)."""
    if name not in _FILES:
        raise ValueError(f"unknown circuit {name!r}; available: {', '.join(available())}")
    spec = json.loads(resources.files(__name__).joinpath(_FILES[name]).read_text())
    return from_spec(spec, view=view)


def from_spec(spec: dict[str, Any], view: str | None = None) -> KnownCircuit:
    """Expand a rule-based spec (the JSON format above) into a `KnownCircuit`."""
    positions = spec.get("positions")
    graph = Graph.from_config({**spec["model"], "split_qkv": True, "positions": positions})
    views = spec.get("views", {})
    view = view if view is not None else spec.get("default_view", "")
    if views and view not in views:
        raise ValueError(f"circuit {spec['name']!r} has views {', '.join(views)}; got {view!r}")
    rules = list(spec.get("rules", [])) + list(views.get(view, {}).get("rules", []))
    classes = {k: tuple(v) for k, v in spec.get("classes", {}).items()}
    groups = {**{k: tuple(v) for k, v in spec.get("groups", {}).items()}, **classes}
    chosen: set[str] = set()
    for rule in rules:
        found = _expand(rule, graph, groups)
        if not found:
            raise ValueError(f"rule {rule} of circuit {spec['name']!r} gives no edge of {graph!r}")
        chosen |= found
    edges = tuple(e.name for e in graph.edges if e.name in chosen)
    for cls, members in classes.items():
        for n in members:
            if n not in graph.src_index:
                raise ValueError(f"class {cls!r} of circuit {spec['name']!r} names {n!r}, not a node of {graph!r}")
    model_cfg = {k: v for k, v in spec["model"].items() if k != "name"}
    if positions is not None:
        model_cfg["positions"] = list(positions)
    return KnownCircuit(
        name=spec["name"], graph_config={**model_cfg, "split_qkv": True}, edges=edges, classes=classes,
        view=view or "", title=spec.get("title", ""), source=spec.get("source", ""),
    )


def _resolve(ref: str | list[str], graph: Graph, groups: dict[str, tuple[str, ...]]) -> list[str]:
    """Node names for a node name, class, group, or a list of them."""
    if isinstance(ref, list):
        return [n for r in ref for n in _resolve(r, graph, groups)]
    if ref in groups:
        return [n for r in groups[ref] for n in _resolve(r, graph, groups)]
    if ref in graph.src_index or ref in graph.dst_index:  # a node, or a featured MLP's input (m3)
        return [ref]
    raise ValueError(f"{ref!r} is neither a node of {graph!r} nor a class or group of the circuit")


def _expand(rule: dict[str, Any], graph: Graph, groups: dict[str, tuple[str, ...]]) -> set[str]:
    letters = rule.get("inputs", "qkv")
    at = rule.get("at")
    if (at is None) != (graph.positions is None):
        raise ValueError(f"rule {rule}: a positional circuit says 'at' (position names) in every rule, a plain one never")
    suffixes = [""] if at is None else [f"@{p}" for p in ([at] if isinstance(at, str) else at)]
    for suffix in suffixes:
        if suffix and suffix[1:] not in (graph.positions or ()):
            raise ValueError(f"rule {rule}: no position {suffix[1:]!r}; positions are {', '.join(graph.positions or ())}")
    found = set()
    for src in _resolve(rule["from"], graph, groups):
        for dst in _resolve(rule["to"], graph, groups):
            names = [f"{src}->{dst}<{q}>" for q in letters] if len(parse_node(dst).kind.slots) > 1 else [f"{src}->{dst}"]
            found.update(n + x for n in names for x in suffixes if graph.has_edge(n + x))
    return found


def _strip_qkv(edge: str) -> str:
    """The edge name without its q/k/v input (position kept): for graphs that do not split q/k/v."""
    return re.sub(r"<[qkv]>", "", edge)


def _touched_nodes(graph: Graph, edges: Iterable[str]) -> list[str]:
    used: set[str] = set()
    for name in edges:
        e = graph.edges[graph.edge_index(name)]
        used.update((e.src.name, e.dst.node.name))
    return [n.name for n in graph.components() if n.name in used]
