"""Cross-layer transcoders in published layouts, read into acdc's `CrossLayerTranscoder` (and `load_clt`, which
tells the layouts apart).

- **circuit-tracer** (`read_circuit_tracer_clt`): ``W_enc_{l}.safetensors`` with ``W_enc_{l}`` [n, d], ``b_enc_{l}``,
  ``b_dec_{l}``, ``threshold_{l}`` (JumpReLU); ``W_dec_{l}.safetensors`` with ``W_dec_{l}`` [n, L - l, d]; its
  ``config.yaml`` names the input hook (``hook_resid_mid``: the stream; ``mlp.hook_in``: the normed MLP input).
- **clt-training** (EleutherAI's cross-layer fork of sparsify; `read_sparsify_clt`): a folder per source layer,
  ``layers.{l}.mlp`` (``h.{l}.mlp`` for GPT-2), each a sparsify ``SparseCoder`` with ``cfg.json`` (``n_targets``:
  the layers l..l + n_targets - 1 it writes into) and ``sae.safetensors``: ``encoder.weight`` [n, d],
  ``encoder.bias``; per target k, ``W_decs.{k}`` [n, d], ``b_decs.{k}`` [d], ``W_skips.{k}`` [d, d] (applied as
  ``x @ W.T``), ``post_encs.{k}`` [n] and ``post_enc_scales.{k}`` [n]; ``in_norm`` / ``out_norm`` with
  ``normalize_io``. Its ``CrossLayerRunner`` makes layer j's MLP output

      out_j = out_norm_j / sqrt(d) * (own_j + sum_{l < j} src_{l -> j} / divide_j)
      src_{l -> j} = sum_i (a_i + post_encs[k]_i [a_i > 0]) post_enc_scales[k]_i W_decs[k]_i + b_decs[k] + x'_l W_skips[k].T

  (k = j - l; x'_l = x_l sqrt(d) / in_norm_l, what layer l's encoder reads; a = TopK(ReLU(x'_l W_enc.T + b));
  divide_j = max(1, sources writing into j - 1) with ``divide_cross_layer``, else 1), and every factor folds into
  acdc's weights exactly: scales, norms and the divisor into each decoder and skip, the biases summed into b_dec,
  ``post_encs`` into acdc's per-target offsets, ``W_skips`` into its own-layer and cross-layer skip paths. Offsets
  and skips that are all zero are left out (``offsets`` / ``cross_skip`` off), so such a file is an ordinary CLT;
  with them it runs in feature graphs, attribution graphs and everywhere else but circuit-tracer's layout
  (`CrossLayerTranscoder.check_linear`).
  Refused in one line: coalesced or tied decoders (``coalesce_topk``, ``per_source_tied``,
  ``secondary_target_tied``), activations other than TopK, and folders that do not cover layers 0..L-1.
  Its top-level ``config.json`` (the trainer's) names ``hookpoints_in``: the MLP's norm (``ln_2``,
  ``post_attention_layernorm``, ``pre_feedforward_layernorm``), whose input is the stream, makes ``reads="stream"``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..model import Transformer
from .clt import CLT_FORMAT, CLTConfig, CrossLayerTranscoder
from .transcoder import SPARSIFY_HOOK, ModelInfo

__all__ = ["is_sparsify_clt", "load_clt", "read_circuit_tracer_clt", "read_sparsify_clt"]

_NORM_BEFORE_MLP = re.compile(r"^(?:model\.|transformer\.)?(?:layers|h)\.(\d+)\.(ln_2|post_attention_layernorm|pre_feedforward_layernorm)$")


def read_circuit_tracer_clt(path: str | Path, tf: Transformer | None = None, *, device: torch.device | str = "cpu",
                            reads: str | None = None) -> CrossLayerTranscoder:
    """circuit-tracer's CLT folder (`CrossLayerTranscoder.to_safetensors`, the module docstring's layout), with its
    ``config.yaml`` where there is one (``feature_input_hook``: ``hook_resid_mid``, circuit-tracer's default, reads
    the stream; ``mlp.hook_in`` the normed input). ``reads`` overrides the hook. Its files hold no skip path."""
    from safetensors.torch import load_file

    path = Path(path)
    n = len(list(path.glob("W_enc_*.safetensors")))
    if n == 0:
        raise ValueError(f"{path}: no W_enc_0.safetensors; not a circuit-tracer cross-layer transcoder folder")
    encs: list[dict[str, Tensor]] = []
    decs: list[Tensor] = []
    for layer in range(n):
        try:
            encs.append(load_file(str(path / f"W_enc_{layer}.safetensors")))
            decs.append(load_file(str(path / f"W_dec_{layer}.safetensors"))[f"W_dec_{layer}"])
        except (OSError, KeyError) as err:
            raise ValueError(f"{path}: layer {layer} of {n} is incomplete ({type(err).__name__}: {err})") from None
    hook = None
    if (path / "config.yaml").exists():
        import yaml

        hook = (yaml.safe_load((path / "config.yaml").read_text()) or {}).get("feature_input_hook")
    if reads is None:
        reads = {None: "stream", "hook_resid_mid": "stream", "mlp.hook_in": "normed"}.get(hook)
        if reads is None:
            raise ValueError(f"{path}: feature_input_hook {hook!r}; acdc's CLTs read hook_resid_mid (the stream) or mlp.hook_in "
                             "(the normed MLP input)")
    d_features, d_model = encs[0]["W_enc_0"].shape
    jump = "threshold_0" in encs[0]
    cfg = CLTConfig(n, int(d_model), int(d_features), "jumprelu" if jump else "relu", reads=reads)
    model = ModelInfo(tf.arch.family if tf is not None else path.name, n, int(d_model))
    clt = CrossLayerTranscoder(cfg, model, f"circuit-tracer: {path}", {"feature_input_hook": hook}, device=device)
    with torch.no_grad():
        for layer, (enc, dec) in enumerate(zip(encs, decs, strict=True)):
            if dec.shape != (d_features, n - layer, d_model):
                raise ValueError(f"{path}: W_dec_{layer} is {tuple(dec.shape)}, expected {(int(d_features), n - layer, int(d_model))}")
            clt.W_enc[layer].copy_(enc[f"W_enc_{layer}"].T.float())
            clt.b_enc[layer].copy_(enc[f"b_enc_{layer}"].float())
            clt.b_dec[layer].copy_(enc[f"b_dec_{layer}"].float())
            clt.W_dec[layer].copy_(dec.float())
            if clt.log_threshold is not None:
                t = enc[f"threshold_{layer}"].float()
                if bool((t < 0).any()):
                    raise ValueError(f"{path}: {int((t < 0).sum())} negative JumpReLU thresholds in layer {layer}; acdc reads thresholds >= 0")
                clt.log_threshold[layer].copy_(t.log())
    if tf is not None:
        clt.check_model(tf, f"cross-layer transcoder {path}")
    return clt


def _sparsify_coders(path: Path) -> dict[int, tuple[Path, dict[str, Any]]]:
    """layer -> (folder, cfg.json) of a sparsify folder's MLP coders (``layers.N.mlp``)."""
    found = {}
    for sub in path.iterdir() if path.is_dir() else ():
        m = SPARSIFY_HOOK.match(sub.name)
        if m and sub.is_dir() and (sub / "cfg.json").exists():
            found[int(m.group(1))] = (sub, json.loads((sub / "cfg.json").read_text()))
    return found


def is_sparsify_clt(path: str | Path) -> bool:
    """Whether ``path`` is a clt-training folder: sparsify coders of which some write into several layers."""
    return any(int(cfg.get("n_targets", 0) or 0) > 0 for _, cfg in _sparsify_coders(Path(path)).values())


def read_sparsify_clt(path: str | Path, tf: Transformer | None = None, *, device: torch.device | str = "cpu",
                      reads: str | None = None) -> CrossLayerTranscoder:
    """A clt-training folder (the module docstring's layout and maths), folded into acdc's CLT exactly. ``reads``
    overrides what the features read (default: from the trainer's ``config.json``, the normed MLP input without one)."""
    from safetensors.torch import load_file

    path = Path(path)
    coders = _sparsify_coders(path)
    if not coders:
        raise ValueError(f"{path} has no sparsify coders (layers.N.mlp folders with cfg.json)")
    L = max(coders) + 1
    if sorted(coders) != list(range(L)):
        raise ValueError(f"{path}: coders for layers {sorted(coders)}; acdc's cross-layer transcoders cover every layer 0..{L - 1}")
    cfgs = {layer: cfg for layer, (_, cfg) in coders.items()}
    c0 = cfgs[0]
    for layer, cfg in cfgs.items():
        where = coders[layer][0]
        if not cfg.get("transcode", False):
            raise ValueError(f"{where} is a sparse autoencoder (transcode: false), not a transcoder")
        for key, plain in (("coalesce_topk", "none"), ("per_source_tied", False), ("secondary_target_tied", False)):
            if cfg.get(key, plain) != plain:
                raise ValueError(f"{where}: {key}={cfg[key]!r} (coalesced or tied decoders) is not read; acdc reads "
                                 "clt-training's per-target decoders (coalesce_topk none, untied)")
        if str(cfg.get("activation", "topk")).lower() != "topk":
            raise ValueError(f"{where}: activation {cfg.get('activation')!r}; acdc reads clt-training's TopK coders")
        n_t = int(cfg.get("n_targets", 0) or 0)
        if not 1 <= n_t <= L - layer:
            raise ValueError(f"{where}: n_targets {n_t}; a coder of layer {layer} of {L} writes into 1..{L - layer} layers")
        for key in ("d_in", "k", "normalize_io", "skip_connection", "post_encoder_scale", "divide_cross_layer"):
            if cfg.get(key) != c0.get(key):
                raise ValueError(f"{where}: {key}={cfg.get(key)!r} but layer 0's is {c0.get(key)!r}; acdc reads coders that agree")
    d, k = int(c0["d_in"]), int(c0["k"])
    weights = {layer: load_file(str(sub / "sae.safetensors"), device="cpu") for layer, (sub, _) in coders.items()}
    n = int(weights[0]["encoder.weight"].shape[0])
    if reads is None:
        reads = _reads(path, L, tf)
    n_targets = {layer: int(cfgs[layer]["n_targets"]) for layer in range(L)}
    writers = {j: [src for src in range(j + 1) if j < src + n_targets[src]] for j in range(L)}  # the runner's sources at j

    def w(layer: int, key: str, k_: int | None = None) -> Tensor | None:
        """A coder's tensor (per target k_: its ``key.{k_}``, else the plain key for k_ = 0), as float32."""
        got = weights[layer].get(key if k_ is None else f"{key}.{k_}")
        if got is None and k_ == 0:
            got = weights[layer].get(key.rstrip("s"))
        return None if got is None else got.float()

    norm_io = bool(c0.get("normalize_io", False))
    in_scale = {layer: (math.sqrt(d) / float(w(layer, "in_norm")) if norm_io else 1.0) for layer in range(L)}  # type: ignore[arg-type]

    def out_scale(src: int, j: int) -> float:
        """c_{src, j}: the target's de-normalisation and, for an earlier source, the runner's divisor."""
        c = float(w(j, "out_norm")) / math.sqrt(d) if norm_io else 1.0  # type: ignore[arg-type]
        if src < j and c0.get("divide_cross_layer", False):
            c /= max(1, len(writers[j]) - 1)
        return c

    skip = bool(c0.get("skip_connection", False))
    offsets = {(src, kk): w(src, "post_encs", kk) for src in range(L) for kk in range(n_targets[src])}
    has_offsets = any(o is not None and bool((o != 0).any()) for o in offsets.values())
    cross = skip and any(bool((w(src, "W_skips", kk) != 0).any()) for src in range(L) for kk in range(1, n_targets[src]))  # type: ignore[union-attr]
    cfg = CLTConfig(L, d, n, "topk", k=k, skip=skip, reads=reads, offsets=has_offsets, cross_skip=cross)
    model = ModelInfo(tf.arch.family if tf is not None else path.name, L, d)
    info = {"n_targets": [n_targets[layer] for layer in range(L)], "normalize_io": norm_io,
            "divide_cross_layer": bool(c0.get("divide_cross_layer", False))}
    clt = CrossLayerTranscoder(cfg, model, f"clt-training: {path}", info, device="cpu")
    with torch.no_grad():
        for src in range(L):
            clt.W_enc[src].copy_(w(src, "encoder.weight").T * in_scale[src])  # type: ignore[union-attr]
            clt.b_enc[src].copy_(w(src, "encoder.bias"))  # type: ignore[arg-type]
            for kk in range(n_targets[src]):
                j = src + kk
                c = out_scale(src, j)
                scale = w(src, "post_enc_scales", kk) if c0.get("post_encoder_scale", False) else None
                dec = w(src, "W_decs", kk)
                if dec is None:
                    raise ValueError(f"{coders[src][0]}: no W_decs.{kk} (a decoder into layer {j})")
                clt.W_dec[src][:, kk].copy_(dec * c * (1.0 if scale is None else scale[:, None]))
                clt.b_dec[j].add_(w(src, "b_decs", kk) * c)  # type: ignore[operator]
                if clt.offset is not None and offsets[src, kk] is not None:
                    clt.offset[src][:, kk].copy_(offsets[src, kk])  # type: ignore[arg-type]
                if skip:
                    s = w(src, "W_skips", kk).T * in_scale[src] * c  # type: ignore[union-attr]
                    if kk == 0:
                        clt.W_skip[j].copy_(s)  # type: ignore[index]
                    elif clt.W_skip_cross is not None:
                        clt.W_skip_cross[src][kk - 1].copy_(s)
    clt.to(device)
    if tf is not None:
        clt.check_model(tf, f"cross-layer transcoder {path}")
    return clt


def _reads(path: Path, L: int, tf: Transformer | None) -> str:
    """What a clt-training folder's coders read, from the trainer's ``config.json`` (``hookpoints_in``)."""
    config = path / "config.json"
    hooks = json.loads(config.read_text()).get("hookpoints_in") or [] if config.exists() else []
    if not hooks:
        return "normed"
    for layer, hook in enumerate(hooks):
        m = _NORM_BEFORE_MLP.match(hook)
        if not m or int(m.group(1)) != layer or len(hooks) != L:
            raise ValueError(f"{path}: hookpoints_in {hooks[:3]}...; acdc's CLTs read the MLP's normed input or the stream "
                             "before its norm (the norm's input: layers.N.post_attention_layernorm, h.N.ln_2)")
        if m.group(2) == "post_attention_layernorm" and tf is not None and tf.arch.post_norms:
            raise ValueError(f"{path}: hookpoints_in {hook}: in this family that norm follows attention; the MLP's is "
                             "pre_feedforward_layernorm")
    return "stream"


def load_clt(path: str | Path, model: Any = None, *, device: torch.device | str | None = None) -> CrossLayerTranscoder:
    """A cross-layer transcoder from a folder saved by `CrossLayerTranscoder.save`, circuit-tracer's CLT folder or a
    clt-training folder; with ``model``, checked against it and moved to its device."""
    tf = None if model is None else Transformer.of(model)
    dev = device if device is not None else (tf.device if tf is not None else "cpu")
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"cross-layer transcoder {str(path)!r} not found: give a folder saved by CrossLayerTranscoder.save, "
                         "a circuit-tracer CLT folder (W_enc_0.safetensors, ...) or a clt-training folder (layers.N.mlp)")
    if is_sparsify_clt(path):
        return read_sparsify_clt(path, tf, device=dev)
    config = path / "config.json"
    if not config.exists() or json.loads(config.read_text()).get("format") != CLT_FORMAT:
        return read_circuit_tracer_clt(path, tf, device=dev)  # checked against tf there
    clt = CrossLayerTranscoder.load(path, device=dev)
    if tf is not None:
        clt.check_model(tf, f"cross-layer transcoder {path}")
    return clt
