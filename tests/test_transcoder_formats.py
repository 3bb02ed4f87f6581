"""Published transcoder layouts: acdc's reader on folders in sparsify's layout, built here.

The folder is written in sparsify's documented layout (`SparseCoder.save_to_disk`: ``cfg.json`` with
``d_in``, ``sae.safetensors`` with its state dict ``encoder.weight`` [n, d], ``encoder.bias``, ``W_dec``
[n, d], ``b_dec``, ``W_skip``) and compared with sparsify's forward written out (ReLU, top k, decode,
``+ x @ W_skip.T``). experiments/peers/check_sparsify_reader.sh checks the reader against files and
outputs made by sparsify 1.3.3's own code, in its own venv (result in experiments/results/sparsify_reader.md).
"""

from __future__ import annotations

import json

import pytest
import torch
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
