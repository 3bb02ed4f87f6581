"""ACDC equals a plain sequential implementation; API validation; circuits as JSON."""

import json
import math

import pytest
import torch
from conftest import random_tokens, tiny_gpt2, tiny_neox
from oracle import patched_logits

import acdc
from acdc import Circuit, Graph


def kl_at_last(model, logits_full_clean, patched):
    ref = logits_full_clean.log_softmax(-1)
    new = patched.log_softmax(-1)
    return float((ref.exp() * (ref - new)).sum(-1).mean())


def plain_acdc(model, clean, corrupt, threshold, ablation, positions=None):
    """ACDC the obvious way: a full hooked forward per tested edge, dicts and loops.

    positions: [batch, P] scored positions (default: the last).
    """
    g = Graph.from_model(model)
    rows = torch.arange(clean.shape[0])[:, None]
    pos = torch.full((clean.shape[0], 1), clean.shape[1] - 1) if positions is None else positions

    def at(logits):
        return logits[rows, pos].flatten(0, 1)

    with torch.no_grad():
        full = at(model(clean))
    removed: set[str] = set()
    current = kl_at_last(model, full, at(patched_logits(model, g, clean, corrupt, removed, ablation)))
    deltas: dict[str, float] = {}
    for dst in reversed(g.destinations):
        node = dst.node.name
        if node != "logits":
            outgoing = [e.name for e in g.edges if e.src.name == node]
            if all(name in removed for name in outgoing):
                removed |= {e.name for e in g.edges if e.dst == dst}
                continue
        for e in reversed([e for e in g.edges if e.dst == dst]):
            trial = removed | {e.name}
            new = kl_at_last(model, full, at(patched_logits(model, g, clean, corrupt, trial, ablation)))
            deltas[e.name] = new - current
            if new - current < threshold:
                removed = trial
                current = new
    kept = {e.name for e in g.edges} - removed
    return kept, deltas


@pytest.mark.parametrize(
    "ablation, scored, speculate",
    [("resample", "last", 1), ("mean", "last", 1), ("zero", "last", 1), ("resample", "several", 1),
     ("resample", "last", 4), ("zero", "last", 16), ("resample", "several", 3)],
)
def test_acdc_equals_plain_sequential(ablation, scored, speculate):
    model = tiny_gpt2(n_layer=2, n_head=2, d=16, seed=3)
    clean, corrupt = random_tokens(batch=5, pos=5)
    positions = torch.tensor([[2, 4]] * 3 + [[0, 3]] * 2) if scored == "several" else None
    chosen = None
    for threshold in (0.01, 0.02, 0.005, 0.04):
        kept, deltas = plain_acdc(model, clean, corrupt, threshold, ablation, positions)
        margin = min(abs(d - threshold) for d in deltas.values())
        if margin > 1e-4 and 0 < len(kept) < Graph.from_model(model).n_edges:
            chosen = threshold
            break
    assert chosen is not None, "no threshold gives a clear, non-trivial decision"
    c = acdc.discover(
        model, clean, corrupt, threshold=chosen, ablation=ablation, answer_pos=positions, progress=False,
        speculate=speculate,
    )
    assert set(c.edges) == kept
    tested = {e.name: c.edge_score(e.name) for e in c.graph.edges if not math.isnan(c.edge_score(e.name))}
    assert tested.keys() == deltas.keys()
    for name, d in deltas.items():
        assert tested[name] == pytest.approx(d, abs=1e-5), name
    assert len(c.metric_trace) == len(deltas)


def test_threshold_extremes(gpt2_model):
    clean, corrupt = random_tokens()
    g = Graph.from_model(gpt2_model)
    big = acdc.discover(gpt2_model, clean, corrupt, threshold=1e9, progress=False)
    assert big.n_edges == 0
    # KL of the full model is 0 and removing an edge cannot lower it below 0: all kept
    zero = acdc.discover(gpt2_model, clean, corrupt, threshold=0.0, progress=False)
    assert zero.n_edges == g.n_edges


def test_logit_diff_and_custom_metrics(gpt2_model):
    clean, corrupt = random_tokens()
    answers = (torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8]))
    c = acdc.discover(gpt2_model, clean, corrupt, threshold=0.05, metric="logit_diff", answers=answers, progress=False)
    assert c.settings["metric"] == "logit_diff"
    assert 0 < c.n_edges < c.graph.n_edges

    def neg_top_logit(logits, batch):
        return -logits.max(-1).values.mean()

    c2 = acdc.discover(gpt2_model, clean, corrupt, threshold=0.05, metric=neg_top_logit, progress=False)
    assert c2.settings["metric"] == "neg_top_logit"
    c3 = acdc.discover(gpt2_model, clean, corrupt, threshold=0.05, abs_value=True, progress=False)
    assert c3.settings["abs_value"] is True


def test_neox_acdc_runs():
    model = tiny_neox()
    clean, corrupt = random_tokens()
    c = acdc.discover(model, clean, corrupt, threshold=0.02, progress=False)
    assert c.graph.parallel_attn_mlp
    assert 0 < c.n_edges < c.graph.n_edges


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(threshold=float("nan")), "threshold must be a number >= 0"),
        (dict(threshold=-0.1), "threshold must be a number >= 0"),
        (dict(threshold=0.1, metric="kld"), "unknown metric 'kld'"),
        (dict(threshold=0.1, ablation="mode"), "unknown ablation 'mode'"),
        (dict(threshold=0.1, metric="logit_diff"), "needs answers"),
        (dict(threshold=0.1, metric="logit_diff", answers=([1, 2], [3, 4])), "one per prompt"),
    ],
)
def test_discover_errors(gpt2_model, kwargs, match):
    clean, corrupt = random_tokens()
    with pytest.raises(ValueError, match=match):
        acdc.discover(gpt2_model, clean, corrupt, progress=False, **kwargs)


def test_json_roundtrip_exact(tmp_path, gpt2_model):
    clean, corrupt = random_tokens()
    c = acdc.discover(gpt2_model, clean, corrupt, threshold=0.03, progress=False)
    path = c.to_json(tmp_path / "c.json")
    back = Circuit.from_json(path)
    assert back == c
    assert back.edges == c.edges
    assert torch.equal(back.scores.isnan(), c.scores.isnan())
    d = json.loads(path.read_text())
    assert set(d) >= {"cfg", "nodes", "edges"}
    assert d["cfg"]["n_layers"] == 3 and d["cfg"]["n_heads"] == 4
    some = next(iter(d["edges"].values()))
    assert set(some) == {"score", "in_graph"}
    assert b"pickle" not in path.read_bytes()


def test_loads_eap_ig_style_json(tmp_path):
    """A file as EAP-IG writes it (no acdc extras, no split_qkv key) loads."""
    g = Graph(1, 1)
    d = {
        "cfg": {"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": False, "d_model": 8},
        "nodes": {n.name: True for n in g.nodes},
        "edges": {e.name: {"score": 0.5, "in_graph": e.name.endswith("logits")} for e in g.edges},
    }
    (tmp_path / "g.json").write_text(json.dumps(d))
    c = Circuit.from_json(tmp_path / "g.json")
    assert c.edges == ["input->logits", "a0.h0->logits", "m0->logits"]
    assert c.edge_score("input->m0") == 0.5
    with pytest.raises(ValueError, match="not a circuit JSON"):
        Circuit.from_dict({"edges": {}})


def test_circuit_views(gpt2_model):
    clean, corrupt = random_tokens()
    c = acdc.discover(gpt2_model, clean, corrupt, threshold=0.05, progress=False)
    nxg = c.to_networkx()
    assert nxg.number_of_edges() == c.n_edges
    assert set(nxg.nodes) == set(c.nodes)
    assert "Circuit(" in c.summary() and str(c.n_edges) in repr(c)


def test_callback_sees_every_test_and_can_stop(gpt2_model):
    clean, corrupt = random_tokens()
    seen = []
    c = acdc.discover(gpt2_model, clean, corrupt, threshold=0.02, progress=False)
    from acdc.algorithms.acdc import run_acdc
    from acdc.api import make_batch
    from acdc.metrics import resolve_metric

    p = acdc.Patcher(gpt2_model, clean, corrupt)
    full = run_acdc(p, resolve_metric("kl"), make_batch(p), threshold=0.02,
                    callback=lambda e, d, r: seen.append((e, d, r)) and False).selection()
    assert full.edges == c.edges and len(seen) == full.settings["n_tested"]
    assert all(full.edge_score(full.graph.edges[e].name) == d for e, d, _ in seen)
    early = run_acdc(p, resolve_metric("kl"), make_batch(p), threshold=0.02, callback=lambda e, d, r: True)
    assert early.settings["stopped_early"] and early.settings["n_tested"] == 1


def test_speculation_matches_one_at_a_time_on_a_plant():
    entry = acdc.zoo.load("ioi")
    one = acdc.discover(entry.model, entry.task, threshold=1e-3, progress=False, speculate=1)
    many = acdc.discover(entry.model, entry.task, threshold=1e-3, progress=False, speculate=8)
    assert one.edges == many.edges and len(one.metric_trace) == len(many.metric_trace)
    tested = ~one.scores.isnan()
    assert torch.equal(tested, ~many.scores.isnan())
    assert torch.allclose(one.scores[tested], many.scores[tested], atol=1e-5)
    with pytest.raises(ValueError, match="speculate"):
        acdc.discover(entry.model, entry.task, threshold=1e-3, progress=False, speculate=0)


def test_prefilter_is_marked_approximate_and_skips_untested():
    entry = acdc.zoo.load("ioi")
    exact = acdc.discover(entry.model, entry.task, threshold=0.1, progress=False)
    assert "approximate" not in exact.settings
    full = acdc.discover(entry.model, entry.task, threshold=0.1, progress=False, prefilter=1.0)
    assert full.edges == exact.edges and full.settings["approximate"] == "prefilter"
    approx = acdc.discover(entry.model, entry.task, threshold=0.1, progress=False, prefilter=0.2)
    n_tested = int((~approx.scores.isnan()).sum())
    assert n_tested <= math.ceil(0.2 * approx.graph.n_edges)
    assert set(approx.edges) <= {e.name for i, e in enumerate(approx.graph.edges) if not math.isnan(approx.scores[i])}
    with pytest.raises(ValueError, match="prefilter must be a fraction"):
        acdc.discover(entry.model, entry.task, threshold=0.1, progress=False, prefilter=0.0)
