"""Saved circuits and scores: EAP-IG's current graph JSON both ways, the older format, strict JSON."""

from __future__ import annotations

import json
import math

import pytest
import torch

import acdc
from acdc import Circuit, Graph, Scores


# ---------------------------------------------------------------- EAP-IG's format, as its code reads it
def eapig_edge_names(cfg: dict) -> set[str]:
    """The edges EAP-IG's ``Graph.from_model(cfg)`` builds (q/k/v always split; every layer has an MLP)."""
    names, stream = set(), ["input"]
    for layer in range(cfg["n_layers"]):
        heads = [f"a{layer}.h{h}" for h in range(cfg["n_heads"])]
        mlp = f"m{layer}"
        names |= {f"{u}->{h}<{x}>" for u in stream for h in heads for x in "qkv"}
        if cfg["parallel_attn_mlp"]:
            names |= {f"{u}->{mlp}" for u in stream}
            stream = stream + heads + [mlp]
        else:
            stream = stream + heads
            names |= {f"{u}->{mlp}" for u in stream}
            stream = stream + [mlp]
    return names | {f"{u}->logits" for u in stream}


def eapig_read(d: dict) -> tuple[dict[str, float], dict[str, bool]]:
    """What EAP-IG's ``Graph.from_json`` requires of a file (hannamw/EAP-IG main, src/eap/graph.py):
    the three keys; ``cfg`` with n_layers, n_heads, parallel_attn_mlp and d_model; node entries as
    dicts with ``in_graph`` (logits skipped); every edge name one of its graph's, with a numeric
    score and a bool ``in_graph``. Returns its scores and in_graph by edge name."""
    assert {"cfg", "nodes", "edges"} <= d.keys()
    cfg = d["cfg"]
    for key in ("n_layers", "n_heads", "parallel_attn_mlp", "d_model"):
        assert key in cfg, f"EAP-IG needs cfg[{key!r}]"
    edges = eapig_edge_names(cfg)
    nodes = {"input", "logits"} | {f"a{layer}.h{h}" for layer in range(cfg["n_layers"]) for h in range(cfg["n_heads"])}
    nodes |= {f"m{layer}" for layer in range(cfg["n_layers"])}
    for name, info in d["nodes"].items():
        assert name in nodes, name
        if name != "logits":
            assert isinstance(info, dict) and isinstance(info["in_graph"], bool), (name, info)
    scores, in_graph = {}, {}
    for name, info in d["edges"].items():
        assert name in edges, name
        assert isinstance(info["score"], (int, float)) and not isinstance(info["score"], bool), (name, info)
        assert isinstance(info["in_graph"], bool)
        scores[name], in_graph[name] = float(info["score"]), info["in_graph"]
    return scores, in_graph


def eapig_write(cfg: dict, scores: dict[str, float], in_graph: dict[str, bool]) -> dict:
    """A file as EAP-IG's ``Graph.to_json`` writes it: its cfg, every node, every edge with a float score."""
    used = {n for e, k in in_graph.items() if k for n in e.split("<")[0].split("->")}
    nodes = ["input"] + [f"a{layer}.h{h}" for layer in range(cfg["n_layers"]) for h in range(cfg["n_heads"])]
    nodes += [f"m{layer}" for layer in range(cfg["n_layers"])] + ["logits"]
    return {
        "cfg": cfg,
        "nodes": {n: {"in_graph": n in used or n == "logits"} for n in nodes},
        "edges": {e: {"score": scores[e], "in_graph": in_graph[e]} for e in eapig_edge_names(cfg)},
    }


@pytest.fixture(scope="module")
def found(gpt2_model):
    from conftest import random_tokens

    clean, corrupt = random_tokens()
    return acdc.discover(gpt2_model, clean, corrupt, threshold=0.02, progress=False)


def eapig_load(d: dict) -> tuple[dict[str, float], dict[str, bool]]:
    """The scores and in_graph EAP-IG's ``Graph.from_json`` ends with: its graph starts with every edge out of
    the circuit at score 0 (``Graph.from_model``), then each listed edge is set."""
    scores, in_graph = eapig_read(d)
    names = eapig_edge_names(d["cfg"])
    return {n: scores.get(n, 0.0) for n in names}, {n: in_graph.get(n, False) for n in names}


def test_acdc_json_reads_in_eapig(found, tmp_path):
    """Every-edge layout: every edge with its score, as EAP-IG writes it."""
    assert found.scores.isnan().any(), "ACDC leaves untested edges (dead destinations)"
    text = found.to_json(tmp_path / "c.json", every_edge=True).read_text()
    assert "NaN" not in text and "null" not in text  # strict JSON, numbers only
    d = json.loads(text)
    assert d["cfg"]["d_model"] == 32 and d["edges"].keys() == eapig_edge_names(d["cfg"])
    scores, in_graph = eapig_read(d)
    g = found.graph
    for i, e in enumerate(g.edges):
        assert in_graph[e.name] == bool(found.in_graph[i])
        s = float(found.scores[i])
        assert scores[e.name] == (0.0 if math.isnan(s) else s)
    # untested edges come back as NaN in acdc
    assert Circuit.from_json(tmp_path / "c.json") == found
    nodes = {n for n, info in d["nodes"].items() if info["in_graph"]}
    assert nodes == set(found.nodes)


def test_compact_json_is_the_same_circuit_in_eapig_and_acdc(found, tmp_path):
    """Compact layout (the default): the circuit's edges and nodes only, every score (NaN included) exactly in
    ``acdc.scores``; EAP-IG loads the same circuit, acdc the same object."""
    text = found.to_json(tmp_path / "c.json").read_text()
    assert "NaN" not in text and "null" not in text
    d = json.loads(text)
    assert set(d["edges"]) == set(found.edges) and set(d["nodes"]) == set(found.nodes)
    scores, in_graph = eapig_load(d)
    for i, e in enumerate(found.graph.edges):
        assert in_graph[e.name] == bool(found.in_graph[i]), e.name
        if found.in_graph[i]:
            assert scores[e.name] == float(found.scores[i])
    back = Circuit.from_json(tmp_path / "c.json")
    assert back == found and back.scores.isnan().sum() == found.scores.isnan().sum() > 0
    # the file's scores must fit its graph
    small = Graph(1, 1)
    d["acdc"]["scores"] = Circuit(small, torch.zeros(small.n_edges, dtype=torch.bool), torch.zeros(small.n_edges)).to_dict()["acdc"]["scores"]
    with pytest.raises(ValueError, match=f"the file's scores have {small.n_edges} entries but its graph has {found.graph.n_edges} edges"):
        Circuit.from_dict(d)


def test_compact_json_of_a_small_circuit_in_a_big_graph_is_small(tmp_path):
    """Issue 41: a 100-edge circuit of SmolLM2-135M's graph (123,211 edges) was a 9 MB file; compact, its random
    float64 scores (which zlib barely shrinks) take ~10.3 bytes an edge (base64 of 8)."""
    g = Graph(30, 9, d_model=576, n_kv_heads=3)
    gen = torch.Generator().manual_seed(0)
    keep = torch.zeros(g.n_edges, dtype=torch.bool)
    keep[torch.randperm(g.n_edges, generator=gen)[:100]] = True
    c = Circuit(g, keep, torch.randn(g.n_edges, generator=gen, dtype=torch.float64))
    compact = c.to_json(tmp_path / "c.json").stat().st_size
    every = c.to_json(tmp_path / "e.json", every_edge=True).stat().st_size
    assert compact < min(every / 6, 11 * g.n_edges) and Circuit.from_json(tmp_path / "c.json") == c == Circuit.from_json(tmp_path / "e.json")


def test_eapig_json_reads_in_acdc(tmp_path):
    cfg = {"n_layers": 2, "n_heads": 3, "parallel_attn_mlp": False, "d_model": 16}
    names = sorted(eapig_edge_names(cfg))
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(len(names), generator=gen).tolist()
    keep = (torch.rand(len(names), generator=gen) < 0.3).tolist()
    d = eapig_write(cfg, dict(zip(names, values)), dict(zip(names, keep)))
    (tmp_path / "eap.json").write_text(json.dumps(d))
    c = Circuit.from_json(tmp_path / "eap.json")
    assert c.graph.shape() == (2, 3, False, False) and c.graph.d_model == 16
    for name, v, k in zip(names, values, keep):
        assert c.edge_score(name) == pytest.approx(v) and (name in c) == k
    # and back: what acdc writes, EAP-IG reads with the same values (every one; compact: the kept edges')
    scores, in_graph = eapig_read(c.to_dict(every_edge=True))
    assert all(scores[n] == pytest.approx(v) and in_graph[n] == k for n, v, k in zip(names, values, keep))
    scores, in_graph = eapig_load(c.to_dict())
    assert all(in_graph[n] == k and (not k or scores[n] == pytest.approx(v)) for n, v, k in zip(names, values, keep))


def test_older_format_still_loads():
    g = Graph(1, 1)
    old = {
        "cfg": {"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": False, "split_qkv": True, "attn_only": False},
        "nodes": {n.name: n.name in ("input", "a0.h0", "logits") for n in g.nodes},
        "edges": {e.name: {"score": None if e.name.endswith("<q>") else 0.5, "in_graph": e.name == "a0.h0->logits"}
                  for e in g.edges},
        "acdc": {"format_version": 1, "settings": {"method": "acdc"}, "metric_trace": [0.1]},
    }
    c = Circuit.from_dict(old)
    assert c.edges == ["a0.h0->logits"] and math.isnan(c.edge_score("input->a0.h0<q>"))
    assert c.edge_score("input->a0.h0<k>") == 0.5 and c.metric_trace == [0.1]


def test_scores_save_and_load(tmp_path, gpt2_model):
    from conftest import random_tokens

    clean, corrupt = random_tokens()
    s = acdc.attribute(gpt2_model, clean, corrupt, method="eap-ig-inputs", steps=2)
    back = Scores.from_json(s.to_json(tmp_path / "s.json"))
    assert back == s and back.selected is None and back.settings["method"] == "eap-ig-inputs"
    assert Scores.from_json(s.to_json(tmp_path / "every.json", every_edge=True)) == s
    scores, in_graph = eapig_read(json.loads((tmp_path / "every.json").read_text()))  # EAP-IG reads every score
    assert scores == {e: s[e] for e in scores} and len(scores) == s.graph.n_edges and not any(in_graph.values())
    # ACDC's scores keep their selection and NaNs
    from acdc.algorithms import ALGORITHMS
    from acdc.api import prepare

    patcher, metric, batch = prepare(gpt2_model, clean, corrupt)
    acdc_scores = ALGORITHMS["acdc"](patcher, metric, batch, threshold=0.02)
    again = Scores.from_json(acdc_scores.to_json(tmp_path / "a.json"))
    assert again == acdc_scores and again.selection() == acdc_scores.selection()
