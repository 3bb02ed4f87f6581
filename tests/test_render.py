"""Rendering and exports: the files produced are checked, not just that a call returned."""

from __future__ import annotations

import math
import re
import shutil
import struct
import xml.etree.ElementTree as ET

import networkx as nx
import pytest
import torch

from acdc.circuit import Circuit
from acdc.graph import Graph
from acdc.render import QKV_COLORS, DotNotFoundError, comparison_dot, render, render_comparison, to_dot

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
SVG = "{http://www.w3.org/2000/svg}"

# Graph(2, 2): input, a0.h0, a0.h1, m0, a1.h0, a1.h1, m1, logits
LIVE = {  # a path input -> a0.h0 -> a1.h1 -> logits, and input -> m0 -> logits
    "input->a0.h0<v>": 2.0, "input->a0.h0<q>": -0.5, "a0.h0->a1.h1<k>": 1.0, "a0.h0->a1.h1<q>": 0.25,
    "a1.h1->logits": 4.0, "input->m0": 0.1, "m0->logits": math.nan,
}
DEAD = {"a0.h1->a1.h0<v>": 3.0}  # a0.h1 has no input and a1.h0 no way to the logits


def _circuit(edges: dict[str, float]) -> Circuit:
    g = Graph(2, 2)
    scores = torch.full((g.n_edges,), math.nan, dtype=torch.float64)
    for name, s in edges.items():
        scores[g.edge_index(name)] = s
    return Circuit(g, g.edge_mask(list(edges)), scores, settings={"method": "acdc", "threshold": 0.1})


@pytest.fixture()
def circuit() -> Circuit:
    return _circuit({**LIVE, **DEAD})


def _svg_edges(path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    return {g.get("id")[len("edge:"):]: g for g in root.iter(f"{SVG}g") if (g.get("id") or "").startswith("edge:")}


def _svg_nodes(path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    return {g.get("id")[len("node:"):]: g for g in root.iter(f"{SVG}g") if (g.get("id") or "").startswith("node:")}


def _y(node: ET.Element) -> float:
    """Mean y of a node's outline (SVG y grows downwards)."""
    shape = next(e for e in node.iter() if e.tag in (f"{SVG}polygon", f"{SVG}ellipse", f"{SVG}path"))
    if shape.tag == f"{SVG}ellipse":
        return float(shape.get("cy"))
    nums = [float(x) for x in re.findall(r"-?\d+\.?\d*", shape.get("points") or shape.get("d"))]
    return sum(nums[1::2]) / len(nums[1::2])


def test_live_mask(circuit):
    g = circuit.graph
    live = {g.edges[i].name for i in circuit.live_mask().nonzero().squeeze(1).tolist()}
    assert live == set(LIVE)


@needs_dot
def test_svg_names_nodes_and_counts_edges(circuit, tmp_path):
    path = render(circuit, tmp_path / "c.svg", classes={"mover": ["a1.h1"], "early": ["a0.h0"]})
    edges, nodes = _svg_edges(path), _svg_nodes(path)
    assert set(edges) == set(LIVE)  # the dead edge is hidden by default
    assert set(nodes) == {"input", "a0.h0", "a1.h1", "m0", "logits"}
    text = path.read_text()
    assert 'id="legend"' in text and "into query (q)" in text and "into key (k)" in text and "mover" in text
    for name, g in edges.items():  # q/k/v in three colours
        qkv = name[-2] if name.endswith(">") else None
        stroke = next(g.iter(f"{SVG}path")).get("stroke")
        assert stroke.lower() == QKV_COLORS[qkv], name
    # bottom-up: input lowest, then layer 0, the MLP row, layer 1, logits on top
    y = {n: _y(e) for n, e in nodes.items()}
    assert y["input"] > y["a0.h0"] > y["m0"] > y["a1.h1"] > y["logits"]
    # heads are boxes (polygons/paths), MLPs ellipses
    assert any(e.tag == f"{SVG}ellipse" for e in nodes["m0"].iter())
    assert not any(e.tag == f"{SVG}ellipse" for e in nodes["a0.h0"].iter())


@needs_dot
def test_width_follows_effect_and_show_all(circuit, tmp_path):
    path = render(circuit, tmp_path / "c.svg")
    width = {n: float(next(g.iter(f"{SVG}path")).get("stroke-width", 1)) for n, g in _svg_edges(path).items()}
    assert width["a1.h1->logits"] > width["input->a0.h0<v>"] > width["a0.h0->a1.h1<k>"] > width["input->m0"]
    everything = render(circuit, tmp_path / "all.svg", show_all=True)
    assert set(_svg_edges(everything)) == set(LIVE) | set(DEAD)


@needs_dot
@pytest.mark.parametrize("ext, magic", [("png", b"\x89PNG\r\n\x1a\n"), ("pdf", b"%PDF")])
def test_png_and_pdf(circuit, tmp_path, ext, magic):
    data = render(circuit, tmp_path / f"c.{ext}").read_bytes()
    assert data.startswith(magic)
    if ext == "png":
        w, h = struct.unpack(">II", data[16:24])  # IHDR
        assert 100 < w < 5000 and 100 < h < 5000


def test_dot_source_needs_no_binary(circuit, tmp_path):
    src = render(circuit, tmp_path / "c.dot").read_text()
    assert "rankdir=BT" in src and "a1.h1" in src and "a0.h1" not in src
    assert to_dot(circuit, show_all=True).source.count("a0.h1") >= 1


def test_bad_extension(circuit, tmp_path):
    with pytest.raises(ValueError, match=r"\.png, \.svg, \.pdf or \.dot"):
        render(circuit, tmp_path / "c.gif")


def test_missing_dot_is_one_clear_line(circuit, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot here
    with pytest.raises(DotNotFoundError) as err:
        render(circuit, tmp_path / "c.png")
    msg = str(err.value)
    assert "\n" not in msg and "apt-get install graphviz" in msg and "brew install graphviz" in msg
    assert not (tmp_path / "c.png").exists()


@needs_dot
def test_comparison(tmp_path):
    found = _circuit({**LIVE, "a1.h0->logits": 0.3})
    truth = ["input->a0.h0<v>", "a0.h0->a1.h1<k>", "a1.h1->logits", "a0.h0->m1"]
    path = render_comparison(found, truth, tmp_path / "cmp.svg")
    kinds: dict[str, set[str]] = {}
    for name, g in _svg_edges(path).items():
        kinds.setdefault(g.get("class").split()[1], set()).add(name)
    assert kinds["found-true"] == {"input->a0.h0<v>", "a0.h0->a1.h1<k>", "a1.h1->logits"}
    assert kinds["found-not-true"] == set(LIVE) - set(truth) | {"a1.h0->logits"}
    assert kinds["missed"] == {"a0.h0->m1"}
    src = comparison_dot(found, truth).source
    assert "3 found and true, 5 found but not true, 1 missed" in src
    assert 'style=dashed' in src and 'style=dotted' in src


def test_networkx_digraph_merges_qkv(circuit):
    g = circuit.to_networkx(classes={"mover": ["a1.h1"]})
    assert isinstance(g, nx.DiGraph) and not g.is_multigraph()
    e = g["a0.h0"]["a1.h1"]
    assert e["qkv"] == "qk" and e["score"] == 1.0 and e["score_q"] == 0.25 and e["score_k"] == 1.0
    assert g["input"]["a0.h0"]["score"] == 2.0 and g["input"]["a0.h0"]["qkv"] == "qv"
    assert g["a1.h1"]["logits"]["qkv"] == "" and math.isnan(g["m0"]["logits"]["score"])
    assert g.nodes["a1.h1"]["class"] == "mover" and g.nodes["a1.h1"]["layer"] == 1
    multi = circuit.to_networkx(multi=True)
    assert multi.number_of_edges() == circuit.n_edges == 8


def test_graphml_round_trip(circuit, tmp_path):
    path = circuit.to_graphml(tmp_path / "c.graphml")
    back = nx.read_graphml(path)
    assert set(back.edges) == set(circuit.to_networkx().edges)
    assert back["a0.h0"]["a1.h1"]["qkv"] == "qk" and back["a0.h0"]["a1.h1"]["score_q"] == 0.25


# ---------------------------------------------------------------------- layout (the explorer draws from it)
def test_layout_rows_slots_and_widths(circuit):
    from acdc.render import layout

    lay = layout(circuit)  # live edges only, as the images
    at = {n["id"]: (n["x"], n["y"]) for n in lay["nodes"]}
    # input, layer-0 heads, layer-0 MLP one row above them, layer 1, logits; one node per row, centred
    assert at == {"input": (0, 0), "a0.h0": (0, 1), "m0": (0, 2), "a1.h1": (0, 3), "logits": (0, 4)}
    assert [r["label"] for r in lay["rows"]] == ["input", "layer 0", "layer 0 MLP", "layer 1", "output"]
    assert lay["top"] == 4.0 and lay["columns"] == [] and lay["attend"] == []
    width = {e["name"]: e["width"] for e in lay["edges"]}
    assert width["a1.h1->logits"] == 5.0  # the largest |score|: 0.8 + 4.2
    assert width["input->a0.h0<q>"] == pytest.approx(0.8 + 4.2 * 0.5 / 4)
    assert width["m0->logits"] == 1.0  # untested
    assert next(e for e in lay["edges"] if e["name"] == "m0->logits")["score"] is None
    full = layout(circuit, circuit.in_graph)  # the dead edge too: two heads on rows 1 and 3, one slot apart
    at = {n["id"]: (n["x"], n["y"]) for n in full["nodes"]}
    assert at["a0.h0"] == (-0.5, 1) and at["a0.h1"] == (0.5, 1) and at["a1.h0"] == (-0.5, 3) and at["a1.h1"] == (0.5, 3)
    assert full["top"] == 4.0 and len(full["edges"]) == 8


def test_layout_parallel_mlp_shares_the_heads_row():
    from acdc.render import layout

    g = Graph(2, 2, parallel_attn_mlp=True)
    names = ["input->a0.h0<v>", "input->m0", "a0.h0->logits", "m0->logits"]
    c = Circuit(g, g.edge_mask(names), torch.ones(g.n_edges, dtype=torch.float64))
    at = {n["id"]: (n["x"], n["y"]) for n in layout(c)["nodes"]}
    assert at == {"input": (0, 0), "a0.h0": (-0.5, 1), "m0": (0.5, 1), "logits": (0, 2)}


def test_layout_positional_columns_and_attention_links():
    from acdc.render import layout

    g = Graph(2, 2, positions=["A", "B"])
    names = ["input->a0.h0<k>@A", "input->a0.h0<q>@B", "a0.h0->logits@B", "input->a0.h1<q>@B", "a0.h1->logits@B"]
    c = Circuit(g, g.edge_mask(names), torch.ones(g.n_edges, dtype=torch.float64),
                settings={"position_labels": ["When", " to"]})
    lay = layout(c)
    at = {n["id"]: (n["x"], n["y"]) for n in lay["nodes"]}
    # column B holds two heads side by side, so columns are 2 + 0.5 slots apart
    assert lay["columns"] == [{"name": "A", "text": "When", "x": 0.0}, {"name": "B", "text": " to", "x": 2.5}]
    assert at == {"input@A": (0, 0), "a0.h0@A": (0, 1), "input@B": (2.5, 0), "a0.h0@B": (2.0, 1),
                  "a0.h1@B": (3.0, 1), "logits@B": (2.5, 2)}
    assert lay["attend"] == [{"head": "a0.h0", "src": "a0.h0@A", "dst": "a0.h0@B"}]  # reads keys at A, acts at B


def test_node_labels_from_notes_in_images(circuit):
    circuit.notes = {"a0.h0": {"label": "previous token", "note": "checked on 3 prompts"}}
    src = to_dot(circuit).source
    assert 'label="a0.h0\nprevious token"' in src


def test_comparison_of_positional_circuits_is_a_grid():
    """One image path: a comparison of positional circuits keeps each node's positions apart."""
    g = Graph(2, 2, positions=["A", "B"])
    found = Circuit(g, g.edge_mask(["input->a0.h0<k>@A", "a0.h0->logits@B"]), torch.ones(g.n_edges, dtype=torch.float64))
    src = comparison_dot(found, ["input->a0.h0<k>@A", "input->a0.h0<q>@B"]).source
    assert "1 found and true, 1 found but not true, 1 missed" in src
    assert '"input@A" -> "a0.h0@A"' in src and '"input@B" -> "a0.h0@B"' in src and '"a0.h0@B" -> "logits@B"' in src
    assert "col:A" in src and "col:B" in src
