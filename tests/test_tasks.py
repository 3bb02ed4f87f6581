"""Task validation: one-line errors that say what to fix."""

from __future__ import annotations

import pytest
import torch

from acdc.tasks import Task


def test_from_tokens_defaults():
    t = Task.from_tokens([[1, 2, 3], [4, 5, 6]], [[1, 2, 0], [4, 0, 6]], correct=[1, 2], incorrect=[3, 4])
    assert t.answer_pos.tolist() == [2, 2] and t.n_prompts == 2 and t.metric == "kl"
    assert t.answers is not None and t.answers[0].tolist() == [1, 2]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"clean": [[1, 2]], "corrupt": [[1, 2, 3]]}, "same length"),
        ({"clean": [[]], "corrupt": [[]]}, "non-empty"),
        ({"clean": [[1, 2]], "corrupt": [[1, 2]], "answer_pos": 5}, r"\[0, 1\]"),
        ({"clean": [[1, 2]], "corrupt": [[1, 2]], "correct": [1]}, "both"),
        ({"clean": [[1, 2]], "corrupt": [[1, 2]], "correct": [1, 2], "incorrect": [1, 2]}, "one row per prompt"),
        ({"clean": [[1, 2, 3]], "corrupt": [[1, 2, 3]], "answer_pos": [[2, 1]]}, "strictly increasing"),
        ({"clean": [[1, 2, 3]], "corrupt": [[1, 2, 3]], "answer_pos": [[1, 2]], "correct": [1], "incorrect": [2]},
         r"\[batch, 2\]"),
        ({"clean": [[1, 9]], "corrupt": [[1, 2]], "vocab_size": 5}, "clean token ids"),
        ({"clean": [[1, 2]], "corrupt": [[1, 2]], "correct": [7], "incorrect": [1], "vocab_size": 5}, "correct token ids"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Task.from_tokens(**kwargs)


def test_padded_multi_answers_ok():
    t = Task.from_tokens(
        [[1, 2]], [[1, 3]], correct=[[1, 2, -1]], incorrect=[[3, -1, -1]], vocab_size=5
    )
    assert t.correct.shape == (1, 3)
    assert "1 prompts" in repr(t)
    assert torch.equal(t.clean, torch.tensor([[1, 2]]))


# ---------------------------------------------------------------- IOI with the real GPT-2 tokenizer
def test_ioi_prompts(gpt2_tokenizer):
    import acdc
    from acdc.tasks.ioi import NAMES

    tok = gpt2_tokenizer
    task = acdc.tasks.ioi(tok, 100, seed=0)
    again = acdc.tasks.ioi(tok, 100, seed=0)
    other = acdc.tasks.ioi(tok, 100, seed=1)
    assert torch.equal(task.clean, again.clean) and torch.equal(task.corrupt, again.corrupt)
    assert not torch.equal(task.clean, other.clean)
    assert task.n_prompts == 100 and task.metric == "logit_diff"
    name_ids = {tok.encode(" " + n)[0] for n in NAMES if len(tok.encode(" " + n)) == 1}
    eot = tok.bos_token_id
    for i in range(100):
        c, k = task.clean[i].tolist(), task.corrupt[i].tolist()
        n = int(task.answer_pos[i]) + 1
        # equal length under the GPT-2 tokenizer, and padding only after the scored token
        assert len(tok.encode(tok.decode(c[1:n]))) == len(tok.encode(tok.decode(k[1:n]))) == n - 1
        assert all(t == eot for t in c[n:]) and all(t == eot for t in k[n:])
        io, s = int(task.correct[i]), int(task.incorrect[i])
        assert io in name_ids and s in name_ids and io != s
        assert c[1:n].count(s) == 2 and c[1:n].count(io) == 1  # S repeated, IO once
        clean_names = {t for t in c[:n] if t in name_ids}
        corrupt_names = [t for t in k[:n] if t in name_ids]
        assert len(set(corrupt_names)) == 3 and not clean_names & set(corrupt_names)  # ABC
        assert tok.decode(c[n - 1 : n]) in (" to",)
    # both orders: IO before S in ABBA, after S in BABA
    first = [task.clean[i].tolist().index(int(task.correct[i])) < task.clean[i].tolist().index(int(task.incorrect[i]))
             for i in range(100)]
    assert any(first) and not all(first)


def test_ioi_errors(gpt2_tokenizer):
    import acdc

    with pytest.raises(ValueError, match="order"):
        acdc.tasks.ioi(gpt2_tokenizer, 4, order="AABB")
    with pytest.raises(ValueError, match="tokenizer"):
        acdc.tasks.ioi(object(), 4)
