"""The explorer page: one HTML file shipped in the package (inline CSS and JavaScript; no CDN, no build step).

Served live by `acdc explore` (the page asks the server's API for its data and for every
ablation), or written self-contained by `export_html` with the circuit's data inside it, to open
from disk or share: the same page, without a model, so with no live ablation.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..circuit import Circuit
from ..files import claim
from .session import view_data

__all__ = ["attribution_page_html", "export_html", "page_html"]

_SLOT = "/*ACDC_DATA*/null"


def page_html(data: dict[str, Any] | None) -> str:
    """The page; with ``data`` (a `view_data` dict) inside it, so it needs no server."""
    html = files("acdc.explorer").joinpath("page.html").read_text(encoding="utf-8")
    if data is None:
        return html
    # inside <script>: "</script>" or "<!--" in a note must not end or comment out the script
    payload = json.dumps(data, allow_nan=False).replace("</", "<\\/").replace("<!--", "<\\u0021--")
    return html.replace(_SLOT, payload, 1)


def attribution_page_html() -> str:
    """The attribution-graph page (`acdc.explorer.attribution`); it asks the server for its data."""
    return files("acdc.explorer").joinpath("attribution.html").read_text(encoding="utf-8")


def export_html(circuit: Circuit, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``circuit`` as one self-contained HTML page (graph, node table, notes; no live ablation); an existing
    file is refused unless ``overwrite``."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"export to an .html file, got {path.name!r}")
    path = claim(path, overwrite)
    path.write_text(page_html(view_data(circuit)), encoding="utf-8")
    return path
