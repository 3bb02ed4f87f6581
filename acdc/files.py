"""Writing results without losing any: every writer claims its target first, and an existing one is refused
unless the caller says to replace it (``overwrite=True``; the CLI's ``--force``), in one line, before any compute
where the caller can check that early (the CLI checks every command's outputs before the model loads)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["claim", "claim_folder", "held"]


def claim(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` ready to be written as a file: its folder made; an existing file or folder there refused
    (a one-line FileExistsError) unless ``overwrite``."""
    p = Path(path)
    if p.is_dir():
        raise FileExistsError(f"{p} is a folder; give a file path")
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists; pass overwrite=True to replace it (CLI: --force), or write elsewhere")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def held(path: str | Path, names: Sequence[str]) -> list[Path]:
    """Which of ``names`` (files or folders; "" for ``path`` itself) already exist under the folder ``path``."""
    p = Path(path)
    return [p / n for n in names if (p / n).exists()]


def claim_folder(path: str | Path, names: Sequence[str], overwrite: bool = False) -> Path:
    """``path`` ready to hold the files ``names``: made if missing; refused (a one-line FileExistsError) if it is
    a file, or, unless ``overwrite``, if it already holds any of them (files from an earlier run)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise FileExistsError(f"{p} is a file; give a folder (it would hold {', '.join(names)})")
    there = held(p, names)
    if there and not overwrite:
        raise FileExistsError(f"{p}/ already holds {', '.join(h.name for h in there)}; pass overwrite=True to replace "
                              "(CLI: --force), or write to another folder")
    p.mkdir(parents=True, exist_ok=True)
    return p
