"""Cross-layer transcoders: the object's maths against the definition written out, its files, circuit-tracer's
layout (the peer's own code: experiments/peers/check_transcoder_readers.sh), and the one-line refusals."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_gpt2
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
    """out_j = sum_{l <= j} sum_i act_{l,i}(x_l) W_dec[l][i, j - l] + b_dec[j] (+ x_j W_skip[j]), one term at a time."""
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
                    total = total + act[i] * clt.W_dec[src][i, j - src]
            if c.skip:
                total = total + xs[j, t] @ clt.W_skip[j]
            out[j, t] = total
    return out


@pytest.mark.parametrize("activation, skip", [("relu", False), ("jumprelu", True), ("topk", False)])
def test_a_clt_writes_each_feature_into_its_layer_and_every_later_one(activation, skip):
    clt = _random_clt(activation, skip)
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


def test_clt_files_load_back_equal_and_are_never_overwritten(tmp_path):
    clt = _random_clt("jumprelu", True, seed=3)
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
    with pytest.raises(NotImplementedError, match="not graph nodes yet"):
        acdc.Graph.from_model(model, transcoders=_random_clt())
