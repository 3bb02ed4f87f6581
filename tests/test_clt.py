"""Cross-layer transcoders: the object's maths against the definition written out, its files, circuit-tracer's
layout (the peer's own code: experiments/peers/check_transcoder_readers.sh), and the one-line refusals."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_gpt2, tiny_neox
from safetensors.torch import save_file

import acdc
from acdc.transcoders import CLTConfig, CrossLayerTranscoder

L, D, N = 3, 8, 6


def _random_clt(activation: str = "relu", skip: bool = False, seed: int = 0, **kw) -> CrossLayerTranscoder:
    gen = torch.Generator().manual_seed(seed)
    clt = CrossLayerTranscoder(CLTConfig(L, D, N, activation, k=2 if activation == "topk" else None, skip=skip, **kw))
    with torch.no_grad():
        for name, p in clt.named_parameters():
            p.copy_(0.1 * torch.rand(p.shape, generator=gen).log() if name == "log_threshold" else torch.randn(p.shape, generator=gen))
    return clt


def _by_hand(clt: CrossLayerTranscoder, xs: torch.Tensor) -> torch.Tensor:
    """out_j = sum_{l <= j} sum_i act_{l,i}(x_l) W_dec[l][i, j - l] + b_dec[j] (+ x_j W_skip[j]), one term at a time;
    with offsets a firing feature's activation gains offset[l][i, j - l], with cross-layer skips x_l W_skip_cross[l][j - l - 1]."""
    c = clt.cfg
    out = torch.zeros(L, *xs.shape[1:])
    for j in range(L):
        for t in range(xs.shape[1]):
            total = clt.b_dec[j].clone()
            for src in range(j + 1):
                pre = [float(xs[src, t] @ clt.W_enc[src][:, i] + clt.b_enc[src][i]) for i in range(N)]
                if c.activation == "relu":
                    act = [max(v, 0.0) for v in pre]
                elif c.activation == "jumprelu":
                    act = [v if v > math.exp(float(clt.log_threshold[src][i])) else 0.0 for i, v in enumerate(pre)]
                else:  # topk: the k largest, ReLU'd
                    top = sorted(range(N), key=lambda i: -pre[i])[: c.k]
                    act = [max(pre[i], 0.0) if i in top else 0.0 for i in range(N)]
                for i in range(N):
                    offset = float(clt.offset[src][i, j - src]) if c.offsets and act[i] > 0 else 0.0
                    total = total + (act[i] + offset) * clt.W_dec[src][i, j - src]
                if c.cross_skip and src < j:
                    total = total + xs[src, t] @ clt.W_skip_cross[src][j - src - 1]
            if c.skip:
                total = total + xs[j, t] @ clt.W_skip[j]
            out[j, t] = total
    return out


@pytest.mark.parametrize("activation, skip, extended", [("relu", False, False), ("jumprelu", True, False), ("topk", False, False),
                                                       ("topk", True, True), ("relu", False, True)])
def test_a_clt_writes_each_feature_into_its_layer_and_every_later_one(activation, skip, extended):
    clt = _random_clt(activation, skip, offsets=extended, cross_skip=extended)
    xs = torch.randn(L, 5, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = clt(xs), _by_hand(clt, xs)
        assert torch.allclose(got, want, atol=1e-5)
        acts = [clt.encode(layer, xs[layer]) for layer in range(L)]
        assert all(bool((a > 0).any()) for a in acts) and not all(bool((a > 0).all()) for a in acts)  # sparse, not dead
        # what the stream has from layer 0's features once layers 0..k-1 have run: the decoders' running sum
        for k in range(L + 1):
            want_w = sum((clt.decoder(0, j) for j in range(k)), torch.zeros(N, D))
            assert torch.allclose(clt.written(0, k), want_w)
        assert torch.equal(clt.written(2, 2), torch.zeros(N, D)) and torch.equal(clt.written(2, 3), clt.decoder(2, 2))
    with pytest.raises(ValueError, match="a feature of layer 2 writes into layers 2..2, not 1"):
        clt.decoder(2, 1)


@pytest.mark.parametrize("extended", [False, True])
def test_clt_files_load_back_equal_and_are_never_overwritten(tmp_path, extended):
    clt = _random_clt("jumprelu", True, seed=3, offsets=extended, cross_skip=extended)
    clt.save(tmp_path / "clt")
    back = acdc.load_clt(tmp_path / "clt")
    assert back.cfg == clt.cfg and back.source == clt.source
    assert all(torch.equal(a, b) for a, b in zip(clt.state_dict().values(), back.state_dict().values(), strict=True))
    with pytest.raises(FileExistsError):
        clt.save(tmp_path / "clt")
    with pytest.raises(ValueError, match="is a cross-layer transcoder: load it with acdc.load_clt"):
        acdc.load_transcoders(tmp_path / "clt")


def _write_circuit_tracer_clt(folder, clt: CrossLayerTranscoder, hook: str | None = "hook_resid_mid") -> None:
    """circuit-tracer's `CrossLayerTranscoder.to_safetensors` layout: W_enc_{l} [n, d], b_enc_{l}, b_dec_{l},
    threshold_{l} in W_enc_{l}.safetensors; W_dec_{l} [n, L - l, d] in W_dec_{l}.safetensors."""
    folder.mkdir(parents=True)
    for layer in range(L):
        enc = {f"W_enc_{layer}": clt.W_enc[layer].T.contiguous(), f"b_enc_{layer}": clt.b_enc[layer], f"b_dec_{layer}": clt.b_dec[layer]}
        if clt.log_threshold is not None:
            enc[f"threshold_{layer}"] = clt.log_threshold[layer].exp()
        save_file({k: v.detach().contiguous() for k, v in enc.items()}, str(folder / f"W_enc_{layer}.safetensors"))
        save_file({f"W_dec_{layer}": clt.W_dec[layer].detach().contiguous()}, str(folder / f"W_dec_{layer}.safetensors"))
    if hook is not None:
        (folder / "config.yaml").write_text(f"model_kind: cross_layer_transcoder\nfeature_input_hook: {hook}\n")


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_circuit_tracer_clt_folders_equal_the_definition(tmp_path, activation):
    clt = _random_clt(activation, seed=4)
    _write_circuit_tracer_clt(tmp_path / "ct", clt)
    read = acdc.load_clt(tmp_path / "ct")
    xs = torch.randn(L, 5, D, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(read(xs), _by_hand(clt, xs), atol=1e-5)
    assert read.cfg.reads == "stream" and read.cfg.activation == activation and read.source.startswith("circuit-tracer")
    _write_circuit_tracer_clt(tmp_path / "normed", clt, hook="mlp.hook_in")
    assert acdc.load_clt(tmp_path / "normed").cfg.reads == "normed"


def _clt_training_folder(folder, L: int, window: int, gen, *, skip=False, norm_io=False, scale=False, divide=False,
                         offsets=True, cross_skips=True, hook_in=None, **cfg_extra) -> dict:
    """A clt-training folder (`acdc.transcoders.clt_formats`' layout) of random tensors, as its ``save_to_disk`` writes
    it (``W_dec`` / ``b_dec`` / ``W_skip`` repeat target 0's); returns the per-layer tensors and cfg.json."""
    import json

    made = {}
    for layer in range(L):
        n_t = min(window, L - layer)
        t = {"encoder.weight": torch.randn(N, D, generator=gen), "encoder.bias": torch.randn(N, generator=gen)}
        for kk in range(n_t):
            t[f"W_decs.{kk}"] = torch.randn(N, D, generator=gen)
            t[f"b_decs.{kk}"] = torch.randn(D, generator=gen)
            t[f"post_encs.{kk}"] = torch.randn(N, generator=gen) if offsets else torch.zeros(N)
            if scale:
                t[f"post_enc_scales.{kk}"] = torch.randn(N, generator=gen)
            if skip:
                t[f"W_skips.{kk}"] = torch.randn(D, D, generator=gen) if kk == 0 or cross_skips else torch.zeros(D, D)
        t.update({"W_dec": t["W_decs.0"].clone(), "b_dec": t["b_decs.0"].clone(), **({"W_skip": t["W_skips.0"].clone()} if skip else {})})
        if norm_io:
            t.update({"in_norm": torch.rand(1, generator=gen) * 3 + 1, "out_norm": torch.rand(1, generator=gen) * 3 + 1})
        cfg = {"d_in": D, "k": 2, "num_latents": N, "transcode": True, "n_targets": n_t, "activation": "topk", "skip_connection": skip,
               "normalize_io": norm_io, "post_encoder_scale": scale, "divide_cross_layer": divide, "coalesce_topk": "none",
               "per_source_tied": False, "secondary_target_tied": False, **cfg_extra}
        sub = folder / f"layers.{layer}.mlp"
        sub.mkdir(parents=True)
        save_file(t, str(sub / "sae.safetensors"))
        (sub / "cfg.json").write_text(json.dumps(cfg))
        made[layer] = (t, cfg)
    (folder / "config.json").write_text(json.dumps({"hookpoints": [f"layers.{i}.mlp" for i in range(L)], "hookpoints_in": hook_in or []}))
    return made


def _clt_training_runner(made: dict, xs: torch.Tensor) -> list[torch.Tensor]:
    """clt-training's ``CrossLayerRunner`` written out, unfolded: target j is its own coder's target-0 output plus the
    earlier coders' outputs into j (summed, divided by their count with divide_cross_layer), all de-normalised by j's
    out_norm; a coder's output into its k-th target is (a + post_encs[k] [a > 0]) post_enc_scales[k] @ W_decs[k] +
    b_decs[k] + x' W_skips[k].T, a the TopK of the ReLU of its encoder on x' (x normalised by its in_norm)."""
    L, d = len(made), xs.shape[-1]
    xn, acts = [], []
    for layer in range(L):
        t, cfg = made[layer]
        x = xs[layer] * (math.sqrt(d) / t["in_norm"]) if cfg["normalize_io"] else xs[layer]
        pre = (x @ t["encoder.weight"].T + t["encoder.bias"]).relu()
        top = pre.topk(cfg["k"], dim=-1)
        xn.append(x)
        acts.append(torch.zeros_like(pre).scatter(-1, top.indices, top.values))

    def into(src: int, j: int) -> torch.Tensor:
        t, cfg = made[src]
        kk = j - src
        a = acts[src] + t[f"post_encs.{kk}"] * (acts[src] > 0)
        if cfg["post_encoder_scale"]:
            a = a * t[f"post_enc_scales.{kk}"]
        y = a @ t[f"W_decs.{kk}"] + t[f"b_decs.{kk}"]
        return y + xn[src] @ t[f"W_skips.{kk}"].T if cfg["skip_connection"] else y

    outs = []
    for j in range(L):
        t, cfg = made[j]
        srcs = [src for src in range(j) if j < src + made[src][1]["n_targets"]]
        total = into(j, j)
        if srcs:
            total = total + sum(into(src, j) for src in srcs) / (max(1, len(srcs)) if cfg["divide_cross_layer"] else 1)
        outs.append(total * t["out_norm"] / math.sqrt(d) if cfg["normalize_io"] else total)
    return outs


@pytest.mark.parametrize("window, skip, norm_io, scale, divide, offsets, cross_skips", [
    (3, True, True, True, True, True, True),      # the README's usage: every factor
    (2, False, False, False, False, False, False),  # a window of 2, nothing else: an ordinary CLT
    (3, True, False, False, True, False, False),  # own-layer skips only, zero offsets: an ordinary CLT with skips
])
def test_clt_training_folders_equal_its_runner_written_out(tmp_path, window, skip, norm_io, scale, divide, offsets, cross_skips):
    """A clt-training folder read by `load_clt` gives its runner's MLP stand-ins (written out, unfolded) and TopK
    activations; offsets and cross-layer skips that are all zero are left out. The peers' own code agrees:
    experiments/peers/check_clt_training_reader.sh."""
    Lc = 3 if window == 3 else 4
    made = _clt_training_folder(tmp_path / "clt", Lc, window, torch.Generator().manual_seed(9), skip=skip, norm_io=norm_io,
                                scale=scale, divide=divide, offsets=offsets, cross_skips=cross_skips)
    clt = acdc.load_clt(tmp_path / "clt")
    assert isinstance(acdc.transcoders.load_dictionary(tmp_path / "clt"), CrossLayerTranscoder)
    c = clt.cfg
    assert (c.n_layers, c.n_features, c.activation, c.k, c.skip, c.offsets, c.cross_skip, c.reads) == (
        Lc, N, "topk", 2, skip, offsets, skip and cross_skips, "normed")
    xs = 2 * torch.randn(Lc, 7, D, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        want = _clt_training_runner(made, xs)
        got = clt(xs)
        for j in range(Lc):
            assert torch.allclose(got[j], want[j], atol=1e-5 * float(want[j].abs().max())), j
        assert all(torch.equal(clt.W_dec[src][:, kk], torch.zeros(N, D)) for src in range(Lc) for kk in range(window, Lc - src))
    with pytest.raises(ValueError, match="is a cross-layer transcoder: load it with acdc.load_clt"):
        acdc.load_transcoders(tmp_path / "clt")
    with pytest.raises(ValueError, match="writes into .* layers .*load the folder with acdc.load_clt"):
        acdc.transcoders.read_sparsify(tmp_path / "clt")


def test_clt_training_folders_that_acdc_cannot_read_are_refused_in_one_line(tmp_path):
    gen = torch.Generator().manual_seed(11)
    _clt_training_folder(tmp_path / "stream", 3, 3, gen, hook_in=[f"layers.{i}.post_attention_layernorm" for i in range(3)])
    assert acdc.load_clt(tmp_path / "stream").cfg.reads == "stream"
    cases = {"coalesced": ({"coalesce_topk": "concat"}, "coalesce_topk='concat' .*is not read"),
             "tied": ({"per_source_tied": True}, "per_source_tied=True"),
             "groupmax": ({"activation": "groupmax"}, "activation 'groupmax'"),
             "sae": ({"transcode": False}, "is a sparse autoencoder")}
    for name, (extra, msg) in cases.items():
        _clt_training_folder(tmp_path / name, 3, 3, gen, **extra)
        with pytest.raises(ValueError, match=msg) as err:
            acdc.load_clt(tmp_path / name)
        assert "\n" not in str(err.value)
    _clt_training_folder(tmp_path / "gap", 3, 3, gen)
    import shutil

    shutil.rmtree(tmp_path / "gap" / "layers.1.mlp")
    _clt_training_folder(tmp_path / "hooks", 3, 3, gen, hook_in=["layers.0.input_layernorm"] * 3)
    for name, msg in (("gap", r"coders for layers \[0, 2\]; acdc's cross-layer transcoders cover every layer 0..2"),
                      ("hooks", "hookpoints_in .*acdc's CLTs read the MLP's normed input or the stream")):
        with pytest.raises(ValueError, match=msg) as err:
            acdc.load_clt(tmp_path / name)
        assert "\n" not in str(err.value)


def test_clt_refusals_are_one_line(tmp_path):
    bad = _random_clt("jumprelu", seed=6)
    _write_circuit_tracer_clt(tmp_path / "neg", bad)
    save_file({"W_enc_1": bad.W_enc[1].T.contiguous(), "b_enc_1": bad.b_enc[1].detach(), "b_dec_1": bad.b_dec[1].detach(),
               "threshold_1": -torch.ones(N)}, str(tmp_path / "neg" / "W_enc_1.safetensors"))
    _write_circuit_tracer_clt(tmp_path / "hook", bad, hook="ln2.hook_normalized")
    _write_circuit_tracer_clt(tmp_path / "short", bad)
    (tmp_path / "short" / "W_dec_2.safetensors").unlink()
    (tmp_path / "empty").mkdir()
    model = tiny_gpt2(n_layer=2, n_head=4)
    _random_clt().save(tmp_path / "three")
    cases = [(tmp_path / "neg", "6 negative JumpReLU thresholds in layer 1"), (tmp_path / "hook", "feature_input_hook 'ln2.hook_normalized'"),
             (tmp_path / "short", "layer 2 of 3 is incomplete"), (tmp_path / "empty", "no W_enc_0.safetensors"),
             (tmp_path / "nope", "not found")]
    for where, msg in cases:
        with pytest.raises(ValueError, match=msg) as err:
            acdc.load_clt(where)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="spans 3 layers; this model has 2"):
        acdc.load_clt(tmp_path / "three", model)


# ---------------------------------------------------------------------- CLT features as graph nodes
def _model_and_clt(activation: str = "relu", skip: bool = False, reads: str = "normed", family: str = "gpt2", extended: bool = False):
    """A tiny random model (random biases: b_dec and b_O sit outside every node) and a random CLT over its layers
    (``extended``: with per-target offsets the size of an activation and cross-layer skip paths, clt-training's)."""
    from acdc.model import Transformer
    from acdc.transcoders import ModelInfo

    model = tiny_gpt2(n_layer=3, n_head=2, d=16) if family == "gpt2" else tiny_neox(n_layer=3, n_head=2, d=16)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.original_model.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))
    tf = Transformer.from_bridge(model)
    clt = CrossLayerTranscoder(CLTConfig(3, 16, 10, activation, k=3 if activation == "topk" else None, skip=skip, reads=reads,
                                         offsets=extended, cross_skip=extended), ModelInfo.of(tf, "tiny"), "random (tests)")
    with torch.no_grad():
        for name, p in clt.named_parameters():
            p.copy_((3.0 if name.startswith("offset") else 0.4) * torch.randn(p.shape, generator=gen))
        if clt.log_threshold is not None:
            clt.log_threshold.fill_(math.log(0.3))
    return model, clt


def clt_split(model, graph, clt: CrossLayerTranscoder) -> dict:
    """`oracle.split_forward`'s split of a CLT feature graph, by hand: feature i of layer l outputs, to a reader after
    k MLPs, a_i(x_l) times the sum of its decoders into layers l..k-1 ([L + 1, B, S, d], `oracle.MLPSplit`), plus,
    with offsets and while it fires, the sum of its offsets times those decoders; layer j's error is its MLP's output
    minus sum_{l <= j} (a_l + offset [a_l > 0]) W_dec[l][:, j - l] over the graph's features, b_dec[j] and the skip
    path, every a_l from its own layer's input in the same run."""
    from test_features import _ln2

    L = clt.cfg.n_layers
    featured = dict(graph.features.features)
    acts_of: dict[int, torch.Tensor] = {}  # this run's activations, layer by layer (the forward visits them in order)
    read_of: dict[int, torch.Tensor] = {}  # and what each layer read (cross-layer skip paths read it)

    def split(layer, x, post, y):
        xin = _ln2(model, layer)(x) if clt.cfg.reads == "normed" else x
        acts_of[layer], read_of[layer] = clt.encode(layer, xin).detach(), xin
        parts, recon = {}, clt.b_dec[layer].detach().expand_as(y).clone()
        def offset(src, i, j):  # feature i of layer src: its offset into layer j (zero without offsets)
            return 0.0 if clt.offset is None else float(clt.offset[src][i, j - src])

        for src in range(layer + 1):
            for i in featured[src]:
                a = acts_of[src][..., i, None]
                recon = recon + (a + offset(src, i, layer) * (a > 0)) * clt.W_dec[src][i, layer - src].detach()
        for i in featured[layer]:
            a = acts_of[layer][..., i, None]
            by_reader = [sum(((a + offset(layer, i, j) * (a > 0)) * clt.W_dec[layer][i, j - layer].detach() for j in range(layer, k)),
                             torch.zeros(*a.shape[:-1], y.shape[-1])) for k in range(L + 1)]
            parts[f"m{layer}.f{i}"] = torch.stack(by_reader)
        if clt.W_skip is not None or clt.W_skip_cross is not None:  # every skip path into this layer's MLP
            skip = xin @ clt.W_skip[layer].detach() if clt.W_skip is not None else torch.zeros_like(y)
            for src in range(layer if clt.W_skip_cross is not None else 0):
                skip = skip + read_of[src] @ clt.W_skip_cross[src][layer - src - 1].detach()
            parts[f"m{layer}.skip"] = skip
            recon = recon + skip
        parts[f"m{layer}.err"] = y - recon
        return parts

    return {"split": split, "mlp_bias": [clt.b_dec[layer].detach() for layer in range(L)]}


CLT_GRAPHS = [("relu", False, "normed", "gpt2", None, False),
              ("jumprelu", True, "stream", "gpt2", {0: [1, 4, 7], 1: [0, 2], 2: [3, 5, 9]}, False),
              ("topk", False, "normed", "neox", None, False),
              ("topk", True, "normed", "gpt2", {0: [1, 4, 7], 1: [0, 2], 2: [3, 5, 9]}, True),  # offsets, cross-layer skips
              ("relu", False, "stream", "neox", None, True)]


@pytest.mark.parametrize("activation, skip, reads, family, chosen, extended", CLT_GRAPHS)
@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_clt_feature_graph_patched_logits_equal_the_hooked_forward(activation, skip, reads, family, chosen, extended, ablation):
    """Every edge kept: the model. Random edge sets: the hooked forward with every MLP replaced by the CLT's
    reconstruction from the graph's features plus that layer's error, each destination reading what each feature
    has written by its layer. ACDC's propagation (from scratch here) agrees."""
    from oracle import patched_logits

    model, clt = _model_and_clt(activation, skip, reads, family, extended)
    g = acdc.Graph.from_model(model, transcoders=clt, features=chosen)
    assert g.features is not None and g.features.info["cross_layer"] and "m2.f3" in {s.name for s in g.sources}
    clean, corrupt = (torch.randint(0, 50, (3, 6), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    p = acdc.Patcher(model, clean, corrupt, graph=g, transcoders=clt, ablation=ablation)
    with torch.no_grad():
        full = model(clean, return_type="logits")[:, -1]
    assert torch.allclose(p.logits(torch.zeros(g.n_edges, dtype=torch.bool)), full, atol=1e-4)
    split = clt_split(model, g, clt)
    gen = torch.Generator().manual_seed(0)
    for frac in (0.3, 0.7):
        mask = torch.rand(g.n_edges, generator=gen) < frac
        ref = patched_logits(model, g, clean, corrupt, [e.name for e, m in zip(g.edges, mask.tolist()) if m], ablation, **split)[:, -1]
        got = p.logits(mask)
        assert torch.allclose(got, ref, atol=1e-4), float((got - ref).abs().max())
        keep = g.dense(~mask) & p.upstream
        assert torch.allclose(p.state().propagate(keep).logits[0], got, atol=1e-5)


@pytest.mark.parametrize("extended, ablation", [(False, "resample"), (True, "mean"), (True, "resample")])
def test_positional_clt_graph_patched_logits_and_eap_equal_the_hooked_forward(extended, ablation):
    """A CLT graph at named positions (offsets' second channel and cross-layer skips too): each edge ablated over its
    position's tokens only gives the hooked forward's logits, and each EAP score the gradient formula over those
    tokens."""
    from conftest import logit_diff_loss, random_answers, random_tokens
    from oracle import eap_reference, patched_logits, per_position_masks
    from test_features import _named_positions

    model, clt = _model_and_clt("topk", True, extended=extended)
    positions = _named_positions()
    g0 = acdc.Graph.from_model(model, transcoders=clt, features={0: [1, 4, 7], 1: [0, 2, 6], 2: [3, 5, 9]})
    g = g0.with_positions(positions.names)
    clean, corrupt = random_tokens(vocab=50)
    split = clt_split(model, g0, clt)
    p = acdc.Patcher(model, clean, corrupt, graph=g, transcoders=clt, ablation=ablation, positions=positions)
    for frac, seed in [(0.1, 0), (0.5, 1)]:
        mask = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(seed)) < frac
        want = patched_logits(model, g0, clean, corrupt, per_position_masks(g, mask, positions), ablation, **split)[:, -1]
        got = p.logits(mask)
        assert float((got - want).abs().max()) <= 1e-4 * max(float(want.abs().max()), 1.0), (frac, seed)
        assert float((got - p.clean.logits).abs().max()) > 1e-3
    s = acdc.attribute(model, clean, corrupt, method="eap", metric="logit_diff", answers=random_answers(), ablation=ablation,
                       graph=g, transcoders=clt, positions=positions, progress=False)
    ref = eap_reference(model, g, clean, corrupt, ablation, logit_diff_loss, positions, **clt_split(model, g0, clt))
    values = torch.tensor([ref[e.name] for e in g.edges], dtype=torch.float64)
    scale = float(values.abs().max())
    assert scale > 0 and torch.allclose(s.values, values, atol=1e-4 * scale, rtol=1e-4)


@pytest.mark.parametrize("extended", [False, True])
def test_clt_feature_graph_eap_equals_the_gradient_formula(extended):
    """EAP on a CLT graph: (ablated - clean output as the destination reads it) . the gradient at its input (with
    offsets the output's change includes a feature's offsets when it starts or stops firing; with cross-layer skips
    a layer's skip node is every skip path into its MLP)."""
    from oracle import eap_reference

    model, clt = _model_and_clt("relu", True, extended=extended)
    g = acdc.Graph.from_model(model, transcoders=clt)
    clean, corrupt = (torch.randint(0, 50, (3, 6), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    answers = (torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]))
    s = acdc.attribute(model, clean, corrupt, method="eap", metric="logit_diff", answers=answers, graph=g, transcoders=clt)

    def loss(logits):
        last = logits[:, -1]
        return -(last[torch.arange(3), answers[0]] - last[torch.arange(3), answers[1]]).mean()

    ref = eap_reference(model, g, clean, corrupt, "resample", loss, **clt_split(model, g, clt))
    scale = max(abs(v) for v in ref.values())
    assert any(abs(ref[f"m0.f{i}->logits"]) > 1e-3 * scale for i in range(10))  # layer 0's features reach the logits
    for e in g.edges:
        assert s[e.name] == pytest.approx(ref[e.name], abs=1e-4 * scale, rel=1e-3), e.name


@pytest.mark.parametrize("activation, skip, reads, family, chosen, extended", CLT_GRAPHS)
@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_clt_feature_graph_eap_ig_activations_equals_the_hooked_paths(activation, skip, reads, family, chosen, extended, ablation):
    """EAP-IG-activations on a CLT graph: a layer's group (its features, error and skip) moves along its path into
    every later MLP its features write into; each score equals the hooked forward's (`eap_ig_activations_reference`),
    and differs from EAP's (the path points are not all the clean run)."""
    from oracle import eap_ig_activations_reference

    model, clt = _model_and_clt(activation, skip, reads, family, extended)
    g = acdc.Graph.from_model(model, transcoders=clt, features=chosen)
    clean, corrupt = (torch.randint(0, 50, (3, 6), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    answers = (torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]))
    kw = dict(metric="logit_diff", answers=answers, graph=g, transcoders=clt, ablation=ablation, progress=False)
    s = acdc.attribute(model, clean, corrupt, method="eap-ig-activations", steps=2, **kw)

    def loss(logits):
        last = logits[:, -1]
        return -(last[torch.arange(3), answers[0]] - last[torch.arange(3), answers[1]]).mean()

    ref = eap_ig_activations_reference(model, g, clean, corrupt, ablation, loss, 2, **clt_split(model, g, clt))
    scale = max(abs(v) for v in ref.values())
    assert any(abs(ref[f"m0.f{i}->logits"]) > 1e-3 * scale for i in dict(g.features.features)[0])
    for e in g.edges:
        assert s[e.name] == pytest.approx(ref[e.name], abs=1e-5 * scale, rel=1e-4), e.name
    eap = acdc.attribute(model, clean, corrupt, method="eap", **kw)
    assert float((s.values - eap.values).abs().max()) > 1e-3 * scale


@pytest.mark.parametrize("part", ["offset", "W_skip_cross"])
def test_offsets_and_cross_layer_skips_run_in_graphs_and_circuit_tracers_layout_refuses_them(tmp_path, part):
    """A CLT with per-target offsets or cross-layer skip paths (clt-training's) that are all zero is an ordinary CLT:
    circuit-tracer's layout takes its offsets' folder; one non-zero offset and it refuses in one line, naming why
    (its CLTs have no skip paths at all). Feature graphs (offsets as a second channel per feature, cross-layer skips
    in each layer's skip node) and attribution graphs take both; the oracle tests above check them."""
    model, _ = _model_and_clt()
    clt = CrossLayerTranscoder(CLTConfig(3, 16, 10, "relu", offsets=part == "offset", cross_skip=part == "W_skip_cross"))
    with torch.no_grad():
        for name, p in clt.named_parameters():
            if not name.startswith(part):
                p.copy_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    clean, corrupt = (torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    g = acdc.Graph.from_model(model, transcoders=clt)
    assert acdc.Patcher(model, clean, corrupt, graph=g, transcoders=clt).units.channels == 1  # type: ignore[union-attr]
    if part == "offset":
        clt.to_circuit_tracer(tmp_path / "zero")
    with torch.no_grad():
        getattr(clt, part)[1].view(-1)[0] = 1e-3
    if part == "offset":
        with pytest.raises(ValueError, match="circuit-tracer's layout needs .*per-target offsets") as err:
            clt.to_circuit_tracer(tmp_path / "nonzero")
        assert "\n" not in str(err.value)
    else:
        with pytest.raises(ValueError, match="without skip paths"):
            clt.to_circuit_tracer(tmp_path / "nonzero")
    p = acdc.Patcher(model, clean, corrupt, graph=g, transcoders=clt)
    assert p.units.channels == (2 if part == "offset" else 1)  # type: ignore[union-attr]
    assert acdc.attribution_graph(model, clean[0], transcoders=clt).n_features > 0


def test_acdc_on_a_clt_graph_keeps_what_its_trace_says():
    """Exact ACDC on a CLT graph (each candidate from scratch): the circuit it returns, patched, gives the metric its
    trace ends with, and faithfulness reads the same circuit through the same engine."""
    model, clt = _model_and_clt("relu", False)
    g = acdc.Graph.from_model(model, transcoders=clt, features={0: [0, 1, 2], 1: [3, 4], 2: [5, 6]})
    clean, corrupt = (torch.randint(0, 50, (3, 6), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    c = acdc.discover(model, clean, corrupt, graph=g, transcoders=clt, threshold=0.05, metric="kl", progress=False)
    assert 0 < c.n_edges < g.n_edges
    from acdc.api import make_batch
    from acdc.metrics import resolve_metric

    p = acdc.Patcher(model, clean, corrupt, graph=g, transcoders=clt)
    kl = resolve_metric("kl")(p.logits(c), make_batch(p))
    assert kl == pytest.approx(c.metric_trace[-1], abs=1e-5)


@pytest.mark.parametrize("ablation, extended", [("resample", False), ("mean", False), ("zero", False), ("mean", True), ("resample", True)])
def test_clt_graph_mixed_run_is_the_patched_run_at_zero_one_and_the_hooked_mix_between(ablation, extended):
    """Edge Pruning's mixed forward on a CLT graph: at 0/1 weights `Patcher.logits`; at fractional weights the hooked
    forward where each destination reads w O + (1 - w) A of what each feature has written by its layer; the gradient
    reaches edges out of layer 0's features, nothing reaches the CLT's parameters."""
    from oracle import ablation_values, split_forward

    from acdc.mixing import mixed_logits

    model, clt = _model_and_clt("jumprelu", True, extended=extended)
    g = acdc.Graph.from_model(model, transcoders=clt, features={0: [1, 4, 7], 1: [0, 2], 2: [3, 5, 9]})
    clean, corrupt = (torch.randint(0, 50, (3, 6), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    p = acdc.Patcher(model, clean, corrupt, graph=g, transcoders=clt, ablation=ablation)

    def weights(w_edges):
        w = torch.zeros(g.state_shape, dtype=w_edges.dtype)
        w[g.edge_dst, g.edge_src] = w_edges
        return w

    keep = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(0)) < 0.6
    assert torch.allclose(mixed_logits(p, weights(keep.float())), p.logits(~keep), atol=1e-5)
    w = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(3))
    got = mixed_logits(p, weights(w))
    split = clt_split(model, g, clt)
    mix = {e.name: torch.full(clean.shape, 1.0 - float(w[i])) for i, e in enumerate(g.edges)}
    want = split_forward(model, g, clean, ablated=mix, abl=ablation_values(model, g, corrupt, ablation, 3, **split), **split)[0][:, -1]
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
    wr = w.clone().requires_grad_(True)
    mixed_logits(p, weights(wr)).sum().backward()
    assert wr.grad is not None and float(wr.grad[g.edges_out_of(["m0.f1", "m0.f4", "m0.f7"])].abs().max()) > 0
    assert all(prm.grad is None for prm in clt.parameters())


@pytest.mark.parametrize("activation, skip, reads, extended", [("relu", True, "normed", False), ("jumprelu", False, "stream", False),
                                                               ("topk", False, "normed", False), ("topk", True, "normed", True),
                                                               ("relu", False, "normed", True)])
def test_clt_attribution_graph_edges_are_the_measured_direct_effects(activation, skip, reads, extended):
    """Every edge of a CLT's attribution graph equals the change of its target in the local replacement model run
    forward by hand when the source's vectors (a feature's: its writes into every later MLP) leave the stream.
    ``extended``: with per-target offsets (a feature writes (a + offset) times each decoder) and cross-layer skip
    paths, which stay live as the own layer's does."""
    from test_attribution_graphs import _frozen_oracle

    from acdc.algorithms.attribution_graph import build_attribution_graph
    from acdc.model import Transformer

    model, clt = _model_and_clt(activation, skip, reads, extended=extended)
    tokens = torch.tensor([3, 7, 1, 9, 4, 4])
    g = build_attribution_graph(Transformer.from_bridge(model), tokens, clt, batch_size=5)
    want = _frozen_oracle(model, clt, tokens, g)
    layer0 = [i for i in range(g.n_features) if int(g.features[i, 0]) == 0]
    assert len(layer0) and float(want[g.logit_start :, layer0].abs().max()) > 1e-2  # layer 0's features reach the logits
    assert torch.allclose(g.adjacency, want, atol=2e-4, rtol=1e-4), float((g.adjacency - want).abs().max())
    # what the features write is gathered from the decoders, never stored per target layer: the estimate counts each
    # source layer's widest position once, as a per-layer set of the same activations would
    from acdc.algorithms.attribution_graph import GraphMemory

    widest = {layer: int(torch.bincount(g.features[g.features[:, 0] == layer][:, 1]).max())
              for layer in range(clt.cfg.n_layers) if bool((g.features[:, 0] == layer).any())}
    L, S, d = clt.cfg.n_layers, len(tokens), clt.cfg.d_model
    m = GraphMemory.of(n_f=g.n_features, cap=g.n_features, S=S, L=L, d=d, n_l=g.n_logits, batch=5, widest=widest,
                       heads=model.cfg.n_heads, offsets=extended)
    assert g.info["memory_estimate_bytes"]["writes"] == m.writes


def test_active_features_and_the_cli_take_a_clt(tmp_path, capsys):
    """`active_features` reads each layer's activations from what its features read; the CLI's --transcoders takes
    a CLT's folder (acdc.load_dictionary) for feature graphs and attribution graphs."""
    from acdc.cli import main
    from acdc.model import Transformer
    from acdc.transcoders import ModelInfo, active_features

    entry = acdc.zoo.load("feature-chain")
    tf = Transformer.of(entry.model)
    clt = CrossLayerTranscoder(CLTConfig(tf.arch.n_layers, tf.arch.d_model, 12, "relu", reads="stream"), ModelInfo.of(tf, "zoo"))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        clt.b_enc[:, :4] -= 1e4  # never active
    active = active_features(entry.model, clt, entry.task)
    mids = [tf.run(t).resid_mid for t in (entry.task.clean, entry.task.corrupt)]
    for layer in clt.layers:
        best = torch.stack([clt.encode(layer, m[layer]).reshape(-1, 12).amax(0) for m in mids]).amax(0)
        assert active[layer] == (best > 0).nonzero().squeeze(1).tolist() and 0 < len(active[layer]) and min(active[layer]) >= 4
    clt.save(tmp_path / "clt")
    assert main(["attribution-graph", "--model", "zoo:feature-chain", "--transcoders", str(tmp_path / "clt"), "-o", str(tmp_path / "ag"),
                 "--no-progress"]) == 0
    assert (tmp_path / "ag" / "graph.json").is_file()
    assert main(["discover", "--model", "zoo:feature-chain", "--transcoders", str(tmp_path / "clt"), "--threshold", "0.05",
                 "-o", str(tmp_path / "d"), "--no-progress"]) == 0
    c = acdc.Circuit.from_json(tmp_path / "d" / "circuit.json")
    out = capsys.readouterr().out
    assert c.graph.features is not None and c.graph.features.info["cross_layer"] and "feature graph" in out
    assert "planted circuit names features these transcoders' graph does not have: no score" in out


@pytest.mark.parametrize("activation, reads", [("relu", "normed"), ("jumprelu", "stream")])
def test_a_clt_written_in_circuit_tracers_layout_reads_back_equal(tmp_path, activation, reads):
    """`to_circuit_tracer` writes what circuit-tracer's `load_clt` reads (its own code reads it in
    experiments/peers/check_transcoder_readers.sh); acdc's reader of that layout gives the same CLT back."""
    clt = _random_clt(activation, reads=reads, seed=9)
    clt.to_circuit_tracer(tmp_path / "ct")
    back = acdc.load_clt(tmp_path / "ct")
    assert back.cfg == clt.cfg
    assert all(torch.allclose(a, b) for a, b in zip(clt.state_dict().values(), back.state_dict().values(), strict=True))
    with pytest.raises(FileExistsError):
        clt.to_circuit_tracer(tmp_path / "ct")
    for bad in (_random_clt("topk"), _random_clt("relu", skip=True)):
        with pytest.raises(ValueError, match="circuit-tracer's cross-layer transcoders are ReLU or JumpReLU without skip paths"):
            bad.to_circuit_tracer(tmp_path / "bad")


def test_the_planted_cross_layer_feature_is_the_pruned_attribution_graph():
    """clt-chain: the prompt's class feature of layer 0 writes into m0 and m1, and a2.h0 moves m1's write to the answer:
    the attribution graph's pruning keeps input -> m0.f{k}@1 -> the answer's logit, one feature (per-layer transcoders
    would need two, m0's and m1's); the error nodes carry little."""
    entry = acdc.zoo.load("clt-chain")
    tokens = entry.task.clean[0]
    g = acdc.attribution_graph(entry.model, tokens, transcoders=entry.transcoders, progress=False)
    k = (int(tokens[1]) - 2) % 4  # item id -> its class
    feature, logit = f"m0.f{k}@1", f"logit@{int(entry.task.correct[0])}"
    assert g.edge("input@1", feature) > 1.0 and g.edge(feature, logit) > 1.0
    kept = g.prune()
    names = [g.node_name(i) for i in kept.node_mask.nonzero().squeeze(1).tolist()]
    assert [n for n in names if ".f" in n] == [feature], names
    assert g.replacement_score > 0.97  # 0.98: m1's error node holds the ratio's misfit and the distractors' leak


# ---------------------------------------------------------------------- training (acdc.train_clt)
def _token_stream(vocab: int = 50, context: int = 12, seed: int = 0):
    from acdc.transcoders import GeneratedStream

    def sample(i: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, vocab, (context,), generator=gen)

    return GeneratedStream(sample, context, seed=seed, name="random tokens")


@pytest.mark.parametrize("activation, skip", [("topk", True), ("relu", False), ("jumprelu", False)])
def test_a_training_step_is_the_loss_written_out_on_the_dense_forward(activation, skip):
    """The CLT trainer's step (sparse TopK decoding, per-target FVU, sparsity, AuxK for dead features) backs up the
    gradient of the loss written out on `CrossLayerTranscoder.forward`, term by term, for every parameter."""
    from acdc.transcoders.clt_training import _CrossLayer
    from acdc.transcoders.training import TrainOptions, World, jump

    clt = _random_clt(activation, skip)
    gen = torch.Generator().manual_seed(5)
    T = 16
    X = {j: torch.randn(T, D, generator=gen) for j in range(L)}
    Y = {j: torch.randn(T, D, generator=gen) for j in range(L)}
    idx = torch.arange(T)
    dead = {j: torch.arange(N) % 3 == j % 3 for j in range(L)}  # some dead features in every layer (AuxK runs)
    opts = TrainOptions(activation=activation, k=2, l1=0.3, l0=0.2, aux_coef=0.5)
    out = _CrossLayer(clt).step(X, Y, idx, idx, dead, opts, World())
    got = {name: p.grad.clone() for name, p in clt.named_parameters()}
    clt.zero_grad()
    xs = torch.stack([X[j] for j in range(L)])
    pres = [X[src] @ clt.W_enc[src] + clt.b_enc[src] for src in range(L)]
    if activation == "jumprelu":  # straight-through threshold gradients (the per-layer trainer's `jump`)
        acts_all = [jump(pres[src], clt.log_threshold[src].exp(), opts.bandwidth, False) for src in range(L)]
    else:
        acts_all = [clt.encode(src, X[src]) for src in range(L)]
        assert torch.allclose(clt.decode(acts_all, xs), clt(xs))
    y_hat = clt.decode(acts_all, xs)
    var = [(Y[j] - Y[j].mean(0)).pow(2).sum() for j in range(L)]
    loss = sum((Y[j] - y_hat[j]).pow(2).sum() / var[j] for j in range(L))
    rms = (sum(var) / (T * L)).sqrt()
    for src in range(L):
        pre, acts = pres[src], acts_all[src]
        if activation == "relu":
            loss = loss + opts.l1 * (acts * clt.W_dec[src].flatten(1).norm(dim=1)).sum() / T / rms
        if activation == "jumprelu":
            loss = loss + opts.l0 * jump(pre, clt.log_threshold[src].exp(), opts.bandwidth, True).sum() / T
        k_aux = min(D // 2, int(dead[src].sum()))
        top = torch.where(dead[src], pre, torch.full_like(pre, -torch.inf)).topk(k_aux, dim=-1)
        aux = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        for t in range(src, L):
            e = (Y[t] - y_hat[t]).detach()
            loss = loss + opts.aux_coef * min(int(dead[src].sum()) / k_aux, 1.0) * (aux @ clt.decoder(src, t) - e).pow(2).sum() / sum(var[src:])
    loss.backward()
    for name, p in clt.named_parameters():
        assert torch.allclose(got[name], p.grad, rtol=1e-4, atol=1e-5), name
    for j in range(L):
        assert math.isclose(float(out[j]["sq"]), float((Y[j] - y_hat[j]).pow(2).sum()), rel_tol=1e-5)


@pytest.mark.parametrize("activation, init", [("topk", "data"), ("relu", "random"), ("jumprelu", "data")])
def test_a_cross_layer_transcoder_of_a_one_layer_model_trains_as_a_transcoder(activation, init):
    """With one layer a CLT is a per-layer transcoder: trained from the same seed and options, it ends with the same
    weights as `train_transcoders`' (the same start, loss, AuxK and decoder norm; only the decoding's rounding differs)."""
    model = tiny_gpt2(n_layer=1)
    kw = dict(progress=False, n_features=16, activation=activation, k=3, l1=0.05, tokens=1200, batch_tokens=100, sequences=8,
              buffer=2, dead_tokens=300, seed=4, init=init, massive=None)
    tcs = acdc.train_transcoders(model, _token_stream(), context=12, **kw)
    clt = acdc.train_clt(model, _token_stream(), context=12, **kw)
    tc = tcs[0]
    for mine, theirs in [(clt.W_enc[0], tc.W_enc), (clt.b_enc[0], tc.b_enc), (clt.W_dec[0][:, 0], tc.W_dec), (clt.b_dec[0], tc.b_dec)]:
        assert torch.allclose(mine, theirs, atol=2e-4), float((mine - theirs).abs().max())
    assert clt.info["tokens"] == tcs.info["tokens"] == 1200
    assert clt.info["layers"]["0"]["fvu"] == pytest.approx(tcs.info["layers"]["0"]["fvu"], rel=1e-3)


def test_clt_training_resumes_where_an_uninterrupted_run_ends(tmp_path, monkeypatch):
    """Killed after a few model forwards and restarted with the same arguments: bit-for-bit the same CLT; the
    checkpoint refuses other settings."""
    from acdc.model import Transformer

    model = tiny_gpt2(n_layer=2)
    kw = dict(progress=False, n_features=12, activation="topk", k=3, tokens=2400, batch_tokens=200, sequences=8, buffer=2,
              checkpoint_every=1, dead_tokens=500, seed=2)
    whole = acdc.train_clt(model, _token_stream(), context=12, **kw)
    calls = {"n": 0}
    real = Transformer.mlp_io

    class Killed(Exception):
        pass

    def dying(self, tokens, layers):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Killed
        return real(self, tokens, layers)

    monkeypatch.setattr(Transformer, "mlp_io", dying)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Killed):
        acdc.train_clt(model, _token_stream(), context=12, checkpoint=ckpt, **kw)
    assert (ckpt / "state.json").exists()
    monkeypatch.setattr(Transformer, "mlp_io", real)
    resumed = acdc.train_clt(model, _token_stream(), context=12, checkpoint=ckpt, **kw)
    for (name, p), q in zip(whole.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert resumed.info["tokens"] == 2400
    with pytest.raises(ValueError, match="other settings.*k"):
        acdc.train_clt(model, _token_stream(), context=12, checkpoint=ckpt, **{**kw, "k": 4})


@pytest.mark.parametrize("skip_first, extended", [(True, False), (False, False), (True, True)])
def test_clt_fidelity_equals_hooked_hugging_face_runs(skip_first, extended):
    """A CLT's fidelity against the Hugging Face model with its MLP modules swapped by forward hooks: FVU per target
    layer from the clean run's features, one layer spliced (the earlier layers' features from the clean run), every
    layer spliced (each hook encodes what its MLP sees in that run and adds the earlier hooks' features). ``extended``:
    with per-target offsets and cross-layer skip paths (clt-training's CLTs), written out here term by term."""
    import torch.nn.functional as F

    from acdc.transcoders import GeneratedStream

    model = tiny_gpt2(n_layer=3, vocab=50, d=32)
    hf = model.original_model
    gen = torch.Generator().manual_seed(2)
    clt = CrossLayerTranscoder(CLTConfig(3, 32, 10, "relu", skip=True, offsets=extended, cross_skip=extended))
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    stream = GeneratedStream(lambda i, g: torch.randint(0, 50, (9,), generator=g), 9, seed=4)

    def into(layer: int, have: dict[int, torch.Tensor], inputs: dict[int, torch.Tensor]) -> torch.Tensor:
        """Layer ``layer``'s reconstruction: each source's (a + offset [a > 0]) @ decoder, b_dec, the skip paths."""
        out = clt.b_dec[layer] + inputs[layer] @ clt.W_skip[layer]
        for s in range(layer + 1):
            a = have[s]
            if extended:
                a = a + clt.offset[s][:, layer - s] * (a > 0)
            out = out + a @ clt.decoder(s, layer)
            if extended and s < layer:
                out = out + inputs[s] @ clt.W_skip_cross[s][layer - s - 1]
        return out
    fid = acdc.transcoder_fidelity(model, clt, stream, sequences=5, batch=5, skip_first=skip_first, massive=None)
    toks = stream.batch(0, 5)
    keep = torch.ones(5, 9, dtype=torch.bool)
    keep[:, 0] = not skip_first

    def run(swap: set[int], clean_acts: dict[int, torch.Tensor] | None = None, clean_in: dict[int, torch.Tensor] | None = None):
        seen, acts, handles = {}, {}, []
        for layer, block in enumerate(hf.transformer.h):
            def hook(module, args, output, layer=layer):
                seen[layer] = (args[0], output)
                acts[layer] = clt.encode(layer, args[0])
                if layer not in swap:
                    return output
                have = {**(acts if clean_acts is None else clean_acts), layer: acts[layer]}
                inputs = {j: x for j, (x, _) in seen.items()} if clean_in is None else {**clean_in, layer: args[0]}
                return torch.where(keep[..., None], into(layer, have, inputs), output)
            handles.append(block.mlp.register_forward_hook(hook))
        with torch.no_grad():
            logits = hf(toks).logits
        for h in handles:
            h.remove()
        return logits, seen, acts

    def ce(logits):
        return float(F.cross_entropy(logits[:, :-1].reshape(-1, 50), toks[:, 1:].reshape(-1)))

    with torch.no_grad():
        clean, seen, clean_acts = run(set())
        clean_in = {j: x for j, (x, _) in seen.items()}
        assert fid.ce_clean == pytest.approx(ce(clean), rel=1e-4)
        for j in range(3):
            y, y_hat = seen[j][1][keep], into(j, clean_acts, clean_in)[keep]
            assert fid.layers[j]["fvu"] == pytest.approx(float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()), rel=1e-4)
            assert fid.layers[j]["l0"] == pytest.approx(float((clean_acts[j][keep] > 0).sum(-1).float().mean()), rel=1e-5)
            one, _, _ = run({j}, clean_acts, clean_in)
            assert fid.layers[j]["ce"] == pytest.approx(ce(one), rel=1e-4)
        every, _, _ = run({0, 1, 2})
        assert fid.ce_all == pytest.approx(ce(every), rel=1e-4)
        assert abs(ce(every) - ce(run({2}, clean_acts, clean_in)[0])) > 1e-3  # the replacement differs from splicing the last alone
    with pytest.raises(ValueError, match="reads the residual stream"):
        acdc.transcoder_fidelity(model, CrossLayerTranscoder(CLTConfig(3, 32, 4, reads="stream")), stream, sequences=2)


def test_feature_pages_of_a_cross_layer_transcoder():
    """A CLT feature's page: how often it fires on the corpus (its layer's encoder on the normed MLP input, by hand)
    and the tokens it promotes through everything it writes (its decoders into every later layer, summed)."""
    from acdc.model import Transformer
    from acdc.transcoders import GeneratedStream, feature_report

    model = tiny_gpt2(n_layer=3, vocab=50, d=32)
    tf = Transformer.from_bridge(model)
    gen = torch.Generator().manual_seed(1)
    clt = CrossLayerTranscoder(CLTConfig(3, 32, 10, "relu"))
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    stream = GeneratedStream(lambda i, g: torch.randint(0, 50, (9,), generator=g), 9, seed=2)
    (info,) = feature_report(model, clt, 1, [4], stream, sequences=6, batch=3)
    x = tf.mlp_io(stream.batch(0, 6), [1])[1][0]
    with torch.no_grad():
        acts = clt.encode(1, x)[..., 4]
        assert info.density == pytest.approx(float((acts > 0).float().mean()), rel=1e-6) and 0 < info.density < 1
        assert info.max_activation == pytest.approx(float(acts.max()), rel=1e-5)
        want = (clt.W_dec[1][4].sum(0) @ tf.unembedding).topk(10)
    assert [v for _, v in info.promotes] == pytest.approx([round(v, 3) for v in want.values.tolist()], abs=1e-3)
    with pytest.raises(ValueError, match="reads the residual stream"):
        feature_report(model, CrossLayerTranscoder(CLTConfig(3, 32, 10, reads="stream")), 1, [0], stream, sequences=2)

