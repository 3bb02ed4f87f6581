"""Cross-layer transcoder folders written by EleutherAI's clt-training (sparsify's cross-layer fork), with its own
``CrossLayerRunner``'s outputs, for acdc's reader to be checked against.

Runs inside a venv with clt-training's dependencies (made by ``bash experiments/peers/check_clt_training_reader.sh``),
importing its ``sparsify`` package from a source checkout without running its ``__init__`` (which pulls in the trainer
and its extra dependencies):

    /tmp/cltt-venv/bin/python experiments/peers/clt_training_clt.py SRC OUT

Writes OUT/{documented,windowed}/layers.{l}.mlp (`SparseCoder.save_to_disk`), OUT/*/config.json (the trainer's
`TrainConfig.save_json`), and OUT/*/expected.safetensors: inputs xs [L, T, d] and, per layer, the runner's output
(`CrossLayerRunner(x_l, y, coder_l, name_l).sae_out`, layers in order as the trainer calls it) and the TopK
activations. "documented": the README's usage (skip connections, trained post-encoder offsets and scales, normalized
input and output, divided cross-layer sums); "windowed": ``cross_layer=2`` on 4 layers, no skip, no offsets, reading
the stream (``hookpoints_in`` the MLP norms).
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # the eager decoder (embedding_bag) on the CPU
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # its torch.compile'd helpers run eagerly
src, out = Path(sys.argv[1]), Path(sys.argv[2])
pkg = types.ModuleType("sparsify")
pkg.__path__ = [str(src / "sparsify")]
sys.modules["sparsify"] = pkg

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from sparsify.config import SparseCoderConfig, TrainConfig  # noqa: E402
from sparsify.runner import CrossLayerRunner  # noqa: E402
from sparsify.sparse_coder import SparseCoder  # noqa: E402


def save(sc: SparseCoder, path: Path) -> None:
    """`SparseCoder.save_to_disk`, each tensor copied first: a multi-target coder's ``W_dec`` is ``W_decs.0`` (and
    ``b_dec``, ``W_skip`` likewise), and on a CPU its ``save_sharded`` hands safetensors the shared storage, which it
    refuses; on a GPU its ``.cpu()`` copies them, as this does."""
    real = sc.state_dict

    def copied(*args, **kwargs):
        return {k: v.clone() for k, v in real(*args, **kwargs).items()}

    sc.state_dict = copied  # type: ignore[method-assign]
    try:
        sc.save_to_disk(path)
    finally:
        del sc.state_dict


CASES = {
    "documented": dict(layers=3, window=3, hook_in=False, cfg=dict(skip_connection=True, normalize_io=True, train_post_encoder=True,
                                                                   post_encoder_scale=True, divide_cross_layer=True)),
    "windowed": dict(layers=4, window=2, hook_in=True, cfg=dict(skip_connection=False, normalize_io=False, train_post_encoder=False,
                                                               post_encoder_scale=False, divide_cross_layer=False)),
}
d, n, k, T = 16, 24, 4, 12
torch.manual_seed(0)
for name, case in CASES.items():
    L, window = case["layers"], case["window"]
    folder = out / name
    hooks = [f"layers.{layer}.mlp" for layer in range(L)]
    coders = []
    for layer in range(L):
        cfg = SparseCoderConfig(num_latents=n, k=k, transcode=True, n_targets=min(window, L - layer), **case["cfg"])
        sc = SparseCoder(d, cfg)
        with torch.no_grad():
            for pname, p in sc.named_parameters():
                if pname.startswith("post_enc") and not cfg.train_post_encoder:
                    continue  # untrained: zeros (offsets) as the trainer leaves them
                p.copy_(torch.randn(p.shape) * (0.5 if pname.startswith("post_enc") else 0.3))
            for buf in ("in_norm", "out_norm"):
                if hasattr(sc, buf):
                    getattr(sc, buf).copy_(torch.rand(1) * 4 + 1)
        save(sc, folder / hooks[layer])
        coders.append(sc)
    ins = [f"layers.{layer}.post_attention_layernorm" for layer in range(L)] if case["hook_in"] else []
    TrainConfig(SparseCoderConfig(k=k, transcode=True, **case["cfg"]), hookpoints=hooks, hookpoints_in=ins,
                cross_layer=window).save_json(str(folder / "config.json"))
    xs = torch.randn(L, T, d) * 2
    expected = {"xs": xs}
    runner = CrossLayerRunner()
    with torch.no_grad():
        for layer in range(L):
            fwd = runner(xs[layer], torch.zeros(T, d), coders[layer], hooks[layer])
            expected[f"out.{layer}"] = fwd.sae_out.float().contiguous()
            expected[f"acts.{layer}"] = torch.zeros(T, n).scatter(-1, fwd.latent_indices.long(), fwd.latent_acts.float())
    save_file(expected, str(folder / "expected.safetensors"))
    print(f"wrote {folder}")
