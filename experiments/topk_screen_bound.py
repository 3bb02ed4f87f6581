"""Could an ACDC edge test on a TopK feature graph skip the whole encoder? How far a bound gets.

    python experiments/topk_screen_bound.py [--model gpt2-shape|smollm2] [--edges 3] [--layer 1]

A TopK feature is active only if its pre-activation is among the k largest of all the layer's features,
so an exact edge test runs the whole encoder at every changed layer (as wide as the MLP or wider: the
1.7-2x of `feature_edge_test_time.py`). The only exact shortcut is a bound: from a row ``x0`` where every
feature was encoded (the reference circuit's input), the other features' pre-activations move by at most
``band = max_j |pre_j(x) - pre_j(x0)|`` on the candidate's row ``x``, and so does each of their order
statistics; a chosen feature whose pre-activation clears the needed one by more than ``band`` (or is <= 0)
is decided without the others. This script measures the fraction of rows that stay undecided, with

- ``exact``: the band computed from every feature (the best any such bound can do; not cheaper itself),
- ``cauchy-schwarz``: ``max_j |W_enc[:, j]| * |x - x0|``, what a screen could compute cheaply,

over the edge tests of ``--edges`` edges into ``--layer`` (the full circuit minus one edge), every featured
layer the test changes. Transcoders, model and prompts as in `feature_edge_test_time.py`. Prints a table.
"""

from __future__ import annotations

import argparse

import torch
from feature_edge_test_time import model_and_task, random_transcoders

import acdc
from acdc.api import prepare
from acdc.feature_nodes import TranscoderUnits
from acdc.model import Transformer


def undecided(pre0: torch.Tensor, pre: torch.Tensor, idx: torch.Tensor, k: int, band: torch.Tensor) -> torch.Tensor:
    """[R] whether some chosen feature's membership of the top k on rows with pre-activations ``pre`` [R, n] is
    left open by knowing every feature at ``pre0`` [R, n] and a per-row bound ``band`` [R] on the others' moves."""
    others = torch.ones(pre.shape[1], dtype=torch.bool)
    others[idx] = False
    s = pre0[:, others].topk(k, dim=-1).values  # [R, k] the others' order statistics at x0
    s = torch.cat([torch.full_like(s[:, :1], torch.inf), s], dim=1)  # q = 0: never in
    c = pre[:, idx]  # [R, m] the chosen features, exact
    above = (c[:, None, :] > c[:, :, None]).sum(-1)  # chosen features above each
    need = s.gather(1, (k - above).clamp(0, k))
    on, off = c > need + band[:, None], c < need - band[:, None]
    return (~(on | off) & (c > 0)).any(-1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", choices=["gpt2-shape", "smollm2"], default="gpt2-shape")
    ap.add_argument("--edges", type=int, default=3)
    ap.add_argument("--layer", type=int, default=1, help="destination layer of the edges tested")
    ap.add_argument("--top", type=int, default=64)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    model, task = model_and_task(args.model)
    tf = Transformer.from_bridge(model)
    ts = random_transcoders(tf, "topk", 8 * tf.arch.d_model, 32)
    chosen = acdc.active_features(model, ts, task, top=args.top)
    g = acdc.Graph.from_model(model, transcoders=ts, features=chosen)
    p, metric, batch = prepare(model, task, metric="logit_diff", graph=g, transcoders=ts)
    seen: list[tuple[int, torch.Tensor]] = []
    real = TranscoderUnits.activations

    def record(self: TranscoderUnits, tf: Transformer, layer: int, x: torch.Tensor) -> torch.Tensor:
        if not x.requires_grad:
            seen.append((layer, tf.mlp_input(layer, x).detach()))
        return real(self, tf, layer, x)

    TranscoderUnits.activations = record  # type: ignore[method-assign]
    vocab, narrowed = metric.narrow(batch)
    state = p.reference_state(vocab)
    ref = {layer: x for layer, x in seen}  # the last call per layer: the clean (full circuit) run's inputs
    plain = acdc.Graph.from_model(model)
    edges = [e for e in plain.edges if e.dst.node.layer == args.layer and e.src.name in g.src_index
             and e.dst.node.name != "logits"][-args.edges:]
    tally: dict[str, list[float]] = {"exact": [], "cauchy-schwarz": []}
    moved: list[float] = []
    for e in edges:
        seen.clear()
        cand = state.keep.clone()
        cand[g.dst_index[e.dst.name], g.src_index[e.src.name]] = False
        metric.loss(state.propagate(cand).logits[0], narrowed)
        for layer, x in seen:
            x0 = ref[layer]
            if x.shape[-3:] != x0.shape[-3:]:
                continue  # read at the answer rows only
            t = ts[layer]
            W, b = t.W_enc.detach(), t.b_enc.detach()
            xr, x0r = x.reshape(-1, x.shape[-1]), x0.reshape(-1, x.shape[-1])
            pre, pre0 = xr @ W + b, x0r @ W + b
            idx = torch.tensor(chosen[layer])
            others = torch.ones(W.shape[1], dtype=torch.bool)
            others[idx] = False
            changed = (xr != x0r).any(-1)
            if not bool(changed.any()):
                continue
            exact = (pre - pre0)[:, others].abs().amax(-1)
            cs = W[:, others].norm(dim=0).max() * (xr - x0r).norm(dim=-1)
            for name, band in (("exact", exact), ("cauchy-schwarz", cs)):
                tally[name].append(float(undecided(pre0[changed], pre[changed], idx, t.cfg.k or 0, band[changed]).float().mean()))
            moved.append(float(((xr - x0r).norm(dim=-1) / x0r.norm(dim=-1))[changed].median()))
    print(f"{args.model}: {len(edges)} edge tests into layer {args.layer}, {len(moved)} changed featured layers; "
          f"median relative move of the MLP input {torch.tensor(moved).median():.4f}")
    print("| band | rows left undecided (mean over layers and tests) |\n|---|---|")
    for name, v in tally.items():
        print(f"| {name} | {sum(v) / max(len(v), 1):.1%} |")


if __name__ == "__main__":
    main()
