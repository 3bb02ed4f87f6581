"""The explorer's attribution-graph view: one prompt's attribution graph drawn by layer and position,
pruned at the page's thresholds, its nodes labelled and saved.

Two sources open the same way (`AttributionExplorer.open`, ``acdc explore-graph PATH``):

- acdc's own graph (an `acdc.AttributionGraph`, or the folder `AttributionGraph.save` wrote): every
  threshold the page asks for is `AttributionGraph.prune` of the whole graph, exactly, and a node's
  inputs and outputs are read from the full adjacency;
- a graph file in circuit-tracer's JSON schema (its own, or acdc's `to_json`): only what the file
  holds can be shown, so the thresholds filter it: nodes by their stored cumulative influence
  (the same cut `prune` makes), then links by |weight| until ``edge_threshold`` of the kept links'
  total |weight| is reached; features and error nodes left without a link are dropped.

The page draws at most ``max_links`` links (the heaviest); it says how many there are in all.
Nodes are addressed by acdc's names in acdc's graphs (``m3.f17@5``; circuit-tracer's ids, which
collide between a layer-0 feature and an error node, come along as ``ct_id``) and by a file's own
node ids in a file.
Labels are circuit-tracer's ``clerp``: written into the JSON file, or into a saved graph's
metadata (`AttributionGraph.save_labels`). Pinned nodes (always shown, whatever the thresholds)
and supernodes (``[label, id, id, ...]``: nodes grouped by hand) are circuit-tracer's
``qParams.pinnedIds`` and ``qParams.supernodes``, saved the same way (`save_groups`);
`suggest_groups` offers groups of shown features whose effects point the same way.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from ..attribution_graphs import AttributionGraph
from .session import ExplorerError

__all__ = ["AttributionExplorer", "file_view"]

MAX_LINKS = 3000
TOP_LINKS = 12


class AttributionExplorer:
    """An attribution graph (acdc's, or a circuit-tracer JSON document) behind the explorer page.

    Args:
        graph: an `AttributionGraph`, or a circuit-tracer graph document (a dict, as read from its JSON).
        path: where labels are saved: the graph's folder (`AttributionGraph.save`) or the JSON file
            (None: labels are kept in memory only).
    """

    def __init__(self, graph: AttributionGraph | dict[str, Any], path: str | Path | None = None):
        if isinstance(graph, dict):
            _check_document(graph, "the graph document")
        self.graph = graph
        self.path = None if path is None else Path(path)

    @classmethod
    def open(cls, path: str | Path) -> AttributionExplorer:
        """A saved acdc graph (a folder with graph.safetensors) or a circuit-tracer graph JSON file."""
        path = Path(path)
        if path.is_dir():
            if not (path / "graph.safetensors").is_file():
                raise ValueError(f"{path} is a folder without graph.safetensors: not a saved acdc attribution graph")
            return cls(AttributionGraph.load(path), path)
        if not path.is_file():
            raise ValueError(f"no such file or folder: {path}")
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not JSON ({getattr(err, 'msg', err)})") from None
        _check_document(doc, str(path))
        return cls(doc, path)

    # ------------------------------------------------------------------ requests
    def view(self, node_threshold: Any = 0.8, edge_threshold: Any = 0.98, max_links: Any = MAX_LINKS,
             merge: Any = False) -> dict[str, Any]:
        """What the page draws at these thresholds: nodes (id, name, type, layer, position, influence,
        activation, label, pinned), links (source, target, weight; the heaviest ``max_links``), the prompt,
        counts, the pins and supernodes. ``merge``: each supernode drawn as one node (``group:K``, type
        "supernode", its shown members listed) whose links are the sums of its members' links drawn (links
        inside a group dropped), as circuit-tracer's subgraph view merges them."""
        if not isinstance(merge, bool):
            raise ExplorerError(f"merge must be true or false, got {merge!r}")
        nt, et = _fraction(node_threshold, "node_threshold"), _fraction(edge_threshold, "edge_threshold")
        if isinstance(max_links, bool) or not isinstance(max_links, int) or max_links < 0:
            raise ExplorerError(f"max_links must be a number of links >= 0, got {max_links!r}")
        pinned, groups = self.groups()
        always = set(pinned) | {i for g in groups for i in g[1:]}
        if isinstance(self.graph, dict):
            out = file_view(self.graph, nt, et, max_links, always=always)
        else:
            out = _graph_view(self.graph, nt, et, max_links, always=always)
        for n in out["nodes"]:
            n["pinned"] = n["id"] in pinned
        out = {**out, "pinned": pinned, "supernodes": groups}
        return _merged(out, groups) if merge and groups else out

    def node(self, node_id: Any) -> dict[str, Any]:
        """A node's heaviest inputs and outputs (by |weight|): over the whole adjacency for acdc's graphs
        (ids: acdc's node names, ``m3.f17@5``), over the file's links for a file (its node ids)."""
        if not isinstance(node_id, str):
            raise ExplorerError('"id" must be a node id such as "m3.f17@5" (or a file\'s "3_17_5")')
        if isinstance(self.graph, dict):
            nodes = {n["node_id"]: n for n in self.graph["nodes"]}
            if node_id not in nodes:
                raise ExplorerError(f"no node {node_id!r} in this graph file")
            ins = [(lk["source"], lk["weight"]) for lk in self.graph["links"] if lk["target"] == node_id]
            outs = [(lk["target"], lk["weight"]) for lk in self.graph["links"] if lk["source"] == node_id]

            def row(i: str, w: float) -> dict[str, Any]:
                return {"id": i, "name": _name_of(nodes[i]), "weight": float(w)}
            top = {side: [row(i, w) for i, w in sorted(pairs, key=lambda p: -abs(p[1]))[:TOP_LINKS]]
                   for side, pairs in (("inputs", ins), ("outputs", outs))}
            return {"id": node_id, "name": _name_of(nodes[node_id]), **top}
        g = self.graph
        i = _index_of(g, node_id)
        top = {}
        for side, values in (("inputs", g.adjacency[i]), ("outputs", g.adjacency[:, i])):
            k = min(TOP_LINKS, int((values != 0).sum()))
            idx = values.abs().topk(k).indices.tolist() if k else []
            top[side] = [{"id": g.node_name(j), "name": g.node_name(j), "weight": float(values[j])} for j in idx]
        return {"id": node_id, "name": node_id, **top}

    def groups(self) -> tuple[list[str], list[list[str]]]:
        """(pinned ids, supernodes as [label, id, ...]) in the page's ids (acdc's names, or a file's node ids)."""
        if isinstance(self.graph, dict):
            q = self.graph.get("qParams") or {}
            return list(q.get("pinnedIds") or []), [list(g) for g in q.get("supernodes") or []]
        return list(self.graph.pinned), [list(g) for g in self.graph.supernodes]

    def save_groups(self, pinned: Any = None, supernodes: Any = None) -> dict[str, Any]:
        """Set the pinned nodes and/or the supernodes (None: unchanged) and write them where labels go."""
        old_pins, old_groups = self.groups()
        pins = old_pins if pinned is None else self._ids(pinned, "pinned")
        if supernodes is None:
            groups = old_groups
        else:
            if not isinstance(supernodes, list):
                raise ExplorerError('"supernodes" must be a list of [label, id, id, ...]')
            groups = []
            for g in supernodes:
                if not isinstance(g, list) or len(g) < 3 or not isinstance(g[0], str) or not g[0].strip() or len(g[0]) > 200:
                    raise ExplorerError(f"a supernode is [label, id, id, ...] with a label and at least two nodes, got {g!r:.120}")
                groups.append([g[0], *self._ids(g[1:], f"supernode {g[0]!r}")])
        saved = None
        if isinstance(self.graph, dict):
            q = self.graph.setdefault("qParams", {})
            q["pinnedIds"], q["supernodes"] = pins, groups
            saved = self._write_file()
        else:
            self.graph.pinned, self.graph.supernodes = pins, groups
            if self.path is not None:
                saved = str(self.graph.save_labels(self.path))
        return {"pinned": pins, "supernodes": groups, "saved": saved}

    def suggest_groups(self, threshold: Any = 0.9, node_threshold: Any = 0.8, edge_threshold: Any = 0.98) -> dict[str, Any]:
        """Groups of the features shown at these thresholds whose effects point the same way.

        A feature's effects are the weights of its links to the nodes shown (the view's links). Seeds
        go in order of influence (the most influential first); each seed not yet grouped takes every
        ungrouped feature whose effects have cosine similarity >= ``threshold`` with its own. Groups of
        one are left out. Returns {"groups": [{"ids", "names", "similarity" (the least with the seed)}]}.
        """
        t = _fraction(threshold, "threshold")
        v = self.view(node_threshold, edge_threshold)
        rows = {n["id"]: n for n in v["nodes"]}
        targets = {n["id"]: j for j, n in enumerate(v["nodes"])}
        effects: dict[str, list[float]] = {}
        for lk in v["links"]:
            if rows[lk["source"]]["type"] == "feature":
                effects.setdefault(lk["source"], [0.0] * len(targets))[targets[lk["target"]]] += lk["weight"]
        order = sorted(effects, key=lambda i: (rows[i]["influence"], i))
        vecs = {i: _unit(effects[i]) for i in order}
        grouped: set[str] = set()
        out = []
        for seed in order:
            if seed in grouped or vecs[seed] is None:
                continue
            members, least = [seed], 1.0
            for other in order:
                if other in grouped or other == seed or vecs[other] is None:
                    continue
                cos = sum(a * b for a, b in zip(vecs[seed], vecs[other], strict=True))  # type: ignore[arg-type]
                if cos >= t:
                    members.append(other)
                    least = min(least, cos)
            if len(members) > 1:
                grouped.update(members)
                out.append({"ids": members, "names": [rows[i]["name"] for i in members], "similarity": round(least, 6)})
        return {"threshold": t, "groups": out}

    def _ids(self, ids: Any, what: str) -> list[str]:
        """The ids checked against the graph (every node of acdc's graph; a file's nodes), in order, once each."""
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ExplorerError(f"{what} must be a list of node ids")
        if isinstance(self.graph, dict):
            known = {n["node_id"] for n in self.graph["nodes"]}
            bad = [i for i in ids if i not in known]
            if bad:
                raise ExplorerError(f"{what}: no node {bad[0]!r} in this graph file")
        else:
            for i in ids:
                _index_of(self.graph, i)
        return list(dict.fromkeys(ids))

    def _write_file(self) -> str | None:
        assert isinstance(self.graph, dict)
        if self.path is None:
            return None
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.graph, indent=1))
        tmp.replace(self.path)
        return str(self.path)

    def save_label(self, node_id: Any, label: Any) -> dict[str, Any]:
        """Set a node's label (empty: clear it) and write it to the file or folder the graph came from."""
        if not isinstance(node_id, str) or not isinstance(label, str):
            raise ExplorerError('send "id" (a node id) and "label" (a string)')
        if len(label) > 500:
            raise ExplorerError(f"a label is at most 500 characters, got {len(label)}")
        saved = None
        if isinstance(self.graph, dict):
            node = next((n for n in self.graph["nodes"] if n["node_id"] == node_id), None)
            if node is None:
                raise ExplorerError(f"no node {node_id!r} in this graph file")
            node["clerp"] = label
            saved = self._write_file()
        else:
            g = self.graph
            name = g.node_name(_index_of(g, node_id))  # a live graph's ids are acdc's node names
            if label:
                g.labels[name] = label
            else:
                g.labels.pop(name, None)
            if self.path is not None:
                saved = str(g.save_labels(self.path))
        return {"id": node_id, "label": label, "saved": saved}


# ---------------------------------------------------------------------- views
def _graph_view(g: AttributionGraph, node_threshold: float, edge_threshold: float, max_links: int,
                always: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """``always``: nodes shown whatever the thresholds (pinned, grouped), with their links to the nodes shown."""
    kept = g.prune(node_threshold, edge_threshold)
    node_mask, edge_mask = kept.node_mask.clone(), kept.edge_mask
    extra = [g.node_index(n) for n in always]
    if extra:
        added = torch.zeros_like(node_mask)
        added[extra] = ~node_mask[extra]
        node_mask[extra] = True
        touches = (added[:, None] & node_mask[None, :]) | (node_mask[:, None] & added[None, :])
        edge_mask = edge_mask | (touches & (g.adjacency != 0))
    idx = node_mask.nonzero().squeeze(1).tolist()
    records = {i: g.node_record(i, float(kept.cumulative[i])) for i in idx}
    dst, src = edge_mask.nonzero(as_tuple=True)
    weights = g.adjacency[dst, src]
    n_links = len(weights)
    if n_links > max_links:
        top = weights.abs().topk(max_links).indices
        dst, src, weights = dst[top], src[top], weights[top]
    names = {i: g.node_name(i) for i in idx}
    links = [{"source": names[s], "target": names[t], "weight": float(w)}
             for t, s, w in zip(dst.tolist(), src.tolist(), weights.tolist(), strict=True)]
    nodes = [{**_node_row(records[i], names[i]), "id": names[i], "ct_id": records[i]["node_id"]} for i in idx]
    return {
        "source": "acdc", "title": _title(g.info), "prompt_tokens": list(g.token_strs), "n_layers": g.n_layers,
        "thresholds": {"node": node_threshold, "edge": edge_threshold, "exact": True},
        "scores": {"replacement": g.replacement_score, "completeness": g.completeness_score},
        "counts": {"nodes": len(nodes), "all_nodes": g.n_nodes, "links": n_links, "shown_links": len(links)},
        "nodes": nodes, "links": links,
    }


def file_view(doc: dict[str, Any], node_threshold: float = 0.8, edge_threshold: float = 0.98,
              max_links: int = MAX_LINKS, always: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """A circuit-tracer graph document filtered at these thresholds (see the module docstring); the nodes
    ``always`` (pinned, grouped) are kept whatever the thresholds."""
    fixed = ("embedding", "logit")
    nodes = doc["nodes"]
    prunable = sorted((n for n in nodes if n["feature_type"] not in fixed), key=lambda n: float(n.get("influence") or 0.0))
    keep = {n["node_id"] for n in nodes if n["feature_type"] in fixed} | set(always)
    for n in prunable:  # cumulative influence, increasing: up to and including the first to reach the threshold
        keep.add(n["node_id"])
        if float(n.get("influence") or 0.0) >= node_threshold:
            break
    among = sorted((lk for lk in doc["links"] if lk["source"] in keep and lk["target"] in keep), key=lambda lk: -abs(lk["weight"]))
    total = sum(abs(lk["weight"]) for lk in among)
    links, acc = [], 0.0
    for lk in among:
        if total > 0 and acc >= edge_threshold * total:
            break
        links.append(lk)
        acc += abs(lk["weight"])
    linked = {x for lk in links for x in (lk["source"], lk["target"])}
    shown = [n for n in nodes if n["node_id"] in keep and (n["feature_type"] in fixed or n["node_id"] in linked or n["node_id"] in always)]
    meta = doc.get("metadata", {})
    n_layers = _n_layers(nodes)
    return {
        "source": "file", "title": str(meta.get("slug", "graph")), "prompt_tokens": list(meta.get("prompt_tokens", [])),
        "n_layers": n_layers, "thresholds": {"node": node_threshold, "edge": edge_threshold, "exact": False},
        "scores": None,
        "counts": {"nodes": len(shown), "all_nodes": len(nodes), "links": len(links), "shown_links": min(len(links), max_links)},
        "nodes": [_node_row(n, _name_of(n)) for n in shown],
        "links": [{"source": lk["source"], "target": lk["target"], "weight": float(lk["weight"])} for lk in links[:max_links]],
    }


def _node_row(n: dict[str, Any], name: str) -> dict[str, Any]:
    """One node for the page: its row is its layer (tokens -1, logits n_layers), its column its position."""
    kind = {"cross layer transcoder": "feature", "mlp reconstruction error": "error", "embedding": "embedding",
            "logit": "logit"}.get(n["feature_type"], n["feature_type"])
    layer = -1 if kind == "embedding" else int(n["layer"]) - (1 if kind == "logit" else 0)
    act = n.get("activation")
    label = n.get("clerp") or ""
    token = ""
    if kind == "logit":  # its token, out of circuit-tracer's default label 'Output "x" (p=0.123)'
        said = re.fullmatch(r'Output "(.*)" \(p=[0-9.e-]+\)', label, re.S)
        token, label = (said.group(1), "") if said else (name.split("@")[-1], label)
    return {"id": n["node_id"], "name": name, "type": kind, "layer": layer, "pos": int(n["ctx_idx"]),
            "influence": float(n.get("influence") or 0.0), "activation": None if act is None else float(act),
            "label": label, "token": token, "prob": float(n.get("token_prob") or 0.0)}


def _name_of(n: dict[str, Any]) -> str:
    """acdc's name of a circuit-tracer node (`acdc.attribution_graphs`: m3.f17@5, m3.err@5, input@5, logit@1234)."""
    parts = str(n["node_id"]).split("_")
    kind, pos = n["feature_type"], n["ctx_idx"]
    if kind == "cross layer transcoder" and len(parts) == 3:
        return f"m{parts[0]}.f{parts[1]}@{pos}"
    if kind == "mlp reconstruction error":
        return f"m{n['layer']}.err@{pos}"
    if kind == "embedding":
        return f"input@{pos}"
    if kind == "logit" and len(parts) == 3:
        return f"logit@{parts[1]}"
    return str(n["node_id"])


def _n_layers(nodes: list[dict[str, Any]]) -> int:
    logits = [int(n["layer"]) for n in nodes if n["feature_type"] == "logit"]
    if logits:
        return logits[0] - 1
    layers = [int(n["layer"]) for n in nodes if n["feature_type"] not in ("embedding", "logit")]
    return max(layers, default=-1) + 1


def _merged(view: dict[str, Any], groups: list[list[str]]) -> dict[str, Any]:
    """``view`` with each supernode's shown members replaced by one node and their links summed (a node in
    two groups goes to the first)."""
    rows = {n["id"]: n for n in view["nodes"]}
    into: dict[str, str] = {}
    merged = []
    for k, (label, *ids) in enumerate(groups):
        members = [i for i in ids if i in rows and i not in into]
        if not members:
            continue
        gid = f"group:{k}"
        for i in members:
            into[i] = gid
        ms = [rows[i] for i in members]
        merged.append({"id": gid, "name": label, "type": "supernode", "layer": round(sum(m["layer"] for m in ms) / len(ms)),
                       "pos": max(m["pos"] for m in ms), "influence": min(m["influence"] for m in ms), "activation": None,
                       "label": label, "token": "", "prob": 0.0, "pinned": any(m["pinned"] for m in ms), "members": members})
    sums: dict[tuple[str, str], float] = {}
    for lk in view["links"]:
        src, dst = str(lk["source"]), str(lk["target"])
        s, t = into.get(src, src), into.get(dst, dst)
        if s != t:  # a link inside a group is not drawn
            sums[s, t] = sums.get((s, t), 0.0) + lk["weight"]
    nodes = [n for n in view["nodes"] if n["id"] not in into] + merged
    links = [{"source": s, "target": t, "weight": w} for (s, t), w in sums.items()]
    return {**view, "nodes": nodes, "links": links, "merged": True,
            "counts": {**view["counts"], "nodes": len(nodes), "links": len(links), "shown_links": len(links)}}


def _unit(v: list[float]) -> list[float] | None:
    norm = math.sqrt(sum(x * x for x in v))
    return None if norm == 0 else [x / norm for x in v]


def _index_of(g: AttributionGraph, name: str) -> int:
    """The node called ``name`` (acdc's names: m3.f17@5, m3.err@5, input@5, logit@1234), or a one-line ExplorerError."""
    try:
        return g.node_index(name)
    except ValueError as err:
        raise ExplorerError(str(err)) from None


def _title(info: dict[str, Any]) -> str:
    what = [str(info[k]) for k in ("model", "transcoders") if k in info]
    return " / ".join(what) if what else "attribution graph"


def _fraction(x: Any, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not 0.0 <= x <= 1.0:
        raise ExplorerError(f"{name} must be a number in [0, 1], got {x!r}")
    return float(x)


def _check_document(doc: Any, what: str) -> None:
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list) or not isinstance(doc.get("links"), list):
        raise ValueError(f"{what} is not an attribution graph file: circuit-tracer's JSON has \"nodes\" and \"links\" lists")
    for n in doc["nodes"]:
        missing = [k for k in ("node_id", "feature_type", "layer", "ctx_idx") if k not in n]
        if missing:
            raise ValueError(f"{what}: a node lacks {', '.join(missing)} (circuit-tracer's node schema)")
