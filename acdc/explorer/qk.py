""""Why does head H attend to token T?": its attention score split over the nodes upstream, and ablations.

For head H of layer L, a query position q and a key position T of one prompt (clean run):

- **the split** (exact under frozen norms: each norm's scale taken from the clean run, so the norm is
  affine in its input; a QK norm's too): the head's input at a position is the sum of its upstream sources' outputs
  plus the biases that belong to no node; normed and projected, each part gives a piece of the query
  (at q) and of the key (at T), rotated where the model is rotary. The score q·k/√d splits **through
  the query** into (piece i of the query)·k/√d, one per upstream node, plus a bias term (the norm's
  offset, b_Q, the nodes' biases), and **through the key** into q·(piece j of the key)/√d likewise;
  each list sums to the score (a soft-capped score, Gemma 2's: the cap's ratio cap(s) / s frozen too).
- **the ablations** (exact, norms live): the attention probability of q on T when the edge from one
  upstream node into H's query is ablated (its output at q swapped for its ablation value), and when
  its edge into H's key is ablated (at every key position). Nothing else changes when only an edge
  into H is ablated, so each is one recomputation of H's pattern row.

Graphs of whole MLPs only (a neuron or feature graph's units have no per-node output tensor here).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..patching import Patcher

__all__ = ["attention_why"]


class _PostNorms:
    """A post-norm family's heads (Gemma 2/3) as one prompt's head input sees them: through their layer's norm."""

    def __init__(self, patcher: Patcher, i: int):
        self.p, self.i, g, tf = patcher, i, patcher.graph, patcher.tf
        H = g.n_heads
        self.first = [g.head_src(layer) for layer in range(g.n_layers)]
        self.sums = [patcher.clean_outputs[f : f + H, i].double().sum(0) + tf.attn_bias(layer).double()
                     for layer, f in enumerate(self.first)]  # [S, d] each layer's heads' sum before its norm

    def layer_of(self, s: int) -> int | None:
        H = self.p.graph.n_heads
        return next((layer for layer, f in enumerate(self.first) if f <= s < f + H), None)

    def share(self, s: int, out: Tensor) -> Tensor:
        """[S, d] source ``s``'s part of the stream: a head's output through its layer's norm at its frozen scale."""
        layer = self.layer_of(s)
        if layer is None:
            return out
        y = self.sums[layer]
        w = self.p.tf.norm_params("ln1_post", layer)[0].double()
        return out * w * (y.pow(2).mean(-1, keepdim=True) + self.p.tf.arch.eps).rsqrt()

    def change(self, s: int, a: Tensor, where: slice) -> Tensor:
        """[k, d] how the stream changes at ``where`` when head ``s``'s output is swapped for ``a`` (norm live)."""
        layer = self.layer_of(s)
        assert layer is not None
        tf, y = self.p.tf, self.sums[layer][where]
        swapped = y - self.p.clean_outputs[s, self.i, where].double() + a.double()
        return tf.post_attn(layer, swapped.to(tf.dtype)).double() - tf.post_attn(layer, y.to(tf.dtype)).double()


@torch.no_grad()
def attention_why(patcher: Patcher, head: str, i: int, query: int, key: int) -> dict[str, Any]:
    """The QK split and the ablations above for ``head`` on prompt ``i``, query position ``query``, key ``key``."""
    g, tf = patcher.graph, patcher.tf
    if g.split_mlps:
        raise ValueError("attention attribution runs on graphs of whole MLPs; open the circuit on the model's plain graph")
    node = g.sources[g.src_index[head]]
    layer, h = node.layer, node.head
    n_tok = int(patcher.clean_tokens.shape[1])
    if not 0 <= key <= query < n_tok:
        raise ValueError(f"need 0 <= key <= query < {n_tok} (a head attends to earlier positions), got query {query}, key {key}")
    q_row, k_row, _ = g.head_rows(layer)[h]
    srcs = sorted({int(s) for s in g.edge_src[(g.edge_dst == q_row) | (g.edge_dst == k_row)].tolist()})
    names = [g.sources[s].name for s in srcs]
    outs = patcher.clean_outputs[srcs, i].double()  # [n, S, d]
    post = _PostNorms(patcher, i) if tf.arch.post_norms else None
    if post is not None:  # a head's share of its layer's normed output, the norm's scale frozen as the others
        outs = torch.stack([post.share(s, o) for s, o in zip(srcs, outs, strict=True)])
    x = patcher.clean.resid_pre[layer][i].double()  # [S, d] the head's input on the clean run (the patcher's own)
    parts = torch.cat([outs, (x - outs.sum(0))[None]])  # the nodes, then the biases of no node

    heads = torch.tensor([h], device=tf.device)
    ln_w, ln_b = tf.norm_params("ln1", layer)
    w = ln_w.double()
    rms = tf.arch.norm == "RMS"
    var = x.pow(2).mean(-1, keepdim=True) if rms else x.var(-1, unbiased=False, keepdim=True)
    rstd = (var + tf.arch.eps).rsqrt()  # frozen at the clean run
    centred = parts if rms else parts - parts.mean(-1, keepdim=True)
    normed = centred * rstd * w  # [n + 1, S, d] each part's share of ln1(x), without the norm's offset
    offset = torch.zeros_like(x) if rms else ln_b.double().expand_as(x)

    def project(v: Tensor, which: str, with_bias: bool) -> Tensor:  # [..., S, d] -> [..., S, d_head], before any QK norm
        W, b = tf.head_weights(layer, which)
        assert b is not None
        return v @ W[h].double() + (b[h].double() if with_bias else 0.0)

    def at(y: Tensor, p: int) -> Tensor:  # pieces [m, d_head] of a query or key at position p, rotated there
        return tf.rotate(y[:, None], torch.tensor([[p]], device=y.device).expand(y.shape[0], 1), layer)[:, 0]

    def pieces(pos: int, which: str) -> tuple[Tensor, Tensor]:  # the nodes' pieces [n + 1, d_head] and the bias's [d_head]
        parts, bias = project(normed[:, pos], which, False), project(offset[pos][None], which, True)[0]
        ln = (normed[:, pos].sum(0) + offset[pos]).to(tf.dtype)  # the head's input at pos (a norm over every head reads it)
        factor = tf.qk_norm_factor(layer, which, (parts.sum(0) + bias).to(tf.dtype), ln, heads).double().reshape(-1)  # frozen
        return at(parts * factor, pos), at((bias * factor)[None], pos)[0]

    q_parts, q_bias = pieces(query, "Q")
    k_parts, k_bias = pieces(key, "K")
    q_full, k_full = q_parts.sum(0) + q_bias, k_parts.sum(0) + k_bias
    raw = float(q_full @ k_full) * (tf.arch.attn_scale or tf.arch.d_head**-0.5)  # the score before any soft cap
    cap = tf.arch.attn_softcap
    score = cap * math.tanh(raw / cap) if cap else raw
    # q.k times this is the score; a soft cap's ratio cap(raw) / raw is frozen at the clean run, as the norms are
    scale = 1 / ((tf.arch.attn_scale or tf.arch.d_head**-0.5) * (score / raw if cap and raw else 1.0))
    through_q = (q_parts @ k_full / scale).tolist()  # the nodes, then the biases of no node
    through_k = (k_parts @ q_full / scale).tolist()
    bias_q, bias_k = float(q_bias @ k_full / scale) + through_q.pop(), float(q_full @ k_bias / scale) + through_k.pop()

    # the ablations: H's pattern row at ``query`` with one edge into its query (or key) swapped, norms live
    xs = x.to(tf.dtype)
    abl = patcher.ablation_values
    def swapped(s: int, where: slice) -> Tensor:
        a = torch.zeros_like(xs[where]) if abl is None else abl[s, min(i, abl.shape[1] - 1), where]
        if post is not None and post.layer_of(s) is not None:  # through the layer's live norm
            return xs[where] + post.change(s, a, where).to(xs.dtype)
        return xs[where] - patcher.clean_outputs[s, i, where] + a

    q_pos = torch.tensor([[query]], device=tf.device)
    k_full_m = tf.project(layer, heads, xs[None], "K")
    q_full_m = tf.project(layer, heads, xs[None, query : query + 1], "Q")
    row = tf.pattern(layer, q_full_m, k_full_m, q_pos, heads)[0, 0, 0]  # [S] the unedited pattern row
    abl_q, abl_k = [], []
    for s in srcs:
        pq = tf.pattern(layer, tf.project(layer, heads, swapped(s, slice(query, query + 1))[None], "Q"), k_full_m, q_pos, heads)[0, 0, 0]
        pk = tf.pattern(layer, q_full_m, tf.project(layer, heads, swapped(s, slice(0, n_tok))[None], "K"), q_pos, heads)[0, 0, 0]
        abl_q.append(float(pq[key]))
        abl_k.append(float(pk[key]))
    nodes = [{"name": n, "query": float(a), "key": float(b), "prob_query_ablated": pq, "prob_key_ablated": pk}
             for n, a, b, pq, pk in zip(names, through_q, through_k, abl_q, abl_k, strict=True)]
    nodes.append({"name": "bias", "query": bias_q, "key": bias_k,
                  "prob_query_ablated": None, "prob_key_ablated": None})
    nodes.sort(key=lambda r: -(abs(r["query"]) + abs(r["key"])))
    return {"head": head, "layer": layer, "prompt": i, "query": query, "key": key, "score": score, "prob": float(row[key]),
            "pattern": [float(p) for p in row[: query + 1]], "nodes": nodes}
