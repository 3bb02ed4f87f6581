"""Exact ACDC on the real SmolLM2-135M-Instruct: every one of the 123,211 edges tested, one threshold.

    python experiments/smollm2_exact_acdc.py [--threads 2] [--threshold 0.05] [--budget SECONDS]

IOI, 50 discovery prompts (``split="half-discovery"``: half of the templates and names; seed 0),
logit difference, resample ablation,
`acdc.discover(model, task, threshold=0.05, checkpoint=...)` with no prefilter. The run is
resumable: it saves ACDC's checkpoint every minute (experiments/results/runs/), stops by itself after
``--budget`` seconds, and the same command picks it up where it stopped, so it can run in pieces
across sessions (a piece killed loses at most its last minute). Each piece records its wall time and
its per-layer edge-test times, every minute, in a sidecar file next to the checkpoint. While a file
``runs/smollm2_exact_acdc_t{threshold}.pause`` exists the run waits between two edge tests, and the
wait counts in no time (another job can have the machine without spoiling the timings). When the last edge is tested it writes the circuit
(experiments/results/smollm2_exact_acdc_t{threshold}.{json,md} and .circuit.json) with its
faithfulness on the 50 discovery prompts and on 50 held-out prompts (the other templates and names,
``split="half-held-out"``, seed 1), and the time per layer.

Time it alone on the machine: a second job beside it slowed the same edge test 13-fold here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from smollm2_common import ROOT, load, write

import acdc
from acdc.algorithms.acdc import run_acdc
from acdc.api import prepare


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--n-prompts", type=int, default=50)
    ap.add_argument("--budget", type=float, default=None, help="stop (resumably) after this many seconds of testing")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args(argv)
    model, tf = load(args.threads)
    task = acdc.tasks.ioi(model, args.n_prompts, seed=0, split="half-discovery")
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stem = f"smollm2_exact_acdc_t{args.threshold:g}"
    checkpoint, sidecar = runs / f"{stem}.checkpoint.json", runs / f"{stem}.times.json"
    times = json.loads(sidecar.read_text()) if sidecar.exists() else {"pieces": []}
    g = acdc.Graph.from_model(model)
    layer_of = g.dst_layer[g.edge_dst].tolist()
    pause = runs / f"{stem}.pause"
    t_start = last = last_save = time.perf_counter()
    paused = 0.0
    per_layer: dict[str, list[float]] = {}  # this piece's layer -> [edges tested, seconds]
    piece = {"seconds": 0.0, "date": time.strftime("%Y-%m-%d %H:%M"), "threads": args.threads, "finished": False,
             "code": _commit(), "per_layer": per_layer}  # pieces of one run may come from different, equally exact engines
    times["pieces"].append(piece)

    def save_times() -> None:
        piece["seconds"] = round(time.perf_counter() - t_start - paused, 1)
        piece["tested"] = sum(r[0] for r in per_layer.values())
        sidecar.write_text(json.dumps(times, indent=1))

    def on_edge(edge: int, delta: float, removed: bool) -> bool:
        nonlocal last, last_save, paused
        now = time.perf_counter()
        row = per_layer.setdefault(str(layer_of[edge]), [0, 0.0])
        row[0] += 1
        row[1] += now - last
        if now - last_save > 60:
            save_times()
            last_save = now
        if pause.exists():  # another job needs the machine: wait, and keep the wait out of every time
            save_times()
            while pause.exists():
                time.sleep(1.0)
            paused += time.perf_counter() - now
            now = time.perf_counter()
        last = now
        return args.budget is not None and now - t_start - paused > args.budget

    patcher, metric, batch = prepare(model, task, metric="logit_diff")
    circuit = run_acdc(patcher, metric, batch, threshold=args.threshold, checkpoint=checkpoint, callback=on_edge,
                       progress=True).selection()  # acdc.discover, with a callback that times each edge test
    done = not circuit.settings.get("stopped_early", False)
    piece["finished"] = done
    save_times()
    seconds = piece["seconds"]
    total = sum(p["seconds"] for p in times["pieces"])
    print(f"piece of {seconds:.0f} s; {total:.0f} s in all; {'finished' if done else 'stopped: run the same command to resume'}")
    if not done:
        return
    held_out = acdc.tasks.ioi(model, args.n_prompts, seed=1, split="half-held-out")
    f_in = acdc.faithfulness(model, task, circuit)
    f_out = acdc.faithfulness(model, held_out, circuit)
    circuit.to_json(args.out / f"{stem}.circuit.json", overwrite=True)  # regenerated by this script
    summed: dict[str, list[float]] = {}
    for p in times["pieces"]:
        for layer, (n, sec) in p["per_layer"].items():
            row = summed.setdefault(layer, [0, 0.0])
            row[0] += n
            row[1] += sec
    rows = {layer: {"edges": n, "seconds": round(sec, 1), "ms_per_edge": round(1000 * sec / max(n, 1), 1)}
            for layer, (n, sec) in sorted(summed.items(), key=lambda kv: int(kv[0]))}
    data = {"threshold": args.threshold, "edges": circuit.n_edges, "graph_edges": g.n_edges,
            "heads": sorted({n for n in circuit.nodes if n.startswith("a")}), "seconds": round(total, 1),
            "pieces": times["pieces"], "faithfulness": {"discovery": f_in.normalized, "held_out": f_out.normalized},
            "logit_diff": {"discovery": f_in.circuit_metric, "held_out": f_out.circuit_metric}, "per_layer": rows}
    md = [f"# Exact ACDC on SmolLM2-135M-Instruct (IOI, {args.n_prompts} prompts, threshold {args.threshold:g})", "",
          f"`python experiments/smollm2_exact_acdc.py --threshold {args.threshold:g}` ({len(times['pieces'])} pieces, "
          f"{total / 3600:.2f} h of testing on {args.threads} threads). Every one of the {g.n_edges:,} edges tested; no prefilter.", "",
          "| edges kept | heads | normalized faithfulness (discovery prompts) | normalized faithfulness (50 held-out prompts) |",
          "|---|---|---|---|",
          f"| {circuit.n_edges} | {len(data['heads'])} | {f_in.normalized:.3f} | {f_out.normalized:.3f} |", "",
          "Time per edge test by the destination's layer:", "", "| layer | edges | ms per edge |", "|---|---|---|"]
    md += [f"| {layer} | {r['edges']} | {r['ms_per_edge']} |" for layer, r in rows.items()]
    write(args.out, stem, data, "\n".join(md) + "\n")


def _commit() -> str:
    """The checkout's git commit (with "+changes" when its working tree differs), or "unknown"."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "acdc"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
