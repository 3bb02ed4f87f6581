"""Cross-layer transcoders (CLTs; Ameisen et al. 2025): each feature reads one layer and writes into the MLP
output of that layer and of every later one.

For a model of L layers, layer l's features read ``x_l`` (what they read: ``reads``, below) and layer j's
MLP output is stood in for by every feature of the layers up to j::

    acts_l = act_l(x_l @ W_enc[l] + b_enc[l])                         [..., n]     per layer, as a per-layer transcoder
    out_j  = sum_{l <= j} acts_l @ W_dec[l][:, j - l] + b_dec[j]      [..., d]     (+ x_j @ W_skip[j] with a skip path)

``W_dec[l]`` is [n, L - l, d]: feature i of layer l writes ``W_dec[l][i, j - l]`` into layer j's MLP output.
So what a feature has written by the time the stream reaches layer k is its activation times the sum of
its decoders for layers l..k-1 (`written`), which is what a feature graph's destination at layer k reads.

Two optional parts hold what EleutherAI's clt-training (sparsify's cross-layer fork) trains, read exactly by
`acdc.transcoders.clt_formats.read_sparsify_clt`: per-target **offsets** (``offsets``; its ``post_encs``), with
which a feature that fires (a > 0) writes ``(a + offset[l][i, j - l]) W_dec[l][i, j - l]`` into layer j
(`writes`), and **cross-layer skip paths** (``cross_skip``), ``x_l @ W_skip_cross[l][j - l - 1]`` into every later
layer j. Feature graphs take both (`acdc.feature_nodes.CrossLayerUnits`: a feature then has two channels, its
activation and whether it fires; layer j's skip node is every skip path into MLP j), as do its reconstruction
(`forward`), fidelity, feature pages, attribution graphs (a feature's edge then sums (a + offset) times each
decoder; cross-layer skips stay live in the frozen model as a layer's own does) and `acdc.generate`;
circuit-tracer's layout, whose features write their activation times fixed rows, refuses them in one line
(`check_linear`).

``reads``: "normed", the MLP's normed input (`Transformer.mlp_input`, where acdc's per-layer transcoders
read), or "stream", the residual stream before that norm (TransformerLens ``hook_resid_mid``: circuit-tracer's
CLTs read there). Saved as ``config.json`` (format ``acdc-clt/1``) + ``clt.safetensors``; never pickled. Foreign
layouts (circuit-tracer's, clt-training's) are read by `acdc.transcoders.clt_formats`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..files import claim_folder
from ..model import Transformer
from .transcoder import ACTIVATIONS, ModelInfo, TranscoderSet, activate, check_model_info, read_config, write_folder

__all__ = ["CLT_FORMAT", "CLTConfig", "CrossLayerTranscoder", "FeatureDictionary"]

CLT_FORMAT = "acdc-clt/1"
READS = ("normed", "stream")


@dataclass(frozen=True)
class CLTConfig:
    """The shape and activation of a cross-layer transcoder: ``n_features`` per layer, over ``n_layers`` layers."""

    n_layers: int
    d_model: int
    n_features: int
    activation: str = "relu"
    k: int | None = None  # TopK: features active per token, in each layer
    skip: bool = False  # a linear skip path per layer, x_j @ W_skip[j]
    reads: str = "normed"  # "normed": the MLP's normed input; "stream": the residual stream before that norm
    offsets: bool = False  # per-target offsets: a firing feature writes (a + offset[l][i, j - l]) W_dec[l][i, j - l]
    cross_skip: bool = False  # skip paths from each layer's input into every later MLP, x_l @ W_skip_cross[l][j - l - 1]

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown transcoder activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if min(self.n_layers, self.d_model, self.n_features) < 1:
            raise ValueError(f"n_layers, d_model and n_features must be positive, got {self.n_layers}, {self.d_model}, "
                             f"{self.n_features}")
        if self.activation == "topk" and not (isinstance(self.k, int) and 0 < self.k <= self.n_features):
            raise ValueError(f"a TopK transcoder needs k in 1..{self.n_features}, got {self.k!r}")
        if self.reads not in READS:
            raise ValueError(f"reads must be one of {', '.join(READS)}, got {self.reads!r}")


class CrossLayerTranscoder(nn.Module):
    """A CLT (module docstring). Parameters: W_enc [L, d, n], b_enc [L, n], W_dec (one [n, L - l, d] per source
    layer l), b_dec [L, d], W_skip [L, d, d] (with ``skip``), log_threshold [L, n] (JumpReLU), offset (one [n, L - l]
    per source layer, with ``offsets``), W_skip_cross (one [L - l - 1, d, d] per source layer, with ``cross_skip``). ``model``,
    ``source`` and ``info`` say which model it is for, where it comes from, and anything else worth keeping."""

    def __init__(self, cfg: CLTConfig, model: ModelInfo | None = None, source: str = "acdc", info: dict[str, Any] | None = None, *,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        self.model = model if model is not None else ModelInfo("unknown", cfg.n_layers, cfg.d_model)
        self.source = source
        self.info: dict[str, Any] = dict(info or {})
        L, d, n = cfg.n_layers, cfg.d_model, cfg.n_features
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.W_enc = nn.Parameter(torch.zeros(L, d, n, **kw))
        self.b_enc = nn.Parameter(torch.zeros(L, n, **kw))
        self.W_dec = nn.ParameterList([nn.Parameter(torch.zeros(n, L - layer, d, **kw)) for layer in range(L)])
        self.b_dec = nn.Parameter(torch.zeros(L, d, **kw))
        self.W_skip = nn.Parameter(torch.zeros(L, d, d, **kw)) if cfg.skip else None
        self.log_threshold = nn.Parameter(torch.zeros(L, n, **kw)) if cfg.activation == "jumprelu" else None
        self.offset = nn.ParameterList([nn.Parameter(torch.zeros(n, L - layer, **kw)) for layer in range(L)]) if cfg.offsets else None
        self.W_skip_cross = (nn.ParameterList([nn.Parameter(torch.zeros(L - layer - 1, d, d, **kw)) for layer in range(L)])
                             if cfg.cross_skip else None)

    def __repr__(self) -> str:
        c = self.cfg
        act = (f"{c.activation}{f', k={c.k}' if c.k else ''}{', skip' if c.skip else ''}{', offsets' if c.offsets else ''}"
               f"{', cross-layer skips' if c.cross_skip else ''}")
        return (f"CrossLayerTranscoder({c.n_layers} layers x {c.n_features} features ({act}), reads the {c.reads} MLP input; "
                f"for {self.model.name}; {self.source})")

    # ------------------------------------------------------------------ the maths
    def encode(self, layer: int, x: Tensor) -> Tensor:
        """[..., n] layer ``layer``'s feature activations on what they read there, x [..., d_model]."""
        pre = x @ self.W_enc[layer] + self.b_enc[layer]
        return activate(pre, self.cfg.activation, self.cfg.k, None if self.log_threshold is None else self.log_threshold[layer])

    def decoder(self, source: int, target: int) -> Tensor:
        """[n, d_model] what each feature of layer ``source`` writes into layer ``target``'s MLP output (source <= target)."""
        if not 0 <= source <= target < self.cfg.n_layers:
            raise ValueError(f"a feature of layer {source} writes into layers {source}..{self.cfg.n_layers - 1}, not {target}")
        return self.W_dec[source][:, target - source]

    def written(self, source: int, upto: int) -> Tensor:
        """[n, d_model] what each feature of layer ``source`` has written into the stream, per unit of activation,
        once the MLPs of layers source..upto-1 have run: the sum of those decoders (zeros when upto <= source)."""
        if upto <= source:
            return torch.zeros_like(self.W_dec[source][:, 0])
        return self.W_dec[source][:, : upto - source].sum(1)

    def writes(self, source: int, target: int, acts: Tensor, features: Tensor | None = None) -> Tensor:
        """[..., d_model] what layer ``source``'s features write into layer ``target``'s MLP output at activations
        ``acts`` [..., n] (or [..., k]: the features ``features`` [k] only): acts @ their decoders into ``target``, plus,
        with offsets, each firing feature's offset times its decoder."""
        dec = self.decoder(source, target)
        off = None if self.offset is None else self.offset[source][:, target - source]
        if features is not None:
            dec = dec.index_select(0, features)
            off = None if off is None else off.index_select(0, features)
        out = acts @ dec
        if off is not None:
            out = out + ((acts > 0).to(acts.dtype) * off) @ dec
        return out

    def skip_into(self, target: int, xs: Sequence[Tensor] | Mapping[int, Tensor] | Tensor) -> Tensor | None:
        """[..., d_model] what the skip paths write into layer ``target``'s MLP output from what each layer read
        (``xs[l]`` [..., d_model] for every l <= target): its own layer's, then every earlier layer's with cross-layer
        skips; None for a CLT without skip paths."""
        if self.W_skip is None and self.W_skip_cross is None:
            return None
        out = torch.zeros_like(xs[target]) if self.W_skip is None else xs[target] @ self.W_skip[target]
        if self.W_skip_cross is not None:
            for src in range(target):
                out = out + xs[src] @ self.W_skip_cross[src][target - src - 1]
        return out

    def offsets_written(self, source: int, upto: int) -> Tensor:
        """[n, d_model] what each feature of layer ``source`` has written through its offsets, while it fires, once
        the MLPs of layers source..upto-1 have run: sum_j offset[source][:, j - source] W_dec[source][:, j - source]
        (zeros without offsets, or when upto <= source)."""
        if self.offset is None or upto <= source:
            return torch.zeros_like(self.W_dec[source][:, 0])
        k = upto - source
        return (self.offset[source][:, :k, None] * self.W_dec[source][:, :k]).sum(1)

    def has_offsets(self) -> bool:
        """Whether some per-target offset is not zero (a firing feature's writes are then affine in its activation)."""
        return self.offset is not None and any(bool((o != 0).any()) for o in self.offset)

    def decode_layer(self, target: int, acts: Sequence[Tensor] | Mapping[int, Tensor],
                     xs: Sequence[Tensor] | Mapping[int, Tensor] | Tensor | None = None) -> Tensor:
        """[..., d_model] layer ``target``'s MLP output from the activations ``acts[l]`` [..., n] of every layer l <=
        target: their writes into it, b_dec, and the skip paths of what each layer read (``xs[l]``), where there are some."""
        out = sum((self.writes(src, target, acts[src]) for src in range(target + 1)), self.b_dec[target])
        if self.W_skip is not None or self.W_skip_cross is not None:
            if xs is None:
                raise ValueError("this CLT has skip paths: decoding needs what each layer read (xs)")
            out = out + self.skip_into(target, xs)  # type: ignore[operator]
        return out  # type: ignore[return-value]

    def decode(self, acts: list[Tensor], xs: Tensor | None = None) -> Tensor:
        """[L, ..., d_model] every layer's MLP output from every layer's activations ``acts`` (L tensors [..., n]), plus
        the skip paths of what each layer read, xs [L, ..., d_model], where there are some (`decode_layer`)."""
        return torch.stack([self.decode_layer(j, acts, xs) for j in range(self.cfg.n_layers)])

    def check_linear(self, what: str) -> None:
        """A one-line ValueError when ``what`` (circuit-tracer's layout) cannot hold this CLT: non-zero offsets (a
        feature's write is then not its activation times a fixed row) or non-zero cross-layer skip paths (the skip
        path of one layer then writes into later ones)."""
        why = []
        if self.has_offsets():
            why.append("its features write (activation + offset) x decoder when they fire (per-target offsets)")
        if self.W_skip_cross is not None and any(bool((w != 0).any()) for w in self.W_skip_cross):
            why.append("its skip paths cross layers")
        if why:
            raise ValueError(f"{what} needs each feature to write its activation times fixed decoders and skip paths within "
                             f"a layer; {' and '.join(why)}. acdc's own files (CrossLayerTranscoder.save) hold it")

    def forward(self, xs: Tensor) -> Tensor:
        """[L, ..., d_model] the CLT's stand-in for every MLP's output from what every layer reads, xs [L, ..., d_model]."""
        return self.decode([self.encode(layer, xs[layer]) for layer in range(self.cfg.n_layers)], xs)

    def layer_view(self, layer: int) -> LayerView:
        """Layer ``layer``'s features seen as one transcoder's (what feature pages read): its encoder, and as the
        decoder what each feature writes in all (its decoders into every layer from its own on, summed)."""
        if self.cfg.reads != "normed":
            raise ValueError("this cross-layer transcoder reads the residual stream before the MLP's norm; feature pages "
                             "read the normed MLP input (reads='normed')")
        return LayerView(self, layer)

    def check_model(self, tf: Transformer, what: str = "this cross-layer transcoder") -> None:
        """A one-line ValueError unless ``tf`` is the model this CLT was made for (every layer, its width)."""
        if tf.arch.n_layers != self.cfg.n_layers:
            raise ValueError(f"{what} spans {self.cfg.n_layers} layers; this model has {tf.arch.n_layers}")
        check_model_info(self.model, self.cfg.n_layers - 1, tf, what)

    @property
    def layers(self) -> list[int]:
        """The layers whose features it holds: every layer of the model."""
        return list(range(self.cfg.n_layers))

    def graph_info(self) -> dict[str, Any]:
        """What a feature graph would record of it (`acdc.graph.FeatureSet`); ``cross_layer`` marks it."""
        c = self.cfg
        return {"source": self.source, "model": self.model.name, "fingerprint": self.model.fingerprint, "cross_layer": True,
                "layers": {str(layer): {"n_features": c.n_features, "activation": c.activation, "k": c.k, "skip": c.skip or c.cross_skip}
                           for layer in self.layers}}

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """A folder with ``config.json`` (format, config, model, source, info) and ``clt.safetensors``; a folder
        already holding one is refused unless ``overwrite``."""
        config = {"format": CLT_FORMAT, "config": asdict(self.cfg), "model": asdict(self.model), "source": self.source, "info": self.info}
        return write_folder(path, "clt.safetensors", self.state_dict(), config, overwrite)

    def to_circuit_tracer(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """The folder circuit-tracer's ``load_clt`` reads (`read_circuit_tracer_clt`'s layout, with its ``config.yaml``:
        ``model_kind: cross_layer_transcoder``, the input hook ``hook_resid_mid`` for ``reads="stream"``, ``mlp.hook_in``
        for "normed"). circuit-tracer's CLTs are ReLU or JumpReLU without skip paths: others are refused in one line."""
        from safetensors.torch import save_file

        c = self.cfg
        if c.activation == "topk" or c.skip or c.cross_skip:
            raise ValueError("circuit-tracer's cross-layer transcoders are ReLU or JumpReLU without skip paths; this one is "
                             f"{c.activation}{' with skip paths' if c.skip or c.cross_skip else ''}")
        self.check_linear("circuit-tracer's layout")
        names = [f"W_{w}_{layer}.safetensors" for layer in self.layers for w in ("enc", "dec")]
        path = claim_folder(path, ("config.yaml", *names), overwrite)
        for layer in self.layers:
            enc = {f"W_enc_{layer}": self.W_enc[layer].T, f"b_enc_{layer}": self.b_enc[layer], f"b_dec_{layer}": self.b_dec[layer]}
            if self.log_threshold is not None:
                enc[f"threshold_{layer}"] = self.log_threshold[layer].exp()
            save_file({k: v.detach().to("cpu").contiguous() for k, v in enc.items()}, str(path / f"W_enc_{layer}.safetensors"))
            save_file({f"W_dec_{layer}": self.W_dec[layer].detach().to("cpu").contiguous()}, str(path / f"W_dec_{layer}.safetensors"))
        hook = "hook_resid_mid" if c.reads == "stream" else "mlp.hook_in"
        (path / "config.yaml").write_text(f"model_kind: cross_layer_transcoder\nmodel_name: {self.model.name}\n"
                                          f"feature_input_hook: {hook}\nfeature_output_hook: hook_mlp_out\n")
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> CrossLayerTranscoder:
        """A CLT saved by `save`."""
        from safetensors.torch import load_file

        path = Path(path)
        config = read_config(path, CLT_FORMAT, "cross-layer transcoder")
        clt = cls(CLTConfig(**config["config"]), ModelInfo(**config["model"]), config.get("source", str(path)),
                  config.get("info", {}), device=device)
        clt.load_state_dict(load_file(str(path / "clt.safetensors"), device=str(device)))
        return clt


class LayerView:
    """One layer of a `CrossLayerTranscoder` with a per-layer transcoder's face (`CrossLayerTranscoder.layer_view`):
    ``W_enc`` [d, n], ``b_enc`` [n], ``W_dec`` [n, d] (each feature's total write), ``n_features``, ``encode``."""

    def __init__(self, clt: CrossLayerTranscoder, layer: int):
        self.clt, self.layer = clt, layer
        self.W_enc, self.b_enc = clt.W_enc[layer], clt.b_enc[layer]
        self.W_dec = clt.written(layer, clt.cfg.n_layers)
        self.n_features = clt.cfg.n_features

    def encode(self, x: Tensor) -> Tensor:
        return self.clt.encode(self.layer, x)


FeatureDictionary = TranscoderSet | CrossLayerTranscoder
"""What a feature graph's features are computed by: per-layer transcoders or one cross-layer transcoder."""
