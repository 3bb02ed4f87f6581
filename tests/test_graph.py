"""Graph structure: names, canonical order, counts (hand-checked), networkx export."""

import pytest
import torch

from acdc import Graph


def test_smallest_graph_by_hand():
    g = Graph(1, 1)
    assert [n.name for n in g.sources] == ["input", "a0.h0", "m0"]
    assert [d.name for d in g.destinations] == ["a0.h0<q>", "a0.h0<k>", "a0.h0<v>", "m0", "logits"]
    assert [e.name for e in g.edges] == [
        "input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>",
        "input->m0", "a0.h0->m0",
        "input->logits", "a0.h0->logits", "m0->logits",
    ]


def test_gpt2_small_counts():
    g = Graph(12, 12)
    assert (len(g.sources), len(g.destinations), g.n_edges) == (157, 445, 32491)


@pytest.mark.parametrize("layers,heads", [(1, 1), (2, 3), (4, 2), (12, 12)])
def test_counts_match_formula(layers, heads):
    up = lambda L: 1 + (heads + 1) * L  # sources before layer L  # noqa: E731
    seq = sum(3 * heads * up(L) + up(L) + heads for L in range(layers)) + up(layers)
    par = sum(3 * heads * up(L) + up(L) for L in range(layers)) + up(layers)
    unsplit = sum(heads * up(L) + up(L) + heads for L in range(layers)) + up(layers)
    assert Graph(layers, heads).n_edges == seq
    assert Graph(layers, heads, parallel_attn_mlp=True).n_edges == par
    assert Graph(layers, heads, split_qkv=False).n_edges == unsplit


def test_canonical_order_and_acdc_order():
    g = Graph(2, 2)
    dst_names = [d.name for d in g.destinations]
    assert dst_names[:7] == ["a0.h0<q>", "a0.h0<k>", "a0.h0<v>", "a0.h1<q>", "a0.h1<k>", "a0.h1<v>", "m0"]
    assert dst_names[-1] == "logits"
    # edges sorted by destination, then source, both in forward order
    pairs = list(zip(g.edge_dst.tolist(), g.edge_src.tolist()))
    assert pairs == sorted(pairs)
    # ACDC visits the edge order reversed: first logits' nearest source
    assert g.edges[-1].name == "m1->logits"


def test_wiring_rules():
    g = Graph(3, 2)
    names = {e.name for e in g.edges}
    assert "a1.h0->m1" in names  # a head feeds its own layer's MLP
    assert "a1.h0->a1.h1<q>" not in names  # heads of one layer do not feed each other
    assert "m1->a1.h0<q>" not in names
    assert "m0->a1.h0<k>" in names
    par = {e.name for e in Graph(3, 2, parallel_attn_mlp=True).edges}
    assert "a1.h0->m1" not in par and "a0.h0->m1" in par


def test_unknown_edge_name_suggests():
    g = Graph(2, 2)
    with pytest.raises(ValueError, match="did you mean"):
        g.edge_index("a0.h0->m1<q>")
    with pytest.raises(ValueError, match="not in this graph"):
        g.edge_mask(["nonsense"])


def test_dense_sparse_roundtrip():
    g = Graph(2, 3)
    mask = torch.rand(g.n_edges) < 0.5
    dense = g.dense(mask)
    assert dense.shape == (len(g.destinations), len(g.sources))
    assert not (dense & ~g.upstream).any()
    assert torch.equal(g.sparse(dense), mask)


def test_networkx_export():
    g = Graph(2, 2)
    nxg = g.to_networkx()
    assert nxg.number_of_edges() == g.n_edges
    assert nxg.number_of_nodes() == len(g.nodes)
    qkv = {d["qkv"] for _, _, d in nxg.edges(data=True)}
    assert qkv == {"q", "k", "v", None}


def test_nodes_are_frozen_and_hashable():
    g = Graph(1, 2)
    n = g.sources[1]
    assert {n: 1}[g.sources[1]] == 1
    with pytest.raises(AttributeError):
        n.layer = 3  # type: ignore[misc]


@pytest.mark.parametrize("positions", [None, ("A", "B", "END")])
def test_edges_are_made_on_demand_and_names_round_trip(positions):
    g = Graph(2, 2, positions=positions)
    edges = list(g.edges)
    assert len(g.edges) == len(edges) == g.n_edges and g.edges[-1] == edges[-1] and g.edges[1:4] == edges[1:4]
    for i, e in enumerate(edges):
        assert g.edge_index(e.name) == i and g.has_edge(e.name) and e in g.edges
        assert (int(g.edge_dst[i]), int(g.edge_src[i])) == (g.dst_index[e.dst.name], g.src_index[e.src.name])
    with pytest.raises(IndexError):
        g.edges[g.n_edges]


@pytest.mark.parametrize("name", ["m1->a0.h0<q>", "a0.h0->a0.h1<q>", "input->a0.h0", "input-a0.h0<q>", "input->logits@",
                                  "input->logits@Z", "nope->logits", ""])
def test_names_that_are_not_edges(name):
    g = Graph(2, 2, positions=("A", "B"))
    assert not g.has_edge(name)
    with pytest.raises(ValueError, match="is not in this graph"):
        g.edge_index(name)
    assert not Graph(2, 2).has_edge("input->logits@A") and Graph(2, 2).has_edge("input->logits")


def test_a_graph_of_millions_of_edges_holds_no_edge_objects():
    """SmolLM2's shape at 20 positions: 2,464,220 edges, built from index tensors alone."""
    g = Graph(30, 9, positions=[str(i) for i in range(20)])
    assert g.n_edges == 2464220 and type(g.edges).__name__ == "EdgeList"
    assert g.edges[2464219].name == "m29->logits@19" and g.edge_index("a3.h4->a20.h1<v>@7") == int(
        g.edge_id[g.dst_index["a20.h1<v>"], g.src_index["a3.h4"]]) + 7
    assert "did you mean a3.h4->a20.h1<v>@7" in str(pytest.raises(ValueError, g.edge_index, "a3.h4->a20.h1<v>@7x").value)
