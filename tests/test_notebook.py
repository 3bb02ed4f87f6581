"""notebooks/walkthrough.ipynb runs top to bottom offline (so it cannot rot)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_walkthrough_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "TPR 1.000 FPR 0.0000" in text and "edge AUC 1.000" in text
    assert (tmp_path / "out" / "walkthrough" / "circuit.json").is_file()
    assert (tmp_path / "out" / "walkthrough" / "circuit.graphml").is_file()
