"""acdc's attribution graph against circuit-tracer's on the same model, transcoders and prompt.

    .venv/bin/python experiments/peers/check_attribution_graph.py OUT_DIR [--smollm2]

OUT_DIR holds what experiments/peers/circuit_tracer_graph.py wrote there (the model, the transcoders in
circuit-tracer's layout, circuit-tracer's graph). acdc loads the same model and transcoders, builds the
graph of the same tokens, compares node lists and every entry of the adjacency, and writes its graph
in circuit-tracer's JSON format to OUT_DIR/acdc_graph.json (read back by circuit-tracer's code by the
shell driver). Results: experiments/results/circuit_tracer_graph.md (``--smollm2``: the SmolLM2 run of
experiments/peers/check_attribution_graph_smollm2.sh, circuit_tracer_graph_smollm2.md, with memory).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import acdc

ap = argparse.ArgumentParser()
ap.add_argument("out", type=Path)
ap.add_argument("--smollm2", action="store_true", help="the SmolLM2 side-by-side (another description and results file)")
ap.add_argument("--gemma2", action="store_true", help="the tiny Gemma 2 of circuit_tracer_graph.py --gemma2")
ap.add_argument("--clt", action="store_true", help="the cross-layer transcoder of circuit_tracer_graph.py --clt")
ap.add_argument("--results", default=None, help="the results file's name (default: the check's own)")
ap.add_argument("--command", default=None, help="the command named in the results (default: the check's own)")
ap.add_argument("--max-feature-nodes", type=int, default=None,
                help="the cap circuit-tracer's graph was built with (its batch size too: the features kept depend on both)")
ap.add_argument("--batch-size", type=int, default=64, help="targets per backward pass, as circuit-tracer's run had them")
args = ap.parse_args()
out = args.out
torch.set_num_threads(2)
ct = load_file(str(out / "ct_graph.safetensors"))
model = acdc.load_model(str(out / "model"))
ts = acdc.load_clt(out / "transcoders", model) if args.clt else acdc.load_transcoders(out / "transcoders", model)
tokens = ct["tokens"]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
t0 = time.perf_counter()
g = acdc.attribution_graph(model, tokens, transcoders=ts, max_logits=10, logit_prob=0.95, batch_size=args.batch_size,
                          max_feature_nodes=args.max_feature_nodes, progress=False)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
same_features = torch.equal(g.features, ct["active_features"][ct["selected_features"]])
same_logits = torch.equal(g.logit_tokens, ct["logit_tokens"])
diff = float((g.adjacency - ct["adjacency"]).abs().max())
scale = float(ct["adjacency"].abs().max())
acts = float((g.activations - ct["activations"][ct["selected_features"]]).abs().max())
g.to_json(out / "acdc_graph.json", scan="acdc-check")
capped_lines: list[str] = []
capped_ok = True
if (out / "ct_graph_capped.safetensors").exists():  # max_feature_nodes: the same features kept, the same edges
    cc = load_file(str(out / "ct_graph_capped.safetensors"))
    cap = int(cc["selected_features"].numel())
    gc = acdc.attribution_graph(model, tokens, transcoders=ts, max_logits=10, logit_prob=0.95, batch_size=8, max_feature_nodes=cap,
                                update_interval=2, progress=False)
    same_kept = torch.equal(gc.features, cc["active_features"][cc["selected_features"]])
    cdiff = float((gc.adjacency - cc["adjacency"]).abs().max()) if gc.adjacency.shape == cc["adjacency"].shape else float("inf")
    capped_ok = same_kept and cdiff <= 1e-4 * max(scale, 1.0)
    capped_lines = [f"- with max_feature_nodes={cap} (batches of 8, re-ranked every 2 batches): the same {cap} of "
                    f"{g.n_features} features kept: {same_kept}; largest adjacency difference {cdiff:.2e} over "
                    f"{gc.n_nodes ** 2:,} entries"]
ct_time = (out / "ct_time.txt").read_text().split()
ct_seconds = float(ct_time[0])
version = (out / "version.txt").read_text().strip() if (out / "version.txt").exists() else "circuit-tracer"
ok = same_features and same_logits and diff <= 1e-4 * max(scale, 1.0) and capped_ok
if args.smollm2:
    n_prompt = len((out / "prompt.txt").read_text().split())  # circuit-tracer's input: these, after a BOS it may prepend
    about = (f"SmolLM2-135M-Instruct (the shipped GGUF, dequantized into a plain Hugging Face folder; circuit-tracer runs it as a "
             f"TransformerLens model converted by TransformerLens, logits within {float(ct_time[2]):.0e} of acdc's), acdc's "
             f"TopK transcoders turned into JumpReLU ones (experiments/peers/smollm2_jumprelu.py) in circuit-tracer's layout, "
             + (f"the first {n_prompt} tokens of the held-out speeches" + (" after the BOS token circuit-tracer prepends"
                                                                          if len(tokens) > n_prompt else "")
                if args.results else f"the IOI prompt of {len(tokens)} tokens")
             + f"; {version}. Each tool alone on the machine, 2 threads. "
             f"Command: `{args.command or 'bash experiments/peers/check_attribution_graph_smollm2.sh'}`.")
    speed = [f"| seconds | {seconds:.1f} | {ct_seconds:.1f} |",
             f"| peak resident memory of the process, GB (acdc: {before:.2f} before the graph) | {peak:.2f} | {float(ct_time[1]):.2f} |"]
    results = args.results or "circuit_tracer_graph_smollm2.md"
elif args.gemma2:
    about = (f"Same tiny random Gemma 2 (2 layers, d_model 32, 4 heads and 2 key/value heads, norms after attention and after the "
             f"MLP, soft caps, a 4-token sliding window), same JumpReLU skip transcoders reading the MLP's normed input and "
             f"writing its output after its norm (`hook_mlp_out`, as GemmaScope's are hooked), same prompt of {len(tokens)} tokens; "
             f"{version}, which freezes each norm's scale (those after attention and after the MLP too), as acdc does. "
             "Command: `bash experiments/peers/check_attribution_graph.sh --gemma2`.")
    speed = [f"| seconds (2 threads; a toy size, so overheads only) | {seconds:.3f} | {ct_seconds:.3f} |"]
    results = "circuit_tracer_graph_gemma2.md"
elif args.clt:
    about = (f"Same random GPT-2 (4 layers, d_model 32), the same JumpReLU cross-layer transcoder (64 features per layer, each "
             f"reading the stream before its layer's MLP norm, `hook_resid_mid`, and writing into that MLP's output and every "
             f"later one's), saved by circuit-tracer's `CrossLayerTranscoder.to_safetensors` and read by `acdc.load_clt`, same "
             f"prompt of {len(tokens)} tokens; {version}. Command: `bash experiments/peers/check_attribution_graph.sh --clt`.")
    speed = [f"| seconds (2 threads; a toy size, so overheads only) | {seconds:.3f} | {ct_seconds:.3f} |"]
    results = "circuit_tracer_graph_clt.md"
else:
    about = (f"Same random GPT-2 (4 layers, d_model 32), same JumpReLU skip transcoders in circuit-tracer's layout (4 x 64 "
             f"features), same prompt of {len(tokens)} tokens; {version}. Command: `bash experiments/peers/check_attribution_graph.sh`.")
    speed = [f"| seconds (2 threads; a toy size, so overheads only) | {seconds:.3f} | {ct_seconds:.3f} |"]
    results = "circuit_tracer_graph.md"
lines = [
    "# acdc's attribution graph against circuit-tracer's",
    "",
    about,
    "",
    "| | acdc | circuit-tracer |",
    "|---|---|---|",
    f"| active features | {g.info['active_features']} | {int(ct['active_features'].shape[0])} |",
    *([f"| features kept (max_feature_nodes={args.max_feature_nodes:,}, batch {args.batch_size}) | {g.n_features} | "
       f"{int(ct['selected_features'].numel())} |"] if args.max_feature_nodes else []),
    f"| logit nodes | {g.n_logits} | {int(ct['logit_tokens'].numel())} |",
    f"| nodes | {g.n_nodes} | {int(ct['adjacency'].shape[0])} |",
    *speed,
    "",
    f"- same features in the same order: {same_features}; same logit tokens: {same_logits}",
    f"- largest activation difference: {acts:.2e}",
    f"- largest adjacency difference: {diff:.2e} (largest entry {scale:.2f}) over {g.n_nodes ** 2:,} entries",
    *capped_lines,
    f"- result: {'the same graph' if ok else 'DIFFERENT'}",
]
(Path("experiments/results") / results).write_text("\n".join(lines) + "\n")
print("\n".join(lines))
raise SystemExit(0 if ok else 1)
