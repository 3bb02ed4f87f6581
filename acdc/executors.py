"""Where a sweep's items run: here, one after another, or on a Ray cluster.

A sweep is a list of small items (an ACDC threshold, a faithfulness setting) that all need the same
heavy state (the model, its clean and corrupt caches). `run_sweep` builds that state once per
worker with ``setup()`` and runs ``work(state, item)`` for each item:

- ``executor=None``: serial, unless the environment variable ``RAY_ADDRESS`` names a cluster;
- ``"serial"``: in this process, one item after another;
- ``"ray"``: on Ray (``RAY_ADDRESS`` if set, else a local cluster started for the sweep), one actor
  per worker that builds the state once; a worker killed mid-item is restarted and the item rerun;
- an address (``"127.0.0.1:6379"``, ``"ray://host:10001"``): that Ray cluster.

Results come back in the items' order whatever ran them. With ``results=DIR`` each finished item is
written to ``DIR/{key}.json`` as it ends; a sweep started again with the same ``DIR`` reads those
back and runs only the rest (an interrupted sweep resumes). Ray is an optional dependency
(``pip install 'acdc[ray]'``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, TypeVar

from .progress import bar

__all__ = ["ExecutorLike", "Sweep", "SweepOptions", "check_executor", "resolve_executor", "run_sweep"]

ExecutorLike = str | None
S = TypeVar("S")
JSON = dict[str, Any]

RAY_MISSING = "executor='ray' needs Ray: pip install 'acdc[ray]' (or pip install ray)"


def check_executor(executor: ExecutorLike) -> None:
    """A one-line ValueError for an executor that is not None, "serial", "ray" or a Ray address."""
    if executor is None or executor in ("serial", "ray"):
        return
    if not isinstance(executor, str) or not (executor.startswith("ray://") or ":" in executor):
        raise ValueError(f"executor must be None, 'serial', 'ray' or a Ray address such as '127.0.0.1:6379', got {executor!r}")


@dataclass(frozen=True)
class SweepOptions:
    """Where a sweep's items run and where finished ones are kept, declared once: `acdc.roc`,
    `acdc.faithfulness_grid`, `acdc.compare`, feature pages and the CLI's sweep flags take these
    fields (as keywords, `Sweep`); ``__post_init__`` checks them before anything runs."""

    executor: ExecutorLike = field(default=None, metadata={
        "help": "serial (default; Ray when RAY_ADDRESS is set), ray, or a Ray address such as 127.0.0.1:6379 (needs acdc[ray])"})
    results: str | Path | None = field(default=None, metadata={
        "help": "keep each finished item as JSON in this folder; a rerun with the same folder skips them"})
    workers: int | None = field(default=None, metadata={"help": "Ray workers (default: the cluster's CPUs)", "min": 1})
    threads: int | None = field(default=None, metadata={
        "help": "torch threads per Ray worker (default: this process's count; the same count gives the same numbers, bit for bit)",
        "min": 1})

    def __post_init__(self) -> None:
        check_executor(self.executor)
        for name in ("workers", "threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None, got {v!r}")

    def run_sweep_options(self) -> dict[str, Any]:
        """The keywords `run_sweep` takes for them."""
        return {"executor": self.executor, "results": self.results, "workers": self.workers, "threads": self.threads}


class Sweep(TypedDict, total=False):
    """`SweepOptions`' fields as keywords, for type checkers (a test keeps the two equal)."""

    executor: ExecutorLike
    results: str | Path | None
    workers: int | None
    threads: int | None


def resolve_executor(executor: ExecutorLike) -> tuple[str, str | None]:
    """("serial", None) or ("ray", address or None): what ``executor`` asks for (``RAY_ADDRESS`` when None)."""
    check_executor(executor)
    if executor is None:
        env = os.environ.get("RAY_ADDRESS")
        return ("ray", env) if env else ("serial", None)
    if executor == "serial":
        return "serial", None
    if executor == "ray":
        return "ray", os.environ.get("RAY_ADDRESS") or None
    return "ray", executor


def run_sweep(
    setup: Callable[[], S],
    work: Callable[[S, Any], JSON],
    items: Sequence[tuple[str, Any]],
    *,
    executor: ExecutorLike = None,
    results: str | Path | None = None,
    fingerprint: str = "",
    workers: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    desc: str = "sweep",
) -> list[JSON]:
    """``work(setup(), payload)`` for every ``(key, payload)`` of ``items``, in their order.

    ``work`` returns a JSON-able dict; ``setup`` runs once per worker (once here when serial).
    Both must be picklable for Ray (module-level functions, `functools.partial` of them).
    ``results``: a folder holding one JSON file per finished item (``{key}.json``), read back
    instead of rerunning it; ``fingerprint`` (what decides the results: model, prompts, ...) is
    stored in each file, and a file made with another fingerprint or payload is refused.
    ``workers``: Ray actors (default: the cluster's CPUs / ``threads``); ``threads``: torch threads
    per Ray worker (default: this process's, so the numbers match a serial run here bit for bit; CPU
    kernels split their sums by thread count, so another count changes the last bits, and then at times
    a decision at a threshold's edge). ``progress``: one bar across the whole sweep.
    """
    keys = [k for k, _ in items]
    if len(set(keys)) != len(keys):
        raise ValueError("sweep items need distinct keys")
    store = _Store(Path(results), fingerprint) if results is not None else None
    done: dict[str, JSON] = {}
    if store is not None:
        for key, payload in items:
            got = store.read(key, payload)
            if got is not None:
                done[key] = got
    todo = [(k, p) for k, p in items if k not in done]
    kind, address = resolve_executor(executor)
    with bar(total=len(items), initial=len(done), desc=desc, unit="item", disable=not progress) as b:
        def finished(key: str, payload: Any, result: JSON) -> None:
            if store is not None:
                store.write(key, payload, result)
            done[key] = result
            b.update(1)

        if todo and kind == "serial":
            state = setup()
            for key, payload in todo:
                finished(key, payload, work(state, payload))
        elif todo:
            _run_ray(setup, work, todo, address, workers, threads or _torch_threads(), finished)
    return [done[k] for k in keys]


class _Store:
    """One JSON file per finished item: {"key", "fingerprint", "payload", "result"}."""

    def __init__(self, folder: Path, fingerprint: str):
        self.folder, self.fingerprint = folder, fingerprint
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
        return self.folder / f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:8]}.json"

    def read(self, key: str, payload: Any) -> JSON | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError:  # a write cut off by the interruption: run the item again
            return None
        if d.get("fingerprint") != self.fingerprint or d.get("payload") != _jsonable(payload):
            raise ValueError(f"{path} holds a result of another sweep (model, prompts or item differ); "
                             "pass another results folder, or delete it to start over")
        return d["result"]

    def write(self, key: str, payload: Any, result: JSON) -> None:
        path = self.path(key)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "fingerprint": self.fingerprint, "payload": _jsonable(payload),
                                   "result": result}, allow_nan=True))
        tmp.replace(path)  # atomic: a file is either whole or absent


def _jsonable(x: Any) -> Any:
    """``x`` as JSON reads it back (tuples become lists; a function by its name), for comparing payloads."""
    return json.loads(json.dumps(x, default=lambda o: getattr(o, "__qualname__", type(o).__name__)))


class _Worker:
    """A Ray actor: builds the sweep's state once, then runs items on it."""

    def __init__(self, setup: Callable[[], Any], threads: int):
        import torch

        torch.set_num_threads(threads)
        self.state = setup()

    def run(self, work: Callable[[Any, Any], JSON], payload: Any) -> JSON:
        return work(self.state, payload)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    return ray


def _run_ray(setup: Callable[[], Any], work: Callable[[Any, Any], JSON], todo: list[tuple[str, Any]],
             address: str | None, workers: int | None, threads: int,
             finished: Callable[[str, Any, JSON], None]) -> None:
    """Run ``todo`` on Ray actors (restarted when killed, their item retried), as each ends."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        local = {} if address else {"include_dashboard": False}  # a cluster of our own: no dashboard
        ray.init(address=address, logging_level="ERROR", log_to_driver=False, **local)
    try:
        biggest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        if biggest < threads:
            raise ValueError(f"a worker of {threads} threads needs a node with {threads} CPUs; this cluster's largest has "
                             f"{biggest:g}: pass threads= (at most {int(biggest)}) or add CPUs to a node")
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        actor = ray.remote(num_cpus=threads, max_restarts=-1, max_task_retries=-1)(_Worker)
        setup_ref, work_ref = ray.put(setup), ray.put(work)  # shipped once, shared by every worker
        pool = [actor.remote(setup_ref, threads) for _ in range(min(workers, len(todo)))]
        queue = list(reversed(todo))
        running: dict[Any, tuple[Any, str, Any]] = {}
        idle = list(pool)
        while queue or running:
            while idle and queue:
                a = idle.pop()
                key, payload = queue.pop()
                running[a.run.remote(work_ref, payload)] = (a, key, payload)
            ready, _ = ray.wait(list(running), num_returns=1)
            a, key, payload = running.pop(ready[0])
            finished(key, payload, ray.get(ready[0]))
            idle.append(a)
        for a in pool:
            ray.kill(a)
    finally:
        if started:
            ray.shutdown()
