"""Interventions on a model's nodes: what to do to which node at which token positions (data only).

An `Intervention` names a node (``input``, a head ``a1.h2``, an MLP ``m3``, one of its neurons
``m3.n17`` or, on a feature graph, a transcoder feature ``m3.f17``), an operation and the token
positions it acts at (None: every position):

- ``ablate``: the node's output (a neuron's or feature's activation) takes its ablation value
  (resample: the corrupt prompt's; mean: its mean over the corrupt prompts; zero);
- ``scale``: its output (activation) is multiplied by ``value``, live (whatever upstream did to it);
- ``clamp``: a neuron's or feature's activation is set to ``value``.

Everything downstream of an edit runs live. A circuit JSON keeps a list of them
(`Circuit.interventions`) so a session in the explorer can be replayed from Python
(`acdc.edits.intervened_logits`, `acdc.explorer.Explorer.intervene`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .graph import Node
from .graph import parse_node as graph_parse_node

__all__ = ["OPS", "Intervention", "check_interventions", "node_of", "parse_node"]

OPS = ("ablate", "scale", "clamp")
def node_of(name: str) -> Node:
    """The node an intervention names, by the graph's one grammar (`acdc.graph.parse_node`); a one-line ValueError
    for a name that is not a node or a node whose kind cannot be edited (`NodeKind.editable`)."""
    try:
        node = graph_parse_node(name)
    except ValueError:
        node = None
    if node is None or not node.kind.editable:
        raise ValueError(f"{name!r} is not a node to intervene on; use input, a head (a1.h2), an MLP (m3), a neuron (m3.n17) "
                         "or a transcoder feature (m3.f17)")
    return node


def parse_node(name: str) -> tuple[str, int, int]:
    """(kind, layer, index) of a node an intervention names (`node_of`): ("input", -1, -1), ("head", L, H), ("mlp", L,
    -1), ("neuron", L, i), ("feature", L, i)."""
    node = node_of(name)
    return str(node.kind), node.layer, node.head


@dataclass(frozen=True)
class Intervention:
    """One edit: ``op`` ("ablate", "scale", "clamp") on ``node`` at ``positions`` (None: all); ``value`` is
    the factor of ``scale`` and the activation of ``clamp``."""

    node: str
    op: str = "ablate"
    value: float = 0.0
    positions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        kind = node_of(self.node).kind
        if self.op not in OPS:
            raise ValueError(f"op must be one of {', '.join(OPS)}, got {self.op!r}")
        if self.op == "clamp" and not kind.unit:
            raise ValueError(f"clamp sets a neuron's or a feature's activation (m3.n17, m3.f17); for {self.node} use ablate or scale")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise ValueError(f"value must be a finite number, got {self.value!r}")
        object.__setattr__(self, "value", float(self.value))
        if self.positions is not None:
            pos = tuple(self.positions)
            if not pos or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in pos):
                raise ValueError(f"positions must be token positions >= 0 (or None: every position), got {self.positions!r}")
            object.__setattr__(self, "positions", tuple(sorted(set(pos))))

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op": self.op, "value": self.value,
                "positions": None if self.positions is None else list(self.positions)}

    @classmethod
    def from_dict(cls, d: Any) -> Intervention:
        if isinstance(d, Intervention):
            return d
        if not isinstance(d, dict) or "node" not in d or set(d) - {"node", "op", "value", "positions"}:
            raise ValueError(f"an intervention is {{'node', 'op', 'value', 'positions'}}, got {d!r:.100}")
        pos = d.get("positions")
        return cls(d["node"], d.get("op", "ablate"), d.get("value", 0.0), None if pos is None else tuple(pos))


def check_interventions(items: Any) -> list[dict[str, Any]]:
    """A list of interventions (dicts or `Intervention`) checked, as JSON dicts."""
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"interventions must be a list, got {type(items).__name__}")
    return [Intervention.from_dict(x).to_dict() for x in items]
