"""The computational graph of a transformer: nodes, edges, and their canonical order.

Names follow EAP-IG / the MIB benchmark: nodes ``input``, ``a{L}.h{H}``, ``m{L}``, ``logits``;
edges ``"{src}->{dst}"`` and ``"{src}->{dst}<q>"`` (``<k>``, ``<v>``) into heads.

Sources in forward order: ``input``, then per layer ``a{L}.h0 .. a{L}.h{n-1}, m{L}``.
Destinations in forward order: per layer ``a{L}.h0<q>, a{L}.h0<k>, a{L}.h0<v>, a{L}.h1<q>, ...,
m{L}``, then ``logits``. Edges are ordered by destination, then source, both in forward order, so
ACDC's visiting order (destinations and sources both reversed) is the edge order reversed.

Edge state lives in dense ``[n_dst, n_src]`` tensors; ``Graph.upstream`` says which pairs are
edges and ``Graph.edge_id`` numbers them.

A *positional* graph (``positions=("IO", "S1", ..., "other")``, see `acdc.positions`) has one
edge per (source, destination, position), named ``"{src}->{dst}@{position}"``; its edges are the
plain graph's, each repeated for every position (position last, so ACDC visits a pair's positions
from the last to the first), and its edge state is ``[n_dst, n_src, n_positions]``.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, overload

import torch
from torch import Tensor

from .positions import check_names

__all__ = ["Node", "NodeKind", "Destination", "Edge", "EdgeList", "FeatureLayout", "FeatureSet", "Graph", "KINDS", "INPUT", "HEAD",
           "MLP", "LOGITS", "FEATURE", "ERROR", "SKIP", "MLP_UNITS", "layer_offset", "parse_node"]


class NodeKind(str):
    """A kind of graph node: the string it is called by ("head"), and what it is to the graph.

    The graph owns the kinds; other modules ask a node's kind what it needs instead of comparing
    names. A new kind (neurons, transcoder features) is one more `NodeKind` in `KINDS`.

    Attributes:
        slots:      the destination slots of its inputs: ``("q", "k", "v")`` for a head (one
                    slot, ``(None,)``, when q/k/v are not split), ``(None,)`` for one input,
                    ``()`` for none (the input node).
        component:  a computing unit inside the layers that a circuit keeps or drops (heads and
                    MLPs; not the input and logits).
        attends:    it has an attention pattern (queries at one position, keys at others).
        order:      its row within a layer, bottom-up (heads 0, the MLP above them 1).
        answer_slots: in the last layer, the slots the engine reads at the answer rows only
                    (a head's queries, an MLP; every slot of the logits).
        shape, rounded: how it is drawn (graphviz shape; rounded corners).
        pattern:    its node's name, from ``layer`` and ``index`` ("a{layer}.h{index}").
        unit:       one activation per token (a neuron, a feature): it can be clamped to a value.
        editable:   interventions may edit its output (the input node, heads, MLPs and their units;
                    how is its site's, `acdc.sites`).
    """

    slots: tuple[str | None, ...]
    component: bool
    attends: bool
    order: int
    answer_slots: tuple[str | None, ...]
    shape: str
    rounded: bool
    pattern: str
    unit: bool
    editable: bool

    def __new__(cls, name: str, *, slots: tuple[str | None, ...], component: bool, attends: bool = False, order: int = 0,
                answer_slots: tuple[str | None, ...] = (), shape: str = "box", rounded: bool = False,
                pattern: str | None = None, unit: bool = False, editable: bool = False) -> NodeKind:
        kind = super().__new__(cls, name)
        kind.unit, kind.editable = unit, editable
        kind.slots, kind.component, kind.attends, kind.order = slots, component, attends, order
        kind.answer_slots, kind.shape, kind.rounded = answer_slots, shape, rounded
        kind.pattern = name if pattern is None else pattern
        return kind

    def __reduce__(self) -> tuple[Callable[[str], NodeKind], tuple[str]]:
        """Pickled by name, unpickled as the registered kind itself (graphs and circuits travel to Ray workers)."""
        return _kind_named, (str(self),)

    def input_slots(self, split_qkv: bool = True) -> tuple[str | None, ...]:
        """Its destination slots in a graph (a head's q/k/v collapse to one when not split)."""
        return self.slots if split_qkv or len(self.slots) <= 1 else (None,)

    def parse(self, name: str) -> tuple[int, int] | None:
        """(layer, index) if ``name`` names a node of this kind (-1 for what its pattern leaves out), else None:
        the kind's name grammar read backwards (``a{layer}.h{index}`` matches "a3.h7" -> (3, 7))."""
        m = _grammar(self.pattern).fullmatch(name)
        if m is None:
            return None
        got = m.groupdict()
        return int(got.get("layer") or -1), int(got.get("index") or -1)


INPUT = NodeKind("input", slots=(), component=False, shape="invhouse", editable=True)
HEAD = NodeKind("head", slots=("q", "k", "v"), component=True, attends=True, order=0, answer_slots=("q",), editable=True,
                shape="box", rounded=True, pattern="a{layer}.h{index}")
MLP = NodeKind("mlp", slots=(None,), component=True, order=1, answer_slots=(None,), shape="ellipse", pattern="m{layer}",
               editable=True)
LOGITS = NodeKind("logits", slots=(None,), component=False, answer_slots=(None,), shape="house")
# A feature graph's nodes (`acdc.feature_nodes`): a transcoder feature, the transcoder's error, its skip path.
FEATURE = NodeKind("feature", slots=(), component=True, order=1, shape="ellipse", pattern="m{layer}.f{index}", unit=True,
                   editable=True)
ERROR = NodeKind("error", slots=(), component=True, order=1, shape="diamond", pattern="m{layer}.err")
SKIP = NodeKind("skip", slots=(), component=True, order=1, shape="octagon", pattern="m{layer}.skip")
KINDS: dict[str, NodeKind] = {k: k for k in (INPUT, HEAD, MLP, LOGITS, FEATURE, ERROR, SKIP)}


@functools.cache
def _grammar(pattern: str) -> re.Pattern[str]:
    """A kind's name pattern ("m{layer}.f{index}") as a regular expression with groups layer and index."""
    parts = re.split(r"(\{layer\}|\{index\})", pattern)
    return re.compile("".join({"{layer}": r"(?P<layer>\d+)", "{index}": r"(?P<index>\d+)"}.get(p, re.escape(p)) for p in parts))


def parse_node(name: str) -> Node:
    """The node a name names, by the registered kinds' grammars (`NodeKind.parse`): "a3.h7" -> Node(3, HEAD, 7).
    ``input`` and ``logits`` get layer -1 (a graph knows where its logits are). A one-line ValueError
    lists the grammars when nothing matches."""
    if isinstance(name, str):
        for kind in KINDS.values():
            got = kind.parse(name)
            if got is not None:
                return Node(got[0], kind, got[1])
    grammars = ", ".join(k.pattern.replace("{layer}", "L").replace("{index}", "i") for k in KINDS.values())
    raise ValueError(f"{name!r} is not a node name; node names are {grammars}")


def _kind_named(name: str) -> NodeKind:
    """The registered kind called ``name`` (what a pickled `NodeKind` becomes again)."""
    return KINDS[name]


def _whole_mlp(graph: Graph, layer: int) -> tuple[list[Node], list[Destination]]:
    """A layer's MLP as one node: one source, one input."""
    node = Node(layer, MLP)
    return [node], [Destination(node)]


# How a layer's MLP enters the graph, by name: its sources (the units whose outputs are patched)
# and its input slots, given the graph being built (its ``d_mlp``, ``features``). A finer unit
# (neurons, transcoder features) registers itself here.
def _feature_units(graph: Graph, layer: int) -> tuple[list[Node], list[Destination]]:
    """A layer's MLP in a feature graph: its chosen features, its error node and its skip node (one
    input, the MLP's), or the whole MLP where the layer has no transcoder."""
    assert graph.features is not None
    chosen = graph.features.of_layer(layer)
    mlp = Node(layer, MLP)
    if chosen is None:
        return [mlp], [Destination(mlp)]
    nodes = [Node(layer, FEATURE, i) for i in chosen] + [Node(layer, ERROR)]
    if layer in graph.features.skip:
        nodes.append(Node(layer, SKIP))
    return nodes, [Destination(mlp)]


MLP_UNITS: dict[str, Callable[[Graph, int], tuple[list[Node], list[Destination]]]] = {"whole": _whole_mlp, "transcoders": _feature_units}


class FeatureSet(Protocol):
    """What a feature graph needs of its dictionaries (`acdc.TranscoderSet` is one): the layers
    they cover and a JSON-able description (per layer ``n_features`` and ``skip``, and where they
    come from)."""

    @property
    def layers(self) -> list[int]: ...

    def graph_info(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class FeatureLayout:
    """Which MLPs of a feature graph are split into transcoder features, and into which.

    features: (layer, feature indices in increasing order) for each layer with a transcoder; that
              layer's sources are ``m{L}.f{i}`` for each index, then ``m{L}.err`` (and ``m{L}.skip``);
    skip:     the layers whose transcoder has a linear skip path;
    info:     the transcoders' description (`FeatureSet.graph_info`), written to JSON, not compared.
    """

    features: tuple[tuple[int, tuple[int, ...]], ...]
    skip: frozenset[int] = frozenset()
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def of(cls, chosen: Mapping[int, Iterable[int]], skip: Iterable[int] = (), info: dict[str, Any] | None = None) -> FeatureLayout:
        feats = tuple((int(layer), tuple(sorted({int(i) for i in idx}))) for layer, idx in sorted(chosen.items()))
        return cls(feats, frozenset(int(s) for s in skip), dict(info or {}))

    def of_layer(self, layer: int) -> tuple[int, ...] | None:
        """The feature indices of ``layer`` (None: its MLP stays whole)."""
        return dict(self.features).get(layer)

    @property
    def n_features(self) -> int:
        return sum(len(f) for _, f in self.features)

    def config(self) -> dict[str, Any]:
        return {"features": {str(layer): list(f) for layer, f in self.features}, "skip_layers": sorted(self.skip),
                "transcoders": self.info}

    @classmethod
    def read(cls, cfg: dict[str, Any]) -> FeatureLayout:
        """The layout written by `config` (a graph's JSON ``cfg``)."""
        return cls.of({int(k): v for k, v in cfg["features"].items()}, cfg.get("skip_layers", ()), cfg.get("transcoders"))


def layer_offset(layer: int, n_heads: int, has_mlp: bool = True) -> int:
    """Source index of head 0 of ``layer``: sources are ``input``, then per layer the heads and the MLP.

    The one definition of the source numbering; `Graph` and the model's forward both use it.
    """
    return 1 + layer * (n_heads + int(has_mlp))


@dataclass(frozen=True, order=True)
class Node:
    """A graph node. ``layer`` is -1 for ``input`` and ``n_layers`` for ``logits``.

    ``kind`` may be given by name ("head"); it is stored as the `NodeKind` of that name.
    """

    layer: int
    kind: NodeKind
    head: int = -1  # the unit's index within its layer (a head's number, a neuron's)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, NodeKind):
            try:
                object.__setattr__(self, "kind", KINDS[self.kind])
            except KeyError:
                raise ValueError(f"unknown node kind {self.kind!r}; one of {', '.join(KINDS)}") from None

    @property
    def name(self) -> str:
        return self.kind.pattern.format(layer=self.layer, index=self.head)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Destination:
    """An input slot of a node: a head's q, k or v input (or its only input), an MLP, logits."""

    node: Node
    qkv: Literal["q", "k", "v"] | None = None

    @property
    def name(self) -> str:
        return self.node.name if self.qkv is None else f"{self.node.name}<{self.qkv}>"

    def answers_only(self, n_layers: int) -> bool:
        """Whether the engine reads this input at the answer rows only (the logits; in the last
        layer a head's queries and the MLP): nothing later reads the other positions."""
        return self.node.layer >= n_layers - 1 and self.qkv in self.node.kind.answer_slots

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Edge:
    """A directed edge from a source node into a destination slot."""

    src: Node
    dst: Destination
    pos: str | None = None  # the position, in a positional graph

    @property
    def name(self) -> str:
        qkv = "" if self.dst.qkv is None else f"<{self.dst.qkv}>"
        at = "" if self.pos is None else f"@{self.pos}"
        return f"{self.src.name}->{self.dst.node.name}{qkv}{at}"

    @property
    def base_name(self) -> str:
        """The name without the position (the plain graph's edge)."""
        return self.name.split("@", 1)[0]

    @property
    def qkv(self) -> str | None:
        return self.dst.qkv

    def __str__(self) -> str:
        return self.name


class EdgeList(Sequence[Edge]):
    """A graph's edges in canonical order, made on demand from its index tensors.

    A graph of millions of edges (positional graphs, neurons, features) never holds an `Edge`
    object or a name per edge: ``graph.edges[i]`` builds one, iteration builds them in order.
    """

    def __init__(self, graph: Graph):
        self._g = graph

    def __len__(self) -> int:
        return int(self._g.edge_dst.numel())

    @overload
    def __getitem__(self, i: int) -> Edge: ...

    @overload
    def __getitem__(self, i: slice) -> list[Edge]: ...

    def __getitem__(self, i: int | slice) -> Edge | list[Edge]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"edge index {i} out of range for {n} edges")
        i = i % n
        g = self._g
        pos = None if g.positions is None else g.positions[int(g.edge_pos[i])]
        return Edge(g.sources[int(g.edge_src[i])], g.destinations[int(g.edge_dst[i])], pos)

    def __iter__(self) -> Iterator[Edge]:
        g = self._g
        pos = g.positions
        src, dst = g.sources, g.destinations
        for d, s, p in zip(g.edge_dst.tolist(), g.edge_src.tolist(), g.edge_pos.tolist(), strict=True):
            yield Edge(src[s], dst[d], None if pos is None else pos[p])

    def __contains__(self, edge: object) -> bool:
        return isinstance(edge, Edge) and self._g.has_edge(edge.name) and self[self._g.edge_index(edge.name)] == edge

    def __repr__(self) -> str:
        return f"EdgeList({len(self)} edges)"


class Graph:
    """Nodes and edges of a transformer, with tensors for fast edge-state arithmetic.

    Attributes:
        sources:      source nodes in forward order (index = row of the engine's source cache).
        destinations: destination slots in forward order.
        edges:        all edges in canonical order (an `EdgeList`, made on demand).
        upstream:     [n_dst, n_src] bool, True where (dst, src) is an edge.
        edge_id:      [n_dst, n_src] long, the edge's index (its first position's in a positional
                      graph), -1 where there is no edge.
        edge_src, edge_dst: [n_edges] long, source / destination index of every edge.
        positions:    the position names of a positional graph, else None.
        edge_pos:     [n_edges] long, position index of every edge (zeros in a plain graph).
    """

    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        *,
        parallel_attn_mlp: bool = False,
        split_qkv: bool = True,
        attn_only: bool = False,
        d_model: int | None = None,
        n_kv_heads: int | None = None,
        positions: tuple[str, ...] | list[str] | None = None,
        mlp_units: str = "whole",
        d_mlp: int | None = None,
        features: FeatureLayout | None = None,
    ):
        if n_layers < 1 or n_heads < 1:
            raise ValueError(f"a graph needs n_layers >= 1 and n_heads >= 1, got {n_layers}, {n_heads}")
        if features is not None:
            mlp_units = "transcoders"
            bad = [layer for layer, _ in features.features if not 0 <= layer < n_layers]
            if bad or attn_only:
                raise ValueError(f"transcoder features for layers {bad or 'any'} do not fit {n_layers} layers with MLPs")
        elif mlp_units == "transcoders":
            raise ValueError("a transcoder graph needs its features: Graph.from_model(model, transcoders=ts)")
        # feature graphs: which features are nodes (the weights that compute them are the engine's:
        # each entry point takes transcoders=)
        self.features = features
        if mlp_units not in MLP_UNITS:
            raise ValueError(f"unknown mlp_units {mlp_units!r}; one of {', '.join(MLP_UNITS)}")
        if mlp_units not in ("whole", "transcoders") and (attn_only or d_mlp is None):
            raise ValueError(f"mlp_units={mlp_units!r} needs MLPs and their width d_mlp")
        self.mlp_units, self.d_mlp = mlp_units, d_mlp
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.parallel_attn_mlp = parallel_attn_mlp
        self.split_qkv = split_qkv
        self.attn_only = attn_only
        self.d_model = d_model  # recorded for the JSON (EAP-IG reads it); None where unknown
        # Grouped-query attention: fewer key/value heads than query heads. The graph still has one
        # k and one v input per query head (see acdc.families); recorded for the JSON.
        self.n_kv_heads = n_kv_heads if n_kv_heads not in (None, n_heads) else None

        sources = [Node(-1, INPUT)]
        dests: list[Destination] = []
        self._layer_start: list[int] = []  # source index of each layer's first head
        self._mlp_sources: list[range] = []  # source indices of each layer's MLP units
        for layer in range(n_layers):
            self._layer_start.append(len(sources))
            for h in range(n_heads):
                node = Node(layer, HEAD, h)
                dests.extend(Destination(node, s) for s in HEAD.input_slots(split_qkv))  # type: ignore[arg-type]
                sources.append(node)
            if not attn_only:
                units, inputs = MLP_UNITS[mlp_units](self, layer)
                self._mlp_sources.append(range(len(sources), len(sources) + len(units)))
                dests.extend(inputs)
                sources.extend(units)
        dests.append(Destination(Node(n_layers, LOGITS)))
        self.sources: tuple[Node, ...] = tuple(sources)
        self.destinations: tuple[Destination, ...] = tuple(dests)
        self.src_index = {n.name: i for i, n in enumerate(self.sources)}
        self.dst_index = {d.name: i for i, d in enumerate(self.destinations)}

        self.src_layer = torch.tensor([n.layer for n in self.sources])
        self.dst_layer = torch.tensor([d.node.layer for d in self.destinations])
        # within a layer, a node reads the nodes on rows below it (a sequential MLP reads its layer's heads)
        src_order = torch.tensor([n.kind.order for n in self.sources])
        dst_order = torch.tensor([d.node.kind.order for d in self.destinations])
        before = self.src_layer[None, :] < self.dst_layer[:, None]
        same_layer_head_to_mlp = (
            (self.src_layer[None, :] == self.dst_layer[:, None]) & (src_order[None, :] < dst_order[:, None])
        )
        self.upstream: Tensor = before | (same_layer_head_to_mlp & (not parallel_attn_mlp))
        dst_idx, src_idx = (t.contiguous() for t in self.upstream.nonzero(as_tuple=True))  # row-major: dst, then src
        self.positions: tuple[str, ...] | None = None if positions is None else check_names(positions)
        n_pos = self.n_positions
        # one copy each (a plain graph's positions are a broadcast zero, not a tensor of zeros)
        self.edge_dst: Tensor = dst_idx.repeat_interleave(n_pos) if n_pos > 1 else dst_idx
        self.edge_src: Tensor = src_idx.repeat_interleave(n_pos) if n_pos > 1 else src_idx
        self.edge_pos: Tensor = torch.arange(n_pos).repeat(dst_idx.numel()) if n_pos > 1 else torch.zeros(
            1, dtype=torch.long).expand(dst_idx.numel())
        self.edge_id: Tensor = torch.full(self.upstream.shape, -1, dtype=torch.long)
        self.edge_id[dst_idx, src_idx] = torch.arange(dst_idx.numel()) * n_pos
        self.edges: EdgeList = EdgeList(self)
        self._pos_index = {p: i for i, p in enumerate(self.positions or ())}
        # Source index of each destination's node (-1 for logits): a node is "alive" while
        # any edge out of it is kept.
        self.dst_node_src = torch.tensor(
            [self.src_index.get(d.node.name, -1) for d in self.destinations]
        )
        # Destination rows per layer: each head's (q, k, v) rows (one row thrice when q/k/v are
        # not split), and the MLP's row (-1 in attention-only graphs).
        self._head_rows: list[list[tuple[int, int, int]]] = []
        self._mlp_rows: list[int] = []
        for layer in range(n_layers):
            trios = []
            for h in range(n_heads):
                name = f"a{layer}.h{h}"
                trios.append(
                    tuple(self.dst_index[f"{name}<{s}>"] for s in "qkv") if split_qkv else (self.dst_index[name],) * 3
                )
            self._head_rows.append(trios)  # type: ignore[arg-type]
            self._mlp_rows.append(-1 if attn_only else self.dst_index[MLP.pattern.format(layer=layer, index=-1)])

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_model(cls, model: Any, split_qkv: bool = True, positions: tuple[str, ...] | list[str] | None = None,
                   mlp_units: str = "whole", *, transcoders: FeatureSet | None = None,
                   features: Mapping[int, Iterable[int]] | None = None) -> Graph:
        """Graph of a TransformerLens bridge (or anything with a TL-style ``cfg``); positional with
        ``positions``; ``mlp_units="neurons"`` makes every MLP neuron a source (`acdc.neurons`).

        ``transcoders=ts`` (an `acdc.TranscoderSet`) makes a *feature graph*: each MLP with a
        transcoder becomes its features ``m{L}.f{i}``, an error node ``m{L}.err`` and, with a skip
        path, ``m{L}.skip`` (`acdc.feature_nodes`); ``features`` picks which features enter, layer ->
        indices (default: every feature; `acdc.active_features` picks those a task uses). The graph
        keeps the layout only: pass the same set as ``transcoders=`` to whatever runs it (`discover`,
        `attribute`, `acdc.Patcher`, ...), which checks that it covers the graph's features.
        """
        cfg = model.cfg if hasattr(model, "cfg") else model.arch
        layout = None
        if transcoders is not None:
            layout = _layout_of(transcoders, features)
        elif features is not None:
            raise ValueError("features= picks transcoder features: pass transcoders= too")
        return cls(
            cfg.n_layers,
            cfg.n_heads,
            parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
            split_qkv=split_qkv,
            attn_only=bool(getattr(cfg, "attn_only", False)),
            d_model=getattr(cfg, "d_model", None),
            n_kv_heads=getattr(cfg, "n_key_value_heads", None) or getattr(cfg, "n_kv_heads", None) or None,
            positions=positions,
            mlp_units=mlp_units,
            d_mlp=getattr(cfg, "d_mlp", None) if mlp_units != "whole" else None,
            features=layout,
        )

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Graph:
        """Graph from an EAP-IG style ``cfg`` dict (``n_layers``, ``n_heads``, ...)."""
        d_model = cfg.get("d_model")
        n_kv = cfg.get("n_key_value_heads")
        positions = cfg.get("positions")
        return cls(
            int(cfg["n_layers"]),
            int(cfg["n_heads"]),
            parallel_attn_mlp=bool(cfg.get("parallel_attn_mlp", False)),
            split_qkv=bool(cfg.get("split_qkv", True)),
            attn_only=bool(cfg.get("attn_only", False)),
            d_model=None if d_model is None else int(d_model),
            n_kv_heads=None if n_kv is None else int(n_kv),
            positions=None if positions is None else tuple(positions),
            mlp_units=str(cfg.get("mlp_units", "whole")),
            d_mlp=None if cfg.get("d_mlp") is None else int(cfg["d_mlp"]),
            features=FeatureLayout.read(cfg) if "features" in cfg else None,
        )

    def with_positions(self, positions: tuple[str, ...] | list[str] | None) -> Graph:
        """This graph with positional edges over ``positions`` (None: the plain graph)."""
        return Graph(
            self.n_layers, self.n_heads, parallel_attn_mlp=self.parallel_attn_mlp, split_qkv=self.split_qkv,
            attn_only=self.attn_only, d_model=self.d_model, n_kv_heads=self.n_kv_heads, positions=positions,
            mlp_units=self.mlp_units, d_mlp=self.d_mlp, features=self.features,
        )

    @property
    def plain(self) -> Graph:
        """The graph without positions (itself when it has none)."""
        if self.positions is None:
            return self
        if not hasattr(self, "_plain"):
            self._plain = self.with_positions(None)
        return self._plain

    @property
    def n_positions(self) -> int:
        """Number of positions (1 in a plain graph)."""
        return 1 if self.positions is None else len(self.positions)

    def config(self) -> dict[str, Any]:
        """The ``cfg`` dict written to JSON (EAP-IG's keys, ``d_model`` where known, plus ``split_qkv``)."""
        cfg: dict[str, Any] = {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "parallel_attn_mlp": self.parallel_attn_mlp,
            "split_qkv": self.split_qkv,
            "attn_only": self.attn_only,
        }
        if self.d_model is not None:
            cfg["d_model"] = self.d_model
        if self.n_kv_heads is not None:
            cfg["n_key_value_heads"] = self.n_kv_heads
            cfg["kv_inputs"] = "per-query-head"
        if self.positions is not None:
            cfg["positions"] = list(self.positions)
        if self.features is not None:
            cfg["mlp_units"] = self.mlp_units
            cfg.update(self.features.config())
        elif self.mlp_units != "whole":
            cfg["mlp_units"], cfg["d_mlp"] = self.mlp_units, self.d_mlp
        return cfg

    def shape(self) -> tuple[Any, ...]:
        """What decides the node and edge sets, other than q/k/v splitting: (layers, heads, parallel, attn-only),
        and the MLP units where they are not whole MLPs."""
        base = (self.n_layers, self.n_heads, self.parallel_attn_mlp, self.attn_only)
        if self.features is not None:
            return (*base, self.mlp_units, self.features.features, self.features.skip)
        return base if self.mlp_units == "whole" else (*base, self.mlp_units, self.d_mlp)

    def describe(self) -> str:
        """The model shape in words: "a 2-layer model with 4 heads per layer" (+ parallel / attention-only)."""
        extra = ", parallel attention and MLP" if self.parallel_attn_mlp else ""
        extra += ", attention only" if self.attn_only else ""
        extra += f", d_model {self.d_model}" if self.d_model is not None else ""
        if self.features is not None:
            extra += f", {self.features.n_features} transcoder features in MLPs {[layer for layer, _ in self.features.features]}"
        elif self.mlp_units != "whole":
            extra += f", MLP {self.mlp_units} ({self.d_mlp} per layer)"
        return f"a {self.n_layers}-layer model with {self.n_heads} heads per layer{extra}"

    def check_fits(self, other: Graph, what: str, *, qkv: bool = True, positions: bool = True, features: bool = True) -> None:
        """Raise a one-line ValueError unless ``other`` (the graph ``what`` was made for) has this shape.

        ``qkv=False`` allows a different q/k/v split (known circuits merge their q/k/v edges);
        ``positions=False`` other positions (node classes do not depend on them); ``features=False``
        other transcoder features in the same layers (edges named in one are looked up by name).
        """
        mine, theirs = self.shape(), other.shape()
        if not features and self.features is not None and other.features is not None:
            mine, theirs = (*mine[:5], [layer for layer, _ in mine[5]]), (*theirs[:5], [layer for layer, _ in theirs[5]])
        if theirs != mine or (
            other.d_model is not None and self.d_model is not None and other.d_model != self.d_model
        ):
            raise ValueError(f"{what} is for {other.describe()}, but this model is {self.describe()}")
        if positions and other.positions != self.positions:
            def say(p: tuple[str, ...] | None) -> str:
                return "no positions" if p is None else f"positions {', '.join(p)}"
            raise ValueError(f"{what} has {say(other.positions)}, but this graph has {say(self.positions)}")
        if qkv and other.split_qkv != self.split_qkv:
            split = "split into q/k/v" if other.split_qkv else "not split into q/k/v"
            raise ValueError(f"{what} has head inputs {split}; build the graph with split_qkv={other.split_qkv}")

    # ------------------------------------------------------------------ index helpers
    def head_src(self, layer: int, head: int = 0) -> int:
        """Source index of head ``head`` of ``layer`` (heads of a layer are consecutive); ``layer =
        n_layers`` gives the number of sources."""
        return (self._layer_start[layer] if layer < self.n_layers else len(self.sources)) + head

    def mlp_src(self, layer: int) -> int:
        """Source index of the MLP of ``layer`` (right after its heads)."""
        if self.attn_only:
            raise ValueError("an attention-only graph has no MLP nodes")
        if self.mlp_units != "whole" and not (self.features is not None and self.features.of_layer(layer) is None):
            raise ValueError(f"a graph with MLP {self.mlp_units} has no whole-MLP source in layer {layer}; see mlp_sources(layer)")
        return self._mlp_sources[layer].start

    def mlp_sources(self, layer: int) -> range:
        """Source indices of the MLP units of ``layer`` (the one MLP node, or its neurons)."""
        return self._mlp_sources[layer]

    def mlps_before(self, upto: int) -> int:
        """How many layers' MLPs lie wholly among the sources [0, upto): the layer a destination reading those
        sources belongs to (``n_layers`` for the logits), i.e. how far a cross-layer feature has written by then."""
        if self.attn_only:
            return 0
        return sum(1 for r in self._mlp_sources if r.stop <= upto)

    def head_rows(self, layer: int) -> list[tuple[int, int, int]]:
        """Destination rows (q, k, v) of each head of ``layer``; one row thrice if q/k/v are not split."""
        return self._head_rows[layer]

    def mlp_row(self, layer: int) -> int:
        """Destination row of the MLP of ``layer`` (-1 in attention-only graphs)."""
        return self._mlp_rows[layer]

    @property
    def logits_row(self) -> int:
        """Destination row of ``logits`` (the last one)."""
        return len(self.destinations) - 1

    # ------------------------------------------------------------------ lookups
    def components(self) -> list[Node]:
        """The computing units a circuit keeps or drops (heads and MLPs), in forward order."""
        return [n for n in self.sources if n.kind.component]

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def nodes(self) -> tuple[Node, ...]:
        """All nodes in forward order (sources, then ``logits``)."""
        return self.sources + (self.destinations[-1].node,)

    @property
    def all_nodes(self) -> tuple[Node, ...]:
        """`nodes` and the inputs of split MLPs (``m3`` in a neuron or feature graph: a destination that
        the layer's units read, not a source), each just before its layer's units; for drawing."""
        if self.mlp_units == "whole":
            return self.nodes
        starts = {r.start: layer for layer, r in enumerate(self._mlp_sources)}
        out: list[Node] = []
        for i, n in enumerate(self.sources):
            layer = starts.get(i)
            if layer is not None and n.kind is not MLP:
                out.append(Node(layer, MLP))
            out.append(n)
        return (*out, self.destinations[-1].node)

    def split_mlp_inputs(self) -> dict[str, str]:
        """Each unit of a split MLP (a neuron, a feature, an error or skip node) -> the name of the
        MLP's input it reads (``m3``); empty when every MLP is whole."""
        if self.mlp_units == "whole":
            return {}
        out = {}
        for layer, r in enumerate(self._mlp_sources):
            if self.sources[r.start].kind is not MLP:
                out.update({self.sources[i].name: MLP.pattern.format(layer=layer, index=-1) for i in r})
        return out

    def has_edge(self, name: str) -> bool:
        """Whether ``name`` is an edge of this graph."""
        return self._find(name) is not None

    def edge_index(self, name: str) -> int:
        """Index of the edge called ``name``; a ValueError with close matches otherwise."""
        found = self._find(name)
        if found is not None:
            return found
        close = difflib.get_close_matches(name, self._names_near(name), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else (
            "; edge names look like 'a0.h1->m2' or 'input->a1.h0<q>'"
        )
        raise ValueError(f"edge {name!r} is not in this graph{hint}")

    def _find(self, name: str) -> int | None:
        """The index of edge ``name`` read off its parts (source, destination, position), or None."""
        if not isinstance(name, str):
            return None
        base, at, pos = name.partition("@")
        src, arrow, dst = base.partition("->")
        s, d = self.src_index.get(src), self.dst_index.get(dst)
        if not arrow or s is None or d is None or bool(at) != (self.positions is not None):
            return None
        p = self._pos_index.get(pos, -1) if at else 0
        first = int(self.edge_id[d, s])
        return None if first < 0 or p < 0 else first + p

    def _names_near(self, name: str, limit: int = 20000) -> list[str]:
        """Edge names to suggest from: those sharing the source or destination (else the first ones)."""
        src, _, dst = name.partition("@")[0].partition("->")
        s, d = self.src_index.get(src), self.dst_index.get(dst, self.dst_index.get(dst.split("<")[0]))
        pick = torch.zeros(self.n_edges, dtype=torch.bool)
        if s is not None:
            pick |= self.edge_src == s
        if d is not None:
            pick |= self.edge_dst == d
        idx = pick.nonzero().squeeze(1)[:limit].tolist() if bool(pick.any()) else range(min(limit, self.n_edges))
        return [self.edges[i].name for i in idx]

    def edges_out_of(self, nodes: Iterable[str]) -> Tensor:
        """[n_edges] bool: the edges whose source is one of ``nodes`` (names), read off the index tensors."""
        wanted = set(nodes)
        return torch.tensor([n.name in wanted for n in self.sources], dtype=torch.bool)[self.edge_src]

    def edge_mask(self, edges: Iterable[str] | Tensor) -> Tensor:
        """[n_edges] bool mask from edge names (or pass a mask through, checked)."""
        if isinstance(edges, Tensor):
            if edges.shape[-1] != self.n_edges:
                raise ValueError(f"an edge mask needs {self.n_edges} entries, got shape {tuple(edges.shape)}")
            return edges.to(torch.bool)
        mask = torch.zeros(self.n_edges, dtype=torch.bool)
        for name in edges:
            mask[self.edge_index(name)] = True
        return mask

    @property
    def split_mlps(self) -> bool:
        """Whether some MLP is split into units (neurons, transcoder features): its output is then no one source."""
        return self.mlp_units != "whole"

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of the dense edge state: (n_dst, n_src), plus (n_positions,) in a positional graph."""
        return (*self.upstream.shape, *((self.n_positions,) if self.positions is not None else ()))

    def dense(self, edge_mask: Tensor) -> Tensor:
        """[..., n_edges] bool -> [..., n_dst, n_src(, n_positions)] bool (False off the edges)."""
        out = torch.zeros(*edge_mask.shape[:-1], *self.state_shape, dtype=torch.bool, device=edge_mask.device)
        out[(..., *self._edge_coords(edge_mask.device))] = edge_mask
        return out

    def sparse(self, dense: Tensor) -> Tensor:
        """[..., n_dst, n_src(, n_positions)] -> [..., n_edges]: the values on the edges."""
        return dense[(..., *self._edge_coords(dense.device))]

    def _edge_coords(self, device: torch.device) -> tuple[Tensor, ...]:
        coords = (self.edge_dst, self.edge_src) + ((self.edge_pos,) if self.positions is not None else ())
        return tuple(c.to(device) for c in coords)

    def to_networkx(self, edge_mask: Tensor | None = None, scores: Tensor | None = None) -> Any:
        """A ``networkx.MultiDiGraph`` of the (masked) edges; attributes ``qkv``, ``score``, ``name``.

        A multigraph because a source can feed one head through q, k and v at once.
        """
        import networkx as nx

        g = nx.MultiDiGraph()
        for node in self.nodes:
            g.add_node(node.name, layer=node.layer, kind=str(node.kind), head=node.head)
        for i, e in enumerate(self.edges):
            if edge_mask is not None and not bool(edge_mask[i]):
                continue
            score = None if scores is None else float(scores[i])
            key = (e.qkv or "") + ("" if e.pos is None else f"@{e.pos}")
            g.add_edge(e.src.name, e.dst.node.name, key=key, qkv=e.qkv, pos=e.pos, score=score, name=e.name)
        return g

    def __repr__(self) -> str:
        return (
            f"Graph(n_layers={self.n_layers}, n_heads={self.n_heads}, "
            f"parallel_attn_mlp={self.parallel_attn_mlp}, split_qkv={self.split_qkv}, attn_only={self.attn_only}, "
            f"sources={len(self.sources)}, destinations={len(self.destinations)}, edges={self.n_edges}"
            + ("" if self.positions is None else f", positions={list(self.positions)}") + ")"
        )



def _layout_of(ts: FeatureSet, chosen: Mapping[int, Iterable[int]] | None) -> FeatureLayout:
    """The layout of a feature graph over ``ts``: the chosen features (default all) of its layers."""
    info = ts.graph_info()
    per = {int(k): v for k, v in info["layers"].items()}
    if chosen is None:
        chosen = {layer: range(per[layer]["n_features"]) for layer in ts.layers}
    layout = FeatureLayout.of(chosen, [layer for layer in chosen if per.get(layer, {}).get("skip")], info)
    check_layout(layout, ts)
    return layout


def check_layout(layout: FeatureLayout, ts: FeatureSet) -> None:
    """A one-line ValueError unless ``ts`` has every layer and feature of ``layout`` (and its skip paths)."""
    info = ts.graph_info()
    per = {int(k): v for k, v in info["layers"].items()}
    for layer, idx in layout.features:
        if layer not in per:
            raise ValueError(f"features of layer {layer} were asked for, but the transcoders cover layers {sorted(per)}")
        n = int(per[layer]["n_features"])
        if idx and not 0 <= idx[0] <= idx[-1] < n:
            raise ValueError(f"layer {layer}: feature indices must lie in [0, {n}), got {idx[0]}..{idx[-1]}")
        if bool(per[layer].get("skip")) != (layer in layout.skip):
            raise ValueError(f"layer {layer}: the graph and the transcoders disagree on a skip path; rebuild the graph from them")
