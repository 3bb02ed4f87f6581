"""Published transcoder layouts: acdc's readers on folders in sparsify's, SAELens's and circuit-tracer's
layouts, built here (no weight files are committed).

The sparsify folder is written in sparsify's documented layout (`SparseCoder.save_to_disk`: ``cfg.json`` with
``d_in``, ``sae.safetensors`` with its state dict ``encoder.weight`` [n, d], ``encoder.bias``, ``W_dec``
[n, d], ``b_dec``, ``W_skip``) and compared with sparsify's forward written out (ReLU, top k, decode,
``+ x @ W_skip.T``); the SAELens and circuit-tracer ones likewise from the keys and config their
save code writes. experiments/peers/check_transcoder_readers.sh checks each reader against files and
outputs made by that project's own code, in its own venv (results in experiments/results/*_reader.md).
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import save_file

import acdc
from acdc.transcoders import read_sparsify


def _write_sparsify(root, layer: int, skip: bool, gen: torch.Generator, d: int = 16, n: int = 40, k: int = 6) -> dict:
    w = {"encoder.weight": torch.randn(n, d, generator=gen) * 0.5, "encoder.bias": torch.randn(n, generator=gen) * 0.5,
         "W_dec": torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1), "b_dec": torch.randn(d, generator=gen)}
    if skip:
        w["W_skip"] = torch.randn(d, d, generator=gen) * 0.5
    folder = root / f"layers.{layer}.mlp"
    folder.mkdir(parents=True)
    save_file(w, str(folder / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": n, "k": k,
           "multi_topk": False, "skip_connection": skip, "transcode": True, "d_in": d}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return w


def _sparsify_forward(w: dict, x: torch.Tensor, k: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    pre = torch.relu(x @ w["encoder.weight"].T + w["encoder.bias"])
    top = pre.topk(k, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    out = acts @ w["W_dec"] + w["b_dec"]
    return acts, out + x @ w["W_skip"].T if "W_skip" in w else out


def test_sparsify_folder_equals_sparsify_outputs(tmp_path):
    gen = torch.Generator().manual_seed(0)
    written = {0: _write_sparsify(tmp_path, 0, True, gen), 1: _write_sparsify(tmp_path, 1, False, gen)}
    ts = acdc.load_transcoders(tmp_path)
    assert ts.layers == [0, 1] and ts.source.startswith("sparsify")
    assert ts[0].cfg.skip and not ts[1].cfg.skip and ts[0].cfg.k == 6 and ts[0].n_features == 40
    x = torch.randn(10, 16, generator=gen)
    for layer, w in written.items():
        acts, out = _sparsify_forward(w, x)
        assert torch.allclose(ts[layer].encode(x), acts, atol=1e-5)
        assert torch.allclose(ts[layer](x), out, atol=1e-5)
    no_skip = ts[0].encode(x) @ ts[0].W_dec + ts[0].b_dec  # the skip path is part of the output
    assert not torch.allclose(no_skip, _sparsify_forward(written[0], x)[1], atol=1e-2)


def test_sparsify_on_a_model_of_another_width_is_refused(tmp_path):
    from conftest import tiny_gpt2

    _write_sparsify(tmp_path, 0, False, torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="not this model"):
        acdc.load_transcoders(tmp_path, tiny_gpt2(d=32))


def test_unknown_folders_and_offline_hub_names_say_so(tmp_path, monkeypatch):
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="neither an acdc transcoder set"):
        acdc.load_transcoders(tmp_path / "x")
    with pytest.raises(ValueError, match="no sparsify MLP transcoders"):
        read_sparsify(tmp_path / "x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="could not download transcoders") as err:
        acdc.load_transcoders("EleutherAI/no-such-transcoders-here")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------- SAELens (SAE.save_model) and circuit-tracer (config.yaml)
def _weights(gen: torch.Generator, d: int = 16, n: int = 40, skip: bool = False, jump: bool = False) -> dict:
    """Random weights in acdc's orientation (W_enc [d, n], out += x @ W_skip); decoder rows of random norm."""
    w = {"W_enc": torch.randn(d, n, generator=gen) * 0.5, "b_enc": torch.randn(n, generator=gen) * 0.5,
         "W_dec": torch.randn(n, d, generator=gen), "b_dec": torch.randn(d, generator=gen)}
    if skip:
        w["W_skip"] = torch.randn(d, d, generator=gen) * 0.5
    if jump:
        w["threshold"] = torch.rand(n, generator=gen) * 0.8
    return w


def _forward(w: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The publishers' forward written out: relu(pre) (times pre > threshold), decode, plus the skip path."""
    pre = x @ w["W_enc"] + w["b_enc"]
    acts = torch.relu(pre) * (pre > w["threshold"]) if "threshold" in w else torch.relu(pre)
    out = acts @ w["W_dec"] + w["b_dec"]
    return acts, out + x @ w["W_skip"] if "W_skip" in w else out


def _write_saelens(folder, layer: int, w: dict, arch: str, hook: str | None = None) -> None:
    folder.mkdir(parents=True)
    file = {k: v for k, v in w.items() if k != "W_skip"}
    if "W_skip" in w:
        file["W_skip"] = w["W_skip"].T.contiguous()  # SAELens: x @ W_skip.T
    save_file(file, str(folder / "sae_weights.safetensors"))
    d, n = w["W_enc"].shape
    cfg = {"d_in": d, "d_sae": n, "d_out": d, "dtype": "float32", "apply_b_dec_to_input": False, "normalize_activations": "none",
           "architecture": arch, "metadata": {"hook_name": hook or f"blocks.{layer}.ln2.hook_normalized",
                                                "hook_name_out": f"blocks.{layer}.hook_mlp_out", "model_name": "planted"}}
    (folder / "cfg.json").write_text(json.dumps(cfg))


def test_saelens_folders_equal_saelens_outputs(tmp_path):
    gen = torch.Generator().manual_seed(2)
    kinds = {0: ("transcoder", False, False), 1: ("skip_transcoder", True, False), 2: ("jumprelu_transcoder", False, True),
             5: ("jumprelu_skip_transcoder", True, True)}
    written = {}
    for layer, (arch, skip, jump) in kinds.items():
        written[layer] = _weights(gen, skip=skip, jump=jump)
        _write_saelens(tmp_path / f"tc_{layer}", layer, written[layer], arch)
    ts = acdc.load_transcoders(tmp_path)
    assert ts.layers == [0, 1, 2, 5] and ts.source.startswith("SAELens")
    assert [ts[i].cfg.activation for i in ts.layers] == ["relu", "relu", "jumprelu", "jumprelu"]
    x = torch.randn(12, 16, generator=gen)
    for layer, w in written.items():
        acts, out = _forward(w, x)
        assert torch.allclose(ts[layer].encode(x), acts, atol=1e-5)
        assert torch.allclose(ts[layer](x), out, atol=1e-5)
    pre = x @ written[2]["W_enc"] + written[2]["b_enc"]
    assert bool(((pre > 0) & (pre <= written[2]["threshold"])).any())  # the threshold cuts features a ReLU would keep
    one = acdc.load_transcoders(tmp_path / "tc_5")  # a single folder reads too
    assert one.layers == [5] and torch.allclose(one[5](x), _forward(written[5], x)[1], atol=1e-5)


def test_saelens_negative_thresholds_act_as_zero(tmp_path):
    gen = torch.Generator().manual_seed(3)
    w = _weights(gen, jump=True)
    w["threshold"][:20] = -0.5  # SAELens: relu(pre) * (pre > t); below zero that is the ReLU
    _write_saelens(tmp_path / "t", 0, w, "jumprelu_transcoder")
    x = torch.randn(12, 16, generator=gen)
    assert torch.allclose(acdc.load_transcoders(tmp_path / "t")[0](x), _forward(w, x)[1], atol=1e-5)


def test_saelens_refuses_saes_and_inputs_before_the_norm(tmp_path):
    gen = torch.Generator().manual_seed(4)
    _write_saelens(tmp_path / "sae", 0, _weights(gen), "standard")
    with pytest.raises(ValueError, match="'standard' SAE, not a transcoder"):
        acdc.load_transcoders(tmp_path / "sae")
    _write_saelens(tmp_path / "mid", 3, _weights(gen), "transcoder", hook="blocks.3.hook_resid_mid")
    with pytest.raises(ValueError, match="reads 'blocks.3.hook_resid_mid'.*normed MLP input") as err:
        acdc.load_transcoders(tmp_path / "mid")
    assert "\n" not in str(err.value)


def _write_circuit_tracer(folder, written: dict[int, dict], listed: bool = False, **config) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for layer, w in written.items():
        file = {"W_enc": w["W_enc"].T.contiguous(), "b_enc": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
        if "W_skip" in w:
            file["W_skip"] = w["W_skip"].T.contiguous()
        if "threshold" in w:
            file["activation_function.threshold"] = w["threshold"]
        save_file(file, str(folder / f"layer_{layer}.safetensors"))
    cfg = {"model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out",
           "scan": "test", "model_name": "planted", **config}
    if listed:
        cfg["transcoders"] = [f"layer_{layer}.safetensors" for layer in sorted(written)]
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_circuit_tracer_folder_equals_its_outputs(tmp_path):
    gen = torch.Generator().manual_seed(5)
    written = {0: _weights(gen), 1: _weights(gen, jump=True), 2: _weights(gen, skip=True), 3: _weights(gen, skip=True, jump=True)}
    x = torch.randn(12, 16, generator=gen)
    for listed in (False, True):
        _write_circuit_tracer(tmp_path / str(listed), written, listed=listed)
        ts = acdc.load_transcoders(tmp_path / str(listed))
        assert ts.layers == [0, 1, 2, 3] and ts.source.startswith("circuit-tracer") and ts.info["scan"] == "test"
        for layer, w in written.items():
            acts, out = _forward(w, x)
            assert torch.allclose(ts[layer].encode(x), acts, atol=1e-5)
            assert torch.allclose(ts[layer](x), out, atol=1e-5)


def test_gemma_scope_files_in_a_circuit_tracer_set_equal_their_outputs(tmp_path):
    """circuit-tracer's Gemma presets list Gemma Scope ``params.npz`` files (W_enc [d, n], JumpReLU ``threshold``) and
    Gemma Scope 2 safetensors (lowercase ``w_enc`` [d, n], ``affine_skip_connection`` applied as ``x @ A``); a set
    may mix them with its own files. Each reads to the publisher's forward (the peer's loaders themselves:
    experiments/peers/check_transcoder_readers.sh)."""
    import numpy as np

    gen = torch.Generator().manual_seed(8)
    written = {0: _weights(gen, jump=True), 1: _weights(gen, jump=True, skip=True), 2: _weights(gen, jump=True)}
    folder = tmp_path / "gs"
    folder.mkdir()
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in written[0].items()})
    save_file({"w_enc": written[1]["W_enc"], "w_dec": written[1]["W_dec"], "b_enc": written[1]["b_enc"], "b_dec": written[1]["b_dec"],
               "threshold": written[1]["threshold"], "affine_skip_connection": written[1]["W_skip"]}, str(folder / "gs2.safetensors"))
    _write_circuit_tracer(tmp_path / "own", {2: written[2]})
    cfg = {"model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out",
           "transcoders": ["params.npz", "gs2.safetensors", str(tmp_path / "own" / "layer_2.safetensors")]}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    ts = acdc.load_transcoders(folder)
    assert ts.layers == [0, 1, 2] and [ts[i].cfg.skip for i in ts.layers] == [False, True, False]
    x = torch.randn(12, 16, generator=gen)
    for layer, w in written.items():
        acts, out = _forward(w, x)
        assert torch.allclose(ts[layer].encode(x), acts, atol=1e-5) and torch.allclose(ts[layer](x), out, atol=1e-5), layer
    np.savez(folder / "params.npz", W_enc=written[0]["W_enc"].numpy())  # not Gemma Scope's: one line naming what is missing
    with pytest.raises(ValueError, match=r"params.npz lacks W_dec, b_dec, b_enc, threshold"):
        acdc.load_transcoders(folder)


def test_circuit_tracer_refusals_are_one_line(tmp_path, monkeypatch):
    gen = torch.Generator().manual_seed(6)
    _write_circuit_tracer(tmp_path / "clt", {0: _weights(gen)}, model_kind="cross_layer_transcoder")
    _write_circuit_tracer(tmp_path / "mid", {0: _weights(gen)}, feature_input_hook="hook_resid_mid")
    _write_circuit_tracer(tmp_path / "neg", {0: {**_weights(gen), "threshold": -torch.ones(40)}})
    _write_circuit_tracer(tmp_path / "hub", {0: _weights(gen)}, transcoders=["hf://nobody/no-such-repo/layer_0.safetensors"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, msg in (("clt", "model_kind 'cross_layer_transcoder' is not supported"), ("mid", "reads 'hook_resid_mid'"),
                      ("neg", "40 negative JumpReLU thresholds"), ("hub", "could not download hf://nobody")):
        with pytest.raises(ValueError, match=msg) as err:
            acdc.load_transcoders(tmp_path / name)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("family", ["gemma2", "gpt2"])
def test_files_hooked_before_the_norms_scale_are_folded_with_the_model(tmp_path, family):
    """``ln2.hook_normalized`` is the norm's output before its scale and bias (``x / rms(x)`` for Gemma's RMSNorm,
    ``(x - mean) / std`` for LayerNorm); acdc's transcoders read the norm's output. Read with the model, the scale
    and bias are folded in: on the MLP's normed input the set gives the publisher's forward on x_hat (computed here
    by hand), encoder and skip path both. Read without one, every model refuses it in one line."""
    from conftest import tiny_gpt2
    from test_families import _tiny

    from acdc.model import Transformer

    gen = torch.Generator().manual_seed(7)
    model = acdc.load_model(_tiny("gemma2", n_kv=2)) if family == "gemma2" else tiny_gpt2(n_layer=2, n_head=4)
    if family == "gpt2":  # LayerNorm with a scale and a bias of its own (a fresh GPT-2's are 1 and 0)
        with torch.no_grad():
            for block in model.original_model.transformer.h:
                block.ln_2.weight.copy_(1 + 0.5 * torch.randn(block.ln_2.weight.shape, generator=gen))
                block.ln_2.bias.copy_(0.3 * torch.randn(block.ln_2.bias.shape, generator=gen))
    tf = Transformer.of(model)
    d = tf.arch.d_model
    written = {0: _weights(gen, d=d, skip=True), 1: _weights(gen, d=d, skip=True, jump=True)}
    _write_circuit_tracer(tmp_path / "ct", written, feature_input_hook="ln2.hook_normalized", feature_output_hook="hook_mlp_out")
    x = torch.randn(5, d, generator=gen)  # a residual stream, at the MLP's input
    for layer, w in written.items():
        z = tf.mlp_input(layer, x)  # what acdc's transcoders read
        if tf.arch.norm == "RMS":
            x_hat = x / (x.pow(2).mean(-1, keepdim=True) + tf.arch.eps).sqrt()
        else:
            x_hat = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + tf.arch.eps).sqrt()
        assert not torch.allclose(z, x_hat, atol=1e-2)  # the scale matters here
        ts = acdc.load_transcoders(tmp_path / "ct", tf)
        acts, out = _forward(w, x_hat)
        assert torch.allclose(ts[layer].encode(z), acts, atol=1e-4)
        assert torch.allclose(ts[layer](z), out, atol=1e-4)
    unfolded = acdc.load_transcoders(tmp_path / "ct")
    with pytest.raises(ValueError, match=r"before its norm's scale \(ln2.hook_normalized\) in layers \[0, 1\].*load_transcoders\(path, model\)"):
        unfolded.check_model(tf)
