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

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .blocks import MLP_ENGINES, MLPUnits
from .graph import ERROR, FEATURE, SKIP, Graph, Node, check_layout
from .model import Transformer
from .sites import SITES, Edits, SiteContext, UnitSite
from .transcoders import CrossLayerTranscoder, FeatureDictionary, Transcoder, TranscoderSet, active_features
from .transcoders.transcoder import activate

__all__ = ["ERROR", "FEATURE", "SKIP", "CrossLayerUnits", "FeatureSite", "TranscoderUnits", "active_features"]

class TranscoderUnits:
    """The engine's side of a feature graph: each featured layer's chosen features (factored, rows
    of ``W_dec``) and its dense extras (error, skip), computed from ``ts``, the transcoders the graph's
    layout was made from (the graph holds the layout, the engine the weights)."""

    def __init__(self, graph: Graph, tf: Transformer, ts: TranscoderSet | None):
        if graph.features is None:
            raise ValueError("TranscoderUnits needs a feature graph (Graph.from_model(model, transcoders=ts))")
        if ts is None:
            what = graph.features.info.get("source") or "the set it was built from"
            raise ValueError(f"this feature graph's features are computed by transcoders ({what}); the graph keeps their "
                             "layout only: pass transcoders=ts (acdc.load_transcoders(...)) where you run it")
        check_layout(graph.features, ts)
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

    def rows(self, tf: Transformer, layer: int) -> Tensor:
        """[n, d_model] the chosen features' decoder rows."""
        return self._layers[layer][2]

    def bias(self, tf: Transformer, layer: int) -> Tensor | None:
        """[d_model] ``b_dec`` of a featured layer (outside every node); None for a whole MLP."""
        got = self._layers.get(layer)
        return None if got is None else got[0].b_dec.detach().to(device=tf.device, dtype=tf.dtype)


class CrossLayerUnits:
    """The engine's side of a feature graph over a cross-layer transcoder: each layer's chosen features (factored),
    what they have written by each later layer (`rows`' ``at``: the sum of their decoders into the MLPs before it),
    and each layer's error and skip nodes. Layer j's error is its MLP's output on its input in the current run minus
    the CLT's reconstruction there from every layer's chosen features up to j, each on *its* input in the same run
    (``earlier``), b_dec[j] and the skip path: so with every edge kept the graph is the model, and an edge into an
    earlier layer's features moves layer j's error by exactly what it moves their writes into layer j."""

    cross_layer = True

    def __init__(self, graph: Graph, tf: Transformer, clt: CrossLayerTranscoder):
        assert graph.features is not None  # `units_of` builds units for feature graphs only
        check_layout(graph.features, clt)
        clt.check_model(tf)
        self.tf, self.clt = tf, clt
        self._idx = {layer: torch.tensor(chosen, dtype=torch.long, device=tf.device) for layer, chosen in graph.features.features}
        self._rows: dict[tuple[int, int], Tensor] = {}
        # per-target offsets: each feature has two channels (`acdc.blocks.MLPUnits`), its activation a and whether it
        # fires [a > 0], the second with its offsets' rows, so a destination reads a W + [a > 0] (offset W) from it
        self.channels = 2 if clt.has_offsets() else 1

    def layer_units(self, layer: int) -> int | None:
        idx = self._idx.get(layer)
        return None if idx is None else len(idx)

    def _read(self, tf: Transformer, layer: int, x: Tensor) -> Tensor:
        """What layer's features read from its MLP input stream x: its norm, or the stream itself (``reads``)."""
        xn = tf.mlp_input(layer, x) if self.clt.cfg.reads == "normed" else x
        return xn.to(self.clt.W_enc.dtype)

    def activations(self, tf: Transformer, layer: int, x: Tensor) -> Tensor:
        """[..., n] the chosen features' activations on MLP input stream x [..., d_model] (TopK: every feature encoded);
        differentiable in x (Edge Pruning's mixed run), never in the CLT's parameters."""
        c = self.clt
        pre = self._read(tf, layer, x) @ c.W_enc[layer].detach() + c.b_enc[layer].detach()
        thr = None if c.log_threshold is None else c.log_threshold[layer].detach()
        acts = activate(pre, c.cfg.activation, c.cfg.k, thr)
        acts = acts.index_select(-1, self._idx[layer].to(acts.device)).to(tf.dtype)
        return acts if self.channels == 1 else torch.cat([acts, (acts > 0).to(acts.dtype)], -1)

    def _dec(self, source: int, target: int) -> Tensor:
        """[channels * n, d] the chosen features of ``source``: their decoders into ``target``'s MLP output (then, with
        offsets, each offset times its decoder)."""
        dec = self.clt.decoder(source, target).detach().index_select(0, self._idx[source])
        if self.channels == 2:
            assert self.clt.offset is not None
            off = self.clt.offset[source][:, target - source].detach().index_select(0, self._idx[source])
            dec = torch.cat([dec, off[:, None] * dec])
        return dec.to(self.tf.dtype)

    def extras(self, tf: Transformer, layer: int, x: Tensor, acts: Tensor, earlier: Mapping[int, Tensor] | None = None,
               inputs: Mapping[int, Tensor] | None = None) -> Tensor:
        """[1 | 2, ..., d_model] layer's error node (then its skip node) on its input stream x, given its chosen
        features' activations ``acts`` and every earlier featured layer's in the same run (``earlier``). The skip
        node is every skip path into this layer's MLP output: its own, x's, and with cross-layer skips each earlier
        layer's from that layer's MLP input stream in the same run (``inputs``)."""
        c = self.clt
        recon = acts @ self._dec(layer, layer) + c.b_dec[layer].detach().to(tf.dtype)
        for src, a in (earlier or {}).items():
            if src < layer:
                recon = recon + a @ self._dec(src, layer)
        skip = None if c.W_skip is None else self._read(tf, layer, x) @ c.W_skip[layer].detach().to(tf.dtype)
        if c.W_skip_cross is not None:
            if inputs is None and layer > 0:
                raise ValueError("a CLT with cross-layer skip paths: its skip node reads the earlier layers' inputs")
            skip = torch.zeros_like(recon) if skip is None else skip
            for src in range(layer):
                w = c.W_skip_cross[src][layer - src - 1].detach().to(tf.dtype)
                skip = skip + self._read(tf, src, inputs[src]) @ w  # type: ignore[index]
        if skip is not None:
            recon = recon + skip
        err = tf.mlp(layer, x) - recon
        return torch.stack([err] if skip is None else [err, skip])

    def rows(self, tf: Transformer, layer: int, at: int = -1) -> Tensor:
        """[n, d_model] what layer's chosen features have written per unit of activation once the MLPs before layer
        ``at`` have run (`CrossLayerTranscoder.written`)."""
        if at < 0:
            raise ValueError("a cross-layer feature's output depends on who reads it: rows(tf, layer, at) needs the reader's layer")
        key = (layer, at)
        if key not in self._rows:
            rows = self.clt.written(layer, at).detach()
            if self.channels == 2:
                rows = torch.cat([rows.index_select(0, self._idx[layer]), self.clt.offsets_written(layer, at).detach().index_select(0, self._idx[layer])])
            else:
                rows = rows.index_select(0, self._idx[layer])
            self._rows[key] = rows.to(tf.dtype)
        return self._rows[key]

    def bias(self, tf: Transformer, layer: int) -> Tensor | None:
        """[d_model] ``b_dec`` of layer ``layer`` (outside every node)."""
        return self.clt.b_dec[layer].detach().to(device=tf.device, dtype=tf.dtype) if layer in self._idx else None


def _feature_units(graph: Graph, tf: Transformer, ts: FeatureDictionary | None) -> MLPUnits:
    """The feature graph's engine: per-layer transcoders' or a cross-layer transcoder's."""
    return CrossLayerUnits(graph, tf, ts) if isinstance(ts, CrossLayerTranscoder) else TranscoderUnits(graph, tf, ts)


MLP_ENGINES["transcoders"] = _feature_units


class FeatureSite(UnitSite):
    """A transcoder feature in the plain forward (`acdc.sites`): its activation is edited (the MLP's output moves
    by the change times its decoder row; the error node, MLP minus reconstruction, stays) and is what it fires as;
    it writes along its decoder row. Needs its layer's transcoder."""

    kind = FEATURE
    mlp_order = 1
    measure = "the feature's transcoder activation"

    def check(self, node: Node, ctx: SiteContext) -> None:
        super().check(node, ctx)
        tc = ctx.transcoders.get(node.layer)
        if tc is None:
            raise ValueError(f"{node.name}: a feature needs a transcoder for layer {node.layer}; {ctx.no_transcoder}")
        if not 0 <= node.head < tc.n_features:
            raise ValueError(f"{node.name}: feature {node.head} does not exist; layer {node.layer}'s transcoder has "
                             f"features 0-{tc.n_features - 1}")

    def edit_mlp(self, run: Edits, layer: int, xn: Tensor, out: Tensor | None, items: Sequence[tuple[Node, object]]) -> Tensor:
        tf, tc = run.tf, run.transcoders[layer]
        out = self.unedited(run, layer, xn, out)
        acts = tc.encode(xn.to(tc.W_enc.dtype))
        new = acts.clone()
        for node, it in items:
            i = node.head
            new[..., i] = run.apply(new[..., i], it, lambda c, i=i: tc.encode(
                tf.mlp_input(layer, c.resid_mid[layer]).to(tc.W_enc.dtype))[..., i])
        return out + ((new - acts) @ tc.W_dec).to(out.dtype)

    def layer_activations(self, tf: Transformer, layer: int, mlp_in: Tensor, transcoders: Mapping[int, Transcoder]) -> Tensor:
        return transcoders[layer].encode(tf.mlp_input(layer, mlp_in).float())

    def direction(self, tf: Transformer, node: Node, outs: list[Tensor], transcoders: Mapping[int, Transcoder]) -> Tensor:
        return transcoders[node.layer].W_dec[node.head].float()


SITES[FEATURE] = FeatureSite()
