"""Circuit images with graphviz: bottom-up by layer, q/k/v in three colours, width from effect.

``render(circuit, "c.png")`` (also ``.svg``, ``.pdf``; ``.dot`` writes the source without
running graphviz) and ``render_comparison(found, truth, "cmp.png")``. Layout: ``input`` at the
bottom, ``logits`` on top, one row per layer (a layer's MLP on a row just above its heads, as
it reads them; side by side in parallel-attention models), labelled on the left. Heads are
boxes, MLPs ellipses. A positional circuit is drawn as a grid: layers bottom-up, positions left
to right, columns labelled with the position names and the example prompt's text. Nodes are coloured by class when classes are given (a mapping class ->
node names, or anything with a ``.classes`` such as a `KnownCircuit`), else by layer.

Rendering needs graphviz's ``dot`` program; without it `DotNotFoundError` says in one line how
to install it.
"""

from __future__ import annotations

import colorsys
import math
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .circuit import Circuit
from .evaluation import as_mask
from .graph import Edge, Graph, Node
from .known import KnownCircuit

__all__ = [
    "DotNotFoundError", "QKV_COLORS", "circuit_title", "dot_available", "edge_width", "layout", "to_dot", "render", "comparison_dot", "render_comparison",
]

INSTALL_HINT = (
    "graphviz's `dot` program was not found; install it (Debian/Ubuntu: apt-get install graphviz, "
    "macOS: brew install graphviz) to render images"
)
FORMATS = ("png", "svg", "pdf", "dot")
QKV_COLORS = {"q": "#d62728", "k": "#1f77b4", "v": "#2ca02c", None: "#555555"}
QKV_NAMES = {"q": "query (q)", "k": "key (k)", "v": "value (v)", None: "MLP / logits input"}
CLASS_PALETTE = [
    "#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
    "#bc80bd", "#ccebc5", "#ffed6f", "#d9d9d9",
]
COMPARISON = {
    "found, true": {"color": "#1a9850", "style": "solid", "penwidth": "2.4"},
    "found, not true": {"color": "#f46d43", "style": "dashed", "penwidth": "1.6"},
    "missed": {"color": "#7b3294", "style": "dotted", "penwidth": "2.0"},
}
MAX_SCORE_LABELS = 60  # above this many edges, scores go to tooltips only (widths still show them)


class DotNotFoundError(RuntimeError):
    """graphviz's ``dot`` program is missing."""

    def __init__(self) -> None:
        super().__init__(INSTALL_HINT)


def dot_available() -> bool:
    """Whether graphviz's ``dot`` program is on PATH."""
    return shutil.which("dot") is not None


# ---------------------------------------------------------------------- DOT
def to_dot(
    circuit: Circuit,
    *,
    classes: Any = None,
    show_scores: bool = True,
    show_all: bool = False,
    title: str | None = None,
) -> Any:
    """The circuit as a ``graphviz.Digraph`` (no ``dot`` program needed to build it).

    classes: class -> node names (or an object with ``.classes``) to colour nodes by class.
    show_scores: label edges with their measured effect (tooltips only above 60 edges).
    show_all: also draw kept edges with no path from input to logits (hidden by default).

    Plain and positional circuits take one path: `layout` places the nodes, `_canvas` draws them
    (layer rows; a grid of positions when there are several), and the edges come from the layout.
    """
    g = circuit.graph
    classes = _as_classes(classes, g)
    lay = layout(circuit, circuit.in_graph.clone() if show_all else circuit.live_mask())
    head = title if title is not None else circuit_title(circuit, len(lay["edges"]))
    dot = _canvas(g, lay, classes, head, circuit.notes)
    labels = show_scores and len(lay["edges"]) <= MAX_SCORE_LABELS
    fontsize = "8" if lay["columns"] else "9"
    for e in lay["edges"]:
        i = e["index"]
        dot.edge(e["src"], e["dst"], **_scored_edge(g.edges[i], float(circuit.scores[i]), lay["top"], labels, fontsize))
    hub = circuit.graph.split_mlp_inputs()  # a split MLP's input feeds its drawn units: a dotted line, no effect of its own
    drawn = {n["id"] for n in lay["nodes"]}
    for n in lay["nodes"]:
        h = hub.get(n["name"])
        if h is not None and (h if n["pos"] is None else f"{h}@{n['pos']}") in drawn:
            dot.edge(h if n["pos"] is None else f"{h}@{n['pos']}", n["id"], style="dotted", color="#999999", arrowhead="none",
                     tooltip=f"{n['name']} reads {h}'s input")
    for a in lay["attend"]:
        src_p, dst_p = a["src"].rsplit("@", 1)[1], a["dst"].rsplit("@", 1)[1]
        dot.edge(a["src"], a["dst"], style="dashed", color="#999999", constraint="false",
                 tooltip=f"{a['head']} attends from {dst_p} to {src_p}", id=f"attend:{a['head']}@{src_p}->{dst_p}")
    used = {e["qkv"] for e in lay["edges"]}
    rows = [(QKV_COLORS[k], "solid", f"into {QKV_NAMES[k]}") for k in (*"qkv", None) if k in used]
    if lay["columns"]:
        rows.append(("#999999", "dashed", "attention: from key/value positions to where the head acts"))
        note = "columns: positions (example prompt's text)"
    else:
        note = "edge width: |effect|" if any(e["score"] is not None for e in lay["edges"]) else ""
    _legend(dot, rows, note, classes, lay)
    return dot


def layout(circuit: Circuit, mask: Any = None) -> dict[str, Any]:
    """Where each drawn node sits, by the images' rules, as coordinates (the explorer page draws from them).

    Rows bottom-up: ``input``, then per layer its heads and, one row above, its MLP (on the heads'
    row when attention and MLP run in parallel), ``logits`` on top; only rows that have a node.
    In a row, nodes in graph order one slot apart, centred on 0. A positional circuit has one
    column per position, ``width`` slots apart, with a node in the column of every position where
    an edge of the circuit enters or leaves it.

    mask: the edges drawn, [n_edges] bool (default: those on a path from input to logits).
    Returns ``{"nodes": [{id, name, kind, layer, head, pos, x, y, fill}], "rows": [{label, y}],
    "columns": [{name, text, x}], "edges": [{index, name, src, dst, qkv, pos, score, width}],
    "attend": [{head, src, dst}], "top": largest |score|}``: x in node slots, y in rows (0 = the bottom row); node ids
    are the node names (``name@POS`` in a positional circuit); edge widths as in the images;
    ``attend`` (positional only) links a head's key/value positions to the positions it acts at.
    """
    g = circuit.graph
    mask = circuit.live_mask() if mask is None else mask
    idx = mask.nonzero().squeeze(1).tolist()
    positional = g.positions is not None
    names = g.positions or ("",)
    scores = circuit.scores
    finite = [abs(float(scores[i])) for i in idx if not math.isnan(float(scores[i]))]
    top = max(finite) if finite else 0.0

    def node_id(n: Node, p: str) -> str:
        return f"{n.name}@{p}" if positional else n.name

    cells: dict[str, tuple[Node, str]] = {}
    reads: dict[str, set[str]] = {}  # head -> positions of its k/v inputs
    acts: dict[str, set[str]] = {}  # head -> positions of its q input or its output
    edges = []
    for i in idx:
        e = g.edges[i]
        p = e.pos or ""
        src, dst = node_id(e.src, p), node_id(e.dst.node, p)
        cells[src], cells[dst] = (e.src, p), (e.dst.node, p)
        s = float(scores[i])
        edges.append({"index": i, "name": e.name, "src": src, "dst": dst, "qkv": e.qkv, "pos": e.pos,
                      "score": None if math.isnan(s) else s, "width": round(edge_width(s, top), 3)})
        if e.src.kind.attends:
            acts.setdefault(e.src.name, set()).add(p)
        if e.dst.node.kind.attends:
            (acts if e.qkv in ("q", None) else reads).setdefault(e.dst.node.name, set()).add(p)
    order = {n.name: k for k, n in enumerate(g.all_nodes)}
    rows = sorted({_row(g, n) for n, _ in cells.values()})
    y_of = {r: k for k, r in enumerate(rows)}
    per_cell: dict[tuple[tuple[int, int], str], list[str]] = {}
    for key, (n, p) in sorted(cells.items(), key=lambda kv: (order[kv[1][0].name], names.index(kv[1][1]))):
        per_cell.setdefault((_row(g, n), p), []).append(key)
    width = max([len(v) for v in per_cell.values()] + [1]) + 0.5 if positional else 0.0
    x_of = {p: k * width for k, p in enumerate(names)}
    nodes = []
    for (row, p), ids in per_cell.items():
        for k, key in enumerate(ids):
            n = cells[key][0]
            nodes.append({"id": key, "name": n.name, "kind": str(n.kind), "layer": n.layer, "head": n.head, "pos": p or None,
                          "x": x_of[p] + k - (len(ids) - 1) / 2, "y": y_of[row], "fill": _node_style(n, g, {}, {})["fillcolor"]})
    texts = circuit.settings.get("position_labels") or [""] * len(names)
    columns = [{"name": p, "text": t, "x": x_of[p]} for p, t in zip(names, texts, strict=False)] if positional else []
    attend = [{"head": h, "src": f"{h}@{a}", "dst": f"{h}@{b}"}
              for h, at in reads.items() for a in sorted(at, key=names.index)
              for b in sorted(acts.get(h, set()) - {a}, key=names.index)]
    row_labels = [{"label": _row_label(g, layer, sub), "y": y_of[(layer, sub)]} for layer, sub in rows]
    return {"nodes": nodes, "rows": row_labels, "columns": columns, "edges": edges, "attend": attend, "top": top}


def _row_label(g: Graph, layer: int, sub: int) -> str:
    return "input" if layer < 0 else "output" if layer == g.n_layers else f"layer {layer}" + (" MLP" if sub else "")


def edge_width(s: float, top: float) -> float:
    """Drawn width of an edge with score ``s`` when the largest |score| drawn is ``top`` (1 if unknown)."""
    return 1.0 if math.isnan(s) or top == 0 else 0.8 + 4.2 * abs(s) / top


def _scored_edge(e: Edge, s: float, top: float, label: bool, fontsize: str) -> dict[str, str]:
    """Edge attributes: q/k/v colour, width from |score| / ``top``, tooltip, and the score as label if asked."""
    attrs = {"color": QKV_COLORS[e.qkv], "penwidth": f"{edge_width(s, top):.2f}", "id": f"edge:{e.name}",
             "tooltip": f"{e.name}: {'untested' if math.isnan(s) else f'{s:+.4g}'}"}
    if label and not math.isnan(s):
        attrs.update(label=f"{s:.2g}", fontsize=fontsize, fontcolor=QKV_COLORS[e.qkv])
    return attrs


def comparison_dot(found: Circuit, truth: Any, *, classes: Any = None, title: str | None = None) -> Any:
    """``found`` against ``truth`` as a ``graphviz.Digraph``: true positives, false positives and
    missed edges in three styles (a q/k/v letter on each edge into a head).

    truth: a `KnownCircuit`, a `Circuit` on the same graph, or edge names. Its classes colour
    the nodes unless ``classes`` is given.
    """
    if found.graph.positions is not None and isinstance(truth, KnownCircuit) and truth.graph().positions is None:
        found = found.at_any_position()  # drawn against a truth without positions
    g = found.graph
    true = as_mask(truth, g)
    kinds = {
        "found, true": found.in_graph & true,
        "found, not true": found.in_graph & ~true,
        "missed": ~found.in_graph & true,
    }
    classes = _as_classes(classes if classes is not None else (truth if hasattr(truth, "classes") else None), g)
    n = {k: int(m.sum()) for k, m in kinds.items()}
    head = title if title is not None else (
        f"found {int(found.in_graph.sum())} edges vs {int(true.sum())} true: "
        f"{n['found, true']} found and true, {n['found, not true']} found but not true, {n['missed']} missed"
    )
    lay = layout(found, found.in_graph | true)
    dot = _canvas(g, lay, classes, head, found.notes)
    kind_of = {i: kind for kind, mask in kinds.items() for i in mask.nonzero().squeeze(1).tolist()}
    for le in lay["edges"]:
        e, kind = g.edges[le["index"]], kind_of[le["index"]]
        attrs = {**COMPARISON[kind], "tooltip": f"{e.name}: {kind}", "id": f"edge:{e.name}", "class": kind.replace(", ", "-").replace(" ", "-")}
        if e.qkv:  # at mid-edge: parallel q/k/v edges are drawn apart, so their letters are too
            attrs.update(label=f" {e.qkv}", fontsize="10", fontcolor=QKV_COLORS[e.qkv])
        dot.edge(le["src"], le["dst"], **attrs)
    rows = [(COMPARISON[k]["color"], COMPARISON[k]["style"], f"{k} ({n[k]})") for k in COMPARISON]
    _legend(dot, rows, "q / k / v: the head input the edge enters", classes, lay)
    return dot


# ---------------------------------------------------------------------- files
def render(
    circuit: Circuit,
    path: str | Path,
    *,
    classes: Any = None,
    show_scores: bool = True,
    show_all: bool = False,
    title: str | None = None,
) -> Path:
    """Draw the circuit to ``path``; the format comes from the extension (png, svg, pdf, dot)."""
    return _write(to_dot(circuit, classes=classes, show_scores=show_scores, show_all=show_all, title=title), path)


def render_comparison(found: Circuit, truth: Any, path: str | Path, *, classes: Any = None, title: str | None = None) -> Path:
    """Draw ``found`` against ``truth`` to ``path`` (see `comparison_dot`)."""
    return _write(comparison_dot(found, truth, classes=classes, title=title), path)


def _write(dot: Any, path: str | Path) -> Path:
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"cannot render to {path.name!r}: use a .png, .svg, .pdf or .dot file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "dot":
        path.write_text(dot.source)
        return path
    import graphviz

    try:
        data = dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise DotNotFoundError() from None
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------- layout pieces
def _row(g: Graph, node: Node) -> tuple[int, int]:
    """Sort key of the row a node sits on: (layer, its kind's row in the layer; one row if attention and MLP are parallel)."""
    return (node.layer, 0 if g.parallel_attn_mlp else node.kind.order)


def _class_of(classes: Mapping[str, Iterable[str]] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for cls, members in (classes or {}).items():
        for m in members:
            out.setdefault(m, cls)
    return out


def _layer_colour(layer: int, n_layers: int) -> str:
    """Light colours from blue (first layer) to orange (last)."""
    t = layer / max(n_layers - 1, 1)
    r, gr, b = colorsys.hls_to_rgb(0.58 - 0.5 * t, 0.85, 0.65)
    return f"#{int(r * 255):02x}{int(gr * 255):02x}{int(b * 255):02x}"


def _as_classes(classes: Any, g: Graph) -> dict[str, list[str]] | None:
    """class -> node names, checked against the circuit's graph (a KnownCircuit's shape, every name)."""
    if classes is None:
        return None
    if isinstance(classes, KnownCircuit):  # its classes name nodes of its own model shape
        g.check_fits(classes.graph(), f"the classes of known circuit {classes.name!r}", qkv=False, positions=False, features=False)
    c = getattr(classes, "classes", classes)
    if not isinstance(c, Mapping):
        raise ValueError("classes must map class names to node names (or be a KnownCircuit)")
    out = {str(k): list(v) for k, v in c.items()}
    for cls, members in out.items():
        for n in members:
            if n not in g.src_index:
                raise ValueError(f"class {cls!r} names {n!r}, which is not a node of this circuit's model ({g.describe()})")
    return out


def _canvas(g: Graph, lay: dict[str, Any], classes: dict[str, list[str]] | None, title: str,
            notes: Mapping[str, Mapping[str, str]] | None = None) -> Any:
    """A Digraph with `layout`'s nodes, a title and labelled rows: layer rows laid out by ``dot``
    (bottom-up ranks) for a plain circuit, a grid of pinned positions (``neato``) for a positional one."""
    import graphviz

    cls_of = _class_of(classes)
    colours = {c: CLASS_PALETTE[i % len(CLASS_PALETTE)] for i, c in enumerate(classes or {})}
    by_name = {n.name: n for n in g.all_nodes}
    grid = bool(lay["columns"])
    dot = graphviz.Digraph("circuit", engine="neato" if grid else "dot")
    if grid:
        dot.attr(splines="true", overlap="true")
    else:
        dot.attr(rankdir="BT", newrank="true", nodesep="0.2", ranksep="0.45")
    dot.attr(fontname="Helvetica", label=title, labelloc="t", fontsize="14", outputorder="edgesfirst")
    dot.attr("node", fontname="Helvetica", fontsize="10" if grid else "11", style="filled", penwidth="1.2")
    dot.attr("edge", arrowsize="0.6")

    def style(n: dict[str, Any]) -> dict[str, str]:
        attrs = _node_style(by_name[n["name"]], g, cls_of, colours, notes)
        if grid:
            attrs.setdefault("label", n["name"])
            attrs.update(id=f"node:{n['id']}", tooltip=f"{n['name']} at {n['pos']}")
        return attrs

    if grid:
        sx, sy = 1.2, 2.6  # inches per slot and per row
        shift = 1.2 - min([n["x"] for n in lay["nodes"]] + [0.0])  # the row labels sit at x = 0
        for n in lay["nodes"]:
            dot.node(n["id"], **style(n), pos=f"{(n['x'] + shift) * sx:.2f},{(n['y'] + 1) * sy:.2f}!")
        for c in lay["columns"]:
            label = c["name"] if not c["text"] else f"{c['name']}\n{c['text'].strip() or repr(c['text'])}"
            dot.node(f"col:{c['name']}", label, shape="plaintext", style="", fontcolor="#555555", pos=f"{(c['x'] + shift) * sx:.2f},0.3!")
        for r in lay["rows"]:
            dot.node(f"row:{r['y']}", r["label"], shape="plaintext", style="", fontcolor="#777777", pos=f"0.0,{(r['y'] + 1) * sy:.2f}!")
        right = max([n["x"] for n in lay["nodes"]] + [0.0]) + 3.0
        lay["legend_pos"] = f"{(right + shift) * sx:.2f},{(len(lay['rows']) + 1) * sy:.2f}!"
        return dot
    prev = None
    for r in lay["rows"]:
        anchor = f"row{r['y']}"
        with dot.subgraph() as s:  # type: ignore[union-attr]  # graphviz returns a context manager without name
            s.attr(rank="same")
            s.node(anchor, r["label"], shape="plaintext", style="", fontcolor="#777777", fontsize="10")
            for n in sorted((n for n in lay["nodes"] if n["y"] == r["y"]), key=lambda n: n["x"]):
                s.node(n["id"], **style(n))
        if prev is not None:
            dot.edge(prev, anchor, style="invis")
        prev = anchor
    return dot


def _node_style(n: Node, g: Graph, cls_of: dict[str, str], colours: dict[str, str],
                notes: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, str]:
    """Shape and fill of a node; its label adds its class and the researcher's label (circuit notes)."""
    cls = cls_of.get(n.name)
    fill = colours[cls] if cls is not None else (
        _layer_colour(n.layer, g.n_layers) if n.kind.component else "#e0e0e0"
    )
    shape = n.kind.shape
    style = "filled,rounded" if n.kind.rounded else "filled"
    attrs = {"shape": shape, "fillcolor": fill, "style": style, "id": f"node:{n.name}", "tooltip": n.name}
    extra = [x for x in dict.fromkeys((cls, (notes or {}).get(n.name, {}).get("label"))) if x]  # a label equal to the class once
    if extra:
        attrs["label"] = "\n".join([n.name, *extra])
    return attrs


def _legend(dot: Any, edge_rows: list[tuple[str, str, str]], note: str, classes: dict[str, list[str]] | None,
            lay: dict[str, Any]) -> None:
    """An HTML-table legend node: edge styles, a note, and the class colours (pinned right of a grid)."""
    dash = {"solid": "———", "dashed": "- - -", "dotted": "· · · ·"}
    cells = [
        f'<TR><TD ALIGN="LEFT"><FONT COLOR="{c}"><B>{dash[s]}</B></FONT></TD><TD ALIGN="LEFT">{_esc(t)}</TD></TR>'
        for c, s, t in edge_rows
    ]
    if note:
        cells.append(f'<TR><TD COLSPAN="2" ALIGN="LEFT"><I>{_esc(note)}</I></TD></TR>')
    for i, cls in enumerate(classes or {}):
        colour = CLASS_PALETTE[i % len(CLASS_PALETTE)]
        cells.append(f'<TR><TD BGCOLOR="{colour}"> </TD><TD ALIGN="LEFT">{_esc(cls)}</TD></TR>')
    table = '<<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="2" COLOR="#999999">' + "".join(cells) + "</TABLE>>"
    with dot.subgraph(name="cluster_legend") as s:
        s.attr(label="", color="white")
        s.node("legend", table, shape="plaintext", style="", id="legend")
    if "legend_pos" in lay:
        dot.node("legend", pos=lay["legend_pos"])


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def circuit_title(c: Circuit, n_drawn: int) -> str:
    """"N edges | method, metric=..., threshold=..., ablation=...", noting kept edges not drawn."""
    s = c.settings
    bits = [f"{s[k]}" if k == "method" else f"{k}={s[k]}" for k in ("method", "metric", "threshold", "ablation") if k in s]
    hidden = c.n_edges - n_drawn
    extra = f" ({hidden} without a path input -> logits hidden)" if hidden else ""
    return f"{n_drawn} edges{extra}" + (f"  |  {', '.join(bits)}" if bits else "")
