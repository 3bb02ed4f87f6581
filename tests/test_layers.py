"""The house rules: imports inside acdc/ only point down the layering (README, developer section)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "acdc"

# Bottom to top. A module may import modules of its own layer or below, never above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("facts", ("acdc._version", "acdc.files", "acdc.inputs", "acdc.positions", "acdc.graph", "acdc.families", "acdc.model", "acdc.loading", "acdc.metrics", "acdc.progress", "acdc.plots", "acdc.executors")),
    ("transcoders", ("acdc.transcoders",)),
    ("task data", ("acdc.tasks",)),
    ("result data", ("acdc.interventions", "acdc.circuit", "acdc.scores", "acdc.mib", "acdc.known", "acdc.attribution_graphs")),
    ("planted models", ("acdc.zoo",)),
    ("engine", ("acdc.sites", "acdc.edits", "acdc.blocks", "acdc.sources", "acdc.patching", "acdc.neurons", "acdc.feature_nodes", "acdc.linearised", "acdc.mixing", "acdc.firing")),
    ("algorithms", ("acdc.algorithms",)),
    ("evaluation", ("acdc.evaluation", "acdc.faithfulness_math")),
    ("rendering", ("acdc.render",)),
    ("api", ("acdc.api", "acdc.comparison")),
    ("explorer", ("acdc.explorer",)),
    ("interfaces", ("acdc.cli", "acdc.demo", "acdc.__main__")),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer; add it to LAYERS and to the README's list")


def _imports(path: Path, text: str | None = None) -> set[str]:
    """acdc modules imported anywhere in the file (function bodies included)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(text if text is not None else path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("acdc")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
                # "from . import known" imports a module; "from .graph import Graph" a name.
                found |= {f"{target}.{a.name}" if node.module is None else target for a in node.names}
            elif node.module and node.module.startswith("acdc"):
                found.add(node.module)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_point_down(path):
    here = _module_name(path)
    for target in _imports(path):
        assert _layer(target) <= _layer(here), (
            f"{here} ({LAYERS[_layer(here)][0]}) imports {target} ({LAYERS[_layer(target)][0]}), a layer above it"
        )


def test_every_layer_is_populated():
    names = {_module_name(p) for p in MODULES}
    for layer, prefixes in LAYERS:
        assert any(n == p or n.startswith(p + ".") for n in names for p in prefixes), layer


def test_a_planted_upward_import_is_caught():
    """The checker itself: result data importing the engine inside a function is reported."""
    path = PACKAGE / "circuit.py"
    text = path.read_text() + "\n\ndef _f():\n    from .patching import Patcher\n"
    assert "acdc.patching" in _imports(path, text) and "acdc.patching" not in _imports(path)
    assert _layer("acdc.patching") > _layer("acdc.circuit")
    assert _imports(PACKAGE / "tasks" / "ioi.py") >= {"acdc.tasks.base", "acdc.tasks.text"}


def test_public_names_are_what_a_user_needs():
    import acdc

    for name in ("discover", "attribute", "roc", "recovery", "render", "render_comparison", "load_model", "Task",
                 "KnownCircuit", "Circuit", "Scores", "ROC", "Recovery", "Patcher", "Graph", "Metric"):
        assert name in acdc.__all__ and hasattr(acdc, name), name
    for internal in ("PatchState", "Transformer", "Destination", "score"):
        assert internal not in acdc.__all__, internal
