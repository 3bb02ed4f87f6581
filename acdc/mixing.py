"""The patched forward with every edge *mixed* instead of kept or ablated, differentiable in the mix:
what learned-mask methods (Edge Pruning) train.

Each destination's input is ``Σ_u [w_u O_u + (1 - w_u) A_u] + biases`` over its sources ``u``, with
``O_u`` the source's output in this run, ``A_u`` its ablation value (resample, mean or zero, as in
every patched run) and ``w_u`` the edge's weight in [0, 1]. With every weight 0 or 1 this is
`Patcher.logits` of the ablated set ``w == 0`` (`tests/test_edge_pruning.py` checks it, and the
fractional mix against a hooked forward). Written as ``base + Σ_u w_u (O_u - A_u)`` (``base`` the
all-ablated stream the engine keeps), layer by layer without writing into shared buffers, so
autograd can take gradients with respect to the weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .patching import Patcher

__all__ = ["mixed_logits"]


def mixed_logits(patcher: Patcher, weights: Tensor) -> Tensor:
    """Logits [rows, d_vocab] at the answer positions with edge weights ``weights`` [n_dst, n_src]
    (float in [0, 1]; entries off the graph's edges are ignored), differentiable in ``weights``.

    Plain graphs of whole MLPs (no positions, no neurons or features).
    """
    g, tf = patcher.graph, patcher.tf
    if g.positions is not None or g.mlp_units != "whole":
        raise NotImplementedError("mixed_logits runs on plain graphs of whole MLPs (no positions, neurons or features)")
    if weights.shape != tuple(patcher.upstream.shape):
        raise ValueError(f"weights must be [n_dst, n_src] = {tuple(patcher.upstream.shape)}, got {tuple(weights.shape)}")
    W = weights.to(device=tf.device, dtype=tf.dtype) * patcher.upstream.to(tf.dtype)
    abl = patcher.ablation_values
    clean = patcher.clean.sources
    chunks: list[tuple[int, Tensor]] = [(0, clean[:1] - (0 if abl is None else abl[:1]))]  # (first source, X = O - A)

    def inputs(rows: list[int], upto: int, stream: int) -> Tensor:
        """[len(rows), B, S, d] each row's mixed input from the sources [0, upto)."""
        out = patcher.stream_base(stream).expand(len(rows), *clean.shape[1:])
        Wr = W[rows]
        for first, X in chunks:
            if first >= upto:
                break
            w = Wr[:, first : first + len(X)]
            out = out + torch.einsum("rs,sbpd->rbpd", w, X)
        return out

    def ablated(first: int, n: int, out: Tensor) -> Tensor:
        return out if abl is None else out - abl[first : first + n]

    a = tf.arch
    heads = torch.arange(a.n_heads, device=tf.device)
    for layer in range(a.n_layers):
        first = g.head_src(layer)
        trios = g.head_rows(layer)
        x = inputs([r for t in trios for r in t], first, 2 * layer).view(a.n_heads, 3, *clean.shape[1:])
        out = tf.attention(layer, heads, x[:, 0], x[:, 1], x[:, 2])  # [H, B, S, d]
        heads_x = ablated(first, a.n_heads, out)
        if not a.attn_only:
            m = g.mlp_src(layer)
            upto = first if a.parallel_attn_mlp else first + a.n_heads
            if not a.parallel_attn_mlp:
                chunks.append((first, heads_x))
            m_in = inputs([g.mlp_row(layer)], upto, 2 * layer if a.parallel_attn_mlp else 2 * layer + 1)[0]
            if a.parallel_attn_mlp:
                chunks.append((first, heads_x))
            chunks.append((m, ablated(m, 1, tf.mlp(layer, m_in)[None])))
        else:
            chunks.append((first, heads_x))
    final = inputs([g.logits_row], len(g.sources), 2 * a.n_layers)[0]
    return tf.unembed(patcher.at_answers(final)).reshape(-1, a.d_vocab)
