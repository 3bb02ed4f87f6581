"""A GPT-2-small-shaped graph with every MLP neuron as a node: build it, run one patched forward.

    python experiments/neuron_graph.py                       # 8 prompts x 15 tokens, half the edges ablated
    python experiments/neuron_graph.py --prompts 50 --fraction 0.1

GPT-2 small's shape with random weights (seed 0): 12 layers x 3,072 neurons = 36,864 neuron
sources. Times the graph's construction, the Patcher's (clean and corrupt runs), and one
`Patcher.logits` of a random edge set (each edge ablated with probability ``--fraction``), and
reports the process's peak memory (its own VmHWM: `peak_memory`) after loading the model and at the end. Writes
experiments/results/neuron_graph.md and .json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from gpt2_shape import workload  # noqa: E402
from peak_memory import peak_kib  # noqa: E402

import acdc  # noqa: E402


def _peak_gb() -> float:
    return peak_kib() / 2**20


def main(argv: list[str] | None = None) -> dict:
    def flags(ap):
        ap.add_argument("--prompts", type=int, default=8)
        ap.add_argument("--fraction", type=float, default=0.5, help="probability that an edge is ablated")

    args, model, task = workload((__doc__ or "").splitlines()[0], argv, flags)
    task = acdc.Task.from_tokens(task.clean[: args.prompts], task.corrupt[: args.prompts],
                                 correct=task.correct[: args.prompts], incorrect=task.incorrect[: args.prompts])
    out: dict = {"prompts": args.prompts, "tokens": int(task.clean.shape[1]), "fraction": args.fraction,
                 "threads": args.threads, "peak_gb_model_loaded": round(_peak_gb(), 3)}
    t0 = time.perf_counter()
    g = acdc.Graph.from_model(model, mlp_units="neurons")
    out["graph_seconds"] = round(time.perf_counter() - t0, 3)
    out.update(sources=len(g.sources), neurons=sum(len(g.mlp_sources(layer)) for layer in range(g.n_layers)),
               destinations=len(g.destinations), edges=g.n_edges)
    t0 = time.perf_counter()
    p = acdc.Patcher(model, task, graph=g)
    out["patcher_seconds"] = round(time.perf_counter() - t0, 3)
    mask = torch.rand(g.n_edges, generator=torch.Generator().manual_seed(1)) < args.fraction
    t0 = time.perf_counter()
    logits = p.logits(mask)
    out["forward_seconds"] = round(time.perf_counter() - t0, 3)
    out["ablated_edges"] = int(mask.sum())
    out["logits_finite"] = bool(torch.isfinite(logits).all())
    out["peak_gb"] = round(_peak_gb(), 3)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "neuron_graph.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [
        "# GPT-2 small with every MLP neuron as a node (`python experiments/neuron_graph.py`)", "",
        f"{out['neurons']:,} neuron sources ({out['sources']:,} sources, {out['destinations']} destinations, "
        f"{out['edges']:,} edges); {args.prompts} prompts x {out['tokens']} tokens, {args.threads} threads, "
        f"{out['ablated_edges']:,} edges ablated at random.", "",
        "| step | seconds |", "|---|---|",
        f"| build the graph | {out['graph_seconds']} |", f"| Patcher (clean and corrupt runs) | {out['patcher_seconds']} |",
        f"| one patched forward | {out['forward_seconds']} |", "",
        f"Peak memory of the process: {out['peak_gb_model_loaded']} GB with the model loaded, {out['peak_gb']} GB at the end.",
    ]
    (args.out / "neuron_graph.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()
