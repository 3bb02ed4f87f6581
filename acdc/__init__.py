"""acdc: automatic circuit discovery for transformer language models."""

from .graph import Destination, Edge, Graph, Node
from .metrics import Batch, Metric
from .model import Transformer, load_model
from .patching import ABLATIONS, Patcher, PatchState

__all__ = [
    "ABLATIONS",
    "Batch",
    "Destination",
    "Edge",
    "Graph",
    "Metric",
    "Node",
    "Patcher",
    "PatchState",
    "Transformer",
    "load_model",
]
__version__ = "0.1.0"
