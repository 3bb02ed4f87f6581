"""Why do SmolLM2's IOI circuits fall under mean ablation? The same circuits scored under mean ablation over the
batch (each absolute position's mean), over each prompt's own template, and aligned by role (each token the mean
over every prompt's tokens of the same named position: IO, S1, S1+1, S2, END, other), beside resample ablation.

    python experiments/smollm2_mean_ablation_roles.py [--prompts 60] [--threads 2]

Circuits: the exact ACDC circuit of experiments/results/smollm2_exact_acdc_t0.05.circuit.json (340 edges), and the
top 175 edges of EAP-IG-inputs on discovery prompts (split "half-discovery", seed 0). Scored on held-out prompts (split
"half-held-out", seed 1: other templates and names), normalized faithfulness (m(C) - m({})) / (m(M) - m({})) with the
logit difference. IOI prompts of different templates are right-padded, so the same absolute position holds
different roles in different prompts: a batch mean mixes an IO name with a verb. Writes
experiments/results/smollm2_mean_ablation_roles.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import acdc

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = acdc.load_model("smollm2-135m-instruct")
    test = acdc.tasks.ioi(model, args.prompts, seed=1, split="half-held-out")
    circuits = {"exact ACDC (threshold 0.05)": acdc.Circuit.from_json(RESULTS / "smollm2_exact_acdc_t0.05.circuit.json")}
    disc = acdc.tasks.ioi(model, 50, seed=0, split="half-discovery")
    scores = acdc.attribute(model, disc, method="eap-ig-inputs", progress=False)
    circuits["EAP-IG-inputs, top 175 edges"] = scores.top(175)
    settings = {"resample": {"ablation": "resample"}, "mean over the batch": {"ablation": "mean"},
                "mean over the template": {"ablation": "mean", "mean_over": "template"},
                "mean aligned by role": {"ablation": "mean", "mean_over": "role"}}
    rows = []
    for name, circuit in circuits.items():
        for label, kw in settings.items():
            t0 = time.perf_counter()
            f = acdc.faithfulness(model, test, circuit, progress=False, **kw)
            lo, hi = f.interval()
            rows.append({"circuit": name, "edges": circuit.n_edges, "setting": label, "normalized": f.normalized,
                         "ci95": [lo, hi], "model": f.model_metric, "empty": f.empty_metric, "circuit_metric": f.circuit_metric,
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "smollm2_mean_ablation_roles.json").write_text(json.dumps({"prompts": args.prompts, "rows": rows}, indent=1))
    md = ["# SmolLM2 IOI circuits under mean ablation: by absolute position, by template, by role", "",
          f"`python experiments/smollm2_mean_ablation_roles.py` ({args.prompts} held-out IOI prompts, split \"held-out\", "
          "seed 1; logit difference; normalized faithfulness with a 95% bootstrap interval over prompts).", "",
          "| circuit | ablation | m(M) | m({}) | m(C) | normalized (95% interval) |", "|---|---|---|---|---|---|"]
    md += [f"| {r['circuit']} ({r['edges']} edges) | {r['setting']} | {r['model']:.3f} | {r['empty']:.3f} | "
           f"{r['circuit_metric']:.3f} | {r['normalized']:.3f} ({r['ci95'][0]:.3f}..{r['ci95'][1]:.3f}) |" for r in rows]
    (args.out / "smollm2_mean_ablation_roles.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
