"""Running interventions: the engine side of `acdc.interventions` (what to edit, as data), in one place.

- `intervened_logits(patcher, interventions)`: node edits on a patcher's clean prompts (the explorer's);
- `intervene(model, transcoders, tokens, edits)`: feature clamps in the replacement model of one prompt
  (what attribution graphs' edges are checked against);
- `generate(model, prompt, transcoders=ts, interventions=[...])`: a continuation with features clamped, scaled
  or ablated at every step (what a feature does to what the model says).

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
from typing import Any, cast

import torch
from torch import Tensor

from .graph import FEATURE, Node
from .interventions import Intervention, node_of
from .model import ForwardCache, Transformer
from .patching import Patcher
from .sites import Site, SiteContext, site_of
from .transcoders import CrossLayerTranscoder, Transcoder, TranscoderSet

__all__ = ["Generated", "Intervened", "generate", "intervene", "intervened_logits"]


class _EditRun:
    """One `intervened_logits` run's helpers for the sites (`acdc.sites.Edits`): apply an edit at its positions,
    with ablation values read off the corrupt run (run once, when an edit ablates)."""

    def __init__(self, patcher: Patcher, transcoders: Mapping[int, Transcoder], corrupt_run: ForwardCache | None):
        self.tf, self.transcoders, self.patcher = patcher.tf, transcoders, patcher
        self.S = int(patcher.clean_tokens.shape[1])
        self._corrupt = corrupt_run

    def corrupt(self) -> ForwardCache:
        if self._corrupt is None:
            self._corrupt = self.tf.run(self.patcher.corrupt_tokens.to(self.tf.device))
        return self._corrupt

    def apply(self, x: Tensor, item: object, ablation: Callable[[ForwardCache], Tensor]) -> Tensor:
        it = item
        assert isinstance(it, Intervention)
        m = torch.zeros(self.S, dtype=torch.bool, device=x.device)
        m[list(it.positions) if it.positions is not None else slice(None)] = True
        m = m.view(1, self.S, *([1] * (x.dim() - 2)))
        if it.op == "ablate":
            if self.patcher.ablation == "zero":
                new = torch.zeros_like(x)
            else:
                v = ablation(self.corrupt())
                new = (v.mean(0, keepdim=True).expand_as(v) if self.patcher.ablation == "mean" else v).to(x.dtype)
        elif it.op == "scale":
            new = x * it.value
        else:
            new = torch.full_like(x, it.value)
        return torch.where(m, new, x)


@torch.no_grad()
def intervened_logits(patcher: Patcher, interventions: Sequence[Intervention], corrupt_run: ForwardCache | None = None) -> Tensor:
    """Logits [rows, d_vocab] at the patcher's answer rows (as `Patcher.logits`) with ``interventions`` applied.

    Each edited node's kind says where and how (`acdc.sites`). ``corrupt_run``: ``patcher.tf.run(patcher.corrupt_tokens)``
    computed before (the ablation values' source), so many calls run it once. A cross-layer transcoder's feature of
    layer L (the patcher's dictionary a `CrossLayerTranscoder`) moves every MLP j >= L by what it writes into j at its
    edited activation minus at its live one (`CrossLayerTranscoder.writes`), as `generate` edits it."""
    tf = patcher.tf
    ts = patcher.transcoders
    clt = ts if isinstance(ts, CrossLayerTranscoder) else None
    transcoders = {} if ts is None or clt is not None else {layer: ts[layer] for layer in ts.layers}  # type: ignore[union-attr]
    ctx = SiteContext(tf, transcoders, "the patcher has no transcoders (Patcher(..., graph=feature_graph, transcoders=ts))")
    S = int(patcher.clean_tokens.shape[1])
    items = [Intervention.from_dict(x) for x in interventions]
    placed: list[tuple[Node, Site, Intervention]] = []
    crossing: dict[int, dict[int, list[Intervention]]] = {}  # a CLT's edited features: layer -> feature -> its edits, in order
    for it in items:
        node = node_of(it.node)
        if it.positions is not None and max(it.positions) >= S:
            raise ValueError(f"{it.node}: positions must be below the prompts' length {S}, got {max(it.positions)}")
        if clt is not None and node.kind is FEATURE:
            _check_clt_feature(node, clt)
            crossing.setdefault(node.layer, {}).setdefault(node.head, []).append(it)
            continue
        site = site_of(node)
        site.check(node, ctx)
        placed.append((node, site, it))
    run = _EditRun(patcher, transcoders, corrupt_run)
    by_stage: dict[tuple[str | None, int], dict[Site, list[tuple[Node, object]]]] = {}
    for node, site, it in placed:
        by_stage.setdefault((site.stage, node.layer), {}).setdefault(site, []).append((node, it))

    def head_fn(layer: int) -> Callable[[Tensor], Tensor]:
        def fn(out: Tensor) -> Tensor:  # [n_heads, B, S, d]
            for site, its in by_stage[("heads", layer)].items():
                out = site.edit_heads(run, layer, out, its)
            return out
        return fn

    moved: dict[int, tuple[Tensor, Tensor, Tensor]] = {}  # a CLT's source layer -> its edited features, old and new acts

    def crossing_moves(layer: int, xn: Tensor) -> Tensor | None:
        """What a CLT's edited features of layers <= ``layer`` move MLP ``layer``'s output by (their edits are made at
        their own layer, on its live input, and kept for the later layers)."""
        c = clt
        assert c is not None
        if layer in crossing:
            feats = torch.tensor(sorted(crossing[layer]), device=c.W_enc.device)
            old = c.encode(layer, xn.to(c.W_enc.dtype)).index_select(-1, feats)  # [B, S, k]
            new = old.clone()
            for j, f in enumerate(feats.tolist()):
                for it in crossing[layer][f]:
                    new[..., j] = run.apply(new[..., j], it, lambda run_c, f=f: c.encode(
                        layer, tf.mlp_input(layer, run_c.resid_mid[layer]).to(c.W_enc.dtype))[..., f])
            moved[layer] = (feats, old, new)
        diffs = [c.writes(src, layer, new, feats) - c.writes(src, layer, old, feats)
                 for src, (feats, old, new) in moved.items() if src <= layer]
        return torch.stack(diffs).sum(0) if diffs else None

    def mlp_fn(layer: int) -> Callable[[Tensor], Tensor]:
        def fn(xn: Tensor) -> Tensor:  # the MLP's normed input -> its output
            out: Tensor | None = None  # the first site computes the MLP's output (a neuron edit: from its hidden units)
            for site, its in sorted(by_stage.get(("mlp", layer), {}).items(), key=lambda kv: kv[0].mlp_order):
                out = site.edit_mlp(run, layer, xn, out, its)
            if crossing:
                out = tf.mlp_normed(layer, xn) if out is None else out
                move = crossing_moves(layer, xn)
                out = out if move is None else out + move.to(device=out.device, dtype=out.dtype)
            assert out is not None
            return out
        return fn

    def embed_fn(x: Tensor) -> Tensor:
        for site, its in by_stage[("embedding", -1)].items():
            x = site.edit_input(run, x, [it for _, it in its])
        return x

    layers = {stage: [layer for (s, layer) in by_stage if s == stage] for stage in ("heads", "mlp")}
    if crossing:  # a CLT's feature of layer L moves every MLP from L on
        layers["mlp"] = sorted(set(layers["mlp"]) | set(range(min(crossing), tf.arch.n_layers)))
    return tf.logits_with_edits(patcher.clean_tokens.to(tf.device), heads={layer: head_fn(layer) for layer in layers["heads"]},
                                mlps={layer: mlp_fn(layer) for layer in layers["mlp"]},
                                embedding=embed_fn if ("embedding", -1) in by_stage else None, rows=patcher.answer_pos)


def _check_clt_feature(node: Node, clt: CrossLayerTranscoder) -> None:
    """A one-line ValueError unless ``node`` is a feature of ``clt`` that an edit can reach (it reads the normed input)."""
    if not 0 <= node.layer < clt.cfg.n_layers:
        raise ValueError(f"{node.name}: the cross-layer transcoder covers layers 0-{clt.cfg.n_layers - 1}")
    if not 0 <= node.head < clt.cfg.n_features:
        raise ValueError(f"{node.name}: feature {node.head} does not exist; layer {node.layer}'s features are 0-{clt.cfg.n_features - 1}")
    if clt.cfg.reads != "normed":
        raise ValueError(f"{node.name}: interventions edit cross-layer features that read the MLP's normed input; this CLT "
                         "reads the residual stream before the norm")


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
def intervene(model: Any, transcoders: TranscoderSet | CrossLayerTranscoder, tokens: Tensor,
              edits: Mapping[tuple[int, int, int], float], *, freeze_attention: bool = False) -> Intervened:
    """Run the *replacement model* of ``tokens`` [S] with features clamped: ``edits`` maps
    (layer, position, feature) to the activation it takes (0: ablated; ``2 * a``: doubled).

    Each MLP that has a transcoder computes ``decode(encode(xn)) + error``, its features live (so an
    edit moves every feature downstream, attention and norms live too) and its error frozen at its
    value on the unedited prompt; so with no edits this is the model exactly. ``freeze_attention``:
    every head attends as on the unedited prompt (its values still move), the attribution graph's
    own assumption, so what is left between an edit and its target is the norms and the features
    in between. An attribution graph's edge is the first-order, direct part of what an edit does
    here (`acdc.attribution_graph`). A cross-layer transcoder (reading the normed MLP input): MLP j computes
    every layer's features' writes into j (`CrossLayerTranscoder.writes`), b_dec[j] and its skip paths, each layer's
    features live on its own input, plus j's frozen error.
    """
    tf = Transformer.of(model)
    transcoders.check_model(tf)
    tokens = tokens.reshape(1, -1).to(tf.device)
    layers = transcoders.layers
    clean = tf.mlp_io(tokens, layers)
    clt = transcoders if isinstance(transcoders, CrossLayerTranscoder) else None
    if clt is not None:
        if clt.cfg.reads != "normed":
            raise ValueError("intervene edits cross-layer features that read the MLP's normed input; this CLT reads the "
                             "residual stream before the norm")
        recon = clt(torch.stack([clean[layer][0][0] for layer in layers]).to(clt.W_enc.dtype)).to(tf.dtype)
        errors = {layer: clean[layer][1][0] - recon[layer] for layer in layers}
    else:
        ts = cast(TranscoderSet, transcoders)
        errors = {layer: clean[layer][1][0] - ts[layer](clean[layer][0][0].to(ts[layer].W_enc.dtype)).to(tf.dtype) for layer in layers}
    by_layer: dict[int, list[tuple[int, int, float]]] = {}
    for (layer, pos, f), value in edits.items():
        if layer not in errors:
            raise ValueError(f"edit of layer {layer}: the transcoders cover layers {layers}")
        by_layer.setdefault(int(layer), []).append((int(pos), int(f), float(value)))
    pre: dict[int, Tensor] = {}
    acts: dict[int, Tensor] = {}
    read: dict[int, Tensor] = {}  # a CLT's: what each layer's features read in this run (its skip paths too)

    def crossing(layer: int):
        c = clt
        assert c is not None

        def fn(xn: Tensor) -> Tensor:
            x = xn[0].to(c.W_enc.dtype)
            pre[layer], read[layer] = x @ c.W_enc[layer], x
            a = c.encode(layer, x)
            for pos, f, value in by_layer.get(layer, ()):
                a[pos, f] = value
            acts[layer] = a
            return (c.decode_layer(layer, acts, read).to(tf.dtype) + errors[layer])[None]
        return fn

    def replaced(layer: int):
        if clt is not None:
            return crossing(layer)
        t = cast(TranscoderSet, transcoders)[layer]

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


@dataclass(frozen=True)
class Generated:
    """A continuation of a prompt: ``tokens`` [S + n] the prompt and what followed, ``new`` [n] what followed,
    ``text`` its decoding (None without a tokenizer)."""

    tokens: Tensor
    new: Tensor
    text: str | None


def context_room(tf: Transformer, n_tokens: int) -> int | None:
    """How many tokens may follow ``n_tokens`` in a model with learned positions (its W_pos rows), None without."""
    if tf.arch.position_embedding != "standard":
        return None
    return max(0, int(tf.w["W_pos"].shape[0]) - n_tokens)


@torch.no_grad()
def generate(model: Any, prompt: Any, *, transcoders: TranscoderSet | CrossLayerTranscoder | None = None,
             interventions: Sequence[Intervention | Mapping[str, Any]] = (), max_new_tokens: int = 20,
             temperature: float = 0.0, seed: int = 0, tokenizer: Any = None) -> Generated:
    """Continue ``prompt`` (text, or token ids [S]) with transcoder features edited at every step: what a
    feature does to what the model says (circuit-tracer's ``feature_intervention_generate``).

    Each intervention names a feature (``m3.f17``, of ``transcoders``' layer 3) and an ``op``: "clamp" sets its
    activation to ``value``, "scale" multiplies it, "ablate" sets it to zero; at ``positions`` of the prompt
    (None: every position, the generated ones included). The model runs whole (attention, norms, MLPs live);
    an edited feature's MLP output moves by (new - old activation) times its decoder row, the feature's
    activation read from the MLP's live input at every step. With a cross-layer transcoder (`CrossLayerTranscoder`,
    reading the MLP's normed input), a feature of layer L moves the output of every MLP j >= L by what it writes into
    j at its new activation minus at its old (`CrossLayerTranscoder.writes`: (new - old) times its decoder into j,
    and with offsets its offset's share when it starts or stops firing). Greedy with ``temperature`` 0, else sampled (``seed``). No interventions:
    the model's own greedy continuation.
    """
    tf = Transformer.of(model)
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if isinstance(prompt, str):
        if tok is None:
            raise ValueError("a text prompt needs a tokenizer: pass tokenizer= or token ids")
        ids = torch.tensor(tok.encode(prompt), dtype=torch.long)
    else:
        ids = torch.as_tensor(prompt, dtype=torch.long).reshape(-1)
    if ids.numel() == 0:
        raise ValueError("the prompt is empty: give the text (or token ids) to continue")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    room = context_room(tf, int(ids.numel()))
    if room is not None and max_new_tokens > room:
        raise ValueError(f"the model's context holds {int(ids.numel()) + room} tokens (learned positions): at most {room} "
                         f"new tokens after this {int(ids.numel())}-token prompt, not {max_new_tokens}")
    items = [Intervention.from_dict(x) for x in interventions]
    by_layer: dict[int, list[tuple[int, Intervention]]] = {}
    clt = transcoders if isinstance(transcoders, CrossLayerTranscoder) else None
    layers = [] if transcoders is None else list(range(clt.cfg.n_layers)) if clt is not None else transcoders.layers
    for it in items:
        node = node_of(it.node)
        if node.kind is not FEATURE or transcoders is None or node.layer not in layers:
            have = "no transcoders were given" if transcoders is None else f"the transcoders cover layers {layers}"
            raise ValueError(f"{it.node}: generate edits transcoder features (m{{L}}.f{{i}}) of the given transcoders; {have}")
        n = clt.cfg.n_features if clt is not None else transcoders[node.layer].n_features  # type: ignore[index]
        if not 0 <= node.head < n:
            raise ValueError(f"{it.node}: layer {node.layer}'s transcoder has features 0-{n - 1}")
        by_layer.setdefault(node.layer, []).append((node.head, it))
    if clt is not None:
        if clt.cfg.reads != "normed":
            raise ValueError("generate edits cross-layer features that read the MLP's normed input; this CLT reads the "
                             "residual stream before the norm")
        if clt.cfg.n_layers != tf.arch.n_layers or clt.cfg.d_model != tf.arch.d_model:
            raise ValueError(f"this CLT has {clt.cfg.n_layers} layers of width {clt.cfg.d_model}; the model has "
                             f"{tf.arch.n_layers} of width {tf.arch.d_model}")
    elif transcoders is not None:
        transcoders.check_model(tf)
    S = int(ids.numel())

    def new_acts(acts: Tensor, edits: list[tuple[int, Intervention]], P: int) -> Tensor:
        """[1, P, k] the edited features' activations after the edits (``acts``: before)."""
        new = acts.clone()
        for j, (_, it) in enumerate(edits):
            at = slice(None) if it.positions is None else [p for p in it.positions if p < min(S, P)]
            value = 0.0 if it.op == "ablate" else it.value
            new[0, at, j] = value if it.op != "scale" else acts[0, at, j] * value
        return new

    def cross_layer_edits() -> dict[int, Callable[[Tensor], Tensor]]:
        """One forward's MLP edits for a CLT: layer L's edited features' (new - old) activations, kept as its MLP
        runs, move every later MLP's output through their decoders into that layer."""
        c = clt
        assert c is not None
        moved: dict[int, tuple[Tensor, Tensor]] = {}  # source layer -> [1, P, k] old and new activations, this forward

        def at(layer: int) -> Callable[[Tensor], Tensor]:
            def fn(xn: Tensor) -> Tensor:
                out = tf.mlp_normed(layer, xn)
                if layer in by_layer:
                    feats = torch.tensor([f for f, _ in by_layer[layer]], device=c.W_enc.device)
                    acts = c.encode(layer, xn.to(c.W_enc.dtype)).index_select(-1, feats)
                    moved[layer] = (acts, new_acts(acts, by_layer[layer], xn.shape[1]))
                for source, (old, new) in moved.items():
                    feats = torch.tensor([f for f, _ in by_layer[source]], device=c.W_enc.device)
                    with torch.no_grad():
                        diff = c.writes(source, layer, new, feats) - c.writes(source, layer, old, feats)
                    out = out + diff.to(device=out.device, dtype=out.dtype)
                return out
            return fn
        return {layer: at(layer) for layer in range(min(by_layer, default=tf.arch.n_layers), tf.arch.n_layers)}

    def edited(layer: int) -> Callable[[Tensor], Tensor]:
        t = transcoders[layer]  # type: ignore[index]
        feats = torch.tensor([f for f, _ in by_layer[layer]], device=tf.device)

        def fn(xn: Tensor) -> Tensor:  # [1, P, d] the MLP's normed input -> its output with the edits
            out = tf.mlp_normed(layer, xn)
            acts = t.encode_features(xn.to(t.W_enc.dtype), feats.to(t.W_enc.device)).to(xn.dtype)  # [1, P, k]
            rows = t.W_dec.detach().index_select(0, feats.to(t.W_dec.device)).to(device=out.device, dtype=out.dtype)
            return out + (new_acts(acts, by_layer[layer], xn.shape[1]) - acts) @ rows
        return fn

    gen = torch.Generator().manual_seed(seed)
    seq = ids.to(tf.device)
    for _ in range(max_new_tokens):
        mlps = cross_layer_edits() if clt is not None else {layer: edited(layer) for layer in by_layer}
        logits = tf.logits_with_edits(seq[None], mlps=mlps,
                                      rows=torch.tensor([[seq.numel() - 1]], device=tf.device))[0].float().cpu()
        if temperature > 0:
            nxt = torch.multinomial((logits / temperature).softmax(-1), 1, generator=gen)[0]
        else:
            nxt = logits.argmax()
        seq = torch.cat([seq, nxt.reshape(1).to(seq.device)])
    out = seq.cpu()
    new = out[S:]
    return Generated(out, new, None if tok is None else tok.decode(new.tolist()))
