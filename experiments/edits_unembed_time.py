"""What unembedding only the answer rows saves an intervention on SmolLM2-135M-Instruct, side by side in one run.

    python experiments/edits_unembed_time.py [--threads 2] [--prompts 20] [--repeats 5]

`Transformer.logits_with_edits` (the forward every intervention runs) on the IOI prompts: every position
unembedded (the 49,152-token vocabulary at each of them) and the answer rows picked afterwards, against
``rows=`` (only the answer rows unembedded). Prints min-max seconds of each and the largest difference of
their logits (0: the same numbers).
"""

from __future__ import annotations

import argparse
import time

import torch
from smollm2_common import load

import acdc
from acdc.api import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model, _ = load(args.threads)
    p, _, _ = prepare(model, acdc.tasks.ioi(model, args.prompts, seed=0))
    tf, clean, pos = p.tf, p.clean_tokens.to(p.tf.device), p.answer_pos
    rows = torch.arange(clean.shape[0])[:, None]

    def every_position() -> torch.Tensor:
        logits = tf.logits_with_edits(clean)
        return logits[rows, pos].reshape(-1, logits.shape[-1])

    def answer_rows() -> torch.Tensor:
        return tf.logits_with_edits(clean, rows=pos)

    for fn in (every_position, answer_rows):
        fn()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        print(f"{fn.__name__}: {min(times):.3f}-{max(times):.3f} s ({args.repeats} runs; prompts {tuple(clean.shape)})")
    print(f"largest |difference| of the logits: {float((every_position() - answer_rows()).abs().max()):.3g}")


if __name__ == "__main__":
    main()
