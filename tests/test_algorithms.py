"""The algorithm contract: every registered method takes (patcher, metric, batch) and returns Scores."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_tokens

import acdc
from acdc.algorithms import ALGORITHMS, get_algorithm
from acdc.api import prepare


@pytest.fixture(scope="module")
def inputs(gpt2_model):
    clean, corrupt = random_tokens()
    return prepare(gpt2_model, clean, corrupt, metric="logit_diff", answers=([1, 2, 3, 4], [5, 6, 7, 8]))


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_follows_the_contract(name, inputs):
    patcher, metric, batch = inputs
    options = {"threshold": 0.05} if name == "acdc" else {}
    scores = get_algorithm(name)(patcher, metric, batch, progress=False, **options)
    assert isinstance(scores, acdc.Scores) and scores.graph is patcher.graph
    assert scores.values.shape == (patcher.graph.n_edges,) and scores.settings["method"] == name
    assert scores.settings["metric"] == "logit_diff" and scores.settings["ablation"] == "resample"
    if name == "acdc":
        c = scores.selection()
        assert c.n_edges == int(scores.selected.sum()) and 0 < c.n_edges < patcher.graph.n_edges
        tested = ~scores.values.isnan()
        kept_tested = (scores.selected & tested).nonzero().squeeze(1)
        assert bool((scores.values[kept_tested] >= 0.05).all())  # kept tested edges cleared the threshold
    elif name == "edge-pruning":  # a selecting method too: its circuit is the gates above 0.5, every edge scored
        assert scores.selected is not None and torch.equal(scores.selection().in_graph, scores.selected)
        assert bool(((scores.values > 0) & (scores.values < 1)).all())
        assert torch.equal(scores.selected, scores.values > 0.5)
    else:
        assert scores.selected is None and not bool(scores.values.isnan().any())
        with pytest.raises(ValueError, match="selects none; choose a circuit with top"):
            scores.selection()


def test_acdc_through_the_registry_equals_discover(gpt2_model, inputs):
    patcher, metric, batch = inputs
    clean, corrupt = random_tokens()
    via_api = acdc.discover(gpt2_model, clean, corrupt, threshold=0.05, metric="logit_diff",
                            answers=([1, 2, 3, 4], [5, 6, 7, 8]), progress=False)
    direct = ALGORITHMS["acdc"](patcher, metric, batch, threshold=0.05).selection()
    assert direct.edges == via_api.edges
    both = ~direct.scores.isnan()
    assert torch.equal(both, ~via_api.scores.isnan()) and torch.equal(direct.scores[both], via_api.scores[both])
    assert not math.isnan(direct.settings["final_metric"])


def test_unknown_method_lists_the_registry():
    with pytest.raises(ValueError, match="unknown method 'nope'; choose one of acdc, eap"):
        get_algorithm("nope")
