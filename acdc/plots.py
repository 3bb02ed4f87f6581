"""Figures: matplotlib set up headless, saved and freed in one place (every ``.plot`` uses these).

Each result's ``plot(path)`` writes a file (PNG, SVG or PDF by extension) and returns its path;
``plot(ax=ax)`` draws into an axes of your own figure instead (e.g. several curves on one plot)
and returns the axes. matplotlib is optional: ``pip install 'acdc[experiments]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["figure_or_axes", "pyplot", "save"]


def pyplot(path: str | Path | None) -> tuple[Any, Path | None]:
    """(matplotlib.pyplot with the Agg backend, ``path`` as a Path with its folder made)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'acdc[experiments]' (or pip install matplotlib)") from None
    if path is None:
        return plt, None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return plt, path


def save(plt: Any, fig: Any, path: Path) -> Path:
    """Write a figure to ``path`` and free it; returns the path."""
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def figure_or_axes(path: str | Path | None, ax: Any, size: tuple[float, float]) -> tuple[Any, Any, Any, Path | None]:
    """(plt, fig or None, ax, path): a new figure for ``path``, or the caller's ``ax`` (then no file)."""
    if (path is None) == (ax is None):
        raise ValueError("pass either a path to write the figure to, or ax= to draw into your own axes")
    plt, p = pyplot(path)
    if ax is not None:
        return plt, None, ax, None
    fig, new_ax = plt.subplots(figsize=size)
    return plt, fig, new_ax, p
