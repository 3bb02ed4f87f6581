"""The planted circuits are real: the true edges carry the task, and ACDC finds exactly them.

Tolerances (per entry, resample ablation, the entry's own metric):
- ablating every edge outside the truth keeps accuracy 1 and moves the loss by < 0.05
  (KL in nats, or logit difference out of ~10);
- ablating the truth destroys the behaviour: the loss rises by > 5;
- each true edge alone matters (> 1; > 0.5 in feature-chain and clt-chain, whose per-class features each carry
  the quarter of the prompts of their class) while no other single edge moves the loss by > 0.05 (in clt-chain,
  but the edges into m1, which matter through m1's error node only: see `acdc.zoo.clt_chain`).
"""

from __future__ import annotations

import pytest
import torch

import acdc
from acdc.api import prepare

ENTRIES = acdc.zoo.available()


@pytest.fixture(scope="module", params=ENTRIES)
def entry(request):
    return acdc.zoo.load(request.param)


@pytest.fixture(scope="module")
def setup(entry):
    patcher, metric, batch = prepare(entry.model, entry.task, ablation=entry.ablation, **_graph(entry))
    return entry, patcher, metric, batch


def _graph(entry) -> dict:
    """The entry's own graph where its truth is named in one (feature-chain's feature graph, with its transcoders)."""
    return {} if entry.graph is None else {"graph": entry.graph, "transcoders": entry.transcoders}


def test_registry():
    assert {"induction", "ioi", "modular-sum", "feature-chain", "clt-chain"} <= set(ENTRIES)
    with pytest.raises(ValueError, match="available"):
        acdc.zoo.load("nope")


def test_plant_carries_the_task(setup):
    entry, patcher, metric, batch = setup
    g = patcher.graph
    truth = entry.truth.mask(g)

    def run(ablated):
        logits = patcher.logits(ablated)
        return float(metric.loss(logits, batch)), float((logits.argmax(-1) == batch.correct).float().mean())

    full, acc = run(torch.zeros(g.n_edges, dtype=torch.bool))
    assert acc == 1.0
    others, acc_others = run(~truth)
    assert acc_others == 1.0 and abs(others - full) < 0.05
    broken, _ = run(truth)
    assert broken - full > 5


def test_each_true_edge_matters_alone(setup):
    entry, patcher, metric, batch = setup
    g = patcher.graph
    truth = entry.truth.mask(g)
    single = torch.eye(g.n_edges, dtype=torch.bool)
    base = float(metric.loss(patcher.logits(torch.zeros(g.n_edges, dtype=torch.bool)), batch))
    effects = torch.tensor([float(metric.loss(patcher.logits(m), batch)) - base for m in single])
    assert bool((effects[truth] > (0.5 if entry.graph is not None else 1)).all())
    alone = (~truth & (effects.abs() >= 0.05)).nonzero().squeeze(1)
    if isinstance(entry.transcoders, acdc.CrossLayerTranscoder):
        # clt-chain: an edge into m1 moves m1's output, not the CLT's account of it (layer 0's features on their own
        # input), so m1's error node carries the change; with m1's error edges cut too, m1's input matters not at all
        assert len(alone) and {g.edges[i].dst.name for i in alone.tolist()} == {"m1"}
        err = g.edges_out_of(["m1.err"])
        for i in alone.tolist():
            assert abs(float(metric.loss(patcher.logits(single[i] | err), batch)) - base) < 0.05, g.edges[i].name
    else:
        assert not len(alone), [g.edges[i].name for i in alone.tolist()]


def test_acdc_recovers_the_plant(entry):
    r = acdc.roc(entry.model, entry.task, truth=entry.truth, ablation=entry.ablation, progress=False, **_graph(entry))
    assert r.auc >= 0.99 and r.auc_pessimistic >= 0.99
    assert r.exact(), f"no threshold gives exactly the planted edges: {list(zip(r.params, r.fpr, r.tpr))}"
    found = r.circuits[r.exact()[0]]
    assert set(found.edges) == set(entry.truth.edges)
    if entry.graph is not None:  # the circuits keep the sweep's own graph
        assert all(c.graph is entry.graph for c in r.circuits)
    assert r.at_level("node").auc >= 0.99


def test_deterministic_and_seeded(entry):
    again = acdc.zoo.load(entry.name)
    assert torch.equal(again.task.clean, entry.task.clean) and torch.equal(again.task.corrupt, entry.task.corrupt)
    assert again.truth.edges == entry.truth.edges
    other = acdc.zoo.load(entry.name, seed=1, n_prompts=8)
    assert other.task.n_prompts == 8 and not torch.equal(other.task.clean, entry.task.clean[:8])


def test_tokenizer_reads_prompts(entry):
    text = entry.tokenizer.decode(entry.task.clean[0])
    assert entry.tokenizer.encode(text) == entry.task.clean[0].tolist()
    with pytest.raises(ValueError, match="not in this vocabulary"):
        entry.tokenizer.encode("zzz-not-a-word")


def test_discover_takes_a_task():
    e = acdc.zoo.load("ioi", n_prompts=8)
    c = acdc.discover(e.model, e.task, threshold=0.5, progress=False)
    assert c.settings["metric"] == "logit_diff"
    assert acdc.recovery(c, e.truth).edges.exact
    with pytest.raises(ValueError, match="not both"):
        acdc.discover(e.model, e.task, e.task.corrupt, threshold=0.5)
    with pytest.raises(ValueError, match="corrupt prompts are missing"):
        acdc.discover(e.model, e.task.clean, threshold=0.5)


def test_s2_io_corruption_isolates_the_duplicate_detection():
    """With S2-IO prompts the same names are present, only which one repeats changes: the
    name mover's key/value inputs carry nothing, the duplicate -> S-inhibition -> query path does."""
    from acdc.zoo import ioi as zoo_ioi

    entry = acdc.zoo.load("ioi")
    task = acdc.tasks.ioi(
        entry.tokenizer, 32, seed=5, corrupt="S2-IO", templates=[zoo_ioi.TEMPLATE], names=zoo_ioi.NAMES,
        places=zoo_ioi.PLACES, objects=zoo_ioi.OBJECTS,
    )
    found = set(acdc.discover(entry.model, task, threshold=0.1, progress=False).edges)
    truth = set(entry.truth.edges)
    assert found < truth
    assert {"input->a0.h0<q>", "a1.h0->a2.h0<q>", "a2.h0->logits"} <= found
    assert not found & {"input->a2.h0<k>", "input->a2.h0<v>"}
