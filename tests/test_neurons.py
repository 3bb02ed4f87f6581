"""MLP neurons as a node kind (acdc/neurons.py): patched logits equal a hooked forward done by hand."""

from __future__ import annotations

import pytest
import torch
from conftest import logit_diff_loss, random_answers, random_tokens, tiny_gpt2, tiny_neox
from oracle import destination_grads

import acdc
from acdc.neurons import NEURON

ABLATIONS = ["resample", "mean", "zero"]


def _neuron_sources(model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every source's output on a plain run, neurons as activation x W_out row: name -> [B, S, d]."""
    model.set_use_attn_result(True)
    _, cache = model.run_with_cache(tokens)
    out = {"input": cache["blocks.0.hook_resid_pre"]}
    for layer in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            out[f"a{layer}.h{h}"] = cache[f"blocks.{layer}.attn.hook_result"][:, :, h]
        post, rows = cache[f"blocks.{layer}.mlp.hook_post"], model.blocks[layer].mlp.W_out.detach()
        for i in range(rows.shape[0]):
            out[f"m{layer}.n{i}"] = post[..., i, None] * rows[i]
    return out


def hooked_neuron_logits(model, graph, clean, corrupt, ablated: set[str], ablation: str) -> torch.Tensor:
    """The slow, obvious forward: TransformerLens hooks rebuild every destination's input as the sum of its
    sources (neuron i: its activation in this run times W_out[i]), an ablated edge's source swapped for
    its ablation value, plus the biases that belong to no source (b_O of each layer, b_out of each MLP)."""
    cfg = model.cfg
    model.set_use_split_qkv_input(True)
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    corrupt_out = _neuron_sources(model, corrupt)
    if ablation == "resample":
        abl = corrupt_out
    elif ablation == "mean":
        abl = {k: v.mean(0, keepdim=True).expand_as(v) for k, v in corrupt_out.items()}
    else:
        abl = {k: torch.zeros_like(v) for k, v in corrupt_out.items()}
    b_o = [model.blocks[layer].attn.b_O.detach() for layer in range(cfg.n_layers)]
    b_out = [model.blocks[layer].mlp.b_out.detach() for layer in range(cfg.n_layers)]
    sources_of: dict[str, list[str]] = {}
    for e in graph.edges:
        sources_of.setdefault(e.dst.name, []).append(e.src.name)
    current: dict[str, torch.Tensor] = {}

    def rebuilt(dst: str, attn_layers: int, mlp_layers: int) -> torch.Tensor:
        total = sum(b_o[:attn_layers], torch.zeros(cfg.d_model)) + sum(b_out[:mlp_layers], torch.zeros(cfg.d_model))
        for src in sources_of[dst]:
            total = total + (abl[src] if f"{src}->{dst}" in ablated else current[src])
        return total

    def record_input(x, hook):
        current["input"] = x
        return x

    def qkv(layer, letter):
        def fn(x, hook):
            x = x.clone()
            for h in range(cfg.n_heads):
                x[:, :, h] = rebuilt(f"a{layer}.h{h}<{letter}>", layer, layer)
            return x
        return fn

    def result(layer):
        def fn(x, hook):
            for h in range(cfg.n_heads):
                current[f"a{layer}.h{h}"] = x[:, :, h]
            return x
        return fn

    def mlp_in(layer):
        return lambda x, hook: rebuilt(f"m{layer}", layer if cfg.parallel_attn_mlp else layer + 1, layer)

    def post(layer):
        def fn(x, hook):
            rows = model.blocks[layer].mlp.W_out.detach()
            for i in range(rows.shape[0]):
                current[f"m{layer}.n{i}"] = x[..., i, None] * rows[i]
            return x
        return fn

    hooks = [("blocks.0.hook_resid_pre", record_input)]
    for layer in range(cfg.n_layers):
        hooks += [(f"blocks.{layer}.hook_{c}_input", qkv(layer, c)) for c in "qkv"]
        hooks += [(f"blocks.{layer}.attn.hook_result", result(layer)), (f"blocks.{layer}.hook_mlp_in", mlp_in(layer)),
                  (f"blocks.{layer}.mlp.hook_post", post(layer))]
    hooks.append(("ln_final.hook_in", lambda x, hook: rebuilt("logits", cfg.n_layers, cfg.n_layers)))
    with torch.no_grad():
        return model.run_with_hooks(clean, fwd_hooks=hooks)


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
        want = hooked_neuron_logits(model, g, clean, corrupt, names, ablation)[:, -1]
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


def test_neuron_graphs_say_what_does_not_run_yet(model):
    clean, corrupt = random_tokens(vocab=50)
    g = acdc.Graph.from_model(model, mlp_units="neurons")
    p = acdc.Patcher(model, clean, corrupt, graph=g)
    with pytest.raises(NotImplementedError, match="does not run on graphs with MLP neurons yet"):
        p.state()
    with pytest.raises(NotImplementedError, match="eap-ig-activations.*use eap or eap-ig-inputs"):
        acdc.attribute(model, clean, corrupt, method="eap-ig-activations", graph=g, metric="logit_diff", answers=random_answers())


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
        clean_out, corrupt_out = _neuron_sources(model, clean), _neuron_sources(model, corrupt)
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


def test_neuron_eap_sums_to_the_whole_mlps(model):
    """A layer's neuron scores into a destination add up to the whole MLP's score there (b_out cancels)."""
    clean, corrupt = random_tokens(vocab=50)
    kw = dict(method="eap-ig-inputs", steps=3, metric="logit_diff", answers=random_answers())
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
