"""A cross-layer feature: one feature of the first MLP writes into the first two MLPs' outputs, and a late head
carries what the second wrote to the answer.

Prompts: ``<bos> X is`` with X one of 8 item words, two per class (4 classes); the answer at ``is`` is the
class's word. Corrupt prompts have an item of another class.

- m0 has one ReLU neuron per class, active on that class's items at X, writing the class direction.
- m1 has one ReLU neuron per class reading the class direction at X (an amplification step), writing an
  "amplified" direction.
- a2.h0 attends from every position to X and copies the amplified class into the answer direction.

With per-layer transcoders the path is ``input -> m0.f -> m1 -> m1.f -> a2.h0 -> logits``. The entry's
transcoder is a *cross-layer* one (`acdc.CrossLayerTranscoder`) built from the MLPs: layer 0's feature k reads
what m0's neuron k reads and writes m0's output and, into layer 1, m1's output per unit of m0's activation
(their ratio, fitted on the task's prompts), so one feature explains both MLPs and the path is
``input -> m0 -> m0.f{k} -> a2.h0<v> -> logits`` (ACDC's circuit and the attribution graph's). Layers 1 and 2 have
no active features; their error nodes hold what the CLT leaves (nearly nothing).

An edge into m1 matters alone here although it is not in the circuit: cut it and m1's output changes while the
CLT's account of it (layer 0's features on *their* input) does not, so m1's error node carries the difference
to the head. With m1's error node's edges ablated as well, nothing of m1's input matters: the circuit above is
faithful, and minimal (`tests/test_zoo.py`).
"""

from __future__ import annotations

import torch

from ..graph import Graph
from ..known import from_spec
from ..loading import load_model
from ..model import Transformer
from ..transcoders import CLTConfig, CrossLayerTranscoder, ModelInfo, active_features
from .feature_chain import BETA, CLASSES, GAIN, ClassPlant, class_task


def build(*, n_prompts: int = 32, seed: int = 0):
    from . import ZooEntry

    c = ClassPlant.make(n_layers=3, d_mlp=8, seed=seed, middle="amplified")
    p, tok, item_ids, answer_ids, pos, cls, amp, out = c.p, c.tok, c.item_ids, c.answer_ids, c.pos, c.cls, c.mid, c.out
    words = tok.vocab
    reads = c.class_reads()  # [4, d]
    bias = torch.full((CLASSES,), -0.5 * GAIN)
    p.mlp(0, GAIN * reads.T, bias, cls / (0.5 * GAIN))
    p.mlp(1, GAIN * cls.T, bias, amp / (0.5 * GAIN))
    p.mlp(2, torch.zeros(p.d_model, 1), torch.full((1,), -10.0), torch.zeros(1, p.d_model))  # no MLP work in layer 2
    p.head(2, 0, query_bias=[(pos[1:2], BETA)], ov=[(amp, out)])
    model = load_model(p.build())

    task = class_task(item_ids, answer_ids, n_prompts, seed, "zoo-clt-chain", len(words))
    clt = _cross_layer_transcoder(model, torch.cat([task.clean, task.corrupt]))
    chosen = active_features(model, clt, task)
    graph = Graph.from_model(model, transcoders=clt, features=chosen)
    truth = from_spec({
        "name": "zoo-clt-chain",
        "model": {k: v for k, v in graph.config().items() if k != "split_qkv"},
        "classes": {"class features": [f"m0.f{k}" for k in range(CLASSES)], "mover": ["a2.h0"]},
        "rules": [
            {"from": "input", "to": "m0"},
            {"from": "class features", "to": "mover", "inputs": "v"},
            {"from": "mover", "to": "logits"},
        ],
    })
    return ZooEntry("clt-chain", (__doc__ or "").strip().splitlines()[0], model, task, truth, tok,
                    transcoders=clt, graph=graph)


def _cross_layer_transcoder(model, tokens: torch.Tensor) -> CrossLayerTranscoder:
    """The CLT the plant is made of: layer 0's features are m0's class neurons (encoder W_in, b_in); each writes m0's
    W_out row into layer 0 and, into layer 1, m1's W_out row times m1's activation per unit of its own (least squares
    over ``tokens`` [n, S], at the item's position); layers 1 and 2 have features that never fire."""
    tf = Transformer.of(model)
    a = tf.arch
    clt = CrossLayerTranscoder(CLTConfig(a.n_layers, a.d_model, CLASSES, "relu"), ModelInfo.of(tf, "zoo clt-chain"),
                               "the zoo model's own MLPs (one cross-layer feature per class)")
    w0, w1 = tf.mlp_weights(0), tf.mlp_weights(1)
    with torch.no_grad():
        run = tf.run(tokens)
        h0 = tf.mlp_hidden(0, run.resid_mid[0][:, 1])[:, :CLASSES]  # [n, 4] at the item
        h1 = tf.mlp_hidden(1, run.resid_mid[1][:, 1])[:, :CLASSES]
        ratio = (h0 * h1).sum(0) / (h0 * h0).sum(0).clamp_min(1e-12)  # m1's activation per unit of m0's, per class
        clt.W_enc.zero_()
        clt.b_enc.fill_(-1.0)  # layers 1 and 2: never active
        clt.W_enc[0].copy_(w0["W_in"][:, :CLASSES])
        clt.b_enc[0].copy_(w0["b_in"][:CLASSES])
        clt.W_dec[0][:, 0].copy_(w0["W_out"][:CLASSES])
        clt.W_dec[0][:, 1].copy_(ratio[:, None] * w1["W_out"][:CLASSES])
        for layer in range(a.n_layers):
            clt.b_dec[layer].copy_(tf.mlp_bias(layer))
    return clt
