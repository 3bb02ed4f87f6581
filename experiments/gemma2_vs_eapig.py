"""acdc's circuit evaluation on Gemma 2 against MIB's (hannamw/EAP-IG's `evaluate_graph`), on the same tiny model.

    python experiments/gemma2_vs_eapig.py [--venv /tmp/eapig-venv] [--circuits 6]

Gemma 2 normalizes each attention output before the residual add, so a destination's input is not a sum
over its edges; EAP-IG's evaluation (the code behind MIB's circuit track) reads, per destination, each
upstream layer's norm of the clean heads' sum plus the ablated edges' differences, and acdc follows the
same rule (README, "Gemma 2 and 3"). This script builds a tiny random Gemma 2 (2 layers, 4 heads, 2
key/value heads, a 4-token sliding window, soft caps, ``query_pre_attn_scalar``) with a vocabulary of
50 tokens, 8 prompt pairs of 7 random tokens, random answers, and random circuits (each edge kept with
probability 0.3-0.9), saves them, runs EAP-IG's side in its own venv
(`experiments/peers/eapig_gemma2_side.py`: TransformerLens 2.18, the model rebuilt from the same
weights) and scores on acdc's side each circuit EAP-IG evaluated (after its own `prune`) with the same
patching ablation. Writes experiments/results/gemma2_eapig.{md,json}.

EAP-IG's venv: ``python3 -m venv V && V/bin/pip install torch==2.13.0 && V/bin/pip install
transformer-lens==2.18.0 pyarrow==21.0.0 "numpy<2" matplotlib && V/bin/pip install --no-deps EAPIG``
where EAPIG is a snapshot of hannamw/EAP-IG with its two ``device='cuda'`` allocations in
``src/eap/*.py`` set to ``model.cfg.device`` (it runs on CPUs then).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import torch

import acdc

RESULTS = Path(__file__).resolve().parent / "results"
SIDE = Path(__file__).resolve().parent / "peers" / "eapig_gemma2_side.py"


def tiny_gemma2(seed: int = 0):
    import transformers as tr

    cfg = tr.Gemma2Config(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, hidden_size=32,
                          intermediate_size=48, vocab_size=50, max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
                          pad_token_id=0, sliding_window=4, query_pre_attn_scalar=16, attn_logit_softcapping=5.0,
                          final_logit_softcapping=3.0)
    torch.manual_seed(seed)
    hf = tr.Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # weights large enough that every edge matters
            p.normal_(0, 0.25)
    return hf


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--venv", type=Path, default=Path("/tmp/eapig-venv"), help="EAP-IG's virtual environment")
    ap.add_argument("--circuits", type=int, default=6)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    hf = tiny_gemma2()
    gen = torch.Generator().manual_seed(1)
    n, pos = 8, 7
    clean, corrupt = torch.randint(1, 50, (n, pos), generator=gen), torch.randint(1, 50, (n, pos), generator=gen)
    answer, wrong = torch.randint(1, 50, (n,), generator=gen), torch.randint(1, 50, (n,), generator=gen)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        hf.save_pretrained(folder / "model")
        model = acdc.load_model(hf)
        g = acdc.Graph.from_model(model)
        circuits = {}
        for k in range(args.circuits):
            frac = 0.3 + 0.6 * k / max(1, args.circuits - 1)
            keep = torch.rand(g.n_edges, generator=gen) < frac
            circuits[f"random {frac:.2f}"] = [e.name for e, m in zip(g.edges, keep.tolist(), strict=True) if m]
        circuits["every edge"] = [e.name for e in g.edges]
        torch.save({"clean": clean, "corrupt": corrupt, "answer": answer, "wrong": wrong}, folder / "inputs.pt")
        (folder / "circuits.json").write_text(json.dumps(circuits))
        proc = subprocess.run([str(args.venv / "bin" / "python"), str(SIDE), str(folder)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"EAP-IG's side failed:\n{proc.stderr[-3000:]}")
        print(proc.stdout.strip())
        theirs = json.loads((folder / "eapig.json").read_text())
    p = acdc.Patcher(model, clean, corrupt, graph=g, ablation="resample")
    rows, worst = [], 0.0
    for name, got in theirs["circuits"].items():
        kept = set(got["edges"])
        ablated = torch.tensor([e.name not in kept for e in g.edges])
        last = p.logits(ablated)  # [n, vocab] at the last position
        ours = (last[torch.arange(n), answer] - last[torch.arange(n), wrong]).tolist()
        diff = max(abs(a - b) for a, b in zip(ours, got["logit_diff"], strict=True))
        worst = max(worst, diff)
        rows.append({"circuit": name, "edges": len(kept), "of": g.n_edges, "acdc_mean": sum(ours) / n,
                     "eapig_mean": sum(got["logit_diff"]) / n, "max_abs_diff": diff, "acdc": ours, "eapig": got["logit_diff"]})
    full = p.clean.logits
    full_ld = (full[torch.arange(n), answer] - full[torch.arange(n), wrong]).mean().item()
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"model": "tiny random Gemma 2 (2 layers, 4 heads, 2 kv heads, d_model 32, window 4, soft caps 5 / 3)",
           "prompts": n, "tokens": pos, "ablation": "patching (resample)", "metric": "logit difference, last token",
           "transformerlens_vs_hf_logits": theirs["tl_vs_hf_max_abs"], "full_model_logit_diff": full_ld, "rows": rows,
           "max_abs_diff": worst}
    (args.out / "gemma2_eapig.json").write_text(json.dumps(doc, indent=1))
    md = ["# Gemma 2 circuits: acdc's evaluation against EAP-IG's (MIB's), same tiny model and prompts", "",
          f"`python experiments/gemma2_vs_eapig.py` ({doc['model']}; {n} prompt pairs of {pos} random tokens; patching "
          "ablation; the logit difference of each prompt at its last token). EAP-IG: hannamw/EAP-IG `evaluate_graph` on "
          "TransformerLens 2.18, in its own venv (`experiments/peers/eapig_gemma2_side.py`); each circuit as EAP-IG "
          "kept it after its own `prune`, scored by acdc's `Patcher.logits` on the same edges. TransformerLens's "
          f"rebuild of the model matches Hugging Face's logits to {theirs['tl_vs_hf_max_abs']:.1e}; the full model's "
          f"mean logit difference is {full_ld:.4f}.", "",
          "| circuit | edges (of all) | acdc: mean logit diff | EAP-IG: mean logit diff | largest per-prompt difference |",
          "|---|---|---|---|---|"]
    md += [f"| {r['circuit']} | {r['edges']} / {r['of']} | {r['acdc_mean']:.5f} | {r['eapig_mean']:.5f} | {r['max_abs_diff']:.1e} |"
           for r in rows]
    md += ["", f"Largest difference over every prompt and circuit: {worst:.1e}."]
    (args.out / "gemma2_eapig.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
