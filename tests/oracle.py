"""The slow, obvious patched forward, used as ground truth in tests.

It runs the TransformerLens bridge with hooks. Every destination input (each head's q/k/v input,
each MLP input, the final residual) is rebuilt as the explicit sum of its sources' outputs, with
an ablated source's output swapped for its ablation value, plus the attention biases that belong
to no source. Nothing here shares code with acdc's engine.
"""

from __future__ import annotations

import torch
from torch import Tensor

from acdc.graph import Graph


def _source_outputs(model, tokens: Tensor) -> dict[str, Tensor]:
    """Output of every source node on a plain run: name -> [batch, pos, d_model]."""
    _, cache = model.run_with_cache(tokens)
    out = {"input": cache["blocks.0.hook_resid_pre"]}
    for layer in range(model.cfg.n_layers):
        res = cache[f"blocks.{layer}.attn.hook_result"]
        for h in range(model.cfg.n_heads):
            out[f"a{layer}.h{h}"] = res[:, :, h]
        out[f"m{layer}"] = cache[f"blocks.{layer}.hook_mlp_out"]
    return out


def patched_logits(model, graph: Graph, clean: Tensor, corrupt: Tensor, ablated, ablation: str) -> Tensor:
    """Logits [batch, pos, vocab] of the clean run with the named edges ablated.

    ``ablated``: plain edge names (ablated at every token), or a dict from plain edge names to a
    [batch, pos] bool mask of the tokens where the edge is ablated (per-position swaps).
    """
    if not isinstance(ablated, dict):
        ablated = {e: torch.ones(clean.shape, dtype=torch.bool) for e in ablated}
    model.set_use_split_qkv_input(True)
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    cfg = model.cfg
    corrupt_out = _source_outputs(model, corrupt)
    if ablation == "resample":
        abl = corrupt_out
    elif ablation == "mean":
        abl = {k: v.mean(0, keepdim=True).expand(clean.shape[0], *v.shape[1:]) for k, v in corrupt_out.items()}
    else:
        abl = {k: torch.zeros_like(v) for k, v in corrupt_out.items()}
    try:
        b_o = model.b_O.detach()
    except AttributeError:  # bias-free attention output (Llama, Qwen2, Gemma)
        b_o = torch.zeros(cfg.n_layers, cfg.d_model)
    current: dict[str, Tensor] = {}
    sources_of = {}
    for e in graph.edges:
        sources_of.setdefault(e.dst.name, []).append(e.src.name)

    def rebuilt(dst_name: str, bias_layers: int) -> Tensor:
        total = b_o[:bias_layers].sum(0) if bias_layers else 0.0
        for src in sources_of[dst_name]:
            edge = f"{src}->{dst_name.replace('<', '<')}"
            if edge in ablated:
                total = total + torch.where(ablated[edge][..., None], abl[src], current[src])
            else:
                total = total + current[src]
        return total

    def record_input(x, hook):
        current["input"] = x
        return x

    def make_qkv(layer: int, letter: str):
        def fn(x, hook):
            x = x.clone()
            for h in range(cfg.n_heads):
                dst = f"a{layer}.h{h}<{letter}>" if graph.split_qkv else f"a{layer}.h{h}"
                x[:, :, h] = rebuilt(dst, layer)
            return x
        return fn

    def make_result(layer: int):
        def fn(x, hook):
            for h in range(cfg.n_heads):
                current[f"a{layer}.h{h}"] = x[:, :, h]
            return x
        return fn

    def make_mlp_in(layer: int):
        def fn(x, hook):
            return rebuilt(f"m{layer}", layer if cfg.parallel_attn_mlp else layer + 1)
        return fn

    def make_mlp_out(layer: int):
        def fn(x, hook):
            current[f"m{layer}"] = x
            return x
        return fn

    def final(x, hook):
        return rebuilt("logits", cfg.n_layers)

    hooks = [("blocks.0.hook_resid_pre", record_input)]
    for layer in range(cfg.n_layers):
        for letter in "qkv":
            hooks.append((f"blocks.{layer}.hook_{letter}_input", make_qkv(layer, letter)))
        hooks.append((f"blocks.{layer}.attn.hook_result", make_result(layer)))
        hooks.append((f"blocks.{layer}.hook_mlp_in", make_mlp_in(layer)))
        hooks.append((f"blocks.{layer}.hook_mlp_out", make_mlp_out(layer)))
    hooks.append(("ln_final.hook_in", final))
    with torch.no_grad():
        return model.run_with_hooks(clean, fwd_hooks=hooks)


def destination_grads(model, graph: Graph, tokens: Tensor, loss_fn) -> dict[str, Tensor]:
    """d loss / d (input of each destination), [batch, pos, d_model] each, by TransformerLens hooks.

    Each destination's input gets a zero tensor added at its own hook (a head's q/k/v input
    slice, an MLP input, the final residual); the gradient of the loss w.r.t. that zero tensor
    is the gradient w.r.t. that destination's input alone. ``loss_fn(logits [batch, pos, vocab])``.
    """
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    cfg = model.cfg
    B, S = tokens.shape
    probes = {d.name: torch.zeros(B, S, cfg.d_model, requires_grad=True) for d in graph.destinations}

    def qkv(layer: int, letter: str):
        def fn(x, hook):
            parts = []
            for h in range(cfg.n_heads):
                name = f"a{layer}.h{h}<{letter}>" if graph.split_qkv else f"a{layer}.h{h}"
                parts.append(x[:, :, h] + probes[name])
            return torch.stack(parts, 2)
        return fn

    hooks = []
    for layer in range(cfg.n_layers):
        for letter in "qkv":
            hooks.append((f"blocks.{layer}.hook_{letter}_input", qkv(layer, letter)))
        hooks.append((f"blocks.{layer}.hook_mlp_in", lambda x, hook, n=f"m{layer}": x + probes[n]))
    hooks.append(("ln_final.hook_in", lambda x, hook: x + probes["logits"]))
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    loss_fn(logits).backward()
    return {name: p.grad for name, p in probes.items()}


def eap_reference(model, graph: Graph, clean: Tensor, corrupt: Tensor, ablation: str, loss_fn,
                  positions=None) -> dict[str, float]:
    """EAP by hand: (ablated - clean source output) . gradient at the destination input, summed.

    With ``positions`` (an `acdc.Positions` for a positional ``graph``), each edge sums over its
    position's tokens only.
    """
    model.set_use_attn_result(True)
    with torch.no_grad():
        clean_out = _source_outputs(model, clean)
        corrupt_out = _source_outputs(model, corrupt)
    grads = destination_grads(model, graph, clean, loss_fn)
    out = {}
    for e in graph.edges:
        src = e.src.name
        at = torch.ones(clean.shape, dtype=torch.bool) if e.pos is None else positions.mask(e.pos)
        if ablation == "resample":
            a = corrupt_out[src]
        elif ablation == "mean":
            a = corrupt_out[src].mean(0, keepdim=True)
        else:
            a = torch.zeros_like(clean_out[src])
        out[e.name] = float(((a - clean_out[src]) * grads[e.dst.name] * at[..., None]).sum())
    return out
