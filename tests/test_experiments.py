"""The ROC experiment scripts run end to end and write their table, JSON and plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

pytestmark = pytest.mark.slow


def test_roc_zoo_script(tmp_path):
    import roc_zoo

    roc_zoo.main(["--out", str(tmp_path), "--n-thresholds", "8"])
    data = json.loads((tmp_path / "roc_zoo.json").read_text())
    assert {r["name"] for r in data["rows"]} == {"induction", "ioi", "modular-sum"}
    assert all(r["edge_auc"] >= 0.99 and r["exact_thresholds"] for r in data["rows"])
    assert (tmp_path / "roc_zoo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| ioi |" in (tmp_path / "roc_zoo.md").read_text()
