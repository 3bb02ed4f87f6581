"""Attribution graphs: every edge equals the direct effect measured in the frozen model (the slow
way: one explicit frozen forward per source, written from Hugging Face's GPT-2 weights), the
planted feature circuit comes out, pruning follows circuit-tracer's definitions, files load back."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_gpt2
from test_features import random_set

import acdc
from acdc.algorithms.attribution_graph import build_attribution_graph
from acdc.attribution_graphs import AttributionGraph, prune
from acdc.model import Transformer


def _frozen_oracle(model, ts, tokens: torch.Tensor, g: AttributionGraph, skip_first: bool = True, targets=None) -> torch.Tensor:
    """The adjacency measured the slow way: the local replacement model of ``tokens`` run forward by
    hand from the Hugging Face GPT-2's modules (attention patterns and LayerNorm denominators fixed
    at their clean values, each MLP's output fixed except its transcoder's skip path), once with
    every node and once per source with that source's vector taken out of the stream; a target's
    value is its encoder pre-activation (a feature) or its demeaned logit (a logit node). ``ts``: per-layer
    transcoders, or a cross-layer transcoder (a feature's vectors are then its writes into its layer's MLP
    output and every later one's, with per-target offsets (a + offset) times each decoder; layer j's error is its MLP
    minus the CLT's reconstruction there; cross-layer skip paths stay live as the own layer's does). ``targets``:
    the graph's target nodes when they are not its top logits (token ids or `acdc.Target`s: a Target's value is its
    vector dotted with the stream after its layer, or with the final norm's output, at its position)."""
    from acdc.transcoders import CrossLayerTranscoder

    hf = model.original_model
    blocks, S, H = hf.transformer.h, len(tokens), model.cfg.n_heads
    d = model.cfg.d_model
    dh = d // H
    cross = isinstance(ts, CrossLayerTranscoder)
    raw = cross and ts.cfg.reads == "stream"

    def ln(x, mod, scale):
        return (x - x.mean(-1, keepdim=True)) / scale * mod.weight + mod.bias

    def scale_of(x, mod):
        return (x.var(-1, unbiased=False, keepdim=True) + mod.eps).sqrt()

    def read(layer, xn, x_mid):  # what layer's features read
        return x_mid if raw else xn

    def encode(layer, x):
        return ts.encode(layer, x) if cross else ts[layer].encode(x)

    def with_offsets(src, j, a):  # a CLT's activations [..., n] of layer src as they write into layer j
        if not cross or ts.offset is None:
            return a
        return a + ts.offset[src][:, j - src] * (a > 0)

    def w_skip(layer):
        if cross:
            return None if ts.W_skip is None else ts.W_skip[layer]
        t = ts.transcoders.get(layer)
        return None if t is None else t.W_skip

    with torch.no_grad():  # the clean run: what gets frozen
        x = hf.transformer.wte.weight[tokens] + hf.transformer.wpe.weight[:S]
        frozen = []
        for b in blocks:
            s1 = scale_of(x, b.ln_1)
            q, k, v = (ln(x, b.ln_1, s1) @ b.attn.c_attn.weight + b.attn.c_attn.bias).split(d, -1)
            q, k = q.view(S, H, dh).transpose(0, 1), k.view(S, H, dh).transpose(0, 1)
            att = (q @ k.transpose(-1, -2)) / dh**0.5
            att = att.masked_fill(~torch.ones(S, S, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
            v = v.view(S, H, dh).transpose(0, 1)
            x_mid = x + (att @ v).transpose(0, 1).reshape(S, d) @ b.attn.c_proj.weight + b.attn.c_proj.bias
            s2 = scale_of(x_mid, b.ln_2)
            xn = ln(x_mid, b.ln_2, s2)
            out = b.mlp(xn)
            frozen.append((s1, att, s2, out, xn, x_mid))
            x = x_mid + out
        sf = scale_of(x, hf.transformer.ln_f)
        clean_acts = {layer: encode(layer, read(layer, f[4], f[5])) for layer, f in enumerate(frozen)} if cross else {}

    names = g.node_names()

    def vectors_of(name: str) -> list[tuple[str, int, int, torch.Tensor]]:
        """Where it writes ("mlp"/"embed", layer, position) and its vector there, for each place it writes."""
        kind, pos = name.split("@")
        pos = int(pos)
        if kind == "input":
            return [("embed", -1, pos, hf.transformer.wte.weight[tokens[pos]])]
        layer_s, unit = kind[1:].split(".")
        layer = int(layer_s)
        s1, att, s2, out, xn, x_mid = frozen[layer]
        if unit == "err":
            if skip_first and pos == 0:
                return [("mlp", layer, pos, torch.zeros(d))]
            if cross:
                recon = ts.b_dec[layer] + sum(with_offsets(src, layer, clean_acts[src][pos]) @ ts.decoder(src, layer)
                                              for src in range(layer + 1))
                ws = w_skip(layer)
                for src in range(layer if ts.W_skip_cross is not None else 0):  # earlier layers' skip paths into this MLP
                    recon = recon + frozen[src][4][pos] @ ts.W_skip_cross[src][layer - src - 1]
                return [("mlp", layer, pos, out[pos] - recon - (0 if ws is None else xn[pos] @ ws))]
            if layer not in ts.transcoders:
                return [("mlp", layer, pos, out[pos])]
            return [("mlp", layer, pos, out[pos] - ts[layer](xn[pos]))]
        f = int(unit[1:])
        if cross:
            a = clean_acts[layer][pos]
            return [("mlp", j, pos, with_offsets(layer, j, a)[f] * ts.decoder(layer, j)[f]) for j in range(layer, len(blocks))]
        a = ts[layer].encode(xn[pos])[f]
        return [("mlp", layer, pos, a * ts[layer].W_dec[f])]

    def run(removed: str | None) -> torch.Tensor:
        """Every target's value, with ``removed``'s vectors out of the stream."""
        taken = vectors_of(removed) if removed is not None else []
        with torch.no_grad():
            x = hf.transformer.wte.weight[tokens] + hf.transformer.wpe.weight[:S]
            for where, _, at_pos, vec in taken:
                if where == "embed":
                    x = x.clone()
                    x[at_pos] -= vec
            values = torch.zeros(g.n_nodes)
            xns = []  # each layer's normed MLP input in this run (cross-layer skip paths read them)
            for layer, b in enumerate(blocks):
                s1, att, s2, out, xn_clean, _ = frozen[layer]
                _, _, v = (ln(x, b.ln_1, s1) @ b.attn.c_attn.weight + b.attn.c_attn.bias).split(d, -1)
                v = v.view(S, H, dh).transpose(0, 1)
                x_mid = x + (att @ v).transpose(0, 1).reshape(S, d) @ b.attn.c_proj.weight + b.attn.c_proj.bias
                xn = ln(x_mid, b.ln_2, s2)
                for i in range(g.n_features):
                    fl, fp, ff = g.features[i].tolist()
                    if fl == layer:
                        enc = ts.W_enc[layer][:, ff] if cross else ts[layer].W_enc[:, ff]
                        values[i] = enc @ read(layer, xn, x_mid)[fp]
                mlp = out.clone()
                ws = w_skip(layer)
                if ws is not None:  # the skip path stays live
                    mlp = mlp - xn_clean @ ws + xn @ ws
                xns.append(xn)
                for src in range(layer if cross and ts.W_skip_cross is not None else 0):  # and so do those into it
                    mlp = mlp + (xns[src] - frozen[src][4]) @ ts.W_skip_cross[src][layer - src - 1]
                for where, at_layer, at_pos, vec in taken:
                    if where == "mlp" and at_layer == layer:
                        mlp[at_pos] -= vec
                x = x_mid + mlp
                for k, t in enumerate(targets or []):
                    if isinstance(t, acdc.Target) and t.layer == layer:
                        values[g.logit_start + k] = t.vector @ x[t.position]
            final_all = ln(x, hf.transformer.ln_f, sf)
            final = final_all[-1]
            W_U = hf.lm_head.weight.T
            for k, tok in enumerate(g.logit_tokens.tolist()):
                t = None if targets is None else targets[k]
                if isinstance(t, acdc.Target):
                    if t.layer is None:
                        values[g.logit_start + k] = t.vector @ final_all[t.position]
                else:
                    values[g.logit_start + k] = (W_U[:, tok] - W_U.mean(1)) @ final
        return values

    base = run(None)
    A = torch.zeros(g.n_nodes, g.n_nodes)
    for s, name in enumerate(names):
        if s < g.logit_start:
            A[:, s] = base - run(name)
    A[g.error_start : g.logit_start] = 0  # only features and logits are targets
    return A


@pytest.mark.parametrize("layers, activation, skip", [((0, 1, 2), "topk", True), ((0, 2), "relu", False), ((1,), "jumprelu", True)])
def test_every_edge_is_the_measured_direct_effect(layers, activation, skip):
    model = tiny_gpt2(n_layer=3, n_head=2, d=16)
    tf = Transformer.from_bridge(model)
    ts = random_set(model, layers, activation, skip)
    tokens = torch.tensor([3, 7, 1, 9, 4, 4])
    g = build_attribution_graph(tf, tokens, ts, batch_size=5)  # several batches, mixed layers
    want = _frozen_oracle(model, ts, tokens, g)
    assert g.n_features > 5 and bool((g.features[:, 1] > 0).all())  # no features at the first position
    assert float(want.abs().max()) > 0.1
    assert torch.allclose(g.adjacency, want, atol=2e-4, rtol=1e-4), float((g.adjacency - want).abs().max())
    # the layout: features sorted by (layer, position, feature); errors layer-major; tokens; logits by probability
    keys = [tuple(r) for r in g.features.tolist()]
    assert keys == sorted(keys) and g.node_name(g.error_start + 1) == "m0.err@1" and g.node_name(g.token_start) == "input@0"
    assert bool((g.logit_probs[:-1] >= g.logit_probs[1:]).all()) and g.n_logits <= 10


def test_logits_follow_circuit_tracers_choice():
    """Up to max_logits tokens, until their probability reaches logit_prob: the smallest such prefix."""
    model = tiny_gpt2(n_layer=2, n_head=2, d=16)
    tf = Transformer.from_bridge(model)
    ts = random_set(model, (0,), "topk", False)
    tokens = torch.tensor([3, 7, 1, 9])
    probs = model(tokens[None])[0, -1].softmax(-1)
    top = probs.sort(descending=True).values
    for p, cap in ((0.3, 10), (0.95, 10), (0.95, 3), (1.0, 50)):
        g = build_attribution_graph(tf, tokens, ts, logit_prob=p, max_logits=cap)
        want = min(int((top.cumsum(0) < p).sum()) + 1, cap)
        assert g.n_logits == want, (p, cap)
        assert torch.allclose(g.logit_probs, top[:want], atol=1e-6)


def test_custom_targets_are_explained_as_the_frozen_model_measures_them():
    """Targets other than the top logits (circuit-tracer's attribution_targets, and any direction after any layer):
    token ids, a logit difference through the final norm, a vector read from the stream after layer 1 at position 3,
    each row the direct effects measured in the frozen model; the logit difference's row is the two tokens' rows'
    difference (the demeaning cancels), and a target after layer 1 gets nothing from layer 2's features."""
    model = tiny_gpt2(n_layer=3, n_head=2, d=16)
    tf = Transformer.from_bridge(model)
    ts = random_set(model, (0, 1, 2), "topk", True)
    tokens = torch.tensor([3, 7, 1, 9, 4, 4])
    gen = torch.Generator().manual_seed(3)
    probe = acdc.Target("a probe", torch.randn(16, generator=gen), layer=1, position=3, weight=0.5)
    diff = acdc.logit_diff_target(model, 5, 17)
    targets = [5, 17, diff, probe]
    g = build_attribution_graph(tf, tokens, ts, batch_size=4, targets=targets)
    want = _frozen_oracle(model, ts, tokens, g, targets=targets)
    assert g.n_logits == 4 and g.logit_strs[2] == "logit(5)-logit(17)" and g.logit_strs[3] == "a probe"
    assert g.logit_tokens.tolist() == [5, 17, 50 + 2, 50 + 3]  # custom targets: ids past the vocabulary
    probs = model(tokens[None])[0, -1].softmax(-1)
    assert torch.allclose(g.logit_probs, torch.tensor([float(probs[5]), float(probs[17]), 1.0, 0.5]), atol=1e-6)
    assert float(want[g.logit_start :].abs().max()) > 0.1
    assert torch.allclose(g.adjacency, want, atol=2e-4, rtol=1e-4), float((g.adjacency - want).abs().max())
    rows = g.adjacency[g.logit_start :]
    assert torch.allclose(rows[2], rows[0] - rows[1], atol=1e-4)
    layer2 = (g.features[:, 0] == 2).nonzero().squeeze(1)
    assert len(layer2) and float(rows[3, layer2].abs().max()) == 0.0
    assert float(rows[3, (g.features[:, 0] == 1).nonzero().squeeze(1)].abs().max()) > 0  # layer 1's features do reach it
    with pytest.raises(ValueError, match="layer 3 does not exist"):
        build_attribution_graph(tf, tokens, ts, targets=[acdc.Target("x", torch.zeros(16), layer=3)])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        build_attribution_graph(tf, tokens, ts, targets=[50])


def test_rows_are_read_in_blocks_of_bounded_size_with_the_same_sums(monkeypatch):
    """|rows| are summed a block at a time into one buffer: a block holds at most 2^26 entries however long the rows
    (a 1,024-token prompt's rows have 525k columns), and at least one row; the sums are those of the whole matrix."""
    from acdc import attribution_graphs as ag

    A = torch.randn(10, 7)
    got = [(i, a.clone()) for i, a in ag._abs_blocks(A, block=3)]
    assert [i for i, _ in got] == [0, 3, 6, 9] and torch.equal(torch.cat([a for _, a in got]), A.abs())
    monkeypatch.setattr(ag, "_BLOCK_ENTRIES", 12)  # the rule at its edges, on small rows
    for cols, rows in ((4, 3), (3, 4), (5, 2), (12, 1), (13, 1)):
        A = torch.randn(7, cols)
        blocks = list((i, len(a)) for i, a in ag._abs_blocks(A))
        assert max(n for _, n in blocks) == rows and [i for i, _ in blocks] == list(range(0, 7, rows)), (cols, blocks)
    B = torch.randn(50, 40)
    assert torch.allclose(ag._row_sums(B), B.abs().sum(1))


def test_partial_influences_by_hand_and_by_the_definition():
    """Nodes [f0, f1, err, tok, logit]; the logit's row reads f0 (3) and f1 (-1), f0's row reads tok (2) and err (-2):
    influence f0 0.75, f1 0.25, err and tok 0.375 each (f1 has no row: it passes nothing on). And on random rows of a
    DAG, the same as circuit-tracer's definition walked literally (the whole normalised rows at every step)."""
    from acdc.attribution_graphs import partial_influences

    rows = torch.tensor([[3.0, -1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -2.0, 2.0, 0.0]])
    got = partial_influences(rows, torch.tensor([1.0]), torch.tensor([4, 0]))
    assert torch.allclose(got, torch.tensor([0.75, 0.25, 0.375, 0.375, 0.0]))
    gen = torch.Generator().manual_seed(0)
    n, n_l = 40, 3
    nodes = torch.cat([torch.arange(n - n_l, n), torch.randperm(30, generator=gen)[:12]])  # logits, then 12 visited
    R = torch.randn(len(nodes), n, generator=gen) * (torch.rand(len(nodes), n, generator=gen) < 0.4)
    for i, v in enumerate(nodes.tolist()):  # a DAG: a node reads only nodes below it
        R[i, v:] = 0
    probs = torch.tensor([0.5, 0.3, 0.2])
    norm = R.abs() / R.abs().sum(1, keepdim=True).clamp(min=1e-8)
    prod, want = torch.zeros(n), torch.zeros(n)
    prod[-n_l:] = probs
    for _ in range(100):
        prod = prod[nodes] @ norm
        if not prod.any():
            break
        want += prod
    assert torch.allclose(partial_influences(R, probs, nodes), want, atol=1e-6) and float(want.max()) > 0.1


@pytest.mark.parametrize("cap, interval", [(7, 1), (13, 2), (20, 4)])
def test_max_feature_nodes_keeps_circuit_tracers_choice_of_features_with_their_exact_edges(cap, interval):
    """With max_feature_nodes, the features visited are circuit-tracer's choice: after the logits, the unvisited
    features most influential through the rows computed so far (`partial_influences`), re-ranked every
    ``update_interval`` batches, simulated here on the whole graph's rows; the graph keeps them, and every edge among
    what it keeps equals the whole graph's (the others' columns dropped)."""
    from acdc.attribution_graphs import partial_influences

    model = tiny_gpt2(n_layer=3, n_head=2, d=16)
    tf = Transformer.from_bridge(model)
    ts = random_set(model, (0, 1, 2), "topk", True)
    tokens = torch.tensor([3, 7, 1, 9, 4, 4])
    whole = build_attribution_graph(tf, tokens, ts, batch_size=3)
    n_f, n = whole.n_features, whole.n_nodes
    assert n_f > cap + 5
    # circuit-tracer's loop on the whole graph's rows
    rows = [whole.adjacency[whole.logit_start + i] for i in range(whole.n_logits)]
    nodes = list(range(whole.logit_start, n))
    visited: list[int] = []
    while len(visited) < cap:
        infl = partial_influences(torch.stack(rows), whole.logit_probs, torch.tensor(nodes))
        rank = [i for i in infl[:n_f].argsort(descending=True).tolist() if i not in visited]
        for i in rank[: min(interval * 3, cap - len(visited))]:
            visited.append(i)
            rows.append(whole.adjacency[i])
            nodes.append(i)
    g = build_attribution_graph(tf, tokens, ts, batch_size=3, max_feature_nodes=cap, update_interval=interval)
    kept = sorted(visited)
    assert g.n_features == cap and torch.equal(g.features, whole.features[kept])
    assert torch.equal(g.activations, whole.activations[kept]) and g.info["active_features"] == n_f
    cols = torch.tensor(kept + list(range(n_f, n)))
    want = torch.zeros(len(cols), len(cols))
    want[:cap] = whole.adjacency[kept][:, cols]
    want[-whole.n_logits :] = whole.adjacency[whole.logit_start :][:, cols]
    assert torch.allclose(g.adjacency, want, atol=1e-6), float((g.adjacency - want).abs().max())
    assert g.node_name(g.error_start) == whole.node_name(whole.error_start)
    every = build_attribution_graph(tf, tokens, ts, batch_size=3, max_feature_nodes=n_f + 10)  # more than there are: the whole graph
    assert torch.equal(every.adjacency, whole.adjacency)


def test_a_graph_that_will_not_fit_is_refused_naming_what_fits():
    """The estimate is printed before the backward passes, and a graph over max_memory_gb is refused in one line that
    names a max_feature_nodes within it; with that cap the graph is built and its estimate is within the budget."""
    import re

    from acdc.algorithms.attribution_graph import GraphMemory

    model = tiny_gpt2(n_layer=3, n_head=2, d=16)
    tf = Transformer.from_bridge(model)
    ts = random_set(model, (0, 1, 2), "topk", True)
    tokens = torch.tensor([3, 7, 1, 9, 4, 4])
    whole = build_attribution_graph(tf, tokens, ts, max_memory_gb=float("inf"))
    budget = whole.info["memory_estimate_gb"] - 0.4 * whole.info["memory_estimate_bytes"]["rows"] / 1e9  # 60% of the rows
    with pytest.raises(MemoryError, match=r"max_feature_nodes=(\d+) fits") as err:
        build_attribution_graph(tf, tokens, ts, max_memory_gb=budget)
    fits = int(re.search(r"max_feature_nodes=(\d+)", str(err.value)).group(1))
    assert 0 < fits < whole.n_features
    g = build_attribution_graph(tf, tokens, ts, max_memory_gb=budget, max_feature_nodes=fits)
    assert g.n_features == fits and g.info["memory_estimate_gb"] <= budget
    with pytest.raises(MemoryError):  # one more feature is over
        build_attribution_graph(tf, tokens, ts, max_memory_gb=budget, max_feature_nodes=fits + 1)
    # the rows and the adjacency, by hand: 4 bytes per entry
    m = GraphMemory.of(n_f=100, cap=10, S=5, L=2, d=8, n_l=3, batch=4, widest={0: 2, 1: 3})
    n = 100 + 3 * 5 + 3
    assert m.rows == 4 * 13 * n and m.adjacency == 4 * (10 + 15 + 3) ** 2
    # the features' decoder rows: one gathered block (the widest layer, 3 a position) and one gradient by position, every
    # source layer's sums and a product's two copies (4 rows a batch), and per feature slot two int64 indices and a value
    assert m.writes == 4 * 5 * (3 * 8 + 4 * 8) + 4 * 5 * 4 * (5 + 2 * 3) + (16 + 4) * 5 * 5


@pytest.fixture(scope="module")
def chain():
    return acdc.zoo.load("feature-chain")


def test_the_planted_feature_circuit_is_the_pruned_graph(chain):
    """In the feature-chain zoo model, the prompt's class feature in m0 drives the class feature in m1 through
    a1.h0's frozen pattern, which drives the answer: pruning keeps exactly that chain of features."""
    tokens = chain.task.clean[0]
    g = acdc.attribution_graph(chain.model, tokens, transcoders=chain.transcoders)
    k = int(tokens[1]) - 2  # item id -> its class: items are words 2.., class = index % 4
    k = k % 4
    src, mid = f"m0.f{k}@1", f"m1.f{k}@2"
    assert g.edge(src, mid) > 1.0 and g.edge(mid, f"logit@{int(chain.task.correct[0])}") > 1.0
    assert g.edge("input@1", src) > 1.0
    kept = g.prune()
    names = [g.node_name(i) for i in kept.node_mask.nonzero().squeeze(1).tolist()]
    feats = [n for n in names if ".f" in n]
    assert feats == [src, mid], names
    assert g.replacement_score > 0.99 and g.completeness_score > 0.99  # exact transcoders: the errors are zero


def test_prune_matches_circuit_tracers_definitions_on_a_hand_built_graph():
    """A 5-node graph (2 features, 1 error node and 1 token of a 1-layer model at one position, 1 logit)
    with known direct effects: node influence is the logit's weight pushed back through the
    row-normalised |A|; the weakest feature falls below an 0.8 node threshold."""
    # nodes: f0, f1 | err@0 | input@0 | logit
    A = torch.zeros(5, 5)
    A[4, 0], A[4, 1], A[4, 2], A[4, 3] = 3.0, -1.0, 0.5, 0.5  # into the logit
    A[0, 3], A[0, 2] = 2.0, 2.0  # f0 reads the token and the error
    A[1, 3] = 1.0
    g = AttributionGraph(torch.tensor([5]), ["x"], torch.tensor([[0, 0, 7], [0, 0, 9]]), torch.tensor([1.0, 2.0]),
                         torch.tensor([11]), torch.tensor([1.0]), A, n_layers=1)
    # row-normalised: logit row |.|/5 = (0.6, 0.2, 0.1, 0.1); f0 row (0, 0, 0.5, 0.5); f1 row token 1
    # influence = w A + w A^2: f0 0.6, f1 0.2, err 0.1 + 0.6*0.5 = 0.4, token 0.1 + 0.3 + 0.2 = 0.6
    p = prune(g, node_threshold=0.8, edge_threshold=1.0)
    # sorted influences (0.6 f0, 0.6 token, 0.4 err, 0.2 f1, 0 logit): 0.8 of 1.8 is reached at err
    assert p.node_mask.tolist() == [True, False, True, True, True]
    assert g.replacement_score == pytest.approx(0.6 / (0.6 + 0.4))
    # completeness: non-error input fraction weighted by influence + logit weight
    # rows: f0 0.5 non-error (weight 0.6), f1 1 (0.2), err 1 (0.4), token 1 (0.6), logit 0.9 (0 + 1)
    want = (0.5 * 0.6 + 1 * 0.2 + 1 * 0.4 + 1 * 0.6 + 0.9 * 1.0) / (0.6 + 0.2 + 0.4 + 0.6 + 1.0)
    assert g.completeness_score == pytest.approx(want)
    with pytest.raises(ValueError, match="node_threshold must lie in"):
        prune(g, node_threshold=1.5)


def _asymmetric_graph() -> AttributionGraph:
    """5 nodes (f0, f1 | err@0 | token@0 | logit) whose sources and targets carry clearly different influence;
    every number below is a dyadic fraction, exact in float32, so a cut that lands exactly on a cumulative
    share is pinned too."""
    A = torch.zeros(5, 5)
    A[4, 0], A[4, 1] = 3.0, 1.0  # logit <- f0, f1: row-normalised 0.75, 0.25
    A[0, 3] = 1.0  # f0 <- token: 1
    A[1, 3], A[1, 2] = 1.0, 1.0  # f1 <- token, err: 0.5, 0.5
    return AttributionGraph(torch.tensor([5]), ["x"], torch.tensor([[0, 0, 7], [0, 0, 9]]), torch.tensor([1.0, 2.0]),
                            torch.tensor([11]), torch.tensor([1.0]), A, n_layers=1)


TWO_EDGES = [(0, 3), (4, 0)]  # f0 <- token, logit <- f0
EVERY_EDGE = [(0, 3), (1, 2), (1, 3), (4, 0), (4, 1)]


@pytest.mark.parametrize(("edge_threshold", "edges", "nodes"), [
    # By hand: influence (the logit's weight 1 pushed back through the row-normalised |A|): f0 0.75, f1 0.25,
    # err 0.25 * 0.5 = 0.125, token 0.75 + 0.125 = 0.875. An edge scores its normalised weight times its
    # TARGET's influence plus the target's logit weight: logit<-f0 0.75 x 1, logit<-f1 0.25 x 1, f0<-token
    # 1 x 0.75, f1<-token 0.5 x 0.25 = 0.125, f1<-err 0.125; total 2, sorted cumulative 0.375, 0.75, 0.875,
    # 0.9375, 1. The cut is the score at which the sorted scores first hold the threshold.
    (0.5, TWO_EDGES, [True, False, False, True, True]),  # cut 0.75: the two 0.75 edges; f1 and err then dangle
    # exactly 0.875: cut 0.25 (not one score further): logit<-f1 is kept, but f1 has no incoming edge, so it goes
    (0.875, TWO_EDGES, [True, False, False, True, True]),
    (0.9, EVERY_EDGE, [True] * 5),  # cut 0.125: every edge, every node
    # Scored by the SOURCE's influence instead (f0<-token 0.875, logit<-f0 0.5625, f1<-token 0.4375,
    # logit<-f1 0.0625, f1<-err 0.0625), 0.9 would cut at 0.4375 and end with the two edges; a cut one score
    # further at 0.875 would keep every edge.
])
def test_edges_are_pruned_by_their_targets_influence(edge_threshold, edges, nodes):
    g = _asymmetric_graph()
    assert g.influence().tolist() == [0.75, 0.25, 0.125, 0.875, 0.0]
    p = prune(g, node_threshold=1.0, edge_threshold=edge_threshold)
    assert [tuple(e) for e in p.edge_mask.nonzero().tolist()] == edges
    assert p.node_mask.tolist() == nodes


def test_files_load_back(chain, tmp_path):
    g = acdc.attribution_graph(chain.model, chain.task.clean[1], transcoders=chain.transcoders)
    back = AttributionGraph.load(g.save(tmp_path / "g"))
    assert torch.equal(back.adjacency, g.adjacency) and back.node_names() == g.node_names()
    doc = json.loads(g.to_json(tmp_path / "ct.json").read_text())
    ids = {n["node_id"] for n in doc["nodes"]}
    assert {"metadata", "qParams", "nodes", "links"} <= set(doc) and doc["metadata"]["slug"] == "ct"
    assert all(link["source"] in ids and link["target"] in ids for link in doc["links"])
    k = (int(chain.task.clean[1][1]) - 2) % 4
    assert f"0_{k}_1" in ids and f"1_{k}_2" in ids and any(n["feature_type"] == "logit" and n["is_target_logit"] for n in doc["nodes"])


@pytest.mark.parametrize("family", ["llama", "gemma", "qwen3", "phi3", "qwen3-moe", "gemma2", "gemma3", "olmo2", "olmoe", "gpt-oss"])
def test_rms_models_backward_is_the_frozen_forwards_transpose(family):
    """RMSNorm families (grouped-query attention, Gemma's scaled embedding): every edge equals the change
    of its target in `FrozenRun.forward` (the frozen model run forward) when the source's vector is taken out."""
    from test_families import _tiny

    from acdc.linearised import FrozenRun

    model = acdc.load_model(_tiny(family, n_kv=2))
    tf = Transformer.from_bridge(model)
    ts = random_set(model, (0, 1), "relu", True)
    tokens = torch.tensor([3, 7, 1, 9, 4])
    g = build_attribution_graph(tf, tokens, ts, batch_size=7)
    fr = FrozenRun.of(tf, tokens, {layer: ts[layer].W_skip.detach() for layer in ts.layers})
    consts = fr.mlp_out.clone()
    for layer in ts.layers:  # the frozen forward adds the skip path itself
        consts[layer] -= tf.mlp_input(layer, fr.resid_mid[layer]) @ ts[layer].W_skip.detach()
    W_U = tf.w["W_U"]

    def values(mlp: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        mids, final = fr.forward(mlp, emb)
        out = torch.zeros(g.n_nodes)
        for i, (layer, pos, f) in enumerate(g.features.tolist()):  # the encoder read through the frozen norm
            xn = fr.norm(mids[layer][pos : pos + 1], tf.w["ln2_w"][layer], tf.w["ln2_b"][layer], fr.scale2[layer][pos : pos + 1])[0]
            out[i] = ts[layer].W_enc[:, f] @ xn
        last = fr.norm(final[-1:], tf.w["lnf_w"], tf.w["lnf_b"], fr.scale_f[-1:])[0]
        for k, tok in enumerate(g.logit_tokens.tolist()):
            out[g.logit_start + k] = (W_U[:, tok] - W_U.mean(1)) @ last
        return out

    emb0 = fr.resid_pre[0].clone()
    base = values(consts, emb0)
    uncapped = tf.ln(fr.resid_pre[-1][-1:], "lnf") @ W_U + tf.w["b_U"]  # the logit nodes read logits before any soft cap
    assert torch.allclose(base[g.logit_start:] + W_U.mean(1) @ tf.ln(fr.resid_pre[-1][-1], "lnf"),
                          uncapped[0][g.logit_tokens], atol=1e-4)  # frozen = the model here
    tok_vecs = fr.token_vectors()
    for s in range(g.logit_start):
        mlp, emb = consts.clone(), emb0.clone()
        name = g.node_name(s)
        kind, pos = name.split("@")
        pos = int(pos)
        if kind == "input":
            emb[pos] -= tok_vecs[pos]
        else:
            layer = int(kind[1:].split(".")[0])
            if ".err" in kind:
                xn = tf.mlp_input(layer, fr.resid_mid[layer][pos])
                vec = torch.zeros_like(xn) if pos == 0 else fr.mlp_out[layer][pos] - ts[layer](xn)
            else:
                f = int(kind.split(".f")[1])
                xn = tf.mlp_input(layer, fr.resid_mid[layer][pos])
                vec = ts[layer].encode(xn)[f] * ts[layer].W_dec[f]
            mlp[layer, pos] -= vec
        want = base - values(mlp, emb)
        want[g.error_start : g.logit_start] = 0
        assert torch.allclose(g.adjacency[:, s], want, atol=2e-4, rtol=1e-4), (name, float((g.adjacency[:, s] - want).abs().max()))


def test_intervening_on_a_feature_moves_its_targets_as_its_edges_say(chain):
    """The replacement model with no edit is the model; ablating the prompt's class feature of m0 moves the
    class feature of m1 it drives by the edge weight (one hop, a positional head, a near-linear LayerNorm:
    the direct effect is nearly the whole effect), and kills the answer; unrelated features do not move."""
    from acdc.edits import intervene

    tokens = chain.task.clean[0]
    k = (int(tokens[1]) - 2) % 4
    plain = intervene(chain.model, chain.transcoders, tokens, {})
    assert torch.allclose(plain.logits, chain.model(tokens[None])[0], atol=1e-4)
    g = acdc.attribution_graph(chain.model, tokens, transcoders=chain.transcoders, progress=False)
    cut = intervene(chain.model, chain.transcoders, tokens, {(0, 1, k): 0.0})
    moved = float(plain.pre[1][2, k] - cut.pre[1][2, k])
    assert moved == pytest.approx(g.edge(f"m0.f{k}@1", f"m1.f{k}@2"), rel=0.05)
    assert float(cut.acts[1][2, k]) == 0.0 and int(cut.logits[-1].argmax()) != int(chain.task.correct[0])
    other = (k + 1) % 4
    assert float((plain.pre[1][2, other] - cut.pre[1][2, other]).abs()) < 0.05 * abs(moved)
    with pytest.raises(ValueError, match="transcoders cover layers"):
        intervene(chain.model, chain.transcoders, tokens, {(5, 1, 0): 0.0})


def _hooked_mlps(model, tokens: torch.Tensor, layers, mlp_out, cache=None) -> torch.Tensor:
    """TransformerLens logits [S, vocab] of ``tokens`` with MLP ``layer``'s output swapped for ``mlp_out(layer, x)``
    (x [1, S, d]: the stream the MLP reads, before its norm) at each of ``layers``; with ``cache`` (a run's), every
    head's pattern frozen at its pattern there."""
    mids = {}

    def keep_mid(layer):
        def fn(x, hook):
            mids[layer] = x
            return x
        return fn

    hooks = []
    for layer in layers:
        hooks += [(f"blocks.{layer}.hook_resid_mid", keep_mid(layer)),
                  (f"blocks.{layer}.hook_mlp_out", lambda y, hook, layer=layer: mlp_out(layer, mids[layer]))]
    if cache is not None:
        hooks += [(f"blocks.{layer}.attn.hook_pattern", lambda p, hook, c=cache[f"blocks.{layer}.attn.hook_pattern"]: c)
                  for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        return model.run_with_hooks(tokens[None], fwd_hooks=hooks)[0]


@pytest.mark.parametrize("freeze", [False, True])
def test_intervene_equals_a_hooked_replacement_model(freeze):
    """`intervene` against TransformerLens hooks by hand: each featured MLP's output swapped for its
    transcoder's reconstruction (one feature clamped) plus the error of the unedited prompt, and with
    ``freeze_attention`` every head's pattern swapped for its pattern on the unedited prompt."""
    from test_features import _ln2

    from acdc.edits import intervene

    model = tiny_gpt2(n_layer=3, n_head=2, d=16)
    ts = random_set(model, (0, 2), "relu", True)
    tokens = torch.tensor([3, 7, 1, 9, 4, 4])
    model.set_use_hook_mlp_in(True)
    _, cache = model.run_with_cache(tokens[None])
    errors = {layer: cache[f"blocks.{layer}.hook_mlp_out"][0] - ts[layer](_ln2(model, layer)(cache[f"blocks.{layer}.hook_resid_mid"][0]))
              for layer in (0, 2)}
    edit = (0, 2, int(ts[0].encode(_ln2(model, 0)(cache["blocks.0.hook_resid_mid"][0]))[2].argmax()))

    def mlp_out(layer, x):
        t = ts[layer]
        xn = _ln2(model, layer)(x)
        a = t.encode(xn)
        if layer == edit[0]:
            a[:, edit[1], edit[2]] = 0.0
        return t.decode(a, xn) + errors[layer]

    want = _hooked_mlps(model, tokens, (0, 2), mlp_out, cache if freeze else None)
    got = intervene(model, ts, tokens, {edit: 0.0}, freeze_attention=freeze)
    assert torch.allclose(got.logits, want, atol=1e-4), float((got.logits - want).abs().max())
    plain = intervene(model, ts, tokens, {}, freeze_attention=freeze)
    assert torch.allclose(plain.logits, model(tokens[None])[0], atol=1e-4)
    assert float((got.logits - plain.logits).abs().max()) > 1e-3
    if freeze:  # frozen attention differs from live attention once the edit moves a query or key
        live = intervene(model, ts, tokens, {edit: 0.0})
        assert float((live.logits - got.logits)[edit[1]:].abs().max()) > 1e-4


@pytest.mark.parametrize("freeze", [False, True])
def test_intervene_with_a_cross_layer_transcoder_equals_a_hooked_replacement_model(freeze):
    """`intervene` with a CLT (per-target offsets, own and cross-layer skip paths) against TransformerLens hooks by
    hand: MLP j's output swapped for every layer's features' writes into j ((a + offset [a > 0]) times each decoder,
    each layer's features on its own input in this run, one feature clamped), b_dec[j], every skip path into j, plus
    j's error on the unedited prompt; the edit reaches the later MLPs through the feature's own decoders."""
    from test_clt import _model_and_clt
    from test_features import _ln2

    from acdc.edits import intervene

    model, clt = _model_and_clt("relu", True, extended=True)
    L = clt.cfg.n_layers
    tokens = torch.tensor([3, 7, 1, 9, 4, 4])
    model.set_use_hook_mlp_in(True)
    _, cache = model.run_with_cache(tokens[None])

    def into(j, acts, xns):
        out = clt.b_dec[j] + xns[j] @ clt.W_skip[j]
        for src in range(j + 1):
            a = acts[src] + clt.offset[src][:, j - src] * (acts[src] > 0)
            out = out + a @ clt.decoder(src, j)
            if src < j:
                out = out + xns[src] @ clt.W_skip_cross[src][j - src - 1]
        return out

    with torch.no_grad():
        xns0 = {j: _ln2(model, j)(cache[f"blocks.{j}.hook_resid_mid"][0]) for j in range(L)}
        acts0 = {j: clt.encode(j, xns0[j]) for j in range(L)}
        errors = {j: cache[f"blocks.{j}.hook_mlp_out"][0] - into(j, acts0, xns0) for j in range(L)}
    edit = (0, 2, int(acts0[0][2].argmax()))
    acts, xns = {}, {}

    def mlp_out(layer, x):
        xns[layer] = _ln2(model, layer)(x)[0]
        a = clt.encode(layer, xns[layer])
        if layer == edit[0]:
            a[edit[1], edit[2]] = 0.0
        acts[layer] = a
        return (into(layer, acts, xns) + errors[layer])[None]

    want = _hooked_mlps(model, tokens, range(L), mlp_out, cache if freeze else None)
    got = intervene(model, clt, tokens, {edit: 0.0}, freeze_attention=freeze)
    assert torch.allclose(got.logits, want, atol=1e-4), float((got.logits - want).abs().max())
    plain = intervene(model, clt, tokens, {}, freeze_attention=freeze)
    assert torch.allclose(plain.logits, model(tokens[None])[0], atol=1e-4)
    assert float((got.logits - plain.logits).abs().max()) > 1e-3
    assert float(got.acts[0][edit[1], edit[2]]) == 0.0 and torch.allclose(got.pre[0], plain.pre[0])
