"""The engine's own forward pass, read from a TransformerLens bridge (`acdc.loading` makes one).

`Transformer.from_bridge` reads its weights into plain tensors and exposes the pieces the
patching engine needs (embedding, a set of attention heads with *per-head* inputs, one MLP, the
unembedding at chosen positions). The engine's forward is checked against the bridge's logits
when it is built, so a silent mismatch cannot happen: an unsupported architecture raises.

Supported families (`acdc.families`): GPT-2 (learned positions, LayerNorm), GPT-NeoX/Pythia
(rotary, parallel attention + MLP), Llama/Mistral/SmolLM (RMSNorm, gated SiLU MLP, grouped-query
attention, rotary with the scalings Hugging Face implements), Qwen2 (the same with q/k/v biases)
and Gemma 1 (GeGLU, ``1 + w`` RMSNorm, embeddings scaled by sqrt(d_model)).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from .families import family_of
from .graph import layer_offset
from .inputs import answer_positions

__all__ = ["Architecture", "Bridge", "ForwardCache", "HeadsPart", "LayerPass", "MLPPart", "Part", "Transformer", "parts_of"]


class Bridge(Protocol):
    """What acdc reads from a model (a TransformerLens `TransformerBridge` has it all).

    ``cfg`` carries the shape (n_layers, n_heads, d_model, ...); calling the model on token ids
    with ``return_type="logits"`` gives [batch, pos, d_vocab]; ``blocks``, ``W_E``, ``W_U``,
    ``ln_final`` hold the weights.
    """

    cfg: Any
    blocks: Any
    ln_final: Any
    W_E: Tensor

    def __call__(self, tokens: Tensor, *args: Any, **kwargs: Any) -> Any: ...

_ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}


@dataclass(frozen=True)
class Architecture:
    """Shape and wiring of a decoder-only transformer, as the engine needs it."""

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    parallel_attn_mlp: bool
    position_embedding: Literal["standard", "rotary"]  # learned positions added to the input, or rotary in attention
    rotary_dim: int
    rotary_base: float
    eps: float
    act_fn: str
    norm: Literal["LN", "RMS"] = "LN"
    gated_mlp: bool = False
    n_kv_heads: int = 0  # 0: as many as query heads
    embed_scale: float = 1.0
    rotary_scale: float = 1.0  # Hugging Face's attention_scaling of cos and sin (YaRN and the like)
    family: str = "gpt2"
    attn_only: bool = False  # no MLPs (and no MLP nodes in the graph)
    qk_norm: bool = False  # queries and keys RMS-normed per head before the rotary embedding (Qwen3, Gemma 3)
    qk_eps: float = 1e-6
    qk_norm_all: bool = False  # with qk_norm: the RMS is over every head's projection (OLMo-2, OLMoE), see `qk_norm_factor`
    pre_norms: bool = True  # a norm before the attention and before the MLP (OLMo-2 has none: only the ones after)
    n_experts: int = 0  # a mixture-of-experts MLP (0: a dense one); d_mlp is then each expert's width
    experts_per_token: int = 0
    norm_topk_prob: bool = False  # the chosen experts' router probabilities renormalised to sum to 1
    swiglu_limit: float = 0.0  # GPT-OSS's experts: gate <= limit, |up| <= limit, (up + 1) * gate * sigmoid(alpha gate); 0: act(gate) * up
    swiglu_alpha: float = 0.0
    attn_sinks: bool = False  # GPT-OSS: a learned logit per head joins each query's softmax (and takes its share)
    post_norms: bool = False  # Gemma 2/3: an RMSNorm after the attention and after the MLP, before the residual add
    attn_scale: float = 0.0  # the attention scores' factor (0: 1 / sqrt(d_head)); Gemma 2's query_pre_attn_scalar ** -0.5
    attn_softcap: float = 0.0  # scores -> cap * tanh(scores / cap) before the mask (Gemma 2); 0: none
    final_softcap: float = 0.0  # logits -> cap * tanh(logits / cap) (Gemma 2); 0: none
    windows: tuple[int, ...] = ()  # per layer, a sliding window's width (0: global attention); () every layer global


@dataclass
class ForwardCache:
    """What a clean or corrupt forward pass leaves behind for patching.

    sources:   [n_src, batch, pos, d_model] output of every graph source (input, heads, MLPs)
    resid_pre: [n_layers + 1, batch, pos, d_model] residual before each layer (last = final)
    resid_mid: [n_layers, batch, pos, d_model] MLP input of each layer
    logits:    [batch * P, d_vocab] logits at the answer positions (P per prompt, prompt-major)
    """

    sources: Tensor
    resid_pre: Tensor
    resid_mid: Tensor
    logits: Tensor


class LayerPass(Protocol):
    """A computation over the model's layer loop (`Transformer.walk`, `Transformer.walk_back`): one method
    per kind of part, each mapping the tensor at the part's input to the one at its output [..., d_model]
    (forward: the stream it reads -> what it adds to the stream; transpose: the cotangent after it -> the
    cotangent it sends to the stream it read, or None when it sends nothing). A new kind of part adds a method
    to every pass."""

    def heads(self, part: HeadsPart, x: Tensor, /) -> Tensor | None: ...

    def mlp(self, part: MLPPart, x: Tensor, /) -> Tensor | None: ...


@dataclass(frozen=True)
class Part:
    """One component of the model's layer loop (`Transformer.parts`, built once from the family record):
    a layer's attention heads or its MLP. ``stream``: the residual stream it reads (2 * layer before the
    layer's heads, 2 * layer + 1 after them; a parallel-attention family's MLP reads 2 * layer too); its
    output is added to the running stream. The engine's blocks (`acdc.blocks`) are the graph's views of
    these parts."""

    layer: int
    stream: int

    def through(self, p: LayerPass, x: Tensor) -> Tensor | None:
        """This part's step of pass ``p`` on x [..., d_model] (None: nothing, in a transpose)."""
        raise NotImplementedError


@dataclass(frozen=True)
class HeadsPart(Part):
    """A layer's attention heads (their summed outputs plus b_O are what it adds)."""

    def through(self, p: LayerPass, x: Tensor) -> Tensor | None:
        return p.heads(self, x)


@dataclass(frozen=True)
class MLPPart(Part):
    """A layer's MLP (norm, matrices, activation; its output is what it adds)."""

    def through(self, p: LayerPass, x: Tensor) -> Tensor | None:
        return p.mlp(self, x)


class _SoftmaxBackwardAt(torch.autograd.Function):
    """softmax(x) forward; backward as softmax's Jacobian at x / T: s_T * (g - <g, s_T>), s_T = softmax(x / T)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, temperature: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.temperature = temperature
        return x.softmax(-1)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        s = (x / ctx.temperature).softmax(-1)
        g = grads[0]
        return s * (g - (g * s).sum(-1, keepdim=True)), None


def softmax_backward_at(x: Tensor, temperature: float) -> Tensor:
    """softmax(x) over the last dim, with its backward taken at x / temperature (GIM's softmax rule: the chain
    factor 1 / T is not applied, as GIM's own code does not)."""
    return _SoftmaxBackwardAt.apply(x, float(temperature))  # pyright: ignore[reportReturnType]


class _ScaleGradient(torch.autograd.Function):
    """x forward; the gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor, None]:
        return grads[0] * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """x itself, with the gradient that passes through it multiplied by ``scale`` (GIM's q/k/v rule); x when 1."""
    return x if scale == 1.0 else _ScaleGradient.apply(x, float(scale))  # pyright: ignore[reportReturnType]


def parts_of(arch: Architecture) -> list[Part]:
    """The layer loop of ``arch`` in forward order: per layer its heads, then its MLP (none when
    attention-only; reading the stream before the heads when attention and MLP run in parallel)."""
    out: list[Part] = []
    for layer in range(arch.n_layers):
        out.append(HeadsPart(layer, 2 * layer))
        if not arch.attn_only:
            out.append(MLPPart(layer, 2 * layer if arch.parallel_attn_mlp else 2 * layer + 1))
    return out


class _Plain:
    """The plain forward as a `LayerPass`, with the edits `Transformer._walk` takes."""

    def __init__(self, tf: Transformer, replace: dict[int, Callable[[Tensor], Tensor]] | None, patterns: Tensor | None,
                 edit_heads: dict[int, Callable[[Tensor], Tensor]] | None):
        self.tf, self.replace, self.patterns, self.edit_heads = tf, replace or {}, patterns, edit_heads or {}
        self.all_heads = torch.arange(tf.arch.n_heads, device=tf.device)

    def heads(self, part: HeadsPart, x: Tensor) -> Tensor:
        tf, layer, hs = self.tf, part.layer, self.all_heads
        if self.patterns is None:
            out = tf.attention(layer, hs, x, x, x)
        else:
            out = tf.mix(layer, hs, self.patterns[layer], tf.project(layer, hs, x, "V"))
        edit = self.edit_heads.get(layer)
        if edit is not None:
            out = edit(out)
        return tf.post_attn(layer, out.sum(0) + tf.attn_bias(layer))

    def mlp(self, part: MLPPart, x: Tensor) -> Tensor:
        fn = self.replace.get(part.layer)
        return self.tf.mlp(part.layer, x) if fn is None else fn(self.tf.mlp_input(part.layer, x))


class Transformer:
    """Plain-tensor copy of a bridge's weights with the forward pieces patching needs.

    Sources are numbered like `Graph`: 0 = input, then per layer heads 0..H-1 and the MLP.
    """

    def __init__(self, arch: Architecture, weights: dict[str, Any]):
        self.arch = arch
        self.w = weights
        self.act = _ACTIVATIONS[arch.act_fn]
        self.device = weights["W_E"].device
        self.dtype = weights["W_E"].dtype
        self._columns: dict[bytes, tuple[Tensor, Tensor]] = {}  # `unembed`'s gathered columns
        self.parts = parts_of(arch)  # the layer loop every pass walks

    # ------------------------------------------------------------------ construction
    @classmethod
    def of(cls, model: Bridge | Transformer) -> Transformer:
        """The engine's model of ``model``: itself if it is one; for a bridge, built once (`from_bridge`, with
        its check forward) and reused while the bridge's weights stay as they were (a ``.to(device)``, a
        dtype change, a replaced parameter or an in-place edit builds it again)."""
        if isinstance(model, Transformer):
            return model
        key = _weights_key(model)
        try:
            got = _ENGINES.get(model)
        except TypeError:  # not weakly referable: build it each time
            return cls.from_bridge(model)
        if got is not None and got[1] == key:
            return got[0]
        tf = cls.from_bridge(model)
        _ENGINES[model] = (tf, key)
        return tf

    @classmethod
    def from_bridge(cls, bridge: Bridge, *, check: bool = True) -> Transformer:
        """Read weights from a TransformerLens bridge; verify the forward against it."""
        cfg = bridge.cfg
        hf = getattr(bridge, "original_model", None)
        hf_cfg = getattr(hf, "config", None)
        arch_name = (getattr(hf_cfg, "architectures", None) or [getattr(cfg, "architecture", None) or type(hf).__name__])[0]
        fam = family_of(str(arch_name))
        unsupported = []
        if getattr(cfg, "normalization_type", "LN") not in ("LN", "RMS"):
            unsupported.append(f"normalization {cfg.normalization_type}")
        if getattr(cfg, "attn_only", False):
            unsupported.append("attention-only blocks")
        if cfg.positional_embedding_type not in ("standard", "rotary"):
            unsupported.append(f"positional embedding {cfg.positional_embedding_type}")
        if cfg.act_fn not in _ACTIVATIONS:
            unsupported.append(f"activation {cfg.act_fn}")
        if getattr(cfg, "rotary_adjacent_pairs", False):
            unsupported.append("rotary embedding on adjacent pairs (GPT-J style)")
        rope_type = (getattr(hf_cfg, "rope_scaling", None) or {}).get("rope_type", "default")
        if rope_type == "dynamic":
            unsupported.append("dynamic rotary scaling (it changes with the sequence length)")
        if unsupported:
            raise NotImplementedError(f"acdc's engine does not support {', '.join(unsupported)} ({arch_name})")
        rotary_dim = 0
        rotary_base = float(getattr(cfg, "rotary_base", 10000.0))
        if cfg.positional_embedding_type == "rotary":
            rope = getattr(hf_cfg, "rope_parameters", None) or {}
            frac = rope.get("partial_rotary_factor", getattr(hf_cfg, "partial_rotary_factor", getattr(hf_cfg, "rotary_pct", 1.0)))
            rotary_base = float(rope.get("rope_theta", getattr(hf_cfg, "rope_theta", rotary_base)))
            rotary_dim = cfg.rotary_dim or int(cfg.d_head * (frac or 1.0))
        rotary_emb = getattr(getattr(hf, "model", None), "rotary_emb", None) or getattr(getattr(hf, "gpt_neox", None), "rotary_emb", None)
        nkv = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
        q_norm = getattr(bridge.blocks[0].attn, "q_norm", None) if len(bridge.blocks) else None  # Qwen3, Gemma 3, OLMo-2
        q_norm_w = getattr(q_norm, "w", None)
        qk_all = isinstance(q_norm_w, Tensor) and q_norm_w.numel() == cfg.n_heads * cfg.d_head != cfg.d_head
        pre_norms = not len(bridge.blocks) or getattr(bridge.blocks[0], "ln1", None) is not None
        experts = _experts_of(hf, int(getattr(cfg, "num_experts", 0) or 0), str(arch_name))
        hf_layers = getattr(hf.get_decoder(), "layers", None) if hf is not None and hasattr(hf, "get_decoder") else None
        sinks = [layer.self_attn.sinks for layer in hf_layers or () if isinstance(getattr(getattr(layer, "self_attn", None), "sinks", None), Tensor)]
        post_norms = len(bridge.blocks) > 0 and getattr(bridge.blocks[0], "ln1_post", None) is not None  # Gemma 2/3
        if q_norm is not None and getattr(cfg, "qk_norm_after_rope", False):
            raise NotImplementedError(f"acdc's engine does not support a QK norm after the rotary embedding ({arch_name})")
        arch = Architecture(
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            d_model=cfg.d_model,
            d_head=cfg.d_head,
            d_mlp=cfg.d_mlp if not experts else _expert_width(experts[0]),
            d_vocab=cfg.d_vocab_out,
            parallel_attn_mlp=bool(cfg.parallel_attn_mlp),
            position_embedding=cfg.positional_embedding_type,
            rotary_dim=rotary_dim,
            rotary_base=rotary_base,
            eps=float(cfg.eps),
            act_fn=cfg.act_fn,
            norm=cfg.normalization_type,
            gated_mlp=bool(getattr(cfg, "gated_mlp", False)),
            n_kv_heads=0 if nkv == cfg.n_heads else nkv,
            embed_scale=float(cfg.d_model) ** 0.5 if fam.embed_scale else 1.0,
            rotary_scale=float(getattr(rotary_emb, "attention_scaling", 1.0) or 1.0),
            family=fam.name,
            qk_norm=q_norm is not None,
            qk_norm_all=qk_all,
            pre_norms=pre_norms,
            qk_eps=float(getattr(q_norm, "variance_epsilon", None) or getattr(q_norm, "eps", None) or cfg.eps),
            n_experts=len(experts[0].down_proj) if experts else 0,
            experts_per_token=int(getattr(cfg, "experts_per_token", 0) or 0),
            norm_topk_prob=bool(getattr(hf_cfg, "norm_topk_prob", False)) if fam.norm_topk_prob is None else fam.norm_topk_prob,
            swiglu_limit=float(getattr(experts[0], "limit", 0.0) or 0.0) if experts else 0.0,
            swiglu_alpha=float(getattr(experts[0], "alpha", 0.0) or 0.0) if experts else 0.0,
            attn_sinks=bool(sinks),
            post_norms=post_norms,
            attn_scale=float(getattr(hf_cfg, "query_pre_attn_scalar", None) or cfg.d_head) ** -0.5,
            attn_softcap=float(getattr(hf_cfg, "attn_logit_softcapping", None) or 0.0),
            final_softcap=float(getattr(hf_cfg, "final_logit_softcapping", None) or 0.0),
            windows=_windows_of(hf_cfg, cfg.n_layers),
        )
        w = _read_weights(bridge, arch, norm_offset=fam.norm_offset)
        if experts:  # the router [E, d] and the experts' stacked projections: [E, 2 d_mlp, d] (gate; up), [E, d, d_mlp]
            assert hf is not None  # `_experts_of` found them in it
            w.update(_expert_weights(hf, experts, fam.gate_up_interleaved))
        if sinks:  # [n_heads] per layer
            if len(sinks) != arch.n_layers:
                raise NotImplementedError(f"attention sinks in {len(sinks)} of {arch.n_layers} layers ({arch_name})")
            w["sinks"] = [t.detach() for t in sinks]
        inv_freq = getattr(rotary_emb, "inv_freq", None)
        if arch.position_embedding == "rotary":  # Hugging Face's own frequencies carry its rope scalings
            w["inv_freq"] = (
                inv_freq.detach().float().to(w["W_E"].device) if isinstance(inv_freq, Tensor) and inv_freq.numel() * 2 == rotary_dim
                else 1.0 / (rotary_base ** (torch.arange(0, rotary_dim, 2, device=w["W_E"].device, dtype=torch.float32) / rotary_dim))
            )
            per_type = _rotary_by_layer(rotary_emb, hf_cfg, rotary_dim, str(arch_name))  # Gemma 3: local and global bases
            if per_type is not None:
                w["inv_freq_by_layer"] = [t.to(w["W_E"].device) for t in per_type]
        model = cls(arch, w)
        if check:
            model.check_against(bridge)
        return model

    @classmethod
    def from_tl_state_dict(cls, cfg: dict[str, Any], state_dict: dict[str, Tensor]) -> Transformer:
        """A model from a TransformerLens-format checkpoint, e.g. an attention-only model.

        cfg: ``n_layers``, ``n_heads``, ``d_model``, ``d_head``, ``d_vocab``, and optionally
        ``d_mlp``, ``attn_only``, ``act_fn`` (default "gelu_new"), ``eps`` (1e-5),
        ``normalization_type`` ("LN"), ``positional_embedding_type`` ("standard").
        state_dict: TransformerLens names (``embed.W_E``, ``pos_embed.W_pos``,
        ``blocks.{L}.attn.W_Q`` [n_heads, d_model, d_head], ``blocks.{L}.ln1.w``, ``blocks.{L}.mlp.W_in``,
        ``ln_final.w``, ``unembed.W_U``, ...); missing biases are zeros. There is no second
        implementation to check this forward against, so check it on your own prompts.
        """
        pos = cfg.get("positional_embedding_type", "standard")
        if pos != "standard":
            raise NotImplementedError(
                f"positional embedding {pos!r} in a TransformerLens checkpoint (e.g. the shortformer positions of "
                "attn-only-4l) is not supported yet; standard (learned, added to the embedding) only"
            )
        if cfg.get("normalization_type", "LN") != "LN":
            raise NotImplementedError("TransformerLens checkpoints with LayerNorm only (normalization_type 'LN')")
        attn_only = bool(cfg.get("attn_only", False))
        arch = Architecture(
            n_layers=int(cfg["n_layers"]), n_heads=int(cfg["n_heads"]), d_model=int(cfg["d_model"]),
            d_head=int(cfg["d_head"]), d_mlp=int(cfg.get("d_mlp") or 0), d_vocab=int(cfg["d_vocab"]),
            parallel_attn_mlp=bool(cfg.get("parallel_attn_mlp", False)), position_embedding="standard", rotary_dim=0,
            rotary_base=10000.0, eps=float(cfg.get("eps", 1e-5)), act_fn=cfg.get("act_fn", "gelu_new"),
            attn_only=attn_only, family="transformer_lens",
        )
        sd = state_dict
        if "embed.W_E" not in sd or "blocks.0.attn.W_Q" not in sd:
            raise ValueError("not a TransformerLens state dict: it needs embed.W_E and blocks.{L}.attn.W_Q, ...")
        ref = sd["embed.W_E"]
        H, d, dh = arch.n_heads, arch.d_model, arch.d_head

        def get(key: str, shape: tuple[int, ...]) -> Tensor:
            t = sd.get(key)
            return torch.zeros(shape, dtype=ref.dtype, device=ref.device) if t is None else t.detach()

        w: dict[str, Any] = {"W_E": ref.detach(), "W_pos": get("pos_embed.W_pos", (1, d)),
                             "W_U": get("unembed.W_U", (d, arch.d_vocab)), "b_U": get("unembed.b_U", (arch.d_vocab,)),
                             "lnf_w": get("ln_final.w", (d,)), "lnf_b": get("ln_final.b", (d,))}
        layer_keys = {
            "W_Q": ("attn.W_Q", (H, d, dh)), "W_K": ("attn.W_K", (H, d, dh)), "W_V": ("attn.W_V", (H, d, dh)),
            "W_O": ("attn.W_O", (H, dh, d)), "b_Q": ("attn.b_Q", (H, dh)), "b_K": ("attn.b_K", (H, dh)),
            "b_V": ("attn.b_V", (H, dh)), "b_O": ("attn.b_O", (d,)), "ln1_w": ("ln1.w", (d,)), "ln1_b": ("ln1.b", (d,)),
        }
        if not attn_only:
            m = arch.d_mlp
            layer_keys.update({"W_in": ("mlp.W_in", (d, m)), "b_in": ("mlp.b_in", (m,)), "W_out": ("mlp.W_out", (m, d)),
                               "b_out": ("mlp.b_out", (d,)), "ln2_w": ("ln2.w", (d,)), "ln2_b": ("ln2.b", (d,))})
        for name, (key, shape) in layer_keys.items():
            w[name] = [get(f"blocks.{layer}.{key}", shape) for layer in range(arch.n_layers)]
        return cls(arch, w)

    def check_against(self, bridge: Bridge, tol: float = 1e-4) -> None:
        """Raise if this forward's logits differ from the bridge's on random tokens."""
        gen = torch.Generator().manual_seed(0)
        n_ctx = min(8, int(getattr(bridge.cfg, "n_ctx", 8) or 8))
        toks = torch.randint(0, self.arch.d_vocab, (2, n_ctx), generator=gen).to(self.device)
        with torch.no_grad():
            ref = bridge(toks, return_type="logits")
            ours = self.unembed(self.run(toks).resid_pre[-1])
        err = (ref - ours).abs().max().item()
        scale = max(ref.abs().max().item(), 1.0)
        if not err <= tol * scale:
            raise RuntimeError(
                f"acdc's forward disagrees with the model by {err:.3g} (scale {scale:.3g}); "
                f"this architecture ({bridge.cfg.architecture}) has a feature acdc does not model"
            )

    # ------------------------------------------------------------------ pieces
    def embed(self, tokens: Tensor) -> Tensor:
        """[batch, pos] token ids -> [batch, pos, d_model] output of the `input` node."""
        x = self.w["W_E"][tokens]
        if self.arch.embed_scale != 1.0:
            x = x * torch.tensor(self.arch.embed_scale, dtype=x.dtype)
        if self.arch.position_embedding == "standard":
            x = x + self.w["W_pos"][: tokens.shape[-1]]
        return x

    def ln(self, x: Tensor, name: str, layer: int | None = None, *, frozen: bool = False) -> Tensor:
        """Norm ``name`` ("ln1", "ln2" per layer, or "lnf") of x [..., d_model]: LayerNorm or RMSNorm (x itself
        for "ln1" and "ln2" in a family without norms before its sublayers, OLMo-2). ``frozen``: the same values,
        with the statistic it divides by (std, RMS) detached from the backward (GIM's norm rule)."""
        if not self.arch.pre_norms and name in ("ln1", "ln2"):
            return x
        w, b = self.w[f"{name}_w"], self.w[f"{name}_b"]
        if layer is not None:
            w, b = w[layer], b[layer]
        if self.arch.norm == "RMS":
            r = (x.pow(2).mean(-1, keepdim=True) + self.arch.eps).rsqrt()
            return x * (r.detach() if frozen else r) * w
        if frozen:
            centred = x - x.mean(-1, keepdim=True)
            return centred * (centred.pow(2).mean(-1, keepdim=True) + self.arch.eps).rsqrt().detach() * w + b
        return F.layer_norm(x, (x.shape[-1],), w, b, self.arch.eps)

    def ln_vjp(self, x: Tensor, grad: Tensor, name: str, layer: int | None = None, *, frozen: bool = False) -> Tensor:
        """Gradient w.r.t. a LayerNorm's input x [..., d] given the gradient of its output.

        grad may carry extra leading dims (e.g. one per head) that broadcast against x. This is
        LayerNorm's backward pass written out, so one forward can serve many output gradients.
        ``frozen``: the backward of `ln`'s frozen form (the statistic a constant: grad * w, centred for
        LayerNorm, times 1/std).
        """
        if not self.arch.pre_norms and name in ("ln1", "ln2"):
            return grad.expand(*torch.broadcast_shapes(grad.shape, x.shape)).clone()
        w = self.w[f"{name}_w"] if layer is None else self.w[f"{name}_w"][layer]
        rms = self.arch.norm == "RMS"
        mu = 0.0 if rms else x.mean(-1, keepdim=True)
        var = x.pow(2).mean(-1, keepdim=True) if rms else x.var(-1, unbiased=False, keepdim=True)
        rstd = (var + self.arch.eps).rsqrt()
        gw = grad * w  # the one full-size temporary; the rest is in place
        if frozen:
            if not rms:
                gw.sub_(gw.mean(-1, keepdim=True))
            return gw.mul_(rstd)
        xhat = (x - mu) * rstd
        proj = (gw * xhat).sum(-1, keepdim=True) if gw.dim() == xhat.dim() else torch.einsum(
            "...d,...d->...", gw, xhat.expand_as(gw))[..., None]
        if not rms:  # LayerNorm also removes the mean
            gw.sub_(gw.mean(-1, keepdim=True))
        gw.addcmul_(xhat.expand_as(gw), proj, value=-1.0 / x.shape[-1])
        return gw.mul_(rstd)

    def rotate(self, x: Tensor, pos: Tensor, layer: int) -> Tensor:
        """Rotary embedding of ``layer``'s projected queries or keys x [..., n, p, d_head] at positions pos [n, p]
        (x itself for a model without rotary embeddings): what `pattern` applies before q·k."""
        return self._rotate(x, pos, layer) if self.arch.position_embedding == "rotary" else x

    def _rotate(self, x: Tensor, pos: Tensor, layer: int) -> Tensor:
        """Rotary embedding (GPT-NeoX convention) of x [..., n, p, d_head] at positions pos (a family with a base
        per kind of layer, Gemma 3's local and global ones, reads ``layer``'s)."""
        rd = self.arch.rotary_dim
        by_layer = self.w.get("inv_freq_by_layer")
        inv_freq = self.w["inv_freq"] if by_layer is None else by_layer[layer]
        ang = pos.to(torch.float32)[..., None] * inv_freq  # [..., p, rd/2]
        ang = torch.cat([ang, ang], dim=-1)
        scale = self.arch.rotary_scale
        cos, sin = (ang.cos() * scale).to(x.dtype), (ang.sin() * scale).to(x.dtype)
        xr, xp = x[..., :rd], x[..., rd:]
        half = rd // 2
        rot = torch.cat([-xr[..., half:], xr[..., :half]], dim=-1)
        return torch.cat([xr * cos + rot * sin, xp], dim=-1)

    def attention(
        self,
        layer: int,
        heads: Tensor,
        xq: Tensor,
        xk: Tensor,
        xv: Tensor,
        q_pos: Tensor | None = None,
    ) -> Tensor:
        """Outputs (before b_O) of the given heads of one layer.

        heads: [h] head indices.
        xq:    [h, n, p, d_model] query-side inputs (or [n, p, d_model], shared by all heads);
               p = pos, or p = 1 with `q_pos` giving each row's position.
        xk,xv: [h, n, pos, d_model] (or shared [n, pos, d_model]).
        q_pos: [n, p] positions of the query rows; None means 0..pos-1.
        Returns [h, n, p, d_model].
        """
        qm = self.project(layer, heads, xq, "Q")
        km = self.project(layer, heads, xk, "K")
        vm = self.project(layer, heads, xv, "V")
        return self.attend(layer, heads, qm, km, vm, q_pos)

    def attend(
        self, layer: int, heads: Tensor, qm: Tensor, km: Tensor, vm: Tensor, q_pos: Tensor | None = None,
        *, backward_temperature: float = 1.0,
    ) -> Tensor:
        """Attention from projected queries, keys, values [h, n, p|pos, d_head] -> [h, n, p, d_model]
        (``backward_temperature``: `pattern`'s)."""
        return self.mix(layer, heads, self.pattern(layer, qm, km, q_pos, heads, backward_temperature=backward_temperature), vm)

    def mix(self, layer: int, heads: Tensor, pattern: Tensor, vm: Tensor) -> Tensor:
        """Heads' outputs from their pattern [h, n, p, pos] and projected values [h, n, pos, d_head] -> [h, n, p, d_model]."""
        z = torch.matmul(pattern, vm)  # [h, n, p, dh]
        h, n, p, dh = z.shape
        out = torch.bmm(z.reshape(h, n * p, dh), self.w["W_O"][layer][heads])
        return out.view(h, n, p, self.arch.d_model)

    def pattern(self, layer: int, qm: Tensor, km: Tensor, q_pos: Tensor | None = None, heads: Tensor | None = None,
                *, backward_temperature: float = 1.0) -> Tensor:
        """Attention probabilities [h, n, p, pos] of ``layer``'s heads ``heads`` [h] (None: every head, in order) from
        projected queries and keys [h, n, p|pos, d_head]: rotary, scaled scores (soft-capped where the family caps
        them), causal (and, in a sliding-window layer, only the window's last keys); with attention sinks (GPT-OSS)
        each head's sink logit joins the softmax and its share is dropped, so a row sums to less than 1.
        ``backward_temperature`` T != 1: the same probabilities, with the softmax's backward taken at scores / T
        (GIM's softmax rule, `softmax_backward_at`)."""
        a = self.arch
        n_pos = km.shape[-2]
        key_pos = torch.arange(n_pos, device=km.device)
        if q_pos is None:
            q_pos = key_pos.expand(km.shape[1], n_pos)
        if a.position_embedding == "rotary":
            qm = self._rotate(qm, q_pos, layer)
            km = self._rotate(km, key_pos.expand(km.shape[1], n_pos), layer)
        scores = torch.matmul(qm, km.transpose(-1, -2)) * (a.attn_scale or a.d_head**-0.5)  # [h, n, p, pos]
        if a.attn_softcap:
            scores = torch.tanh(scores / a.attn_softcap) * a.attn_softcap
        allowed = key_pos <= q_pos[..., None]  # [n, p, pos]
        window = a.windows[layer] if a.windows else 0
        if window:
            allowed = allowed & (key_pos > q_pos[..., None] - window)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        if a.attn_sinks:
            sink = self.w["sinks"][layer] if heads is None else self.w["sinks"][layer][heads]  # [h]
            sink = sink.to(scores.dtype).view(-1, 1, 1, 1).expand(*scores.shape[:-1], 1)
            scores = torch.cat([scores, sink], -1)
        probs = scores.softmax(-1) if backward_temperature == 1.0 else softmax_backward_at(scores, backward_temperature)
        return probs[..., :-1] if a.attn_sinks else probs

    @torch.no_grad()
    def attention_patterns(self, tokens: Tensor) -> Tensor:
        """Every head's attention probabilities on a plain run: [n_layers, n_heads, batch, pos, pos]."""
        resid_pre = self.run(tokens).resid_pre
        heads = torch.arange(self.arch.n_heads, device=self.device)
        return torch.stack([
            self.pattern(layer, self.project(layer, heads, resid_pre[layer], "Q"), self.project(layer, heads, resid_pre[layer], "K"),
                         heads=heads)
            for layer in range(self.arch.n_layers)
        ])

    def project(self, layer: int, heads: Tensor, x: Tensor, which: str) -> Tensor:
        """LN1 then the per-head projection: -> [h, n, p, d_head]."""
        return self.project_normed(layer, heads, self.ln(x, "ln1", layer), which)

    def project_normed(self, layer: int, heads: Tensor, ln: Tensor, which: str) -> Tensor:
        """Per-head projection ("Q", "K" or "V") of LN1's output ln [n, p, d] or [h, n, p, d] -> [h, n, p, d_head],
        queries and keys through the family's QK norm (`qk_normed`)."""
        return self.qk_normed(layer, heads, self.project_linear(layer, heads, ln, which), which, ln)

    def qk_normed(self, layer: int, heads: Tensor, y: Tensor, which: str, ln: Tensor | None = None) -> Tensor:
        """The QK norm of projected queries or keys y [h, n, p, d_head] of heads ``heads`` [h] (Qwen3, Gemma 3:
        RMSNorm over each head's d_head; OLMo-2, OLMoE: over every head's projection of the same input ``ln``,
        [n, p, d] or [h, n, p, d], each head then taking its own slice and scale); y itself for values and for
        families without one."""
        if not self.arch.qk_norm or which == "V":
            return y
        return y * self.qk_norm_factor(layer, which, y, ln, heads)

    def qk_norm_factor(self, layer: int, which: str, y: Tensor, ln: Tensor | None = None,
                       heads: Tensor | None = None) -> Tensor:
        """[..., d_head] what the QK norm multiplies projected queries or keys y [..., d_head] by (its scale
        over the RMS, in y's dtype); ones without a QK norm. Frozen at a run, it makes the norm linear.

        Per head (Qwen3): the RMS of y itself. Over the whole projection (OLMo-2): the RMS of every head's
        projection of the input ``ln`` that gave y (a head's own copy of its input: an edge into one head's
        query changes that head's query only, as a grouped key/value head is each query head's own copy), and
        y's heads ``heads`` (None: every head, in order) take their slices of the scale [n_heads, d_head]."""
        if not self.arch.qk_norm or which == "V":
            return torch.ones_like(y)
        w = self.w[f"{which.lower()}_norm"][layer].to(y.dtype)  # [d_head], or [n_heads, d_head] over the whole projection
        if not self.arch.qk_norm_all:
            return (y.pow(2).mean(-1, keepdim=True) + self.arch.qk_eps).rsqrt() * w
        if ln is None:
            raise ValueError("a QK norm over the whole projection needs the input the heads projected (ln)")
        full = self.qk_full(layer, which, ln)
        if ln.dim() == 3 and y.dim() == 4:  # [n, p, d] shared by every head
            full = full[None]
        return self.qk_all_scale(layer, which, full, heads)

    def qk_full(self, layer: int, which: str, ln: Tensor) -> Tensor:
        """[..., H, d_head] every head's projection ("Q" or "K") of the input ln [..., d]: what a QK norm over
        the whole projection takes its RMS over (key heads repeated to one per query head: the same mean)."""
        W, b = self.w[f"W_{which}"][layer], self.w[f"b_{which}"][layer]  # [H, d, dh], [H, dh]
        return torch.einsum("...d,hde->...he", ln, W) + b

    def qk_all_scale(self, layer: int, which: str, full: Tensor, heads: Tensor | None = None) -> Tensor:
        """What a QK norm over the whole projection multiplies a head's projection by: full [h|1, ..., H, d_head]
        (`qk_full` of each head's own input, or one shared) -> [h, ..., d_head], the heads ``heads`` (None: all)
        each with their slice of the scale; full [..., H, d_head] without a head axis -> [..., d_head] for one head."""
        w = self.w[f"{which.lower()}_norm"][layer].to(full.dtype)  # [n_heads, d_head]
        rstd = (full.pow(2).mean((-1, -2)) + self.arch.qk_eps).rsqrt()[..., None]
        sel = w if heads is None else w[heads]
        if full.dim() == 5:  # [h|1, n, p, H, dh]
            return rstd * sel[:, None, None, :]
        return rstd * sel

    def project_linear(self, layer: int, heads: Tensor, ln: Tensor, which: str) -> Tensor:
        """The linear part of `project_normed`: ln @ W + b per head -> [h, n, p, d_head] (before any QK norm)."""
        a = self.arch
        h = heads.numel()
        weight = self.w[f"W_{which}"][layer]
        bias = self.w[f"b_{which}"][layer]
        if h != a.n_heads:
            weight, bias = weight[heads], bias[heads]
        if ln.dim() == 3:  # shared input: one matmul for all the heads
            y = torch.einsum("npd,hde->hnpe", ln, weight)
            return y + bias[:, None, None, :]
        _, n, p, d = ln.shape
        y = torch.baddbmm(bias[:, None, :], ln.reshape(h, n * p, d), weight)
        return y.view(h, n, p, a.d_head)

    def post_attn(self, layer: int, y: Tensor) -> Tensor:
        """What the attention adds to the stream from its heads' summed output y [..., d_model] (b_O included):
        y itself, or (Gemma 2/3) y through the layer's post-attention RMSNorm."""
        return self.ln(y, "ln1_post", layer) if self.arch.post_norms else y

    def post_attn_jvp(self, layer: int, y: Tensor, delta: Tensor) -> Tensor:
        """The derivative of `post_attn` at the heads' sum y [..., d_model] applied to changes delta [..., d_model]
        (broadcasting): for RMSNorm w * r * (delta - y r^2 mean(y delta)), r = (mean(y^2) + eps)^-1/2; delta
        itself where there is no norm after attention."""
        if not self.arch.post_norms:
            return delta
        assert self.arch.norm == "RMS", "a norm after attention is an RMSNorm (Gemma 2/3)"
        w = self.w["ln1_post_w"][layer]
        r = (y.pow(2).mean(-1, keepdim=True) + self.arch.eps).rsqrt()
        return w * r * (delta - y * r.pow(2) * (y * delta).mean(-1, keepdim=True))

    def attn_bias(self, layer: int) -> Tensor:
        """[d_model] the attention output bias b_O of ``layer`` (outside every head's output)."""
        return self.w["b_O"][layer]

    def project_grad(self, layer: int, which: str, grad: Tensor) -> Tensor:
        """Gradient at LN1's output [h, n, p, d_model] from the gradient at the heads' linear projections
        ``which`` ("Q", "K", "V") [h, n, p, d_head]: the backward of `project_linear`'s weights."""
        return torch.einsum("hnpe,hde->hnpd", grad, self.w[f"W_{which}"][layer])

    def project_grad_all(self, layer: int, which: str, grad: Tensor) -> Tensor:
        """Gradient at each head's input [h, n, p, d_model] from the gradient at its copy of every head's projection
        ``which`` [h, n, p, H, d_head] (`qk_full`'s backward: a QK norm over the whole projection)."""
        return torch.einsum("hnpje,jde->hnpd", grad, self.w[f"W_{which}"][layer])

    def mlp(self, layer: int, x: Tensor, *, frozen_norm: bool = False) -> Tensor:
        """Output of MLP `layer` (b_out included) for input x [..., d_model] (``frozen_norm``: its norm's statistic
        detached from the backward, `ln`)."""
        return self.mlp_normed(layer, self.ln(x, "ln2", layer, frozen=True) if frozen_norm else self.mlp_input(layer, x))

    def mlp_normed(self, layer: int, ln: Tensor) -> Tensor:
        """Output of MLP `layer` (b_out included) from its normed input ln [..., d_model] (`mlp_input`'s output)."""
        if self.arch.n_experts:
            out = self._experts(layer, ln)
        else:
            hidden = self._dense_hidden(layer, ln).reshape(-1, self.arch.d_mlp)
            out = torch.addmm(self.w["b_out"][layer], hidden, self.w["W_out"][layer]).view(*ln.shape)
        return self.ln(out, "ln2_post", layer) if self.arch.post_norms else out  # Gemma 2/3: the norm after the MLP

    def mlp_hidden(self, layer: int, x: Tensor) -> Tensor:
        """The MLP's hidden activations (its neurons) for input x [..., d_model] -> [..., d_mlp].

        The MLP's output is ``hidden @ mlp_out_rows(layer) + mlp_bias(layer)``: neuron i writes its
        activation times row i of W_out.
        """
        return self._hidden(layer, self.mlp_input(layer, x))

    def mlp_hidden_normed(self, layer: int, ln: Tensor) -> Tensor:
        """The MLP's hidden activations from its normed input ln [..., d_model] (`mlp_input`'s output) -> [..., d_mlp]."""
        return self._hidden(layer, ln)

    def _experts(self, layer: int, ln: Tensor) -> Tensor:
        """A mixture-of-experts MLP on ln [..., d_model]: the router's softmax over experts (in float32; its bias
        where it has one), its top ``experts_per_token`` (renormalised with ``norm_topk_prob``), each chosen
        expert's gated MLP (biases where it has them; GPT-OSS's clamped SwiGLU) weighted by its probability and
        summed (Qwen3-MoE, OLMoE, Mixtral, GPT-OSS). Differentiable in ln as the model is."""
        a, w = self.arch, self.w
        flat = ln.reshape(-1, ln.shape[-1])
        probs = torch.addmm(w["b_router"][layer], flat, w["W_router"][layer].T).softmax(-1, dtype=torch.float32)  # [T, E]
        top, idx = probs.topk(a.experts_per_token, dim=-1)
        if a.norm_topk_prob:
            top = top / top.sum(-1, keepdim=True)
        top = top.to(flat.dtype)
        out = torch.zeros_like(flat)
        for e in range(a.n_experts):
            tok, slot = torch.where(idx == e)
            if tok.numel() == 0:
                continue
            gate, up = torch.addmm(w["b_gate_up"][layer][e], flat[tok], w["W_gate_up"][layer][e].T).chunk(2, dim=-1)
            if a.swiglu_limit:  # GPT-OSS's clamped SwiGLU
                gate, up = gate.clamp(max=a.swiglu_limit), up.clamp(-a.swiglu_limit, a.swiglu_limit)
                hidden = (up + 1) * gate * torch.sigmoid(gate * a.swiglu_alpha)
            else:
                hidden = self.act(gate) * up
            y = torch.addmm(w["b_down"][layer][e], hidden, w["W_down"][layer][e].T)
            out = out.index_add(0, tok, y * top[tok, slot, None])
        return out.view(*ln.shape)

    def require_neurons(self) -> None:
        """A one-line error where the MLP's output is not its neurons' sum (a mixture of experts; a norm after the MLP)."""
        if self.arch.n_experts:
            raise NotImplementedError("a mixture-of-experts MLP has no single set of neurons: it runs as one MLP node "
                                      "(mlp_units='whole') or with transcoders")
        if self.arch.post_norms:
            raise NotImplementedError("this family normalizes the MLP's output after its neurons, so the output is not "
                                      "their sum: the MLP runs as one node (mlp_units='whole') or with transcoders")

    def _hidden(self, layer: int, ln: Tensor) -> Tensor:
        self.require_neurons()
        return self._dense_hidden(layer, ln)

    def _dense_hidden(self, layer: int, ln: Tensor) -> Tensor:
        w = self.w
        flat = ln.reshape(-1, ln.shape[-1])
        if self.arch.gated_mlp:  # act(x W_gate) * (x W_in)
            hidden = self.act(flat @ w["W_gate"][layer]) * torch.addmm(w["b_in"][layer], flat, w["W_in"][layer])
        else:
            hidden = self.act(torch.addmm(w["b_in"][layer], flat, w["W_in"][layer]))
        return hidden.view(*ln.shape[:-1], -1)

    def mlp_out_rows(self, layer: int) -> Tensor:
        """[d_mlp, d_model] what each neuron of MLP ``layer`` writes per unit of activation (W_out)."""
        self.require_neurons()
        return self.w["W_out"][layer]

    def mlp_bias(self, layer: int) -> Tensor:
        """[d_model] the MLP's output bias b_out (outside every neuron)."""
        return self.w["b_out"][layer]

    # ------------------------------------------------------------------ weights, read by name (the only door into ``w``)
    @property
    def embedding(self) -> Tensor:
        """[d_vocab, d_model] W_E: each token's embedding (before ``embed_scale`` and positions)."""
        return self.w["W_E"]

    @property
    def unembedding(self) -> Tensor:
        """[d_model, d_vocab] W_U (after the final norm; ``unembed`` adds b_U)."""
        return self.w["W_U"]

    def norm_params(self, name: str, layer: int | None = None) -> tuple[Tensor, Tensor]:
        """(scale, bias) [d_model] of norm ``name``: "ln1" (before the heads), "ln2" (before the MLP) of
        ``layer``, or "lnf" (final). RMSNorm's bias is zeros; a family's ``1 + w`` scale is applied."""
        w, b = self.w[f"{name}_w"], self.w[f"{name}_b"]
        return (w, b) if layer is None else (w[layer], b[layer])

    def head_weights(self, layer: int, which: str) -> tuple[Tensor, Tensor | None]:
        """A layer's per-head weights and bias: ``which`` "Q", "K", "V" -> W [n_heads, d_model, d_head], b
        [n_heads, d_head] (shared key/value heads repeated to one per query head); "O" -> W_O [n_heads,
        d_head, d_model] and None (b_O is `attn_bias`, outside every head)."""
        if which == "O":
            return self.w["W_O"][layer], None
        return self.w[f"W_{which}"][layer], self.w[f"b_{which}"][layer]

    def mlp_weights(self, layer: int) -> dict[str, Tensor]:
        """MLP ``layer``'s matrices: ``W_in`` [d_model, d_mlp], ``b_in`` [d_mlp], ``W_out`` [d_mlp, d_model],
        ``b_out`` [d_model], and ``W_gate`` [d_model, d_mlp] for a gated MLP."""
        if self.arch.n_experts:
            raise NotImplementedError("a mixture-of-experts MLP has no single W_in / W_out (its experts are stacked)")
        keys = ("W_in", "b_in", "W_out", "b_out") + (("W_gate",) if self.arch.gated_mlp else ())
        return {k: self.w[k][layer] for k in keys}

    def unembed(self, x: Tensor, vocab: Tensor | None = None, *, frozen_norm: bool = False) -> Tensor:
        """Final LayerNorm and unembedding: [..., d_model] -> [..., d_vocab], or only the columns
        ``vocab`` [k] -> [..., k] (a metric that reads a few tokens' logits: the same numbers, k of them).
        ``frozen_norm``: the final norm's statistic detached from the backward (`ln`)."""
        ln = self.ln(x, "lnf", frozen=frozen_norm)
        W, b = (self.w["W_U"], self.w["b_U"]) if vocab is None else self._unembed_columns(vocab)
        logits = (ln.reshape(-1, ln.shape[-1]) @ W + b).view(*x.shape[:-1], -1)
        cap = self.arch.final_softcap
        return logits if not cap else torch.tanh(logits / cap) * cap

    def _unembed_columns(self, vocab: Tensor) -> tuple[Tensor, Tensor]:
        """W_U's and b_U's columns ``vocab``, gathered once per column set (W_U is often a transposed
        view of the embedding, where gathering columns costs more than the product itself)."""
        key = vocab.cpu().numpy().tobytes()
        got = self._columns.get(key)
        if got is None:
            got = (self.w["W_U"].index_select(1, vocab).contiguous(), self.w["b_U"].index_select(0, vocab))
            self._columns = {key: got}  # one column set at a time (a search uses one)
        return got

    def fingerprint(self) -> str:
        """12 hex digits that tell this model's weights apart (a SHA-256 of its shape and a sample of
        every layer's weights): what a transcoder set records to refuse another model."""
        import hashlib

        a = self.arch
        h = hashlib.sha256(repr((a.family, a.n_layers, a.n_heads, a.d_model, a.d_mlp, a.d_vocab)).encode())
        picks = [self.w["W_E"][:8]] + [self.w[k][layer].reshape(-1)[:64] for layer in range(a.n_layers)
                                        for k in ("W_Q", "W_router" if a.n_experts else "W_in")
                                        if k in self.w and not (k == "W_in" and a.attn_only)]
        for t in picks:
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:12]

    # ------------------------------------------------------------------ MLP inputs and outputs
    def mlp_input(self, layer: int, resid_mid: Tensor) -> Tensor:
        """What MLP ``layer``'s matrices read: the block's norm of its input stream [..., d_model]
        (LayerNorm or RMSNorm with its scale, as Hugging Face's ``ln_2`` / ``post_attention_layernorm``
        output; a transcoder reads exactly this)."""
        return self.ln(resid_mid, "ln2", layer)

    def walk(self, x: Tensor, p: LayerPass, last: int | None = None) -> Iterator[tuple[Part, Tensor, Tensor, Tensor]]:
        """Pass ``p`` forward over the layer loop from the input stream x [..., d_model], up to layer ``last``
        (default: all): each part's output ``part.through(p, the stream it reads)`` is added to the stream.
        Yields (part, what it read, its output, the stream after it)."""
        streams: dict[int, Tensor] = {}
        for part in self.parts:
            if last is not None and part.layer > last:
                return
            read = streams.setdefault(part.stream, x)  # a stream is the running one when its first reader runs
            for old in [k for k in streams if k < part.stream]:
                del streams[old]  # read by no later part
            out = part.through(p, read)
            assert out is not None, "a forward pass adds a tensor at every part"
            x = x + out
            yield part, read, out, x

    def walk_back(self, g: Tensor, p: LayerPass, last: int | None = None) -> Tensor:
        """The transpose of a linear `walk`: g [..., d_model] the cotangent after layer ``last`` (default:
        the final stream); each part, last first, sends ``part.through(p, the cotangent after it)`` to the
        stream it read (None: nothing). Returns the cotangent at the input stream."""
        parts = [q for q in self.parts if last is None or q.layer <= last]
        first: dict[int, int] = {}
        for i, q in enumerate(parts):
            first.setdefault(q.stream, i)  # stream q.stream is the running stream before part first[q.stream]
        owed: dict[int, Tensor] = {}
        for i in range(len(parts) - 1, -1, -1):
            sent = parts[i].through(p, g)
            j = first[parts[i].stream]
            if sent is not None:
                owed[j] = sent if j not in owed else owed[j] + sent
            if i in owed:
                g = g + owed.pop(i)
        return g

    def _walk(self, tokens: Tensor, last: int | None = None, replace: dict[int, Callable[[Tensor], Tensor]] | None = None,
              patterns: Tensor | None = None, edit_heads: dict[int, Callable[[Tensor], Tensor]] | None = None,
              edit_input: Callable[[Tensor], Tensor] | None = None) -> Iterator[tuple[int, Tensor, Tensor, Tensor]]:
        """The plain forward (`walk` of the plain pass), layer by layer up to ``last`` (default: all): yields
        (layer, the MLP's input stream, the MLP's output, the stream after the layer), each [batch, pos,
        d_model]; the MLP of a layer in ``replace`` is swapped for ``replace[layer](mlp_input)``
        (attention-only: output 0); ``patterns`` [n_layers, n_heads, batch, pos, pos] fixes every head's
        attention (values live); ``edit_heads[layer](outputs [n_heads, batch, pos, d_model])`` edits a layer's
        head outputs and ``edit_input(embedding)`` the input node's output."""
        resid = self.embed(tokens)
        if edit_input is not None:
            resid = edit_input(resid)
        for part, read, out, after in self.walk(resid, _Plain(self, replace, patterns, edit_heads), last):
            if isinstance(part, MLPPart):
                yield part.layer, read, out, after
            elif self.arch.attn_only:
                yield part.layer, after, torch.zeros_like(after), after

    @torch.no_grad()
    def residuals(self, tokens: Tensor, last: int | None = None) -> Iterator[tuple[int, Tensor, Tensor, Tensor]]:
        """A plain forward up to layer ``last`` (default: all), layer by layer: yields (layer, the stream
        before it, the MLP's input stream, the MLP's output), each [batch, pos, d_model]; nothing is kept."""
        before = self.embed(tokens)
        for layer, mlp_in, m, resid in self._walk(tokens, last):
            yield layer, before, mlp_in, m
            before = resid

    @torch.no_grad()
    def mlp_io(self, tokens: Tensor, layers: list[int]) -> dict[int, tuple[Tensor, Tensor]]:
        """For each of ``layers``: (MLP input after the norm, MLP output), each [batch, pos, d_model],
        from one forward that stops after the last of them (nothing else is kept)."""
        if self.arch.attn_only:
            raise ValueError("an attention-only model has no MLPs to read")
        want = set(layers)
        return {layer: (self.mlp_input(layer, mlp_in), m) for layer, mlp_in, m, _ in self._walk(tokens, max(layers)) if layer in want}

    @torch.no_grad()
    def logits_with_mlps(self, tokens: Tensor, replace: dict[int, Callable[[Tensor], Tensor]] | None = None,
                         patterns: Tensor | None = None) -> Tensor:
        """Logits [batch, pos, d_vocab] of a plain forward, the MLP of each layer in ``replace`` swapped
        for ``replace[layer](mlp_input)`` (the normed input, see `mlp_input`) -> its output [..., d_model];
        ``patterns`` (as `attention_patterns` gives them) fixes every head's attention."""
        last = None
        for last in self._walk(tokens, replace=replace, patterns=patterns):  # noqa: B007 (the stream after the last layer is the answer)
            pass
        assert last is not None
        return self.unembed(last[3])

    @torch.no_grad()
    def logits_with_edits(self, tokens: Tensor, *, heads: dict[int, Callable[[Tensor], Tensor]] | None = None,
                          mlps: dict[int, Callable[[Tensor], Tensor]] | None = None,
                          embedding: Callable[[Tensor], Tensor] | None = None, rows: Tensor | None = None) -> Tensor:
        """Logits of a plain forward with components' outputs edited, everything downstream live:
        ``heads[layer]`` maps the layer's head outputs [n_heads, batch, pos, d_model] to new ones,
        ``mlps[layer]`` maps the MLP's normed input (`mlp_input`) to its output (`mlp_normed` is the
        unedited MLP), ``embedding`` maps the input node's output. What interventions run on.
        ``rows`` [batch, P]: only those positions are unembedded -> [batch * P, d_vocab], prompt-major
        (as `run` reads the answer positions); None: every position, [batch, pos, d_vocab]."""
        last = None
        for last in self._walk(tokens, replace=mlps, edit_heads=heads, edit_input=embedding):  # noqa: B007
            pass
        assert last is not None
        resid = last[3]
        if rows is None:
            return self.unembed(resid)
        picked = resid[torch.arange(resid.shape[0], device=resid.device)[:, None], rows.to(resid.device)]
        return self.unembed(picked.reshape(-1, resid.shape[-1]))

    # ------------------------------------------------------------------ full pass
    @torch.no_grad()
    def run(self, tokens: Tensor, answer_pos: Tensor | None = None) -> ForwardCache:
        """Full forward pass recording every source output and residual checkpoint.

        tokens: [batch, pos]; answer_pos: [batch, P] checked positions (`inputs.answer_positions`;
        None: the last token). Logits are read at the answer positions: [batch * P, d_vocab],
        prompt-major.
        """
        a = self.arch
        B, S = tokens.shape
        if answer_pos is None:
            answer_pos = answer_positions(None, B, S).to(tokens.device)
        has_mlp = not a.attn_only
        sources = torch.empty(layer_offset(a.n_layers, a.n_heads, has_mlp), B, S, a.d_model, dtype=self.dtype, device=self.device)
        resid_pre = torch.empty(a.n_layers + 1, B, S, a.d_model, dtype=self.dtype, device=self.device)
        resid_mid = torch.empty(a.n_layers, B, S, a.d_model, dtype=self.dtype, device=self.device)

        def record_input(x: Tensor) -> Tensor:
            sources[0] = resid_pre[0] = x
            return x

        def record_heads(layer: int) -> Callable[[Tensor], Tensor]:
            def record(heads_out: Tensor) -> Tensor:
                base = layer_offset(layer, a.n_heads, has_mlp)
                sources[base : base + a.n_heads] = heads_out
                return heads_out
            return record

        heads = {layer: record_heads(layer) for layer in range(a.n_layers)}
        resid = resid_pre[0]
        for layer, mlp_in, m, resid in self._walk(tokens, edit_heads=heads, edit_input=record_input):
            resid_mid[layer] = mlp_in
            if has_mlp:
                sources[layer_offset(layer, a.n_heads, has_mlp) + a.n_heads] = m
            resid_pre[layer + 1] = resid
        final = resid[torch.arange(B, device=resid.device)[:, None], answer_pos]
        return ForwardCache(sources, resid_pre, resid_mid, self.unembed(final.reshape(-1, a.d_model)))


# Each bridge's engine model, while the bridge lives (`Transformer.of`): a memo, not state anything reads.
_ENGINES: weakref.WeakKeyDictionary[Any, tuple[Transformer, tuple[Any, ...]]] = weakref.WeakKeyDictionary()


def _rotary_by_layer(rotary_emb: Any, hf_cfg: Any, rotary_dim: int, arch_name: str) -> list[Tensor] | None:
    """Each layer's rotary frequencies where Hugging Face keeps one set per kind of layer (Gemma 3:
    ``sliding_attention_inv_freq``, ``full_attention_inv_freq``); None where it keeps one for all."""
    types = getattr(hf_cfg, "layer_types", None) or []
    got = {t: getattr(rotary_emb, f"{t}_inv_freq", None) for t in set(types)}
    if not types or not all(isinstance(v, Tensor) for v in got.values()):
        return None
    scales = {float(getattr(rotary_emb, f"{t}_attention_scaling", 1.0) or 1.0) for t in got}
    if scales != {float(getattr(rotary_emb, "attention_scaling", 1.0) or 1.0)} and scales != {1.0}:
        raise NotImplementedError(f"acdc's engine does not support a rotary attention scaling per kind of layer ({arch_name})")
    out = [got[t].detach().float() for t in types]  # type: ignore[union-attr]
    if any(f.numel() * 2 != rotary_dim for f in out):
        raise NotImplementedError(f"acdc's engine does not support these rotary frequencies ({arch_name})")
    return out


def _windows_of(hf_cfg: Any, n_layers: int) -> tuple[int, ...]:
    """Each layer's sliding-window width (0: global attention) from Hugging Face's ``layer_types`` and
    ``sliding_window``; () when every layer attends globally."""
    types = getattr(hf_cfg, "layer_types", None)
    window = int(getattr(hf_cfg, "sliding_window", None) or 0)
    if not types or not window or "sliding_attention" not in types:
        return ()
    if len(types) != n_layers:
        raise NotImplementedError(f"layer_types names {len(types)} layers, the model has {n_layers}")
    return tuple(window if t == "sliding_attention" else 0 for t in types)


def _experts_of(hf: Any, n_experts: int, arch_name: str) -> list[Any]:
    """Each layer's experts module (stacked ``gate_up_proj`` [E, 2 m, d], ``down_proj`` [E, d, m]) of a
    mixture-of-experts model; [] for a dense one. A one-line error where acdc cannot read them exactly."""
    if not n_experts:
        return []
    cfg = getattr(hf, "config", None)
    if getattr(cfg, "mlp_only_layers", None) or int(getattr(cfg, "decoder_sparse_step", 1) or 1) != 1:
        raise NotImplementedError(f"acdc's engine does not support dense MLP layers among mixture-of-experts ones ({arch_name})")
    if getattr(cfg, "shared_expert_intermediate_size", 0):
        raise NotImplementedError(f"acdc's engine does not support shared experts ({arch_name})")
    try:
        experts = [layer.mlp.experts for layer in hf.get_decoder().layers]
        for e in experts:
            if not (isinstance(e.gate_up_proj, Tensor) and isinstance(e.down_proj, Tensor)):
                raise AttributeError
    except AttributeError:
        raise NotImplementedError(f"acdc reads experts stored as stacked gate_up_proj / down_proj tensors (transformers 5); "
                                  f"{arch_name} keeps them otherwise here") from None
    return experts


def _expert_width(experts: Any) -> int:
    """Each expert's hidden width m: ``down_proj`` is [E, d, m], or [E, m, d] where the module stores its
    projections transposed (``is_transposed``, GPT-OSS)."""
    return int(experts.down_proj.shape[1] if getattr(experts, "is_transposed", False) else experts.down_proj.shape[-1])


def _expert_weights(hf: Any, experts: list[Any], interleaved: bool) -> dict[str, list[Tensor]]:
    """The router and experts of every layer in one layout: ``W_router`` [E, d], ``b_router`` [E], ``W_gate_up``
    [E, 2 m, d] (the gate rows, then the up rows), ``b_gate_up`` [E, 2 m], ``W_down`` [E, d, m], ``b_down`` [E, d]
    (zeros where the model has no such bias). Transposed storage (GPT-OSS: [E, d, 2 m] and [E, m, d]) and
    alternating gate/up columns (``interleaved``) are rearranged once here."""
    out: dict[str, list[Tensor]] = {k: [] for k in ("W_router", "b_router", "W_gate_up", "b_gate_up", "W_down", "b_down")}
    for layer, e in zip(hf.get_decoder().layers, experts, strict=True):
        router = getattr(layer.mlp, "gate", None) or layer.mlp.router
        W = router.weight.detach()
        bias = getattr(router, "bias", None)
        out["W_router"].append(W)
        out["b_router"].append(bias.detach() if isinstance(bias, Tensor) else torch.zeros(W.shape[0], dtype=W.dtype, device=W.device))
        gu, down = e.gate_up_proj.detach(), e.down_proj.detach()
        if getattr(e, "is_transposed", False):
            gu, down = gu.transpose(1, 2), down.transpose(1, 2)
        n_e, two_m, d = gu.shape
        b_gu = getattr(e, "gate_up_proj_bias", None)
        b_gu = b_gu.detach() if isinstance(b_gu, Tensor) else torch.zeros(n_e, two_m, dtype=gu.dtype, device=gu.device)
        if interleaved:  # columns g0 u0 g1 u1 ... -> g0 g1 ... u0 u1 ...
            order = torch.cat([torch.arange(0, two_m, 2), torch.arange(1, two_m, 2)]).to(gu.device)
            gu, b_gu = gu[:, order], b_gu[:, order]
        b_down = getattr(e, "down_proj_bias", None)
        out["W_gate_up"].append(gu.contiguous())
        out["b_gate_up"].append(b_gu)
        out["W_down"].append(down.contiguous())
        out["b_down"].append(b_down.detach() if isinstance(b_down, Tensor) else torch.zeros(n_e, d, dtype=gu.dtype, device=gu.device))
    return out


def _weights_key(bridge: Any) -> tuple[Any, ...]:
    """Where a bridge's weights are and which version of them: (storage, device, dtype, shape, version) of
    every parameter. It changes with ``.to``, a new dtype, a replaced weight and an in-place edit (torch's
    version counter, which autograd uses to spot the same), so a stale engine model is never reused."""
    tensors: list[Tensor] = list(bridge.parameters()) if isinstance(bridge, torch.nn.Module) else [bridge.W_E]
    return tuple((t.data_ptr(), str(t.device), t.dtype, tuple(t.shape), t._version) for t in tensors)


def _read_weights(bridge: Bridge, arch: Architecture, norm_offset: float = 0.0) -> dict[str, Any]:
    """The bridge's weights as views where possible (no copies of the model).

    Layer weights are per-layer lists (``w["W_Q"][layer]`` is [n_heads, d_model, d_head]);
    missing biases are zeros. Shared key/value heads (GQA) are repeated to one per query head,
    the graph's per-query-head k/v inputs. ``norm_offset`` is added to every norm's scale.
    """
    a = arch
    ref = bridge.W_E

    def get(obj: Any, name: str, shape: tuple[int, ...]) -> Tensor:
        try:
            t = getattr(obj, name)
        except (AttributeError, ValueError, RuntimeError):
            t = None
        if t is None:
            return torch.zeros(shape, dtype=ref.dtype, device=ref.device)
        return t.detach()

    H, d, dh, m = a.n_heads, a.d_model, a.d_head, a.d_mlp
    kv = a.n_kv_heads or H
    shapes = {
        "W_Q": (H, d, dh), "W_K": (kv, d, dh), "W_V": (kv, d, dh), "W_O": (H, dh, d),
        "b_Q": (H, dh), "b_K": (kv, dh), "b_V": (kv, dh), "b_O": (d,),
    }
    mlp_shapes: dict[str, tuple[int, ...]] = {"b_out": (d,)} if a.n_experts else {
        "W_in": (d, m), "b_in": (m,), "W_out": (m, d), "b_out": (d,)}
    if a.gated_mlp and not a.n_experts:
        mlp_shapes["W_gate"] = (d, m)
    w: dict[str, Any] = {k: [] for k in [*shapes, *mlp_shapes, "ln1_w", "ln1_b", "ln2_w", "ln2_b"]}

    def norm_w(t: Tensor) -> Tensor:
        return t + norm_offset if norm_offset else t

    for blk in bridge.blocks:
        for k, shape in shapes.items():
            t = get(blk.attn, k, shape)
            if kv != H and k in ("W_K", "W_V", "b_K", "b_V"):
                t = t.repeat_interleave(H // kv, dim=0)  # query head h reads key/value head h // (H / kv)
            w[k].append(t)
        for k, shape in mlp_shapes.items():
            w[k].append(get(blk.mlp, k, shape))
        for ln in ("ln1", "ln2"):
            if not a.pre_norms:  # no norm there (OLMo-2): `Transformer.ln` passes the stream through
                w[f"{ln}_w"].append(torch.ones(d, dtype=ref.dtype, device=ref.device))
                w[f"{ln}_b"].append(torch.zeros(d, dtype=ref.dtype, device=ref.device))
                continue
            w[f"{ln}_w"].append(norm_w(get(getattr(blk, ln), "w", (d,))))
            w[f"{ln}_b"].append(get(getattr(blk, ln), "b", (d,)))
    if a.post_norms:  # Gemma 2/3: the norms after the attention and after the MLP
        for ln in ("ln1_post", "ln2_post"):
            w[f"{ln}_w"] = [norm_w(get(getattr(blk, ln), "w", (d,))) for blk in bridge.blocks]
            w[f"{ln}_b"] = [torch.zeros(d, dtype=ref.dtype, device=ref.device) for _ in bridge.blocks]
    if a.qk_norm and a.qk_norm_all:  # one scale over the whole projection: [n_heads, d_head] (key heads repeated)
        for which, n in (("q", H), ("k", kv)):
            scales = [norm_w(get(getattr(blk.attn, f"{which}_norm"), "w", (n * dh,))).view(n, dh) for blk in bridge.blocks]
            w[f"{which}_norm"] = [t.repeat_interleave(H // n, dim=0) for t in scales]
    elif a.qk_norm:  # one [d_head] scale per layer for queries, one for keys (shared by every head)
        for which in ("q", "k"):
            w[f"{which}_norm"] = [norm_w(get(getattr(blk.attn, f"{which}_norm"), "w", (dh,))) for blk in bridge.blocks]
    w["W_E"] = get(bridge, "W_E", (a.d_vocab, d))
    w["W_U"] = get(bridge, "W_U", (d, a.d_vocab))
    w["b_U"] = get(bridge, "b_U", (a.d_vocab,))
    if a.position_embedding == "standard":
        w["W_pos"] = get(bridge, "W_pos", (1, d))
    w["lnf_w"] = norm_w(get(bridge.ln_final, "w", (d,)))
    w["lnf_b"] = get(bridge.ln_final, "b", (d,))
    return w
