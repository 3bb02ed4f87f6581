"""MIB's side of `experiments/mib_vs_acdc.py`, run in EAP-IG's venv with MIB's circuit-track code on the path.

    VENV/bin/python experiments/peers/mib_side.py MIB_REPO DIR

MIB_REPO: a checkout of hannamw/MIB-circuit-track (its ``MIB_circuit_track`` package) with its EAP-IG submodule
in MIB_REPO/EAP-IG (both go first on the path). DIR holds what the acdc
side wrote, per model NAME: ``NAME/model/`` (a tiny random Hugging Face model, `save_pretrained`),
``NAME/inputs.pt`` (clean and corrupt token ids [n, pos], answer and wrong-answer ids [n]) and a MIB submission
``submission/acdc-eap-ig/{task}_{NAME}/importances.json`` written by `acdc.export_mib`. The model is rebuilt as
a TransformerLens `HookedTransformer` (config written out as TransformerLens writes its own for the family,
weights by its converter), the importance file loaded with EAP-IG's ``Graph.from_json`` (what MIB's
``run_evaluation.py`` does), and scored by MIB's ``evaluate_area_under_curve`` with MIB's ``logit_diff`` metric
(``get_metric``; patching ablation), with ``absolute`` True and False. Writes DIR/mib.json: per model and
``absolute``, MIB's faithfulness at each fraction, its weighted edge counts, CPR (area_under) and CMD
(area_from_1). Token ids go straight in (EAP-IG tokenizes strings; ``tokenize_plus`` passes ids through).
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

sys.path[:0] = [str(Path(sys.argv[1]) / "EAP-IG" / "src"), sys.argv[1]]  # MIB's code and the EAP-IG commit it pins, first

import eap.evaluate as evaluate  # noqa: E402
import torch  # noqa: E402
from eap.graph import Graph  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402
from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights, convert_qwen2_weights  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def hooked(folder: Path) -> HookedTransformer:
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    c = hf.config
    if c.model_type == "gpt2":
        cfg = HookedTransformerConfig(
            d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=4 * c.n_embd, n_layers=c.n_layer,
            n_ctx=c.n_positions, eps=c.layer_norm_epsilon, d_vocab=c.vocab_size, act_fn="gelu_new", normalization_type="LN",
            positional_embedding_type="standard", original_architecture="GPT2LMHeadModel", device="cpu", dtype=torch.float32)
        weights = convert_gpt2_weights(hf, cfg)
    else:  # Qwen2, as TransformerLens's own config for Qwen2ForCausalLM
        cfg = HookedTransformerConfig(
            d_model=c.hidden_size, d_head=c.hidden_size // c.num_attention_heads, n_heads=c.num_attention_heads,
            n_key_value_heads=c.num_key_value_heads, d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=64,
            eps=c.rms_norm_eps, d_vocab=c.vocab_size, act_fn=c.hidden_act, use_attn_scale=True, normalization_type="RMS",
            positional_embedding_type="rotary", rotary_base=int(c.rope_theta), rotary_adjacent_pairs=False,
            rotary_dim=c.hidden_size // c.num_attention_heads, final_rms=True, gated_mlp=True,
            original_architecture="Qwen2ForCausalLM", device="cpu", dtype=torch.float32)
        weights = convert_qwen2_weights(hf, cfg)
    model = HookedTransformer(cfg)
    model.load_state_dict(weights, strict=False)
    # what MIB's run_evaluation.py sets
    model.cfg.use_split_qkv_input = True
    model.cfg.use_attn_result = True
    model.cfg.use_hook_mlp_in = True
    model.cfg.ungroup_grouped_query_attention = True
    return model


def main(repo: Path, folder: Path) -> None:
    import eap

    assert Path(eap.__file__).is_relative_to(repo), f"the pinned EAP-IG is not the one imported: {eap.__file__}"
    from MIB_circuit_track.evaluation import evaluate_area_under_curve
    from MIB_circuit_track.metrics import get_metric

    torch.manual_seed(0)
    out: dict[str, dict[str, object]] = {}
    for path in sorted((folder / "submission" / "acdc-eap-ig").iterdir()):
        task, name = path.name.split("_")
        model = hooked(folder / name / "model")
        data = torch.load(folder / name / "inputs.pt")
        clean, corrupt, good, bad = data["clean"], data["corrupt"], data["answer"], data["wrong"]
        n, pos = clean.shape

        def tokenize_plus(_model, tokens, pos=pos):  # ids in, no padding: every prompt is pos tokens
            return tokens, torch.ones_like(tokens), torch.full((len(tokens),), pos), pos

        evaluate.tokenize_plus = tokenize_plus
        labels = torch.stack([good, bad], 1)
        loader = DataLoader(list(zip(clean, corrupt, labels, strict=True)), batch_size=n,
                            collate_fn=lambda rows: tuple(torch.stack(x) for x in zip(*rows, strict=True)))
        metric = partial(get_metric("logit_diff", task, None, model), mean=False, loss=False)
        for absolute in (True, False):
            graph = Graph.from_json(str(path / "importances.json"))
            counts, area_under, area_from_1, average, faith = evaluate_area_under_curve(
                model, graph, loader, metric, quiet=True, absolute=absolute, intervention="patching")
            out[f"{name} absolute={absolute}"] = {"weighted_edge_counts": counts, "cpr": area_under, "cmd": area_from_1,
                                                  "average": average, "faithfulness": faith, "n_edges": len(graph.edges)}
    (folder / "mib.json").write_text(json.dumps(out, indent=1))
    print(f"MIB side: {len(out)} curves")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
