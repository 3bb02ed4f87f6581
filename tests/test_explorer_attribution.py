"""The explorer's attribution-graph view: what it shows at each threshold is `AttributionGraph.prune`,
a node's inputs and outputs are adjacency entries, circuit-tracer files are filtered by their own
fields, labels land in the files; its HTTP routes and the two commands."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_gpt2
from test_explorer import _request
from test_features import random_set

import acdc
from acdc.algorithms.attribution_graph import build_attribution_graph
from acdc.attribution_graphs import AttributionGraph
from acdc.cli import main
from acdc.explorer import AttributionExplorer, ExplorerError, start
from acdc.explorer.attribution import file_view
from acdc.model import Transformer


@pytest.fixture(scope="module")
def graph():
    model = tiny_gpt2(n_layer=3, n_head=2, d=16)
    ts = random_set(model, (0, 1, 2), "relu", True)
    return build_attribution_graph(Transformer.from_bridge(model), torch.tensor([3, 7, 1, 9, 4, 4, 2]), ts, batch_size=16)


def _by_name(view):
    return {n["name"]: n for n in view["nodes"]}


@pytest.mark.parametrize("nt, et", [(0.8, 0.98), (0.5, 0.9), (1.0, 1.0)])
def test_the_live_view_is_the_pruned_graph(graph, nt, et):
    v = AttributionExplorer(graph).view(nt, et)
    kept = graph.prune(nt, et)
    want = {graph.node_name(i) for i in kept.node_mask.nonzero().squeeze(1).tolist()}
    assert set(_by_name(v)) == want and v["counts"]["nodes"] == len(want) and v["counts"]["all_nodes"] == graph.n_nodes
    assert v["counts"]["links"] == kept.n_edges == len(v["links"]) and v["thresholds"]["exact"]
    names = {n["id"]: n["name"] for n in v["nodes"]}
    for link in v["links"][:200]:
        assert link["weight"] == pytest.approx(graph.edge(names[link["source"]], names[link["target"]]), abs=1e-6)
    rows = {n["type"]: n for n in v["nodes"]}
    assert rows["embedding"]["layer"] == -1 and rows["logit"]["layer"] == graph.n_layers
    assert v["scores"]["replacement"] == pytest.approx(graph.replacement_score)


def test_max_links_keeps_the_heaviest(graph):
    full = AttributionExplorer(graph).view(0.8, 0.98)
    few = AttributionExplorer(graph).view(0.8, 0.98, max_links=7)
    assert few["counts"]["shown_links"] == 7 and few["counts"]["links"] == full["counts"]["links"] > 7
    cut = min(abs(lk["weight"]) for lk in few["links"])
    rest = sorted((abs(lk["weight"]) for lk in full["links"]), reverse=True)
    assert cut == pytest.approx(rest[6])


def test_a_nodes_inputs_and_outputs_are_its_heaviest_adjacency_entries(graph):
    ex = AttributionExplorer(graph)
    v = ex.view()
    feature = next(n for n in v["nodes"] if n["type"] == "feature")
    i = graph.node_index(feature["name"])
    d = ex.node(feature["id"])
    assert d["name"] == feature["name"]
    row = graph.adjacency[i]
    want = [graph.node_name(j) for j in row.abs().topk(len(d["inputs"])).indices.tolist()]
    assert [r["name"] for r in d["inputs"]] == want and len(want) == min(12, int((row != 0).sum()))
    for r in d["inputs"] + d["outputs"]:
        src, dst = (r["name"], feature["name"]) if r in d["inputs"] else (feature["name"], r["name"])
        assert r["weight"] == pytest.approx(graph.edge(src, dst), abs=1e-7)
    logit = next(n for n in v["nodes"] if n["type"] == "logit")
    assert ex.node(logit["id"])["outputs"] == [] and ex.node(logit["id"])["name"].startswith("logit@")
    with pytest.raises(ExplorerError, match="no node 'm9.f9@9'"):
        ex.node("m9.f9@9")
    with pytest.raises(ExplorerError, match="node_threshold must be a number in"):
        ex.view(1.5)


def test_a_circuit_tracer_file_is_filtered_by_its_own_fields(graph, tmp_path):
    path = graph.to_json(tmp_path / "g.json")
    doc = json.loads(path.read_text())
    ex = AttributionExplorer.open(path)
    v = ex.view(0.8, 0.98)
    assert not v["thresholds"]["exact"] and v["counts"]["all_nodes"] == len(doc["nodes"])
    assert {n["id"] for n in v["nodes"]} == {n["node_id"] for n in doc["nodes"]}  # the file's own thresholds: all of it
    assert set(_by_name(v)) == set(_by_name(AttributionExplorer(graph).view(0.8, 0.98)))  # acdc's names, from the ids
    low = file_view(doc, 0.3, 0.5)
    kept = {n["id"] for n in low["nodes"]}
    assert len(kept) < len(v["nodes"])
    infl = {n["node_id"]: n["influence"] for n in doc["nodes"] if n["feature_type"] not in ("embedding", "logit")}
    over = [i for i in kept if i in infl and infl[i] > 0.3]
    assert len(over) <= 1  # the first node to reach the threshold, no other
    assert all(lk["source"] in kept and lk["target"] in kept for lk in low["links"])
    w = sorted((abs(lk["weight"]) for lk in low["links"]), reverse=True)
    assert w == sorted(w, reverse=True) and len(low["links"]) <= len(v["links"])
    with pytest.raises(ValueError, match="not an attribution graph file"):
        AttributionExplorer({"nodes": []})


def test_labels_are_saved_into_the_graphs_files(graph, tmp_path):
    saved = graph.save(tmp_path / "graph")
    ex = AttributionExplorer.open(saved)
    node = next(n for n in ex.view()["nodes"] if n["type"] == "feature")
    r = ex.save_label(node["id"], "a name mover")
    assert r["saved"] == str(saved)
    back = AttributionGraph.load(saved)
    assert back.labels == {node["name"]: "a name mover"} and torch.equal(back.adjacency, graph.adjacency)
    assert _by_name(AttributionExplorer(back).view())[node["name"]]["label"] == "a name mover"
    doc = json.loads(back.to_json(tmp_path / "g.json").read_text())
    assert next(n for n in doc["nodes"] if n["node_id"] == node["ct_id"])["clerp"] == "a name mover"
    f = AttributionExplorer.open(tmp_path / "g.json")
    f.save_label(node["ct_id"], "renamed")
    assert next(n for n in json.loads((tmp_path / "g.json").read_text())["nodes"] if n["node_id"] == node["ct_id"])["clerp"] == "renamed"
    ex.save_label(node["id"], "")
    assert AttributionGraph.load(saved).labels == {}
    with pytest.raises(ExplorerError, match="at most 500"):
        ex.save_label(node["id"], "x" * 501)


def test_the_http_routes(graph, tmp_path):
    server = start(AttributionExplorer(graph, graph.save(tmp_path / "graph")))
    try:
        status, page = _request(server, "GET", "/")
        assert status == 200 and b"acdc attribution graph" in page
        status, v = _request(server, "GET", "/api/attribution?node_threshold=0.5&edge_threshold=0.9")
        assert status == 200 and v["counts"]["nodes"] == graph.prune(0.5, 0.9).n_nodes
        feature = next(n for n in v["nodes"] if n["type"] == "feature")
        status, d = _request(server, "GET", f"/api/attribution/node?id={feature['id']}")
        assert status == 200 and d["name"] == feature["name"]
        status, r = _request(server, "POST", "/api/attribution/label", {"id": feature["id"], "label": "seen"})
        assert status == 200 and AttributionGraph.load(tmp_path / "graph").labels == {feature["name"]: "seen"}
        for method, path, body, code, words in [
            ("GET", "/api/attribution?node_threshold=2", None, 400, "node_threshold must be a number in [0, 1]"),
            ("GET", "/api/attribution?node_threshold=abc", None, 400, "must be a number"),
            ("GET", "/api/attribution?nodes=0.5", None, 400, "unknown parameter 'nodes'"),
            ("GET", "/api/view", None, 404, "an attribution graph's API"),
            ("POST", "/api/evaluate", {"kept": []}, 404, "takes POST /api/attribution/label"),
            ("POST", "/api/attribution/label", {"id": feature["id"], "text": "x"}, 400, "unknown field 'text'"),
            ("GET", "/api/attribution/label", None, 405, "takes POST"),
        ]:
            status, err = _request(server, method, path, body)
            assert status == code and words in err["error"], (path, err)
    finally:
        server.shutdown()
        server.server_close()


def test_the_attribution_graph_commands(tmp_path, capsys):
    assert main(["attribution-graph", "--model", "zoo:feature-chain", "-o", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "4 active features" in out and "replacement 1.000" in out
    g = AttributionGraph.load(tmp_path / "graph")
    entry = acdc.zoo.load("feature-chain")
    want = acdc.attribution_graph(entry.model, entry.task.clean[0], transcoders=entry.transcoders, progress=False)
    assert torch.equal(g.adjacency, want.adjacency)
    assert json.loads((tmp_path / "graph.json").read_text())["metadata"]["prompt_tokens"] == g.token_strs
    assert main(["explore-graph", str(tmp_path / "nope")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["attribution-graph", "--model", "zoo:ioi", "-o", str(tmp_path / "x"), "--no-progress"]) == 1
    assert "needs transcoders" in capsys.readouterr().err


def test_a_feature_circuit_opens_in_the_circuit_explorer(tmp_path):
    """A circuit of transcoder features (the zoo's feature-chain) in the live explorer: drawn with its
    features and split MLP inputs, and every evaluation equals the engine's on the feature graph."""
    from acdc.api import prepare
    from acdc.explorer import Explorer

    entry = acdc.zoo.load("feature-chain")
    circuit = acdc.discover(entry.model, entry.task, graph=entry.graph, threshold=0.01, progress=False)
    ex = Explorer(entry.model, entry.task, circuit, tokenizer=entry.tokenizer)
    drawn = {n["name"] for n in ex.view()["nodes"]}
    assert {"m0.f0", "m1.f0", "a1.h0"} <= drawn
    p, m, batch = prepare(entry.model, entry.task, graph=entry.graph)
    for removed in ([], ["m0.f0->a1.h0<v>"], ["a1.h0->m1", "m1.f2->logits"]):
        r = ex.evaluate(removed=removed)
        keep = circuit.in_graph & ~entry.graph.edge_mask(removed)
        assert r["metric"] == pytest.approx(m(p.logits(~keep), batch), abs=1e-9)
    assert ex.evaluate(removed=["m0.f0->a1.h0<v>"])["faithfulness"]["normalized"] < 0.95
