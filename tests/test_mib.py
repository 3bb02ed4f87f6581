"""MIB's submission layout written and read back, and MIB's rule for a circuit of a given size (floor of f * N
edges by score, pruned as EAP-IG's Graph.prune does), against a literal transcription of that prune loop."""

from __future__ import annotations

import json
import math

import pytest
import torch

import acdc
from acdc import zoo
from acdc.mib import SUBMISSION_FRACTIONS


@pytest.fixture(scope="module")
def entry():
    return zoo.load("ioi")


@pytest.fixture(scope="module")
def scores(entry):
    return acdc.attribute(entry.model, entry.task, method="eap", progress=False)


def eapig_prune(g: acdc.Graph, keep: torch.Tensor) -> torch.Tensor:
    """EAP-IG's Graph.prune, written out on node names: repeatedly drop nodes without a kept edge out or (the input
    excepted) without a kept edge in, then the kept edges whose source or destination node was dropped."""
    src = [g.sources[s].name for s in g.edge_src.tolist()]
    dst = [g.destinations[d].node.name for d in g.edge_dst.tolist()]
    keep = keep.clone()
    nodes = {n.name for n in g.nodes}
    while True:
        out = {src[i] for i in range(g.n_edges) if keep[i]}
        into = {dst[i] for i in range(g.n_edges) if keep[i]} | {"input"}
        alive = {n for n in nodes if n in out and n in into} | {"logits"}
        new = torch.tensor([bool(keep[i]) and src[i] in alive and dst[i] in alive for i in range(g.n_edges)])
        if torch.equal(new, keep):
            return keep
        keep = new


@pytest.mark.parametrize("absolute", [True, False])
@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.05, 0.1, 0.3, 1.0])
def test_mib_top_is_the_floor_of_f_n_best_edges_pruned_as_eapig_prunes(scores, fraction, absolute):
    g = scores.graph
    n = int(fraction * g.n_edges)
    key = scores.values.abs() if absolute else scores.values
    order = sorted(range(g.n_edges), key=lambda i: -float(key[i]))
    raw = torch.zeros(g.n_edges, dtype=torch.bool)
    raw[order[:n]] = True
    got = acdc.mib_top(scores, fraction, absolute=absolute)
    assert torch.equal(got.in_graph, eapig_prune(g, raw)), (fraction, absolute)
    assert got.n_edges <= n


def test_the_floor_is_pinned_at_its_edge(scores):
    """f * N just below an integer k + 1 keeps k edges before pruning (MIB's int(), not acdc's ceil)."""
    n_edges = scores.graph.n_edges
    k = 7
    assert acdc.mib_top(scores, (k + 1 - 1e-9) / n_edges).settings["selection"] == f"MIB top {k}, pruned"
    assert acdc.mib_top(scores, (k + 1) / n_edges).settings["selection"] == f"MIB top {k + 1}, pruned"
    with pytest.raises(ValueError, match=r"fraction must lie in \[0, 1\]"):
        acdc.mib_top(scores, 1.5)


def test_a_dangling_top_edge_is_pruned(entry, scores):
    """An edge whose destination reaches the logits by no kept edge is dropped, as MIB drops it."""
    g = scores.graph
    values = torch.zeros(g.n_edges, dtype=torch.float64)
    dangling = next(i for i, e in enumerate(g.edges) if e.name.startswith("input->a0"))
    values[dangling] = 10.0
    one = acdc.Scores(g, values, {"method": "by hand"})
    assert acdc.mib_top(one, 1.5 / g.n_edges).n_edges == 0  # floor(1.5) = 1 edge, not on a path: pruned
    direct = next(i for i, e in enumerate(g.edges) if e.name == "input->logits")
    values[direct] = 20.0
    kept = acdc.mib_top(acdc.Scores(g, values, {}), 2 / g.n_edges)
    assert kept.edges == ["input->logits"]


def test_the_importance_file_is_eapig_layout_and_reads_back(entry, scores, tmp_path):
    (path,) = acdc.export_mib(tmp_path, {"ioi_zoo": scores}, method="acdc-eap")
    assert path == tmp_path / "acdc-eap" / "ioi_zoo" / "importances.json"
    d = json.loads(path.read_text())
    g = scores.graph
    assert set(d["edges"]) == {e.name for e in g.edges} and all(not e["in_graph"] for e in d["edges"].values())
    assert set(d["nodes"]) == {n.name for n in g.nodes} and {"n_layers", "n_heads"} <= set(d["cfg"])
    assert all(d["edges"][e.name]["score"] == pytest.approx(float(v), rel=1e-12, abs=1e-300)
               for e, v in zip(g.edges, scores.values, strict=True))
    back = acdc.read_mib(path)
    assert isinstance(back, acdc.Scores) and torch.equal(back.values, scores.values)
    with pytest.raises(FileExistsError):
        acdc.export_mib(tmp_path, {"ioi_zoo": scores}, method="acdc-eap")
    acdc.export_mib(tmp_path, {"ioi_zoo": scores}, method="acdc-eap", overwrite=True)


def test_the_nine_circuits_are_mibs_rule_and_read_back(scores, tmp_path):
    paths = acdc.export_mib(tmp_path, {"ioi_zoo": scores, "ioi_other": scores}, method="m", circuits=True, absolute=False)
    assert len(paths) == 18 and [p.name for p in paths[:9]] == [f"circuit_{f:g}.json" for f in SUBMISSION_FRACTIONS]
    for f, p in zip(SUBMISSION_FRACTIONS, paths[:9], strict=True):
        back = acdc.read_mib(p)
        want = acdc.mib_top(scores, f, absolute=False)
        assert isinstance(back, acdc.Circuit) and torch.equal(back.in_graph, want.in_graph), f
        assert back.n_edges <= math.floor(f * scores.graph.n_edges)
        assert len(json.loads(p.read_text())["edges"]) == scores.graph.n_edges  # every edge listed, as MIB reads them
    for bad in ("ioi", "ioi_gpt2_x", "_gpt2"):
        with pytest.raises(ValueError, match="one underscore"):
            acdc.export_mib(tmp_path, {bad: scores}, method="m")


def test_the_curve_under_mibs_rule_scores_those_circuits(entry, scores):
    curve = acdc.faithfulness_curve(entry.model, entry.task, scores, selection="mib", absolute=False, progress=False)
    for f, v, n in zip(curve.fractions, curve.values, curve.n_edges, strict=True):
        c = acdc.mib_top(scores, f, absolute=False)
        assert n == c.n_edges
        assert v == pytest.approx(acdc.faithfulness(entry.model, entry.task, c, progress=False).normalized, abs=1e-9)
    with pytest.raises(ValueError, match="selection='mib'"):
        acdc.faithfulness_curve(entry.model, entry.task, scores, absolute=False, progress=False)
