"""Sources behind one interface: every source's clean output and ablation value, stored dense or
factored, and the products algorithms take with them.

The input node, heads and whole MLPs are stored dense ([n, batch, pos, d_model]); factored units
(MLP neurons, later transcoder features) as an activation per token, their output being that
activation times a fixed row of d_model (`acdc.blocks.MLPUnits`). An algorithm never needs the
d_model tensor of a factored source: attribution asks for

    dot(G)[r, u] = sum over batch, positions of (A_u - O_u) . G_r

(the first-order change of the loss when source u is swapped for its ablation value on the edge
into destination r, with G_r the gradient at r's input), which for a factored unit with
activation a_u, ablated activation A_u and row w_u is sum over tokens of (A_u - a_u) (G_r . w_u).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .blocks import MLPUnits, channels_of, is_cross_layer, rows_of, weighted_rows
from .graph import Graph
from .model import Transformer

__all__ = ["FactoredLayer", "SourceValues"]


@dataclass
class FactoredLayer:
    """One layer's factored units: clean activations [n, B, S] and ablation values [n, B|1, S] (None: zero); units
    of several channels (`acdc.blocks.MLPUnits`) have [channels * n, ...] of each, ``sources`` n."""

    sources: range
    clean: Tensor
    abl: Tensor | None


@dataclass
class SourceValues:
    """Clean outputs O and ablation values A of every source of ``graph`` (see the module docstring).

    dense_clean: [n_dense, B, S, d] the dense sources in graph order (every source, unless some are factored);
    dense_abl:   the same [n_dense, B|1, S, d] (resample, weighted mean | mean over the batch), None for zero;
    dense_cols:  graph indices of the dense sources (None: all of them);
    factored:    layer -> its factored units;
    groups:      in a positional graph, the flat token indices (into B * S) of each position.
    """

    tf: Transformer
    graph: Graph
    dense_clean: Tensor
    dense_abl: Tensor | None
    dense_cols: Tensor | None = None
    factored: dict[int, FactoredLayer] = field(default_factory=dict)
    units: MLPUnits | None = None
    groups: list[Tensor] | None = None
    _per_position: list[Tensor] | None = None

    @property
    def shared(self) -> bool:
        """One ablation value for the whole batch (plain mean ablation)."""
        return self.dense_abl is not None and self.dense_abl.shape[1] == 1

    def interpolated(self, sources: range, alpha: float) -> Tensor:
        """A + alpha (O - A) [n, B, S, d] of dense sources: the path from ablated to clean outputs (EAP-IG).

        A factored layer's sources (its units and extras, one EAP-IG group: its MLP) give their sum
        [1, B, S, d] plus the MLP's bias outside them: what the MLP outputs on that path."""
        for layer, f in self.factored.items():
            if sources.start == f.sources.start:
                return self._interpolated_layer(layer, f, sources, alpha)
        rows = self._dense_rows(sources)
        clean = self.dense_clean[rows]
        abl = self.dense_abl
        abl = torch.zeros_like(clean) if abl is None else abl[rows].expand_as(clean)
        return (abl + alpha * (clean - abl)).detach()

    def shifts(self, sources: range, alpha: float) -> dict[int, Tensor] | None:
        """EAP-IG's interpolated node group when it is a cross-layer transcoder's layer l (None for any other group):
        layer -> what the group's path point (A + alpha (O - A)) adds to that MLP's output over the clean run,
        [B, S, d] for each MLP l..L-1 (its features write into every later MLP: (1 - alpha)(A_u - a_u) times
        their decoder into that MLP; its error and skip nodes into MLP l only). Every other source keeps its clean
        output, and later layers' error nodes follow their own inputs, so this is the whole change."""
        units = self.units
        if units is None or not is_cross_layer(units):
            return None
        for layer, f in self.factored.items():
            if sources.start != f.sources.start:
                continue
            if sources != self.graph.mlp_sources(layer):
                raise ValueError(f"EAP-IG interpolates a factored layer's sources as one group: {self.graph.mlp_sources(layer)}")
            B, S, d = self.dense_clean.shape[1:]
            diff = (1 - alpha) * self._unit_diff(f)  # [n, B * S]: interpolated minus clean activations
            out: dict[int, Tensor] = {}
            before = rows_of(units, self.tf, layer, layer)  # what they have written before their own MLP: nothing
            for j in range(layer, self.tf.arch.n_layers):
                upto = rows_of(units, self.tf, layer, j + 1)
                out[j] = (diff.T @ (upto - before).to(diff.dtype)).view(B, S, d).detach()  # their decoders into MLP j
                before = upto
            extras = range(f.sources.stop, sources.stop)
            if len(extras):  # the error and skip nodes: their path point minus their clean output
                out[layer] = out[layer] + (self.interpolated(extras, alpha) - self.dense_clean[self._dense_rows(extras)]).sum(0)
            return out
        return None

    def _interpolated_layer(self, layer: int, f: FactoredLayer, sources: range, alpha: float) -> Tensor:
        if sources != self.graph.mlp_sources(layer):
            raise ValueError(f"EAP-IG interpolates a factored layer's sources as one group, its MLP: {self.graph.mlp_sources(layer)}")
        units = self.units
        assert units is not None and not is_cross_layer(units), "a cross-layer layer's path point is `shifts`"
        B, S, d = self.dense_clean.shape[1:]
        abl = torch.zeros_like(f.clean) if f.abl is None else f.abl.expand_as(f.clean)
        acts = (abl + alpha * (f.clean - abl)).flatten(1)  # [n, B * S]
        ones = torch.ones(1, len(acts), dtype=acts.dtype, device=acts.device)
        out = weighted_rows(units.rows(self.tf, layer), ones, acts).view(1, B, S, d)
        bias = units.bias(self.tf, layer)
        if bias is not None:
            out = out + bias
        extras = range(f.sources.stop, sources.stop)
        if len(extras):
            out = out + self.interpolated(extras, alpha).sum(0, keepdim=True)
        return out.detach()

    def _dense_rows(self, sources: range) -> slice:
        """Where dense graph sources ``sources`` sit in ``dense_clean`` (a one-line error for factored ones)."""
        if self.dense_cols is None:
            return slice(sources.start, sources.stop)
        cols = self.dense_cols.tolist()
        if sources.start not in cols or sources.stop - 1 not in cols:
            raise ValueError(f"sources {sources.start}..{sources.stop - 1} include factored MLP units "
                             f"({self.graph.mlp_units}): interpolate their layer's whole MLP group")
        first = cols.index(sources.start)
        return slice(first, first + len(sources))

    def dot(self, grads: Tensor, upto: int, head_sums: dict[int, Tensor] | None = None) -> Tensor:
        """[R, upto(, n_positions)] float64: sum over batch, positions, features of grads [R, B, S, d] * (A - O)
        for the sources [0, upto) (per position, over that position's tokens, in a positional graph).

        ``head_sums`` (post-norm families; `Patcher.input_gradients`): layer -> its heads' sum before its norm
        in the pass that gave ``grads``; a head's (A - O) then reaches its destinations through the norm's
        derivative there (EAP through the norm, as MIB's EAP-IG does for Gemma 2)."""
        out = self._dot_at_positions(grads, upto) if self.groups is not None else self._dot(grads, upto)
        if head_sums and self.tf.arch.post_norms:
            self._through_norms(out, grads, upto, head_sums)
        return out

    def _through_norms(self, out: Tensor, grads: Tensor, upto: int, head_sums: dict[int, Tensor]) -> None:
        """Overwrite the heads' columns of ``out`` with grads . J_layer (A - O), J the norm's derivative at the pass."""
        g = self.graph
        R = grads.shape[0]
        flat = grads.reshape(R, -1, grads.shape[-1])  # [R, T, d]
        for layer, y in head_sums.items():
            r = range(g.head_src(layer), g.head_src(layer) + g.n_heads)
            if r.stop > upto:
                continue
            rows = self._dense_rows(r)  # heads are dense: their rows of dense_clean
            clean = self.dense_clean[rows]
            abl = torch.zeros_like(clean) if self.dense_abl is None else self.dense_abl[rows].expand_as(clean)
            diff = self.tf.post_attn_jvp(layer, y, abl - clean).reshape(len(r), -1, grads.shape[-1])  # [H, T, d]
            if self.groups is None:
                out[:, r.start : r.stop] = (flat.reshape(R, -1) @ diff.reshape(len(r), -1).T).double()
            else:
                for p, idx in enumerate(self.groups):
                    at = flat.index_select(1, idx).reshape(R, -1)
                    out[:, r.start : r.stop, p] = (at @ diff.index_select(1, idx).reshape(len(r), -1).T).double()

    def _dot(self, grads: Tensor, upto: int) -> Tensor:
        R = grads.shape[0]
        if self.dense_cols is None:
            return self._dense_dot(grads, upto)
        out = torch.zeros(R, upto, dtype=torch.float64, device=grads.device)
        cols = self.dense_cols[self.dense_cols < upto]
        out[:, cols] = self._dense_dot(grads, len(cols))
        units = self.units
        assert units is not None
        flat = grads.reshape(R, -1, grads.shape[-1])  # [R, T, d]
        for layer, f in self.factored.items():
            if f.sources.stop > upto:
                continue
            read = flat @ self._rows(layer, upto).T.to(flat.dtype)  # [R, T, n]: G . w_u per token
            out[:, f.sources.start : f.sources.stop] = self._per_unit(torch.einsum("rtn,nt->rn", read, self._unit_diff(f))).double()
        return out

    def _dense_dot(self, grads: Tensor, upto: int) -> Tensor:
        R = grads.shape[0]
        clean = self.dense_clean[:upto].reshape(upto, -1)
        out = -(grads.reshape(R, -1) @ clean.T)
        if self.dense_abl is not None:
            abl = self.dense_abl[:upto]
            if self.shared:  # one value for the whole batch
                out += grads.sum(1).reshape(R, -1) @ abl.reshape(upto, -1).T
            else:
                out += grads.reshape(R, -1) @ abl.reshape(upto, -1).T
        return out.double()

    def _dot_at_positions(self, grads: Tensor, upto: int) -> Tensor:
        """Per position: (A - O) of the dense sources is materialised once, its tokens sorted by position;
        factored units take (A_u - a_u) (G . w_u) over each position's tokens."""
        assert self.groups is not None
        if self._per_position is None:
            n, B, S, d = self.dense_clean.shape
            diff = torch.zeros_like(self.dense_clean) if self.dense_abl is None else self.dense_abl.expand_as(self.dense_clean).clone()
            diff = (diff - self.dense_clean).reshape(n, B * S, d)
            self._per_position = [diff.index_select(1, idx).reshape(n, -1) for idx in self.groups]  # [n, tokens * d]
        R = grads.shape[0]
        flat = grads.reshape(R, -1, grads.shape[-1])
        cols = torch.arange(upto, device=grads.device) if self.dense_cols is None else self.dense_cols[self.dense_cols < upto]
        out = torch.zeros(R, upto, len(self.groups), dtype=torch.float64, device=grads.device)
        for p, idx in enumerate(self.groups):
            at = flat.index_select(1, idx)  # [R, tokens, d]
            out[:, cols, p] = (at.reshape(R, -1) @ self._per_position[p][: len(cols)].T).double()
            for layer, f in self.factored.items():
                if f.sources.stop > upto:
                    continue
                assert self.units is not None
                diff = self._unit_diff(f).index_select(1, idx)  # [n, tokens]
                read = at @ self._rows(layer, upto).T.to(at.dtype)  # [R, tokens, n]
                out[:, f.sources.start : f.sources.stop, p] = self._per_unit(torch.einsum("rtn,nt->rn", read, diff)).double()
        return out

    def _rows(self, layer: int, upto: int) -> Tensor:
        """[n, d] what layer's units write as read by destinations of the sources [0, upto) (cross-layer units: up to
        their layer, `acdc.blocks.MLPUnits.rows`)."""
        assert self.units is not None
        return rows_of(self.units, self.tf, layer, self.graph.mlps_before(upto))

    def _per_unit(self, by_channel: Tensor) -> Tensor:
        """[R, n] each unit's sum over its channels of [R, channels * n] (`acdc.blocks.MLPUnits`)."""
        c = channels_of(self.units)
        return by_channel if c == 1 else by_channel.view(by_channel.shape[0], c, -1).sum(1)

    @staticmethod
    def _unit_diff(f: FactoredLayer) -> Tensor:
        """[n, B * S] A_u - a_u of a factored layer's units."""
        diff = (torch.zeros_like(f.clean) if f.abl is None else f.abl.expand_as(f.clean)) - f.clean
        return diff.flatten(1)
