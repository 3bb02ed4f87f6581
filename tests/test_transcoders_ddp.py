"""Data-parallel training under torchrun (two CPU processes, gloo) equals one process with the same global batch,
and the process group is really gone when the command returns."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import acdc

ARGS = ["transcoders", "train", "--model", "zoo:dictionary", "--layers", "0", "1", "--tokens", "6000", "--batch-tokens", "400", "--sequences", "10", "--no-progress",
        "--buffer", "2", "--k", "3", "--n-features", "16", "--dead-tokens", "1500", "--seed", "5", "--activation", "relu"]


def _run(tmp_path, nproc: int, name: str, args: list[str] = ARGS, load=acdc.load_transcoders):
    out = tmp_path / name
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "acdc", *args, "--out", str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),  # a free port
               "-m", "acdc", *args, "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return load(out)


@pytest.mark.slow
def test_a_cross_layer_transcoder_trained_on_two_processes_equals_one(tmp_path):
    """The CLT trainer shares the loop: its loss shares and gradients sum across processes the same way."""
    args = [a for a in ARGS if a not in ("--layers", "0", "1")] + ["--cross-layer", "--activation", "topk"]
    one = _run(tmp_path, 1, "one", args, acdc.load_clt)
    two = _run(tmp_path, 2, "two", args, acdc.load_clt)
    for (name, p), q in zip(one.named_parameters(), two.parameters(), strict=True):
        scale = float(p.abs().max())
        assert torch.allclose(p, q, atol=1e-4 * scale, rtol=1e-4), (name, float((p - q).abs().max()))
    assert one.info["tokens"] == two.info["tokens"] == 6000 and one.cfg.activation == "topk"


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


# One rank, in a fresh interpreter, the way torchrun starts each worker: after `acdc transcoders train` returns,
# no gloo worker thread may be left. Left alive (a module imported after init_process_group kept the group:
# torch.distributed.nn's `group=group.WORLD` defaults, pulled in by transformers when the zoo model is built),
# a thread dropping its last collective's tensors after interpreter shutdown began took the GIL and aborted
# the process ("terminate called without an active exception"), about one 2-rank run in 30.
_THREADS_LEFT = """
import os, socket, sys
from acdc.cli import main
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
assert main(sys.argv[1:]) == 0
print(sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread names from /proc")
def test_process_group_torn_down(tmp_path):
    args = [*ARGS, "--tokens", "400", "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", _THREADS_LEFT, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    threads = done.stdout.strip().splitlines()[-1]
    assert "gloo" not in threads, threads  # pt_gloo_runloop / gloo_tcp_loop
    assert acdc.load_transcoders(tmp_path / "out").info["tokens"] == 400
