"""Counts that say how much the engine is one thing (issue 37), read from the source with `ast`.

    python experiments/engine_audit.py [--root DIR] [--json]

Run it in a clone of any commit (``--root``) for before/after numbers. Each count is defined here,
so two versions are measured by the same rule:

- **forwards by hand**: functions that walk the layers themselves: a ``for layer in range(...)``
  loop (forward or backward) whose body runs a layer's attention: calls the model's attention pieces
  (``attention``, ``attend``, ``mix``, ``project``, ``project_normed``, ``pattern``, ``head_weights``,
  ``attn_bias``) or reads attention weights (``w["W_V"]``, ``_wo``, ``_wv``, ...). The blocks' passes
  are not counted: they walk `Patcher.blocks`, each block doing its own layer's part.
- **weight reads outside the model module**: reads of the model's weight table, ``x.w`` (``tf.w["W_Q"]``,
  or ``w = tf.w`` and then ``w[...]``: one read each), in any package module but ``acdc/model.py``.
- **kind string tests outside the kinds**: comparisons of a node name or the graph's ``mlp_units``
  with a string literal, and ``startswith``/``endswith`` of a node-name prefix (``"a"``, ``"m"``,
  ``"input"``, ``"logits"``), in any module but ``acdc/graph.py``, ``acdc/neurons.py`` and
  ``acdc/feature_nodes.py`` (the kinds' own homes).
- **kind names tested as strings** (added 2026-12-06, after the first count missed them): comparisons
  (``==``, ``!=``, ``in``) of something named ``kind`` with a literal that names an acdc kind of node
  (``"head"``, ``"mlp"``, ``"neuron"``, ``"feature"``, ``"input"``, ``"error"``, ``"skip"``), as code that
  dispatches on ``str(node.kind)`` does, outside the kinds' homes.
- **weights read off a graph** (added 2026-12-06 with the topology-only graph): reads of ``.transcoders``
  on something named ``graph`` or ``g`` (``graph.transcoders``, ``self.graph.transcoders``), in the package.
- **private names read across modules**: ``obj._name`` where ``obj`` is not ``self``/``cls``, and
  ``from .x import _name``, in the package.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

KIND_HOMES = {"graph.py", "neurons.py", "features.py", "feature_nodes.py"}
ATTENTION_PIECES = {"attention", "attend", "mix", "project", "project_normed", "pattern", "head_weights", "attn_bias"}
ATTENTION_WEIGHTS = {"W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"}
NAME_PREFIXES = {"a", "m", "input", "logits", "m{", "a{"}
KIND_NAMES = {"head", "mlp", "neuron", "feature", "input", "error", "skip"}


def _calls(node: ast.AST) -> set[str]:
    return {n.func.attr for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}


def _is_layer_loop(node: ast.For) -> bool:
    return isinstance(node.target, ast.Name) and node.target.id == "layer" and "range(" in ast.unparse(node.iter)


def _computes_a_layer(loop: ast.For) -> bool:
    reads = {n.attr for n in ast.walk(loop) if isinstance(n, ast.Attribute)}
    keys = {n.value for n in ast.walk(loop) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return bool(_calls(loop) & ATTENTION_PIECES) or bool(reads & {"_wo", "_wv"}) or bool(keys & ATTENTION_WEIGHTS)


def audit(root: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"forwards": [], "weight_reads": [], "kind_tests": [], "kind_name_tests": [], "graph_weights": [],
                                 "private_reads": []}
    for path in sorted((root / "acdc").rglob("*.py")):
        rel = str(path.relative_to(root))
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for loop in ast.walk(fn):
                    if isinstance(loop, ast.For) and _is_layer_loop(loop) and _computes_a_layer(loop):
                        out["forwards"].append(f"{rel}:{fn.lineno} {fn.name}")
                        break
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Attribute) and node.attr == "transcoders" \
                    and ast.unparse(node.value).split(".")[-1] in ("graph", "g"):
                out["graph_weights"].append(f"{where} {ast.unparse(node)}")
            if isinstance(node, ast.Attribute) and node.attr == "w" and rel != "acdc/model.py":
                out["weight_reads"].append(f"{where} {ast.unparse(node)}")
            if path.name not in KIND_HOMES:
                if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and isinstance(c.value, str)
                                                         for c in [node.left, *node.comparators]):
                    text = ast.unparse(node)
                    if "mlp_units" in text or ".name" in text and any(
                            f"'{s}'" in text or f'"{s}"' in text for s in ("logits", "input", "m", "a")):
                        out["kind_tests"].append(f"{where} {text[:60]}")
                if isinstance(node, ast.Compare) and "kind" in ast.unparse(node) and any(
                        isinstance(c, ast.Constant) and c.value in KIND_NAMES
                        or isinstance(c, (ast.Tuple, ast.List, ast.Set)) and any(
                            isinstance(e, ast.Constant) and e.value in KIND_NAMES for e in c.elts)
                        for c in [node.left, *node.comparators]):
                    out["kind_name_tests"].append(f"{where} {ast.unparse(node)[:60]}")
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr in ("startswith", "endswith") and node.args \
                        and isinstance(node.args[0], ast.Constant) and node.args[0].value in NAME_PREFIXES:
                    out["kind_tests"].append(f"{where} {ast.unparse(node)[:60]}")
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                out["private_reads"].append(f"{where} {ast.unparse(node)[:60]}")
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        out["private_reads"].append(f"{where} from {'.' * node.level}{node.module or ''} import {alias.name}")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--json", action="store_true", help="every place, as JSON")
    args = ap.parse_args(argv)
    found = audit(args.root)
    if args.json:
        print(json.dumps(found, indent=1))
        return
    for key, places in found.items():
        print(f"{key}: {len(places)}")
        for p in places:
            print(f"    {p}")


if __name__ == "__main__":
    main()
