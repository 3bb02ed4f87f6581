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
