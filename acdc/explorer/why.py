""""Why does the model say A and not B here?": every node's effect on logit(A) - logit(B), by intervention.

For one prompt, at its last scored position, with ``d = logit(A) - logit(B)`` of the full model:

- a node's **direct effect** is ``d - d'`` where ``d'`` has the node's edges into the logits ablated
  (its output replaced by its ablation value in the final residual stream only; the final norm live);
- its **total effect** is ``d - d'`` with every edge out of the node ablated (the node's output
  replaced wherever it is read, so everything downstream of it moves too);
- **tracing** a node lists the effect of ablating each edge into it, alone.

Each number is one patched run of the engine (`Patcher.reference_state(vocab=[A, B])` and its
``propagate``: only the layers an ablation changes are recomputed, and only the two logits). Under
resample and zero ablation the runs use a patcher of that one prompt (the same ablation values as
the whole batch's); under mean ablation the batch's patcher, whose means need every prompt.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from ..graph import Graph
from ..patching import Patcher
from ..positions import Positions

__all__ = ["ANSWER_CHUNK", "WhyAnswers"]

ANSWER_CHUNK = 32  # candidate ablations evaluated per batched propagate


class WhyAnswers:
    """The intervention answers for "why A and not B" on one explorer's patcher (one-prompt patchers cached)."""

    def __init__(self, patcher: Patcher):
        self.patcher = patcher
        self.graph: Graph = patcher.graph
        self._one: dict[int, Patcher] = {}

    def patcher_for(self, i: int) -> tuple[Patcher, int]:
        """The patcher to run prompt ``i`` on, and the row of its last scored position there."""
        p = self.patcher
        n_scored = int(p.answer_pos.shape[1])
        if p.ablation == "mean":
            return p, i * n_scored + n_scored - 1
        if i not in self._one:
            pos = p.positions
            sub = None if pos is None else Positions(pos.names, pos.index[i : i + 1], pos.example)
            self._one = {i: Patcher(p.tf, p.clean_tokens[i : i + 1], p.corrupt_tokens[i : i + 1], graph=self.graph,
                                    ablation=p.ablation, answer_pos=p.answer_pos[i : i + 1], positions=sub,
                                    transcoders=p.transcoders)}
        return self._one[i], n_scored - 1

    def differences(self, i: int, a: int, b: int, ablated: list[Tensor]) -> tuple[float, list[float]]:
        """``d`` of the full model and ``d - d'`` for each edge set of ``ablated`` (edge indices each)."""
        p, row = self.patcher_for(i)
        g = self.graph
        state = p.reference_state(torch.tensor([a, b]))
        base = float(state.logits[row, 0] - state.logits[row, 1])
        out: list[float] = []
        for s in range(0, len(ablated), ANSWER_CHUNK):
            chunk = ablated[s : s + ANSWER_CHUNK]
            mask = torch.zeros(len(chunk), g.n_edges, dtype=torch.bool)
            for k, idx in enumerate(chunk):
                mask[k, idx] = True
            keep = state.keep & g.dense(~mask).to(state.keep.device)
            logits = state.propagate(keep).logits  # [k, rows, 2]
            out += (base - (logits[:, row, 0] - logits[:, row, 1])).tolist()
        return base, out

    def node_ablations(self, i: int, a: int, b: int, srcs: list[int], out_of: dict[int, Tensor]) -> list[float]:
        """``d - d'`` with every edge out of each source of ``srcs`` ablated: one patched forward each, restarting
        at the source's layer from the full model's run (sources before it cannot change), where the graph
        allows (whole MLPs; graphs of neurons or features rerun from the first layer)."""
        p, row = self.patcher_for(i)
        g = self.graph
        dev = p.tf.device
        full = g.dense(torch.ones(g.n_edges, dtype=torch.bool)).to(dev)
        logits, X = p.forward(full)
        base = float(logits[row, a] - logits[row, b])
        restart = not g.split_mlps
        out = []
        for s in srcs:
            ablated = torch.zeros(g.n_edges, dtype=torch.bool)
            ablated[out_of[s]] = True
            layer = g.sources[s].layer
            reuse = (X, layer) if restart and layer >= 0 else None
            lg, _ = p.forward(full & ~g.dense(ablated).to(dev), reuse)
            out.append(base - float(lg[row, a] - lg[row, b]))
        return out

    def nodes(self, i: int, a: int, b: int, totals: int) -> dict[str, Any]:
        """Every source's direct effect, and the total effect of the ``totals`` with the largest |direct effect|."""
        t0 = time.perf_counter()
        g = self.graph
        order_src = torch.argsort(g.edge_src, stable=True)  # every source's edges, without an [n_src, n_edges] table
        counts = torch.bincount(g.edge_src, minlength=len(g.sources)).tolist()
        out_of = dict(enumerate(order_src.split(counts)))
        direct_edges = {s: e[g.edge_dst[e] == g.logits_row] for s, e in out_of.items()}
        srcs = [s for s, e in direct_edges.items() if len(e)]
        base, direct = self.differences(i, a, b, [direct_edges[s] for s in srcs])
        order = sorted(range(len(srcs)), key=lambda k: -abs(direct[k]))
        chosen = [srcs[k] for k in order[:totals]]
        total = dict(zip(chosen, self.node_ablations(i, a, b, chosen, out_of), strict=True)) if chosen else {}
        rows = []
        for k in order:
            n = g.sources[srcs[k]]
            rows.append({"name": n.name, "kind": str(n.kind), "layer": n.layer, "direct": direct[k],
                         "total": total.get(srcs[k])})
        return {"logit_diff": base, "nodes": rows, "n_totals": len(total), "seconds": time.perf_counter() - t0}

    def trace(self, i: int, a: int, b: int, node: str) -> dict[str, Any]:
        """The effect of ablating each edge into ``node`` alone (all its input slots and positions)."""
        t0 = time.perf_counter()
        g = self.graph
        rows = [d for d, dst in enumerate(g.destinations) if dst.node.name == node]
        if not rows:
            raise ValueError(f"{node!r} reads no edges in this graph (nodes with inputs look like 'a1.h2', 'm0', 'logits')")
        edges = torch.isin(g.edge_dst, torch.tensor(rows)).nonzero().squeeze(1)
        base, eff = self.differences(i, a, b, list(edges.split(1)))
        out = sorted(({"edge": g.edges[int(e)].name, "src": g.sources[int(g.edge_src[e])].name, "effect": x}
                      for e, x in zip(edges.tolist(), eff, strict=True)), key=lambda r: -abs(r["effect"]))
        return {"node": node, "logit_diff": base, "edges": out, "seconds": time.perf_counter() - t0}
