"""What each kind of node is in the plain forward: one class per kind, owning how a node of it is
checked against a model, edited by an intervention and scanned for what makes it fire.

The graph owns the kinds' topology (`acdc.graph.NodeKind`: name grammar, slots, place in a layer);
the engine's blocks own how a kind runs in patched passes (`acdc.blocks`). A `Site` is the rest of a
kind's knowledge, for the passes that run the model *plainly* (`Transformer.walk`):

- `check`: a node of this kind exists in this model (layer, index, a transcoder for a feature), a
  one-line ValueError otherwise;
- where its edits apply (`stage`: the input node's output, a layer's head outputs, or the MLP's output)
  and how (`edit_input`, `edit_heads`, `edit_mlp`): `acdc.edits.intervened_logits`;
- what its activation is and how it is read (`measure`, `read`, `direction`): `acdc.firing`.

`SITES` maps each kind to its site; the kinds of this module register here (input, head, MLP),
`acdc.neurons` and `acdc.feature_nodes` register theirs. A kind with no site cannot be edited or scanned
(`site_of` says so in one line).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from .graph import HEAD, INPUT, MLP, Node, NodeKind, layer_offset
from .model import ForwardCache, Transformer
from .transcoders import Transcoder

__all__ = ["SITES", "Edits", "Reading", "Site", "SiteContext", "UnitSite", "site_of"]


@dataclass(frozen=True)
class SiteContext:
    """What a check needs: the model, the transcoders by layer (a feature's), and how to say that a layer has none."""

    tf: Transformer
    transcoders: Mapping[int, Transcoder]
    no_transcoder: str = "no transcoders were given"


class Edits(Protocol):
    """An intervention run's helpers (`acdc.edits`): apply an edit to a value, and the ablation value of one
    read off the corrupt run (the patcher's ablation: resample, mean or zero)."""

    tf: Transformer
    transcoders: Mapping[int, Transcoder]  # by layer: a feature's transcoder

    def apply(self, x: Tensor, item: object, ablation: Callable[[ForwardCache], Tensor]) -> Tensor:
        """x [B, S, ...] with ``item`` (an `Intervention`) applied at its positions; ``ablation(corrupt run)``
        is the value an "ablate" takes (before the batch mean of mean ablation)."""
        ...


@dataclass
class Reading:
    """A node's activation on a batch, for a firing scan.

    act [b, S] its activation at each position; rank [b, S] (or a head's [b, S, S] query-key pairs) what its
    top contexts are ranked by (-inf where masked out); out [b, S, d] its output where it has one;
    pattern [b, S, S] a head's attention probabilities."""

    act: Tensor
    rank: Tensor
    out: Tensor | None = None
    pattern: Tensor | None = None


class Site:
    """One kind of node in the plain forward (see the module docstring). Subclasses set ``kind``, ``stage``
    (None: not editable), ``mlp_order`` (the order of the MLP stage's edits: a neuron's recomputes the output
    first, a feature adds its decoded change, a whole MLP's edit comes last), ``measure`` (None: nothing to
    scan) and ``unit`` (one activation per token, as a neuron's: "active" is the fraction above 0)."""

    kind: NodeKind
    stage: Literal["embedding", "heads", "mlp"] | None = None
    mlp_order: int = 0
    measure: str | None = None
    unit: bool = False

    def check(self, node: Node, ctx: SiteContext) -> None:
        """Raise a one-line ValueError if ``node`` does not exist in ``ctx``'s model."""
        a = ctx.tf.arch
        if not 0 <= node.layer < a.n_layers:
            raise ValueError(f"{node.name}: layer {node.layer} does not exist; the model has layers 0-{a.n_layers - 1}")

    # ---------------------------------------------------------------- edits (one method per stage)
    def edit_input(self, run: Edits, x: Tensor, items: Sequence[object]) -> Tensor:
        raise NotImplementedError

    def edit_heads(self, run: Edits, layer: int, out: Tensor, items: Sequence[tuple[Node, object]]) -> Tensor:
        raise NotImplementedError

    def edit_mlp(self, run: Edits, layer: int, xn: Tensor, out: Tensor | None, items: Sequence[tuple[Node, object]]) -> Tensor:
        """The layer's MLP output with these edits, given its normed input ``xn`` and its output so far (None: no
        edit of the layer has run yet; `unedited` computes it)."""
        raise NotImplementedError

    @staticmethod
    def unedited(run: Edits, layer: int, xn: Tensor, out: Tensor | None) -> Tensor:
        """The MLP's output so far: ``out``, or the plain MLP on ``xn`` when no edit has produced one."""
        return run.tf.mlp_normed(layer, xn) if out is None else out

    # ---------------------------------------------------------------- firing scans
    def read(self, tf: Transformer, node: Node, before: Tensor, mlp_in: Tensor, mlp_out: Tensor, mask: Tensor,
             cache: dict[str, Tensor], transcoders: Mapping[int, Transcoder]) -> Reading:
        """Its activation on a batch: ``before`` the layer's input stream, ``mlp_in`` the MLP's input stream,
        ``mlp_out`` the MLP's output, each [b, S, d]; ``mask`` [b, S] the positions that count; ``cache`` what
        nodes of one layer share (its hidden activations)."""
        raise NotImplementedError

    def direction(self, tf: Transformer, node: Node, outs: list[Tensor], transcoders: Mapping[int, Transcoder]) -> Tensor:
        """[d_model] the direction it writes, read through the unembedding: a unit's own row; by default the
        mean of its output at its top contexts ``outs`` (a head's or an MLP's output is not one direction)."""
        d = tf.arch.d_model
        return torch.stack(outs).mean(0).float() if outs else torch.zeros(d)


SITES: dict[NodeKind, Site] = {}


def site_of(node: Node) -> Site:
    """The site of ``node``'s kind (a one-line ValueError for a kind that has none)."""
    site = SITES.get(node.kind)
    if site is None:
        kinds = ", ".join(str(k) for k in SITES)
        raise ValueError(f"{node.name} is a {node.kind} node, which runs in no plain-forward edit or scan; kinds that do: {kinds}")
    return site


class InputSite(Site):
    """The input node: the embedding (tokens, positions). Edited; nothing to scan."""

    kind = INPUT
    stage = "embedding"

    def check(self, node: Node, ctx: SiteContext) -> None:
        pass

    def edit_input(self, run: Edits, x: Tensor, items: Sequence[object]) -> Tensor:
        for it in items:
            x = run.apply(x, it, lambda c: c.sources[0])
        return x


class HeadSite(Site):
    """An attention head: its output (before b_O) is edited; it fires as the norm of that output."""

    kind = HEAD
    stage = "heads"
    measure = ("norm of the head's output (before b_O) at the query position; contexts are query-key pairs ranked by "
               "attention probability x |value through W_O|")

    def check(self, node: Node, ctx: SiteContext) -> None:
        super().check(node, ctx)
        if not 0 <= node.head < ctx.tf.arch.n_heads:
            raise ValueError(f"{node.name}: head {node.head} does not exist; layers have heads 0-{ctx.tf.arch.n_heads - 1}")

    def edit_heads(self, run: Edits, layer: int, out: Tensor, items: Sequence[tuple[Node, object]]) -> Tensor:
        a = run.tf.arch
        out = out.clone()
        for node, it in items:
            src = layer_offset(layer, a.n_heads, not a.attn_only) + node.head
            out[node.head] = run.apply(out[node.head], it, lambda c, src=src: c.sources[src])
        return out

    def read(self, tf: Transformer, node: Node, before: Tensor, mlp_in: Tensor, mlp_out: Tensor, mask: Tensor,
             cache: dict[str, Tensor], transcoders: Mapping[int, Transcoder]) -> Reading:
        layer, heads = node.layer, torch.tensor([node.head], device=tf.device)
        ln = tf.ln(before, "ln1", layer)  # normed once for the three projections
        p = tf.pattern(layer, tf.project_normed(layer, heads, ln, "Q"), tf.project_normed(layer, heads, ln, "K"), heads=heads)  # [1, b, q, k]
        vm = tf.project_normed(layer, heads, ln, "V")  # [1, b, k, dh]
        out = tf.mix(layer, heads, p, vm)[0]  # [b, q, d]: the head's output, before b_O
        write = (vm[0] @ tf.head_weights(layer, "O")[0][node.head]).norm(dim=-1)  # [b, k]
        S = mask.shape[1]
        causal = torch.ones(S, S, dtype=torch.bool, device=tf.device).tril()
        rank = (p[0] * write[:, None, :]).masked_fill(~(mask[:, :, None] & mask[:, None, :] & causal), -math.inf)
        return Reading(out.norm(dim=-1), rank, out, p[0])


class MLPSite(Site):
    """A whole MLP: its output is edited (after any neuron or feature edit of the layer); it fires as its norm."""

    kind = MLP
    stage = "mlp"
    mlp_order = 2
    measure = "norm of the MLP's output"

    def check(self, node: Node, ctx: SiteContext) -> None:
        super().check(node, ctx)
        if ctx.tf.arch.attn_only:
            raise ValueError(f"{node.name}: an attention-only model has no MLPs")

    def edit_mlp(self, run: Edits, layer: int, xn: Tensor, out: Tensor | None, items: Sequence[tuple[Node, object]]) -> Tensor:
        src = layer_offset(layer, run.tf.arch.n_heads) + run.tf.arch.n_heads
        out = self.unedited(run, layer, xn, out)
        for _, it in items:
            out = run.apply(out, it, lambda c: c.sources[src])
        return out

    def read(self, tf: Transformer, node: Node, before: Tensor, mlp_in: Tensor, mlp_out: Tensor, mask: Tensor,
             cache: dict[str, Tensor], transcoders: Mapping[int, Transcoder]) -> Reading:
        act = mlp_out.norm(dim=-1)
        return Reading(act, act.masked_fill(~mask, -math.inf), mlp_out)


class UnitSite(MLPSite):
    """A unit of an MLP with one activation per token (a neuron, a feature): what it fires as is that activation,
    computed for the whole layer once per batch (`layer_activations`) and shared by the layer's units."""

    unit = True

    def layer_activations(self, tf: Transformer, layer: int, mlp_in: Tensor, transcoders: Mapping[int, Transcoder]) -> Tensor:
        """[b, S, n_units] every unit's activation on the MLP input stream ``mlp_in`` [b, S, d]."""
        raise NotImplementedError

    def read(self, tf: Transformer, node: Node, before: Tensor, mlp_in: Tensor, mlp_out: Tensor, mask: Tensor,
             cache: dict[str, Tensor], transcoders: Mapping[int, Transcoder]) -> Reading:
        key = str(self.kind)
        if key not in cache:
            cache[key] = self.layer_activations(tf, node.layer, mlp_in, transcoders)
        act = cache[key][..., node.head]
        return Reading(act, act.masked_fill(~mask, -math.inf))


for _site in (InputSite(), HeadSite(), MLPSite()):
    SITES[_site.kind] = _site
