"""The ``acdc`` command: end to end on a zoo model, offline; one-line errors, nonzero exits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import acdc
from acdc.circuit import Circuit
from acdc.cli import main

ROOT = Path(__file__).resolve().parents[1]
has_dot = shutil.which("dot") is not None


@pytest.fixture(scope="module")
def discovered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli")
    assert main(["discover", "--model", "zoo:ioi", "--threshold", "0.1", "-o", str(out), "--no-progress"]) == 0
    return out


needs_dot = pytest.mark.skipif(not has_dot, reason="graphviz's dot is not installed")


def test_discover_writes_json_summary(discovered):
    c = Circuit.from_json(discovered / "circuit.json")
    assert c.n_edges == 9 and c.settings["threshold"] == 0.1
    summary = (discovered / "summary.txt").read_text()
    assert "9 of 262 edges" in summary and "TPR 1.000 FPR 0.0000" in summary


@needs_dot
def test_discover_writes_images(discovered):
    for name in ("circuit.png", "comparison.png"):
        assert (discovered / name).read_bytes().startswith(b"\x89PNG")


@needs_dot
def test_render(discovered, tmp_path):
    assert main(["render", str(discovered / "circuit.json"), "-o", str(tmp_path / "c.svg"), "--classes", "zoo:ioi"]) == 0
    svg = (tmp_path / "c.svg").read_text()
    assert svg.count('class="edge"') == 9 and "name mover" in svg
    assert main(["render", str(discovered / "circuit.json"), "-o", str(tmp_path / "d.svg"), "--truth", "zoo:ioi"]) == 0
    assert (tmp_path / "d.svg").read_text().count("found&#45;true") == 9
    # -o a folder: the image is named after the circuit file
    assert main(["render", str(discovered / "circuit.json"), "-o", str(tmp_path)]) == 0
    assert (tmp_path / "circuit.png").read_bytes().startswith(b"\x89PNG")


def test_score(discovered, capsys):
    assert main(["score", str(discovered / "circuit.json"), "--truth", "zoo:ioi"]) == 0
    assert "TP 9, FP 0, FN 0" in capsys.readouterr().out
    # a circuit JSON as the truth; "recovery" is the command's name, "score" its alias
    assert main(["recovery", str(discovered / "circuit.json"), "--truth", str(discovered / "circuit.json")]) == 0
    assert "TP 9, FP 0, FN 0" in capsys.readouterr().out


def test_one_set_of_flags(tmp_path, capsys):
    """-o/--out and --model mean the same in every command; attribute and roc commands; --version."""
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("acdc 0.")
    a = tmp_path / "a"
    assert main(["attribute", "--model", "zoo:ioi", "--method", "eap-ig-inputs", "--top", "9", "-o", str(a),
                 "--no-progress"]) == 0
    scores = acdc.Scores.from_json(a / "scores.json")
    top9 = Circuit.from_json(a / "circuit.json")
    assert scores.settings["method"] == "eap-ig-inputs" and top9.n_edges == 9
    assert top9.edges == scores.top(9).edges and "score vs zoo-ioi" in (a / "summary.txt").read_text()
    assert len(json.loads((a / "circuit.json").read_text())["edges"]) == 9  # compact: the circuit's edges only
    e = tmp_path / "e"
    assert main(["attribute", "--model", "zoo:ioi", "--method", "eap-ig-inputs", "--top", "9", "-o", str(e),
                 "--no-progress", "--every-edge"]) == 0
    for name in ("scores.json", "circuit.json"):  # every edge with its score, as EAP-IG writes it
        edges = json.loads((e / name).read_text())["edges"]
        assert len(edges) == scores.graph.n_edges and all(v["score"] == scores[k] for k, v in edges.items())
    again = acdc.Scores.from_json(e / "scores.json")  # a second run: the same values (its settings time it)
    assert torch.equal(again.values, scores.values) and Circuit.from_json(e / "circuit.json").edges == top9.edges
    gim = tmp_path / "gim"
    assert main(["attribute", "--model", "zoo:ioi", "--method", "eap", "--gim", "-o", str(gim), "--no-progress"]) == 0
    with_gim = acdc.Scores.from_json(gim / "scores.json")
    entry = acdc.zoo.load("ioi")
    assert with_gim.settings["gim"] == acdc.GIM().to_dict()
    assert torch.allclose(with_gim.values, acdc.attribute(entry.model, entry.task, method="eap", gim=True, progress=False).values)
    r = tmp_path / "r"
    assert main(["roc", "--model", "zoo:induction", "--n-thresholds", "4", "-o", str(r), "--no-progress"]) == 0
    data = json.loads((r / "roc.json").read_text())
    assert len(data["edge"]["points"]) == 4 and 0 <= data["edge"]["auc"] <= 1 and data["node"]["level"] == "node"
    d = tmp_path / "d"
    assert main(["discover", "--model", "zoo:ioi", "--threshold", "0.1", "--speculate", "3", "--prefilter", "0.5",
                 "-o", str(d), "--no-progress"]) == 0
    c = Circuit.from_json(d / "circuit.json")
    assert c.settings["approximate"] == "prefilter" and c.settings["prefilter"] == 0.5
    m = tmp_path / "m"
    assert main(["demo", "--model", "zoo:induction", "--threshold", "0.01", "-o", str(m)]) == 0
    assert Circuit.from_json(m / "circuit.json").n_edges == 5


@pytest.mark.parametrize(
    "argv, code, match",
    [
        (["score", "missing.json", "--truth", "ioi"], 1, "no such file"),
        (["score", "{circuit}", "--truth", "nonsense"], 1, "unknown truth 'nonsense'"),
        (["score", "{circuit}", "--truth", "ioi"], 1, "is for a 12-layer model with 12 heads per layer"),
        (["roc", "--model", "gpt2", "--task", "ioi"], 1, "not in the local Hugging Face cache"),
        (["render", "{circuit}", "-o", "x.gif"], 1, r"\.png, \.svg, \.pdf or \.dot"),
        (["render", "{bad}", "-o", "x.png"], 1, "is not JSON"),
        (["discover", "--model", "zoo:nope", "--threshold", "1"], 1, "unknown zoo model 'nope'"),
        (["discover", "--model", "zoo:ioi", "--threshold", "-1"], 1, "threshold must be a number >= 0"),
        (["discover", "--model", "zoo:ioi", "--task", "ioi", "--threshold", "1"], 1, "own task"),
        (["discover", "--model", "zoo:ioi"], 2, "required: --threshold"),
        (["render"], 2, "required"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_bad_input_one_line(discovered, tmp_path, capsys, argv, code, match):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    argv = [a.format(circuit=discovered / "circuit.json", bad=bad) for a in argv]
    if code == 2:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
    else:
        assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert __import__("re").search(match, err), err


def test_help_on_each_command(capsys):
    for cmd in ([], ["discover"], ["attribute"], ["roc"], ["render"], ["recovery"], ["score"], ["demo"]):
        with pytest.raises(SystemExit) as exit_:
            main([*cmd, "--help"])
        assert exit_.value.code == 0
        assert "usage: acdc" in capsys.readouterr().out


@pytest.mark.slow
def test_fresh_shell_end_to_end(tmp_path):
    """The installed entry point, a new process, no network: discover then render then score."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    script = Path(sys.executable).parent / "acdc"  # the installed entry point, if installed
    acdc_cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "acdc.cli"]
    run = subprocess.run([*acdc_cmd, "discover", "--model", "zoo:induction", "--threshold", "0.01", "-o", "out",
                          "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "TPR 1.000" in run.stdout and (tmp_path / "out" / "circuit.json").is_file()
    data = json.loads((tmp_path / "out" / "circuit.json").read_text())
    assert sum(e["in_graph"] for e in data["edges"].values()) == 5
    score = subprocess.run([*acdc_cmd, "score", "out/circuit.json", "--truth", "zoo:induction"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert score.returncode == 0 and "TP 5, FP 0, FN 0" in score.stdout
    bad = subprocess.run([*acdc_cmd, "render", "out/circuit.json", "-o", "c.bmp"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1


def test_faithfulness_command(discovered, tmp_path, capsys):
    out = tmp_path / "f"
    assert main(["faithfulness", str(discovered / "circuit.json"), "--model", "zoo:ioi", "-o", str(out)]) == 0
    data = json.loads((out / "faithfulness.json").read_text())
    entry = acdc.zoo.load("ioi")
    ref = acdc.faithfulness(entry.model, entry.task, Circuit.from_json(discovered / "circuit.json"))
    assert data["ratio"] == pytest.approx(ref.ratio) and data["settings"]["direction"] == "clean-complement"
    assert main(["faithfulness", str(discovered / "circuit.json"), "--model", "zoo:ioi", "--grid",
                 "--reference-sizes", "4", "-o", str(out)]) == 0
    report = (out / "faithfulness_grid.md").read_text()
    assert report.count("| edge |") + report.count("| node |") == 12  # the default 10, role-aligned mean, k = 4
    assert "| edge | mean | role |" in report and "\nVerdict: " in report
    assert "Miller et al.'s findings here" in report and "- resample below mean ablation:" in report


def test_positional_discover_and_faithfulness(tmp_path, capsys):
    out = tmp_path / "pos"
    assert main(["discover", "--model", "zoo:ioi", "--threshold", "0.05", "--positions", "named", "-o", str(out),
                 "--no-progress"]) == 0
    c = Circuit.from_json(out / "circuit.json")
    assert c.graph.positions == ("IO", "S1", "S1+1", "S2", "END", "other") and c.n_edges == 10
    assert "TPR 1.000 FPR 0.0000" in (out / "summary.txt").read_text()  # against the planted positions
    capsys.readouterr()
    assert main(["faithfulness", str(out / "circuit.json"), "--model", "zoo:ioi", "--at", "all", "-o", str(out)]) == 0
    f = json.loads((out / "faithfulness.json").read_text())
    assert f["settings"]["at"] == "all"


def test_transcoders_train_and_fidelity(tmp_path, capsys):
    out = tmp_path / "tc"
    assert main(["transcoders", "train", "--model", "zoo:dictionary", "--layers", "0", "--tokens", "3000", "--n-features", "32",
                 "--k", "4", "--batch-tokens", "500", "--no-progress", "-o", str(out)]) == 0
    assert "3,000 tokens" in capsys.readouterr().out
    ts = acdc.load_transcoders(out)
    assert ts.layers == [0] and ts[0].cfg.k == 4 and ts[0].n_features == 32 and ts.info["options"]["tokens"] == 3000
    assert main(["transcoders", "fidelity", str(out), "--model", "zoo:dictionary", "--sequences", "8", "--no-progress",
                 "-o", str(tmp_path / "fid")]) == 0
    data = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
    assert 0 < data["layers"]["0"]["fvu"] < 1.5 and "loss recovered" in (tmp_path / "fid" / "fidelity.md").read_text()
    assert data["extra"] == {"skip_first": True, "massive": 100.0, "massive_positions": 0}
    assert main(["transcoders", "fidelity", str(out), "--model", "zoo:dictionary", "--sequences", "8", "--no-progress",
                 "--massive", "none", "--splice-first", "-o", str(tmp_path / "fid2")]) == 0
    every = json.loads((tmp_path / "fid2" / "fidelity.json").read_text())
    assert every["extra"]["skip_first"] is False and every["extra"]["massive"] is None and every["ce_all"] != data["ce_all"]
    assert main(["transcoders", "pages", str(out), "--model", "zoo:dictionary", "--layer", "0", "--random", "3",
                 "--sequences", "8", "-o", str(tmp_path / "pages")]) == 0
    page = (tmp_path / "pages" / "features-m0.html").read_text()
    assert page.count("<div class='f'") == 3 and "w" in page
    assert main(["transcoders", "pages", str(out), "--model", "zoo:dictionary", "--layer", "0", "--random", "3",
                 "--sequences", "8", "--chunk", "3", "--executor", "serial", "--results", str(tmp_path / "pieces"),
                 "--no-progress", "-o", str(tmp_path / "pages2")]) == 0
    assert (tmp_path / "pages2" / "features-m0.html").read_text() == page  # in pieces of 8: the same page
    assert len(list((tmp_path / "pieces").glob("sequences_*.json"))) == 1


def test_a_cross_layer_transcoder_from_the_command_line(tmp_path, capsys):
    """--cross-layer trains one CLT over every layer (acdc's CLT folder), and fidelity measures it per target layer."""
    out = tmp_path / "clt"
    assert main(["transcoders", "train", "--model", "zoo:dictionary", "--cross-layer", "--tokens", "2000", "--n-features", "16",
                 "--k", "4", "--batch-tokens", "500", "--no-progress", "-o", str(out)]) == 0
    assert "2,000 tokens" in capsys.readouterr().out and (out / "clt.safetensors").exists()
    clt = acdc.load_clt(out)
    assert clt.cfg.n_layers == 2 and clt.cfg.n_features == 16 and clt.info["options"]["tokens"] == 2000
    assert main(["transcoders", "fidelity", str(out), "--model", "zoo:dictionary", "--sequences", "8", "--no-progress",
                 "-o", str(tmp_path / "fid")]) == 0
    data = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
    assert sorted(data["layers"]) == ["0", "1"] and all(0 < v["fvu"] < 1.5 for v in data["layers"].values())
    assert main(["transcoders", "train", "--model", "zoo:dictionary", "--cross-layer", "--layers", "0"]) == 1
    assert "leave out --layers" in capsys.readouterr().err


def test_transcoders_bad_options_are_one_line(capsys):
    assert main(["transcoders", "train", "--model", "zoo:dictionary", "--tokens", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tokens must be a whole number >= 1" in err
    with pytest.raises(SystemExit):
        main(["transcoders", "train", "--model", "zoo:dictionary", "--activation", "gelu"])


def test_feature_graphs_from_the_command_line(tmp_path, capsys):
    """zoo:feature-chain runs on its feature graph; --transcoders builds one from saved transcoders
    (the same graph: its active features), --features all keeps every feature."""
    entry = acdc.zoo.load("feature-chain")
    assert main(["discover", "--model", "zoo:feature-chain", "--threshold", "0.01", "-o", str(tmp_path / "a"), "--no-progress"]) == 0
    found = Circuit.from_json(tmp_path / "a" / "circuit.json")
    assert set(found.edges) == set(entry.truth.edges) and found.graph.config()["features"] == {"0": [0, 1, 2, 3, 4, 5], "1": [0, 1, 2, 3]}
    saved = entry.transcoders.save(tmp_path / "tc")
    assert main(["attribute", "--model", "zoo:feature-chain", "--transcoders", str(saved), "--top", "10",
                 "-o", str(tmp_path / "b"), "--no-progress"]) == 0
    assert set(Circuit.from_json(tmp_path / "b" / "circuit.json").edges) == set(entry.truth.edges)
    assert main(["attribute", "--model", "zoo:feature-chain", "--transcoders", str(saved), "--features", "all",
                 "-o", str(tmp_path / "c"), "--no-progress"]) == 0
    assert "32 transcoder features" in capsys.readouterr().out
    # a feature circuit's JSON runs again with its transcoders: the zoo entry's, or --transcoders; without them, one line
    assert main(["faithfulness", str(tmp_path / "a" / "circuit.json"), "--model", "zoo:feature-chain", "-o", str(tmp_path / "f")]) == 0
    assert json.loads((tmp_path / "f" / "faithfulness.json").read_text())["normalized"] > 0.95
    assert main(["faithfulness", str(tmp_path / "a" / "circuit.json"), "--model", "zoo:feature-chain", "--transcoders", str(saved),
                 "-o", str(tmp_path / "g")]) == 0
    assert main(["faithfulness", str(tmp_path / "a" / "circuit.json"), "--model", "zoo:ioi", "-o", str(tmp_path / "h")]) == 1
    assert "circuit of transcoder features: pass --transcoders" in capsys.readouterr().err
    assert main(["attribute", "--model", "zoo:feature-chain", "--positions", "tokens", "--method", "eap-ig-activations",
                 "--top", "30", "-o", str(tmp_path / "p"), "--no-progress"]) == 0
    at = Circuit.from_json(tmp_path / "p" / "circuit.json")
    assert at.graph.features is not None and at.graph.positions is not None
    assert {e.split("@")[0] for e in at.edges} >= set(entry.truth.edges)
    assert main(["attribute", "--model", "zoo:feature-chain", "--transcoders", str(tmp_path / "nope"), "-o", str(tmp_path / "d")]) == 1
    assert "--transcoders" in capsys.readouterr().err
