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
