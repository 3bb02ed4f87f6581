"""Training a cross-layer transcoder (`CrossLayerTranscoder`) in the loop per-layer transcoders train in.

The same stream, buffers, checkpoints, seeds and data parallelism as `train_transcoders` (`run_training`); what
differs is the model and its loss. Every layer's features read that layer's normed MLP input ``x_l`` and the
reconstruction of layer j's MLP output is the sum over the layers l <= j of their features' decoders into j::

    loss = sum_j FVU_j + sparsity + aux_coef * AuxK
    FVU_j    = |y_j - y_hat_j|^2 / |y_j - mean y_j|^2            (each target layer's, summed: Ameisen et al. 2025)
    sparsity = relu:     l1 * sum_l mean_t sum_i a_li |W_dec[l][i]| / rms(y)    (|.| over every target's decoder)
               jumprelu: l0 * sum_l mean_t #(active features of layer l)
               topk:     none (k features per token in each layer)
    AuxK     = per layer, its top ``d_model // 2`` dead features predicting the residuals of the layers they write into

A feature's decoders (into every layer it writes) have unit norm together; gradients along them are removed.
TopK features are decoded sparsely (`torch.nn.functional.embedding_bag`: the k active rows of each token), so a
step costs k x (layers written) rows per token, not every feature's. ``init="data"`` starts each feature at a
token of the first buffer: its encoder on the token's centered input at the feature's layer, its decoders on the
token's centered outputs at the layers it writes, then one least-squares scale for the whole CLT.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import Transformer
from .clt import CLTConfig, CrossLayerTranscoder
from .corpus import TokenStream
from .training import Learner, TrainOptions, World, jump, run_training, trainable_layers, training_options
from .transcoder import ModelInfo

__all__ = ["train_clt"]


class _CrossLayer(Learner):
    def __init__(self, clt: CrossLayerTranscoder):
        self.clt = clt
        self.layers = clt.layers
        self.n_features = clt.cfg.n_features

    def modules(self) -> dict[str, nn.Module]:
        return {"clt": self.clt}

    # ------------------------------------------------------------------ the forward
    def _acts(self, layer: int, x: Tensor, opts: TrainOptions) -> tuple[Tensor, Tensor, Tensor | None]:
        """(pre-activations [T, n], activations [T, n], TopK's active indices [T, k] or None) of one layer."""
        c = self.clt
        pre = x @ c.W_enc[layer] + c.b_enc[layer]
        if c.cfg.activation == "topk":
            assert c.cfg.k is not None
            top = pre.topk(c.cfg.k, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            return pre, acts, top.indices
        if c.cfg.activation == "jumprelu":
            assert c.log_threshold is not None
            return pre, jump(pre, c.log_threshold[layer].exp(), opts.bandwidth, False), None
        return pre, torch.relu(pre), None

    def _write(self, layer: int, acts: Tensor, active: Tensor | None) -> Tensor:
        """[T, L - layer, d] what layer ``layer``'s features write into it and every later layer."""
        W = self.clt.W_dec[layer]  # [n, L - l, d]
        n, span, d = W.shape
        if active is None:
            return (acts @ W.reshape(n, span * d)).view(-1, span, d)
        vals = acts.gather(-1, active)
        return F.embedding_bag(active, W.reshape(n, span * d), per_sample_weights=vals, mode="sum").view(-1, span, d)

    def first_buffer(self, X: dict[int, Tensor], Y: dict[int, Tensor], gen: torch.Generator, opts: TrainOptions) -> None:
        c = self.clt
        L = c.cfg.n_layers
        with torch.no_grad():
            for j in range(L):
                c.b_dec[j].copy_(Y[j].mean(0))
            if opts.init != "data":
                return
            T = len(X[0])
            m = min(c.cfg.n_features, T)
            for layer in range(L):
                mx = X[layer].mean(0)
                xc = X[layer] - mx
                j = torch.randperm(T, generator=gen)[:m].to(xc.device)
                c.W_enc[layer][:, :m] = (xc[j] / xc[j].norm(dim=1, keepdim=True).clamp_min(1e-12)).T
                dec = torch.stack([Y[t][j] - Y[t].mean(0) for t in range(layer, L)], dim=1)  # [m, L - l, d]
                c.W_dec[layer][:m] = dec / dec.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
                c.b_enc[layer].copy_(-(mx @ c.W_enc[layer]))
                if c.log_threshold is not None:
                    pre = X[layer] @ c.W_enc[layer] + c.b_enc[layer]
                    pos = pre[pre > 0]
                    c.log_threshold[layer].fill_(float(pos.median().clamp_min(1e-6).log()) if len(pos) else 0.0)
            # one scale for every encoder: the least-squares fit of the centered outputs (activations are homogeneous)
            recon = [torch.zeros_like(Y[t]) for t in range(L)]
            for layer in range(L):
                wrote = c.encode(layer, X[layer]) @ c.W_dec[layer].flatten(1)
                for t, part in enumerate(wrote.view(T, L - layer, -1).unbind(1)):
                    recon[layer + t] += part
            num = sum(float((r * (Y[t] - Y[t].mean(0))).sum()) for t, r in enumerate(recon))
            den = sum(float((r * r).sum()) for r in recon)
            a = num / max(den, 1e-12)
            if a > 0:
                c.W_enc.mul_(a)
                c.b_enc.mul_(a)
                if c.log_threshold is not None:
                    c.log_threshold.add_(float(torch.tensor(a).log()))

    def step(self, X: dict[int, Tensor], Y: dict[int, Tensor], idx: Tensor, mine: Tensor, dead: dict[int, Tensor],
             opts: TrainOptions, world: World) -> dict[int, dict[str, Tensor]]:
        c = self.clt
        L, n_all = c.cfg.n_layers, len(idx)
        y_hat = [c.b_dec[j].expand(len(mine), -1) for j in range(L)]
        pres, acts_all, out = [], [], {}
        loss = torch.zeros((), device=c.b_dec.device)
        for layer in range(L):
            pre, acts, active = self._acts(layer, X[layer][mine], opts)
            pres.append(pre)
            acts_all.append(acts)
            for t, part in enumerate(self._write(layer, acts, active).unbind(1)):
                y_hat[layer + t] = y_hat[layer + t] + part
        var = {}
        errs = []
        for j in range(L):
            y_all = Y[j][idx]
            var[j] = (y_all - y_all.mean(0)).pow(2).sum().clamp_min(1e-12)
            y = Y[j][mine]
            if c.W_skip is not None:
                y_hat[j] = y_hat[j] + X[j][mine] @ c.W_skip[j]
            e = y - y_hat[j]
            errs.append(e.detach())
            sq = e.pow(2).sum()
            loss = loss + sq / var[j]
            out[j] = {"sq": sq.detach(), "var": var[j]}
        rms = (sum(var.values()) / (n_all * L)).sqrt()  # type: ignore[union-attr]
        for layer in range(L):
            pre, acts = pres[layer], acts_all[layer]
            if c.cfg.activation == "relu":
                loss = loss + opts.l1 * (acts * c.W_dec[layer].flatten(1).norm(dim=1)).sum() / n_all / rms
            elif c.cfg.activation == "jumprelu":
                assert c.log_threshold is not None
                loss = loss + opts.l0 * jump(pre, c.log_threshold[layer].exp(), opts.bandwidth, True).sum() / n_all
            n_dead = int(dead[layer].sum())
            if n_dead and opts.aux_coef > 0:  # dead features predict the residual of the layers they write into
                k_aux = min(X[layer].shape[-1] // 2, n_dead)
                top = torch.where(dead[layer], pre, torch.full_like(pre, -torch.inf)).topk(k_aux, dim=-1)
                aux = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
                e_hat = self._write(layer, aux, top.indices)  # [T, L - l, d]
                e = torch.stack(errs[layer:], dim=1)
                aux_var = sum(var[t] for t in range(layer, L))
                loss = loss + opts.aux_coef * min(n_dead / k_aux, 1.0) * (e_hat - e).pow(2).sum() / aux_var
            out[layer]["active"] = (acts > 0).sum().float().detach()
            out[layer]["fired"] = (acts > 0).any(0)
        loss.backward()
        return out

    def before_step(self) -> None:
        for W in self.clt.W_dec:
            g = W.grad
            if g is not None:
                w = W.detach().flatten(1)
                g2 = g.view(w.shape)
                g2.sub_((g2 * w).sum(1, keepdim=True) * w)

    def after_step(self) -> None:
        with torch.no_grad():
            for W in self.clt.W_dec:
                W.div_(W.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None])


def _init(clt: CrossLayerTranscoder, gen: torch.Generator, init_scale: float) -> None:
    """Random unit decoders (each feature's, over the layers it writes); each encoder ``init_scale`` times the
    transpose of its decoder into its own layer, scaled to unit norm."""
    with torch.no_grad():
        for layer, W in enumerate(clt.W_dec):
            w = torch.randn(W.shape, generator=gen, dtype=torch.float64).to(W.dtype)
            W.copy_(w / w.flatten(1).norm(dim=1)[:, None, None])
            own = W[:, 0]
            clt.W_enc[layer].copy_((own / own.norm(dim=1, keepdim=True).clamp_min(1e-12)).T * init_scale)
        clt.b_enc.zero_()
        if clt.log_threshold is not None:
            clt.log_threshold.fill_(float(torch.tensor(0.1).log()))


def train_clt(
    model: Any,
    corpus: TokenStream | str | Path | Iterable[str],
    *,
    context: int = 128,
    options: TrainOptions | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    model_name: str = "",
    **overrides: Any,
) -> CrossLayerTranscoder:
    """Train a cross-layer transcoder over every layer of ``model`` on ``corpus`` (the module docstring): the same
    options (`TrainOptions`: width per layer, activation, k, tokens, seed, ...), corpus, checkpoints (resumable) and
    torchrun data parallelism as `train_transcoders`. Returns the `CrossLayerTranscoder`; its ``info`` holds the
    options, the corpus, the tokens seen and per target layer FVU (per source layer L0 and dead fraction)."""
    tf = Transformer.of(model)
    opts = training_options(options, overrides)
    layers = trainable_layers(tf, None)
    a = tf.arch
    tc_cfg = opts.config(a.d_model)
    cfg = CLTConfig(len(layers), a.d_model, tc_cfg.n_features, tc_cfg.activation, tc_cfg.k, tc_cfg.skip, "normed")
    gen = torch.Generator().manual_seed(opts.seed)
    clt = CrossLayerTranscoder(cfg, ModelInfo.of(tf, model_name), "trained by acdc", device=tf.device)
    _init(clt, gen, opts.init_scale)
    clt.info = run_training(tf, model, _CrossLayer(clt), corpus, opts, gen, context=context, checkpoint=checkpoint,
                            progress=progress, desc=f"cross-layer transcoder ({len(layers)} layers)")
    return clt
