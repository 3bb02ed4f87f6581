"""Model families: what differs between GPT-2, Pythia, Llama, Qwen2, Gemma, ... for the engine.

TransformerLens's bridge already names the weights alike for every family (``W_Q``, ``W_in``,
``W_gate``, ``ln1.w``, ...) and describes the block in its ``cfg`` (normalization, gated MLP,
activation, positions, key/value heads). What it leaves to the reader is recorded here, one
`Family` per entry of `FAMILIES`: a family is a record, not code, so adding one is one entry
plus a tiny random config in ``tests/test_families.py`` (where an oracle checks every ablation).

- ``norm_offset``: RMSNorm scales by ``offset + w`` (Gemma stores ``w`` and multiplies by ``1 + w``).
- ``embed_scale``: the embedding is multiplied by ``sqrt(d_model)`` (Gemma).
- ``unsupported``: why the engine cannot model the family exactly (one line for the user).
- ``norm_topk_prob``: a mixture of experts renormalises its chosen experts' probabilities (Mixtral always;
  GPT-OSS, whose softmax over the chosen experts' logits is the same; None: as the model's config says,
  Qwen3-MoE's and OLMoE's ``norm_topk_prob``).
- ``gate_up_interleaved``: an expert's fused gate/up projection alternates gate and up columns (GPT-OSS)
  rather than stacking the gate half on the up half.

Grouped-query attention (Llama, Mistral, SmolLM, Qwen2, Gemma): the graph keeps one q, one k and
one v input per *query* head (``a3.h5<k>``, the naming of EAP-IG and MIB), so an edge into
``a3.h5<k>`` changes only head 5's keys, computed from its own copy of the input through the
key projection it shares with the other heads of its group. Graph counts are those of the same
model without GQA; the circuit JSON records ``n_key_value_heads`` and ``kv_inputs:
"per-query-head"``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FAMILIES", "Family", "family_of"]


@dataclass(frozen=True)
class Family:
    """What the engine must know about a family beyond the bridge's ``cfg``."""

    name: str
    architectures: tuple[str, ...]  # Hugging Face class names
    norm_offset: float = 0.0
    embed_scale: bool = False
    unsupported: str = ""
    norm_topk_prob: bool | None = None  # a mixture of experts' chosen probabilities renormalised (None: as its config says)
    gate_up_interleaved: bool = False  # an expert's gate and up columns alternate (GPT-OSS)


FAMILIES: tuple[Family, ...] = (
    Family("gpt2", ("GPT2LMHeadModel",)),
    Family("neox", ("GPTNeoXForCausalLM",)),
    Family("llama", ("LlamaForCausalLM", "MistralForCausalLM")),  # SmolLM, Llama 2/3, Mistral
    Family("qwen2", ("Qwen2ForCausalLM",)),  # q/k/v biases
    Family("qwen3", ("Qwen3ForCausalLM",)),  # QK norm per head (Architecture.qk_norm, read off the bridge)
    Family("phi3", ("Phi3ForCausalLM",)),  # fused q/k/v and gate/up projections: the bridge splits them
    Family("olmo2", ("Olmo2ForCausalLM",)),  # norms only after each sublayer; a QK norm over the whole projection
    Family("olmoe", ("OlmoeForCausalLM",)),  # a QK norm over the whole projection; a mixture-of-experts MLP
    Family("mixtral", ("MixtralForCausalLM",), norm_topk_prob=True),  # Mistral with a mixture of experts (always renormalised)
    Family("qwen3_moe", ("Qwen3MoeForCausalLM",)),  # QK norm per head; a mixture-of-experts MLP (one MLP node)
    # GPT-OSS: attention sinks (a learned logit per head beside the keys), biases on q/k/v/o, sliding-window layers,
    # YaRN rotary; a mixture of experts with a router bias, biased experts and a clamped SwiGLU (one MLP node)
    Family("gpt_oss", ("GptOssForCausalLM",), norm_topk_prob=True, gate_up_interleaved=True),
    Family("gemma", ("GemmaForCausalLM",), norm_offset=1.0, embed_scale=True),
    # Gemma 2: a norm after the attention and after the MLP (Architecture.post_norms: a destination reads each
    # upstream layer's norm of its own mix of that layer's heads, MIB's rule), soft caps, sliding-window layers
    Family("gemma2", ("Gemma2ForCausalLM",), norm_offset=1.0, embed_scale=True),
    # Gemma 3 (text): as Gemma 2 with a QK norm, a rotary base per kind of layer and no soft caps
    Family("gemma3", ("Gemma3ForCausalLM",), norm_offset=1.0, embed_scale=True),
)

_BY_ARCH = {arch: f for f in FAMILIES for arch in f.architectures}


def family_of(architecture: str) -> Family:
    """The family of a Hugging Face architecture name; a one-line error for others."""
    fam = _BY_ARCH.get(architecture)
    if fam is None:
        supported = ", ".join(a for f in FAMILIES if not f.unsupported for a in f.architectures)
        raise NotImplementedError(f"acdc does not know the {architecture} family yet; supported: {supported}")
    if fam.unsupported:
        raise NotImplementedError(f"acdc cannot patch {architecture} exactly: {fam.unsupported}")
    return fam
