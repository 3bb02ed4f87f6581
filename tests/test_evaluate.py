"""Scoring and ROC on hand-built graphs with answers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

import acdc
from acdc.circuit import Circuit
from acdc.evaluation import ROC, node_mask, node_universe, threshold_grid
from acdc.graph import Graph


@pytest.fixture()
def g():
    return Graph(2, 2)  # sources: input, a0.h0, a0.h1, m0, a1.h0, a1.h1, m1


TRUTH = ["input->a0.h0<v>", "a0.h0->a1.h1<k>", "a1.h1->logits"]


def test_graph_size(g):
    # into layer-0 heads: 1 source x 6 slots; m0: input + 2 heads; layer-1 heads: 4 sources x 6;
    # m1: 6 sources; logits: 7 sources.
    assert g.n_edges == 6 + 3 + 24 + 6 + 7 == 46


def test_score_by_hand(g):
    found = ["input->a0.h0<v>", "a1.h1->logits", "m0->logits", "input->m0"]
    rec = acdc.recovery(found, TRUTH, graph=g)
    assert (rec.edges.tp, rec.edges.fp, rec.edges.fn, rec.edges.tn) == (2, 2, 1, 46 - 5)
    assert rec.edges.tpr == pytest.approx(2 / 3) and rec.edges.fpr == pytest.approx(2 / 43)
    assert rec.edges.precision == pytest.approx(0.5) and rec.edges.recall == rec.edges.tpr
    # nodes (heads and MLPs only): truth {a0.h0, a1.h1}; found {a0.h0, a1.h1, m0}
    assert (rec.nodes.tp, rec.nodes.fp, rec.nodes.fn, rec.nodes.tn) == (2, 1, 0, 3)
    assert not rec.edges.exact


def test_empty_and_full(g):
    empty = acdc.recovery([], TRUTH, graph=g)
    assert (empty.edges.tp, empty.edges.fp, empty.edges.fn, empty.edges.tn) == (0, 0, 3, 43)
    assert empty.edges.tpr == 0 and empty.edges.fpr == 0 and math.isnan(empty.edges.precision)
    assert (empty.nodes.tp, empty.nodes.fp) == (0, 0)
    full = acdc.recovery(torch.ones(g.n_edges, dtype=torch.bool), TRUTH, graph=g)
    assert full.edges.tpr == 1 and full.edges.fpr == 1 and full.edges.precision == pytest.approx(3 / 46)
    assert (full.nodes.tp, full.nodes.fp, full.nodes.fn, full.nodes.tn) == (2, 4, 0, 0)
    nothing_true = acdc.recovery(TRUTH, [], graph=g)
    assert math.isnan(nothing_true.edges.tpr) and nothing_true.edges.fp == 3


def test_score_accepts_circuits_and_known(g):
    mask = g.edge_mask(TRUTH)
    c = Circuit(g, mask, torch.zeros(g.n_edges))
    assert acdc.recovery(c, TRUTH).edges.exact
    assert acdc.recovery(c, c).nodes.exact
    with pytest.raises(ValueError, match="graph="):
        acdc.recovery(TRUTH, TRUTH)
    with pytest.raises(ValueError, match="this circuit is for a 2-layer model"):
        acdc.recovery(Circuit(Graph(3, 2), torch.zeros(Graph(3, 2).n_edges, dtype=torch.bool), torch.zeros(Graph(3, 2).n_edges)), c)


def test_node_mask(g):
    assert node_universe(g) == ["a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1"]
    nm = node_mask(g, g.edge_mask(["input->logits", "a0.h1->m1"]))
    assert nm.tolist() == [False, True, False, False, False, True]


def mann_whitney_auc(scores: list[float], labels: list[bool]) -> float:
    """The probability a random positive outranks a random negative (ties count half)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_from_scores_equals_rank_auc(g, seed):
    gen = torch.Generator().manual_seed(seed)
    truth = torch.rand(g.n_edges, generator=gen) < 0.3
    scores = torch.randn(g.n_edges, generator=gen, dtype=torch.float64) + 1.5 * truth
    scores[:5] = scores[5]  # ties
    r = ROC.from_scores(scores, truth, graph=g, absolute=False)
    assert r.auc == pytest.approx(mann_whitney_auc(scores.tolist(), truth.tolist()))
    assert r.auc_pessimistic <= r.auc + 1e-12
    assert r.tpr[-1] == 1 and r.fpr[-1] == 1


def test_roc_perfect_and_single_point(g):
    truth = g.edge_mask(TRUTH)
    perfect = ROC.from_scores(truth.double(), truth, graph=g)
    assert perfect.auc == 1 and perfect.auc_pessimistic == 1
    # one circuit with TPR 1/3 at FPR 2/43 (plus the implicit (0,0), (1,1))
    found = g.edge_mask(["input->a0.h0<v>", "m0->logits", "input->m0"])
    one = ROC.from_circuits([found], truth, graph=g)
    x, y = 2 / 43, 1 / 3
    assert one.auc == pytest.approx(x * y / 2 + (1 - x) * (y + 1) / 2)
    assert one.auc_pessimistic == pytest.approx((1 - x) * y)


def test_roc_node_level_from_scores(g):
    truth = g.edge_mask(TRUTH)
    scores = torch.zeros(g.n_edges, dtype=torch.float64)
    scores[g.edge_index("a0.h0->a1.h1<k>")] = 2.0   # true nodes first
    scores[g.edge_index("a0.h1->m1")] = 1.0         # then two false ones
    r = ROC.from_scores(scores, truth, graph=g, level="node")
    assert r.auc == 1 and r.n_positive == 2 and r.n_negative == 4


def test_roc_sweep_is_monotone_in_circuits(g):
    truth = g.edge_mask(TRUTH)
    circuits = [g.edge_mask(TRUTH[:k]) for k in range(4)] + [torch.ones(g.n_edges, dtype=torch.bool)]
    r = ROC.from_circuits(circuits, truth, graph=g, params=[4, 3, 2, 1, 0])
    assert r.exact() == [3] and r.best() == 3
    assert r.auc == 1 and r.auc_pessimistic == 1
    assert r.to_dict()["points"][3] == {"param": 1, "fpr": 0.0, "tpr": 1.0}


def test_threshold_grid():
    grid = threshold_grid(1.0, n=7, decades=6)
    assert grid[0] == pytest.approx(1e-6) and grid[-1] == pytest.approx(2.0)
    assert all(a < b for a, b in zip(grid, grid[1:]))
    with pytest.raises(ValueError):
        threshold_grid(0.0)


def test_errors(g):
    with pytest.raises(ValueError, match="level"):
        ROC.from_circuits([TRUTH], TRUTH, graph=g, level="head")
    with pytest.raises(ValueError, match="one entry per edge"):
        ROC.from_scores(torch.zeros(3), TRUTH, graph=g)
    with pytest.raises(ValueError, match="at least one"):
        ROC.from_circuits([], TRUTH, graph=g)
    with pytest.raises(ValueError, match="list"):
        acdc.recovery("input->logits", TRUTH, graph=g)
