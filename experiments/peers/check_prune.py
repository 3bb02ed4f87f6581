"""acdc's `prune` against circuit-tracer's `prune_graph` on the random graphs `circuit_tracer_prune.py` saved
(run by experiments/peers/check_prune.sh): the same kept nodes and edges, and the same cumulative influence.
Writes experiments/results/circuit_tracer_prune.md."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from acdc.attribution_graphs import AttributionGraph, prune

N_LAYERS = 3


def main() -> None:
    out = Path(sys.argv[1])
    rows, same = [], True
    for path in sorted(out.glob("prune_*.safetensors")):
        t = load_file(path)
        g = AttributionGraph(t["tokens"], ["x"] * len(t["tokens"]), t["features"], torch.ones(len(t["features"])),
                             t["logit_tokens"], t["logit_probs"], t["adjacency"], n_layers=N_LAYERS)
        for k, (node_t, edge_t) in enumerate(t["thresholds"].tolist()):
            p = prune(g, node_threshold=node_t, edge_threshold=edge_t)
            nodes = torch.equal(p.node_mask, t[f"node_mask_{k}"])
            edges = torch.equal(p.edge_mask, t[f"edge_mask_{k}"])
            cum = float((p.cumulative - t[f"cumulative_{k}"]).abs().max())
            same &= nodes and edges and cum < 1e-5
            rows.append(f"| {path.stem} | {node_t} / {edge_t} | {int(t[f'node_mask_{k}'].sum())} | {int(t[f'edge_mask_{k}'].sum())} "
                        f"| {nodes} | {edges} | {cum:.1e} |")
    version = (out / "version.txt").read_text().strip() if (out / "version.txt").exists() else "circuit-tracer"
    text = "\n".join([
        f"# acdc's `prune` against {version}'s `prune_graph` on random graphs", "",
        "`bash experiments/peers/check_prune.sh`: small random attribution graphs (3 layers, 5 positions, 40 features,",
        "3 logits; effects only up the layers, half zero), pruned by both at four (node, edge) thresholds.", "",
        "| graph | thresholds | nodes kept (circuit-tracer) | edges kept | same nodes | same edges | max |cumulative diff| |",
        "|---|---|---|---|---|---|---|", *rows, "", f"All the same: {same}", ""])
    Path("experiments/results/circuit_tracer_prune.md").write_text(text)
    print(text)
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
