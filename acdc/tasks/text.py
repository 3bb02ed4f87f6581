"""Turning text prompts into the token batches a `Task` holds, with any Hugging Face tokenizer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..inputs import encode, single_token_id, tokenizer_of, try_encode
from ..positions import Positions

__all__ = [
    "bpe_tokenizer", "encode", "example_labels", "named_positions", "single_token_id", "single_tokens", "token_index", "tokenize_pairs",
    "tokenizer_of", "try_encode", "vocab_size_of",
]


def bpe_tokenizer(folder: str | Path, special: str = "<|endoftext|>") -> Any:
    """A GPT-2-style byte-level BPE tokenizer from local ``vocab.json`` and ``merges.txt`` (no hub).

    Returns a ``transformers.PreTrainedTokenizerFast`` that `acdc.load_model` accepts.
    """
    folder = Path(folder)
    if not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
        raise ValueError(f"{folder} needs vocab.json and merges.txt (GPT-2 tokenizer files)")
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=special, eos_token=special, unk_token=special)


def single_tokens(tok: Any, words: Sequence[str], prefix: str = " ") -> list[str]:
    """The words that are one token with ``prefix`` (a leading space by default)."""
    return [w for w in words if len(try_encode(tok, prefix + w) or ()) == 1]


def tokenize_pairs(tok: Any, clean: Sequence[str], corrupt: Sequence[str], name: str) -> tuple[Tensor, Tensor, list[int]]:
    """Tokenize paired prompts (BOS prepended when the tokenizer has one) and right-pad.

    Returns clean [n, pos], corrupt [n, pos] and each prompt's last position. Clean and corrupt
    must have equal token counts, pair by pair; an empty list is an error.
    """
    if len(clean) != len(corrupt):
        raise ValueError(f"{name}: {len(clean)} clean prompts but {len(corrupt)} corrupt; pair them one to one")
    if not clean:
        raise ValueError(f"{name}: no prompts given; pass at least one (clean, corrupt) pair")
    bos = getattr(tok, "bos_token_id", None)
    pad = getattr(tok, "pad_token_id", None)
    pad = pad if pad is not None else (bos if bos is not None else 0)
    rows, last = [], []
    for i, (c, k) in enumerate(zip(clean, corrupt, strict=True)):
        ids_c = ([bos] if bos is not None else []) + encode(tok, c)
        ids_k = ([bos] if bos is not None else []) + encode(tok, k)
        if len(ids_c) != len(ids_k):
            raise ValueError(
                f"{name} prompt {i}: clean and corrupt are {len(ids_c)} and {len(ids_k)} tokens; "
                f"pairs must have equal length ({c!r} vs {k!r})"
            )
        if not ids_c:
            raise ValueError(f"{name} prompt {i} is empty")
        rows.append((ids_c, ids_k))
        last.append(len(ids_c) - 1)
    width = max(last) + 1
    clean_t = torch.full((len(rows), width), pad, dtype=torch.long)
    corrupt_t = clean_t.clone()
    for i, (c, k) in enumerate(rows):
        clean_t[i, : len(c)] = torch.tensor(c)
        corrupt_t[i, : len(k)] = torch.tensor(k)
    return clean_t, corrupt_t, last


def token_index(tok: Any, text: str, end: int, where: str) -> int:
    """Index (BOS counted, as `tokenize_pairs` lays prompts out) of the token that ends at character ``end``.

    The prefix ``text[:end]`` must tokenize to a prefix of ``text``'s tokens (true at word
    boundaries for BPE tokenizers); otherwise a one-line error names the prompt.
    """
    full, head = encode(tok, text), encode(tok, text[:end])
    if not head or full[: len(head)] != head:
        raise ValueError(f"{where}: {text[:end]!r} does not end on a token boundary of {text!r}; "
                         "mark positions at word ends")
    bos = 1 if getattr(tok, "bos_token_id", None) is not None else 0
    return bos + len(head) - 1


def named_positions(
    tok: Any, texts: Sequence[str], tokens: Tensor, last: Sequence[int], marks: Mapping[str, Any], where: str
) -> Positions:
    """`Positions` from marks: name -> where that role is in each prompt.

    A mark is a substring (the role is the last token of its first occurrence in the prompt),
    an int token index (BOS counted; negative counts back from the prompt's last token, -1 being
    the last), or a list with one such mark per prompt. Unmarked tokens are "other".
    """
    out: dict[str, list[int]] = {}
    for name, mark in marks.items():
        per_prompt = list(mark) if isinstance(mark, (list, tuple)) else [mark] * len(texts)
        if len(per_prompt) != len(texts):
            raise ValueError(f"{where}: position {name!r} needs one mark per prompt ({len(texts)}), got {len(per_prompt)}")
        idx = []
        for i, (m, text) in enumerate(zip(per_prompt, texts, strict=True)):
            if isinstance(m, str):
                at = text.find(m)
                if not m or at < 0:
                    raise ValueError(f"{where} prompt {i}: position {name!r}: {m!r} is not in {text!r}")
                idx.append(token_index(tok, text, at + len(m), f"{where} prompt {i}"))
            elif isinstance(m, int) and not isinstance(m, bool):
                t = m if m >= 0 else last[i] + 1 + m
                if not 0 <= t <= last[i]:
                    raise ValueError(f"{where} prompt {i}: position {name!r}: token {m} is outside its {last[i] + 1} tokens")
                idx.append(t)
            else:
                raise ValueError(f"{where}: position {name!r}: marks are substrings or token indices, got {m!r}")
        out[name] = idx
    b, n = tokens.shape
    pos = Positions.named(out, b, n)
    return replace(pos, example=example_labels(tok, tokens, pos))


def example_labels(tok: Any, tokens: Tensor, positions: Any) -> tuple[str, ...]:
    """Text of each named position in the first prompt: its first token ("..." for several, "" for none)."""
    out = []
    for p in range(len(positions.names)):
        at = (positions.index[0] == p).nonzero().squeeze(1).tolist()
        out.append("" if not at else tok.decode([int(tokens[0, at[0]])]) + (" ..." if len(at) > 1 else ""))
    return tuple(out)


def vocab_size_of(tok: Any) -> int | None:
    """Number of token ids the tokenizer can emit (for validating a task), if it says."""
    return len(tok) if hasattr(tok, "__len__") else getattr(tok, "vocab_size", None)
