"""The explorer's engine side: a circuit, a model and a task, and every answer the page asks for.

Each number comes from the patching engine `acdc.discover` runs on (`acdc.api.prepare`): the
metric with a set of edges ablated is `Patcher.logits` of that mask, a head's direct effect is
the metric with its edges into the logits ablated alone, and attention patterns come from the
engine's own forward pass. `view_data` is the model-free part (layout, node table, notes) that
`acdc export-html` writes into a page.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..api import prepare
from ..circuit import Circuit, check_notes, write_json
from ..edits import context_room, generate, intervened_logits
from ..faithfulness_math import Faithfulness
from ..firing import component_activity
from ..graph import Graph
from ..inputs import encode
from ..interventions import Intervention, check_interventions
from ..loading import load_model
from ..metrics import per_prompt
from ..model import ForwardCache
from ..render import circuit_title, layout
from ..tasks import Task
from ..tasks.base import scoring_note
from ..transcoders import FeatureDictionary
from .qk import attention_why
from .why import WhyAnswers

__all__ = ["Explorer", "ExplorerError", "view_data"]

TOP_K = 10
MAX_TOP_K = 50
TOTALS = 400  # "why A and not B": nodes whose total effect is measured (those with the largest direct effects)


class ExplorerError(ValueError):
    """A request the explorer cannot answer (unknown edge or node, bad prompt index): a 400, one line."""


def view_data(circuit: Circuit) -> dict[str, Any]:
    """What the page draws, without a model: the layout of every kept edge, the node table, the notes.

    Every kept edge is drawn (those with no path from input to logits marked ``live: false``, as
    the images hide them) because every kept edge is kept when the page evaluates the circuit.
    """
    g = circuit.graph
    lay = layout(circuit, circuit.in_graph)
    live = circuit.live_mask()
    for e in lay["edges"]:
        e["live"] = bool(live[e["index"]])
    table: dict[str, dict[str, Any]] = {}
    for e in lay["edges"]:
        edge = g.edges[e["index"]]
        s = abs(e["score"]) if e["score"] is not None else 0.0
        for name, node, side in ((edge.src.name, edge.src, "out"), (edge.dst.node.name, edge.dst.node, "in")):
            row = table.setdefault(name, {"name": name, "kind": str(node.kind), "layer": node.layer, "head": node.head,
                                          "edges_in": 0, "edges_out": 0, "score_in": 0.0, "score_out": 0.0})
            row[f"edges_{side}"] += 1
            row[f"score_{side}"] += s
    order = {n.name: k for k, n in enumerate(g.all_nodes)}  # with the split MLP inputs (m3 of a feature graph)
    nodes = sorted(table.values(), key=lambda r: (-r["score_out"], order[r["name"]]))
    settings = {k: v for k, v in circuit.settings.items() if isinstance(v, (str, int, float, bool)) or v is None}
    return {
        "title": circuit_title(circuit, circuit.n_edges),
        "circuit": {"n_edges": circuit.n_edges, "n_graph_edges": g.n_edges, "positions": list(g.positions or []),
                    "settings": settings, "shape": g.describe(), "interventions": circuit.interventions},
        "layout": lay,
        "nodes": nodes,
        "notes": circuit.notes,
    }


class Explorer:
    """A circuit, the model it came from and a task: the engine runs behind the explorer page.

    Args:
        model: a model from `acdc.load_model` (or a zoo entry's).
        task: the `acdc.Task` to measure on (its prompts, answers and default metric).
        circuit: the circuit explored; its graph must fit the model.
        ablation: "resample", "mean" or "zero" (default: the circuit's own setting, else resample).
        metric: default the task's.
        tokenizer: decodes token ids for display (default the model's; zoo entries bring their own).
        path: the circuit's JSON file, where `save_notes` writes labels and notes (None: not saved).
        corpus: [n, pos] token ids that `fire` scans for what makes a component fire (default: the
            task's clean and corrupt prompts, each up to its last scored token).
        transcoders: for a circuit of transcoder features, what computes them (an `acdc.TranscoderSet` or a
            cross-layer transcoder).
    """

    def __init__(self, model: Any, task: Any, circuit: Circuit, *, ablation: str | None = None,
                 metric: str | None = None, tokenizer: Any = None, path: str | Path | None = None,
                 corpus: Tensor | None = None, transcoders: FeatureDictionary | None = None):
        if corpus is not None and (not isinstance(corpus, Tensor) or corpus.dim() != 2 or corpus.is_floating_point()):
            raise ValueError("corpus must be a [n, pos] tensor of token ids")
        self.corpus = corpus
        self._fired: dict[tuple[str, int], dict[str, Any]] = {}
        self.circuit = circuit
        self.path = None if path is None else Path(path)
        ablation = ablation or str(circuit.settings.get("ablation") or "resample")
        if circuit.graph.features is None:  # a feature circuit's fit is checked by its transcoders
            Graph.from_model(load_model(model)).check_fits(circuit.graph, "this circuit", qkv=False, positions=False)
        self.patcher, self.metric, self.batch = prepare(model, task, graph=circuit.graph, ablation=ablation, metric=metric,
                                                        transcoders=transcoders)
        self.graph = self.patcher.graph
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        p, g = self.patcher, self.graph
        self.n_prompts, self.n_scored = (int(x) for x in p.answer_pos.shape)
        # which prompts the page scores, and whether they are those the circuit was found on (its file records them)
        self.scoring = scoring_note(task, circuit.settings.get("task")) if isinstance(task, Task) else \
            f"scoring {self.n_prompts} prompts given by hand"
        self.full_logits = p.clean.logits
        self.empty_logits = p.masked_logits(torch.ones(g.n_edges, dtype=torch.bool))
        self.model_metric, self.empty_metric = self.metric(self.full_logits, self.batch), self.metric(self.empty_logits, self.batch)
        self.per_prompt_model = per_prompt(self.metric, self.full_logits, self.batch)
        self.per_prompt_empty = per_prompt(self.metric, self.empty_logits, self.batch)
        self._direct: dict[str, dict[str, Any]] = {}  # head -> its direct effect (independent of the kept set)
        self.settings = {"ablation": p.ablation, "metric": self.metric.name}
        self._why = WhyAnswers(p)
        self._last: tuple[Tensor, Tensor] | None = None  # the last evaluated mask and its run's X (incremental clicks)
        self._corrupt_run: ForwardCache | None = None  # the model's corrupt run, for interventions' ablation values

    # ------------------------------------------------------------------ requests
    def view(self) -> dict[str, Any]:
        """`view_data` plus what needs the model: prompts (clean and corrupt tokens), the metric's baselines."""
        out = view_data(self.circuit)
        out["live"] = True
        out["metric"] = {"name": self.metric.name, "higher_is_better": self.metric.higher_is_better,
                         "model": _num(self.model_metric), "empty": _num(self.empty_metric), "ablation": self.patcher.ablation,
                         "per_prompt_model": _floats(self.per_prompt_model)}
        out["prompts"] = [self._prompt(i) for i in range(self.n_prompts)]
        out["scoring"] = self.scoring
        return out

    def evaluate(self, *, ablated: Any = None, kept: Any = None, removed: Any = None, prompt: Any = 0,
                 k: Any = TOP_K) -> dict[str, Any]:
        """The metric with one edge set kept; say which with exactly one of three lists of edge names:

        - ``removed``: the circuit minus these edges (what clicking edges on the page does);
        - ``kept``: exactly these edges kept, every other edge of the graph ablated;
        - ``ablated``: the whole graph minus these edges (every other edge kept, the circuit or not).

        Returns the metric, each prompt's value, the faithfulness of what is kept (ratio m(C)/m(M)
        and normalized (m(C) - m({})) / (m(M) - m({}))), and for ``prompt`` the top ``k`` next
        tokens of the full model on the clean and on the corrupt prompt and of this circuit;
        ``evaluated`` names which of the three was asked.
        """
        given = {name: x for name, x in (("removed", removed), ("kept", kept), ("ablated", ablated)) if x is not None}
        if len(given) != 1:
            raise ExplorerError('send exactly one of "removed" (the circuit minus these), "kept" (only these) or '
                                '"ablated" (the whole graph minus these): lists of edge names')
        (what, names), = given.items()
        i, k = self._prompt_index(prompt), _top_k(k)
        t0 = time.perf_counter()
        named = self.edge_mask(names, what)
        if what == "ablated":
            mask = named
        elif what == "kept":
            mask = ~named
        else:
            mask = ~(self.circuit.in_graph.to(named.device) & ~named)
        logits = self._logits(mask)
        value = self.metric(logits, self.batch)
        prompts = per_prompt(self.metric, logits, self.batch)
        f = Faithfulness(self.model_metric, value, self.empty_metric, self.per_prompt_model, prompts,
                         self.per_prompt_empty, dict(self.settings))
        return {
            "metric": _num(value), "per_prompt": _floats(prompts), "metric_name": self.metric.name,
            "higher_is_better": self.metric.higher_is_better, "model_metric": _num(self.model_metric),
            "empty_metric": _num(self.empty_metric), "n_ablated": int(mask.sum()), "n_kept": int((~mask).sum()),
            "faithfulness": {"ratio": _num(f.ratio_of_means), "normalized": _num(f.normalized),
                             "per_prompt_median": _num(float(f.per_prompt.median()))},
            "evaluated": {"removed": "circuit minus removed", "kept": "only kept", "ablated": "graph minus ablated"}[what],
            "prompt": i, "next_tokens": {"model": self._next(self.full_logits, i, k), "circuit": self._next(logits, i, k),
                                         "corrupt": self._next(self.patcher.corrupt_logits, i, k)},
            "seconds": time.perf_counter() - t0,
        }

    def forget(self) -> None:
        """Drop the run kept for incremental clicks: the next evaluation runs from scratch (for timing it)."""
        self._last = None

    def _logits(self, mask: Tensor) -> Tensor:
        """Logits with ``mask`` ablated. A click changes a few edges: the run restarts at the lowest layer
        they feed, from the last evaluated run's sources below it (which those edges cannot change), so
        a click on an edge into a late layer costs a fraction of a fresh patched run (graphs of whole MLPs)."""
        p, g = self.patcher, self.graph
        if not bool(mask.any()) or (bool(mask.all()) and p.ablation == "resample") or g.split_mlps:
            return p.masked_logits(mask)
        keep = g.dense(~mask).to(p.tf.device)
        reuse = None
        if self._last is not None:
            changed = (mask != self._last[0]).nonzero().squeeze(1)
            if len(changed) == 0:
                reuse = (self._last[1], g.n_layers)
            else:
                reuse = (self._last[1], int(g.dst_layer[g.edge_dst[changed]].min()))
        logits, X = p.forward(keep, reuse)
        self._last = (mask.clone(), X)
        return logits

    def head(self, name: Any, prompt: Any = 0) -> dict[str, Any]:
        """A head's attention pattern on the clean and the corrupt prompt, and its direct effect.

        attention: [query, key] probabilities over the prompt's tokens (up to its last scored one).
        direct_effect: the metric with only the head's edges into the logits ablated (every other
        edge kept), its change from the full model's, each prompt's change, and on ``prompt`` the
        change of the correct and incorrect answers' logits.
        """
        g, i = self.graph, self._prompt_index(prompt)
        if not isinstance(name, str) or name not in g.src_index or not g.sources[g.src_index[name]].kind.attends:
            raise ExplorerError(f"{name!r} is not an attention head of this model (heads look like 'a1.h2')")
        node = g.sources[g.src_index[name]]
        n_tok = int(self.patcher.answer_pos[i].max()) + 1
        tf = self.patcher.tf
        attention = {}
        for side, tokens in (("clean", self.patcher.clean_tokens), ("corrupt", self.patcher.corrupt_tokens)):
            pattern = tf.attention_patterns(tokens[i : i + 1, :n_tok])[node.layer, node.head, 0]
            attention[side] = [[round(float(x), 5) for x in row] for row in pattern.cpu()]
        return {"head": name, "layer": node.layer, "prompt": i, "tokens": self._prompt(i, n_tok),
                "attention": attention, "direct_effect": self._direct_effect(name, i)}

    def node_effects(self, kept: Any) -> dict[str, Any]:
        """For each head and MLP with a kept edge out: the metric when its kept outgoing edges are also ablated.

        That is the node's output removed from the circuit ``kept``; ``change`` is the difference
        from the circuit's own metric (one patched run per node).
        """
        g = self.graph
        keep = self.edge_mask(kept, "kept")
        base = self.metric(self.patcher.masked_logits(~keep), self.batch)
        src_of = g.edge_src.tolist()
        out: dict[str, list[int]] = {}
        for e in keep.nonzero().squeeze(1).tolist():
            s = g.sources[src_of[e]]
            if s.kind.component:
                out.setdefault(s.name, []).append(e)
        effects = []
        for name, idx in out.items():
            mask = ~keep
            mask[idx] = True
            value = self.metric(self.patcher.masked_logits(mask), self.batch)
            effects.append({"name": name, "metric": value, "change": value - base})
        effects.sort(key=lambda r: -abs(r["change"]))
        return {"metric": base, "effects": effects}

    def why(self, prompt: Any = 0, a: Any = None, b: Any = None, totals: Any = TOTALS) -> dict[str, Any]:
        """Why the model gives token ``a`` and not ``b`` on ``prompt`` (at its last scored position).

        ``a``, ``b``: token ids or single-token texts (default: the prompt's correct and incorrect
        answers). Returns ``logit_diff`` (logit(a) - logit(b) of the full model) and, for every node
        with an edge into the logits, its direct effect on it (the change when only that edge is
        ablated) and, for the ``totals`` nodes with the largest direct effects, its total effect (every
        edge out of it ablated), sorted by |direct effect| (`acdc.explorer.why`).
        """
        i = self._prompt_index(prompt)
        ta, tb = self._pair(i, a, b)
        if isinstance(totals, bool) or not isinstance(totals, int) or totals < 0:
            raise ExplorerError(f"totals must be a number of nodes >= 0, got {totals!r}")
        out = self._why.nodes(i, ta, tb, totals)
        return {"prompt": i, "a": {"id": ta, "token": self.decode(ta)}, "b": {"id": tb, "token": self.decode(tb)}, **out}

    def trace(self, node: Any, prompt: Any = 0, a: Any = None, b: Any = None) -> dict[str, Any]:
        """What feeds ``node`` in `why`'s question: the change of logit(a) - logit(b) when each edge into it
        is ablated alone (every input slot and position), sorted by its size."""
        i = self._prompt_index(prompt)
        ta, tb = self._pair(i, a, b)
        if not isinstance(node, str):
            raise ExplorerError('"node" must be a node name such as "a1.h2", "m0" or "logits"')
        try:
            out = self._why.trace(i, ta, tb, node)
        except ValueError as err:
            raise ExplorerError(str(err)) from None
        return {"prompt": i, "a": {"id": ta, "token": self.decode(ta)}, "b": {"id": tb, "token": self.decode(tb)}, **out}

    def attend(self, head: Any, key: Any, prompt: Any = 0, query: Any = None) -> dict[str, Any]:
        """Why ``head`` attends from position ``query`` (default: the prompt's last scored one) to ``key``
        on the clean prompt: its attention score split over the upstream nodes through the query and
        through the key (each list sums to the score; exact under frozen norms), and the probability
        on ``key`` when each node's edge into the head's query, or key, is ablated (`acdc.explorer.qk`)."""
        g, i = self.graph, self._prompt_index(prompt)
        if not isinstance(head, str) or head not in g.src_index or not g.sources[g.src_index[head]].kind.attends:
            raise ExplorerError(f"{head!r} is not an attention head of this model (heads look like 'a1.h2')")
        q = int(self.patcher.answer_pos[i].max()) if query is None else query
        for label, v in (("query", q), ("key", key)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ExplorerError(f"{label} must be a token position, got {v!r}")
        try:
            out = attention_why(self.patcher, head, i, q, key)
        except ValueError as err:
            raise ExplorerError(str(err)) from None
        toks = self.patcher.clean_tokens[i]
        return {**out, "query_token": self.decode(int(toks[q])), "key_token": self.decode(int(toks[key]))}

    def fire(self, node: Any, top: Any = TOP_K) -> dict[str, Any]:
        """What makes ``node`` (a head ``a1.h2``, an MLP ``m3``, a neuron ``m3.n17`` or, in a feature graph,
        a feature ``m3.f17``) fire over the corpus: its activation's statistics and histogram, its top
        contexts (a head's: query-key pairs) and the tokens it promotes and suppresses
        (`acdc.firing.component_activity`). Each context names its sequence (``clean 3``, ``corrupt 3``,
        ``corpus 3``). Kept per node: a second ask costs nothing."""
        k = _top_k(top)
        key = (str(node), k)
        if key not in self._fired:
            t0 = time.perf_counter()
            p = self.patcher
            if self.corpus is None:
                tokens = torch.cat([p.clean_tokens, p.corrupt_tokens]).cpu()
                last = p.answer_pos.max(1).values.cpu().repeat(2)
                mask = torch.arange(tokens.shape[1])[None, :] <= last[:, None]
                names = [f"clean {i}" for i in range(self.n_prompts)] + [f"corrupt {i}" for i in range(self.n_prompts)]
            else:
                tokens, mask, names = self.corpus, None, [f"corpus {i}" for i in range(self.corpus.shape[0])]
            try:
                (act,) = component_activity(p.tf, [node], tokens, mask=mask, transcoders=p.transcoders,
                                            top=k, tokenizer=self.tokenizer)
            except ValueError as err:
                raise ExplorerError(str(err)) from None
            out = act.to_dict()
            for c in out["contexts"]:
                c["source"] = names[c["sequence"]]
            out["corpus"] = ("the task's clean and corrupt prompts" if self.corpus is None else "the corpus given") + \
                f" ({tokens.shape[0]} sequences)"
            out["seconds"] = time.perf_counter() - t0
            self._fired[key] = out
        return self._fired[key]

    def _pair(self, i: int, a: Any, b: Any) -> tuple[int, int]:
        answers = self._answers(i)
        return self._token(a, answers.get("correct"), "a"), self._token(b, answers.get("incorrect"), "b")

    def _token(self, x: Any, default: int | None, label: str) -> int:
        """A token id from an id, a single-token text, or the default (the prompt's answer)."""
        vocab = self.patcher.tf.arch.d_vocab
        if x is None or x == "":
            if default is None:
                raise ExplorerError(f'this task has no answers: pass "{label}" (a token id or a single-token text)')
            return default
        if isinstance(x, int) and not isinstance(x, bool):
            if not 0 <= x < vocab:
                raise ExplorerError(f"{label} must be a token id in [0, {vocab}), got {x}")
            return x
        if isinstance(x, str):
            if self.tokenizer is None:
                raise ExplorerError(f"{label}: this model has no tokenizer; pass a token id")
            try:
                ids = encode(self.tokenizer, x)
            except (ValueError, KeyError):
                ids = []
            if len(ids) != 1:
                if x.strip().isdigit():  # a token id sent as text (a query string): say what is wrong with the id
                    raise ExplorerError(f"{label} must be a token id in [0, {vocab}) or a single-token text, got {x}")
                raise ExplorerError(f"{label} {x!r} is {len(ids)} tokens here; pass a single token (or its id)")
            return int(ids[0])
        raise ExplorerError(f"{label} must be a token id or a single-token text, got {x!r}")

    def intervene(self, interventions: Any, prompt: Any = 0, k: Any = TOP_K) -> dict[str, Any]:
        """The full model with ``interventions`` (`acdc.interventions`: ablate, scale or clamp a node at
        positions; dicts or `Intervention`) on the clean prompts, everything downstream live: the metric,
        each prompt's value, the change from the full model's, and ``prompt``'s top ``k`` next tokens
        with and without them (`acdc.edits.intervened_logits`)."""
        i, k = self._prompt_index(prompt), _top_k(k)
        try:
            items = [Intervention.from_dict(x) for x in interventions] if isinstance(interventions, list) else None
            if items is None:
                raise ValueError('"interventions" must be a list of {"node", "op", "value", "positions"}')
            t0 = time.perf_counter()
            if self._corrupt_run is None and any(x.op == "ablate" for x in items):
                self._corrupt_run = self.patcher.tf.run(self.patcher.corrupt_tokens.to(self.patcher.tf.device))
            logits = intervened_logits(self.patcher, items, self._corrupt_run)
        except ValueError as err:
            raise ExplorerError(str(err)) from None
        value = self.metric(logits, self.batch)
        prompts = per_prompt(self.metric, logits, self.batch)
        return {"metric": _num(value), "per_prompt": _floats(prompts), "model_metric": _num(self.model_metric),
                "change": _num(value - self.model_metric), "metric_name": self.metric.name,
                "interventions": [x.to_dict() for x in items], "prompt": i,
                "next_tokens": {"model": self._next(self.full_logits, i, k), "intervened": self._next(logits, i, k)},
                "seconds": time.perf_counter() - t0}

    def generate(self, interventions: Any, prompt: Any = 0, max_new_tokens: Any = 20) -> dict[str, Any]:
        """Continue clean prompt ``prompt`` (up to its last scored token) greedily, as the model does and with the
        feature ``interventions`` (transcoder features, per-layer or cross-layer: clamp, scale, ablate at every step
        or at prompt positions; `acdc.generate`): what the features do to what the model says. A model with learned
        positions generates up to its context (``new_tokens`` says how many)."""
        i = self._prompt_index(prompt)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= 200:
            raise ExplorerError(f"max_new_tokens must be an integer in [1, 200], got {max_new_tokens!r}")
        try:
            items = [Intervention.from_dict(x) for x in interventions] if isinstance(interventions, list) else None
            if items is None:
                raise ValueError('"interventions" must be a list of {"node", "op", "value", "positions"}')
            if self.patcher.transcoders is None and items:
                raise ValueError("generation edits transcoder features (m3.f17); this circuit has none: heads, MLPs and "
                                 "neurons are edited on the prompts' own runs (run)")
            t0 = time.perf_counter()
            p = self.patcher
            ids = p.clean_tokens[i, : int(p.answer_pos[i].max()) + 1].cpu()
            room = context_room(p.tf, ids.numel())
            n = max_new_tokens if room is None else min(max_new_tokens, room)
            if n < 1:
                raise ValueError(f"this prompt fills the model's context ({ids.numel()} tokens, learned positions): "
                                 "nothing can follow it")
            kw = {"transcoders": p.transcoders, "max_new_tokens": n, "tokenizer": self.tokenizer}
            plain = generate(p.tf, ids, **kw)
            edited = generate(p.tf, ids, interventions=items, **kw) if items else plain
        except ValueError as err:
            raise ExplorerError(str(err)) from None
        return {"prompt": i, "interventions": [x.to_dict() for x in items], "new_tokens": n,
                "model": [self.decode(int(t)) for t in plain.new], "intervened": [self.decode(int(t)) for t in edited.new],
                "seconds": time.perf_counter() - t0}

    def save_interventions(self, interventions: Any) -> dict[str, Any]:
        """Keep ``interventions`` with the circuit and write its JSON back (replay: `intervene(circuit.interventions)`)."""
        try:
            self.circuit.interventions = check_interventions(interventions)
        except ValueError as err:
            raise ExplorerError(str(err)) from None
        return {"interventions": self.circuit.interventions, "saved": self._write()}

    def save_notes(self, node: Any, label: Any = "", note: Any = "") -> dict[str, Any]:
        """Set a node's label and note (empty strings clear them) and write the circuit JSON back."""
        if not isinstance(node, str):
            raise ExplorerError('"node" must be a node name such as "a1.h2"')
        notes = dict(self.circuit.notes)
        notes[node] = {"label": label, "note": note}
        try:
            self.circuit.notes = check_notes(notes, self.graph)
        except ValueError as err:
            raise ExplorerError(str(err)) from None
        return {"notes": self.circuit.notes, "saved": self._write()}

    def _write(self) -> str | None:
        """Write the circuit JSON back to its file (atomically); the path, or None without one."""
        if self.path is None:
            return None
        tmp = self.path.with_name(self.path.name + ".tmp")
        write_json(self.circuit.to_dict(), tmp).replace(self.path)
        return str(self.path)

    # ------------------------------------------------------------------ pieces
    def edge_mask(self, names: Any, field: str) -> Tensor:
        """[n_edges] bool from a list of edge names; a one-line error naming the first unknown one."""
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ExplorerError(f'"{field}" must be a list of edge names (strings)')
        g = self.graph
        unknown = [n for n in names if not g.has_edge(n)]
        if unknown:
            more = f" (and {len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""
            try:
                g.edge_index(unknown[0])
            except ValueError as err:
                raise ExplorerError(f"{err}{more}") from None
        return g.edge_mask(names)

    def _prompt_index(self, prompt: Any) -> int:
        if isinstance(prompt, bool) or not isinstance(prompt, int) or not 0 <= prompt < self.n_prompts:
            raise ExplorerError(f"prompt must be an index in [0, {self.n_prompts - 1}], got {prompt!r}")
        return prompt

    def decode(self, token: int) -> str:
        """One token id as text (``#id`` without a tokenizer)."""
        tok = self.tokenizer
        if tok is None:
            return f"#{token}"
        try:
            return str(tok.decode([token]))
        except Exception:  # a tokenizer that cannot decode this id: show the id
            return f"#{token}"

    def _prompt(self, i: int, n_tok: int | None = None) -> dict[str, Any]:
        """A prompt's clean and corrupt tokens (text), its scored positions and answers."""
        p = self.patcher
        n_tok = n_tok or int(p.answer_pos[i].max()) + 1
        out: dict[str, Any] = {
            "clean": [self.decode(int(t)) for t in p.clean_tokens[i, :n_tok]],
            "corrupt": [self.decode(int(t)) for t in p.corrupt_tokens[i, :n_tok]],
            "scored": [int(x) for x in p.answer_pos[i]],
        }
        for side, t in self._answers(i).items():
            out[side] = {"id": t, "token": self.decode(t)}
        if p.positions is not None:
            names = p.positions.names
            out["positions"] = [names[int(x)] for x in p.positions.index[i, :n_tok]]
        return out

    def _next(self, logits: Tensor, i: int, k: int) -> dict[str, Any]:
        """Top-k next tokens at prompt i's last scored position, and the answers' logits there."""
        row = logits[i * self.n_scored + self.n_scored - 1].double()
        probs = row.softmax(-1)
        top = probs.topk(min(k, row.numel()))
        out: dict[str, Any] = {"top": [{"id": int(t), "token": self.decode(int(t)), "prob": float(pr), "logit": float(row[t])}
                                       for pr, t in zip(top.values.tolist(), top.indices.tolist(), strict=True)]}
        for side, t in self._answers(i).items():
            out[side] = {"logit": float(row[t]), "prob": float(probs[t])}
        return out

    def _answers(self, i: int) -> dict[str, int]:
        """Prompt i's (first) correct and incorrect answer ids at its last scored position, where the task has answers."""
        b, last = self.batch, i * self.n_scored + self.n_scored - 1
        return {side: int(ids[last].reshape(-1)[0]) for side, ids in (("correct", b.correct), ("incorrect", b.incorrect))
                if ids is not None}

    def _direct_effect(self, name: str, i: int) -> dict[str, Any]:
        g = self.graph
        if name not in self._direct:
            mask = g.edges_out_of([name]) & (g.edge_dst == g.logits_row)
            idx = mask.nonzero().squeeze(1).tolist()
            logits = self.patcher.masked_logits(mask)
            value = self.metric(logits, self.batch)
            change = per_prompt(self.metric, logits, self.batch) - self.per_prompt_model
            self._direct[name] = {"edges": [g.edges[j].name for j in idx], "metric": value,
                                  "change": value - self.model_metric, "per_prompt_change": _floats(change),
                                  "_logits": logits}
        d = self._direct[name]
        after, before = self._next(d["_logits"], i, 1), self._next(self.full_logits, i, 1)
        answers = {side: after[side]["logit"] - before[side]["logit"] for side in ("correct", "incorrect") if side in after}
        return {**{k: v for k, v in d.items() if k != "_logits"}, "prompt_logit_change": answers}


def _num(x: float) -> float | None:
    """A float for JSON: None where it is NaN or infinite (a ratio with a zero denominator)."""
    return x if math.isfinite(x) else None


def _floats(t: Tensor | Sequence[float]) -> list[float | None]:
    return [_num(float(x)) for x in (t.tolist() if isinstance(t, Tensor) else t)]


def _top_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_TOP_K:
        raise ExplorerError(f"k must be a number of tokens in [1, {MAX_TOP_K}], got {k!r}")
    return k
