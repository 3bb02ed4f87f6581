"""Edge patching: run the model with any set of edges ablated, fast.

An ablated edge ``u -> v`` feeds ``v`` the ablation value ``A_u`` of ``u`` (the corrupt run's
output for ``"resample"``, its mean over the corrupt batch per position for ``"mean"``, zero for
``"zero"``) in place of ``u``'s output ``O_u`` in the current run. So with ``keep`` the kept
edges, the input of destination ``v`` is::

    inp_v = base_v + sum_{u kept} (O_u - A_u)          base_v: every upstream source ablated
          = R_v    - sum_{u ablated} (O_u - A_u)       R_v: the unpatched residual stream

The engine never reruns the whole model. A `PatchState` holds a *reference* circuit (the
outputs of every source, the residual stream and a few destination inputs under that circuit).
`Patcher.propagate` evaluates candidate edge sets against it: starting at the first layer whose
inputs change, it recomputes only nodes whose inputs changed and whose output is still used,
takes each destination's input by whichever of the forms above (or the cached reference input
plus the changes) has the fewest terms, runs the last layer and the unembedding at the answer
positions only, and returns logits there. `PatchState.commit` then makes one candidate the new
reference, reusing what was computed. Several candidates are evaluated in one batched pass.

Exactness does not depend on what is skipped: a node with no kept outgoing edge is not
recomputed, and its stale output cancels out of every formula above because it is on the
ablated side of every destination. Commits may only remove edges (as ACDC does), so such a node
never comes back.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .blocks import (
    GIM,
    MLP_ENGINES,
    Block,
    FullRun,
    GradPass,
    Job,
    MLPUnits,
    blocks_of,
    extras_of,
    is_cross_layer,
    rows_of,
    units_of,
)
from .circuit import Circuit
from .graph import Graph
from .inputs import Ablation, answer_positions, as_tokens, check_ablation
from .model import ForwardCache, Transformer
from .positions import Positions, token_names
from .sources import FactoredLayer, SourceValues
from .tasks import Task
from .transcoders import FeatureDictionary

__all__ = ["MLP_ENGINES", "MLPUnits", "Patcher", "PatchState", "Proposal"]


@dataclass
class PatchState:
    """A reference circuit and everything the engine knows about it.

    keep:      [n_dst, n_src] bool, kept edges (False off the graph's edges); [n_dst, n_src, n_positions]
               in a positional graph (an edge's input then changes at its position's tokens only).
    out:       [n_src, batch, pos, d_model] output of each source (last layer: answer rows only).
    resid_pre: [n_layers + 1, batch, pos, d_model] unpatched residual stream before each layer.
    resid_mid: [n_layers, batch, pos, d_model] MLP-input stream of each layer.
    logits:    [batch, d_vocab] logits at the answer positions ([batch, k] with ``vocab``).
    inputs:    destination -> [batch, pos, d_model] input, for a bounded set of destinations
               (an optimisation only; least recently used entries are dropped).
    vocab:     the vocabulary columns of the logits [k] (None: all of them; `Metric.narrow`).
    acts:      factored layer -> [n_units, batch, pos] its units' activations (neurons, features); with
               factored units ``out`` holds the dense sources only, in `Patcher.dense_slots` order.
    x_full:    a post-norm family's (Gemma 2/3, OLMo-2) X of this circuit (`Patcher.forward`: each dense
               source's output minus its ablation value), from which a candidate reruns only the layers at or
               after its first changed one; None until the first propagate (other families: always None).
    """

    keep: Tensor
    out: Tensor
    resid_pre: Tensor
    resid_mid: Tensor
    logits: Tensor
    patcher: "Patcher"
    inputs: OrderedDict = field(default_factory=OrderedDict)
    vocab: Tensor | None = None
    acts: dict[int, Tensor] = field(default_factory=dict)
    _shared: bool = True  # tensors still belong to the clean run (copied at the first commit)
    x_full: Tensor | None = None
    _read: tuple[list[bool], list[bool]] | None = None  # `rows_read` of keep, until keep changes

    def rows_read(self) -> tuple[list[bool], list[bool]]:
        """Per source: whether this circuit reads it at all, and whether at every row (`Patcher.rows_read`)."""
        if self._read is None:
            live, full = self.patcher.rows_read(self.keep)
            self._read = (live.tolist(), full.tolist())
        return self._read

    def propagate(self, keep: Tensor) -> "Proposal":
        """Evaluate candidate kept-edge sets [K, n_dst, n_src] (or one [n_dst, n_src])."""
        return self.patcher.propagate(self, keep)

    def commit(self, proposal: "Proposal", k: int = 0) -> None:
        """Make candidate ``k`` of ``proposal`` (computed from this state) the reference."""
        if bool((proposal.keep[k] & ~self.keep).any()):
            raise ValueError("a commit may only remove edges from the reference circuit")
        if proposal.xs:  # a from-scratch proposal: its X is the new circuit's
            self.x_full = proposal.xs[k]
        if self._shared:  # copy-on-write: the first commit detaches the state from the clean run
            self.out, self.resid_pre, self.resid_mid = self.out.clone(), self.resid_pre.clone(), self.resid_mid.clone()
            self.acts = {layer: a.clone() for layer, a in self.acts.items()}
            self._shared = False
        pt = self.patcher
        bidx, apos = pt.batch_index, pt.answer_pos
        for src, delta in proposal.deltas.items():
            slot = src if pt.unit_mask is None else int(pt.dense_slots(torch.tensor([src], device=bidx.device))[0])
            if not pt.full_rows(delta):
                self.out[slot, bidx, apos] += delta[k]
            else:
                self.out[slot] += delta[k]
        for layer, d in proposal.unit_deltas.items():
            if d.shape[-1] != pt.n_pos:
                self.acts[layer][:, bidx, apos] += d[k]
            else:
                self.acts[layer] += d[k]
        for stream, run in proposal.runs.items():
            layer, mid = divmod(stream, 2)
            target = self.resid_mid if mid else self.resid_pre
            if not pt.full_rows(run):
                target[layer, bidx, apos] += run[k]
            else:
                target[layer] += run[k]
        for dst in proposal.dropped:
            self.inputs.pop(dst, None)
        for dst, new in proposal.inputs.items():
            self.inputs[dst] = new[min(k, new.shape[0] - 1)].clone()
            self.inputs.move_to_end(dst)
        used = sum(t.numel() * t.element_size() for t in self.inputs.values())
        while self.inputs and used > pt.cache_bytes:
            _, t = self.inputs.popitem(last=False)
            used -= t.numel() * t.element_size()
        self.keep = proposal.keep[k].clone()
        self.logits = proposal.logits[k].clone()
        self._read = None

    def drop_destination(self, dst: int) -> None:
        """Remove every edge into destination ``dst`` without a rerun: only for a node with no kept
        outgoing edge, whose output nothing reads (so nothing downstream changes)."""
        self.keep[dst] = False
        self.inputs.pop(dst, None)
        self._read = None


@dataclass
class Proposal:
    """Candidates evaluated against a state: their logits, and what a commit needs."""

    keep: Tensor  # [K, n_dst, n_src]
    logits: Tensor  # [K, batch, d_vocab]
    deltas: dict[int, Tensor]  # source -> [K, batch, p, d_model] change of its output
    inputs: dict[int, Tensor]  # destination -> [1|K, batch, p, d_model] input to cache
    runs: dict[int, Tensor]  # stream -> [K, batch, p, d_model] change of the unpatched stream
    dropped: list[int]  # destinations whose cached input went stale
    unit_deltas: dict[int, Tensor] = field(default_factory=dict)  # factored layer -> [K, n_units, batch, p]
    xs: list[Tensor | None] = field(default_factory=list)  # from-scratch candidates: each one's X (`Patcher.forward`)


class Patcher:
    """Clean and corrupt caches of one model on one batch, and the patched forward pass.

    Args:
        model: a TransformerLens bridge (from `acdc.load_model`) or an `acdc.model.Transformer`.
        clean, corrupt: token ids [batch, pos] (or strings, with a tokenizer), same shape; or an
            `acdc.Task` as ``clean`` (its prompts and answer positions).
        graph: the graph whose edges are patched (default: `Graph.from_model`).
        ablation: "resample" | "mean" | "zero".
        answer_pos: positions the metric reads: an int, [batch] (one per prompt), or
            [batch, P] (P per prompt, strictly increasing, e.g. every token of a repeated half);
            default the last position. Logits come back with one row per scored position,
            prompt-major: [batch * P, d_vocab].
        cache_bytes: budget for cached destination inputs (speed only, never results).
        mean_weights: with ``ablation="mean"``, a [batch, batch] row-stochastic matrix: prompt i's
            ablation value is sum_j W[i, j] * (corrupt run j), e.g. the mean over a reference
            subset, or over the prompts of its own template; or a [batch * pos, batch * pos] one over
            tokens (prompt-major): token (i, t)'s value is sum over tokens (j, u) of W[(i, t), (j, u)] times
            the corrupt run at (j, u), e.g. the mean over the tokens of the same role in every prompt
            (`acdc.api.faithfulness.mean_weights_for(task, "role")`). Default: the mean over the batch.
        positions: which position each token belongs to (`acdc.Positions`), needed with a
            positional graph (default: the task's); its names must be the graph's.
        transcoders: with a feature graph, the `acdc.TranscoderSet` that computes its features (the
            graph holds their layout only; the set must cover it).

    Attributes other code reads: ``tf`` (the engine's model), ``graph``, ``transcoders``, ``ablation``,
    ``clean`` (the clean run's `ForwardCache`), ``abl`` (ablation value of every source,
    [n_src, batch, pos, d] for resample, [n_src, 1, pos, d] for mean, None for zero),
    ``upstream`` ([n_dst, n_src] bool on the model's device), ``answer_pos`` ([batch, P]),
    ``clean_tokens``, ``corrupt_tokens``, ``corrupt_logits``.
    """

    def __init__(
        self,
        model: Any,
        clean: Any,
        corrupt: Any = None,
        *,
        graph: Graph | None = None,
        ablation: Ablation = "resample",
        answer_pos: int | Tensor | Sequence[int] | None = None,
        cache_bytes: int = 512 * 2**20,
        mean_weights: Tensor | None = None,
        positions: Positions | None = None,
        transcoders: FeatureDictionary | None = None,
    ):
        self.ablation: Ablation = check_ablation(ablation)
        tf = Transformer.of(model)
        self.tf = tf
        a = tf.arch
        self.graph = graph if graph is not None else Graph.from_model(tf)
        g = self.graph
        if (g.n_layers, g.n_heads, g.parallel_attn_mlp, g.attn_only) != (a.n_layers, a.n_heads, a.parallel_attn_mlp, a.attn_only):
            raise ValueError(
                f"graph {g!r} does not match the model (n_layers={a.n_layers}, n_heads={a.n_heads}, "
                f"parallel_attn_mlp={a.parallel_attn_mlp}); build it with Graph.from_model(model)"
            )
        if isinstance(clean, Task):
            if corrupt is not None:
                raise ValueError("pass either a Task or clean and corrupt prompts, not both")
            task = clean
            clean, corrupt = task.clean, task.corrupt
            answer_pos = task.answer_pos if answer_pos is None else answer_pos
            positions = task.positions if positions is None else positions
        elif corrupt is None:
            raise ValueError("corrupt prompts are missing: Patcher(model, clean, corrupt) or Patcher(model, task)")
        clean_t = as_tokens(clean, model, "clean").to(tf.device)
        corrupt_t = as_tokens(corrupt, model, "corrupt").to(tf.device)
        if clean_t.shape != corrupt_t.shape:
            raise ValueError(
                f"clean and corrupt must have the same shape, got {tuple(clean_t.shape)} and "
                f"{tuple(corrupt_t.shape)}; pair every clean prompt with a corrupt one of equal length"
            )
        for name, t in (("clean", clean_t), ("corrupt", corrupt_t)):
            if t.min() < 0 or t.max() >= a.d_vocab:
                raise ValueError(f"{name} token ids must lie in [0, {a.d_vocab}), got {t.min()}..{t.max()}")
        B, S = clean_t.shape
        self.clean_tokens, self.corrupt_tokens = clean_t, corrupt_t
        self.answer_pos = answer_positions(answer_pos, B, S).to(tf.device)
        self.cache_bytes = cache_bytes
        self.batch_index = torch.arange(B, device=tf.device)[:, None]
        self.n_pos = S
        # flat indices (into B * S) of the tokens at or before each prompt's last scored position: the
        # rows anything the metric sees can depend on (causal attention); None when that is every row
        last = self.answer_pos.max(1).values
        upto = (torch.arange(S, device=tf.device)[None] <= last[:, None]).reshape(-1)
        self.live_rows: Tensor | None = None if bool(upto.all()) else upto.nonzero().squeeze(1)
        self.positions = self._check_positions(positions, B, S)
        # in a positional graph, each token's position [B, S] (the incremental engine weighs edges per token)
        self.token_position: Tensor | None = None if self.positions is None else self.positions.index.to(tf.device)

        # the dictionary a feature graph's features are computed by (the graph holds their layout only)
        self.transcoders: FeatureDictionary | None = transcoders
        self._units: MLPUnits | None = units_of(g, tf, transcoders)
        self._blocks: list[Block] = blocks_of(g, self.tf.parts, self._units)  # the layer loop every pass walks
        self._n_units: dict[int, int] = {}  # layer -> how many of its MLP sources are factored units
        self._dense_cols: Tensor | None = None
        self._dslot: Tensor | None = None
        self._abl_units: list[Tensor | None] | None = None
        self._unit_rows: dict[tuple[int, int], Tensor] = {}
        self._source_values: SourceValues | None = None
        self.clean = tf.run(clean_t, self.answer_pos)
        corrupt_run = tf.run(corrupt_t, self.answer_pos)
        self.corrupt_logits = corrupt_run.logits
        if self._units is not None:
            corrupt_run = self._factor(corrupt_run, mean_weights)
        # Ablation values A [n_src, B|1, S, d] and the all-ablated streams base [.., B|1, S, d].
        if self.ablation == "resample":
            self.abl: Tensor | None = corrupt_run.sources
            self._base_pre, self._base_mid = corrupt_run.resid_pre, corrupt_run.resid_mid
        elif self.ablation == "mean" and mean_weights is not None:  # each prompt (or token) its own weighted mean
            W = _check_weights(mean_weights, B, S).to(device=tf.device, dtype=tf.dtype)
            self.abl = _weighted(W, corrupt_run.sources, 1)
            self._base_pre = _weighted(W, corrupt_run.resid_pre, 1)
            self._base_mid = _weighted(W, corrupt_run.resid_mid, 1)
        elif self.ablation == "mean":
            self.abl = corrupt_run.sources.mean(1, keepdim=True)
            self._base_pre = corrupt_run.resid_pre.mean(1, keepdim=True)
            self._base_mid = corrupt_run.resid_mid.mean(1, keepdim=True)
        else:
            self.abl = None
            b_o = torch.stack([tf.attn_bias(layer) for layer in range(a.n_layers)])  # biases outside every source
            b_m = torch.zeros_like(b_o)  # factored MLP units: the MLP's bias is outside them too
            if self._units is not None:
                for layer in self._n_units:
                    b = self._units.bias(tf, layer)
                    b_m[layer] = 0 if b is None else b
            cum = torch.cat([torch.zeros_like(b_o[:1]), (b_o + b_m).cumsum(0)])
            self._base_pre = cum[:, None, None, :]
            mid = cum[:-1] + b_o if not a.parallel_attn_mlp else cum[:-1]
            self._base_mid = mid[:, None, None, :]
        self._head_abl: Tensor | None = None  # post-norm families: [L, B|1, S, d] each layer's ablated heads' sum
        if a.post_norms:
            self._post_norm_bases(corrupt_run, mean_weights)
        del corrupt_run
        # one ablation value for the whole batch (plain mean ablation), else one per prompt (or none: zero)
        self.shared_ablation = self.abl is not None and self.abl.shape[1] == 1
        self.factored_layers: dict[int, range] = {layer: g.mlp_sources(layer)[:n] for layer, n in self._n_units.items()}
        self.unit_ablation: list[Tensor | None] = self._abl_units or [None] * g.n_layers
        self.unit_mask: Tensor | None = None  # [n_src] bool: the factored sources (None: there are none)
        if self._units is not None:
            self.unit_mask = torch.zeros(len(g.sources), dtype=torch.bool, device=tf.device)
            for r in self.factored_layers.values():
                self.unit_mask[r.start : r.stop] = True
        self._layout()

    def _post_norm_bases(self, corrupt: ForwardCache, mean_weights: Tensor | None) -> None:
        """Post-norm families (Gemma 2/3): a layer's heads reach the stream through their layer's norm, so the
        all-ablated streams hold the linear sources only (the input and each MLP, whose norm is inside its node,
        or its units and extras: a transcoder writes the normed output), and each layer's ablated heads are kept
        apart (`head_ablation`): a destination reads, from each upstream layer, the norm of its own mix of that
        layer's heads (MIB's rule for Gemma 2). ``corrupt``: the corrupt run (in the dense layout)."""
        g, tf = self.graph, self.tf
        L, H = g.n_layers, g.n_heads
        abl = self.abl  # [n_dense, B|1, S, d] in slot order; None: zero ablation

        def ablated(t: Tensor) -> Tensor:  # [B, S, d] on the corrupt run -> its ablation value [B|1, S, d]
            if self.ablation == "resample":
                return t
            if mean_weights is not None:
                return _weighted(_check_weights(mean_weights, t.shape[0], t.shape[1]).to(t), t, 0)
            return t.mean(0, keepdim=True)

        zero = self.clean.sources.new_zeros(1, 1, tf.arch.d_model)
        heads, lin = [], [zero if abl is None else ablated(corrupt.resid_pre[0])]  # lin[l]: input, MLPs 0..l-1
        b_o = [tf.attn_bias(layer) for layer in range(L)]  # outside every head, inside each layer's norm
        for layer in range(L):
            slots = self.dense_slots(torch.arange(g.head_src(layer), g.head_src(layer) + H, device=tf.device))
            heads.append(zero + b_o[layer] + (0 if abl is None else abl[slots].sum(0)))
            if g.attn_only:
                mlp = zero
            elif abl is None:  # zero ablation: what the MLP adds outside its nodes (a transcoder's b_dec)
                bias = None if self._units is None or layer not in self._n_units else self._units.bias(tf, layer)
                mlp = zero if bias is None else zero + bias
            else:  # every source of the MLP ablated adds up to its output's ablation value (exact transcoder graphs)
                mlp = ablated(corrupt.resid_pre[layer + 1] - corrupt.resid_mid[layer])
            lin.append(lin[-1] + mlp)
        self._head_abl = torch.stack(torch.broadcast_tensors(*heads))
        base = torch.stack(torch.broadcast_tensors(*lin))
        self._base_pre, self._base_mid = base, base[:-1]

    def head_ablation(self, layer: int) -> Tensor:
        """[B|1, S, d] what ``layer``'s heads sum to with every one ablated (b_O included), before the layer's
        norm after attention: post-norm families only (`Patcher._post_norm_bases`)."""
        assert self._head_abl is not None, "head_ablation is a post-norm family's"
        return self._head_abl[layer]

    @property
    def blocks(self) -> list[Block]:
        """The model as the engine's blocks, in forward order: the layer loop every pass walks (`acdc.blocks`)."""
        return self._blocks

    @property
    def units(self) -> MLPUnits | None:
        """The engine of the graph's factored MLP units (neurons, transcoder features); None: every MLP whole."""
        return self._units

    def dense_slots(self, cols: Tensor) -> Tensor:
        """Rows [k] of the dense tensors (``abl``, a state's ``out``) of dense graph sources ``cols`` [k]
        (the same indices when no source is factored)."""
        return cols if self._dslot is None else self._dslot[cols]

    def unit_rows(self, layer: int, at: int = -1) -> Tensor:
        """[n_units, d_model] what each factored unit of ``layer`` writes per unit of activation (cross-layer units:
        what each has written by the time the stream reaches layer ``at``, `acdc.blocks.rows_of`)."""
        assert self._units is not None
        key = (layer, at if is_cross_layer(self._units) else -1)
        rows = self._unit_rows.get(key)
        if rows is None:
            rows = rows_of(self._units, self.tf, layer, at).to(device=self.tf.device, dtype=self.tf.dtype)
            self._unit_rows[key] = rows
        return rows

    def _factor(self, corrupt: ForwardCache, mean_weights: Tensor | None) -> ForwardCache:
        """The corrupt run in a factored graph's layout: its dense sources (input, heads, whole MLPs,
        extras such as error nodes) in their slot order, and each factored layer's unit activations
        as ablation values (``self._abl_units``)."""
        g, tf, units = self.graph, self.tf, self._units
        assert units is not None
        for layer in range(0 if g.attn_only else g.n_layers):
            n = units.layer_units(layer)
            if n is not None:
                self._n_units[layer] = n
        plain = Graph.from_model(tf)
        factored = {i for layer, n in self._n_units.items() for i in g.mlp_sources(layer)[:n]}
        dense = [i for i in range(len(g.sources)) if i not in factored]
        self._dense_cols = torch.tensor(dense, device=tf.device)
        self._dslot = torch.full((len(g.sources),), -1, dtype=torch.long, device=tf.device)
        self._dslot[self._dense_cols] = torch.arange(len(dense), device=tf.device)
        # the dense sources' rows in a plain run's (whole-MLP) layout; -1: an extra, computed (`_dense_layout`)
        self._plain_rows = torch.tensor([plain.src_index.get(g.sources[i].name, -1) for i in dense], device=tf.device)
        abl_units: list[Tensor | None] = [None] * g.n_layers
        for layer in self._n_units:
            acts = units.activations(tf, layer, corrupt.resid_mid[layer])  # [B, S, n]
            if self.ablation == "mean":
                acts = (acts.mean(0, keepdim=True) if mean_weights is None else
                        _weighted(_check_weights(mean_weights, acts.shape[0], acts.shape[1]).to(acts), acts, 0))
            abl_units[layer] = None if self.ablation == "zero" else acts.movedim(-1, 0)  # [n, B|1, S]
        self._abl_units = abl_units
        return ForwardCache(self._dense_layout(corrupt), corrupt.resid_pre, corrupt.resid_mid, corrupt.logits)

    def _dense_layout(self, run: ForwardCache) -> Tensor:
        """[n_dense, B, S, d] a factored graph's dense sources on a plain run: the run's input, heads and
        whole MLPs, and each factored layer's extras computed from its MLP input."""
        g, tf, units = self.graph, self.tf, self._units
        assert units is not None and self._dslot is not None
        out = run.sources.index_select(0, self._plain_rows.clamp_min(0))
        acts: dict[int, Tensor] = {}  # cross-layer units: the earlier layers' activations, for each layer's extras
        for layer, n in sorted(self._n_units.items()):
            src = g.mlp_sources(layer)
            x = run.resid_mid[layer]
            acts[layer] = units.activations(tf, layer, x)
            if len(src) > n:
                extra = extras_of(units, tf, layer, x, acts[layer], acts, dict(enumerate(run.resid_mid)))
                assert extra is not None
                out[self._dslot[src.start + n : src.stop]] = extra
        return out

    def _check_positions(self, positions: Positions | None, B: int, S: int) -> Positions | None:
        """The positions of a positional graph, checked against it and the prompts; per-position token lists."""
        g = self.graph
        if g.positions is None:
            return None
        if positions is None:
            if g.positions == token_names(S):
                positions = Positions.tokens(B, S)
            else:
                raise ValueError(
                    f"a positional graph needs positions (acdc.Positions) for its names {', '.join(g.positions)}: "
                    "pass positions= or a Task that has them"
                )
        if positions.names != g.positions:
            raise ValueError(f"positions {', '.join(positions.names)} do not match the graph's {', '.join(g.positions)}")
        if positions.shape != (B, S):
            raise ValueError(f"positions are for {positions.shape[0]} prompts x {positions.shape[1]} tokens, "
                             f"the prompts are {B} x {S}")
        flat = positions.index.reshape(-1).to(self.tf.device)
        # flat token indices (into batch * pos) of each position
        self._groups = [(flat == p).nonzero().squeeze(1) for p in range(len(positions))]
        return positions

    # ------------------------------------------------------------------ static layout
    def _layout(self) -> None:
        """Which destinations are read at the answer rows only (the last layer's q and MLP, logits),
        and what `answer_only_sources` needs: each destination's node and whether it reads per row."""
        g, L = self.graph, self.tf.arch.n_layers
        self.answers_only_dst: list[bool] = [d.answers_only(L) for d in g.destinations]
        self.upstream = g.upstream.to(self.tf.device)
        n_src, dev = len(g.sources), self.tf.device
        node = g.dst_node_src.clone()
        # a split MLP (neurons, features) is no source: its input destination's output is read wherever one
        # of its sources is, which `rows_read` keeps in one slot per such layer, after the logits' slot
        split: dict[int, int] = {}
        for layer in range(0 if g.attn_only else g.n_layers):
            row = g.mlp_row(layer)
            if int(node[row]) < 0:
                split[layer] = n_src + 1 + len(split)
                node[row] = split[layer]
        node[node < 0] = n_src  # the logits: one slot past the sources
        self._dst_node = node.to(dev)
        self._n_slots = n_src + 1 + len(split)
        # a q input or an MLP's input is read row by row; a k or v input (or an unsplit head input) at every row
        self._dst_per_row = torch.tensor([d.qkv in d.node.kind.answer_slots for d in g.destinations], device=dev)
        groups: list[tuple[slice, int | None]] = []
        for layer in reversed(range(g.n_layers)):  # top-down: every group's readers come later
            if not g.attn_only:
                r = g.mlp_sources(layer)
                groups.append((slice(r.start, r.stop), split.get(layer)))
            groups.append((slice(g.head_src(layer), g.head_src(layer) + g.n_heads), None))
        self._need_groups = groups

    def answer_only_sources(self, keep: Tensor) -> Tensor:
        """[n_src] bool: the sources whose output circuit ``keep`` [n_dst, n_src] reads at the answer rows
        only. The logits read the answer rows; a q input or an MLP's input reads the rows its node's output
        is read at; a k or v input of a head that is read at all reads every row."""
        live, full = self.rows_read(keep)
        return live & ~full

    def rows_read(self, keep: Tensor) -> tuple[Tensor, Tensor]:
        """([n_src], [n_src]) bool: the sources circuit ``keep`` [n_dst, n_src] reads at all, and those it
        reads at every row (the rest of the read ones: at the answer rows only; `answer_only_sources`).
        In a positional graph (``keep`` [n_dst, n_src, n_positions]) an edge kept at any position counts:
        rows read at other positions are counted too, so the answer is on the safe side."""
        if keep.dim() == 3:
            keep = keep.any(-1)
        n_src = keep.shape[1]
        live = torch.zeros(self._n_slots, dtype=torch.bool, device=keep.device)
        full = torch.zeros_like(live)
        live[n_src] = True
        node, per_row = self._dst_node, self._dst_per_row
        for srcs, split in self._need_groups:
            read = live[node]
            everywhere = read & (~per_row | full[node])
            kept = keep[:, srcs]
            live[srcs] = (kept & read[:, None]).any(0)
            full[srcs] = (kept & everywhere[:, None]).any(0)
            if split is not None:  # a split MLP's output is read where any of its sources is
                live[split], full[split] = live[srcs].any(), full[srcs].any()
        return live[:n_src], full[:n_src]

    # ------------------------------------------------------------------ public API
    @property
    def clean_outputs(self) -> Tensor:
        """[n_src, batch, pos, d_model] every source's output on the clean run (with factored MLP units:
        the dense sources only, in graph order; `source_values` has them all)."""
        return self.source_values.dense_clean

    @property
    def source_values(self) -> SourceValues:
        """Every source's clean output and ablation value, dense or factored, and the products
        algorithms take with them (`acdc.sources.SourceValues`)."""
        if self._source_values is None:
            g, units = self.graph, self._units
            positional = g.positions is not None and g.n_positions > 1
            groups = self._groups if positional else None
            if units is None:
                self._source_values = SourceValues(self.tf, g, self.clean.sources, self.abl, groups=groups)
            else:
                assert self._abl_units is not None
                factored = {
                    layer: FactoredLayer(g.mlp_sources(layer)[:n], units.activations(self.tf, layer, self.clean.resid_mid[layer]).movedim(-1, 0),
                                         self._abl_units[layer])
                    for layer, n in self._n_units.items()
                }
                self._source_values = SourceValues(self.tf, g, self._dense_layout(self.clean), self.abl,
                                                   self._dense_cols, factored, units, groups)
        return self._source_values

    @property
    def ablation_values(self) -> Tensor | None:
        """Every source's ablation value: [n_src, batch, pos, d] (resample, weighted mean),
        [n_src, 1, pos, d] (mean over the batch), or None (zero ablation)."""
        return self.abl

    @property
    def position_groups(self) -> list[Tensor]:
        """In a positional graph, the flat token indices (into batch * pos) of each position."""
        if self.graph.positions is None:
            raise ValueError("position_groups: this graph has no positions")
        return self._groups

    def reference_state(self, vocab: Tensor | None = None) -> PatchState:
        """The state a search that removes edges (ACDC) starts from: the full circuit on the clean run, as
        the incremental `PatchState` (every graph: whole or split MLPs, with or without token positions).
        It has ``keep``, ``logits``, ``propagate(candidates)``, ``commit(proposal, k)`` and
        ``drop_destination(dst)``. With ``vocab`` [k] its logits are those columns only (`Metric.narrow`:
        a metric that reads a few tokens' logits; on SmolLM2 the full unembedding is most of an edge test).
        """
        vocab = self._vocab(vocab)
        return self.state(vocab)

    def state(self, vocab: Tensor | None = None) -> PatchState:
        """A fresh reference state: the full circuit (every edge kept) on the clean run (logits: the
        columns ``vocab`` only, if given).

        It shares the clean run's tensors until its first commit (copy-on-write).
        """
        c, vocab = self.clean, self._vocab(vocab)
        logits = c.logits if vocab is None else c.logits.index_select(-1, vocab)
        up = self.upstream
        keep = up.clone() if self.graph.positions is None else up[:, :, None].expand(*up.shape, self.graph.n_positions).clone()
        if self._units is None:
            return PatchState(keep, c.sources, c.resid_pre, c.resid_mid, logits, self, vocab=vocab)
        sv = self.source_values  # the dense sources in slot order, and the units' clean activations [n, B, S]
        acts = {layer: f.clean for layer, f in sv.factored.items()}
        return PatchState(keep, sv.dense_clean, c.resid_pre, c.resid_mid, logits, self, vocab=vocab, acts=acts)

    def _vocab(self, vocab: Tensor | None) -> Tensor | None:
        """Vocabulary columns checked and on the model's device (None: every column)."""
        if vocab is None:
            return None
        vocab = torch.as_tensor(vocab, dtype=torch.long).reshape(-1).to(self.tf.device)
        if len(vocab) == 0 or int(vocab.min()) < 0 or int(vocab.max()) >= self.tf.arch.d_vocab:
            raise ValueError(f"vocab must be token ids in [0, {self.tf.arch.d_vocab}), at least one")
        return vocab

    def logits(self, ablated: Tensor | Sequence[str] | Circuit) -> Tensor:
        """Logits at the answer positions with the given edges ablated.

        ablated: edge names, a bool mask [n_edges], or a batch of masks [K, n_edges]; or a
        `Circuit`, whose edges are kept and every other edge ablated (checked to be a circuit of
        this model's shape).
        Returns [rows, d_vocab] (or [K, rows, d_vocab] for a batch of masks), rows = batch * P
        scored positions (P = 1 unless answer_pos gave several per prompt).
        """
        if isinstance(ablated, Circuit):
            self.graph.check_fits(ablated.graph, "this circuit")
            mask = ~ablated.in_graph
        elif isinstance(ablated, Tensor):
            mask = self.graph.edge_mask(ablated.cpu())
        else:
            mask = self.graph.edge_mask(list(ablated))
        single = mask.dim() == 1
        keep = self.graph.dense(~mask.reshape(-1, self.graph.n_edges)).to(self.tf.device)
        out = torch.stack([self.run(k) for k in keep])
        return out[0] if single else out

    def masked_logits(self, ablated: Tensor) -> Tensor:
        """`logits` of one mask [n_edges] bool, with the two extremes read from the cached runs.

        Nothing ablated: the clean run's logits; everything ablated under resample ablation:
        the corrupt run's. (A patched pass gives the same values up to float rounding.)
        """
        if not bool(ablated.any()):
            return self.clean.logits
        if bool(ablated.all()) and self.ablation == "resample":
            return self.corrupt_logits
        return self.logits(ablated)

    @torch.no_grad()
    def run(self, keep: Tensor) -> Tensor:
        """Logits [rows, d_vocab] of one circuit, keep [n_dst, n_src(, n_positions)], computed from scratch.

        Layer by layer, every destination's input is the all-ablated stream plus the kept
        sources' (output - ablation value), all destinations of a layer in one matrix product
        (per position in a positional graph, over that position's tokens only).
        This is the fast path for many unrelated circuits (faithfulness sweeps); ACDC's
        one-edge-at-a-time changes go through `PatchState.propagate` instead.
        """
        return self.forward(keep)[0]

    @torch.no_grad()
    def forward(self, keep: Tensor, reuse: tuple[Tensor, int] | None = None) -> tuple[Tensor, Tensor]:
        """`run`, also returning X [n_dense, B, S, d], each dense source's (output - ablation value).

        ``reuse=(X, layer)``: X of a circuit that differs from ``keep`` only in edges into ``layer`` or
        later; the sources before that layer are taken from it, not recomputed (the explorer's clicks).
        Graphs of whole MLPs only: factored units' activations are not in X.
        """
        g, L = self.graph, self.tf.arch.n_layers
        if reuse is not None and self._units is not None:
            raise ValueError("forward(reuse=...) needs a graph of whole MLPs (factored units are not in X)")
        positional = g.positions is not None and g.n_positions > 1
        if g.positions is not None and not positional:
            keep = keep[..., 0]  # one position covering every token: the plain graph's state
        run = FullRun(self, keep, self._groups if positional else None, self._units, self._dense_cols, self._dslot,
                      self._abl_units)
        start = 0
        if reuse is not None:
            start = min(reuse[1], L)
            done = g.head_src(start) if start < L else len(g.sources)
            run.X[:done] = reuse[0][:done]
        else:
            run.put(slice(0, 1), self.clean.sources[:1])  # the input node's output does not depend on edges
        for block in self._blocks:
            if block.layer >= start:
                block.full(run)
        final = run.gather([g.logits_row], len(g.sources), self.stream_base(2 * L))[0][0]
        logits = self.tf.unembed(self.at_answers(final))
        return logits.reshape(-1, logits.shape[-1]), run.X

    # ------------------------------------------------------------------ propagation
    def at_answers(self, x: Tensor) -> Tensor:
        """[..., B, S, d] -> [..., B, P, d] at each prompt's answer positions."""
        return x[..., self.batch_index, self.answer_pos, :]

    def full_rows(self, x: Tensor) -> bool:
        """Whether ``x`` [..., S|P, d] holds every position (else the answer rows only).

        When P == S the answer rows are all positions in order (they are strictly increasing),
        so both readings agree.
        """
        return x.shape[-2] == self.n_pos

    def stream_base(self, stream: int) -> Tensor:
        """All-ablated residual stream ``stream`` [B|1, S|1, d]: every upstream source at its ablation
        value (stream 2 * layer: before the layer's heads; 2 * layer + 1: its MLP's input)."""
        layer, mid = divmod(stream, 2)
        return self._base_mid[layer] if mid else self._base_pre[layer]

    def propagate(self, st: PatchState, keep: Tensor) -> Proposal:
        """Logits of candidate circuits ``keep`` [K, n_dst, n_src(, n_positions)] against state ``st``."""
        if keep.dim() == st.keep.dim():
            keep = keep[None]
        keep = keep & (self.upstream if keep.dim() == 3 else self.upstream[:, :, None])
        K = keep.shape[0]
        a = self.tf.arch
        if a.post_norms or is_cross_layer(self._units):
            # a destination's input is not linear in its edges (post-norm families), or a layer's error node reads every
            # earlier layer's cross-layer features: each candidate runs from scratch
            return self._propagate_from_scratch(st, keep)
        L = a.n_layers
        changed_rows = (keep != st.keep[None]).reshape(K, keep.shape[1], -1).any(-1).any(0)
        if not bool(changed_rows.any()):
            return Proposal(keep, st.logits.expand(K, *st.logits.shape), {}, {}, {}, [])
        start = int(self.graph.dst_layer[changed_rows.cpu()].min())
        job = Job(self, st, keep, changed_rows)
        for block in self._blocks:
            if block.layer < start:
                continue
            if block.stream not in job.runs:
                job.open_stream(block.stream)
            block.incremental(job)
        job.open_stream(2 * L)
        x = job.dst_input(self.graph.logits_row, 2 * L, True).expand(K, -1, -1, -1)
        logits = self.tf.unembed(x.reshape(-1, x.shape[-1]), st.vocab).view(K, -1, a.d_vocab if st.vocab is None else len(st.vocab))
        runs = {k: v for k, v in job.runs.items() if v is not None}
        return Proposal(keep, logits, job.delta, job.new_inp, runs, job.dropped, job.act_delta)

    def _propagate_from_scratch(self, st: PatchState, keep: Tensor) -> Proposal:
        """`propagate` where a destination's input is not a sum over its edges (post-norm families) or a cross-layer
        transcoder's features feed later layers' error nodes: each candidate's logits from a patched run from scratch,
        exact; nothing incremental to commit but the kept edges and logits."""
        g = self.graph
        reusable = self._units is None  # X holds every source of a graph of whole MLPs
        if reusable and st.x_full is None:
            st.x_full = self.forward(st.keep)[1]
        rows, xs = [], []
        for k in range(keep.shape[0]):
            changed = (keep[k] != st.keep).reshape(keep.shape[1], -1).any(-1)
            if not bool(changed.any()):
                rows.append(st.logits)
                xs.append(st.x_full)
                continue
            # the sources before the first changed destination's layer keep their outputs: reused, not recomputed
            start = int(g.dst_layer[changed.cpu()].min())
            logits, x = self.forward(keep[k], reuse=None if st.x_full is None else (st.x_full, start))
            rows.append(logits if st.vocab is None else logits.index_select(-1, st.vocab))
            xs.append(x if reusable else None)
        return Proposal(keep, torch.stack(rows), {}, {}, {}, [], xs=xs)

    def input_gradients(
        self, loss: Callable[[Tensor], Tensor], interpolate: tuple[range, float] | None = None,
        head_sums: dict[int, Tensor] | None = None, rules: GIM | None = None,
    ) -> Iterator[tuple[Tensor, int, Tensor]]:
        """The gradient of ``loss(logits [rows, d_vocab])`` at every destination's input on the clean run.

        One forward with autograd and one backward through the layer loop; yields, block by block
        and then for ``logits``, ``(rows [R], upto, grads [R, B, S, d])``: destination rows, the
        sources upstream of them (``[0, upto)``) and the gradient at each row's input.
        ``interpolate=(sources, alpha)``: those sources (the input node, a layer's heads, an MLP)
        output A + alpha (O - A) instead, with gradients through their computation (EAP-IG's
        interpolated node group). ``head_sums``: a dict filled, before the first yield, with each layer's heads'
        summed output [B, S, d] before its norm in this pass (post-norm families: where `SourceValues.dot` takes
        the norm's derivative). ``rules``: GIM's backward rules (`acdc.blocks.GIM`) for this pass, or None.
        """
        g, a = self.graph, self.tf.arch
        if rules is not None:
            rules.check(self.tf)
        replace, shifts = None, None
        if interpolate is not None:
            shifts = self.source_values.shifts(*interpolate)  # a cross-layer transcoder's layer: it moves every later MLP
            if shifts is None:
                replace = (interpolate[0], self.source_values.interpolated(*interpolate))
        gp = GradPass(self, replace, rules, shifts)
        with torch.enable_grad():
            first = replace[1][0] if replace is not None and replace[0] == range(0, 1) else self.clean.sources[0]
            cur = first.detach().requires_grad_()  # so every later activation carries a gradient
            streams: dict[int, Tensor] = {}
            for block in self._blocks:
                x = streams.setdefault(block.stream, cur)
                cur = cur + block.grad_forward(gp, x)
            final_probe = torch.zeros_like(cur, requires_grad=True)
            logits = self.tf.unembed(self.at_answers(cur + final_probe), frozen_norm=gp.frozen).reshape(-1, a.d_vocab)
            loss(logits).backward()
        if head_sums is not None:
            head_sums.update(gp.head_sums)
        for block in self._blocks:
            yield from block.grad_inputs(gp)
        grad = final_probe.grad if final_probe.grad is not None else torch.zeros_like(final_probe)
        yield torch.tensor([g.logits_row]), len(g.sources), grad[None]

    # ------------------------------------------------------------------ commit


def _check_weights(w: Tensor, batch: int, pos: int) -> Tensor:
    """A [batch, batch] (over prompts) or [batch * pos, batch * pos] (over tokens) matrix of non-negative weights
    whose rows sum to 1; a one-line error otherwise."""
    w = torch.as_tensor(w, dtype=torch.float64)
    n = w.shape[0] if w.dim() == 2 else -1
    if n not in (batch, batch * pos) or w.shape != (n, n) or bool((w < 0).any()) \
            or not torch.allclose(w.sum(1), torch.ones(n, dtype=w.dtype)):
        raise ValueError(f"mean_weights must be a [{batch}, {batch}] (prompts) or [{batch * pos}, {batch * pos}] (tokens) "
                         "matrix of non-negative weights whose rows sum to 1")
    return w


def _weighted(W: Tensor, x: Tensor, dim: int) -> Tensor:
    """x [..., B, S, ...] (B at ``dim``) with its prompts mixed by W [B, B], or its tokens by W [B * S, B * S]."""
    B, S = x.shape[dim], x.shape[dim + 1]
    if W.shape[0] == B:
        return torch.einsum("ij,...j->...i", W, x.movedim(dim, -1)).movedim(-1, dim)
    flat = x.flatten(dim, dim + 1).movedim(dim, -1)  # [..., rest..., B * S]
    return torch.einsum("ij,...j->...i", W, flat).movedim(-1, dim).unflatten(dim, (B, S))
