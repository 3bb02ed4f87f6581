"""Attribution graphs of one prompt (`attribution_graph`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..algorithms.attribution_graph import Target, build_attribution_graph
from ..attribution_graphs import AttributionGraph
from ..inputs import as_tokens
from ..model import Transformer
from ..transcoders import FeatureDictionary


def attribution_graph(
    model: Any,
    prompt: str | Tensor | Sequence[int],
    *,
    transcoders: FeatureDictionary,
    max_logits: int = 10,
    logit_prob: float = 0.95,
    batch_size: int = 64,
    skip_first: bool = True,
    max_feature_nodes: int | None = None,
    update_interval: int = 4,
    max_memory_gb: float | None = None,
    targets: Sequence[int | str | Target] | None = None,
    progress: bool = True,
) -> AttributionGraph:
    """The attribution graph of one prompt (circuit-tracer's method, `acdc.attribution_graphs`):
    every direct effect between its active transcoder features, error nodes, token embeddings and
    top logits in the local replacement model (attention patterns and norm scales frozen).

    prompt: text (tokenized as the model does, BOS included) or token ids [S];
    transcoders: an `acdc.TranscoderSet` (any subset of layers: an MLP without one is all error) or an
        `acdc.CrossLayerTranscoder` (each feature writing into its layer's MLP output and every later one's);
    max_logits, logit_prob: the logit nodes (the most probable tokens until ``logit_prob``, at most
        ``max_logits``); batch_size: targets per backward pass; skip_first: no features at
        position 0 (circuit-tracer's convention);
    max_feature_nodes: keep at most this many features, the most influential first, as circuit-tracer does (None: all;
        long prompts need it: the rows cost 4 x kept x nodes bytes); update_interval: batches between re-rankings;
    max_memory_gb: the estimate printed before the run is checked against this (None: the memory available), and a
        graph that would not fit is refused in one line naming the max_feature_nodes that fits;
    targets: what to explain instead of the top logits: tokens (ids, or text that is one token) or `acdc.Target`
        directions, e.g. ``acdc.logit_diff_target(model, " Mary", " John")``, or any vector after any layer.
    Returns an `AttributionGraph`: ``.prune()``, ``.replacement_score``, ``.completeness_score``,
    ``.to_json(path)`` (circuit-tracer's graph file), ``.save`` / ``AttributionGraph.load``.
    """
    tf = Transformer.of(model)
    if isinstance(prompt, str) and not prompt.strip():
        raise ValueError("the prompt is empty: give the text whose next token the graph explains")
    tokens = as_tokens(prompt, model, "prompt") if isinstance(prompt, str) else torch.as_tensor(prompt)
    if tokens.dim() == 2 and tokens.shape[0] != 1:
        raise ValueError(f"an attribution graph explains one prompt; got {tokens.shape[0]}")
    tok = getattr(model, "tokenizer", None)
    decode = (lambda t: tok.decode([t])) if tok is not None and hasattr(tok, "decode") else None
    wanted = None if targets is None else [_one_token(model, t) if isinstance(t, str) else t for t in targets]
    return build_attribution_graph(tf, tokens.reshape(-1), transcoders, targets=wanted, max_logits=max_logits, logit_prob=logit_prob,
                                   batch_size=batch_size, skip_first=skip_first, max_feature_nodes=max_feature_nodes,
                                   update_interval=update_interval, max_memory_gb=max_memory_gb, decode=decode, progress=progress)


def _one_token(model: Any, text: str) -> int:
    """The id of ``text`` as one token of the model's tokenizer (refused in one line otherwise)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError(f"target {text!r} is text, and this model has no tokenizer: give token ids")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"target {text!r} is {len(ids)} tokens ({ids}); a target token must be one (e.g. ' Mary' with its space)")
    return int(ids[0])


def logit_diff_target(model: Any, good: int | str, bad: int | str, *, layer: int | None = None, position: int = -1) -> Target:
    """The logit difference ``logit(good) - logit(bad)`` as an attribution-graph target: the direction
    ``W_U[:, good] - W_U[:, bad]`` read at ``position`` of the final norm's output (``layer``: of the stream after
    that layer instead, the logit lens's direction). Tokens as ids or one-token text."""
    tf = Transformer.of(model)
    a, b = (_one_token(model, t) if isinstance(t, str) else int(t) for t in (good, bad))
    W_U = tf.unembedding
    name = (lambda t: model.tokenizer.decode([t])) if getattr(model, "tokenizer", None) is not None else str
    return Target(f"logit({name(a)})-logit({name(b)})", (W_U[:, a] - W_U[:, b]).detach(), layer, position)
