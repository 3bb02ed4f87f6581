"""Transcoders: train (data-parallel under torchrun), fidelity, pages."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from .common import (
    Parser,
    float_or_none,
    model_and_corpus,
    option_flags,
    options_from,
    positive,
    sweep_flags,
    transcoder_flags,
)


def add_transcoders(sub: Any) -> None:
    """The `transcoders` command's parser."""
    t = sub.add_parser("transcoders", help="train transcoders (data-parallel under torchrun) or measure their fidelity",
                       description="Transcoders: `train` writes a transcoder set to -o (resumable with --checkpoint; "
                       "under `torchrun --nproc_per_node N -m acdc transcoders train ...` data-parallel), `fidelity` "
                       "measures one (fidelity.md, fidelity.json, fidelity.png).")
    tsub = t.add_subparsers(dest="transcoders_command", metavar="{train,fidelity,pages}", parser_class=Parser, required=True)
    from ..transcoders import TrainOptions
    tt = tsub.add_parser("train", help="train transcoders; writes the set (config.json + transcoders.safetensors) to -o")
    transcoder_flags(tt)
    tt.add_argument("--layers", type=int, nargs="+", default=None, help="layers to train (default: all)")
    tt.add_argument("--checkpoint", type=Path, default=None, help="folder for the training state (resumes from it)")
    tt.add_argument("--cross-layer", action="store_true", help="train one cross-layer transcoder over every layer (each "
                    "feature writes into its layer's MLP output and every later one; config.json + clt.safetensors)")
    option_flags(tt, TrainOptions, only=tuple(f.name for f in dataclasses.fields(TrainOptions) if f.name != "skip_first"))
    tt.set_defaults(run=_transcoders_train,
                    writes=lambda a: ("config.json", "clt.safetensors" if a.cross_layer else "transcoders.safetensors"))
    tf = tsub.add_parser("fidelity", help="FVU, L0, dead features, CE/KL spliced in, loss recovered",
                         description="Fidelity of a transcoder set; writes fidelity.md, .json and .png beside the set (a "
                         "local folder) or to -o (default for a hub name: fidelity/).")
    tf.add_argument("transcoders", help="a transcoder set folder, a cross-layer transcoder folder (acdc's or circuit-tracer's), "
                    "a sparsify, SAELens or circuit-tracer folder, or a hub name")
    transcoder_flags(tf)
    tf.add_argument("--sequences", type=positive, default=64, help="sequences to measure on (default 64)")
    tf.add_argument("--start", type=int, default=1_000_000, help="first sequence index (default 1000000: "
                    "away from the sequences training starts with)")
    tf.add_argument("--massive", type=float_or_none, default=100.0, help="leave positions whose MLP output norm is over this "
                    "many times the median to the MLPs (default 100; none: splice them too)")
    tf.add_argument("--splice-first", action="store_true", help="splice and measure each sequence's first position too")
    tf.set_defaults(run=_transcoders_fidelity, out=None, writes=("fidelity.md", "fidelity.json", "fidelity.png"),
                    default_out=lambda a: Path(a.transcoders) if Path(a.transcoders).is_dir() else Path("fidelity"))
    tp = tsub.add_parser("pages", help="one HTML page of features: top contexts, density, tokens promoted and exciting")
    tp.add_argument("transcoders", help="a transcoder set folder, a cross-layer transcoder folder, a sparsify, SAELens or "
                    "circuit-tracer folder, or a hub name")
    transcoder_flags(tp)
    tp.add_argument("--layer", type=int, required=True)
    tp.add_argument("--features", type=int, nargs="+", default=None, help="feature indices (default: --random of them)")
    tp.add_argument("--random", type=positive, default=10, help="how many features to draw at random (default 10)")
    tp.add_argument("--sequences", type=positive, default=64, help="sequences scanned for contexts (default 64)")
    tp.add_argument("--seed", type=int, default=0, help="seed of the random draw")
    tp.add_argument("--chunk", type=positive, default=256, help="sequences per piece of the corpus pass (each piece one "
                    "sweep item: a Ray task, a results file; default 256)")
    sweep_flags(tp)
    tp.set_defaults(run=_transcoders_pages, writes=lambda a: (f"features-m{a.layer}.html",))


def _transcoders_train(args: argparse.Namespace) -> int:
    import os

    from ..transcoders import TrainOptions, train_clt, train_transcoders
    from .common import CLIError

    options = options_from(args, TrainOptions)  # checked before the model loads
    if args.cross_layer and args.layers is not None:
        raise CLIError("--cross-layer trains one transcoder over every layer; leave out --layers")
    dist = None
    if "RANK" in os.environ:  # under torchrun: join the process group
        import torch
        import torch.distributed as dist
        import torch.distributed.nn  # noqa: F401  before the group exists, see below

        # torch.distributed.nn's functions take `group=group.WORLD` as a default, evaluated at import: imported
        # after init_process_group (transformers imports it while the model is built) they keep the group, so
        # destroy_process_group cannot free it and gloo's worker threads outlive the interpreter; one dropping
        # a collective's tensors during shutdown aborts the process ("terminate called without an active exception").
        dist.init_process_group("nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo")
    try:
        model, corpus, _ = model_and_corpus(args, options.seed)
        if args.cross_layer:
            ts = train_clt(model, corpus, options=options, checkpoint=args.checkpoint, progress=not args.no_progress,
                           model_name=args.model)
        else:
            ts = train_transcoders(model, corpus, layers=args.layers, options=options, checkpoint=args.checkpoint,
                                   progress=not args.no_progress, model_name=args.model)
        if dist is None or dist.get_rank() == 0:
            ts.save(args.out, overwrite=True)  # guard_outputs refused an existing set unless --force
            info = ts.info
            print(f"acdc transcoders train: {ts!r}: {info['tokens']:,} tokens, {info['tokens_per_second']:,.0f} tokens/s; "
                  f"saved to {args.out}")
    finally:
        if dist is not None:
            dist.destroy_process_group()
    return 0


def _transcoders_pages(args: argparse.Namespace) -> int:
    import torch

    from ..transcoders import CrossLayerTranscoder, feature_pages, feature_report, load_dictionary

    model, corpus, tok = model_and_corpus(args, 0)
    ts = load_dictionary(args.transcoders, model)
    n = ts.cfg.n_features if isinstance(ts, CrossLayerTranscoder) else ts[args.layer].n_features
    feats = args.features or sorted(torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))[: args.random].tolist())
    report = feature_report(model, ts, args.layer, feats, corpus, sequences=args.sequences, tokenizer=tok, chunk=args.chunk,
                            executor=args.executor, results=args.results, workers=args.workers, progress=not args.no_progress)
    path = feature_pages(report, args.out / f"features-m{args.layer}.html", title=f"layer {args.layer} features of {args.transcoders}")
    print(f"acdc transcoders pages: {len(report)} features of layer {args.layer} -> {path}")
    return 0


def _transcoders_fidelity(args: argparse.Namespace) -> int:
    import json

    from ..transcoders import load_dictionary, transcoder_fidelity

    model, corpus, _ = model_and_corpus(args, 0)
    ts = load_dictionary(args.transcoders, model)
    fid = transcoder_fidelity(model, ts, corpus, sequences=args.sequences, start=args.start, skip_first=not args.splice_first,
                              massive=args.massive, progress=not args.no_progress)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fidelity.md").write_text(fid.table() + "\n")
    recovered = None if fid.loss_recovered != fid.loss_recovered else fid.loss_recovered  # NaN (nothing to recover): null
    (args.out / "fidelity.json").write_text(json.dumps(dataclasses.asdict(fid) | {"loss_recovered": recovered}, indent=1))
    try:
        fid.plot(args.out / "fidelity.png")
    except ImportError:
        pass
    print(fid.table())
    return 0


