"""A feature-level circuit: a feature of an early MLP, read by a head, drives a feature of a later MLP,
which drives the answer.

Prompts: ``<bos> X is`` with X one of 8 item words, two per class (4 classes); the answer at
``is`` is the class's word. Corrupt prompts have an item of another class.

- m0 has one ReLU neuron per class, active on that class's items (``m0.f{k}``), and two distractor
  neurons that fire on ``<bos>`` and ``is`` and write junk (the same in clean and corrupt prompts).
- a1.h0 attends from every position to position 1 and copies the class features.
- m1 has one neuron per class reading the moved class (``m1.f{k}``), writing the answer direction.

The entry's transcoders are the MLPs themselves (encoder = W_in, decoder = W_out, ReLU), so each
feature is one planted neuron and the error nodes are zero; the feature graph keeps the features
active on the task's prompts (`acdc.active_features`). True edges (resample ablation):
input->m0, m0.f{k}->a1.h0<v> for every class k, a1.h0->m1, m1.f{k}->logits for every class k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..graph import Graph
from ..known import from_spec
from ..loading import load_model
from ..model import Transformer
from ..tasks import Task
from ..transcoders import ModelInfo, Transcoder, TranscoderConfig, TranscoderSet, active_features
from .builder import PlantedGPT2, WordTokenizer

CLASSES = 4
BETA = 20.0
GAMMA = 10.0
GAIN = 8.0  # pre-activation scale of the planted neurons


def build(*, n_prompts: int = 32, seed: int = 0):
    from . import ZooEntry

    c = ClassPlant.make(n_layers=2, d_mlp=16, seed=seed, middle="moved")
    p, tok, item_ids, answer_ids, t, pos, cls, moved, out = c.p, c.tok, c.item_ids, c.answer_ids, c.t, c.pos, c.cls, c.mid, c.out
    words = tok.vocab
    junk = p.resid.junk()
    # m0: a neuron per class over its items, and two distractors on <bos> and "is" writing junk
    reads = torch.cat([c.class_reads(), t[:2]])  # [6, d]
    writes = torch.cat([cls, junk[:2]])
    p.mlp(0, GAIN * reads.T, torch.full((CLASSES + 2,), -0.5 * GAIN), writes / (0.5 * GAIN))
    p.head(1, 0, query_bias=[(pos[1:2], BETA)], ov=[(cls, moved)])
    p.mlp(1, GAIN * moved.T, torch.full((CLASSES,), -0.5 * GAIN), out / (0.5 * GAIN))
    model = load_model(p.build())
    transcoders = _exact_transcoders(model)

    task = class_task(item_ids, answer_ids, n_prompts, seed, "zoo-feature-chain", len(words))
    chosen = active_features(model, transcoders, task)
    graph = Graph.from_model(model, transcoders=transcoders, features=chosen)
    truth = from_spec({
        "name": "zoo-feature-chain",
        "model": {k: v for k, v in graph.config().items() if k != "split_qkv"},
        "classes": {"class features": [f"m0.f{k}" for k in range(CLASSES)], "mover": ["a1.h0"],
                    "answer features": [f"m1.f{k}" for k in range(CLASSES)]},
        "rules": [
            {"from": "input", "to": "m0"},
            {"from": "class features", "to": "mover", "inputs": "v"},
            {"from": "mover", "to": "m1"},
            {"from": "answer features", "to": "logits"},
        ],
    })
    return ZooEntry("feature-chain", (__doc__ or "").strip().splitlines()[0], model, task, truth, tok,
                    transcoders=transcoders, graph=graph)


@dataclass
class ClassPlant:
    """A GPT-2 plant for ``<bos> X is`` prompts: one-hot tokens and positions, then the features ``class`` (what
    X's class is), a middle one (``mid``) and ``answer`` (read by the unembedding for each class word, times GAMMA)."""

    p: PlantedGPT2
    tok: WordTokenizer
    item_ids: torch.Tensor
    answer_ids: torch.Tensor
    t: torch.Tensor
    pos: torch.Tensor
    cls: torch.Tensor
    mid: torch.Tensor
    out: torch.Tensor

    @classmethod
    def make(cls, *, n_layers: int, d_mlp: int, seed: int, middle: str) -> ClassPlant:
        """The plant of ``n_layers`` layers with MLPs ``d_mlp`` wide, its middle feature named ``middle``."""
        tok, item_ids, answer_ids = class_words()
        p = PlantedGPT2(n_layers=n_layers, n_heads=4, d_model=64, d_mlp=d_mlp, vocab_size=len(tok), n_ctx=3, seed=seed, act="relu")
        t, pos = p.one_hot_inputs()
        r = p.resid
        c, mid, out = r.alloc("class", CLASSES), r.alloc(middle, CLASSES), r.alloc("answer", CLASSES)
        p.W_U[:, answer_ids] = GAMMA * out.T
        return cls(p, tok, item_ids, answer_ids, t, pos, c, mid, out)

    def class_reads(self) -> torch.Tensor:
        """[4, d] what class k's neuron reads: the token directions of its two items (item i is of class i % 4)."""
        item_class = torch.arange(2 * CLASSES) % CLASSES
        return torch.stack([self.t[self.item_ids[item_class == k]].sum(0) for k in range(CLASSES)])


def class_words() -> tuple[WordTokenizer, torch.Tensor, torch.Tensor]:
    """The vocabulary of ``<bos> X is`` prompts: (tokenizer, the 8 item ids (class = index % 4), the 4 answer ids)."""
    items = [f"item{i}" for i in range(2 * CLASSES)]
    answers = [f"class{k}" for k in range(CLASSES)]
    tok = WordTokenizer(["<bos>", "is", *items, *answers])
    return tok, torch.tensor([tok.index[w] for w in items]), torch.tensor([tok.index[w] for w in answers])


def class_task(item_ids: torch.Tensor, answer_ids: torch.Tensor, n_prompts: int, seed: int, name: str, vocab_size: int) -> Task:
    """``<bos> X is`` prompts (seeded): the answer is X's class word; each corrupt prompt has an item of another class."""
    gen = torch.Generator().manual_seed(1000 + seed)
    item_class = torch.arange(2 * CLASSES) % CLASSES
    x = torch.randint(0, len(item_ids), (n_prompts,), generator=gen)
    y = (x + torch.randint(1, CLASSES, (n_prompts,), generator=gen)) % CLASSES + CLASSES * torch.randint(0, 2, (n_prompts,), generator=gen)

    def prompts(i: torch.Tensor) -> torch.Tensor:
        n = len(i)
        return torch.stack([torch.zeros(n, dtype=torch.long), item_ids[i], torch.ones(n, dtype=torch.long)], 1)

    return Task.from_tokens(prompts(x), prompts(y), correct=answer_ids[item_class[x]], incorrect=answer_ids[item_class[y]],
                            metric="kl", name=name, vocab_size=vocab_size)


def _exact_transcoders(model: Any) -> TranscoderSet:
    """Transcoders that are the model's MLPs: encoder W_in, b_in; decoder W_out, b_out; ReLU."""
    tf = Transformer.of(model)
    out = {}
    for layer in range(tf.arch.n_layers):
        w = tf.mlp_weights(layer)
        t = Transcoder(TranscoderConfig(tf.arch.d_model, tf.arch.d_mlp, "relu"))
        with torch.no_grad():
            t.W_enc.copy_(w["W_in"])
            t.b_enc.copy_(w["b_in"])
            t.W_dec.copy_(w["W_out"])
            t.b_dec.copy_(w["b_out"])
        out[layer] = t
    return TranscoderSet(out, ModelInfo.of(tf, "zoo feature-chain"), source="the zoo model's own MLPs (exact)")
