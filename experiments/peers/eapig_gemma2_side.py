"""EAP-IG's side of `experiments/gemma2_vs_eapig.py`, run in EAP-IG's own venv (TransformerLens 2.18).

    VENV/bin/python experiments/peers/eapig_gemma2_side.py DIR

DIR holds what the acdc side wrote: ``model/`` (a tiny random Gemma 2, Hugging Face `save_pretrained`),
``inputs.pt`` (clean and corrupt token ids [n, pos], answer and wrong-answer ids [n]) and ``circuits.json``
(name -> edge names). The model is rebuilt as a TransformerLens `HookedTransformer` (its config written out
as TransformerLens's own Gemma 2 entries are, with the tiny model's sizes; weights by TransformerLens's
`convert_gemma_weights`), each circuit is set on EAP-IG's `Graph` and scored by its `evaluate_graph`
(patching ablation, the logit difference of each prompt). Writes DIR/eapig.json: per circuit, the edges
EAP-IG kept after its own `prune` and the per-prompt logit differences; and the full model's logits.
Token ids go straight in (EAP-IG tokenizes strings; here its `tokenize_plus` passes ids through).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import eap.evaluate as evaluate
import torch
from eap.graph import Graph
from torch.utils.data import DataLoader
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import convert_gemma_weights
from transformers import AutoModelForCausalLM


def main(folder: Path) -> None:
    torch.manual_seed(0)
    # eager attention: Hugging Face 4.x's sdpa path skips Gemma 2's soft cap
    hf = AutoModelForCausalLM.from_pretrained(folder / "model", torch_dtype=torch.float32, attn_implementation="eager").eval()
    c = hf.config
    types = {"sliding_attention": "local", "full_attention": "global"}
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, d_vocab=c.vocab_size,
        act_fn="gelu_pytorch_tanh", normalization_type="RMS", rotary_base=c.rope_theta, rotary_dim=c.head_dim,
        positional_embedding_type="rotary", use_attn_scale=True, attn_scale=float(c.query_pre_attn_scalar) ** 0.5,
        n_key_value_heads=c.num_key_value_heads, window_size=c.sliding_window, use_local_attn=True,
        attn_types=[types[t] for t in c.layer_types], attn_scores_soft_cap=c.attn_logit_softcapping,
        output_logits_soft_cap=c.final_logit_softcapping, gated_mlp=True, final_rms=True,
        use_normalization_before_and_after=True, original_architecture="Gemma2ForCausalLM", device="cpu",
        dtype=torch.float32)
    model = HookedTransformer(cfg)
    model.load_state_dict(convert_gemma_weights(hf, cfg), strict=False)
    model.cfg.use_split_qkv_input = True
    model.cfg.use_attn_result = True
    model.cfg.use_hook_mlp_in = True
    model.cfg.ungroup_grouped_query_attention = True
    data = torch.load(folder / "inputs.pt")
    clean, corrupt, good, bad = data["clean"], data["corrupt"], data["answer"], data["wrong"]
    with torch.no_grad():
        full = model(clean)
        hf_logits = hf(clean).logits
    n, pos = clean.shape

    def tokenize_plus(_model, tokens):  # ids in, no padding: every prompt is pos tokens
        return tokens, torch.ones_like(tokens), torch.full((len(tokens),), pos), pos

    evaluate.tokenize_plus = tokenize_plus

    def logit_diff(logits, _clean_logits, lengths, labels):
        last = logits[torch.arange(len(logits)), lengths - 1]
        return last.gather(1, labels[:, :1])[:, 0] - last.gather(1, labels[:, 1:])[:, 0]

    labels = torch.stack([good, bad], 1)
    loader = DataLoader(list(zip(clean, corrupt, labels, strict=True)), batch_size=n,
                        collate_fn=lambda rows: tuple(torch.stack(x) for x in zip(*rows, strict=True)))
    out = {"tl_vs_hf_max_abs": float((full - hf_logits).abs().max()), "full_last": full[:, -1].tolist(), "circuits": {}}
    for name, edges in json.loads((folder / "circuits.json").read_text()).items():
        graph = Graph.from_model(model)
        graph.in_graph[:] = False
        graph.nodes_in_graph[:] = True
        for e in edges:
            graph.edges[e].in_graph = True
        scores = evaluate.evaluate_graph(model, graph, loader, logit_diff, quiet=True, intervention="patching")
        kept = [e for e, edge in graph.edges.items() if edge.in_graph]
        out["circuits"][name] = {"edges": kept, "logit_diff": scores.tolist()}
    (folder / "eapig.json").write_text(json.dumps(out))
    print(f"eapig side: {len(out['circuits'])} circuits, TransformerLens vs Hugging Face logits {out['tl_vs_hf_max_abs']:.2e}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
