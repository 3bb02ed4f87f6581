"""The explorer's engine answers and its HTTP API, against the engine and the hooked forward on zoo models."""

from __future__ import annotations

import http.client
import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from oracle import patched_logits

import acdc
from acdc.api import prepare
from acdc.circuit import Circuit
from acdc.cli import main
from acdc.explorer import Explorer, ExplorerError, export_html, start, view_data
from acdc.metrics import per_prompt

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ioi():
    entry = acdc.zoo.load("ioi")
    circuit = acdc.discover(entry.model, entry.task, threshold=0.1, progress=False)
    return entry, circuit


@pytest.fixture(scope="module")
def explorer(ioi):
    entry, circuit = ioi
    return Explorer(entry.model, entry.task, circuit, tokenizer=entry.tokenizer)


@pytest.fixture(scope="module")
def server(explorer):
    s = start(explorer)
    yield s
    s.shutdown()
    s.server_close()


def _engine(entry, names: list[str], *, kept: bool, ablation: str = "resample", graph=None):
    """(metric, per-prompt values) from a fresh patcher: the names ablated, or everything but them."""
    p, m, batch = prepare(entry.model, entry.task, ablation=ablation, graph=graph)
    mask = p.graph.edge_mask(names)
    logits = p.logits(~mask if kept else mask)
    return m(logits, batch), per_prompt(m, logits, batch)


def _random_names(graph, k: int, seed: int) -> list[str]:
    pick = torch.randperm(graph.n_edges, generator=torch.Generator().manual_seed(seed))[:k]
    return [graph.edges[i].name for i in sorted(pick.tolist())]


# ---------------------------------------------------------------------- engine answers
@pytest.mark.parametrize("name", ["ioi", "induction", "modular-sum"])
def test_evaluate_equals_the_patcher_for_random_edge_sets(name):
    entry = acdc.zoo.load(name)
    g = acdc.Graph.from_model(entry.model)
    circuit = Circuit(g, g.edge_mask(_random_names(g, 20, 0)), torch.zeros(g.n_edges, dtype=torch.float64))
    ex = Explorer(entry.model, entry.task, circuit, ablation=entry.ablation)
    for seed, k in ((1, 1), (2, 15), (3, g.n_edges // 2)):
        names = _random_names(g, k, seed)
        for kept in (False, True):
            got = ex.evaluate(kept=names) if kept else ex.evaluate(ablated=names)
            want, want_each = _engine(entry, names, kept=kept, ablation=entry.ablation)
            assert got["metric"] == pytest.approx(want, rel=1e-6, abs=1e-6), (name, seed, kept)
            assert got["per_prompt"] == pytest.approx(want_each.tolist(), rel=1e-6, abs=1e-6)
            assert got["n_kept"] == (k if kept else g.n_edges - k)
            if ex.model_metric == 0:  # KL: the full model's is 0, so only the normalized faithfulness means something
                assert got["faithfulness"]["ratio"] is None
            else:
                assert got["faithfulness"]["ratio"] == pytest.approx(want / ex.model_metric)
            assert got["faithfulness"]["normalized"] == pytest.approx(
                (want - ex.empty_metric) / (ex.model_metric - ex.empty_metric))


def test_removed_means_the_circuit_minus_these_edges(ioi, explorer, server):
    """The three meanings of an edge list: removed (circuit minus), kept (only these), ablated (graph minus)."""
    entry, circuit = ioi
    edges = circuit.edges
    whole = explorer.evaluate(removed=[])
    assert whole["metric"] == pytest.approx(explorer.evaluate(kept=edges)["metric"], abs=1e-9)
    assert whole["evaluated"] == "circuit minus removed" and whole["n_kept"] == len(edges)
    for drop in ([edges[0]], edges[2:5]):
        got = explorer.evaluate(removed=drop)
        rest = [e for e in edges if e not in drop]
        want, want_each = _engine(entry, rest, kept=True)
        assert got["metric"] == pytest.approx(want, abs=1e-6) and got["per_prompt"] == pytest.approx(want_each.tolist(), abs=1e-6)
        assert got["n_kept"] == len(rest) and got["evaluated"] == "circuit minus removed"
        graph_minus = explorer.evaluate(ablated=drop)
        assert graph_minus["evaluated"] == "graph minus ablated" and graph_minus["n_kept"] == circuit.graph.n_edges - len(drop)
        assert graph_minus["metric"] != pytest.approx(got["metric"], abs=1e-3)  # the two meanings differ here
    outside = next(e.name for e in circuit.graph.edges if e.name not in set(edges))
    assert explorer.evaluate(removed=[outside])["n_kept"] == len(edges)  # removing an edge the circuit lacks: no change
    status, r = _request(server, "POST", "/api/evaluate", {"removed": [edges[0]]})
    assert status == 200 and r["metric"] == pytest.approx(explorer.evaluate(removed=[edges[0]])["metric"], abs=1e-9)
    with pytest.raises(ExplorerError, match='exactly one of "removed"'):
        explorer.evaluate(removed=[], kept=edges)


@pytest.mark.parametrize("positions", [None, "named"])
def test_clicks_restart_at_the_lowest_layer_they_change_and_stay_exact(ioi, positions):
    """Toggling edges one click at a time: each answer equals a fresh patched run, and each run restarted
    at the lowest layer the changed edges feed (the sources below it reused from the previous click)."""
    entry, _ = ioi
    circuit = acdc.discover(entry.model, entry.task, threshold=0.01, positions=positions, progress=False)
    ex = Explorer(entry.model, entry.task, circuit, tokenizer=entry.tokenizer)
    g = ex.graph
    starts = []
    forward = ex.patcher.forward
    ex.patcher.forward = lambda keep, reuse=None: (starts.append(None if reuse is None else reuse[1]), forward(keep, reuse))[1]
    removed: list[str] = []
    clicks = [e for e in circuit.edges if not e.startswith("input->")][:3] + [circuit.edges[0]]
    for edge in clicks + clicks[:2]:  # remove four edges, then restore two
        removed = [e for e in removed if e != edge] if edge in removed else removed + [edge]
        got = ex.evaluate(removed=removed)["metric"]
        kept = [e for e in circuit.edges if e not in removed]
        want, _ = _engine(entry, kept, kept=True, graph=circuit.graph)
        assert got == pytest.approx(want, abs=1e-6), edge
    layers = [int(g.dst_layer[g.edge_dst[g.edge_index(e)]]) for e in clicks + clicks[:2]]
    assert starts == [None, *layers[1:]]  # the first click from scratch, then from the clicked edge's layer
    assert max(starts[1:]) > 0


def test_evaluate_equals_the_hooked_forward(ioi, explorer):
    """The slow, obvious oracle: TransformerLens hooks rebuild every input with the edges swapped."""
    entry, _ = ioi
    g, task = explorer.graph, entry.task
    names = _random_names(g, 6, 7) + ["a2.h0->logits"]
    logits = patched_logits(entry.model, g, task.clean, task.corrupt, names, "resample")
    rows = torch.arange(task.clean.shape[0])
    at = logits[rows, task.answer_pos]
    per = at[rows, task.correct] - at[rows, task.incorrect]
    got = explorer.evaluate(ablated=names)
    assert got["metric"] == pytest.approx(float(per.mean()), abs=1e-4)
    assert got["per_prompt"] == pytest.approx(per.tolist(), abs=1e-4)


def test_next_tokens_are_the_runs_top_tokens(ioi, explorer):
    entry, circuit = ioi
    p = explorer.patcher
    r = explorer.evaluate(kept=circuit.edges[1:], prompt=5, k=3)
    circuit_logits = p.logits(~p.graph.edge_mask(circuit.edges[1:]))
    for run, logits in (("model", p.clean.logits), ("circuit", circuit_logits), ("corrupt", p.corrupt_logits)):
        top = r["next_tokens"][run]["top"]
        assert [t["id"] for t in top] == logits[5].topk(3).indices.tolist(), run
        assert top[0]["token"] == entry.tokenizer.decode([top[0]["id"]])
        assert r["next_tokens"][run]["correct"]["logit"] == pytest.approx(float(logits[5, entry.task.correct[5]]))
    assert r["prompt"] == 5 and len(r["per_prompt"]) == entry.task.n_prompts


def test_head_attention_and_direct_effect(ioi, explorer):
    entry, _ = ioi
    r = explorer.head("a2.h0", 3)
    n = int(entry.task.answer_pos[3]) + 1
    _, cache = entry.model.run_with_cache(entry.task.clean[3:4])
    want = cache["blocks.2.attn.hook_pattern"][0, 0, :n, :n]
    assert torch.allclose(torch.tensor(r["attention"]["clean"], dtype=torch.float32), want, atol=1e-4)
    assert len(r["attention"]["corrupt"]) == n and r["tokens"]["clean"][2] == entry.tokenizer.decode([int(entry.task.clean[3, 2])])
    d = r["direct_effect"]
    want_metric, want_each = _engine(entry, ["a2.h0->logits"], kept=False)
    assert d["edges"] == ["a2.h0->logits"]
    assert d["metric"] == pytest.approx(want_metric, abs=1e-6)
    assert d["change"] == pytest.approx(want_metric - explorer.model_metric, abs=1e-6)
    assert d["per_prompt_change"] == pytest.approx((want_each - explorer.per_prompt_model).tolist(), abs=1e-6)
    p = explorer.patcher
    patched = p.logits(p.graph.edge_mask(["a2.h0->logits"]))
    c, i = int(entry.task.correct[3]), int(entry.task.incorrect[3])
    assert d["prompt_logit_change"]["correct"] == pytest.approx(float(patched[3, c] - p.clean.logits[3, c]), abs=1e-5)
    assert d["prompt_logit_change"]["incorrect"] == pytest.approx(float(patched[3, i] - p.clean.logits[3, i]), abs=1e-5)


def test_fire_scans_the_task_prompts_up_to_their_last_scored_token(ioi, explorer, server):
    """What makes a2.h0 fire, over the clean and corrupt prompts: the activation is the norm of the head's
    hooked output at every position up to each prompt's last scored token, and nothing past it counts."""
    entry, _ = ioi
    r = explorer.fire("a2.h0", top=5)
    task, n = entry.task, entry.task.clean.shape[0]
    last = torch.as_tensor(task.answer_pos).reshape(n, -1).max(1).values
    mask = torch.arange(task.clean.shape[1])[None, :] <= last[:, None]
    entry.model.set_use_attn_result(True)
    values = []
    for tokens in (task.clean, task.corrupt):
        _, cache = entry.model.run_with_cache(tokens)
        values.append(cache["blocks.2.attn.hook_result"][:, :, 0].norm(dim=-1)[mask])
    values = torch.cat(values)
    assert r["positions"] == values.numel() == 2 * int((last + 1).sum())
    assert r["mean"] == pytest.approx(float(values.mean()), rel=1e-5)
    assert r["maximum"] == pytest.approx(float(values.max()), rel=1e-5)
    assert sum(r["histogram"]["counts"]) == values.numel() and len(r["contexts"]) == 5
    for c in r["contexts"]:
        side, i = ("clean", c["sequence"]) if c["sequence"] < n else ("corrupt", c["sequence"] - n)
        assert c["source"] == f"{side} {i}" and c["key"] <= c["position"] <= int(last[i])
        assert c["token"] == entry.tokenizer.decode([int(getattr(task, side)[i, c["position"]])])
    assert explorer.fire("a2.h0", top=5) is r  # kept: a second ask runs nothing
    status, got = _request(server, "POST", "/api/fire", {"node": "m1", "top": 3})
    assert status == 200 and got["node"] == "m1" and got["positions"] == r["positions"] and len(got["contexts"]) == 3
    status, err = _request(server, "POST", "/api/fire", {"node": "logits"})
    assert status == 400 and "no activation to scan" in err["error"]
    status, err = _request(server, "POST", "/api/fire", {"node": "m1", "layer": 2})
    assert status == 400 and "unknown field 'layer'" in err["error"]


def test_fire_over_a_corpus_given(ioi):
    entry, circuit = ioi
    corpus = entry.task.clean[:3, :5]
    ex = Explorer(entry.model, entry.task, circuit, tokenizer=entry.tokenizer, corpus=corpus)
    r = ex.fire("m0", top=2)
    assert r["positions"] == 15 and r["corpus"] == "the corpus given (3 sequences)"
    assert all(c["source"] == f"corpus {c['sequence']}" for c in r["contexts"])
    with pytest.raises(ValueError, match="token ids"):
        Explorer(entry.model, entry.task, circuit, corpus=corpus.float())


def test_fire_and_intervene_on_planted_features():
    """In a feature graph, a feature's activation is its transcoder's on the MLP's normed input (read here
    from the Hugging Face module); the error node has none to scan; the planted features fire and matter
    where the zoo planted them."""
    chain = acdc.zoo.load("feature-chain")
    c = acdc.discover(chain.model, chain.task, threshold=0.01, graph=chain.graph, transcoders=chain.transcoders, progress=False)
    ex = Explorer(chain.model, chain.task, c, tokenizer=chain.tokenizer, transcoders=chain.transcoders)
    name = next(n for n in (s.name for s in ex.graph.sources) if ".f" in n)
    layer, index = int(name[1 : name.index(".")]), int(name.split(".f")[1])
    r = ex.fire(name, top=3)
    assert r["kind"] == "feature" and r["active"] is not None
    got = {}
    hf = chain.model.original_model
    handle = hf.transformer.h[layer].ln_2.register_forward_hook(lambda m, i, o: got.__setitem__("xn", o))
    try:
        with torch.no_grad():
            for tokens in (chain.task.clean, chain.task.corrupt):
                hf(tokens)
                acts = chain.transcoders[layer].encode(got["xn"])[..., index]
                got.setdefault("acts", []).append(acts)
    finally:
        handle.remove()
    n = chain.task.clean.shape[0]
    for ctx in r["contexts"]:
        side, i = divmod(ctx["sequence"], n)
        assert ctx["value"] == pytest.approx(float(got["acts"][side][i, ctx["position"]]), abs=1e-5)
    err = next(s.name for s in ex.graph.sources if s.name.endswith(".err"))
    with pytest.raises(ExplorerError, match="no activation to scan"):
        ex.fire(err)
    # planted: m0.f4 and m0.f5 fire on <bos> and "is" (the same in clean and corrupt prompts), the class
    # features carry the answer: ablating a class feature moves the KL, a distractor does not
    for distractor in ("m0.f4", "m0.f5"):
        assert {c["token"] for c in ex.fire(distractor)["contexts"]} <= {"<bos>", "is"}
        assert abs(ex.intervene([{"node": distractor}])["change"]) < 1e-6
    for k in range(4):
        assert ex.intervene([{"node": f"m0.f{k}"}])["change"] > 0.5 and ex.intervene([{"node": f"m1.f{k}"}])["change"] > 0.5


def test_node_effects_remove_each_nodes_output(ioi, explorer):
    entry, circuit = ioi
    r = explorer.node_effects(circuit.edges)
    g = explorer.graph
    base, _ = _engine(entry, circuit.edges, kept=True)
    assert r["metric"] == pytest.approx(base, abs=1e-6)
    assert {e["name"] for e in r["effects"]} == {n for n in circuit.nodes if n not in ("input", "logits")}
    for e in r["effects"]:
        kept = [x for x in circuit.edges if g.edges[g.edge_index(x)].src.name != e["name"]]
        want, _ = _engine(entry, kept, kept=True)
        assert e["metric"] == pytest.approx(want, abs=1e-6) and e["change"] == pytest.approx(want - base, abs=1e-6)
    changes = [abs(e["change"]) for e in r["effects"]]
    assert changes == sorted(changes, reverse=True)


def test_view_has_layout_prompts_and_baselines(ioi, explorer):
    entry, circuit = ioi
    v = explorer.view()
    assert v["live"] is True and len(v["layout"]["edges"]) == circuit.n_edges
    assert v["metric"]["model"] == pytest.approx(explorer.metric(explorer.patcher.clean.logits, explorer.batch))
    assert len(v["prompts"]) == entry.task.n_prompts
    p0 = v["prompts"][0]
    assert p0["clean"] == [entry.tokenizer.decode([int(t)]) for t in entry.task.clean[0]]
    assert p0["scored"] == [int(entry.task.answer_pos[0])] and p0["correct"]["id"] == int(entry.task.correct[0])
    json.dumps(v, allow_nan=False)  # strict JSON


def test_view_data_node_table_and_dead_edges():
    g = acdc.Graph(2, 2)
    names = {"input->a0.h0<v>": 2.0, "a0.h0->logits": -4.0, "a0.h0->a1.h1<q>": 1.0, "a0.h1->a1.h0<v>": 3.0}
    scores = torch.zeros(g.n_edges, dtype=torch.float64)
    for n, s in names.items():
        scores[g.edge_index(n)] = s
    v = view_data(Circuit(g, g.edge_mask(list(names)), scores))
    rows = {r["name"]: r for r in v["nodes"]}
    assert rows["a0.h0"]["edges_in"] == 1 and rows["a0.h0"]["edges_out"] == 2 and rows["a0.h0"]["score_out"] == 5.0
    assert rows["logits"]["score_in"] == 4.0 and rows["a1.h1"]["edges_out"] == 0
    assert [r["name"] for r in v["nodes"]][:2] == ["a0.h0", "a0.h1"]  # by sum of |score| out
    live = {e["name"]: e["live"] for e in v["layout"]["edges"]}
    assert live == {"input->a0.h0<v>": True, "a0.h0->logits": True, "a0.h0->a1.h1<q>": False, "a0.h1->a1.h0<v>": False}


def test_positional_circuit_explores(ioi):
    entry, _ = ioi
    circuit = acdc.discover(entry.model, entry.task, threshold=0.05, positions="named", progress=False)
    ex = Explorer(entry.model, entry.task, circuit, tokenizer=entry.tokenizer)
    v = ex.view()
    assert {n["pos"] for n in v["layout"]["nodes"]} <= set(entry.task.positions.names)
    assert "a2.h0@END" in {n["id"] for n in v["layout"]["nodes"]}
    assert v["prompts"][0]["positions"][-1] == "END"
    names = circuit.edges[1:]
    want, _ = _engine(entry, names, kept=True, graph=circuit.graph)
    assert ex.evaluate(kept=names)["metric"] == pytest.approx(want, abs=1e-6)


def test_notes_are_saved_into_the_circuit_json(ioi, tmp_path):
    entry, circuit = ioi
    path = circuit.to_json(tmp_path / "c.json")
    ex = Explorer(entry.model, entry.task, Circuit.from_json(path), tokenizer=entry.tokenizer, path=path)
    r = ex.save_notes("a2.h0", "name mover", "copies the IO name </script>")
    assert r["saved"] == str(path)
    again = Circuit.from_json(path)
    assert again.notes == {"a2.h0": {"label": "name mover", "note": "copies the IO name </script>"}}
    assert again.in_graph.equal(circuit.in_graph)  # the rest of the file is unchanged
    ex.save_notes("a2.h0", "", "")  # empty clears
    assert Circuit.from_json(path).notes == {}
    for bad, match in (((3, "x"), "node name"), (("a9.h9", "x"), "not a node"), (("a2.h0", "x" * 201), "at most 200"),
                       (("a2.h0", 5), "must be a string")):
        with pytest.raises(ExplorerError, match=match):
            ex.save_notes(*bad)


def test_bad_requests_are_one_line_errors(explorer):
    for call, match in (
        (lambda: explorer.evaluate(ablated=["a0.h0->a9.h0<q>"]), r"edge 'a0.h0->a9.h0<q>' is not in this graph"),
        (lambda: explorer.evaluate(ablated=["nope", "nope2"]), r"'nope'.*\(and 1 more unknown\)"),
        (lambda: explorer.evaluate(), "exactly one of"),
        (lambda: explorer.evaluate(ablated=[], kept=[]), "exactly one of"),
        (lambda: explorer.evaluate(kept="a0.h0->logits"), "must be a list of edge names"),
        (lambda: explorer.evaluate(kept=[], prompt=32), r"prompt must be an index in \[0, 31\]"),
        (lambda: explorer.evaluate(kept=[], prompt=True), "prompt must be an index"),
        (lambda: explorer.evaluate(kept=[], k=0), r"k must be a number of tokens in \[1, 50\]"),
        (lambda: explorer.head("m1"), "not an attention head"),
    ):
        with pytest.raises(ExplorerError, match=match) as err:
            call()
        assert "\n" not in str(err.value)


def test_circuit_that_does_not_fit_the_model(ioi):
    entry, _ = ioi
    g = acdc.Graph(2, 4)
    with pytest.raises(ValueError, match="^this circuit is for a 2-layer model with 4 heads per layer, but this model is a 3-layer"):
        Explorer(entry.model, entry.task, Circuit(g, torch.ones(g.n_edges, dtype=torch.bool), torch.zeros(g.n_edges)))


# ---------------------------------------------------------------------- HTTP
def _request(server, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers=headers or {})
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, (json.loads(payload) if r.getheader("Content-Type", "").startswith("application/json") else payload)


def test_http_graph_and_evaluate_equal_the_engine(ioi, server):
    entry, circuit = ioi
    status, graph = _request(server, "GET", "/api/graph")
    assert status == 200 and Circuit.from_dict(graph) == circuit
    g = circuit.graph
    for seed in (11, 12, 13):
        names = _random_names(g, 10 * (seed - 10), seed)
        for kept in (False, True):
            status, r = _request(server, "POST", "/api/evaluate", {"kept" if kept else "ablated": names, "prompt": 1})
            want, want_each = _engine(entry, names, kept=kept)
            assert status == 200
            assert r["metric"] == pytest.approx(want, abs=1e-6) and r["per_prompt"] == pytest.approx(want_each.tolist(), abs=1e-6)
    status, page = _request(server, "GET", "/")
    assert status == 200 and b"acdc explorer" in page
    status, head = _request(server, "GET", "/api/head?name=a2.h0&prompt=2")
    assert status == 200 and head["head"] == "a2.h0" and head["prompt"] == 2


BAD = [  # (method, path, body or raw bytes, headers, status, error pattern)
    ("POST", "/api/evaluate", {"ablated": ["a0.h0->a9.h9<q>"]}, {}, 400, "is not in this graph"),
    ("POST", "/api/evaluate", b'{"ablated": [', {}, 400, "malformed JSON"),
    ("POST", "/api/evaluate", b"\xff\xfe", {}, 400, "malformed JSON"),
    ("POST", "/api/evaluate", [1, 2], {}, 400, "must be a JSON object"),
    ("POST", "/api/evaluate", {"kept": [], "extra": 1}, {}, 400, "unknown field 'extra'"),
    ("POST", "/api/evaluate", {"kept": [], "prompt": "0"}, {}, 400, "prompt must be an index"),
    ("POST", "/api/node_effects", {}, {}, 400, "needs \"kept\""),
    ("POST", "/api/notes", {"node": "a2.h0", "label": 7}, {}, 400, "must be a string"),
    ("GET", "/api/head?name=a2.h0&prompt=x", None, {}, 400, "prompt must be a prompt index"),
    ("GET", "/api/head?name=zzz", None, {}, 400, "not an attention head"),
    ("GET", "/api/evaluate", None, {}, 405, "takes POST"),
    ("POST", "/api/graph", {}, {}, 405, "no POST route"),
    ("GET", "/etc/passwd", None, {}, 404, "no such page"),
    ("POST", "/nowhere", {}, {}, 404, "no POST route"),
    ("GET", "/api/graph", None, {"Host": "evil.example:80"}, 403, "must be addressed to 127.0.0.1"),
]


@pytest.mark.parametrize("method,path,body,headers,status,pattern", BAD, ids=[f"{b[0]} {b[1]} {b[4]}" for b in BAD])
def test_http_bad_requests_get_4xx_and_the_server_survives(server, method, path, body, headers, status, pattern):
    raw = body if isinstance(body, bytes) else None
    got, r = _request(server, method, path, None if raw is not None else body, headers, raw)
    assert got == status and re.search(pattern, r["error"]) and "\n" not in r["error"]
    ok, _ = _request(server, "POST", "/api/evaluate", {"kept": []})
    assert ok == 200


def _raw_reply(port: int, request: bytes) -> str:
    """Send raw bytes; the whole reply (the server closes these connections after answering)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def test_http_huge_or_unsized_bodies(server):
    port = server.server_address[1]
    reply = _raw_reply(port, b"POST /api/evaluate HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 1000000000\r\n\r\n{" % port)
    assert reply.startswith("HTTP/1.1 413") and "at most 16777216 are accepted" in reply  # announced 1 GB, not read
    reply = _raw_reply(port, b"POST /api/evaluate HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % port)
    assert reply.startswith("HTTP/1.1 411") and "Content-Length" in reply
    status, r = _request(server, "POST", "/api/evaluate", raw=b"", headers={"Content-Length": "abc"})
    assert status == 411 and "Content-Length" in r["error"]
    assert _request(server, "POST", "/api/evaluate", {"kept": []})[0] == 200


def test_http_a_slow_client_does_not_hold_up_others(server):
    port = server.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:  # half a body, then silence
        slow.sendall(b"POST /api/evaluate HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 100\r\n\r\n{\"kept\"" % port)
        t0 = time.perf_counter()
        assert _request(server, "POST", "/api/evaluate", {"kept": []})[0] == 200
        assert time.perf_counter() - t0 < 10


def test_http_internal_error_is_a_500_and_the_server_survives(server, monkeypatch):
    def broken(**_):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(server.explorer, "evaluate", broken)
    status, r = _request(server, "POST", "/api/evaluate", {"kept": []})
    assert status == 500 and r["error"] == "internal error: boom"
    monkeypatch.undo()
    assert _request(server, "POST", "/api/evaluate", {"kept": []})[0] == 200


def test_http_concurrent_requests_each_get_their_own_answer(ioi, server):
    entry, _ = ioi
    g = server.explorer.graph
    sets = [_random_names(g, 5 + 10 * k, 40 + k) for k in range(4)]
    results: dict[int, float] = {}

    def ask(k: int) -> None:
        results[k] = _request(server, "POST", "/api/evaluate", {"ablated": sets[k]})[1]["metric"]

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, names in enumerate(sets):
        assert results[k] == pytest.approx(_engine(entry, names, kept=False)[0], abs=1e-6)


# ---------------------------------------------------------------------- export and CLI
def test_export_html_is_self_contained(ioi, tmp_path):
    _, circuit = ioi
    c = Circuit.from_dict(circuit.to_dict())
    c.notes = {"a2.h0": {"label": "mover </script><!-- x", "note": ""}}
    html = export_html(c, tmp_path / "c.html").read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)  # nothing fetched from elsewhere
    assert "</script><!--" not in html.split("window.ACDC_DATA = ", 1)[1].split(";</script>", 1)[0]
    data = json.loads(html.split("window.ACDC_DATA = ", 1)[1].split(";</script>", 1)[0].replace("<\\u0021", "<!"))
    assert data["notes"]["a2.h0"]["label"] == "mover </script><!-- x" and len(data["layout"]["edges"]) == circuit.n_edges
    with pytest.raises(ValueError, match="export to an .html file"):
        export_html(c, tmp_path / "c.png")


def test_cli_export_html_and_explore_errors(ioi, tmp_path, capsys):
    _, circuit = ioi
    path = circuit.to_json(tmp_path / "c.json")
    assert main(["export-html", str(path), "-o", str(tmp_path / "page.html")]) == 0
    html = (tmp_path / "page.html").read_text()
    assert "window.ACDC_DATA = {" in html and "/*ACDC_DATA*/" not in html
    assert main(["explore", str(tmp_path / "missing.json"), "--model", "zoo:ioi", "--no-browser"]) == 1
    assert "acdc explore: error: no such file" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["explore", str(path), "--model", "zoo:ioi", "--port", str(port), "--no-browser"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"acdc explore: error: cannot listen on 127.0.0.1:{port}") and "--port" in err
    assert len(err.splitlines()) == 1
    g = acdc.Graph(2, 4)
    other = Circuit(g, torch.ones(g.n_edges, dtype=torch.bool), torch.zeros(g.n_edges)).to_json(tmp_path / "other.json")
    assert main(["explore", str(other), "--model", "zoo:ioi", "--no-browser"]) == 1
    err = capsys.readouterr().err
    assert "other.json is a circuit of a 2-layer model with 4 heads per layer, but --model zoo:ioi is a 3-layer" in err
    assert "pass the model the circuit was found on" in err and "Graph.from_model" not in err and len(err.splitlines()) == 1
    assert main(["explore", str(path), "--model", "zoo:ioi", "--corpus", "sotu", "--no-browser"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("acdc explore: error: --corpus sotu: a text corpus needs a Hugging Face tokenizer") and "\n" not in err


def test_cli_explore_serves_until_stopped(ioi, tmp_path):
    _, circuit = ioi
    path = circuit.to_json(tmp_path / "c.json")
    proc = subprocess.Popen([sys.executable, "-m", "acdc.cli", "explore", str(path), "--model", "zoo:ioi", "--port", "0",
                             "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        url = None
        t0 = time.time()
        while url is None and time.time() - t0 < 120:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            m = re.search(r"serving (http://127\.0\.0\.1:(\d+)/)", line)
            url = m and int(m.group(2))
            assert line or proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
        conn = http.client.HTTPConnection("127.0.0.1", url, timeout=60)
        conn.request("GET", "/api/view")
        view = json.loads(conn.getresponse().read())
        assert view["live"] is True and len(view["layout"]["edges"]) == circuit.n_edges
        assert view["metric"]["name"] == "logit_diff" and math.isfinite(view["metric"]["model"])
    finally:
        proc.terminate()
        proc.wait(30)


def test_generate_continues_the_prompt_with_features_edited_as_acdc_generate_does():
    """The explorer's generate: the clean prompt up to its scored token, continued greedily by the model and with the
    feature edits, token for token what `acdc.generate` gives; through the server route too; a circuit without
    transcoders refuses edits with one line, and a model with learned positions stops at its context."""
    from test_features import feature_explorer

    ex, model, task, ts = feature_explorer()
    edits = [{"node": "m0.f3", "op": "clamp", "value": 6.0}, {"node": "m1.f5", "op": "scale", "value": -4.0}]
    r = ex.generate(edits, prompt=1, max_new_tokens=8)
    want = acdc.generate(model, task.clean[1], transcoders=ts, interventions=edits, max_new_tokens=8)
    plain = acdc.generate(model, task.clean[1], transcoders=ts, max_new_tokens=8)
    assert r["intervened"] == [ex.decode(int(t)) for t in want.new] and r["model"] == [ex.decode(int(t)) for t in plain.new]
    assert r["intervened"] != r["model"] and r["new_tokens"] == 8
    server = start(ex)
    try:
        status, got = _request(server, "POST", "/api/generate", {"interventions": edits, "prompt": 1, "max_new_tokens": 8})
        assert status == 200 and got["intervened"] == r["intervened"]
        status, bad = _request(server, "POST", "/api/generate", {"interventions": edits, "steps": 3})
        assert status == 400 and "steps" in bad["error"]
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ExplorerError, match="max_new_tokens must be"):
        ex.generate(edits, max_new_tokens=0)
    assert ex.generate(edits, max_new_tokens=200)["new_tokens"] == 32 - 5  # GPT-2's 32 positions here
    with pytest.raises(ValueError, match="at most 27 new tokens"):
        acdc.generate(model, task.clean[1], max_new_tokens=28)
    entry = acdc.zoo.load("ioi")
    plain_ex = Explorer(entry.model, entry.task, acdc.discover(entry.model, entry.task, threshold=0.05, progress=False))
    with pytest.raises(ExplorerError, match="this circuit has none"):
        plain_ex.generate([{"node": "a1.h0", "op": "ablate"}])
    with pytest.raises(ExplorerError, match="fills the model's context"):
        plain_ex.generate([])
