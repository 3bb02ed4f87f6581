"""Faithfulness math: how much of the model's behaviour a circuit keeps. Pure functions, no runs.

With m the metric (higher = more behaviour; a logit difference as is), M the full model, C the
circuit and {} the empty circuit:

- ratio (the IOI paper's): m(C) / m(M);
- normalized (MIB's): (m(C) - m({})) / (m(M) - m({}));
- per prompt: each prompt's own ratio. It explodes where a prompt's own m(M) is near 0 (Miller
  et al. saw ratios above 10,000%), so the summary gives the spread (median, IQR, a bootstrap
  interval of the mean, the share within [80%, 120%]) and flags those prompts.

`FaithfulnessCurve` is MIB's: normalized faithfulness against the fraction of edges kept, with
CPR (the area under it, trapezoid over the fractions) and CMD (the area under |1 - it|). On
MIB's linear axis the circuits above 20% of the edges carry 80% of the weight, so a log-axis
area (over log10 of the fraction, scaled to [0, 1]) is reported too.

`acdc.faithfulness` and `acdc.faithfulness_curve` (in `acdc.api`) run the model and fill these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .plots import figure_or_axes, pyplot, save

__all__ = [
    "MIB_FRACTIONS", "Completeness", "Faithfulness", "FaithfulnessCurve", "FaithfulnessGrid", "Minimality", "Spread",
    "spread",
]

MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class Spread:
    """The distribution of per-prompt ratios."""

    mean: float
    median: float
    q25: float
    q75: float
    min: float
    max: float
    ci95: tuple[float, float]  # bootstrap interval of the mean
    within_20pct: float  # share of prompts with a ratio in [0.8, 1.2]

    @property
    def iqr(self) -> float:
        return self.q75 - self.q25


def spread(values: Tensor, *, n_boot: int = 1000, seed: int = 0) -> Spread:
    """Mean, median, quartiles, range, bootstrap 95% interval of the mean, share within 20% of 1."""
    v = values.double().flatten()
    gen = torch.Generator().manual_seed(seed)
    boots = v[torch.randint(0, len(v), (n_boot, len(v)), generator=gen)].mean(1)
    lo, hi = torch.quantile(boots, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    q25, med, q75 = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return Spread(float(v.mean()), med, q25, q75, float(v.min()), float(v.max()), (lo, hi),
                  float(((v >= 0.8) & (v <= 1.2)).double().mean()))


@dataclass(frozen=True, eq=False)
class Faithfulness:
    """A circuit's faithfulness under one setting.

    model_metric, circuit_metric, empty_metric: m(M), m(C), m({}) averaged over prompts.
    per_prompt_model, per_prompt_circuit, per_prompt_empty: [n_prompts] each prompt's own values.
    settings: the axes (level, ablation, direction, metric, average; "at" for positional circuits).
    """

    model_metric: float
    circuit_metric: float
    empty_metric: float
    per_prompt_model: Tensor
    per_prompt_circuit: Tensor
    per_prompt_empty: Tensor
    settings: dict[str, Any] = field(default_factory=dict)
    tiny: float = 0.1  # a prompt is flagged when |m_i(M)| < tiny * median |m(M)|

    @property
    def ratio_of_means(self) -> float:
        """m(C) / m(M), metrics averaged over prompts first (the IOI paper's faithfulness)."""
        return _div(self.circuit_metric, self.model_metric)

    @property
    def per_prompt(self) -> Tensor:
        """[n_prompts] each prompt's m_i(C) / m_i(M)."""
        return self.per_prompt_circuit / self.per_prompt_model

    @property
    def mean_of_ratios(self) -> float:
        return float(self.per_prompt.mean())

    @property
    def ratio(self) -> float:
        """The ratio under ``settings["average"]``: "ratio-of-means" (default) or "mean-of-ratios"."""
        return self.mean_of_ratios if self.settings.get("average") == "mean-of-ratios" else self.ratio_of_means

    @property
    def normalized(self) -> float:
        """(m(C) - m({})) / (m(M) - m({})) (MIB's faithfulness)."""
        return _div(self.circuit_metric - self.empty_metric, self.model_metric - self.empty_metric)

    def interval(self, which: str = "normalized", *, level: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
        """A percentile bootstrap interval over prompts of ``which`` ("normalized" or "ratio_of_means"): prompts
        drawn with replacement, the same draw for m(M), m(C) and m({}) (each prompt's three values stay together),
        the statistic recomputed from the drawn prompts' means; its ``(1 - level) / 2`` and ``(1 + level) / 2``
        quantiles. What a number measured on a few dozen prompts should be reported with."""
        if which not in ("normalized", "ratio_of_means"):
            raise ValueError(f"which must be 'normalized' or 'ratio_of_means', got {which!r}")
        if not 0 < level < 1:
            raise ValueError(f"level must lie in (0, 1), got {level!r}")
        gen = torch.Generator().manual_seed(seed)
        n = len(self.per_prompt_model)
        draw = torch.randint(0, n, (resamples, n), generator=gen)
        m, c = self.per_prompt_model.double()[draw].mean(1), self.per_prompt_circuit.double()[draw].mean(1)
        stat = c / m if which == "ratio_of_means" else (c - (e := self.per_prompt_empty.double()[draw].mean(1))) / (m - e)
        lo, hi = torch.quantile(stat, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
        return float(lo), float(hi)

    @property
    def summary(self) -> Spread:
        """The spread of the per-prompt ratios."""
        return spread(self.per_prompt)

    @property
    def small_prompts(self) -> list[int]:
        """Prompts whose own |m(M)| is tiny (their ratios explode; consider dropping them)."""
        scale = float(self.per_prompt_model.abs().median())
        return (self.per_prompt_model.abs() < self.tiny * scale).nonzero().squeeze(1).tolist()

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        return {
            "settings": self.settings, "model_metric": self.model_metric, "circuit_metric": self.circuit_metric,
            "empty_metric": self.empty_metric, "ratio": self.ratio, "ratio_of_means": self.ratio_of_means,
            "mean_of_ratios": self.mean_of_ratios, "normalized": self.normalized,
            "normalized_ci95": list(self.interval()),
            "per_prompt": self.per_prompt.tolist(), "small_prompts": self.small_prompts,
            "summary": {"mean": s.mean, "median": s.median, "iqr": s.iqr, "min": s.min, "max": s.max,
                        "ci95": list(s.ci95), "within_20pct": s.within_20pct},
            "per_prompt_model": self.per_prompt_model.tolist(), "per_prompt_circuit": self.per_prompt_circuit.tolist(),
            "per_prompt_empty": self.per_prompt_empty.tolist(), "tiny": self.tiny,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Faithfulness:
        """Back from `to_dict` (the same numbers: the per-prompt values are float64 and JSON keeps them exactly)."""
        def t(key: str) -> Tensor:
            return torch.tensor(d[key], dtype=torch.float64)

        return cls(float(d["model_metric"]), float(d["circuit_metric"]), float(d["empty_metric"]), t("per_prompt_model"),
                   t("per_prompt_circuit"), t("per_prompt_empty"), dict(d["settings"]), float(d.get("tiny", 0.1)))

    def __repr__(self) -> str:
        s = self.summary
        lo, hi = self.interval()
        return (f"Faithfulness(ratio {self.ratio:.3f}, normalized {self.normalized:.3f} [95% over prompts {lo:.3f}, {hi:.3f}]; "
                f"per prompt median "
                f"{s.median:.3f}, IQR {s.iqr:.3f}, {s.within_20pct:.0%} within 20%; {self.settings})")


@dataclass(frozen=True)
class FaithfulnessGrid:
    """Faithfulness of one circuit under several settings (`acdc.faithfulness_grid`)."""

    rows: tuple[Faithfulness, ...]

    COLUMNS = ("level", "ablation", "mean_over", "direction", "metric", "average", "at")

    def label(self, f: Faithfulness) -> str:
        """A short name of a row's setting: the axes that differ from the usual one."""
        usual = {"level": "edge", "ablation": "resample", "mean_over": "batch", "direction": "clean-complement",
                 "average": "ratio-of-means", "metric": self.rows[0].settings.get("metric"), "at": "circuit"}
        bits = [f"at {f.settings[k]} positions" if k == "at" else str(f.settings[k])
                for k in self.COLUMNS if k in f.settings and f.settings[k] != usual[k]]
        return ", ".join(bits) or "usual"

    def table(self) -> list[dict[str, Any]]:
        out = []
        for f in self.rows:
            s = f.summary
            out.append({**{k: f.settings.get(k, "") for k in self.COLUMNS}, "ratio": f.ratio,
                        "normalized": f.normalized, "median": s.median, "iqr": s.iqr, "ci95_low": s.ci95[0],
                        "ci95_high": s.ci95[1], "within_20pct": s.within_20pct, "small_prompts": len(f.small_prompts)})
        return out

    def to_markdown(self) -> str:
        rows = self.table()
        head = list(rows[0])
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | Any, *, overwrite: bool = False) -> Any:
        """Every setting's row as CSV; an existing file is refused unless ``overwrite``."""
        import csv

        from .files import claim

        path = claim(path, overwrite)
        rows = self.table()
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return path

    def by_reference_size(self) -> list[tuple[int, float]]:
        """(k, ratio) of the rows with mean ablation over k drawn prompts, in order of k."""
        rows = [(int(f.settings["mean_over"]), f.ratio) for f in self.rows if isinstance(f.settings.get("mean_over"), int)]
        return sorted(rows)

    @staticmethod
    def target(f: Faithfulness) -> float:
        """What a faithful circuit's normalized value is under ``f``'s direction: 1 where the circuit alone is kept
        (clean-complement: everything else ablated; corrupt-circuit: only the circuit restored), 0 where the circuit
        alone is removed (clean-circuit, corrupt-complement: the behaviour should go with it)."""
        return 0.0 if f.settings.get("direction") in ("clean-circuit", "corrupt-complement") else 1.0

    def verdict(self, within: float = 0.2) -> str:
        """One line: whether the circuit's normalized faithfulness is within ``within`` of its target under every
        setting of the grid (1, or 0 for the directions that remove the circuit: `target`; MIB's |1 - f|, where
        overshooting counts as far as falling short), or under which it is not."""
        if not 0 < within < 1:
            raise ValueError(f"within must lie in (0, 1), got {within!r}")
        bad = [f for f in self.rows if not abs(self.target(f) - f.normalized) <= within]  # a NaN fails too
        if not bad:
            return f"holds under all {len(self.rows)} settings (|target - normalized| <= {within:g}; target 1, 0 where the circuit is removed)"
        fails = "; ".join(f"{self.label(f)} ({f.normalized:.3f}{', target 0' if self.target(f) == 0 else ''})" for f in bad)
        return f"fails under {len(bad)} of {len(self.rows)} settings (|target - normalized| > {within:g}): {fails}"

    def miller_checks(self) -> dict[str, tuple[bool, str]]:
        """Miller et al.'s (2024) three qualitative findings, as they come out here: (holds, the values).

        Needs the default grid's usual, mean-ablation and mean-of-ratios rows, and at least two
        reference sizes for the third.
        """
        usual = self.rows[0]
        mean = next((f for f in self.rows if f.settings.get("mean_over") == "batch"), None)
        averaged = next((f for f in self.rows if f.settings.get("average") == "mean-of-ratios"), None)
        if mean is None or averaged is None:
            raise ValueError("the checks need a mean-ablation row and a mean-of-ratios row (the default grid has both)")
        out = {
            "resample below mean ablation": (usual.ratio < mean.ratio,
                                             f"{usual.ratio:.5f} vs {mean.ratio:.5f}, difference {mean.ratio - usual.ratio:+.2g}"),
            "mean of ratios above ratio of means": (averaged.ratio > usual.ratio, f"{averaged.ratio:.5f} vs {usual.ratio:.5f}, "
                                                    f"difference {averaged.ratio - usual.ratio:+.2g}"),
        }
        sizes = self.by_reference_size()
        if len(sizes) >= 2:
            ratios = [r for _, r in sizes]
            rising = sum(b > a for a, b in zip(ratios, ratios[1:], strict=False))
            out["rises with the reference-set size"] = (
                ratios[-1] > ratios[0] and rising >= len(ratios) // 2,
                ", ".join(f"k={k}: {r:.5f}" for k, r in sizes) + f"; rises at {rising} of {len(ratios) - 1} steps",
            )
        return out

    def plot_reference_sizes(self, path: str | Any) -> Any:
        """Faithfulness against the mean-ablation reference-set size (log axis; needs matplotlib)."""
        sizes = self.by_reference_size()
        if not sizes:
            raise ValueError("no reference sizes in this grid; pass reference_sizes=[...]")
        plt, path = pyplot(path)
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        ax.plot([k for k, _ in sizes], [r for _, r in sizes], marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("prompts in the mean-ablation reference set")
        ax.set_ylabel("m(C) / m(M)")
        return save(plt, fig, path)

    def plot(self, path: str | Any) -> Any:
        """Box plots of the per-prompt ratios, one per setting (as Miller et al.'s figures); needs matplotlib."""
        plt, path = pyplot(path)
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(self.rows)), 4))
        ax.boxplot([f.per_prompt.numpy() for f in self.rows], showfliers=True)
        ax.set_xticks(range(1, len(self.rows) + 1), [self.label(f) for f in self.rows], rotation=35, ha="right")
        ax.axhline(1.0, color="grey", ls=":")
        ax.set_ylabel("per-prompt m(C) / m(M)")
        return save(plt, fig, path)


@dataclass(frozen=True)
class FaithfulnessCurve:
    """Normalized faithfulness at each fraction of edges kept (MIB), and its areas."""

    fractions: tuple[float, ...]
    values: tuple[float, ...]
    n_edges: tuple[int, ...] = ()

    @classmethod
    def from_values(cls, fractions: Sequence[float], values: Sequence[float]) -> FaithfulnessCurve:
        """A curve computed elsewhere (e.g. MIB's published numbers)."""
        if len(fractions) != len(values) or len(fractions) < 2:
            raise ValueError("a curve needs as many values as fractions, at least two")
        order = sorted(range(len(fractions)), key=lambda i: fractions[i])
        return cls(tuple(float(fractions[i]) for i in order), tuple(float(values[i]) for i in order))

    @property
    def points(self) -> list[tuple[float, float]]:
        return list(zip(self.fractions, self.values, strict=True))

    @property
    def cpr(self) -> float:
        """Area under normalized faithfulness over the edge fraction (trapezoid; MIB's CPR, higher is better)."""
        return _trapezoid(self.fractions, self.values)

    @property
    def cmd(self) -> float:
        """Area under |1 - normalized faithfulness| (MIB's CMD, lower is better)."""
        return _trapezoid(self.fractions, [abs(1 - v) for v in self.values])

    @property
    def cpr_log(self) -> float:
        """CPR over log10 of the fraction, scaled to [0, 1]: small circuits weigh as much as large ones."""
        xs = [math.log10(f) for f in self.fractions]
        return _trapezoid(xs, self.values) / (xs[-1] - xs[0])

    @property
    def cmd_log(self) -> float:
        xs = [math.log10(f) for f in self.fractions]
        return _trapezoid(xs, [abs(1 - v) for v in self.values]) / (xs[-1] - xs[0])

    def plot(self, path: str | Path | None = None, *, ax: Any = None, label: str | None = None, log: bool = True) -> Any:
        """Normalized faithfulness against the fraction of edges kept (log axis unless ``log=False``), 1.0 dotted.

        ``plot(path)`` writes the figure and returns the path; ``plot(ax=ax)`` draws into your axes
        (several methods on one plot) and returns them. The legend gives CPR and CMD.
        """
        plt, fig, ax, out = figure_or_axes(path, ax, (4.5, 3.5))
        text = f"CPR {self.cpr:.3f}, CMD {self.cmd:.3f}"
        ax.plot(self.fractions, self.values, marker="o", ms=3, label=f"{label}: {text}" if label else text)
        ax.axhline(1.0, color="grey", ls=":", lw=1)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel("fraction of edges kept")
        ax.set_ylabel("normalized faithfulness")
        ax.legend(fontsize="small")
        return ax if fig is None else save(plt, fig, out)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {"points": [{"fraction": f, "normalized": v, **({"edges": n} if self.n_edges else {})}
                           for f, v, n in zip(self.fractions, self.values, self.n_edges or [None] * len(self.values),
                                              strict=True)],
                "cpr": self.cpr, "cmd": self.cmd, "cpr_log": self.cpr_log, "cmd_log": self.cmd_log}


def _trapezoid(xs: Sequence[float], ys: Sequence[float]) -> float:
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))


def _div(a: float, b: float) -> float:
    return a / b if b != 0 else math.nan


@dataclass(frozen=True)
class Completeness:
    """The IOI paper's completeness: for sets K of circuit nodes, F(C \\ K) against F(M \\ K).

    rows: (label, K, F(C minus K), F(M minus K)); a complete circuit has the two equal for every K,
    so incompleteness(K) = |F(C \\ K) - F(M \\ K)| should be small.
    """

    rows: tuple[tuple[str, tuple[str, ...], float, float], ...]

    def incompleteness(self) -> list[tuple[str, float]]:
        return [(label, abs(fc - fm)) for label, _, fc, fm in self.rows]

    @property
    def worst(self) -> tuple[str, float]:
        """The set K with the largest incompleteness."""
        return max(self.incompleteness(), key=lambda x: x[1])

    def plot(self, path: str | Any) -> Any:
        """Scatter of F(C minus K) against F(M minus K) with the line y = x (needs matplotlib)."""
        plt, path = pyplot(path)
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        xs = [fm for *_, fm in self.rows]
        ys = [fc for _, _, fc, _ in self.rows]
        ax.scatter(xs, ys, s=18)
        lo, hi = min(xs + ys), max(xs + ys)
        ax.plot([lo, hi], [lo, hi], ls=":", color="grey")
        ax.set_xlabel("F(M \\ K)")
        ax.set_ylabel("F(C \\ K)")
        return save(plt, fig, path)


@dataclass(frozen=True)
class Minimality:
    """The IOI paper's minimality: for each circuit node v, |F(C \\ (K_v + v)) - F(C \\ K_v)|."""

    scores: tuple[tuple[str, float], ...]  # (node, minimality score), in forward order

    def plot(self, path: str | Any) -> Any:
        """Bar chart of the minimality scores (needs matplotlib)."""
        plt, path = pyplot(path)
        fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(self.scores)), 3.5))
        ax.bar(range(len(self.scores)), [v for _, v in self.scores])
        ax.set_xticks(range(len(self.scores)), [n for n, _ in self.scores], rotation=60, ha="right")
        ax.set_ylabel("|F(C \\ (K_v + v)) - F(C \\ K_v)|")
        return save(plt, fig, path)
