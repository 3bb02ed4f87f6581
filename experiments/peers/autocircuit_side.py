"""AutoCircuit's side of experiments/bench.py; runs inside AutoCircuit's own virtual environment.

    VENV/bin/python experiments/peers/autocircuit_side.py --data DIR --what eap|acdc|sweep|decisions|edge-pruning

Reads the model (a Hugging Face GPT-2 config and state dict) and the token batches that
bench.py wrote to DIR, builds AutoCircuit's patchable model the way its docs do
(TransformerLens 1.19 HookedTransformer with the weights converted, no folding), times the
requested measurement and prints one JSON line. Only AutoCircuit's public functions are used
for EAP (`mask_gradient_prune_scores`) and the sweep (`run_circuits`); the ACDC step is the
inner loop of `acdc_prune_scores` (set one edge's mask, rerun from that edge's layer, KL),
timed for chosen edges, because that function always walks all edges. Edge Pruning's peer is
`subnetwork_probing_prune_scores` (hard-concrete edge masks trained on KL to the clean model,
``tree_optimisation=True``: the clean input with masked edges ablated, as Edge Pruning does).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch as t


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def load(data: Path, name: str):
    from auto_circuit.utils.graph_utils import patchable_model
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_gpt2_weights
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(**json.loads((data / f"{name}.config.json").read_text()))
    hf = GPT2LMHeadModel(hf_cfg)
    hf.load_state_dict(t.load(data / f"{name}.pt"), strict=False)
    cfg = HookedTransformerConfig(
        n_layers=hf_cfg.n_layer, d_model=hf_cfg.n_embd, n_ctx=hf_cfg.n_positions, d_head=hf_cfg.n_embd // hf_cfg.n_head,
        n_heads=hf_cfg.n_head, d_mlp=hf_cfg.n_inner or 4 * hf_cfg.n_embd, d_vocab=hf_cfg.vocab_size,
        act_fn=hf_cfg.activation_function, normalization_type="LN", eps=hf_cfg.layer_norm_epsilon,
        positional_embedding_type="standard", original_architecture="GPT2LMHeadModel", default_prepend_bos=False,
    )
    model = HookedTransformer(cfg)
    model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    del hf
    batch = t.load(data / f"{name}.tokens.pt")
    seq_len = batch["clean"].shape[1]
    pm = patchable_model(model, factorized=True, slice_output="last_seq", seq_len=None, separate_qkv=True,
                         device=t.device("cpu"))
    return pm, batch, seq_len


def loader(batch: dict, seq_len: int):
    from auto_circuit.data import PromptDataLoader, PromptDataset

    ds = PromptDataset(batch["clean"], batch["corrupt"], [a[None] for a in batch["correct"]],
                       [a[None] for a in batch["incorrect"]])
    return PromptDataLoader(ds, seq_len=seq_len, diverge_idx=0, batch_size=len(ds), shuffle=False)


def edge_name(edge) -> str:
    """AutoCircuit's edge as acdc / EAP-IG names it."""
    def node(n: str) -> str:
        if n == "Resid Start":
            return "input"
        if n == "Resid End":
            return "logits"
        if n.startswith("MLP "):
            return f"m{n.split()[1]}"
        parts = n[1:].split(".")
        base = f"a{parts[0]}.h{parts[1]}"
        return base + (f"<{parts[2].lower()}>" if len(parts) == 3 else "")
    return f"{node(edge.src.name)}->{node(edge.dest.name)}"


def eap(pm, batch, seq_len) -> dict:
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores

    dl = loader(batch, seq_len)
    t0 = time.perf_counter()
    ps = mask_gradient_prune_scores(pm, dl, None, grad_function="logit", answer_function="avg_diff", mask_val=0.0)
    seconds = time.perf_counter() - t0
    scores = {edge_name(e): float(e.prune_score(ps)) for e in pm.edges}
    return {"seconds": seconds, "scores": scores}


def acdc_step(pm, batch, seq_len, layers: list[int], n_edges: int) -> dict:
    """Seconds per ACDC edge test (full circuit: every mask 0, the edge's mask set and reset)."""
    from auto_circuit.utils.ablation_activations import src_ablations
    from auto_circuit.utils.graph_utils import patch_mode, set_all_masks
    from auto_circuit.utils.tensor_ops import multibatch_kl_div
    from torch.nn.functional import log_softmax

    clean, corrupt = batch["clean"], batch["corrupt"]
    out_slice = pm.out_slice
    patch_outs = src_ablations(pm, corrupt)
    src_outs = src_ablations(pm, clean)
    with t.inference_mode():
        clean_out = pm(clean)[out_slice]
        _, toks, short_embd, attn_mask = pm.input_to_embed(clean)
        _, cache = pm.run_with_cache(clean)
        resids = [cache[f"blocks.{i}.hook_resid_pre"].clone() for i in range(pm.cfg.n_layers)]
        del cache
    clean_logprobs = log_softmax(clean_out, dim=-1)
    edges = sorted(pm.edges, key=lambda e: e.dest.layer, reverse=True)  # acdc_prune_scores' order
    result = {}
    set_all_masks(pm, val=0.0)
    with patch_mode(pm, patch_outs, curr_src_outs=src_outs):
        for layer in layers:
            chosen = [e for e in edges if int(e.dest.module_name.split(".")[1]) == layer][:n_edges]

            def step(edge) -> float:
                edge.patch_mask(pm).data[edge.patch_idx] = 1.0
                with t.inference_mode():
                    start = int(edge.dest.module_name.split(".")[1])
                    out = pm(resids[start], start_at_layer=start, tokens=toks, shortformer_pos_embed=short_embd,
                             attention_mask=attn_mask)[out_slice]
                faith = multibatch_kl_div(log_softmax(out, dim=-1), clean_logprobs).item()
                edge.patch_mask(pm).data[edge.patch_idx] = 0.0  # kept: the full circuit stays
                return faith

            step(chosen[0])  # warm-up
            t0 = time.perf_counter()
            for e in chosen:
                step(e)
            sec = (time.perf_counter() - t0) / len(chosen)
            result[str(layer)] = {"s_per_edge": sec, "edges_per_s": 1 / sec, "edges_timed": len(chosen)}
    return result


def sweep(pm, batch, seq_len, sizes: list[int], ablation: str = "resample") -> dict:
    """run_circuits at each circuit size (edges kept by EAP score), and the logit difference."""
    from auto_circuit.prune import run_circuits
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
    from auto_circuit.types import AblationType, PatchType
    from auto_circuit.utils.tensor_ops import batch_avg_answer_diff

    dl = loader(batch, seq_len)
    ps = mask_gradient_prune_scores(pm, dl, None, grad_function="logit", answer_function="avg_diff", mask_val=0.0)
    ps = {k: v.abs() for k, v in ps.items()}
    t0 = time.perf_counter()
    kind = {"resample": AblationType.RESAMPLE, "mean": AblationType.TOKENWISE_MEAN_CORRUPT}[ablation]
    outs = run_circuits(pm, dl, sizes, ps, patch_type=PatchType.TREE_PATCH, ablation_type=kind)
    b = next(iter(dl))
    values = {str(n): float(batch_avg_answer_diff(outs[n][b.key], b)) for n in sizes}
    return {"seconds": time.perf_counter() - t0, "logit_diff": values}


def edge_pruning(pm, batch, seq_len, steps: int) -> dict:
    """Seconds of ``steps`` training steps of AutoCircuit's learned edge masks (one batch: a step per epoch)."""
    import importlib

    # auto-circuit 1.0.1 calls t.optim.adam.Adam; torch 2.13's torch.optim no longer has its submodules as attributes
    t.optim.adam = importlib.import_module("torch.optim.adam")  # type: ignore[attr-defined]
    from auto_circuit.prune_algos.subnetwork_probing import subnetwork_probing_prune_scores

    dl = loader(batch, seq_len)
    t0 = time.perf_counter()
    subnetwork_probing_prune_scores(pm, dl, None, learning_rate=0.1, epochs=steps, regularize_lambda=10,
                                    mask_fn="hard_concrete", tree_optimisation=True, faithfulness_target="kl_div")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "s_per_step": seconds / steps, "steps": steps}


def decisions(pm, batch, seq_len, threshold: float) -> dict:
    """The edges AutoCircuit's ACDC removes at one threshold (KL, last position)."""
    from auto_circuit.prune_algos.ACDC import acdc_prune_scores

    mant, exp = f"{threshold:e}".split("e")
    assert float(mant) == int(float(mant)), "threshold must be a * 10^b with integer a"
    dl = loader(batch, seq_len)
    t0 = time.perf_counter()
    ps = acdc_prune_scores(pm, dl, None, tao_exps=[int(exp)], tao_bases=[int(float(mant))])
    removed = sorted(edge_name(e) for e in pm.edges if float(e.prune_score(ps)) != float("inf"))
    return {"seconds": time.perf_counter() - t0, "removed": removed, "n_edges": len(pm.edges)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--what", choices=["eap", "acdc", "sweep", "decisions", "edge-pruning"], required=True)
    ap.add_argument("--model", default="gpt2small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, nargs="+", default=[11, 6, 0])
    ap.add_argument("--edges", type=int, default=10)
    ap.add_argument("--sizes", type=int, nargs="+", default=[])
    ap.add_argument("--threshold", type=float, default=1e-3)
    ap.add_argument("--ablation", choices=["resample", "mean"], default="resample")
    ap.add_argument("--ep-steps", type=int, default=5)
    args = ap.parse_args()
    t.set_num_threads(args.threads)
    pm, batch, seq_len = load(args.data, args.model)
    if args.what == "eap":
        out = eap(pm, batch, seq_len)
    elif args.what == "acdc":
        out = acdc_step(pm, batch, seq_len, args.layers, args.edges)
    elif args.what == "edge-pruning":
        out = edge_pruning(pm, batch, seq_len, args.ep_steps)
    elif args.what == "sweep":
        out = sweep(pm, batch, seq_len, args.sizes, args.ablation)
    else:
        out = decisions(pm, batch, seq_len, args.threshold)
    out["peak_rss_gb"] = peak_rss_gb()
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
