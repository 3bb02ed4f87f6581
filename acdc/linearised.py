"""The local replacement model of one prompt, linearised: what attribution graphs run on.

For one prompt, the model's attention patterns and its norms' scales are frozen at their values
on that prompt (circuit-tracer's and Ameisen et al. 2025's *local replacement model*), and each
MLP's output is frozen too, as its transcoder's features, its error and ``b_dec`` (constants,
the graph's nodes), except for a transcoder's skip path ``ln2(x) @ W_skip``, which stays a
function of its input. What is left is linear in the residual stream: a frozen norm is
``(x - mean(x)) / s * w`` (RMSNorm: ``x / s * w``) with ``s`` fixed, a head is
``P (ln1(x) W_V) W_O`` with its pattern ``P`` fixed. So the direct effect of a node that writes
``v`` into the stream at (layer, position) on a node that reads direction ``r`` from it is
``r . J v``, with ``J`` the Jacobian of that linear map, and a backward pass of many readers at
once gives every such effect.

`FrozenRun.backward` is that backward written out (the transpose of each frozen piece), so one
forward serves any number of readers and nothing is recomputed per batch; `FrozenRun.forward`
is the frozen forward itself, for checking it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .graph import layer_offset
from .model import HeadsPart, MLPPart, Transformer

__all__ = ["FrozenRun", "Readers"]


@dataclass
class Readers:
    """What a batch of target nodes reads, as cotangents to inject: per layer, rows of the batch that
    read that layer's MLP input (``mid[layer] = (rows [k], positions [k], directions [k, d])``,
    directions in the normed input's space), and rows that read the final stream before the
    unembedding (``final``, directions in the final norm's output space)."""

    n: int
    mid: dict[int, tuple[Tensor, Tensor, Tensor]]
    final: tuple[Tensor, Tensor, Tensor] | None = None
    raw: bool = False  # ``mid``'s directions read the stream itself, not its norm (a cross-layer transcoder's "stream")
    after: dict[int, tuple[Tensor, Tensor, Tensor]] | None = None  # rows reading the stream after a layer (its MLP's output in)


@dataclass
class FrozenRun:
    """One prompt's forward with the frozen quantities of its local replacement model.

    tokens: [S]; resid_pre [L + 1, S, d] (the last: the final stream), resid_mid [L, S, d];
    patterns [L, H, S, S]; scale1, scale2 [L, S, 1], scale_f [S, 1] the norms' denominators;
    mlp_out [L, S, d]; skip: layer -> W_skip [d, d] of the layers whose MLP keeps a linear skip path; cross:
    (l, j) -> W [d, d] of a cross-layer transcoder's skip paths from layer l's normed MLP input into MLP j's output;
    scale_post [L, S, 1]: a post-norm family's (Gemma 2/3) denominators of the norm after attention (frozen as
    the others; None elsewhere). The MLP's own post-norm is inside its frozen output.
    """

    tf: Transformer
    tokens: Tensor
    resid_pre: Tensor
    resid_mid: Tensor
    patterns: Tensor
    scale1: Tensor
    scale2: Tensor
    scale_f: Tensor
    mlp_out: Tensor
    skip: dict[int, Tensor]
    scale_post: Tensor | None = None
    cross: dict[tuple[int, int], Tensor] = field(default_factory=dict)

    @classmethod
    @torch.no_grad()
    def of(cls, tf: Transformer, tokens: Tensor, skip: dict[int, Tensor] | None = None,
           cross: dict[tuple[int, int], Tensor] | None = None) -> FrozenRun:
        """Run the model on ``tokens`` [S] (one prompt) and keep what its local replacement model freezes (``skip``,
        ``cross``: the linear skip paths that stay live, the class docstring's)."""
        a = tf.arch
        if a.parallel_attn_mlp:
            raise NotImplementedError("attribution graphs of models with parallel attention and MLP are not supported yet")
        if a.attn_only:
            raise ValueError("an attention-only model has no MLPs to replace")
        tokens = tokens.reshape(-1).to(tf.device)
        run = tf.run(tokens[None])
        pre, mid = run.resid_pre[:, 0], run.resid_mid[:, 0]
        heads = torch.arange(a.n_heads, device=tf.device)
        patterns = torch.stack([
            tf.pattern(layer, tf.project(layer, heads, pre[layer][None], "Q"), tf.project(layer, heads, pre[layer][None], "K"),
                       heads=heads)[:, 0]
            for layer in range(a.n_layers)
        ])
        mlp_out = torch.stack([tf.mlp(layer, mid[layer]) for layer in range(a.n_layers)])
        post = None
        if a.post_norms:  # each layer's heads' sum before its norm after attention
            H = a.n_heads
            firsts = [layer_offset(layer, H) for layer in range(a.n_layers)]
            sums = torch.stack([run.sources[f : f + H, 0].sum(0) + tf.attn_bias(layer) for layer, f in enumerate(firsts)])
            post = _scale(tf, sums)
        # no norm before a sublayer (OLMo-2): a scale of 1
        scale1, scale2 = (_scale(tf, pre[:-1]), _scale(tf, mid)) if a.pre_norms else \
            (torch.ones_like(pre[:-1, :, :1]), torch.ones_like(mid[..., :1]))
        return cls(tf, tokens, pre, mid, patterns, scale1, scale2, _scale(tf, pre[-1]), mlp_out,
                   {k: v.to(device=tf.device, dtype=tf.dtype) for k, v in (skip or {}).items()}, post,
                   {k: v.to(device=tf.device, dtype=tf.dtype) for k, v in (cross or {}).items()})

    def __post_init__(self) -> None:
        tf, a = self.tf, self.tf.arch
        # per layer, all heads' W_O as [d, H * dh] and W_V as [H * dh, d]: the backward's two matmuls
        self.w_o_rows = [tf.head_weights(layer, "O")[0].reshape(-1, a.d_model).T.contiguous() for layer in range(a.n_layers)]
        self.w_v_rows = [tf.head_weights(layer, "V")[0].transpose(1, 2).reshape(-1, a.d_model).contiguous() for layer in range(a.n_layers)]

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])

    def token_vectors(self) -> Tensor:
        """[S, d] what each token's embedding writes into the stream (positions are a constant, not a node)."""
        a = self.tf.arch
        x = self.tf.embedding[self.tokens]
        return x * torch.tensor(a.embed_scale, dtype=x.dtype) if a.embed_scale != 1.0 else x

    # ------------------------------------------------------------------ the frozen pieces
    def norm_vjp(self, g: Tensor, w: Tensor, scale: Tensor) -> Tensor:
        """Transpose of a frozen norm ``(x - mean) / s * w``: g [..., S, d], scale [S, 1] -> [..., S, d]."""
        out = g * w
        if self.tf.arch.norm != "RMS":
            out = out - out.mean(-1, keepdim=True)
        return out / scale

    def norm(self, x: Tensor, w: Tensor, b: Tensor, scale: Tensor) -> Tensor:
        """A frozen norm ``(x - mean) / s * w + b`` (RMSNorm: ``x / s * w``): x [..., S, d], scale [S, 1]."""
        if self.tf.arch.norm != "RMS":
            x = x - x.mean(-1, keepdim=True)
        out = x / scale * w
        return out if self.tf.arch.norm == "RMS" else out + b

    def backward(self, readers: Readers, upto: int | None = None, n_pos: int | None = None) -> tuple[Tensor, Tensor]:
        """Gradients of every reader through the frozen model: (at each MLP's output [upto + 1, n, S, d],
        at the embedding [n, S, d]). ``upto``: the readers' highest layer (the MLPs above it are not
        returned; default every layer; readers of the final stream need ``upto=None``). ``n_pos``: only the
        first positions (enough when every reader is before it: attention looks back only).

        The transpose of the frozen forward, walked back over the model's layer loop (`_Transpose`)."""
        tf = self.tf
        a = tf.arch
        S = self.n_pos if n_pos is None else n_pos
        n = readers.n
        g = torch.zeros(n, S, a.d_model, dtype=tf.dtype, device=tf.device)
        if readers.final is not None:
            rows, pos, dirs = readers.final
            g[rows, pos] += self.norm_vjp(dirs, tf.norm_params("lnf")[0], self.scale_f[pos])
        top = a.n_layers - 1 if upto is None else upto
        back = _Transpose(self, readers, S, torch.empty(top + 1, n, S, a.d_model, dtype=tf.dtype, device=tf.device))
        g = tf.walk_back(g, back, top)
        return back.at_mlp, g

    @torch.no_grad()
    def forward(self, mlp_out: Tensor, embed: Tensor) -> tuple[Tensor, Tensor]:
        """The frozen model's streams for given frozen MLP outputs (the constant part, without the skip
        path) [L, S, d] and input [S, d]: (MLP inputs [L, S, d], final stream [S, d]); a `walk` of `_Frozen`."""
        fwd = _Frozen(self, mlp_out)
        x = embed
        for _, _, _, x in self.tf.walk(embed, fwd):  # noqa: B007 (the stream after the last part is the answer)
            pass
        return torch.stack(fwd.mids), x


class _Frozen:
    """The frozen forward as a `LayerPass`: heads with their patterns and norms' scales fixed; each MLP
    its frozen output plus the skip path. Keeps each MLP's input (``mids``)."""

    def __init__(self, fr: FrozenRun, mlp_out: Tensor):
        self.fr, self.mlp_out, self.mids = fr, mlp_out, []

    def heads(self, part: HeadsPart, x: Tensor) -> Tensor:
        fr, tf, layer = self.fr, self.fr.tf, part.layer
        ln = fr.norm(x, *tf.norm_params("ln1", layer), fr.scale1[layer])
        W_V, b_V = tf.head_weights(layer, "V")
        assert b_V is not None
        v = torch.einsum("sd,hde->hse", ln, W_V) + b_V[:, None]
        out = torch.einsum("hqk,hke,hed->qd", fr.patterns[layer], v, tf.head_weights(layer, "O")[0]) + tf.attn_bias(layer)
        if fr.scale_post is None:
            return out
        return fr.norm(out, tf.norm_params("ln1_post", layer)[0], torch.zeros(()), fr.scale_post[layer])

    def mlp(self, part: MLPPart, x: Tensor) -> Tensor:
        fr, layer = self.fr, part.layer
        self.mids.append(x)
        m = self.mlp_out[layer]
        if layer in fr.skip:
            m = m + fr.norm(x, *fr.tf.norm_params("ln2", layer), fr.scale2[layer]) @ fr.skip[layer]
        for (src, j), w in fr.cross.items():  # an earlier layer's skip path into this MLP, from that layer's input
            if j == layer:
                m = m + fr.norm(self.mids[src], *fr.tf.norm_params("ln2", src), fr.scale2[src]) @ w
        return m


class _Transpose:
    """The transpose of `_Frozen` as a `LayerPass` over cotangents [n, S, d]: what each part sends back
    to the stream it read, with the readers' directions injected at the MLP inputs they read; keeps the
    cotangent at each MLP's output (``at_mlp`` [upto + 1, n, S, d])."""

    def __init__(self, fr: FrozenRun, readers: Readers, S: int, at_mlp: Tensor):
        self.fr, self.readers, self.S, self.at_mlp = fr, readers, S, at_mlp

    def mlp(self, part: MLPPart, g: Tensor) -> Tensor | None:
        """The skip path's transpose and the readers' directions at the MLP's input; None where it has neither
        (a frozen MLP output is a constant: nothing flows back through it)."""
        fr, layer, S = self.fr, part.layer, self.S
        injected = None
        if self.readers.after is not None and layer in self.readers.after:  # readers of the stream after this layer
            rows, pos, dirs = self.readers.after[layer]
            injected = torch.zeros_like(g).index_put((rows, pos), dirs.to(g.dtype), accumulate=True)
            g = g + injected  # what reaches the MLP's output (and, through `sent`, everything below)
        self.at_mlp[layer] = g
        w = fr.tf.norm_params("ln2", layer)[0]
        sent = fr.norm_vjp(g @ fr.skip[layer].T, w, fr.scale2[layer, :S]) if layer in fr.skip else None
        later = [self.at_mlp[j] @ c.T for (src, j), c in fr.cross.items() if src == layer and j < len(self.at_mlp)]
        if later:  # this layer's skip paths into later MLPs (their cotangents are in: the walk goes back)
            back = fr.norm_vjp(torch.stack(later).sum(0), w, fr.scale2[layer, :S])
            sent = back if sent is None else sent + back
        if injected is not None:
            sent = injected if sent is None else sent + injected
        if layer in self.readers.mid:
            rows, pos, dirs = self.readers.mid[layer]
            back = dirs if self.readers.raw else fr.norm_vjp(dirs, w, fr.scale2[layer, :S][pos])
            sent = (torch.zeros_like(g) if sent is None else sent).index_put((rows, pos), back, accumulate=True)
        return sent

    def heads(self, part: HeadsPart, g: Tensor) -> Tensor:
        # out_h = P_h (ln1(x) W_V_h) W_O_h; transpose: ln1^T ((P_h^T (g W_O_h^T)) W_V_h^T), as two matmuls
        # over all heads at once and one batched over heads
        fr, layer, S = self.fr, part.layer, self.S
        a = fr.tf.arch
        if fr.scale_post is not None:  # the frozen norm after attention, transposed first
            g = fr.norm_vjp(g, fr.tf.norm_params("ln1_post", layer)[0], fr.scale_post[layer, :S])
        n, H, dh, d = g.shape[0], fr.patterns.shape[1], a.d_head, a.d_model
        z = (g.reshape(-1, d) @ fr.w_o_rows[layer]).view(n, S, H, dh).permute(2, 1, 0, 3).reshape(H, S, n * dh)
        zk = torch.bmm(fr.patterns[layer, :, :S, :S].transpose(1, 2), z).view(H, S, n, dh).permute(2, 1, 0, 3).reshape(n * S, H * dh)
        return fr.norm_vjp((zk @ fr.w_v_rows[layer]).view(n, S, d), fr.tf.norm_params("ln1", layer)[0], fr.scale1[layer, :S])


def _scale(tf: Transformer, x: Tensor) -> Tensor:
    """[..., S, 1] a norm's denominator on x [..., S, d]: sqrt(var + eps) (RMSNorm: sqrt(mean square + eps))."""
    if tf.arch.norm == "RMS":
        return (x.pow(2).mean(-1, keepdim=True) + tf.arch.eps).sqrt()
    return (x.var(-1, unbiased=False, keepdim=True) + tf.arch.eps).sqrt()
