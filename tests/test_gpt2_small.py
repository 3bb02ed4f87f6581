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


def test_ioi_task_runs_through_discover(gpt2_small, gpt2_tokenizer):
    task = acdc.tasks.ioi(gpt2_tokenizer, 6, seed=0)
    seen = []

    def stop_after_a_few(edge, delta, removed):
        seen.append(edge)
        return len(seen) >= 5

    from acdc.algorithms.acdc import run_acdc
    from acdc.api import prepare

    patcher, metric, batch = prepare(gpt2_small, task)
    c = run_acdc(patcher, metric, batch, 1e-3, progress=False, callback=stop_after_a_few)
    assert len(seen) == 5 and c.graph.n_edges == 32491
