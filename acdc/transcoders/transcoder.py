"""Transcoders: a wide, sparse layer trained to do what one MLP does (Dunefsky, Chlenski and Nanda 2024).

A transcoder reads exactly what the MLP's matrices read, the block's norm of the MLP's input
stream (`Transformer.mlp_input`: LayerNorm or RMSNorm with its scale; Hugging Face's ``ln_2`` /
``post_attention_layernorm`` output, the input of sparsify's ``layers.N.mlp`` hookpoint), and
writes what the MLP writes (its output, ``b_out`` included)::

    pre  = x @ W_enc + b_enc                         x [..., d_model], the normed MLP input
    acts = act(pre)                                  ReLU; TopK (the k largest pre, ReLU'd); JumpReLU (pre where pre > threshold)
    out  = acts @ W_dec + b_dec (+ x @ W_skip)       W_dec rows of unit norm; the skip path of Paulo et al. 2025

So the norm is not folded into the encoder: its per-token scale stays in ``x``, as the model
computes it (attribution graphs freeze that scale per token, as circuit-tracer does).

A `TranscoderSet` holds one transcoder per layer (any subset of layers) and remembers the model
it was made for (`Transformer.fingerprint`, its shape); ``check_model`` refuses another one in one line.
Saved as ``config.json`` + ``transcoders.safetensors`` (never pickle).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..files import claim_folder
from ..model import Transformer

__all__ = ["ACTIVATIONS", "FORMAT", "ModelInfo", "Transcoder", "TranscoderConfig", "TranscoderSet", "check_model_info",
           "activate", "read_config", "write_folder"]

Activation = Literal["relu", "topk", "jumprelu"]
ACTIVATIONS: tuple[str, ...] = ("relu", "topk", "jumprelu")
FORMAT = "acdc-transcoders/1"


@dataclass(frozen=True)
class TranscoderConfig:
    """The shape and activation of one transcoder."""

    d_model: int
    n_features: int
    activation: str = "relu"
    k: int | None = None  # TopK: how many features stay active per token
    skip: bool = False  # a linear skip path x @ W_skip

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown transcoder activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if self.activation == "topk" and not (isinstance(self.k, int) and 0 < self.k <= self.n_features):
            raise ValueError(f"a TopK transcoder needs k in 1..{self.n_features}, got {self.k!r}")
        if self.n_features < 1 or self.d_model < 1:
            raise ValueError(f"d_model and n_features must be positive, got {self.d_model} and {self.n_features}")


SPARSIFY_HOOK = re.compile(r"^(?:model\.|transformer\.)?(?:layers|h)\.(\d+)\.mlp$")
"""A sparsify folder's MLP hookpoint (``layers.N.mlp``; ``h.N.mlp`` for GPT-2), per-layer or cross-layer."""


def activate(pre: Tensor, activation: str, k: int | None = None, log_threshold: Tensor | None = None) -> Tensor:
    """[..., n] activations from pre-activations [..., n]: ReLU; TopK (the k largest, ReLU'd); JumpReLU (pre where
    pre > exp(log_threshold) [n])."""
    if activation == "relu":
        return torch.relu(pre)
    if activation == "topk":
        assert k is not None
        top = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    assert log_threshold is not None
    return pre * (pre > log_threshold.exp())


class Transcoder(nn.Module):
    """One layer's transcoder (see the module docstring). Parameters: W_enc [d, n], b_enc [n],
    W_dec [n, d], b_dec [d], W_skip [d, d] (with ``skip``), log_threshold [n] (JumpReLU)."""

    def __init__(self, cfg: TranscoderConfig, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        d, n = cfg.d_model, cfg.n_features
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.W_enc = nn.Parameter(torch.zeros(d, n, **kw))
        self.b_enc = nn.Parameter(torch.zeros(n, **kw))
        self.W_dec = nn.Parameter(torch.zeros(n, d, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d, **kw))
        self.W_skip = nn.Parameter(torch.zeros(d, d, **kw)) if cfg.skip else None
        self.log_threshold = nn.Parameter(torch.zeros(n, **kw)) if cfg.activation == "jumprelu" else None

    @property
    def n_features(self) -> int:
        return self.cfg.n_features

    def pre_acts(self, x: Tensor) -> Tensor:
        """[..., n] the encoder's pre-activations."""
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """[..., n] the features' activations from their pre-activations."""
        return activate(pre, self.cfg.activation, self.cfg.k, self.log_threshold)

    def encode(self, x: Tensor) -> Tensor:
        """[..., n] feature activations on the normed MLP input x [..., d_model]."""
        return self.activate(self.pre_acts(x))

    def frozen(self) -> Transcoder:
        """This transcoder with its parameters detached (the same storage, no gradients): run inside
        another computation's autograd graph (gradients reach its input, never its parameters)."""
        out = copy.copy(self)
        out._parameters = {k: None if v is None else nn.Parameter(v.detach(), requires_grad=False)
                           for k, v in self._parameters.items()}
        return out

    def encode_features(self, x: Tensor, idx: Tensor) -> Tensor:
        """[..., k] the activations of features ``idx`` [k] only, on x [..., d_model]: equal to
        ``encode(x)[..., idx]``. ReLU and JumpReLU features depend on their own encoder column alone, so
        only those columns are computed; TopK compares every feature, so it encodes them all (and keeps
        only the k-th largest pre-activation of each row, the threshold a chosen feature must reach)."""
        if self.cfg.activation == "topk":
            assert self.cfg.k is not None
            pre = self.pre_acts(x)
            kth = pre.topk(self.cfg.k, dim=-1).values[..., -1:]
            chosen = pre.index_select(-1, idx)
            return torch.relu(chosen) * (chosen >= kth)
        pre = x @ self.W_enc.index_select(1, idx) + self.b_enc.index_select(0, idx)
        if self.log_threshold is None:
            return torch.relu(pre)
        return pre * (pre > self.log_threshold.index_select(0, idx).exp())

    def decode(self, acts: Tensor, x: Tensor | None = None) -> Tensor:
        """[..., d_model] the output from activations (plus the skip path of x, where there is one)."""
        out = acts @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise ValueError("this transcoder has a skip path: decode(acts, x) needs its input x")
            out = out + x @ self.W_skip
        return out

    def forward(self, x: Tensor) -> Tensor:
        """The transcoder's stand-in for the MLP's output, [..., d_model]."""
        return self.decode(self.encode(x), x)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rows of W_dec to unit norm; for ReLU and JumpReLU the encoder (and threshold) are scaled
        so the function is unchanged (act(s z) = s act(z) for s > 0)."""
        norms = self.W_dec.norm(dim=1).clamp_min(1e-12)
        self.W_dec.div_(norms[:, None])
        if self.cfg.activation != "topk":
            self.W_enc.mul_(norms)
            self.b_enc.mul_(norms)
            if self.log_threshold is not None:
                self.log_threshold.add_(norms.log())


@dataclass(frozen=True)
class ModelInfo:
    """Which model a transcoder set is for: a name, its shape, and (when known) its fingerprint."""

    name: str
    n_layers: int
    d_model: int
    fingerprint: str | None = None

    @classmethod
    def of(cls, tf: Transformer, name: str = "") -> ModelInfo:
        return cls(name or tf.arch.family, tf.arch.n_layers, tf.arch.d_model, tf.fingerprint())


def write_folder(path: str | Path, weights: str, tensors: Mapping[str, Tensor], config: dict[str, Any], overwrite: bool) -> Path:
    """A folder of ``config.json`` and the safetensors file ``weights`` (``tensors``, moved to the CPU); a folder already
    holding either is refused unless ``overwrite`` (`acdc.files.claim_folder`)."""
    from safetensors.torch import save_file

    path = claim_folder(path, ("config.json", weights), overwrite)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path / weights))
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


def read_config(path: Path, fmt: str, what: str) -> dict[str, Any]:
    """``path/config.json`` of a folder saved by acdc in format ``fmt``; a one-line ValueError otherwise."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a saved {what} (config.json: {err})") from None
    if config.get("format") != fmt:
        raise ValueError(f"{path}/config.json is not an acdc {what} (format {config.get('format')!r}, expected {fmt!r}); "
                         "acdc.load_transcoders and acdc.load_clt read the other layouts")
    return config


def check_model_info(model: ModelInfo, last_layer: int, tf: Transformer, what: str) -> None:
    """A one-line ValueError unless ``tf`` is the model ``model`` describes (its shape, a layer ``last_layer``, and
    its fingerprint where one is known)."""
    a = tf.arch
    if (a.n_layers, a.d_model) != (model.n_layers, model.d_model) or last_layer >= a.n_layers:
        raise ValueError(f"{what} are for {model.name} ({model.n_layers} layers, d_model {model.d_model}), "
                         f"not this model ({a.n_layers} layers, d_model {a.d_model})")
    if model.fingerprint is not None and model.fingerprint != tf.fingerprint():
        raise ValueError(f"{what} were made for another model with this shape ({model.name}, fingerprint "
                         f"{model.fingerprint}; this model's is {tf.fingerprint()}); train or load transcoders for it")


@dataclass
class TranscoderSet:
    """Transcoders by layer, for one model.

    transcoders: layer -> `Transcoder`;
    model:       the model they were made for (`ModelInfo`);
    source:      where they come from ("trained by acdc", "sparsify: EleutherAI/...", a path);
    info:        anything else worth keeping (training settings, corpus and its licence, tokens seen).
    """

    transcoders: dict[int, Transcoder]
    model: ModelInfo
    source: str = "trained by acdc"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.transcoders)

    def __getitem__(self, layer: int) -> Transcoder:
        if layer not in self.transcoders:
            raise KeyError(f"no transcoder for layer {layer}; this set has layers {self.layers}")
        return self.transcoders[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.transcoders)

    def __repr__(self) -> str:
        t = self.transcoders[self.layers[0]].cfg if self.transcoders else None
        what = f", {t.n_features} features ({t.activation}{f', k={t.k}' if t.k else ''}{', skip' if t.skip else ''})" if t else ""
        return f"TranscoderSet(layers {self.layers}{what}, for {self.model.name}; {self.source})"

    def check_model(self, tf: Transformer, what: str = "these transcoders") -> None:
        """A one-line ValueError unless ``tf`` is the model this set was made for."""
        unfolded = self.info.get("unfolded_norm_input")
        if unfolded:
            raise ValueError(f"{what} read the MLP input before its norm's scale (ln2.hook_normalized) in layers {unfolded}, "
                             "acdc's transcoders after it: load them with the model, acdc.load_transcoders(path, model), "
                             "which folds the scale in")
        check_model_info(self.model, max(self.layers, default=0), tf, what)

    def graph_info(self) -> dict[str, Any]:
        """What a feature graph records of these transcoders (`acdc.Graph.from_model(model, transcoders=ts)`):
        where they come from, the model, and per layer the width, activation and skip path."""
        return {"source": self.source, "model": self.model.name, "fingerprint": self.model.fingerprint,
                "layers": {str(layer): {"n_features": t.n_features, "activation": t.cfg.activation, "k": t.cfg.k,
                                        "skip": t.cfg.skip} for layer, t in sorted(self.transcoders.items())}}

    def to(self, device: torch.device | str) -> TranscoderSet:
        for t in self.transcoders.values():
            t.to(device)
        return self

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """A folder with ``config.json`` (format, model, per-layer configs, info) and ``transcoders.safetensors``;
        a folder already holding a set is refused unless ``overwrite`` (a set is never replaced silently)."""
        tensors = {f"layers.{layer}.{name}": p for layer, t in self.transcoders.items() for name, p in t.named_parameters()}
        config = {"format": FORMAT, "model": asdict(self.model), "source": self.source, "info": self.info,
                  "layers": {str(layer): asdict(t.cfg) for layer, t in sorted(self.transcoders.items())}}
        return write_folder(path, "transcoders.safetensors", tensors, config, overwrite)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> TranscoderSet:
        """A set saved by `save`."""
        from safetensors.torch import load_file

        path = Path(path)
        config = read_config(path, FORMAT, "transcoder set")
        tensors = load_file(str(path / "transcoders.safetensors"), device=str(device))
        transcoders = {}
        for layer_s, cfg in config["layers"].items():
            t = Transcoder(TranscoderConfig(**cfg), device=device)
            prefix = f"layers.{layer_s}."
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            t.load_state_dict(state)
            transcoders[int(layer_s)] = t
        return cls(transcoders, ModelInfo(**config["model"]), config.get("source", str(path)), config.get("info", {}))
