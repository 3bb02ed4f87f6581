"""Shared pieces of the ROC experiments: one result row per sweep, a Markdown table, a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import acdc


def sweep_row(name: str, r: acdc.ROC, build_seconds: float) -> dict[str, Any]:
    """A JSON-ready summary of one ACDC threshold sweep against a truth."""
    nodes = r.at_level("node")
    best = r.best()
    c = r.circuits[best]
    exact = [r.params[i] for i in r.exact()]
    return {
        "name": name,
        "edge_auc": r.auc,
        "edge_auc_pessimistic": r.auc_pessimistic,
        "node_auc": nodes.auc,
        "node_auc_pessimistic": nodes.auc_pessimistic,
        "n_true_edges": r.n_positive,
        "n_edges": r.n_positive + r.n_negative,
        "best_threshold": r.params[best],
        "best_circuit_edges": c.n_edges,
        "best_circuit_nodes": len([n for n in c.nodes if n not in ("input", "logits")]),
        "best_tpr": r.tpr[best],
        "best_fpr": r.fpr[best],
        "exact_thresholds": exact,
        "sweep_seconds": r.seconds,
        "build_seconds": build_seconds,
        "edge_roc": r.to_dict(),
        "node_roc": nodes.to_dict(),
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | true / all edges | edge AUC (trapezoid / pessimistic) | node AUC | best threshold | "
        "circuit at best (edges, nodes) | exact at | sweep time |\n|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        exact = f"{len(r['exact_thresholds'])} thresholds" if r["exact_thresholds"] else "never"
        lines.append(
            f"| {r['name']} | {r['n_true_edges']} / {r['n_edges']} | {r['edge_auc']:.4f} / {r['edge_auc_pessimistic']:.4f} "
            f"| {r['node_auc']:.4f} | {r['best_threshold']:.3g} | {r['best_circuit_edges']}, {r['best_circuit_nodes']} "
            f"| {exact} | {r['sweep_seconds']:.1f} s |"
        )
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Edge-level ROC points and the pessimistic staircase, one panel per sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 4), squeeze=False)
    for ax, row in zip(axes[0], rows):
        pts = row["edge_roc"]["points"]
        xs, ys = [p["fpr"] for p in pts], [p["tpr"] for p in pts]
        order = sorted(range(len(xs)), key=lambda i: (xs[i], ys[i]))
        sx, sy, best = [0.0], [0.0], 0.0
        for i in order:
            best = max(best, ys[i])
            sx.append(xs[i])
            sy.append(best)
        sx.append(1.0)
        sy.append(1.0)
        ax.step(sx, sy, where="post", color="tab:blue", label="pessimistic")
        ax.plot(sx, sy, color="tab:blue", alpha=0.3, label="trapezoid")
        ax.scatter(xs, ys, c=range(len(xs)), cmap="viridis", s=18, zorder=3, label="thresholds")
        ax.plot([0, 1], [0, 1], ls=":", color="grey")
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="FPR (edges)", ylabel="TPR (edges)")
        ax.set_title(f"{row['name']}: AUC {row['edge_auc']:.3f}")
        ax.legend(loc="lower right", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(rows: list[dict[str, Any]], out: Path, stem: str, title: str, extra: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({**extra, "rows": rows}, indent=1))
    (out / f"{stem}.md").write_text(f"# {title}\n\n{markdown_table(rows)}")
    plot(rows, out / f"{stem}.png", title)
    print(markdown_table(rows))
    print(f"wrote {out / stem}.json, .md, .png")
