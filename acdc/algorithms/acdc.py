"""ACDC (Conmy et al. 2023): prune edges one at a time, keep those whose removal hurts.

Visiting order: destinations in reverse forward order, and for each its sources in reverse
forward order (nearest first), i.e. the graph's canonical edge order reversed. With ``m`` the
metric oriented lower-is-better and ``C`` the current circuit, edge ``e`` is removed when
``m(C - e) - m(C) < threshold`` (``|...|`` with ``abs_value``), and ``C`` is updated at once. A
destination whose node has no kept outgoing edge left is skipped and its incoming edges dropped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from ..circuit import Circuit
from ..metrics import Batch, Metric
from ..patching import Patcher

__all__ = ["run_acdc"]


def run_acdc(
    patcher: Patcher,
    metric: Metric,
    batch: Batch,
    threshold: float,
    *,
    abs_value: bool = False,
    progress: bool = True,
    settings: dict[str, Any] | None = None,
    callback: Callable[[int, float, bool], bool | None] | None = None,
) -> Circuit:
    """Run exact ACDC on ``patcher``'s graph and batch; returns the kept circuit.

    ``callback(edge_index, delta, removed)`` is called after each tested edge; returning True
    stops the run there (edges not yet visited stay in the circuit, ``settings["stopped_early"]``).
    """
    from tqdm.auto import tqdm

    g = patcher.graph
    state = patcher.state()
    current = metric.loss(state.logits, batch)
    scores = torch.full((g.n_edges,), math.nan, dtype=torch.float64)
    trace: list[float] = []
    n_tested = 0
    edge_dst = g.edge_dst.tolist()
    edge_src = g.edge_src.tolist()
    node_src = g.dst_node_src.tolist()
    t0 = time.perf_counter()
    bar = tqdm(total=g.n_edges, desc="ACDC", unit="edge", disable=not progress, mininterval=0.5)
    dst_dead = False
    last_dst = -1
    stopped = False
    for e in range(g.n_edges - 1, -1, -1):
        d, s = edge_dst[e], edge_src[e]
        if d != last_dst:
            last_dst = d
            dst_dead = node_src[d] >= 0 and not bool(state.keep[:, node_src[d]].any())
            if dst_dead:
                state.keep[d] = False
                state.inputs.pop(d, None)
        if dst_dead:
            bar.update(1)
            continue
        candidate = state.keep.clone()
        candidate[d, s] = False
        proposal = state.propagate(candidate)
        new = metric.loss(proposal.logits[0], batch)
        delta = new - current
        scores[e] = delta
        n_tested += 1
        removed = (abs(delta) if abs_value else delta) < threshold
        if removed:
            state.commit(proposal)
            current = new
        trace.append(current)
        bar.update(1)
        if callback is not None and callback(e, delta, removed):
            stopped = True
            break
        if n_tested % 64 == 0:
            bar.set_postfix(tested=n_tested, kept=int(state.keep.sum()), metric=f"{current:.4g}", refresh=False)
    bar.set_postfix(tested=n_tested, kept=int(state.keep.sum()), metric=f"{current:.4g}")
    bar.close()
    info = dict(settings or {})
    info.update(
        method="acdc",
        threshold=float(threshold),
        abs_value=bool(abs_value),
        ablation=patcher.ablation,
        metric=metric.name,
        n_tested=n_tested,
        seconds=round(time.perf_counter() - t0, 3),
        final_metric=float(current),
    )
    if stopped:
        info["stopped_early"] = True
    return Circuit(g, g.sparse(state.keep).cpu(), scores, trace, info)
