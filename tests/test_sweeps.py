"""Sweeps on an executor (acdc.executors): serial, and on a real local Ray cluster of two nodes.

The Ray tests start ``ray start --head`` and a second node process on this machine, and stop both
at the end; they check that ROC sweeps and faithfulness grids give the serial run's results in its
order, that a worker killed in the middle of an item is restarted and the item rerun, and that an
interrupted sweep started again skips the items it finished.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from functools import partial
from pathlib import Path

import pytest
import torch

import acdc
from acdc.executors import RAY_MISSING, resolve_executor, run_sweep

ITEMS = [(f"x={i}", {"x": i}) for i in range(6)]


@pytest.fixture(scope="module")
def zoo_ioi():
    return acdc.zoo.load("ioi")


def square_setup(offset: int) -> dict[str, int]:
    return {"offset": offset}


def square(state: dict[str, int], item: dict[str, int]) -> dict[str, int]:
    return {"y": item["x"] ** 2 + state["offset"], "pid": os.getpid()}


def logged(folder: str, fail_at: int | None, state: dict[str, int], item: dict[str, int]) -> dict[str, int]:
    """`square`, leaving a file per call in ``folder`` (how many times each item ran); raises at ``fail_at``
    (an interruption) while the file ``folder/stop`` exists."""
    Path(folder, f"ran-{item['x']}-{os.getpid()}-{uuid.uuid4().hex}").touch()
    if item["x"] == fail_at and Path(folder, "stop").exists():
        raise RuntimeError("interrupted")
    return {"y": item["x"] ** 2 + state["offset"]}


def killed_once(folder: str, state: dict[str, int], item: dict[str, int]) -> dict[str, int]:
    """`square`, but the worker process running item 2 is killed (SIGKILL) the first time it starts it."""
    marker = Path(folder, "killed")
    if item["x"] == 2 and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return {"y": item["x"] ** 2 + state["offset"], "pid": os.getpid()}


def runs_of(folder: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in folder.iterdir() if p.name.startswith("ran-"))


# ---------------------------------------------------------------------- serial
def test_serial_sweep_in_order_with_setup_once():
    calls = []

    def setup():
        calls.append(1)
        return {"offset": 10}

    out = run_sweep(setup, square, ITEMS, executor="serial", progress=False)
    assert [r["y"] for r in out] == [10, 11, 14, 19, 26, 35]
    assert calls == [1]


def test_serial_sweep_resumes_after_interruption(tmp_path):
    log, res = tmp_path / "log", tmp_path / "results"
    log.mkdir()
    (log / "stop").touch()
    work = partial(logged, str(log), 3)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_sweep(partial(square_setup, 1), work, ITEMS, executor="serial", results=res, fingerprint="f", progress=False)
    assert runs_of(log) == [0, 1, 2, 3] and len(list(res.glob("*.json"))) == 3
    (log / "stop").unlink()
    out = run_sweep(partial(square_setup, 1), work, ITEMS, executor="serial", results=res, fingerprint="f", progress=False)
    assert [r["y"] for r in out] == [1, 2, 5, 10, 17, 26]
    assert runs_of(log) == [0, 1, 2, 3, 3, 4, 5]  # items 0-2 were read back, not rerun
    again = run_sweep(partial(square_setup, 1), work, ITEMS, executor="serial", results=res, fingerprint="f", progress=False)
    assert again == out and runs_of(log) == [0, 1, 2, 3, 3, 4, 5]


def test_results_of_another_sweep_are_refused(tmp_path):
    run_sweep(partial(square_setup, 0), square, ITEMS[:2], executor="serial", results=tmp_path, fingerprint="a", progress=False)
    with pytest.raises(ValueError, match="another sweep"):
        run_sweep(partial(square_setup, 0), square, ITEMS[:2], executor="serial", results=tmp_path, fingerprint="b",
                  progress=False)
    other = [("x=0", {"x": 5})]  # same key, another payload
    with pytest.raises(ValueError, match="another sweep"):
        run_sweep(partial(square_setup, 0), square, other, executor="serial", results=tmp_path, fingerprint="a", progress=False)


def test_a_truncated_result_file_is_rerun(tmp_path):
    run_sweep(partial(square_setup, 0), square, ITEMS[:2], executor="serial", results=tmp_path, fingerprint="a", progress=False)
    files = sorted(tmp_path.glob("*.json"))
    files[0].write_text('{"key": "x=0", "fing')  # cut off mid-write
    out = run_sweep(partial(square_setup, 7), square, ITEMS[:2], executor="serial", results=tmp_path, fingerprint="a",
                    progress=False)
    assert [r["y"] for r in out] == [7, 1]  # item 0 recomputed (with the new offset), item 1 read back


def test_executor_choices(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_executor(None) == ("serial", None)
    assert resolve_executor("ray") == ("ray", None)
    assert resolve_executor("10.0.0.1:6379") == ("ray", "10.0.0.1:6379")
    assert resolve_executor("ray://head:10001") == ("ray", "ray://head:10001")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1234")
    assert resolve_executor(None) == ("ray", "127.0.0.1:1234")
    assert resolve_executor("serial") == ("serial", None)
    with pytest.raises(ValueError, match="executor must be"):
        resolve_executor("threads")
    with pytest.raises(ValueError, match="distinct keys"):
        run_sweep(partial(square_setup, 0), square, [("a", 1), ("a", 2)], executor="serial")


def test_ray_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    with pytest.raises(ImportError) as e:
        run_sweep(partial(square_setup, 0), square, ITEMS[:1], executor="ray", progress=False)
    assert str(e.value) == RAY_MISSING and "pip install 'acdc[ray]'" in str(e.value)


def test_api_refuses_a_bad_executor_before_running(zoo_ioi):
    with pytest.raises(ValueError, match="executor must be"):
        acdc.roc(zoo_ioi.model, zoo_ioi.task, truth=zoo_ioi.truth, thresholds=[0.1], executor="cluster")


def test_graphs_and_circuits_pickle_with_their_kinds():
    """What a Ray worker receives: a circuit, its graph and the graph's node kinds (the registered ones)."""
    import pickle

    from acdc.graph import HEAD

    g = acdc.Graph(2, 3)
    c = acdc.Circuit(g, torch.rand(g.n_edges, generator=torch.Generator().manual_seed(0)) < 0.3, torch.arange(g.n_edges) / 7)
    back = pickle.loads(pickle.dumps(c))
    assert back == c and pickle.loads(pickle.dumps(HEAD)) is HEAD
    assert back.graph.sources[1].kind is HEAD


def test_cli_sweep_flags_reach_the_sweep(tmp_path):
    from acdc.cli import main

    out = tmp_path / "out"
    assert main(["roc", "--model", "zoo:ioi", "-o", str(out), "--n-thresholds", "2", "--no-progress",
                 "--executor", "serial", "--results", str(tmp_path / "items")]) == 0
    assert len(list((tmp_path / "items").glob("threshold_*.json"))) == 2
    assert main(["roc", "--model", "zoo:ioi", "-o", str(out), "--n-thresholds", "2", "--no-progress",
                 "--executor", "threads"]) != 0


# ---------------------------------------------------------------------- a real local Ray cluster
def _ray():
    """Ray, or a skip where it is not installed (CI sets ACDC_REQUIRE_RAY=1: then its absence fails)."""
    if os.environ.get("ACDC_REQUIRE_RAY") == "1":
        import ray
        return ray
    return pytest.importorskip("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head` and a second node process on this machine (one CPU each); stopped at the end."""
    ray = _ray()
    exe = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    assert exe, "the ray command is missing: pip install 'acdc[ray]'"
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    head = [exe, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
            "--disable-usage-stats", f"--temp-dir={tmp_path_factory.mktemp('ray')}"]
    subprocess.run(head, check=True, capture_output=True, env=env, timeout=120)
    address = f"127.0.0.1:{port}"
    try:
        subprocess.run([exe, "start", f"--address={address}", "--num-cpus=1"], check=True, capture_output=True, env=env,
                       timeout=120)
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test file
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # serial runs here on one thread, as each worker does (one per node's CPU)
        try:
            yield address
        finally:
            torch.set_num_threads(threads)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([exe, "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_ray_sweep_equals_serial_on_two_nodes(cluster):
    serial = run_sweep(partial(square_setup, 3), square, ITEMS, executor="serial", progress=False)
    out = run_sweep(partial(square_setup, 3), square, ITEMS, executor=cluster, progress=False)
    assert [r["y"] for r in out] == [r["y"] for r in serial]
    assert len({r["pid"] for r in out}) == 2  # two workers (one per node's CPU), neither of them this process
    assert os.getpid() not in {r["pid"] for r in out}


def test_roc_prefiltered_equals_discover(zoo_ioi):
    """Each threshold of a prefiltered sweep is `discover` with that prefilter (the ranking computed once)."""
    z = zoo_ioi
    curve = acdc.roc(z.model, z.task, truth=z.truth, thresholds=[0.1, 0.01], prefilter=0.05, progress=False)
    for t, c in zip([0.1, 0.01], curve.circuits, strict=True):
        alone = acdc.discover(z.model, z.task, threshold=t, prefilter=0.05)
        assert torch.equal(c.in_graph, alone.in_graph) and c.settings["approximate"] == "prefilter"
        assert torch.equal(c.scores.isnan(), alone.scores.isnan())
        assert torch.equal(c.scores.nan_to_num(), alone.scores.nan_to_num())
        assert 0 < int((~c.scores.isnan()).sum()) <= 14  # at most ceil(0.05 * 262 edges) tested
    with pytest.raises(ValueError, match="prefilter"):
        acdc.roc(z.model, z.task, truth=z.truth, thresholds=[0.1], prefilter=2.0)


@pytest.mark.parametrize("prefilter", [None, 0.2])
def test_ray_roc_sweep_equals_serial(cluster, zoo_ioi, prefilter):
    z = zoo_ioi
    thresholds = [0.3, 0.1, 0.03, 0.01]
    serial = acdc.roc(z.model, z.task, truth=z.truth, thresholds=thresholds, progress=False, prefilter=prefilter)
    on_ray = acdc.roc(z.model, z.task, truth=z.truth, thresholds=thresholds, progress=False, executor=cluster,
                      prefilter=prefilter)
    assert on_ray.params == serial.params and on_ray.tpr == serial.tpr and on_ray.fpr == serial.fpr
    for a, b in zip(on_ray.circuits, serial.circuits, strict=True):
        assert torch.equal(a.in_graph, b.in_graph)
        assert torch.equal(a.scores.isnan(), b.scores.isnan())
        assert torch.equal(a.scores.nan_to_num(), b.scores.nan_to_num())  # the same numbers, bit for bit
    assert serial.auc == on_ray.auc and serial.auc > 0.9  # the planted circuit, found on either


def test_ray_faithfulness_grid_equals_serial(cluster, gpt2_model, tmp_path):
    from test_faithfulness import CORRECT, INCORRECT, random_tokens

    from acdc.tasks import Task

    clean, corrupt = random_tokens()
    task = Task.from_tokens(clean, corrupt, correct=CORRECT, incorrect=INCORRECT)
    g = acdc.Graph.from_model(gpt2_model)
    circuit = acdc.Circuit(g, torch.rand(g.n_edges, generator=torch.Generator().manual_seed(3)) < 0.4, torch.zeros(g.n_edges))
    serial = acdc.faithfulness_grid(gpt2_model, task, circuit, reference_sizes=[2], progress=False)
    on_ray = acdc.faithfulness_grid(gpt2_model, task, circuit, reference_sizes=[2], progress=False, executor=cluster,
                                    results=tmp_path / "grid")
    assert len(on_ray.rows) == len(serial.rows) == 11
    for a, b in zip(on_ray.rows, serial.rows, strict=True):
        assert a.settings == b.settings
        assert torch.equal(a.per_prompt_circuit, b.per_prompt_circuit) and a.normalized == b.normalized
    assert len(list((tmp_path / "grid").glob("*.json"))) == 11
    saved = json.loads(next((tmp_path / "grid").glob("setting_0-*.json")).read_text())
    assert saved["result"]["normalized"] == pytest.approx(serial.rows[0].normalized, abs=1e-6)


def zoo_pair(seed: int) -> tuple[acdc.Task, acdc.Task]:
    return acdc.zoo.load("ioi", seed=seed).task, acdc.zoo.load("ioi", seed=seed + 100).task


def test_ray_method_comparison_equals_serial(cluster, zoo_ioi, tmp_path):
    """Methods x tasks x seeds on two workers: the serial rows and circuits, in the serial order."""
    methods = ["eap", acdc.Method("acdc", {"threshold": 0.05}), acdc.Method("edge-pruning", {"steps": 10}, label="ep")]
    kw = {"methods": methods, "seeds": [0, 1], "edges": 10, "curves": True, "progress": False}
    tasks = {"ioi": zoo_pair, "ioi-fixed": zoo_ioi.task}
    serial = acdc.compare(zoo_ioi.model, tasks, **kw)
    on_ray = acdc.compare(zoo_ioi.model, tasks, executor=cluster, results=tmp_path / "cmp", **kw)
    assert len(on_ray.rows) == 12 and len(list((tmp_path / "cmp").glob("*.json"))) == 12
    for a, b in zip(on_ray.rows, serial.rows, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    for a, b in zip(on_ray.circuits, serial.circuits, strict=True):
        assert torch.equal(a.in_graph, b.in_graph) and torch.equal(a.scores.nan_to_num(), b.scores.nan_to_num())


def random_sequence(vocab: int, i: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, vocab, (12,), generator=g)


def test_ray_feature_pages_corpus_pass_equals_serial(cluster, tmp_path):
    """The feature pages' corpus pass in pieces on two workers: the serial report, field for field."""
    from dataclasses import asdict

    from conftest import tiny_gpt2
    from test_transcoders import _random_set

    from acdc.model import Transformer
    from acdc.transcoders import GeneratedStream, feature_report

    tf = Transformer.from_bridge(tiny_gpt2(seed=2))
    ts = _random_set(tf, "relu")
    corpus = GeneratedStream(partial(random_sequence, tf.arch.d_vocab), 12, seed=0, name="random")
    pairs = [(1, 3), (0, 5), (1, 0)]
    serial = feature_report(tf, ts, None, pairs, corpus, sequences=24, batch=4, chunk=4)
    on_ray = feature_report(tf, ts, None, pairs, corpus, sequences=24, batch=4, chunk=4, executor=cluster,
                            results=tmp_path / "pages")
    assert [asdict(r) for r in on_ray] == [asdict(r) for r in serial] and any(r.contexts for r in serial)
    assert len(list((tmp_path / "pages").glob("*.json"))) == 6


def test_ray_refuses_workers_wider_than_any_node(cluster):
    with pytest.raises(ValueError, match="needs a node with 2 CPUs"):
        run_sweep(partial(square_setup, 0), square, ITEMS, executor=cluster, threads=2, progress=False)


def test_ray_worker_killed_mid_item_is_retried(cluster, tmp_path):
    out = run_sweep(partial(square_setup, 0), partial(killed_once, str(tmp_path)), ITEMS, executor=cluster, progress=False)
    assert [r["y"] for r in out] == [0, 1, 4, 9, 16, 25]
    killed = int((tmp_path / "killed").read_text())
    assert out[2]["pid"] != killed  # item 2 finished on a restarted worker


def test_ray_sweep_restarted_after_interruption_skips_finished_items(cluster, tmp_path):
    log, res = tmp_path / "log", tmp_path / "results"
    log.mkdir()
    (log / "stop").touch()
    work = partial(logged, str(log), 5)
    with pytest.raises(Exception, match="interrupted"):
        run_sweep(partial(square_setup, 2), work, ITEMS, executor=cluster, results=res, fingerprint="f", progress=False)
    first = runs_of(log)
    finished = len(list(res.glob("*.json")))
    assert 5 in first and finished >= 3
    (log / "stop").unlink()
    out = run_sweep(partial(square_setup, 2), work, ITEMS, executor=cluster, results=res, fingerprint="f", progress=False)
    assert [r["y"] for r in out] == [2, 3, 6, 11, 18, 27]
    assert len(runs_of(log)) - len(first) == 6 - finished  # only the unfinished items ran again
