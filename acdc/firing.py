"""What makes a component fire: its activations over a set of token sequences, as Transformer Debugger
shows them for its neurons, heads and latents.

`component_activity(model, nodes, tokens)` scans the sequences once (one plain forward per batch) and
returns a `ComponentActivity` per node:

- ``measure``: what its activation at a position is, in words:

  - a neuron ``m3.n17``: its hidden activation (the number that multiplies its row of W_out);
  - a feature ``m3.f17`` (with ``transcoders=``): its transcoder activation on the MLP's normed input;
  - an MLP ``m3``: the norm of its output;
  - a head ``a3.h1``: the norm of its output (before b_O) at each query position;

- its mean, minimum and maximum over the scanned positions, the fraction where it is > 0 (neurons and
  features), and a histogram;
- its top contexts, each with the tokens around it. For a head these are the top query-key pairs,
  ranked by how much the key writes into the query's output: the attention probability times the norm
  of the key's value through W_O (TDB's "attention write"), the probability beside it;
- the tokens it promotes and suppresses, read through the unembedding directly (the final norm's scale
  left out: a direction, not a full effect): a neuron's row of W_out, a feature's decoder row, and for a
  head or an MLP, whose output is not one direction, the mean of its output at its top contexts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from .graph import Node
from .graph import parse_node as graph_parse_node
from .inputs import token_texts
from .model import Transformer
from .sites import Site, SiteContext, site_of
from .transcoders import CrossLayerTranscoder, FeatureDictionary, Transcoder

__all__ = ["ComponentActivity", "component_activity"]

@dataclass
class ComponentActivity:
    """How one node fires over the scanned positions (see the module docstring); tokens as (text, value) pairs.

    histogram: ``edges`` [bins + 1] and ``counts`` [bins] of the activation at every scanned position.
    contexts: the top ones, best first: ``value``, ``sequence``, ``position`` and the tokens ``before``,
    at (``token``) and ``after`` it; a head's also ``key``, ``key_token`` and ``attention``.
    """

    node: str
    kind: str
    measure: str
    positions: int
    mean: float
    minimum: float
    maximum: float
    active: float | None
    histogram: dict[str, list[float]]
    contexts: list[dict[str, Any]] = field(default_factory=list)
    promotes: list[tuple[str, float]] = field(default_factory=list)
    suppresses: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse(name: Any, tf: Transformer, transcoders: FeatureDictionary | None) -> tuple[Node, Site]:
    """The node to scan and its kind's site (`acdc.sites`), checked against the model; a one-line ValueError otherwise."""
    try:
        node = graph_parse_node(name)
        site = site_of(node)
    except ValueError:
        node, site = None, None
    if node is None or site is None or site.measure is None:
        raise ValueError(f"{name!r} has no activation to scan; give a head (a1.h2), an MLP (m3), a neuron (m3.n17) "
                         "or a feature (m3.f17, with transcoders=)")
    have = "no transcoders were given" if transcoders is None else f"the transcoders have layers {transcoders.layers}"
    site.check(node, SiteContext(tf, _by_layer(transcoders), have))
    return node, site


def _by_layer(transcoders: FeatureDictionary | None) -> dict[int, Transcoder]:
    """Each layer's transcoder; a cross-layer transcoder's layer through its view with a transcoder's face (its
    encoder, and as its decoder what each feature writes in all: `CrossLayerTranscoder.layer_view`)."""
    if transcoders is None:
        return {}
    if isinstance(transcoders, CrossLayerTranscoder):
        return {layer: cast(Transcoder, transcoders.layer_view(layer)) for layer in transcoders.layers}
    return {layer: transcoders[layer] for layer in transcoders.layers}


@torch.no_grad()
def component_activity(model: Any, nodes: Sequence[str], tokens: Tensor, *, mask: Tensor | None = None,
                       transcoders: FeatureDictionary | None = None, top: int = 10, window: int = 8, bins: int = 20,
                       batch: int = 8, tokenizer: Any = None) -> list[ComponentActivity]:
    """A `ComponentActivity` for each of ``nodes`` (``a3.h1``, ``m3``, ``m3.n17``, ``m3.f17``) over ``tokens``.

    tokens: [n, pos] token ids, scanned ``batch`` sequences at a time.
    mask:   [n, pos] bool, the positions that count (default all): padding left out. A head's
            query-key pairs count where both positions do.
    transcoders: for features (``m{L}.f{i}``), the set whose layer-L transcoder defines them, or a cross-layer
            transcoder (reading the normed MLP input; what a feature promotes: everything it writes, summed).
    top, window: how many contexts, and how many tokens before each one to show (two after).
    tokenizer: decodes tokens (default the model's; without one, ids are shown).
    """
    tf = Transformer.of(model)
    if transcoders is not None:
        transcoders.check_model(tf)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError("tokens must be a [n, pos] tensor of token ids")
    if tokens.shape[0] == 0:
        raise ValueError("tokens has no sequences to scan")
    mask = torch.ones(tokens.shape, dtype=torch.bool) if mask is None else mask
    if not isinstance(mask, Tensor) or mask.shape != tokens.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor shaped like tokens {tuple(tokens.shape)}")
    if not mask.any():
        raise ValueError("mask leaves no position to scan")
    for name, v in (("top", top), ("window", window), ("bins", bins), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "window" else 1):
            raise ValueError(f"{name} must be a whole number >= {0 if name == 'window' else 1}, got {v!r}")
    parsed = [_parse(n, tf, transcoders) for n in nodes]
    if not parsed:
        return []
    values: list[list[Tensor]] = [[] for _ in parsed]
    best: list[list[tuple[float, int, int, int, float, Tensor | None]]] = [[] for _ in parsed]
    by_layer: dict[int, list[int]] = {}
    for j, (node, _) in enumerate(parsed):
        by_layer.setdefault(node.layer, []).append(j)
    tcs = _by_layer(transcoders)
    for s in range(0, tokens.shape[0], batch):
        toks = tokens[s : s + batch].to(tf.device)
        m = mask[s : s + batch].to(tf.device)
        S = toks.shape[1]
        for layer, before, mlp_in, mlp_out in tf.residuals(toks, max(by_layer)):  # stops at the last layer asked about
            cache: dict[str, Tensor] = {}  # what the layer's nodes share (its hidden activations)
            for j in by_layer.get(layer, []):
                node, site = parsed[j]
                r = site.read(tf, node, before, mlp_in, mlp_out, m, cache, tcs)
                values[j].append(r.act[m].float().cpu())
                flat = r.rank.reshape(-1)
                vals, idx = flat.topk(min(top, flat.numel()))
                for v, i in zip(vals.tolist(), idx.tolist(), strict=True):
                    if v == -math.inf:
                        break
                    if r.pattern is not None:  # query-key pairs
                        assert r.out is not None
                        b, q, k = i // (S * S), (i // S) % S, i % S
                        best[j].append((v, s + b, q, k, float(r.pattern[b, q, k]), r.out[b, q].float().cpu()))
                    else:
                        b, q = i // S, i % S
                        best[j].append((v, s + b, q, -1, math.nan, None if r.out is None else r.out[b, q].float().cpu()))
    w_u = tf.unembedding.float()
    result = []
    for j, (node, site) in enumerate(parsed):
        vals = torch.cat(values[j])
        lo, hi = float(vals.min()), float(vals.max())
        counts, edges = torch.histogram(vals, bins=bins, range=(lo, hi if hi > lo else lo + 1.0))
        top_j = sorted(best[j], key=lambda c: (c[0], -c[1], -c[2], -c[3]), reverse=True)[:top]
        contexts = [_context(tokens[seq].tolist(), v, seq, pos, key, prob, window, tokenizer) for v, seq, pos, key, prob, _ in top_j]
        direction = site.direction(tf, node, [o for *_, o in top_j if o is not None], tcs).to(w_u.device)
        logit = (direction @ w_u).cpu()
        k = min(top, logit.numel())
        up, down = logit.topk(k), (-logit).topk(k)
        assert site.measure is not None
        result.append(ComponentActivity(
            node=str(nodes[j]), kind=str(node.kind), measure=site.measure, positions=int(vals.numel()), mean=float(vals.mean()),
            minimum=lo, maximum=hi, active=float((vals > 0).float().mean()) if site.unit else None,
            histogram={"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]}, contexts=contexts,
            promotes=list(zip(token_texts(tokenizer, up.indices.tolist()), [round(v, 6) for v in up.values.tolist()], strict=True)),
            suppresses=list(zip(token_texts(tokenizer, down.indices.tolist()), [round(-v, 6) for v in down.values.tolist()], strict=True)),
        ))
    return result


def _context(row: list[int], value: float, seq: int, pos: int, key: int, prob: float, window: int, tokenizer: Any) -> dict[str, Any]:
    lo = max(0, pos - window)
    ctx: dict[str, Any] = {"value": round(value, 6), "sequence": seq, "position": pos,
                           "before": token_texts(tokenizer, row[lo:pos]), "token": token_texts(tokenizer, [row[pos]])[0],
                           "after": token_texts(tokenizer, row[pos + 1 : pos + 3])}
    if key >= 0:
        ctx.update(key=key, key_token=token_texts(tokenizer, [row[key]])[0], attention=round(prob, 5))
    return ctx
