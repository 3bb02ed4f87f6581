"""Model loading and the engine's forward pass against TransformerLens."""


import pytest
import torch
from conftest import tiny_gpt2, tiny_neox

import acdc
from acdc.model import Transformer


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_neox])
def test_engine_forward_matches_bridge(make):
    model = make()
    tf = Transformer.from_bridge(model)  # checks itself; check again on longer inputs
    toks = torch.randint(0, 50, (3, 11))
    ours = tf.unembed(tf.run(toks).resid_pre[-1])
    assert torch.allclose(ours, model(toks), atol=1e-5)


def test_unsupported_architecture_is_named():
    """A model acdc cannot run exactly is one line naming what it lacks: here dense MLP layers among
    mixture-of-experts ones (Qwen3-MoE's ``mlp_only_layers``)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    hf = Qwen3MoeForCausalLM(Qwen3MoeConfig(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                            hidden_size=16, intermediate_size=32, moe_intermediate_size=8, num_experts=4,
                                            num_experts_per_tok=2, vocab_size=50, mlp_only_layers=[0]))
    model = acdc.load_model(hf)
    with pytest.raises(NotImplementedError, match=r"dense MLP layers among mixture-of-experts ones \(Qwen3MoeForCausalLM\)"):
        Transformer.from_bridge(model)


def test_load_model_rejects_junk():
    with pytest.raises(TypeError, match="load_model expects"):
        acdc.load_model(42)


def test_load_model_passes_bridges_through(gpt2_model):
    assert acdc.load_model(gpt2_model) is gpt2_model


def test_strings_with_local_gpt2_tokenizer(gpt2_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = gpt2_tokenizer
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32))
    model = acdc.load_model(hf, tokenizer=tok)
    clean = ["When Mary and John went to the store, John gave a drink to"]
    corrupt = ["When Alice and Bob went to the store, Carl gave a drink to"]
    c = acdc.discover(model, clean, corrupt, threshold=0.01, metric="logit_diff",
                      answers=([" Mary"], [" John"]), progress=False)
    assert c.settings["metric"] == "logit_diff"
    with pytest.raises(ValueError, match="single tokens"):
        acdc.discover(model, clean, corrupt, threshold=0.01, metric="logit_diff",
                      answers=([" Maryland's"], [" John"]), progress=False)
    with pytest.raises(ValueError, match="different lengths"):
        acdc.discover(model, ["a b c", "a b"], ["c d e", "c d"], threshold=0.01, progress=False)


def test_the_engine_model_is_built_once_per_bridge_and_never_stale():
    """`Transformer.of` reuses one engine model per bridge (no second weight read and check forward), and
    builds it again when the weights change: in place (the new one computes the edited model), or moved
    to another dtype."""
    model = tiny_gpt2(seed=3)
    tf = Transformer.of(model)
    assert Transformer.of(model) is tf and Transformer.of(tf) is tf
    assert acdc.Patcher(model, *[torch.randint(0, 50, (2, 5))] * 2).tf is tf
    toks = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        model.original_model.transformer.h[0].mlp.c_fc.weight.mul_(2.0)  # an in-place edit of the bridge's weights
        want = model(toks)
    again = Transformer.of(model)
    assert again is not tf
    assert torch.allclose(again.unembed(again.run(toks).resid_pre[-1]), want, atol=1e-5)
    assert Transformer.of(model) is again
    model.to(torch.float64)
    wide = Transformer.of(model)
    assert wide is not again and wide.dtype == torch.float64
