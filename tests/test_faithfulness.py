"""Faithfulness: every axis equals the slow hooked computation; MIB's curve areas; the spread."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_tokens
from oracle import patched_logits

import acdc
from acdc import FaithfulnessCurve, Graph
from acdc.faithfulness_math import MIB_FRACTIONS, spread
from acdc.tasks import Task

CORRECT, INCORRECT = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])


@pytest.fixture(scope="module")
def setup(gpt2_model):
    clean, corrupt = random_tokens()
    task = Task.from_tokens(clean, corrupt, correct=CORRECT, incorrect=INCORRECT)
    g = Graph.from_model(gpt2_model)
    keep = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(3)) < 0.4
    circuit = acdc.Circuit(g, keep, torch.zeros(g.n_edges))
    return gpt2_model, task, g, circuit


def _ld(logits):  # per prompt logit difference at the last position
    last = logits[:, -1]
    rows = torch.arange(len(CORRECT))
    return (last[rows, CORRECT] - last[rows, INCORRECT]).double()


def _names(g, mask):
    return {e.name for e, m in zip(g.edges, mask.tolist()) if m}


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
@pytest.mark.parametrize("direction", ["clean-complement", "clean-circuit", "corrupt-circuit", "corrupt-complement"])
@pytest.mark.parametrize("level", ["edge", "node"])
def test_every_axis_equals_the_hooked_computation(setup, ablation, direction, level):
    model, task, g, circuit = setup
    f = acdc.faithfulness(model, task, circuit, level=level, direction=direction, ablation=ablation)
    keep = circuit.in_graph
    if level == "node":
        nodes = set(circuit.nodes) | {"input"}
        keep = torch.tensor([e.src.name in nodes for e in g.edges])
    inputs = (task.clean, task.corrupt) if direction.startswith("clean") else (task.corrupt, task.clean)
    ablated = {"clean-complement": ~keep, "clean-circuit": keep, "corrupt-circuit": keep, "corrupt-complement": ~keep}
    everything = torch.ones(g.n_edges, dtype=torch.bool)
    full, empty = (~everything, everything) if direction.startswith("clean") else (everything, ~everything)

    def oracle(mask):
        return _ld(patched_logits(model, g, *inputs, _names(g, mask), ablation))

    for got, mask in ((f.per_prompt_model, full), (f.per_prompt_circuit, ablated[direction]), (f.per_prompt_empty, empty)):
        assert torch.allclose(got, oracle(mask), atol=1e-4), (direction, level)
    assert f.circuit_metric == pytest.approx(float(oracle(ablated[direction]).mean()), abs=1e-4)
    if f.model_metric == 0:  # corrupt prompts with every edge "patched in" as zero: nothing left; ratios undefined
        assert ablation == "zero" and math.isnan(f.ratio)
    else:
        assert f.ratio == pytest.approx(f.circuit_metric / f.model_metric)
        assert f.normalized == pytest.approx((f.circuit_metric - f.empty_metric) / (f.model_metric - f.empty_metric))
    assert f.settings == {"level": level, "direction": direction, "average": "ratio-of-means", "ablation": ablation,
                          "metric": "logit_diff", "circuit_edges": int(keep.sum()),
                          **({"mean_over": "batch"} if ablation == "mean" else {})}


def test_metrics_and_averaging(setup):
    model, task, g, circuit = setup
    f = acdc.faithfulness(model, task, circuit, average="mean-of-ratios")
    assert f.ratio == pytest.approx(float((f.per_prompt_circuit / f.per_prompt_model).mean()))
    assert f.ratio != pytest.approx(f.ratio_of_means)
    acc = acdc.faithfulness(model, task, circuit, metric="accuracy")
    logits = patched_logits(model, g, task.clean, task.corrupt, _names(g, ~circuit.in_graph), "resample")
    assert acc.circuit_metric == pytest.approx(float((_ld(logits) > 0).double().mean()))
    assert set(acc.per_prompt_circuit.tolist()) <= {0.0, 1.0}
    kl = acdc.faithfulness(model, task, circuit, metric="kl")
    assert kl.model_metric == pytest.approx(0.0, abs=1e-6) and kl.empty_metric > kl.model_metric
    with pytest.raises(ValueError, match="unknown direction 'sideways'"):
        acdc.faithfulness(model, task, circuit, direction="sideways")


def test_mib_example_curve():
    values = [0.023, 0.239, 0.499, 0.803, 0.881, 0.920, 0.936, 0.967, 0.978, 1.0]
    curve = FaithfulnessCurve.from_values(MIB_FRACTIONS, values)
    assert round(curve.cpr, 3) == 0.968 and round(curve.cmd, 3) == 0.031
    assert 0 < curve.cpr_log < curve.cpr and curve.cmd_log > curve.cmd  # small circuits weigh more on a log axis


def test_cmd_counts_overshoot_as_distance_on_a_curve_that_crosses_1():
    """A curve above 1 in the middle (a circuit that drops parts working against the answer): CMD is the
    area under |1 - f|, so the overshoot adds distance, not credit. By hand (trapezoids over the fractions
    0.1, 0.2, 0.4 with values 0.5, 1.5, 1.0): |1 - f| = 0.5, 0.5, 0 -> 0.1 * 0.5 + 0.2 * 0.25 = 0.1 (the
    signed 1 - f would give -0.05, the absolute value of its area 0.05); CPR 0.1 * 1.0 + 0.2 * 1.25 = 0.35.
    On the log axis the two steps are equally wide (log10 2), so the areas are the mean heights: CMD (0.5 +
    0.25) / 2 = 0.375, CPR (1.0 + 1.25) / 2 = 1.125."""
    curve = FaithfulnessCurve.from_values([0.4, 0.1, 0.2], [1.0, 0.5, 1.5])  # given out of order: sorted by fraction
    assert curve.points == [(0.1, 0.5), (0.2, 1.5), (0.4, 1.0)]
    assert curve.cmd == pytest.approx(0.1, abs=1e-12) and curve.cpr == pytest.approx(0.35, abs=1e-12)
    assert curve.cmd_log == pytest.approx(0.375, abs=1e-12) and curve.cpr_log == pytest.approx(1.125, abs=1e-12)
    # a curve that stays at 1 has CMD 0; one mirrored below 1 (0.5, 0.5, 1.0) has the same CMD as the overshoot
    assert FaithfulnessCurve.from_values([0.1, 0.2, 0.4], [1.0, 1.0, 1.0]).cmd == 0.0
    assert FaithfulnessCurve.from_values([0.1, 0.2, 0.4], [0.5, 0.5, 1.0]).cmd == pytest.approx(curve.cmd, abs=1e-12)


def test_faithfulness_curve_runs_the_circuits(setup):
    model, task, g, _ = setup
    scores = acdc.attribute(model, task, method="eap")
    curve = acdc.faithfulness_curve(model, task, scores, fractions=[0.01, 0.1, 1.0])
    assert curve.n_edges == tuple(math.ceil(f * g.n_edges) for f in (0.01, 0.1, 1.0))
    assert curve.values[-1] == pytest.approx(1.0)  # every edge kept is the model
    top = scores.top(curve.n_edges[1])
    f = acdc.faithfulness(model, task, top)
    assert curve.values[1] == pytest.approx(f.normalized, abs=1e-6)


def test_spread_of_known_values():
    s = spread(torch.tensor([0.5, 0.9, 1.0, 1.1, 3.0]))
    assert (s.median, s.min, s.max, s.within_20pct) == (1.0, 0.5, 3.0, 0.6)
    assert s.q25 == pytest.approx(0.9) and s.q75 == pytest.approx(1.1) and s.iqr == pytest.approx(0.2)
    assert s.mean == pytest.approx(1.3) and s.ci95[0] <= 1.3 <= s.ci95[1]


@pytest.mark.parametrize("mean_over", ["template", 2])
def test_mean_over_a_reference_set(setup, mean_over):
    """Mean ablation over a prompt's own template, or over k drawn prompts, equals the hooked
    computation with that reference set's mean."""
    from dataclasses import replace

    model, task, g, circuit = setup
    task = replace(task, template=torch.tensor([0, 0, 1, 1]))
    f = acdc.faithfulness(model, task, circuit, ablation="mean", mean_over=mean_over, seed=1)
    assert f.settings["mean_over"] == mean_over
    if mean_over == "template":
        refs = [[0, 1], [0, 1], [2, 3], [2, 3]]
    else:
        pick = torch.randperm(4, generator=torch.Generator().manual_seed(1))[:2].tolist()
        refs = [pick] * 4
    ablated = _names(g, ~circuit.in_graph)
    for i, ref in enumerate(refs):
        logits = patched_logits(model, g, task.clean[i : i + 1], task.corrupt[ref], ablated, "mean")
        last = logits[0, -1]
        assert float(f.per_prompt_circuit[i]) == pytest.approx(float(last[CORRECT[i]] - last[INCORRECT[i]]), abs=1e-4)
    with pytest.raises(ValueError, match="needs ablation='mean'"):
        acdc.faithfulness(model, task, circuit, mean_over=2)


def test_uniform_weights_are_the_batch_mean(setup):
    model, task, g, circuit = setup
    plain = acdc.Patcher(model, task, ablation="mean")
    weighted = acdc.Patcher(model, task, ablation="mean", mean_weights=torch.full((4, 4), 0.25))
    mask = ~circuit.in_graph
    assert torch.allclose(plain.logits(mask), weighted.logits(mask), atol=1e-5)
    with pytest.raises(ValueError, match="rows sum to 1"):
        acdc.Patcher(model, task, ablation="mean", mean_weights=torch.ones(4, 4))


def test_grid_rows_equal_single_calls(setup, tmp_path):
    from dataclasses import replace

    model, task, g, circuit = setup
    task = replace(task, template=torch.tensor([0, 0, 1, 1]))
    grid = acdc.faithfulness_grid(model, task, circuit, reference_sizes=[1, 4])
    assert len(grid.rows) == 12
    for f, setting in zip(grid.rows, [*acdc.api.DEFAULT_GRID, {"ablation": "mean", "mean_over": 1},
                                      {"ablation": "mean", "mean_over": 4}]):
        single = acdc.faithfulness(model, task, circuit, **setting)
        assert torch.allclose(f.per_prompt_circuit, single.per_prompt_circuit, atol=1e-6), setting
        assert f.settings == single.settings
    # k = all prompts is the batch mean
    assert grid.rows[-1].circuit_metric == pytest.approx(grid.rows[1].circuit_metric, abs=1e-5)
    md = grid.to_markdown()
    assert md.count("\n") == 2 + 12 and "| node | mean |" in md
    assert grid.to_csv(tmp_path / "g.csv").read_text().count("\n") == 13
    assert grid.plot(tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    assert grid.label(grid.rows[0]) == "usual" and grid.label(grid.rows[4]) == "node, mean"


@pytest.fixture(scope="module")
def zoo_ioi():
    return acdc.zoo.load("ioi")


def _node_ld(entry, nodes):
    """Mean logit difference with every node outside ``nodes`` ablated, the slow hooked way."""
    g = Graph.from_model(entry.model)
    kept = set(nodes) | {"input"}
    ablated = {e.name for e in g.edges if e.src.name not in kept}
    logits = patched_logits(entry.model, g, entry.task.clean, entry.task.corrupt, ablated, "resample")
    t = entry.task
    last = logits[torch.arange(t.n_prompts), t.answer_pos]
    rows = torch.arange(t.n_prompts)
    return float((last[rows, t.correct] - last[rows, t.incorrect]).mean())


def test_completeness_sets_and_values(zoo_ioi, tmp_path):
    e = zoo_ioi
    c = acdc.completeness(e.model, e.task, e.truth, n_random=2, greedy_steps=1)
    labels = [r[0] for r in c.rows]
    assert labels[0] == "empty" and {f"class {k}" for k in e.truth.classes} <= set(labels)
    assert sum(lab.startswith("random half") for lab in labels) == 2
    circuit_nodes = list(e.truth.nodes)
    every = [n.name for n in Graph.from_model(e.model).sources if n.kind in ("head", "mlp")]
    for label, k, fc, fm in c.rows[:2]:
        assert fc == pytest.approx(_node_ld(e, [n for n in circuit_nodes if n not in k]), abs=1e-4), label
        assert fm == pytest.approx(_node_ld(e, [n for n in every if n not in k]), abs=1e-4), label
    # the greedy step picks the single node with the largest incompleteness
    singles = [abs(_node_ld(e, [n for n in circuit_nodes if n != v]) - _node_ld(e, [n for n in every if n != v]))
               for v in circuit_nodes]
    assert dict(c.incompleteness())["greedy 1"] == pytest.approx(max(singles), abs=1e-4)
    assert c.plot(tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_minimality_values(zoo_ioi, tmp_path):
    e = zoo_ioi
    nodes = list(e.truth.nodes)
    m = acdc.minimality(e.model, e.task, e.truth, k_sets={nodes[-1]: [nodes[0]]})
    assert [n for n, _ in m.scores] == nodes
    v = nodes[1]
    assert dict(m.scores)[v] == pytest.approx(abs(_node_ld(e, [n for n in nodes if n != v]) - _node_ld(e, nodes)), abs=1e-4)
    last, first = nodes[-1], nodes[0]
    expected = abs(_node_ld(e, [n for n in nodes if n not in (first, last)]) - _node_ld(e, [n for n in nodes if n != first]))
    assert dict(m.scores)[last] == pytest.approx(expected, abs=1e-4)
    assert m.plot(tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


def test_miller_checks_read_the_rows(setup, tmp_path):
    model, task, g, circuit = setup
    grid = acdc.faithfulness_grid(model, task, circuit, reference_sizes=[1, 2, 4])
    checks = grid.miller_checks()
    usual, mean = grid.rows[0].ratio, grid.rows[1].ratio
    assert checks["resample below mean ablation"][0] == (usual < mean)
    assert checks["mean of ratios above ratio of means"][0] == (grid.rows[8].ratio > usual)
    ks = [k for k, _ in grid.by_reference_size()]
    assert ks == [1, 2, 4] and "rises with the reference-set size" in checks
    assert grid.plot_reference_sizes(tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_the_bootstrap_interval_over_prompts_by_hand():
    """Two prompts: m(M) = (2, 4), m(C) = (1, 4), m({}) = (0, 0). A resample is (a, a), (a, b), (b, a) or (b, b), each
    with chance 1/4; normalized faithfulness is 1/2, (1 + 4) / (2 + 4) = 5/6 twice, and 1: the 95% interval is
    [1/2, 1] (the 2.5% and 97.5% quantiles fall inside the two quarter-masses at the ends). The prompts stay paired:
    resampling m(C) apart from m(M) could give (4 + 4) / (2 + 2) = 2. One prompt repeated: no spread at all."""
    from acdc.faithfulness_math import Faithfulness

    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    f = Faithfulness(3.0, 2.5, 0.0, t(2.0, 4.0), t(1.0, 4.0), t(0.0, 0.0))
    assert f.normalized == pytest.approx(5 / 6)
    assert f.interval() == (0.5, 1.0)
    assert f.interval("ratio_of_means") == (0.5, 1.0)
    assert f.interval(seed=1) == (0.5, 1.0) and f.to_dict()["normalized_ci95"] == [0.5, 1.0]
    same = Faithfulness(2.0, 1.0, 0.5, t(2.0, 2.0, 2.0), t(1.0, 1.0, 1.0), t(0.5, 0.5, 0.5))
    assert same.interval() == pytest.approx((1 / 3, 1 / 3))
    with pytest.raises(ValueError, match="level must lie in"):
        f.interval(level=1.0)
    assert "[95% over prompts 0.500, 1.000]" in repr(f)


def test_mean_ablation_aligned_by_role_equals_the_hooked_computation(setup):
    """mean_over="role": each token's ablation value is the corrupt run's mean over every prompt's tokens of the same
    named position (up to each prompt's scored token), not over the same absolute position; by hand in the hooked
    forward, per source and token. Prompts whose roles sit at different places make the two differ."""
    from dataclasses import replace

    from oracle import split_forward

    from acdc.positions import Positions

    model, task, g, circuit = setup
    ends = [5, 5, 4, 5]
    positions = Positions.named({"A": [1, 2, 1, 2], "B": [3, 4, 2, 4], "END": ends}, 4, 6)
    task = replace(task, positions=positions, answer_pos=torch.tensor(ends))
    f = acdc.faithfulness(model, task, circuit, ablation="mean", mean_over="role")
    corrupt_out = split_forward(model, g, task.corrupt)[1]
    role = positions.index
    live = torch.arange(6)[None, :] <= torch.tensor(ends)[:, None]
    abl = {}
    for src, out in corrupt_out.items():  # [B, S, d]: each token's mean over the live tokens of its role
        means = torch.stack([out[(role == r) & live].mean(0) for r in range(len(positions.names))])
        abl[src] = means[role]
    ablated = {e: torch.ones(task.clean.shape, dtype=torch.bool) for e in _names(g, ~circuit.in_graph)}
    logits = split_forward(model, g, task.clean, ablated=ablated, abl=abl)[0]
    rows = torch.arange(4)
    want = logits[rows, torch.tensor(ends)]
    want = (want[rows, CORRECT] - want[rows, INCORRECT]).double()
    assert torch.allclose(f.per_prompt_circuit.double(), want, atol=1e-4)
    by_index = acdc.faithfulness(model, task, circuit, ablation="mean")  # the batch mean at each absolute position
    assert not torch.allclose(by_index.per_prompt_circuit.double(), want, atol=1e-3)
    with pytest.raises(ValueError, match="mean_over='role' needs a task with named positions"):
        acdc.faithfulness(model, replace(task, positions=None), circuit, ablation="mean", mean_over="role")


def test_the_verdict_names_the_settings_a_circuit_fails_under(setup):
    """|1 - normalized| <= within holds or fails per setting (overshooting fails as falling short does), edges pinned
    by hand: 0.8 and 1.2 hold at 0.2, 0.79 and 1.21 do not, NaN does not; a task with named positions adds mean
    ablation aligned by role to the default grid."""
    from dataclasses import replace

    from acdc.faithfulness_math import FaithfulnessGrid
    from acdc.positions import Positions

    def row(normalized: float, **settings) -> acdc.Faithfulness:  # m(M) = 1, m({}) = 0: normalized = m(C)
        one = torch.ones(2)
        return acdc.Faithfulness(1.0, normalized, 0.0, one, one * normalized, one * 0, {"level": "edge", **settings})

    ok = FaithfulnessGrid((row(0.8), row(1.2, ablation="mean"), row(1.0, ablation="zero"),
                           row(0.2, direction="clean-circuit"), row(-0.2, direction="corrupt-complement"),
                           row(0.8, direction="corrupt-circuit")))
    assert ok.verdict(0.2) == ("holds under all 6 settings (|target - normalized| <= 0.2; target 1, 0 where the circuit "
                               "is removed)")
    bad = FaithfulnessGrid((row(1.0), row(0.79, ablation="mean"), row(1.21, ablation="zero"), row(float("nan"), level="node"),
                            row(0.21, direction="clean-circuit"), row(1.0, direction="corrupt-complement"),
                            row(0.79, direction="corrupt-circuit")))
    assert bad.verdict(0.2) == ("fails under 6 of 7 settings (|target - normalized| > 0.2): mean (0.790); zero (1.210); "
                                "node (nan); clean-circuit (0.210, target 0); corrupt-complement (1.000, target 0); "
                                "corrupt-circuit (0.790)")
    with pytest.raises(ValueError, match="within must lie in"):
        ok.verdict(1.5)
    model, task, g, circuit = setup
    named = replace(task, positions=Positions.named({"A": [1, 2, 1, 2], "END": [5, 5, 5, 5]}, 4, 6))
    grid = acdc.faithfulness_grid(model, named, circuit, progress=False)
    assert len(grid.rows) == len(acdc.api.DEFAULT_GRID) + 1 and grid.rows[-1].settings["mean_over"] == "role"
    assert len(acdc.faithfulness_grid(model, task, circuit, progress=False).rows) == len(acdc.api.DEFAULT_GRID)
