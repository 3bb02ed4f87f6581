"""What sweeps share: a setup that hands over built state, inputs a Ray worker can rebuild, circuits as compact records."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..circuit import Circuit
from ..graph import Graph
from ..inputs import as_tokens, parse_answers
from ..loading import ModelLike, load_model
from ..model import Transformer
from ..tasks import Task
from .prepare import Inputs


def given(state: Any) -> Any:
    """A sweep's setup that hands over state built already (the serial executor)."""
    return state


def portable(model: ModelLike, clean: Any, corrupt: Any, inputs: Inputs | dict[str, Any]) -> tuple[Any, Any, Any, dict[str, Any]]:
    """The inputs of `prepare` in a form a Ray worker can rebuild: a model name or path stays (each worker
    loads it), any other model becomes the engine's own `Transformer` (a bridge does not pickle), with
    text prompts and answers turned into token ids here, where the tokenizer is."""
    rest = dict(inputs)
    if isinstance(model, (str, Path)):
        return model, clean, corrupt, rest
    bridge: Any = load_model(model)  # a bridge or the engine's own model
    tf = Transformer.of(bridge)
    if not isinstance(clean, Task):
        clean, corrupt = as_tokens(clean, bridge, "clean"), as_tokens(corrupt, bridge, "corrupt")
        if rest.get("answers") is not None:
            rest["answers"] = parse_answers(rest["answers"], int(clean.shape[0]), bridge)
    return tf, clean, corrupt, rest


def circuit_record(c: Circuit, kept_only: bool = False) -> dict[str, Any]:
    """A sweep's compact JSON of a circuit (kept and tested edge indices, scores, trace, settings): the
    graph stays with the sweep, so a 123,211-edge circuit costs milliseconds, not the seconds of `Circuit.to_dict`.
    ``kept_only``: the scores of the kept edges only (a method that scores every edge: the others read back NaN)."""
    tested = c.in_graph.nonzero().squeeze(1) if kept_only else (~c.scores.isnan()).nonzero().squeeze(1)
    return {"kept": c.in_graph.nonzero().squeeze(1).tolist(), "tested": tested.tolist(), "scores": c.scores[tested].tolist(),
            "metric_trace": [float(x) for x in c.metric_trace], "settings": c.settings}


def circuit_from_record(g: Graph, d: dict[str, Any]) -> Circuit:
    """`circuit_record` back, on the sweep's own graph object (a feature graph keeps its transcoders)."""
    keep = torch.zeros(g.n_edges, dtype=torch.bool)
    keep[d["kept"]] = True
    scores = torch.full((g.n_edges,), math.nan, dtype=torch.float64)
    scores[d["tested"]] = torch.tensor(d["scores"], dtype=torch.float64)
    return Circuit(g, keep, scores, list(d["metric_trace"]), dict(d["settings"]))


