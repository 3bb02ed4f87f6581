"""Attribution graphs (Ameisen et al. 2025; circuit-tracer): every direct effect between the active
transcoder features, error nodes, token embeddings and top logits of one prompt, in its local
replacement model (`acdc.linearised`), computed by batched backward passes of the frozen model.

One backward per batch of targets: the targets' read directions (a feature's encoder column at its
MLP's normed input, a logit's demeaned unembedding column at the final norm's output) are pushed
down the frozen model together, and the gradient left at each MLP's output and at the embedding
is dotted with every source's vector there (a feature's activation times its decoder row; an error
node's error; a token's embedding). The frozen model is linear, so this is the exact direct effect.

With a cross-layer transcoder a feature of layer l writes a vector into every MLP output j >= l (its
activation times its decoder into j), so its direct effect on a target is the sum over those layers; layer
j's error is its MLP's output minus the CLT's reconstruction there from every layer's features up to j.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..attribution_graphs import AttributionGraph, partial_influences
from ..linearised import FrozenRun, Readers
from ..model import Transformer
from ..progress import bar as progress_bar
from ..transcoders import CrossLayerTranscoder, FeatureDictionary

__all__ = ["GraphMemory", "Target", "available_gb", "build_attribution_graph"]


@torch.no_grad()
def build_attribution_graph(
    tf: Transformer,
    tokens: Tensor,
    transcoders: FeatureDictionary,
    *,
    max_logits: int = 10,
    logit_prob: float = 0.95,
    batch_size: int = 64,
    skip_first: bool = True,
    max_feature_nodes: int | None = None,
    update_interval: int = 4,
    max_memory_gb: float | None = None,
    targets: Sequence[int | Target] | None = None,
    decode: Callable[[int], str] | None = None,
    progress: bool = False,
) -> AttributionGraph:
    """The attribution graph of ``tokens`` [S] (see `acdc.attribution_graphs` for the layout).

    max_logits, logit_prob: the logit nodes, the most probable tokens at the last position until
        their probability reaches ``logit_prob`` (at most ``max_logits``; circuit-tracer's defaults);
    batch_size: targets per backward pass (memory: about 4 * n_layers * batch * S * d_model bytes; on SmolLM2 with
        2 threads 64 took 28-30 s, 128 32-34 s, 256 48 s for a 15-token prompt);
    skip_first: no features and a zero error at position 0 (circuit-tracer's convention: the first
        token's activations are outliers the transcoders do not model);
    max_feature_nodes: at most this many feature nodes (None: every active feature), chosen as circuit-tracer chooses
        them: after the logits' rows, the unvisited features with the most influence on the logits through the rows
        computed so far (`partial_influences`), re-ranked every ``update_interval`` batches; the graph keeps those
        features (the others' columns are dropped, as circuit-tracer drops them);
    max_memory_gb: refuse, before the backward passes, when the estimate (`GraphMemory`) is over this (None: the
        memory available on the model's device; ``float("inf")``: never), naming a ``max_feature_nodes`` that fits;
    targets: what the graph explains (its target nodes), instead of the most probable logits: token ids (their logits
        at the last position, weighed by their probabilities, as circuit-tracer's token targets) or `Target`s (any
        direction, e.g. a logit difference, read at the last position or any other, through the final norm or from
        the stream after any layer); each is a logit node whose token id is ``d_vocab + k`` for the k-th custom one;
    decode: token id -> text, for the node labels.
    """
    t0 = time.perf_counter()
    if not 1 <= max_logits or not 0.0 < logit_prob <= 1.0 or batch_size < 1 or update_interval < 1:
        raise ValueError(f"need max_logits >= 1, 0 < logit_prob <= 1, batch_size >= 1 and update_interval >= 1; got {max_logits}, "
                         f"{logit_prob}, {batch_size}, {update_interval}")
    if max_feature_nodes is not None and max_feature_nodes < 1:
        raise ValueError(f"max_feature_nodes must be >= 1 (or None: every active feature), got {max_feature_nodes}")
    transcoders.check_model(tf)
    a = tf.arch
    tokens = tokens.reshape(-1).to(tf.device)
    cross = isinstance(transcoders, CrossLayerTranscoder)
    cross_skip: dict[tuple[int, int], Tensor] = {}  # a CLT's skip paths from layer l's input into a later MLP j
    if cross:
        if (transcoders.W_skip is not None or transcoders.W_skip_cross is not None) and transcoders.cfg.reads == "stream":
            raise NotImplementedError("attribution graphs keep a skip path live from the MLP's normed input; this CLT's "
                                      "skip paths read the stream")
        skip = {} if transcoders.W_skip is None else {layer: transcoders.W_skip[layer].detach() for layer in transcoders.layers}
        if transcoders.W_skip_cross is not None:
            cross_skip = {(src, j): w.detach() for src in transcoders.layers for j in range(src + 1, a.n_layers)
                          if bool(((w := transcoders.W_skip_cross[src][j - src - 1]) != 0).any())}
    else:
        skip = {layer: w.detach() for layer in transcoders.layers if (w := transcoders[layer].W_skip) is not None}
    fr = FrozenRun.of(tf, tokens, skip, cross_skip)
    S, L, d = fr.n_pos, a.n_layers, a.d_model
    raw = cross and transcoders.cfg.reads == "stream"  # features read the stream itself, not its norm

    # nodes: features (layer, pos, feature) in order, their encoder vectors, and per source layer the features active at
    # each position (`_Sources`): what they write is gathered from the decoders a block at a time, never stored
    errors = fr.mlp_out.clone()  # [L, S, d]: a layer without a transcoder is all error
    found, values = [], []
    w_encs: dict[int, Tensor] = {}  # each layer's encoder [d, n]: a target's read direction is taken when it is visited
    sources: dict[int, _Sources] = {}
    acts_of: dict[int, Tensor] = {}
    first = 0
    for layer in transcoders.layers:
        xn = tf.mlp_input(layer, fr.resid_mid[layer])
        if cross:
            acts = transcoders.encode(layer, (fr.resid_mid[layer] if raw else xn).to(transcoders.W_enc.dtype))
            w_enc = transcoders.W_enc[layer].detach()
        else:
            t = transcoders[layer]
            acts = t.encode(xn.to(t.W_enc.dtype))  # [S, n]
            w_enc = t.W_enc.detach()
        if skip_first:
            acts[0] = 0
        acts_of[layer] = acts
        nz = acts.nonzero()  # row-major: by position, then feature
        found.append(torch.cat([torch.full((len(nz), 1), layer, device=nz.device), nz], 1))
        v = acts[nz[:, 0], nz[:, 1]]
        values.append(v)
        w_encs[layer] = w_enc
        if len(nz):
            sources[layer] = _Sources.of(nz, v.to(tf.dtype), first, S)
        first += len(nz)
        if not cross:
            t = transcoders[layer]
            errors[layer] = fr.mlp_out[layer] - t.decode(acts, xn.to(t.W_enc.dtype)).to(tf.dtype)
    if cross:  # layer j's error: its MLP minus the CLT's reconstruction there from every layer's features up to j
        xs = None if transcoders.W_skip is None and transcoders.W_skip_cross is None else torch.stack(
            [tf.mlp_input(j, fr.resid_mid[j]) for j in range(L)]).to(transcoders.W_enc.dtype)  # skip paths read the normed input
        errors = fr.mlp_out - transcoders.decode([acts_of[j] for j in range(L)], xs).detach().to(tf.dtype)
    if skip_first:
        errors[:, 0] = 0
    features = torch.cat(found) if found else torch.zeros(0, 3, dtype=torch.long)
    acts_all = torch.cat(values) if values else torch.zeros(0)
    n_f = len(features)

    # logit nodes: the top tokens at the last position (or the targets asked for), read as demeaned unembedding columns
    logits = tf.unembed(fr.resid_pre[-1][-1:])[0]
    probs = logits.float().softmax(-1)
    W_U = tf.unembedding
    labels: list[str | None] = []
    if targets is None:
        top = probs.topk(min(max_logits, probs.numel()))
        cut = int(torch.searchsorted(top.values.cumsum(0), torch.tensor(logit_prob, dtype=top.values.dtype))) + 1
        logit_tokens, logit_probs = top.indices[:cut], top.values[:cut]
        logit_vecs = (W_U[:, logit_tokens] - W_U.mean(1, keepdim=True)).T  # [n_l, d]
        where = [(None, S - 1)] * len(logit_tokens)
        labels = [None] * len(logit_tokens)
    else:
        logit_tokens, logit_probs, logit_vecs, where, labels = _targets(targets, probs, W_U, S, L)
    n_l = len(logit_tokens)

    n = n_f + (L + 1) * S + n_l
    cap = n_f if max_feature_nodes is None else min(max_feature_nodes, n_f)
    widest = {layer: src.width for layer, src in sources.items()}
    with_offsets = isinstance(transcoders, CrossLayerTranscoder) and transcoders.has_offsets()
    memory = GraphMemory.of(n_f=n_f, cap=cap, S=S, L=L, d=d, n_l=n_l, batch=batch_size, widest=widest, heads=a.n_heads,
                            itemsize=torch.empty((), dtype=tf.dtype).element_size(), offsets=with_offsets)
    budget = available_gb(tf.device) if max_memory_gb is None else max_memory_gb
    if progress:
        print(f"attribution graph: {memory.describe()}", file=sys.stderr, flush=True)
    if budget is not None and memory.total_gb > budget:
        fits = memory.largest_cap(budget)
        hint = (f"max_feature_nodes={fits} fits" if fits else "no max_feature_nodes fits: use a smaller batch_size or a shorter prompt")
        raise MemoryError(f"this attribution graph needs about {memory.total_gb:.1f} GB ({memory.describe()}); "
                          f"{budget:.1f} GB {'are available' if max_memory_gb is None else 'allowed (max_memory_gb)'}: {hint}")
    full = cap == n_f
    # rows by target: the whole n x n adjacency when every feature is kept (rows in node order), else the logits'
    # rows and then each visited feature's, in the order visited (``row_node``), packed at the end
    E = torch.zeros(n if full else cap + n_l, n, dtype=torch.float32)
    row_node = torch.arange(n) if full else torch.empty(cap + n_l, dtype=torch.long)
    tok_vecs = fr.token_vectors()
    offsets: dict[tuple[int, int], Tensor] = {}  # a CLT's per-target offsets [n] (a firing feature writes (a + o) W)
    if isinstance(transcoders, CrossLayerTranscoder):
        decoders = {(src, j): transcoders.decoder(src, j).detach() for src in sources for j in range(src, L)}
        if transcoders.offset is not None and with_offsets:
            offsets = {(src, j): transcoders.offset[src][:, j - src].detach() for src in sources for j in range(src, L)}
    else:
        decoders = {(src, src): transcoders[src].W_dec.detach() for src in sources}
    err_cols = n_f + torch.arange(L)[:, None] * S + torch.arange(S)  # [L, S]
    tok_cols = n_f + L * S + torch.arange(S)

    def block(n_rows: int, out: Tensor, emb: Tensor, s_eff: int) -> Tensor:
        """[n_rows, n] the direct effects on ``n_rows`` targets from their gradients at the MLP outputs below them
        (out [l, n_rows, s_eff, d]) and at the embedding (emb [n_rows, s_eff, d])."""
        got_rows = torch.zeros(n_rows, n, dtype=torch.float32)
        got: dict[int, Tensor] = {}  # source layer -> [s_eff, n_rows, k]: summed over the MLP outputs it writes into
        fixed: dict[int, Tensor] = {}  # with offsets: what their offsets write, [s_eff, n_rows, k], already weighed
        for j in range(out.shape[0]):
            writers = [src for src in sources if (src, j) in decoders]  # the layers whose features write into j
            if not writers:
                continue
            g_j = out[j].transpose(0, 1).contiguous()  # [s_eff, n_rows, d]
            for src in writers:  # its features' decoders into j, gathered by position: [s_eff, k, d]
                D = sources[src].decoders(decoders[src, j], s_eff).to(g_j.dtype)
                part = torch.bmm(g_j, D.transpose(1, 2))
                got[src] = part if src not in got else got[src].add_(part)
                if (src, j) in offsets:  # every feature here fires: its offset into j times that same product
                    off = part * sources[src].gathered(offsets[src, j], s_eff).to(part.dtype)[:, None, :]
                    fixed[src] = off if src not in fixed else fixed[src].add_(off)
        for src, part in got.items():
            act, c = sources[src].acts, sources[src].cols[:s_eff]
            ok = c >= 0
            total = part * act[:s_eff, None, :] + (fixed[src] if src in fixed else 0)
            got_rows[:, c[ok]] = total.permute(1, 0, 2)[:, ok.to(part.device)].float().cpu()
        err = torch.stack([(out[j] * errors[j, :s_eff]).sum(-1) for j in range(out.shape[0])], 1) if out.shape[0] else \
            out.new_zeros(n_rows, 0, s_eff)  # [n, l, s], a layer at a time
        got_rows[:, err_cols[: out.shape[0], :s_eff].reshape(-1)] = err.reshape(n_rows, -1).float().cpu()
        got_rows[:, tok_cols[:s_eff]] = torch.einsum("nsd,sd->ns", emb, tok_vecs[:s_eff]).float().cpu()
        return got_rows

    f_layer, f_pos = features[:, 0].to(tf.device), features[:, 1].to(tf.device)

    # logits first (they read the final stream at the last position), then features
    final_rows = [k for k, (layer, _) in enumerate(where) if layer is None]
    after: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
    for layer in sorted({layer for layer, _ in where if layer is not None}):
        ks = [k for k, (at, _) in enumerate(where) if at == layer]
        after[layer] = (torch.tensor(ks, device=tf.device), torch.tensor([where[k][1] for k in ks], device=tf.device),
                        logit_vecs[ks].to(device=tf.device, dtype=tf.dtype))
    r = torch.tensor(final_rows, dtype=torch.long, device=tf.device)
    final = (r, torch.tensor([where[k][1] for k in final_rows], dtype=torch.long, device=tf.device),
             logit_vecs[final_rows].to(device=tf.device, dtype=tf.dtype)) if final_rows else None
    out, emb = fr.backward(Readers(n_l, {}, final, after=after or None))
    logit_rows = block(n_l, out, emb, S)
    if full:
        E[n - n_l :] = logit_rows
    else:
        E[:n_l] = logit_rows
        row_node[:n_l] = torch.arange(n - n_l, n)
    visited = torch.zeros(n_f, dtype=torch.bool)
    st = n_l

    def visit(chunk: Tensor) -> None:
        """The rows of features ``chunk`` (any layers and positions) from one backward pass."""
        nonlocal st
        idx = chunk.to(tf.device)
        layers, pos = f_layer[idx], f_pos[idx]
        s_eff = int(pos.max()) + 1
        mid = {}
        for layer in layers.unique().tolist():
            m = (layers == layer).nonzero().squeeze(1)
            mid[layer] = (m, pos[m], w_encs[layer][:, features[idx[m].cpu(), 2].to(w_encs[layer].device)].T.to(tf.dtype))
        top = int(layers.max())
        out, emb = fr.backward(Readers(len(chunk), mid, raw=raw), upto=top, n_pos=s_eff)
        rows = block(len(chunk), out[:top], emb, s_eff)  # MLP ``top``'s output is after every target here
        if full:
            E[chunk] = rows
        else:
            E[st : st + len(chunk)] = rows
            row_node[st : st + len(chunk)] = chunk
            st += len(chunk)
        visited[chunk] = True
        bar.update(len(chunk))

    bar = progress_bar(total=cap, desc="attribution graph", unit="feature", disable=not progress)
    if full:  # every feature: batches of one layer and nearby positions (each backward stops at its layer)
        order = torch.tensor(sorted(range(n_f), key=lambda i: (int(features[i, 0]), int(features[i, 1]))), dtype=torch.long)
        for i in range(0, n_f, batch_size):
            visit(order[i : i + batch_size])
    else:  # circuit-tracer's order: the most influential unvisited features, re-ranked every update_interval batches
        while st - n_l < cap:
            influence = partial_influences(E[:st], logit_probs.float().cpu(), row_node[:st])
            rank = influence[:n_f].argsort(descending=True)
            pending = rank[~visited[rank]][: min(update_interval * batch_size, cap - (st - n_l))]
            # the round's features are chosen; visited by (layer, position), each backward stops at its highest layer
            pending = pending[(features[pending, 0] * S + features[pending, 1]).argsort(stable=True)]
            for i in range(0, len(pending), batch_size):
                visit(pending[i : i + batch_size])
    bar.close()
    if full:
        A, kept = E, torch.arange(n_f)
    else:
        kept = visited.nonzero().squeeze(1)  # in feature order
        cols = torch.cat([kept, torch.arange(n_f, n)])
        A = torch.zeros(len(cols), len(cols), dtype=torch.float32)
        by_node = row_node[n_l:].argsort() + n_l  # the visited features' rows in feature order
        for i in range(0, len(kept), 1024):  # a block of rows at a time, gathered at the kept columns only
            A[i : min(i + 1024, len(kept))] = E[by_node[i : i + 1024, None], cols]
        A[len(cols) - n_l :] = E[:n_l][:, cols]
        del E
    say = decode or str
    return AttributionGraph(
        tokens=tokens.cpu(), token_strs=[say(int(t)) for t in tokens], features=features[kept].cpu(),
        activations=acts_all[kept.to(acts_all.device)].float().cpu(),
        logit_tokens=logit_tokens.cpu(), logit_probs=logit_probs.float().cpu(), adjacency=A, n_layers=L,
        logit_strs=[lab if lab is not None else say(int(t)) for t, lab in zip(logit_tokens.tolist(), labels, strict=True)],
        info={"transcoders": transcoders.source, "model": transcoders.model.name, "skip_first": skip_first,
              "max_logits": max_logits, "logit_prob": logit_prob, "active_features": n_f,
              "max_feature_nodes": max_feature_nodes,
              "targets": None if targets is None else [{"label": lab, "layer": at, "position": pos} for lab, (at, pos) in
                                                       zip(labels, where, strict=True)], "memory_estimate_gb": memory.total_gb,
              "memory_estimate_bytes": {"rows": memory.rows, "adjacency": memory.adjacency, "backward": memory.backward,
                                        "writes": memory.writes},
              "seconds": round(time.perf_counter() - t0, 3)},
    )


@dataclass(frozen=True)
class _Sources:
    """One source layer's active features, by position and padded to the most at any position: feature ids ``ids``
    [S, k] and activations ``acts`` [S, k] (0 on padding) on the model's device, graph columns ``cols`` [S, k] (-1 on
    padding). What they write into an MLP output is gathered from its decoder when a block of rows needs it
    (`decoders`), so a cross-layer transcoder's features cost no memory per target layer."""

    ids: Tensor
    acts: Tensor
    cols: Tensor

    @classmethod
    def of(cls, nz: Tensor, values: Tensor, first: int, S: int) -> _Sources:
        """From the nonzero (position, feature) pairs ``nz`` [m, 2] in row-major order, their activations [m], and the
        graph column of the first (the others follow)."""
        pos = nz[:, 0].cpu()
        counts = torch.bincount(pos, minlength=S)
        slot = torch.arange(len(pos)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        k = int(counts.max())
        ids = torch.zeros(S, k, dtype=torch.long, device=nz.device)
        acts = torch.zeros(S, k, dtype=values.dtype, device=values.device)
        cols = torch.full((S, k), -1, dtype=torch.long)
        where = (pos.to(nz.device), slot.to(nz.device))
        ids[where] = nz[:, 1]
        acts[where] = values
        cols[pos, slot] = torch.arange(first, first + len(pos))
        return cls(ids, acts, cols)

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    def decoders(self, W_dec: Tensor, s_eff: int) -> Tensor:
        """[s_eff, k, d] the decoder rows (of ``W_dec`` [n, d]) of the features at the first ``s_eff`` positions."""
        return W_dec.index_select(0, self.ids[:s_eff].reshape(-1)).view(s_eff, self.width, -1)

    def gathered(self, per_feature: Tensor, s_eff: int) -> Tensor:
        """[s_eff, k] a value per feature (of ``per_feature`` [n], e.g. an offset) at the first ``s_eff`` positions."""
        return per_feature.index_select(0, self.ids[:s_eff].reshape(-1)).view(s_eff, self.width)


@dataclass(frozen=True)
class Target:
    """A direction an attribution graph explains, instead of a logit (circuit-tracer's ``CustomTarget``, and more):
    ``vector`` [d_model] read at ``position`` (default the last) of the final norm's output (``layer=None``, as a
    logit's unembedding direction is; a logit difference is ``W_U[:, a] - W_U[:, b]``) or of the residual stream
    after layer ``layer`` (its MLP's output in). ``weight``: its share of influence (a logit's is its probability).
    ``acdc.logit_diff_target`` makes the logit-difference one."""

    label: str
    vector: Tensor
    layer: int | None = None
    position: int = -1
    weight: float = 1.0


def _targets(targets: Sequence[int | Target], probs: Tensor, W_U: Tensor, S: int, L: int
             ) -> tuple[Tensor, Tensor, Tensor, list[tuple[int | None, int]], list[str | None]]:
    """(token ids, weights, read directions [n, d], (layer or None, position) and labels of the target nodes)."""
    if len(targets) == 0:
        raise ValueError("targets is empty: give token ids or acdc.Target directions (or None: the top logits)")
    ids, weights, vecs, where, labels = [], [], [], [], []
    d_vocab = W_U.shape[1]
    for k, t in enumerate(targets):
        if isinstance(t, Target):
            if tuple(t.vector.shape) != (W_U.shape[0],):
                raise ValueError(f"target {t.label!r}: its vector is {tuple(t.vector.shape)}, the stream is [{W_U.shape[0]}]")
            if t.layer is not None and not 0 <= t.layer < L:
                raise ValueError(f"target {t.label!r}: layer {t.layer} does not exist (0..{L - 1}; None: the final norm's output)")
            if not -S <= t.position < S:
                raise ValueError(f"target {t.label!r}: position {t.position} is outside the prompt's {S} tokens")
            ids.append(d_vocab + k)
            weights.append(float(t.weight))
            vecs.append(t.vector.to(W_U))
            where.append((t.layer, t.position % S))
            labels.append(t.label)
        else:
            tok = int(t)
            if not 0 <= tok < d_vocab:
                raise ValueError(f"target token {tok} is outside the vocabulary (0..{d_vocab - 1})")
            ids.append(tok)
            weights.append(float(probs[tok]))
            vecs.append(W_U[:, tok] - W_U.mean(1))
            where.append((None, S - 1))
            labels.append(None)
    return (torch.tensor(ids), torch.tensor(weights), torch.stack(vecs), where, labels)


@dataclass(frozen=True)
class GraphMemory:
    """What an attribution graph's construction holds at its peak, in bytes (the model's weights aside): the rows of
    direct effects (the whole n x n adjacency, or with ``max_feature_nodes`` the rows of the features visited and
    then the kept square), one backward pass's gradients (every layer's stream for a batch of targets), and the
    features' indices by position with the largest block of decoder rows gathered at once (a source layer's features
    into one MLP output: what they write is never stored whole, so a cross-layer transcoder costs no more here)."""

    rows: int
    adjacency: int
    backward: int
    writes: int
    n_f: int
    cap: int
    n_other: int  # error, token and logit nodes
    n_l: int

    @classmethod
    def of(cls, *, n_f: int, cap: int, S: int, L: int, d: int, n_l: int, batch: int, widest: dict[int, int],
           heads: int = 0, itemsize: int = 4, offsets: bool = False) -> GraphMemory:
        """``widest``: per source layer, the most features active at one position; ``offsets``: a CLT's per-target
        offsets (what they write is summed apart, one more product and sums per source layer)."""
        backward = itemsize * (L + 4) * max(batch, n_l) * S * d  # one batch's gradient at every MLP output, and a few in flight
        backward += itemsize * L * heads * S * S  # the frozen attention patterns
        k = max(widest.values(), default=0)
        r = max(batch, n_l)
        writes = itemsize * S * (k * d + r * d)  # one gathered block of decoder rows, one MLP output's gradient by position
        writes += itemsize * S * r * (sum(widest.values()) + 2 * k)  # every source layer's sums, one product and its scaled copy
        writes += (16 + itemsize) * S * sum(widest.values())  # ids, columns (int64) and activations
        if offsets:
            writes += itemsize * S * r * (sum(widest.values()) + k)  # what the offsets write: sums and one product
        rows, adjacency = cls.square(n_f, cap, (L + 1) * S + n_l, n_l)
        return cls(rows, adjacency, backward, writes, n_f, cap, (L + 1) * S + n_l, n_l)

    @staticmethod
    def square(n_f: int, cap: int, n_other: int, n_l: int) -> tuple[int, int]:
        """(rows, adjacency) bytes: every feature kept, the n x n adjacency is the rows; else the visited features'
        and logits' rows over every node, then the kept square."""
        n = n_f + n_other
        return (4 * n * n, 0) if cap >= n_f else (4 * (cap + n_l) * n, 4 * (cap + n_other) ** 2)

    @property
    def total_gb(self) -> float:
        return (self.rows + self.adjacency + self.backward + self.writes) / 1e9

    def describe(self) -> str:
        kept = f"{self.n_f:,} active features" + (f", {self.cap:,} kept" if self.cap < self.n_f else "")
        return (f"{kept}; about {self.total_gb:.2f} GB (rows {self.rows / 1e9:.2f}, adjacency {self.adjacency / 1e9:.2f}, "
                f"backward and patterns {self.backward / 1e9:.2f}, features' decoder rows {self.writes / 1e9:.2f})")

    def largest_cap(self, budget_gb: float) -> int | None:
        """The largest ``max_feature_nodes`` whose estimate is within ``budget_gb`` (None: not even one feature)."""
        fixed = self.backward + self.writes
        lo, hi = 0, self.n_f - 1  # (keeping every feature needs no separate square: it is not a cap)
        while lo < hi:  # the estimate grows with the cap
            mid = (lo + hi + 1) // 2
            need = fixed + sum(self.square(self.n_f, mid, self.n_other, self.n_l))
            lo, hi = (mid, hi) if need <= budget_gb * 1e9 else (lo, mid - 1)
        return lo or None


def available_gb(device: torch.device) -> float | None:
    """The memory available for a new allocation on ``device``, in GB: free GPU memory, or MemAvailable of
    /proc/meminfo on a CPU (None where it cannot be read: no check)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 1e9
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        return None
    return None
