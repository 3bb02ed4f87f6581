"""Write the first N tokens of the held-out State of the Union speeches as OUT_DIR/prompt.txt (token ids) with acdc's
logits of them (OUT_DIR/logits.safetensors): the long prompts of check_attribution_graph_lengths.sh.

    .venv/bin/python experiments/peers/sotu_prompt.py OUT_DIR N
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import acdc
from acdc.transcoders import text_stream

out, n = Path(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(2)
model = acdc.load_model("smollm2-135m-instruct")
tokens = text_stream("sotu-heldout", model.tokenizer, n, seed=0).batch(0, 1)[0]  # as attribution_graph_lengths.py
(out / "prompt.txt").write_text(" ".join(str(int(t)) for t in tokens) + "\n")
with torch.no_grad():
    save_file({"logits": model(tokens[None])[0].contiguous()}, str(out / "logits.safetensors"))
print(f"wrote {out}/prompt.txt ({len(tokens)} tokens)")
