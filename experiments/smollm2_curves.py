"""MIB's faithfulness curves on SmolLM2-135M-Instruct: every method, three tasks, discovery and held-out prompts.

    python experiments/smollm2_curves.py [--threads 2] [--tasks ioi induction greater-than-digits] [--n-prompts 50]

For each task, circuits are found on discovery prompts and scored on those and on held-out prompts
(IOI: ``split="half-discovery"`` / ``"half-held-out"``, disjoint templates and names; greater-than (digit
variant, SmolLM2 writes years digit by digit): half of the nouns each, different seeds; induction:
random tokens, different seeds). Resample ablation. Metrics: logit difference (IOI; induction: the
repeated token against the corrupt prompt's next token, at every repeated position), probability
difference (greater-than).

Methods: EAP, EAP-IG (inputs and activations, 5 steps), each ranking every edge: MIB's curve of
normalized faithfulness for the top edges at fractions 0.001 .. 1 and its areas (CPR, higher is
better; CMD, lower is better; the same over log10 of the fraction, where small circuits weigh as
much as large ones); Edge Pruning's learned scores where `smollm2_edge_pruning.py` saved them (IOI);
and ACDC prefiltered to the top 0.5%, 1% and 2% of edges by EAP-IG-inputs scores (APPROXIMATE; its
threshold 1.25% of the task's full-minus-empty metric gap, 0.05 for IOI; ``--threshold-scales`` adds
others), whose circuits are points.

Each (task, method) result is cached in experiments/results/runs/curves/ as it finishes, so a
killed run picks up where it stopped. Writes experiments/results/smollm2_curves.{md,json,png}
(``--n-prompts N`` other than 50: runs/curves_nN/ and smollm2_curves_nN.*).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from smollm2_common import ROOT, load, write

import acdc
from acdc.algorithms import ALGORITHMS
from acdc.algorithms.acdc import ACDCOptions, run_acdc
from acdc.api import prepare
from acdc.faithfulness_math import MIB_FRACTIONS, FaithfulnessCurve
from acdc.tasks.greater_than import NOUNS

RANKERS = ("eap", "eap-ig-inputs", "eap-ig-activations")
PREFILTERS = (0.005, 0.01, 0.02)
THRESHOLD_SCALE = 0.0125  # ACDC's threshold: this share of the full-minus-empty metric gap (0.05 for IOI)
TEST_SEED = 2  # a third prompt set, from the held-out split (IOI: its templates and names), for circuits picked on held-out
METRICS = {"ioi": "logit_diff", "induction": "logit_diff", "greater-than-digits": "prob_diff"}


def make_task(model: Any, name: str, n: int, held_out: bool, seed: int | None = None) -> acdc.Task:
    """The discovery or held-out prompts of one task (``seed``: other prompts of the same split;
    default 0 for discovery, 1 for held-out)."""
    if seed is None:
        seed = 1 if held_out else 0
    if name == "ioi":
        return acdc.tasks.ioi(model, n, seed=seed, split="half-held-out" if held_out else "half-discovery")
    if name == "induction":
        return acdc.tasks.induction(model, n, seed=seed, metric="logit_diff")
    if name == "greater-than-digits":
        return acdc.tasks.greater_than(model, n, seed=seed, digits=True, nouns=NOUNS[1::2] if held_out else NOUNS[::2])
    raise ValueError(f"unknown task {name!r}; choose from {', '.join(METRICS)}")


def cached(path: Path, compute: Any) -> dict[str, Any]:
    """The result stored at ``path``, or ``compute()`` stored there."""
    if path.exists():
        return json.loads(path.read_text())
    result = compute()
    path.write_text(json.dumps(result, indent=1))
    return result


def curves(model: Any, tasks: tuple[acdc.Task, acdc.Task], scores: acdc.Scores, metric: str) -> dict[str, Any]:
    """MIB curves of ``scores`` on the discovery and held-out prompts."""
    out = {}
    for split, task in zip(("discovery", "held_out"), tasks, strict=True):
        out[split] = acdc.faithfulness_curve(model, task, scores, metric=metric, progress=False).to_dict()
    return out


def run_task(model: Any, name: str, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    metric = METRICS[name]
    tasks = (make_task(model, name, args.n_prompts, False), make_task(model, name, args.n_prompts, True))
    test = make_task(model, name, args.n_prompts, True, seed=TEST_SEED)  # ACDC's threshold is picked on held-out: scored here
    patcher, m, batch = prepare(model, tasks[0], metric=metric)
    n_edges = patcher.graph.n_edges
    every = acdc.Circuit(patcher.graph, torch.ones(n_edges, dtype=torch.bool), torch.full((n_edges,), math.nan))
    gap = acdc.faithfulness(model, tasks[0], every, metric=metric)
    result: dict[str, Any] = {"metric": metric, "edges": n_edges, "prompts": args.n_prompts,
                              "full": gap.model_metric, "empty": gap.empty_metric, "methods": {}}
    for method in args.methods:
        def compute(method: str = method) -> dict[str, Any]:
            t0 = time.perf_counter()
            kwargs = {} if method == "eap" else {"steps": 5}
            scores = ALGORITHMS[method](patcher, m, batch, progress=True, **kwargs)
            seconds = time.perf_counter() - t0
            if method == "eap-ig-inputs":
                torch.save(scores.values, cache / f"{name}__{method}.values.pt")
            return {"seconds": round(seconds, 1), **curves(model, tasks, scores, metric)}
        result["methods"][method] = cached(cache / f"{name}__{method}.json", compute)
    ep = ROOT / "experiments" / "results" / "runs" / f"smollm2_edge_pruning_t0.01_s{args.edge_pruning_steps}.scores.json"
    if name == "ioi" and ep.exists() and args.n_prompts == 50:  # the saved run learned its mask on these 50 prompts
        def compute_ep() -> dict[str, Any]:
            scores = acdc.Scores.from_json(ep)
            return {"seconds": scores.settings.get("seconds"), "source": ep.name, **curves(model, tasks, scores, metric)}
        result["methods"]["edge-pruning"] = cached(cache / f"{name}__edge-pruning.json", compute_ep)

        def compute_mask() -> dict[str, Any]:
            c = acdc.Scores.from_json(ep).selection()
            f = [acdc.faithfulness(model, t, c, metric=metric).normalized for t in tasks]
            return {"seconds": None, "how": "its learned mask, gates > 0.5", "circuit_edges": c.n_edges, "discovery": f[0],
                    "held_out": f[1]}
        result["methods"]["edge-pruning mask"] = cached(cache / f"{name}__edge-pruning-mask.json", compute_mask)
    gap_size = abs(gap.model_metric - gap.empty_metric)
    values_file = cache / f"{name}__eap-ig-inputs.values.pt"  # ACDC's prefilter: EAP-IG-inputs' scores (a local cache, untracked)
    if not values_file.exists() and args.prefilters:
        torch.save(ALGORITHMS["eap-ig-inputs"](patcher, m, batch, progress=True, steps=5).values, values_file)
    prefilter_values = torch.load(values_file) if args.prefilters else None
    for frac in args.prefilters:
        for scale in args.threshold_scales:
            threshold = scale * gap_size
            default = scale == THRESHOLD_SCALE
            key = acdc_label(frac, None if default else scale, args.abs_value)
            stem = f"{name}__acdc_{frac:g}" + ("" if default else f"_s{scale:g}") + ("_abs" if args.abs_value else "")

            def compute_acdc(frac: float = frac, threshold: float = threshold, stem: str = stem) -> dict[str, Any]:
                t0 = time.perf_counter()
                options = ACDCOptions(threshold=threshold, prefilter=frac, abs_value=args.abs_value)
                scores = run_acdc(patcher, m, batch, options, progress=True, prefilter_scores=prefilter_values)
                seconds = time.perf_counter() - t0
                c = scores.selection()
                # the kept edges' names (3 KB): the circuit JSON lists all 123,211 edges (9 MB)
                (cache / f"{stem}.edges.json").write_text(json.dumps(c.edges))
                f = [acdc.faithfulness(model, t, c, metric=metric).normalized for t in (*tasks, test)]
                tested = int((~scores.values.isnan()).sum())
                return {"seconds": round(seconds, 1), "threshold": threshold, "prefilter": frac, "abs_value": args.abs_value,
                        "circuit_edges": c.n_edges, "tested": tested, "how": f"threshold {threshold:.3g}, {tested} tested",
                        "discovery": f[0], "held_out": f[1], "test": f[2], "circuit": f"{stem}.edges.json"}
            result["methods"][key] = cached(cache / f"{stem}.json", compute_acdc)
    for path in sorted(cache.glob(f"{name}__acdc_*.json")):  # ACDC runs an earlier invocation cached with other settings
        if path.name.endswith(".edges.json"):
            continue
        e = json.loads(path.read_text())
        if e not in result["methods"].values():
            result["methods"][acdc_label(e["prefilter"], e["threshold"] / gap_size, e.get("abs_value", False))] = e
    return result


def acdc_label(prefilter: float, scale: float | None, abs_value: bool) -> str:
    """The table's name for an ACDC run (``scale`` None: the default threshold)."""
    return (f"acdc prefilter {prefilter:g}" + ("" if scale is None else f", threshold {scale:.3g} of the gap")
            + (", abs(delta)" if abs_value else ""))


def best_small(entry: dict[str, Any], n_edges: int, limit: float = 0.01) -> tuple[float, int] | None:
    """The held-out faithfulness closest to 1 (the full model's behaviour: not above it, which means
    the circuit dropped components that work against the task) of a circuit with at most ``limit`` of
    the edges, and its size."""
    if "held_out" in entry and isinstance(entry["held_out"], dict):
        pts = [(p["normalized"], p["edges"]) for p in entry["held_out"]["points"] if p["edges"] <= limit * n_edges]
        return min(pts, key=lambda x: abs(1 - x[0])) if pts else None
    if entry.get("circuit_edges", n_edges + 1) <= limit * n_edges:
        return entry["held_out"], entry["circuit_edges"]
    return None


def table(name: str, r: dict[str, Any]) -> list[str]:
    md = [f"## {name} ({r['prompts']} prompts, {r['metric']}; full model {r['full']:.3f}, everything ablated {r['empty']:.3f})", "",
          "| method | seconds | CPR disc. | CMD disc. | CPR held-out | CMD held-out | log-CPR held-out | log-CMD held-out | "
          "held-out faithfulness closest to 1 at <= 1% of edges (edges) |", "|---|---|---|---|---|---|---|---|---|"]
    for method, e in r["methods"].items():
        best = best_small(e, r["edges"])
        best_s = "-" if best is None else f"{best[0]:.3f} ({best[1]})"
        if "circuit_edges" in e:
            md.append(f"| {method} ({e['how']}) | {e['seconds'] if e['seconds'] is not None else '-'} | "
                      f"circuit of {e['circuit_edges']}: {e['discovery']:.3f} | | held-out: {e['held_out']:.3f} | | | | {best_s} |")
        else:
            d, h = e["discovery"], e["held_out"]
            md.append(f"| {method} | {e['seconds']} | {d['cpr']:.3f} | {d['cmd']:.3f} | {h['cpr']:.3f} | {h['cmd']:.3f} | "
                      f"{h['cpr_log']:.3f} | {h['cmd_log']:.3f} | {best_s} |")
    runs = sorted(((m, e) for m, e in r["methods"].items() if "threshold" in e), key=lambda x: (x[1]["prefilter"], -x[1]["threshold"]))
    if runs:
        md += ["", f"ACDC runs (prefiltered, APPROXIMATE), by prefilter and threshold. A threshold picked by its held-out "
               f"value is scored again on a third prompt set (held-out split, seed {TEST_SEED}: `test`).", "",
               "| prefilter | threshold | share of the gap | rule | edges | tested | seconds | discovery | held-out | test |",
               "|---|---|---|---|---|---|---|---|---|---|"]
        gap = abs(r["full"] - r["empty"])
        for _, e in runs:
            t = f"{e['test']:.3f}" if "test" in e else "-"
            md.append(f"| {e['prefilter']:g} | {e['threshold']:.4f} | {e['threshold'] / gap:.4g} | "
                      f"{'abs' if e.get('abs_value') else 'signed'} | {e['circuit_edges']} | {e['tested']} | {e['seconds']} | "
                      f"{e['discovery']:.3f} | {e['held_out']:.3f} | {t} |")
    return md + [""]


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    from acdc.plots import pyplot, save

    plt, out = pyplot(path)
    fig, axes = plt.subplots(2, len(results), figsize=(4.6 * len(results), 7), squeeze=False)
    for col, (name, r) in enumerate(results.items()):
        for row, split in enumerate(("discovery", "held_out")):
            ax = axes[row][col]
            for method, e in r["methods"].items():
                if "circuit_edges" in e:
                    ax.plot([e["circuit_edges"] / r["edges"]], [e[split]], marker="*", ms=9, ls="", label=method)
                else:
                    FaithfulnessCurve.from_values([p["fraction"] for p in e[split]["points"]],
                                                  [p["normalized"] for p in e[split]["points"]]).plot(ax=ax, label=method)
            ax.set_title(f"{name}, {split.replace('_', '-')}", fontsize="small")
            ax.set_ylim(-0.5, 1.5)
            ax.legend(fontsize="xx-small")
    fig.tight_layout()
    save(plt, fig, out)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tasks", nargs="+", default=list(METRICS), choices=list(METRICS))
    ap.add_argument("--n-prompts", type=int, default=50)
    ap.add_argument("--methods", nargs="+", default=list(RANKERS), choices=list(RANKERS),
                    help="attribution methods (EAP-IG-activations is the slow one: a pass per node group and step)")
    ap.add_argument("--threshold-scales", type=float, nargs="+", default=[THRESHOLD_SCALE],
                    help="ACDC's thresholds, as shares of the task's full-minus-empty metric gap")
    ap.add_argument("--prefilters", type=float, nargs="+", default=list(PREFILTERS), help="ACDC's prefilter fractions")
    ap.add_argument("--abs-value", action="store_true",
                    help="ACDC thresholds |delta| (keeps edges that work against the task too; the default, signed, drops them)")
    ap.add_argument("--edge-pruning-steps", type=int, default=100, help="which saved Edge Pruning run to score")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args(argv)
    if "eap-ig-inputs" not in args.methods:
        ap.error("--methods must include eap-ig-inputs: its scores are ACDC's prefilter")
    model, _ = load(args.threads)
    stem = "smollm2_curves" + ("" if args.n_prompts == 50 else f"_n{args.n_prompts}")  # each prompt count its own cache
    cache = args.out / "runs" / stem.replace("smollm2_", "")
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {name: run_task(model, name, args, cache) for name in args.tasks}
    md = ["# Faithfulness curves on SmolLM2-135M-Instruct (MIB's CPR and CMD), discovery and held-out prompts", "",
          f"`python experiments/smollm2_curves.py --threads {args.threads} --tasks {' '.join(args.tasks)} "
          f"--n-prompts {args.n_prompts} --methods {' '.join(args.methods)} --prefilters {' '.join(f'{x:g}' for x in args.prefilters)} "
          f"--threshold-scales {' '.join(f'{x:g}' for x in args.threshold_scales)}{' --abs-value' if args.abs_value else ''}`; {time.perf_counter() - t0:.0f} s for what was not cached. Resample ablation; "
          "curves: the top edges by |score| at fractions " + ", ".join(f"{f:g}" for f in MIB_FRACTIONS) +
          " of the edges. ACDC is APPROXIMATE (prefiltered): its circuits are single points, each row with its prefilter "
          f"and threshold (the table also lists ACDC runs that earlier invocations cached). Plot: `{stem}.png`.", ""]
    for name, r in results.items():
        md += table(name, r)
    plot(results, args.out / f"{stem}.png")
    finite = {n: r for n, r in results.items() if all(not math.isnan(r[k]) for k in ("full", "empty"))}
    write(args.out, stem, {"tasks": finite}, "\n".join(md))


if __name__ == "__main__":
    main()
