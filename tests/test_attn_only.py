"""Attention-only models: no MLP nodes in the graph; exact patching; the docstring task end to end."""

from __future__ import annotations

import pytest
import torch
from conftest import random_tokens, tiny_gpt2
from oracle import patched_logits

import acdc
from acdc import Graph, Patcher
from acdc.model import Transformer

TL_NAMES = {"W_Q": "attn.W_Q", "W_K": "attn.W_K", "W_V": "attn.W_V", "W_O": "attn.W_O", "b_Q": "attn.b_Q",
            "b_K": "attn.b_K", "b_V": "attn.b_V", "b_O": "attn.b_O", "ln1_w": "ln1.w", "ln1_b": "ln1.b"}


def _tl_state_dict(tf: Transformer) -> dict[str, torch.Tensor]:
    """A TransformerLens-format state dict of a model's attention and embedding weights (no MLPs)."""
    sd = {"embed.W_E": tf.w["W_E"], "pos_embed.W_pos": tf.w["W_pos"], "unembed.W_U": tf.w["W_U"],
          "unembed.b_U": tf.w["b_U"], "ln_final.w": tf.w["lnf_w"], "ln_final.b": tf.w["lnf_b"]}
    for layer in range(tf.arch.n_layers):
        for ours, theirs in TL_NAMES.items():
            sd[f"blocks.{layer}.{theirs}"] = tf.w[ours][layer]
    return sd


@pytest.fixture(scope="module")
def twins():
    """A GPT-2 whose MLPs output exactly zero, and the attention-only model with the same weights."""
    bridge = tiny_gpt2(n_layer=3, n_head=4, seed=5)
    hf = bridge.original_model
    with torch.no_grad():
        for block in hf.transformer.h:
            block.mlp.c_proj.weight.zero_()
            block.mlp.c_proj.bias.zero_()
    tf = Transformer.from_bridge(bridge)
    a = tf.arch
    cfg = {"n_layers": a.n_layers, "n_heads": a.n_heads, "d_model": a.d_model, "d_head": a.d_head,
           "d_vocab": a.d_vocab, "attn_only": True, "eps": a.eps, "act_fn": a.act_fn}
    return bridge, Transformer.from_tl_state_dict(cfg, _tl_state_dict(tf))


def test_graph_has_no_mlp_nodes(twins):
    _, attn = twins
    g = Graph.from_model(attn)
    assert g.attn_only and not any(n.kind == "mlp" for n in g.nodes)
    # heads: q/k/v from input and every earlier head; logits from input and every head
    assert g.n_edges == sum(4 * 3 * (1 + 4 * L) for L in range(3)) + (1 + 12)


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_patched_logits_equal_hooked_forward(twins, ablation):
    bridge, attn = twins
    clean, corrupt = random_tokens(batch=3, pos=6)
    g = Graph.from_model(attn)
    g_full = Graph.from_model(bridge)
    p = Patcher(attn, clean, corrupt, graph=g, ablation=ablation)
    for frac, seed in ((0.3, 0), (0.7, 1)):
        mask = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(seed)) < frac
        ablated = {e.name for e, m in zip(g.edges, mask.tolist()) if m}
        ref = patched_logits(bridge, g_full, clean, corrupt, ablated, ablation)[:, -1]
        got = p.logits(mask)
        assert torch.allclose(got, ref, atol=1e-4 * float(ref.abs().max())), float((got - ref).abs().max())
        assert torch.allclose(p.state().propagate(g.dense(~mask) & p.upstream).logits[0], got, atol=1e-5)


def test_docstring_end_to_end_on_a_random_attention_only_model(gpt2_tokenizer):
    """The docstring known circuit's model shape (4 layers x 8 heads, attention only), random weights."""
    gen = torch.Generator().manual_seed(0)
    L, H, d, dh, V = 4, 8, 64, 8, len(gpt2_tokenizer)

    def r(*shape, std=0.2):
        return torch.randn(*shape, generator=gen) * std

    sd = {"embed.W_E": r(V, d), "pos_embed.W_pos": r(64, d), "unembed.W_U": r(d, V), "ln_final.w": torch.ones(d)}
    for layer in range(L):
        sd.update({f"blocks.{layer}.attn.W_Q": r(H, d, dh), f"blocks.{layer}.attn.W_K": r(H, d, dh),
                   f"blocks.{layer}.attn.W_V": r(H, d, dh), f"blocks.{layer}.attn.W_O": r(H, dh, d),
                   f"blocks.{layer}.ln1.w": torch.ones(d)})
    model = Transformer.from_tl_state_dict(
        {"n_layers": L, "n_heads": H, "d_model": d, "d_head": dh, "d_vocab": V, "attn_only": True}, sd)
    task = acdc.tasks.docstring(gpt2_tokenizer, 6, seed=0)
    circuit = acdc.discover(model, task, threshold=0.05, progress=False)
    assert circuit.graph.attn_only and not any(n.startswith("m") for n in circuit.nodes)
    assert 0 < circuit.n_edges < circuit.graph.n_edges
    truth = acdc.known.load("docstring")
    rec = acdc.recovery(circuit, truth)  # the known circuit fits this model's graph
    assert rec.edges.tp + rec.edges.fn == truth.n_edges == 24
    scores = acdc.attribute(model, task, method="eap-ig-activations", steps=2)
    assert torch.isfinite(scores.values).all() and scores.values.abs().max() > 0


def test_tl_checkpoint_errors():
    with pytest.raises(ValueError, match="not a TransformerLens state dict"):
        Transformer.from_tl_state_dict({"n_layers": 1, "n_heads": 1, "d_model": 4, "d_head": 4, "d_vocab": 5}, {})
    with pytest.raises(NotImplementedError, match="shortformer"):
        Transformer.from_tl_state_dict({"positional_embedding_type": "shortformer"}, {})
