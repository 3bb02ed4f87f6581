"""Known circuits as data: edge counts derived by hand, names valid in the model's graph."""

from __future__ import annotations

import pytest

import acdc
from acdc import known
from acdc.graph import Graph

IOI_CLASS_SIZES = {
    "name mover": 3, "backup name mover": 8, "negative name mover": 2, "s-inhibition": 4,
    "induction": 4, "duplicate token": 3, "previous token": 2,
}
# The IOI paper's 26 heads (Wang et al. 2022, Fig. 2), pinned head by head.
IOI_CLASSES = {
    "name mover": {"a9.h9", "a9.h6", "a10.h0"},
    "backup name mover": {"a10.h10", "a10.h6", "a10.h2", "a10.h1", "a11.h2", "a9.h7", "a9.h0", "a11.h9"},
    "negative name mover": {"a10.h7", "a11.h10"},
    "s-inhibition": {"a7.h3", "a7.h9", "a8.h6", "a8.h10"},
    "induction": {"a5.h5", "a5.h8", "a5.h9", "a6.h9"},
    "duplicate token": {"a0.h1", "a0.h10", "a3.h0"},
    "previous token": {"a2.h2", "a4.h11"},
}


def ioi_head_layers() -> list[int]:
    ioi = known.load("ioi")
    return [int(n[1:].split(".")[0]) for members in ioi.classes.values() for n in members]


def test_ioi_heads_only_count():
    # input -> prev(2) + dup(3) heads, q/k/v: 15; input -> S-inhibition q: 4;
    # input -> 13 movers k/v: 26; prev (layers 2, 4) -> induction (5, 6) k/v: 2*4*2 = 16;
    # induction + dup -> S-inhibition (7, 8) k/v: 7*4*2 = 56; S-inhibition -> movers q: 4*13 = 52;
    # movers -> logits: 13.
    expected = 15 + 4 + 26 + 16 + 56 + 52 + 13
    assert expected == 182
    assert known.load("ioi", view="heads-only").n_edges == expected


def test_ioi_with_mlps_count():
    layers = ioi_head_layers()
    assert len(layers) == 26
    mlp_edges = (
        12 * 11 // 2               # MLP -> later MLP
        + 12 + 12                  # input -> MLP, MLP -> logits
        + 3 * sum(layers)          # earlier MLPs -> each circuit head's q, k, v
        + sum(12 - L for L in layers)  # each circuit head -> MLPs of its layer and later
    )
    # + input -> logits: the ACDC paper's truth (get_ioi_true_edges) keeps the embedding-to-output edge
    assert known.load("ioi").n_edges == 182 + mlp_edges + 1 == 963
    assert "input->logits" in known.load("ioi").edges
    assert "input->logits" not in known.load("ioi", view="heads-only").edges


def test_ioi_classes():
    ioi = known.load("ioi")
    assert {k: len(v) for k, v in ioi.classes.items()} == IOI_CLASS_SIZES
    assert {k: set(v) for k, v in ioi.classes.items()} == IOI_CLASSES
    assert ioi.node_class("a9.h9") == "name mover"
    assert ioi.node_class("a2.h2") == "previous token"
    assert ioi.node_class("a1.h1") is None
    heads_only = known.load("ioi", view="heads-only")
    assert len(heads_only.nodes) == 26
    assert set(heads_only.edges) <= set(ioi.edges)


def test_greater_than_count():
    # input -> 0.1, 0.3, 0.5 (q/k/v) and m0-m3: 9 + 4; mid heads (6) and late MLPs (4) -> logits: 10;
    # MLP pairs inside early (6) and late (6) groups; 0.1 -> early MLPs: 4; 0.1 -> mid q/k/v: 18;
    # 0.3, 0.5 -> mid q/k/v: 36; early MLPs -> mid q/k/v: 72; mid heads -> late MLPs at or after
    # their layer: 4+4+4+4+4+3 = 23; MLP pairs among m0-m8 not already counted: 36 - 6 = 30;
    # earlier MLPs -> mid heads' q not already counted: (5+6+6+7+8+9) - 6*4 = 17.
    expected = 13 + 10 + 12 + 4 + 18 + 36 + 72 + 23 + 30 + 17
    assert known.load("greater-than").n_edges == expected == 235


def test_docstring_edges_match_the_manual_graph():
    doc = known.load("docstring")
    expected = {
        "input->a0.h5<v>", "a0.h5->a1.h4<v>", "input->a1.h4<v>",
        "input->a1.h2<q>", "input->a1.h2<k>", "a0.h5->a1.h2<q>", "a0.h5->a1.h2<k>",
        "input->a2.h0<q>", "input->a2.h0<k>", "a0.h5->a2.h0<q>", "a0.h5->a2.h0<k>", "a1.h4->a2.h0<v>",
    }
    for h in ("a3.h0", "a3.h6"):
        expected |= {
            f"{h}->logits", f"a1.h4->{h}<q>", f"input->{h}<v>", f"a0.h5->{h}<v>", f"a2.h0->{h}<k>", f"a1.h2->{h}<k>",
        }
    assert set(doc.edges) == expected and doc.n_edges == 24
    g = doc.graph()
    assert g.attn_only and not any(n.kind == "mlp" for n in g.nodes)


@pytest.mark.parametrize("name", known.available())
def test_every_edge_exists_in_the_model_graph(name):
    k = known.load(name)
    cfg = k.graph_config
    g = Graph(cfg["n_layers"], cfg["n_heads"], attn_only=cfg.get("attn_only", False), positions=cfg.get("positions"))
    assert all(g.has_edge(e) for e in k.edges)
    assert int(k.mask(g).sum()) == k.n_edges
    index = {e.name: e for e in g.edges}
    for e in k.edges:  # a sender always comes earlier in the forward pass
        edge = index[e]
        assert edge.src.layer < edge.dst.node.layer or (edge.src.kind == "head" and edge.dst.node.kind == "mlp")
    assert k.edges == tuple(sorted(k.edges, key=g.edge_index))  # canonical order


def test_positional_ioi_places_the_heads_only_truth_at_positions():
    pos = known.load("ioi-positional")
    plain = known.load("ioi", view="heads-only")
    assert {e.split("@")[0] for e in pos.edges} == set(plain.edges)
    assert pos.classes == plain.classes
    at = {e.split("@")[1] for e in pos.edges if e.startswith("a7.h3->a9.h9<q>")}
    assert at == {"END"}
    assert {e.split("@")[1] for e in pos.edges if "->a0.h1<" in e} == {"S1", "S2"}
    assert pos.n_edges == 234  # the movers' k/v read three names (IO, S1, S2)
    spec = {"name": "x", "model": {"n_layers": 2, "n_heads": 2}, "positions": ["A", "B"],
            "rules": [{"from": "input", "to": "a1.h0", "at": "C"}]}
    with pytest.raises(ValueError, match="no position 'C'"):
        known.from_spec(spec)
    spec["rules"] = [{"from": "input", "to": "a1.h0"}]
    with pytest.raises(ValueError, match="says 'at'"):
        known.from_spec(spec)


def test_gpt2_small_graph_matches():
    assert known.load("ioi").graph().n_edges == 32491


def test_mask_on_unsplit_graph_merges_qkv():
    doc = known.load("docstring")
    g = Graph(4, 8, attn_only=True, split_qkv=False)
    merged = {e.split("<")[0] for e in doc.edges}
    assert int(doc.mask(g).sum()) == len(merged)


def test_as_circuit_and_score_itself():
    ioi = known.load("ioi", view="heads-only")
    c = ioi.as_circuit()
    assert c.n_edges == 182
    rec = acdc.recovery(c, ioi)
    assert rec.edges.exact and rec.nodes.exact and rec.nodes.tp == 26


def test_errors():
    with pytest.raises(ValueError, match="available"):
        known.load("nope")
    with pytest.raises(ValueError, match="views"):
        known.load("ioi", view="nope")
    spec = {"name": "x", "model": {"n_layers": 2, "n_heads": 2}, "rules": [{"from": "a1.h0", "to": "a0.h1"}]}
    with pytest.raises(ValueError, match="gives no edge"):
        known.from_spec(spec)
    spec["rules"] = [{"from": "a9.h0", "to": "logits"}]
    with pytest.raises(ValueError, match="neither a node"):
        known.from_spec(spec)
    with pytest.raises(ValueError, match="is for a 12-layer model with 12 heads per layer"):
        known.load("ioi").mask(Graph(2, 2))
