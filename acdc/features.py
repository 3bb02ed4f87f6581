"""Transcoder features as graph nodes: a feature graph, where each MLP that has a transcoder is
split into the transcoder's features, an error node and (with a skip path) a skip node.

    ts = acdc.load_transcoders(path)                                  # or acdc.train_transcoders(...)
    g = acdc.Graph.from_model(model, transcoders=ts, features=acdc.active_features(model, ts, task))
    circuit = acdc.discover(model, task, graph=g, threshold=1e-3)     # m0.f3->a1.h0<v>, a1.h0->m1, m1.f7->logits

What each node of layer ``L`` outputs, on that MLP's input stream ``x`` in the current run
(``xn`` its norm, what the MLP's matrices read; ``a(xn)`` the transcoder's activations)::

    m{L}.f{i}:  a_i(xn) W_dec[i]                            a feature: factored, activation x decoder row
    m{L}.skip:  xn @ W_skip                                  the transcoder's skip path, where it has one
    m{L}.err:   MLP(x) - (sum_{i in graph} a_i(xn) W_dec[i] + b_dec + skip)

``b_dec`` belongs to no node and is never ablated (as attention's ``b_O``). So with every edge kept
the MLP writes exactly what it writes in the model, and the error node, computed from the same
input, keeps that true under any ablation upstream: a feature graph is the model, split finer.
With every feature of a transcoder in the graph, ``m{L}.err`` is the transcoder's error;
features left out of the graph (`active_features` keeps those a task uses) fall into it.

Ablation is the same rule as for every source: an ablated edge ``u -> v`` feeds ``v`` the
ablation value of ``u``: for a feature, its activation on the corrupt run (resample), the mean of
that over the corrupt prompts per position (mean), or zero, times its decoder row; for the error
and skip nodes, their corrupt-run output, its mean, or zero. A feature's ablation value is its
*activation's*, so features of a TopK or JumpReLU transcoder are ablated one by one, not by
re-running the encoder. The MLP's input ``m{L}`` is one destination that all of the layer's
nodes read (as for neurons): an edge ``a0.h1->m3`` feeds the features, the error and the skip alike.

The node kinds and how a layer becomes them belong to the graph (`acdc.graph`); importing this
module registers the engine (`acdc` does it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .blocks import MLP_ENGINES, weighted_rows
from .graph import ERROR, FEATURE, SKIP, Graph
from .model import Transformer
from .transcoders import Transcoder, TranscoderSet, active_features

__all__ = ["ERROR", "FEATURE", "SKIP", "Intervened", "TranscoderUnits", "active_features", "intervene"]

class TranscoderUnits:
    """The engine's side of a feature graph: each featured layer's chosen features (factored, rows
    of ``W_dec``) and its dense extras (error, skip), computed from the transcoders attached to the graph."""

    def __init__(self, graph: Graph, tf: Transformer):
        ts = graph.transcoders
        if graph.features is None:
            raise ValueError("TranscoderUnits needs a feature graph (Graph.from_model(model, transcoders=ts))")
        if not isinstance(ts, TranscoderSet):
            raise ValueError("this feature graph has no transcoders attached (a graph read from JSON keeps only their "
                             "description): graph.with_transcoders(acdc.load_transcoders(...))")
        ts.check_model(tf)
        self.tf = tf
        self._layers: dict[int, tuple[Transcoder, Tensor, Tensor]] = {}
        for layer, chosen in graph.features.features:
            t = ts[layer].frozen()  # differentiable in its input (Edge Pruning's mixed run), never in its parameters
            idx = torch.tensor(chosen, dtype=torch.long, device=tf.device)
            dec = t.W_dec.detach().to(device=tf.device, dtype=tf.dtype).index_select(0, idx)  # [n, d]
            self._layers[layer] = (t, idx, dec)

    def layer_units(self, layer: int) -> int | None:
        got = self._layers.get(layer)
        return None if got is None else len(got[1])

    def _normed(self, tf: Transformer, layer: int, x: Tensor) -> Tensor:
        t = self._layers[layer][0]
        return tf.mlp_input(layer, x).to(t.W_enc.dtype)

    def activations(self, tf: Transformer, layer: int, x: Tensor) -> Tensor:
        """[..., n] the chosen features' activations on MLP input stream x [..., d_model].

        Differentiable in x only (the transcoders run frozen: no autograd graph reaches their
        parameters, and none is made when x carries none); attribution's gradients come from the
        model's own MLP (`GradPass`), Edge Pruning's through these activations."""
        t, idx, _ = self._layers[layer]
        return t.encode_features(self._normed(tf, layer, x), idx.to(t.W_enc.device)).to(tf.dtype)

    def extras(self, tf: Transformer, layer: int, x: Tensor, acts: Tensor) -> Tensor:
        """[1 | 2, ..., d_model]: the error node's output (then the skip node's) on x, given the chosen
        features' activations ``acts`` [..., n]."""
        t, _, dec = self._layers[layer]
        xn = tf.mlp_input(layer, x)
        recon = acts @ dec + t.b_dec.to(dec)
        skip = None if t.W_skip is None else xn @ t.W_skip.to(dec)
        if skip is not None:
            recon = recon + skip
        err = tf.mlp_normed(layer, xn) - recon
        return torch.stack([err] if skip is None else [err, skip])

    def contribution(self, tf: Transformer, layer: int, weights: Tensor, values: Tensor) -> Tensor:
        """[R, T, d_model] sum_i weights[r, i] values[i, t] W_dec[i] over the chosen features."""
        return weighted_rows(self._layers[layer][2], weights, values)

    def read(self, tf: Transformer, layer: int, grads: Tensor) -> Tensor:
        """[..., n] grads [..., d_model] dotted with each chosen feature's decoder row."""
        return grads @ self._layers[layer][2].T.to(grads.dtype)

    def rows(self, tf: Transformer, layer: int) -> Tensor:
        """[n, d_model] the chosen features' decoder rows."""
        return self._layers[layer][2]

    def bias(self, tf: Transformer, layer: int) -> Tensor | None:
        """[d_model] ``b_dec`` of a featured layer (outside every node); None for a whole MLP."""
        got = self._layers.get(layer)
        return None if got is None else got[0].b_dec.detach().to(device=tf.device, dtype=tf.dtype)


MLP_ENGINES["transcoders"] = TranscoderUnits


@dataclass
class Intervened:
    """A run of the replacement model with feature edits (`intervene`).

    pre:    layer -> [S, n_features] every feature's encoder pre-activation ``xn . W_enc`` (without ``b_enc``),
            the value an attribution graph's feature target reads;
    acts:   layer -> [S, n_features] the activations (after the edits);
    logits: [S, d_vocab].
    """

    pre: dict[int, Tensor]
    acts: dict[int, Tensor]
    logits: Tensor


@torch.no_grad()
def intervene(model: Any, transcoders: TranscoderSet, tokens: Tensor, edits: Mapping[tuple[int, int, int], float],
              *, freeze_attention: bool = False) -> Intervened:
    """Run the *replacement model* of ``tokens`` [S] with features clamped: ``edits`` maps
    (layer, position, feature) to the activation it takes (0: ablated; ``2 * a``: doubled).

    Each MLP that has a transcoder computes ``decode(encode(xn)) + error``, its features live (so an
    edit moves every feature downstream, attention and norms live too) and its error frozen at its
    value on the unedited prompt; so with no edits this is the model exactly. ``freeze_attention``:
    every head attends as on the unedited prompt (its values still move), the attribution graph's
    own assumption, so what is left between an edit and its target is the norms and the features
    in between. An attribution graph's edge is the first-order, direct part of what an edit does
    here (`acdc.attribution_graph`).
    """
    tf = Transformer.of(model)
    transcoders.check_model(tf)
    tokens = tokens.reshape(1, -1).to(tf.device)
    layers = transcoders.layers
    clean = tf.mlp_io(tokens, layers)
    errors = {layer: clean[layer][1][0] - transcoders[layer](clean[layer][0][0].to(transcoders[layer].W_enc.dtype)).to(tf.dtype)
              for layer in layers}
    by_layer: dict[int, list[tuple[int, int, float]]] = {}
    for (layer, pos, f), value in edits.items():
        if layer not in errors:
            raise ValueError(f"edit of layer {layer}: the transcoders cover layers {layers}")
        by_layer.setdefault(int(layer), []).append((int(pos), int(f), float(value)))
    pre: dict[int, Tensor] = {}
    acts: dict[int, Tensor] = {}

    def replaced(layer: int):
        t = transcoders[layer]

        def fn(xn: Tensor) -> Tensor:
            x = xn[0].to(t.W_enc.dtype)
            pre[layer] = x @ t.W_enc
            a = t.encode(x)
            for pos, f, value in by_layer.get(layer, ()):
                a[pos, f] = value
            acts[layer] = a
            return (t.decode(a, x).to(tf.dtype) + errors[layer])[None]
        return fn

    patterns = tf.attention_patterns(tokens) if freeze_attention else None
    logits = tf.logits_with_mlps(tokens, {layer: replaced(layer) for layer in layers}, patterns)[0]
    return Intervened(pre, acts, logits)
