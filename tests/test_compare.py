"""acdc.compare: methods x tasks x seeds, each row checked against the methods run one at a time
and its faithfulness against the slow path (`acdc.faithfulness`, its own patched runs)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import acdc
from acdc import Method, zoo


@pytest.fixture(scope="module")
def entry():
    return zoo.load("ioi")


def pair(seed: int) -> tuple[acdc.Task, acdc.Task]:
    """The zoo IOI task's prompts for a seed, and other prompts of the same model as held-out ones."""
    return zoo.load("ioi", seed=seed).task, zoo.load("ioi", seed=seed + 100).task


@pytest.fixture(scope="module")
def table(entry):
    methods = ["eap", Method("eap-ig-inputs", {"steps": 3}), Method("acdc", {"threshold": 0.05}, label="acdc")]
    return acdc.compare(entry.model, {"ioi": pair}, methods=methods, seeds=[0, 1], edges=12, curves=True, progress=False)


def test_rows_come_task_by_seed_by_method(table):
    assert [(r["task"], r["seed"], r["method"]) for r in table.rows] == [
        ("ioi", 0, "eap"), ("ioi", 0, "eap-ig-inputs steps=3"), ("ioi", 0, "acdc"),
        ("ioi", 1, "eap"), ("ioi", 1, "eap-ig-inputs steps=3"), ("ioi", 1, "acdc")]


@pytest.mark.parametrize("seed", [0, 1])
def test_each_row_is_the_method_run_alone(entry, table, seed):
    task, held = pair(seed)
    eap = acdc.attribute(entry.model, task, method="eap", progress=False).top(12)
    ig = acdc.attribute(entry.model, task, method="eap-ig-inputs", steps=3, progress=False).top(12)
    found = acdc.discover(entry.model, task, threshold=0.05, progress=False)
    for method, alone in (("eap", eap), ("eap-ig-inputs steps=3", ig), ("acdc", found)):
        c = table.circuit("ioi", method, seed)
        assert torch.equal(c.in_graph, alone.in_graph), method
        kept = c.in_graph
        assert torch.equal(c.scores[kept], alone.scores[kept].to(c.scores.dtype)) and c.scores[~kept].isnan().all()
        row = next(r for r in table.rows if (r["method"], r["seed"]) == (method, seed))
        assert row["edges"] == int(kept.sum())
        # the slow path: acdc.faithfulness's own three patched runs, on each prompt set
        for got, t in ((row["faithfulness"], task), (row["held_out"], held)):
            assert got == pytest.approx(acdc.faithfulness(entry.model, t, alone, progress=False).normalized, abs=1e-9)
    assert table.circuit("ioi", "acdc", seed).in_graph.sum() == 9 == entry.truth.n_edges  # the planted circuit


def test_curves_are_mib_areas_on_held_out_prompts(entry, table):
    _, held = pair(0)
    scores = acdc.attribute(entry.model, pair(0)[0], method="eap", progress=False)
    curve = acdc.faithfulness_curve(entry.model, held, scores, progress=False)
    row = table.rows[0]
    assert row["cpr"] == pytest.approx(curve.cpr, abs=1e-9) and row["cmd"] == pytest.approx(curve.cmd, abs=1e-9)
    assert table.rows[2]["cpr"] is None  # ACDC tests only some edges: no curve


def test_summary_is_mean_and_sd_over_seeds(table):
    rows = {r["method"]: r for r in table.summary()}
    a, b = (r["held_out"] for r in table.rows if r["method"] == "eap")
    assert rows["eap"]["held_out"] == pytest.approx((a + b) / 2)
    assert rows["eap"]["held_out_sd"] == pytest.approx(abs(a - b) / math.sqrt(2))
    assert rows["acdc"]["cpr"] is None and rows["acdc"]["seeds"] == 2
    md = table.to_markdown()
    assert md.count("\n") == 4 and f"| ioi | eap | 2 | 12 ± 0 | {rows['eap']['faithfulness']:.3f} ± " in md
    assert json.loads(json.dumps(table.to_dict()))["rows"][0]["method"] == "eap"


def test_edges_as_a_fraction_and_one_task_for_every_seed(entry):
    g = acdc.Graph.from_model(entry.model)
    t = acdc.compare(entry.model, {"ioi": entry.task}, methods=["eap"], seeds=[0, 3], edges=0.05, progress=False)
    assert [r["edges"] for r in t.rows] == [math.ceil(0.05 * g.n_edges)] * 2
    assert [r["held_out"] for r in t.rows] == [None, None]
    assert torch.equal(t.circuits[0].in_graph, t.circuits[1].in_graph)  # same prompts, a seedless method


def test_a_seeded_method_gets_the_rows_seed(entry):
    t = acdc.compare(entry.model, {"ioi": entry.task}, methods=[Method("edge-pruning", {"steps": 20}, label="ep")],
                     seeds=[0, 1], progress=False)
    for seed, c in zip([0, 1], t.circuits, strict=True):
        alone = acdc.prune_edges(entry.model, entry.task, steps=20, seed=seed, progress=False)
        assert torch.equal(c.in_graph, alone.in_graph)
    assert not torch.equal(t.circuits[0].scores.nan_to_num(), t.circuits[1].scores.nan_to_num())


def test_a_restarted_comparison_reads_finished_rows(entry, tmp_path):
    kw = {"methods": ["eap"], "seeds": [0, 1], "edges": 5, "progress": False, "results": tmp_path}
    first = acdc.compare(entry.model, {"ioi": pair}, **kw)
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 2
    saved = json.loads(files[0].read_text())
    saved["result"]["row"]["faithfulness"] = 123.0  # a finished row is read back, not recomputed
    files[0].write_text(json.dumps(saved))
    again = acdc.compare(entry.model, {"ioi": pair}, **kw)
    assert sorted(r["faithfulness"] for r in again.rows)[-1] == 123.0
    assert [r["edges"] for r in again.rows] == [r["edges"] for r in first.rows]
    with pytest.raises(ValueError, match="another sweep"):  # other prompts: refused
        acdc.compare(entry.model, {"ioi": lambda s: pair(s + 5)}, **kw)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"methods": ["nope"]}, "unknown method 'nope'"),
    ({"methods": ["eap", "eap"]}, "distinct labels"),
    ({"methods": ["acdc"]}, "acdc: options {} do not fit .*threshold"),
    ({"methods": [("acdc", {"threshold": 0.1, "thr": 1})]}, "unexpected keyword argument 'thr'"),
    ({"methods": [("eap", {"steps": 3})]}, "eap: options .* its options are gim$"),
    ({"methods": [("eap-ig-inputs", {"step": 3})]}, "its options are steps, grid"),
    ({"methods": [("eap", {"progress": True})]}, "sets progress itself"),
    ({"edges": 0}, "edges must be"),
    ({"edges": 1.5}, "edges must be"),
    ({"seeds": []}, "seeds must be"),
    ({"executor": "threads"}, "executor must be"),
])
def test_bad_arguments_say_what_to_pass(entry, kwargs, match):
    """Methods given as (name, options) are made `Method`s inside the check: their options are refused there."""
    with pytest.raises(ValueError, match=match):
        if "methods" in kwargs:
            kwargs = {**kwargs, "methods": [Method(*m) if isinstance(m, tuple) else m for m in kwargs["methods"]]}
        acdc.compare(entry.model, {"ioi": entry.task}, progress=False, **kwargs)


def test_cli_compare_writes_the_table(tmp_path):
    from acdc.cli import main

    out = tmp_path / "out"
    assert main(["compare", "--model", "zoo:ioi", "--methods", "eap", "acdc:threshold=0.05", "--seeds", "0", "1",
                 "--edges", "9", "-o", str(out), "--no-progress", "--results", str(tmp_path / "items")]) == 0
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [(r["seed"], r["method"], r["edges"]) for r in rows] == [(0, "eap", 9), (0, "acdc:threshold=0.05", 9),
                                                                    (1, "eap", 9), (1, "acdc:threshold=0.05", 9)]
    assert all(r["held_out"] is not None for r in rows) and rows[1]["faithfulness"] == pytest.approx(1.0, abs=0.01)
    assert (out / "comparison.md").read_text().count("| ioi |") == 2 and len(list((tmp_path / "items").glob("*.json"))) == 4
    assert main(["compare", "--model", "zoo:ioi", "--methods", "acdc:thresh", "-o", str(out)]) == 1
    assert main(["compare", "--model", "zoo:ioi", "--tasks", "ioi", "-o", str(out)]) == 1


def test_cli_compare_runs_the_protocol(entry, tmp_path):
    """--protocol: three prompt sets (zoo: three seeds), KEY=A|B candidates and several --edges chosen on validation,
    --grid on test; the rows are acdc.compare's on the same sets; the Markdown table keeps its columns."""
    from acdc.cli import main
    from acdc.cli.common import zoo_sets

    out = tmp_path / "p"
    assert main(["compare", "--model", "zoo:ioi", "--methods", "acdc:threshold=0.01|0.5", "--edges", "3", "40",
                 "--protocol", "--grid", "-o", str(out), "--no-progress"]) == 0
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    want = acdc.compare(entry.model, {"ioi": lambda s: zoo_sets("ioi", None, s)}, edges=[3, 40], grid=True, progress=False,
                        methods=[Method("acdc", label="acdc:threshold=0.01|0.5", choose={"threshold": [0.01, 0.5]})])
    for got, r in zip(rows, want.rows, strict=True):
        assert (got["chosen"], got["edges"], got["verdict"]) == (r["chosen"], r["edges"], r["verdict"])
        assert got["test"] == pytest.approx(r["test"], abs=1e-12)
    assert rows[0]["chosen"] == "threshold=0.01" and rows[0]["verdict"].startswith("holds under all 11")
    md = (out / "comparison.md").read_text().splitlines()
    assert len({line.replace("\\|", "").count("|") for line in md[:3]}) == 1  # every cell's pipes escaped
    for bad in (["--edges", "3", "40"], ["--grid"], ["--methods", "acdc:threshold=0.01|0.5"]):
        assert main(["compare", "--model", "zoo:ioi", *bad, "-o", str(out)]) == 1


def test_a_bad_task_source_is_named(entry):
    with pytest.raises(ValueError, match="task 'x' must be a Task"):
        acdc.compare(entry.model, {"x": lambda s: "prompts"}, progress=False)  # type: ignore[dict-item]


# ---------------------------------------------------------------- the protocol: choose on validation, report on test
def three(seed: int) -> tuple[acdc.Task, acdc.Task, acdc.Task]:
    """Discovery, validation and test prompts of the zoo IOI model (other draws of its prompts)."""
    return tuple(zoo.load("ioi", seed=seed + k).task for k in (0, 100, 200))  # type: ignore[return-value]


THRESHOLDS = [0.01, 0.05, 0.5]
SIZES = [3, 9, 40]


@pytest.fixture(scope="module")
def protocol(entry):
    methods = [Method("eap"), Method("acdc", choose={"threshold": THRESHOLDS}, label="acdc")]
    return acdc.compare(entry.model, {"ioi": three}, methods=methods, seeds=[0, 1], edges=SIZES, grid=True,
                        progress=False)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_protocol_chooses_on_validation_and_reports_test_once(entry, protocol, seed):
    """Each row's circuit is the candidate nearest 1 on validation prompts (checked by running every candidate alone
    and scoring it with acdc.faithfulness); its test value and interval are acdc.faithfulness's on the test prompts."""
    disc, val, test = three(seed)
    eap = acdc.attribute(entry.model, disc, method="eap", progress=False)
    candidates = {
        "eap": [({"edges": k}, eap.top(k)) for k in SIZES],
        "acdc": [({"threshold": t}, acdc.discover(entry.model, disc, threshold=t, progress=False)) for t in THRESHOLDS],
    }
    for method, cands in candidates.items():
        on_val = [acdc.faithfulness(entry.model, val, c, progress=False).normalized for _, c in cands]
        far = [abs(1 - f) for f in on_val]
        best = min(range(len(cands)), key=lambda i: (far[i], cands[i][1].n_edges))
        row = next(r for r in protocol.rows if (r["method"], r["seed"]) == (method, seed))
        chosen = cands[best][1]
        assert torch.equal(protocol.circuit("ioi", method, seed).in_graph, chosen.in_graph), (method, far)
        assert row["chosen"] == ", ".join(f"{k}={v}" for k, v in cands[best][0].items()) and row["candidates"] == 3
        assert row["validation"] == pytest.approx(on_val[best], abs=1e-9)
        slow = acdc.faithfulness(entry.model, test, chosen, progress=False)
        assert row["test"] == pytest.approx(slow.normalized, abs=1e-9)
        assert (row["test_low"], row["test_high"]) == pytest.approx(slow.interval("normalized"), abs=1e-9)
        assert row["test_distance"] == pytest.approx(abs(1 - slow.normalized), abs=1e-12)
        assert row["held_out"] is None  # validation is not reported as held-out faithfulness
        assert row["verdict"] == acdc.faithfulness_grid(entry.model, test, chosen, progress=False).verdict(0.2)
        assert len(row["grid"]) == 11  # the default grid's 10 settings and mean ablation aligned by role


def test_the_protocol_summary_has_an_interval_over_seeds(protocol):
    from acdc.comparison import bootstrap_mean

    for s in protocol.summary():
        tests = [r["test"] for r in protocol.rows if r["method"] == s["method"]]
        assert (s["test_seeds_low"], s["test_seeds_high"]) == pytest.approx(bootstrap_mean(tests))
        assert s["test_seeds_low"] <= s["test"] <= s["test_seeds_high"]
    md = protocol.to_markdown()
    assert "chosen on validation" in md and "95% interval over seeds" in md


def test_bootstrap_mean_by_hand():
    """Two values 0 and 2: a resampled mean is 0, 1 or 2 with chances 1/4, 1/2, 1/4, so the 95% interval is 0..2; one
    value repeated has no spread."""
    from acdc.comparison import bootstrap_mean

    assert bootstrap_mean([0.0, 2.0], resamples=4000) == (0.0, 2.0)
    assert bootstrap_mean([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7))
    lo, hi = bootstrap_mean([0.0, 2.0], level=0.4, resamples=4000)  # the middle 40% is all mean 1
    assert (lo, hi) == (1.0, 1.0)


def test_choosing_needs_validation_prompts(entry):
    with pytest.raises(ValueError, match="validation, test"):
        acdc.compare(entry.model, {"ioi": pair}, methods=["eap"], edges=[3, 9], progress=False)
    with pytest.raises(ValueError, match="validation, test"):
        acdc.compare(entry.model, {"ioi": pair}, methods=[Method("acdc", choose={"threshold": [0.1, 0.2]})], progress=False)
    with pytest.raises(ValueError, match="validation, test"):
        acdc.compare(entry.model, {"ioi": pair}, methods=["eap"], grid=True, progress=False)
    with pytest.raises(ValueError, match="both fixed and chosen"):
        Method("acdc", {"threshold": 0.1}, choose={"threshold": [0.2]})
    with pytest.raises(ValueError, match="non-empty list"):
        Method("acdc", choose={"threshold": 0.2})  # type: ignore[dict-item]
