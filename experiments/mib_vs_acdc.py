"""MIB's own evaluation code scores acdc's MIB submission; acdc's CPR / CMD must be the same numbers.

    python experiments/mib_vs_acdc.py [--venv /tmp/eapig-venv] [--mib-repo PATH]

On a tiny random GPT-2 and a tiny random Qwen2 (Hugging Face classes, seeded, weights scaled up so every edge
matters), 12 prompt pairs of random tokens with an answer and a wrong answer each: acdc scores every edge with
EAP-IG-inputs (5 steps, resample ablation, logit difference) and writes MIB's submission layout
(`acdc.export_mib`: ``submission/acdc-eap-ig/ioi_{model}/importances.json``). MIB's side
(`experiments/peers/mib_side.py`, in EAP-IG's venv with hannamw/MIB-circuit-track on the path) loads each file
as MIB's ``run_evaluation.py`` does and runs ``evaluate_area_under_curve`` (patching, MIB's ``logit_diff``),
ranking by |score| and by signed score (MIB's default). acdc's side: `acdc.faithfulness_curve(...,
selection="mib", absolute=...)` on the same prompts. Writes experiments/results/mib_vs_acdc.{md,json}.

MIB_REPO default: the snapshots `fetch github:hannamw/MIB-circuit-track` and `fetch github:hannamw/EAP-IG` leave
under /work/.mirror, checked out into a temporary folder (``git archive``), EAP-IG at the commit MIB's submodule
pins; the venv: EAP-IG's (TransformerLens 2.18; its installed ``eap`` is shadowed by the pinned one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import torch

import acdc

ROOT = Path(__file__).resolve().parent.parent
SIDE = ROOT / "experiments" / "peers" / "mib_side.py"
MIRROR = Path("/work/.mirror/hannamw+MIB-circuit-track/repo")
EAPIG_MIRROR = Path("/work/.mirror/hannamw+EAP-IG/repo")
PRUNE_FIX = "55a2be2d54502bb067db9fc24a3e5c6bf75eab25"  # EAP-IG: "Fix loop condition to correctly compare previous node and edge states"


def tiny(family: str, seed: int = 0):
    import transformers as tr

    if family == "gpt2":
        cfg = tr.GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=60, n_positions=32, bos_token_id=0, eos_token_id=0)
        model_cls = tr.GPT2LMHeadModel
    else:
        cfg = tr.Qwen2Config(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                             intermediate_size=48, vocab_size=60, max_position_embeddings=64, bos_token_id=0,
                             eos_token_id=0, tie_word_embeddings=False)
        model_cls = tr.Qwen2ForCausalLM
    torch.manual_seed(seed)
    hf = model_cls(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" not in name and "ln_" not in name:
                p.normal_(0, 0.3)
    return hf


def mib_checkout(repo: Path | None, tmp: Path, eapig: str) -> Path:
    """MIB's code with its EAP-IG submodule at the commit MIB pins; ``eapig="prune-fix"``: with EAP-IG's later
    ``Graph.prune`` fix (its graph.py at 55a2be2, which differs from the pinned one by the two prune commits
    7754a08 and 55a2be2 only; EAP-IG's newest commit no longer runs MIB's code). The side puts both first on the
    path."""
    if repo is not None:
        return repo
    dest = tmp / f"mib-{eapig}"
    (dest / "EAP-IG").mkdir(parents=True)

    def extract(mirror: Path, commit: str, into: Path) -> None:
        tar = subprocess.run(["git", "-C", str(mirror), "archive", commit], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)

    extract(MIRROR, "HEAD", dest)
    pinned = subprocess.run(["git", "-C", str(MIRROR), "ls-tree", "HEAD", "EAP-IG"], capture_output=True, text=True,
                            check=True).stdout.split()[2]
    extract(EAPIG_MIRROR, pinned, dest / "EAP-IG")
    if eapig == "prune-fix":
        fixed = subprocess.run(["git", "-C", str(EAPIG_MIRROR), "show", f"{PRUNE_FIX}:src/eap/graph.py"], capture_output=True,
                               check=True).stdout
        (dest / "EAP-IG" / "src" / "eap" / "graph.py").write_bytes(fixed)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--venv", type=Path, default=Path("/tmp/eapig-venv"), help="EAP-IG's virtual environment")
    ap.add_argument("--mib-repo", type=Path, default=None, help="a checkout of hannamw/MIB-circuit-track")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(1)
    n, pos = 12, 7
    rows, ours = [], {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        scores = {}
        for family in ("gpt2", "qwen2"):
            hf = tiny(family)
            hf.save_pretrained(tmp / family / "model")
            clean, corrupt = torch.randint(1, 60, (n, pos), generator=gen), torch.randint(1, 60, (n, pos), generator=gen)
            answer, wrong = torch.randint(1, 60, (n,), generator=gen), torch.randint(1, 60, (n,), generator=gen)
            torch.save({"clean": clean, "corrupt": corrupt, "answer": answer, "wrong": wrong}, tmp / family / "inputs.pt")
            model = acdc.load_model(hf)
            task = acdc.Task.from_tokens(clean, corrupt, correct=answer, incorrect=wrong, metric="logit_diff")
            s = acdc.attribute(model, task, method="eap-ig-inputs", steps=5, progress=False)
            scores[f"ioi_{family}"] = s
            for absolute in (True, False):
                curve = acdc.faithfulness_curve(model, task, s, selection="mib", absolute=absolute, progress=False)
                ours[f"{family} absolute={absolute}"] = {"faithfulness": list(curve.values), "cpr": curve.cpr,
                                                         "cmd": curve.cmd, "n_edges": list(curve.n_edges)}
        acdc.export_mib(tmp / "submission", scores, method="acdc-eap-ig")
        theirs = {}
        for eapig in ("pinned", "prune-fix") if args.mib_repo is None else ("given",):
            repo = mib_checkout(args.mib_repo, tmp, eapig)
            proc = subprocess.run([str(args.venv / "bin" / "python"), str(SIDE), str(repo), str(tmp)], capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                raise SystemExit(f"MIB's side failed:\n{proc.stderr[-3000:]}")
            print(proc.stdout.strip())
            theirs |= {f"{key}, EAP-IG {eapig}": got for key, got in json.loads((tmp / "mib.json").read_text()).items()}
    worst = 0.0
    for key, got in theirs.items():
        mine = ours[key.split(", EAP-IG")[0]]
        diff = max(abs(a - b) for a, b in zip(mine["faithfulness"], got["faithfulness"], strict=True))
        worst = max(worst, diff, abs(mine["cpr"] - got["cpr"]), abs(mine["cmd"] - got["cmd"]))
        rows.append({"curve": key, "acdc_cpr": mine["cpr"], "mib_cpr": got["cpr"], "acdc_cmd": mine["cmd"], "mib_cmd": got["cmd"],
                     "max_abs_diff_faithfulness": diff, "acdc_edges": mine["n_edges"], "mib_edges": got["weighted_edge_counts"],
                     "acdc": mine["faithfulness"], "mib": got["faithfulness"]})
    doc = {"models": "tiny random GPT-2 (2 layers, 4 heads, d_model 32) and Qwen2 (2 layers, 4 heads, 2 kv heads, d_model 32)",
           "prompts": n, "tokens": pos, "scores": "acdc EAP-IG-inputs, 5 steps", "ablation": "patching (resample)",
           "metric": "logit difference, last token", "rows": rows, "max_abs_diff": worst}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mib_vs_acdc.json").write_text(json.dumps(doc, indent=1))
    md = ["# MIB's evaluation code on acdc's MIB submission", "",
          "`python experiments/mib_vs_acdc.py`: acdc writes MIB's submission layout (`acdc.export_mib`, EAP-IG-inputs scores, "
          f"5 steps) for {doc['models']}, {n} prompt pairs of {pos} random tokens; MIB's `evaluate_area_under_curve` "
          "(hannamw/MIB-circuit-track, in EAP-IG's venv, TransformerLens 2.18, patching, its `logit_diff`) scores the files; "
          "acdc's `faithfulness_curve(selection=\"mib\")` scores the same scores on the same prompts.", "",
          "| curve | CPR acdc | CPR MIB | CMD acdc | CMD MIB | max abs diff of the 10 faithfulness values | edges per point (acdc = MIB) |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        same = "yes" if [float(x) for x in r["acdc_edges"]] == [float(x) for x in r["mib_edges"]] else f"no: {r['acdc_edges']} vs {r['mib_edges']}"
        md.append(f"| {r['curve']} | {r['acdc_cpr']:.6f} | {r['mib_cpr']:.6f} | {r['acdc_cmd']:.6f} | {r['mib_cmd']:.6f} | "
                  f"{r['max_abs_diff_faithfulness']:.1e} | {same} |")
    md += ["", f"Largest difference anywhere: {worst:.1e}.", "",
           "EAP-IG pinned: the commit MIB's submodule pins (7af394a); prune-fix: the same with EAP-IG's later `Graph.prune` "
           "fix (graph.py of 55a2be2: commits 7754a08 'Fix prune() to remove nodes with no outgoing edges' and 55a2be2 "
           "'Fix loop condition to correctly compare previous node and edge states', July 2025; EAP-IG's newest commit "
           "dropped an argument MIB's code passes, so it cannot run MIB's evaluation). Where the edge counts differ, the "
           "pinned prune left edges that lead nowhere and counted them; they change no faithfulness value here."]
    (args.out / "mib_vs_acdc.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
