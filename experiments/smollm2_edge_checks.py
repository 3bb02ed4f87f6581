"""Are attribution-graph edges real? SmolLM2's IOI attribution graph against interventions, like with like.

    python experiments/smollm2_edge_checks.py [--threads 2] [--sources 60] [--transcoders DIR]

An edge ``s -> t`` is a *direct* effect in the frozen model: what ``t``'s pre-activation (or demeaned logit) loses
when ``s``'s vector is taken out with attention, norms and every other feature held fixed. So it is checked three
ways, each against the quantity it claims to be:

1. **fully frozen** (the edge's own definition): ``s`` taken out of the frozen forward (`FrozenRun.forward`:
   attention patterns, norm scales and every other node fixed): the change of every target equals its edge, up
   to float rounding (also a test on SmolLM2: tests/test_real_smollm2.py);
2. **the graph's multi-hop prediction** against the measured **total** effect in the replacement model
   (`acdc.edits.intervene`: every other feature recomputed, errors frozen), with attention frozen at its patterns
   on the unedited prompt and with it live: the graph predicts a total effect by chaining its edges through the
   features between (a feature's edges are per its whole activation, so a change of its pre-activation moves its
   output by that change over its activation, while it stays active): ``total = (I - B)^-1 A[:, s]``, B the
   feature-to-feature edges over each source feature's activation. The direct edge alone is shown beside it.
3. both **by layer distance** (target layer - source layer; logits last): the longer the path, the more the
   graph's first-order, frozen-norm view leaves out.

Sources: the most influential features and as many drawn at random among the active ones (seed 0). Writes
experiments/results/smollm2_edge_checks.{md,json,png}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from smollm2_common import ROOT, load, write

import acdc
from acdc.edits import intervene
from acdc.linearised import FrozenRun
from acdc.loading import cache_dir

MODES = ("frozen attention", "live")
BINS = ((1, 1), (2, 3), (4, 7), (8, 99))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1]), 3) if len(a) > 2 else float("nan")


def frozen_values(fr: FrozenRun, g, enc: torch.Tensor, mlp_out: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """Every target of ``g`` (features: encoder pre-activation without b_enc, ``enc`` [n_f, d] their encoder columns;
    logits: demeaned logit) in the frozen forward with the given frozen MLP outputs [L, S, d] and input [S, d]."""
    tf = fr.tf
    mids, final = fr.forward(mlp_out, embed)
    xn = torch.stack([fr.norm(mids[layer], *tf.norm_params("ln2", layer), fr.scale2[layer]) for layer in range(len(mids))])
    fl, fp = g.features[:, 0], g.features[:, 1]
    feats = (xn[fl, fp] * enc).sum(-1)
    xf = fr.norm(final[-1], *tf.norm_params("lnf"), fr.scale_f[-1])
    W_U = tf.unembedding
    logits = xf @ (W_U[:, g.logit_tokens] - W_U.mean(1, keepdim=True))
    return torch.cat([feats, logits]).double()


def target_values(run, g) -> torch.Tensor:
    """Every target of ``g`` in a replacement-model run (`acdc.edits.intervene`): feature pre-activations, demeaned logits."""
    pre = torch.stack([run.pre[layer] for layer in sorted(run.pre)])  # [L, S, n]
    f = g.features
    logits = run.logits[-1]
    return torch.cat([pre[f[:, 0], f[:, 1], f[:, 2]], logits[g.logit_tokens] - logits.mean()]).double()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--transcoders", type=Path, default=cache_dir() / "transcoders" / "smollm2-1152-k16-100000-per-layer",
                    help="per-layer transcoders (default: the set experiments/smollm2_clt.py trains)")
    ap.add_argument("--sources", type=int, default=60, help="source features (half by influence, half at random)")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args(argv)
    model, tf = load(args.threads)
    ts = acdc.load_transcoders(args.transcoders, model)
    tokens = model.to_tokens("When Mary and John went to the store, John gave a drink to")[0]
    g = acdc.attribution_graph(model, tokens, transcoders=ts, progress=False)
    influence = g.influence()[: g.n_features]
    sources = influence.argsort(descending=True)[: args.sources // 2].tolist()
    gen = torch.Generator().manual_seed(0)
    rest = [i for i in torch.randperm(g.n_features, generator=gen).tolist() if i not in sources]
    sources += rest[: args.sources - len(sources)]
    feats, n_f = g.features, g.n_features
    targets_of = torch.cat([torch.arange(n_f), torch.arange(g.logit_start, g.n_nodes)])  # feature and logit rows
    A = g.adjacency[targets_of].double()  # [n_f + n_l, n]
    # the graph's multi-hop prediction: chain the edges through features, each over its source's activation
    B = A[:n_f, :n_f] / g.activations.double()[None, :]
    Bl = A[n_f:, :n_f] / g.activations.double()[None, :]
    eye = torch.eye(n_f, dtype=torch.float64)
    chain = torch.linalg.solve_triangular(eye - B, A[:n_f, sources], upper=False)  # features sorted by layer: lower-triangular
    multi = torch.cat([chain, A[n_f:, sources] + Bl @ chain])  # [n_f + n_l, n_sources]
    direct = A[:, sources]

    skip = {layer: ts[layer].W_skip.detach() for layer in ts.layers if ts[layer].W_skip is not None}
    fr = FrozenRun.of(tf, tokens, skip)
    embed = fr.token_vectors()
    enc = torch.stack([ts[layer].W_enc[:, f].detach() for layer, _, f in feats.tolist()]).to(fr.mlp_out.dtype)
    t0 = time.perf_counter()
    base = frozen_values(fr, g, enc, fr.mlp_out, embed)
    frozen_fx = []
    for s in sources:
        layer, pos, f = feats[s].tolist()
        cut = fr.mlp_out.clone()
        cut[layer, pos] -= g.activations[s] * ts[layer].W_dec[f].detach()
        frozen_fx.append(base - frozen_values(fr, g, enc, cut, embed))
    frozen_fx_t = torch.stack(frozen_fx, 1)  # [n_f + n_l, n_sources]
    frozen_seconds = time.perf_counter() - t0
    ok = direct != 0
    exact = float((frozen_fx_t - direct)[ok].abs().max())
    scale = float(direct.abs().max())

    measured, seconds = {}, {}
    for mode in MODES:
        frozen = mode == "frozen attention"
        plain = target_values(intervene(tf, ts, tokens, {}, freeze_attention=frozen), g)
        t0 = time.perf_counter()
        cols = []
        for s in sources:
            layer, pos, f = feats[s].tolist()
            col = plain - target_values(intervene(tf, ts, tokens, {(layer, pos, f): 0.0}, freeze_attention=frozen), g)
            col[:n_f][(feats[:, 0] <= layer) | (feats[:, 1] < pos)] = 0  # no path reaches these
            cols.append(col)
        measured[mode] = torch.stack(cols, 1)
        seconds[mode] = round(time.perf_counter() - t0, 1)

    # every (target, source) pair a path can join: later layer, same or later position; logits always
    src_layer = feats[sources, 0]
    src_pos = feats[sources, 1]
    tgt_layer = torch.cat([feats[:, 0], torch.full((g.n_logits,), 10_000)])
    tgt_pos = torch.cat([feats[:, 1], torch.full((g.n_logits,), g.n_pos - 1)])
    reach = (tgt_layer[:, None] > src_layer[None, :]) & (tgt_pos[:, None] >= src_pos[None, :])
    dist = tgt_layer[:, None] - src_layer[None, :]
    rows = {"sources": len(sources), "features": n_f, "transcoders": str(args.transcoders),
            "fully_frozen": {"edges": int(ok.sum()), "largest_difference": exact, "largest_edge": scale,
                             "seconds": round(frozen_seconds, 1)},
            "seconds": seconds, "bins": []}
    def label(lo: int, hi: int) -> str:
        return f"layers +{lo}" if lo == hi else f"layers +{lo}.." + ("" if hi == 99 else str(hi))

    bins = [*((label(lo, hi), (dist >= lo) & (dist <= hi) & (tgt_layer[:, None] < 10_000)) for lo, hi in BINS),
            ("logits", tgt_layer[:, None].expand_as(dist) == 10_000)]
    for name, m in bins:
        m = m & reach
        entry = {"bin": name, "pairs": int(m.sum())}
        for mode in MODES:
            M = measured[mode][m]
            entry[mode] = {"direct": pearson(direct[m], M), "multi_hop": pearson(multi[m], M),
                           "direct_same_sign": round(float(((direct[m] > 0) == (M > 0)).float().mean()), 3),
                           "multi_same_sign": round(float(((multi[m] > 0) == (M > 0)).float().mean()), 3)}
        rows["bins"].append(entry)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.5))
    axes[0].scatter(direct[ok], frozen_fx_t[ok], s=5, alpha=0.5)
    axes[0].set(xlabel="edge weight", ylabel="change in the fully frozen model", title=f"fully frozen: max |diff| {exact:.1e}")
    for ax, mode in zip(axes[1:], MODES, strict=True):
        M = measured[mode][reach]
        ax.scatter(multi[reach], M, s=4, alpha=0.4, label="multi-hop prediction")
        ax.scatter(direct[reach], M, s=4, alpha=0.25, label="direct edge")
        lim = float(max(multi[reach].abs().max(), M.abs().max()))
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set(xlabel="predicted by the graph", ylabel="total effect measured (replacement model)", title=f"attention {mode}")
        ax.legend(fontsize=8)
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "smollm2_edge_checks.png", dpi=110, bbox_inches="tight")
    md = ["# Attribution-graph edges against interventions, like with like (SmolLM2-135M-Instruct, IOI prompt)", "",
          f"Command: `python experiments/smollm2_edge_checks.py --threads {args.threads} --sources {args.sources}` with the "
          f"transcoders in `{args.transcoders.name}` ({n_f:,} active features). {len(sources)} source features "
          f"({args.sources // 2} most influential, the rest at random, seed 0).", "",
          f"**Fully frozen** (the edge's definition: the source's vector taken out of the frozen forward): over "
          f"{int(ok.sum()):,} nonzero edges out of the sources the largest difference between edge and measured change is "
          f"{exact:.1e} (the largest edge is {scale:.2f}): the same numbers ({rows['fully_frozen']['seconds']:.0f} s).", "",
          "**Total effects** (`acdc.edits.intervene`: the source ablated in the replacement model, every other feature "
          "recomputed, errors frozen) against the graph's multi-hop prediction and its direct edge alone, Pearson over the "
          "(target, source) pairs a path can join, by layer distance; same sign in brackets. Edit times: "
          + ", ".join(f"{mode} {seconds[mode]:.0f} s" for mode in MODES) + ".", "",
          "| layer distance | pairs | attention frozen: multi-hop | attention frozen: direct | live: multi-hop | live: direct |",
          "|---|---|---|---|---|---|"]
    for e in rows["bins"]:
        f, li = e["frozen attention"], e["live"]
        md.append(f"| {e['bin']} | {e['pairs']:,} | {f['multi_hop']} ({f['multi_same_sign']}) | {f['direct']} ({f['direct_same_sign']}) | "
                  f"{li['multi_hop']} ({li['multi_same_sign']}) | {li['direct']} ({li['direct_same_sign']}) |")
    md += ["", "Plot: `smollm2_edge_checks.png`. The earlier version of this check compared the direct edge with the total "
           "effect and read Pearson 0.26-0.29 as if they should agree: they measure different things.", ""]
    write(args.out, "smollm2_edge_checks", rows, "\n".join(md))


if __name__ == "__main__":
    main()
