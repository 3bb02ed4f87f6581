"""Are attribution-graph edges real? Edge weights of SmolLM2's IOI attribution graph against the effect
of ablating the source feature in the live replacement model.

    python experiments/smollm2_edge_checks.py [--threads 2] [--sources 60]

An edge ``s -> t`` is a direct effect in the frozen model: what ``t``'s pre-activation loses when ``s``
is taken out with attention, norms and every other feature held fixed (tests/test_attribution_graphs.py
checks that identity exactly). Here the edit runs in the replacement model (`acdc.edits.intervene`:
norms and every other feature recomputed, only the error nodes frozen), once with attention live and
once with it frozen at its patterns on the unedited prompt: the measured change of ``t`` then also
carries every indirect path, so the plot shows how far a graph's edges predict a real intervention,
and the second column how much of the gap attention makes. Sources: the most influential features and as many drawn at random among the active
ones (seed 0); one edited forward per source gives its effect on every target.

Writes experiments/results/smollm2_edge_checks.{md,json,png}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from smollm2_common import ROOT, load, write

import acdc
from acdc.edits import intervene
from acdc.loading import cache_dir

MODES = ("live", "frozen attention")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--transcoders", type=Path, default=cache_dir() / "transcoders" / "smollm2-sotu")
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
    feats = g.features
    P, kind, measured, seconds = None, [], {}, {}
    for mode in MODES:
        frozen = mode == "frozen attention"
        plain = intervene(tf, ts, tokens, {}, freeze_attention=frozen)
        t0 = time.perf_counter()
        pred, meas, kind = [], [], []
        for s in sources:
            layer, pos, f = feats[s].tolist()
            cut = intervene(tf, ts, tokens, {(layer, pos, f): 0.0}, freeze_attention=frozen)
            targets = ((feats[:, 0] > layer) & (feats[:, 1] >= pos)).nonzero().squeeze(1)
            for t in targets.tolist():
                tl, tp, tf_ = feats[t].tolist()
                w = float(g.adjacency[t, s])
                if w != 0.0:
                    pred.append(w)
                    meas.append(float(plain.pre[tl][tp, tf_] - cut.pre[tl][tp, tf_]))
                    kind.append("feature")
            for k, tok in enumerate(g.logit_tokens.tolist()):  # a logit node reads its demeaned logit
                pred.append(float(g.adjacency[g.logit_start + k, s]))
                meas.append(demeaned(tf, plain.logits[-1], tok) - demeaned(tf, cut.logits[-1], tok))
                kind.append("logit")
        seconds[mode] = time.perf_counter() - t0
        P, measured[mode] = torch.tensor(pred), torch.tensor(meas)
    assert P is not None
    rows = {"edges": len(P), "sources": len(sources), "modes": {mode: agreement(P, M, kind) for mode, M in measured.items()},
            "seconds": {mode: round(x, 1) for mode, x in seconds.items()}}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 6), sharey=True)
    for ax, (mode, M) in zip(axes, measured.items(), strict=True):
        for k, c in (("feature", "#1f77b4"), ("logit", "#d62728")):
            m = torch.tensor([x == k for x in kind])
            ax.scatter(P[m], M[m], s=6, alpha=0.5, c=c, label=f"into a {k} ({int(m.sum())} edges)")
        lim = float(max(P.abs().max(), M.abs().max()))
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8, label="measured = predicted")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_xlabel("edge weight (direct effect, frozen model)")
        ax.set_title(f"{mode} (Pearson {rows['modes'][mode]['pearson']})")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("change of the target when the source is ablated (replacement model)")
    fig.suptitle(f"SmolLM2 IOI attribution graph: {len(P)} edges of {len(sources)} sources")
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "smollm2_edge_checks.png", dpi=120, bbox_inches="tight")
    md = ["# Attribution-graph edges against interventions (SmolLM2-135M-Instruct, IOI prompt)", "",
          f"Command: `python experiments/smollm2_edge_checks.py --threads {args.threads} --sources {args.sources}`. "
          f"{len(sources)} source features ({args.sources // 2} most influential, the rest at random, seed 0), each ablated at its "
          "position in the replacement model (`acdc.edits.intervene`: norms and the other features live, errors frozen), "
          "with attention live or frozen at its patterns on the unedited prompt; every nonzero edge out of it into a "
          "feature, and every edge into a logit. Edit times: "
          + ", ".join(f"{mode} {rows['seconds'][mode]:.0f} s" for mode in MODES) + ".", "",
          "| attention | edges | Pearson | Spearman | same sign | edges with weight >= 0.05: how many, Pearson, same sign | "
          "Pearson, top 100 by weight | median measured / predicted, top 100 | Pearson, edges into logits |",
          "|---|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        r = rows["modes"][mode]
        md.append(f"| {mode} | {rows['edges']} | {r['pearson']} | {r['spearman']} | {r['same_sign']} | {r['big_edges']}, "
                  f"{r['big_pearson']}, {r['big_same_sign']} | {r['top100_pearson']} | {r['top100_median_ratio']} | "
                  f"{r['logit_edges_pearson']} |")
    md += ["", "Plot: `smollm2_edge_checks.png`. With attention, norms and the other features all fixed the two are "
           "equal by construction; tests/test_attribution_graphs.py checks it entry by entry.", ""]
    keep = P.abs().argsort(descending=True)[:2000].tolist()  # the largest edges' pairs (all of them make 20 MB)
    pairs = [[float(P[i]), *(float(measured[mode][i]) for mode in MODES), kind[i]] for i in keep]
    write(args.out, "smollm2_edge_checks", {**rows, "largest_2000_pairs": pairs, "pair_columns": ["predicted", *MODES, "kind"]},
          "\n".join(md))


def agreement(P: torch.Tensor, M: torch.Tensor, kind: list[str]) -> dict[str, float | int]:
    """How well predicted edge weights P match measured effects M."""
    top = P.abs().argsort(descending=True)[:100]
    logit = torch.tensor([k == "logit" for k in kind])
    big = P.abs() >= 0.05  # edges as large as the ones a pruned graph keeps
    return {
        "pearson": round(float(torch.corrcoef(torch.stack([P, M]))[0, 1]), 3), "spearman": round(spearman(P, M), 3),
        "same_sign": round(float(((P > 0) == (M > 0)).float().mean()), 3),
        "top100_pearson": round(float(torch.corrcoef(torch.stack([P[top], M[top]]))[0, 1]), 3),
        "top100_median_ratio": round(float((M[top] / P[top]).median()), 3),
        "logit_edges_pearson": round(float(torch.corrcoef(torch.stack([P[logit], M[logit]]))[0, 1]), 3),
        "big_edges": int(big.sum()), "big_pearson": round(float(torch.corrcoef(torch.stack([P[big], M[big]]))[0, 1]), 3),
        "big_same_sign": round(float(((P[big] > 0) == (M[big] > 0)).float().mean()), 3),
    }


def demeaned(tf, logits: torch.Tensor, tok: int) -> float:
    """(W_U[:, tok] - mean over the vocabulary of W_U's columns) . lnf(x), read off the logits (b_U taken out)."""
    raw = logits - tf.w["b_U"]
    return float(raw[tok] - raw.mean())


if __name__ == "__main__":
    main()
