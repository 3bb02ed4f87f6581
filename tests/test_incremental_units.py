"""The incremental engine (`PatchState.propagate`) on graphs with factored MLP units: neurons, and
transcoder features with their error and skip nodes. Every candidate's logits, and the state's after
each commit, equal a patched run from scratch (`Patcher.logits`, itself checked against the hooked
forward in test_neurons.py and test_features.py), under every ablation, with one or several scored
positions per prompt and with prompts scored at different positions (padding)."""

from __future__ import annotations

import pytest
import torch
from conftest import random_tokens, tiny_gpt2, tiny_neox
from oracle import removals_stay_exact
from test_features import random_set

import acdc
from acdc.positions import Positions

ABLATIONS = ["resample", "mean", "zero"]


@pytest.fixture(scope="module", params=["gpt2", "neox"])
def model(request):
    m = tiny_gpt2(n_layer=3, n_head=2, d=16) if request.param == "gpt2" else tiny_neox(n_layer=3, n_head=2, d=16)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # random biases: b_out, b_dec and b_O are outside every node
        for name, param in m.original_model.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))
    return m


def _graph(model, kind: str) -> tuple[acdc.Graph, acdc.TranscoderSet | None]:
    """The graph of ``kind`` and the transcoders that compute its features (None: no features)."""
    if kind == "neurons":
        return acdc.Graph.from_model(model, mlp_units="neurons"), None
    if kind == "features":  # layers 0 and 2 featured (with a skip path), layer 1 a whole MLP
        ts = random_set(model, (0, 2), "relu", True, n=10)
        return acdc.Graph.from_model(model, transcoders=ts, features={0: [0, 2, 3, 5, 7], 2: [1, 4, 6, 8, 9]}), ts
    ts = random_set(model, (0, 1, 2), "topk", False, n=8)
    return acdc.Graph.from_model(model, transcoders=ts), ts


ANSWERS = {
    "last": None,
    "padded": torch.tensor([5, 3, 4, 2]),  # the tokens after each prompt's last scored one feed nothing scored
    "several": torch.tensor([[2, 5]] * 4),
}


@pytest.mark.parametrize("kind", ["neurons", "features", "topk-features"])
@pytest.mark.parametrize(("ablation", "answers"), [("resample", "padded"), ("mean", "several"), ("zero", "last"),
                                                   ("resample", "several")])
def test_commits_on_factored_graphs_stay_exact(model, kind, ablation, answers):
    """ACDC's order (every edge, destinations and sources reversed), most removals committed: each
    candidate and the state after each commit equal a run from scratch."""
    g, ts = _graph(model, kind)
    clean, corrupt = random_tokens(batch=4, pos=6)
    p = acdc.Patcher(model, clean, corrupt, graph=g, transcoders=ts, ablation=ablation, answer_pos=ANSWERS[answers], cache_bytes=2**14)
    assert isinstance(p.reference_state(), acdc.patching.PatchState)
    step = max(1, g.n_edges // 80)  # a spread of edges into every layer (the tiny neuron graph has ~1,300)
    seen: list[bool] = []
    tested = removals_stay_exact(p, reversed(range(0, g.n_edges, step)), commit=0.85,
                                 each=lambda st: seen.append(bool((st.logits - p.clean.logits).abs().max() > 1e-3)))
    assert tested > 30
    assert any(seen)  # the removals changed something


@pytest.mark.parametrize("kind", ["neurons", "features"])
def test_batched_candidates_on_factored_graphs(model, kind):
    """Several candidates in one propagation (ACDC's speculation) equal each one alone, and a run from scratch."""
    g, ts = _graph(model, kind)
    clean, corrupt = random_tokens(batch=4, pos=6)
    p = acdc.Patcher(model, clean, corrupt, graph=g, transcoders=ts)
    st = p.state()
    gen = torch.Generator().manual_seed(2)
    cands = torch.stack([st.keep & (torch.rand(st.keep.shape, generator=gen) > f) for f in (0.05, 0.3, 0.8)])
    batched = st.propagate(cands).logits
    for k in range(3):
        assert torch.allclose(batched[k], st.propagate(cands[k]).logits[0], atol=1e-5)
        assert torch.allclose(batched[k], p.run(cands[k]), atol=1e-5)
    st.commit(st.propagate(cands), 1)
    assert torch.allclose(st.logits, p.run(cands[1]), atol=1e-5)
    # the clean run's activations are untouched by commits (copy-on-write)
    assert torch.allclose(p.state().logits, p.clean.logits)
    assert torch.allclose(p.state().propagate(p.upstream.clone()).logits[0], p.clean.logits, atol=1e-5)


def test_cutting_units_then_changing_their_input_stays_exact(model):
    """Cutting every outgoing edge of some neurons (they are not updated again: their stale values cancel
    out of every input, being on the ablated side of each) and then changing their MLP's input keeps every
    later evaluation exact."""
    g, ts = _graph(model, "neurons")
    clean, corrupt = random_tokens(batch=4, pos=6)
    p = acdc.Patcher(model, clean, corrupt, graph=g, transcoders=ts)
    st = p.state()
    units = g.mlp_sources(0)[:7]
    cand = st.keep.clone()
    cand[:, units.start : units.stop] = False
    st.commit(st.propagate(cand))
    cand = st.keep.clone()
    cand[g.mlp_row(0), 0] = False  # the input's edge into m0: every neuron of layer 0 would change
    prop = st.propagate(cand)
    assert torch.allclose(prop.logits[0], p.run(cand), atol=1e-5)
    st.commit(prop)
    for layer_row in (g.mlp_row(1), g.logits_row):
        cand = st.keep.clone()
        cand[layer_row, units.stop] = False
        assert torch.allclose(st.propagate(cand).logits[0], p.run(cand), atol=1e-5)


def test_a_split_mlp_reads_its_inputs_where_its_units_are_read(model):
    """Rows read, by hand: logits <- a1.h0 <k- m0.f0 <- (m0's input) a0.h1. The logits read a1.h0 at the
    answer rows; a key input reads every row of what it keeps, so m0.f0 is read everywhere, and so is
    a0.h1, which the split MLP m0 reads (its output being read where any of its units is)."""
    g, ts = _graph(model, "features")
    clean, corrupt = random_tokens(batch=4, pos=6)
    p = acdc.Patcher(model, clean, corrupt, graph=g, transcoders=ts)
    keep = torch.zeros_like(p.upstream)
    s = g.src_index
    keep[g.logits_row, s["a1.h0"]] = True
    keep[g.dst_index["a1.h0<k>"], s["m0.f0"]] = True
    keep[g.mlp_row(0), s["a0.h1"]] = True
    live, full = p.rows_read(keep)
    assert {g.sources[i].name for i in live.nonzero().squeeze(1).tolist()} == {"a1.h0", "m0.f0", "a0.h1"}
    assert {g.sources[i].name for i in full.nonzero().squeeze(1).tolist()} == {"m0.f0", "a0.h1"}
    keep[g.dst_index["a1.h0<k>"], s["m0.f0"]] = False
    keep[g.dst_index["a1.h0<q>"], s["m0.f0"]] = True  # a query reads the rows its head is read at: the answers
    live, full = p.rows_read(keep)
    assert {g.sources[i].name for i in live.nonzero().squeeze(1).tolist()} == {"a1.h0", "m0.f0", "a0.h1"}
    assert not bool(full.any())


def _named_positions(batch: int = 4, pos: int = 6) -> Positions:
    """Roles at different token indices in each prompt (as templates of different lengths give)."""
    return Positions.named({"A": [1, 2, 1, 2], "B": [3, 4, 2, 4], "END": [5, 5, 4, 5]}, batch, pos)


@pytest.mark.parametrize("kind", ["heads and whole MLPs", "neurons", "features"])
@pytest.mark.parametrize(("ablation", "answers"), [("resample", "padded"), ("mean", "several"), ("zero", "last")])
def test_commits_on_positional_graphs_stay_exact(model, kind, ablation, answers):
    """The incremental engine at token positions (an edge's removal changes its destination's input at its
    position's tokens only): ACDC's order over a spread of edges, most removals committed, each candidate and
    the state after each commit equal to a patched run from scratch (itself checked against per-position
    swaps in the hooked forward, test_positional.py)."""
    positions = _named_positions()
    if kind == "heads and whole MLPs":
        g, ts = acdc.Graph.from_model(model, positions=positions.names), None
    else:
        base, ts = _graph(model, kind)
        g = acdc.Graph.from_model(model, positions=positions.names, mlp_units=base.mlp_units,
                                  transcoders=ts, features=None if base.features is None else dict(base.features.features))
    clean, corrupt = random_tokens(batch=4, pos=6)
    p = acdc.Patcher(model, clean, corrupt, graph=g, transcoders=ts, ablation=ablation, answer_pos=ANSWERS[answers], positions=positions)
    assert isinstance(p.reference_state(), acdc.patching.PatchState) and p.state().keep.dim() == 3
    step = max(1, g.n_edges // 70)
    tested = removals_stay_exact(p, reversed(range(0, g.n_edges, step)), commit=0.85)
    assert tested > 30
