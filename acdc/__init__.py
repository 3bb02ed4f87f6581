"""acdc: automatic circuit discovery for transformer language models."""

from . import known, tasks, zoo
from .api import attribute, discover
from .circuit import Circuit
from .evaluate import ROC, Recovery, roc, score
from .graph import Destination, Edge, Graph, Node
from .metrics import Batch, Metric
from .model import Transformer, load_model
from .patching import ABLATIONS, Patcher, PatchState
from .scores import Scores

__all__ = [
    "ABLATIONS",
    "Batch",
    "Circuit",
    "Destination",
    "Edge",
    "Graph",
    "Metric",
    "Node",
    "Patcher",
    "ROC",
    "Recovery",
    "Scores",
    "PatchState",
    "Transformer",
    "attribute",
    "discover",
    "known",
    "tasks",
    "zoo",
    "load_model",
    "roc",
    "score",
]
__version__ = "0.1.0"
