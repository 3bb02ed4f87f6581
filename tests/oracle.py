"""The slow, obvious patched forward, used as ground truth in tests.

It runs the TransformerLens bridge with hooks. Every destination input (each head's q/k/v input,
each MLP input, the final residual) is rebuilt as the explicit sum of its sources' outputs, with
an ablated source's output swapped for its ablation value, plus the attention biases that belong
to no source. Nothing here shares code with acdc's engine.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from acdc.graph import Graph

MLPSplit = Callable[[int, Tensor, Tensor, Tensor], "dict[str, Tensor] | None"]
"""(layer, MLP input stream x, the MLP's activations hook_post, its output y) -> the outputs
[B, S, d] of the graph's sources in that layer, by name (None: the MLP is one node ``m{layer}``). A source whose
output depends on the reader (a cross-layer transcoder's feature: what it has written by the reader's layer)
gives [n_layers + 1, B, S, d], read at the number of MLPs before the destination (the destination's layer)."""


def at_reader(value: Tensor, mlp_layers: int) -> Tensor:
    """A source's output as a destination after ``mlp_layers`` MLPs reads it (`MLPSplit`)."""
    return value[mlp_layers] if value.dim() == 4 else value


def split_forward(model, graph: Graph, tokens: Tensor, *, split: MLPSplit | None = None,
                  mlp_bias: list[Tensor] | None = None, ablated: dict[str, Tensor] | None = None,
                  abl: dict[str, Tensor] | None = None,
                  patterns: dict[int, Tensor] | None = None,
                  post_attn: list[Callable[[Tensor], Tensor]] | None = None,
                  qk_copies: list | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The hooked forward: logits [B, S, vocab] and every source's output in this run, by name.

    Every destination's input is rebuilt as the sum of its sources (an edge in ``ablated``, a dict
    from edge name to a [B, S] bool mask, takes ``abl[src]`` at those tokens; a float mask m mixes
    ``(1 - m) O + m A``), plus the biases of
    no node: each layer's b_O and, where ``split`` splits an MLP into parts, ``mlp_bias[layer]``
    (neurons: b_out; a transcoder: b_dec). ``post_attn`` (a family with a norm after attention, Gemma 2):
    each layer's norm module; a destination then reads, per upstream layer, that norm of the layer's b_O
    plus its own mix of the layer's heads (MIB's per-destination rule), the rest summed as above.
    ``qk_copies`` (a QK norm over the whole projection, OLMo-2): each layer's Hugging Face attention module and
    the norm before it (None: none); head h's query (key) is then q_norm(q_proj(norm(x_h))) sliced at h, from h's
    own input x_h (each
    head its own copy of the norm), replacing the bridge's normed projection of every head's input together.
    """
    model.set_use_split_qkv_input(True)
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    cfg = model.cfg
    ablated = ablated or {}
    try:
        b_o = model.b_O.detach()
    except AttributeError:  # bias-free attention output (Llama, Qwen2, Gemma)
        b_o = torch.zeros(cfg.n_layers, cfg.d_model)
    b_m = torch.zeros(cfg.n_layers, cfg.d_model) if mlp_bias is None else torch.stack(mlp_bias)
    current: dict[str, Tensor] = {}
    inputs: dict[int, Tensor] = {}
    posts: dict[int, Tensor] = {}
    sources_of: dict[str, dict[str, None]] = {}  # ordered sets: a positional graph repeats each edge
    for e in graph.edges:
        sources_of.setdefault(e.dst.name, {})[e.src.name] = None

    def rebuilt(dst_name: str, attn_layers: int, mlp_layers: int) -> Tensor:
        total = b_m[:mlp_layers].sum(0) + (0 if post_attn is not None else b_o[:attn_layers].sum(0))
        per_layer: dict[int, Tensor] = {}  # post-norm: each upstream layer's b_O + mix of heads, normed below
        for src in sources_of[dst_name]:
            edge = f"{src}->{dst_name}"
            value = at_reader(current[src], mlp_layers)
            if edge in ablated:
                assert abl is not None
                m, a = ablated[edge], at_reader(abl[src], mlp_layers)
                if m.dtype == torch.bool:
                    value = torch.where(m[..., None], a, value)
                else:  # a weight of ablation in [0, 1]: mixed, (1 - m) O + m A
                    value = value + m[..., None] * (a - value)
            if post_attn is not None and src.startswith("a"):
                layer = int(src[1:].split(".")[0])
                per_layer[layer] = per_layer.get(layer, b_o[layer]) + value
            else:
                total = total + value
        for layer, y in per_layer.items():
            total = total + post_attn[layer](y)  # type: ignore[index]
        return total

    def record_input(x, hook):
        current["input"] = x
        return x

    head_inputs: dict[tuple[int, str], Tensor] = {}

    def make_qkv(layer: int, letter: str):
        def fn(x, hook):
            x = x.clone()
            for h in range(cfg.n_heads):
                dst = f"a{layer}.h{h}<{letter}>" if graph.split_qkv else f"a{layer}.h{h}"
                x[:, :, h] = rebuilt(dst, layer, layer)
            head_inputs[(layer, letter)] = x
            return x
        return fn

    def make_qk_copy(layer: int, letter: str):
        def fn(y, hook):
            attn, pre = qk_copies[layer]  # type: ignore[index]
            proj, norm = getattr(attn, f"{letter}_proj"), getattr(attn, f"{letter}_norm")
            x = head_inputs[(layer, letter)]  # [B, S, H, d] each head's own input (the stream, before the block's norm)
            x = x if pre is None else pre(x)
            dh = y.shape[-1] // cfg.n_heads
            out = torch.stack([norm(proj(x[:, :, h]))[..., h * dh : (h + 1) * dh] for h in range(cfg.n_heads)], 2)
            return out.reshape(y.shape)
        return fn

    def make_result(layer: int):
        def fn(x, hook):
            for h in range(cfg.n_heads):
                current[f"a{layer}.h{h}"] = x[:, :, h]
            return x
        return fn

    def make_mlp_in(layer: int):
        def fn(x, hook):
            inputs[layer] = rebuilt(f"m{layer}", layer if cfg.parallel_attn_mlp else layer + 1, layer)
            return inputs[layer]
        return fn

    def make_post(layer: int):
        def fn(x, hook):
            posts[layer] = x
            return x
        return fn

    def make_mlp_out(layer: int):
        def fn(y, hook):
            parts = None if split is None else split(layer, inputs[layer], posts[layer], y)
            if parts is None:
                current[f"m{layer}"] = y
            else:
                current.update(parts)
            return y
        return fn

    def final(x, hook):
        return rebuilt("logits", cfg.n_layers, cfg.n_layers)

    hooks = [("blocks.0.hook_resid_pre", record_input)]
    for layer in range(cfg.n_layers):
        for letter in "qkv":
            hooks.append((f"blocks.{layer}.hook_{letter}_input", make_qkv(layer, letter)))
        hooks.append((f"blocks.{layer}.attn.hook_result", make_result(layer)))
        if qk_copies is not None:
            hooks += [(f"blocks.{layer}.attn.hook_{letter}_normed", make_qk_copy(layer, letter)) for letter in "qk"]
        hooks.append((f"blocks.{layer}.hook_mlp_in", make_mlp_in(layer)))
        hooks.append((f"blocks.{layer}.mlp.hook_post", make_post(layer)))
        hooks.append((f"blocks.{layer}.hook_mlp_out", make_mlp_out(layer)))
    hooks.append(("ln_final.hook_in", final))
    if patterns is not None:  # every layer's attention probabilities [B, heads, q, k] in this run, recorded
        for layer in range(cfg.n_layers):
            hooks.append((f"blocks.{layer}.attn.hook_pattern", lambda x, hook, layer=layer: patterns.__setitem__(layer, x) or x))
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    return logits, dict(current)


def ablation_values(model, graph: Graph, corrupt: Tensor, ablation: str, batch: int, **split) -> dict[str, Tensor]:
    """Each source's ablation value [B|1, S, d]: its output on the corrupt run, the mean of that over
    the corrupt prompts, or zero (``split``: `split_forward`'s split and mlp_bias)."""
    out = split_forward(model, graph, corrupt, **split)[1]
    if ablation == "resample":
        return out
    if ablation == "mean":  # over the prompts (a reader-dependent output's second axis)
        return {k: v.mean(v.dim() - 3, keepdim=True).expand(*v.shape[: v.dim() - 3], batch, *v.shape[-2:]) for k, v in out.items()}
    return {k: torch.zeros_like(v) for k, v in out.items()}


def patched_logits(model, graph: Graph, clean: Tensor, corrupt: Tensor, ablated, ablation: str, **split) -> Tensor:
    """Logits [batch, pos, vocab] of the clean run with the named edges ablated.

    ``ablated``: edge names (ablated at every token), or a dict from edge names to a [batch, pos]
    bool mask of the tokens where the edge is ablated (per-position swaps). ``split``: how MLPs are
    split into nodes (`split_forward`; default: each MLP is one node).
    """
    if not isinstance(ablated, dict):
        ablated = {e: torch.ones(clean.shape, dtype=torch.bool) for e in ablated}
    abl = ablation_values(model, graph, corrupt, ablation, clean.shape[0], **split)
    return split_forward(model, graph, clean, ablated=ablated, abl=abl, **split)[0]


def per_position_masks(graph: Graph, mask: Tensor, positions) -> dict[str, Tensor]:
    """A positional graph's edge mask [n_edges] -> plain edge name -> [batch, pos] tokens where it is
    ablated (``positions``: an `acdc.Positions`), what `patched_logits` takes."""
    out: dict[str, Tensor] = {}
    for i in mask.nonzero().squeeze(1).tolist():
        e = graph.edges[i]
        at = positions.mask(e.pos)
        out[e.base_name] = out.get(e.base_name, torch.zeros_like(at)) | at
    return out


class _GIMSoftmax(torch.autograd.Function):
    """GIM's softmax rule written from its paper's definition: softmax(x) forward; backward the softmax Jacobian at
    x / T applied to the incoming gradient, s * (g - sum(g * s)) with s = softmax(x / T)."""

    @staticmethod
    def forward(ctx, x, T):
        ctx.save_for_backward(x)
        ctx.T = T
        return torch.softmax(x, -1)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        s = torch.softmax(x / ctx.T, -1)
        return s * (g - (g * s).sum(-1, keepdim=True)), None


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k):
        ctx.k = k
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * ctx.k, None


class _FrozenNorm(torch.nn.Module):
    """A LayerNorm (or RMSNorm: no centring, no bias) with its statistic detached, as GIM's LayerNormDetach."""

    def __init__(self, norm):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        n = self.norm
        rms = not hasattr(n, "bias") or n.bias is None
        c = x if rms else x - x.mean(-1, keepdim=True)
        eps = getattr(n, "eps", None) or getattr(n, "variance_epsilon", 1e-5)
        y = c / (c.pow(2).mean(-1, keepdim=True) + eps).sqrt().detach() * n.weight
        return y if rms else y + n.bias


def gim_hooks(gim) -> list:
    """TransformerLens hooks applying GIM's rules (as GIM's own TransformerLens integration does): every norm's
    ``hook_scale`` detached, queries / keys / values' gradients scaled at ``attn.hook_q/k/v``, and the pattern
    recomputed from the saved scores by `_GIMSoftmax`."""
    scores: dict[str, Tensor] = {}
    hooks = []
    if gim.freeze_norm:
        hooks.append((lambda n: n.endswith("hook_scale"), lambda x, hook: x.detach()))
    for letter, k in (("q", gim.q_scale), ("k", gim.k_scale), ("v", gim.v_scale)):
        hooks.append((lambda n, letter=letter: n.endswith(f"attn.hook_{letter}"), lambda x, hook, k=k: _Scale.apply(x, k)))

    def keep(x, hook):
        scores[hook.name.rsplit(".", 1)[0]] = x
        return x

    hooks.append((lambda n: n.endswith("attn.hook_attn_scores"), keep))
    hooks.append((lambda n: n.endswith("attn.hook_pattern"),
                  lambda x, hook: _GIMSoftmax.apply(scores[hook.name.rsplit(".", 1)[0]], gim.softmax_temperature)))
    return hooks


def destination_grads(model, graph: Graph, tokens: Tensor, loss_fn, qk_copies: list | None = None, gim=None,
                      shifts: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """d loss / d (input of each destination), [batch, pos, d_model] each, by TransformerLens hooks.

    Each destination's input gets a zero tensor added at its own hook (a head's q/k/v input
    slice, an MLP input, the final residual); the gradient of the loss w.r.t. that zero tensor
    is the gradient w.r.t. that destination's input alone. ``loss_fn(logits [batch, pos, vocab])``.
    ``qk_copies``: as `split_forward`'s (each head's query and key normed from its own input). ``gim``: an
    `acdc.GIM`, its rules applied by `gim_hooks`. ``shifts``: hook name -> a constant [B, S, d] added there
    (no gradient of its own: EAP-IG's path points, `eap_ig_activations_reference`).
    """
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    cfg = model.cfg
    B, S = tokens.shape
    probes = {d.name: torch.zeros(B, S, cfg.d_model, requires_grad=True) for d in graph.destinations}

    head_inputs: dict[tuple[int, str], Tensor] = {}

    def qkv(layer: int, letter: str):
        def fn(x, hook):
            parts = []
            for h in range(cfg.n_heads):
                name = f"a{layer}.h{h}<{letter}>" if graph.split_qkv else f"a{layer}.h{h}"
                parts.append(x[:, :, h] + probes[name])
            head_inputs[(layer, letter)] = torch.stack(parts, 2)
            return head_inputs[(layer, letter)]
        return fn

    def qk_copy(layer: int, letter: str):
        def fn(y, hook):
            attn, pre = qk_copies[layer]  # type: ignore[index]
            proj, norm = getattr(attn, f"{letter}_proj"), getattr(attn, f"{letter}_norm")
            x = head_inputs[(layer, letter)]
            x = x if pre is None else pre(x)
            dh = y.shape[-1] // cfg.n_heads
            return torch.stack([norm(proj(x[:, :, h]))[..., h * dh : (h + 1) * dh] for h in range(cfg.n_heads)], 2).reshape(y.shape)
        return fn

    hooks = []
    for layer in range(cfg.n_layers):
        for letter in "qkv":
            hooks.append((f"blocks.{layer}.hook_{letter}_input", qkv(layer, letter)))
        if qk_copies is not None:
            hooks += [(f"blocks.{layer}.attn.hook_{letter}_normed", qk_copy(layer, letter)) for letter in "qk"]
        hooks.append((f"blocks.{layer}.hook_mlp_in", lambda x, hook, n=f"m{layer}": x + probes[n]))
    hooks.append(("ln_final.hook_in", lambda x, hook: x + probes["logits"]))
    hooks += [(name, lambda x, hook, s=shift: x + s) for name, shift in (shifts or {}).items()]
    swapped = []
    if gim is not None:
        hooks += gim_hooks(gim)
        if gim.freeze_norm:  # the bridge norms each head's split q/k/v input with ln1's raw module, past its hooks
            for m in model.modules():
                if getattr(m, "_ln1_module", None) is not None:
                    def per_head(x, m=m):
                        b, s, h, d = x.shape
                        return _FrozenNorm(m._ln1_module)(x.reshape(b * s * h, d)).reshape(b, s, h, d)
                    object.__setattr__(m, "_apply_ln1_per_head", per_head)  # the bridge re-wires _ln1_module each forward
                    swapped.append(m)
    try:
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    finally:
        for m in swapped:
            object.__delattr__(m, "_apply_ln1_per_head")
    loss_fn(logits).backward()
    return {name: p.grad for name, p in probes.items()}


def eap_reference(model, graph: Graph, clean: Tensor, corrupt: Tensor, ablation: str, loss_fn,
                  positions=None, gim=None, **split) -> dict[str, float]:
    """EAP by hand: (ablated - clean source output) . gradient at the destination input, summed.

    With ``positions`` (an `acdc.Positions` for a positional ``graph``), each edge sums over its
    position's tokens only; ``split``: how MLPs are split into nodes (`split_forward`); ``gim``: the gradient
    under GIM's rules (`destination_grads`).
    """
    clean_out = split_forward(model, graph, clean, **split)[1]
    corrupt_out = split_forward(model, graph, corrupt, **split)[1]
    grads = destination_grads(model, graph, clean, loss_fn, split.get("qk_copies"), gim)
    out = {}
    for e in graph.edges:
        src = e.src.name
        at = torch.ones(clean.shape, dtype=torch.bool) if e.pos is None else positions.mask(e.pos)
        o = at_reader(clean_out[src], e.dst.node.layer)  # the destination's layer: the MLPs before it
        if ablation == "resample":
            a = at_reader(corrupt_out[src], e.dst.node.layer)
        elif ablation == "mean":
            a = at_reader(corrupt_out[src], e.dst.node.layer).mean(0, keepdim=True)
        else:
            a = torch.zeros_like(o)
        out[e.name] = float(((a - o) * grads[e.dst.name] * at[..., None]).sum())
    return out


def eap_ig_activations_reference(model, graph: Graph, clean: Tensor, corrupt: Tensor, ablation: str, loss_fn, steps: int,
                                 **split) -> dict[str, float]:
    """EAP-IG-activations by hand, on the right grid (alpha = k / steps, k = 1..steps), for each node group in turn:
    the input node, each layer's heads, each layer's MLP (its one node, or all of its parts: features, error, skip).
    In a group's pass its sources output A + alpha (O - A) wherever they write, as constants added to the model's
    own forward (the input at ``blocks.0.hook_resid_pre``, the heads at ``hook_attn_out``, an MLP's parts at every
    ``hook_mlp_out`` they write into: a cross-layer feature writes v[j + 1] - v[j] into MLP j, `at_reader`), and the
    gradient is taken at every destination's input. Each edge scores (A - O) . that gradient as its destination
    reads the source, averaged over every pass."""
    clean_out = split_forward(model, graph, clean, **split)[1]
    abl = ablation_values(model, graph, corrupt, ablation, clean.shape[0], **split)
    L = model.cfg.n_layers
    groups: dict[str, list[str]] = {}
    for node in graph.sources:
        name = node.name
        key = "input" if name == "input" else (name.split(".")[0] if name.startswith("m") else f"attn{name[1:].split('.')[0]}")
        groups.setdefault(key, []).append(name)

    def written(value: Tensor, j: int, home: int) -> Tensor | None:
        if value.dim() == 4:  # by reader: what it writes into MLP j
            return value[j + 1] - value[j]
        return value if j == home else None

    total = {e.name: 0.0 for e in graph.edges}
    n_passes = 0
    for key, names in groups.items():
        for k in range(1, steps + 1):
            alpha = k / steps
            diff = {n: (1 - alpha) * (abl[n].expand_as(clean_out[n]) - clean_out[n]) for n in names}
            shifts: dict[str, Tensor] = {}
            if key == "input":
                shifts["blocks.0.hook_resid_pre"] = diff["input"]
            elif key.startswith("attn"):
                shifts[f"blocks.{key[4:]}.hook_attn_out"] = sum(diff.values())  # type: ignore[assignment]
            else:
                home = int(key[1:])
                for j in range(home, L):
                    parts = [w for w in (written(v, j, home) for v in diff.values()) if w is not None]
                    if parts:
                        shifts[f"blocks.{j}.hook_mlp_out"] = sum(parts)  # type: ignore[assignment]
            grads = destination_grads(model, graph, clean, loss_fn, shifts=shifts)
            for e in graph.edges:
                src, layer = e.src.name, e.dst.node.layer
                a_minus_o = at_reader(abl[src], layer) - at_reader(clean_out[src], layer)
                total[e.name] += float((a_minus_o * grads[e.dst.name]).sum())
            n_passes += 1
    return {name: v / n_passes for name, v in total.items()}


def removals_stay_exact(p, edges, *, commit: float = 0.8, seed: int = 0, each=None) -> int:
    """Remove ``edges`` (edge indices, in the order given; those already gone are passed over) one at a
    time from the full circuit through the incremental state `p.state()`: every candidate's logits, and
    the state's after each commit (a random ``commit`` share of them), equal a patched run from scratch.
    ``each(state)`` is called before each test. Returns how many edges were tested."""
    g = p.graph
    st = p.state()
    gen = torch.Generator().manual_seed(seed)
    tested = 0
    for e in edges:
        at = (int(g.edge_dst[e]), int(g.edge_src[e])) + ((int(g.edge_pos[e]),) if g.positions is not None else ())
        if not bool(st.keep[at]):
            continue
        cand = st.keep.clone()
        cand[at] = False
        prop = st.propagate(cand)
        want = p.logits(~g.sparse(cand))
        assert torch.allclose(prop.logits[0], want, atol=1e-5), g.edges[e].name
        tested += 1
        if each is not None:
            each(st)
        if float(torch.rand(1, generator=gen)) < commit:
            st.commit(prop)
            assert torch.allclose(st.logits, want, atol=1e-5), g.edges[e].name
    return tested


def acdc_by_hand(graph: Graph, loss, threshold: float) -> tuple[set[str], dict[str, float]]:
    """ACDC the slow, obvious way: ``loss(removed)`` is the metric (lower is better) of one hooked forward with
    the edge names ``removed`` ablated. Destinations in reverse forward order, each one's edges in reverse;
    an edge goes when its removal raises the loss by less than ``threshold``; a destination whose node is a
    source with every outgoing edge gone is skipped and its edges dropped. Returns (kept edge names, each
    tested edge's loss change)."""
    removed: set[str] = set()
    current = loss(removed)
    deltas: dict[str, float] = {}
    for dst in reversed(graph.destinations):
        incoming = [e.name for e in graph.edges if e.dst == dst]
        if dst.node.name in graph.src_index:
            outgoing = [e.name for e in graph.edges if e.src.name == dst.node.name]
            if all(n in removed for n in outgoing):
                removed |= set(incoming)
                continue
        for name in reversed(incoming):
            new = loss(removed | {name})
            deltas[name] = new - current
            if new - current < threshold:
                removed.add(name)
                current = new
    return {e.name for e in graph.edges} - removed, deltas
