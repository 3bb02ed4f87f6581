"""Run in circuit-tracer's venv (experiments/peers/check_prune.sh): prune small random attribution graphs
with circuit-tracer's own `prune_graph` and save each graph with its masks to OUT_DIR/prune_SEED.safetensors.

Each graph has circuit-tracer's node order (features, error nodes per layer and position, tokens, logits) and
random direct effects that only point up the layers (tokens -> layer 0 -> ... -> logits), half of them zero."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from circuit_tracer.attribution.targets import LogitTarget
from circuit_tracer.graph import Graph, prune_graph
from safetensors.torch import save_file
from transformer_lens import HookedTransformerConfig

N_LAYERS, N_POS, N_FEATURES, N_LOGITS, VOCAB = 3, 5, 40, 3, 50
THRESHOLDS = [(0.5, 0.7), (0.8, 0.98), (0.95, 0.9), (1.0, 0.5)]


def random_graph(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    layers = torch.randint(0, N_LAYERS, (N_FEATURES,), generator=gen).sort().values
    feats = torch.stack([layers, torch.randint(0, N_POS, (N_FEATURES,), generator=gen),
                         torch.randint(0, 100, (N_FEATURES,), generator=gen)], 1)
    level = torch.cat([layers + 1, torch.arange(N_LAYERS).repeat_interleave(N_POS) + 1,  # errors of layer l: level l + 1
                       torch.zeros(N_POS, dtype=torch.long), torch.full((N_LOGITS,), N_LAYERS + 1)])
    n = len(level)
    allowed = level[None, :] < level[:, None]  # rows targets, columns sources
    values = torch.randn(n, n, generator=gen) * (torch.rand(n, n, generator=gen) < 0.5)
    probs = torch.rand(N_LOGITS, generator=gen)
    return {"adjacency": (values * allowed).float(), "features": feats, "logit_probs": probs / probs.sum() * 0.9,
            "tokens": torch.randint(0, VOCAB, (N_POS,), generator=gen), "logit_tokens": torch.arange(N_LOGITS)}


def main() -> None:
    out = Path(sys.argv[1])
    cfg = HookedTransformerConfig(n_layers=N_LAYERS, d_model=8, d_head=4, n_heads=2, d_mlp=16, n_ctx=16, d_vocab=VOCAB,
                                  act_fn="relu", model_name="random-graph")
    for seed in range(int(sys.argv[2]) if len(sys.argv) > 2 else 5):
        t = random_graph(seed)
        graph = Graph(input_string="x", input_tokens=t["tokens"], active_features=t["features"], adjacency_matrix=t["adjacency"],
                      cfg=cfg, selected_features=torch.arange(N_FEATURES), activation_values=torch.ones(N_FEATURES),
                      logit_targets=[LogitTarget(token_str=str(int(i)), vocab_idx=int(i)) for i in t["logit_tokens"]],
                      logit_probabilities=t["logit_probs"], vocab_size=VOCAB)
        for k, (node_t, edge_t) in enumerate(THRESHOLDS):
            node_mask, edge_mask, cumulative = prune_graph(graph, node_t, edge_t)
            t[f"node_mask_{k}"], t[f"edge_mask_{k}"], t[f"cumulative_{k}"] = node_mask, edge_mask, cumulative
        t["thresholds"] = torch.tensor(THRESHOLDS, dtype=torch.float64)
        save_file({k: v.contiguous() for k, v in t.items()}, out / f"prune_{seed}.safetensors")


if __name__ == "__main__":
    main()
