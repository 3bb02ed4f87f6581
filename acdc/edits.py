"""Running interventions: the engine side of `acdc.interventions` (what to edit, as data), in one place.

- `intervened_logits(patcher, interventions)`: node edits on a patcher's clean prompts (the explorer's);
- `intervene(model, transcoders, tokens, edits)`: feature clamps in the replacement model of one prompt
  (what attribution graphs' edges are checked against).

`intervened_logits(patcher, interventions)` is one plain forward of the patcher's model on its
clean prompts (`Transformer.logits_with_edits`) with each edited node's output (a neuron's or a
feature's activation) replaced at its positions, everything downstream live. Ablation values are
the patcher's own setting: the corrupt prompts' outputs (resample), their mean over the batch (mean)
or zero, read off the model's corrupt run.

A transcoder feature ``m{L}.f{i}`` (the patcher's graph must be a feature graph with a transcoder
for layer L) is edited as the feature graph splits the MLP: its output is the features' decoded
activations plus the error node, the error recomputed from the MLP's live input. So with no edit
the MLP is exact, and an edit of feature i adds ``(a_i' - a_i) W_dec[i]`` to the MLP's output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .graph import layer_offset
from .interventions import Intervention, parse_node
from .model import ForwardCache, Transformer
from .patching import Patcher
from .transcoders import TranscoderSet

__all__ = ["Intervened", "intervene", "intervened_logits"]


@torch.no_grad()
def intervened_logits(patcher: Patcher, interventions: Sequence[Intervention], corrupt_run: ForwardCache | None = None) -> Tensor:
    """Logits [rows, d_vocab] at the patcher's answer rows (as `Patcher.logits`) with ``interventions`` applied.

    ``corrupt_run``: ``patcher.tf.run(patcher.corrupt_tokens)`` computed before (the ablation values'
    source), so many calls run it once."""
    tf = patcher.tf
    a = tf.arch
    ts = patcher.graph.transcoders
    transcoders = {layer: ts[layer] for layer in ts.layers} if isinstance(ts, TranscoderSet) else {}
    clean = patcher.clean_tokens.to(tf.device)
    B, S = clean.shape
    items = [Intervention.from_dict(x) for x in interventions]
    for it in items:
        kind, layer, index = parse_node(it.node)
        if kind != "input" and not 0 <= layer < a.n_layers:
            raise ValueError(f"{it.node}: this model has layers 0-{a.n_layers - 1}")
        if kind == "head" and not 0 <= index < a.n_heads:
            raise ValueError(f"{it.node}: layer {layer} has heads 0-{a.n_heads - 1}")
        if kind in ("mlp", "neuron") and a.attn_only:
            raise ValueError(f"{it.node}: this model is attention-only")
        if kind == "neuron" and not 0 <= index < a.d_mlp:
            raise ValueError(f"{it.node}: MLP {layer} has neurons 0-{a.d_mlp - 1}")
        if kind == "feature":
            if layer not in transcoders:
                raise ValueError(f"{it.node}: a feature needs a feature graph with a transcoder for layer {layer} "
                                 "(Graph.from_model(model, transcoders=ts))")
            if not 0 <= index < transcoders[layer].n_features:
                raise ValueError(f"{it.node}: layer {layer}'s transcoder has features 0-{transcoders[layer].n_features - 1}")
        if it.positions is not None and max(it.positions) >= S:
            raise ValueError(f"{it.node}: positions must be below the prompts' length {S}, got {max(it.positions)}")
    corrupt = None
    if any(it.op == "ablate" for it in items) and patcher.ablation != "zero":
        corrupt = corrupt_run if corrupt_run is not None else tf.run(patcher.corrupt_tokens.to(tf.device))

    def ablated(x: Tensor) -> Tensor:  # a corrupt-run value [B, S, ...] -> the patcher's ablation value
        if patcher.ablation == "mean":
            return x.mean(0, keepdim=True).expand_as(x)
        return x

    def where(it: Intervention) -> Tensor:  # [S] bool
        m = torch.zeros(S, dtype=torch.bool, device=tf.device)
        m[list(it.positions) if it.positions is not None else slice(None)] = True
        return m

    def edit(x: Tensor, it: Intervention, abl: Callable[[], Tensor]) -> Tensor:  # x [B, S, ...]
        m = where(it).view(1, S, *([1] * (x.dim() - 2)))
        if it.op == "ablate":
            new = torch.zeros_like(x) if patcher.ablation == "zero" else abl().to(x.dtype)
        elif it.op == "scale":
            new = x * it.value
        else:
            new = torch.full_like(x, it.value)
        return torch.where(m, new, x)

    heads: dict[int, list[Intervention]] = {}
    mlps: dict[int, list[Intervention]] = {}
    neurons: dict[int, list[Intervention]] = {}
    features: dict[int, list[Intervention]] = {}
    embedding: list[Intervention] = []
    for it in items:
        kind, layer, _ = parse_node(it.node)
        if kind == "input":
            embedding.append(it)
        else:
            {"head": heads, "mlp": mlps, "neuron": neurons, "feature": features}[kind].setdefault(layer, []).append(it)

    def head_fn(layer: int) -> Callable[[Tensor], Tensor]:
        def fn(out: Tensor) -> Tensor:  # [n_heads, B, S, d]
            out = out.clone()
            for it in heads[layer]:
                h = parse_node(it.node)[2]
                src = layer_offset(layer, a.n_heads, not a.attn_only) + h
                out[h] = edit(out[h], it, lambda src=src: ablated(corrupt.sources[src]))  # type: ignore[union-attr]
            return out
        return fn

    def mlp_fn(layer: int) -> Callable[[Tensor], Tensor]:
        def fn(xn: Tensor) -> Tensor:  # the MLP's normed input -> its output
            if layer in neurons:
                hidden = tf.mlp_hidden_normed(layer, xn)
                for it in neurons[layer]:
                    i = parse_node(it.node)[2]
                    hidden[..., i] = edit(hidden[..., i], it, lambda i=i: ablated(
                        tf.mlp_hidden(layer, corrupt.resid_mid[layer])[..., i]))  # type: ignore[union-attr]
                out = hidden @ tf.mlp_out_rows(layer) + tf.mlp_bias(layer)
            else:
                out = tf.mlp_normed(layer, xn)
            if layer in features:  # the features' decoded change; the error node (MLP - reconstruction) stays as it is
                tc = transcoders[layer]
                acts = tc.encode(xn.to(tc.W_enc.dtype))
                new = acts.clone()
                for it in features[layer]:
                    i = parse_node(it.node)[2]
                    new[..., i] = edit(acts[..., i], it, lambda i=i, tc=tc: ablated(
                        tc.encode(tf.mlp_input(layer, corrupt.resid_mid[layer]).to(tc.W_enc.dtype))[..., i]))  # type: ignore[union-attr]
                out = out + ((new - acts) @ tc.W_dec).to(out.dtype)
            for it in mlps.get(layer, []):
                src = layer_offset(layer, a.n_heads) + a.n_heads
                out = edit(out, it, lambda src=src: ablated(corrupt.sources[src]))  # type: ignore[union-attr]
            return out
        return fn

    def embed_fn(x: Tensor) -> Tensor:
        for it in embedding:
            x = edit(x, it, lambda: ablated(corrupt.sources[0]))  # type: ignore[union-attr]
        return x

    return tf.logits_with_edits(clean, heads={layer: head_fn(layer) for layer in heads},
                                mlps={layer: mlp_fn(layer) for layer in set(mlps) | set(neurons) | set(features)},
                                embedding=embed_fn if embedding else None, rows=patcher.answer_pos)


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
