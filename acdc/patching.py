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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from .circuit import Circuit
from .graph import Graph
from .inputs import Ablation, answer_positions, as_tokens, check_ablation
from .model import ForwardCache, Transformer
from .positions import Positions, token_names
from .tasks import Task

__all__ = ["Patcher", "PatchState", "PositionalProposal", "PositionalState", "Proposal", "SearchState"]


class MLPUnits(Protocol):
    """How the engine runs a layer's MLP when the graph splits it into units stored *factored*
    (an activation per token times a fixed row of d_model), registered in `MLP_ENGINES` under
    the graph's ``mlp_units`` name (`acdc.neurons` registers "neurons").

    Factored units never exist as [batch, pos, d_model] tensors: a destination's input gets
    ``sum_i w_i (a_i - A_i) row_i`` from `contribution`.
    """

    def activations(self, tf: Transformer, layer: int, x: Tensor) -> Tensor:
        """[..., n_units] the units' activations for MLP input x [..., d_model]."""
        ...

    def contribution(self, tf: Transformer, layer: int, weights: Tensor, values: Tensor) -> Tensor:
        """[R, T, d_model] sum_i weights[r, i] values[i, t] row_i, for weights [R, n] and values [n, T]."""
        ...

    def bias(self, tf: Transformer, layer: int) -> Tensor | None:
        """[d_model] what the MLP adds outside every unit (never ablated), or None."""
        ...


MLP_ENGINES: dict[str, MLPUnits] = {}


class SearchState(Protocol):
    """What a search that removes edges needs of the engine (`Patcher.reference_state`)."""

    keep: Tensor
    logits: Tensor

    def propagate(self, keep: Tensor) -> Any: ...  # -> a proposal with .keep and .logits [K, rows, d_vocab]

    def commit(self, proposal: Any, k: int = 0) -> None: ...

    def drop_destination(self, dst: int) -> None: ...


@dataclass
class PatchState:
    """A reference circuit and everything the engine knows about it.

    keep:      [n_dst, n_src] bool, kept edges (False off the graph's edges).
    out:       [n_src, batch, pos, d_model] output of each source (last layer: answer rows only).
    resid_pre: [n_layers + 1, batch, pos, d_model] unpatched residual stream before each layer.
    resid_mid: [n_layers, batch, pos, d_model] MLP-input stream of each layer.
    logits:    [batch, d_vocab] logits at the answer positions.
    inputs:    destination -> [batch, pos, d_model] input, for a bounded set of destinations
               (an optimisation only; least recently used entries are dropped).
    """

    keep: Tensor
    out: Tensor
    resid_pre: Tensor
    resid_mid: Tensor
    logits: Tensor
    patcher: "Patcher"
    inputs: OrderedDict = field(default_factory=OrderedDict)
    _shared: bool = True  # tensors still belong to the clean run (copied at the first commit)

    def propagate(self, keep: Tensor) -> "Proposal":
        """Evaluate candidate kept-edge sets [K, n_dst, n_src] (or one [n_dst, n_src])."""
        return self.patcher.propagate(self, keep)

    def commit(self, proposal: "Proposal", k: int = 0) -> None:
        """Make candidate ``k`` of ``proposal`` (computed from this state) the reference."""
        self.patcher._commit(self, proposal, k)

    def drop_destination(self, dst: int) -> None:
        """Remove every edge into destination ``dst`` without a rerun: only for a node with no kept
        outgoing edge, whose output nothing reads (so nothing downstream changes)."""
        self.keep[dst] = False
        self.inputs.pop(dst, None)


@dataclass
class PositionalState:
    """A reference circuit on a positional graph, with the same surface as `PatchState`.

    keep:   [n_dst, n_src, n_positions] bool, kept edges.
    logits: [rows, d_vocab] at the answer positions.
    X:      [n_src, batch, pos, d_model] each source's (output - ablation value) under ``keep``.

    A candidate is evaluated by `Patcher.forward`, restarting at the first layer whose inputs it
    changes and taking every source before that layer from ``X``.
    """

    keep: Tensor
    logits: Tensor
    X: Tensor
    patcher: "Patcher"

    def propagate(self, keep: Tensor) -> "PositionalProposal":
        """Evaluate candidate kept-edge sets [K, n_dst, n_src, n_positions] (or one)."""
        if keep.dim() == 3:
            keep = keep[None]
        g = self.patcher.graph
        keep = keep & self.patcher.upstream[None, :, :, None]
        logits, outs = [], []
        for cand in keep:
            changed = (cand != self.keep).any(-1).any(-1)
            if not bool(changed.any()):
                logits.append(self.logits)
                outs.append(self.X)
                continue
            start = int(g.dst_layer[changed.cpu()].min())
            lg, X = self.patcher.forward(cand, reuse=(self.X, start))
            logits.append(lg)
            outs.append(X)
        return PositionalProposal(keep, torch.stack(logits), outs)

    def commit(self, proposal: "PositionalProposal", k: int = 0) -> None:
        """Make candidate ``k`` of ``proposal`` the reference."""
        if bool((proposal.keep[k] & ~self.keep).any()):
            raise ValueError("a commit may only remove edges from the reference circuit")
        self.keep, self.logits, self.X = proposal.keep[k].clone(), proposal.logits[k], proposal.X[k]

    def drop_destination(self, dst: int) -> None:
        """As `PatchState.drop_destination`."""
        self.keep[dst] = False


@dataclass
class PositionalProposal:
    """Candidates evaluated against a `PositionalState`: their logits and source outputs."""

    keep: Tensor  # [K, n_dst, n_src, n_positions]
    logits: Tensor  # [K, rows, d_vocab]
    X: list[Tensor]  # per candidate [n_src, batch, pos, d_model]


@dataclass
class Proposal:
    """Candidates evaluated against a state: their logits, and what a commit needs."""

    keep: Tensor  # [K, n_dst, n_src]
    logits: Tensor  # [K, batch, d_vocab]
    deltas: dict[int, Tensor]  # source -> [K, batch, p, d_model] change of its output
    inputs: dict[int, Tensor]  # destination -> [1|K, batch, p, d_model] input to cache
    runs: dict[int, Tensor]  # stream -> [K, batch, p, d_model] change of the unpatched stream
    dropped: list[int]  # destinations whose cached input went stale


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
            subset, or over the prompts of its own template. Default: the mean over the batch.
        positions: which position each token belongs to (`acdc.Positions`), needed with a
            positional graph (default: the task's); its names must be the graph's.

    Attributes other code reads: ``tf`` (the engine's model), ``graph``, ``ablation``,
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
    ):
        self.ablation: Ablation = check_ablation(ablation)
        tf = model if isinstance(model, Transformer) else Transformer.from_bridge(model)
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
        self._bidx = torch.arange(B, device=tf.device)[:, None]
        self.n_pos = S
        self.positions = self._check_positions(positions, B, S)

        self._units = MLP_ENGINES.get(g.mlp_units) if g.mlp_units != "whole" else None
        if g.mlp_units != "whole" and self._units is None:
            raise ValueError(f"no engine for MLP units {g.mlp_units!r}; import the module that registers it")
        self.clean = tf.run(clean_t, self.answer_pos)
        corrupt_run = tf.run(corrupt_t, self.answer_pos)
        self.corrupt_logits = corrupt_run.logits
        if self._units is not None:
            corrupt_run = self._factor(corrupt_run, mean_weights)
        # Ablation values A [n_src, B|1, S, d] and the all-ablated streams base [.., B|1, S, d].
        if self.ablation == "resample":
            self.abl: Tensor | None = corrupt_run.sources
            self._base_pre, self._base_mid = corrupt_run.resid_pre, corrupt_run.resid_mid
        elif self.ablation == "mean" and mean_weights is not None:  # each prompt its own weighted mean
            W = _check_weights(mean_weights, B).to(device=tf.device, dtype=tf.dtype)
            self.abl = torch.einsum("ij,nj...->ni...", W, corrupt_run.sources)
            self._base_pre = torch.einsum("ij,nj...->ni...", W, corrupt_run.resid_pre)
            self._base_mid = torch.einsum("ij,nj...->ni...", W, corrupt_run.resid_mid)
        elif self.ablation == "mean":
            self.abl = corrupt_run.sources.mean(1, keepdim=True)
            self._base_pre = corrupt_run.resid_pre.mean(1, keepdim=True)
            self._base_mid = corrupt_run.resid_mid.mean(1, keepdim=True)
        else:
            self.abl = None
            b_o = torch.stack([tf.attn_bias(layer) for layer in range(a.n_layers)])  # biases outside every source
            b_m = torch.zeros_like(b_o)  # factored MLP units: the MLP's bias is outside them too
            if self._units is not None:
                for layer in range(a.n_layers):
                    b = self._units.bias(tf, layer)
                    b_m[layer] = 0 if b is None else b
            cum = torch.cat([torch.zeros_like(b_o[:1]), (b_o + b_m).cumsum(0)])
            self._base_pre = cum[:, None, None, :]
            mid = cum[:-1] + b_o if not a.parallel_attn_mlp else cum[:-1]
            self._base_mid = mid[:, None, None, :]
        del corrupt_run
        # one ablation value for the whole batch (plain mean ablation), else one per prompt (or none: zero)
        self.shared_ablation = self.abl is not None and self.abl.shape[1] == 1
        self._layout()

    def _factor(self, corrupt: ForwardCache, mean_weights: Tensor | None) -> ForwardCache:
        """The corrupt run in a factored graph's layout: its dense sources (input, heads) in their slot
        order, and each layer's unit activations as ablation values (``self._abl_units``)."""
        g, tf, units = self.graph, self.tf, self._units
        assert units is not None
        if g.positions is not None:
            raise NotImplementedError(f"MLP {g.mlp_units} at token positions are not supported yet; use a plain graph")
        plain = Graph.from_model(tf)
        factored = {i for layer in range(g.n_layers) for i in g.mlp_sources(layer)}
        dense = [i for i in range(len(g.sources)) if i not in factored]
        self._dense_cols = torch.tensor(dense, device=tf.device)
        self._dslot = torch.full((len(g.sources),), -1, dtype=torch.long, device=tf.device)
        self._dslot[self._dense_cols] = torch.arange(len(dense), device=tf.device)
        rows = torch.tensor([plain.src_index[g.sources[i].name] for i in dense], device=tf.device)
        self._abl_units: list[Tensor | None] = []
        for layer in range(g.n_layers):
            acts = units.activations(tf, layer, corrupt.resid_mid[layer])  # [B, S, n]
            if self.ablation == "mean":
                acts = (acts.mean(0, keepdim=True) if mean_weights is None else
                        torch.einsum("ij,j...->i...", _check_weights(mean_weights, acts.shape[0]).to(acts), acts))
            self._abl_units.append(None if self.ablation == "zero" else acts.movedim(-1, 0))  # [n, B|1, S]
        return ForwardCache(corrupt.sources.index_select(0, rows), corrupt.resid_pre, corrupt.resid_mid, corrupt.logits)

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
        """Which destinations are read at the answer rows only (the last layer's q and MLP, logits)."""
        g, L = self.graph, self.tf.arch.n_layers
        self._dst_ans: list[bool] = [d.answers_only(L) for d in g.destinations]
        self.upstream = g.upstream.to(self.tf.device)

    # ------------------------------------------------------------------ public API
    @property
    def clean_outputs(self) -> Tensor:
        """[n_src, batch, pos, d_model] every source's output on the clean run."""
        return self.clean.sources

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

    def reference_state(self) -> SearchState:
        """The state a search that removes edges (ACDC) starts from: the full circuit on the clean run.

        Plain graphs get the incremental `PatchState`; positional graphs a `PositionalState`. Both
        have ``keep``, ``logits``, ``propagate(candidates)``, ``commit(proposal, k)`` and
        ``drop_destination(dst)``.
        """
        if self.graph.positions is None:
            return self.state()
        keep = self.upstream[:, :, None].expand(*self.upstream.shape, self.graph.n_positions).clone()
        logits, X = self.forward(keep)
        return PositionalState(keep, logits, X, self)

    def state(self) -> PatchState:
        """A fresh reference state: the full circuit (every edge kept) on the clean run.

        It shares the clean run's tensors until its first commit (copy-on-write).
        """
        self._plain_only("PatchState")
        self._dense_only("PatchState (incremental ACDC)")
        c = self.clean
        return PatchState(self.upstream.clone(), c.sources, c.resid_pre, c.resid_mid, c.logits, self)

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
        """`run`, also returning X [n_src, B, S, d], each source's (output - ablation value).

        ``reuse=(X, layer)``: X of a circuit that differs from ``keep`` only in edges into
        ``layer`` or later; the sources before that layer are taken from it, not recomputed
        (positional ACDC restarts at the layer of the edge it tests).
        """
        tf, a, g = self.tf, self.tf.arch, self.graph
        H, L = a.n_heads, a.n_layers
        B, S = self.clean_tokens.shape
        positional = g.positions is not None and g.n_positions > 1
        if g.positions is not None and not positional:
            keep = keep[..., 0]  # one position covering every token: the plain graph's state
        w = keep.to(tf.dtype)
        units = self._units  # factored MLP units (neurons), or None: every source is a dense tensor
        n_dense = len(g.sources) if units is None else len(self._dense_cols)
        X = torch.empty(n_dense, B, S, a.d_model, dtype=tf.dtype, device=tf.device)  # out_u - A_u (dense sources)
        F: dict[int, Tensor] = {}  # layer -> [n_units, B * S] (a_i - A_i) of its factored MLP units

        def slot(idx: slice | Tensor) -> slice | Tensor:
            """Rows of X of graph sources ``idx`` (the same indices unless some sources are factored)."""
            return idx if units is None else self._dslot[idx]

        def put(idx: slice | Tensor, out: Tensor) -> None:
            rows = slot(idx)
            X[rows] = out if self.abl is None else out - self.abl[rows]

        def factored_gather(rows: list[int], upto: int, base: Tensor) -> Tensor:
            """Inputs [R, B, S, d] of the rows when some sources are factored: the dense sources' product,
            plus each factored layer's sum_i w_i (a_i - A_i) row_i."""
            assert units is not None
            W = w[rows, :upto]
            cols = self._dense_cols[self._dense_cols < upto]
            Wd = W[:, cols]
            out = base.expand(len(rows), B, S, a.d_model)
            if bool(Wd.any()):
                out = (Wd @ X[: len(cols)].reshape(len(cols), -1)).view(-1, B, S, a.d_model) + base
            for layer_u, values in F.items():
                r = g.mlp_sources(layer_u)
                Ws = W[:, r.start : r.stop]  # empty when the layer is not upstream (W ends at upto)
                if bool(Ws.any()):
                    out = out + units.contribution(tf, layer_u, Ws, values).view(-1, B, S, a.d_model)
            return out

        def kept_columns(W: Tensor) -> Tensor | None:
            """The sources [k] some row of W [R, n] keeps, when they are few (a small circuit reads few
            sources, and the product then runs over those alone); None: most are kept, use them all."""
            cols = W.any(0).nonzero().squeeze(1)
            return cols if 2 * len(cols) <= W.shape[1] else None

        def gather(rows: list[int], upto: int, base: Tensor) -> tuple[Tensor, Tensor | None]:
            """Distinct inputs [u, B, S, d] of the rows, and each row's index into them.

            Destinations with the same kept sources share one input (all-ablated or all-kept
            rows are common), so the product runs once per distinct row; an empty row is the
            all-ablated stream itself. Index None: the rows themselves, in order.
            """
            if positional:
                return gather_at_positions(rows, upto, base), None
            if units is not None:
                return factored_gather(rows, upto, base), None
            W = w[rows, :upto]
            uniq, inv = torch.unique(W, dim=0, return_inverse=True)
            if 2 * len(uniq) > len(rows):  # little to share: one product, rows in order
                uniq, inv = W, None
            if not bool(uniq.any()):
                return base.expand(len(uniq), B, S, a.d_model), inv
            cols = kept_columns(uniq)
            if cols is None:
                product = uniq @ X[:upto].reshape(upto, -1)
            else:
                product = uniq[:, cols] @ X.index_select(0, cols).reshape(len(cols), -1)
            return product.view(-1, B, S, a.d_model) + base, inv

        def gather_at_positions(rows: list[int], upto: int, base: Tensor) -> Tensor:
            """Inputs [R, B, S, d] of the rows: per position, the product over that position's tokens."""
            W = w[rows, :upto]  # [R, upto, G]
            flat_x = X[:upto].reshape(upto, B * S, a.d_model)
            flat_base = base.expand(B, S, a.d_model).reshape(B * S, a.d_model)
            out = torch.empty(len(rows), B * S, a.d_model, dtype=tf.dtype, device=tf.device)
            for p, idx in enumerate(self._groups):
                Wp = W[:, :, p]
                if not bool(Wp.any()):
                    out[:, idx] = flat_base[idx]
                    continue
                cols = kept_columns(Wp)
                if cols is None:
                    product = Wp @ flat_x.index_select(1, idx).reshape(upto, -1)
                else:
                    product = Wp[:, cols] @ flat_x.index_select(0, cols).index_select(1, idx).reshape(len(cols), -1)
                out[:, idx] = product.view(len(rows), -1, a.d_model) + flat_base[idx]
            return out.view(len(rows), B, S, a.d_model)

        # A node is computed only if some kept edge reads it, and (resample) only if some kept
        # edge feeds it: with every input ablated its output is its ablation value, out - A = 0.
        any_pos = keep.any(-1) if positional else keep
        used = any_pos.any(0).tolist()
        fed = any_pos.any(1).tolist()
        skip_unfed = self.ablation == "resample"
        start = 0
        if reuse is not None:
            start = min(reuse[1], L)
            done = g.head_src(start) if start < L else len(g.sources)
            X[:done] = reuse[0][:done]
        else:
            put(slice(0, 1), self.clean.sources[:1])  # the input node's output does not depend on edges
        for layer in range(start, L):
            first = g.head_src(layer)
            trios = self.graph.head_rows(layer)
            live = [h for h in range(H) if used[first + h] and not (skip_unfed and not any(fed[r] for r in trios[h]))]
            X[slot(slice(first, first + H))] = 0
            if live:
                rows = [r for h in live for r in (trios[h] if g.split_qkv else trios[h][:1])]
                x, inv = gather(rows, first, self._base_pre[layer])
                if len(x) == 1:  # every live head reads the same input: the shared (one-matmul) path
                    xq = xk = xv = x[0]
                else:
                    x = x if inv is None else x[inv]
                    xq, xk, xv = x.view(len(live), 3, B, S, a.d_model).unbind(1) if g.split_qkv else (x, x, x)
                hs = torch.tensor(live, device=tf.device)
                put(hs + first, tf.attention(layer, hs, xq, xk, xv))
            if g.attn_only:
                continue
            if units is not None:  # the MLP as factored units: their activations, stored per unit
                r, row = g.mlp_sources(layer), g.mlp_row(layer)
                if any(used[r.start : r.stop]) and not (skip_unfed and not fed[row]):
                    m_in = gather([row], first if a.parallel_attn_mlp else first + H, self._base_mid[layer])[0][0]
                    acts = units.activations(tf, layer, m_in).movedim(-1, 0)  # [n, B, S]
                    abl = self._abl_units[layer]
                    F[layer] = (acts if abl is None else acts - abl).reshape(len(r), -1)
                continue
            m = g.mlp_src(layer)
            row = self.graph.mlp_row(layer)
            if used[m] and not (skip_unfed and not fed[row]):
                upto = first if a.parallel_attn_mlp else first + H
                m_in = gather([row], upto, self._base_mid[layer])[0][0]
                put(slice(m, m + 1), tf.mlp(layer, m_in)[None])
            else:
                X[m] = 0
        final = gather([self.graph.logits_row], len(g.sources), self._base_pre[L])[0][0]
        return tf.unembed(self.at_answers(final)).reshape(-1, a.d_vocab), X

    # ------------------------------------------------------------------ propagation
    def _dense_only(self, what: str) -> None:
        if self._units is not None:
            raise NotImplementedError(f"{what} does not run on graphs with MLP {self.graph.mlp_units} yet; "
                                      "Patcher.logits / run / forward do (faithfulness, the explorer)")

    def _plain_only(self, what: str) -> None:
        if self.graph.positions is not None:
            raise ValueError(f"{what} works on plain graphs; a positional graph is evaluated with Patcher.run / forward")

    def at_answers(self, x: Tensor) -> Tensor:
        """[..., B, S, d] -> [..., B, P, d] at each prompt's answer positions."""
        return x[..., self._bidx, self.answer_pos, :]

    def _full(self, x: Tensor) -> bool:
        """Whether ``x`` [..., S|P, d] holds every position (else the answer rows only).

        When P == S the answer rows are all positions in order (they are strictly increasing),
        so both readings agree.
        """
        return x.shape[-2] == self.n_pos

    def _stream_ref(self, st: PatchState, stream: int, ans: bool) -> Tensor:
        layer, mid = divmod(stream, 2)
        x = st.resid_mid[layer] if mid else st.resid_pre[layer]
        return self.at_answers(x) if ans else x

    def _stream_base(self, stream: int, ans: bool) -> Tensor:
        """All-ablated stream [B|1, S|1, d] (every upstream source at its ablation value)."""
        layer, mid = divmod(stream, 2)
        x = self._base_mid[layer] if mid else self._base_pre[layer]
        if ans:
            x = x.expand(len(self._bidx), self.n_pos, -1)
            return self.at_answers(x)
        return x.expand(-1, self.n_pos, -1)

    def propagate(self, st: PatchState, keep: Tensor) -> Proposal:
        """Logits of candidate circuits ``keep`` [K, n_dst, n_src] against state ``st``."""
        self._plain_only("propagate")
        if keep.dim() == 2:
            keep = keep[None]
        keep = keep & self.upstream
        K = keep.shape[0]
        a = self.tf.arch
        L = a.n_layers
        changed_rows = (keep != st.keep[None]).any(0).any(-1)
        if not bool(changed_rows.any()):
            return Proposal(keep, st.logits.expand(K, *st.logits.shape), {}, {}, {}, [])
        start = int(self.graph.dst_layer[changed_rows.cpu()].min())
        job = _Job(self, st, keep, changed_rows)
        for layer in range(start, L):
            job.open_stream(2 * layer)
            self._run_heads(job, layer)
            if a.parallel_attn_mlp:  # the MLP reads the stream before this layer's heads
                job.runs[2 * layer + 1] = job.runs[2 * layer]
                self._run_mlp(job, layer, 2 * layer)
            else:
                job.open_stream(2 * layer + 1)
                self._run_mlp(job, layer, 2 * layer + 1)
        job.open_stream(2 * L)
        x = job.dst_input(self.graph.logits_row, 2 * L, True).expand(K, -1, -1, -1)
        logits = self.tf.unembed(x.reshape(-1, x.shape[-1])).view(K, -1, a.d_vocab)
        runs = {k: v for k, v in job.runs.items() if v is not None}
        return Proposal(keep, logits, job.delta, job.new_inp, runs, job.dropped)

    def _run_heads(self, job: "_Job", layer: int) -> None:
        """Recompute the heads of ``layer`` whose inputs changed and whose output is used."""
        a = self.tf.arch
        rows = self.graph.head_rows(layer)
        last = layer == a.n_layers - 1
        base = self.graph.head_src(layer)
        hit = job.affected_many([r for t in rows for r in t])
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
        K, B = job.K, len(self._bidx)
        stream = 2 * layer
        shared_full = job.stream_value(stream, False)
        shared_q = job.stream_value(stream, True) if last else shared_full
        shared, own = [], []
        for h in todo:
            rq, rk, rv = rows[h]
            if rq == rk and last:  # one input for q, k, v: read q at the answer rows
                xk = xv = job.dst_input(rq, stream, False)
                xq = self.at_answers(xk) if xk is not shared_full else shared_q
            else:
                xq = job.dst_input(rq, stream, last)
                xk = job.dst_input(rk, stream, False)
                xv = job.dst_input(rv, stream, False)
            if xq is shared_q and xk is shared_full and xv is shared_full:
                shared.append(h)
            else:
                own.append((h, xq, xk, xv))
        q_pos = self.answer_pos.repeat(K, 1) if last else None
        outs, heads_done = [], []
        if shared:
            full = shared_full.expand(K, *shared_full.shape[-3:]).reshape(K * B, *shared_full.shape[-2:])
            q = shared_q.expand(K, *shared_q.shape[-3:]).reshape(K * B, *shared_q.shape[-2:])
            hs = torch.tensor(shared, device=self.tf.device)
            outs.append(self.tf.attention(layer, hs, q, full, full, q_pos=q_pos))
            heads_done.extend(shared)
        if own:
            def stack(i: int) -> Tensor:
                xs = [t[i].expand(K, *t[i].shape[-3:]) for t in own]
                return torch.stack(xs).reshape(len(own), K * B, *xs[0].shape[-2:])

            hs = torch.tensor([t[0] for t in own], device=self.tf.device)
            outs.append(self.tf.attention(layer, hs, stack(1), stack(2), stack(3), q_pos=q_pos))
            heads_done.extend(t[0] for t in own)
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        out = out.view(len(heads_done), K, B, *out.shape[-2:])
        srcs = [base + h for h in heads_done]
        ref = self._src_ref(job.st, srcs, last)
        job.add_deltas(srcs, out - ref[:, None])

    def _run_mlp(self, job: "_Job", layer: int, stream: int) -> None:
        if self.graph.attn_only:
            return
        row = self.graph.mlp_row(layer)
        src = self.graph.mlp_src(layer)
        if not job.affected_many([row])[0]:
            return
        if not bool(job.alive[src]):
            job.dropped.append(row)
            return
        ans = self._dst_ans[row]
        x = job.dst_input(row, stream, ans)
        new = self.tf.mlp(layer, x.expand(job.K, *x.shape[-3:]))
        job.add_deltas([src], new[None] - self._src_ref(job.st, [src], ans)[:, None])

    def _src_ref(self, st: PatchState, srcs: list[int], ans: bool) -> Tensor:
        """Reference outputs [n, B, p, d] of some sources (answer rows only if ``ans``)."""
        x = st.out[srcs[0] : srcs[-1] + 1] if srcs == list(range(srcs[0], srcs[-1] + 1)) else st.out[srcs]
        return self.at_answers(x) if ans else x

    # ------------------------------------------------------------------ commit
    def _commit(self, st: PatchState, p: Proposal, k: int) -> None:
        if bool((p.keep[k] & ~st.keep).any()):
            raise ValueError("a commit may only remove edges from the reference circuit")
        if st._shared:  # copy-on-write: the first commit detaches the state from the clean run
            st.out, st.resid_pre, st.resid_mid = st.out.clone(), st.resid_pre.clone(), st.resid_mid.clone()
            st._shared = False
        bidx, apos = self._bidx, self.answer_pos
        for src, delta in p.deltas.items():
            if not self._full(delta):
                st.out[src, bidx, apos] += delta[k]
            else:
                st.out[src] += delta[k]
        for stream, run in p.runs.items():
            layer, mid = divmod(stream, 2)
            target = st.resid_mid if mid else st.resid_pre
            if not self._full(run):
                target[layer, bidx, apos] += run[k]
            else:
                target[layer] += run[k]
        for dst in p.dropped:
            st.inputs.pop(dst, None)
        for dst, new in p.inputs.items():
            st.inputs[dst] = new[min(k, new.shape[0] - 1)].clone()
            st.inputs.move_to_end(dst)
        used = sum(t.numel() * t.element_size() for t in st.inputs.values())
        while st.inputs and used > self.cache_bytes:
            _, t = st.inputs.popitem(last=False)
            used -= t.numel() * t.element_size()
        st.keep = p.keep[k].clone()
        st.logits = p.logits[k].clone()


class _Job:
    """Bookkeeping of one propagation: changed sources, running stream change, new inputs."""

    def __init__(self, patcher: Patcher, st: PatchState, keep: Tensor, changed_rows: Tensor):
        self.p = patcher
        self.st = st
        self.keep = keep
        self.K = keep.shape[0]
        self.changed_rows = changed_rows
        self.alive = keep.any(0).any(0)  # [n_src]: some candidate keeps an edge out of it
        self.changed = torch.zeros(keep.shape[-1], dtype=torch.bool, device=keep.device)
        self.delta: dict[int, Tensor] = {}  # source -> [K, B, p, d] change of its output
        self._delta_ans: dict[int, Tensor] = {}
        self.run: Tensor | None = None  # change of the unpatched stream so far [K, B, p, d]
        self.runs: dict[int, Tensor | None] = {}
        self._streams: dict[tuple[int, bool], Tensor] = {}
        self.new_inp: dict[int, Tensor] = {}  # inputs a commit will cache
        self.memo: dict[int, Tensor] = {}
        self.dropped: list[int] = []

    def affected_many(self, rows: list[int]) -> list[bool]:
        """Whether each destination's input differs from the reference."""
        r = torch.tensor(rows, device=self.keep.device)
        hit = self.changed_rows[r] | (self.keep[:, r] & self.changed).any(-1).any(0)
        return hit.tolist()

    def open_stream(self, stream: int) -> None:
        self.runs[stream] = self.run

    def stream_value(self, stream: int, ans: bool) -> Tensor:
        """Unpatched stream of the candidates, [1|K, B, p, d]; one shared tensor per stream."""
        key = (stream, ans)
        if key not in self._streams:
            x = self.p._stream_ref(self.st, stream, ans)[None]
            run = self.runs.get(stream)
            if run is not None:
                x = x + (self.p.at_answers(run) if ans and self.p._full(run) else run)
            self._streams[key] = x
        return self._streams[key]

    def add_deltas(self, srcs: list[int], delta: Tensor) -> None:
        """Record new outputs' changes [n, K, B, p, d]; add them to the running stream change."""
        for j, s in enumerate(srcs):
            self.delta[s] = delta[j]
            self.changed[s] = True
        total = delta.sum(0) if len(srcs) > 1 else delta[0]
        if self.run is None:
            self.run = total
        elif self.run.shape[-2] != total.shape[-2]:
            self.run = self.p.at_answers(self.run) + total
        else:
            self.run = self.run + total

    def _delta(self, src: int, ans: bool) -> Tensor:
        d = self.delta[src]
        if ans and self.p._full(d):
            if src not in self._delta_ans:
                self._delta_ans[src] = self.p.at_answers(d)
            return self._delta_ans[src]
        return d

    def _sum_ref(self, w: Tensor, ans: bool) -> Tensor | None:
        """sum_u w[k, u] (O_u - A_u) over reference outputs; w [K, n_src]."""
        cols = w.ne(0).any(0).nonzero().squeeze(1)
        if cols.numel() == 0:
            return None
        p = self.p
        x = self.st.out.index_select(0, cols)
        if p.abl is not None:
            x = x - p.abl.index_select(0, cols)
        if ans:
            x = p.at_answers(x)
        return torch.einsum("kn,nbpd->kbpd", w[:, cols].to(x.dtype), x)

    def _sum_delta(self, w: Tensor, ans: bool) -> Tensor | None:
        """sum_u w[k, u] delta_u over changed sources (w is zero elsewhere)."""
        cols = (w.ne(0).any(0) & self.changed).nonzero().squeeze(1).tolist()
        if not cols:
            return None
        terms = [self._delta(c, ans) for c in cols]
        if len(cols) == 1:
            return terms[0] * w[:, cols[0]].to(terms[0].dtype)[:, None, None, None]
        x = torch.stack(terms, 1)  # [K, n, B, p, d]
        return torch.einsum("kn,knbpd->kbpd", w[:, cols].to(x.dtype), x)

    def dst_input(self, row: int, stream: int, ans: bool) -> Tensor:
        """Input of destination ``row`` under every candidate: [1|K, B, p, d]."""
        if row in self.memo:
            x = self.memo[row]
            return self.p.at_answers(x) if ans and self.p._full(x) else x
        st, p = self.st, self.p
        up = p.upstream[row]
        kept = self.keep[:, row]  # [K, n_src], already within `up`
        ablated = up & ~kept
        n_abl = int(ablated.sum(-1).max())
        if n_abl == 0:
            x = self.stream_value(stream, ans)
        else:
            # Forms that subtract from the full stream lose float precision when the result is
            # small (many sources ablated), and LayerNorm magnifies that; so they must be
            # clearly cheaper than summing the kept sources to be chosen.
            options = {"kept": int(kept.sum(-1).max()), "ablated": 2 * n_abl + 1}
            ref_row = st.keep[row]
            cached = st.inputs.get(row)
            if cached is not None:
                moved = int((kept != ref_row[None]).sum(-1).max()) + int((kept & self.changed).sum(-1).max())
                options["relative"] = 2 * moved + 1
            how = min(options, key=lambda k: options[k])
            if how == "relative" and cached is not None:
                st.inputs.move_to_end(row)
                x = (p.at_answers(cached) if ans and p._full(cached) else cached)[None]
                terms = [(1, self._sum_ref(kept.to(torch.int8) - ref_row[None].to(torch.int8), ans)), (1, self._sum_delta(kept, ans))]
            elif how == "kept":
                x = p._stream_base(stream, ans)[None]
                terms = [(1, self._sum_ref(kept, ans)), (1, self._sum_delta(kept, ans))]
            else:
                x = self.stream_value(stream, ans)
                terms = [(-1, self._sum_ref(ablated, ans)), (-1, self._sum_delta(ablated, ans))]
            for sign, term in terms:
                if term is not None:
                    x = x + term if sign > 0 else x - term
            x = x.expand(x.shape[0], len(p._bidx), *x.shape[-2:])
        self.memo[row] = x
        if (row in st.inputs or bool(self.changed_rows[row])) and self.affected_many([row])[0]:
            self.new_inp[row] = x
        return x


def _check_weights(w: Tensor, batch: int) -> Tensor:
    """A [batch, batch] matrix of non-negative weights whose rows sum to 1; a one-line error otherwise."""
    w = torch.as_tensor(w, dtype=torch.float64)
    if w.shape != (batch, batch) or bool((w < 0).any()) or not torch.allclose(w.sum(1), torch.ones(batch, dtype=w.dtype)):
        raise ValueError(f"mean_weights must be a [{batch}, {batch}] matrix of non-negative weights whose rows sum to 1")
    return w
