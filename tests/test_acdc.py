"""ACDC equals a plain sequential implementation; API validation; circuits as JSON."""

import json
import math

import pytest
import torch
from conftest import Killed, kill_after, random_tokens, tiny_gpt2, tiny_neox
from oracle import patched_logits

import acdc
from acdc import Circuit, Graph


def kl_at_last(logits_full_clean, patched):
    ref = logits_full_clean.log_softmax(-1)
    new = patched.log_softmax(-1)
    return float((ref.exp() * (ref - new)).sum(-1).mean())


def plain_acdc(model, clean, corrupt, threshold, ablation, positions=None, loss=kl_at_last, abs_value=False):
    """ACDC the obvious way: a full hooked forward per tested edge, dicts and loops.

    positions: [batch, P] scored positions (default: the last).
    loss(full_logits, patched_logits) -> float, lower is better (default: KL to the full model).
    """
    g = Graph.from_model(model)
    rows = torch.arange(clean.shape[0])[:, None]
    pos = torch.full((clean.shape[0], 1), clean.shape[1] - 1) if positions is None else positions

    def at(logits):
        return logits[rows, pos].flatten(0, 1)

    with torch.no_grad():
        full = at(model(clean))
    removed: set[str] = set()
    current = loss(full, at(patched_logits(model, g, clean, corrupt, removed, ablation)))
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
            new = loss(full, at(patched_logits(model, g, clean, corrupt, trial, ablation)))
            deltas[e.name] = new - current
            if (abs(new - current) if abs_value else new - current) < threshold:
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


ANSWERS = (torch.tensor([1, 2, 3, 4, 5]), torch.tensor([5, 6, 7, 8, 9]))


def minus_logit_diff(full, patched):
    rows = torch.arange(len(ANSWERS[0]))
    return -float((patched[rows, ANSWERS[0]] - patched[rows, ANSWERS[1]]).mean())


def minus_top_logit(full, patched):
    return -float(patched.max(-1).values.mean())


def _decisive(model, clean, corrupt, loss, abs_value, thresholds=(0.05, 0.1, 0.2, 0.02, 0.4)):
    """A threshold whose decisions are clear (no delta within 1e-4 of it) and non-trivial."""
    n = Graph.from_model(model).n_edges
    for t in thresholds:
        kept, deltas = plain_acdc(model, clean, corrupt, t, "resample", loss=loss, abs_value=abs_value)
        if min(abs(abs(d) - t) if abs_value else abs(d - t) for d in deltas.values()) > 1e-4 and 0 < len(kept) < n:
            return t, kept, deltas
    raise AssertionError("no threshold gives a clear, non-trivial decision")


@pytest.mark.parametrize("which", ["logit_diff", "custom", "logit_diff_abs"])
def test_logit_diff_custom_and_abs_value_equal_plain(which):
    """Metrics whose changes can be negative: the circuit equals the plain implementation's,
    and with abs_value the decisions use |delta| (a negative delta above the threshold is kept)."""
    model = tiny_gpt2(n_layer=2, n_head=2, d=16, seed=3)
    clean, corrupt = random_tokens(batch=5, pos=5)
    abs_value = which == "logit_diff_abs"
    loss = minus_top_logit if which == "custom" else minus_logit_diff
    t, kept, deltas = _decisive(model, clean, corrupt, loss, abs_value)
    if which == "custom":
        metric = acdc.Metric("neg_top_logit", lambda logits, batch: -logits.max(-1).values.mean())
        c = acdc.discover(model, clean, corrupt, threshold=t, metric=metric, progress=False)
    else:
        c = acdc.discover(model, clean, corrupt, threshold=t, metric="logit_diff", answers=ANSWERS,
                          abs_value=abs_value, progress=False)
    assert set(c.edges) == kept and c.settings["abs_value"] is abs_value
    for name, d in deltas.items():
        assert c.edge_score(name) == pytest.approx(d, abs=1e-5), name
    if abs_value:  # the rule matters here: some edge is kept only because |delta| counts
        assert any(d <= -t for d in deltas.values())
        plain_signed, _ = plain_acdc(model, clean, corrupt, t, "resample", loss=loss, abs_value=False)
        assert plain_signed != kept
    if which != "custom":  # the trace and final metric are logit differences, not their negatives
        assert c.settings["final_metric"] == pytest.approx(c.metric_trace[-1])
        assert c.metric_trace[-1] == pytest.approx(-minus_logit_diff(None, _kept_logits(model, clean, corrupt, c)), abs=1e-4)


def _kept_logits(model, clean, corrupt, c):
    removed = {e.name for e in c.graph.edges} - set(c.edges)
    return patched_logits(model, c.graph, clean, corrupt, removed, "resample")[:, -1]


def test_neox_acdc_equals_plain():
    model = tiny_neox(n_layer=2, n_head=2, d=16, seed=2)
    clean, corrupt = random_tokens(batch=5, pos=5)
    t, kept, deltas = _decisive(model, clean, corrupt, kl_at_last, False, thresholds=(0.01, 0.02, 0.005, 0.04))
    c = acdc.discover(model, clean, corrupt, threshold=t, progress=False)
    assert c.graph.parallel_attn_mlp and set(c.edges) == kept
    for name, d in deltas.items():
        assert c.edge_score(name) == pytest.approx(d, abs=1e-5), name


def test_removal_rule_is_strict_at_ties():
    """Removed only when the change is strictly below the threshold: at threshold 0 an edge whose
    removal changes nothing at all (delta exactly 0) stays (the zoo's IOI model has such edges)."""
    entry = acdc.zoo.load("ioi")
    c = acdc.discover(entry.model, entry.task, threshold=0.0, progress=False)
    zero = (c.scores == 0).nonzero().squeeze(1)
    assert len(zero) > 0 and bool(c.in_graph[zero].all())
    # The same run with the smallest positive threshold removes exactly those ties: fewer edges stay.
    # (The count itself depends on the CPU's float rounding: 120 on one machine, 125 on another.)
    tiny = acdc.discover(entry.model, entry.task, threshold=5e-324, progress=False)
    tied = (tiny.scores == 0).nonzero().squeeze(1)
    assert len(tied) > 0 and not bool(tiny.in_graph[tied].any())
    assert tiny.n_edges < c.n_edges


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


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    """A run killed midway and called again with the same arguments ends with the uninterrupted circuit."""
    entry = acdc.zoo.load("ioi")
    kw = dict(threshold=1e-3, progress=False)
    full = acdc.discover(entry.model, entry.task, **kw)
    path = tmp_path / "ck.json"
    from acdc.algorithms.acdc import run_acdc
    from acdc.api import prepare

    patcher, metric, batch = prepare(entry.model, entry.task)
    with pytest.raises(Killed):
        run_acdc(patcher, metric, batch, threshold=1e-3, checkpoint=path, checkpoint_every=0, callback=kill_after(40))
    saved = json.loads(path.read_text())
    assert not saved["done"] and 30 <= saved["n_tested"] < 40  # progress up to the last finished block
    resumed = acdc.discover(entry.model, entry.task, checkpoint=path, checkpoint_every=0, **kw)
    assert resumed.edges == full.edges and resumed.settings["n_tested"] == full.settings["n_tested"]
    assert torch.equal(resumed.scores.isnan(), full.scores.isnan())
    assert torch.allclose(resumed.scores.nan_to_num(), full.scores.nan_to_num(), atol=1e-5)
    assert resumed.metric_trace == pytest.approx(full.metric_trace, abs=1e-5)
    assert json.loads(path.read_text())["done"]
    # a finished checkpoint returns the result again; other arguments are refused
    assert acdc.discover(entry.model, entry.task, checkpoint=path, **kw).edges == full.edges
    with pytest.raises(ValueError, match="made with other arguments"):
        acdc.discover(entry.model, entry.task, checkpoint=path, threshold=2e-3, progress=False)


def test_prefilter_scores_reuse_equals_recomputing():
    entry = acdc.zoo.load("ioi")
    kw = dict(threshold=0.1, progress=False, prefilter=0.2)
    fresh = acdc.discover(entry.model, entry.task, **kw)
    scores = acdc.attribute(entry.model, entry.task, method="eap-ig-inputs", steps=5)
    reused = acdc.discover(entry.model, entry.task, prefilter_scores=scores, **kw)
    assert reused.edges == fresh.edges and reused.settings["n_tested"] == fresh.settings["n_tested"]


def test_a_metric_of_answer_logits_reads_only_their_columns():
    """`Metric.narrow`: the answers' columns, the answers renumbered into them; the metric on those
    columns equals the metric on the whole vocabulary (several answers, -1 pads, repeated ids)."""
    from acdc.metrics import METRICS, Batch

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 40, generator=gen)
    correct = torch.tensor([[3, -1], [7, 9], [3, 3], [39, -1], [0, 5], [12, -1]])
    incorrect = torch.tensor([5, 11, 0, 2, 12, 7])
    b = Batch(torch.zeros(6, 4, dtype=torch.long), torch.zeros(6, 4, dtype=torch.long), torch.full((6, 1), 3),
              correct, incorrect, torch.randn(6, 40, generator=gen))
    for name in ("logit_diff", "accuracy"):
        cols, nb = METRICS[name].narrow(b)
        assert cols is not None and cols.tolist() == [0, 2, 3, 5, 7, 9, 11, 12, 39]
        assert METRICS[name](logits[:, cols], nb) == pytest.approx(METRICS[name](logits, b), abs=1e-6)
    assert nb.correct[0].tolist() == [2, -1] and torch.equal(nb.clean_logits, b.clean_logits[:, cols])
    for name in ("kl", "prob_diff"):  # normalised over the vocabulary: every column
        assert METRICS[name].narrow(b) == (None, b)


def _full_vocab_logit_diff():
    """logit_diff declared as reading every column: ACDC's path before narrowing."""
    from acdc.metrics import logit_diff

    return acdc.Metric("logit_diff", logit_diff, higher_is_better=True, needs_answers=True)


@pytest.mark.parametrize("case", ["zoo-ioi", "tiny-gpt2", "positional", "features"])
def test_acdc_on_answer_columns_decides_as_on_the_whole_vocabulary(case):
    """Unembedding only the answers' columns is a speed-up, not a change: the same circuit and the
    same deltas as with every column (plain graphs: incremental state; positions, features: reruns)."""
    kw: dict = {"progress": False}
    if case == "zoo-ioi":
        e = acdc.zoo.load("ioi")
        model, args, kw["threshold"] = e.model, (e.task,), 0.05
    elif case == "features":
        e = acdc.zoo.load("feature-chain")
        model, args = e.model, (e.task,)
        kw.update(threshold=0.05, graph=e.graph, transcoders=e.transcoders)
    else:
        model = tiny_gpt2(n_layer=3, n_head=2, d=16, seed=4)
        clean, corrupt = random_tokens(batch=5, pos=6)
        args = (clean, corrupt)
        kw.update(threshold=0.02, answers=(torch.tensor([1, 2, 3, 4, 5]), torch.tensor([6, 7, 8, 9, 10])))
        if case == "positional":
            kw["positions"] = "tokens"
    fast = acdc.discover(model, *args, metric="logit_diff", **kw)
    full = acdc.discover(model, *args, metric=_full_vocab_logit_diff(), **kw)
    assert fast.edges == full.edges and 0 < fast.n_edges < fast.graph.n_edges
    tested = ~full.scores.isnan()
    assert torch.equal(tested, ~fast.scores.isnan())
    assert torch.allclose(fast.scores[tested], full.scores[tested], atol=1e-5, rtol=1e-5)


def test_a_long_run_says_how_to_shorten_it_and_checkpoints(tmp_path):
    """Past the long-run estimate, one LongRunWarning with what shortens the run; with checkpoint_if_long it starts
    checkpointing there, and the same call again resumes from the file. Below the estimate, nothing."""
    import warnings

    from acdc.algorithms.acdc import LongRunWarning, run_acdc
    from acdc.api import prepare

    e = acdc.zoo.load("ioi")
    p, m, b = prepare(e.model, e.task, ablation=e.ablation)
    path = tmp_path / "run.checkpoint.json"
    with pytest.warns(LongRunWarning, match=r"^ACDC will take about 0 min more \([\d,]+ edges left to visit\); to shorten it: "
                      r"prefilter=0\.01 .*; checkpointing to .*run\.checkpoint\.json: run the same call again to resume$") as got:
        first = run_acdc(p, m, b, threshold=0.05, checkpoint_if_long=path, long_run_seconds=0.0)
    assert len([w for w in got if issubclass(w.category, LongRunWarning)]) == 1  # said once
    saved = json.loads(path.read_text())
    assert saved["done"] is True and saved["n_tested"] == int((~first.values.isnan()).sum())
    with warnings.catch_warnings():
        warnings.simplefilter("error", LongRunWarning)
        again = run_acdc(p, m, b, threshold=0.05, checkpoint_if_long=path, long_run_seconds=0.0)  # resumes the file
        assert torch.equal(again.selected, first.selected)
        plain = run_acdc(p, m, b, threshold=0.05)  # estimated well under 10 minutes: no warning, no file
        assert torch.equal(plain.selected, first.selected)
    with pytest.warns(LongRunWarning, match="pass checkpoint=PATH"):
        run_acdc(p, m, b, threshold=0.05, long_run_seconds=0.0)


def test_faithful_within_keeps_the_circuit_near_one_at_every_step():
    """Issue 40's |1 - F|: at threshold 0.3 plain ACDC removes nearly everything (F = 0); with faithful_within it refuses
    each removal that would take |1 - F| past the bound, so the circuit ends within it (F measured independently)."""
    from conftest import random_answers, random_tokens, tiny_gpt2

    model = tiny_gpt2(n_layer=3, n_head=4)
    clean, corrupt = random_tokens()
    correct, incorrect = random_answers()
    task = acdc.Task.from_tokens(clean, corrupt, correct=correct, incorrect=incorrect, metric="logit_diff")
    plain = acdc.discover(model, task, threshold=0.3, progress=False)
    assert abs(1 - acdc.faithfulness(model, task, plain, progress=False).normalized) > 0.5
    for within in (0.2, 0.05):
        c = acdc.discover(model, task, threshold=0.3, faithful_within=within, progress=False)
        f = acdc.faithfulness(model, task, c, progress=False).normalized
        assert abs(1 - f) <= within and c.settings["faithful_within"] == within and c.n_edges > plain.n_edges, (within, f)
    swept = acdc.roc(model, task, truth=c, thresholds=[0.3], faithful_within=0.05, progress=False).circuits[0]
    assert swept.edges == c.edges and swept.settings["faithful_within"] == 0.05  # a ROC sweep passes it to every threshold
    with pytest.raises(ValueError, match="faithful_within must be a number >= 0"):
        acdc.discover(model, task, threshold=0.3, faithful_within=-0.1, progress=False)


def test_faithful_within_from_a_start_outside_the_bound_never_moves_away_from_one():
    """A prefilter's circuit can start outside the bound (its untested edges removed up front). Then a removal is
    refused only if it takes F further from 1: every step's |1 - F| (from ACDC's metric trace, F normalized by the
    full model's and the empty circuit's metric, measured independently) is at most max(bound, the step before's),
    and edges still go."""
    from conftest import random_answers, random_tokens, tiny_gpt2

    model = tiny_gpt2(n_layer=3, n_head=4)
    clean, corrupt = random_tokens()
    correct, incorrect = random_answers()
    task = acdc.Task.from_tokens(clean, corrupt, correct=correct, incorrect=incorrect, metric="logit_diff")
    g = acdc.Graph.from_model(model)
    empty = acdc.Circuit(g, torch.zeros(g.n_edges, dtype=torch.bool), torch.full((g.n_edges,), float("nan")))
    base = acdc.faithfulness(model, task, empty, progress=False)
    m_full, m_empty = base.model_metric, base.empty_metric

    def far(m: float) -> float:
        return abs(1 - (m - m_empty) / (m_full - m_empty))

    within = 0.02
    c = acdc.discover(model, task, threshold=0.3, prefilter=0.3, faithful_within=within, progress=False)
    trace = c.metric_trace
    assert far(trace[0]) > within  # the prefiltered start is outside the bound
    steps = [far(b) <= max(within, far(a)) + 1e-9 for a, b in zip(trace, trace[1:], strict=False)]
    assert all(steps) and far(trace[-1]) <= far(trace[0])
    tested = int((~torch.isnan(c.scores)).sum())
    assert c.n_edges < tested  # some tested edges went
    assert far(acdc.faithfulness(model, task, c, progress=False).circuit_metric) == pytest.approx(far(trace[-1]), abs=1e-5)
