"""Feature graphs (acdc/feature_nodes.py): each MLP with a transcoder split into its features, an error
node and a skip node. Patched logits and EAP scores equal a hooked forward done by hand, in which
every destination's input is rebuilt from its sources and each such MLP is swapped for its
transcoder plus the error term."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import logit_diff_loss, random_answers, random_tokens, tiny_gpt2, tiny_neox
from oracle import ablation_values as oracle_ablation_values
from oracle import acdc_by_hand, destination_grads, eap_reference, patched_logits, per_position_masks, split_forward

import acdc
from acdc.feature_nodes import ERROR, FEATURE, SKIP
from acdc.model import Transformer
from acdc.positions import Positions
from acdc.transcoders import ModelInfo, Transcoder, TranscoderConfig, TranscoderSet

ABLATIONS = ["resample", "mean", "zero"]


def feature_explorer():
    """An explorer on a tiny random GPT-2 (32 positions) with random ReLU transcoders at both layers and a feature
    circuit found on 3 random 5-token prompts: room to generate after each prompt."""
    from conftest import tiny_gpt2

    from acdc.explorer import Explorer

    model = tiny_gpt2(n_layer=2, vocab=50, d=32)
    ts = random_set(model, layers=(0, 1), activation="relu")
    graph = acdc.Graph.from_model(model, transcoders=ts, features={0: [1, 3], 1: [2, 5]})
    gen = torch.Generator().manual_seed(0)
    task = acdc.Task.from_tokens(torch.randint(1, 50, (3, 5), generator=gen), torch.randint(1, 50, (3, 5), generator=gen),
                                 correct=[1, 2, 3], incorrect=[4, 5, 6])
    circuit = acdc.discover(model, task, threshold=0.05, graph=graph, transcoders=ts, progress=False)
    return Explorer(model, task, circuit, transcoders=ts), model, task, ts


def random_set(model, layers=(0, 1), activation: str = "topk", skip: bool = False, n: int = 12, seed: int = 0) -> TranscoderSet:
    """Random transcoders: far from the MLPs, so the error nodes carry a lot."""
    tf = Transformer.from_bridge(model)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer in layers:
        tc = Transcoder(TranscoderConfig(tf.arch.d_model, n, activation, 4 if activation == "topk" else None, skip))
        with torch.no_grad():
            for p in tc.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            if tc.log_threshold is not None:
                tc.log_threshold.fill_(math.log(0.3))
        out[layer] = tc
    return TranscoderSet(out, ModelInfo.of(tf, "tiny"), source="random (tests)")


def _ln2(model, layer: int):
    """The Hugging Face module that norms MLP ``layer``'s input (what a transcoder reads)."""
    hf = model.original_model
    if hasattr(hf, "transformer"):
        return hf.transformer.h[layer].ln_2
    if hasattr(hf, "gpt_neox"):
        return hf.gpt_neox.layers[layer].post_attention_layernorm
    block = hf.model.layers[layer]  # Llama-like; Gemma 2/3 norm the MLP's input with pre_feedforward_layernorm
    if hasattr(block, "post_feedforward_layernorm") and not hasattr(block, "pre_feedforward_layernorm"):
        return lambda x: x  # OLMo-2: no norm before the MLP
    return getattr(block, "pre_feedforward_layernorm", None) or block.post_attention_layernorm


def feature_split(model, graph, ts: TranscoderSet) -> dict:
    """`oracle.split_forward`'s split of a feature graph's MLPs, by hand: a featured MLP's output is
    a_i(xn) W_dec[i] per graph feature, xn @ W_skip, and the error MLP(x) - all of that - b_dec
    (b_dec outside every node); the other MLPs stay whole."""
    featured = {layer: idx for layer, idx in graph.features.features}

    def split(layer, x, post, y):
        if layer not in featured:
            return None
        tc = ts[layer]
        xn = _ln2(model, layer)(x)
        acts = tc.encode(xn)
        parts, recon = {}, tc.b_dec.detach().expand_as(y).clone()
        for i in featured[layer]:
            parts[f"m{layer}.f{i}"] = acts[..., i, None] * tc.W_dec[i].detach()
            recon = recon + parts[f"m{layer}.f{i}"]
        if tc.W_skip is not None:
            parts[f"m{layer}.skip"] = xn @ tc.W_skip.detach()
            recon = recon + parts[f"m{layer}.skip"]
        parts[f"m{layer}.err"] = y - recon
        return parts

    d = model.cfg.d_model
    return {"split": split, "mlp_bias": [ts[layer].b_dec.detach() if layer in featured else torch.zeros(d)
                                         for layer in range(model.cfg.n_layers)]}


def hooked(model, graph, ts: TranscoderSet, tokens, ablated=frozenset(), abl: dict | None = None):
    """The slow, obvious forward on the TransformerLens bridge with the MLPs split by hand
    (`feature_split`), the named edges ablated at every token. Returns (logits [B, S, vocab],
    every source's output in this run: name -> [B, S, d])."""
    masks = {e: torch.ones(tokens.shape, dtype=torch.bool) for e in ablated}
    return split_forward(model, graph, tokens, ablated=masks, abl=abl, **feature_split(model, graph, ts))


def ablation_values(model, graph, ts, corrupt, ablation: str, batch: int) -> dict[str, torch.Tensor]:
    """Each source's ablation value: its corrupt-run output (a feature's: its corrupt activation x its
    decoder row), the mean of that over the corrupt prompts, or zero."""
    return oracle_ablation_values(model, graph, corrupt, ablation, batch, **feature_split(model, graph, ts))


@pytest.fixture(scope="module", params=["gpt2", "neox"])
def model(request):
    m = tiny_gpt2(n_layer=2, n_head=2, d=16) if request.param == "gpt2" else tiny_neox(n_layer=2, n_head=2, d=16)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # random biases: b_dec and b_O are outside every node, a zero would hide a slip
        for name, param in m.original_model.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))
    return m


SETS = [  # (layers, activation, skip, which features of layer 1 enter)
    ((0, 1), "topk", False, None),
    ((1,), "relu", True, None),
    ((0,), "jumprelu", True, None),
    ((0, 1), "relu", False, {0: [1, 4, 7], 1: [0, 2, 3, 5, 11]}),
]


def _graph(model, layers, activation, skip, chosen):
    ts = random_set(model, layers, activation, skip)
    return ts, acdc.Graph.from_model(model, transcoders=ts, features=chosen)


def test_feature_graph_names_counts_and_json(model, tmp_path):
    ts, g = _graph(model, (1,), "relu", True, {1: [5, 2, 2, 9]})
    names = [s.name for s in g.sources]
    assert names[-5:] == ["m1.f2", "m1.f5", "m1.f9", "m1.err", "m1.skip"] and "m0" in names  # layer 0 stays whole
    kinds = {s.name: s.kind for s in g.sources}
    assert kinds["m1.f5"] is FEATURE and kinds["m1.err"] is ERROR and kinds["m1.skip"] is SKIP and kinds["m1.err"].component
    assert g.has_edge("m1.f9->logits") and g.has_edge("m1.err->logits") and g.has_edge("m0->a1.h1<k>")
    assert g.has_edge("a1.h1->m1") != model.cfg.parallel_attn_mlp and not g.has_edge("m1.f2->m1")
    assert g.mlp_src(0) == names.index("m0")
    with pytest.raises(ValueError, match="no whole-MLP source in layer 1"):
        g.mlp_src(1)
    # the graph is topology: the JSON records the transcoders' description, and whatever runs it is given their weights
    assert not any(isinstance(v, acdc.TranscoderSet) for v in vars(g).values())
    circuit = acdc.Circuit(g, torch.ones(g.n_edges, dtype=torch.bool), torch.zeros(g.n_edges))
    back = acdc.Circuit.from_json(circuit.to_json(tmp_path / "c.json"))
    assert back.graph.shape() == g.shape() and back.graph.config()["transcoders"]["source"] == "random (tests)"
    assert back.graph.config()["features"] == {"1": [2, 5, 9]}
    clean, corrupt = random_tokens(vocab=50)
    with pytest.raises(ValueError, match=r"computed by transcoders \(random \(tests\)\).*pass transcoders=ts"):
        acdc.Patcher(model, clean, corrupt, graph=back.graph)
    with pytest.raises(ValueError, match="the transcoders cover layers \\[0\\]"):  # a set that does not cover the graph
        acdc.Patcher(model, clean, corrupt, graph=back.graph, transcoders=random_set(model, (0,), "relu", True))
    again = acdc.Patcher(model, clean, corrupt, graph=back.graph, transcoders=ts)
    assert again.graph.n_edges == g.n_edges
    with pytest.raises(ValueError, match=r"feature indices must lie in \[0, 12\)"):
        acdc.Graph.from_model(model, transcoders=ts, features={1: [12]})
    with pytest.raises(ValueError, match="transcoders cover layers \\[1\\]"):
        acdc.Graph.from_model(model, transcoders=ts, features={0: [1]})


@pytest.mark.parametrize("layers, activation, skip, chosen", SETS)
def test_the_unablated_feature_graph_is_the_model(model, layers, activation, skip, chosen):
    """Error nodes make the split exact: nothing ablated, the logits are the model's, however bad the
    transcoders (random here), and the hooked split agrees with the engine's."""
    ts, g = _graph(model, layers, activation, skip, chosen)
    clean, corrupt = random_tokens(vocab=50)
    p = acdc.Patcher(model, clean, corrupt, graph=g, transcoders=ts)
    want = model(clean)[:, -1]
    assert torch.allclose(p.logits([]), want, atol=1e-5)
    logits, out = hooked(model, g, ts, clean)
    assert torch.allclose(logits[:, -1], want, atol=1e-5)
    err = out[f"m{layers[0]}.err"]
    assert float(err.norm()) > 0.3 * float(sum(v.norm() for k, v in out.items() if k.startswith(f"m{layers[0]}.f")))


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("layers, activation, skip, chosen", SETS)
def test_feature_edges_ablated_equal_the_hooked_forward(model, layers, activation, skip, chosen, ablation):
    ts, g = _graph(model, layers, activation, skip, chosen)
    clean, corrupt = random_tokens(vocab=50)
    p = acdc.Patcher(model, clean, corrupt, graph=g, transcoders=ts, ablation=ablation)
    abl = ablation_values(model, g, ts, corrupt, ablation, clean.shape[0])
    gen = torch.Generator().manual_seed(7)
    kinds = {FEATURE: [], ERROR: [], SKIP: []}
    for i, e in enumerate(g.edges):
        kinds.get(e.src.kind, []).append(i)
    for k in (1, 6, 20):
        pick = [kinds[FEATURE][int(j)] for j in torch.randperm(len(kinds[FEATURE]), generator=gen)[:k]]
        pick += [kinds[ERROR][int(j)] for j in torch.randperm(len(kinds[ERROR]), generator=gen)[: max(1, k // 4)]]
        pick += [kinds[SKIP][int(j)] for j in torch.randperm(len(kinds[SKIP]), generator=gen)[:1]]
        pick += torch.randint(0, g.n_edges, (k // 3,), generator=gen).tolist()  # and edges of every kind
        names = {g.edges[i].name for i in pick}
        want = hooked(model, g, ts, clean, names, abl)[0][:, -1]
        got = p.logits(sorted(names))
        assert float((got - want).abs().max()) <= 1e-4 * max(float(want.abs().max()), 1.0), (ablation, k)
        assert float((got - p.clean.logits).abs().max()) > 1e-3  # the ablation changed something
    everything = hooked(model, g, ts, clean, {e.name for e in g.edges}, abl)[0][:, -1]
    assert torch.allclose(p.logits(torch.ones(g.n_edges, dtype=torch.bool)), everything, atol=1e-4)


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_feature_eap_equals_the_gradient_formula_by_hand(model, ablation):
    """EAP on a feature graph against the slow formula: each source's (ablated - clean) output, as the
    hooked split gives it, dotted with the hooked gradient at the destination's input."""
    ts, g = _graph(model, (0, 1), "relu", True, None)
    clean, corrupt = random_tokens(vocab=50)
    s = acdc.attribute(model, clean, corrupt, method="eap", metric="logit_diff", answers=random_answers(),
                       ablation=ablation, graph=g, transcoders=ts)
    clean_out = hooked(model, g, ts, clean)[1]
    abl = ablation_values(model, g, ts, corrupt, ablation, clean.shape[0])
    grads = destination_grads(model, g, clean, logit_diff_loss)
    want = torch.tensor([float(((abl[e.src.name] - clean_out[e.src.name]) * grads[e.dst.name]).sum()) for e in g.edges],
                        dtype=torch.float64)
    scale = float(want.abs().max())
    for kind in (FEATURE, ERROR, SKIP):  # every kind scores
        assert float(want[torch.tensor([e.src.kind is kind for e in g.edges])].abs().max()) > 1e-3 * scale, kind
    assert torch.allclose(s.values, want, atol=1e-4 * scale, rtol=1e-4)


def _kl(full: torch.Tensor, patched: torch.Tensor) -> float:
    ref, new = full.log_softmax(-1), patched.log_softmax(-1)
    return float((ref.exp() * (ref - new)).sum(-1).mean())


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_acdc_on_a_feature_graph_equals_plain_sequential(model, ablation):
    """ACDC on a feature graph (reruns from the first changed layer) makes the decisions and measures
    the deltas of ACDC done the obvious way: one hooked forward per tested edge."""
    ts, g = _graph(model, (0, 1), "relu", True, {0: [0, 3, 5], 1: [1, 2, 8, 9]})
    clean, corrupt = random_tokens(batch=5, pos=5, vocab=50)
    abl = ablation_values(model, g, ts, corrupt, ablation, clean.shape[0])
    with torch.no_grad():
        full = model(clean)[:, -1]

    def plain(threshold: float) -> tuple[set[str], dict[str, float]]:
        return acdc_by_hand(g, lambda removed: _kl(full, hooked(model, g, ts, clean, removed, abl)[0][:, -1]), threshold)

    for threshold in (0.01, 0.003, 0.03, 0.001):
        kept, deltas = plain(threshold)
        if min(abs(d - threshold) for d in deltas.values()) > 1e-4 and 0 < len(kept) < g.n_edges:
            break
    else:
        pytest.fail("no threshold gives a clear, non-trivial decision")
    assert any(g.sources[g.src_index[n.split("->")[0]]].kind is FEATURE for n in kept)
    c = acdc.discover(model, clean, corrupt, graph=g, transcoders=ts, threshold=threshold, ablation=ablation, progress=False)
    assert set(c.edges) == kept
    tested = {e.name: c.edge_score(e.name) for e in g.edges if not math.isnan(c.edge_score(e.name))}
    assert tested.keys() == deltas.keys()
    for name, d in deltas.items():
        assert tested[name] == pytest.approx(d, abs=1e-5), name


@pytest.fixture(scope="module")
def chain():
    return acdc.zoo.load("feature-chain")


def test_active_features_are_the_planted_neurons_that_fire(chain):
    """The zoo's transcoders are its MLPs (16 neurons each): 4 class neurons and 2 distractors fire in m0,
    4 in m1; the rest never do. The error nodes of exact transcoders are zero."""
    assert acdc.active_features(chain.model, chain.transcoders, chain.task) == {0: [0, 1, 2, 3, 4, 5], 1: [0, 1, 2, 3]}
    top = acdc.active_features(chain.model, chain.transcoders, chain.task.clean, top=2)
    assert {layer: len(v) for layer, v in top.items()} == {0: 2, 1: 2} and set(top[0]) <= set(range(6))
    assert acdc.active_features(chain.model, chain.transcoders, chain.task, min_activation=1e3) == {0: [], 1: []}
    _, out = hooked(chain.model, chain.graph, chain.transcoders, chain.task.clean)
    assert float(out["m0.err"].abs().max()) < 1e-5 and float(out["m0.f2"].abs().max()) > 0.1


@pytest.mark.parametrize("method, metric", [("eap-ig-inputs", "kl"), ("eap", "logit_diff"), ("eap-ig-inputs", "logit_diff")])
def test_attribution_ranks_the_planted_feature_circuit_first(chain, method, metric):
    s = acdc.attribute(chain.model, chain.task, method=method, metric=metric, graph=chain.graph, transcoders=chain.transcoders, progress=False)
    for level in ("edge", "node"):
        assert acdc.ROC.from_scores(s, chain.truth, level=level).auc == 1.0, level


def test_faithfulness_of_a_feature_circuit_runs_on_its_graph(chain):
    """The planted feature circuit keeps the behaviour (normalized faithfulness 1 up to the distractors'
    leak); cutting one class feature's edge loses part of it."""
    truth = chain.truth.as_circuit(chain.graph)
    with pytest.raises(ValueError, match="pass transcoders=ts"):
        acdc.faithfulness(chain.model, chain.task, truth)
    f = acdc.faithfulness(chain.model, chain.task, truth, transcoders=chain.transcoders)
    assert f.normalized == pytest.approx(1.0, abs=0.02)
    fewer = acdc.Circuit(chain.graph, truth.in_graph & ~chain.graph.edge_mask(["m0.f0->a1.h0<v>"]), truth.scores)
    assert acdc.faithfulness(chain.model, chain.task, fewer, transcoders=chain.transcoders).normalized < 0.95


def test_feature_scores_carry_no_autograd_graph(chain):
    """Stored activations and scores are plain tensors (a transcoder's parameters require grad; an
    activation that kept its graph would hold memory for every score)."""
    p = acdc.Patcher(chain.model, chain.task, graph=chain.graph, transcoders=chain.transcoders)
    values = p.source_values
    assert not any(f.clean.requires_grad or (f.abl is not None and f.abl.requires_grad) for f in values.factored.values())
    assert not values.dense_clean.requires_grad
    s = acdc.attribute(chain.model, chain.task, method="eap-ig-inputs", graph=chain.graph, transcoders=chain.transcoders, progress=False)
    assert not s.values.requires_grad


def _named_positions(batch: int = 4, pos: int = 6) -> Positions:
    """Roles at different token indices in each prompt (as templates of different lengths give)."""
    return Positions.named({"A": [1, 2, 1, 2], "B": [3, 4, 2, 4], "END": [5, 5, 4, 5]}, batch, pos)


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_positional_feature_edges_equal_per_position_swaps(model, ablation):
    """A feature graph at named positions: each edge is ablated over its position's tokens only, as a
    hooked forward with the MLPs split by hand and per-token swaps gives."""
    ts, g0 = _graph(model, (0, 1), "relu", True, {0: [1, 4, 7], 1: [0, 2, 3, 5, 11]})
    positions = _named_positions()
    g = g0.with_positions(positions.names)
    clean, corrupt = random_tokens(vocab=50)
    p = acdc.Patcher(model, clean, corrupt, graph=g, transcoders=ts, ablation=ablation, positions=positions)
    split = feature_split(model, g0, ts)
    for frac, seed in [(0.05, 0), (0.3, 1), (0.8, 2)]:
        mask = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(seed)) < frac
        want = patched_logits(model, g0, clean, corrupt, per_position_masks(g, mask, positions), ablation, **split)[:, -1]
        got = p.logits(mask)
        assert float((got - want).abs().max()) <= 1e-4 * max(float(want.abs().max()), 1.0), (frac, seed)
        assert float((got - p.clean.logits).abs().max()) > 1e-3
    late = torch.tensor([e.pos == "other" and e.src.kind is FEATURE for e in g.edges])  # only after END in prompt 2
    assert float((p.logits(late) - p.clean.logits).abs().max()) > 1e-3
    assert torch.allclose(p.logits(torch.zeros(g.n_edges, dtype=torch.bool)), p.clean.logits, atol=1e-5)


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_positional_feature_eap_equals_the_gradient_formula(model, ablation):
    ts, g0 = _graph(model, (0, 1), "topk", False, None)
    positions = _named_positions()
    g = g0.with_positions(positions.names)
    clean, corrupt = random_tokens(vocab=50)
    answers = random_answers()
    s = acdc.attribute(model, clean, corrupt, method="eap", metric="logit_diff", answers=answers, ablation=ablation,
                       graph=g, transcoders=ts, positions=positions)
    want = eap_reference(model, g, clean, corrupt, ablation, logit_diff_loss, positions, **feature_split(model, g0, ts))
    values = torch.tensor([want[e.name] for e in g.edges], dtype=torch.float64)
    scale = float(values.abs().max())
    feature = torch.tensor([e.src.kind is FEATURE for e in g.edges])
    assert float(values[feature].abs().max()) > 1e-3 * scale
    assert torch.allclose(s.values, values, atol=1e-4 * scale, rtol=1e-4)


@pytest.mark.parametrize("ablation", ["resample", "mean"])
@pytest.mark.parametrize("positional", [False, True])
def test_feature_eap_ig_activations_sum_to_the_whole_mlps(model, ablation, positional):
    """EAP-IG-activations interpolates a featured layer as one group (its MLP: features, error, skip and
    b_dec), so a layer's scores into a destination add up to the whole MLP's score there, and every
    other edge scores as in the plain graph (the error node makes the forward the model's)."""
    ts, g = _graph(model, (0, 1), "relu", True, {0: [1, 4, 7], 1: [0, 2, 3, 5, 11]})
    positions = _named_positions() if positional else None
    plain = acdc.Graph.from_model(model, positions=None if positions is None else positions.names)
    if positions is not None:
        g = g.with_positions(positions.names)
    clean, corrupt = random_tokens(vocab=50)
    kw = dict(method="eap-ig-activations", steps=2, metric="logit_diff", answers=random_answers(), ablation=ablation,
              positions=positions)
    split = acdc.attribute(model, clean, corrupt, graph=g, transcoders=ts, **kw)
    whole = acdc.attribute(model, clean, corrupt, graph=plain, **kw)
    at = "" if positions is None else "@B"
    for e in whole.graph.edges:
        if at and e.pos != "B":
            continue
        src, dst = e.src.name, e.dst.name
        if src in ("m0", "m1"):
            parts = [n.name for n in g.sources if n.name.startswith(src + ".") and g.has_edge(f"{n.name}->{dst}{at}")]
            assert len(parts) > 3
            total = sum(split[f"{n}->{dst}{at}"] for n in parts)
            assert total == pytest.approx(whole[e.name], rel=1e-4, abs=1e-6), e.name
        else:
            assert split[e.name] == pytest.approx(whole[e.name], rel=1e-4, abs=1e-6), e.name


def test_positional_acdc_on_the_planted_feature_chain(chain):
    """ACDC on the feature-chain graph at token positions keeps the planted feature edges, each at
    the positions that carry it, and a positional circuit's faithfulness runs on its graph."""
    n = int(chain.task.clean.shape[1])
    c = acdc.discover(chain.model, chain.task, graph=chain.graph, transcoders=chain.transcoders, positions="tokens", threshold=1e-3, progress=False)
    assert c.graph.positions == tuple(str(i) for i in range(n)) and c.graph.features == chain.graph.features
    kept = {e.split("@")[0] for e in c.edges}
    assert kept == set(chain.truth.edges)
    assert 0 < len(c.edges) < 3 * len(kept)
    assert acdc.faithfulness(chain.model, chain.task, c, transcoders=chain.transcoders).normalized == pytest.approx(1.0, abs=0.05)
