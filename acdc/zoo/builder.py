"""Hand-setting the weights of a GPT-2 so that a chosen set of edges carries a task.

The model is an ordinary Hugging Face ``GPT2LMHeadModel``, loaded through `acdc.load_model`
like any other, so the engine has no special path for it. How the plant works:

- The residual stream is split into named *features*: orthonormal directions, all orthogonal to
  the all-ones vector, so LayerNorm's mean subtraction leaves them alone. Token and position
  embeddings write one-hot features; circuit heads read some features and write others.
- LayerNorm keeps its usual form but with ``eps`` well above the residual's variance, so it is
  close to linear (x / sqrt(eps) times a gain of sqrt(eps)); what is left of its nonlinearity
  is what couples distractors to the circuit, so their edges have small but non-zero effects.
- Attention patterns are saturated (scores ~``beta``), so a head either attends where the plant
  says or nowhere useful.
- Distractor heads and MLPs get random weights that read everything and write into a *junk*
  subspace that no circuit component and not the unembedding reads, plus a small ``leak``
  anywhere, so that their edges have small, graded effects, as real models' unimportant edges do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Residual", "PlantedGPT2", "WordTokenizer"]


class Residual:
    """Allocates orthonormal, mean-zero residual directions to named features."""

    def __init__(self, d_model: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        a = torch.randn(d_model, d_model, generator=gen, dtype=torch.float64)
        a = a - a.mean(0, keepdim=True)  # columns orthogonal to the all-ones vector
        q, _ = torch.linalg.qr(a)
        self.basis = q[:, : d_model - 1].T.contiguous().float()  # [d_model - 1, d_model]
        self.d_model = d_model
        self.features: dict[str, Tensor] = {}
        self._next = 0

    def alloc(self, name: str, n: int) -> Tensor:
        """``n`` fresh directions [n, d_model] for feature ``name``."""
        if self._next + n > self.basis.shape[0]:
            raise ValueError(f"residual stream too small for feature {name!r}; raise d_model")
        self.features[name] = self.basis[self._next : self._next + n]
        self._next += n
        return self.features[name]

    def junk(self) -> Tensor:
        """The directions no feature uses [r, d_model]: distractors write only here."""
        if self._next >= self.basis.shape[0]:
            raise ValueError("no junk directions left for distractors; raise d_model")
        return self.basis[self._next :]


@dataclass
class PlantedGPT2:
    """A GPT-2 whose weights are set by hand; unset heads and MLPs become distractors.

    Call `head` / `mlp` for the circuit's components, then `build`.
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_mlp: int
    vocab_size: int
    n_ctx: int
    seed: int = 0
    ln_eps: float = 4.0
    distractor_scale: float = 0.6
    leak: float = 0.05
    act: str = "gelu_new"  # the MLPs' activation (Hugging Face's activation_function)
    resid: Residual = field(init=False)
    _heads: dict[tuple[int, int], dict[str, Tensor]] = field(init=False, default_factory=dict)
    _mlps: dict[int, dict[str, Tensor]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        self.resid = Residual(self.d_model, self.seed)
        self.d_head = self.d_model // self.n_heads
        self.W_E = torch.zeros(self.vocab_size, self.d_model)
        self.W_pos = torch.zeros(self.n_ctx, self.d_model)
        self.W_U = torch.zeros(self.d_model, self.vocab_size)

    # ------------------------------------------------------------------ components
    def one_hot_inputs(self) -> tuple[Tensor, Tensor]:
        """Token and position embeddings as one-hot features (the first two allocated, ``vocab_size`` and ``n_ctx``
        directions): sets W_E and W_pos; returns (token directions [vocab, d], position directions [n_ctx, d])."""
        t, pos = self.resid.alloc("token", self.vocab_size), self.resid.alloc("position", self.n_ctx)
        self.W_E[:] = t
        self.W_pos[:] = pos
        return t, pos

    def head(
        self,
        layer: int,
        head: int,
        *,
        qk: list[tuple[Tensor, Tensor, float]] = (),  # type: ignore[assignment]
        ov: list[tuple[Tensor, Tensor]] = (),  # type: ignore[assignment]
        query_bias: list[tuple[Tensor, float]] = (),  # type: ignore[assignment]
    ) -> None:
        """Plant a head.

        qk: ``(query_dirs [r, d], key_dirs [r, d], weight)``: the score of query position i on
            key position j gains ``weight * sum_r <x_i, q_r> <x_j, k_r>``.
        ov: ``(read_dirs [r, d], write_dirs [r, d])``: the head writes ``sum_r <x_j, u_r> w_r``
            of the positions it attends to.
        query_bias: ``(key_dirs [r, d], weight)``: every query gains ``weight * <x_j, k_r>``
            (a constant query, e.g. to attend to a BOS sink or to a flag).
        """
        dh = self.d_head
        wq = torch.zeros(self.d_model, dh)
        wk = torch.zeros(self.d_model, dh)
        bq = torch.zeros(dh)
        col = 0
        scale = math.sqrt(dh)  # GPT-2 divides scores by sqrt(d_head)
        for qd, kd, w in qk:
            r = qd.shape[0]
            wq[:, col : col + r] = qd.T * (w * scale)
            wk[:, col : col + r] = kd.T
            col += r
        for kd, w in query_bias:
            r = kd.shape[0]
            wk[:, col : col + r] = kd.T
            bq[col : col + r] = w * scale
            col += r
        if col > dh:
            raise ValueError(f"head {layer}.{head}: QK rank {col} exceeds d_head {dh}")
        wv = torch.zeros(self.d_model, dh)
        wo = torch.zeros(dh, self.d_model)
        col = 0
        for rd, wd in ov:
            r = rd.shape[0]
            wv[:, col : col + r] = rd.T
            wo[col : col + r] = wd
            col += r
        if col > dh:
            raise ValueError(f"head {layer}.{head}: OV rank {col} exceeds d_head {dh}")
        self._heads[(layer, head)] = {"W_Q": wq, "W_K": wk, "W_V": wv, "W_O": wo, "b_Q": bq}

    def mlp(self, layer: int, w_in: Tensor, b_in: Tensor, w_out: Tensor) -> None:
        """Plant an MLP: ``w_in`` [d_model, n], ``b_in`` [n], ``w_out`` [n, d_model] (n <= d_mlp)."""
        n = w_in.shape[1]
        if n > self.d_mlp:
            raise ValueError(f"MLP {layer}: {n} neurons exceed d_mlp {self.d_mlp}")
        full_in = torch.zeros(self.d_model, self.d_mlp)
        full_b = torch.full((self.d_mlp,), -10.0)  # unused neurons stay off
        full_out = torch.zeros(self.d_mlp, self.d_model)
        full_in[:, :n], full_b[:n], full_out[:n] = w_in, b_in, w_out
        self._mlps[layer] = {"W_in": full_in, "b_in": full_b, "W_out": full_out}

    # ------------------------------------------------------------------ build
    def build(self):
        """The ``transformers.GPT2LMHeadModel`` with every weight set."""
        from transformers import GPT2Config, GPT2LMHeadModel

        d, dh, H = self.d_model, self.d_head, self.n_heads
        cfg = GPT2Config(
            n_layer=self.n_layers, n_head=H, n_embd=d, n_inner=self.d_mlp, vocab_size=self.vocab_size,
            n_positions=self.n_ctx, layer_norm_epsilon=self.ln_eps, tie_word_embeddings=False,
            bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            activation_function=self.act,
        )
        torch.manual_seed(self.seed)
        hf: Any = GPT2LMHeadModel(cfg).eval()  # HF modules, typed loosely by transformers
        gen = torch.Generator().manual_seed(self.seed + 1)
        junk = self.resid.junk()
        n_junk = junk.shape[0]
        # distractors write into junk, plus a ``leak`` fraction anywhere (small, graded effects)
        to_junk = junk.T @ junk + self.leak * torch.randn(d, d, generator=gen) / math.sqrt(d)
        gain = math.sqrt(self.ln_eps)
        s = self.distractor_scale

        def rand(*shape: int, std: float) -> Tensor:
            return torch.randn(*shape, generator=gen) * std

        with torch.no_grad():
            hf.transformer.wte.weight.copy_(self.W_E)
            hf.transformer.wpe.weight.copy_(self.W_pos)
            hf.lm_head.weight.copy_(self.W_U.T)
            for ln in [hf.transformer.ln_f] + [m for b in hf.transformer.h for m in (b.ln_1, b.ln_2)]:
                ln.weight.fill_(gain)
                ln.bias.zero_()
            for layer, block in enumerate(hf.transformer.h):
                w_qkv = torch.zeros(d, 3 * d)
                w_o = torch.zeros(d, d)
                b_qkv = torch.zeros(3 * d)
                for h in range(H):
                    p = self._heads.get((layer, h))
                    if p is None:  # distractor: random reads, writes only junk
                        p = {
                            "W_Q": rand(d, dh, std=3.0 / math.sqrt(d)),
                            "W_K": rand(d, dh, std=3.0 / math.sqrt(d)),
                            "W_V": rand(d, dh, std=1.0 / math.sqrt(d)),
                            "W_O": rand(dh, d, std=s / math.sqrt(n_junk)) @ to_junk,
                            "b_Q": torch.zeros(dh),
                        }
                    sl = slice(h * dh, (h + 1) * dh)
                    w_qkv[:, sl] = p["W_Q"]
                    w_qkv[:, d + h * dh : d + (h + 1) * dh] = p["W_K"]
                    w_qkv[:, 2 * d + h * dh : 2 * d + (h + 1) * dh] = p["W_V"]
                    b_qkv[sl] = p["b_Q"]
                    w_o[sl] = p["W_O"]
                block.attn.c_attn.weight.copy_(w_qkv)
                block.attn.c_attn.bias.copy_(b_qkv)
                block.attn.c_proj.weight.copy_(w_o)
                block.attn.c_proj.bias.zero_()
                m = self._mlps.get(layer)
                if m is None:  # distractor MLP
                    m = {
                        "W_in": rand(d, self.d_mlp, std=2.0 / math.sqrt(d)),
                        "b_in": rand(self.d_mlp, std=1.0),
                        "W_out": rand(self.d_mlp, d, std=s / math.sqrt(self.d_mlp * n_junk)) @ to_junk,
                    }
                block.mlp.c_fc.weight.copy_(m["W_in"])
                block.mlp.c_fc.bias.copy_(m["b_in"])
                block.mlp.c_proj.weight.copy_(m["W_out"])
                block.mlp.c_proj.bias.zero_()
        return hf


class WordTokenizer:
    """A word-level tokenizer for the zoo's toy vocabularies: one token per space-separated word."""

    def __init__(self, vocab: list[str] | tuple[str, ...]):
        self.vocab = tuple(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        if len(self.index) != len(self.vocab):
            raise ValueError("vocabulary words must be unique")
        self.bos_token_id: int | None = self.index.get("<bos>")

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[w] for w in text.split()]
        except KeyError as err:
            raise ValueError(f"word {err.args[0]!r} is not in this vocabulary ({len(self.vocab)} words)") from None

    def decode(self, ids: Tensor | list[int]) -> str:
        return " ".join(self.vocab[int(i)] for i in ids)

    def __len__(self) -> int:
        return len(self.vocab)
