"""Published transcoder layouts read by acdc equal what their own code computes.

tests/data/sparsify-transcoders was written by EleutherAI sparsify 1.3.3's own `SparseCoder.save_to_disk`
(experiments/peers/sparsify_transcoders.py, in a side venv), with sparsify's outputs on fixed inputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import acdc
from acdc.transcoders import read_sparsify

SPARSIFY = Path(__file__).resolve().parent / "data" / "sparsify-transcoders"


def test_sparsify_folder_equals_sparsify_outputs():
    ts = acdc.load_transcoders(SPARSIFY)
    want = load_file(str(SPARSIFY / "expected.safetensors"))
    assert ts.layers == [0, 1] and ts.source.startswith("sparsify")
    assert ts[0].cfg.skip and not ts[1].cfg.skip and ts[0].cfg.k == 6 and ts[0].n_features == 40
    x = want["x"]
    for layer in (0, 1):
        assert torch.allclose(ts[layer].encode(x), want[f"acts.{layer}"], atol=1e-5)
        assert torch.allclose(ts[layer](x), want[f"out.{layer}"], atol=1e-5)
    # the skip path is part of the output: without it layer 0 is wrong
    no_skip = ts[0].encode(x) @ ts[0].W_dec + ts[0].b_dec
    assert not torch.allclose(no_skip, want["out.0"], atol=1e-2)


def test_sparsify_on_a_model_of_another_width_is_refused(tmp_path):
    from conftest import tiny_gpt2

    with pytest.raises(ValueError, match="not this model"):
        acdc.load_transcoders(SPARSIFY, tiny_gpt2(d=32))


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
