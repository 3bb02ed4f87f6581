"""Interventions (ablate, scale, clamp a node at positions) against TransformerLens hooks doing the same edit."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_tokens
from test_features import random_set

import acdc
from acdc.api import prepare
from acdc.edits import intervened_logits
from acdc.explorer import Explorer, ExplorerError, start
from acdc.interventions import Intervention, check_interventions, parse_node
from acdc.patching import Patcher


@pytest.fixture(scope="module")
def ioi():
    entry = acdc.zoo.load("ioi")
    return entry, acdc.discover(entry.model, entry.task, threshold=0.1, progress=False)


def _hooked(model, clean, corrupt, hook: str, edit, answer_pos=None):
    """Logits at the last position (or ``answer_pos``) with ``edit(value, corrupt_value)`` applied at ``hook``."""
    model.set_use_attn_result(True)
    _, cache = model.run_with_cache(corrupt)

    def fn(x, hook):
        return edit(x, cache[hook.name])

    with torch.no_grad():
        logits = model.run_with_hooks(clean, fwd_hooks=[(hook, fn)])
    rows = torch.arange(clean.shape[0])
    pos = torch.full((clean.shape[0],), clean.shape[1] - 1) if answer_pos is None else answer_pos
    return logits[rows, pos]


def _at(positions, S):
    m = torch.zeros(S, dtype=torch.bool)
    m[positions] = True
    return m


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_head_mlp_neuron_and_input_edits_equal_hooks(gpt2_model, ablation):
    clean, corrupt = random_tokens(batch=4, pos=6)
    p = Patcher(gpt2_model, clean, corrupt, ablation=ablation)
    S = clean.shape[1]

    def value(c):
        return {"resample": c, "mean": c.mean(0, keepdim=True).expand_as(c), "zero": torch.zeros_like(c)}[ablation]

    pos = [1, 4]
    m = _at(pos, S)
    cases = [
        (Intervention("a1.h2", positions=(1, 4)), "blocks.1.attn.hook_result",
         lambda x, c: torch.where(m[None, :, None, None] & (torch.arange(4) == 2)[None, None, :, None], value(c), x)),
        (Intervention("a0.h1", "scale", 3.0), "blocks.0.attn.hook_result",
         lambda x, c: torch.where((torch.arange(4) == 1)[None, None, :, None], 3 * x, x)),
        (Intervention("m0", positions=(1, 4)), "blocks.0.hook_mlp_out", lambda x, c: torch.where(m[None, :, None], value(c), x)),
        (Intervention("m1", "scale", -0.5, (1, 4)), "blocks.1.hook_mlp_out", lambda x, c: torch.where(m[None, :, None], -0.5 * x, x)),
        (Intervention("m0.n7", "clamp", 4.0, (1, 4)), "blocks.0.mlp.hook_post",
         lambda x, c: torch.where(m[None, :, None] & (torch.arange(x.shape[-1]) == 7), torch.full_like(x, 4.0), x)),
        (Intervention("m1.n3", positions=(1, 4)), "blocks.1.mlp.hook_post",
         lambda x, c: torch.where(m[None, :, None] & (torch.arange(x.shape[-1]) == 3), value(c), x)),
        (Intervention("input", "scale", 0.5, (1, 4)), "blocks.0.hook_resid_pre", lambda x, c: torch.where(m[None, :, None], 0.5 * x, x)),
    ]
    for it, hook, edit in cases:
        got = intervened_logits(p, [it])
        want = _hooked(gpt2_model, clean, corrupt, hook, edit)
        assert torch.allclose(got, want, atol=1e-4), (it, float((got - want).abs().max()))
        assert not torch.allclose(got, p.clean.logits, atol=1e-3), it  # each edit moves the logits
    assert torch.allclose(intervened_logits(p, []), p.clean.logits, atol=1e-5)


def test_ablating_a_node_everywhere_is_ablating_every_edge_out_of_it(ioi):
    entry, _ = ioi
    p, _, _ = prepare(entry.model, entry.task)
    g = p.graph
    for node in ("a1.h0", "m0", "input"):
        got = intervened_logits(p, [Intervention(node)])
        assert torch.allclose(got, p.logits(g.edges_out_of([node])), atol=1e-4), node


def test_edits_compose_and_apply_in_order(gpt2_model):
    clean, corrupt = random_tokens(batch=3, pos=5)
    p = Patcher(gpt2_model, clean, corrupt)
    two = intervened_logits(p, [Intervention("m0.n2", "clamp", 1.0), Intervention("m0.n2", "scale", 3.0)])
    want = _hooked(gpt2_model, clean, corrupt, "blocks.0.mlp.hook_post",
                   lambda x, c: torch.where(torch.arange(x.shape[-1]) == 2, torch.full_like(x, 3.0), x))
    assert torch.allclose(two, want, atol=1e-4)


def _hooked_edits(model, tokens: torch.Tensor, layers, encode, change=None, moved=None):
    """Hugging Face GPT-2's logits at the last position with features edited by hand, and each layer's feature
    activations before any change: ``encode(layer, ln_2's output)`` at each of ``layers``; ``change(layer, acts)``
    the edited activations; ``moved(layer, acts, new)`` what MLP ``layer``'s output moves by, given every layer's
    activations so far before (``acts``) and after (``new``) the edits."""
    blocks = model.original_model.transformer.h
    xs, acts, new, handles = {}, {}, {}, []
    for layer in layers:
        handles.append(blocks[layer].ln_2.register_forward_hook(lambda m, i, o, layer=layer: xs.__setitem__(layer, o)))

        def mlp_hook(m, i, out, layer=layer):
            acts[layer] = encode(layer, xs[layer])
            if change is None:
                return out
            new[layer] = change(layer, acts[layer].clone())
            return out + moved(layer, acts, new)

        handles.append(blocks[layer].mlp.register_forward_hook(mlp_hook))
    try:
        with torch.no_grad():
            logits = model.original_model(tokens).logits[:, -1]
    finally:
        for h in handles:
            h.remove()
    return logits, acts


def _edited_by_hand(a: torch.Tensor, layer: int, edits, corrupt_acts: dict, ablation: str) -> torch.Tensor:
    """Activations a [B, S, n] of ``layer`` after ``edits`` (in order, each at its positions): ablate takes the
    corrupt prompts' activation (resample), its mean over them (mean) or zero; scale and clamp as named."""
    for it in edits:
        kind, lay, i = parse_node(it.node)
        if lay != layer:
            continue
        at = torch.zeros(a.shape[1], dtype=torch.bool)
        at[list(it.positions) if it.positions else slice(None)] = True
        c = corrupt_acts[layer][..., i]
        value = {"resample": c, "mean": c.mean(0, keepdim=True).expand_as(c), "zero": torch.zeros_like(c)}[ablation]
        new = value if it.op == "ablate" else a[..., i] * it.value if it.op == "scale" else torch.full_like(a[..., i], it.value)
        a[..., i] = torch.where(at[None, :], new, a[..., i])
    return a


def _assert_edits_equal_hooks(model, got: torch.Tensor, clean, corrupt, layers, encode, moved, edits, ablation: str) -> None:
    """``got`` (`intervened_logits` of ``edits``) equals `_hooked_edits` with the edits made by hand (ablation values
    from the corrupt prompts' features), and the edits move the answer."""
    _, corrupt_acts = _hooked_edits(model, corrupt, layers, encode)
    want, _ = _hooked_edits(model, clean, layers, encode, lambda layer, a: _edited_by_hand(a, layer, edits, corrupt_acts, ablation), moved)
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
    plain, _ = _hooked_edits(model, clean, layers, encode)
    assert (got - plain).abs().max() > 1e-2


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_feature_edits_equal_hugging_face_hooks(gpt2_model, ablation):
    """On a feature graph, editing feature i of layer L adds (a_i' - a_i) W_dec[i] to MLP L's output, with a
    from the MLP's live input: the same forward by hand with hooks on the Hugging Face modules (ln_2's
    output read, the MLP's output edited), ablation values from the corrupt prompts' features."""
    ts = random_set(gpt2_model, layers=(0, 1), activation="relu")
    g = acdc.Graph.from_model(gpt2_model, transcoders=ts, features=None)
    clean, corrupt = random_tokens(batch=4, pos=6)
    p = Patcher(gpt2_model, clean, corrupt, ablation=ablation, graph=g, transcoders=ts)
    edits = [Intervention("m0.f3", "ablate", positions=(2, 5)), Intervention("m1.f5", "clamp", 2.0, positions=(4,)),
             Intervention("m1.f1", "scale", 3.0), Intervention("m1.f7", "ablate")]
    got = intervened_logits(p, edits)

    def moved(layer, acts, new):  # MLP layer's output moves by (a' - a) W_dec
        return (new[layer] - acts[layer]) @ ts[layer].W_dec

    _assert_edits_equal_hooks(gpt2_model, got, clean, corrupt, (0, 1), lambda layer, xn: ts[layer].encode(xn), moved, edits, ablation)
    with pytest.raises(ValueError, match="features 0-11"):
        intervened_logits(p, [Intervention("m1.f12")])
    with pytest.raises(ValueError, match="a feature needs a transcoder for layer 1; the patcher has no transcoders"):
        intervened_logits(Patcher(gpt2_model, clean, corrupt), [Intervention("m1.f1")])


@pytest.mark.parametrize("ablation, offsets", [("resample", False), ("mean", True), ("zero", True)])
def test_cross_layer_feature_edits_equal_hugging_face_hooks(gpt2_model, ablation, offsets):
    """On a CLT graph, editing feature i of layer L moves every MLP j >= L by what it writes into j at its edited
    activation minus at its live one ((a' - a) W_dec[L][i, j - L], and with offsets its offset's share when it starts
    or stops firing), a read from ln_2's output at L in this run: the same forward by hand with hooks on the Hugging
    Face modules, ablation values from the corrupt prompts' features; an edit repeated on one feature composes."""
    from acdc.transcoders import CLTConfig, CrossLayerTranscoder

    L, d = gpt2_model.cfg.n_layers, gpt2_model.cfg.d_model
    clt = CrossLayerTranscoder(CLTConfig(L, d, 12, "relu", offsets=offsets))
    gen = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for name, p_ in clt.named_parameters():
            p_.copy_((2.0 if name.startswith("offset") else 0.3) * torch.randn(p_.shape, generator=gen))
    g = acdc.Graph.from_model(gpt2_model, transcoders=clt)
    clean, corrupt = random_tokens(batch=4, pos=6)
    p = Patcher(gpt2_model, clean, corrupt, ablation=ablation, graph=g, transcoders=clt)
    edits = [Intervention("m0.f3", "ablate", positions=(2, 5)), Intervention("m1.f5", "clamp", 2.0, positions=(4,)),
             Intervention("m0.f1", "scale", 3.0), Intervention("m0.f1", "scale", 0.5, positions=(1,)), Intervention("m1.f7", "ablate")]
    got = intervened_logits(p, edits)

    def phi(src, j, a):  # what activations a [..., n] of layer src's features write into j, per unit of decoder
        return a if clt.offset is None else a + clt.offset[src][:, j - src] * (a > 0)

    def moved(layer, acts, new):  # every layer's edits so far, through its decoders into this MLP
        return sum((phi(src, layer, new[src]) - phi(src, layer, acts[src])) @ clt.decoder(src, layer) for src in range(layer + 1))

    _assert_edits_equal_hooks(gpt2_model, got, clean, corrupt, range(L), clt.encode, moved, edits, ablation)
    with pytest.raises(ValueError, match="features are 0-11"):
        intervened_logits(p, [Intervention("m1.f12")])
    stream = CrossLayerTranscoder(CLTConfig(L, d, 12, "relu", reads="stream"))
    with pytest.raises(ValueError, match="reads the residual stream before the norm"):
        intervened_logits(Patcher(gpt2_model, clean, corrupt, graph=acdc.Graph.from_model(gpt2_model, transcoders=stream),
                                  transcoders=stream), [Intervention("m1.f1")])


@pytest.mark.parametrize(("args", "match"), [
    (("a0.h1", "clamp", 1.0), "clamp sets a neuron's or a feature's"),
    (("m0.x", "ablate"), "not a node to intervene on"),
    (("m0", "double"), "op must be"),
    (("m0", "scale", float("nan")), "finite"),
    (("m0", "ablate", 0.0, (-1,)), "positions"),
])
def test_bad_interventions_say_what_to_pass(args, match):
    with pytest.raises(ValueError, match=match):
        Intervention(*args)


def test_interventions_outside_the_model_are_refused(gpt2_model):
    clean, corrupt = random_tokens(batch=2, pos=5)
    p = Patcher(gpt2_model, clean, corrupt)
    for it, match in ((Intervention("a9.h0"), "layers 0-"), (Intervention("a0.h9"), "heads 0-3"),
                      (Intervention("m0.n9999"), "neurons 0-"), (Intervention("m0", positions=(7,)), "below the prompts' length 5")):
        with pytest.raises(ValueError, match=match):
            intervened_logits(p, [it])


def test_explorer_intervenes_saves_and_replays(ioi, tmp_path):
    entry, circuit = ioi
    path = circuit.to_json(tmp_path / "c.json")
    ex = Explorer(entry.model, entry.task, acdc.Circuit.from_json(path), tokenizer=entry.tokenizer, path=path)
    edits = [{"node": "a1.h0", "op": "scale", "value": 0.0, "positions": [int(entry.task.answer_pos[0])]}]
    r = ex.intervene(edits, prompt=0, k=3)
    logits = intervened_logits(ex.patcher, [Intervention.from_dict(edits[0])])
    assert r["metric"] == pytest.approx(ex.metric(logits, ex.batch), abs=1e-9) and r["change"] < -1
    assert [t["id"] for t in r["next_tokens"]["intervened"]["top"]] == logits[0].topk(3).indices.tolist()
    assert ex.save_interventions(edits)["saved"] == str(path)
    back = acdc.Circuit.from_json(path)
    assert back.interventions == check_interventions(edits) and back.notes == circuit.notes
    replay = Explorer(entry.model, entry.task, back, tokenizer=entry.tokenizer).intervene(back.interventions)
    assert replay["metric"] == pytest.approx(r["metric"], abs=1e-9)
    with pytest.raises(ExplorerError, match="must be a list"):
        ex.intervene({"node": "m0"})
    with pytest.raises(ExplorerError, match="clamp sets a neuron"):
        ex.intervene([{"node": "m0", "op": "clamp", "value": 1}])
    server = start(ex)
    try:
        from test_explorer import _request

        status, got = _request(server, "POST", "/api/intervene", {"interventions": edits, "prompt": 0})
        assert status == 200 and got["metric"] == pytest.approx(r["metric"], abs=1e-9)
        status, got = _request(server, "POST", "/api/interventions", {"interventions": []})
        assert status == 200 and json.loads(path.read_text())["acdc"].get("interventions") is None
        status, got = _request(server, "POST", "/api/intervene", {"interventions": [{"node": "zz"}]})
        assert status == 400 and "not a node" in got["error"]
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- generation with features edited
def _moved(a: torch.Tensor, op: str, value: float, positions) -> torch.Tensor:
    """[P] new - old activation of an edited feature (op ablate, scale or clamp; only at ``positions``, None: all)."""
    new = torch.zeros_like(a) if op == "ablate" else a * value if op == "scale" else torch.full_like(a, value)
    keep = torch.zeros_like(a, dtype=torch.bool)
    keep[list(range(len(a))) if positions is None else [p for p in positions if p < len(a)]] = True
    return torch.where(keep, new - a, torch.zeros_like(a))


def _greedy(hf, handles: list, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Hugging Face's greedy continuation of ``prompt`` by ``n`` tokens with ``handles``' hooks in place (removed after)."""
    seq = prompt.clone()
    try:
        with torch.no_grad():
            for _ in range(n):
                seq = torch.cat([seq, hf(seq[None]).logits[0, -1].argmax().reshape(1)])
    finally:
        for h in handles:
            h.remove()
    return seq


def _hf_greedy(model, ts, prompt: torch.Tensor, n: int, edits: dict) -> torch.Tensor:
    """Greedy continuation by Hugging Face's GPT-2 with hooks: MLP L's output gets (new - a_f) W_dec[f] for each
    edited feature f of layer L, a_f the transcoder's activation on ln_2's output, at every position or the
    listed ones (edits: (layer, feature) -> (op, value, positions))."""
    hf = model.original_model
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for layer in {la for la, _ in edits}:
        block = hf.transformer.h[layer]
        handles.append(block.ln_2.register_forward_hook(lambda m, i, o, la=layer: seen.__setitem__(la, o)))

        def add(m, i, out, la=layer):
            t = ts[la]
            acts = t.encode(seen[la])  # [1, P, n]
            out = out.clone()
            for (lay, f), (op, value, positions) in edits.items():
                if lay != la:
                    continue
                out[0] += _moved(acts[0, :, f], op, value, positions)[:, None] * t.W_dec[f]
            return out
        handles.append(block.mlp.register_forward_hook(add))
    return _greedy(hf, handles, prompt, n)


def test_generation_with_features_edited_equals_hugging_face_with_hooks(gpt2_model):
    """`acdc.generate` continues a prompt with features clamped, scaled or ablated at every step (or at prompt
    positions only): the same tokens as Hugging Face's GPT-2 greedy, its MLP outputs moved by hand by the
    feature's (new - old) activation times its decoder row; with no edits, the model's own continuation."""
    ts = random_set(gpt2_model, layers=(0, 1), activation="relu")
    prompt = torch.tensor([3, 17, 8, 41, 5])
    plain = acdc.generate(gpt2_model, prompt, transcoders=ts, max_new_tokens=8)
    assert torch.equal(plain.tokens, _hf_greedy(gpt2_model, ts, prompt, 8, {})) and torch.equal(plain.tokens[:5], prompt)
    assert plain.new.numel() == 8 and plain.text is None
    cases = [
        ([{"node": "m0.f3", "op": "clamp", "value": 6.0}], {(0, 3): ("clamp", 6.0, None)}),
        ([{"node": "m1.f5", "op": "scale", "value": -4.0}, {"node": "m0.f1", "op": "ablate"}],
         {(1, 5): ("scale", -4.0, None), (0, 1): ("ablate", 0.0, None)}),
        ([{"node": "m1.f2", "op": "clamp", "value": 8.0, "positions": [1, 3]}], {(1, 2): ("clamp", 8.0, (1, 3))}),
    ]
    moved = 0
    for interventions, edits in cases:
        got = acdc.generate(gpt2_model, prompt, transcoders=ts, interventions=interventions, max_new_tokens=8)
        assert torch.equal(got.tokens, _hf_greedy(gpt2_model, ts, prompt, 8, edits)), interventions
        moved += not torch.equal(got.tokens, plain.tokens)
    assert moved >= 2  # the edits change what the model says
    with pytest.raises(ValueError, match="generate edits transcoder features"):
        acdc.generate(gpt2_model, prompt, transcoders=ts, interventions=[{"node": "m1.n3", "op": "clamp", "value": 1.0}])
    with pytest.raises(ValueError, match="features 0-11"):
        acdc.generate(gpt2_model, prompt, transcoders=ts, interventions=[{"node": "m1.f12", "op": "clamp", "value": 1.0}])
    with pytest.raises(ValueError, match="the prompt is empty"):
        acdc.generate(gpt2_model, torch.tensor([], dtype=torch.long))


def _hf_greedy_clt(model, clt, prompt: torch.Tensor, n: int, edits: dict, own_layer_only: bool = False) -> torch.Tensor:
    """Hugging Face's GPT-2 greedy continuation with cross-layer features edited by hand: a feature of layer L read
    from ln_2's output there; every MLP j >= L moved by (new - old activation) times its decoder into j, and with
    offsets by its offset into j times the change in whether it fires."""
    hf = model.original_model
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for layer, block in enumerate(hf.transformer.h):
        handles.append(block.ln_2.register_forward_hook(lambda m, i, o, la=layer: seen.__setitem__(la, o)))

        def add(m, i, out, j=layer):
            out = out.clone()
            for (src, f), (op, value, positions) in edits.items():
                if src > j or (own_layer_only and src != j):
                    continue
                old = clt.encode(src, seen[src])[0, :, f]
                move = _moved(old, op, value, positions)
                if clt.offset is not None:
                    new = old + move
                    move = move + clt.offset[src][f, j - src] * ((new > 0).float() - (old > 0).float())
                out[0] += move[:, None] * clt.W_dec[src][f, j - src]
            return out
        handles.append(block.mlp.register_forward_hook(add))
    return _greedy(hf, handles, prompt, n)


@pytest.mark.parametrize("offsets", [False, True])
def test_generation_with_cross_layer_features_edited_equals_hugging_face_with_hooks(offsets):
    """With a cross-layer transcoder, an edited feature of layer L moves every later MLP's output through its decoder
    into that layer: `acdc.generate` gives Hugging Face's greedy tokens with those moves made by hand (with
    per-target offsets too: an ablated feature stops writing its offset, a clamped one starts)."""
    from conftest import tiny_gpt2

    from acdc.transcoders import CLTConfig, CrossLayerTranscoder

    model = tiny_gpt2(n_layer=3, vocab=50, d=32)
    gen = torch.Generator().manual_seed(5)
    clt = CrossLayerTranscoder(CLTConfig(3, 32, 10, "relu", offsets=offsets))
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        for o in clt.offset or []:
            o.mul_(20)  # offsets the size of an activation: starting or stopping to fire then moves the continuation
    prompt = torch.tensor([3, 17, 8, 41, 5])
    plain = acdc.generate(model, prompt, transcoders=clt, max_new_tokens=8)
    assert torch.equal(plain.tokens, _hf_greedy_clt(model, clt, prompt, 8, {}))
    cases = [
        ([{"node": "m0.f3", "op": "clamp", "value": 6.0}], {(0, 3): ("clamp", 6.0, None)}),
        ([{"node": "m1.f5", "op": "scale", "value": -4.0}, {"node": "m0.f1", "op": "ablate"}],
         {(1, 5): ("scale", -4.0, None), (0, 1): ("ablate", 0.0, None)}),
        ([{"node": "m0.f2", "op": "clamp", "value": 8.0, "positions": [1, 3]}], {(0, 2): ("clamp", 8.0, (1, 3))}),
    ]
    moved = 0
    for interventions, edits in cases:
        got = acdc.generate(model, prompt, transcoders=clt, interventions=interventions, max_new_tokens=8)
        assert torch.equal(got.tokens, _hf_greedy_clt(model, clt, prompt, 8, edits)), interventions
        moved += not torch.equal(got.tokens, plain.tokens)
    assert moved >= 2
    # the writes into later layers count: moving only the feature's own layer continues differently
    first = acdc.generate(model, prompt, transcoders=clt, interventions=cases[0][0], max_new_tokens=8)
    assert not torch.equal(first.tokens, _hf_greedy_clt(model, clt, prompt, 8, cases[0][1], own_layer_only=True))
    with pytest.raises(ValueError, match="features 0-9"):
        acdc.generate(model, prompt, transcoders=clt, interventions=[{"node": "m1.f10", "op": "clamp", "value": 1.0}])
    stream_clt = CrossLayerTranscoder(CLTConfig(3, 32, 10, "relu", reads="stream"))
    with pytest.raises(ValueError, match="reads the residual stream"):
        acdc.generate(model, prompt, transcoders=stream_clt, interventions=cases[0][0])
