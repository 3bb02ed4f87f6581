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

import time
from collections.abc import Callable

import torch
from torch import Tensor

from ..attribution_graphs import AttributionGraph
from ..linearised import FrozenRun, Readers
from ..model import Transformer
from ..progress import bar as progress_bar
from ..transcoders import CrossLayerTranscoder, FeatureDictionary

__all__ = ["build_attribution_graph"]


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
    decode: token id -> text, for the node labels.
    """
    t0 = time.perf_counter()
    if not 1 <= max_logits or not 0.0 < logit_prob <= 1.0 or batch_size < 1:
        raise ValueError(f"need max_logits >= 1, 0 < logit_prob <= 1 and batch_size >= 1; got {max_logits}, {logit_prob}, {batch_size}")
    transcoders.check_model(tf)
    a = tf.arch
    tokens = tokens.reshape(-1).to(tf.device)
    cross = isinstance(transcoders, CrossLayerTranscoder)
    if cross:
        if transcoders.W_skip is not None and transcoders.cfg.reads == "stream":
            raise NotImplementedError("attribution graphs keep a skip path live from the MLP's normed input; this CLT's "
                                      "skip paths read the stream")
        skip = {} if transcoders.W_skip is None else {layer: transcoders.W_skip[layer].detach() for layer in transcoders.layers}
    else:
        skip = {layer: w.detach() for layer in transcoders.layers if (w := transcoders[layer].W_skip) is not None}
    fr = FrozenRun.of(tf, tokens, skip)
    S, L, d = fr.n_pos, a.n_layers, a.d_model
    raw = cross and transcoders.cfg.reads == "stream"  # features read the stream itself, not its norm

    # nodes: features (layer, pos, feature) in order, their encoder vectors and what they write into each MLP output
    # (``writes[j]``: (feature rows, vectors)); error vectors
    errors = fr.mlp_out.clone()  # [L, S, d]: a layer without a transcoder is all error
    found, values, enc = [], [], []
    writes: dict[int, list[tuple[Tensor, Tensor]]] = {}
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
        enc.append(w_enc[:, nz[:, 1]].T.to(tf.dtype))
        rows = torch.arange(first, first + len(nz))
        first += len(nz)
        if cross:
            for j in range(layer, L):
                writes.setdefault(j, []).append((rows, (v[:, None] * transcoders.decoder(layer, j).detach()[nz[:, 1]]).to(tf.dtype)))
        else:
            t = transcoders[layer]
            writes.setdefault(layer, []).append((rows, (v[:, None] * t.W_dec.detach()[nz[:, 1]]).to(tf.dtype)))
            errors[layer] = fr.mlp_out[layer] - t.decode(acts, xn.to(t.W_enc.dtype)).to(tf.dtype)
    if cross:  # layer j's error: its MLP minus the CLT's reconstruction there from every layer's features up to j
        xs = None if transcoders.W_skip is None else torch.stack(
            [tf.mlp_input(j, fr.resid_mid[j]) for j in range(L)]).to(transcoders.W_enc.dtype)  # skip paths read the normed input
        errors = fr.mlp_out - transcoders.decode([acts_of[j] for j in range(L)], xs).detach().to(tf.dtype)
    if skip_first:
        errors[:, 0] = 0
    features = torch.cat(found) if found else torch.zeros(0, 3, dtype=torch.long)
    acts_all = torch.cat(values) if values else torch.zeros(0)
    enc_vecs = torch.cat(enc) if enc else torch.zeros(0, d)
    n_f = len(features)

    # logit nodes: the top tokens at the last position, read as demeaned unembedding columns
    logits = tf.unembed(fr.resid_pre[-1][-1:])[0]
    probs = logits.float().softmax(-1)
    top = probs.topk(min(max_logits, probs.numel()))
    cut = int(torch.searchsorted(top.values.cumsum(0), torch.tensor(logit_prob, dtype=top.values.dtype))) + 1
    logit_tokens, logit_probs = top.indices[:cut], top.values[:cut]
    W_U = tf.unembedding
    logit_vecs = (W_U[:, logit_tokens] - W_U.mean(1, keepdim=True)).T  # [n_l, d]
    n_l = len(logit_tokens)

    n = n_f + (L + 1) * S + n_l
    A = torch.zeros(n, n, dtype=torch.float32)
    tok_vecs = fr.token_vectors()
    # per MLP output, the features writing into it grouped by position, padded: their vectors [S, k, d] and columns
    # [S, k] (-1: padding)
    groups: dict[int, tuple[Tensor, Tensor]] = {}
    for layer, parts in writes.items():
        idx = torch.cat([r for r, _ in parts])
        vecs = torch.cat([x for _, x in parts])
        if len(idx) == 0:
            continue
        order = features[idx, 1].argsort(stable=True)  # by position (several layers' features write into a CLT's MLP)
        idx, vecs = idx[order], vecs[order.to(vecs.device)]
        pos = features[idx, 1]
        counts = torch.bincount(pos, minlength=S)
        k = int(counts.max())
        slot = torch.arange(len(idx)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        D = torch.zeros(S, k, d, dtype=tf.dtype, device=tf.device)
        cols = torch.full((S, k), -1, dtype=torch.long)
        D[pos, slot] = vecs
        cols[pos, slot] = idx
        groups[layer] = (D, cols)
    err_cols = n_f + torch.arange(L)[:, None] * S + torch.arange(S)  # [L, S]
    tok_cols = n_f + L * S + torch.arange(S)

    def fill(rows: Tensor, out: Tensor, emb: Tensor, s_eff: int) -> None:
        """Row block of A for targets ``rows`` from their gradients at the MLP outputs below them
        (out [l, n, s_eff, d]) and at the embedding (emb [n, s_eff, d])."""
        block = torch.zeros(len(rows), n, dtype=torch.float32)
        for layer in range(out.shape[0]):
            if layer in groups:
                D, cols = groups[layer]
                got = torch.bmm(out[layer].transpose(0, 1), D[:s_eff].transpose(1, 2))  # [s_eff, n, k]
                c = cols[:s_eff]
                ok = c >= 0
                block[:, c[ok]] += got.permute(1, 0, 2)[:, ok].float().cpu()  # a cross-layer feature: summed over its layers
        err = torch.einsum("lnsd,lsd->nls", out, errors[: out.shape[0], :s_eff])
        block[:, err_cols[: out.shape[0], :s_eff].reshape(-1)] = err.reshape(len(rows), -1).float().cpu()
        block[:, tok_cols[:s_eff]] = torch.einsum("nsd,sd->ns", emb, tok_vecs[:s_eff]).float().cpu()
        A[rows] = block

    f_layer, f_pos = features[:, 0].to(tf.device), features[:, 1].to(tf.device)

    # logits first (they read the final stream at the last position), then features layer by layer
    r = torch.arange(n_l, device=tf.device)
    out, emb = fr.backward(Readers(n_l, {}, (r, torch.full_like(r, S - 1), logit_vecs)))
    fill(torch.arange(n - n_l, n), out, emb, S)
    order = sorted(range(n_f), key=lambda i: (int(features[i, 0]), int(features[i, 1])))
    chunks = [order[i : i + batch_size] for i in range(0, n_f, batch_size)]
    bar = progress_bar(total=n_f, desc="attribution graph", unit="feature", disable=not progress)
    for chunk in chunks:
        idx = torch.tensor(chunk, device=tf.device)
        layers, pos = f_layer[idx], f_pos[idx]
        s_eff = int(pos.max()) + 1
        mid = {}
        for layer in layers.unique().tolist():
            m = (layers == layer).nonzero().squeeze(1)
            mid[layer] = (m, pos[m], enc_vecs[idx[m]])
        top = int(layers.max())
        out, emb = fr.backward(Readers(len(chunk), mid, raw=raw), upto=top, n_pos=s_eff)
        fill(idx.cpu(), out[:top], emb, s_eff)  # MLP ``top``'s output is after every target here
        bar.update(len(chunk))
    bar.close()
    say = decode or str
    return AttributionGraph(
        tokens=tokens.cpu(), token_strs=[say(int(t)) for t in tokens], features=features.cpu(), activations=acts_all.float().cpu(),
        logit_tokens=logit_tokens.cpu(), logit_probs=logit_probs.float().cpu(), adjacency=A, n_layers=L,
        logit_strs=[say(int(t)) for t in logit_tokens],
        info={"transcoders": transcoders.source, "model": transcoders.model.name, "skip_first": skip_first,
              "max_logits": max_logits, "logit_prob": logit_prob, "seconds": round(time.perf_counter() - t0, 3)},
    )
