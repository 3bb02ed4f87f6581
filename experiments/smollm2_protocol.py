"""SmolLM2-135M-Instruct's circuits under the protocol (issue 40): chosen on validation prompts, reported on test.

    python experiments/smollm2_protocol.py [--threads 2] [--tasks ioi greater-than induction] [--n-prompts 30]

For each task, three prompt sets that share no template, name, place, object, noun or token
(`acdc.tasks.ioi(..., split=)`, `greater_than(..., split=)`, `induction(..., split=)`; IOI corrupted
ABC-style; greater-than in its digit variant with the paper's probability difference over the two-digit
year (``metric="year_prob_diff"``) and corrupt start years drawn per prompt with another tens digit;
induction scored by the logit difference of the repeated token). `acdc.compare` runs each method on the
discovery prompts once per candidate setting, keeps the candidate whose normalized faithfulness on the
validation prompts is nearest 1, and scores that circuit once on the test prompts, with a 95% bootstrap
interval over the test prompts and the robustness grid there (resample, mean, mean aligned by role, zero;
edge and node level; the four directions; mean of ratios; probability difference: its verdict at
|target - F| <= 0.2). Resample ablation for discovery. Candidates, all at most 1% of the 123,211 edges:

- EAP, EAP-IG-inputs (5 steps) and EAP-IG-inputs with GIM's backward rules (`acdc.GIM`): the top 0.1%, 0.2%,
  0.5% or 1% of edges by |score|; with MIB's CPR and CMD on the test prompts (``curves``);
- ACDC, APPROXIMATE (only the top 1% of edges by EAP-IG-inputs tested): threshold 1% or 2% of the task's
  full-minus-empty metric gap on discovery prompts;
- ACDC held near 1 (``faithful_within`` 0.1, threshold 2% of the gap): removals that would take the circuit's
  faithfulness further than 0.1 from 1 are refused.

ACDC runs on IOI and greater-than (``--acdc-tasks``); on induction it removed every edge in earlier runs (each
edge into the logits moves the metric by less than any useful threshold), and its runs cost the most here.

Greater-than is also reported per tens digit t of the start year: each chosen circuit scored on test prompts
whose start years all have tens digit t (``tens=[t]``), with its interval.

Each (task, method) is cached as it finishes (experiments/results/runs/protocol/), so a killed run
resumes. Writes experiments/results/smollm2_protocol.{md,json}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from smollm2_common import ROOT, load, write

import acdc
from acdc import Method

TASKS = ("ioi", "greater-than", "induction")
SIZES = [0.001, 0.002, 0.005, 0.01]
SCALES = [0.01, 0.02]  # ACDC's threshold candidates, shares of the full-minus-empty gap


def sets(model: Any, name: str, n: int) -> tuple[acdc.Task, acdc.Task, acdc.Task]:
    """The task's discovery, validation and test prompts (seed 0 each: the splits differ by design)."""
    def make(split: str) -> acdc.Task:
        if name == "ioi":
            return acdc.tasks.ioi(model, n, split=split)
        if name == "greater-than":
            return acdc.tasks.greater_than(model, n, split=split, digits=True, metric="year_prob_diff", corrupt="random")
        return acdc.tasks.induction(model, n, split=split, metric="logit_diff")
    return make("discovery"), make("validation"), make("test")


TENS = range(1, 9)


def by_tens(model: Any, table: acdc.Comparison, n: int) -> dict[str, list[dict[str, float]]]:
    """Each row's circuit on greater-than test prompts of one tens digit t at a time (t = 1..8)."""
    out: dict[str, list[dict[str, float]]] = {}
    tasks = {t: acdc.tasks.greater_than(model, n, split="test", digits=True, metric="year_prob_diff", corrupt="random",
                                        tens=[t]) for t in TENS}
    for r in table.rows:
        circuit = table.circuit(r["task"], r["method"], r["seed"])
        vals = []
        for t in TENS:
            f = acdc.faithfulness(model, tasks[t], circuit, progress=False)
            lo, hi = f.interval("normalized")
            vals.append({"t": t, "normalized": f.normalized, "low": lo, "high": hi, "model_metric": f.model_metric,
                         "empty_metric": f.empty_metric})
        out[r["method"]] = vals
    return out


SETTINGS = {"resample": {}, "mean (batch)": {"ablation": "mean"}, "mean aligned by role": {"ablation": "mean", "mean_over": "role"},
            "probability difference": {"metric": "prob_diff"}}


def metrics(model: Any, table: acdc.Comparison, test: acdc.Task) -> dict[str, dict[str, list[float]]]:
    """Each row's circuit on the test prompts under a few settings: [m(M), m(C), m({})], the values its normalized
    faithfulness divides (a small m(M) - m({}) makes it swing)."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in table.rows:
        circuit = table.circuit(r["task"], r["method"], r["seed"])
        out[r["method"]] = {}
        for label, kw in SETTINGS.items():
            f = acdc.faithfulness(model, test, circuit, progress=False, **kw)
            out[r["method"]][label] = [f.model_metric, f.circuit_metric, f.empty_metric]
    return out


def gap(model: Any, task: acdc.Task) -> float:
    """|m(M) - m({})| on the discovery prompts: the unit of ACDC's threshold."""
    g = acdc.Graph.from_model(model)
    empty = acdc.Circuit(g, torch.zeros(g.n_edges, dtype=torch.bool), torch.full((g.n_edges,), float("nan")))
    f = acdc.faithfulness(model, task, empty, progress=False)
    return abs(f.model_metric - f.empty_metric)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--n-prompts", type=int, default=30)
    ap.add_argument("--acdc-tasks", nargs="*", default=["ioi", "greater-than"], choices=TASKS)
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args()
    model, _ = load(args.threads)
    runs = args.out / "runs" / ("protocol" if args.n_prompts == 30 else f"protocol_n{args.n_prompts}")
    runs.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"n_prompts": args.n_prompts, "sizes": SIZES, "scales": SCALES, "acdc_tasks": args.acdc_tasks,
                           "tasks": {}}
    md = ["# SmolLM2-135M-Instruct under the protocol: chosen on validation, reported on test", "",
          f"`python experiments/smollm2_protocol.py` ({args.n_prompts} prompts per set; discovery, validation and test share no "
          "template, name, place, object, noun or token; resample ablation; every candidate at most 1% of the edges; "
          "the row's circuit is the candidate nearest 1 on validation, scored once on test with a 95% bootstrap interval "
          "over test prompts; the verdict is the robustness grid on test prompts at |target - F| <= 0.2).", ""]
    for name in args.tasks:
        disc, val, test = sets(model, name, args.n_prompts)
        unit = gap(model, disc)
        methods = [
            Method("eap", label="EAP"),
            Method("eap-ig-inputs", {"steps": 5}, label="EAP-IG-inputs"),
            Method("eap-ig-inputs", {"steps": 5, "gim": True}, label="EAP-IG-inputs + GIM"),
        ]
        if name in args.acdc_tasks:
            methods += [
                Method("acdc", {"prefilter": 0.01}, choose={"threshold": [round(s * unit, 5) for s in SCALES]},
                       label="ACDC (top 1%)"),
                Method("acdc", {"prefilter": 0.01, "threshold": round(0.02 * unit, 5), "faithful_within": 0.1},
                       label="ACDC held near 1"),
            ]
        table = acdc.compare(model, {name: (disc, val, test)}, methods=methods, seeds=[0], edges=SIZES, grid=True,
                             curves=True, results=runs / name, threads=args.threads)
        n_edges = acdc.Graph.from_model(model).n_edges
        rows = [dict(r, share=r["edges"] / n_edges) for r in table.rows]
        doc["tasks"][name] = {"gap": unit, "metric": disc.metric, "rows": rows,
                              "notes": {s: t.notes for s, t in (("discovery", disc), ("validation", val), ("test", test))}}
        md += [f"## {name} (metric {disc.metric}; full-minus-empty gap on discovery {unit:.3f})", "", table.to_markdown(), ""]
        md += ["Each circuit under the grid (normalized faithfulness on test prompts):", ""]
        labels = list(rows[0]["grid"])
        md += ["| method | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        md += [f"| {r['method']} | " + " | ".join(f"{r['grid'][k]:.3f}" for k in labels) + " |" for r in rows]
        md.append("")
        values = metrics(model, table, test)
        doc["tasks"][name]["metrics"] = values
        md += ["The metric itself on test prompts, m(M) / m(C) / m({}) (full model / circuit / every edge ablated):", "",
               "| method | " + " | ".join(SETTINGS) + " |", "|---|" + "---|" * len(SETTINGS)]
        md += [f"| {m} | " + " | ".join("{:.4f} / {:.4f} / {:.4f}".format(*v[k]) for k in SETTINGS) + " |" for m, v in values.items()]
        md.append("")
        if name == "greater-than":
            per_t = by_tens(model, table, args.n_prompts)
            doc["tasks"][name]["per_t"] = per_t
            md += ["Per tens digit t of the start year (each circuit on test prompts whose years all have tens digit t; "
                   "normalized faithfulness, 95% interval):", "",
                   "| method | " + " | ".join(f"t={t}" for t in TENS) + " |", "|---|" + "---|" * len(TENS)]
            md += [f"| {m} | " + " | ".join(f"{v['normalized']:.2f} ({v['low']:.2f}..{v['high']:.2f})" for v in per_t[m]) + " |"
                   for m in per_t]
            first = next(iter(per_t.values()))
            md += ["| m(M) / m({}) | " + " | ".join(f"{v['model_metric']:.3f} / {v['empty_metric']:.3f}" for v in first) + " |", ""]
        (runs / f"{name}.json").write_text(json.dumps(doc["tasks"][name], indent=1, default=str))
    write(args.out, "smollm2_protocol" if args.tasks == list(TASKS) and args.n_prompts == 30 else
          f"smollm2_protocol_{'_'.join(args.tasks)}_n{args.n_prompts}", doc, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
