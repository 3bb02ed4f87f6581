"""The offline demo finds the planted circuit, scores it, and writes a circuit that reloads."""

import acdc
from acdc import Circuit
from acdc.demo import main


def test_demo_runs(tmp_path, capsys):
    main(["--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "Circuit(" in out and "saved" in out and "score vs planted truth" in out
    c = Circuit.from_json(tmp_path / "circuit.json")
    assert acdc.recovery(c, acdc.zoo.load("ioi").truth).edges.exact
