"""Progress bars: one place decides which tqdm to use and how long work is expected to take.

- `bar` is tqdm's notebook bar where ipywidgets is installed and the terminal bar everywhere
  else (``tqdm.auto`` without ipywidgets prints ``TqdmWarning: IProgress not found``).
- `WorkBar` counts *work*, not items, so its ETA stays honest when items cost different
  amounts: ACDC's first edges (into the logits and the last layers) are cheap, those into the
  first layers rerun the whole model; and edges that turn out not to need a test (their
  destination is already cut off) take their share of the total away instead of finishing
  "instantly". The bar shows items done out of items in all beside the percentage of work.
- `LayerTimes` replaces the prior with measurements as a run goes: ACDC's bar shows the seconds
  left from each layer's measured time per test, and for the layers not reached yet the nearest
  measured layer's time scaled by the prior. (On SmolLM2 the real ratio between layers depends on
  the circuit left: with few edges above, tests into layer 20 cost 14x those into layer 29.)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Any, TypeVar

__all__ = ["LayerTimes", "WorkBar", "bar", "edge_test_cost"]

T = TypeVar("T")


def _tqdm_class() -> Any:
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


def bar(iterable: Iterable[T] | None = None, *, disable: bool = False, **kwargs: Any) -> Any:
    """A tqdm bar (``disable=True``: silent, still iterable); kwargs are tqdm's."""
    return _tqdm_class()(iterable, disable=disable, mininterval=kwargs.pop("mininterval", 0.5), **kwargs)


def edge_test_cost(layer: int, n_layers: int) -> float:
    """Relative cost of testing one edge into a destination in ``layer`` (``n_layers``: the logits).

    A test reruns the layers from the destination's up, plus a fixed part (the unembedding and the
    metric) about as costly as all the layers together: on SmolLM2-135M (30 layers) a test costs
    47 ms into layer 29 and 88 ms into layer 0, a ratio of 1.9; this formula gives 1.9.
    """
    return 1.0 + (n_layers - min(layer, n_layers) + 1) / max(n_layers, 1)


class WorkBar:
    """A bar over ``items`` items whose costs differ: ``total_work`` is the sum of their costs.

    ``done(n, work)``: n items finished, costing ``work``; ``skip(n, work)``: n items that needed
    no work after all (the total shrinks by ``work``). The ETA is elapsed time x work left /
    work done, over the whole run (no smoothing: early and late items differ by design).
    """

    def __init__(self, items: int, total_work: float, *, desc: str, unit: str = "edge", disable: bool = False,
                 initial_items: int = 0, initial_work: float = 0.0, leave: bool = True):
        self.items, self.unit, self.desc = items, unit, desc
        self.n_items = initial_items
        fmt = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"
        self._bar = bar(total=max(total_work, 1e-9), initial=initial_work, desc=desc, disable=disable, smoothing=0,
                        bar_format=fmt, leave=leave)
        self._show(refresh=False)

    def _show(self, extra: dict[str, object] | None = None, refresh: bool = True) -> None:
        if extra is not None:
            self._bar.set_postfix(extra, refresh=False)
        self._bar.set_description_str(f"{self.desc} {self.n_items}/{self.items} {self.unit}s", refresh=refresh)

    def done(self, n: int, work: float) -> None:
        self.n_items += n
        b = self._bar
        b.total = max(b.total, b.n + work)  # float sums: never past 100%
        b.update(work)
        self._show(refresh=False)

    def skip(self, n: int, work: float) -> None:
        self.n_items += n
        self._bar.total = max(self._bar.total - work, self._bar.n, 1e-9)
        self._show(refresh=False)

    def status(self, values: dict[str, object]) -> None:
        """Extra values shown after the item count (e.g. edges kept, the metric)."""
        self._show(values, refresh=False)

    def set_eta(self, seconds: float | None) -> None:
        """Show this estimate of the seconds left (e.g. from `LayerTimes`) instead of the work-proportional one."""
        self._eta = seconds
        left = "{remaining}" if seconds is None else self._bar.format_interval(seconds)
        self._bar.bar_format = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<" + left + "{postfix}]"

    @property
    def remaining_seconds(self) -> float | None:
        """The ETA the bar shows (None before any work is done)."""
        if getattr(self, "_eta", None) is not None:
            return self._eta
        b = self._bar
        elapsed = b.format_dict["elapsed"]
        if b.n <= 0:
            return None
        return elapsed * (b.total - b.n) / b.n

    def close(self) -> None:
        self._show(refresh=True)
        self._bar.close()


class LayerTimes:
    """Seconds left for tests whose cost depends on their layer, from the times measured so far.

    ``left``: layer -> tests still to come. A layer with measured tests costs its mean time; one
    not measured yet costs the nearest measured layer's mean (in a top-down run, the lowest reached
    so far) scaled by ``edge_test_cost``'s prior ratio between the two. Not every test to come runs
    (ACDC skips the edges into a node nothing reads any more): each layer's are weighed by the share
    that ran among those decided so far in the nearest layer where any were (1 before any).
    """

    def __init__(self, left: dict[int, int], n_layers: int):
        self.left = dict(left)
        self.n_layers = n_layers
        self.seconds: dict[int, float] = {}
        self.count: dict[int, int] = {}
        self.skipped: dict[int, int] = {}

    def record(self, layer: int, seconds: float, n: int = 1) -> None:
        """``n`` tests into ``layer`` done, taking ``seconds`` together."""
        self.seconds[layer] = self.seconds.get(layer, 0.0) + seconds
        self.count[layer] = self.count.get(layer, 0) + n
        self.left[layer] = max(0, self.left.get(layer, 0) - n)

    def skip(self, layer: int, n: int = 1) -> None:
        """``n`` tests into ``layer`` that will not run after all."""
        self.left[layer] = max(0, self.left.get(layer, 0) - n)
        self.skipped[layer] = self.skipped.get(layer, 0) + n

    def mean(self, layer: int) -> float | None:
        """Estimated seconds of one test into ``layer`` (None before any measurement)."""
        if self.count.get(layer):
            return self.seconds[layer] / self.count[layer]
        if not self.count:
            return None
        ref = min(self.count, key=lambda x: (abs(x - layer), x))  # the nearest measured layer
        return self.seconds[ref] / self.count[ref] * edge_test_cost(layer, self.n_layers) / edge_test_cost(ref, self.n_layers)

    def share(self, layer: int) -> float:
        """Estimated share of the tests still to come into ``layer`` that will run."""
        decided = self.count.keys() | self.skipped.keys()  # layers with a test run or skipped (n >= 1 each)
        if not decided:
            return 1.0
        ref = min(decided, key=lambda x: (abs(x - layer), x))
        ran = self.count.get(ref, 0)
        return ran / (ran + self.skipped.get(ref, 0))

    def seconds_left(self) -> float | None:
        """Estimated seconds of every test still to come (None before any measurement)."""
        if not self.count:
            return None
        return sum(n * (self.mean(layer) or 0.0) * self.share(layer) for layer, n in self.left.items() if n)
