"""No surprises: a circuit used with the wrong model says so; names that look right work."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import random_tokens

import acdc
from acdc import ROC, Circuit, Graph


@pytest.fixture(scope="module")
def zoo_ioi():
    return acdc.zoo.load("ioi")


@pytest.fixture(scope="module")
def zoo_induction():
    return acdc.zoo.load("induction")


@pytest.fixture(scope="module")
def induction_circuit(zoo_induction):
    return acdc.discover(zoo_induction.model, zoo_induction.task, threshold=0.01, progress=False)


# ---------------------------------------------------------------- the wrong model
def test_render_with_another_models_classes(induction_circuit, zoo_ioi, tmp_path):
    assert induction_circuit.graph.shape() != zoo_ioi.truth.graph().shape()
    with pytest.raises(ValueError, match=r"known circuit 'zoo-ioi'.* is for a 3-layer model .* but this model is a 2-layer"):
        acdc.render(induction_circuit, tmp_path / "c.dot", classes=zoo_ioi.truth)
    with pytest.raises(ValueError, match="names 'a9.h9', which is not a node of this circuit's model"):
        acdc.render(induction_circuit, tmp_path / "c.dot", classes={"mover": ["a9.h9"]})


def test_patcher_refuses_another_models_circuit(zoo_ioi, induction_circuit):
    p = acdc.Patcher(zoo_ioi.model, zoo_ioi.task)
    with pytest.raises(ValueError, match="this circuit is for a 2-layer model"):
        p.logits(induction_circuit)
    own = acdc.discover(zoo_ioi.model, zoo_ioi.task, threshold=0.1, progress=False)
    assert torch.equal(p.logits(own), p.logits(~own.in_graph))


def test_recovery_against_another_models_truth(induction_circuit):
    with pytest.raises(ValueError, match="known circuit 'ioi' is for a 12-layer model with 12 heads per layer, "
                                         "but this model is a 2-layer"):
        acdc.recovery(induction_circuit, acdc.known.load("ioi"))
    g = Graph(2, 4, split_qkv=False)
    unsplit = Circuit(g, torch.zeros(g.n_edges, dtype=torch.bool), torch.zeros(g.n_edges))
    with pytest.raises(ValueError, match=r"this circuit has head inputs split into q/k/v; build the graph with split_qkv=True"):
        acdc.recovery(unsplit, induction_circuit)


# ---------------------------------------------------------------- names that look right
def test_circuit_len_contains_and_score(induction_circuit, zoo_induction):
    c = induction_circuit
    assert len(c) == c.n_edges == 5
    first = c.edges[0]
    assert first in c and "input->logits" not in c and c.nodes[0] in c and 42 not in c
    with pytest.raises(AttributeError, match=r"edge_score\(name\).*acdc.recovery\(circuit, truth\)"):
        c.score(zoo_induction.truth)


def test_roc_from_scores_object(zoo_ioi):
    s = acdc.attribute(zoo_ioi.model, zoo_ioi.task, method="eap-ig-inputs", steps=5, ablation=zoo_ioi.ablation)
    assert ROC.from_scores(s, zoo_ioi.truth).auc == ROC.from_scores(s.values, zoo_ioi.truth).auc > 0.5


def test_patcher_takes_a_task(zoo_ioi):
    t = zoo_ioi.task
    p = acdc.Patcher(zoo_ioi.model, t)
    q = acdc.Patcher(zoo_ioi.model, t.clean, t.corrupt, answer_pos=t.answer_pos)
    assert torch.equal(p.clean.logits, q.clean.logits)
    with pytest.raises(ValueError, match="either a Task or clean and corrupt"):
        acdc.Patcher(zoo_ioi.model, t, t.corrupt)
    with pytest.raises(ValueError, match="corrupt prompts are missing"):
        acdc.Patcher(zoo_ioi.model, t.clean)


def test_task_metric_defaults_and_text_answers():
    from acdc.tasks import Task

    clean, corrupt = random_tokens(batch=2, pos=3)
    assert Task.from_tokens(clean, corrupt).metric == "kl"
    assert Task.from_tokens(clean, corrupt, correct=[1, 2], incorrect=[3, 4]).metric == "logit_diff"
    assert Task.from_tokens(clean, corrupt, correct=[1, 2], incorrect=[3, 4], metric="prob_diff").metric == "prob_diff"
    with pytest.raises(ValueError, match="correct answers must be token ids, got text; use Task.from_pairs"):
        Task.from_tokens(clean, corrupt, correct=["t3"] * 2, incorrect=[3, 4])


def test_logit_diff_progress_is_the_metric_itself(zoo_ioi, capsys):
    c = acdc.discover(zoo_ioi.model, zoo_ioi.task, threshold=0.1, progress=True)
    assert c.settings["metric"] == "logit_diff" and c.settings["final_metric"] > 0
    assert all(x > 0 for x in c.metric_trace)
    err = capsys.readouterr().err
    assert "logit_diff=" in err and "logit_diff=-" not in err


def test_offline_hub_name_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    with pytest.raises(OSError, match="not in the local Hugging Face cache and the hub cannot be reached"):
        acdc.load_model("acdc-test/not-a-cached-model")
    assert time.perf_counter() - t0 < 5
