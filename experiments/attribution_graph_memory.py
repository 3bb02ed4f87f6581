"""Time and memory of each step of an attribution graph on SmolLM2 (the IOI prompt, 2 threads):
building it, pruning it, its two scores, writing circuit-tracer's file.

    python experiments/attribution_graph_memory.py [--transcoders DIR]

Prints the process's peak resident memory after each step (GB; its own VmHWM: `peak_memory`) and its seconds.
Needs the transcoders of experiments/smollm2_transcoders.py.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from peak_memory import peak_kib
from smollm2_common import load

import acdc
from acdc.loading import cache_dir


def peak_gb() -> float:
    return round(peak_kib() / 1e6, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--transcoders", type=Path, default=cache_dir() / "transcoders" / "smollm2-sotu")
    args = ap.parse_args()
    model, _ = load(2)
    ts = acdc.load_transcoders(args.transcoders, model)
    tokens = model.to_tokens("When Mary and John went to the store, John gave a drink to")[0]
    print(f"loaded: peak {peak_gb()} GB")
    t0 = time.perf_counter()
    g = acdc.attribution_graph(model, tokens, transcoders=ts, progress=False)
    print(f"build: {time.perf_counter() - t0:.1f} s, peak {peak_gb()} GB ({g.n_nodes} nodes)")
    for name, fn in (("prune", lambda: g.prune()), ("scores", lambda: g.scores),
                     ("to_json", lambda: g.to_json(Path(tempfile.mkdtemp()) / "g.json"))):
        t0 = time.perf_counter()
        fn()
        print(f"{name}: {time.perf_counter() - t0:.1f} s, peak {peak_gb()} GB")


if __name__ == "__main__":
    main()
