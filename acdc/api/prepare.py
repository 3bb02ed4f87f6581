"""What a run is given, made ready: the patcher, metric and batch of `discover`'s inputs (`prepare`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ..graph import Graph
from ..inputs import Answers, Prompts, as_tokens, check_ablation, parse_answers
from ..loading import ModelLike, load_model
from ..metrics import Batch, Metric, MetricLike, resolve_metric, scored_rows
from ..patching import Patcher
from ..positions import Positions
from ..tasks import Task
from ..transcoders import FeatureDictionary
from .options import DiscoverOptions, Inputs

__all__ = ["DiscoverOptions", "Inputs", "make_batch", "prepare", "resolve_positions"]


def prepare(
    model: ModelLike,
    clean: Prompts | Task,
    corrupt: Prompts | None = None,
    *,
    metric: MetricLike | None = None,
    ablation: str = "resample",
    answers: Answers | None = None,
    answer_pos: int | Sequence[int] | Tensor | None = None,
    split_qkv: bool = True,
    graph: Graph | None = None,
    mean_weights: Tensor | None = None,
    positions: str | Positions | None = None,
    transcoders: FeatureDictionary | None = None,
) -> tuple[Patcher, Metric, Batch]:
    """Build the patcher, metric and batch an algorithm runs on, from the inputs of `discover`.

    ``clean`` may be an `acdc.tasks.Task`; its answers, positions and metric fill whatever
    is not passed explicitly. ``transcoders``: with a feature ``graph``, the set that computes its
    features (the graph holds their layout only).
    """
    task: Task | None = None
    if isinstance(clean, Task):
        if corrupt is not None:
            raise ValueError("pass either a Task or clean and corrupt prompts, not both")
        task = clean
        clean, corrupt = task.clean, task.corrupt
        answers = answers if answers is not None else task.answers
        answer_pos = answer_pos if answer_pos is not None else task.answer_pos
        metric = metric if metric is not None else task.metric
    elif corrupt is None:
        raise ValueError("corrupt prompts are missing: call discover(model, clean, corrupt, ...) or pass a Task")
    # Every check the inputs alone allow comes before the model runs (the clean and corrupt caches).
    m = resolve_metric(metric if metric is not None else "kl")
    check_ablation(ablation)
    if m.needs_answers and answers is None:
        raise ValueError(f"metric {m.name!r} needs answers=(correct, incorrect) token ids")
    bridge = load_model(model)
    clean_t, corrupt_t = as_tokens(clean, bridge, "clean"), as_tokens(corrupt, bridge, "corrupt")
    parsed = None if answers is None else parse_answers(answers, int(clean_t.shape[0]), bridge)
    if graph is not None:
        if graph.features is None:  # a feature graph's fit is checked by its transcoders (TranscoderSet.check_model)
            Graph.from_model(bridge, mlp_units=graph.mlp_units).check_fits(graph, "this graph", qkv=False, positions=False)
    pos = resolve_positions(positions, task, clean_t, bridge, graph)
    if graph is None:
        g = Graph.from_model(bridge, split_qkv=split_qkv, positions=None if pos is None else pos.names)
    else:  # a graph without positions (a feature graph, say) asked for at positions gets them
        g = graph.with_positions(pos.names) if pos is not None and graph.positions is None else graph
    patcher = Patcher(bridge, clean_t, corrupt_t, graph=g, ablation=ablation, answer_pos=answer_pos,  # type: ignore[arg-type]
                      mean_weights=mean_weights, positions=pos, transcoders=transcoders)
    return patcher, m, make_batch(patcher, parsed, bridge)


def make_batch(patcher: Patcher, answers: Any = None, model: Any = None) -> Batch:
    """The `Batch` metrics read, for a patcher's prompts and optional answers.

    With P scored positions per prompt, answers [batch, P] (or [batch, P, k]) are flattened to
    one row per scored position, matching the logits' rows.
    """
    n, n_scored = patcher.answer_pos.shape
    correct: Tensor | None = None
    incorrect: Tensor | None = None
    if answers is not None:
        c, i = parse_answers(answers, n, model)
        correct, incorrect = scored_rows(c, n_scored, "correct"), scored_rows(i, n_scored, "incorrect")
    dev = patcher.tf.device
    return Batch(
        clean=patcher.clean_tokens,
        corrupt=patcher.corrupt_tokens,
        answer_pos=patcher.answer_pos,
        correct=None if correct is None else correct.to(dev),
        incorrect=None if incorrect is None else incorrect.to(dev),
        clean_logits=patcher.clean.logits,
    )


def resolve_positions(positions: str | Positions | None, task: Task | None, clean: Any, model: Any,
               graph: Graph | None) -> Positions | None:
    """The positions asked for: "named" (the task's), "tokens", an `acdc.Positions`, or None.

    With a positional ``graph`` and no positions given, the task's named positions.
    """
    if positions is None and graph is not None and graph.positions is not None:
        positions = "named" if task is not None and task.positions is not None else "tokens"
    if positions is None or isinstance(positions, Positions):
        return positions
    if positions == "named":
        if task is None or task.positions is None:
            what = "these prompts" if task is None else f"task {task.name!r}"
            raise ValueError(f"{what} name no positions; pass positions='tokens' (prompts aligned by index), an "
                             "acdc.Positions, or a task with positions (acdc.tasks.ioi, Task.from_pairs(..., positions=))")
        return task.positions
    if positions == "tokens":
        b, s = as_tokens(clean, model, "clean").shape
        return Positions.tokens(b, s)
    raise ValueError(f"positions must be 'named', 'tokens', an acdc.Positions or None, got {positions!r}")


