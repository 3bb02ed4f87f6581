"""ACDC (Conmy et al. 2023): prune edges one at a time, keep those whose removal hurts.

Visiting order: destinations in reverse forward order, and for each its sources in reverse
forward order (nearest first), i.e. the graph's canonical edge order reversed. With ``m`` the
metric oriented lower-is-better and ``C`` the current circuit, edge ``e`` is removed when
``m(C - e) - m(C) < threshold`` (``|...|`` with ``abs_value``), and ``C`` is updated at once. A
destination whose node has no kept outgoing edge left is skipped and its incoming edges dropped.

`run_acdc` follows the algorithm contract (`acdc.algorithms`): it returns `Scores` whose values
are the measured deltas (NaN where untested) and whose ``selected`` edges are the circuit.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..circuit import read_json, write_json
from ..graph import Graph
from ..inputs import check_threshold
from ..metrics import Batch, Metric
from ..patching import Patcher
from ..progress import LayerTimes, WorkBar, edge_test_cost
from ..scores import Scores
from .eap import METHODS, attribution_scores
from .eap import check_options as check_attribution

__all__ = ["ACDCOptions", "check_options", "prefilter_edges", "run_acdc", "run_fingerprint"]


@dataclass(frozen=True)
class ACDCOptions:
    """ACDC's options, declared once: `run_acdc`, `acdc.discover` and the CLI's flags read them here.

    Each field's metadata holds its help text (the CLI's ``--help``); ``__post_init__`` checks
    every value, so a bad option is refused before any model runs.
    """

    threshold: float = field(metadata={"help": "keep an edge when removing it moves the metric by at least this (>= 0)"})
    abs_value: bool = field(default=False, metadata={"help": "threshold the absolute change of the metric"})
    speculate: int | None = field(default=None, metadata={
        "help": "test up to K edges into one destination per batched pass (exact; default 8 on a GPU, 1 on a CPU)"})
    prefilter: float | None = field(default=None, metadata={
        "help": "APPROXIMATE: test only this fraction of edges, those with the largest attribution scores"})
    prefilter_method: str = field(default="eap-ig-inputs", metadata={
        "help": "attribution method of the prefilter (5 steps)", "choices": METHODS})
    checkpoint: str | Path | None = field(default=None, metadata={
        "help": "save progress to this JSON file; run the same call again to resume"})
    checkpoint_every: float = field(default=60.0, metadata={"help": "seconds between checkpoint saves"})
    faithful_within: float | None = field(default=None, metadata={
        "help": "keep the circuit's normalized faithfulness F within this of 1 at every step: a removal that would take "
                "|1 - F| past it is refused (F = (L_empty - L) / (L_empty - L_full), L the metric as a loss), so the "
                "circuit does not overshoot; from a start already outside it (a prefilter's circuit), a removal that would "
                "take F further from 1 is"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold(self.threshold))
        w = self.faithful_within
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0):
            raise ValueError(f"faithful_within must be a number >= 0 (|1 - F| allowed), got {w!r}")
        check_options(speculate=self.speculate, prefilter=self.prefilter, prefilter_method=self.prefilter_method)
        if not isinstance(self.checkpoint_every, (int, float)) or isinstance(self.checkpoint_every, bool) \
                or not self.checkpoint_every >= 0:
            raise ValueError(f"checkpoint_every must be a number of seconds >= 0, got {self.checkpoint_every!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names (the keywords `discover` and `run_acdc` take for them)."""
        return tuple(f.name for f in fields(cls))


LONG_RUN_SECONDS = 600.0  # past this estimate a run says how to shorten it, and checkpoints where it can


class LongRunWarning(UserWarning):
    """An ACDC run estimated to take long: what shortens it, and where it checkpoints."""


def _long_run_note(seconds: float, edges_left: int, prefilter: float | None, checkpoint: str | Path | None) -> str:
    h, rest = divmod(int(seconds), 3600)
    when = f"{h} h {rest // 60} min" if h else f"{rest // 60} min"
    shorter = ("fewer prompts, or a larger threshold" if prefilter is not None else
               "prefilter=0.01 (CLI --prefilter 0.01: APPROXIMATE, tests only the top 1% of edges by EAP-IG, minutes "
               "instead of hours), fewer prompts, or a larger threshold")
    where = (f"checkpointing to {checkpoint}: run the same call again to resume" if checkpoint is not None else
             "pass checkpoint=PATH (CLI --checkpoint) to be able to resume a killed run")
    return f"ACDC will take about {when} more ({edges_left:,} edges left to visit); to shorten it: {shorter}; {where}"


def run_acdc(
    patcher: Patcher,
    metric: Metric,
    batch: Batch,
    options: ACDCOptions | None = None,
    *,
    progress: bool = False,
    callback: Callable[[int, float, bool], bool | None] | None = None,
    prefilter_scores: Tensor | None = None,
    leave: bool = True,
    checkpoint_if_long: str | Path | None = None,
    long_run_seconds: float | None = None,
    **fields_: Any,
) -> Scores:
    """Run ACDC on ``patcher``'s graph and batch; ``.selection()`` of the result is the circuit.

    ``options`` (an `ACDCOptions`), or its fields as keywords (``threshold=...``, ...).
    ``progress`` shows a bar whose ETA weighs each edge by the layers its test reruns
    (`acdc.progress.edge_test_cost`); ``leave=False`` clears it at the end (inside a sweep).

    ``callback(edge_index, delta, removed)`` is called after each tested edge; returning True
    stops the run there (edges not yet visited stay in the circuit, ``settings["stopped_early"]``).

    ``speculate=K`` evaluates up to K edges into the same destination in one batched pass,
    candidate j removing the first j of them (ACDC removes most edges, so the guess "all
    removed" usually holds); at the first edge that is kept the rest of the batch is discarded.
    Decisions and scores are those of the one-at-a-time run (up to float rounding); it pays where
    a batch of K costs little more than one (a GPU), not on a CPU. Default: 8 on an accelerator,
    1 on a CPU.

    ``prefilter=f`` is the APPROXIMATE mode: only the top fraction f of edges by |attribution
    score| (``prefilter_method``, 5 steps) is tested; the rest are removed untested (score NaN)
    and the settings say ``approximate="prefilter"``. ``prefilter_scores`` [n_edges] reuses scores
    computed before (e.g. ``acdc.attribute(...).values``) instead of computing them again.

    ``checkpoint=PATH`` saves progress as JSON at most every ``checkpoint_every`` seconds and at
    the end. Called again with the same arguments (model, prompts, metric, threshold, ...), it
    resumes there and ends with the circuit an uninterrupted run gives: the same decisions, and
    the same scores up to float rounding (the resumed reference state is recomputed in one pass).
    Different arguments are refused with a one-line error; delete the file to start over.

    A run whose estimate (from the edge tests measured so far, weighed by layer) passes ``long_run_seconds``
    (default `LONG_RUN_SECONDS`, 10 minutes) says so once, with what shortens it (a `LongRunWarning`), and, without a checkpoint, starts
    checkpointing to ``checkpoint_if_long`` if given (the CLI's ``-o`` folder): a file there from an earlier
    run of the same call is resumed.
    """
    if options is None:
        unknown = sorted(set(fields_) - set(ACDCOptions.names()))
        if unknown:
            raise TypeError(f"run_acdc got unknown options {', '.join(unknown)}; ACDC's are {', '.join(ACDCOptions.names())}")
        options = ACDCOptions(**fields_)
    elif fields_:
        raise TypeError("pass ACDC's options either as an ACDCOptions or as keywords, not both")
    threshold, abs_value, speculate, within = options.threshold, options.abs_value, options.speculate, options.faithful_within
    prefilter, prefilter_method = options.prefilter, options.prefilter_method
    checkpoint, checkpoint_every = options.checkpoint, options.checkpoint_every
    if checkpoint is None and checkpoint_if_long is not None and Path(checkpoint_if_long).exists():
        checkpoint = checkpoint_if_long  # an earlier long run of this call left it: resume there
    warned_long = checkpoint is not None and checkpoint == checkpoint_if_long
    g = patcher.graph
    positional = g.positions is not None
    if speculate is None:
        speculate = 8 if patcher.tf.device.type != "cpu" else 1
    info: dict[str, Any] = {}
    fingerprint = run_fingerprint(patcher, metric, batch, threshold, abs_value, prefilter, prefilter_method,
                                  *([] if within is None else [within]))
    saved = _load_checkpoint(checkpoint, fingerprint) if checkpoint is not None else None
    if saved is not None:
        skipped = torch.zeros(g.n_edges, dtype=torch.bool)
        skipped[saved["skipped"]] = True
        info = dict(saved["info"])
    elif prefilter is not None:
        skipped, info = prefilter_edges(patcher, metric, batch, prefilter, prefilter_method, prefilter_scores,
                                        progress=progress)
    else:
        skipped = torch.zeros(g.n_edges, dtype=torch.bool)
    vocab, batch = metric.narrow(batch)  # a metric of a few tokens' logits: unembed those columns only
    state = patcher.reference_state(vocab)
    loss_empty = span = 0.0
    if within is not None:  # the ends F is normalized by: the full model (F = 1) and every edge ablated (F = 0)
        loss_full = metric.loss(state.logits, batch)
        loss_empty = metric.loss(state.propagate(torch.zeros_like(state.keep)).logits[0], batch)
        span = loss_empty - loss_full
        if span == 0:
            raise ValueError("faithful_within needs the full model and the empty circuit to differ on the metric; they do not")
        info["faithful_within"] = float(within)
    removed_up_front = skipped.clone()
    if saved is not None:
        removed_up_front[saved["removed"]] = True
    if bool(removed_up_front.any()):
        state.commit(state.propagate(state.keep & ~g.dense(removed_up_front).to(state.keep.device)))
    current = metric.loss(state.logits, batch)  # lower is better, what the rule thresholds

    def status() -> dict[str, object]:
        return {"tested": n_tested, "kept": int(state.keep.sum()), metric.name: f"{_shown(metric, current):.4g}"}

    scores = torch.full((g.n_edges,), math.nan, dtype=torch.float64)
    trace: list[float] = []
    n_tested = 0
    e = g.n_edges - 1
    if saved is not None:
        current = float(saved["current"])
        scores[saved["tested"]] = torch.tensor(saved["scores"], dtype=torch.float64)
        trace = [float(x) for x in saved["trace"]]
        n_tested = int(saved["n_tested"])
        e = int(saved["next_edge"])

    def save(done: bool) -> None:
        if checkpoint is None:
            return
        kept = g.sparse(state.keep).cpu()
        tested = (~scores.isnan()).nonzero().squeeze(1)
        write_json({
            "format": "acdc-checkpoint", "version": 1, "fingerprint": fingerprint, "done": done,
            "next_edge": e, "current": current, "n_tested": n_tested, "info": info,
            "removed": (~kept).nonzero().squeeze(1).tolist(), "skipped": skipped.nonzero().squeeze(1).tolist(),
            "tested": tested.tolist(), "scores": scores[tested].tolist(), "trace": trace,
        }, checkpoint)
    edge_dst = g.edge_dst.tolist()
    edge_src = g.edge_src.tolist()
    edge_pos = g.edge_pos.tolist()
    node_src = g.dst_node_src.tolist()
    skipped_list = skipped.tolist()
    t0 = time.perf_counter()
    cost = _edge_costs(g)
    tested_up_front = ~skipped
    bar = WorkBar(g.n_edges, float(cost[tested_up_front].sum()), desc="ACDC (positional)" if positional else "ACDC",
                  disable=not progress,
                  initial_items=g.n_edges - 1 - e, initial_work=float(cost[e + 1:][tested_up_front[e + 1:]].sum()), leave=leave)
    cost_list = cost.tolist()
    layer_of = g.dst_layer[g.edge_dst].tolist()  # each edge's destination layer
    times = LayerTimes(Counter(layer_of[i] for i in range(e + 1) if not skipped_list[i]), g.n_layers)  # ETA from measured tests
    dst_dead = False
    last_dst = -1
    stopped = False
    last_save = time.perf_counter()
    while e >= 0 and not stopped:
        d = edge_dst[e]
        if d != last_dst:
            last_dst = d
            dst_dead = node_src[d] >= 0 and not bool(state.keep[:, node_src[d]].any())
            if dst_dead:
                state.drop_destination(d)
        if dst_dead or skipped_list[e]:
            bar.skip(1, 0.0 if skipped_list[e] else cost_list[e])
            if not skipped_list[e]:
                times.skip(layer_of[e])
            e -= 1
            continue
        block = [e]  # the next edges into the same destination that are still to be tested
        while len(block) < speculate and block[-1] > 0 and edge_dst[block[-1] - 1] == d and not skipped_list[block[-1] - 1]:
            block.append(block[-1] - 1)
        candidates = state.keep.expand(len(block), *state.keep.shape).clone()
        for j, edge in enumerate(block):  # candidate j removes block[0..j]
            if positional:
                candidates[j:, d, edge_src[edge], edge_pos[edge]] = False
            else:
                candidates[j:, d, edge_src[edge]] = False
        t_test = time.perf_counter()
        proposal = state.propagate(candidates)
        t_test = time.perf_counter() - t_test
        accepted = 0
        for j, edge in enumerate(block):
            new = metric.loss(proposal.logits[j], batch)
            delta = new - current
            scores[edge] = delta
            n_tested += 1
            removed = (abs(delta) if abs_value else delta) < threshold
            if removed and within is not None and \
                    abs(1 - (loss_empty - new) / span) > max(within, abs(1 - (loss_empty - current) / span)):
                removed = False  # |1 - F| would pass the bound (or, from a start outside it, grow): the edge stays
            if removed:
                current = new
                accepted = j + 1
            trace.append(_shown(metric, current))
            bar.done(1, cost_list[edge])
            if callback is not None and callback(edge, delta, removed):
                stopped = True
            if n_tested % 64 == 0:
                left = times.seconds_left()
                bar.set_eta(left)
                bar.status(status())
                if not warned_long and left is not None and left > (LONG_RUN_SECONDS if long_run_seconds is None else long_run_seconds):
                    warned_long = True
                    if checkpoint is None and checkpoint_if_long is not None:
                        checkpoint = checkpoint_if_long
                    warnings.warn(LongRunWarning(_long_run_note(left, e + 1, prefilter, checkpoint)), stacklevel=2)
            if stopped or not removed:
                break
        times.record(layer_of[e], t_test, min(len(block), accepted + 1))  # the block's edges tested now
        if accepted:
            state.commit(proposal, accepted - 1)
        e = block[0] - (accepted + (0 if accepted == len(block) else 1))
        if checkpoint is not None and time.perf_counter() - last_save >= checkpoint_every:
            save(done=False)
            last_save = time.perf_counter()
    save(done=not stopped)
    bar.status(status())
    bar.close()
    info = _settings(info, patcher, metric, threshold=threshold, abs_value=abs_value, n_tested=n_tested, t0=t0,
                     current=current, stopped=stopped)
    if positional:
        info["positions"] = list(g.positions or ())
    return Scores(g, scores, info, selected=g.sparse(state.keep).cpu(), trace=trace)


def _edge_costs(g: Graph) -> Tensor:
    """[n_edges] relative cost of testing each edge (`edge_test_cost` of its destination's layer)."""
    per_dst = torch.tensor([edge_test_cost(layer, g.n_layers) for layer in g.dst_layer.tolist()], dtype=torch.float64)
    return per_dst[g.edge_dst]


def _shown(metric: Metric, loss: float) -> float:
    """The metric as the user knows it (a logit difference stays positive), for trace and display."""
    return -loss if metric.higher_is_better else loss


def _settings(info: dict[str, Any], patcher: Patcher, metric: Metric, *, threshold: float, abs_value: bool,
              n_tested: int, t0: float, current: float, stopped: bool) -> dict[str, Any]:
    """The run's settings: ``info`` (prefilter, resume) plus what every ACDC run records."""
    info.update(
        method="acdc", threshold=float(threshold), abs_value=bool(abs_value), ablation=patcher.ablation,
        metric=metric.name, n_tested=n_tested, seconds=round(time.perf_counter() - t0, 3),
        final_metric=_shown(metric, current),
    )
    if stopped:
        info["stopped_early"] = True
    return info


def check_options(*, speculate: int | None = None, prefilter: float | None = None,
                  prefilter_method: str = "eap-ig-inputs") -> None:
    """One-line ValueErrors for ACDC options that cannot work (checked before any run)."""
    if speculate is not None and (not isinstance(speculate, int) or isinstance(speculate, bool) or speculate < 1):
        raise ValueError(f"speculate must be an integer >= 1, got {speculate!r}")
    if prefilter is not None:
        if not isinstance(prefilter, (int, float)) or isinstance(prefilter, bool) or not 0 < prefilter <= 1:
            raise ValueError(f"prefilter must be a fraction in (0, 1], got {prefilter!r}")
        check_attribution(prefilter_method)


def prefilter_edges(
    patcher: Patcher, metric: Metric, batch: Batch, keep: float, method: str, values: Tensor | None = None,
    progress: bool = False,
) -> tuple[Tensor, dict[str, Any]]:
    """APPROXIMATE: [n_edges] bool, the edges outside the top ``keep`` fraction by |attribution score|.

    `run_acdc(prefilter=...)` removes them without testing; the returned settings record that
    the result is approximate.
    """
    check_options(prefilter=keep, prefilter_method=method)
    t0 = time.perf_counter()
    if values is None:
        values = attribution_scores(patcher, metric, batch, method=method, steps=5, progress=progress)
    elif values.shape != (patcher.graph.n_edges,):
        raise ValueError(f"prefilter_scores need one entry per edge ({patcher.graph.n_edges}), got {tuple(values.shape)}")
    n_keep = max(1, math.ceil(keep * len(values)))
    tested = torch.zeros(len(values), dtype=torch.bool)
    tested[torch.argsort(-values.abs(), stable=True)[:n_keep]] = True
    info = {"approximate": "prefilter", "prefilter": float(keep), "prefilter_method": method,
            "prefilter_seconds": round(time.perf_counter() - t0, 3)}
    return ~tested, info


def run_fingerprint(patcher: Patcher, metric: Metric, batch: Batch, *settings: Any) -> str:
    """A hash of everything that decides a run's result on this patcher (prompts, positions, answers,
    graph, ablation, metric, model family) and ``settings`` (JSON-able; ACDC's threshold and the like,
    not speed options such as ``speculate``): what a checkpoint or a sweep's results folder is refused by."""
    h = hashlib.sha256()
    where = None if patcher.positions is None else patcher.positions.index
    for t in (patcher.clean_tokens, patcher.corrupt_tokens, patcher.answer_pos, batch.correct, batch.incorrect, where):
        h.update(b"-" if t is None else t.detach().cpu().numpy().tobytes())
    h.update(json.dumps([patcher.graph.config(), patcher.ablation, metric.name, metric.higher_is_better, *settings,
                         patcher.tf.arch.family]).encode())
    return h.hexdigest()[:16]


def _load_checkpoint(path: str | Path, fingerprint: str) -> dict[str, Any] | None:
    """The saved progress at ``path`` (None if there is none yet); refused if made with other arguments."""
    if not Path(path).is_file():
        return None
    d = read_json(path)
    if d.get("format") != "acdc-checkpoint":
        raise ValueError(f"{path} is not an acdc checkpoint; pass another path or delete the file")
    if d.get("fingerprint") != fingerprint:
        raise ValueError(
            f"checkpoint {path} was made with other arguments (model, prompts, metric, threshold, ...); "
            "pass the same ones to resume, or delete the file to start over"
        )
    return d