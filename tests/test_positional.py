"""Positional graphs: edges at named token positions, checked against per-position swaps by hooks."""

import pytest
import torch
from conftest import random_tokens
from oracle import patched_logits

from acdc import Graph, Patcher
from acdc.positions import Positions

ABLATIONS = ["resample", "mean", "zero"]


def _named_positions(batch: int = 4, pos: int = 6) -> Positions:
    """Roles at different token indices in each prompt (as templates of different lengths give)."""
    return Positions.named({"A": [1, 2, 1, 2], "B": [3, 4, 2, 4], "END": [5, 5, 4, 5]}, batch, pos)


def _per_position(g: Graph, mask: torch.Tensor, positions: Positions) -> dict[str, torch.Tensor]:
    """Positional edge mask -> plain edge name -> [batch, pos] tokens where it is ablated."""
    out: dict[str, torch.Tensor] = {}
    for i in mask.nonzero().squeeze(1).tolist():
        e = g.edges[i]
        at = positions.mask(e.pos)
        out[e.base_name] = out.get(e.base_name, torch.zeros_like(at)) | at
    return out


def test_positions_named_layout():
    p = _named_positions()
    assert p.names == ("A", "B", "END", "other")
    assert p.index[0].tolist() == [3, 0, 3, 1, 3, 2]
    assert p.index[2].tolist() == [3, 0, 1, 3, 2, 3]  # token 5 is padding after END: "other"
    assert p.first_index("B").tolist() == [3, 4, 2, 4]
    with pytest.raises(ValueError, match="prompt 0: token 1 is both 'A' and 'B'"):
        Positions.named({"A": [1, 2, 1, 3], "B": [1, 4, 2, 5]}, 4, 6)
    with pytest.raises(ValueError, match="no position"):
        p.mask("IO")


def test_positional_graph_names_and_state():
    g = Graph(2, 2, positions=["A", "B"])
    assert g.n_edges == 2 * Graph(2, 2).n_edges
    assert g.edges[5].name == "input->a0.h0<v>@B" and g.edges[5].base_name == "input->a0.h0<v>"
    m = torch.zeros(g.n_edges, dtype=torch.bool)
    m[5] = True
    d = g.dense(m)
    assert d.shape == (15, 7, 2) and d.nonzero().tolist() == [[2, 0, 1]]
    assert torch.equal(g.sparse(d), m)
    assert Graph.from_config(g.config()).positions == ("A", "B")
    with pytest.raises(ValueError, match="has no positions, but this graph has positions A, B"):
        g.check_fits(Graph(2, 2), "this circuit")


@pytest.mark.parametrize("arch", ["gpt2", "neox"])
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_oracle_positional_edge_sets(arch, ablation, gpt2_model, neox_model):
    """Positional patched logits equal the hooked forward with per-position swaps."""
    model = gpt2_model if arch == "gpt2" else neox_model
    clean, corrupt = random_tokens()
    positions = _named_positions()
    g = Graph.from_model(model, positions=positions.names)
    p = Patcher(model, clean, corrupt, graph=g, ablation=ablation, positions=positions)
    for frac, seed in [(0.1, 0), (0.5, 1), (0.9, 2)]:
        mask = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(seed)) < frac
        ref = patched_logits(model, g.plain, clean, corrupt, _per_position(g, mask, positions), ablation)[:, -1]
        assert torch.allclose(p.logits(mask), ref, atol=1e-5, rtol=0), (frac, seed)


def test_oracle_token_positions_unsplit(gpt2_model):
    """Token-index positions (every prompt aligned), q/k/v not split, answers at several positions."""
    clean, corrupt = random_tokens()
    g = Graph.from_model(gpt2_model, split_qkv=False, positions=[str(i) for i in range(6)])
    answer_pos = torch.tensor([[2, 5], [3, 5], [1, 4], [4, 5]])
    p = Patcher(gpt2_model, clean, corrupt, graph=g, answer_pos=answer_pos)  # token positions by default
    assert p.positions is not None and p.positions.names == g.positions
    mask = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(5)) < 0.4
    ref = patched_logits(gpt2_model, g.plain, clean, corrupt, _per_position(g, mask, p.positions), "resample")
    ref = ref[torch.arange(4)[:, None], answer_pos].reshape(8, -1)
    assert torch.allclose(p.logits(mask), ref, atol=1e-5, rtol=0)


def test_ablating_one_position_only_changes_what_it_reaches(gpt2_model):
    """Ablating every edge at a position after the scored token changes nothing (causality)."""
    clean, corrupt = random_tokens()
    g = Graph.from_model(gpt2_model, positions=[str(i) for i in range(6)])
    p = Patcher(gpt2_model, clean, corrupt, graph=g, answer_pos=3)
    late = torch.tensor([e.pos in ("4", "5") for e in g.edges])
    assert (p.logits(late) - p.clean.logits).abs().max() < 1e-5
    early = torch.tensor([e.pos == "1" for e in g.edges])
    assert (p.logits(early) - p.clean.logits).abs().max() > 1e-2


def test_single_position_equals_plain_graph(gpt2_model):
    clean, corrupt = random_tokens()
    plain = Patcher(gpt2_model, clean, corrupt, ablation="mean")
    one = Positions.single(4, 6)
    pos = Patcher(gpt2_model, clean, corrupt, ablation="mean", graph=Graph.from_model(gpt2_model, positions=one.names),
                  positions=one)
    mask = torch.rand(plain.graph.n_edges, generator=torch.Generator().manual_seed(3)) < 0.5
    assert torch.equal(pos.logits(mask), plain.logits(mask))


def test_positional_patcher_errors(gpt2_model):
    clean, corrupt = random_tokens()
    g = Graph.from_model(gpt2_model, positions=["A", "B", "END", "other"])
    with pytest.raises(ValueError, match="needs positions"):
        Patcher(gpt2_model, clean, corrupt, graph=g)
    with pytest.raises(ValueError, match="do not match the graph's"):
        Patcher(gpt2_model, clean, corrupt, graph=g, positions=Positions.tokens(4, 6))
    p = Patcher(gpt2_model, clean, corrupt, graph=g, positions=_named_positions())
    with pytest.raises(ValueError, match="plain graphs"):
        p.state()
