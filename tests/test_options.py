"""Every entry point takes its options in one style (flat keywords), each group declared once as a
dataclass (`acdc.api.options`): the typed keywords equal the groups' fields, a keyword no group has is one
clear error naming the entry point, and an entry point builds its groups' dataclasses (their defaults and
checks) before any model runs."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import acdc
from acdc.algorithms.acdc import ACDCOptions
from acdc.algorithms.eap import AttributionOptions
from acdc.algorithms.edge_pruning import EdgePruningOptions
from acdc.api import FaithfulnessSetting, prepare
from acdc.api.options import (
    AttributeOptions,
    DiscoverOptions,
    FaithfulnessOptions,
    Inputs,
    PruneOptions,
    ROCOptions,
    SweepInputs,
    names_of,
    take,
)
from acdc.executors import Sweep, SweepOptions


def _fields(cls: type, but: tuple[str, ...] = ()) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - set(but)


INPUTS = set(Inputs.__annotations__)
SWEEP = _fields(SweepOptions)
# entry point -> (the TypedDict of its **options, the keywords it must take: its groups' fields)
ENTRIES = {
    "discover": (DiscoverOptions, INPUTS | _fields(ACDCOptions, ("threshold",))),  # threshold: discover's own keyword
    "attribute": (AttributeOptions, INPUTS | _fields(AttributionOptions)),
    "prune_edges": (PruneOptions, INPUTS | _fields(EdgePruningOptions)),
    "roc": (ROCOptions, INPUTS | SWEEP | _fields(ACDCOptions, ("threshold", "checkpoint", "checkpoint_every"))),
    "faithfulness": (FaithfulnessOptions, INPUTS | _fields(FaithfulnessSetting, ("ablation", "metric"))),
    "faithfulness_grid": (SweepInputs, INPUTS | SWEEP),
    "compare": (SweepInputs, INPUTS | SWEEP),
}


def test_inputs_are_prepares_keywords():
    params = inspect.signature(prepare).parameters
    assert INPUTS == {k for k, p in params.items() if p.kind is p.KEYWORD_ONLY}


def test_sweep_keywords_are_sweep_options_fields():
    assert set(Sweep.__annotations__) == SWEEP == {"executor", "results", "workers", "threads"}


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_each_entry_point_takes_its_groups_fields_as_keywords(entry):
    typed, want = ENTRIES[entry]
    assert set(names_of(typed)) == want
    fn = getattr(acdc, entry)
    var_kw = [p for p in inspect.signature(fn).parameters.values() if p.kind is p.VAR_KEYWORD]
    assert len(var_kw) == 1 and typed.__name__ in str(var_kw[0].annotation)  # **options: Unpack[<that TypedDict>]
    explicit = {k for k, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert not explicit & want, "an option re-listed beside its group"


def test_take_sorts_keywords_into_groups_and_names_what_is_wrong():
    a, b = take("f", {"x": 1, "y": 2, "z": 3}, ("x", "z"), ("y",))
    assert (a, b) == ({"x": 1, "z": 3}, {"y": 2})
    with pytest.raises(TypeError, match=r"^f\(\) has no option 'xx'; did you mean 'x'\? Its options: x, y$"):
        take("f", {"xx": 1}, ("x",), ("y",))
    with pytest.raises(TypeError, match=r"^f\(\) has no option 'qqq'\. Its options: x$"):
        take("f", {"qqq": 1}, ("x",))


class _NoModel:
    """A model that fails the test if anything reads it: options are checked before any run."""

    def __getattr__(self, name):
        pytest.fail(f"the model was used ({name}) before the options were checked")


@pytest.mark.parametrize(("call", "message"), [
    (lambda m: acdc.discover(m, ["a"], ["b"], threshold=0.1, method="eap"),
     r"discover\(\) has no option 'method' \(attribution methods run with acdc\.attribute"),
    (lambda m: acdc.roc(m, ["a"], ["b"], truth=[], prefiltr=0.1), r"roc\(\) has no option 'prefiltr'; did you mean 'prefilter'\?"),
    (lambda m: acdc.roc(m, ["a"], ["b"], truth=[], checkpoint="x.json"), r"roc\(\) has no option 'checkpoint'"),
    (lambda m: acdc.attribute(m, ["a"], ["b"], threshold=0.1), r"attribute\(\) has no option 'threshold' \(ACDC's threshold"),
    (lambda m: acdc.prune_edges(m, ["a"], ["b"], lrr=0.1), r"prune_edges\(\) has no option 'lrr'; did you mean 'lr'\?"),
    (lambda m: acdc.faithfulness(m, None, [], levle="node"), r"faithfulness\(\) has no option 'levle'; did you mean 'level'\?"),
    (lambda m: acdc.faithfulness_grid(m, None, [], worker=2), r"faithfulness_grid\(\) has no option 'worker'; did you mean 'workers'\?"),
    (lambda m: acdc.compare(m, {"t": None}, executer="ray"), r"compare\(\) has no option 'executer'; did you mean 'executor'\?"),
])
def test_an_unknown_option_is_one_clear_error_before_any_run(call, message):
    with pytest.raises(TypeError, match=message):
        call(_NoModel())


@pytest.mark.parametrize(("call", "message"), [
    (lambda m: acdc.roc(m, ["a"], ["b"], truth=[], prefilter=2.0), "prefilter"),
    (lambda m: acdc.roc(m, ["a"], ["b"], truth=[], workers=0), "workers must be an integer >= 1"),
    (lambda m: acdc.attribute(m, ["a"], ["b"], method="eap-ig-inputs", steps=0), "steps must be"),
    (lambda m: acdc.prune_edges(m, ["a"], ["b"], warmup=2.0), "warmup must be"),
    (lambda m: acdc.faithfulness(m, None, [], direction="sideways"), "direction"),
    (lambda m: acdc.compare(m, {"t": None}, executor="nowhere"), "executor must be"),
])
def test_option_values_are_checked_by_their_group_before_any_run(call, message):
    with pytest.raises(ValueError, match=message):
        call(_NoModel())


def test_edge_pruning_options_as_keywords_equal_the_deprecated_dict():
    e = acdc.zoo.load("induction")
    flat = acdc.prune_edges(e.model, e.task, target=0.3, steps=4, lr=0.4, seed=3, progress=False)
    with pytest.warns(DeprecationWarning, match="pass Edge Pruning's options as keywords"):
        old = acdc.prune_edges(e.model, e.task, target=0.3, steps=4, edge_pruning={"lr": 0.4, "seed": 3}, progress=False)
    assert torch.equal(flat.scores, old.scores)
    other = acdc.prune_edges(e.model, e.task, target=0.3, steps=4, lr=0.4, seed=4, progress=False)
    assert not torch.equal(flat.scores, other.scores)  # the seed reached the algorithm
