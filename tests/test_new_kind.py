"""The proof that a kind of node is added in one place: a new kind defined in this file alone,
registered, and run through ACDC, EAP, Edge Pruning and faithfulness against the hooked oracle,
touching no file of the package.

The kind: an MLP's output split into *directions*. With V an orthonormal basis of d_model (rows
v_0 .. v_{d-1}), node ``m{L}.d{i}`` outputs ``((MLP(x) - b_out) . v_i) v_i``: an activation per
token times a fixed row, so it is a factored unit like a neuron or a transcoder feature; the
directions of a layer sum to its MLP's output less ``b_out``, which belongs to no node.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_tokens, tiny_gpt2
from oracle import ablation_values, acdc_by_hand, eap_reference, split_forward

import acdc
from acdc.blocks import MLP_ENGINES
from acdc.graph import KINDS, MLP, MLP_UNITS, Destination, Node, NodeKind
from acdc.mixing import mixed_logits
from acdc.model import Transformer

DIRECTION = NodeKind("direction", slots=(), component=True, order=1, shape="circle", pattern="m{layer}.d{index}")


def _basis(d: int) -> torch.Tensor:
    """[d, d] a fixed random orthonormal basis (rows)."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(11)))
    return q.T.contiguous()


class Directions:
    """The engine's side of the kind (`acdc.blocks.MLPUnits`): activations, rows, what lies outside them."""

    def __init__(self, d: int):
        self.V = _basis(d)

    def layer_units(self, layer: int) -> int:
        return len(self.V)

    def activations(self, tf: Transformer, layer: int, x: torch.Tensor) -> torch.Tensor:
        return (tf.mlp(layer, x) - tf.mlp_bias(layer)) @ self.V.T.to(x.dtype)

    def rows(self, tf: Transformer, layer: int) -> torch.Tensor:
        return self.V

    def extras(self, tf: Transformer, layer: int, x: torch.Tensor, acts: torch.Tensor) -> None:
        return None

    def bias(self, tf: Transformer, layer: int) -> torch.Tensor:
        return tf.mlp_bias(layer)


def _direction_units(graph: acdc.Graph, layer: int) -> tuple[list[Node], list[Destination]]:
    assert graph.d_model is not None
    return [Node(layer, DIRECTION, i) for i in range(graph.d_model)], [Destination(Node(layer, MLP))]


@pytest.fixture(scope="module")
def registered():
    """The kind registered where kinds register (the graph's kinds, how an MLP enters a graph, how the engine
    runs it), and taken out again."""
    KINDS["direction"] = DIRECTION
    MLP_UNITS["directions"] = _direction_units
    MLP_ENGINES["directions"] = lambda graph, tf, dictionary: Directions(tf.arch.d_model)
    yield
    del KINDS["direction"], MLP_UNITS["directions"], MLP_ENGINES["directions"]


@pytest.fixture(scope="module")
def setup(registered):
    model = tiny_gpt2(n_layer=2, n_head=2, d=8, seed=4)
    g = acdc.Graph.from_model(model, mlp_units="directions")
    tf = Transformer.of(model)
    V = _basis(tf.arch.d_model)

    def split(layer, x, post, y):  # the hooked forward's split of each MLP, by hand
        out = y - tf.mlp_bias(layer)
        return {f"m{layer}.d{i}": (out @ V[i])[..., None] * V[i] for i in range(len(V))}

    oracle = {"split": split, "mlp_bias": [tf.mlp_bias(layer) for layer in range(tf.arch.n_layers)]}
    return model, g, oracle


def _hooked(model, g, oracle, clean, corrupt, ablated, ablation):
    abl = ablation_values(model, g, corrupt, ablation, clean.shape[0], **oracle)
    masks = {e: torch.ones(clean.shape, dtype=torch.bool) for e in ablated}
    return split_forward(model, g, clean, ablated=masks, abl=abl, **oracle)[0][:, -1]


def test_the_graph_has_the_new_nodes(setup):
    model, g, _ = setup
    d = model.cfg.d_model
    assert [s.name for s in g.sources if s.layer == 0][-3:] == [f"m0.d{d - 3}", f"m0.d{d - 2}", f"m0.d{d - 1}"]
    assert sum(s.kind is DIRECTION for s in g.sources) == 2 * d
    assert acdc.graph.parse_node("m1.d5") == Node(1, DIRECTION, 5)


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_patched_runs_equal_the_hooked_forward(setup, ablation):
    model, g, oracle = setup
    clean, corrupt = random_tokens()
    p = acdc.Patcher(model, clean, corrupt, graph=g, ablation=ablation)
    for seed in (0, 1):
        mask = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(seed)) < 0.4
        want = _hooked(model, g, oracle, clean, corrupt, {g.edges[i].name for i in mask.nonzero().squeeze(1).tolist()}, ablation)
        assert torch.allclose(p.logits(mask), want, atol=1e-5)
        assert torch.allclose(p.state().propagate(g.dense(~mask) & p.upstream).logits[0], want, atol=1e-5)


def _kl(full: torch.Tensor, patched: torch.Tensor) -> float:
    ref, new = full.log_softmax(-1), patched.log_softmax(-1)
    return float((ref.exp() * (ref - new)).sum(-1).mean())


def test_acdc_equals_acdc_by_hand(setup):
    """ACDC's decisions and measured deltas on the new kind's graph equal ACDC done with one hooked forward per edge."""
    model, g, oracle = setup
    clean, corrupt = random_tokens(batch=3, pos=4)
    with torch.no_grad():
        full = model(clean)[:, -1]

    def loss(removed: set[str]) -> float:
        return _kl(full, _hooked(model, g, oracle, clean, corrupt, removed, "resample"))

    threshold = 0.003
    kept, deltas = acdc_by_hand(g, loss, threshold)
    assert min(abs(d - threshold) for d in deltas.values()) > 1e-5 and 0 < len(kept) < g.n_edges
    assert any(e.startswith("m0.d") for e in kept)
    c = acdc.discover(model, clean, corrupt, graph=g, threshold=threshold, progress=False)
    assert set(c.edges) == kept
    tested = {e.name: c.edge_score(e.name) for e in g.edges if not math.isnan(c.edge_score(e.name))}
    assert tested.keys() == deltas.keys()
    for name, d in deltas.items():
        assert tested[name] == pytest.approx(d, abs=1e-5), name


def test_eap_equals_the_gradient_formula(setup):
    model, g, oracle = setup
    clean, corrupt = random_tokens()
    correct, wrong = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])

    def loss_fn(logits):
        last = logits[:, -1]
        return -(last[torch.arange(4), correct] - last[torch.arange(4), wrong]).mean()

    s = acdc.attribute(model, clean, corrupt, method="eap", metric="logit_diff", answers=(correct, wrong), graph=g)
    want = eap_reference(model, g, clean, corrupt, "resample", loss_fn, **oracle)
    for e in g.edges:
        assert s[e.name] == pytest.approx(want[e.name], rel=1e-4, abs=1e-6), e.name


def test_edge_pruning_runs_on_the_mixed_forward(setup):
    """The mixed run at 0/1 weights is the patched run and at fractional weights the hooked mix; Edge
    Pruning trains on it and returns a circuit of the new kind's graph."""
    model, g, oracle = setup
    clean, corrupt = random_tokens()
    p = acdc.Patcher(model, clean, corrupt, graph=g)
    w = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(2))
    dense = torch.zeros(g.state_shape)
    dense[g.edge_dst, g.edge_src] = w
    abl = ablation_values(model, g, corrupt, "resample", clean.shape[0], **oracle)
    mix = {e.name: torch.full(clean.shape, 1.0 - float(w[i])) for i, e in enumerate(g.edges)}
    want = split_forward(model, g, clean, ablated=mix, abl=abl, **oracle)[0][:, -1]
    assert torch.allclose(mixed_logits(p, dense), want, atol=1e-4)
    keep = w > 0.5
    zero_one = torch.zeros(g.state_shape)
    zero_one[g.edge_dst, g.edge_src] = keep.float()
    assert torch.allclose(mixed_logits(p, zero_one), p.logits(~keep), atol=1e-5)
    c = acdc.prune_edges(model, clean, corrupt, graph=g, target=0.2, steps=60, progress=False, lr=0.3)
    assert set(c.edges) <= {e.name for e in g.edges} and 0 < len(c.edges) < g.n_edges
    assert any(e.startswith("m0.d") for e in c.edges)


def test_faithfulness_equals_the_hooked_runs(setup):
    """Normalized faithfulness of a circuit on the new kind's graph: (m(C) - m({})) / (m(M) - m({})) with each
    m a hooked forward (the complement of C ablated; every edge; none)."""
    model, g, oracle = setup
    clean, corrupt = random_tokens()
    correct, wrong = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])
    task = acdc.Task.from_tokens(clean, corrupt, correct=correct, incorrect=wrong)
    keep = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(7)) < 0.5
    circuit = acdc.Circuit(g, keep, torch.zeros(g.n_edges))
    f = acdc.faithfulness(model, task, circuit, metric="logit_diff", progress=False)

    def m(ablated: set[str]) -> float:
        last = _hooked(model, g, oracle, clean, corrupt, ablated, "resample")
        return float((last[torch.arange(4), correct] - last[torch.arange(4), wrong]).mean())

    every = {e.name for e in g.edges}
    full, empty = m(set()), m(every)
    circ = m({e.name for e, k in zip(g.edges, keep.tolist(), strict=True) if not k})
    assert f.normalized == pytest.approx((circ - empty) / (full - empty), rel=1e-4, abs=1e-5)
