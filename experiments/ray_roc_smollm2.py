"""A 20-threshold ROC sweep on SmolLM2 (prefiltered ACDC), serial and on a local Ray cluster of two workers.

    python experiments/ray_roc_smollm2.py [--n-prompts 10] [--prefilter 0.002] [--n-thresholds 20]

IOI (``split="half-discovery"``, seed 0), logit difference, resample ablation, the model given by name so
each Ray worker loads it once. The truth is the 175-edge IOI circuit of experiments/smollm2_curves.py
(held-out faithfulness 0.98): a reference to draw the curve against, not a ground truth. The serial
sweep runs in this process on ``--threads`` threads; the cluster is ``ray start --head`` plus a second
node process on this machine (one CPU each), one worker per node on one thread each, stopped at the
end. Its circuits are compared bit for bit with a serial sweep on one thread (CPU kernels split their sums
by thread count, so the last bits depend on it); a serial sweep on ``--threads`` threads gives the speed
of one process on every core. Both sweeps rank the edges once for the prefilter (in this process) before the thresholds run.

Reports each sweep's wall time, the ACDC seconds inside its items, whether the circuits are identical,
and the overhead per item on Ray: (wall time - the ranking) x workers / items - mean ACDC seconds per
item, i.e. what a worker spends per item beyond running ACDC (its share of starting up, loading the
model, building the patcher, shipping results). Time it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from smollm2_common import ROOT, write

import acdc

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
TRUTH = ROOT / "experiments" / "results" / "runs" / "curves" / "ioi__acdc_0.02_s0.0075.edges.json"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n-prompts", type=int, default=10)
    ap.add_argument("--prefilter", type=float, default=0.002)
    ap.add_argument("--n-thresholds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the second serial sweep")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    name = "smollm2-135m-instruct"
    model = acdc.load_model(name)
    task = acdc.tasks.ioi(model, args.n_prompts, seed=0, split="half-discovery")
    truth = json.loads(TRUTH.read_text())
    kw = {"truth": truth, "n_thresholds": args.n_thresholds, "prefilter": args.prefilter, "progress": False}

    torch.set_num_threads(1)  # first the serial sweep the workers must match bit for bit: one thread, as each of them
    t = time.perf_counter()
    serial = acdc.roc(name, task, **kw)
    t_serial1 = time.perf_counter() - t
    torch.set_num_threads(args.threads)  # then the same machine's speed for one process on every core
    t = time.perf_counter()
    serial2 = acdc.roc(name, task, **kw)
    t_serial = time.perf_counter() - t
    torch.set_num_threads(1)
    t = time.perf_counter()  # the prefilter's ranking alone (the same call roc makes once, in this process)
    acdc.attribute(model, task, method="eap-ig-inputs", steps=5)
    ranking = time.perf_counter() - t

    with _cluster() as address:
        t = time.perf_counter()
        on_ray = acdc.roc(name, task, executor=address, workers=2, threads=1, **kw)
        t_ray = time.perf_counter() - t

    n = len(serial.params)
    same = all(torch.equal(a.in_graph, b.in_graph) and torch.equal(a.scores.nan_to_num(), b.scores.nan_to_num())
               for a, b in zip(serial.circuits, on_ray.circuits, strict=True))
    acdc_serial = sum(c.settings["seconds"] for c in serial2.circuits)
    acdc_serial1 = sum(c.settings["seconds"] for c in serial.circuits)
    same2 = all(torch.equal(a.in_graph, b.in_graph) for a, b in zip(serial.circuits, serial2.circuits, strict=True))
    acdc_ray = sum(c.settings["seconds"] for c in on_ray.circuits)
    overhead = (t_ray - ranking) * 2 / n - acdc_ray / n
    data = {"n_prompts": args.n_prompts, "prefilter": args.prefilter, "thresholds": list(serial.params),
            "edges": [c.n_edges for c in serial.circuits], "auc": {"serial": serial.auc, "ray": on_ray.auc},
            "identical": same, "same_circuits_2_threads": same2,
            "serial_1_thread": {"wall_s": round(t_serial1, 1), "acdc_s": round(acdc_serial1, 1)},
            "serial": {"wall_s": round(t_serial, 1), "acdc_s": round(acdc_serial, 1), "threads": args.threads},
            "ray": {"wall_s": round(t_ray, 1), "acdc_s": round(acdc_ray, 1), "workers": 2, "threads_per_worker": 1},
            "ranking_s": round(ranking, 1), "overhead_per_item_s": round(overhead, 2)}
    md = [f"# A {n}-threshold ROC sweep on SmolLM2, serial and on a local Ray cluster", "",
          f"`python experiments/ray_roc_smollm2.py --n-prompts {args.n_prompts} --prefilter {args.prefilter} "
          f"--n-thresholds {args.n_thresholds}` (IOI, {args.n_prompts} prompts, ACDC prefiltered to the top "
          f"{args.prefilter:g} of edges by EAP-IG, ranked once). Ray: `ray start --head` plus a second node process "
          "on this machine, one worker per node on one thread; serial: this process, on one thread (what the workers "
          f"must match bit for bit) and on {args.threads}.", "",
          "| run | wall time (s) | ACDC inside the items (s) | circuits |", "|---|---|---|---|",
          f"| serial (1 thread) | {t_serial1:.1f} | {acdc_serial1:.1f} | the reference |",
          f"| serial ({args.threads} threads) | {t_serial:.1f} | {acdc_serial:.1f} | "
          f"{'the same edges' if same2 else 'other edges at some thresholds'} |",
          f"| Ray, 2 workers x 1 thread | {t_ray:.1f} | {acdc_ray:.1f} | {'identical to serial' if same else 'DIFFER'} |", "",
          f"The prefilter's ranking took {ranking:.1f} s of each wall time. Overhead per item on Ray "
          f"((wall - ranking) x 2 workers / {n} items - mean ACDC seconds per item): {overhead:.2f} s. "
          f"Circuit sizes across the thresholds: {', '.join(str(c.n_edges) for c in serial.circuits)}."]
    write(args.out, "ray_roc_smollm2", data, "\n".join(md) + "\n")


class _cluster:
    """`ray start --head` and a second node process (one CPU each), stopped on exit; yields the address."""

    def __enter__(self) -> str:
        exe = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
        if exe is None:
            sys.exit("the ray command is missing: pip install 'acdc[ray]'")
        self.exe = exe
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        address = f"127.0.0.1:{port}"
        subprocess.run([exe, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                        "--disable-usage-stats"], check=True, capture_output=True)
        subprocess.run([exe, "start", f"--address={address}", "--num-cpus=1"], check=True, capture_output=True)
        return address

    def __exit__(self, *exc: object) -> None:
        subprocess.run([self.exe, "stop", "--force"], capture_output=True)


if __name__ == "__main__":
    main()
