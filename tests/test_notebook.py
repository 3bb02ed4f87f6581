"""notebooks/walkthrough.ipynb runs top to bottom offline (so it cannot rot)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.real
def test_walkthrough_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. nbformat's MissingIDFieldWarning: every cell has its id
        nb = nbformat.read(ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "TPR 1.000 FPR 0.0000" in text and "edge AUC 1.000" in text
    assert (tmp_path / "out" / "walkthrough" / "circuit.json").is_file()
    assert (tmp_path / "out" / "walkthrough" / "circuit.graphml").is_file()
    assert f"files go to {tmp_path / 'out' / 'walkthrough'}" in text
    assert (tmp_path / "out" / "walkthrough" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert "SmolLM2 IOI, EAP-IG: CPR" in text and (tmp_path / "out" / "walkthrough" / "smollm2_curve.png").is_file()
    assert "Circuit(" in text.split("SmolLM2 IOI")[1] and "Faithfulness(" in text.split("SmolLM2 IOI")[1]
    assert "IProgress" not in text and "Warning" not in text  # no TqdmWarning without ipywidgets
