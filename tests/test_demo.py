"""The offline demo runs and writes a circuit that reloads."""

from acdc import Circuit
from acdc.demo import main


def test_demo_runs(tmp_path, capsys):
    main(["--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "Circuit(" in out and "saved" in out
    c = Circuit.from_json(tmp_path / "circuit.json")
    assert 0 < c.n_edges < c.graph.n_edges
