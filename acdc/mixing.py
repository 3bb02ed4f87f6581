"""The patched forward with every edge *mixed* instead of kept or ablated, differentiable in the mix:
what learned-mask methods (Edge Pruning) train.

Each destination's input is ``Σ_u [w_u O_u + (1 - w_u) A_u] + biases`` over its sources ``u``, with
``O_u`` the source's output in this run, ``A_u`` its ablation value (resample, mean or zero, as in
every patched run) and ``w_u`` the edge's weight in [0, 1]. With every weight 0 or 1 this is
`Patcher.logits` of the ablated set ``w == 0`` (`tests/test_edge_pruning.py` checks it, and the
fractional mix against a hooked forward). Written as ``base + Σ_u w_u (O_u - A_u)`` (``base`` the
all-ablated stream the engine keeps).

It is one more pass over the engine's blocks (`acdc.blocks`): each block asks `MixedRun.inputs` for
its destinations' mixed inputs and hands back its sources' outputs, so it runs on every graph the
engine runs: whole MLPs, MLP neurons, transcoder features (their error and skip nodes dense, the
units factored: ``w_u (a_u - A_u) row_u``, never a d_model tensor per unit) and token positions (an
edge's weight applies at its position's tokens only).

Speed: each destination group's dense inputs are one matrix product ``W[rows, :upto] @ X[:upto]``
over a buffer holding every dense source's ``O - A`` so far (`_Mix`, an autograd function: its
backward is two products too, and hands each source its slice of the gradient), not one product
per source group, which on a CPU is bound by memory traffic (67 s per step on SmolLM2 that way).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .blocks import channels_of, is_cross_layer, per_channel
from .patching import Patcher

__all__ = ["MixedRun", "mixed_logits"]


class _Mix(torch.autograd.Function):
    """``W [R, n] @ X [n, T]`` where X's rows are the chunks' values, already copied into ``buffer``
    (no copy here), or only the rows ``cols`` of X (W then [R, len(cols)]), or only the tokens
    ``tokens`` (flat indices into batch * pos; the result then [R, len(tokens), d]); gradients go
    to W and to each chunk."""

    @staticmethod
    def forward(ctx: Any, W: Tensor, buffer: Tensor, cols: Tensor | None, tokens: Tensor | None,  # noqa: D102
                *chunks: Tensor) -> Tensor:
        n = sum(len(c) for c in chunks)
        X = buffer[:n]
        shape = chunks[0].shape[1:]  # [B, S, d]
        d = shape[-1]
        if tokens is not None:
            X = X.reshape(n, -1, d).index_select(1, tokens)
        X = X.reshape(n, -1)
        if cols is not None:
            X = X.index_select(0, cols)
        ctx.save_for_backward(W)
        ctx.X = X  # not saved as a tensor: later rows of the buffer are written, these never change again
        ctx.cols, ctx.tokens, ctx.n = cols, tokens, n
        ctx.sizes = [len(c) for c in chunks]
        ctx.shape = shape
        out = W @ X
        return out.view(W.shape[0], *shape) if tokens is None else out.view(W.shape[0], len(tokens), d)

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
        d = ctx.shape[-1]
        if ctx.tokens is not None:
            full = torch.zeros(ctx.n, ctx.shape.numel() // d, d, dtype=grad_x.dtype, device=grad_x.device)
            grad_x = full.index_copy_(1, ctx.tokens, grad_x.view(ctx.n, -1, d))
        return (grad_w, None, None, None, *torch.split(grad_x.view(-1, *ctx.shape), ctx.sizes))


class MixedRun:
    """One mixed forward (see the module docstring): the state the blocks' ``mixed`` parts share.

    ``W`` [n_dst, n_src(, n_positions)] the edge weights (zero off the graph's edges); dense sources'
    ``O - A`` go into ``buffer`` [n_dense, B, S, d] in slot order (`Patcher.dense_slots`), factored
    layers' ``a - A`` into ``units`` (layer -> [n_units, B * S]), both carrying autograd graphs.
    """

    def __init__(self, patcher: Patcher, W: Tensor, skip_zeros: bool):
        self.p, self.W, self.skip_zeros = patcher, W, skip_zeros
        tf, g = patcher.tf, patcher.graph
        B, S = patcher.answer_pos.shape[0], patcher.n_pos
        self.shape = (B, S, tf.arch.d_model)
        n_dense = len(g.sources) if patcher.unit_mask is None else int((~patcher.unit_mask).sum())
        self.buffer = torch.empty(n_dense, *self.shape, dtype=tf.dtype, device=tf.device)  # every O - A so far, no autograd
        self.chunks: list[Tensor] = []
        self.starts: list[int] = []  # each chunk's first slot
        self.units: dict[int, Tensor] = {}
        self.unit_acts: dict[int, Tensor] = {}  # each factored layer's activations [B, S, n] (cross-layer units' extras read them)
        self.unit_inputs: dict[int, Tensor] = {}  # and its MLP input stream [B, S, d] (cross-layer skip paths read it)
        # graph columns of the dense sources (in slot order) and, per position, its flat token indices
        self.dense_cols = None if patcher.unit_mask is None else (~patcher.unit_mask).nonzero().squeeze(1)
        self.groups = patcher.position_groups if g.positions is not None and g.n_positions > 1 else None
        if self.groups is not None:
            tok = torch.empty(B * S, dtype=torch.long, device=tf.device)
            for p, idx in enumerate(self.groups):
                tok[idx] = p
            self.token_position = tok  # [B * S] the position of each token
            self.order = torch.cat(self.groups).argsort()  # from the groups' tokens, concatenated, back to token order

    def push(self, sources: range, out: Tensor) -> None:
        """The outputs [n, B, S, d] of dense graph sources ``sources`` (consecutive) in this run."""
        p = self.p
        first = sources.start if p.unit_mask is None else int(p.dense_slots(torch.tensor([sources.start]))[0])
        abl = p.abl
        x = out if abl is None else out - abl[first : first + len(sources)]
        self.buffer[first : first + len(x)] = x.detach()
        self.chunks.append(x)
        self.starts.append(first)

    def push_units(self, layer: int, acts: Tensor, x: Tensor) -> None:
        """A factored layer's activations [B, S, n_units] on its MLP input stream x [B, S, d] in this run."""
        self.unit_acts[layer], self.unit_inputs[layer] = acts, x
        a = acts.movedim(-1, 0)
        abl = self.p.unit_ablation[layer]
        self.units[layer] = (a if abl is None else a - abl).flatten(1)

    def inputs(self, rows: list[int], upto: int, stream: int) -> Tensor:
        """[len(rows), B, S, d] each row's mixed input from the sources [0, upto)."""
        p, B, S, d = self.p, *self.shape
        base = p.stream_base(stream)
        Wr = self.W[rows, :upto]  # [R, upto(, P)]
        if self.dense_cols is None:
            n_dense, Wd = upto, Wr
        else:
            cols = self.dense_cols[self.dense_cols < upto]
            n_dense, Wd = len(cols), Wr[:, cols]
        used = [c for c, first in zip(self.chunks, self.starts, strict=True) if first < n_dense]
        if p.tf.arch.post_norms:
            out = self._post_norm_inputs(Wd, used, base, len(rows), upto)
        elif self.groups is None:
            out = base + self._dense(Wd, used, None)
        else:
            parts = [self._dense(Wd[..., q], used, idx) for q, idx in enumerate(self.groups)]
            mixed = torch.cat(parts, 1).index_select(1, self.order).view(len(rows), B, S, d)
            out = base + mixed
        at = p.graph.mlps_before(upto) if is_cross_layer(p.units) else -1  # cross-layer units: what they wrote by this layer
        for layer, values in self.units.items():
            r = p.factored_layers[layer]
            if r.start >= upto:
                continue
            Wu = per_channel(Wr[:, r.start : r.stop], channels_of(p.units))  # [R, n(, P)] (each unit's channels: `MLPUnits`)
            if self.groups is not None:
                Wu = Wu.index_select(-1, self.token_position)  # [R, n, B * S]: each token its position's weight
            else:
                Wu = Wu[..., None]
            rows_l = p.unit_rows(layer, at)
            out = out + ((Wu * values[None]).transpose(1, 2) @ rows_l).view(len(rows), B, S, d)
        return out

    def _post_norm_inputs(self, Wd: Tensor, used: list[Tensor], base: Tensor, R: int, upto: int) -> Tensor:
        """A post-norm family's mixed inputs (`FullRun.post_norm_gather`'s rule, differentiable in the weights):
        the linear sources' mix on ``base``, plus per upstream layer its norm of the row's mix of its heads."""
        p, g = self.p, self.p.graph
        B, S, d = self.shape

        def over(cols: Tensor) -> Tensor:  # [R, B, S, d] the mix of the dense columns ``cols``
            if self.groups is None:
                return _Mix.apply(Wd.index_select(1, cols), self.buffer, cols, None, *used)
            parts = [_Mix.apply(Wd[..., q].index_select(1, cols), self.buffer, cols, idx, *used)
                     for q, idx in enumerate(self.groups)]
            return torch.cat(parts, 1).index_select(1, self.order).view(R, B, S, d)

        lin = torch.ones(Wd.shape[1], dtype=torch.bool, device=Wd.device)  # Wd's columns: the dense sources, slot order
        heads = [range(g.head_src(layer), g.head_src(layer) + g.n_heads) for layer in range(g.n_layers)]
        heads = [p.dense_slots(torch.arange(r.start, r.stop, device=Wd.device)) for r in heads if r.stop <= upto]
        for slots in heads:
            lin[slots] = False
        out = base + over(lin.nonzero().squeeze(1)) if used else base.expand(R, B, S, d) + 0 * Wd.sum()
        for layer, slots in enumerate(heads):
            out = out + p.tf.post_attn(layer, p.head_ablation(layer) + over(slots))
        return out

    def _dense(self, Wd: Tensor, used: list[Tensor], tokens: Tensor | None) -> Tensor:
        """The dense sources' part: [R, B, S, d], or [R, len(tokens), d] over ``tokens`` only."""
        if not used:
            R = Wd.shape[0]
            zero = 0 * Wd.sum()  # keeps W in the graph
            return zero.expand(R, *self.shape) if tokens is None else zero.expand(R, len(tokens), self.shape[-1])
        if self.skip_zeros:
            cols = (Wd.detach() != 0).any(0).nonzero().squeeze(1)
            if len(cols) == 0:
                R, zero = Wd.shape[0], 0 * Wd.sum()
                return zero.expand(R, *self.shape) if tokens is None else zero.expand(R, len(tokens), self.shape[-1])
            if 2 * len(cols) <= Wd.shape[1]:
                return _Mix.apply(Wd.index_select(1, cols), self.buffer, cols, tokens, *used)
        return _Mix.apply(Wd, self.buffer, None, tokens, *used)


def mixed_logits(patcher: Patcher, weights: Tensor, *, skip_zeros: bool = False) -> Tensor:
    """Logits [rows, d_vocab] at the answer positions with edge weights ``weights`` [n_dst, n_src]
    (``[n_dst, n_src, n_positions]`` in a positional graph; float in [0, 1]; entries off the graph's
    edges are ignored), differentiable in ``weights``.

    ``skip_zeros``: dense sources whose weights into a destination group are all exactly 0 are left
    out of its product (the same logits, faster when most weights are 0), and those weights get no
    gradient: right for gates clamped at 0, whose own gradient is 0 there (Edge Pruning).
    """
    g, tf = patcher.graph, patcher.tf
    shape = g.state_shape
    if tuple(weights.shape) != shape:
        raise ValueError(f"weights must be [n_dst, n_src{', n_positions' if g.positions is not None else ''}] = "
                         f"{shape}, got {tuple(weights.shape)}")
    up = patcher.upstream if g.positions is None else patcher.upstream[..., None]
    W = weights.to(device=tf.device, dtype=tf.dtype) * up.to(tf.dtype)
    if g.positions is not None and g.n_positions == 1:
        W = W[..., 0]  # one position covering every token: the plain graph's weights
    run = MixedRun(patcher, W, skip_zeros)
    run.push(range(0, 1), patcher.clean.sources[:1])  # the input node's output does not depend on edges
    for block in patcher.blocks:
        block.mixed(run)
    final = run.inputs([g.logits_row], len(g.sources), 2 * tf.arch.n_layers)[0]
    return tf.unembed(patcher.at_answers(final)).reshape(-1, tf.arch.d_vocab)
