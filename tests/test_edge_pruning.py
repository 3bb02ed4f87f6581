"""Edge Pruning (acdc/algorithms/edge_pruning.py) and the mixed forward it trains (acdc/mixing.py):
the mixed run equals the patched run at 0/1 weights and a hooked forward at fractional ones, its
gradient is the finite difference, and the learned masks recover the zoo's planted circuits."""

from __future__ import annotations

import pytest
import torch
from conftest import random_tokens, tiny_gpt2, tiny_neox
from oracle import patched_logits

import acdc
from acdc.algorithms.edge_pruning import EdgePruningOptions
from acdc.mixing import mixed_logits
from acdc.positions import Positions


@pytest.fixture(scope="module", params=["gpt2", "neox"])
def model(request):
    return tiny_gpt2(n_layer=2, n_head=2, d=16, seed=1) if request.param == "gpt2" else tiny_neox(n_layer=2, n_head=2, d=16, seed=1)


def _weights(p, w_edges: torch.Tensor) -> torch.Tensor:
    g = p.graph
    w = torch.zeros(p.upstream.shape, dtype=w_edges.dtype)
    w[g.edge_dst, g.edge_src] = w_edges
    return w


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_mixed_run_at_zero_one_weights_is_the_patched_run(model, ablation):
    clean, corrupt = random_tokens()
    p = acdc.Patcher(model, clean, corrupt, ablation=ablation)
    for seed in (0, 1):
        keep = torch.rand(p.graph.n_edges, generator=torch.Generator().manual_seed(seed)) < 0.6
        got = mixed_logits(p, _weights(p, keep.float()))
        assert torch.allclose(got, p.logits(~keep), atol=1e-5), seed
    assert torch.allclose(mixed_logits(p, _weights(p, torch.ones(p.graph.n_edges))), p.clean.logits, atol=1e-5)


@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_mixed_run_at_fractional_weights_is_the_hooked_mix(model, ablation):
    """Each destination reads w O + (1 - w) A of each source: the hooked forward with that mix."""
    clean, corrupt = random_tokens()
    p = acdc.Patcher(model, clean, corrupt, ablation=ablation)
    g = p.graph
    w = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(3))
    got = mixed_logits(p, _weights(p, w))
    mix = {e.name: torch.full(clean.shape, 1.0 - float(w[i])) for i, e in enumerate(g.edges)}
    want = patched_logits(model, g, clean, corrupt, mix, ablation)[:, -1]
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())


def test_mixed_run_gradient_is_the_finite_difference(model):
    clean, corrupt = random_tokens()
    _gradient_is_the_finite_difference(acdc.Patcher(model, clean, corrupt))


def _gradient_is_the_finite_difference(p) -> torch.Tensor:
    """The mixed run's gradient along a random direction against the central difference; returns the gradient [n_edges]."""
    g = p.graph
    w = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.8 + 0.1
    direction = torch.randn(g.n_edges, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = w.clone().float().requires_grad_()
    loss = mixed_logits(p, _dense_weights(g, x)).pow(2).mean()
    loss.backward()
    eps = 1e-2
    with torch.no_grad():
        up = mixed_logits(p, _dense_weights(g, (w + eps * direction).float())).pow(2).mean()
        down = mixed_logits(p, _dense_weights(g, (w - eps * direction).float())).pow(2).mean()
    fd = float(up - down) / (2 * eps)
    assert float(x.grad.double() @ direction) == pytest.approx(fd, rel=2e-2, abs=1e-5)
    return x.grad


def test_skipping_zero_weights_changes_nothing_but_their_gradient(model):
    """With most weights exactly 0, leaving their sources out of the products gives the same logits and
    the same gradient for every nonzero weight (zero ones get none: a clamped gate's is 0 anyway)."""
    clean, corrupt = random_tokens()
    p = acdc.Patcher(model, clean, corrupt)
    gen = torch.Generator().manual_seed(6)
    w = torch.rand(p.graph.n_edges, generator=gen) * (torch.rand(p.graph.n_edges, generator=gen) < 0.25)
    grads = []
    for skip in (False, True):
        x = _weights(p, w).requires_grad_()
        out = mixed_logits(p, x, skip_zeros=skip)
        out.pow(2).mean().backward()
        grads.append((out.detach(), x.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    nonzero = _weights(p, w) != 0
    assert torch.allclose(grads[0][1][nonzero], grads[1][1][nonzero], atol=1e-6)
    assert float(grads[1][1][~nonzero].abs().max()) == 0.0 and float(grads[0][1][~nonzero & p.upstream].abs().max()) > 0


@pytest.mark.parametrize("name", ["induction", "ioi", "modular-sum"])
def test_edge_pruning_recovers_the_zoo_plants(name):
    """Ranked by their learned gates the planted edges come first (edge AUC 1.0), and the circuit
    of gates above 0.5 at the plant's size keeps the behaviour."""
    e = acdc.zoo.load(name)
    truth = len(e.truth.edges) / acdc.Graph.from_model(e.model).n_edges
    c = acdc.prune_edges(e.model, e.task, target=truth, steps=300, progress=False)
    roc = acdc.ROC.from_scores(c, e.truth)
    assert roc.auc == 1.0, (name, roc.auc)
    assert c.settings["method"] == "edge-pruning" and abs(c.settings["kept_fraction"] - truth) < 0.5 * truth + 0.01
    assert acdc.faithfulness(e.model, e.task, c).normalized > 0.8
    density = c.settings["density_trace"]  # the expected fraction kept at each step: from ~1 down to the target
    assert len(density) == 300 and density[0] > 0.98 and abs(density[-1] - truth) < 0.5 * truth + 0.01


def test_edge_pruning_density_trace_is_the_expected_l0():
    """The density recorded at each step is the gates' expected L0 fraction at their updated log_alpha:
    with lr=0 the gates stay at init, sigmoid(init - beta log(-l / r)) exactly."""
    import math

    from acdc.algorithms.edge_pruning import BETA, LEFT, RIGHT

    e = acdc.zoo.load("induction")
    for init in (3.0, -1.0):
        c = acdc.prune_edges(e.model, e.task, target=0.5, steps=2, progress=False,
                             lr=1e-12, init=init)
        expected = 1 / (1 + math.exp(-(init - BETA * math.log(-LEFT / RIGHT))))
        assert c.settings["density_trace"] == pytest.approx([expected, expected], abs=1e-6)


def test_edge_pruning_options_are_checked_before_any_run():
    e = acdc.zoo.load("induction")
    for bad, words in [({"target": 0}, "target must be"), ({"steps": 0}, "steps must be"), ({"loss": "mse"}, "loss must be")]:
        with pytest.raises(ValueError, match=words):
            EdgePruningOptions(**bad)
    with pytest.raises(ValueError, match="target must be"):
        acdc.prune_edges(e.model, e.task, target=1.5, progress=False)


# ---------------------------------------------------------------- every kind of graph: neurons, features, positions
def _kinds(model):
    """(name, graph, positions, split kwargs for the hooked oracle, transcoders) of each kind of graph the mixed run takes."""
    from test_features import feature_split, random_set

    ts = random_set(model, (0, 1), "relu", True, n=10)
    feats = acdc.Graph.from_model(model, transcoders=ts, features={0: [0, 2, 3, 5, 7], 1: [1, 4, 6, 8, 9]})
    positions = Positions.named({"A": [1, 2, 1, 2], "B": [3, 4, 2, 4], "END": [5, 5, 4, 5]}, 4, 6)
    return [
        ("neurons", acdc.Graph.from_model(model, mlp_units="neurons"), None, None, None),
        ("features", feats, None, feature_split(model, feats, ts), ts),
        ("positions", acdc.Graph.from_model(model, positions=positions.names), positions, {}, None),
        ("positional features", acdc.Graph.from_model(model, transcoders=ts, features=dict(feats.features.features),
                                                      positions=positions.names), positions, feature_split(model, feats, ts), ts),
    ]


def _dense_weights(g, w_edges: torch.Tensor) -> torch.Tensor:
    w = torch.zeros(g.state_shape, dtype=w_edges.dtype)
    w[g._edge_coords(w.device)] = w_edges
    return w


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_mixed_run_on_every_kind_of_graph_at_zero_one_weights_is_the_patched_run(model, ablation):
    clean, corrupt = random_tokens()
    for name, g, positions, _, ts in _kinds(model):
        p = acdc.Patcher(model, clean, corrupt, graph=g, ablation=ablation, positions=positions, transcoders=ts)
        for seed in (0, 1):
            keep = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(seed)) < 0.6
            got = mixed_logits(p, _dense_weights(g, keep.float()))
            assert torch.allclose(got, p.logits(~keep), atol=1e-5), (name, seed)
            assert torch.allclose(mixed_logits(p, _dense_weights(g, keep.float()), skip_zeros=True), got, atol=1e-5)
        assert torch.allclose(mixed_logits(p, _dense_weights(g, torch.ones(g.n_edges))), p.clean.logits, atol=1e-5), name


@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_mixed_run_on_every_kind_of_graph_at_fractional_weights_is_the_hooked_mix(model, ablation):
    """Each destination reads w O + (1 - w) A of each source, at each token the weight of the edge at that
    token's position: the hooked forward with that mix (neurons as activation x W_out row, features as
    activation x decoder row, the error and skip nodes, by hand in the oracle)."""
    from oracle import ablation_values, split_forward

    from acdc.neurons import NEURON

    clean, corrupt = random_tokens()
    for name, g, positions, split, ts in _kinds(model):
        if split is None:  # neurons: each one's output a_i W_out[i], b_out outside them
            split = _neuron_split(model, g)
        p = acdc.Patcher(model, clean, corrupt, graph=g, ablation=ablation, positions=positions, transcoders=ts)
        w = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(3))
        got = mixed_logits(p, _dense_weights(g, w))
        mix: dict[str, torch.Tensor] = {}
        for i, e in enumerate(g.edges):
            at = torch.ones(clean.shape, dtype=torch.bool) if positions is None else positions.mask(e.pos)
            mix[e.base_name] = mix.get(e.base_name, torch.zeros(clean.shape)) + at * (1.0 - float(w[i]))
        abl = ablation_values(model, g, corrupt, ablation, clean.shape[0], **split)
        want = split_forward(model, g, clean, ablated=mix, abl=abl, **split)[0][:, -1]
        assert torch.allclose(got, want, atol=1e-4), (name, float((got - want).abs().max()))
        assert any(s.kind is NEURON for s in g.sources) or name != "neurons"


def _neuron_split(model, g) -> dict:
    """`oracle.split_forward`'s split of a neuron graph: neuron i of layer L outputs a_i W_out[i]; b_out is outside."""
    from acdc.model import Transformer

    tf = Transformer.from_bridge(model)

    def split(layer, x, post, y):
        acts = tf.mlp_hidden(layer, x)
        return {f"m{layer}.n{i}": acts[..., i, None] * tf.mlp_out_rows(layer)[i] for i in range(acts.shape[-1])}

    return {"split": split, "mlp_bias": [tf.mlp_bias(layer) for layer in range(tf.arch.n_layers)]}


def test_mixed_run_gradient_on_a_feature_graph_is_the_finite_difference(model):
    """The gradient reaches edges out of features and error nodes through the transcoders' activations
    (frozen: nothing reaches their parameters)."""
    clean, corrupt = random_tokens()
    _, g, _, _, ts = _kinds(model)[1]
    grad = _gradient_is_the_finite_difference(acdc.Patcher(model, clean, corrupt, graph=g, transcoders=ts))
    feature_edges = torch.tensor([e.src.name.startswith("m0.f") for e in g.edges])
    assert float(grad[feature_edges].abs().max()) > 0
    assert all(prm.grad is None for layer in ts.layers for prm in ts[layer].parameters())


def test_edge_pruning_recovers_the_planted_feature_chain():
    """On the zoo's feature graph (features, error and skip nodes) the learned gates rank the planted
    feature edges first, at edge and node level (AUC 1.0), as ACDC and attribution do."""
    chain = acdc.zoo.load("feature-chain")
    truth = len(chain.truth.edges) / chain.graph.n_edges
    c = acdc.prune_edges(chain.model, chain.task, graph=chain.graph, transcoders=chain.transcoders, target=truth, steps=300, progress=False)
    for level in ("edge", "node"):
        assert acdc.ROC.from_scores(c, chain.truth, level=level).auc == 1.0, level
    assert acdc.faithfulness(chain.model, chain.task, c, transcoders=chain.transcoders).normalized > 0.8


def test_positional_edge_pruning_on_the_planted_feature_chain():
    """At token positions, the gates keep the planted feature edges, each at a position that carries it:
    every planted edge kept somewhere, and at its best position ranked above every unplanted edge at any."""
    chain = acdc.zoo.load("feature-chain")
    n_pos = int(chain.task.clean.shape[1])
    truth = len(chain.truth.edges) / (chain.graph.n_edges * n_pos)
    c = acdc.prune_edges(chain.model, chain.task, graph=chain.graph, transcoders=chain.transcoders, positions="tokens", target=truth, steps=300,
                         progress=False)
    assert c.graph.positions == tuple(str(i) for i in range(n_pos))
    assert {e.split("@")[0] for e in c.edges} >= set(chain.truth.edges)
    best: dict[str, float] = {}  # each plain edge's best gate over its positions
    for e, score in zip(c.graph.edges, c.scores.tolist(), strict=True):
        best[e.base_name] = max(best.get(e.base_name, 0.0), score)
    planted = set(chain.truth.edges)
    assert min(best[e] for e in planted) > max(v for e, v in best.items() if e not in planted)


def test_the_kl_loss_runs_from_the_full_model_to_the_mixed_run():
    """KL(full || mixed) by hand: p = (0.5, 0.5), q = (0.9, 0.1): 0.5 ln(0.5 / 0.9) + 0.5 ln(0.5 / 0.1) = 0.5108;
    the reverse, KL(q || p) = 0.9 ln 1.8 + 0.1 ln 0.2 = 0.3681. Rows are averaged; equal distributions give 0."""
    import math

    from acdc.algorithms.edge_pruning import kl_from_reference

    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.9, 0.1]])
    got = kl_from_reference(p.log(), q.log() + 3.0)  # logits: any shift of the log-probabilities
    want = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert float(got) == pytest.approx(want, abs=1e-6) and abs(want - 0.3681) > 0.1
    two = kl_from_reference(torch.cat([p, q]).log(), torch.cat([q, q]).log())
    assert float(two) == pytest.approx(want / 2, abs=1e-6)  # the second row is 0: the mean over rows
