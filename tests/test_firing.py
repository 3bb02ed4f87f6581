"""What makes a component fire (`acdc.component_activity`) against TransformerLens hooks and Hugging Face
modules computing the same activations the slow way, and on planted models whose answers are known."""

from __future__ import annotations

import pytest
import torch
from conftest import random_tokens
from test_features import _ln2, random_set

from acdc.firing import component_activity
from acdc.zoo import dictionary


def _hf_mlp_out_weight(model, layer: int) -> torch.Tensor:
    """[d_mlp, d_model] what each neuron writes, read from the Hugging Face module."""
    hf = model.original_model
    if hasattr(hf, "transformer"):
        return hf.transformer.h[layer].mlp.c_proj.weight.detach()  # Conv1D: [in, out]
    return hf.gpt_neox.layers[layer].mlp.dense_4h_to_h.weight.detach().T


def _w_u(model) -> torch.Tensor:
    hf = model.original_model
    head = hf.lm_head if hasattr(hf, "lm_head") else hf.embed_out
    return head.weight.detach().T  # [d_model, vocab]


def _cache(model, tokens):
    model.set_use_attn_result(True)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    return cache


def _top(values: torch.Tensor, k: int) -> list[float]:
    return sorted(values.reshape(-1).tolist(), reverse=True)[:k]


def _check_stats(act, values: torch.Tensor, bins: int):
    """Mean, extremes, histogram of ``act`` equal the oracle's ``values`` (the activation at every counted position)."""
    v = values.reshape(-1).double()
    assert act.positions == v.numel()
    assert act.mean == pytest.approx(float(v.mean()), rel=1e-4, abs=1e-6)
    assert act.minimum == pytest.approx(float(v.min()), rel=1e-4, abs=1e-6)
    assert act.maximum == pytest.approx(float(v.max()), rel=1e-4, abs=1e-6)
    edges = torch.tensor(act.histogram["edges"], dtype=torch.float64)
    assert len(edges) == bins + 1 and sum(act.histogram["counts"]) == v.numel()
    inner = (v > edges[0] + 1e-5) & (v < edges[-1] - 1e-5)  # away from rounding at the two ends
    expected = torch.histc(v[inner], bins=bins, min=float(edges[0]), max=float(edges[-1]))
    counts = torch.tensor(act.histogram["counts"], dtype=torch.float64)
    assert (counts - expected).abs().sum() <= (~inner).sum() + 2  # a value on an inner edge may fall either side


@pytest.mark.parametrize("family", ["gpt2", "neox"])
def test_neurons_and_mlps_equal_the_hooked_activations(family, gpt2_model, neox_model):
    model = {"gpt2": gpt2_model, "neox": neox_model}[family]
    tokens = torch.cat(random_tokens(batch=5, pos=7, seed=3))  # 10 sequences
    mask = torch.ones(tokens.shape, dtype=torch.bool)
    mask[3, 4:] = False  # padding: never counted, never a context
    mask[8, 1:] = False
    cache = _cache(model, tokens)
    nodes = ["m1.n5", "m0", "m1.n17", "m1"]
    out = component_activity(model, nodes, tokens, mask=mask, top=6, bins=9, batch=3)
    w_u = _w_u(model)
    for act in out:
        layer = int(act.node[1])
        if act.kind == "neuron":
            i = int(act.node.split(".n")[1])
            full = cache[f"blocks.{layer}.mlp.hook_post"][..., i]
            assert act.active == pytest.approx(float((full[mask] > 0).float().mean()))
            logit = _hf_mlp_out_weight(model, layer)[i] @ w_u
            assert [t for t, _ in act.promotes] == [str(j) for j in logit.topk(6).indices.tolist()]
            assert [t for t, _ in act.suppresses] == [str(j) for j in (-logit).topk(6).indices.tolist()]
            assert act.promotes[0][1] == pytest.approx(float(logit.max()), rel=1e-4, abs=1e-5)
        else:
            full = cache[f"blocks.{layer}.hook_mlp_out"].norm(dim=-1)
            assert act.active is None
        _check_stats(act, full[mask], 9)
        assert [c["value"] for c in act.contexts] == pytest.approx(_top(full[mask], 6), rel=1e-4, abs=1e-5)
        for c in act.contexts:
            assert mask[c["sequence"], c["position"]]
            assert c["value"] == pytest.approx(float(full[c["sequence"], c["position"]]), rel=1e-4, abs=1e-5)
            assert c["token"] == str(int(tokens[c["sequence"], c["position"]]))
            assert c["before"] == [str(t) for t in tokens[c["sequence"], max(0, c["position"] - 8) : c["position"]].tolist()]
        if act.kind == "mlp":  # what it writes at its top contexts, through W_U
            mean = torch.stack([cache[f"blocks.{layer}.hook_mlp_out"][c["sequence"], c["position"]] for c in act.contexts]).mean(0)
            assert [t for t, _ in act.promotes] == [str(j) for j in (mean @ w_u).topk(6).indices.tolist()]


@pytest.mark.parametrize("family", ["gpt2", "neox"])
def test_head_query_key_pairs_equal_the_write_of_one_key_by_hooks(family, gpt2_model, neox_model):
    """A pair's value is the norm of the head's output at the query when only that key's attention is kept
    (the pattern edited by a hook), and the head's activation is its hook_result norm."""
    model = {"gpt2": gpt2_model, "neox": neox_model}[family]
    tokens = random_tokens(batch=3, pos=6, seed=4)[0]
    mask = torch.ones(tokens.shape, dtype=torch.bool)
    mask[1, 5] = False
    layer, head = 1, 2
    cache = _cache(model, tokens)
    (act,) = component_activity(model, [f"a{layer}.h{head}"], tokens, mask=mask, top=5, bins=6)
    result = cache[f"blocks.{layer}.attn.hook_result"][:, :, head]  # [b, q, d]
    _check_stats(act, result.norm(dim=-1)[mask], 6)
    B, S = tokens.shape
    write = torch.full((B, S, S), -1.0)
    for k in range(S):
        def keep_k(p, hook, k=k):
            kept = torch.zeros_like(p)
            kept[:, head, :, k] = p[:, head, :, k]
            return kept

        got = {}

        def grab(x, hook, got=got):
            got["result"] = x.detach()
            return x

        with torch.no_grad():
            model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", keep_k),
                                                    (f"blocks.{layer}.attn.hook_result", grab)])
        for q in range(k, S):
            write[:, q, k] = got["result"][:, q, head].norm(dim=-1)
    ok = mask[:, :, None] & mask[:, None, :] & torch.ones(S, S, dtype=torch.bool).tril()
    assert [c["value"] for c in act.contexts] == pytest.approx(_top(write[ok], 5), rel=1e-4, abs=1e-6)
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][:, head]
    for c in act.contexts:
        b, q, k = c["sequence"], c["position"], c["key"]
        assert k <= q and ok[b, q, k]
        assert c["value"] == pytest.approx(float(write[b, q, k]), rel=1e-4, abs=1e-6)
        assert c["attention"] == pytest.approx(float(pattern[b, q, k]), abs=1e-5)
        assert c["key_token"] == str(int(tokens[b, k]))


@pytest.mark.parametrize("family", ["gpt2", "neox"])
def test_features_equal_the_transcoder_on_the_hugging_face_norm(family, gpt2_model, neox_model):
    model = {"gpt2": gpt2_model, "neox": neox_model}[family]
    ts = random_set(model, layers=(1,), activation="relu")
    tokens = torch.cat(random_tokens(batch=4, pos=6, seed=5))
    got = {}

    def grab(_, __, out):
        got["xn"] = out

    handle = _ln2(model, 1).register_forward_hook(grab)
    try:
        with torch.no_grad():
            model.original_model(tokens)
    finally:
        handle.remove()
    acts = ts[1].encode(got["xn"]).detach()
    live = int((acts > 0).sum((0, 1)).argmax())  # a feature that fires somewhere
    (act,) = component_activity(model, [f"m1.f{live}"], tokens, transcoders=ts, top=4, bins=5)
    full = acts[..., live]
    _check_stats(act, full, 5)
    assert act.active == pytest.approx(float((full > 0).float().mean()))
    assert [c["value"] for c in act.contexts] == pytest.approx(_top(full, 4), rel=1e-4, abs=1e-5)
    logit = ts[1].W_dec[live].detach() @ _w_u(model)
    assert [t for t, _ in act.promotes] == [str(j) for j in logit.topk(4).indices.tolist()]


def test_cross_layer_features_fire_as_their_encoder_on_the_hugging_face_norm(gpt2_model):
    """A CLT feature's scan: its layer's encoder on ln_2's output (every context's value), and the tokens it promotes
    through everything it writes (its decoders into its own and every later MLP, summed)."""
    from acdc.transcoders import CLTConfig, CrossLayerTranscoder

    L, d = gpt2_model.cfg.n_layers, gpt2_model.cfg.d_model
    clt = CrossLayerTranscoder(CLTConfig(L, d, 12, "relu", offsets=True))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=gen))
    tokens = torch.cat(random_tokens(batch=4, pos=6, seed=5))
    got = {}
    handle = _ln2(gpt2_model, 1).register_forward_hook(lambda _, __, out: got.__setitem__("xn", out))
    try:
        with torch.no_grad():
            gpt2_model.original_model(tokens)
    finally:
        handle.remove()
    acts = clt.encode(1, got["xn"]).detach()
    live = int((acts > 0).sum((0, 1)).argmax())
    (act,) = component_activity(gpt2_model, [f"m1.f{live}"], tokens, transcoders=clt, top=4, bins=5)
    full = acts[..., live]
    _check_stats(act, full, 5)
    assert [c["value"] for c in act.contexts] == pytest.approx(_top(full, 4), rel=1e-4, abs=1e-5)
    logit = sum(clt.decoder(1, j)[live] for j in range(1, L)).detach() @ _w_u(gpt2_model)
    assert [t for t, _ in act.promotes] == [str(j) for j in logit.topk(4).indices.tolist()]
    stream = CrossLayerTranscoder(CLTConfig(L, d, 12, "relu", reads="stream"))
    with pytest.raises(ValueError, match="read the normed MLP input"):
        component_activity(gpt2_model, ["m1.f0"], tokens, transcoders=stream)


def test_planted_previous_token_head_and_feature_neurons():
    """The planted dictionary model: head a0.h0 attends to the previous token, and MLP 0's neuron i
    reads planted feature i, which the current token has or the head copies from the previous one."""
    pd = dictionary.build()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.stack([pd.sample(i, gen) for i in range(12)])
    out = component_activity(pd.model, ["a0.h0", "m0.n3", "m0.n7"], tokens, top=8, tokenizer=pd.tokenizer)
    head = out[0]
    assert len(head.contexts) == 8
    assert all(c["key"] == c["position"] - 1 and c["attention"] > 0.9 for c in head.contexts)
    for act in out[1:]:
        i = int(act.node.split(".n")[1])
        assert act.contexts and act.contexts[0]["value"] > 0
        for c in act.contexts:
            row = tokens[c["sequence"]]
            here = pd.token_features[row[c["position"]], i] > 0
            before = c["position"] > 0 and pd.token_features[row[c["position"] - 1], i] > 0
            assert here or before, (act.node, c)
        assert act.contexts[0]["token"] == pd.tokenizer.decode([int(tokens[act.contexts[0]["sequence"], act.contexts[0]["position"]])])


def test_errors_are_one_line(gpt2_model):
    tokens = random_tokens(batch=2, pos=5)[0]
    cases = [
        (["logits"], {}, "no activation to scan"),
        (["a9.h0"], {}, "layer 9 does not exist"),
        (["a0.h7"], {}, "head 7 does not exist"),
        (["m0.n999"], {}, "neuron 999 does not exist"),
        (["m0.f1"], {}, "no transcoders were given"),
        (["m0.n1"], {"mask": torch.ones(3, 5, dtype=torch.bool)}, "mask must be a bool tensor"),
        (["m0.n1"], {"mask": torch.zeros(2, 5, dtype=torch.bool)}, "no position to scan"),
        (["m0.n1"], {"top": 0}, "top must be a whole number >= 1"),
    ]
    for nodes, kw, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            component_activity(gpt2_model, nodes, tokens, **kw)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"feature 99 does not exist"):
        component_activity(gpt2_model, ["m1.f99"], tokens, transcoders=random_set(gpt2_model, layers=(1,)))
    with pytest.raises(ValueError, match="token ids"):
        component_activity(gpt2_model, ["m0"], tokens.float())
    assert component_activity(gpt2_model, [], tokens) == []
