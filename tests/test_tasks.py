"""Task validation: one-line errors that say what to fix."""

from __future__ import annotations

import pytest
import torch

import acdc
from acdc.tasks import Task


def test_from_tokens_defaults():
    t = Task.from_tokens([[1, 2, 3], [4, 5, 6]], [[1, 2, 0], [4, 0, 6]], correct=[1, 2], incorrect=[3, 4])
    assert t.answer_pos.tolist() == [2, 2] and t.n_prompts == 2 and t.metric == "logit_diff"  # answers given
    assert t.answers is not None and t.answers[0].tolist() == [1, 2]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"clean": [[1, 2]], "corrupt": [[1, 2, 3]]}, "same length"),
        ({"clean": [[]], "corrupt": [[]]}, "non-empty"),
        ({"clean": [[1, 2]], "corrupt": [[1, 2]], "answer_pos": 5}, r"\[0, 2\)"),
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


def test_ioi_s2_io_corruption(gpt2_tokenizer):
    import acdc

    task = acdc.tasks.ioi(gpt2_tokenizer, 40, seed=3, corrupt="S2-IO")
    assert task.name == "ioi-S2-IO" and task.clean.shape == task.corrupt.shape
    for i in range(40):
        c, k = task.clean[i], task.corrupt[i]
        io, s = int(task.correct[i]), int(task.incorrect[i])
        diff = (c != k).nonzero().squeeze(1).tolist()
        assert len(diff) == 1  # only S2 changes ...
        j = diff[0]
        assert int(c[j]) == s and int(k[j]) == io  # ... and becomes IO
        assert (c[:j] == s).sum() == 1  # it was the subject's second mention


# ---------------------------------------------------------------- greater-than
def test_greater_than_prompts(gpt2_tokenizer):
    import acdc

    tok = gpt2_tokenizer
    task = acdc.tasks.greater_than(tok, 100, seed=0)
    again = acdc.tasks.greater_than(tok, 100, seed=0)
    assert torch.equal(task.clean, again.clean) and task.metric == "prob_diff"
    years = {f"{n:02d}": tok.encode(f"{n:02d}")[0] for n in range(100)}
    by_id = {v: int(k) for k, v in years.items()}
    assert task.correct.shape == task.incorrect.shape == (100, 100)
    for i in range(100):
        c, k = task.clean[i].tolist(), task.corrupt[i].tolist()
        n = int(task.answer_pos[i]) + 1
        text = tok.decode(c[1:n])
        assert text.startswith("The ") and " lasted from the year 17" in text and text.endswith(" to the year 17")
        assert tok.decode(c[n - 1 : n]) == " 17"
        diff = [j for j in range(n) if c[j] != k[j]]
        assert len(diff) == 1 and tok.decode([k[diff[0]]]) == "01"  # the corrupt year is 1701
        yy = by_id[c[diff[0]]]
        assert 2 <= yy <= 98
        greater = {by_id[t] for t in task.correct[i].tolist() if t >= 0}
        less_eq = {by_id[t] for t in task.incorrect[i].tolist() if t >= 0}
        assert greater == set(range(yy + 1, 100)) and less_eq == set(range(yy + 1))
    # the metric is P(greater) - P(<=): uniform logits give (99 - 2*YY - 1) / vocab per prompt
    from acdc.metrics import Batch, prob_diff

    logits = torch.zeros(100, len(tok))
    b = Batch(task.clean, task.corrupt, task.answer_pos, task.correct, task.incorrect, logits)
    yys = torch.tensor([by_id[int(task.clean[i][(task.clean[i] != task.corrupt[i]).nonzero()[0, 0]])] for i in range(100)])
    expected = ((99 - yys) - (yys + 1)).float().mean() / len(tok)
    assert float(prob_diff(logits, b)) == pytest.approx(float(expected), rel=1e-5)


def test_greater_than_needs_two_digit_tokens():
    import acdc
    from acdc.zoo import WordTokenizer

    with pytest.raises(ValueError, match="00..99"):
        acdc.tasks.greater_than(WordTokenizer(["<bos>", "The", "war"]), 4)
    with pytest.raises(ValueError, match="centuries"):
        acdc.tasks.greater_than(WordTokenizer(["x"]), 4, centuries=(7,))


class DigitTokenizer:
    """Words (with their leading space) are tokens; numbers are written digit by digit, as SmolLM2's."""

    bos_token_id = None

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        import re

        return [self.vocab.setdefault(t, len(self.vocab)) for t in re.findall(r" ?[A-Za-z]+|\d| ", text)]

    def decode(self, ids: list[int]) -> str:
        words = {i: w for w, i in self.vocab.items()}
        return "".join(words[int(i)] for i in ids)

    def __len__(self) -> int:
        return 1000


def test_greater_than_digits_scores_the_tens_digit():
    import acdc
    from acdc.metrics import Batch, prob_diff

    tok = DigitTokenizer()
    for d in range(10):
        tok.encode(str(d))
    task = acdc.tasks.greater_than(tok, 60, seed=1, digits=True)
    assert task.name == "greater-than-digits"
    digit = {tok.encode(str(d))[0]: d for d in range(10)}
    seen = set()
    for i in range(60):
        c, k = task.clean[i].tolist(), task.corrupt[i].tolist()
        n = int(task.answer_pos[i]) + 1
        text = tok.decode(c[:n])
        assert text.endswith(" to the year 17") and tok.decode(c[n - 1 : n]) == "7"
        diff = [j for j in range(n) if c[j] != k[j]]
        # the start year's two digits differ from the corrupt "01" (the units digit may be 1)
        assert [tok.decode([k[j]]) for j in diff] in (["0", "1"], ["0"])
        start = text.index("year 17") + len("year 17")
        yy = int(text[start : start + 2])
        t = yy // 10
        seen.add(t)
        assert 1 <= t <= 8
        assert {digit[x] for x in task.correct[i].tolist() if x >= 0} == set(range(t + 1, 10))
        assert {digit[x] for x in task.incorrect[i].tolist() if x >= 0} == set(range(t))
    assert seen == set(range(1, 9))
    # uniform logits: P(greater) - P(less) = ((9 - t) - t) / vocab per prompt
    logits = torch.zeros(60, len(tok))
    b = Batch(task.clean, task.corrupt, task.answer_pos, task.correct, task.incorrect, logits)
    ts = []
    for i in range(60):
        text = tok.decode(task.clean[i, : int(task.answer_pos[i]) + 1].tolist())
        ts.append(int(text[text.index("year 17") + 7]))
    expected = sum(9 - 2 * t for t in ts) / 60 / len(tok)
    assert float(prob_diff(logits, b)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="digits=True"):
        acdc.tasks.greater_than(tok, 4)


def test_greater_than_digits_scores_the_whole_year_with_t_counted():
    """metric="year_prob_diff": the prompt goes on with the tens digit t and is scored at the century and at t;
    P(year > YY) = sum_{a > t} P(a) + P(t) sum_{b > u} P(b | t), by hand on uniform logits and on a model that is
    sure of one year; corrupt="random" draws another tens digit per prompt; tens= keeps one t."""
    import acdc
    from acdc.metrics import Batch, year_prob_diff

    tok = DigitTokenizer()
    for d in range(10):
        tok.encode(str(d))
    digit = {tok.encode(str(d))[0]: d for d in range(10)}
    task = acdc.tasks.greater_than(tok, 40, seed=2, digits=True, metric="year_prob_diff", corrupt="random")
    assert task.metric == "year_prob_diff" and task.answer_pos.shape == (40, 2)
    V = len(tok)
    years = []
    for i in range(40):
        c, k = task.clean[i].tolist(), task.corrupt[i].tolist()
        p0, p1 = task.answer_pos[i].tolist()
        assert p1 == p0 + 1 and tok.decode(c[: p0 + 1]).endswith(" to the year 17")
        text = tok.decode(c[: p1 + 1])
        yy = int(text[text.index("year 17") + 7 : text.index("year 17") + 9])
        assert digit[c[p1]] == yy // 10 and k[p1] == c[p1]  # the clean tens digit follows in both prompts
        ktext = tok.decode(k[: p1 + 1])
        other = int(ktext[ktext.index("year 17") + 7 : ktext.index("year 17") + 9])
        assert other // 10 != yy // 10  # corrupt="random": another tens digit
        names = task.positions.names
        assert names[int(task.positions.index[i, p1])] == "TENS" and names[int(task.positions.index[i, p0])] == "END"
        years.append(yy)
    logits = torch.zeros(80, V)
    b = Batch(task.clean, task.corrupt, task.answer_pos, acdc.metrics.scored_rows(task.correct, 2),
              acdc.metrics.scored_rows(task.incorrect, 2), logits)
    want = sum(((9 - y // 10) / V + (9 - y % 10) / V**2) - ((y // 10) / V + (y % 10 + 1) / V**2) for y in years) / 40
    assert float(year_prob_diff(logits, b)) == pytest.approx(want, rel=1e-5)
    sure = torch.full((80, V), -1e4)  # certain of the year YY + 1 (greater) where u < 9, else of YY itself (not greater)
    ids = {d: tok.encode(str(d))[0] for d in range(10)}
    for i, y in enumerate(years):
        nxt = y + 1 if y % 10 < 9 else y
        sure[2 * i, ids[nxt // 10]] = 0
        sure[2 * i + 1, ids[nxt % 10]] = 0
    want = sum(1.0 if y % 10 < 9 else -1.0 for y in years) / 40
    assert float(year_prob_diff(sure, b)) == pytest.approx(want, abs=1e-6)
    one = acdc.tasks.greater_than(tok, 10, seed=0, digits=True, tens=[3])
    assert all(tok.decode(r.tolist()).count("year 173") == 1 for r in one.clean)
    with pytest.raises(ValueError, match="digits=True"):
        acdc.tasks.greater_than(tok, 4, metric="year_prob_diff")
    with pytest.raises(ValueError, match="corrupt must be"):
        acdc.tasks.greater_than(tok, 4, digits=True, corrupt="02")
    with pytest.raises(ValueError, match="tens must be"):
        acdc.tasks.greater_than(tok, 4, digits=True, tens=[9])


# ---------------------------------------------------------------- docstring
@pytest.mark.parametrize("corrupt", ["random_random", "random_def", "random_doc"])
def test_docstring_prompts(gpt2_tokenizer, corrupt):
    import re

    import acdc

    tok = gpt2_tokenizer
    task = acdc.tasks.docstring(tok, 30, seed=1, corrupt=corrupt)
    assert task.clean.shape == task.corrupt.shape and (task.answer_pos == task.clean.shape[1] - 1).all()
    for i in range(30):
        clean, corrupt_text = tok.decode(task.clean[i][1:]), tok.decode(task.corrupt[i][1:])
        assert clean.endswith("\n    :param")
        args = re.match(r"def \w+\(self, (.*)\):", clean).group(1).split(", ")
        doc = re.findall(r":param (\w+):", clean)
        assert len(args) == 6 and doc == args[2:4]
        assert tok.decode([int(task.correct[i])]) == " " + args[4]
        assert sorted(tok.decode([t]) for t in task.incorrect[i].tolist()) == sorted(" " + a for j, a in enumerate(args) if j != 4)
        new_args = re.match(r"def \w+\(self, (.*)\):", corrupt_text).group(1).split(", ")
        new_doc = re.findall(r":param (\w+):", corrupt_text)
        assert (new_args == args) == (corrupt == "random_doc")
        assert (new_doc == doc) == (corrupt == "random_def")
        if corrupt != "random_doc":
            assert not set(new_args) & set(args)
        if corrupt == "random_random":
            assert not set(new_doc) & (set(new_args) | set(args))


def test_docstring_errors(gpt2_tokenizer):
    import acdc

    with pytest.raises(ValueError, match="corrupt must be one of"):
        acdc.tasks.docstring(gpt2_tokenizer, 4, corrupt="shuffle")
    with pytest.raises(ValueError, match="single tokens"):
        acdc.tasks.docstring(gpt2_tokenizer, 4, words=["load", "size"])


# ---------------------------------------------------------------- induction (no tokenizer needed)
def test_induction_prompts():
    import acdc

    task = acdc.tasks.induction(50, 20, half=6, seed=0, bos=0)
    again = acdc.tasks.induction(50, 20, half=6, seed=0, bos=0)
    assert torch.equal(task.clean, again.clean) and torch.equal(task.corrupt, again.corrupt)
    assert task.clean.shape == (20, 13) and task.answer_pos.shape == (20, 5)
    for i in range(20):
        c, k = task.clean[i], task.corrupt[i]
        assert c[0] == k[0] == 0 and (c[1:] != 0).all()
        first, second = c[1:7], c[7:]
        assert torch.equal(first, second) and len(set(first.tolist())) == 6
        assert sorted(k.tolist()) == sorted(c.tolist()) and not torch.equal(k, c)  # a shuffle
        for j, pos in enumerate(task.answer_pos[i].tolist()):
            # scored at the repeat of r_j: the earlier copy is followed by the answer
            assert c[pos] == c[pos - 6] and task.correct[i, j] == c[pos + 1] == c[pos - 5]
            assert task.incorrect[i, j] == k[pos + 1]


def test_induction_errors():
    import acdc

    with pytest.raises(ValueError, match="half"):
        acdc.tasks.induction(50, 4, half=1)
    with pytest.raises(ValueError, match="distinct tokens"):
        acdc.tasks.induction(50, 4, half=6, tokens=[1, 2, 3])
    with pytest.raises(ValueError, match="vocabulary size"):
        acdc.tasks.induction(object(), 4)


# ---------------------------------------------------------------- custom pairs
def _word_tok():
    from acdc.zoo import WordTokenizer

    return WordTokenizer(["<bos>", "the", "cat", "dog", "sat", "on", "mat", "floor", "a", "big"])


def test_from_pairs_word_tokenizer():
    tok = _word_tok()
    t = Task.from_pairs(
        [("the cat sat on the", "the dog sat on the", "mat", "floor"),
         ("a big cat sat on", "a big dog sat on", ["the", "a"], "floor")],
        tok,
    )
    assert t.clean.tolist() == [[0, 1, 2, 4, 5, 1], [0, 8, 9, 2, 4, 5]]
    assert t.corrupt[0].tolist() == [0, 1, 3, 4, 5, 1]
    assert t.answer_pos.tolist() == [5, 5] and t.metric == "logit_diff"
    assert t.correct.tolist() == [[6, -1], [1, 8]] and t.incorrect.tolist() == [7, 7]


def test_from_pairs_pads_shorter_prompts():
    t = Task.from_pairs([("the cat", "the dog", "sat", "on"), ("the cat sat on", "the dog sat on", "the", "a")], _word_tok())
    assert t.answer_pos.tolist() == [2, 4] and t.clean[0, 3:].tolist() == [0, 0]


@pytest.mark.parametrize(
    "pairs, match",
    [
        ([], "no pairs"),
        ([("the cat sat", "the dog", "mat", "floor")], "4 and 3 tokens"),
        ([("the cat", "the dog", "big mat", "floor")], "2 tokens; answers must be single tokens"),
        ([("the cat", "the dog", "mat")], r"\(clean_text, corrupt_text, correct, incorrect\)"),
        ([("the cat", "the dog", [], "floor")], "empty"),
    ],
)
def test_from_pairs_errors(pairs, match):
    with pytest.raises(ValueError, match=match):
        Task.from_pairs(pairs, _word_tok())


def test_from_pairs_gpt2(gpt2_tokenizer):
    tok = gpt2_tokenizer
    t = Task.from_pairs([("When Mary and John went out, John gave a book to", "When Anna and Paul went out, Paul gave a book to",
                          " Mary", " John")], tok)
    assert t.correct.tolist() == tok.encode(" Mary") and t.clean[0, 0] == tok.bos_token_id
    with pytest.raises(ValueError, match="single tokens"):
        Task.from_pairs([("a b", "a c", " Marylebone Road", " John")], tok)
    with pytest.raises(ValueError, match="equal length"):
        Task.from_pairs([("The cat", "The dinosaurus", " sat", " ran")], tok)


def _ioi_parts(task, tok) -> dict[str, set[str]]:
    """The templates, names, places and objects a task's clean and corrupt prompts were built from (read back from
    the text, not from the generator's lists)."""
    import re

    from acdc.tasks.ioi import SPLIT_TEMPLATES, TEMPLATES

    every = sorted({*TEMPLATES, *(t for ts in SPLIT_TEMPLATES.values() for t in ts)})

    def pattern(t: str) -> str:
        p = re.escape(t)
        for slot, group in (("\\[A\\]", "(?P<a>\\w+)"), ("\\[PLACE\\]", "(?P<place>\\w+)"), ("\\[OBJECT\\]", "(?P<obj>\\w+)")):
            p = p.replace(slot, group, 1).replace(slot, f"(?P={group[4:group.index('>')]})")
        p = p.replace("\\[B\\]", "(?P<b>\\w+)", 1).replace("\\[B\\]", "(?P<s>\\w+)")
        return p

    compiled = [(t, re.compile(pattern(t))) for t in every]
    out: dict[str, set[str]] = {"templates": set(), "names": set(), "places": set(), "objects": set()}
    ends = task.answer_pos.reshape(len(task.clean), -1)[:, -1].tolist()
    for rows in (task.clean, task.corrupt):
        for row, end in zip(rows, ends, strict=True):
            text = tok.decode(row[: end + 1]).replace("<|endoftext|>", "")
            hits = [(t, m) for t, c in compiled if (m := c.fullmatch(text))]
            assert len(hits) == 1, (text, [t for t, _ in hits])
            t, m = hits[0]
            out["templates"].add(t)
            out["names"] |= {m["a"], m["b"], m["s"]}
            out["places"] |= {m["place"]} if "place" in m.groupdict() else set()
            out["objects"] |= {m["obj"]} if "obj" in m.groupdict() else set()
    return out


def test_ioi_discovery_validation_and_test_share_no_template_name_place_or_object(gpt2_tokenizer):
    """The protocol's three IOI sets, read back from the prompts' text: no template, name, place or object is in
    two of them, and each set's sentence structures are its own (SPLIT_TEMPLATES)."""
    from acdc.tasks.ioi import SPLIT_TEMPLATES

    parts = {split: _ioi_parts(acdc.tasks.ioi(gpt2_tokenizer, 120, split=split, seed=3, corrupt="ABC"), gpt2_tokenizer)
             for split in ("discovery", "validation", "test")}
    for split, got in parts.items():
        assert got["templates"] <= set(SPLIT_TEMPLATES[split]) and len(got["templates"]) >= 3, split
        assert len(got["names"]) >= 20 and len(got["places"]) >= 8 and len(got["objects"]) >= 8, (split, got)
    for a, b in (("discovery", "validation"), ("discovery", "test"), ("validation", "test")):
        for kind in ("templates", "names", "places", "objects"):
            assert not parts[a][kind] & parts[b][kind], (a, b, kind, parts[a][kind] & parts[b][kind])
    # a template's first words say its structure: a main clause (discovery), a subordinate clause (validation)
    starts = {split: {t.split()[0] for t in SPLIT_TEMPLATES[split]} for split in SPLIT_TEMPLATES}
    assert starts["discovery"] <= {"Then,", "Afterwards,", "After"} and starts["validation"] <= {"After", "When", "While"}
    assert not starts["test"] & (starts["discovery"] | starts["validation"])
    # the S2-IO corruption stays inside its split too, and the task says which split it is
    flipped = acdc.tasks.ioi(gpt2_tokenizer, 30, split="test", corrupt="S2-IO", seed=1)
    assert flipped.name == "ioi-S2-IO-test" and _ioi_parts(flipped, gpt2_tokenizer)["names"] <= parts["test"]["names"] | \
        _ioi_parts(acdc.tasks.ioi(gpt2_tokenizer, 400, split="test", seed=2), gpt2_tokenizer)["names"]
    with pytest.raises(ValueError, match="split must be one of"):
        acdc.tasks.ioi(gpt2_tokenizer, 4, split="held-out")


def test_ioi_three_way_split_of_lists_of_your_own_takes_every_third(gpt2_tokenizer):
    names = ["John", "Mary", "Paul", "Anna", "Tom", "Kate", "Mark", "Lisa", "Peter", "Sarah", "James", "Emma",
             "David", "Laura", "Adam"]
    templates = [f"{w}, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to" for w in ("Then", "Later", "Today")]
    for k, split in enumerate(("discovery", "validation", "test")):
        task = acdc.tasks.ioi(gpt2_tokenizer, 20, split=split, names=names, templates=templates,
                              places=["store", "park", "bank"], objects=["ring", "book", "cup"])
        texts = {gpt2_tokenizer.decode(row).replace("<|endoftext|>", "") for row in task.clean}
        assert all(x.startswith(("Then", "Later", "Today")[k]) for x in texts)
        assert all(["store", "park", "bank"][k] in x and ["ring", "book", "cup"][k] in x for x in texts)
        ids = set(torch.cat([task.correct, task.incorrect]).tolist())
        assert ids <= {gpt2_tokenizer.encode(" " + n)[0] for n in names[k::3]}


def test_ioi_half_splits_are_the_older_two_way_split(gpt2_tokenizer):
    """"half-discovery" / "half-held-out": even and odd templates and names (how earlier results were made)."""
    from acdc.tasks.ioi import NAMES, TEMPLATES

    for half, split in enumerate(("half-discovery", "half-held-out")):
        task = acdc.tasks.ioi(gpt2_tokenizer, 40, split=split, seed=3)
        got = _ioi_parts(task, gpt2_tokenizer)
        assert got["templates"] <= set(TEMPLATES[half::2]) and got["names"] <= set(NAMES[half::2]), split
        assert task.name == f"ioi-{split}"


def test_greater_than_and_induction_splits_share_no_template_noun_or_token(gpt2_tokenizer):
    from acdc.tasks.greater_than import SPLIT_TEMPLATES

    seen = {}
    for split in ("discovery", "validation", "test"):
        t = acdc.tasks.greater_than(gpt2_tokenizer, 60, split=split, seed=0)
        texts = [gpt2_tokenizer.decode(row).replace("<|endoftext|>", "") for row in t.clean]
        head = SPLIT_TEMPLATES[split].split("{noun}")[1].split("{century}")[0]  # the words between noun and year
        assert all(head in x for x in texts) and t.name == f"greater-than-{split}"
        seen[split] = {x.split()[1] for x in texts}
        ind = acdc.tasks.induction(50, 10, half=5, split=split, seed=0)
        seen[split + "-tokens"] = set(ind.clean.unique().tolist())
    for a, b in (("discovery", "validation"), ("discovery", "test"), ("validation", "test")):
        assert not seen[a] & seen[b] and not seen[a + "-tokens"] & seen[b + "-tokens"], (a, b)
    assert len({SPLIT_TEMPLATES[s] for s in SPLIT_TEMPLATES}) == 3


def test_mcqa_letters_point_at_the_stated_color_and_the_splits_share_nothing(gpt2_tokenizer):
    """Read back from the text: the correct letter is the clean prompt's option with the stated color (the first
    sentence's last word), the incorrect letter the corrupt prompt's; clean and corrupt differ only in the options'
    order; the three sets share no object, color or question wording."""
    from acdc.tasks.mcqa import OBJECTS

    seen = {}
    for split in ("discovery", "validation", "test"):
        t = acdc.tasks.mcqa(gpt2_tokenizer, 40, split=split, seed=2)
        objects, colors, frames = set(), set(), set()
        for i in range(40):
            clean = gpt2_tokenizer.decode(t.clean[i]).replace("<|endoftext|>", "")
            corrupt = gpt2_tokenizer.decode(t.corrupt[i]).replace("<|endoftext|>", "")
            question, *opts_c = clean.removesuffix("\nAnswer:").split("\n")
            q2, *opts_k = corrupt.removesuffix("\nAnswer:").split("\n")
            assert question == q2
            assert sorted(o[3:] for o in opts_c) == sorted(o[3:] for o in opts_k) and opts_c != opts_k
            stated = question.split(".")[0].split()[-1]
            letter_c = next(o[0] for o in opts_c if o[3:] == stated)
            letter_k = next(o[0] for o in opts_k if o[3:] == stated)
            assert letter_c != letter_k
            assert gpt2_tokenizer.decode(t.correct[i : i + 1]) == " " + letter_c
            assert gpt2_tokenizer.decode(t.incorrect[i : i + 1]) == " " + letter_k
            words = question.replace("?", " ").replace(".", " ").split()
            objects |= set(words) & set(OBJECTS)
            colors |= {o[3:] for o in opts_c}
            frames.add(" ".join(w for w in words if w not in set(OBJECTS) and w != stated))
        seen[split] = (objects, colors, frames)
        assert t.name == f"mcqa-{split}" and len(frames) == 1
    for a, b in (("discovery", "validation"), ("discovery", "test"), ("validation", "test")):
        for k in range(3):
            assert not seen[a][k] & seen[b][k], (a, b, k)
    with pytest.raises(ValueError, match="n_options must be in 2..8"):
        acdc.tasks.mcqa(gpt2_tokenizer, 4, n_options=9)


def test_arithmetic_answers_are_the_results_first_tokens(gpt2_tokenizer):
    import re

    firsts = {}
    for split in ("discovery", "validation", "test"):
        for op in ("+", "-"):
            t = acdc.tasks.arithmetic(gpt2_tokenizer, 30, split=split, op=op, seed=1)
            for i in range(30):
                for row, ans in ((t.clean[i], t.correct[i]), (t.corrupt[i], t.incorrect[i])):
                    text = gpt2_tokenizer.decode(row).replace("<|endoftext|>", "")
                    a, b = map(int, re.search(r"(\d+) [+-] (\d+)", text).groups())
                    r = a + b if op == "+" else a - b
                    assert int(ans) == gpt2_tokenizer.encode(f" {r}")[0], (text, r)
                    firsts.setdefault(split, set()).add(a)
                assert t.correct[i] != t.incorrect[i] and t.clean.shape == t.corrupt.shape
    assert all(a % 3 == k for k, s in enumerate(("discovery", "validation", "test")) for a in firsts[s])
    with pytest.raises(ValueError, match="op must be"):
        acdc.tasks.arithmetic(gpt2_tokenizer, 4, op="*")
