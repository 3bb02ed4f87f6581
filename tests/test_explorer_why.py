""""Why A and not B" in the explorer: every node's direct and total effect, and tracing, against the hooked forward."""

from __future__ import annotations

import pytest
import torch
from oracle import patched_logits
from test_explorer import _request

import acdc
from acdc.explorer import Explorer, ExplorerError, start


@pytest.fixture(scope="module")
def ioi():
    entry = acdc.zoo.load("ioi")
    circuit = acdc.discover(entry.model, entry.task, threshold=0.1, progress=False)
    return entry, circuit


def _oracle_diff(entry, graph, names, i: int, a: int, b: int, ablation: str = "resample") -> float:
    """logit(a) - logit(b) at prompt i's answer position with ``names`` ablated: the slow hooked forward."""
    t = entry.task
    logits = patched_logits(entry.model, graph, t.clean, t.corrupt, names, ablation)[i, int(t.answer_pos[i])]
    return float(logits[a] - logits[b])


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_direct_and_total_effects_equal_the_hooked_forward(ioi, ablation):
    entry, circuit = ioi
    ex = Explorer(entry.model, entry.task, circuit, tokenizer=entry.tokenizer, ablation=ablation)
    g, i = ex.graph, 3
    a, b = int(entry.task.correct[i]), int(entry.task.incorrect[i])
    r = ex.why(i)
    assert (r["a"]["id"], r["b"]["id"]) == (a, b) and r["a"]["token"] == entry.tokenizer.decode([a])
    full = _oracle_diff(entry, g, [], i, a, b, ablation)
    assert r["logit_diff"] == pytest.approx(full, abs=1e-3)
    rows = {n["name"]: n for n in r["nodes"]}
    assert set(rows) == {n.name for n in g.sources}  # every source reads into the logits in this graph
    for name in ("a2.h0", "a1.h0", "a0.h3", "m1", "input"):
        direct = full - _oracle_diff(entry, g, [f"{name}->logits"], i, a, b, ablation)
        out = [e.name for e in g.edges if e.src.name == name]
        total = full - _oracle_diff(entry, g, out, i, a, b, ablation)
        assert rows[name]["direct"] == pytest.approx(direct, abs=2e-3), name
        assert rows[name]["total"] == pytest.approx(total, abs=2e-3), name
    sizes = [abs(n["direct"]) for n in r["nodes"]]
    assert sizes == sorted(sizes, reverse=True)


def test_a_head_that_acts_through_another_has_a_small_direct_and_a_large_total_effect(ioi):
    """The planted circuit: a1.h0 moves no logit itself but steers a2.h0's query (S-inhibition-like)."""
    entry, circuit = ioi
    ex = Explorer(entry.model, entry.task, circuit, tokenizer=entry.tokenizer)
    rows = {n["name"]: n for n in ex.why(0)["nodes"]}
    assert abs(rows["a1.h0"]["direct"]) < 0.1 < 5 < abs(rows["a1.h0"]["total"])
    assert rows["a2.h0"]["direct"] > 5
    trace = ex.trace("a2.h0", 0)
    top = {e["edge"] for e in trace["edges"][:3]}
    assert "a1.h0->a2.h0<q>" in top
    g, a, b = ex.graph, int(entry.task.correct[0]), int(entry.task.incorrect[0])
    full = _oracle_diff(entry, g, [], 0, a, b)
    for e in trace["edges"][:4] + trace["edges"][-2:]:
        assert e["effect"] == pytest.approx(full - _oracle_diff(entry, g, [e["edge"]], 0, a, b), abs=2e-3), e
    assert len(trace["edges"]) == sum(1 for e in g.edges if e.dst.node.name == "a2.h0")


def test_other_tokens_totals_and_errors(ioi):
    entry, circuit = ioi
    ex = Explorer(entry.model, entry.task, circuit, tokenizer=entry.tokenizer)
    a = entry.tokenizer.decode([5])  # a text token; b as an id
    r = ex.why(2, a=a, b=9, totals=2)
    assert (r["a"]["id"], r["b"]["id"]) == (5, 9) and r["n_totals"] == 2
    assert [n["total"] is not None for n in r["nodes"]] == [True, True] + [False] * (len(r["nodes"]) - 2)
    g = ex.graph
    assert r["logit_diff"] == pytest.approx(_oracle_diff(entry, g, [], 2, 5, 9), abs=1e-3)
    swapped = ex.why(2, a=9, b=a, totals=0)
    assert swapped["logit_diff"] == pytest.approx(-r["logit_diff"], abs=1e-5)
    assert {n["name"]: -n["direct"] for n in swapped["nodes"]} == pytest.approx({n["name"]: n["direct"] for n in r["nodes"]}, abs=1e-5)
    for kwargs, match in (({"a": "two words"}, "tokens here"), ({"a": 10**6}, "token id in"), ({"totals": -1}, "totals"),
                          ({"a": "1000000"}, r"^a must be a token id in \[0, \d+\) or a single-token text, got 1000000$"),
                          ({"b": 1.5}, "token id or a single-token text"), ({"prompt": 99}, "prompt must be")):
        with pytest.raises(ExplorerError, match=match):
            ex.why(**kwargs)
    with pytest.raises(ExplorerError, match="reads no edges"):
        ex.trace("input", 0)


def test_positional_and_feature_graphs_answer(ioi):
    entry, _ = ioi
    pos = acdc.discover(entry.model, entry.task, threshold=0.05, positions="named", progress=False)
    ex = Explorer(entry.model, entry.task, pos, tokenizer=entry.tokenizer)
    plain = Explorer(entry.model, entry.task, ioi[1], tokenizer=entry.tokenizer)
    got = {n["name"]: n for n in ex.why(1)["nodes"]}
    want = {n["name"]: n for n in plain.why(1)["nodes"]}
    for name in ("a2.h0", "a1.h0", "m0"):  # every position of a node ablated = the node ablated
        assert got[name]["direct"] == pytest.approx(want[name]["direct"], abs=1e-3)
        assert got[name]["total"] == pytest.approx(want[name]["total"], abs=1e-3)
    chain = acdc.zoo.load("feature-chain")
    c = acdc.discover(chain.model, chain.task, threshold=0.01, graph=chain.graph, transcoders=chain.transcoders, progress=False)
    fx = Explorer(chain.model, chain.task, c, tokenizer=chain.tokenizer, transcoders=chain.transcoders)
    r = fx.why(0, a=0, b=1)
    kinds = {n["kind"] for n in r["nodes"]}
    assert "feature" in kinds and "error" in kinds
    p, g = fx.patcher, fx.graph
    row = int(p.answer_pos.shape[1]) - 1
    for n in r["nodes"][:3]:
        mask = g.edges_out_of([n["name"]]) & (g.edge_dst == g.logits_row)
        logits = p.logits(mask)[row]
        assert n["direct"] == pytest.approx(r["logit_diff"] - float(logits[0] - logits[1]), abs=1e-4)


def test_http_why_and_trace(ioi):
    entry, circuit = ioi
    ex = Explorer(entry.model, entry.task, circuit, tokenizer=entry.tokenizer)
    server = start(ex)
    try:
        status, r = _request(server, "POST", "/api/why", {"prompt": 1, "totals": 3})
        want = ex.why(1, totals=3)
        assert status == 200 and [n["name"] for n in r["nodes"]] == [n["name"] for n in want["nodes"]]
        assert r["nodes"][0]["direct"] == pytest.approx(want["nodes"][0]["direct"], abs=1e-9)
        status, t = _request(server, "POST", "/api/why/trace", {"node": "a2.h0", "prompt": 1})
        assert status == 200 and t["edges"][0]["edge"] == ex.trace("a2.h0", 1)["edges"][0]["edge"]
        status, err = _request(server, "POST", "/api/why", {"prompt": 1, "c": 2})
        assert status == 400 and "unknown field 'c'" in err["error"]
        status, err = _request(server, "POST", "/api/why", {"a": "two words"})
        assert status == 400 and "tokens" in err["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_why_is_exact_for_a_one_prompt_patcher_and_the_batch(ioi):
    """The one-prompt patcher (resample) and the batch patcher give the same numbers."""
    entry, circuit = ioi
    ex = Explorer(entry.model, entry.task, circuit, tokenizer=entry.tokenizer)
    one = ex.why(4)
    ex._why.patcher_for = lambda i: (ex.patcher, i * int(ex.patcher.answer_pos.shape[1]) + int(ex.patcher.answer_pos.shape[1]) - 1)
    batch = ex.why(4)
    assert torch.allclose(torch.tensor([n["direct"] for n in one["nodes"]]), torch.tensor([n["direct"] for n in batch["nodes"]]),
                          atol=1e-4)


# ---------------------------------------------------------------------- why does head H attend to T
def _hooked_pattern(model, graph, clean, corrupt, ablated_edge, ablation, layer, **opts):
    """[B, heads, q, k] attention of ``layer`` in the hooked forward with one edge ablated (None: none)."""
    from oracle import ablation_values, split_forward

    patterns: dict = {}
    abl = ablation_values(model, graph, corrupt, ablation, clean.shape[0], **opts)
    ablated = {} if ablated_edge is None else {ablated_edge: torch.ones(clean.shape, dtype=torch.bool)}
    split_forward(model, graph, clean, ablated=ablated, abl=abl, patterns=patterns, **opts)
    return patterns[layer]


def _check_attention(model, twin, clean, corrupt, head, i, q, k, ablation="resample", **opts):
    from acdc.explorer.qk import attention_why
    from acdc.patching import Patcher

    g = acdc.Graph.from_model(model)
    p = Patcher(model, clean, corrupt, graph=g, ablation=ablation)
    r = attention_why(p, head, i, q, k)
    node = g.sources[g.src_index[head]]
    _, cache = twin.run_with_cache(clean[i : i + 1])
    score = float(cache[f"blocks.{node.layer}.attn.hook_attn_scores"][0, node.head, q, k])
    assert r["score"] == pytest.approx(score, rel=1e-4, abs=1e-4)
    assert sum(n["query"] for n in r["nodes"]) == pytest.approx(score, rel=1e-4, abs=1e-4)  # the split sums to the score
    assert sum(n["key"] for n in r["nodes"]) == pytest.approx(score, rel=1e-4, abs=1e-4)
    want = cache[f"blocks.{node.layer}.attn.hook_pattern"][0, node.head, q]
    assert r["prob"] == pytest.approx(float(want[k]), abs=1e-5)
    assert r["pattern"] == pytest.approx(want[: q + 1].tolist(), abs=1e-5)
    rows = {n["name"]: n for n in r["nodes"]}
    big = sorted((n for n in r["nodes"] if n["name"] != "bias"), key=lambda n: -abs(n["query"]))[:2]
    for n in big + [rows["input"]]:
        for letter, field in (("q", "prob_query_ablated"), ("k", "prob_key_ablated")):
            edge = f"{n['name']}->{head}<{letter}>"
            hooked = _hooked_pattern(twin, g, clean, corrupt, edge, ablation, node.layer, **opts)[i, node.head, q, k]
            assert n[field] == pytest.approx(float(hooked), abs=1e-4), (edge, n[field], float(hooked))
    return r


def test_attention_split_and_ablations_equal_the_hooked_forward(ioi):
    entry, _ = ioi
    t = entry.task
    q = int(t.answer_pos[3])
    r = _check_attention(entry.model, entry.model, t.clean, t.corrupt, "a2.h0", 3, q, 2)
    assert r["nodes"][0]["name"] in ("a1.h0", "input")  # the planted circuit: a1.h0 steers a2.h0's query
    _check_attention(entry.model, entry.model, t.clean, t.corrupt, "a1.h0", 5, q, 1, ablation="mean")


@pytest.mark.parametrize("family", ["llama", "gemma", "qwen3", "phi3", "qwen3-moe", "gemma2", "gemma3", "olmo2", "olmoe", "gpt-oss"])
def test_attention_split_on_rotary_rms_models(family):
    """RMSNorm, rotary positions, grouped key/value heads: the split still sums to the hooked score."""
    from conftest import random_tokens
    from test_families import _mha_twin, _tiny

    gqa = _tiny(family, n_kv=2)
    twin_hf = _mha_twin(gqa)  # before load_model wraps gqa in place
    # Gemma 2: a head's edge reaches the stream through its layer's norm (Hugging Face's modules in the oracle)
    opts: dict = {}
    if family in ("gemma2", "gemma3", "olmo2"):
        opts["post_attn"] = [layer.post_attention_layernorm for layer in twin_hf.model.layers]
    if family in ("olmo2", "olmoe"):  # a QK norm over the whole projection: each head its own copy (oracle.split_forward)
        opts["qk_copies"] = [(layer.self_attn, getattr(layer, "input_layernorm", None)) for layer in twin_hf.model.layers]
    model, twin = acdc.load_model(gqa), acdc.load_model(twin_hf)
    clean, corrupt = random_tokens(batch=3, pos=6)
    _check_attention(model, twin, clean, corrupt, "a1.h3", 1, 5, 2, **opts)
    _check_attention(model, twin, clean, corrupt, "a0.h1", 2, 4, 4, ablation="zero", **opts)


def test_explorer_attend_and_its_errors(ioi):
    entry, circuit = ioi
    ex = Explorer(entry.model, entry.task, circuit, tokenizer=entry.tokenizer)
    r = ex.attend("a2.h0", 2, prompt=3)
    assert r["query"] == int(entry.task.answer_pos[3]) and r["key_token"] == entry.tokenizer.decode([int(entry.task.clean[3, 2])])
    for kwargs, match in (({"head": "m1", "key": 0}, "not an attention head"), ({"head": "a2.h0", "key": 40}, "need 0 <= key"),
                          ({"head": "a2.h0", "key": 5, "query": 3}, "need 0 <= key"), ({"head": "a2.h0", "key": "x"}, "key must be")):
        with pytest.raises(ExplorerError, match=match):
            ex.attend(**kwargs)
    server = start(ex)
    try:
        status, got = _request(server, "POST", "/api/attend", {"head": "a2.h0", "key": 2, "prompt": 3})
        assert status == 200 and got["score"] == pytest.approx(r["score"], abs=1e-9)
    finally:
        server.shutdown()
        server.server_close()
