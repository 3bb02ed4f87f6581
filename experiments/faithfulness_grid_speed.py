"""How long the faithfulness grid takes on a GPT-2-small-shaped model (random weights).

    python experiments/faithfulness_grid_speed.py          # ~1 min on 2 CPU threads

50 clean / 50 corrupt prompts of 15 random tokens, random answers, the circuit of the 500
edges with the largest EAP scores; the default grid (10 settings, one axis varied at a time).
Prints the time of the grid and of the circuit, and writes faithfulness_grid_speed.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from gpt2_shape import workload  # noqa: E402

import acdc  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args, model, task = workload((__doc__ or "").splitlines()[0], argv)
    circuit = acdc.attribute(model, task, method="eap").top(500)
    t0 = time.perf_counter()
    grid = acdc.faithfulness_grid(model, task, circuit)
    seconds = time.perf_counter() - t0
    text = (f"# Faithfulness grid speed (`python experiments/faithfulness_grid_speed.py`)\n\n"
            f"GPT-2-small shape ({args.layers} layers, random weights), 50 x 15 tokens, {args.threads} threads, "
            f"a 500-edge circuit: the default grid ({len(grid.rows)} settings) took {seconds:.1f} s.\n\n"
            + grid.to_markdown())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faithfulness_grid_speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
