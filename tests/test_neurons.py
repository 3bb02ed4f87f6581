"""MLP neurons as a node kind (acdc/neurons.py): patched logits equal a hooked forward done by hand."""

from __future__ import annotations

import pytest
import torch
from conftest import logit_diff_loss, random_answers, random_tokens, tiny_gpt2, tiny_neox
from oracle import destination_grads, patched_logits, split_forward

import acdc
from acdc.neurons import NEURON

ABLATIONS = ["resample", "mean", "zero"]


def neuron_split(model) -> dict:
    """`oracle.split_forward`'s split of a neuron graph's MLPs, by hand: neuron i outputs its activation
    in this run (hook_post) times W_out[i]; b_out belongs to no node."""
    def split(layer, x, post, y):
        rows = model.blocks[layer].mlp.W_out.detach()
        return {f"m{layer}.n{i}": post[..., i, None] * rows[i] for i in range(rows.shape[0])}

    return {"split": split, "mlp_bias": [model.blocks[layer].mlp.b_out.detach() for layer in range(model.cfg.n_layers)]}


def _neuron_sources(model, graph, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every source's output on a plain run, neurons as activation x W_out row: name -> [B, S, d]."""
    return split_forward(model, graph, tokens, **neuron_split(model))[1]


@pytest.fixture(scope="module", params=["gpt2", "neox"])
def model(request):
    """Tiny random models with random biases too (b_out is outside every neuron: a bias of zero would hide that)."""
    m = tiny_gpt2(n_layer=2, n_head=2, d=16) if request.param == "gpt2" else tiny_neox(n_layer=2, n_head=2, d=16)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in m.original_model.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))
    return m


def test_neuron_graph_names_and_counts(model):
    g = acdc.Graph.from_model(model, mlp_units="neurons")
    n = model.cfg.d_mlp
    assert g.d_mlp == n and [s.name for s in g.sources][:4] == ["input", "a0.h0", "a0.h1", "m0.n0"]
    assert g.sources[3].kind is NEURON and g.sources[3].kind == "neuron" and g.sources[3].kind.component
    assert "m0.n5->a1.h1<k>" in g.edges[g.edge_index("m0.n5->a1.h1<k>")].name and g.has_edge("a0.h1->m0") != model.cfg.parallel_attn_mlp
    assert not g.has_edge("m0.n5->m0") and not g.has_edge("m0->logits") and g.has_edge(f"m1.n{n - 1}->logits")
    assert g.config()["mlp_units"] == "neurons" and acdc.Graph.from_config(g.config()).n_edges == g.n_edges
    with pytest.raises(ValueError, match="no whole-MLP source in layer 0"):
        g.mlp_src(0)


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_neuron_edges_ablated_equal_the_hooked_forward(model, ablation):
    clean, corrupt = random_tokens(vocab=50)
    g = acdc.Graph.from_model(model, mlp_units="neurons")
    p = acdc.Patcher(model, clean, corrupt, graph=g, ablation=ablation)
    gen = torch.Generator().manual_seed(7)
    neuron_edges = [i for i, e in enumerate(g.edges) if e.src.kind is NEURON]
    for k in (1, 40, len(neuron_edges) // 2):
        pick = torch.tensor(neuron_edges)[torch.randperm(len(neuron_edges), generator=gen)[:k]].tolist()
        pick += torch.randint(0, g.n_edges, (k // 8,), generator=gen).tolist()  # and some edges of other kinds
        names = {g.edges[i].name for i in pick}
        want = patched_logits(model, g, clean, corrupt, names, ablation, **neuron_split(model))[:, -1]
        got = p.logits(sorted(names))
        scale = float(want.abs().max())
        assert float((got - want).abs().max()) <= 1e-4 * max(scale, 1.0), (ablation, k)
        assert k < 5 or float((got - p.clean.logits).abs().max()) > 1e-3  # the ablation changed something


def test_all_of_a_layers_neurons_ablated_is_the_mlp_ablated_but_its_bias(model):
    """Cutting every neuron of m0 from everything equals cutting m0 itself under resample (b_out cancels out
    of output minus ablation value)."""
    clean, corrupt = random_tokens(vocab=50)
    g = acdc.Graph.from_model(model, mlp_units="neurons")
    plain = acdc.Graph.from_model(model)
    p, q = acdc.Patcher(model, clean, corrupt, graph=g), acdc.Patcher(model, clean, corrupt)
    a = p.logits([e.name for e in g.edges if e.src.name.startswith("m0.")])
    b = q.logits([e.name for e in plain.edges if e.src.name == "m0"])
    assert torch.allclose(a, b, atol=1e-5)


def test_neuron_graphs_refuse_interpolating_part_of_a_layer(model):
    """EAP-IG interpolates a layer's neurons as one group, its MLP. (The incremental engine runs on
    neuron graphs: tests/test_incremental_units.py.)"""
    clean, corrupt = random_tokens(vocab=50)
    g = acdc.Graph.from_model(model, mlp_units="neurons")
    p = acdc.Patcher(model, clean, corrupt, graph=g)
    with pytest.raises(ValueError, match="include factored MLP units.*whole MLP group"):
        p.source_values.interpolated(g.mlp_sources(0)[2:5], 0.5)
    with pytest.raises(ValueError, match="as one group, its MLP"):
        p.source_values.interpolated(g.mlp_sources(0)[:3], 0.5)


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_neuron_eap_equals_the_gradient_formula_by_hand(model, ablation):
    """EAP on a neuron graph (the engine's factored products) against the slow formula: each source's
    (ablated - clean) output, neurons as activation x W_out row, dotted with the hooked gradient at the
    destination's input."""
    clean, corrupt = random_tokens(vocab=50)
    g = acdc.Graph.from_model(model, mlp_units="neurons")
    s = acdc.attribute(model, clean, corrupt, method="eap", metric="logit_diff", answers=random_answers(),
                       ablation=ablation, graph=g)
    with torch.no_grad():
        clean_out, corrupt_out = _neuron_sources(model, g, clean), _neuron_sources(model, g, corrupt)
    grads = destination_grads(model, g, clean, logit_diff_loss)
    want = torch.empty(g.n_edges, dtype=torch.float64)
    for i, e in enumerate(g.edges):
        c = clean_out[e.src.name]
        a = {"resample": corrupt_out[e.src.name], "mean": corrupt_out[e.src.name].mean(0, keepdim=True),
             "zero": torch.zeros_like(c)}[ablation]
        want[i] = float(((a - c) * grads[e.dst.name]).sum())
    neuron = torch.tensor([e.src.kind is NEURON for e in g.edges])
    scale = float(want.abs().max())
    assert scale > 0 and float(want[neuron].abs().max()) > 1e-3 * scale  # neurons score, not only heads
    assert torch.allclose(s.values, want, atol=1e-4 * scale, rtol=1e-4)


@pytest.mark.parametrize("method", ["eap-ig-inputs", "eap-ig-activations"])
def test_neuron_eap_sums_to_the_whole_mlps(model, method):
    """A layer's neuron scores into a destination add up to the whole MLP's score there (b_out cancels);
    EAP-IG-activations interpolates a neuron layer as one group, its MLP, as for the whole MLP."""
    clean, corrupt = random_tokens(vocab=50)
    kw = dict(method=method, steps=3, metric="logit_diff", answers=random_answers())
    g = acdc.Graph.from_model(model, mlp_units="neurons")
    by_neuron = acdc.attribute(model, clean, corrupt, graph=g, **kw)
    whole = acdc.attribute(model, clean, corrupt, **kw)
    for e in whole.graph.edges:
        if e.src.name == "m0":
            parts = [f"m0.n{i}->{e.dst.name}" for i in range(model.cfg.d_mlp)]
            total = sum(by_neuron[n] for n in parts)
            assert total == pytest.approx(whole[e.name], rel=1e-4, abs=1e-6), e.name
        elif e.src.name != "m1":
            assert by_neuron[e.name] == pytest.approx(whole[e.name], rel=1e-5, abs=1e-7), e.name


@pytest.mark.slow
def test_gpt2_small_with_every_neuron_runs_in_2gb(tmp_path):
    """36,864 neuron sources (7.6M edges): the graph builds and a patched forward of a random edge set runs,
    the whole process (model included) within 2 GB."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments" / "neuron_graph.py"
    subprocess.run([sys.executable, str(script), "--prompts", "4", "--out", str(tmp_path)], check=True,
                   capture_output=True, timeout=600)
    r = json.loads((tmp_path / "neuron_graph.json").read_text())
    assert (r["neurons"], r["edges"]) == (36864, 7568725) and r["logits_finite"]
    assert r["peak_gb"] < 2.0, r
