"""The ROC experiment scripts run end to end and write their table, JSON and plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

pytestmark = pytest.mark.slow


def test_roc_zoo_script(tmp_path):
    import roc_zoo

    roc_zoo.main(["--out", str(tmp_path), "--n-thresholds", "8"])
    data = json.loads((tmp_path / "roc_zoo.json").read_text())
    assert {r["name"] for r in data["rows"]} == {"induction", "ioi", "modular-sum", "feature-chain", "clt-chain"}
    assert all(r["edge_auc"] >= 0.99 and r["exact_thresholds"] for r in data["rows"])
    assert (tmp_path / "roc_zoo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| ioi |" in (tmp_path / "roc_zoo.md").read_text()


def test_approx_agreement_script(tmp_path):
    import approx_agreement

    approx_agreement.main(["--fractions", "0.4", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "approx_agreement.json").read_text())
    assert {r["model"] for r in rows} == {"induction", "ioi", "modular-sum"}
    # at 40% of edges tested, the prefilter keeps every planted circuit intact
    assert all(r["jaccard"] == 1.0 and r["tested_approx"] < r["tested_exact"] + 1 for r in rows)
    assert "| ioi |" in (tmp_path / "approx_agreement.md").read_text()


def test_bench_compares_scores():
    import bench

    agree = bench.compare_scores({"a": 1.0, "b": -2.0}, {"a": 1.0, "b": -2.0002, "c": 5.0})
    assert agree["edges_common"] == 2 and agree["max_abs_diff_over_max_score"] == pytest.approx(1e-4, rel=1e-3)


def test_bench_columns_table_gives_each_layers_speed_up():
    import argparse

    import bench

    runs = [{"11-all": {"edges_per_s": 10.0}, "11-answers": {"edges_per_s": 40.0}, "0-all": {"edges_per_s": 1.0},
             "0-answers": {"edges_per_s": 1.5}}, {"11-all": {"edges_per_s": 12.0}, "11-answers": {"edges_per_s": 36.0},
                                                   "0-all": {"edges_per_s": 1.0}, "0-answers": {"edges_per_s": 1.1}}]
    table = bench.columns_table(runs, argparse.Namespace(layers=[11, 0]))
    assert "| 11 | 11 edges/s | 38 edges/s | 3.5x |" in table and "| 0 | 1 edges/s | 1.3 edges/s | 1.3x |" in table


def test_curves_table_picks_the_best_small_circuit_on_held_out_prompts():
    import smollm2_curves

    def curve(values, edges):
        return {"points": [{"fraction": e / 1000, "normalized": v, "edges": e} for v, e in zip(values, edges, strict=True)],
                "cpr": 0.5, "cmd": 0.25, "cpr_log": 0.125, "cmd_log": 0.75}

    ranker = {"seconds": 3.0, "discovery": curve([0.9, 0.95, 1.0], [5, 10, 1000]), "held_out": curve([1.3, 0.9, 1.0], [5, 10, 1000])}
    big = {"seconds": 9.0, "threshold": 0.05, "prefilter": 0.02, "circuit_edges": 11, "tested": 20, "discovery": 0.99,
           "held_out": 0.97, "how": "threshold 0.05, 20 tested"}
    small = {**big, "circuit_edges": 10, "held_out": 0.65}
    # 1000 edges: the circuits of <= 10 edges count, and the one closest to 1 wins (1.3 overshoots more)
    assert smollm2_curves.best_small(ranker, 1000) == (0.9, 10)
    assert smollm2_curves.best_small(big, 1000) is None and smollm2_curves.best_small(small, 1000) == (0.65, 10)
    r = {"prompts": 4, "metric": "logit_diff", "full": 4.0, "empty": 0.5, "edges": 1000,
         "methods": {"eap": ranker, "acdc prefilter 0.02": big}}
    md = "\n".join(smollm2_curves.table("ioi", r))
    assert "| eap | 3.0 | 0.500 | 0.250 | 0.500 | 0.250 | 0.125 | 0.750 | 0.900 (10) |" in md
    assert "| acdc prefilter 0.02 (threshold 0.05, 20 tested) | 9.0 | circuit of 11: 0.990 |" in md
    # the ACDC table: each run by its threshold as a share of the 3.5 gap, with the third prompt set where scored
    assert "| 0.02 | 0.0500 | 0.01429 | signed | 11 | 20 | 9.0 | 0.990 | 0.970 | - |" in md
    r["methods"]["acdc prefilter 0.02, abs(delta)"] = {**big, "threshold": 0.035, "abs_value": True, "test": 0.5}
    md = "\n".join(smollm2_curves.table("ioi", r))
    rows = [ln for ln in md.splitlines() if ln.startswith("| 0.02 |")]
    assert rows == ["| 0.02 | 0.0500 | 0.01429 | signed | 11 | 20 | 9.0 | 0.990 | 0.970 | - |",
                    "| 0.02 | 0.0350 | 0.01 | abs | 11 | 20 | 9.0 | 0.990 | 0.970 | 0.500 |"]  # higher threshold first


def test_curves_names_each_acdc_run_by_its_settings():
    import smollm2_curves

    assert smollm2_curves.acdc_label(0.02, None, False) == "acdc prefilter 0.02"
    assert smollm2_curves.acdc_label(0.02, 0.0075, False) == "acdc prefilter 0.02, threshold 0.0075 of the gap"
    assert smollm2_curves.acdc_label(0.005, None, True) == "acdc prefilter 0.005, abs(delta)"


@pytest.mark.real
def test_smollm2_scripts_run_small(tmp_path):
    """The real-model experiments end to end, at a small size (the full runs are in experiments/results)."""
    import smollm2_induction
    import smollm2_ioi

    smollm2_ioi.main(["--n-prompts", "6", "--sizes", "25", "--thresholds", "0.3", "--steps", "2", "--out", str(tmp_path)])
    ioi = json.loads((tmp_path / "smollm2_ioi.json").read_text())
    assert ioi["behaviour"]["BABA"]["accuracy"] > 0.5 and ioi["graph_edges"] == 123211
    assert set(ioi["classes"]) >= {"name mover", "s-inhibition", "induction", "duplicate token", "previous token"}
    smollm2_induction.main(["--n-prompts", "4", "--sizes", "50", "--steps", "2", "--out", str(tmp_path)])
    ind = json.loads((tmp_path / "smollm2_induction.json").read_text())
    assert ind["loss_second_copy"] < ind["loss_first_copy"] and len(ind["top_induction"]) == 10
    import smollm2_positional

    smollm2_positional.main(["--n-prompts", "4", "--sizes", "50", "--steps", "1", "--out", str(tmp_path)])
    pos = json.loads((tmp_path / "smollm2_positional.json").read_text())
    assert pos["n_edges"] == 6 * 123211 and sum(pos["top100_by_position"].values()) == 100


def test_positional_speed_script(tmp_path):
    import positional_speed

    positional_speed.main(["--layers", "2", "--reps", "1", "--out", str(tmp_path)])
    text = (tmp_path / "positional_speed.md").read_text()
    assert "| edges | 606 | 9,090 | 15x |" in text


def test_faithfulness_report_zoo(tmp_path):
    import faithfulness_report

    faithfulness_report.main(["--no-smollm2", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "faithfulness_report.json").read_text())
    # the default 10 settings, mean ablation aligned by role (the zoo's IOI task names its positions), 6 reference sizes
    assert [r["name"] for r in data] == ["zoo-ioi"] and len(data[0]["grid"]) == 17
    assert [r["mean_over"] for r in data[0]["grid"]].count("role") == 1
    assert set(data[0]["checks"]) == {"resample below mean ablation", "mean of ratios above ratio of means",
                                      "rises with the reference-set size"}
    assert "Miller et al.'s findings here" in (tmp_path / "faithfulness_report.md").read_text()


def test_peak_memory_is_the_scripts_own_not_its_parents():
    """A script started from a big process (pytest, a sweep) reports its own peak: ru_maxrss would report the
    parent's (Linux keeps it across fork and exec), which failed the 2 GB neuron-graph test inside the suite."""
    import subprocess

    from peak_memory import peak_kib

    ballast = bytearray(600 * 2**20)
    ballast[:: 4096] = b"\x01" * len(ballast[:: 4096])  # touch every page: 600 MB resident here
    assert peak_kib() > 600 * 1024
    code = "import sys; sys.path.insert(0, sys.argv[1]); from peak_memory import peak_kib; print(peak_kib())"
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parents[1] / "experiments")],
                         capture_output=True, text=True, check=True).stdout
    assert int(out) < 100 * 1024, out  # a bare interpreter: tens of MB
    del ballast
