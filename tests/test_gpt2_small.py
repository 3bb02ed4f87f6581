"""GPT-2-small shape (random weights, nothing downloaded)."""

import pytest
import torch

import acdc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gpt2_small():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return acdc.load_model(GPT2LMHeadModel(GPT2Config()))


def test_graph_of_gpt2_small(gpt2_small):
    g = acdc.Graph.from_model(gpt2_small)
    assert (len(g.sources), len(g.destinations), g.n_edges) == (157, 445, 32491)


def test_patching_on_gpt2_small(gpt2_small):
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50257, (3, 6), generator=gen)
    corrupt = torch.randint(0, 50257, (3, 6), generator=gen)
    p = acdc.Patcher(gpt2_small, clean, corrupt)
    none = torch.zeros(p.graph.n_edges, dtype=torch.bool)
    assert torch.allclose(p.logits(none), gpt2_small(clean)[:, -1], atol=1e-4)
    inputs = torch.tensor([e.src.name == "input" for e in p.graph.edges])
    assert torch.allclose(p.logits(inputs), gpt2_small(corrupt)[:, -1], atol=1e-4)


def _first_edges(model, task, n=5):
    """Run ACDC on ``task`` and stop after ``n`` tested edges (a smoke test, not a result)."""
    from acdc.algorithms.acdc import run_acdc
    from acdc.api import prepare

    seen = []

    def stop(edge, delta, removed):
        assert delta == delta, f"NaN metric change at {edge}"
        seen.append(edge)
        return len(seen) >= n

    patcher, metric, batch = prepare(model, task)
    c = run_acdc(patcher, metric, batch, threshold=1e-3, callback=stop).selection()
    assert len(seen) == n and c.graph.n_edges == 32491
    return c


TEXT_TASKS = {
    "ioi": lambda tok: acdc.tasks.ioi(tok, 6, seed=0),
    "ioi-S2-IO": lambda tok: acdc.tasks.ioi(tok, 6, seed=0, corrupt="S2-IO", metric="kl"),
    "greater-than": lambda tok: acdc.tasks.greater_than(tok, 6, seed=0),
    "docstring": lambda tok: acdc.tasks.docstring(tok, 4, seed=0),
    "pairs": lambda tok: acdc.tasks.Task.from_pairs(
        [("The cat sat on the", "The dog sat on the", " mat", " floor"),
         ("One, two, three,", "One, two, five,", " four", " six")], tok),
}


@pytest.mark.parametrize("name", sorted(TEXT_TASKS))
def test_text_tasks_run_through_discover(gpt2_small, gpt2_tokenizer, name):
    _first_edges(gpt2_small, TEXT_TASKS[name](gpt2_tokenizer))


def test_induction_task_runs_through_discover(gpt2_small):
    task = acdc.tasks.induction(gpt2_small, 4, half=6, seed=0)
    assert task.answer_pos.shape == (4, 5)
    _first_edges(gpt2_small, task)
