"""Edge attribution patching: EAP and EAP-IG scores for every edge from a few gradient passes.

EAP (Syed et al. 2023) scores an edge u -> v by the first-order change of the loss when u's
output is swapped for its ablation value on that edge only:

    score(u -> v) = sum over batch, positions of (A_u - O_u) . dL/d(input of v)

with O_u the clean output of u, A_u its ablation value (corrupt run, mean or zero, as in the
patching engine) and L the metric oriented lower-is-better (so a positive score means removing
the edge hurts, as in ACDC). EAP-IG (Hanna et al. 2024) replaces the gradient at the clean run
by its average over points k/steps (k = 1..steps) on a straight path from the ablated to the
clean run: of the input embedding ("eap-ig-inputs"), or of each node group's output in turn
("eap-ig-activations": the embedding, each attention layer, each MLP; the interpolated group
passes gradients to its own inputs through its Jacobian at the clean input, so its inputs are
not cut off the path). With steps=1 both are EAP.

Two grids of points are offered (``grid``), both valid Riemann sums of the same integral:
- ``"right"`` (default): k/steps for k = 1..steps, ending at the clean run, so steps=1 is EAP;
  EAP-IG's own activations and node-level variants use this grid.
- ``"left"``: k/steps for k = 0..steps-1, starting at the fully ablated run; EAP-IG's edge-level
  ``EAP-IG-inputs`` (hannamw/EAP-IG, current main) uses it. Use it to compare numbers with
  EAP-IG: at 5 steps the two grids differ by several percent.

The gradients come from the engine's gradient pass (`Patcher.input_gradients`: one forward and
one backward through the same layer loop as patched runs; the gradient into each head's q/k/v
input is read from the gradient of that head's projection through LayerNorm's backward, so no
per-head copies of the residual stream are made), and the products with (A_u - O_u) from
`Patcher.source_values`, which also scores factored sources (MLP neurons) without their d_model
outputs.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..blocks import GIM
from ..metrics import Batch, Metric
from ..patching import Patcher
from ..progress import bar
from ..scores import Scores

__all__ = ["GIM", "METHODS", "AttributionOptions", "VanishingScoresWarning", "attribution_scores", "check_options", "check_vanishing", "eap", "eap_ig_activations", "eap_ig_inputs"]

Method = Literal["eap", "eap-ig-inputs", "eap-ig-activations"]
METHODS: tuple[str, ...] = ("eap", "eap-ig-inputs", "eap-ig-activations")
Grid = Literal["right", "left"]
GRIDS: tuple[str, ...] = ("right", "left")


GIMOption = bool | dict[str, Any] | GIM


def eap(patcher: Patcher, metric: Metric, batch: Batch, *, gim: GIMOption = False, progress: bool = False) -> Scores:
    """EAP: one forward and one backward at the clean run (``gim``: GIM's backward rules, `acdc.GIM`)."""
    return _scores(patcher, metric, batch, "eap", 1, progress, gim=gim)


def eap_ig_inputs(
    patcher: Patcher, metric: Metric, batch: Batch, *, steps: int = 5, grid: Grid = "right", gim: GIMOption = False,
    progress: bool = False,
) -> Scores:
    """EAP-IG with the input embedding interpolated (``steps`` gradient passes on ``grid``; ``gim`` as `eap`'s)."""
    return _scores(patcher, metric, batch, "eap-ig-inputs", steps, progress, grid, gim)


def eap_ig_activations(
    patcher: Patcher, metric: Metric, batch: Batch, *, steps: int = 5, grid: Grid = "right", gim: GIMOption = False,
    progress: bool = False,
) -> Scores:
    """EAP-IG with each node group's output interpolated in turn (``steps`` passes per group on ``grid``; ``gim`` as
    `eap`'s)."""
    return _scores(patcher, metric, batch, "eap-ig-activations", steps, progress, grid, gim)


@dataclass(frozen=True)
class AttributionOptions:
    """Attribution's options, declared once: `acdc.attribute` and the CLI's attribute flags read them here."""

    method: str = field(default="eap", metadata={"help": "attribution method", "choices": METHODS})
    steps: int = field(default=5, metadata={"help": "integrated-gradient points (EAP-IG; 1 step is EAP)"})
    grid: str = field(default="right", metadata={
        "help": "where the points lie: right (k/steps, k = 1..steps) or left (k = 0..steps-1, EAP-IG's edge-level "
                "EAP-IG-inputs)", "choices": GRIDS})
    gim: bool = field(default=False, metadata={
        "help": "GIM's backward rules in every gradient pass: norm statistics frozen, softmax backward at "
                "temperature 2, q/k/v gradients x 1/4, 1/4, 1/2 (acdc.GIM)"})

    def __post_init__(self) -> None:
        check_options(self.method, self.steps, self.grid)

    def algorithm_options(self) -> dict[str, Any]:
        """The keywords its registered algorithm takes (EAP has no steps or grid)."""
        gim = {"gim": True} if self.gim else {}
        return gim if self.method == "eap" else {"steps": self.steps, "grid": self.grid, **gim}


def check_options(method: str, steps: int = 5, grid: str = "right") -> None:
    """One-line ValueErrors for a method, step count or grid that does not exist (checked before any run)."""
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; choose one of {', '.join(GRIDS)}")


class VanishingScoresWarning(UserWarning):
    """Attribution scores that are all ~0 because the metric's gradient vanishes where they are taken."""


def check_vanishing(method: str, metric: Metric, steps: int = 1, grid: str = "right") -> bool:
    """Warn before the runs when ``method`` takes every gradient where ``metric``'s is zero.

    KL to the full model is minimal (zero) at the clean run, so its gradient there is zero and
    EAP (one gradient, at the clean run) scores every edge ~1e-10. EAP-IG with one step on the
    "right" grid (alpha = 1) takes its gradients at the clean run too.
    """
    single_clean_point = method == "eap" or (steps == 1 and grid == "right")
    vanishes = metric.name == "kl" and single_clean_point
    if vanishes:
        warnings.warn(
            f"{method} with the KL metric scores every edge ~0: KL to the full model has zero gradient at the clean "
            "run, where EAP takes it. Use method='eap-ig-inputs' (gradients along the path to the corrupt run), "
            "or a difference metric with answers (metric='logit_diff').", VanishingScoresWarning, stacklevel=3)
    return vanishes


def _warn_if_all_zero(values: Tensor, method: str, metric: Metric) -> None:
    """After the runs: every score tiny (below 1e-8) is almost always a vanishing gradient, not a finding."""
    if values.numel() and bool(values.isfinite().all()) and float(values.abs().max()) < 1e-8:
        warnings.warn(
            f"every {method} score is below 1e-8 (largest {float(values.abs().max()):.2g}): the gradient of "
            f"metric {metric.name!r} vanishes at the points taken; try EAP-IG or another metric",
            VanishingScoresWarning, stacklevel=3)


def _scores(
    patcher: Patcher, metric: Metric, batch: Batch, method: str, steps: int, progress: bool, grid: Grid = "right",
    gim: GIMOption = False,
) -> Scores:
    rules = GIM.of(gim)
    warned = check_vanishing(method, metric, steps, grid)
    t0 = time.perf_counter()
    values = attribution_scores(patcher, metric, batch, method=method, steps=steps, grid=grid, gim=rules, progress=progress)
    if not warned:
        _warn_if_all_zero(values, method, metric)
    settings = {
        "method": method, "steps": steps, **({"grid": grid} if method != "eap" else {}),
        **({"gim": rules.to_dict()} if rules is not None else {}),
        "metric": metric.name, "ablation": patcher.ablation,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return Scores(patcher.graph, values, settings)


def attribution_scores(
    patcher: Patcher, metric: Metric, batch: Batch, *, method: str = "eap", steps: int = 5, grid: Grid = "right",
    gim: GIM | None = None, progress: bool = False,
) -> Tensor:
    """[n_edges] float64 attribution scores in the graph's edge order (see module docstring; ``gim``: GIM's backward
    rules in every gradient pass)."""
    check_options(method, steps, grid)
    if gim is not None:
        gim.check(patcher.tf)
    tf = patcher.tf
    g = patcher.graph
    positional = g.positions is not None and g.n_positions > 1
    shape = g.state_shape if positional else tuple(g.upstream.shape)  # one position covering every token: plain
    dense = torch.zeros(*shape, dtype=torch.float64, device=tf.device)
    points = list(_points(patcher, method, steps, grid))
    for override in bar(points, desc=f"{method} passes", disable=not progress or len(points) == 1):
        dense += _pass(patcher, metric, batch, shape, override, gim)
    dense /= len(points)
    if g.positions is not None and not positional:
        dense = dense[..., None]
    return g.sparse(dense).cpu()


def _points(patcher: Patcher, method: str, steps: int, grid: str) -> Iterator[tuple[range, float] | None]:
    """Where each gradient is taken: None (the clean run), or (the sources interpolated, alpha): the input node's
    for EAP-IG-inputs; for EAP-IG-activations, each node group in turn: the input node, then each block of the
    model's layer loop (a layer's heads, its MLP or its MLP's units; `Patcher.blocks`)."""
    first = 1 if grid == "right" else 0
    alphas = [k / steps for k in range(first, first + steps)]
    if method == "eap":
        yield None
        return
    groups = [range(0, 1)] + ([] if method == "eap-ig-inputs" else [block.sources for block in patcher.blocks])
    for sources in groups:
        for a in alphas:
            yield (sources, a)


def _pass(patcher: Patcher, metric: Metric, batch: Batch, shape: tuple[int, ...], at: tuple[range, float] | None,
          gim: GIM | None = None) -> Tensor:
    """One forward and backward (the engine's gradient pass); returns the [n_dst, n_src] sums of delta . gradient."""
    dense = torch.zeros(*shape, dtype=torch.float64, device=patcher.tf.device)
    values = patcher.source_values
    head_sums: dict[int, Tensor] = {}  # post-norm families: where this pass linearises each layer's norm
    for rows, upto, grads in patcher.input_gradients(lambda logits: metric.loss_tensor(logits, batch), at, head_sums, gim):
        dense[rows, :upto] = values.dot(grads, upto, head_sums)
    return dense
