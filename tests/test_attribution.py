"""Attribution (EAP, EAP-IG): scores equal the hand-computed gradient formula; selections."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import logit_diff_loss, random_answers, random_tokens
from oracle import eap_ig_activations_reference, eap_reference

import acdc
from acdc.graph import Graph
from acdc.scores import Scores


@pytest.mark.parametrize("arch", ["gpt2", "neox"])
@pytest.mark.parametrize("split_qkv", [True, False])
@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_eap_equals_gradient_formula(arch, split_qkv, ablation, gpt2_model, neox_model):
    model = gpt2_model if arch == "gpt2" else neox_model
    clean, corrupt = random_tokens()
    g = Graph.from_model(model, split_qkv=split_qkv)
    s = acdc.attribute(model, clean, corrupt, method="eap", metric="logit_diff", answers=random_answers(),
                       ablation=ablation, graph=g)
    ref = eap_reference(model, g, clean, corrupt, ablation, logit_diff_loss)
    got = {e.name: s[e.name] for e in g.edges}
    scale = max(abs(v) for v in ref.values())
    assert scale > 0
    for name, v in ref.items():
        assert got[name] == pytest.approx(v, abs=1e-4 * scale, rel=1e-4), name


@pytest.mark.parametrize("arch", ["gpt2", "neox"])
@pytest.mark.parametrize("split_qkv", [True, False])
@pytest.mark.parametrize("rules", [{}, {"freeze_norm": False}, {"softmax_temperature": 1.0, "q_scale": 1.0},
                                   {"softmax_temperature": 3.0, "k_scale": 0.1, "v_scale": 2.0}])
def test_gim_equals_the_gradient_formula_under_gims_rules(arch, split_qkv, rules, gpt2_model, neox_model):
    """EAP with GIM's backward rules equals (A - O) . gradient, the gradient taken by a TransformerLens forward with
    GIM's rules applied by hooks (norm scales detached, q/k/v gradients scaled, the pattern's backward at scores / T);
    the rules change the scores (plain EAP differs), and each rule alone is pinned by the variants."""
    model = gpt2_model if arch == "gpt2" else neox_model
    clean, corrupt = random_tokens()
    g = Graph.from_model(model, split_qkv=split_qkv)
    gim = acdc.GIM(**rules)
    s = acdc.algorithms.get_algorithm("eap")  # the registered algorithm takes a GIM or a dict of its fields
    task = acdc.Task.from_tokens(clean, corrupt, correct=random_answers()[0], incorrect=random_answers()[1])
    patcher, metric, batch = acdc.api.prepare(model, task, graph=g, ablation="resample")
    got = s(patcher, metric, batch, gim=rules or True)
    assert got.settings["gim"] == gim.to_dict()
    ref = eap_reference(model, g, clean, corrupt, "resample", logit_diff_loss, gim=gim)
    plain = eap_reference(model, g, clean, corrupt, "resample", logit_diff_loss)
    scale = max(abs(v) for v in ref.values())
    assert scale > 0
    for name, v in ref.items():
        assert got[name] == pytest.approx(v, abs=1e-4 * scale, rel=1e-4), name
    assert max(abs(ref[k] - plain[k]) for k in ref) > 1e-2 * scale  # the rules matter here
    via_attribute = acdc.attribute(model, task, method="eap", gim=True, graph=g, progress=False)
    assert torch.allclose(via_attribute.values, s(patcher, metric, batch, gim=True).values)


def test_gim_is_refused_where_it_would_leave_norms_live_and_for_unknown_rules(gpt2_model):
    with pytest.raises(ValueError, match="unknown GIM rule"):
        acdc.GIM.of({"temperature": 2})
    with pytest.raises(ValueError, match="softmax_temperature must be > 0"):
        acdc.GIM(softmax_temperature=0)
    assert acdc.GIM.of(False) is None and acdc.GIM.of(True) == acdc.GIM()


def test_ig_with_one_step_is_eap(gpt2_model):
    clean, corrupt = random_tokens()
    kw = dict(metric="logit_diff", answers=random_answers())
    eap = acdc.attribute(gpt2_model, clean, corrupt, method="eap", **kw).values
    for method in ("eap-ig-inputs", "eap-ig-activations"):
        ig = acdc.attribute(gpt2_model, clean, corrupt, method=method, steps=1, **kw).values
        assert torch.allclose(ig, eap, rtol=1e-5, atol=1e-6 * float(eap.abs().max())), method


@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_ig_activations_equal_the_hooked_paths(gpt2_model, ablation):
    """EAP-IG-activations: each node group (the input, a layer's heads, an MLP) moved in turn to A + alpha (O - A) in
    the model's own hooked forward, the gradients averaged over every pass (`eap_ig_activations_reference`)."""
    clean, corrupt = random_tokens()
    g = Graph.from_model(gpt2_model)
    s = acdc.attribute(gpt2_model, clean, corrupt, method="eap-ig-activations", steps=3, metric="logit_diff",
                       answers=random_answers(), ablation=ablation, progress=False)
    ref = eap_ig_activations_reference(gpt2_model, g, clean, corrupt, ablation, logit_diff_loss, 3)
    scale = max(abs(v) for v in ref.values())
    assert scale > 0
    for name, v in ref.items():
        assert s[name] == pytest.approx(v, abs=1e-5 * scale, rel=1e-4), name


def test_ig_inputs_completeness(gpt2_model):
    """Integrated gradients on the input: the input edges' scores sum to about L(corrupt) - L(clean)
    when every edge out of the input is ablated (a Riemann sum, so only approximately)."""
    clean, corrupt = random_tokens()
    kw = dict(metric="logit_diff", answers=random_answers())
    s = acdc.attribute(gpt2_model, clean, corrupt, method="eap-ig-inputs", steps=64, **kw)
    g = s.graph
    from_input = torch.tensor([e.src.name == "input" for e in g.edges])
    patcher, metric, batch = acdc.api.prepare(gpt2_model, clean, corrupt, **kw)
    change = metric.loss(patcher.logits(from_input), batch) - metric.loss(patcher.clean.logits, batch)
    assert float(s.values[from_input].sum()) == pytest.approx(change, rel=0.05)


def test_kl_gradient_vanishes_at_clean(gpt2_model):
    clean, corrupt = random_tokens()
    s = acdc.attribute(gpt2_model, clean, corrupt, method="eap")  # KL: zero gradient at the clean run
    assert float(s.values.abs().max()) < 1e-6
    ig = acdc.attribute(gpt2_model, clean, corrupt, method="eap-ig-inputs", steps=3)
    assert float(ig.values.abs().max()) > 1e-3


def test_several_scored_positions(gpt2_model):
    """Attribution reads the same [batch, P] positions as the engine (a Task with P > 1): each EAP
    score equals the hooked gradient formula with the logit difference averaged over those rows."""
    task = acdc.tasks.induction(50, 4, half=3, seed=0, bos=0)
    assert task.answer_pos.shape[1] > 1
    g = Graph.from_model(gpt2_model)
    s = acdc.attribute(gpt2_model, task, method="eap", metric="logit_diff")
    rows = torch.arange(task.n_prompts)[:, None]

    def loss(logits):
        at = logits[rows, task.answer_pos]  # [batch, P, vocab]
        correct = at.gather(-1, task.correct[..., None])[..., 0]
        incorrect = at.gather(-1, task.incorrect[..., None])[..., 0]
        return -(correct - incorrect).mean()

    ref = eap_reference(gpt2_model, g, task.clean, task.corrupt, "resample", loss)
    scale = max(abs(v) for v in ref.values())
    assert scale > 0
    for name, v in ref.items():
        assert s[name] == pytest.approx(v, abs=1e-4 * scale, rel=1e-4), name


def test_left_and_right_grids(gpt2_model):
    """The grids differ by their end points only: m * left(m) = m * right(m) - g(1) + g(0),
    with g(1) the gradient at the clean run (EAP) and g(0) at the ablated run (left, 1 step)."""
    clean, corrupt = random_tokens()
    kw = dict(metric="logit_diff", answers=random_answers())
    eap = acdc.attribute(gpt2_model, clean, corrupt, method="eap", **kw).values
    right = acdc.attribute(gpt2_model, clean, corrupt, method="eap-ig-inputs", steps=4, **kw)
    left = acdc.attribute(gpt2_model, clean, corrupt, method="eap-ig-inputs", steps=4, grid="left", **kw)
    at_ablated = acdc.attribute(gpt2_model, clean, corrupt, method="eap-ig-inputs", steps=1, grid="left", **kw).values
    assert right.settings["grid"] == "right" and left.settings["grid"] == "left"
    scale = float(eap.abs().max())
    assert torch.allclose(4 * left.values, 4 * right.values - eap + at_ablated, atol=1e-5 * scale, rtol=1e-5)
    assert not torch.allclose(left.values, right.values, atol=1e-3 * scale)
    with pytest.raises(ValueError, match="unknown grid 'middle'"):
        acdc.attribute(gpt2_model, clean, corrupt, method="eap-ig-inputs", grid="middle", **kw)


def test_errors(gpt2_model):
    clean, corrupt = random_tokens()
    with pytest.raises(ValueError, match="unknown attribution method 'eapp'"):
        acdc.attribute(gpt2_model, clean, corrupt, method="eapp")
    with pytest.raises(ValueError, match="steps"):
        acdc.attribute(gpt2_model, clean, corrupt, method="eap-ig-inputs", steps=0)


# ---------------------------------------------------------------- selections, by hand
@pytest.fixture()
def hand() -> Scores:
    g = Graph(2, 2)
    v = torch.zeros(g.n_edges, dtype=torch.float64)
    chosen = {"a1.h1->logits": 5.0, "a0.h0->a1.h1<k>": -4.0, "input->a0.h0<v>": 3.0,
              "a0.h1->a1.h0<v>": 6.0, "input->m0": 0.5, "m0->logits": 0.4}
    for name, x in chosen.items():
        v[g.edge_index(name)] = x
    return Scores(g, v, {"method": "hand"})


def test_top_and_threshold(hand):
    assert set(hand.top(3).edges) == {"a0.h1->a1.h0<v>", "a1.h1->logits", "a0.h0->a1.h1<k>"}
    assert set(hand.threshold(3.0).edges) == {"a0.h1->a1.h0<v>", "a1.h1->logits", "a0.h0->a1.h1<k>", "input->a0.h0<v>"}
    assert hand.ranking()[:2] == ["a0.h1->a1.h0<v>", "a1.h1->logits"]
    assert hand.top(0).n_edges == 0 and hand.top(46).n_edges == 46
    c = hand.top(2)
    assert c.edge_score("a1.h1->logits") == 5.0 and c.settings["selection"] == "top 2"


def test_greedy_stays_connected(hand):
    # a0.h1->a1.h0<v> has the largest score but a1.h0 never connects to the logits: skipped
    c = hand.greedy(3)
    assert set(c.edges) == {"a1.h1->logits", "a0.h0->a1.h1<k>", "input->a0.h0<v>"}
    assert set(hand.greedy(5).edges) == {"a1.h1->logits", "a0.h0->a1.h1<k>", "input->a0.h0<v>", "m0->logits", "input->m0"}


@pytest.mark.parametrize("bad", [-1, 47, 2.5, True])
def test_selection_errors(hand, bad):
    with pytest.raises(ValueError, match="n must be an integer"):
        hand.top(bad)
    with pytest.raises(ValueError, match="threshold"):
        hand.threshold(math.nan)
