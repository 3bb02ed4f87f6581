"""How long one patched run of a circuit takes, by circuit size: the cost of every explorer click and faithfulness point.

    python experiments/patched_run_speed.py                   # ~2 min on 2 CPU threads
    python experiments/patched_run_speed.py --smollm2         # also SmolLM2's IOI circuits (needs acdc[smollm2])
    git worktree add /tmp/old REV && python experiments/patched_run_speed.py --root /tmp/old   # another version's acdc

`Patcher.logits` with everything outside the circuit ablated (resample), best of ``--reps``:
random circuits of 100 / 500 / 2,000 / 16,000 edges on the GPT-2-small-shaped workload (50 x 15
tokens), and with ``--smollm2`` the EAP greedy circuits of 100 and 1,000 edges of SmolLM2-135M on
20 IOI prompts. ``--root`` imports acdc from another checkout (an A/B of two versions on the same
workload); the metric is printed so the two can be checked to agree. Prints a table; writes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = Path(sys.argv[sys.argv.index("--root") + 1]).resolve() if "--root" in sys.argv else HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))  # before the workload imports acdc: the version measured

import torch  # noqa: E402
from gpt2_shape import best_of, workload  # noqa: E402

import acdc  # noqa: E402
from acdc.api import prepare  # noqa: E402


def timed(model, task, circuits: dict[str, torch.Tensor], reps: int) -> list[str]:
    """One row per circuit (kept mask): its size, the best time of a patched run, the metric it gives."""
    p, m, batch = prepare(model, task)
    rows = []
    for name, keep in circuits.items():
        seconds = best_of(lambda keep=keep: p.logits(~keep), reps)
        rows.append(f"| {name} | {int(keep.sum())} | {seconds:.2f} | {m(p.logits(~keep), batch):.6f} |")
    return rows


def main() -> None:
    def flags(ap):
        ap.add_argument("--reps", type=int, default=3)
        ap.add_argument("--smollm2", action="store_true")
        ap.add_argument("--root", type=Path, default=None, help="import acdc from this checkout")

    args, model, task = workload((__doc__ or "").splitlines()[0], None, flags)
    g = acdc.Graph.from_model(model)
    circuits = {}
    for n in (100, 500, 2000, 16000):
        keep = torch.zeros(g.n_edges, dtype=torch.bool)
        keep[torch.randperm(g.n_edges, generator=torch.Generator().manual_seed(n))[:n]] = True
        circuits[f"GPT-2-small shape, random {n} edges"] = keep
    rows = timed(model, task, circuits, args.reps)
    if args.smollm2:
        from smollm2_common import load

        smol, _ = load(args.threads)
        ioi = acdc.tasks.ioi(smol, 20, seed=0)
        scores = acdc.attribute(smol, ioi, method="eap")
        rows += timed(smol, ioi, {f"SmolLM2 IOI, EAP greedy {n}": scores.greedy(n).in_graph for n in (100, 1000)}, args.reps)
    print(f"acdc from {Path(acdc.__file__).parent}, {args.threads} threads, best of {args.reps}\n")
    print("| circuit | edges | patched run (s) | metric |\n|---|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
