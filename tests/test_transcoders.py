"""Transcoders: the planted dictionary recovered, files round-trip, resume equals uninterrupted,
fidelity equals a plain computation with Hugging Face forward hooks."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import Killed, tiny_gpt2

import acdc
from acdc.model import Transformer
from acdc.transcoders import (
    GeneratedStream,
    TrainOptions,
    Transcoder,
    TranscoderConfig,
    TranscoderSet,
    train_transcoders,
)
from acdc.transcoders.transcoder import ModelInfo
from acdc.zoo import dictionary


@pytest.fixture(scope="module")
def planted():
    return dictionary.build()


def _stream(pd, seed: int = 0) -> GeneratedStream:
    return GeneratedStream(pd.sample, pd.context, seed=seed, name="planted dictionary")


def recovered(pd, tc: Transcoder) -> torch.Tensor:
    """Per planted feature: the best min(encoder cosine, decoder cosine) over the transcoder's features."""
    enc = F.normalize(tc.W_enc.detach().T, dim=1)
    dec = F.normalize(tc.W_dec.detach(), dim=1)
    return torch.minimum(pd.encoder @ enc.T, pd.decoder @ dec.T).max(1).values


def test_the_planted_mlp_is_the_dictionary(planted):
    """The ground truth itself: MLP 0's output is sum_i relu(<x, e_i> - 0.3) d_i on its normed input."""
    tf = Transformer.from_bridge(planted.model)
    x, y = tf.mlp_io(planted.sample(0, torch.Generator().manual_seed(1))[None], [0])[0]
    want = torch.relu(x @ planted.encoder.T - dictionary.THRESHOLD) @ planted.decoder
    assert torch.allclose(want, y, atol=1e-5) and float(y.norm()) > 1.0
    acts = torch.relu(x @ planted.encoder.T - dictionary.THRESHOLD)
    assert 1.5 < float((acts > 0).sum(-1).float().mean()) < 6  # sparse: a few features per position


@pytest.mark.parametrize("activation, tokens, init", [("topk", 200_000, "random"), ("relu", 400_000, "random"),
                                                     ("jumprelu", 400_000, "random"), ("topk", 200_000, "data"),
                                                     ("jumprelu", 400_000, "data")])
def test_training_recovers_the_planted_features(planted, activation, tokens, init):
    ts = train_transcoders(planted.model, _stream(planted), layers=[0], progress=False, n_features=32, init=init,
                           activation=activation, k=4, l1=0.05, lr=3e-3, tokens=tokens, batch_tokens=256, dead_tokens=5000)
    best = recovered(planted, ts[0])
    assert float((best >= 0.9).float().mean()) >= 0.9, best.sort().values[:6]
    fid = acdc.transcoder_fidelity(planted.model, ts, _stream(planted, seed=99), sequences=64)
    assert fid.layers[0]["fvu"] <= 0.05
    assert fid.layers[0]["l0"] < 6 and ts.info["tokens"] == tokens


def test_an_untrained_transcoder_recovers_nothing(planted):
    """The recovery measure can fail: a random initialisation alone is far from the planted directions."""
    ts = train_transcoders(planted.model, _stream(planted), layers=[0], progress=False, n_features=32, k=4, tokens=256, init="random",
                           batch_tokens=256, sequences=16, buffer=1)
    assert float((recovered(planted, ts[0]) >= 0.9).float().mean()) < 0.1


def test_training_is_repeatable_and_the_seed_matters(planted):
    kw = dict(layers=[0], progress=False, n_features=16, k=3, tokens=6000, batch_tokens=500, sequences=10, buffer=2)
    a = train_transcoders(planted.model, _stream(planted), seed=1, **kw)[0]
    b = train_transcoders(planted.model, _stream(planted), seed=1, **kw)[0]
    c = train_transcoders(planted.model, _stream(planted), seed=2, **kw)[0]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.W_enc, c.W_enc)


@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu"])
def test_data_init_starts_features_at_tokens(activation):
    """init="data": feature i's encoder column is a buffer token's centered input direction, its decoder
    row the same token's centered output direction, the centering is in b_enc, and the scale is the
    least-squares fit (refitting gives 1)."""
    from acdc.transcoders.training import _init_from_data

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 8, generator=gen) + 3.0, torch.randn(50, 8, generator=gen) * 5 - 1.0
    tc = Transcoder(TranscoderConfig(8, 64, activation, 4 if activation == "topk" else None))
    tc.W_dec.data = F.normalize(torch.randn(64, 8, generator=gen), dim=1)
    with torch.no_grad():
        tc.b_dec.copy_(y.mean(0))
    _init_from_data(tc, x, y, gen)
    xc, yc = F.normalize(x - x.mean(0), dim=1), F.normalize(y - y.mean(0), dim=1)
    enc = F.normalize(tc.W_enc.detach().T, dim=1)
    cos_x = enc[:50] @ xc.T  # the first 50 features: one token each, every token once
    j = cos_x.argmax(1)
    assert torch.allclose(cos_x.max(1).values, torch.ones(50), atol=1e-5) and len(set(j.tolist())) == 50
    assert torch.allclose((tc.W_dec.detach()[:50] * yc[j]).sum(1), torch.ones(50), atol=1e-5)
    assert torch.allclose(tc.b_enc.detach(), -(x.mean(0) @ tc.W_enc.detach()), atol=1e-4)
    r = tc.encode(x) @ tc.W_dec
    assert abs(float((r * (y - y.mean(0))).sum() / (r * r).sum()) - 1.0) < 1e-4


def test_massive_positions_are_left_out_of_training(planted, monkeypatch):
    """One position per forward with an MLP output 10^4 times the others' (a massive activation): with the
    default rule it leaves the buffers (counted) and the per-buffer FVU stays low; kept (massive=None), it
    decides each buffer's variance and the FVU is near 1."""
    real = Transformer.mlp_io
    calls = {"n": 0}

    def spiked(self, tokens, layers):
        calls["n"] += 1
        out = real(self, tokens, layers)
        for layer in layers:
            out[layer][1][0, 3] *= 1e4
        return out

    monkeypatch.setattr(Transformer, "mlp_io", spiked)
    kw = dict(layers=[0], progress=False, n_features=32, k=4, lr=3e-3, tokens=40_000, batch_tokens=256, init="data")
    dropped = train_transcoders(planted.model, _stream(planted), **kw)
    assert dropped.info["massive_positions_dropped"] == calls["n"] > 100  # one per forward
    kept = train_transcoders(planted.model, _stream(planted), massive=None, **kw)
    assert kept.info["massive_positions_dropped"] == 0
    assert dropped.info["layers"]["0"]["history"][-1][1] < 0.3 < 0.9 < kept.info["layers"]["0"]["history"][-1][1]


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_resume_ends_where_an_uninterrupted_run_ends(planted, tmp_path, monkeypatch, activation):
    """Killed after a few model forwards, restarted with the same arguments: bit-for-bit the same transcoders."""
    kw = dict(layers=[0, 1], progress=False, n_features=16, activation=activation, k=3, tokens=9000, batch_tokens=400,
              sequences=10, buffer=2, checkpoint_every=1, dead_tokens=2000, seed=3)
    whole = train_transcoders(planted.model, _stream(planted), **kw)
    calls = {"n": 0}
    real = Transformer.mlp_io

    def dying(self, tokens, layers):
        calls["n"] += 1
        if calls["n"] == 7:  # in the fourth buffer, after three checkpoints
            raise Killed
        return real(self, tokens, layers)

    monkeypatch.setattr(Transformer, "mlp_io", dying)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Killed):
        train_transcoders(planted.model, _stream(planted), checkpoint=ckpt, **kw)
    assert (ckpt / "state.json").exists()
    monkeypatch.setattr(Transformer, "mlp_io", real)
    resumed = train_transcoders(planted.model, _stream(planted), checkpoint=ckpt, **kw)
    for layer in (0, 1):
        for (name, p), q in zip(whole[layer].named_parameters(), resumed[layer].parameters(), strict=True):
            assert torch.equal(p, q), (layer, name)
    assert resumed.info["tokens"] == whole.info["tokens"] == 9000
    with pytest.raises(ValueError, match="other settings.*k"):
        train_transcoders(planted.model, _stream(planted), checkpoint=ckpt, **{**kw, "k": 4})


def test_a_checkpoint_older_than_an_option_resumes_with_its_old_behaviour(planted, tmp_path):
    """A checkpoint written before ``massive`` and ``init`` existed resumes with massive=None, init="random"
    (what it did then), and is refused, naming the option, with the new defaults (massive=100, init="data")."""
    import json

    kw = dict(layers=[0], progress=False, n_features=16, k=3, tokens=3000, batch_tokens=500, sequences=10, buffer=2, massive=None,
              init="random")
    ckpt = tmp_path / "old"
    first = train_transcoders(planted.model, _stream(planted), checkpoint=ckpt, **kw)
    state = json.loads((ckpt / "state.json").read_text())
    del state["options"]["massive"], state["options"]["init"]
    (ckpt / "state.json").write_text(json.dumps(state))
    again = train_transcoders(planted.model, _stream(planted), checkpoint=ckpt, **kw)
    assert torch.equal(again[0].W_enc, first[0].W_enc) and again.info["tokens"] == 3000
    with pytest.raises(ValueError, match=r"other settings \(massive\)"):
        train_transcoders(planted.model, _stream(planted), checkpoint=ckpt, **{**kw, "massive": 100.0})
    with pytest.raises(ValueError, match=r"other settings \(init\)"):
        train_transcoders(planted.model, _stream(planted), checkpoint=ckpt, **{k: v for k, v in kw.items() if k != "init"})


def _random_set(tf: Transformer, activation: str = "topk", skip: bool = False, seed: int = 0) -> TranscoderSet:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(tf.arch.n_layers):
        tc = Transcoder(TranscoderConfig(tf.arch.d_model, 24, activation, 5 if activation == "topk" else None, skip))
        with torch.no_grad():
            for p in tc.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            if tc.log_threshold is not None:
                tc.log_threshold.fill_(math.log(0.2))
        tc.normalize_decoder()
        out[layer] = tc
    return TranscoderSet(out, ModelInfo.of(tf, "tiny gpt2"))


@pytest.mark.parametrize("activation, skip", [("topk", False), ("relu", True), ("jumprelu", False)])
def test_save_load_round_trip(tmp_path, activation, skip):
    model = tiny_gpt2()
    tf = Transformer.from_bridge(model)
    ts = _random_set(tf, activation, skip)
    ts.info = {"corpus": "test"}
    path = ts.save(tmp_path / "tc")
    assert {p.name for p in path.iterdir()} == {"config.json", "transcoders.safetensors"}
    back = acdc.load_transcoders(path, model)
    x = torch.randn(7, tf.arch.d_model)
    for layer in ts:
        assert torch.equal(ts[layer](x), back[layer](x))
    assert back.model == ts.model and back.info == {"corpus": "test"} and back[0].cfg == ts[0].cfg


def test_another_model_is_refused_in_one_line(tmp_path):
    ts = _random_set(Transformer.from_bridge(tiny_gpt2()))
    path = ts.save(tmp_path / "tc")
    with pytest.raises(ValueError, match="another model with this shape") as err:
        acdc.load_transcoders(path, tiny_gpt2(seed=5))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="not this model"):
        acdc.load_transcoders(path, tiny_gpt2(n_layer=3))
    with pytest.raises(ValueError, match="not found"):
        acdc.load_transcoders(tmp_path / "nothing-here")


def test_normalize_decoder_keeps_the_function():
    for act in ("relu", "jumprelu"):
        tc = Transcoder(TranscoderConfig(8, 12, act))
        with torch.no_grad():
            for p in tc.parameters():
                p.copy_(torch.randn(p.shape))
        x = torch.randn(20, 8)
        before = tc(x)
        tc.normalize_decoder()
        assert torch.allclose(tc(x), before, atol=1e-5) and torch.allclose(tc.W_dec.norm(dim=1), torch.ones(12))


@pytest.mark.parametrize("skip_first, massive", [(True, 100.0), (False, None), (True, 1.0)])
def test_fidelity_equals_hooked_hugging_face_runs(skip_first, massive):
    """FVU, L0, CE and KL against the Hugging Face model with its MLP modules swapped by forward hooks
    (the module's input is ln_2's output, what a transcoder reads), at the positions the transcoders
    model: not the first (``skip_first``), not those whose clean MLP output norm is over ``massive`` x
    the median (1.0 makes about half of them "massive", to test that path)."""
    model = tiny_gpt2(vocab=50)
    tf = Transformer.from_bridge(model)
    ts = _random_set(tf, "relu")
    hf = model.original_model
    stream = GeneratedStream(lambda i, g: torch.randint(0, 50, (12,), generator=g), 12, seed=4)
    fid = acdc.transcoder_fidelity(model, ts, stream, sequences=6, batch=6, skip_first=skip_first, massive=massive)
    toks = stream.batch(0, 6)
    masks: dict[int, torch.Tensor] = {}

    def run(swap: dict[int, str]) -> tuple[torch.Tensor, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
        seen = {}
        handles = []
        for layer, block in enumerate(hf.transformer.h):
            def hook(module, args, output, layer=layer):
                seen[layer] = (args[0], output)
                if layer in swap:
                    new = torch.zeros_like(output) if swap[layer] == "zero" else ts[layer](args[0])
                    return torch.where(masks[layer][..., None], new, output)
                return output
            handles.append(block.mlp.register_forward_hook(hook))
        with torch.no_grad():
            logits = hf(toks).logits
        for h in handles:
            h.remove()
        return logits, seen

    def ce(logits):
        return float(F.cross_entropy(logits[:, :-1].reshape(-1, 50), toks[:, 1:].reshape(-1)))

    def kl(p, q):
        lp, lq = p.log_softmax(-1), q.log_softmax(-1)
        return float((lp.exp() * (lp - lq)).sum(-1).mean())

    clean, seen = run({})
    n_massive = 0
    for layer in ts:
        m = torch.ones(6, 12, dtype=torch.bool)
        if skip_first:
            m[:, 0] = False
        if massive is not None:
            norm = seen[layer][1].norm(dim=-1)
            big = norm > massive * norm[m].median()
            n_massive += int((big & m).sum())
            m &= ~big
        masks[layer] = m
    assert fid.extra["massive_positions"] == n_massive and (n_massive > 10) == (massive == 1.0)
    assert fid.ce_clean == pytest.approx(ce(clean), rel=1e-4)
    for layer in ts:
        x, y = (t[masks[layer]] for t in seen[layer])
        y_hat = ts[layer](x)
        fvu = float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
        assert fid.layers[layer]["fvu"] == pytest.approx(fvu, rel=1e-4)
        assert fid.layers[layer]["l0"] == pytest.approx(float((ts[layer].encode(x) > 0).sum(-1).float().mean()), rel=1e-5)
        spliced, _ = run({layer: "tc"})
        assert fid.layers[layer]["ce"] == pytest.approx(ce(spliced), rel=1e-4)
        assert fid.layers[layer]["kl"] == pytest.approx(kl(clean[:, :], spliced), rel=1e-3, abs=1e-6)
    every, _ = run({layer: "tc" for layer in ts})
    zero, _ = run({layer: "zero" for layer in ts})
    assert fid.ce_all == pytest.approx(ce(every), rel=1e-4) and fid.ce_zero == pytest.approx(ce(zero), rel=1e-4)
    if ce(zero) > ce(clean):
        want = (ce(zero) - ce(every)) / (ce(zero) - ce(clean))
        assert fid.loss_recovered == pytest.approx(want, rel=1e-3)
        assert "loss recovered" in fid.table()
    else:  # zero-ablating the MLPs lowers the loss of this random model: nothing to recover, nothing reported
        assert math.isnan(fid.loss_recovered) and "no loss recovered to report" in fid.table()
    quick = acdc.transcoder_fidelity(model, ts, stream, sequences=6, batch=6, skip_first=skip_first, massive=massive, per_layer=False)
    assert quick.ce_all == pytest.approx(fid.ce_all, rel=1e-6) and math.isnan(quick.layers[0]["ce"])


def test_bad_options_say_so():
    pd_model = tiny_gpt2()
    stream = GeneratedStream(lambda i, g: torch.randint(0, 50, (8,), generator=g), 8)
    with pytest.raises(ValueError, match="unknown training options bogus"):
        train_transcoders(pd_model, stream, bogus=1)
    with pytest.raises(ValueError, match=r"layers \[7\] do not exist"):
        train_transcoders(pd_model, stream, layers=[7])
    with pytest.raises(ValueError, match="unknown transcoder activation"):
        TrainOptions(activation="gelu").config(8)
    with pytest.raises(ValueError, match="TopK transcoder needs k"):
        TranscoderConfig(8, 4, "topk", 9)


def test_feature_report_reads_the_planted_features(planted, tmp_path):
    """For the learned feature that matches planted feature i: it promotes exactly the tokens that carry i (the
    unembedding reads the output features), the tokens that excite it carry i, and its top contexts have i at
    the marked token or the one before it (the previous-token head copies it)."""
    from acdc.transcoders.pages import feature_pages, feature_report

    ts = train_transcoders(planted.model, _stream(planted), layers=[0], progress=False, n_features=32, k=4, lr=3e-3,
                           tokens=200_000, batch_tokens=256, dead_tokens=5000)
    tc = ts[0]
    enc = F.normalize(tc.W_enc.detach().T, dim=1)
    dec = F.normalize(tc.W_dec.detach(), dim=1)
    match = torch.minimum(planted.encoder @ enc.T, planted.decoder @ dec.T)  # [planted, learned]
    for i in (0, 7):
        j = int(match[i].argmax())
        carriers = {f"w{t}" for t in (planted.token_features[:, i] > 0).nonzero().squeeze(1).tolist()}
        strong = {f"w{t}" for t in (planted.token_features[:, i] > dictionary.THRESHOLD).nonzero().squeeze(1).tolist()}
        (rep,) = feature_report(planted.model, ts, 0, [j], _stream(planted, seed=7), sequences=32, tokenizer=planted.tokenizer)
        n = min(5, len(carriers))
        assert {t for t, _ in rep.promotes[:n]} <= carriers, (i, rep.promotes[:n], carriers)
        assert {t for t, _ in rep.excited_by[:3]} <= strong, (i, rep.excited_by[:3], strong)
        assert 0 < rep.density < 0.5 and len(rep.contexts) == 10
        for c in rep.contexts:
            assert c["token"] in carriers or (c["before"] and c["before"][-1] in carriers), c
    page = feature_pages([rep], tmp_path / "features.html")
    text = page.read_text()
    assert f"m0.f{j}" in text and "top-activating contexts" in text and "http" not in text
    with pytest.raises(ValueError, match="features \\[99\\] do not exist"):
        feature_report(planted.model, ts, 0, [99], _stream(planted))


def test_feature_report_in_pieces_equals_one_pass(tmp_path):
    """The corpus pass cut into pieces (a sweep; kept per piece in a results folder) gives the one-pass report;
    a pass started again reads the pieces it finished."""
    from dataclasses import asdict

    from acdc.transcoders.pages import feature_report

    model = tiny_gpt2(seed=2)
    tf = Transformer.from_bridge(model)
    ts = _random_set(tf, "relu")
    corpus = GeneratedStream(lambda i, g: torch.randint(0, tf.arch.d_vocab, (12,), generator=g), 12, seed=0, name="random")
    pairs = [(1, 3), (0, 5), (1, 0), (0, 1)]
    whole = feature_report(model, ts, None, pairs, corpus, sequences=22, start=3, batch=4, top=6)
    pieces = feature_report(model, ts, None, pairs, corpus, sequences=22, start=3, batch=4, top=6, chunk=5,
                            results=tmp_path)  # pieces of 8 sequences: 8 + 8 + 6
    assert len(list(tmp_path.glob("*.json"))) == 3
    assert [asdict(r) for r in pieces] == [asdict(r) for r in whole]
    seqs = [{c["sequence"] for c in r.contexts} for r in whole]
    assert any(min(s) < 11 for s in seqs) and any(max(s) >= 19 for s in seqs)  # the top contexts span the pieces
    assert sum(len(r.contexts) for r in whole) > 12 and all(len(r.contexts) <= 6 for r in whole)
    saved = next(iter(tmp_path.glob("*.json")))
    d = json.loads(saved.read_text())
    d["result"]["n_tokens"] *= 2  # a finished piece is read back, not scanned again
    saved.write_text(json.dumps(d))
    again = feature_report(model, ts, None, pairs, corpus, sequences=22, start=3, batch=4, top=6, chunk=5, results=tmp_path)
    assert again[0].density < whole[0].density
    with pytest.raises(ValueError, match="another sweep"):
        feature_report(model, ts, None, [(1, 3)], corpus, sequences=22, start=3, batch=4, top=6, chunk=5, results=tmp_path)


def test_feature_report_over_many_layers_equals_one_layer_at_a_time():
    """layer=None with (layer, feature) pairs scans every layer in one pass and gives what one call per layer gives."""
    from dataclasses import asdict

    from acdc.transcoders.pages import feature_report

    model = tiny_gpt2(seed=2)
    tf = Transformer.from_bridge(model)
    ts = _random_set(tf, "relu")
    corpus = GeneratedStream(lambda i, g: torch.randint(0, tf.arch.d_vocab, (12,), generator=g), 12, seed=0, name="random")
    many = feature_report(model, ts, None, [(1, 3), (0, 5), (1, 0)], corpus, sequences=16, batch=4)
    one = feature_report(model, ts, 0, [5], corpus, sequences=16, batch=4) + feature_report(model, ts, 1, [3, 0], corpus, sequences=16, batch=4)
    by_name = {r.name: asdict(r) for r in one}
    assert [r.name for r in many] == ["m1.f3", "m0.f5", "m1.f0"]
    assert all(asdict(r) == by_name[r.name] for r in many) and any(r.contexts for r in many)
    with pytest.raises(ValueError, match="no transcoder for layers \\[7\\]"):
        feature_report(model, ts, None, [(7, 0)], corpus)
    with pytest.raises(ValueError, match="executor must be"):
        feature_report(model, ts, None, [(1, 3)], corpus, executor="threads")
    with pytest.raises(ValueError, match="give features as \\(layer, feature\\) pairs"):
        feature_report(model, ts, None, [3], corpus)


@pytest.mark.parametrize("activation", ["relu", "topk", "jumprelu"])
def test_encoding_some_features_equals_encoding_all(activation):
    """`encode_features` (what the engine runs on a feature graph) is `encode` read at the chosen
    features, by hand: a TopK feature's activation depends on the others (a chosen feature outside the
    top k is 0); a JumpReLU feature at exactly its threshold is off, just above it on."""
    gen = torch.Generator().manual_seed(0)
    tc = Transcoder(TranscoderConfig(6, 10, activation, 3 if activation == "topk" else None, False))
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.randn(4, 5, 6, generator=gen)
    idx = torch.tensor([7, 0, 3, 9])
    pre = x @ tc.W_enc.detach() + tc.b_enc.detach()
    if activation == "relu":
        want = pre.clamp_min(0)
    elif activation == "topk":
        kth = pre.topk(3, dim=-1).values[..., -1:]
        want = torch.where(pre >= kth, pre.clamp_min(0), 0)
    else:
        with torch.no_grad():  # feature 3's threshold set to its pre-activation at one token, feature 0's just below
            tc.log_threshold[3] = pre[0, 0, 3].abs().log()
            tc.log_threshold[0] = (pre[0, 0, 0].abs() * (1 - 1e-4)).log()
        pre = x @ tc.W_enc.detach() + tc.b_enc.detach()
        want = torch.where(pre > tc.log_threshold.detach().exp(), pre, 0)
    with torch.no_grad():
        got = tc.encode_features(x, idx)
        assert torch.allclose(got, want[..., idx], atol=1e-6)
        assert torch.allclose(got, tc.encode(x)[..., idx], atol=1e-6)
    if activation == "topk":
        assert bool((want[..., idx] == 0).any()) and bool((pre[..., idx] > 0).any())
