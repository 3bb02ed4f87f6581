"""acdc against AutoCircuit, side by side in one run, on the same model and the same batches.

    python experiments/bench.py                  # sets up AutoCircuit's venv on first use (PyPI)
    python experiments/bench.py --reps 3 --acdc-edges 10

Model: GPT-2-small shape, random weights (seed 0), 50 clean and 50 corrupt prompts of 15 random
token ids, random answer / wrong-answer ids, 2 torch threads. Each measurement runs in its own
process (so peak RSS is that measurement's), alternating acdc and AutoCircuit, ``--reps`` times;
the table reports medians and the ratio AutoCircuit / acdc (higher = acdc faster):

- EAP, all 32,491 edges: acdc ``attribute(method="eap", metric="logit_diff")`` (including its
  Patcher: clean and corrupt runs) vs AutoCircuit ``mask_gradient_prune_scores`` (logit
  difference, mask 0), and the largest score difference relative to the largest score;
- ACDC edge tests per second for edges into layers 11, 6 and 0, full circuit (worst case);
- a faithfulness sweep: the logit difference of the top-n EAP edges as circuit, 10 sizes;
- Edge Pruning, ``--ep-steps`` training steps (hard-concrete masks over every edge, KL to the full
  model; acdc's ``edge-pruning``) vs AutoCircuit's learned masks ``subnetwork_probing_prune_scores``
  (the same kind of optimisation; AutoCircuit ablates with the corrupt prompts' token-wise mean,
  acdc resamples: the same amount of work);
- ACDC decisions on a small planted model (the zoo's induction model, KL at the last position):
  the edges each library removes at one threshold;
- acdc alone: ACDC edge tests with the logit difference, the logits over every vocabulary column
  (before) and over the answers' columns only (after: `Metric.narrow`, what `run_acdc` does).

Writes experiments/results/bench.json and bench.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from peak_memory import peak_kib  # noqa: E402

import acdc  # noqa: E402

PEER_VENV = ROOT / "experiments" / ".venv-autocircuit"
PEER_SIDE = ROOT / "experiments" / "peers" / "autocircuit_side.py"
SIZES = [50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 32491]


def peak_rss_gb() -> float:
    return peak_kib() / 2**20


# ---------------------------------------------------------------------- shared inputs
def write_inputs(data: Path, prompts: int, tokens: int) -> None:
    """The GPT-2-small-shaped model and batches, and the small planted model, as files."""
    from transformers import GPT2Config, GPT2LMHeadModel

    data.mkdir(parents=True, exist_ok=True)
    if not (data / "gpt2small.pt").exists():
        torch.manual_seed(0)
        cfg = GPT2Config()
        hf = GPT2LMHeadModel(cfg)
        _save_model(data, "gpt2small", hf)
        gen = torch.Generator().manual_seed(0)
        v = cfg.vocab_size
        batch = {
            "clean": torch.randint(0, v, (prompts, tokens), generator=gen),
            "corrupt": torch.randint(0, v, (prompts, tokens), generator=gen),
            "correct": torch.randint(0, v, (prompts,), generator=gen),
            "incorrect": torch.randint(0, v, (prompts,), generator=gen),
        }
        torch.save(batch, data / "gpt2small.tokens.pt")
    if not (data / "induction.pt").exists():
        import acdc.zoo.induction as zi

        captured = {}
        wrap = zi.load_model
        zi.load_model = lambda hf: (captured.__setitem__("hf", copy.deepcopy(hf)), wrap(hf))[1]
        try:
            entry = acdc.zoo.load("induction")
        finally:
            zi.load_model = wrap
        _save_model(data, "induction", captured["hf"])
        task = entry.task
        last = task.clean.shape[1] - 1
        torch.save({"clean": task.clean, "corrupt": task.corrupt, "correct": task.clean[:, last],
                    "incorrect": task.corrupt[:, last]}, data / "induction.tokens.pt")


def _save_model(data: Path, name: str, hf: Any) -> None:
    cfg = {k: v for k, v in hf.config.to_dict().items()
           if k in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "n_inner", "activation_function",
                    "layer_norm_epsilon", "tie_word_embeddings", "bos_token_id", "eos_token_id")}
    (data / f"{name}.config.json").write_text(json.dumps(cfg))
    torch.save(hf.state_dict(), data / f"{name}.pt")


def load_ours(data: Path, name: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(**json.loads((data / f"{name}.config.json").read_text())))
    hf.load_state_dict(torch.load(data / f"{name}.pt"))
    return acdc.load_model(hf), torch.load(data / f"{name}.tokens.pt")


# ---------------------------------------------------------------------- acdc's side
def ours(args: argparse.Namespace) -> dict[str, Any]:
    from acdc.api import prepare

    model, b = load_ours(args.data, args.model)
    answers = (b["correct"], b["incorrect"])
    if args.what == "eap":
        t0 = time.perf_counter()
        s = acdc.attribute(model, b["clean"], b["corrupt"], method="eap", metric="logit_diff", answers=answers)
        out = {"seconds": time.perf_counter() - t0, "scores": {e.name: float(v) for e, v in zip(s.graph.edges, s.values.tolist())}}
    elif args.what == "acdc":
        from bench_acdc import time_edges

        patcher, metric, batch = prepare(model, b["clean"], b["corrupt"])
        out = {}
        for layer in args.layers:
            sec, n = time_edges(patcher, metric, batch, layer, args.edges)
            out[str(layer)] = {"s_per_edge": sec, "edges_per_s": 1 / sec, "edges_timed": n}
    elif args.what == "columns":  # ACDC with the logit difference: every vocabulary column (before) or the answers' (after)
        from bench_acdc import time_edges

        patcher, metric, batch = prepare(model, b["clean"], b["corrupt"], metric="logit_diff", answers=answers)
        out = {}
        for layer in args.layers:
            for narrow in (False, True):
                sec, n = time_edges(patcher, metric, batch, layer, args.edges, narrow=narrow)
                out[f"{layer}-{'answers' if narrow else 'all'}"] = {"s_per_edge": sec, "edges_per_s": 1 / sec, "edges_timed": n}
    elif args.what == "edge-pruning":  # Edge Pruning's training steps: KL to the full model, resample ablation
        from acdc.algorithms import ALGORITHMS

        t0 = time.perf_counter()  # with the Patcher's clean and corrupt runs, as AutoCircuit's function does its own
        patcher, metric, batch = prepare(model, b["clean"], b["corrupt"])
        s = ALGORITHMS["edge-pruning"](patcher, metric, batch, steps=args.ep_steps, target=0.05, lr=0.5, warmup=0.5)
        seconds = time.perf_counter() - t0
        out = {"seconds": seconds, "s_per_step": seconds / args.ep_steps, "steps": args.ep_steps,
               "kept_fraction": s.settings["kept_fraction"]}
    elif args.what == "sweep":
        s = acdc.attribute(model, b["clean"], b["corrupt"], method="eap", metric="logit_diff", answers=answers)
        patcher, metric, batch = prepare(model, b["clean"], b["corrupt"], metric="logit_diff", answers=answers)
        t0 = time.perf_counter()
        values = {}
        for n in args.sizes:
            kept = s.top(n).in_graph
            values[str(n)] = metric(patcher.logits(~kept), batch)
        out = {"seconds": time.perf_counter() - t0, "logit_diff": values}
    else:
        t0 = time.perf_counter()
        c = acdc.discover(model, b["clean"], b["corrupt"], threshold=args.threshold, progress=False)
        removed = sorted(set(e.name for e in c.graph.edges) - set(c.edges))
        out = {"seconds": time.perf_counter() - t0, "removed": removed, "n_edges": c.graph.n_edges,
               "margin": float((c.scores[~c.scores.isnan()] - args.threshold).abs().min())}
    out["peak_rss_gb"] = peak_rss_gb()
    return out


# ---------------------------------------------------------------------- orchestration
def run_side(side: str, what: str, args: argparse.Namespace, model: str = "gpt2small", **extra: Any) -> dict[str, Any]:
    opts = ["--data", str(args.data), "--what", what, "--model", model, "--threads", str(args.threads), "--ep-steps", str(args.ep_steps),
            "--layers", *map(str, args.layers), "--edges", str(args.acdc_edges), "--sizes", *map(str, SIZES)]
    for k, v in extra.items():
        opts += [f"--{k}", str(v)]
    cmd = [sys.executable, __file__, "--side", *opts] if side == "acdc" else [str(PEER_VENV / "bin" / "python"), str(PEER_SIDE), *opts]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{side} {what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def setup_peer() -> None:
    script = ROOT / "experiments" / "peers" / "setup_autocircuit.sh"
    print("setting up AutoCircuit's virtual environment (first run only) ...", flush=True)
    subprocess.run(["bash", str(script), str(PEER_VENV)], check=True)


def compare_scores(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    common = sorted(set(a) & set(b))
    scale = max(abs(b[k]) for k in common)
    worst = max(abs(a[k] - b[k]) for k in common)
    return {"edges_ours": len(a), "edges_peer": len(b), "edges_common": len(common),
            "max_abs_diff_over_max_score": worst / scale, "max_score": scale}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--what", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default="gpt2small", help=argparse.SUPPRESS)
    ap.add_argument("--edges", type=int, default=10, help=argparse.SUPPRESS)
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES, help=argparse.SUPPRESS)
    ap.add_argument("--threshold", type=float, default=1e-3, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, default=Path("/tmp/acdc-bench-data"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--acdc-edges", type=int, default=10, help="edges timed per layer")
    ap.add_argument("--layers", type=int, nargs="+", default=[11, 6, 0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=15)
    ap.add_argument("--decision-threshold", type=float, default=1e-3)
    ap.add_argument("--ep-steps", type=int, default=5, help="Edge Pruning / subnetwork probing training steps timed")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.side:
        print("RESULT " + json.dumps(ours(args)))
        return

    if not (PEER_VENV / "bin" / "python").exists():
        setup_peer()
    write_inputs(args.data, args.prompts, args.tokens)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {w: {"acdc": [], "autocircuit": []} for w in ("eap", "acdc", "sweep", "edge-pruning")}
    for rep in range(args.reps):
        for what in runs:
            order = ["acdc", "autocircuit"] if rep % 2 == 0 else ["autocircuit", "acdc"]
            for side in order:
                r = run_side(side, what, args)
                runs[what][side].append(r)
                print(f"rep {rep} {what:5s} {side:11s} " + _brief(what, r), flush=True)
    dec = {side: run_side(side, "decisions", args, model="induction", threshold=args.decision_threshold)
           for side in ("acdc", "autocircuit")}
    columns = [run_side("acdc", "columns", args) for _ in range(args.reps)]
    result = summarize(runs, dec, args)
    result["columns"] = columns
    result["table"] += "\n\n" + columns_table(columns, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(result, indent=1))
    (args.out / "bench.md").write_text(result["table"] + "\n")
    print(result["table"])


def _brief(what: str, r: dict[str, Any]) -> str:
    if what == "acdc":
        return " ".join(f"L{k}: {v['edges_per_s']:.2f} edges/s" for k, v in r.items() if k != "peak_rss_gb") + f"  rss {r['peak_rss_gb']:.2f} GB"
    return f"{r['seconds']:.2f} s  rss {r['peak_rss_gb']:.2f} GB"


def summarize(runs: dict, dec: dict, args: argparse.Namespace) -> dict[str, Any]:
    med = statistics.median
    rows = []

    def row(name: str, ours_v: float, peer_v: float, unit: str, higher_better: bool, rss: tuple[float, float]) -> None:
        ratio = ours_v / peer_v if higher_better else peer_v / ours_v
        rows.append({"what": name, "acdc": ours_v, "autocircuit": peer_v, "unit": unit, "speedup": ratio,
                     "peak_rss_gb_acdc": rss[0], "peak_rss_gb_autocircuit": rss[1]})

    def rss(what: str) -> tuple[float, float]:
        return (max(r["peak_rss_gb"] for r in runs[what]["acdc"]), max(r["peak_rss_gb"] for r in runs[what]["autocircuit"]))

    row("EAP, all edges", med(r["seconds"] for r in runs["eap"]["acdc"]), med(r["seconds"] for r in runs["eap"]["autocircuit"]),
        "s", False, rss("eap"))
    for layer in args.layers:
        k = str(layer)
        row(f"ACDC edges/s into layer {layer} (full circuit)", med(r[k]["edges_per_s"] for r in runs["acdc"]["acdc"]),
            med(r[k]["edges_per_s"] for r in runs["acdc"]["autocircuit"]), "edges/s", True, rss("acdc"))
    n_into = _edges_into(args.layers)
    t_ours = sum(n_into[layer] / med(r[str(layer)]["edges_per_s"] for r in runs["acdc"]["acdc"]) for layer in args.layers)
    t_peer = sum(n_into[layer] / med(r[str(layer)]["edges_per_s"] for r in runs["acdc"]["autocircuit"]) for layer in args.layers)
    total = sum(n_into.values())
    row("ACDC edges/s, edge-count weighted", total / t_ours, total / t_peer, "edges/s", True, rss("acdc"))
    row(f"faithfulness sweep, {len(SIZES)} sizes", med(r["seconds"] for r in runs["sweep"]["acdc"]),
        med(r["seconds"] for r in runs["sweep"]["autocircuit"]), "s", False, rss("sweep"))
    row(f"Edge Pruning, {args.ep_steps} steps (AutoCircuit: subnetwork probing)",
        med(r["seconds"] for r in runs["edge-pruning"]["acdc"]), med(r["seconds"] for r in runs["edge-pruning"]["autocircuit"]),
        "s", False, rss("edge-pruning"))
    agree = compare_scores(runs["eap"]["acdc"][0]["scores"], runs["eap"]["autocircuit"][0]["scores"])
    sweep_ours, sweep_peer = runs["sweep"]["acdc"][0]["logit_diff"], runs["sweep"]["autocircuit"][0]["logit_diff"]
    a, b = set(dec["acdc"]["removed"]), set(dec["autocircuit"]["removed"])
    decisions = {"threshold": args.decision_threshold, "n_edges": dec["acdc"]["n_edges"], "removed_acdc": len(a),
                 "removed_autocircuit": len(b), "same": a == b, "only_acdc": sorted(a - b), "only_autocircuit": sorted(b - a),
                 "acdc_margin_to_threshold": dec["acdc"]["margin"]}
    lines = [
        f"GPT-2-small shape, random weights; {args.prompts} x {args.tokens} tokens; {args.threads} threads; "
        f"medians of {args.reps} alternating runs, each in its own process.",
        "",
        "| measurement | acdc | AutoCircuit | acdc speed-up | peak RSS acdc / AutoCircuit (GB) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['what']} | {r['acdc']:.3g} {r['unit']} | {r['autocircuit']:.3g} {r['unit']} | {r['speedup']:.1f}x | "
                     f"{r['peak_rss_gb_acdc']:.2f} / {r['peak_rss_gb_autocircuit']:.2f} |")
    lines += [
        "",
        f"EAP agreement: {agree['edges_common']} edges in common (acdc {agree['edges_ours']}, AutoCircuit "
        f"{agree['edges_peer']}); largest |difference| / largest |score| = {agree['max_abs_diff_over_max_score']:.2e}.",
        "Sweep logit difference (acdc / AutoCircuit): " + ", ".join(
            f"{n}: {sweep_ours[str(n)]:.4f} / {sweep_peer[str(n)]:.4f}" for n in SIZES),
        f"ACDC decisions on the zoo's induction model (threshold {args.decision_threshold:g}, {decisions['n_edges']} edges): "
        f"acdc removes {len(a)}, AutoCircuit {len(b)}, identical: {decisions['same']} "
        f"(acdc's smallest |delta - threshold| = {decisions['acdc_margin_to_threshold']:.2e}).",
    ]
    return {"rows": rows, "eap_agreement": agree, "sweep": {"acdc": sweep_ours, "autocircuit": sweep_peer},
            "decisions": decisions, "runs": {w: {s: [_strip(r) for r in v] for s, v in d.items()} for w, d in runs.items()},
            "table": "\n".join(lines)}


def columns_table(columns: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Before/after of unembedding only the answers' columns (acdc alone; AutoCircuit has no such mode)."""
    med = statistics.median
    lines = [f"ACDC edge tests with the logit difference (full circuit), acdc alone, medians of {len(columns)} runs: "
             "logits over every vocabulary column (before) and over the answers' columns only (after, what `run_acdc` "
             "does for a metric that reads nothing else).", "",
             "| destination layer | every column | answers' columns | speed-up |", "|---|---|---|---|"]
    for layer in args.layers:
        before = med(r[f"{layer}-all"]["edges_per_s"] for r in columns)
        after = med(r[f"{layer}-answers"]["edges_per_s"] for r in columns)
        lines.append(f"| {layer} | {before:.3g} edges/s | {after:.3g} edges/s | {after / before:.1f}x |")
    return "\n".join(lines)


def _strip(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "scores"}


def _edges_into(layers: list[int]) -> dict[int, int]:
    g = acdc.Graph(12, 12)
    return {layer: int((g.dst_layer[g.edge_dst] == layer).sum()) for layer in layers}


if __name__ == "__main__":
    main()
