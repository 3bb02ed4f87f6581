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

import hashlib
import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from typing_extensions import Unpack

from ..executors import Sweep, SweepOptions, resolve_executor, run_sweep
from ..inputs import token_texts
from ..model import Transformer
from .clt import CrossLayerTranscoder, FeatureDictionary, LayerView
from .corpus import TokenStream
from .transcoder import Transcoder

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


@torch.no_grad()
def feature_report(model: Any, transcoders: FeatureDictionary, layer: int | None, features: Sequence[int] | Sequence[tuple[int, int]],
                   corpus: TokenStream, *, sequences: int = 64, start: int = 0, top: int = 10, window: int = 8, batch: int = 8,
                   tokenizer: Any = None, chunk: int = 256, progress: bool = False,
                   **sweep: Unpack[Sweep]) -> list[FeatureInfo]:
    """`FeatureInfo` for each of ``features`` of ``layer``'s transcoder, from ``sequences`` corpus sequences. A
    cross-layer transcoder's features promote what they write in all (their decoders into every later layer, summed).

    With ``layer=None``, ``features`` are (layer, feature) pairs, from any layers, scanned in one
    pass over the corpus (one model forward per batch, up to the deepest layer asked for).

    The corpus pass is a sweep (`acdc.executors.run_sweep`) over pieces of ``chunk`` sequences (rounded
    up to whole batches): ``executor="ray"`` (or a Ray address) scans the pieces on Ray workers that
    each load the model and transcoders once; ``results=DIR`` keeps each scanned piece, so a pass
    interrupted and started again scans only the rest. Whatever runs it, the report is the same: the
    pieces' counts add up and their top contexts merge into the top of the whole pass. ``progress``: a
    bar over the pieces.
    """
    tf = Transformer.of(model)
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
    bad = [(lay, f) for lay, f in pairs if not 0 <= f < _layer(transcoders, lay).n_features]
    if bad:
        lay = bad[0][0]
        raise ValueError(f"features {[f for _, f in bad]} do not exist; layer {lay}'s transcoder has {_layer(transcoders, lay).n_features}")
    where = SweepOptions(**sweep)  # executor, results, workers, threads (checked before the scan)
    step = max(1, -(-chunk // batch)) * batch  # whole batches per piece: the same forwards as one serial pass
    items = [(f"sequences={s}-{min(s + step, start + sequences) - 1}", {"start": s, "n": min(step, start + sequences - s),
              "batch": batch, "top": top, "window": window}) for s in range(start, start + sequences, step)]
    scan = _PagesScan(tf, transcoders, corpus, tuple(pairs))
    serial = resolve_executor(where.executor)[0] == "serial"
    setup = partial(_given_scan, scan) if serial else partial(_PagesScan, tf, transcoders, corpus, tuple(pairs))
    h = hashlib.sha256(json.dumps([tf.fingerprint(), pairs, corpus.describe(), corpus.batch(start, 1).tolist()]).encode())
    for lay in sorted({lay for lay, _ in pairs}):
        h.update(_layer(transcoders, lay).W_enc[:, :8].detach().float().cpu().numpy().tobytes())
    pieces = run_sweep(setup, _scan_piece, items, **where.run_sweep_options(),
                       fingerprint=h.hexdigest()[:16], progress=progress, desc="corpus pass")
    active = [sum(p["active"][j] for p in pieces) for j in range(len(pairs))]
    peak = [max((p["peak"][j] for p in pieces), default=0.0) for j in range(len(pairs))]
    n_tokens = sum(p["n_tokens"] for p in pieces)
    w_u = tf.unembedding.float()
    w_e = tf.embedding.float()
    out = []
    for j, (lay, f) in enumerate(pairs):
        tc = _layer(transcoders, lay)
        logit_dir = (tc.W_dec[f].float().to(w_u.device) @ w_u).cpu()
        up, down = logit_dir.topk(top), (-logit_dir).topk(top)
        pre = (tf.mlp_input(lay, w_e.to(tf.dtype)).float() @ tc.W_enc[:, f].float().to(w_e.device) + tc.b_enc[f].float()).cpu()
        exc = pre.topk(top)
        best = sorted((tuple(c) for p in pieces for c in p["best"][j]), key=lambda c: (c[0], c[1], c[2]), reverse=True)[:top]
        contexts = [{"sequence": seq, "position": pos, "activation": round(v, 4), "before": token_texts(tokenizer, before),
                     "token": token_texts(tokenizer, [tok])[0], "after": token_texts(tokenizer, after)}
                    for v, seq, pos, before, tok, after in best]
        out.append(FeatureInfo(
            lay, f, float(active[j] / max(n_tokens, 1)), float(peak[j]), contexts,
            list(zip(token_texts(tokenizer, up.indices.tolist()), [round(v, 3) for v in up.values.tolist()], strict=True)),
            list(zip(token_texts(tokenizer, down.indices.tolist()), [round(-v, 3) for v in down.values.tolist()], strict=True)),
            list(zip(token_texts(tokenizer, exc.indices.tolist()), [round(v, 3) for v in exc.values.tolist()], strict=True)),
        ))
    return out


def _layer(d: FeatureDictionary, layer: int) -> Transcoder | LayerView:
    """Layer ``layer``'s features as one transcoder (a CLT's through `CrossLayerTranscoder.layer_view`)."""
    return d.layer_view(layer) if isinstance(d, CrossLayerTranscoder) else d[layer]


@dataclass(frozen=True)
class _PagesScan:
    """A worker's state for the corpus pass: the model, the transcoders, the corpus, the features asked for."""

    tf: Transformer
    transcoders: FeatureDictionary
    corpus: TokenStream
    pairs: tuple[tuple[int, int], ...]


def _given_scan(scan: _PagesScan) -> _PagesScan:
    return scan


@torch.no_grad()
def _scan_piece(scan: _PagesScan, item: dict[str, int]) -> dict[str, Any]:
    """One piece of the corpus pass: per feature, tokens active, peak, and its ``top`` contexts in the piece
    as (activation, sequence, position, ids before, id, ids after), the window cut here where the tokens are."""
    tf, pairs, top, window = scan.tf, scan.pairs, item["top"], item["window"]
    layers = sorted({lay for lay, _ in pairs})
    cols = {lay: [j for j, (l2, _) in enumerate(pairs) if l2 == lay] for lay in layers}
    best: list[list[tuple[float, int, int]]] = [[] for _ in pairs]
    active = [0] * len(pairs)
    peak = [0.0] * len(pairs)
    n_tokens = 0
    rows: dict[int, list[int]] = {}
    end = item["start"] + item["n"]
    for s in range(item["start"], end, item["batch"]):
        toks = scan.corpus.batch(s, min(item["batch"], end - s))
        io = tf.mlp_io(toks.to(tf.device), layers)
        n_tokens += toks.shape[0] * toks.shape[1]
        for lay in layers:
            feats = torch.tensor([pairs[j][1] for j in cols[lay]], device=io[lay][0].device)
            acts = _layer(scan.transcoders, lay).encode(io[lay][0].float())[..., feats].cpu()  # [b, S, F]
            for c, j in enumerate(cols[lay]):
                a = acts[..., c]
                active[j] += int((a > 0).sum())
                peak[j] = max(peak[j], float(a.max()))
                flat = a.reshape(-1)
                vals, idx = flat.topk(min(top, len(flat)))
                for v, i in zip(vals.tolist(), idx.tolist(), strict=True):
                    if v > 0:
                        seq, pos = s + i // a.shape[1], i % a.shape[1]
                        best[j].append((v, seq, pos))
                        rows.setdefault(seq, toks[seq - s].tolist())
    kept = []
    for cands in best:
        mine = []
        for v, seq, pos in sorted(cands, reverse=True)[:top]:
            row = rows[seq]
            lo, hi = max(0, pos - window), min(len(row), pos + 3)
            mine.append([v, seq, pos, row[lo:pos], row[pos], row[pos + 1 : hi]])
        kept.append(mine)
    return {"active": active, "peak": peak, "n_tokens": n_tokens, "best": kept}


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
def active_features(model: Any, transcoders: FeatureDictionary, tokens: Tensor | Iterable[Tensor] | object,
                    *, min_activation: float = 0.0, top: int | None = None) -> dict[int, list[int]]:
    """The features of each transcoder (or each layer of a cross-layer transcoder) that fire on some token of
    ``tokens`` (a [batch, pos] tensor, several, or an `acdc.Task`: its clean and corrupt prompts): activation >
    ``min_activation``.

    These are the features a task's clean and corrupt runs use, so a graph of them and their error
    nodes is exact on both runs; ``top`` keeps the ``top`` per layer with the largest maximum activation.
    """
    tf = Transformer.of(model)
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
        if isinstance(transcoders, CrossLayerTranscoder):
            mids = tf.run(b).resid_mid
            per = {layer: transcoders.encode(layer, (mids[layer] if transcoders.cfg.reads == "stream" else
                                                     tf.mlp_input(layer, mids[layer])).to(transcoders.W_enc.dtype))
                   for layer in transcoders.layers}
        else:
            per = {layer: transcoders[layer].encode(xn.to(transcoders[layer].W_enc.dtype))
                   for layer, (xn, _) in tf.mlp_io(b, transcoders.layers).items()}
        for layer, acts in per.items():
            m = acts.reshape(-1, acts.shape[-1]).amax(0)
            best[layer] = m if layer not in best else torch.maximum(best[layer], m)
    out: dict[int, list[int]] = {}
    for layer, m in sorted(best.items()):
        idx = (m > min_activation).nonzero().squeeze(1)
        if top is not None and len(idx) > top:
            idx = idx[m[idx].topk(top).indices].sort().values
        out[layer] = idx.tolist()
    return out
