"""Reading transcoders in the layouts people publish, so a user with internet uses them in one call.

`load_transcoders(spec, model)` takes:

- a folder saved by `TranscoderSet.save` (``config.json`` with ``format: acdc-transcoders/1``);
- a folder in EleutherAI sparsify's layout: one subfolder per hookpoint ``layers.N.mlp`` holding
  ``cfg.json`` (``transcode: true``, ``activation``, ``k``, ``num_latents``, ``skip_connection``,
  ``d_in``) and ``sae.safetensors`` (``encoder.weight`` [n, d], ``encoder.bias`` [n], ``W_dec``
  [n, d], ``b_dec`` [d], ``W_skip`` [d, d], applied as ``x @ W_skip.T``); the hookpoint's input is
  the MLP module's input, the normed stream, as in acdc;
- a Hugging Face hub name (e.g. ``EleutherAI/skip-transcoder-SmolLM2-135M-128x``), downloaded
  with ``huggingface_hub`` where the network allows, then read as above.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ..model import Transformer
from .transcoder import FORMAT, ModelInfo, Transcoder, TranscoderConfig, TranscoderSet

__all__ = ["load_transcoders", "read_sparsify"]

_SPARSIFY_HOOK = re.compile(r"^(?:model\.)?layers\.(\d+)\.mlp$")


def load_transcoders(spec: str | Path, model: Any = None, *, device: torch.device | str | None = None) -> TranscoderSet:
    """Transcoders from a saved folder, a sparsify folder, or a hub name (see the module docstring).

    With ``model`` (a bridge or `acdc.model.Transformer`) they are checked against it (one-line
    error for another model) and moved to its device; foreign layouts record its fingerprint.
    """
    tf = None if model is None else (model if isinstance(model, Transformer) else Transformer.from_bridge(model))
    dev = device if device is not None else (tf.device if tf is not None else "cpu")
    path = Path(spec)
    source = str(spec)
    if not path.exists():
        if isinstance(spec, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
            path = _download(spec)
            source = f"hub: {spec}"
        else:
            raise ValueError(f"transcoders {str(spec)!r} not found: give a folder saved by TranscoderSet.save, "
                             "a sparsify folder (layers.N.mlp/cfg.json), or a hub name like owner/name")
    if (path / "config.json").exists() and json.loads((path / "config.json").read_text()).get("format") == FORMAT:
        ts = TranscoderSet.load(path, device=dev)
    elif any(_SPARSIFY_HOOK.match(p.name) for p in path.iterdir() if p.is_dir()):
        ts = read_sparsify(path, tf, device=dev, source=f"sparsify: {source}")
    else:
        raise ValueError(f"{path} is neither an acdc transcoder set (config.json) nor a sparsify folder "
                         "(layers.N.mlp/cfg.json + sae.safetensors)")
    if tf is not None:
        ts.check_model(tf, f"transcoders {source}")
    return ts


def read_sparsify(path: str | Path, tf: Transformer | None = None, *, device: torch.device | str = "cpu",
                  source: str | None = None) -> TranscoderSet:
    """A sparsify folder of transcoders (``layers.N.mlp``); the MLP hookpoints only."""
    from safetensors.torch import load_file

    path = Path(path)
    transcoders: dict[int, Transcoder] = {}
    for sub in sorted(path.iterdir()):
        m = _SPARSIFY_HOOK.match(sub.name)
        if not (sub.is_dir() and m):
            continue
        cfg = json.loads((sub / "cfg.json").read_text())
        if not cfg.get("transcode", False):
            raise ValueError(f"{sub} is a sparse autoencoder (transcode: false), not a transcoder")
        act = str(cfg.get("activation", "topk")).lower()
        if act not in ("topk", "relu"):
            raise ValueError(f"{sub}: activation {act!r} is not supported (topk, relu)")
        w = load_file(str(sub / "sae.safetensors"), device="cpu")
        n, d = w["encoder.weight"].shape
        tc_cfg = TranscoderConfig(d, n, act, int(cfg["k"]) if act == "topk" else None, "W_skip" in w)
        tc = Transcoder(tc_cfg, device=device)
        with torch.no_grad():
            tc.W_enc.copy_(w["encoder.weight"].T.float())
            tc.b_enc.copy_(w["encoder.bias"].float())
            tc.W_dec.copy_(w["W_dec"].float())
            tc.b_dec.copy_(w["b_dec"].float())
            if tc.W_skip is not None:
                tc.W_skip.copy_(w["W_skip"].T.float())
        transcoders[int(m.group(1))] = tc
    if not transcoders:
        raise ValueError(f"{path} has no sparsify MLP transcoders (layers.N.mlp folders)")
    d_model = next(iter(transcoders.values())).cfg.d_model
    # a foreign file does not know the model's fingerprint: the shape decides
    info = ModelInfo(tf.arch.family, tf.arch.n_layers, d_model) if tf is not None else ModelInfo(path.name, max(transcoders) + 1, d_model)
    return TranscoderSet(transcoders, info, source or f"sparsify: {path}", {})


def _download(name: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name))
    except Exception as err:  # offline, unknown repo: one line, how to proceed
        raise ValueError(f"could not download transcoders {name!r} ({type(err).__name__}); with no network, "
                         "download the folder elsewhere and pass its path") from None
