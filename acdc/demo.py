"""Offline demo: discover the circuit planted in the zoo's miniature-IOI model and score it.

The model is a 3-layer GPT-2 whose weights were set by hand so that a duplicate-token head,
an S-inhibition head and a name mover carry the task, among random distractor heads and MLPs
(`acdc.zoo`). Nothing is downloaded. ACDC runs at one threshold, the circuit is scored against
the planted edges, a threshold sweep gives the ROC AUC, and the circuit is saved as JSON and
drawn (circuit.png, and comparison.png against the truth) when graphviz's dot is installed.

    python -m acdc.demo --out out/demo
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="acdc offline demo: find and score a planted circuit")
    ap.add_argument("-o", "--out", default="out/demo", help="folder for circuit.json, circuit.png, comparison.png")
    ap.add_argument("--model", default="zoo:ioi", help="zoo:ioi, zoo:induction or zoo:modular-sum")
    ap.add_argument("--threshold", type=float, default=0.1)
    args = ap.parse_args(argv)
    name = args.model.removeprefix("zoo:")

    from . import zoo
    from .api import discover, roc
    from .circuit import Circuit
    from .evaluation import recovery
    from .render import DotNotFoundError, render, render_comparison

    entry = zoo.load(name)
    m = entry.model.cfg
    print(f"model: zoo '{entry.name}' - {entry.description}")
    print(f"       GPT-2 shape, {m.n_layers} layers x {m.n_heads} heads, hand-set weights (built offline)")
    print(f"task:  {entry.task}; e.g. {entry.tokenizer.decode(entry.task.clean[0])!r}")
    print(f"       corrupt: {entry.tokenizer.decode(entry.task.corrupt[0])!r}")
    print(f"truth: {entry.truth.n_edges} planted edges")
    t0 = time.perf_counter()
    circuit = discover(entry.model, entry.task, threshold=args.threshold, ablation=entry.ablation)
    print(f"ACDC took {time.perf_counter() - t0:.2f}s")
    print(circuit.summary(max_edges=20))
    rec = recovery(circuit, entry.truth)
    print(f"score vs planted truth: {rec}")
    sweep = roc(entry.model, entry.task, truth=entry.truth, ablation=entry.ablation, progress=False)
    print(f"threshold sweep ({len(sweep.params)} thresholds, {sweep.seconds:.1f}s): {sweep!r}; "
          f"exact recovery at {len(sweep.exact())} thresholds")
    out = Path(args.out)
    earlier = (out / "circuit.json").exists()
    path = circuit.to_json(out / "circuit.json", overwrite=True)  # the demo's own folder: a rerun replaces it, and says so
    if earlier:
        print(f"(replaced the earlier demo's files in {out}/)")
    assert Circuit.from_json(path) == circuit
    print(f"saved {path} (EAP-IG/MIB graph JSON; reloads identically)")
    try:
        png = render(circuit, out / "circuit.png", classes=entry.truth)
        cmp = render_comparison(circuit, entry.truth, out / "comparison.png")
        print(f"drew {png} (layers bottom-up, q/k/v in three colours) and {cmp} (found vs planted)")
    except DotNotFoundError as err:
        print(f"no images: {err}")
    print(f"explore it in the browser (ablate edges live): acdc explore {path} --model zoo:{entry.name}")


if __name__ == "__main__":
    main()
