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
    nodes = kept.node_mask
    assert bool((kept.edge_mask <= (graph.adjacency != 0) & nodes[:, None] & nodes[None, :]).all())  # real edges of kept nodes
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
    # targets and the long-prompt controls: the same as the Python call with them
    first = int(want.logit_tokens[0])
    top = [first, 1 if first != 1 else 2]  # the answer and another token
    assert main(["attribution-graph", "--model", "zoo:feature-chain", "-o", str(tmp_path / "t"), "--no-progress",
                 "--targets", str(top[0]), "--logit-diff", str(top[0]), str(top[1]), "--max-feature-nodes", "2"]) == 0
    assert "2 of 4 active features" in capsys.readouterr().out
    got = AttributionGraph.load(tmp_path / "t" / "graph")
    diff = acdc.logit_diff_target(entry.model, top[0], top[1])
    again = acdc.attribution_graph(entry.model, entry.task.clean[0], transcoders=entry.transcoders, targets=[top[0], diff],
                                   max_feature_nodes=2, progress=False)
    assert torch.equal(got.adjacency, again.adjacency) and got.logit_strs[1] == diff.label and got.n_features == 2
    assert main(["attribution-graph", "--model", "zoo:feature-chain", "-o", str(tmp_path / "m"), "--no-progress",
                 "--max-memory-gb", "1e-9"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "attribution graph needs about" in err


def test_a_feature_circuit_opens_in_the_circuit_explorer(tmp_path):
    """A circuit of transcoder features (the zoo's feature-chain) in the live explorer: drawn with its
    features and split MLP inputs, and every evaluation equals the engine's on the feature graph."""
    from acdc.api import prepare
    from acdc.explorer import Explorer

    entry = acdc.zoo.load("feature-chain")
    circuit = acdc.discover(entry.model, entry.task, graph=entry.graph, transcoders=entry.transcoders, threshold=0.01, progress=False)
    ex = Explorer(entry.model, entry.task, circuit, tokenizer=entry.tokenizer, transcoders=entry.transcoders)
    drawn = {n["name"] for n in ex.view()["nodes"]}
    assert {"m0.f0", "m1.f0", "a1.h0"} <= drawn
    p, m, batch = prepare(entry.model, entry.task, graph=entry.graph, transcoders=entry.transcoders)
    for removed in ([], ["m0.f0->a1.h0<v>"], ["a1.h0->m1", "m1.f2->logits"]):
        r = ex.evaluate(removed=removed)
        keep = circuit.in_graph & ~entry.graph.edge_mask(removed)
        assert r["metric"] == pytest.approx(m(p.logits(~keep), batch), abs=1e-9)
    assert ex.evaluate(removed=["m0.f0->a1.h0<v>"])["faithfulness"]["normalized"] < 0.95


def test_pins_and_supernodes_are_kept_and_saved(graph, tmp_path):
    """A pinned node is shown whatever the thresholds (with its adjacency entries to the nodes shown); pins
    and supernodes land in the saved graph and in circuit-tracer's qParams, and a file keeps them too."""
    saved = graph.save(tmp_path / "graph")
    ex = AttributionExplorer.open(saved)
    low = ex.view(0.3, 0.5)
    shown = {n["name"] for n in low["nodes"]}
    hidden = next(graph.node_name(i) for i in range(graph.n_features) if graph.node_name(i) not in shown
                  and (graph.adjacency[:, i] != 0).any())
    features = [n["name"] for n in ex.view(0.8, 0.98)["nodes"] if n["type"] == "feature" and n["name"] != hidden][:2]
    assert len(features) == 2
    r = ex.save_groups(pinned=[hidden], supernodes=[["two features", *features]])
    assert r["saved"] == str(saved) and r["pinned"] == [hidden]
    v = ex.view(0.3, 0.5)
    rows = _by_name(v)
    assert rows[hidden]["pinned"] and not rows[features[0]]["pinned"] and v["supernodes"] == [["two features", *features]]
    assert set(rows) == shown | {hidden} | set(features)  # grouped nodes are shown too
    mine = {(lk["source"], lk["target"]): lk["weight"] for lk in v["links"] if hidden in (lk["source"], lk["target"])}
    want = {(s, t) for s in rows for t in rows if hidden in (s, t) and graph.edge(s, t) != 0}
    assert set(mine) == want and mine
    for (s, t), w in mine.items():
        assert w == pytest.approx(graph.edge(s, t), abs=1e-6)
    back = AttributionGraph.load(saved)
    assert back.pinned == [hidden] and back.supernodes == [["two features", *features]]
    doc = json.loads(back.to_json(tmp_path / "g.json", node_threshold=0.3, edge_threshold=0.5).read_text())
    ct = {graph.node_name(i): graph.node_record(i, 0.0)["node_id"] for i in range(graph.n_nodes)}
    assert doc["qParams"]["pinnedIds"] == [ct[hidden]]
    assert doc["qParams"]["supernodes"] == [["two features", *(ct[f] for f in features)]]
    assert ct[hidden] in {n["node_id"] for n in doc["nodes"]}  # in the file, pruned or not
    f = AttributionExplorer.open(tmp_path / "g.json")
    assert {n["id"]: n["pinned"] for n in f.view(0.0, 0.0)["nodes"]}[ct[hidden]]  # shown even at threshold 0
    f.save_groups(pinned=[])
    assert json.loads((tmp_path / "g.json").read_text())["qParams"]["pinnedIds"] == []
    assert json.loads((tmp_path / "g.json").read_text())["qParams"]["supernodes"] == [["two features", *(ct[x] for x in features)]]
    for kw, words in [({"pinned": ["m9.f9@9"]}, "no node 'm9.f9@9'"), ({"pinned": "x"}, "list of node ids"),
                      ({"supernodes": [["", *features]]}, "a supernode is [label"), ({"supernodes": [["one", features[0]]]}, "at least two"),
                      ({"supernodes": "x"}, "must be a list")]:
        with pytest.raises(ExplorerError, match=words.replace("[", r"\[")):
            ex.save_groups(**kw)


def _planted_document():
    """Three features: f1 and f2 push the same logit (f2 a little of another too), f3 another logit."""
    def node(nid, kind, layer, pos, influence):
        return {"node_id": nid, "feature_type": kind, "layer": str(layer), "ctx_idx": pos, "influence": influence}
    nodes = [node("E_1_0", "embedding", "E", 0, 0.0), node("0_1_1", "cross layer transcoder", 0, 1, 0.2),
             node("0_2_1", "cross layer transcoder", 0, 1, 0.4), node("1_3_1", "cross layer transcoder", 1, 1, 0.6),
             node("3_5_1", "logit", 3, 1, 0.0), node("3_6_1", "logit", 3, 1, 0.0)]
    links = [("E_1_0", "0_1_1", 1.0), ("E_1_0", "0_2_1", 0.5), ("E_1_0", "1_3_1", 0.5), ("0_1_1", "3_5_1", 2.0),
             ("0_2_1", "3_5_1", 1.0), ("0_2_1", "3_6_1", 0.05), ("1_3_1", "3_6_1", 1.0)]
    return {"metadata": {"slug": "planted", "prompt_tokens": ["a", "b"]}, "qParams": {},
            "nodes": nodes, "links": [{"source": s, "target": t, "weight": w} for s, t, w in links]}


def test_suggested_groups_join_features_whose_effects_point_the_same_way():
    ex = AttributionExplorer(_planted_document())
    got = ex.suggest_groups(0.9, 1.0, 1.0)["groups"]
    assert [g["ids"] for g in got] == [["0_1_1", "0_2_1"]]  # seed: the most influential (lowest cumulative influence)
    assert got[0]["similarity"] == pytest.approx(1.0 / (1 + 0.05**2) ** 0.5, abs=1e-6)
    assert ex.suggest_groups(0.9995, 1.0, 1.0)["groups"] == []
    assert [g["names"] for g in ex.suggest_groups(0.0, 1.0, 1.0)["groups"]] == [["m0.f1@1", "m0.f2@1", "m1.f3@1"]]
    with pytest.raises(ExplorerError, match="threshold must be a number in"):
        ex.suggest_groups(1.5)


def test_groups_over_http(graph, tmp_path):
    server = start(AttributionExplorer(_planted_document(), None))
    try:
        status, got = _request(server, "GET", "/api/attribution/suggest?threshold=0.9&node_threshold=1&edge_threshold=1")
        assert status == 200 and [g["ids"] for g in got["groups"]] == [["0_1_1", "0_2_1"]]
        status, r = _request(server, "POST", "/api/attribution/groups", {"supernodes": [["pushes A", "0_1_1", "0_2_1"]], "pinned": ["1_3_1"]})
        assert status == 200 and r["saved"] is None and r["pinned"] == ["1_3_1"]
        status, v = _request(server, "GET", "/api/attribution?node_threshold=0&edge_threshold=0")
        assert v["supernodes"] == [["pushes A", "0_1_1", "0_2_1"]] and {n["id"] for n in v["nodes"] if n["pinned"]} == {"1_3_1"}
        for method, path, body, code, words in [
            ("GET", "/api/attribution/suggest?max_links=3", None, 400, "unknown parameter 'max_links'"),
            ("POST", "/api/attribution/groups", {"pins": []}, 400, "unknown field 'pins'"),
            ("POST", "/api/attribution/groups", {"pinned": ["nope"]}, 400, "no node 'nope'"),
            ("GET", "/api/attribution/groups", None, 405, "takes POST"),
        ]:
            status, err = _request(server, method, path, body)
            assert status == code and words in err["error"], (path, err)
    finally:
        server.shutdown()
        server.server_close()


def test_merged_supernodes_sum_their_members_links():
    """merge=True draws each supernode as one node whose links are the sums of its members' links drawn;
    links inside the group vanish; the members are not drawn."""
    doc = _planted_document()
    doc["links"].append({"source": "0_1_1", "target": "0_2_1", "weight": 0.3})  # inside the group
    ex = AttributionExplorer(doc)
    ex.save_groups(supernodes=[["pushes A", "0_1_1", "0_2_1"]])
    plain, merged = ex.view(1.0, 1.0), ex.view(1.0, 1.0, merge=True)
    ids = {n["id"] for n in merged["nodes"]}
    assert "0_1_1" not in ids and "0_2_1" not in ids and "group:0" in ids and merged["merged"]
    group = next(n for n in merged["nodes"] if n["id"] == "group:0")
    assert group["type"] == "supernode" and group["members"] == ["0_1_1", "0_2_1"] and group["layer"] == 0
    links = {(lk["source"], lk["target"]): lk["weight"] for lk in merged["links"]}
    assert links[("E_1_0", "group:0")] == pytest.approx(1.5)  # 1.0 + 0.5
    assert links[("group:0", "3_5_1")] == pytest.approx(3.0) and links[("group:0", "3_6_1")] == pytest.approx(0.05)
    assert ("group:0", "group:0") not in links and links[("1_3_1", "3_6_1")] == pytest.approx(1.0)
    assert sum(links.values()) == pytest.approx(sum(lk["weight"] for lk in plain["links"]) - 0.3)
    assert merged["counts"]["nodes"] == len(plain["nodes"]) - 1
    with pytest.raises(ExplorerError, match="merge must be true or false"):
        ex.view(merge="yes")
    server = start(ex)
    try:
        status, got = _request(server, "GET", "/api/attribution?node_threshold=1&edge_threshold=1&merge=1")
        assert status == 200 and got["links"] == merged["links"]
        status, err = _request(server, "GET", "/api/attribution?merge=2")
        assert status == 400 and "merge must be 0 or 1" in err["error"]
    finally:
        server.shutdown()
        server.server_close()
