"""acdc: automatic circuit discovery for transformer language models."""

from .api import discover
from .circuit import Circuit
from .graph import Destination, Edge, Graph, Node
from .metrics import Batch, Metric
from .model import Transformer, load_model
from .patching import ABLATIONS, Patcher, PatchState

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
    "PatchState",
    "Transformer",
    "discover",
    "load_model",
]
__version__ = "0.1.0"
