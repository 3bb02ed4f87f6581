"""Reading transcoders in the layouts people publish, so a user with internet uses them in one call.

`load_transcoders(spec, model)` takes:

- a folder saved by `TranscoderSet.save` (``config.json`` with ``format: acdc-transcoders/1``);
- **EleutherAI sparsify**: one subfolder per hookpoint ``layers.N.mlp`` holding ``cfg.json``
  (``transcode: true``, ``activation``, ``k``, ``skip_connection``) and ``sae.safetensors``
  (``encoder.weight`` [n, d], ``encoder.bias`` [n], ``W_dec`` [n, d], ``b_dec`` [d], ``W_skip`` [d, d],
  applied as ``x @ W_skip.T``); the hookpoint's input is the MLP module's input, the normed stream;
- **SAELens** (`SAE.save_model`): a folder, or a folder of folders, each with ``cfg.json``
  (``architecture``: ``transcoder``, ``skip_transcoder``, ``jumprelu_transcoder`` or
  ``jumprelu_skip_transcoder``; ``metadata.hook_name`` names the layer) and
  ``sae_weights.safetensors`` (``W_enc`` [d, n], ``b_enc``, ``W_dec`` [n, d], ``b_dec``, ``W_skip``
  [d, d] applied as ``x @ W_skip.T``, ``threshold`` [n]);
- **circuit-tracer**: a folder with ``config.yaml`` (``model_kind: transcoder_set``,
  ``feature_input_hook``, ``feature_output_hook``, and ``transcoders``: a list of files or ``hf://``
  addresses, or else ``layer_{i}.safetensors`` beside it) whose files hold ``W_enc`` [n, d],
  ``b_enc``, ``W_dec`` [n, d], ``b_dec``, ``W_skip`` [d, d] (``x @ W_skip.T``) and, for JumpReLU,
  ``activation_function.threshold`` [n]; or, as circuit-tracer's Gemma presets list them, **Gemma Scope**
  ``params.npz`` files (``W_enc`` [d, n], ``W_dec`` [n, d], ``b_enc``, ``b_dec``, ``threshold``: JumpReLU;
  circuit-tracer's ``load_gemma_scope_transcoder``) and **Gemma Scope 2** safetensors (``w_enc`` [d, n],
  ``w_dec`` [n, d], ``b_enc``, ``b_dec``, ``threshold``, optional ``affine_skip_connection`` [d, d] applied
  as ``x @ A``; its ``load_gemma_scope_2_transcoder``), told apart by suffix and keys;
- a Hugging Face hub name (e.g. ``EleutherAI/skip-transcoder-SmolLM2-135M-128x``), downloaded
  with ``huggingface_hub`` where the network allows, then read as above.

Every layout must read the normed MLP input (TransformerLens ``blocks.N.ln2.hook_normalized`` or
``blocks.N.mlp.hook_in``) and write the MLP output; a file that reads the stream before the norm
(``hook_resid_mid``, ``hook_mlp_in``) is refused in one line, since acdc's transcoders sit
where the MLP's matrices sit. ``ln2.hook_normalized`` is the norm's output *before* its scale and bias
(TransformerLens's hook, and circuit-tracer's for Gemma: ``x / rms(x)``), while acdc's transcoders read the
norm's output (``mlp_input``, the MLP's own input); so a file hooked there is read with the model
(``load_transcoders(path, model)``), which folds the norm's scale and bias into the encoder and the skip
path (``x_hat = (z - b) / w``), and is refused by any model it was not folded for. Decoder rows keep the norms the file has, so feature activations
equal the publisher's (acdc's own training keeps them at unit norm).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..model import Transformer
from .clt import CLT_FORMAT, CrossLayerTranscoder
from .clt_formats import is_sparsify_clt, load_clt
from .transcoder import FORMAT, SPARSIFY_HOOK, ModelInfo, Transcoder, TranscoderConfig, TranscoderSet

__all__ = ["load_dictionary", "load_transcoders", "read_circuit_tracer", "read_saelens", "read_sparsify"]

_NORMED_IN = re.compile(r"^(?:blocks\.(\d+)\.)?(?:ln2\.hook_normalized|mlp\.hook_in)$")
_MLP_OUT = re.compile(r"^(?:blocks\.(\d+)\.)?(?:hook_mlp_out|mlp\.hook_out)$")
_SAELENS_ARCH = {"transcoder": ("relu", False), "skip_transcoder": ("relu", True),
                 "jumprelu_transcoder": ("jumprelu", False), "jumprelu_skip_transcoder": ("jumprelu", True)}


def load_transcoders(spec: str | Path, model: Any = None, *, device: torch.device | str | None = None) -> TranscoderSet:
    """Transcoders from a saved folder, a sparsify, SAELens or circuit-tracer folder, or a hub name
    (see the module docstring).

    With ``model`` (a bridge or `acdc.model.Transformer`) they are checked against it (one-line
    error for another model) and moved to its device; foreign layouts record its fingerprint.
    """
    tf = None if model is None else (Transformer.of(model))
    dev = device if device is not None else (tf.device if tf is not None else "cpu")
    path = Path(spec)
    source = str(spec)
    if not path.exists():
        if isinstance(spec, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
            path = _download(spec)
            source = f"hub: {spec}"
        else:
            raise ValueError(f"transcoders {str(spec)!r} not found: give a folder saved by TranscoderSet.save, a sparsify, "
                             "SAELens or circuit-tracer folder, or a hub name like owner/name")
    fmt = json.loads((path / "config.json").read_text()).get("format") if (path / "config.json").exists() else None
    if fmt == CLT_FORMAT or (path / "W_enc_0.safetensors").exists() or is_sparsify_clt(path):
        raise ValueError(f"{path} is a cross-layer transcoder: load it with acdc.load_clt(path, model)")
    if fmt == FORMAT:
        ts = TranscoderSet.load(path, device=dev)
    elif (path / "config.yaml").exists():
        ts = read_circuit_tracer(path, tf, device=dev, source=f"circuit-tracer: {source}")
    elif any(SPARSIFY_HOOK.match(p.name) for p in path.iterdir() if p.is_dir()):
        ts = read_sparsify(path, tf, device=dev, source=f"sparsify: {source}")
    elif _saelens_folders(path):
        ts = read_saelens(path, tf, device=dev, source=f"SAELens: {source}")
    else:
        raise ValueError(f"{path} is neither an acdc transcoder set (config.json), a sparsify folder (layers.N.mlp/cfg.json), "
                         "a SAELens folder (cfg.json + sae_weights.safetensors) nor a circuit-tracer folder (config.yaml)")
    if tf is not None:
        ts.check_model(tf, f"transcoders {source}")
    return ts


def load_dictionary(spec: str | Path, model: Any = None) -> TranscoderSet | CrossLayerTranscoder:
    """A folder's transcoders, whichever kind it holds: a cross-layer transcoder (`load_clt`: acdc's CLT folder or
    circuit-tracer's) or per-layer ones (`load_transcoders`: every other layout and hub names)."""
    path = Path(spec)
    config = path / "config.json"
    clt = path.is_dir() and ((path / "W_enc_0.safetensors").exists() or is_sparsify_clt(path) or
                             (config.exists() and json.loads(config.read_text()).get("format") == CLT_FORMAT))
    return load_clt(path, model) if clt else load_transcoders(spec, model)


def _transcoder(device: torch.device | str, *, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor,
                activation: str, k: int | None = None, W_skip: Tensor | None = None, threshold: Tensor | None = None,
                where: str = "") -> Transcoder:
    """An acdc transcoder from a foreign file's tensors, in acdc's orientation: W_enc [d, n],
    W_dec [n, d], W_skip [d, d] with out += x @ W_skip, threshold [n] (JumpReLU, > 0 or 0)."""
    d, n = W_enc.shape
    tc = Transcoder(TranscoderConfig(d, n, activation, k, W_skip is not None), device=device)
    with torch.no_grad():
        tc.W_enc.copy_(W_enc.float())
        tc.b_enc.copy_(b_enc.float())
        tc.W_dec.copy_(W_dec.float())
        tc.b_dec.copy_(b_dec.float())
        if tc.W_skip is not None and W_skip is not None:
            tc.W_skip.copy_(W_skip.float())
        if tc.log_threshold is not None:
            if threshold is None:
                raise ValueError(f"{where}: a JumpReLU transcoder without its threshold")
            t = threshold.float()
            if bool((t < 0).any()):  # x * (x > t) goes negative there; acdc's JumpReLU keeps t >= 0
                raise ValueError(f"{where}: {int((t < 0).sum())} negative JumpReLU thresholds; acdc reads thresholds >= 0")
            tc.log_threshold.copy_(t.log())
    return tc


def _foreign(transcoders: dict[int, Transcoder], tf: Transformer | None, path: Path, source: str,
             info: dict[str, Any] | None = None) -> TranscoderSet:
    """A set read from a foreign layout: such files do not know the model's fingerprint, so the shape decides."""
    d_model = next(iter(transcoders.values())).cfg.d_model
    model = ModelInfo(tf.arch.family, tf.arch.n_layers, d_model) if tf is not None else ModelInfo(path.name, max(transcoders) + 1, d_model)
    return TranscoderSet(transcoders, model, source, info or {})


def _before_scale(hook_in: str | None) -> bool:
    """Whether a file's input hook is the norm's output before its scale and bias (TransformerLens's hook_normalized)."""
    return bool(hook_in) and str(hook_in).endswith("ln2.hook_normalized")


def _fold_norm(transcoders: dict[int, Transcoder], layers: list[int], tf: Transformer | None, where: str) -> list[int]:
    """Fold each layer's MLP-input norm (scale w, bias b) into transcoders that read ``x_hat = (z - b) / w`` so they
    read ``z``, acdc's `mlp_input`: W_enc / w, b_enc - (b / w) W_enc; W_skip / w and its constant into b_dec.
    Without a model, nothing is folded: the layers are returned (the set then refuses every model)."""
    if tf is None:
        return layers
    for layer in layers:
        w, b = (t.detach().float() for t in tf.norm_params("ln2", layer))
        if bool((w.abs() < 1e-8).any()):
            raise ValueError(f"{where}: layer {layer}'s norm has a zero scale; its normalized input cannot be recovered")
        tc = transcoders[layer]
        with torch.no_grad():
            w, b = w.to(tc.W_enc.device), b.to(tc.W_enc.device)
            shift = b / w
            tc.b_enc.sub_(shift @ tc.W_enc)
            tc.W_enc.div_(w[:, None])
            if tc.W_skip is not None:
                tc.b_dec.sub_(shift @ tc.W_skip)
                tc.W_skip.div_(w[:, None])
    return []


def _check_hooks(where: str, hook_in: str | None, hook_out: str | None, layer: int | None = None) -> int | None:
    """The layer the hooks name (None when they name none); a hook off the MLP's normed input or output is refused."""
    m_in = _NORMED_IN.match(hook_in or "")
    if hook_in is not None and not m_in:
        raise ValueError(f"{where} reads {hook_in!r}; acdc's transcoders read the normed MLP input "
                         "(ln2.hook_normalized or mlp.hook_in), so this file does not fit there")
    if hook_out is not None and not _MLP_OUT.match(hook_out):
        raise ValueError(f"{where} writes {hook_out!r}; acdc's transcoders stand in for the MLP output (hook_mlp_out or mlp.hook_out)")
    named = m_in.group(1) if m_in else None
    return int(named) if named is not None else layer


def read_sparsify(path: str | Path, tf: Transformer | None = None, *, device: torch.device | str = "cpu",
                  source: str | None = None) -> TranscoderSet:
    """A sparsify folder of transcoders (``layers.N.mlp``); the MLP hookpoints only."""
    from safetensors.torch import load_file

    path = Path(path)
    transcoders: dict[int, Transcoder] = {}
    for sub in sorted(path.iterdir()):
        m = SPARSIFY_HOOK.match(sub.name)
        if not (sub.is_dir() and m):
            continue
        cfg = json.loads((sub / "cfg.json").read_text())
        if int(cfg.get("n_targets", 0) or 0) > 0:
            raise ValueError(f"{sub} writes into {cfg['n_targets']} layers (a clt-training cross-layer transcoder): load the "
                             "folder with acdc.load_clt")
        if not cfg.get("transcode", False):
            raise ValueError(f"{sub} is a sparse autoencoder (transcode: false), not a transcoder")
        act = str(cfg.get("activation", "topk")).lower()
        if act not in ("topk", "relu"):
            raise ValueError(f"{sub}: activation {act!r} is not supported (topk, relu)")
        w = load_file(str(sub / "sae.safetensors"), device="cpu")
        skip = w.get("W_skip")
        transcoders[int(m.group(1))] = _transcoder(
            device, W_enc=w["encoder.weight"].T, b_enc=w["encoder.bias"], W_dec=w["W_dec"], b_dec=w["b_dec"], activation=act,
            k=int(cfg["k"]) if act == "topk" else None, W_skip=None if skip is None else skip.T, where=str(sub))
    if not transcoders:
        raise ValueError(f"{path} has no sparsify MLP transcoders (layers.N.mlp folders)")
    return _foreign(transcoders, tf, path, source or f"sparsify: {path}")


def _saelens_folders(path: Path) -> list[Path]:
    if (path / "cfg.json").exists() and (path / "sae_weights.safetensors").exists():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and (p / "cfg.json").exists() and (p / "sae_weights.safetensors").exists())


def read_saelens(path: str | Path, tf: Transformer | None = None, *, device: torch.device | str = "cpu",
                 source: str | None = None) -> TranscoderSet:
    """SAELens transcoders saved by `SAE.save_model`: one folder, or a folder of them (one per layer)."""
    from safetensors.torch import load_file

    path = Path(path)
    folders = _saelens_folders(path)
    if not folders:
        raise ValueError(f"{path} has no SAELens folders (cfg.json + sae_weights.safetensors)")
    transcoders: dict[int, Transcoder] = {}
    model_name = None
    before_scale: list[int] = []  # layers whose file reads the norm's output before its scale (folded with the model)
    for sub in folders:
        cfg = json.loads((sub / "cfg.json").read_text())
        arch = cfg.get("architecture", "standard")
        if arch not in _SAELENS_ARCH:
            raise ValueError(f"{sub} is a SAELens {arch!r} SAE, not a transcoder ({', '.join(_SAELENS_ARCH)})")
        if cfg.get("normalize_activations", "none") != "none":
            raise ValueError(f"{sub} normalizes its input ({cfg['normalize_activations']}); fold that into the weights first")
        meta = cfg.get("metadata") or {}
        model_name = meta.get("model_name", model_name)
        layer = _check_hooks(str(sub), meta.get("hook_name", cfg.get("hook_name")), meta.get("hook_name_out", cfg.get("hook_name_out")),
                             meta.get("hook_layer", cfg.get("hook_layer")))
        if layer is None:
            raise ValueError(f"{sub}: cfg.json names no layer (metadata.hook_name like blocks.N.ln2.hook_normalized)")
        if _before_scale(meta.get("hook_name", cfg.get("hook_name"))):
            before_scale.append(layer)
        act, _ = _SAELENS_ARCH[arch]
        w = load_file(str(sub / "sae_weights.safetensors"), device="cpu")
        skip = w.get("W_skip")
        if act == "jumprelu":  # SAELens: relu(pre) * (pre > t), which is acdc's pre * (pre > t) for t >= 0
            w["threshold"] = w["threshold"].clamp_min(0)
        transcoders[layer] = _transcoder(device, W_enc=w["W_enc"], b_enc=w["b_enc"], W_dec=w["W_dec"], b_dec=w["b_dec"], activation=act,
                                         W_skip=None if skip is None else skip.T, threshold=w.get("threshold"), where=str(sub))
    unfolded = _fold_norm(transcoders, before_scale, tf, str(path))
    return _foreign(transcoders, tf, path, source or f"SAELens: {path}",
                    {"model_name": model_name, **({"unfolded_norm_input": unfolded} if unfolded else {})})


def read_circuit_tracer(path: str | Path, tf: Transformer | None = None, *, device: torch.device | str = "cpu",
                        source: str | None = None) -> TranscoderSet:
    """A circuit-tracer transcoder set: ``config.yaml`` plus one file per layer (its safetensors, Gemma Scope's
    .npz or Gemma Scope 2's safetensors)."""
    import yaml

    path = Path(path)
    config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    kind = config.get("model_kind")
    if kind == "cross_layer_transcoder":
        raise ValueError(f"{path}: circuit-tracer model_kind {kind!r} is not supported here: a cross-layer transcoder loads with "
                         "acdc.load_clt(path, model)")
    if kind != "transcoder_set":
        raise ValueError(f"{path}: circuit-tracer model_kind {kind!r} is not supported (acdc reads per-layer transcoder_set files)")
    _check_hooks(str(path), config.get("feature_input_hook"), config.get("feature_output_hook"))
    if "transcoders" in config:
        files = {i: _local(str(f), path) for i, f in enumerate(config["transcoders"])}
    else:
        files = {int(f.stem.split("_")[1]): f for f in path.glob("layer_*.safetensors")}
    if not files:
        raise ValueError(f"{path}: config.yaml lists no transcoders and there are no layer_N.safetensors files")
    transcoders = {layer: _circuit_tracer_file(f, device) for layer, f in sorted(files.items())}
    unfolded = _fold_norm(transcoders, sorted(transcoders) if _before_scale(config.get("feature_input_hook")) else [], tf, str(path))
    return _foreign(transcoders, tf, path, source or f"circuit-tracer: {path}",
                    {"model_name": config.get("model_name"), "scan": config.get("scan"),
                     **({"unfolded_norm_input": unfolded} if unfolded else {})})


def _circuit_tracer_file(f: Path, device: torch.device | str) -> Transcoder:
    """One transcoder file of a circuit-tracer set, in whichever of its three layouts (module docstring)."""
    if f.suffix == ".npz":  # Gemma Scope: numpy arrays, W_enc [d, n]
        import numpy as np

        with np.load(f) as z:
            w = {k: torch.from_numpy(np.asarray(z[k], dtype=np.float32)) for k in z.files}
        missing = {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"} - w.keys()
        if missing:
            raise ValueError(f"{f}: not a Gemma Scope transcoder (params.npz lacks {', '.join(sorted(missing))})")
        return _transcoder(device, W_enc=w["W_enc"], b_enc=w["b_enc"], W_dec=w["W_dec"], b_dec=w["b_dec"],
                           activation="jumprelu", threshold=w["threshold"], where=str(f))
    if f.suffix != ".safetensors":
        raise ValueError(f"{f}: circuit-tracer transcoder files are .safetensors (or Gemma Scope's .npz)")
    from safetensors.torch import load_file

    w = load_file(str(f), device="cpu")
    if "w_enc" in w:  # Gemma Scope 2: W_enc [d, n], the skip path x @ affine_skip_connection
        return _transcoder(device, W_enc=w["w_enc"], b_enc=w["b_enc"], W_dec=w["w_dec"], b_dec=w["b_dec"], activation="jumprelu",
                           W_skip=w.get("affine_skip_connection"), threshold=w["threshold"], where=str(f))
    skip, thr = w.get("W_skip"), w.get("activation_function.threshold")
    return _transcoder(device, W_enc=w["W_enc"].T, b_enc=w["b_enc"], W_dec=w["W_dec"], b_dec=w["b_dec"],
                       activation="relu" if thr is None else "jumprelu", W_skip=None if skip is None else skip.T,
                       threshold=thr, where=str(f))


def _local(ref: str, folder: Path) -> Path:
    """A circuit-tracer file reference as a local path: ``hf://owner/repo/file[@revision]`` downloaded, others relative to the folder."""
    if not ref.startswith("hf://"):
        p = Path(ref)
        return p if p.is_absolute() else folder / p
    body, _, revision = ref[len("hf://"):].partition("@")
    owner, repo, filename = body.split("/", 2)
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(f"{owner}/{repo}", filename, revision=revision or None))
    except Exception as err:  # offline: one line, how to proceed
        raise ValueError(f"could not download {ref} ({type(err).__name__}); with no network, download it elsewhere "
                         "and list its local path in config.yaml") from None


def _download(name: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name))
    except Exception as err:  # offline, unknown repo: one line, how to proceed
        raise ValueError(f"could not download transcoders {name!r} ({type(err).__name__}); with no network, "
                         "download the folder elsewhere and pass its path") from None
