"""The one room that runs things: build a `Patcher` for a task, run an algorithm, sweep thresholds.

    circuit = acdc.discover(model, task, threshold=0.05)          # ACDC -> Circuit
    scores = acdc.attribute(model, task, method="eap-ig-inputs")  # EAP / EAP-IG -> Scores
    curve = acdc.roc(model, task, truth=acdc.known.load("ioi"))   # ACDC threshold sweep -> ROC

Everything below this module is data, the engine, the algorithms and pure evaluation; the CLI
and the demo are thin layers above it.

One module per concept: `prepare` (a run's inputs made ready), `discovery` (discover, attribute,
prune_edges, roc), `faithfulness` (one setting, the grid, the curve), `graphs` (attribution graphs),
`sweeps` (what sweeps share).
"""

from __future__ import annotations

from .discovery import attribute, discover, prune_edges, roc
from .faithfulness import (
    AVERAGES,
    DEFAULT_GRID,
    DIRECTIONS,
    LEVELS,
    POSITION_MODES,
    FaithfulnessSetting,
    completeness,
    faithfulness,
    faithfulness_curve,
    faithfulness_grid,
    minimality,
)
from .graphs import Target, attribution_graph, logit_diff_target
from .prepare import DiscoverOptions, Inputs, make_batch, prepare

__all__ = [
    "AVERAGES", "DEFAULT_GRID", "DIRECTIONS", "LEVELS", "POSITION_MODES", "DiscoverOptions", "FaithfulnessSetting", "Inputs", "Target",
    "attribute", "attribution_graph", "completeness", "discover", "faithfulness", "faithfulness_curve", "faithfulness_grid",
    "logit_diff_target", "make_batch", "minimality", "prepare", "prune_edges", "roc",
]
