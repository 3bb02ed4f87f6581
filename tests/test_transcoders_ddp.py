"""Data-parallel training under torchrun (two CPU processes, gloo) equals one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import acdc

ARGS = ["transcoders", "train", "--model", "zoo:dictionary", "--layers", "0", "1", "--tokens", "6000", "--batch-tokens", "400", "--sequences", "10", "--no-progress",
        "--buffer", "2", "--k", "3", "--n-features", "16", "--dead-tokens", "1500", "--seed", "5", "--activation", "relu"]


def _run(tmp_path, nproc: int, name: str):
    out = tmp_path / name
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "acdc", *ARGS, "--out", str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", "29517",
               "-m", "acdc", *ARGS, "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return acdc.load_transcoders(out)


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    one = _run(tmp_path, 1, "one")
    two = _run(tmp_path, 2, "two")
    for layer in (0, 1):
        for (name, p), q in zip(one[layer].named_parameters(), two[layer].parameters(), strict=True):
            scale = float(p.abs().max())
            assert torch.allclose(p, q, atol=1e-4 * scale, rtol=1e-4), (layer, name, float((p - q).abs().max()))
    assert one.info["tokens"] == two.info["tokens"] == 6000
    assert not torch.allclose(one[0].W_enc, one[1].W_enc)  # the layers really trained apart
