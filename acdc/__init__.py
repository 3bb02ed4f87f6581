"""acdc: automatic circuit discovery for transformer language models.

    import acdc
    entry = acdc.zoo.load("ioi")                                  # a model with a planted circuit
    circuit = acdc.discover(entry.model, entry.task, threshold=0.1)
    print(acdc.recovery(circuit, entry.truth))                    # TPR/FPR against the truth
    acdc.render(circuit, "circuit.png", classes=entry.truth)      # needs graphviz's dot
    acdc.explorer.start(acdc.explorer.Explorer(entry.model, entry.task, circuit)).url   # in the browser

The names below are what a user needs; the engine's internals live in their modules
(`acdc.patching`, `acdc.model`, `acdc.graph`, `acdc.algorithms`).
"""

import warnings as _warnings

with _warnings.catch_warnings():
    # transformer_lens and transformers import tqdm.auto, which in Jupyter without ipywidgets warns
    # "IProgress not found" and falls back to the text bars; acdc uses those anyway (acdc.progress).
    # Importing it here once, quietly, leaves no filter behind.
    _warnings.filterwarnings("ignore", message="IProgress not found")
    import tqdm.autonotebook  # noqa: F401

from . import explorer, known, tasks, transcoders, zoo
from . import feature_nodes as feature_nodes  # registers feature graphs: Graph.from_model(model, transcoders=ts)
from . import neurons as neurons  # registers the node kind: Graph.from_model(model, mlp_units="neurons")
from ._version import __version__ as __version__
from .algorithms import ALGORITHMS
from .api import (
    Target,
    attribute,
    attribution_graph,
    completeness,
    discover,
    faithfulness,
    faithfulness_curve,
    faithfulness_grid,
    logit_diff_target,
    minimality,
    prune_edges,
    roc,
)
from .attribution_graphs import AttributionGraph
from .blocks import GIM
from .circuit import Circuit
from .comparison import Comparison, Method, compare
from .edits import Generated, generate
from .evaluation import ROC, Confusion, Recovery, recovery
from .faithfulness_math import Completeness, Faithfulness, FaithfulnessCurve, FaithfulnessGrid, Minimality
from .feature_nodes import active_features
from .graph import Edge, Graph, Node
from .inputs import ABLATIONS
from .known import KnownCircuit
from .loading import load_model
from .metrics import METRICS, Batch, Metric
from .mib import export_mib, mib_top, read_mib
from .patching import Patcher
from .render import DotNotFoundError, render, render_comparison
from .scores import Scores
from .tasks import Task
from .transcoders import (
    CrossLayerTranscoder,
    Fidelity,
    TrainOptions,
    TranscoderSet,
    load_clt,
    load_transcoders,
    train_clt,
    train_transcoders,
    transcoder_fidelity,
)

__all__ = [
    "ABLATIONS",
    "ALGORITHMS",
    "METRICS",
    "ROC",
    "Batch",
    "Circuit",
    "Comparison",
    "Completeness",
    "Confusion",
    "DotNotFoundError",
    "Edge",
    "Faithfulness",
    "Fidelity",
    "FaithfulnessCurve",
    "FaithfulnessGrid",
    "Generated",
    "Graph",
    "KnownCircuit",
    "Method",
    "Metric",
    "Minimality",
    "Node",
    "Patcher",
    "Recovery",
    "Scores",
    "GIM",
    "Task",
    "TrainOptions",
    "TranscoderSet",
    "CrossLayerTranscoder",
    "active_features",
    "AttributionGraph",
    "attribute",
    "attribution_graph",
    "logit_diff_target",
    "Target",
    "compare",
    "completeness",
    "discover",
    "explorer",
    "faithfulness",
    "faithfulness_curve",
    "export_mib",
    "mib_top",
    "read_mib",
    "faithfulness_grid",
    "generate",
    "known",
    "load_clt",
    "load_model",
    "load_transcoders",
    "minimality",
    "prune_edges",
    "recovery",
    "render",
    "render_comparison",
    "roc",
    "tasks",
    "train_clt",
    "train_transcoders",
    "transcoder_fidelity",
    "transcoders",
    "zoo",
]
