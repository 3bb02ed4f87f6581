"""Positional graphs: edges at named token positions, checked against per-position swaps by hooks."""

import pytest
import torch
from conftest import Killed, kill_after, logit_diff_loss, random_answers, random_tokens
from oracle import eap_reference, patched_logits, per_position_masks

from acdc import Graph, Patcher
from acdc.positions import Positions

ABLATIONS = ["resample", "mean", "zero"]


def _named_positions(batch: int = 4, pos: int = 6) -> Positions:
    """Roles at different token indices in each prompt (as templates of different lengths give)."""
    return Positions.named({"A": [1, 2, 1, 2], "B": [3, 4, 2, 4], "END": [5, 5, 4, 5]}, batch, pos)


def test_positions_named_layout():
    p = _named_positions()
    assert p.names == ("A", "B", "END", "other")
    assert p.index[0].tolist() == [3, 0, 3, 1, 3, 2]
    assert p.index[2].tolist() == [3, 0, 1, 3, 2, 3]  # token 5 is padding after END: "other"
    assert p.first_index("B").tolist() == [3, 4, 2, 4]
    with pytest.raises(ValueError, match="prompt 0: token 1 is both 'A' and 'B'"):
        Positions.named({"A": [1, 2, 1, 3], "B": [1, 4, 2, 5]}, 4, 6)
    with pytest.raises(ValueError, match="no position"):
        p.mask("IO")


def test_positional_graph_names_and_state():
    g = Graph(2, 2, positions=["A", "B"])
    assert g.n_edges == 2 * Graph(2, 2).n_edges
    assert g.edges[5].name == "input->a0.h0<v>@B" and g.edges[5].base_name == "input->a0.h0<v>"
    m = torch.zeros(g.n_edges, dtype=torch.bool)
    m[5] = True
    d = g.dense(m)
    assert d.shape == (15, 7, 2) and d.nonzero().tolist() == [[2, 0, 1]]
    assert torch.equal(g.sparse(d), m)
    assert Graph.from_config(g.config()).positions == ("A", "B")
    with pytest.raises(ValueError, match="has no positions, but this graph has positions A, B"):
        g.check_fits(Graph(2, 2), "this circuit")


@pytest.mark.parametrize("arch", ["gpt2", "neox"])
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_oracle_positional_edge_sets(arch, ablation, gpt2_model, neox_model):
    """Positional patched logits equal the hooked forward with per-position swaps."""
    model = gpt2_model if arch == "gpt2" else neox_model
    clean, corrupt = random_tokens()
    positions = _named_positions()
    g = Graph.from_model(model, positions=positions.names)
    p = Patcher(model, clean, corrupt, graph=g, ablation=ablation, positions=positions)
    for frac, seed in [(0.1, 0), (0.5, 1), (0.9, 2)]:
        mask = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(seed)) < frac
        ref = patched_logits(model, g.plain, clean, corrupt, per_position_masks(g, mask, positions), ablation)[:, -1]
        assert torch.allclose(p.logits(mask), ref, atol=1e-5, rtol=0), (frac, seed)


def test_oracle_token_positions_unsplit(gpt2_model):
    """Token-index positions (every prompt aligned), q/k/v not split, answers at several positions."""
    clean, corrupt = random_tokens()
    g = Graph.from_model(gpt2_model, split_qkv=False, positions=[str(i) for i in range(6)])
    answer_pos = torch.tensor([[2, 5], [3, 5], [1, 4], [4, 5]])
    p = Patcher(gpt2_model, clean, corrupt, graph=g, answer_pos=answer_pos)  # token positions by default
    assert p.positions is not None and p.positions.names == g.positions
    mask = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(5)) < 0.4
    ref = patched_logits(gpt2_model, g.plain, clean, corrupt, per_position_masks(g, mask, p.positions), "resample")
    ref = ref[torch.arange(4)[:, None], answer_pos].reshape(8, -1)
    assert torch.allclose(p.logits(mask), ref, atol=1e-5, rtol=0)


def test_ablating_one_position_only_changes_what_it_reaches(gpt2_model):
    """Ablating every edge at a position after the scored token changes nothing (causality)."""
    clean, corrupt = random_tokens()
    g = Graph.from_model(gpt2_model, positions=[str(i) for i in range(6)])
    p = Patcher(gpt2_model, clean, corrupt, graph=g, answer_pos=3)
    late = torch.tensor([e.pos in ("4", "5") for e in g.edges])
    assert (p.logits(late) - p.clean.logits).abs().max() < 1e-5
    early = torch.tensor([e.pos == "1" for e in g.edges])
    assert (p.logits(early) - p.clean.logits).abs().max() > 1e-2


def test_single_position_equals_plain_graph(gpt2_model):
    clean, corrupt = random_tokens()
    plain = Patcher(gpt2_model, clean, corrupt, ablation="mean")
    one = Positions.single(4, 6)
    pos = Patcher(gpt2_model, clean, corrupt, ablation="mean", graph=Graph.from_model(gpt2_model, positions=one.names),
                  positions=one)
    mask = torch.rand(plain.graph.n_edges, generator=torch.Generator().manual_seed(3)) < 0.5
    assert torch.equal(pos.logits(mask), plain.logits(mask))


def test_positional_patcher_errors(gpt2_model):
    clean, corrupt = random_tokens()
    g = Graph.from_model(gpt2_model, positions=["A", "B", "END", "other"])
    with pytest.raises(ValueError, match="needs positions"):
        Patcher(gpt2_model, clean, corrupt, graph=g)
    with pytest.raises(ValueError, match="do not match the graph's"):
        Patcher(gpt2_model, clean, corrupt, graph=g, positions=Positions.tokens(4, 6))


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_positional_eap_equals_gradient_formula(ablation, gpt2_model):
    """Each positional edge's EAP score is the gradient formula summed over its position's tokens."""
    import acdc

    clean, corrupt = random_tokens()
    positions = _named_positions()
    s = acdc.attribute(gpt2_model, clean, corrupt, method="eap", metric="logit_diff", answers=random_answers(),
                       ablation=ablation, positions=positions)
    g = s.graph
    assert g.positions == positions.names
    ref = eap_reference(gpt2_model, g, clean, corrupt, ablation, logit_diff_loss, positions=positions)
    scale = max(abs(v) for v in ref.values())
    assert scale > 0
    for e in g.edges:
        assert s[e.name] == pytest.approx(ref[e.name], abs=1e-4 * scale, rel=1e-4), e.name
    # the positions of an edge add up to the plain edge's score
    plain = acdc.attribute(gpt2_model, clean, corrupt, method="eap", metric="logit_diff", answers=random_answers(),
                           ablation=ablation)
    summed = s.values.view(-1, len(positions)).sum(1)
    assert torch.allclose(summed, plain.values, atol=1e-5 * scale)


def test_single_position_attribution_equals_plain(gpt2_model):
    import acdc

    clean, corrupt = random_tokens()
    kw = dict(metric="logit_diff", answers=random_answers(), method="eap-ig-inputs", steps=2)
    one = acdc.attribute(gpt2_model, clean, corrupt, positions=Positions.single(4, 6), **kw)
    plain = acdc.attribute(gpt2_model, clean, corrupt, **kw)
    assert torch.equal(one.values, plain.values)
    assert one.graph.edges[0].name == "input->a0.h0<q>@all"


@pytest.fixture(scope="module")
def zoo_ioi():
    import acdc

    return acdc.zoo.load("ioi")


def test_ioi_task_marks_the_papers_positions(zoo_ioi):
    t = zoo_ioi.task
    pos = t.positions
    assert pos.names == ("IO", "S1", "S1+1", "S2", "END", "other")
    words = [[zoo_ioi.tokenizer.decode([x]) for x in row] for row in t.clean.tolist()]
    for i in range(t.n_prompts):
        at = {n: int(pos.first_index(n)[i]) for n in pos.names[:-1]}
        assert words[i][at["S1"]] == words[i][at["S2"]] != words[i][at["IO"]]
        assert at["S1+1"] == at["S1"] + 1 and at["END"] == int(t.answer_pos[i])
        assert int(t.correct[i]) == int(t.clean[i, at["IO"]])  # the answer is the IO name


def test_positional_acdc_recovers_the_plant_at_its_positions(zoo_ioi):
    import acdc

    c = acdc.discover(zoo_ioi.model, zoo_ioi.task, threshold=0.05, positions="named", progress=False)
    assert c.graph.positions == zoo_ioi.task.positions.names
    r = acdc.recovery(c, zoo_ioi.positional_truth)
    assert (r.edges.tpr, r.edges.fpr) == (1.0, 0.0), sorted(c.edges)
    assert "a1.h0->a2.h0<q>@END" in c and "a1.h0->a2.h0<q>@S2" not in c


def test_positional_acdc_checkpoint_resumes_exactly(zoo_ioi, tmp_path):
    """One ACDC loop for both graphs: a positional run killed midway resumes to the uninterrupted result."""
    import json

    import acdc
    from acdc.algorithms.acdc import run_acdc
    from acdc.api import prepare

    kw = dict(threshold=1e-3, positions="named", progress=False)
    full = acdc.discover(zoo_ioi.model, zoo_ioi.task, **kw)
    path = tmp_path / "ck.json"
    patcher, metric, batch = prepare(zoo_ioi.model, zoo_ioi.task, positions="named")
    with pytest.raises(Killed):
        run_acdc(patcher, metric, batch, threshold=1e-3, checkpoint=path, checkpoint_every=0, callback=kill_after(60))
    saved = json.loads(path.read_text())
    assert not saved["done"] and 50 <= saved["n_tested"] < 60 and saved["removed"]
    resumed = acdc.discover(zoo_ioi.model, zoo_ioi.task, checkpoint=path, checkpoint_every=0, **kw)
    assert resumed.edges == full.edges and resumed.settings["n_tested"] == full.settings["n_tested"]
    assert torch.equal(resumed.scores.isnan(), full.scores.isnan())
    assert torch.allclose(resumed.scores.nan_to_num(), full.scores.nan_to_num(), atol=1e-5)
    assert resumed.settings["positions"] == list(zoo_ioi.task.positions.names)
    with pytest.raises(ValueError, match="made with other arguments"):  # the positions are part of the arguments
        acdc.discover(zoo_ioi.model, zoo_ioi.task, checkpoint=path, threshold=1e-3, positions="tokens", progress=False)


def test_positional_acdc_speculate_gives_the_same_circuit():
    """Speculation evaluates K candidates in one batched incremental pass: the same decisions, and the same
    scores up to rounding. In float64, so that rounding (float32's is ~1e-6 on a metric of 10) cannot hide
    a real difference."""
    import acdc

    entry = acdc.zoo.load("ioi")
    entry.model.to(torch.float64)
    one = acdc.discover(entry.model, entry.task, threshold=1e-3, positions="named", progress=False)
    four = acdc.discover(entry.model, entry.task, threshold=1e-3, positions="named", progress=False, speculate=4)
    assert four.edges == one.edges and four.settings["n_tested"] == one.settings["n_tested"]
    assert torch.allclose(four.scores.nan_to_num(), one.scores.nan_to_num(), atol=1e-9)


def test_one_position_covering_all_tokens_equals_the_plain_graph(zoo_ioi):
    """ACDC and EAP-IG on a single-position graph give the plain graph's circuit and scores."""
    import acdc

    e = zoo_ioi
    one = Positions.single(*e.task.clean.shape)
    plain = acdc.discover(e.model, e.task, threshold=0.05, progress=False)
    single = acdc.discover(e.model, e.task, threshold=0.05, positions=one, progress=False)
    assert [n.removesuffix("@all") for n in single.edges] == plain.edges
    tested = ~plain.scores.isnan()
    assert torch.equal(tested, ~single.scores.isnan())
    assert torch.allclose(single.scores[tested], plain.scores[tested], atol=1e-5)
    a = acdc.attribute(e.model, e.task, method="eap-ig-inputs", positions=one)
    b = acdc.attribute(e.model, e.task, method="eap-ig-inputs")
    assert torch.equal(a.values, b.values)


def _words(tok, task, i):
    return [tok.decode([x]) for x in task.clean[i].tolist()]


def test_tasks_name_their_positions(gpt2_tokenizer):
    import acdc

    t = acdc.tasks.greater_than(gpt2_tokenizer, 6)
    assert t.positions.names == ("NOUN", "YY", "END", "other")
    for i in range(6):
        w = _words(gpt2_tokenizer, t, i)
        at = {n: int(t.positions.first_index(n)[i]) for n in ("NOUN", "YY", "END")}
        assert w[at["YY"] - 1] == " 17" and len(w[at["YY"]]) == 2 and at["END"] == int(t.answer_pos[i])
        assert w[at["NOUN"] + 1] == " lasted"
    d = acdc.tasks.docstring(gpt2_tokenizer, 4)
    assert d.positions.names == ("A_def", "B_def", "C_def", "A_doc", "B_doc", "END", "other")
    for i in range(4):
        w = _words(gpt2_tokenizer, d, i)
        at = {n: int(d.positions.first_index(n)[i]) for n in d.positions.names[:-1]}
        assert w[at["A_def"]] == w[at["A_doc"]] and w[at["B_def"]] == w[at["B_doc"]]
        assert gpt2_tokenizer.decode([int(d.correct[i])]) == w[at["C_def"]]  # the answer is C
    ind = acdc.tasks.induction(50, 3, half=4, bos=0)
    assert ind.positions.index[0].tolist() == [2, 0, 0, 0, 0, 1, 1, 1, 1]


def test_from_pairs_positions_by_substring_and_index(gpt2_tokenizer):
    from acdc import Task

    pairs = [("When Mary and John went out, John gave it to", "When Anna and Bert went out, Carl gave it to", " Mary", " John"),
             ("Then John and Mary left. Mary said to", "Then Anna and Bert left. Carl said to", " John", " Mary")]
    t = Task.from_pairs(pairs, gpt2_tokenizer, positions={"S2": [", John", ". Mary"], "END": -1, "first": 1})
    assert t.positions.names == ("S2", "END", "first", "other")
    assert [_words(gpt2_tokenizer, t, i)[int(t.positions.first_index("S2")[i])] for i in range(2)] == [" John", " Mary"]
    assert t.positions.first_index("END").tolist() == t.answer_pos.tolist()
    assert t.positions.example[:3] == (" John", " to", "When")
    with pytest.raises(ValueError, match="'Bob' is not in"):
        Task.from_pairs(pairs, gpt2_tokenizer, positions={"X": "Bob"})
    with pytest.raises(ValueError, match="token 40 is outside"):
        Task.from_pairs(pairs, gpt2_tokenizer, positions={"X": 40})


def test_positional_circuit_json_and_grid_rendering(zoo_ioi, tmp_path):
    import json

    import acdc
    from acdc.render import dot_available, to_dot

    c = acdc.discover(zoo_ioi.model, zoo_ioi.task, threshold=0.05, positions="named", progress=False)
    path = c.to_json(tmp_path / "c.json")
    d = json.loads(path.read_text())
    assert d["cfg"]["positions"] == ["IO", "S1", "S1+1", "S2", "END", "other"]
    assert d["edges"]["a1.h0->a2.h0<q>@END"]["in_graph"] is True
    assert d["acdc"]["settings"]["position_labels"][:5] == list(zoo_ioi.task.positions.example[:5])
    assert acdc.Circuit.from_json(path) == c
    src = to_dot(c, classes=zoo_ioi.truth).source
    assert '"a0.h0@S2"' in src and '"a0.h0@S1"' in src and "attend:a0.h0@S1->S2" in src
    assert "col:END" in src and "a2.h0@IO" in src
    if dot_available():
        assert acdc.render(c, tmp_path / "c.png").stat().st_size > 1000


def test_faithfulness_at_circuit_positions_vs_all(zoo_ioi):
    """Keeping the circuit's edges only at its positions vs at every position, each an exact patched run."""
    import acdc

    e = zoo_ioi
    c = acdc.discover(e.model, e.task, threshold=0.05, positions="named", progress=False)
    at_circuit = acdc.faithfulness(e.model, e.task, c)
    at_all = acdc.faithfulness(e.model, e.task, c, at="all")
    assert at_circuit.settings["at"] == "circuit" and at_all.settings["at"] == "all"
    p = acdc.Patcher(e.model, e.task, graph=c.graph)
    m = acdc.metrics.resolve_metric("logit_diff")
    batch = acdc.api.make_batch(p, e.task.answers)
    assert at_circuit.circuit_metric == pytest.approx(m(p.logits(c), batch), abs=1e-6)
    # "all": the plain circuit with the same edges, on the plain graph
    plain_edges = sorted({n.split("@")[0] for n in c.edges})
    plain = acdc.faithfulness(e.model, e.task, plain_edges)
    assert at_all.circuit_metric == pytest.approx(plain.circuit_metric, abs=1e-5)
    assert at_all.settings["circuit_edges"] == 6 * len(plain_edges)
    grid = acdc.faithfulness_grid(e.model, e.task, c, grid=[{}, {"at": "all"}])
    assert [grid.label(f) for f in grid.rows] == ["usual", "at all positions"]


def test_a_positional_circuit_at_any_position_and_against_a_plain_truth():
    """Collapsed to the plain graph, an edge is kept if kept at some position and scores its largest
    magnitude; recovery against a truth without positions counts it found there."""
    import acdc
    from acdc.circuit import Circuit

    g = Graph(2, 2, positions=["A", "B", "END"])
    kept = torch.zeros(g.n_edges, dtype=torch.bool)
    scores = torch.full((g.n_edges,), float("nan"), dtype=torch.float64)
    i, j = g.edge_index("a0.h1->logits@B"), g.edge_index("a0.h1->logits@A")
    kept[i], scores[i], scores[j] = True, 0.2, -0.5
    c = Circuit(g, kept, scores).at_any_position()
    assert c.graph.positions is None and c.edges == ["a0.h1->logits"]
    assert c.edge_score("a0.h1->logits") == -0.5 and bool(c.scores.isnan().sum() == c.graph.n_edges - 1)
    truth = acdc.known.KnownCircuit(name="t", graph_config=g.plain.config(), edges=("a0.h1->logits", "input->logits"), classes={})
    r = acdc.recovery(Circuit(g, kept, scores), truth)
    assert (r.edges.tp, r.edges.fp, r.edges.fn) == (1, 0, 1)
