"""The patched forward with every edge *mixed* instead of kept or ablated, differentiable in the mix:
what learned-mask methods (Edge Pruning) train.

Each destination's input is ``Σ_u [w_u O_u + (1 - w_u) A_u] + biases`` over its sources ``u``, with
``O_u`` the source's output in this run, ``A_u`` its ablation value (resample, mean or zero, as in
every patched run) and ``w_u`` the edge's weight in [0, 1]. With every weight 0 or 1 this is
`Patcher.logits` of the ablated set ``w == 0`` (`tests/test_edge_pruning.py` checks it, and the
fractional mix against a hooked forward). Written as ``base + Σ_u w_u (O_u - A_u)`` (``base`` the
all-ablated stream the engine keeps).

Speed: each destination group's inputs are one matrix product ``W[rows, :upto] @ X[:upto]`` over a
buffer holding every source's ``O - A`` so far (`_Mix`, an autograd function: its backward is two
products too, and hands each source its slice of the gradient), not one product per source group,
which on a CPU is bound by memory traffic (67 s per step on SmolLM2 that way).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .patching import Patcher

__all__ = ["mixed_logits"]


class _Mix(torch.autograd.Function):
    """``W [R, n] @ X [n, T]`` where X's rows are the chunks' values, already copied into ``buffer``
    (no copy here), or only the rows ``cols`` of X (W then [R, len(cols)]); gradients go to W and
    to each chunk."""

    @staticmethod
    def forward(ctx: Any, W: Tensor, buffer: Tensor, cols: Tensor | None, *chunks: Tensor) -> Tensor:  # noqa: D102
        n = sum(len(c) for c in chunks)
        X = buffer[:n].reshape(n, -1)
        if cols is not None:
            X = X.index_select(0, cols)
        ctx.save_for_backward(W)
        ctx.X = X  # not saved as a tensor: later rows of the buffer are written, these never change again
        ctx.cols, ctx.n = cols, n
        ctx.sizes = [len(c) for c in chunks]
        ctx.shape = chunks[0].shape[1:]
        return (W @ X).view(W.shape[0], *ctx.shape)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        grad = grad_outputs[0]
        (W,) = ctx.saved_tensors
        X = ctx.X
        g = grad.reshape(grad.shape[0], -1)
        grad_w = g @ X.T if ctx.needs_input_grad[0] else None
        grad_x = W.T @ g
        if ctx.cols is not None:
            grad_x = torch.zeros(ctx.n, grad_x.shape[1], dtype=grad_x.dtype, device=grad_x.device).index_copy_(0, ctx.cols, grad_x)
        return (grad_w, None, None, *torch.split(grad_x.view(-1, *ctx.shape), ctx.sizes))


def mixed_logits(patcher: Patcher, weights: Tensor, *, skip_zeros: bool = False) -> Tensor:
    """Logits [rows, d_vocab] at the answer positions with edge weights ``weights`` [n_dst, n_src]
    (float in [0, 1]; entries off the graph's edges are ignored), differentiable in ``weights``.

    ``skip_zeros``: sources whose weights into a destination group are all exactly 0 are left out
    of its product (the same logits, faster when most weights are 0), and those weights get no
    gradient: right for gates clamped at 0, whose own gradient is 0 there (Edge Pruning).
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
    shape = clean.shape[1:]
    buffer = torch.empty(len(g.sources), *shape, dtype=tf.dtype, device=tf.device)  # every O - A so far, no autograd
    chunks: list[Tensor] = []

    def add(first: int, x: Tensor) -> None:
        buffer[first : first + len(x)] = x.detach()
        chunks.append(x)

    def inputs(rows: list[int], upto: int, stream: int) -> Tensor:
        """[len(rows), B, S, d] each row's mixed input from the sources [0, upto)."""
        base = patcher.stream_base(stream)
        used = [c for c, first in zip(chunks, starts, strict=True) if first < upto]
        Wr = W[rows, :upto]
        if skip_zeros:
            cols = (Wr.detach() != 0).any(0).nonzero().squeeze(1)
            if len(cols) == 0:
                return base.expand(len(rows), *shape) + 0 * Wr.sum()  # keeps W in the graph
            if 2 * len(cols) <= upto:
                return base + _Mix.apply(Wr.index_select(1, cols), buffer, cols, *used)
        return base + _Mix.apply(Wr, buffer, None, *used)

    starts: list[int] = []

    def push(first: int, x: Tensor) -> None:
        starts.append(first)
        add(first, x)

    def ablated(first: int, n: int, out: Tensor) -> Tensor:
        return out if abl is None else out - abl[first : first + n]

    push(0, (clean[:1] - (0 if abl is None else abl[:1])).expand(1, *shape))
    a = tf.arch
    heads = torch.arange(a.n_heads, device=tf.device)
    for layer in range(a.n_layers):
        first = g.head_src(layer)
        trios = g.head_rows(layer)
        x = inputs([r for t in trios for r in t], first, 2 * layer).view(a.n_heads, 3, *shape)
        heads_x = ablated(first, a.n_heads, tf.attention(layer, heads, x[:, 0], x[:, 1], x[:, 2]))  # [H, B, S, d]
        if a.attn_only:
            push(first, heads_x)
            continue
        m = g.mlp_src(layer)
        if not a.parallel_attn_mlp:
            push(first, heads_x)
        m_in = inputs([g.mlp_row(layer)], m if not a.parallel_attn_mlp else first, 2 * layer + (0 if a.parallel_attn_mlp else 1))[0]
        if a.parallel_attn_mlp:
            push(first, heads_x)
        push(m, ablated(m, 1, tf.mlp(layer, m_in)[None]))
    final = inputs([g.logits_row], len(g.sources), 2 * a.n_layers)[0]
    return tf.unembed(patcher.at_answers(final)).reshape(-1, a.d_vocab)
