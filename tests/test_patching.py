"""Patching engine: every score equals a real intervention (oracle), fast paths included."""

import pytest
import torch
from conftest import random_tokens
from oracle import patched_logits, removals_stay_exact

from acdc import Graph, Patcher

ABLATIONS = ["resample", "mean", "zero"]


def _random_mask(g: Graph, frac: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(g.n_edges, generator=gen) < frac


def _names(g: Graph, mask: torch.Tensor) -> set[str]:
    return {g.edges[i].name for i in mask.nonzero().squeeze(1).tolist()}


@pytest.mark.parametrize("arch", ["gpt2", "neox"])
@pytest.mark.parametrize("split_qkv", [True, False])
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_oracle_random_edge_sets(arch, split_qkv, ablation, gpt2_model, neox_model):
    model = gpt2_model if arch == "gpt2" else neox_model
    clean, corrupt = random_tokens()
    g = Graph.from_model(model, split_qkv=split_qkv)
    p = Patcher(model, clean, corrupt, graph=g, ablation=ablation)
    for frac, seed in [(0.05, 0), (0.3, 1), (0.7, 2), (0.95, 3)]:
        mask = _random_mask(g, frac, seed)
        ref = patched_logits(model, g, clean, corrupt, _names(g, mask), ablation)[:, -1]
        assert torch.allclose(p.logits(mask), ref, atol=1e-5, rtol=0), (frac, seed)


def test_no_ablation_reproduces_model(gpt2_model):
    clean, corrupt = random_tokens()
    p = Patcher(gpt2_model, clean, corrupt)
    full = gpt2_model(clean)[:, -1]
    none = torch.zeros(p.graph.n_edges, dtype=torch.bool)
    assert torch.allclose(p.logits(none), full, atol=1e-5)
    assert torch.allclose(p.clean.logits, full, atol=1e-5)


@pytest.mark.parametrize("which", ["input", "all"])
def test_resample_input_edges_reproduce_corrupt_run(gpt2_model, which):
    clean, corrupt = random_tokens()
    p = Patcher(gpt2_model, clean, corrupt, ablation="resample")
    g = p.graph
    if which == "input":
        mask = torch.tensor([e.src.name == "input" for e in g.edges])
    else:
        mask = torch.ones(g.n_edges, dtype=torch.bool)
    corrupt_logits = gpt2_model(corrupt)[:, -1]
    assert torch.allclose(p.logits(mask), corrupt_logits, atol=1e-5)


def test_answer_positions_per_prompt(gpt2_model):
    clean, corrupt = random_tokens()
    pos = torch.tensor([2, 5, 3, 4])
    g = Graph.from_model(gpt2_model)
    p = Patcher(gpt2_model, clean, corrupt, answer_pos=pos)
    mask = _random_mask(g, 0.4, 7)
    ref = patched_logits(gpt2_model, g, clean, corrupt, _names(g, mask), "resample")
    ref = ref[torch.arange(4), pos]
    assert torch.allclose(p.logits(mask), ref, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "neox"])
def test_several_answer_positions_per_prompt(arch, gpt2_model, neox_model):
    """[batch, P] positions give one logits row per scored position, prompt-major, exactly."""
    model = gpt2_model if arch == "gpt2" else neox_model
    clean, corrupt = random_tokens()
    pos = torch.tensor([[1, 3, 5], [0, 2, 4], [3, 4, 5], [2, 3, 5]])
    p = Patcher(model, clean, corrupt, answer_pos=pos)
    g = p.graph
    assert p.clean.logits.shape == (12, model.cfg.d_vocab)
    for frac, seed in [(0.2, 3), (0.8, 4)]:
        mask = _random_mask(g, frac, seed)
        ref = patched_logits(model, g, clean, corrupt, _names(g, mask), "resample")
        ref = ref[torch.arange(4)[:, None], pos].reshape(12, -1)
        assert torch.allclose(p.logits(mask), ref, atol=1e-5)
    # every position scored (P == S) reads the same as the full sequence
    every = Patcher(model, clean, corrupt, answer_pos=torch.arange(6).expand(4, 6))
    mask = _random_mask(g, 0.5, 5)
    ref = patched_logits(model, g, clean, corrupt, _names(g, mask), "resample").reshape(24, -1)
    assert torch.allclose(every.logits(mask), ref, atol=1e-5)


@pytest.mark.parametrize("n_scored", [3, 6])
def test_commits_stay_exact_several_positions(n_scored, gpt2_model):
    clean, corrupt = random_tokens(batch=3, pos=6)
    pos = torch.arange(6 - n_scored, 6).expand(3, n_scored)
    p = Patcher(gpt2_model, clean, corrupt, answer_pos=pos, cache_bytes=2**16)
    g = p.graph
    st = p.state()
    removed = torch.zeros(g.n_edges, dtype=torch.bool)
    order = torch.randperm(g.n_edges, generator=torch.Generator().manual_seed(1))[:60].tolist()
    for step, e in enumerate(list(range(g.n_edges - 1, g.n_edges - 30, -1)) + order):
        if removed[e]:
            continue
        cand = st.keep.clone()
        cand[g.edge_dst[e], g.edge_src[e]] = False
        st.commit(st.propagate(cand))
        removed[e] = True
        if step % 9 == 0:
            assert torch.allclose(st.logits, p.logits(removed), atol=1e-5), step
    assert torch.allclose(st.logits, p.logits(removed), atol=1e-5)


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("arch", ["gpt2", "neox"])
def test_from_scratch_evaluation_equals_propagation(ablation, arch, gpt2_model, neox_model):
    """`Patcher.evaluate` (one matrix product per layer) and `PatchState.propagate` agree."""
    model = gpt2_model if arch == "gpt2" else neox_model
    clean, corrupt = random_tokens()
    for split in (True, False):
        p = Patcher(model, clean, corrupt, graph=Graph.from_model(model, split_qkv=split), ablation=ablation,
                    answer_pos=torch.tensor([[3, 5]] * 4))
        for frac, seed in [(0.1, 0), (0.5, 1), (0.9, 2)]:
            keep = p.graph.dense(~_random_mask(p.graph, frac, seed)) & p.upstream
            assert torch.allclose(p.run(keep), p.state().propagate(keep).logits[0], atol=1e-5)


def test_batched_candidates_equal_single(gpt2_model):
    clean, corrupt = random_tokens()
    p = Patcher(gpt2_model, clean, corrupt)
    masks = torch.stack([_random_mask(p.graph, f, s) for f, s in [(0.1, 0), (0.5, 1), (0.9, 2)]])
    batched = p.logits(masks)
    for k in range(3):
        assert torch.allclose(batched[k], p.logits(masks[k]), atol=1e-5)


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("arch", ["gpt2", "neox"])
def test_commits_stay_exact(ablation, arch, gpt2_model, neox_model):
    """Removing edges one by one through the incremental state equals evaluating from scratch."""
    model = gpt2_model if arch == "gpt2" else neox_model
    clean, corrupt = random_tokens(batch=3, pos=5)
    p = Patcher(model, clean, corrupt, ablation=ablation, cache_bytes=2**16)
    g = p.graph
    st = p.state()
    order = torch.randperm(g.n_edges, generator=torch.Generator().manual_seed(0))
    # mostly ACDC-like (reverse order) with some random removals, checked every few steps
    ids = list(range(g.n_edges - 1, -1, -1))[:40] + order[:80].tolist()
    removed = torch.zeros(g.n_edges, dtype=torch.bool)
    for step, e in enumerate(ids):
        if removed[e]:
            continue
        cand = st.keep.clone()
        cand[g.edge_dst[e], g.edge_src[e]] = False
        prop = st.propagate(cand)
        removed[e] = True
        st.commit(prop)
        if step % 7 == 0:
            assert torch.allclose(st.logits, p.logits(removed), atol=1e-5), step
    assert torch.allclose(st.logits, p.logits(removed), atol=1e-5)
    # the clean run's caches are untouched by commits (copy-on-write)
    fresh = p.tf.run(p.clean_tokens, p.answer_pos)
    assert torch.equal(p.clean.sources, fresh.sources) and torch.equal(p.clean.resid_pre, fresh.resid_pre)
    assert torch.allclose(p.logits(torch.zeros(g.n_edges, dtype=torch.bool)), p.clean.logits, atol=1e-5)


def test_commit_refuses_adding_edges(gpt2_model):
    clean, corrupt = random_tokens()
    p = Patcher(gpt2_model, clean, corrupt)
    st = p.state()
    cand = st.keep.clone()
    cand[-1, 0] = False
    st.commit(st.propagate(cand))
    with pytest.raises(ValueError, match="only remove"):
        st.commit(st.propagate(p.upstream.clone()))


def test_bad_inputs(gpt2_model):
    clean, corrupt = random_tokens()
    with pytest.raises(ValueError, match="same shape"):
        Patcher(gpt2_model, clean, corrupt[:, :-1])
    with pytest.raises(ValueError, match="unknown ablation 'resmaple'"):
        Patcher(gpt2_model, clean, corrupt, ablation="resmaple")
    with pytest.raises(ValueError, match="no tokenizer"):
        Patcher(gpt2_model, ["a b", "c d"], ["e f", "g h"])
    with pytest.raises(ValueError, match="answer_pos"):
        Patcher(gpt2_model, clean, corrupt, answer_pos=99)
    with pytest.raises(ValueError, match="strictly increasing"):
        Patcher(gpt2_model, clean, corrupt, answer_pos=torch.tensor([[1, 1]] * 4))
    with pytest.raises(ValueError, match=r"\[4, P\]"):
        Patcher(gpt2_model, clean, corrupt, answer_pos=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids must lie"):
        Patcher(gpt2_model, clean + 1000, corrupt)
    with pytest.raises(ValueError, match="does not match the model"):
        Patcher(gpt2_model, clean, corrupt, graph=Graph(5, 5))
    p = Patcher(gpt2_model, clean, corrupt)
    with pytest.raises(ValueError, match="not in this graph"):
        p.logits(["a0.h0->a0.h1<q>"])


@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_masked_logits_reads_the_extremes_from_the_cached_runs(gpt2_model, ablation):
    clean, corrupt = random_tokens()
    p = Patcher(gpt2_model, clean, corrupt, ablation=ablation)
    n = p.graph.n_edges
    nothing, everything = torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)
    assert p.masked_logits(nothing) is p.clean.logits
    if ablation == "resample":
        assert p.masked_logits(everything) is p.corrupt_logits
    assert torch.allclose(p.masked_logits(everything), p.logits(everything), atol=1e-4)
    some = nothing.clone()
    some[::7] = True
    assert torch.equal(p.masked_logits(some), p.logits(some))


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("arch", ["gpt2", "neox"])
def test_incremental_state_with_answer_only_sources_stays_exact(arch, padded, gpt2_model, neox_model):
    """Sources the circuit reads at the answer rows only are recomputed there alone (their other rows
    go stale, never read again): along a long run of commits in ACDC's order, the state's logits and
    every candidate's equal a patched run from scratch, and such sources do occur below the last layer."""
    model = gpt2_model if arch == "gpt2" else neox_model
    clean, corrupt = torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(1)), \
        torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(2))
    # padded: prompts scored at different positions, so the tokens after each one's last are left out
    p = Patcher(model, clean, corrupt, answer_pos=torch.tensor([5, 3, 4, 2]) if padded else None)
    assert (p.live_rows is None) != padded
    g = p.graph
    seen_early = 0

    def count(st) -> None:
        nonlocal seen_early
        seen_early += int(p.answer_only_sources(st.keep)[: g.head_src(g.n_layers - 1)].sum())

    removals_stay_exact(p, reversed(range(g.n_edges)), each=count)
    assert seen_early > 0
