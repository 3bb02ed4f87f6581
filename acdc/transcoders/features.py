"""Looking at transcoder features: top-activating contexts, density, and what a feature reads and writes.

`feature_report(model, transcoders, layer, features, corpus)` returns, per feature, the data an
explorer or a page shows (``layer=None`` and (layer, feature) pairs: features of many layers in one
pass over the corpus):

- ``contexts``: the top-activating positions over the corpus sequences scanned, each with the
  tokens around it (the active token marked) and the activation;
- ``density``: the fraction of scanned tokens on which the feature is active;
- ``promotes`` / ``suppresses``: the tokens whose logits its decoder direction raises / lowers
  most, read through the unembedding directly (``W_dec[i] @ W_U``, the final norm's scale left
  out: a direction, not a full effect);
- ``excited_by``: the tokens whose embedding alone (through the layer's MLP norm) gives the
  largest pre-activation (``mlp_input(W_E) @ W_enc[:, i]``; only meaningful in early layers).

`feature_pages(report, path)` writes one self-contained HTML page for a set of features.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..model import Transformer
from .corpus import TokenStream
from .transcoder import TranscoderSet

__all__ = ["FeatureInfo", "active_features", "feature_pages", "feature_report"]


@dataclass
class FeatureInfo:
    """What one feature does (see the module docstring); tokens as (text, value) pairs."""

    layer: int
    feature: int
    density: float
    max_activation: float
    contexts: list[dict[str, Any]] = field(default_factory=list)
    promotes: list[tuple[str, float]] = field(default_factory=list)
    suppresses: list[tuple[str, float]] = field(default_factory=list)
    excited_by: list[tuple[str, float]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"m{self.layer}.f{self.feature}"


def _text(tokenizer: Any, ids: list[int]) -> list[str]:
    if tokenizer is None:
        return [str(i) for i in ids]
    return [tokenizer.decode([i]) for i in ids]


@torch.no_grad()
def feature_report(model: Any, transcoders: TranscoderSet, layer: int | None, features: Sequence[int] | Sequence[tuple[int, int]],
                   corpus: TokenStream, *, sequences: int = 64, start: int = 0, top: int = 10, window: int = 8, batch: int = 8,
                   tokenizer: Any = None) -> list[FeatureInfo]:
    """`FeatureInfo` for each of ``features`` of ``layer``'s transcoder, from ``sequences`` corpus sequences.

    With ``layer=None``, ``features`` are (layer, feature) pairs, from any layers, scanned in one
    pass over the corpus (one model forward per batch, up to the deepest layer asked for).
    """
    tf = model if isinstance(model, Transformer) else Transformer.from_bridge(model)
    transcoders.check_model(tf)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if layer is None:
        pairs = [(int(lf[0]), int(lf[1])) for lf in features if isinstance(lf, tuple)]
        if len(pairs) != len(features):
            raise ValueError("with layer=None, give features as (layer, feature) pairs")
    else:
        pairs = [(layer, int(f)) for f in features if not isinstance(f, tuple)]
        if len(pairs) != len(features):
            raise ValueError(f"with layer={layer}, give features as plain indices (or layer=None and (layer, feature) pairs)")
    missing = sorted({lay for lay, _ in pairs if lay not in transcoders.layers})
    if missing:
        raise ValueError(f"no transcoder for layers {missing}; this set has layers {transcoders.layers}")
    bad = [(lay, f) for lay, f in pairs if not 0 <= f < transcoders[lay].n_features]
    if bad:
        lay = bad[0][0]
        raise ValueError(f"features {[f for _, f in bad]} do not exist; layer {lay}'s transcoder has {transcoders[lay].n_features}")
    layers = sorted({lay for lay, _ in pairs})
    cols = {lay: [j for j, (l2, _) in enumerate(pairs) if l2 == lay] for lay in layers}
    best: list[list[tuple[float, int, int]]] = [[] for _ in pairs]  # (activation, sequence, position)
    active = torch.zeros(len(pairs))
    peak = torch.zeros(len(pairs))
    n_tokens = 0
    all_tokens = []
    for s in range(start, start + sequences, batch):
        toks = corpus.batch(s, min(batch, start + sequences - s))
        all_tokens.append(toks)
        io = tf.mlp_io(toks.to(tf.device), layers)
        n_tokens += toks.shape[0] * toks.shape[1]
        for lay in layers:
            feats = torch.tensor([pairs[j][1] for j in cols[lay]], device=io[lay][0].device)
            acts = transcoders[lay].encode(io[lay][0].float())[..., feats].cpu()  # [b, S, F]
            for c, j in enumerate(cols[lay]):
                a = acts[..., c]
                active[j] += float((a > 0).sum())
                peak[j] = max(float(peak[j]), float(a.max()))
                flat = a.reshape(-1)
                vals, idx = flat.topk(min(top, len(flat)))
                for v, i in zip(vals.tolist(), idx.tolist(), strict=True):
                    if v > 0:
                        best[j].append((v, s + i // a.shape[1], i % a.shape[1]))
    tokens = torch.cat(all_tokens)
    w_u = tf.w["W_U"].float()
    w_e = tf.w["W_E"].float()
    out = []
    for j, (lay, f) in enumerate(pairs):
        tc = transcoders[lay]
        logit_dir = (tc.W_dec[f].float().to(w_u.device) @ w_u).cpu()
        up, down = logit_dir.topk(top), (-logit_dir).topk(top)
        pre = (tf.mlp_input(lay, w_e.to(tf.dtype)).float() @ tc.W_enc[:, f].float().to(w_e.device) + tc.b_enc[f].float()).cpu()
        exc = pre.topk(top)
        contexts = []
        for v, seq, pos in sorted(best[j], reverse=True)[:top]:
            row = tokens[seq - start].tolist()
            lo, hi = max(0, pos - window), min(len(row), pos + 3)
            contexts.append({"sequence": seq, "position": pos, "activation": round(v, 4),
                             "before": _text(tokenizer, row[lo:pos]), "token": _text(tokenizer, [row[pos]])[0],
                             "after": _text(tokenizer, row[pos + 1 : hi])})
        out.append(FeatureInfo(
            lay, f, float(active[j] / max(n_tokens, 1)), float(peak[j]), contexts,
            list(zip(_text(tokenizer, up.indices.tolist()), [round(v, 3) for v in up.values.tolist()], strict=True)),
            list(zip(_text(tokenizer, down.indices.tolist()), [round(-v, 3) for v in down.values.tolist()], strict=True)),
            list(zip(_text(tokenizer, exc.indices.tolist()), [round(v, 3) for v in exc.values.tolist()], strict=True)),
        ))
    return out


def feature_pages(report: list[FeatureInfo], path: str | Path, *, title: str = "transcoder features") -> Path:
    """One self-contained HTML page (no network) showing every feature of ``report``; the data is embedded as JSON too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{e(title)}</title>",
             "<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:70em}"
             ".f{border-top:1px solid #ccc;padding:1em 0}.tok{background:#fde68a;font-weight:bold}"
             ".ctx{font-family:monospace;white-space:pre-wrap;margin:2px 0}.cols{display:flex;gap:3em}"
             "td{padding:0 .6em}</style>", f"<h1>{e(title)}</h1>"]
    for fi in report:
        parts.append(f"<div class='f' id='{e(fi.name)}'><h2>{e(fi.name)}</h2>"
                     f"<p>active on {fi.density:.3%} of tokens; largest activation {fi.max_activation:.3f}</p>"
                     "<h3>top-activating contexts</h3>")
        for c in fi.contexts:
            parts.append(f"<div class='ctx'>{c['activation']:.3f}  {e(''.join(c['before']))}"
                         f"<span class='tok'>{e(c['token'])}</span>{e(''.join(c['after']))}</div>")
        if not fi.contexts:
            parts.append("<p>(never active on the sequences scanned)</p>")
        parts.append("<div class='cols'>")
        for label, rows in (("promotes", fi.promotes), ("suppresses", fi.suppresses), ("excited by", fi.excited_by)):
            cells = "".join(f"<tr><td>{e(repr(t))}</td><td>{v:+.3f}</td></tr>" for t, v in rows)
            parts.append(f"<div><h3>{label}</h3><table>{cells}</table></div>")
        parts.append("</div></div>")
    data = json.dumps([asdict(fi) for fi in report]).replace("</", "<\\/")
    parts.append(f"<script type='application/json' id='features'>{data}</script>")
    path.write_text("".join(parts))
    return path


@torch.no_grad()
def active_features(model: Any, transcoders: TranscoderSet, tokens: Tensor | Iterable[Tensor] | object,
                    *, min_activation: float = 0.0, top: int | None = None) -> dict[int, list[int]]:
    """The features of each transcoder that fire on some token of ``tokens`` (a [batch, pos] tensor,
    several, or an `acdc.Task`: its clean and corrupt prompts): activation > ``min_activation``.

    These are the features a task's clean and corrupt runs use, so a graph of them and their error
    nodes is exact on both runs; ``top`` keeps the ``top`` per layer with the largest maximum activation.
    """
    tf = model if isinstance(model, Transformer) else Transformer.from_bridge(model)
    transcoders.check_model(tf)
    if hasattr(tokens, "clean") and hasattr(tokens, "corrupt"):  # a Task
        batches = [tokens.clean, tokens.corrupt]  # type: ignore[union-attr]
    elif isinstance(tokens, Tensor):
        batches = [tokens]
    else:
        batches = list(tokens)  # type: ignore[call-overload]
    best: dict[int, Tensor] = {}
    for batch in batches:
        b = torch.as_tensor(batch).to(tf.device)
        for layer, (xn, _) in tf.mlp_io(b, transcoders.layers).items():
            acts = transcoders[layer].encode(xn.to(transcoders[layer].W_enc.dtype))
            m = acts.reshape(-1, acts.shape[-1]).amax(0)
            best[layer] = m if layer not in best else torch.maximum(best[layer], m)
    out: dict[int, list[int]] = {}
    for layer, m in sorted(best.items()):
        idx = (m > min_activation).nonzero().squeeze(1)
        if top is not None and len(idx) > top:
            idx = idx[m[idx].topk(top).indices].sort().values
        out[layer] = idx.tolist()
    return out
