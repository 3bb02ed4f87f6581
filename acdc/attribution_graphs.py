"""Attribution graphs as data: nodes, the dense adjacency of direct effects, pruning by influence,
the replacement and completeness scores, and circuit-tracer's graph JSON.

An attribution graph explains one prompt's next-token prediction (Ameisen et al. 2025; the
circuit-tracer library). Its nodes, in circuit-tracer's order (the rows and columns of
``adjacency``):

1. active transcoder features at each position, sorted by (layer, position, feature);
2. error nodes, one per (layer, position), layer-major: what the transcoder misses there (the
   whole MLP output in a layer without a transcoder; zero at a skipped first position);
3. token embeddings, one per position;
4. logits: the top tokens at the last position (up to ``max_logits`` until their probability
   reaches ``logit_prob``), each read as the demeaned unembedding direction.

``adjacency[t, s]`` is the direct effect of source ``s`` on target ``t`` in the local replacement
model (`acdc.linearised`): for a feature target its encoder pre-activation (without ``b_enc``),
for a logit target its demeaned logit. Only features and logits have incoming edges.

Node names: ``m{L}.f{i}@{pos}``, ``m{L}.err@{pos}``, ``input@{pos}`` (the token), ``logit@{token id}``.
circuit-tracer's JSON ids (`to_json`): ``"{L}_{i}_{pos}"`` for a feature, ``"0_{L}_{pos}"`` for an
error, ``"E_{token}_{pos}"`` for a token, ``"{n_layers + 1}_{token}_{pos}"`` for a logit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .files import claim, claim_folder

__all__ = ["AttributionGraph", "Pruned", "partial_influences", "prune"]


@dataclass
class AttributionGraph:
    """One prompt's attribution graph (see the module docstring).

    tokens:      [S] the prompt's token ids; ``token_strs`` their text.
    features:    [n_f, 3] long (layer, position, feature index) of every active feature node.
    activations: [n_f] their activations.
    logit_tokens, logit_probs: [n_l] the logit nodes' token ids and probabilities.
    adjacency:   [n, n] float32, rows = targets, columns = sources.
    n_layers:    the model's layers (error nodes: n_layers x S).
    info:        the model, transcoders and settings, and timings.
    labels:      a researcher's labels of nodes, by name (``m3.f17@5``): circuit-tracer's ``clerp``
                 in `to_json`, saved by `save`, edited in the explorer (`acdc explore GRAPH`).
    pinned:      nodes (names) the explorer always shows; circuit-tracer's ``qParams.pinnedIds``.
    supernodes:  groups of nodes, each ``[label, name, name, ...]``; circuit-tracer's ``qParams.supernodes``.
    """

    tokens: Tensor
    token_strs: list[str]
    features: Tensor
    activations: Tensor
    logit_tokens: Tensor
    logit_probs: Tensor
    adjacency: Tensor
    n_layers: int
    logit_strs: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    pinned: list[str] = field(default_factory=list)
    supernodes: list[list[str]] = field(default_factory=list)
    _influence: Tensor | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ layout
    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_tokens.shape[0])

    @property
    def n_nodes(self) -> int:
        return self.n_features + (self.n_layers + 1) * self.n_pos + self.n_logits

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    def node_name(self, i: int) -> str:
        """acdc's name of node ``i``: ``m3.f17@5``, ``m3.err@5``, ``input@5``, ``logit@1234``."""
        if i < self.n_features:
            layer, pos, f = self.features[i].tolist()
            return f"m{layer}.f{f}@{pos}"
        if i < self.token_start:
            layer, pos = divmod(i - self.error_start, self.n_pos)
            return f"m{layer}.err@{pos}"
        if i < self.logit_start:
            return f"input@{i - self.token_start}"
        return f"logit@{int(self.logit_tokens[i - self.logit_start])}"

    def node_names(self) -> list[str]:
        return [self.node_name(i) for i in range(self.n_nodes)]

    def node_index(self, name: str) -> int:
        """The index of the node called ``name`` (see `node_name`); a ValueError otherwise."""
        try:
            return self.node_names().index(name)
        except ValueError:
            raise ValueError(f"no node {name!r} in this attribution graph (names look like m3.f17@5, m3.err@5, "
                             "input@5, logit@1234)") from None

    def edge(self, source: str, target: str) -> float:
        """The direct effect of node ``source`` on node ``target``."""
        return float(self.adjacency[self.node_index(target), self.node_index(source)])

    def logit_weights(self) -> Tensor:
        """[n] the logit nodes' probabilities, zero elsewhere (what influence is measured against)."""
        w = torch.zeros(self.n_nodes, dtype=self.adjacency.dtype)
        w[self.logit_start:] = self.logit_probs.to(w.dtype)
        return w

    # ------------------------------------------------------------------ scores
    def influence(self) -> Tensor:
        """[n] each node's influence on the logits: the logit probabilities pushed back through the
        row-normalised |adjacency| over paths of every length (what pruning ranks nodes by).
        Computed once (the adjacency is not meant to change); do not modify the tensor returned."""
        if self._influence is None:
            self._influence = _node_influence(self.adjacency.float(), self.logit_weights().float())
        return self._influence

    @cached_property
    def scores(self) -> tuple[float, float]:
        """(replacement score, completeness score), computed once."""
        return _scores(self)

    @property
    def replacement_score(self) -> float:
        """Of the influence on the logits that reaches back to the tokens or the error nodes, the
        fraction that reaches the tokens (circuit-tracer's replacement score: 1 when every path
        from the logits back ends at a token, through features only)."""
        return self.scores[0]

    @property
    def completeness_score(self) -> float:
        """The fraction of each node's input that comes from features and tokens rather than error
        nodes, averaged with weights of the nodes' influence on the logits (circuit-tracer's
        completeness score)."""
        return self.scores[1]

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
        """`prune` of this graph (circuit-tracer's defaults)."""
        return prune(self, node_threshold, edge_threshold)

    # ------------------------------------------------------------------ files
    def to_json(self, path: str | Path, *, slug: str | None = None, node_threshold: float = 0.8,
                edge_threshold: float = 0.98, scan: str | None = None, overwrite: bool = False) -> Path:
        """circuit-tracer's graph file, the schema its frontend serves (its pydantic
        `circuit_tracer.frontend.graph_models.Model` reads ours: experiments/peers/check_attribution_graph.sh):
        the nodes and edges kept by `prune`, with their influence and activations. An existing file is refused
        unless ``overwrite``."""
        path = claim(path, overwrite)
        doc = self.to_dict(slug=slug or path.stem, node_threshold=node_threshold, edge_threshold=edge_threshold, scan=scan)
        path.write_text(json.dumps(doc, indent=1))
        return path

    def to_dict(self, *, slug: str = "graph", node_threshold: float = 0.8, edge_threshold: float = 0.98,
                scan: str | None = None) -> dict[str, Any]:
        """`to_json`'s document (circuit-tracer's schema), without writing it."""
        kept = self.prune(node_threshold, edge_threshold)
        nodes: dict[int, dict[str, Any]] = {}
        for i in kept.node_mask.nonzero().squeeze(1).tolist():
            nodes[i] = self.node_record(i, float(kept.cumulative[i]))
        dst, src = kept.edge_mask.nonzero(as_tuple=True)
        links = [{"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(self.adjacency[t, s])}
                 for t, s in zip(dst.tolist(), src.tolist(), strict=True) if s in nodes and t in nodes]
        linked = {x for link in links for x in (link["source"], link["target"])}
        for name in [*self.pinned, *(n for g in self.supernodes for n in g[1:])]:  # kept in the file whatever the thresholds
            i = self.node_index(name)
            nodes.setdefault(i, self.node_record(i, float(kept.cumulative[i])))
            linked.add(nodes[i]["node_id"])
        used = [n for n in nodes.values() if n["node_id"] in linked or n["feature_type"] in ("embedding", "logit")]
        doc = {
            "metadata": {"slug": slug, "scan": scan or str(self.info.get("transcoders", "acdc")), "transcoder_list": [],
                         "prompt_tokens": list(self.token_strs), "prompt": "".join(self.token_strs),
                         "node_threshold": node_threshold, "schema_version": 1,
                         "info": {"generator": "acdc", **{k: v for k, v in self.info.items() if _jsonable(v)}}},
            "qParams": {"pinnedIds": [self.node_record(self.node_index(n), 0.0)["node_id"] for n in self.pinned],
                        "supernodes": [[g[0], *(self.node_record(self.node_index(n), 0.0)["node_id"] for n in g[1:])]
                                       for g in self.supernodes],
                        "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": used,
            "links": links,
        }
        return doc

    def node_record(self, i: int, influence: float) -> dict[str, Any]:
        """Node ``i`` in circuit-tracer's JSON schema (its ``Node`` model)."""
        base = {"token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
                "clerp": self.labels.get(self.node_name(i), ""), "influence": influence, "activation": None}
        if i < self.n_features:
            layer, pos, f = self.features[i].tolist()
            return {**base, "node_id": f"{layer}_{f}_{pos}", "feature": (layer + f) * (layer + f + 1) // 2 + f,
                    "layer": str(layer), "ctx_idx": pos, "feature_type": "cross layer transcoder",
                    "jsNodeId": f"{layer}_{f}-0", "activation": float(self.activations[i])}
        if i < self.token_start:
            layer, pos = divmod(i - self.error_start, self.n_pos)
            return {**base, "node_id": f"0_{layer}_{pos}", "feature": -1, "layer": str(layer), "ctx_idx": pos,
                    "feature_type": "mlp reconstruction error", "jsNodeId": f"{layer}_{pos}-0"}
        if i < self.logit_start:
            pos = i - self.token_start
            tok = int(self.tokens[pos])
            return {**base, "node_id": f"E_{tok}_{pos}", "feature": pos, "layer": "E", "ctx_idx": pos,
                    "feature_type": "embedding", "jsNodeId": f"E_{tok}-{pos}"}
        k = i - self.logit_start
        tok, p = int(self.logit_tokens[k]), float(self.logit_probs[k])
        text = self.logit_strs[k] if k < len(self.logit_strs) else str(tok)
        layer = str(self.n_layers + 1)
        return {**base, "node_id": f"{layer}_{tok}_{self.n_pos - 1}", "feature": tok, "layer": layer,
                "ctx_idx": self.n_pos - 1, "feature_type": "logit", "token_prob": p, "is_target_logit": k == 0,
                "jsNodeId": f"L_{tok}-{self.n_pos - 1}",
                "clerp": self.labels.get(self.node_name(i)) or f'Output "{text}" (p={p:.3f})'}

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """The whole graph (every node and edge) as safetensors + JSON metadata in the folder ``path``, for
        `load`; a folder already holding a graph is refused unless ``overwrite``."""
        from safetensors.torch import save_file

        path = claim_folder(path, ("graph.safetensors", "graph.json"), overwrite)
        save_file({"tokens": self.tokens.contiguous(), "features": self.features.contiguous(),
                   "activations": self.activations.contiguous(), "logit_tokens": self.logit_tokens.contiguous(),
                   "logit_probs": self.logit_probs.contiguous(), "adjacency": self.adjacency.contiguous()},
                  str(path / "graph.safetensors"))
        return self.save_labels(path)

    def save_labels(self, path: str | Path) -> Path:
        """Rewrite only the metadata (labels, pins and supernodes included) of a graph `save` wrote to ``path``."""
        path = Path(path)
        meta = {"format": "acdc-attribution-graph/1", "n_layers": self.n_layers, "token_strs": self.token_strs,
                "logit_strs": self.logit_strs, "info": {k: v for k, v in self.info.items() if _jsonable(v)},
                "labels": dict(self.labels), "pinned": list(self.pinned), "supernodes": [list(g) for g in self.supernodes]}
        tmp = path / "graph.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(path / "graph.json")
        return path

    @classmethod
    def load(cls, path: str | Path) -> AttributionGraph:
        from safetensors.torch import load_file

        path = Path(path)
        meta = json.loads((path / "graph.json").read_text())
        if meta.get("format") != "acdc-attribution-graph/1":
            raise ValueError(f"{path} is not a saved acdc attribution graph (graph.json format {meta.get('format')!r})")
        t = load_file(str(path / "graph.safetensors"))
        return cls(t["tokens"], meta["token_strs"], t["features"], t["activations"], t["logit_tokens"], t["logit_probs"],
                   t["adjacency"], int(meta["n_layers"]), meta.get("logit_strs", []), meta.get("info", {}),
                   dict(meta.get("labels", {})), list(meta.get("pinned", [])), [list(g) for g in meta.get("supernodes", [])])

    def __repr__(self) -> str:
        return (f"AttributionGraph({self.n_pos} tokens, {self.n_features} features, {self.n_layers * self.n_pos} error nodes, "
                f"{self.n_logits} logits; replacement {self.replacement_score:.3f}, completeness {self.completeness_score:.3f})")


@dataclass(frozen=True)
class Pruned:
    """What `prune` keeps: node_mask [n] bool, edge_mask [n, n] bool (rows targets), and each node's
    cumulative influence (the fraction of all influence held by the nodes at least as influential)."""

    node_mask: Tensor
    edge_mask: Tensor
    cumulative: Tensor

    @property
    def n_nodes(self) -> int:
        return int(self.node_mask.sum())

    @property
    def n_edges(self) -> int:
        return int(self.edge_mask.sum())


def prune(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """Keep the nodes that carry ``node_threshold`` of the influence on the logits (tokens and logits
    always), then the edges that carry ``edge_threshold`` of it among those, then drop features and
    error nodes left without an outgoing edge and features without an incoming one, until nothing
    changes (circuit-tracer's `prune_graph`, the same definitions; the edge mask holds only nonzero entries
    between kept nodes)."""
    for name, t in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {t}")
    A = graph.adjacency.float()
    weights = graph.logit_weights().float()
    fixed = graph.token_start  # features and errors are prunable; tokens and logits stay
    influence = graph.influence()
    node_mask = influence >= _cut(influence, node_threshold)
    node_mask[fixed:] = True
    # the pruned matrix is zero off the kept rows and columns: work on that block alone (a few thousand
    # nodes of a graph of tens of thousands), the same numbers without an n x n copy
    kept = node_mask.nonzero().squeeze(1)
    norm = _normalised(A[kept][:, kept], in_place=True)
    w = weights[kept]
    edge_scores = norm.mul_((_influence(norm, w) + w)[:, None])
    cut = _cut(edge_scores.flatten(), edge_threshold, zeros_elsewhere=len(kept) < len(node_mask))
    if float(cut) <= 0.0:  # every score passes a zero cut, the zeros off the block too
        edge_mask = torch.ones(A.shape, dtype=torch.bool)
    else:
        edge_mask = torch.zeros(A.shape, dtype=torch.bool)
        edge_mask[kept[:, None], kept[None, :]] = edge_scores >= cut
    del norm, edge_scores
    n_f = graph.n_features

    def drop_dangling() -> None:
        node_mask[:fixed] &= edge_mask[:, :fixed].any(0)  # features and errors need an outgoing edge
        node_mask[:n_f] &= edge_mask[:n_f].any(1)  # features need an incoming edge

    before = node_mask.clone()
    drop_dangling()
    while not torch.equal(before, node_mask):  # each drop can leave others dangling (at most n_layers + 1 rounds)
        before = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        drop_dangling()
    # an edge is a nonzero entry between kept nodes: at a zero cut every pair passes (circuit-tracer's mask then
    # also holds zero entries and edges of dropped nodes, which its file writer filters out; ours holds neither)
    edge_mask &= (A != 0) & node_mask[:, None] & node_mask[None, :]
    order = influence.sort(descending=True)
    cumulative = torch.zeros_like(influence)
    cumulative[order.indices] = order.values.cumsum(0) / order.values.sum()
    return Pruned(node_mask, edge_mask, cumulative)


def _normalised(A: Tensor, in_place: bool = False) -> Tensor:
    """|A| with each row summing to 1 (rows of zeros stay zero); ``in_place`` overwrites A."""
    a = A.abs_() if in_place else A.abs()
    return a.div_(a.sum(1, keepdim=True).clamp(min=1e-10))


_BLOCK_ENTRIES = 1 << 26  # what one block of |rows| holds at most (unless one row is longer)


def _abs_blocks(A: Tensor, block: int | None = None) -> Iterator[tuple[int, Tensor]]:
    """(first row, |A| of a block of rows), the blocks written into one reused buffer (no n x n
    temporary, and no fresh allocation per block for the allocator to keep). ``block``: rows per block
    (default: 2^26 entries' worth, 256 MB of float32, however long the rows: a long prompt's rows are long)."""
    block = block or max(1, _BLOCK_ENTRIES // max(1, A.shape[1]))
    buf = torch.empty(min(block, A.shape[0]), A.shape[1], dtype=A.dtype)
    for i in range(0, A.shape[0], block):
        rows = A[i : i + block]
        yield i, torch.abs(rows, out=buf[: len(rows)])


def _row_sums(A: Tensor) -> Tensor:
    """[n] the sum of |A| along each row."""
    return torch.cat([a.sum(1) for _, a in _abs_blocks(A)])


def _node_influence(A: Tensor, weights: Tensor, max_iter: int = 1000) -> Tensor:
    """`_influence` of the row-normalised |A| (`_normalised`), computed a block of rows at a time:
    the same sums without an n x n copy of the adjacency."""
    scale = 1.0 / _row_sums(A).clamp(min=1e-10)

    def step(v: Tensor) -> Tensor:
        out = torch.zeros_like(v)
        for i, a in _abs_blocks(A):
            part = v[i : i + len(a)]
            if bool(part.any()):
                out += (part * scale[i : i + len(a)]) @ a
        return out

    cur = step(weights)
    total = cur.clone()
    for _ in range(max_iter):
        if not bool(cur.any()):
            return total
        cur = step(cur)
        total += cur
    raise RuntimeError(f"influence did not converge in {max_iter} steps: the adjacency has a cycle")


def _influence(A: Tensor, weights: Tensor, max_iter: int = 1000) -> Tensor:
    """weights @ (A + A^2 + ...): A is nilpotent (a DAG), so the sum ends."""
    step = weights @ A
    total = step.clone()
    for _ in range(max_iter):
        if not bool(step.any()):
            return total
        step = step @ A
        total += step
    raise RuntimeError(f"influence did not converge in {max_iter} steps: the adjacency has a cycle")


def partial_influences(rows: Tensor, logit_probs: Tensor, row_nodes: Tensor, max_iter: int = 1000) -> Tensor:
    """[n] every node's influence on the logits through the rows computed so far (circuit-tracer's
    ``compute_partial_influences``): ``rows`` [r, n] the direct effects on the nodes ``row_nodes`` [r] (the logits
    first, then the features visited), each row's |effects| normalised to sum 1; the logits' probabilities
    ``logit_probs`` [n_l] walked back along them until nothing is left. A node without a row passes nothing on, so an
    unvisited feature's influence is what the visited nodes it feeds give it: the order to visit features in.

    The walk goes on among the rows' own nodes only (an [r, r] matrix: ``rows``' columns ``row_nodes``), and the rows
    are read once, in blocks, at the end: what every step's weights on them pass to all n nodes, summed (the same sum
    as walking the whole [r, n] matrix each step, without copying it)."""
    scale = 1.0 / _row_sums(rows).clamp(min=1e-8)
    inner = rows[:, row_nodes].abs() * scale[:, None]  # [r, r]
    start = torch.zeros(rows.shape[1], dtype=rows.dtype)
    start[-len(logit_probs) :] = logit_probs.to(rows.dtype)
    cur = start[row_nodes]
    weights = torch.zeros_like(cur)
    for _ in range(max_iter):
        if not bool(cur.any()):
            break
        weights += cur
        cur = cur @ inner
    else:
        raise RuntimeError(f"influence did not converge in {max_iter} steps: the rows have a cycle")
    out = torch.zeros(rows.shape[1], dtype=rows.dtype)
    w = weights * scale
    for i, a in _abs_blocks(rows):
        part = w[i : i + len(a)]
        if bool(part.any()):
            out += part @ a
    return out


def _cut(scores: Tensor, threshold: float, zeros_elsewhere: bool = False) -> Tensor:
    """The score at which the highest scores first hold ``threshold`` of their total (scores >= 0).

    Only the nonzero scores are sorted (an edge-score matrix is mostly zeros): their cumulative sums
    are the same as with the zeros after them, and a cut past them is 0, as it would be there
    (``zeros_elsewhere``: ``scores`` is a block of a larger array that is zero outside it)."""
    nz = scores[scores > 0]
    if len(nz) == 0:
        return torch.zeros((), dtype=scores.dtype)
    s = nz.sort(descending=True).values
    cum = s.cumsum(0) / s.sum()
    i = int(torch.searchsorted(cum, torch.tensor(threshold, dtype=cum.dtype)))
    if i >= len(s):
        return s[-1] if len(nz) == scores.numel() and not zeros_elsewhere else torch.zeros((), dtype=scores.dtype)
    return s[i]


def _scores(g: AttributionGraph) -> tuple[float, float]:
    A = g.adjacency.float()
    weights = g.logit_weights().float()
    influence = g.influence()
    tokens = influence[g.token_start : g.logit_start].sum()
    errors = influence[g.error_start : g.token_start].sum()
    replacement = tokens / (tokens + errors)
    err = torch.cat([a[:, g.error_start : g.token_start].sum(-1) for _, a in _abs_blocks(A)])  # a block of rows at a time
    non_error = 1 - err / _row_sums(A).clamp(min=1e-10)
    out = influence + weights
    completeness = (non_error * out).sum() / out.sum()
    return float(replacement), float(completeness)


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False
