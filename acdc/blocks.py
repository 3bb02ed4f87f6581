"""The graph's view of the model's layer loop: a list of blocks, walked by every pass over a graph.

A *block* is the graph's view of one part of the model's layer loop (`Transformer.parts`): a
layer's attention heads, or its MLP (whole, or split into factored units such as neurons). It knows the residual stream it reads (``stream``: ``2 * layer``
before the layer's heads, ``2 * layer + 1`` after them), the sources upstream of it
(``[0, upto)``), the sources it writes (``sources``) and the destination rows it reads through
(``rows``). Three passes walk the same list, and a block does its part of each:

- `FullRun` (`Block.full`): a patched forward from scratch, every destination's input gathered
  from the kept sources (`Patcher.run`, `Patcher.forward`);
- `Job` (`Block.incremental`): an incremental propagation against a reference state, only nodes
  whose inputs change are recomputed (`Patcher.propagate`, ACDC's search);
- `GradPass` (`Block.grad_forward`, `Block.grad_inputs`): one forward with autograd and one
  backward, giving the metric's gradient at every destination's input (`Patcher.input_gradients`,
  EAP and EAP-IG).

A new kind of node becomes one new block class (`blocks_of` picks the block of each layer's MLP
from the graph's ``mlp_units``: `MLP_ENGINES` holds the factored kinds).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from .graph import Graph
from .inputs import Ablation
from .model import HeadsPart, MLPPart, Part, Transformer, scale_gradient
from .transcoders import FeatureDictionary

__all__ = ["GIM", "MLP_ENGINES", "Block", "FullRun", "GradPass", "HeadsBlock", "Job", "MLPBlock", "MLPUnits", "UnitsBlock", "blocks_of",
           "channels_of", "extras_of", "is_cross_layer", "per_channel", "rows_of", "units_of", "weighted_rows"]


class MLPUnits(Protocol):
    """How the engine runs a layer's MLP when the graph splits it into units stored *factored*
    (an activation per token times a fixed row of d_model), made by the factory registered in
    `MLP_ENGINES` under the graph's ``mlp_units`` name (`acdc.neurons` registers "neurons",
    `acdc.feature_nodes` "transcoders").

    Factored units never exist as [batch, pos, d_model] tensors: a destination's input gets
    ``sum_i w_i (a_i - A_i) row_i`` over its `rows` (`weighted_rows`). A layer's sources are its
    factored units first (`layer_units` of them), then dense *extras* computed with them (a
    transcoder's error and skip nodes; `extras`).

    Cross-layer units (a cross-layer transcoder's features, `acdc.feature_nodes.CrossLayerUnits`) write into
    their own layer's MLP output and every later one's; they say so with ``cross_layer = True`` (optional: a kind
    without it is per-layer). What a destination reads from one depends on the destination's layer, so their
    `rows` take ``at``, the reader's layer; and a layer's extras depend on the earlier layers' activations in the
    same run, so their `extras` take ``earlier`` and ``inputs``, those layers' MLP input streams (a cross-layer skip
    path reads them) (`rows_of` and `extras_of` call either kind).

    Units whose output is not one activation times one row say how many *channels* each has (optional
    ``channels``, default 1; `channels_of`): their `activations` are then [..., channels * n] (channel c of unit i
    at c * n + i) and their `rows` [channels * n, d], and unit i's output is the sum over its channels. A CLT with
    per-target offsets has two: the activation and whether it fires (its offsets' rows). Each channel is ablated
    and mixed as the unit's output is (resample: the corrupt run's; mean: the mean over prompts), so the engine
    weighs every channel of a unit by its edge's weight (`per_channel`).
    """

    def layer_units(self, layer: int) -> int | None:
        """How many of the layer's MLP sources are factored units (None: the MLP stays one whole node)."""
        ...

    def extras(self, tf: Transformer, layer: int, x: Tensor, acts: Tensor) -> Tensor | None:
        """[n_extra, ..., d_model] the outputs of the layer's dense extras on MLP input stream x
        [..., d_model], given its units' activations ``acts`` [..., n_units]; None: it has none (cross-layer units
        also take ``earlier``: each earlier factored layer's activations [..., n] in the same run)."""
        ...

    def activations(self, tf: Transformer, layer: int, x: Tensor) -> Tensor:
        """[..., n_units] the units' activations for MLP input x [..., d_model]."""
        ...

    def rows(self, tf: Transformer, layer: int) -> Tensor:
        """[n_units, d_model] what each unit writes per unit of activation (a neuron's W_out row, a
        feature's decoder row): every pass sums activations against them, and attribution reads gradients
        through them (cross-layer units take ``at``: what each has written once the MLPs before layer ``at`` have
        run, for a destination of layer ``at``; ``n_layers`` for the logits)."""
        ...

    def bias(self, tf: Transformer, layer: int) -> Tensor | None:
        """[d_model] what the MLP adds outside every unit (never ablated), or None."""
        ...


MLP_ENGINES: dict[str, Callable[[Graph, Transformer, FeatureDictionary | None], MLPUnits]] = {}


def units_of(g: Graph, tf: Transformer, transcoders: FeatureDictionary | None = None) -> MLPUnits | None:
    """The engine of the graph's factored MLP units (None: every MLP is whole); ``transcoders``: the
    dictionary that computes a feature graph's features (the graph holds their layout only)."""
    if not g.split_mlps:
        return None
    make = MLP_ENGINES.get(g.mlp_units)
    if make is None:
        raise ValueError(f"no engine for MLP units {g.mlp_units!r}; import the module that registers it")
    return make(g, tf, transcoders)


def is_cross_layer(units: MLPUnits | None) -> bool:
    """Whether ``units`` write into later layers too (their optional ``cross_layer``; see `MLPUnits`)."""
    return bool(getattr(units, "cross_layer", False))


def channels_of(units: MLPUnits | None) -> int:
    """How many activation channels each of ``units`` has (their optional ``channels``; see `MLPUnits`)."""
    return int(getattr(units, "channels", 1))


def per_channel(weights: Tensor, channels: int) -> Tensor:
    """Edge weights [R, n, ...] of n units as weights of their channels [R, channels * n, ...] (`MLPUnits`)."""
    return weights if channels == 1 else torch.cat([weights] * channels, 1)


def rows_of(units: MLPUnits, tf: Transformer, layer: int, at: int) -> Tensor:
    """[n, d] what layer's units write, as a destination of layer ``at`` reads it (per-layer units: their rows)."""
    return units.rows(tf, layer, at) if is_cross_layer(units) else units.rows(tf, layer)  # type: ignore[call-arg]


def extras_of(units: MLPUnits, tf: Transformer, layer: int, x: Tensor, acts: Tensor, earlier: Mapping[int, Tensor],
              inputs: Mapping[int, Tensor] | None = None) -> Tensor | None:
    """The layer's extras (`MLPUnits.extras`), cross-layer units also given the earlier layers' activations and MLP
    input streams in the same run (``inputs``: where a cross-layer skip path reads)."""
    if is_cross_layer(units):
        return units.extras(tf, layer, x, acts, earlier, inputs)  # type: ignore[call-arg]
    return units.extras(tf, layer, x, acts)


def weighted_rows(rows: Tensor, weights: Tensor, values: Tensor) -> Tensor:
    """[R, T, d] sum_i weights[r, i] values[i, t] rows[i], for rows [n, d], weights [R, n], values [n, T]."""
    w = weights.to(rows.dtype)
    return torch.stack([values.T @ (rows * w[r][:, None]) for r in range(w.shape[0])])


class Engine(Protocol):
    """What the passes read of the patcher (`acdc.patching.Patcher`): the model, graph, caches.

    ``batch_index`` [B, 1] and ``answer_pos`` [B, P] pick the answer rows; ``answers_only_dst[r]``:
    destination r is read at the answer rows only (the last layer's queries and MLP, the logits);
    ``units``: the factored MLP units' engine (None: every MLP whole), with ``factored_layers``
    (layer -> its units' source indices) and ``unit_ablation`` (layer -> [n, B|1, S] ablated
    activations, None for zero); ``dense_slots(cols)``: the rows of dense tensors (``abl``, a
    state's ``out``) of dense graph sources ``cols``.
    """

    tf: Transformer
    graph: Graph
    ablation: Ablation
    abl: Tensor | None
    upstream: Tensor
    answer_pos: Tensor
    n_pos: int
    cache_bytes: int
    batch_index: Tensor
    answers_only_dst: list[bool]
    live_rows: Tensor | None
    factored_layers: dict[int, range]
    unit_ablation: list[Tensor | None]
    unit_mask: Tensor | None
    token_position: Tensor | None

    @property
    def units(self) -> MLPUnits | None: ...

    def at_answers(self, x: Tensor) -> Tensor: ...

    def rows_read(self, keep: Tensor) -> tuple[Tensor, Tensor]: ...

    def full_rows(self, x: Tensor) -> bool: ...

    def stream_base(self, stream: int) -> Tensor: ...

    def head_ablation(self, layer: int) -> Tensor: ...

    def dense_slots(self, cols: Tensor) -> Tensor: ...

    def unit_rows(self, layer: int, at: int = -1) -> Tensor: ...


class RefState(Protocol):
    """What an incremental pass reads of its reference state (`acdc.patching.PatchState`)."""

    keep: Tensor
    out: Tensor
    resid_pre: Tensor
    resid_mid: Tensor
    inputs: OrderedDict
    acts: dict[int, Tensor]

    def rows_read(self) -> tuple[list[bool], list[bool]]: ...


class Mixing(Protocol):
    """What a block reads and writes in a mixed run (`acdc.mixing.MixedRun`, Edge Pruning's forward)."""

    @property
    def p(self) -> Engine: ...

    def inputs(self, rows: list[int], upto: int, stream: int) -> Tensor:
        """[R, B, S, d] the rows' mixed inputs from the sources [0, upto) of ``stream``."""
        ...

    def push(self, sources: range, out: Tensor) -> None:
        """Outputs [n, B, S, d] of consecutive dense sources, carrying their autograd graphs."""
        ...

    def push_units(self, layer: int, acts: Tensor, x: Tensor) -> None:
        """A factored layer's unit activations [B, S, n_units] on its MLP input stream x [B, S, d], carrying their
        autograd graphs."""
        ...

    @property
    def unit_acts(self) -> dict[int, Tensor]:
        """The factored layers' activations pushed so far, layer -> [B, S, n] (cross-layer units' extras read them)."""
        ...

    @property
    def unit_inputs(self) -> dict[int, Tensor]:
        """The factored layers' MLP input streams pushed so far, layer -> [B, S, d] (cross-layer skip paths read them)."""
        ...


# ---------------------------------------------------------------------- blocks
class Block:
    """One component of the layer loop (see the module docstring)."""

    layer: int
    stream: int
    upto: int
    sources: range
    rows: list[int]

    def full(self, run: FullRun) -> None:
        raise NotImplementedError

    def incremental(self, job: Job) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no incremental pass yet; Patcher.run / forward evaluate it")

    def grad_forward(self, gp: GradPass, x: Tensor) -> Tensor:
        """Its output added to the stream [B, S, d] on input stream x, keeping what `grad_inputs` needs."""
        raise NotImplementedError(f"{type(self).__name__} has no gradient pass yet")

    def mixed(self, mix: Mixing) -> None:
        """Its part of a mixed run: read its rows' mixed inputs, push its sources' outputs (differentiable)."""
        raise NotImplementedError(f"{type(self).__name__} has no mixed pass yet")

    def grad_inputs(self, gp: GradPass) -> Iterator[tuple[Tensor, int, Tensor]]:
        """After the backward: (destination rows [R], upto, gradients at their inputs [R, B, S, d])."""
        raise NotImplementedError(f"{type(self).__name__} has no gradient pass yet")


class HeadsBlock(Block):
    """The attention heads of one layer (destination rows q, k, v per head)."""

    def __init__(self, g: Graph, part: HeadsPart):
        layer = self.layer = part.layer
        self.stream = part.stream
        first = g.head_src(layer)
        self.upto, self.sources = first, range(first, first + g.n_heads)
        self.trios = g.head_rows(layer)
        self.rows = [r for t in self.trios for r in t]
        self.last = layer == g.n_layers - 1  # the last layer's queries are read at the answer rows only

    def full(self, run: FullRun) -> None:
        p, g, tf = run.p, run.p.graph, run.p.tf
        H, first, B, S, d = len(self.sources), self.sources.start, run.B, run.S, run.d
        trios = self.trios
        live = [h for h in range(H) if run.used[first + h] and not (run.skip_unfed and not any(run.fed[r] for r in trios[h]))]
        run.X[run.slot(slice(first, first + H))] = 0
        if not live:
            return
        rows = [r for h in live for r in (trios[h] if g.split_qkv else trios[h][:1])]
        x, inv = run.gather(rows, self.upto, p.stream_base(self.stream))
        if len(x) == 1:  # every live head reads the same input: the shared (one-matmul) path
            xq = xk = xv = x[0]
        else:
            x = x if inv is None else x[inv]
            xq, xk, xv = x.view(len(live), 3, B, S, d).unbind(1) if g.split_qkv else (x, x, x)
        hs = torch.tensor(live, device=tf.device)
        run.put(hs + first, tf.attention(self.layer, hs, xq, xk, xv))

    def incremental(self, job: Job) -> None:
        """Recompute the heads whose inputs changed and whose output is used."""
        p = job.p
        rows, base = self.trios, self.sources.start
        hit = job.affected_many(self.rows)
        todo = []
        for h, trio in enumerate(rows):
            if not any(hit[3 * h : 3 * h + 3]):
                continue
            if bool(job.alive[base + h]):
                todo.append(h)
            else:
                job.dropped.extend(trio)
        if not todo:
            return
        # queries at the answer rows only: in the last layer, or where nothing the circuit keeps reads
        # these heads' outputs elsewhere (their outputs' other rows stay stale, and nothing reads them)
        last = self.last or all(job.ans_src[base + h] for h in todo)
        K, B = job.K, len(p.batch_index)
        stream = self.stream
        shared_full = job.stream_value(stream, False)
        shared_q = job.stream_value(stream, True) if last else shared_full
        shared, own = [], []
        for h in todo:
            rq, rk, rv = rows[h]
            if rq == rk and last:  # one input for q, k, v: read q at the answer rows
                xk = xv = job.dst_input(rq, stream, False)
                xq = p.at_answers(xk) if xk is not shared_full else shared_q
            else:
                xq = job.dst_input(rq, stream, last)
                xk = job.dst_input(rk, stream, False)
                xv = job.dst_input(rv, stream, False)
            if xq is shared_q and xk is shared_full and xv is shared_full:
                shared.append(h)
            else:
                own.append((h, xq, xk, xv))
        q_pos = p.answer_pos.repeat(K, 1) if last else None
        outs, heads_done = [], []
        if shared:
            full = shared_full.expand(K, *shared_full.shape[-3:]).reshape(K * B, *shared_full.shape[-2:])
            q = shared_q.expand(K, *shared_q.shape[-3:]).reshape(K * B, *shared_q.shape[-2:])
            hs = torch.tensor(shared, device=p.tf.device)
            outs.append(p.tf.attention(self.layer, hs, q, full, full, q_pos=q_pos))
            heads_done.extend(shared)
        if own:
            def stack(i: int) -> Tensor:
                xs = [t[i].expand(K, *t[i].shape[-3:]) for t in own]
                return torch.stack(xs).reshape(len(own), K * B, *xs[0].shape[-2:])

            hs = torch.tensor([t[0] for t in own], device=p.tf.device)
            outs.append(p.tf.attention(self.layer, hs, stack(1), stack(2), stack(3), q_pos=q_pos))
            heads_done.extend(t[0] for t in own)
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        out = out.view(len(heads_done), K, B, *out.shape[-2:])
        srcs = [base + h for h in heads_done]
        job.add_deltas(srcs, out - job.src_ref(srcs, last)[:, None])

    def mixed(self, mix: Mixing) -> None:
        H = len(self.sources)
        x = mix.inputs(self.rows, self.upto, self.stream)  # [3 H, B, S, d]: q, k, v of each head
        x = x.view(H, 3, *x.shape[1:])
        tf = mix.p.tf
        heads = torch.arange(H, device=tf.device)
        mix.push(self.sources, tf.attention(self.layer, heads, x[:, 0], x[:, 1], x[:, 2]))

    def grad_forward(self, gp: GradPass, x: Tensor) -> Tensor:
        tf, layer = gp.p.tf, self.layer
        heads = torch.arange(len(self.sources), device=tf.device)
        ln = tf.ln(x, "ln1", layer, frozen=gp.frozen)  # one LayerNorm for q, k and v (less to keep for backward)
        proj = [tf.project_linear(layer, heads, ln, w) for w in "QKV"]  # `project_grad` is their backward
        for t in proj:
            t.retain_grad()
        full: list[Tensor] = []
        if tf.arch.qk_norm_all:  # each head's own copy of every head's projection, so its RMS's gradient is its own
            for w in "QK":
                f = tf.qk_full(layer, w, ln)  # [B, S, H, dh]
                full.append(f[None].expand(len(heads), *f.shape))
                full[-1].retain_grad()
            q, k = (t * tf.qk_all_scale(layer, w, f, heads) for t, f, w in zip(proj, full, "QK", strict=False))
            v = proj[2]
        else:
            q, k, v = (tf.qk_normed(layer, heads, t, w, ln) for t, w in zip(proj, "QKV", strict=True))
        r = gp.rules
        if r is not None:
            q, k, v = scale_gradient(q, r.q_scale), scale_gradient(k, r.k_scale), scale_gradient(v, r.v_scale)
        out = gp.replaced(self.sources, tf.attend(layer, heads, q, k, v,
                                                  backward_temperature=1.0 if r is None else r.softmax_temperature))
        gp.heads[self.layer] = (x, proj, full)
        y = out.sum(0) + tf.attn_bias(layer)
        if tf.arch.post_norms:  # where this pass linearises the layer's norm after attention (`SourceValues.dot`)
            gp.head_sums[layer] = y.detach()
        return tf.post_attn(layer, y)

    def grad_inputs(self, gp: GradPass) -> Iterator[tuple[Tensor, int, Tensor]]:
        tf, layer = gp.p.tf, self.layer
        x, proj, full = gp.heads.pop(layer)
        rows = torch.tensor(self.trios)  # [H, 3] destination rows (q, k, v)
        unsplit = None
        for j, (t, w) in enumerate(zip(proj, "QKV", strict=True)):
            g = tf.project_grad(layer, w, _grad(t))
            if j < len(full):  # a QK norm over the whole projection: its RMS's share, through every head's weights
                g = g + tf.project_grad_all(layer, w, _grad(full[j]))
            dx = tf.ln_vjp(x.detach(), g, "ln1", layer, frozen=gp.frozen)  # [H, B, S, d]
            if gp.p.graph.split_qkv:
                yield rows[:, j], self.upto, dx
            else:
                unsplit = dx if unsplit is None else unsplit.add_(dx)
        if unsplit is not None:
            yield rows[:, 0], self.upto, unsplit


class MLPBlock(Block):
    """A whole MLP: one source, one destination row."""

    def __init__(self, g: Graph, part: MLPPart):
        layer = self.layer = part.layer
        self.stream = part.stream  # parallel attention and MLP: the stream before the heads
        self.upto = g.head_src(layer) + (0 if g.parallel_attn_mlp else g.n_heads)
        self.sources = g.mlp_sources(layer)
        self.row = g.mlp_row(layer)
        self.rows = [self.row]

    def full(self, run: FullRun) -> None:
        m = self.sources.start
        if run.used[m] and not (run.skip_unfed and not run.fed[self.row]):
            m_in = run.gather([self.row], self.upto, run.p.stream_base(self.stream))[0][0]
            run.put(slice(m, m + 1), run.p.tf.mlp(self.layer, m_in)[None])
        else:
            run.X[run.slot(slice(m, m + 1))] = 0

    def incremental(self, job: Job) -> None:
        src, row = self.sources.start, self.row
        if not job.affected_many([row])[0]:
            return
        if not bool(job.alive[src]):
            job.dropped.append(row)
            return
        ans = job.p.answers_only_dst[row] or job.ans_src[src]  # per token: the rows its readers need
        x = job.dst_input(row, self.stream, ans)
        x = x.expand(job.K, *x.shape[-3:])
        ref = job.src_ref([src], ans)[:, None]
        rows = None if ans else job.p.live_rows
        if rows is None:
            delta = job.p.tf.mlp(self.layer, x)[None] - ref
        else:  # the tokens after each prompt's last scored one feed nothing the metric sees: no change there
            K, B, S, d = x.shape
            flat = x.reshape(K, B * S, d).index_select(1, rows)
            delta = torch.zeros(1, K, B * S, d, dtype=x.dtype, device=x.device)
            delta[:, :, rows] = job.p.tf.mlp(self.layer, flat)[None] - ref.reshape(1, 1, B * S, d)[:, :, rows]
            delta = delta.view(1, K, B, S, d)
        job.add_deltas([src], delta)

    def mixed(self, mix: Mixing) -> None:
        m_in = mix.inputs([self.row], self.upto, self.stream)[0]
        mix.push(self.sources, mix.p.tf.mlp(self.layer, m_in)[None])

    def grad_forward(self, gp: GradPass, x: Tensor) -> Tensor:
        probe = torch.zeros_like(x, requires_grad=True)  # its gradient is the one at the MLP's input
        gp.probes[self.layer] = probe
        return gp.shifted(self.layer, gp.replaced(self.sources, gp.p.tf.mlp(self.layer, x + probe, frozen_norm=gp.frozen)))

    def grad_inputs(self, gp: GradPass) -> Iterator[tuple[Tensor, int, Tensor]]:
        probe = gp.probes.pop(self.layer)
        yield torch.tensor([self.row]), self.upto, _grad(probe)[None]


class UnitsBlock(MLPBlock):
    """An MLP split into factored units (neurons, transcoder features): their activations are
    stored per unit, and a destination's input gets their weighted sum from the units' engine
    (`MLPUnits`); the layer's dense extras (a transcoder's error and skip nodes) are ordinary rows of X."""

    def __init__(self, g: Graph, part: MLPPart, units: MLPUnits, n_units: int):
        super().__init__(g, part)
        self.units = units
        self.factored = range(self.sources.start, self.sources.start + n_units)
        self.extra = range(self.factored.stop, self.sources.stop)

    def full(self, run: FullRun) -> None:
        r, row, extra = self.sources, self.row, self.extra
        cross = is_cross_layer(self.units)  # later layers' extras read this layer's activations: always computed
        if cross or (any(run.used[r.start : r.stop]) and not (run.skip_unfed and not run.fed[row])):
            tf = run.p.tf
            m_in = run.gather([row], self.upto, run.p.stream_base(self.stream))[0][0]
            acts = self.units.activations(tf, self.layer, m_in)  # [B, S, n]
            abl = run.abl_units[self.layer]
            a = acts.movedim(-1, 0)
            run.F[self.layer] = (a if abl is None else a - abl).flatten(1)  # [n, B * S] (n may be 0: a layer with no chosen feature)
            if cross:
                run.acts[self.layer], run.inputs[self.layer] = acts, m_in
            if len(extra):
                out = extras_of(self.units, tf, self.layer, m_in, acts, run.acts, run.inputs)
                assert out is not None and len(out) == len(extra)
                run.put(slice(extra.start, extra.stop), out)
        else:
            run.F.pop(self.layer, None)  # every unit at its ablation value: no contribution
            if len(extra):
                run.X[run.slot(slice(extra.start, extra.stop))] = 0

    def _whole_run_only(self, what: str) -> None:
        if is_cross_layer(self.units):
            raise NotImplementedError(f"{what} does not run graphs of cross-layer transcoder features yet; patched runs "
                                      "from scratch do (Patcher.logits, faithfulness, ACDC, EAP, Edge Pruning)")

    def mixed(self, mix: Mixing) -> None:
        m_in = mix.inputs([self.row], self.upto, self.stream)[0]
        tf = mix.p.tf
        acts = self.units.activations(tf, self.layer, m_in)  # [B, S, n], differentiable in m_in
        mix.push_units(self.layer, acts, m_in)
        if len(self.extra):
            out = extras_of(self.units, tf, self.layer, m_in, acts, mix.unit_acts, mix.unit_inputs)
            assert out is not None
            mix.push(self.extra, out)

    def incremental(self, job: Job) -> None:
        """Recompute the layer's units (activations) and extras (dense) when the MLP's input changed.

        A unit or extra with no kept outgoing edge keeps its stale value (it is on the ablated side of
        every destination, as a dense source that is not recomputed)."""
        self._whole_run_only("the incremental engine")
        r, row = self.sources, self.row
        if not job.affected_many([row])[0]:
            return
        alive = job.alive[r.start : r.stop]
        if not bool(alive.any()):
            job.dropped.append(row)
            return
        p, tf = job.p, job.p.tf
        ans = p.answers_only_dst[row] or not any(job.full_src[r.start : r.stop])  # the rows its readers need
        x = job.dst_input(row, self.stream, ans)
        x = x.expand(job.K, *x.shape[-3:])
        acts = self.units.activations(tf, self.layer, x)  # [K, B, p, n]
        n = len(self.factored)
        new = acts.movedim(-1, 1)  # [K, n, B, p]
        dacts = new - job.unit_ref(self.layer, ans)[None]
        dead = ~alive[:n]
        if bool(dead.any()):
            dacts[:, dead] = 0
        job.add_unit_deltas(self.layer, dacts)
        live = [j for j, kept in enumerate(alive[n:].tolist()) if kept]
        if live:
            out = self.units.extras(tf, self.layer, x, acts)
            assert out is not None and len(out) == len(self.extra)
            srcs = [self.extra[j] for j in live]
            job.add_deltas(srcs, out[live] - job.src_ref(srcs, ans)[:, None])


def blocks_of(g: Graph, parts: list[Part], units: MLPUnits | None) -> list[Block]:
    """The graph's view of the model's layer loop (``parts``, `Transformer.parts`), in forward order:
    each layer's heads, then its MLP (whole, or factored units by ``units``, `units_of`)."""
    out: list[Block] = []
    for part in parts:
        if isinstance(part, HeadsPart):
            out.append(HeadsBlock(g, part))
        elif isinstance(part, MLPPart):
            n = None if units is None else units.layer_units(part.layer)
            out.append(MLPBlock(g, part) if n is None else UnitsBlock(g, part, units, n))  # type: ignore[arg-type]
        else:
            raise NotImplementedError(f"the graph engine has no block for {type(part).__name__} yet (acdc.blocks)")
    return out


# ---------------------------------------------------------------------- full (from-scratch) run
class FullRun:
    """One patched forward from scratch: X [n_dense, B, S, d], each dense source's (output -
    ablation value) under ``keep``, and F, layer -> [n_units, B * S] the same for factored units.

    A node is computed only if some kept edge reads it (``used``), and (resample) only if some
    kept edge feeds it (``fed``): with every input ablated its output is its ablation value.
    """

    def __init__(self, p: Engine, keep: Tensor, groups: list[Tensor] | None, units: MLPUnits | None,
                 dense_cols: Tensor | None, dslot: Tensor | None, abl_units: list[Tensor | None] | None):
        tf, g = p.tf, p.graph
        self.p = p
        B, S = p.answer_pos.shape[0], p.n_pos
        self.B, self.S, self.d = B, S, tf.arch.d_model
        positional = groups is not None
        self.keep, self.dtype = keep, tf.dtype  # rows become float weights only when gathered (no dense float copy)
        n_dense = len(g.sources) if dense_cols is None else len(dense_cols)
        self.X = torch.empty(n_dense, B, S, self.d, dtype=tf.dtype, device=tf.device)
        self.F: dict[int, Tensor] = {}
        self.acts: dict[int, Tensor] = {}  # cross-layer units: each factored layer's activations [B, S, n] in this run
        self.inputs: dict[int, Tensor] = {}  # and its MLP input stream [B, S, d] (cross-layer skip paths read it)
        self.units, self.dense_cols, self.dslot, self.abl_units = units, dense_cols, dslot, abl_units or []
        self.groups: list[Tensor | None] = list(groups) if groups is not None else [None]  # plain: one group, every token
        any_pos = keep.any(-1) if positional else keep
        self.used = any_pos.any(0).tolist()
        self.fed = any_pos.any(1).tolist()
        self.skip_unfed = p.ablation == "resample"
        self.post_norms = tf.arch.post_norms  # heads reach a destination through their layer's norm (Gemma 2/3)

    def slot(self, idx: slice | Tensor) -> slice | Tensor:
        """Rows of X of graph sources ``idx`` (the same indices unless some sources are factored)."""
        return idx if self.dslot is None else self.dslot[idx]

    def put(self, idx: slice | Tensor, out: Tensor) -> None:
        rows = self.slot(idx)
        abl = self.p.abl
        self.X[rows] = out if abl is None else out - abl[rows]

    @staticmethod
    def kept_columns(W: Tensor) -> Tensor | None:
        """The sources [k] some row of W [R, n] keeps, when they are few (a small circuit reads few
        sources, and the product then runs over those alone); None: most are kept, use them all."""
        cols = W.any(0).nonzero().squeeze(1)
        return cols if 2 * len(cols) <= W.shape[1] else None

    def product(self, Wp: Tensor, upto: int, idx: Tensor | None) -> Tensor:
        """[u, T * d] sum_u Wp[r, u] X_u over tokens ``idx`` (None: every token), over the kept columns only."""
        X = self.X
        cols = self.kept_columns(Wp)
        src = X[:upto] if cols is None else X.index_select(0, cols)
        if idx is not None:
            src = src.reshape(len(src), self.B * self.S, self.d).index_select(1, idx)
        return (Wp if cols is None else Wp[:, cols]) @ src.reshape(len(src), -1)

    def gather(self, rows: list[int], upto: int, base: Tensor) -> tuple[Tensor, Tensor | None]:
        """Distinct inputs [u, B, S, d] of the rows, and each row's index into them.

        Destinations with the same kept sources share one input (all-ablated or all-kept
        rows are common), so the product runs once per distinct row; an empty row is the
        all-ablated stream itself. Index None: the rows themselves, in order. Per position
        group, the product runs over that position's tokens (a plain graph: one group).
        """
        if self.post_norms:
            return self.post_norm_gather(rows, upto, base), None
        if self.units is not None:
            return self.factored_gather(rows, upto, base), None
        B, S, d, groups = self.B, self.S, self.d, self.groups
        W = self.keep[rows, :upto].to(self.dtype).reshape(len(rows), -1)
        uniq, inv = torch.unique(W, dim=0, return_inverse=True)
        if 2 * len(uniq) > len(rows):  # little to share: one product, rows in order
            uniq, inv = W, None
        U = uniq.view(len(uniq), upto, len(groups))
        if not bool(U.any()):
            return base.expand(len(U), B, S, d), inv
        if len(groups) == 1:
            return self.product(U[..., 0], upto, None).view(-1, B, S, d) + base, inv
        flat_base = base.expand(B, S, d).reshape(B * S, d)
        out = torch.empty(len(U), B * S, d, dtype=self.X.dtype, device=self.X.device)
        for p, idx in enumerate(groups):
            Wp = U[:, :, p]
            out[:, idx] = flat_base[idx] if not bool(Wp.any()) else (
                self.product(Wp, upto, idx).view(len(U), -1, d) + flat_base[idx])
        return out.view(len(U), B, S, d), inv

    def post_norm_gather(self, rows: list[int], upto: int, base: Tensor) -> Tensor:
        """Inputs [R, B, S, d] of the rows in a post-norm family: the linear sources' sum (the input, the MLPs
        (each normed inside its node) or their units and extras) on ``base``, their all-ablated sum, plus, for each
        upstream layer, its norm after attention applied to the row's own mix of that layer's heads (every
        ablated head at its ablation value, every kept one at its output: `Patcher.head_ablation` plus the
        kept (O - A))."""
        p, g = self.p, self.p.graph
        tf = p.tf
        B, S, d, T = self.B, self.S, self.d, self.B * self.S
        R = len(rows)
        W = self.keep[rows, :upto].to(self.dtype)
        W = W if W.dim() == 3 else W[..., None]  # [R, upto, positions]
        heads = [range(g.head_src(layer), g.head_src(layer) + g.n_heads) for layer in range(g.n_layers)]
        heads = [r for r in heads if r.stop <= upto]
        lin = W.clone()
        for r in heads:
            lin[:, r.start : r.stop] = 0
        flat_base = base.expand(B, S, d).reshape(T, d)
        X = self.X.reshape(len(self.X), T, d)
        out = torch.empty(R, T, d, dtype=self.X.dtype, device=self.X.device)
        for q, idx in enumerate(self.groups):
            at = flat_base if idx is None else flat_base[idx]
            if self.units is not None:  # the dense linear sources and the factored units, over this position's tokens
                part = self._factored_part(lin[:, :, q], upto, idx, at.expand(R, *at.shape))
            else:
                cols = lin[:, :, q].any(0).nonzero().squeeze(1)
                src = X.index_select(0, cols) if idx is None else X.index_select(0, cols).index_select(1, idx)
                part = at.expand(R, *at.shape) if not len(cols) else \
                    at + (lin[:, cols, q] @ src.reshape(len(cols), at.numel())).view(R, -1, d)
            out[:, slice(None) if idx is None else idx] = part.reshape(R, -1, d)
        for layer, r in enumerate(heads):
            slots = torch.arange(r.start, r.stop, device=X.device)
            slots = slots if self.dslot is None else self.dslot[slots]
            y = p.head_ablation(layer).expand(B, S, d).reshape(1, T, d).repeat(R, 1, 1)
            for q, idx in enumerate(self.groups):
                w = W[:, r.start : r.stop, q]
                if bool(w.any()):
                    src = X.index_select(0, slots) if idx is None else X.index_select(0, slots).index_select(1, idx)
                    y[:, slice(None) if idx is None else idx] += (w @ src.reshape(len(r), -1)).view(R, -1, d)
            out += tf.post_attn(layer, y)
        return out.view(R, B, S, d)

    def factored_gather(self, rows: list[int], upto: int, base: Tensor) -> Tensor:
        """Inputs [R, B, S, d] of the rows when some sources are factored: the dense sources' product,
        plus each factored layer's sum_i w_i (a_i - A_i) row_i (per position group, over its tokens)."""
        assert self.units is not None and self.dense_cols is not None
        B, S, d = self.B, self.S, self.d
        W = self.keep[rows, :upto].to(self.dtype)
        if len(self.groups) == 1:
            return self._factored_part(W if W.dim() == 2 else W[..., 0], upto, None, base.expand(len(rows), B, S, d))
        flat_base = base.expand(B, S, d).reshape(B * S, d)
        out = torch.empty(len(rows), B * S, d, dtype=self.X.dtype, device=self.X.device)
        for p, idx in enumerate(self.groups):
            out[:, idx] = self._factored_part(W[:, :, p], upto, idx, flat_base[idx].expand(len(rows), -1, d))
        return out.view(len(rows), B, S, d)

    def _factored_part(self, W: Tensor, upto: int, idx: Tensor | None, base: Tensor) -> Tensor:
        """base [R, ..., d] + the kept sources' sum for weights W [R, upto], over tokens ``idx`` (None: all)."""
        assert self.units is not None and self.dense_cols is not None
        g, d = self.p.graph, self.d
        cols = self.dense_cols[self.dense_cols < upto]
        Wd = W[:, cols]
        out = base
        if bool(Wd.any()):
            X = self.X[: len(cols)]
            if idx is not None:
                X = X.reshape(len(cols), self.B * self.S, d).index_select(1, idx)
            out = (Wd @ X.reshape(len(cols), -1)).view(base.shape) + base
        at = g.mlps_before(upto) if is_cross_layer(self.units) else -1  # cross-layer units: the readers' layer
        c = channels_of(self.units)
        for layer_u, values in self.F.items():
            start = g.mlp_sources(layer_u).start
            Ws = per_channel(W[:, start : start + len(values) // c], c)  # empty when the layer is not upstream (W ends at upto)
            if bool(Ws.any()):
                v = values if idx is None else values.index_select(1, idx)
                out = out + weighted_rows(self.p.unit_rows(layer_u, at), Ws, v).view(base.shape)
        return out


# ---------------------------------------------------------------------- incremental run
class Job:
    """Bookkeeping of one propagation: changed sources, running stream change, new inputs."""

    def __init__(self, patcher: Engine, st: RefState, keep: Tensor, changed_rows: Tensor):
        self.p = patcher
        self.st = st
        self.keep = keep  # [K, n_dst, n_src], or [K, n_dst, n_src, n_positions] in a positional graph
        self.K = keep.shape[0]
        self.positional = keep.dim() == 4
        self.keep_any = keep.any(-1) if self.positional else keep  # [K, n_dst, n_src]: kept at some position
        self.changed_rows = changed_rows
        self.alive = self.keep_any.any(0).any(0)  # [n_src]: some candidate keeps an edge out of it
        # [n_src]: sources whose output the reference circuit reads at the answer rows only (their
        # changes are computed there alone; a removal can only shrink what is read, so the other rows
        # are never read again)
        live, full = st.rows_read()
        self.ans_src: list[bool] = [a and not b for a, b in zip(live, full, strict=True)]
        self.full_src: list[bool] = full  # sources the reference circuit reads at every row
        self.changed = torch.zeros(keep.shape[2], dtype=torch.bool, device=keep.device)
        self.delta: dict[int, Tensor] = {}  # source -> [K, B, p, d] change of its output
        self._delta_ans: dict[int, Tensor] = {}
        self._delta_full: dict[int, Tensor] = {}
        self.run: Tensor | None = None  # change of the unpatched stream so far [K, B, p, d]
        self.runs: dict[int, Tensor | None] = {}
        self._streams: dict[tuple[int, bool], Tensor] = {}
        self.new_inp: dict[int, Tensor] = {}  # inputs a commit will cache
        self.memo: dict[int, Tensor] = {}
        self.dropped: list[int] = []
        self.act_delta: dict[int, Tensor] = {}  # factored layer -> [K, n_units, B, p] change of its activations
        self._act_cache: dict[tuple[int, bool], Tensor] = {}
        self._dense_mask = None if patcher.unit_mask is None else ~patcher.unit_mask

    def affected_many(self, rows: list[int]) -> list[bool]:
        """Whether each destination's input differs from the reference."""
        r = torch.tensor(rows, device=self.keep.device)
        hit = self.changed_rows[r] | (self.keep_any[:, r] & self.changed).any(-1).any(0)
        return hit.tolist()

    def open_stream(self, stream: int) -> None:
        self.runs[stream] = self.run

    def stream_ref(self, stream: int, ans: bool) -> Tensor:
        """The reference state's unpatched stream [B, S|P, d]."""
        layer, mid = divmod(stream, 2)
        x = self.st.resid_mid[layer] if mid else self.st.resid_pre[layer]
        return self.p.at_answers(x) if ans else x

    def stream_base(self, stream: int, ans: bool) -> Tensor:
        """All-ablated stream [B|1, S|P, d] (every upstream source at its ablation value)."""
        p = self.p
        x = p.stream_base(stream)
        if ans:
            return p.at_answers(x.expand(len(p.batch_index), p.n_pos, -1))
        return x.expand(-1, p.n_pos, -1)

    def src_ref(self, srcs: list[int], ans: bool) -> Tensor:
        """Reference outputs [n, B, p, d] of some sources (answer rows only if ``ans``)."""
        out = self.st.out
        if self.p.unit_mask is not None:
            srcs = self.p.dense_slots(torch.tensor(srcs, device=out.device)).tolist()
        x = out[srcs[0] : srcs[-1] + 1] if srcs == list(range(srcs[0], srcs[-1] + 1)) else out[srcs]
        return self.p.at_answers(x) if ans else x

    def unit_ref(self, layer: int, ans: bool) -> Tensor:
        """Reference activations [n_units, B, S|P] of a factored layer (answer rows only if ``ans``)."""
        x = self.st.acts[layer]
        return self._rows_of(x, ans)

    def _rows_of(self, x: Tensor, ans: bool) -> Tensor:
        """[..., B|1, S, ] activations -> at the answer rows [..., B, P] if ``ans``."""
        if not ans:
            return x
        p = self.p
        b = p.batch_index if x.shape[-2] > 1 else torch.zeros_like(p.batch_index)
        return x[..., b, p.answer_pos]

    def _per_token(self, w: Tensor, ans: bool) -> Tensor:
        """Weights of some sources [K, n(, n_positions)] -> [K, n, 1, 1] (plain graph), or in a positional
        graph each token's weight, its position's: [K, n, B, S|P]."""
        if not self.positional:
            return w[:, :, None, None]
        tok = self.p.token_position  # [B, S] each token's position
        assert tok is not None
        if ans:
            tok = tok[self.p.batch_index, self.p.answer_pos]
        return w[:, :, tok]

    def _nonzero(self, w: Tensor) -> Tensor:
        """[n_src] the sources some candidate weighs (at some position)."""
        nz = w.ne(0).any(0)
        return nz.any(-1) if self.positional else nz

    def _unit_values(self, layer: int, idx: Tensor, ans: bool) -> Tensor:
        """Reference (activation - ablated activation) [n', B, S|P] of a factored layer's units ``idx``."""
        x = self.unit_ref(layer, ans).index_select(0, idx)
        abl = self.p.unit_ablation[layer]
        if abl is not None:
            x = x - self._rows_of(abl.index_select(0, idx), ans)
        return x

    def _unit_sum(self, layer: int, w: Tensor, idx: Tensor, values: Tensor) -> Tensor:
        """[K, B, p, d] sum_i w[k, i] values[k|0, i] row_i over the layer's units ``idx`` [n']:
        w [K, n', 1|B, 1|p] (`_per_token`), values [1|K, n', B, p]."""
        rows = self.p.unit_rows(layer).index_select(0, idx)  # [n', d]
        v = values * w.to(values.dtype)  # [K, n', B, p]
        K, n, B, P = v.shape
        return (v.reshape(K, n, B * P).transpose(1, 2) @ rows).view(K, B, P, rows.shape[-1])

    def add_unit_deltas(self, layer: int, dacts: Tensor) -> None:
        """Record a factored layer's activation changes [K, n_units, B, p]; add their sum to the stream."""
        r = self.p.factored_layers[layer]
        K, n = dacts.shape[:2]
        self.changed[r.start : r.stop] = dacts.ne(0).reshape(K, n, -1).any(-1).any(0)
        self.act_delta[layer] = dacts
        every = torch.arange(n, device=dacts.device)
        self._add_run(self._unit_sum(layer, torch.ones(K, n, 1, 1, dtype=dacts.dtype, device=dacts.device), every, dacts))

    def _act_delta(self, layer: int, ans: bool) -> Tensor:
        """A factored layer's activation changes [K, n, B, S|P], at the rows asked for."""
        d = self.act_delta[layer]
        full = d.shape[-1] == self.p.n_pos
        if ans != full:  # already at the rows asked for (with P == S the answer rows are every row, in order)
            return d
        key = (layer, ans)
        if key not in self._act_cache:
            # at the answer rows, or (changed there only, read at every row) widened with zeros
            self._act_cache[key] = self._rows_of(d, True) if ans else self.widen(d[..., None])[..., 0]
        return self._act_cache[key]

    def stream_value(self, stream: int, ans: bool) -> Tensor:
        """Unpatched stream of the candidates, [1|K, B, p, d]; one shared tensor per stream."""
        key = (stream, ans)
        if key not in self._streams:
            x = self.stream_ref(stream, ans)[None]
            run = self.runs.get(stream)
            if run is not None:
                full = self.p.full_rows(run)
                x = x + (self.p.at_answers(run) if ans and full else run if ans or full else self.widen(run))
            self._streams[key] = x
        return self._streams[key]

    def add_deltas(self, srcs: list[int], delta: Tensor) -> None:
        """Record new outputs' changes [n, K, B, p, d]; add them to the running stream change."""
        for j, s in enumerate(srcs):
            self.delta[s] = delta[j]
            self.changed[s] = True
        self._add_run(delta.sum(0) if len(srcs) > 1 else delta[0])

    def _add_run(self, total: Tensor) -> None:
        """Add a change [K, B, p, d] to the running change of the unpatched stream."""
        if self.run is None:
            self.run = total
        elif self.run.shape[-2] == total.shape[-2]:
            self.run = self.run + total
        elif self.p.full_rows(self.run):  # a change at the answer rows only: zero at the others
            self.run = self.run + self.widen(total)
        else:
            self.run = self.widen(self.run) + total

    def widen(self, x: Tensor) -> Tensor:
        """[..., B, P, d] at the answer rows -> [..., B, S, d], zero at every other row."""
        p = self.p
        out = x.new_zeros(*x.shape[:-2], p.n_pos, x.shape[-1])
        out[..., p.batch_index, p.answer_pos, :] = x
        return out

    def _delta(self, src: int, ans: bool) -> Tensor:
        d = self.delta[src]
        full = self.p.full_rows(d)
        if ans and full:
            if src not in self._delta_ans:
                self._delta_ans[src] = self.p.at_answers(d)
            return self._delta_ans[src]
        if not ans and not full:  # a source changed at the answer rows only, read at every row
            if src not in self._delta_full:
                self._delta_full[src] = self.widen(d)
            return self._delta_full[src]
        return d

    def _sum_ref(self, w: Tensor, ans: bool) -> Tensor | None:
        """sum_u w[k, u] (O_u - A_u) over reference outputs; w [K, n_src(, n_positions)]."""
        nz = self._nonzero(w)
        total = self._sum_units(w, nz, ans, None)
        cols = (nz if self._dense_mask is None else nz & self._dense_mask).nonzero().squeeze(1)
        if cols.numel() == 0:
            return total
        p = self.p
        slots = cols if self._dense_mask is None else p.dense_slots(cols)
        if ans:  # gather the answer rows alone (not every row, then the answers)
            at = (slots[:, None, None], p.batch_index, p.answer_pos)
            x = self.st.out[at]
            if p.abl is not None:
                x = x - p.abl[(at[0], p.batch_index if p.abl.shape[1] > 1 else torch.zeros_like(p.batch_index), at[2])]
        else:
            x = self.st.out.index_select(0, slots)
            if p.abl is not None:
                x = x - p.abl.index_select(0, slots)
        if self.positional:
            out = torch.einsum("knbp,nbpd->kbpd", self._per_token(w[:, cols], ans).to(x.dtype), x)
        else:
            out = torch.einsum("kn,nbpd->kbpd", w[:, cols].to(x.dtype), x)
        return out if total is None else out + total

    def _sum_units(self, w: Tensor, nz: Tensor, ans: bool, changed: Tensor | None) -> Tensor | None:
        """The factored units' part of `_sum_ref` (``changed`` None) or `_sum_delta` (``changed``: the
        changed sources): sum over each factored layer's units with a weight, as activations x rows."""
        total = None
        for layer, r in self.p.factored_layers.items():
            if changed is not None and layer not in self.act_delta:
                continue
            sel = nz[r.start : r.stop]
            if changed is not None:
                sel = sel & changed[r.start : r.stop]
            idx = sel.nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            values = (self._unit_values(layer, idx, ans)[None] if changed is None
                      else self._act_delta(layer, ans).index_select(1, idx))
            term = self._unit_sum(layer, self._per_token(w[:, r.start + idx], ans), idx, values)
            total = term if total is None else total + term
        return total

    def _sum_delta(self, w: Tensor, ans: bool) -> Tensor | None:
        """sum_u w[k, u] delta_u over changed sources (w is zero elsewhere); w [K, n_src(, n_positions)]."""
        nz = self._nonzero(w)
        total = self._sum_units(w, nz, ans, self.changed) if self.act_delta else None
        sel = nz & self.changed
        if self._dense_mask is not None:
            sel = sel & self._dense_mask
        cols = sel.nonzero().squeeze(1).tolist()
        if not cols:
            return total
        terms = [self._delta(c, ans) for c in cols]
        if self.positional:
            x = torch.stack(terms, 1)  # [K, n, B, p, d]
            out = torch.einsum("knbp,knbpd->kbpd", self._per_token(w[:, cols], ans).to(x.dtype), x)
        elif len(cols) == 1:
            out = terms[0] * w[:, cols[0]].to(terms[0].dtype)[:, None, None, None]
        else:
            x = torch.stack(terms, 1)  # [K, n, B, p, d]
            out = torch.einsum("kn,knbpd->kbpd", w[:, cols].to(x.dtype), x)
        return out if total is None else out + total

    def dst_input(self, row: int, stream: int, ans: bool) -> Tensor:
        """Input of destination ``row`` under every candidate: [1|K, B, p, d]."""
        if row in self.memo:
            x = self.memo[row]
            return self.p.at_answers(x) if ans and self.p.full_rows(x) else x
        st, p = self.st, self.p
        up = p.upstream[row]
        kept = self.keep[:, row]  # [K, n_src(, n_positions)], already within `up`
        ablated = (up[:, None] if self.positional else up) & ~kept
        kept_any, ablated_any = (kept.any(-1), ablated.any(-1)) if self.positional else (kept, ablated)
        n_abl = int(ablated_any.sum(-1).max())
        if n_abl == 0:
            x = self.stream_value(stream, ans)
        else:
            # Forms that subtract from the full stream lose float precision when the result is
            # small (many sources ablated), and LayerNorm magnifies that; so they must be
            # clearly cheaper than summing the kept sources to be chosen.
            options = {"kept": int(kept_any.sum(-1).max()), "ablated": 2 * n_abl + 1}
            ref_row = st.keep[row]
            cached = st.inputs.get(row)
            if cached is not None and not ans and not p.full_rows(cached):
                cached = None  # cached at the answer rows only (a head batched with its layer then), read everywhere now
            if cached is not None:
                diff = kept != ref_row[None]
                moved = int((diff.any(-1) if self.positional else diff).sum(-1).max()) + int((kept_any & self.changed).sum(-1).max())
                options["relative"] = 2 * moved + 1
            how = min(options, key=lambda k: options[k])
            if how == "relative" and cached is not None:
                st.inputs.move_to_end(row)
                x = (p.at_answers(cached) if ans and p.full_rows(cached) else cached)[None]
                terms = [(1, self._sum_ref(kept.to(torch.int8) - ref_row[None].to(torch.int8), ans)), (1, self._sum_delta(kept, ans))]
            elif how == "kept":
                x = self.stream_base(stream, ans)[None]
                terms = [(1, self._sum_ref(kept, ans)), (1, self._sum_delta(kept, ans))]
            else:
                x = self.stream_value(stream, ans)
                terms = [(-1, self._sum_ref(ablated, ans)), (-1, self._sum_delta(ablated, ans))]
            for sign, term in terms:
                if term is not None:
                    x = x + term if sign > 0 else x - term
            x = x.expand(x.shape[0], len(p.batch_index), *x.shape[-2:])
        self.memo[row] = x
        if (row in st.inputs or bool(self.changed_rows[row])) and self.affected_many([row])[0]:
            self.new_inp[row] = x
        return x


# ---------------------------------------------------------------------- gradient pass
@dataclass(frozen=True)
class GIM:
    """GIM's backward rules (Edin et al. 2025, "GIM: Improved Interpretability for Large Language Models";
    corticph/gim) for the gradient passes of EAP and EAP-IG. The forward is unchanged; the backward:

    - ``freeze_norm``: each norm's statistic (LayerNorm's std, RMSNorm's RMS) is a constant;
    - ``softmax_temperature`` T: attention's softmax backward is taken at scores / T (softer);
    - ``q_scale``, ``k_scale``, ``v_scale``: the gradient through each head's queries, keys and values is
      multiplied by these (GIM's defaults: 1/4, 1/4, 1/2).

    GIM's newer releases also scale a gated MLP's gate and up branches; that rule is not applied here. Norms after
    a sublayer or on queries and keys (Gemma 2/3, OLMo-2, Qwen3) are not frozen, so ``freeze_norm`` is refused
    for those families (`check`)."""

    freeze_norm: bool = True
    softmax_temperature: float = 2.0
    q_scale: float = 0.25
    k_scale: float = 0.25
    v_scale: float = 0.5

    def __post_init__(self) -> None:
        if not self.softmax_temperature > 0:
            raise ValueError(f"softmax_temperature must be > 0, got {self.softmax_temperature!r}")

    @classmethod
    def of(cls, given: bool | Mapping[str, Any] | GIM | None) -> GIM | None:
        """The rules an option names: False/None: none; True: GIM's defaults; a dict: those fields changed."""
        if given is None or given is False:
            return None
        if given is True:
            return cls()
        if isinstance(given, GIM):
            return given
        if isinstance(given, Mapping):
            unknown = sorted(set(given) - set(asdict(cls())))
            if unknown:
                raise ValueError(f"unknown GIM rule(s) {unknown}; choose from {sorted(asdict(cls()))}")
            return cls(**given)
        raise ValueError(f"gim must be True, False, a GIM or a dict of its fields, got {given!r}")

    def check(self, tf: Transformer) -> None:
        """A one-line error where ``freeze_norm`` would leave some of the family's norms live."""
        a = tf.arch
        if self.freeze_norm and (a.post_norms or a.qk_norm):
            which = "norms after its sublayers" if a.post_norms else "norms on queries and keys"
            raise ValueError(f"GIM's freeze_norm covers the norms before each sublayer and the final one; this family "
                             f"also has {which}, which it would leave live: pass gim={{'freeze_norm': False}} or use plain EAP")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GradPass:
    """One forward with autograd and one backward (EAP, EAP-IG); the gradient at an MLP's input is
    the same whether the MLP is whole or factored units.

    ``replace=(sources, values)``: those sources output ``values`` [n, B, S, d] forward, while the
    gradient flows through their real computation (so their inputs keep theirs): EAP-IG's
    interpolated node group. The input node is replaced outright. ``rules``: GIM's backward rules, or None.
    ``shifts``: layer -> [B, S, d] added to that MLP's output forward, detached (the interpolated group when it is a
    cross-layer transcoder's layer, whose features write into every later MLP: `SourceValues.shifts`).
    """

    def __init__(self, p: Engine, replace: tuple[range, Tensor] | None, rules: GIM | None = None,
                 shifts: dict[int, Tensor] | None = None):
        self.p = p
        self.replace = replace
        self.shifts = shifts or {}
        self.rules = rules
        self.frozen = rules is not None and rules.freeze_norm
        # layer -> its input stream, its [q, k, v] projections and (a QK norm over the whole projection) each head's copy of it
        self.heads: dict[int, tuple[Tensor, list[Tensor], list[Tensor]]] = {}
        self.probes: dict[int, Tensor] = {}  # layer -> a zero added to its MLP's input (its gradient is the input's)
        self.head_sums: dict[int, Tensor] = {}  # post-norm families: layer -> its heads' sum before its norm, this pass

    def replaced(self, sources: range, computed: Tensor) -> Tensor:
        """``computed`` [n, ...] forward, or the replacement values of these sources with its gradient."""
        if self.replace is None or self.replace[0] != sources:
            return computed
        value = self.replace[1].reshape(computed.shape)
        return computed + (value - computed).detach()

    def shifted(self, layer: int, computed: Tensor) -> Tensor:
        """MLP ``layer``'s output ``computed`` [B, S, d] forward plus its shift (`SourceValues.shifts`, detached: the
        gradient flows through the real computation), or ``computed`` when this pass moves it by nothing."""
        shift = self.shifts.get(layer)
        return computed if shift is None else computed + shift.to(computed.dtype)


def _grad(t: Tensor) -> Tensor:
    """The gradient a backward pass left on ``t`` (zeros if none reached it)."""
    return t.grad if t.grad is not None else torch.zeros_like(t)
