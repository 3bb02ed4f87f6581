"""A discovered circuit: kept edges, per-edge scores, the metric trace and the settings.

Saved as JSON in the graph format EAP-IG reads and writes (MIB uses it too): ``cfg`` with
``n_layers``, ``n_heads``, ``parallel_attn_mlp``, ``d_model``; ``nodes`` as ``{name: {"in_graph":
bool}}``; ``edges`` as ``{name: {"score": float, "in_graph": bool}}``, every score a number.
acdc's extras sit under an ``"acdc"`` key that other readers ignore: the settings and the metric
trace. Two layouts:

- compact (the default): ``edges`` and ``nodes`` list the circuit's own (EAP-IG reads a missing
  edge as out of the circuit with score 0, so it loads the same circuit), and every edge's score
  sits in ``acdc.scores`` as little-endian float64, zlib-compressed, base64 (NaN: untested). A
  100-edge circuit of SmolLM2-135M's 123,211-edge graph is ~1 MB, not ~9 MB.
- every edge (``every_edge=True``): every edge with its score, as EAP-IG's ``Graph.to_json`` writes
  it, for tools that read every score (EAP-IG's own selection, MIB's evaluation); untested edges
  are 0.0 there and listed in ``acdc.untested``.

Both load back equal. The older formats (bare-bool nodes, ``null`` scores) still load. Never
pickled. EAP-IG's graphs always split q/k/v, so only such circuits load there.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .files import claim
from .graph import Graph
from .interventions import check_interventions

__all__ = ["Circuit"]

FORMAT_VERSION = 3
SCORE_ENCODING = "float64-le zlib base64"


def encode_scores(scores: Tensor) -> dict[str, str]:
    """[n_edges] float64 as ``{"encoding", "data"}``: exact (NaN included), ~8 bytes an edge before zlib."""
    raw = scores.to(torch.float64).contiguous().numpy().astype("<f8").tobytes()
    return {"encoding": SCORE_ENCODING, "data": base64.b64encode(zlib.compress(raw, 6)).decode("ascii")}


def decode_scores(d: dict[str, str], n_edges: int) -> Tensor:
    """The [n_edges] float64 scores of `encode_scores`' dict; a one-line ValueError if they do not fit the graph."""
    if d.get("encoding") != SCORE_ENCODING:
        raise ValueError(f"unknown score encoding {d.get('encoding')!r} (this acdc reads {SCORE_ENCODING!r}); "
                         "a newer acdc wrote this file: upgrade acdc")
    import numpy as np

    values = np.frombuffer(zlib.decompress(base64.b64decode(d["data"])), dtype="<f8")
    if values.shape != (n_edges,):
        raise ValueError(f"the file's scores have {values.shape[0]} entries but its graph has {n_edges} edges")
    return torch.from_numpy(values.astype(np.float64))


def graph_json(graph: Graph, in_graph: Tensor, scores: Tensor, extra: dict[str, Any], *,
               every_edge: bool = False) -> dict[str, Any]:
    """The JSON dict of edges ``in_graph`` [n_edges] with ``scores`` [n_edges] (NaN: untested), in the
    compact layout or, with ``every_edge``, EAP-IG's layout of every edge (see the module docstring)."""
    idx = in_graph.nonzero().squeeze(1).tolist()
    used = {graph.sources[s].name for s in graph.edge_src[idx].tolist()}
    used |= {graph.destinations[d].node.name for d in graph.edge_dst[idx].tolist()}
    if not every_edge:
        kept = scores[idx].tolist()
        return {
            "cfg": graph.config(),
            "nodes": {n.name: {"in_graph": True} for n in graph.nodes if n.name in used},
            "edges": {graph.edges[i].name: {"score": 0.0 if math.isnan(v) else v, "in_graph": True}
                      for i, v in zip(idx, kept, strict=True)},
            "acdc": {"format_version": FORMAT_VERSION, **extra, "scores": encode_scores(scores)},
        }
    values = scores.tolist()
    kept_all = in_graph.tolist()
    untested = [e.name for e, v in zip(graph.edges, values, strict=True) if math.isnan(v)]
    edges = {
        e.name: {"score": 0.0 if math.isnan(v) else v, "in_graph": k}
        for e, v, k in zip(graph.edges, values, kept_all, strict=True)
    }
    return {
        "cfg": graph.config(),
        "nodes": {n.name: {"in_graph": n.name in used} for n in graph.nodes},
        "edges": edges,
        "acdc": {"format_version": FORMAT_VERSION, **extra, "untested": untested},
    }


def read_graph_json(d: dict[str, Any]) -> tuple[Graph, Tensor, Tensor, dict[str, Any]]:
    """(graph, in_graph, scores, acdc extras) from a dict in this format or the older one."""
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
    extra = dict(d.get("acdc", {}))
    for name in extra.pop("untested", []):
        scores[graph.edge_index(name)] = math.nan
    if "scores" in extra:  # the compact layout: every score, exactly
        scores = decode_scores(extra.pop("scores"), graph.n_edges)
    return graph, in_graph, scores, extra


@dataclass(eq=False)
class Circuit:
    """The result of circuit discovery.

    graph:        the model's graph (names, order).
    in_graph:     [n_edges] bool, the kept edges.
    scores:       [n_edges] float64, the measured effect of each edge (NaN where untested).
    metric_trace: metric of the current circuit after each tested edge, in visiting order.
    settings:     how it was found (method, metric, threshold, ablation, ...).
    notes:        a researcher's labels and notes per node, ``{node: {"label": str, "note": str}}``
                  (the explorer writes them; images show the labels).
    interventions: edits of nodes kept with the circuit (`acdc.interventions.Intervention` as dicts; the
                  explorer's list, replayed with `Explorer.intervene` or `acdc.edits.intervened_logits`).
    """

    graph: Graph
    in_graph: Tensor
    scores: Tensor
    metric_trace: list[float] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, dict[str, str]] = field(default_factory=dict)
    interventions: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.graph.n_edges
        self.in_graph = torch.as_tensor(self.in_graph, dtype=torch.bool).cpu()
        self.scores = torch.as_tensor(self.scores, dtype=torch.float64).cpu()
        if self.in_graph.shape != (n,) or self.scores.shape != (n,):
            raise ValueError(f"in_graph and scores need one entry per edge ({n})")
        self.notes = check_notes(self.notes, self.graph)
        self.interventions = check_interventions(self.interventions)

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

    def __len__(self) -> int:
        """Number of kept edges."""
        return self.n_edges

    def __contains__(self, item: object) -> bool:
        """Whether an edge (by name) is kept, or a node (by name) is in the circuit."""
        if not isinstance(item, str):
            return False
        if self.graph.has_edge(item):
            return bool(self.in_graph[self.graph.edge_index(item)])
        return item in self.nodes

    def score(self, *args: Any, **kwargs: Any) -> float:
        """Not a method: per-edge scores are `edge_score` / `scores`; recovery is `acdc.recovery`."""
        raise AttributeError(
            "Circuit.score does not exist: an edge's effect is circuit.edge_score(name) (all of them: "
            "circuit.scores); how well a circuit recovers a truth is acdc.recovery(circuit, truth)"
        )

    def edge_score(self, edge: str) -> float:
        """Measured effect of one edge (NaN if it was never tested)."""
        return float(self.scores[self.graph.edge_index(edge)])

    def at_any_position(self) -> Circuit:
        """A positional circuit as a circuit of the plain graph: an edge is kept if it is kept at some
        position, its score the one of largest magnitude over its positions (itself without positions)."""
        g = self.graph
        if g.positions is None:
            return self
        P = g.n_positions
        s = self.scores.view(-1, P)
        best = torch.nan_to_num(s.abs(), nan=-1.0).argmax(1, keepdim=True)
        return Circuit(g.plain, self.in_graph.view(-1, P).any(1), s.gather(1, best)[:, 0],
                       list(self.metric_trace), {**self.settings, "positions": "any"}, dict(self.notes),
                       list(self.interventions))

    def live_mask(self) -> Tensor:
        """[n_edges] bool: kept edges on some path from ``input`` to ``logits`` in the circuit."""
        g = self.graph
        kept = self.in_graph.tolist()
        src = [g.sources[s].name for s in g.edge_src.tolist()]
        dst = [g.destinations[d].node.name for d in g.edge_dst.tolist()]
        hub = g.split_mlp_inputs()  # unit -> its MLP's input (m3 of a neuron or feature graph), which feeds it
        units: dict[str, list[str]] = {}
        for u, h in hub.items():
            units.setdefault(h, []).append(u)
        from_input, to_logits = {"input"}, {"logits"}
        for i in range(g.n_edges):  # edges are sorted by destination in forward order
            if kept[i] and src[i] in from_input:
                from_input.add(dst[i])
                from_input.update(units.get(dst[i], ()))
        for i in reversed(range(g.n_edges)):
            if kept[i] and dst[i] in to_logits:
                to_logits.add(src[i])
                if src[i] in hub:
                    to_logits.add(hub[src[i]])
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

    def to_graphml(self, path: str | Path, *, classes: Any = None, overwrite: bool = False) -> Path:
        """Write the kept edges as GraphML (the `to_networkx` DiGraph and its attributes); an existing file is
        refused unless ``overwrite``."""
        import networkx as nx

        path = claim(path, overwrite)
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
    def to_dict(self, *, every_edge: bool = False) -> dict[str, Any]:
        """The JSON dict (see the module docstring): compact, or with ``every_edge`` EAP-IG's layout of every edge."""
        extra: dict[str, Any] = {"settings": self.settings, "metric_trace": [float(x) for x in self.metric_trace]}
        if self.notes:
            extra["notes"] = self.notes
        if self.interventions:
            extra["interventions"] = self.interventions
        return graph_json(self.graph, self.in_graph, self.scores, extra, every_edge=every_edge)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Circuit:
        graph, in_graph, scores, extra = read_graph_json(d)
        return cls(graph, in_graph, scores, list(extra.get("metric_trace", [])), dict(extra.get("settings", {})),
                   dict(extra.get("notes", {})), list(extra.get("interventions", [])))

    def to_json(self, path: str | Path, *, overwrite: bool = False, every_edge: bool = False) -> Path:
        """Write the circuit as JSON (EAP-IG/MIB format; compact unless ``every_edge``, see the module docstring);
        returns the path. An existing file is refused unless ``overwrite`` (`acdc.files.claim`)."""
        return write_json(self.to_dict(every_edge=every_edge), claim(path, overwrite))

    @classmethod
    def from_json(cls, path: str | Path) -> Circuit:
        """Load a circuit written by `to_json` or by EAP-IG's ``Graph.to_json``."""
        return cls.from_dict(read_json(path))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Circuit):
            return NotImplemented
        return (
            self.graph.config() == other.graph.config()
            and torch.equal(self.in_graph, other.in_graph)
            and same_values(self.scores, other.scores)
            and [float(x) for x in self.metric_trace] == [float(x) for x in other.metric_trace]
            and self.settings == other.settings
            and self.notes == other.notes
            and self.interventions == other.interventions
        )


NOTE_FIELDS = {"label": 200, "note": 10_000}  # field -> most characters


def check_notes(notes: Any, graph: Graph) -> dict[str, dict[str, str]]:
    """Notes checked: known node names, only "label" and "note", strings of sensible length; empty ones dropped."""
    if not isinstance(notes, dict):
        raise ValueError(f"notes must map node names to {{'label': ..., 'note': ...}}, got {type(notes).__name__}")
    names = {n.name for n in graph.nodes}
    out: dict[str, dict[str, str]] = {}
    for node, entry in notes.items():
        if node not in names:
            raise ValueError(f"notes name {node!r}, which is not a node of this graph ({graph.describe()})")
        if not isinstance(entry, dict) or set(entry) - set(NOTE_FIELDS):
            raise ValueError(f"the notes of {node!r} must be an object with 'label' and/or 'note', got {entry!r:.80}")
        kept = {}
        for key, most in NOTE_FIELDS.items():
            value = entry.get(key, "")
            if not isinstance(value, str) or len(value) > most:
                raise ValueError(f"the {key} of {node!r} must be a string of at most {most} characters")
            if value.strip():
                kept[key] = value
        if kept:
            out[node] = kept
    return out


def write_json(d: dict[str, Any], path: str | Path) -> Path:
    """Write ``d`` as strict JSON (no NaN) to ``path``, creating folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d, allow_nan=False))
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``; a one-line ValueError if it is not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not JSON (a binary file, not UTF-8 text)") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a JSON file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object (a circuit or graph JSON)")
    return data


def same_values(a: Tensor, b: Tensor) -> bool:
    """Equal tensors, NaN equal to NaN (untested edges)."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
