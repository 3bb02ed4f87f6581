"""Every model family on a tiny random config: patched logits equal the slow hooked forward.

Grouped-query attention has one k and one v input per *query* head in acdc's graph, while the
hooks of TransformerLens split k/v inputs per key/value head. So the oracle for a GQA model is
its multi-head twin: the same model with each key/value head copied to every query head of its
group (equal logits, checked), patched with hooks one query head at a time.
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_tokens
from oracle import eap_reference, patched_logits

import acdc
from acdc import Graph, Patcher


def _tiny(family: str, n_kv: int, seed: int = 0):
    import transformers as tr

    make = {
        "llama": (tr.LlamaConfig, tr.LlamaForCausalLM, {}),
        "mistral": (tr.MistralConfig, tr.MistralForCausalLM, {}),
        "qwen2": (tr.Qwen2Config, tr.Qwen2ForCausalLM, {}),
        "gemma": (tr.GemmaConfig, tr.GemmaForCausalLM, {"head_dim": 8}),
        "qwen3": (tr.Qwen3Config, tr.Qwen3ForCausalLM, {"head_dim": 8}),  # QK norm per head
        "phi3": (tr.Phi3Config, tr.Phi3ForCausalLM, {}),  # fused q/k/v and gate/up projections
        "gemma2": (tr.Gemma2Config, tr.Gemma2ForCausalLM, {  # norms after each sublayer, soft caps, a 4-token window
            "head_dim": 8, "sliding_window": 4, "query_pre_attn_scalar": 16, "attn_logit_softcapping": 5.0,
            "final_logit_softcapping": 3.0}),
        "gemma3": (tr.Gemma3TextConfig, tr.Gemma3ForCausalLM, {  # Gemma 2's norms, QK norm, local/global rotary bases
            "head_dim": 8, "sliding_window": 4, "query_pre_attn_scalar": 16, "sliding_window_pattern": 2}),
        "olmo2": (tr.Olmo2Config, tr.Olmo2ForCausalLM, {}),  # norms only after each sublayer, QK norm over the projection
        "olmoe": (tr.OlmoeConfig, tr.OlmoeForCausalLM, {"num_experts": 4, "num_experts_per_tok": 2}),  # and experts
        "mixtral": (tr.MixtralConfig, tr.MixtralForCausalLM, {"num_local_experts": 4, "num_experts_per_tok": 2}),
        "qwen3-moe": (tr.Qwen3MoeConfig, tr.Qwen3MoeForCausalLM, {  # 4 experts, 2 per token, as one MLP node
            "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "norm_topk_prob": True}),
        "gpt-oss": (tr.GptOssConfig, tr.GptOssForCausalLM, {  # sinks, biases, a 4-token window, YaRN; clamped experts
            "head_dim": 8, "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 4, "swiglu_limit": 0.5,
            "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                                "original_max_position_embeddings": 8, "rope_theta": 150000.0}}),
        "llama3-rope": (tr.LlamaConfig, tr.LlamaForCausalLM, {"rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8}}),
    }
    cfg_cls, model_cls, extra = make[family]
    cfg = cfg_cls(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=n_kv, hidden_size=32,
                  intermediate_size=48, vocab_size=50, max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
                  pad_token_id=0, **extra)
    torch.manual_seed(seed)
    hf = model_cls(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # weights large enough that every edge matters
            p.normal_(0, 0.25)
    return hf


def _mha_twin(hf):
    """The same model with every key/value head repeated for each query head of its group."""
    import copy

    cfg = copy.deepcopy(hf.config)
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    cfg.num_key_value_heads = cfg.num_attention_heads
    twin = type(hf)(cfg).eval()
    state = {}
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    def repeat(v):
        return v.view(-1, d_head, *v.shape[1:]).repeat_interleave(group, 0).reshape(-1, *v.shape[1:])

    n_q = cfg.num_attention_heads * d_head
    for k, v in hf.state_dict().items():
        if k.endswith("qkv_proj.weight"):  # Phi-3's fused projection: [q; k; v] rows
            q, kv = v[:n_q], v[n_q:]
            v = torch.cat([q, *(repeat(t) for t in kv.chunk(2))])
        elif k.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias")):
            v = repeat(v)
        elif k.endswith("k_norm.weight") and v.numel() != d_head:  # a key norm over the whole projection (OLMo-2)
            v = repeat(v)
        state[k] = v
    twin.load_state_dict(state)
    return twin


FAMILIES = ["llama", "mistral", "qwen2", "gemma", "llama3-rope", "qwen3", "phi3", "qwen3-moe", "olmoe", "mixtral", "gpt-oss"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    """(name, the model, its multi-head twin, the oracle's options): a QK norm over the whole projection (OLMoE)
    norms each head's query and key from its own input in the oracle too (`oracle.split_forward`'s qk_copies)."""
    name = request.param
    gqa = _tiny(name, n_kv=2)
    twin = _mha_twin(gqa)
    opts = {"qk_copies": [(layer.self_attn, layer.input_layernorm) for layer in twin.model.layers]} if name == "olmoe" else {}
    return name, acdc.load_model(gqa), acdc.load_model(twin), opts


def _random_mask(g: Graph, frac: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(g.n_edges, generator=gen) < frac


@pytest.mark.parametrize("split_qkv", [True, False])
@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_patched_logits_equal_hooked_forward(family, split_qkv, ablation):
    name, model, twin, opts = family
    clean, corrupt = random_tokens(batch=3, pos=6)
    with torch.no_grad():
        assert torch.allclose(model(clean, return_type="logits"), twin(clean, return_type="logits"), atol=1e-4)
    g = Graph.from_model(model, split_qkv=split_qkv)
    assert g.n_kv_heads == 2 and g.config()["kv_inputs"] == "per-query-head"
    assert g.n_edges == Graph.from_model(twin, split_qkv=split_qkv).n_edges  # counts as without GQA
    p = Patcher(model, clean, corrupt, graph=g, ablation=ablation)
    for frac, seed in ((0.3, 0), (0.7, 1)):
        mask = _random_mask(g, frac, seed)
        ablated = {e.name for e, m in zip(g.edges, mask.tolist()) if m}
        ref = patched_logits(twin, g, clean, corrupt, ablated, ablation, **opts)[:, -1]
        got = p.logits(mask)
        scale = float(ref.abs().max())
        assert torch.allclose(got, ref, atol=1e-4 * max(scale, 1.0)), (name, float((got - ref).abs().max()))
        # the incremental path (ACDC's) agrees with the from-scratch one
        keep = g.dense(~mask) & p.upstream
        assert torch.allclose(p.state().propagate(keep).logits[0], got, atol=1e-4 * max(scale, 1.0))


def test_eap_equals_gradient_formula(family):
    name, model, twin, opts = family
    clean, corrupt = random_tokens(batch=3, pos=6)
    g = Graph.from_model(model)
    answers = (torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]))

    def loss(logits):
        last = logits[:, -1]
        rows = torch.arange(3)
        return -(last[rows, answers[0]] - last[rows, answers[1]]).mean()

    s = acdc.attribute(model, clean, corrupt, method="eap", metric="logit_diff", answers=answers, graph=g)
    ref = eap_reference(twin, g, clean, corrupt, "resample", loss, **opts)
    scale = max(abs(v) for v in ref.values())
    for e in g.edges:
        assert s[e.name] == pytest.approx(ref[e.name], abs=1e-4 * scale, rel=1e-3), (name, e.name)


def _random_edge_sets_equal_the_oracle(p, twin, clean, corrupt, ablation: str, opts: dict) -> list:
    """Nothing ablated is the clean run; for two random edge sets (30%, 70% ablated) the patched logits equal the
    hooked forward with ``opts`` (`oracle.split_forward`'s), and ACDC's state agrees. Returns (mask, logits) of each."""
    g = p.graph
    assert torch.allclose(p.logits(torch.zeros(g.n_edges, dtype=torch.bool)), p.clean.logits, atol=1e-5)
    out = []
    for frac, seed in ((0.3, 0), (0.7, 1)):
        mask = _random_mask(g, frac, seed)
        ablated = {e.name for e, m in zip(g.edges, mask.tolist()) if m}
        ref = patched_logits(twin, g, clean, corrupt, ablated, ablation, **opts)[:, -1]
        got = p.logits(mask)
        assert torch.allclose(got, ref, atol=1e-4), float((got - ref).abs().max())
        keep = g.dense(~mask) & p.upstream
        assert torch.allclose(p.state().propagate(keep).logits[0], got, atol=1e-5)
        out.append((mask, got))
    return out


@pytest.fixture(scope="module", params=["gemma2", "gemma3", "olmo2"])
def gemma2(request):
    """Gemma 2, Gemma 3 (text) and OLMo-2, the families with a norm after each sublayer: (model, its multi-head
    twin, the oracle's options: the norms after attention, Hugging Face's own modules, and for OLMo-2's QK norm
    over the whole projection each head's own copy of it)."""
    gqa = _tiny(request.param, n_kv=2)
    twin = _mha_twin(gqa)
    opts: dict = {"post_attn": [layer.post_attention_layernorm for layer in twin.model.layers]}
    if request.param == "olmo2":  # no norm before attention
        opts["qk_copies"] = [(layer.self_attn, None) for layer in twin.model.layers]
    return acdc.load_model(gqa), acdc.load_model(twin), opts


@pytest.mark.parametrize("split_qkv", [True, False])
@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_gemma2_patched_logits_equal_the_hooked_forward_with_a_norm_per_destination(gemma2, split_qkv, ablation):
    """Gemma 2 normalizes each attention output before the residual add, so a destination reads, from each
    upstream layer, the norm of its own mix of that layer's heads (MIB's rule): random edge sets against the
    hooked forward that rebuilds every destination's input that way, Hugging Face's norm modules doing the norm;
    ACDC's state (candidates run from scratch here) agrees."""
    model, twin, opts = gemma2
    clean, corrupt = random_tokens(batch=3, pos=7)  # longer than the 4-token sliding window
    g = Graph.from_model(model, split_qkv=split_qkv)
    p = Patcher(model, clean, corrupt, graph=g, ablation=ablation)
    _random_edge_sets_equal_the_oracle(p, twin, clean, corrupt, ablation, opts)


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_gemma2_acdc_removals_stay_exact_reusing_the_unchanged_layers(gemma2, ablation):
    """ACDC's state on Gemma 2 runs each candidate from scratch from its first changed layer on (the earlier sources'
    outputs reused from the reference circuit): a spread of edges removed in ACDC's order, most committed, every
    candidate and the state after each commit equal to a patched run of the whole model."""
    from oracle import removals_stay_exact

    model, _, _ = gemma2
    clean, corrupt = random_tokens(batch=3, pos=6)
    g = Graph.from_model(model)
    p = Patcher(model, clean, corrupt, graph=g, ablation=ablation)
    assert removals_stay_exact(p, reversed(range(0, g.n_edges, 3)), commit=0.8) > 30


@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_gemma2_positional_patched_logits_equal_the_hooked_forward(gemma2, ablation):
    """At token positions each edge is ablated at its own position's tokens; each token's destination input is
    still normed per upstream layer (the per-position weights meet before the norm)."""
    from oracle import per_position_masks

    from acdc.positions import Positions

    model, twin, opts = gemma2
    clean, corrupt = random_tokens(batch=3, pos=6)
    positions = Positions.tokens(3, 6)
    g = Graph.from_model(model, positions=positions.names)
    p = Patcher(model, clean, corrupt, graph=g, ablation=ablation, positions=positions)
    mask = _random_mask(g, 0.4, 5)
    ref = patched_logits(twin, g.plain, clean, corrupt, per_position_masks(g, mask, positions), ablation,
                         **opts)[:, -1]
    got = p.logits(mask)
    assert torch.allclose(got, ref, atol=1e-4), float((got - ref).abs().max())


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_gemma2_feature_graph_equals_the_hooked_forward(gemma2, ablation):
    """Transcoders on Gemma 2/3 read the MLP's normed input and write its output after the norm that follows it
    (GemmaScope's and circuit-tracer's hook_mlp_out), so features, error and skip nodes add linearly while the heads
    still reach each destination through their layer's norm: patched runs, ACDC's state and EAP against the hooked
    forward with the MLPs split by hand (`test_features.feature_split`)."""
    from test_features import feature_split, random_set

    from acdc.mixing import mixed_logits

    model, twin, opts = gemma2
    ts = random_set(model, (0, 1), "relu", True, n=10)
    g = Graph.from_model(model, transcoders=ts, features={0: [0, 2, 3, 5, 7], 1: [1, 4, 6, 8, 9]})
    clean, corrupt = random_tokens(batch=3, pos=6)
    p = Patcher(model, clean, corrupt, graph=g, ablation=ablation, transcoders=ts)
    split = {**feature_split(twin, g, ts), **opts}
    for mask, got in _random_edge_sets_equal_the_oracle(p, twin, clean, corrupt, ablation, split):
        weights = torch.zeros(g.state_shape)
        weights[g.edge_dst, g.edge_src] = (~mask).float()
        assert torch.allclose(mixed_logits(p, weights), got, atol=1e-4)  # Edge Pruning's mixed run at 0/1 weights


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_gemma2_eap_is_the_first_order_effect_of_each_edge_through_the_norm(gemma2, ablation):
    """EAP on Gemma 2 is d loss / d m_e at m_e = 0, where edge e feeds its destination (1 - m_e) O + m_e A through
    the norm of its layer (MIB's rule): central finite differences of the hooked forward, edge by edge."""
    from oracle import ablation_values, split_forward

    model, twin, opts = gemma2
    clean, corrupt = random_tokens(batch=3, pos=6)
    answers = (torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]))
    g = Graph.from_model(model)
    rows = torch.arange(3)

    def loss(logits):
        last = logits[:, -1]
        return -(last[rows, answers[0]] - last[rows, answers[1]]).mean()

    s = acdc.attribute(model, clean, corrupt, method="eap", metric="logit_diff", answers=answers, graph=g,
                       ablation=ablation, progress=False)
    abl = ablation_values(twin, g, corrupt, ablation, 3, **opts)
    eps = 1e-2
    scale = 0.0
    refs = {}
    for e in g.edges:
        def at(m: float, e=e) -> float:
            mix = {e.name: torch.full(clean.shape, m)}
            return float(loss(split_forward(twin, g, clean, ablated=mix, abl=abl, **opts)[0]))
        refs[e.name] = (at(eps) - at(-eps)) / (2 * eps)
        scale = max(scale, abs(refs[e.name]))
    for name, ref in refs.items():
        assert s[name] == pytest.approx(ref, abs=2e-3 * scale, rel=1e-2), name
    assert sum(abs(refs[e.name]) > 0.05 * scale for e in g.edges if e.src.kind is acdc.graph.HEAD) > 5  # heads' edges count


@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_gemma2_mixed_run_is_the_hooked_mix_through_the_norm(gemma2, ablation):
    """Edge Pruning's mixed run on Gemma 2: at 0/1 weights the patched run; at fractional weights each destination
    reads (1 - w) A + w O of each source, the heads of a layer mixed before its norm (the hooked forward's rule)."""
    from oracle import ablation_values, split_forward

    from acdc.mixing import mixed_logits

    model, twin, opts = gemma2
    clean, corrupt = random_tokens(batch=3, pos=6)
    g = Graph.from_model(model)
    p = Patcher(model, clean, corrupt, graph=g, ablation=ablation)
    keep = ~_random_mask(g, 0.4, 3)
    dense = torch.zeros(g.state_shape)
    dense[g.edge_dst, g.edge_src] = keep.float()
    assert torch.allclose(mixed_logits(p, dense), p.logits(~keep), atol=1e-5)
    w = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(4))
    dense[g.edge_dst, g.edge_src] = w
    mix = {e.name: torch.full(clean.shape, 1.0 - float(w[i])) for i, e in enumerate(g.edges)}
    abl = ablation_values(twin, g, corrupt, ablation, 3, **opts)
    want = split_forward(twin, g, clean, ablated=mix, abl=abl, **opts)[0][:, -1]
    assert torch.allclose(mixed_logits(p, dense), want, atol=1e-4)


def test_a_mixture_of_experts_is_one_mlp_node():
    """Qwen3-MoE's MLP is its router and experts, one node (`test_patched_logits_equal_hooked_forward` checks it);
    it has no single set of neurons, so a neuron graph is one line, before any run."""
    model = acdc.load_model(_tiny("qwen3-moe", n_kv=2))
    clean, corrupt = random_tokens(batch=2, pos=5)
    g = Graph.from_model(model)
    assert [s.name for s in g.sources if s.layer == 1 and s.kind is acdc.graph.MLP] == ["m1"]
    with pytest.raises(NotImplementedError, match="a mixture-of-experts MLP has no single set of neurons"):
        Patcher(model, clean, corrupt, graph=Graph.from_model(model, mlp_units="neurons"))


def test_unsupported_families_say_why():
    from acdc.families import family_of

    assert family_of("Gemma2ForCausalLM").name == "gemma2" and family_of("Gemma3ForCausalLM").name == "gemma3"
    with pytest.raises(NotImplementedError, match="does not know the FalconForCausalLM family yet; supported: GPT2"):
        family_of("FalconForCausalLM")


def test_attention_patterns_equal_the_bridges(family):
    from acdc.model import Transformer

    name, model, _, _ = family
    clean, _ = random_tokens(batch=2, pos=6)
    _, cache = model.run_with_cache(clean)
    ours = Transformer.from_bridge(model).attention_patterns(clean)  # [L, H, B, S, S]
    for layer in range(model.cfg.n_layers):
        ref = cache[f"blocks.{layer}.attn.hook_pattern"]  # [B, H, S, S]
        assert torch.allclose(ours[layer].transpose(0, 1), ref, atol=1e-5), (name, layer)


@pytest.mark.parametrize("name", [*FAMILIES, "gemma2", "gemma3", "olmo2"])
def test_node_ablations_equal_a_spliced_hugging_face_forward(name):
    """Ablating a node (every edge out of it, resample) equals Hugging Face's own forward with the corrupt run's
    per-head slice spliced into the output projection's input (a head) or the corrupt MLP block's output (an MLP,
    experts and all), everything downstream recomputed: the norms after sublayers (Gemma 2/3, OLMo-2), sinks,
    soft caps and windows included. An oracle of forward hooks on the model's own modules, no TransformerLens."""
    import copy

    hf = _tiny(name, n_kv=2)
    ref = copy.deepcopy(hf)  # load_model wraps hf's modules; the oracle hooks an untouched copy
    model = acdc.load_model(hf)
    clean, corrupt = random_tokens(batch=3, pos=6)
    layers = ref.model.layers
    d_head = ref.config.head_dim if getattr(ref.config, "head_dim", None) else ref.config.hidden_size // ref.config.num_attention_heads
    nodes = {"a0.h1": (0, 1), "a1.h3": (1, 3), "a1.h0": (1, 0), "m0": (0, None)}
    store: dict[tuple[str, int], torch.Tensor] = {}

    def first(out):
        return out[0] if isinstance(out, tuple) else out

    def run(tokens, splice: bool) -> torch.Tensor:
        hooks = []
        for i, layer in enumerate(layers):
            def o_in(mod, args, i=i):
                z = args[0]
                if not splice:
                    store["o", i] = z.detach().clone()
                    return None
                z = z.clone()
                for layer_i, head in nodes.values():
                    if layer_i == i and head is not None:
                        z[..., head * d_head : (head + 1) * d_head] = store["o", i][..., head * d_head : (head + 1) * d_head]
                return (z, *args[1:])

            def mlp_out(mod, args, out, i=i):
                if not splice:
                    store["m", i] = first(out).detach().clone()
                    return None
                if ("m", i) in {("m", li) for li, h in nodes.values() if h is None}:
                    return (store["m", i], *out[1:]) if isinstance(out, tuple) else store["m", i]
                return None

            hooks += [layer.self_attn.o_proj.register_forward_pre_hook(o_in), layer.mlp.register_forward_hook(mlp_out)]
        try:
            with torch.no_grad():
                return ref(tokens).logits[:, -1]
        finally:
            for h in hooks:
                h.remove()

    run(corrupt, splice=False)
    want = run(clean, splice=True)
    g = Graph.from_model(model)
    got = Patcher(model, clean, corrupt, graph=g, ablation="resample").logits(g.edges_out_of(nodes))
    unspliced = run(clean, splice=False)
    assert not torch.allclose(want, unspliced, atol=1e-3)  # the splice changes the answer
    assert torch.allclose(got, want, atol=1e-4 * max(float(want.abs().max()), 1.0)), (name, float((got - want).abs().max()))
