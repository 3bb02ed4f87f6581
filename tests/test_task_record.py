"""A circuit remembers the prompts it was found on (`Task.recipe`, `Task.record`, ``settings["task"]``), and the
CLI's faithfulness and explore and the explorer page score it on those prompts by default, saying which."""

from __future__ import annotations

import json

import pytest
import torch

import acdc
from acdc.cli import main
from acdc.explorer import Explorer
from acdc.tasks import induction, ioi, remake


def test_generators_record_a_recipe_that_remakes_the_same_prompts(gpt2_tokenizer):
    t = ioi(gpt2_tokenizer, 12, seed=3, split="half-held-out")
    assert t.recipe == {"task": "ioi", "n_prompts": 12, "seed": 3, "split": "half-held-out"}  # defaults left out
    again = remake(t.recipe, gpt2_tokenizer)
    assert again.fingerprint() == t.fingerprint() and torch.equal(again.clean, t.clean)
    other = remake(t.recipe, gpt2_tokenizer, seed=4)
    assert other.fingerprint() != t.fingerprint() and other.recipe["seed"] == 4
    rec = t.record()
    assert rec["name"] == t.name and rec["n_prompts"] == 12 and rec["prompts"] == t.fingerprint()
    own = induction(50, 6, seed=1, tokens=torch.arange(5, 45))  # a tensor argument: not remakeable
    assert own.recipe is not None and own.recipe["remakeable"] is False
    with pytest.raises(ValueError, match="arguments that were not recorded"):
        remake(own.recipe, 50)


def test_a_circuit_file_records_its_task_and_the_explorer_scores_those_prompts(tmp_path):
    e = acdc.zoo.load("ioi", n_prompts=12, seed=3)
    c = acdc.discover(e.model, e.task, threshold=0.05, progress=False)
    rec = c.settings["task"]
    assert rec == {"task": "zoo:ioi", "n_prompts": 12, "seed": 3, "name": e.task.name, "prompts": e.task.fingerprint()}
    back = acdc.Circuit.from_json(c.to_json(tmp_path / "c.json"))
    assert back.settings["task"] == rec
    x = Explorer(e.model, e.task, back)
    assert x.view()["scoring"] == "scoring 12 prompts of zoo:ioi (seed 3): the prompts the circuit was found on"
    f = acdc.faithfulness(e.model, e.task, back)
    assert x.evaluate(removed=[])["metric"] == pytest.approx(f.circuit_metric, rel=1e-6)
    other = acdc.zoo.load("ioi", n_prompts=8, seed=0)
    assert Explorer(other.model, other.task, back).view()["scoring"] == (
        "scoring 8 prompts of zoo:ioi (seed 0); the circuit was found on 12 prompts of zoo:ioi (seed 3)")


def test_the_cli_scores_a_circuit_on_the_prompts_it_was_found_on(tmp_path, capsys):
    """The README's path (found with some prompts, then faithfulness/explore with no prompt flags) used to score a
    default 100-prompt task; now the circuit's own prompts, and the same number as the library's faithfulness."""
    found = tmp_path / "found"
    assert main(["discover", "--model", "zoo:ioi", "--n-prompts", "12", "--seed", "3", "--threshold", "0.05",
                 "-o", str(found), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["faithfulness", str(found / "circuit.json"), "--model", "zoo:ioi", "-o", str(tmp_path / "f"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "scoring 12 prompts of zoo:ioi (seed 3): the prompts the circuit was found on" in out
    got = json.loads((tmp_path / "f" / "faithfulness.json").read_text())
    e = acdc.zoo.load("ioi", n_prompts=12, seed=3)
    want = acdc.faithfulness(e.model, e.task, acdc.Circuit.from_json(found / "circuit.json"))
    assert got["circuit_metric"] == pytest.approx(want.circuit_metric, rel=1e-9)
    assert main(["faithfulness", str(found / "circuit.json"), "--model", "zoo:ioi", "--seed", "0", "-o", str(tmp_path / "g"),
                 "--no-progress"]) == 0  # a flag given changes that much
    assert "scoring 12 prompts of zoo:ioi (seed 0); the circuit was found on 12 prompts of zoo:ioi (seed 3)" in capsys.readouterr().out
