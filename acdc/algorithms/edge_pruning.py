"""Edge Pruning (Bhaskar et al. 2024, princeton-nlp/Edge-Pruning): learn a mask over the edges.

Every edge ``e`` gets a hard-concrete gate ``z_e`` in [0, 1] (Louizos et al. 2018: a stretched,
clipped binary-concrete variable with learned location ``log_alpha_e``, temperature ``beta``,
stretch ``(l, r)``), and every destination's input mixes its sources as
``z_e O_u + (1 - z_e) A_u`` (clean output and ablation value; `acdc.mixing.mixed_logits`). The
gates are trained with Adam to keep the full model's behaviour,

    loss = task loss of the mixed run + lambda_1 (s - t) + lambda_2 (s - t)^2,

``s`` the expected fraction of edges kept (the gates' L0 norm over the number of edges), ``t``
the target fraction, which falls linearly from 1 to ``target`` over the first ``warmup``
fraction of the steps; the multipliers ``lambda`` are trained to maximise it (a Lagrangian, as in
Edge Pruning). The task loss is KL from the full model's logits (Edge Pruning's), or the
metric's own loss. The circuit is the edges whose deterministic gate is above 0.5 (``log_alpha
> 0``), each edge's score ``sigmoid(log_alpha)`` (its rank; the score ranks edges for ROC curves).

It runs on the engine's mixed forward, so what it keeps is scored by the same patched runs as
every other method.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..metrics import Batch, Metric
from ..mixing import mixed_logits
from ..patching import Patcher
from ..progress import bar
from ..scores import Scores

__all__ = ["EdgePruningOptions", "edge_pruning"]

BETA, LEFT, RIGHT = 2.0 / 3.0, -0.1, 1.1  # hard-concrete temperature and stretch (Louizos et al.; Edge Pruning's)


@dataclass(frozen=True)
class EdgePruningOptions:
    """Edge Pruning's options (`edge_pruning` and ``acdc.ALGORITHMS["edge-pruning"]`` take them as keywords)."""

    target: float = field(default=0.05, metadata={"help": "fraction of edges to keep at the end (0, 1]"})
    steps: int = field(default=200, metadata={"help": "optimisation steps"})
    lr: float = field(default=0.05, metadata={"help": "Adam's learning rate for the gates' log_alpha (Edge Pruning's "
                                              "runs: 0.8 over 3,000 steps; a short run on a large graph needs more "
                                              "than this default, e.g. 0.5 in experiments/smollm2_edge_pruning.py)"})
    lagrangian_lr: float = field(default=0.1, metadata={"help": "learning rate of the Lagrange multipliers"})
    warmup: float = field(default=0.5, metadata={"help": "fraction of the steps over which the target falls from 1"})
    loss: str = field(default="kl", metadata={"help": "kl (to the full model, Edge Pruning's) or metric (the task's)",
                                              "choices": ("kl", "metric")})
    init: float = field(default=3.0, metadata={"help": "initial log_alpha of every gate (kept with high probability)"})
    seed: int = field(default=0, metadata={"help": "seed of the gates' noise"})

    def __post_init__(self) -> None:
        if not isinstance(self.target, (int, float)) or not 0 < self.target <= 1:
            raise ValueError(f"target must be a fraction of edges in (0, 1], got {self.target!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        for name in ("lr", "lagrangian_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.warmup <= 1:
            raise ValueError(f"warmup must be a fraction of the steps in [0, 1], got {self.warmup!r}")
        if self.loss not in ("kl", "metric"):
            raise ValueError(f"loss must be 'kl' or 'metric', got {self.loss!r}")


def kl_from_reference(ref: Tensor, logits: Tensor) -> Tensor:
    """Edge Pruning's KL loss: KL(full model || mixed run), the mean over rows of ``sum p_full (log p_full -
    log p_mixed)``; ``ref`` [rows, vocab] the full model's log-probabilities, ``logits`` [rows, vocab] the mixed
    run's. (The reverse, KL(mixed || full), would let the circuit drop tokens the model gives mass.)"""
    return (ref.exp() * (ref - logits.log_softmax(-1))).sum(-1).mean()


def _gates(log_alpha: Tensor, gen: torch.Generator | None) -> Tensor:
    """Hard-concrete samples (``gen`` given) or the deterministic gates (None), in [0, 1]."""
    if gen is None:
        s = torch.sigmoid(log_alpha)
    else:
        u = torch.rand(log_alpha.shape, generator=gen, dtype=log_alpha.dtype).clamp(1e-6, 1 - 1e-6).to(log_alpha.device)
        s = torch.sigmoid((u.log() - (-u).log1p() + log_alpha) / BETA)
    return (s * (RIGHT - LEFT) + LEFT).clamp(0.0, 1.0)


def _expected_kept(log_alpha: Tensor) -> Tensor:
    """The expected fraction of gates that are not 0 (the L0 norm's expectation, per edge, averaged)."""
    return torch.sigmoid(log_alpha - BETA * math.log(-LEFT / RIGHT)).mean()


def edge_pruning(patcher: Patcher, metric: Metric, batch: Batch, *, progress: bool = False, **options: object) -> Scores:
    """Edge Pruning on ``patcher``'s graph (see the module docstring); ``.selection()`` is the circuit."""
    opts = EdgePruningOptions(**options)  # type: ignore[arg-type]
    g, tf = patcher.graph, patcher.tf
    t0 = time.perf_counter()
    coords = tuple(c.to(tf.device) for c in (g.edge_dst, g.edge_src, *((g.edge_pos,) if g.positions is not None else ())))
    log_alpha = torch.full((g.n_edges,), float(opts.init), dtype=torch.float32, device=tf.device, requires_grad=True)
    lambdas = torch.zeros(2, dtype=torch.float32, device=tf.device, requires_grad=True)
    opt = torch.optim.Adam([log_alpha], lr=opts.lr)
    opt_l = torch.optim.Adam([lambdas], lr=opts.lagrangian_lr, maximize=True)
    gen = torch.Generator().manual_seed(opts.seed)
    ref = patcher.clean.logits.detach().log_softmax(-1)
    trace: list[float] = []
    density: list[float] = []  # the expected fraction of edges kept at each step (before its update)
    n_warm = max(1, round(opts.warmup * opts.steps))

    def weights(z: Tensor) -> Tensor:
        w = torch.zeros(g.state_shape, dtype=z.dtype, device=tf.device)
        return w.index_put(coords, z)

    def task_loss(logits: Tensor) -> Tensor:
        return kl_from_reference(ref, logits) if opts.loss == "kl" else metric.loss_tensor(logits, batch)

    with torch.enable_grad():
        for step in bar(range(opts.steps), desc="edge pruning", disable=not progress):
            target = 1.0 - (1.0 - opts.target) * min(1.0, (step + 1) / n_warm)
            logits = mixed_logits(patcher, weights(_gates(log_alpha, gen)), skip_zeros=True)  # closed gates: no gradient anyway
            task = task_loss(logits)
            gap = _expected_kept(log_alpha) - target
            loss = task + lambdas[0] * gap + lambdas[1] * gap**2
            opt.zero_grad()
            opt_l.zero_grad()
            loss.backward()
            opt.step()
            opt_l.step()
            trace.append(float(task.detach()))
            density.append(round(float(gap.detach()) + target, 6))
    with torch.no_grad():
        keep = log_alpha.detach() > 0  # the deterministic gate above 0.5
        values = torch.sigmoid(log_alpha.detach()).double()
    settings = {"method": "edge-pruning", "target": float(opts.target), "steps": opts.steps, "loss": opts.loss,
                "lr": opts.lr, "lagrangian_lr": opts.lagrangian_lr, "warmup": opts.warmup, "seed": opts.seed,
                "metric": metric.name, "ablation": patcher.ablation, "kept_fraction": float(keep.float().mean()),
                "seconds": round(time.perf_counter() - t0, 3), "density_trace": density}
    return Scores(g, values.cpu(), settings, selected=keep.cpu(), trace=trace)
