"""One block of an attribution graph with a cross-layer transcoder: three ways to take the targets' gradients at the
MLP outputs against what the active features write, timed on random tensors of SmolLM2's shape.

    python experiments/attribution_gather_block.py [--positions 64] [--rows 64] [--reps 2]

30 layers, d_model 576, 1,152 features per layer, 16 active per position and layer; ``--rows`` targets, ``--positions``
positions. ``stored``: every feature's vector into every later MLP output kept, grouped by target layer (what
`build_attribution_graph` did before; its memory grows with the prompt times the layers); ``per pair``: decoder rows
gathered for each (source layer, target layer) and one product each (what it does now); ``per target``: all source
layers' rows into a target gathered and concatenated, one product per target. Prints seconds per block (the fastest
of ``--reps``) and checks the three give the same sums.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import Tensor

L, D, N, K = 30, 576, 1152, 16


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--positions", type=int, default=64)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    s, r = args.positions, args.rows
    W = [torch.randn(N, L - src, D, generator=gen) for src in range(L)]  # W_dec[src]: [n, L - src, d]
    ids = [torch.randint(0, N, (s, K), generator=gen) for _ in range(L)]
    out = torch.randn(L, r, s, D, generator=gen)  # the gradients at every MLP output
    stored = [torch.cat([W[src][:, j - src].index_select(0, ids[src].reshape(-1)).view(s, K, D) for src in range(j + 1)], 1)
              for j in range(L)]

    def by_source(parts: Callable[[int, Tensor], list[Tensor]]) -> list[Tensor]:
        got: list[Tensor | None] = [None] * L
        for j in range(L):
            g = out[j].transpose(0, 1).contiguous()  # [s, r, d]
            for src, p in enumerate(parts(j, g)):
                got[src] = p if got[src] is None else got[src].add_(p)  # type: ignore[union-attr]
        return [x for x in got if x is not None]

    def split(p: Tensor) -> list[Tensor]:
        return [p[:, :, i * K : (i + 1) * K] for i in range(p.shape[-1] // K)]

    ways = {
        "stored": lambda: by_source(lambda j, g: split(torch.bmm(g, stored[j].transpose(1, 2)))),
        "per pair": lambda: by_source(lambda j, g: [torch.bmm(g, W[src][:, j - src].index_select(0, ids[src].reshape(-1))
                                                              .view(s, K, D).transpose(1, 2)) for src in range(j + 1)]),
        "per target": lambda: by_source(lambda j, g: split(torch.bmm(g, torch.cat(
            [W[src][:, j - src].index_select(0, ids[src].reshape(-1)).view(s, K, D) for src in range(j + 1)], 1).transpose(1, 2)))),
    }
    results = {}
    for name, way in ways.items():
        best = float("inf")
        for _ in range(args.reps):
            t0 = time.perf_counter()
            results[name] = way()
            best = min(best, time.perf_counter() - t0)
        print(f"{name:10s} {best:.3f} s per block ({s} positions, {r} rows, {args.threads} threads)")
    ref = results["stored"]
    for name, got in results.items():
        worst = max(float((a - b).abs().max()) for a, b in zip(got, ref, strict=True))
        scale = max(float(b.abs().max()) for b in ref)
        print(f"{name:10s} largest difference from stored {worst:.1e} (largest sum {scale:.1e})")


if __name__ == "__main__":
    main()
