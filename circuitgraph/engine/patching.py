"""The patched forward pass: run the model with some edges removed.

A removed edge u→v makes v read u's *ablated* activation instead of its live one:

    input_v = live_input_v − Σ_{u removed} (a_u(live) − a_u(ablated))

Live activations are those of the patched run itself, so removing every edge under corrupted
ablation reproduces the corrupted run exactly, and removing none reproduces the clean run.

Several edge masks run in one batched forward (``keep`` has a leading mask dimension K; the
examples are tiled K times), which is how exact patching, faithfulness curves and ACDC stay fast.

A float ``keep`` in [0, 1] is a *relaxed* mask: v reads ``live_input_v − Σ_u (1 − keep_uv)·(a_u(live)
− a_u(ablated))``, so keep ≡ 1 is still the clean run and keep ≡ 0 the ablated run. With
``differentiable=True`` the run keeps its autograd graph, live deltas included, so the loss can be
differentiated with respect to the mask (learned edge masks) or the ablated values (optimal ablation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from circuitgraph.engine.deltas import LiveDeltas
from circuitgraph.engine.sites import site_patch_hooks
from circuitgraph.engine.tensors import CompactSources, frozen
from circuitgraph.errors import GraphError
from circuitgraph.graph import Graph, PositionalGraph
from circuitgraph.models.backend import Backend, as_backend


# One hook list in forward order: the per-layer closures share the removal tensor and the live
# deltas, and reading it top to bottom is reading the patched forward pass.
def patch_hooks(  # noqa: C901
    model: Any,
    graph: Graph,
    ablated: torch.Tensor | CompactSources,
    keep: torch.Tensor,
    differentiable: bool = False,
) -> list:
    """Forward hooks implementing the patched run for ``keep [K, n_src, n_dst]`` (True = edge
    kept; or floats in [0, 1], a relaxed mask) given ``ablated [n_src, batch, pos, d]`` (or
    :class:`CompactSources`). Needs ``use_split_qkv_input`` and ``use_hook_mlp_in`` (see
    :func:`patched_logits`)."""
    bk = as_backend(model)
    K = keep.shape[0]
    n_src, B, P, d = ablated.shape
    H = graph.arch.n_heads
    if keep.dtype == torch.bool:
        removed = keep.logical_not()  # [K, n_src, n_dst] bool (each reader takes its block as floats)
        removed &= graph.valid
    else:  # a relaxed mask: the removed fraction of each edge
        removed = (1 - keep) * graph.valid
    positional = isinstance(graph, PositionalGraph)
    if isinstance(graph, PositionalGraph):  # [K, n_src·P, n_dst·P] → per-position removals [K, n_src, n_dst, P]
        removed = torch.stack([graph.diagonal(r) for r in removed])
        graph = graph.base
    deltas = LiveDeltas(graph, ablated, K, differentiable)
    src, dst = graph.src_slices(), graph.dst_slices()
    hooks = []

    def record(rows: slice, project=None):
        def hook(x, hook):
            deltas.record(rows, x if project is None else project(x))
            return x

        return hook

    def head_project(layer: int):
        W_O = frozen(bk.W_O(layer))

        def project(z):  # z [K*B, P, H, d_head] → [H, K, B, P, d]
            return torch.einsum("kbphe,hed->hkbpd", deltas.live(z).reshape(K, B, P, H, -1), W_O)

        return project

    def subtract(cols: slice, up: slice | torch.Tensor, per_head: bool):
        r = removed[:, up, cols].to(ablated.dtype)  # [K, n_up, n_cols]
        if not bool(r.any()):
            return None

        def hook(x, hook):
            if positional:  # r [K, n_up, n_cols, P]: a removal applies at its own position only
                D = deltas.rows(up)  # [n_up, K, B, P, d]
                if per_head:
                    delta = torch.einsum("kuhp,ukbpd->kbphd", r, D).reshape(K * B, P, H, d)
                else:
                    delta = torch.einsum("kup,ukbpd->kbpd", r[:, :, 0], D).reshape(K * B, P, d)
            elif per_head:  # x [K*B, P, H, d]
                delta = deltas.removed_sum(r, up).reshape(K * B, P, H, d)
            else:  # x [K*B, P, d]
                delta = deltas.removed_sum(r[:, :, :1], up).reshape(K * B, P, d)
            return x - delta.to(x.dtype)

        return hook

    hooks.append((bk.embed_hook(), record(src["input"])))
    for L in range(graph.arch.n_layers):
        cols = dst[f"attn{L}"]
        up = graph.upstream(f"attn{L}")
        for i, letter in enumerate("qkv"):
            c = slice(cols.start + i * H, cols.start + (i + 1) * H) if graph.split_qkv else cols
            h = subtract(c, up, per_head=True)
            if h is not None:
                hooks.append((bk.qkv_input_hook(L, letter), h))
        hooks.append((bk.z_hook(L), record(src[f"attn{L}"], head_project(L))))
        if not graph.has_mlp_node(L):
            continue
        up = graph.upstream(f"mlp{L}")
        if L not in graph.neurons:
            h = subtract(dst[f"mlp{L}"], up, per_head=False)
            if h is not None:
                hooks.append((bk.mlp_in_hook(L), h))
            hooks.append((bk.mlp_out_hook(L), record(src[f"mlp{L}"])))
        else:
            hooks += _neuron_hooks(bk, graph, L, removed, deltas, subtract, K, up)
    h = subtract(dst["logits"], graph.upstream("logits"), per_head=False)
    if h is not None:
        hooks.append((bk.final_hook(), h))
    # SAE sites last: at a shared hook point they run after the records above
    for site in graph.sites:
        hooks += site_patch_hooks(model, graph, site, removed, deltas)
    return hooks


def _neuron_hooks(
    bk: Backend,
    graph: Graph,
    L: int,
    removed: torch.Tensor,
    deltas: LiveDeltas,
    subtract: Callable,
    K: int,
    up: slice | torch.Tensor,
) -> list:
    """Patching for a layer split into neurons.

    Sources: each selected neuron writes ``post_i · W_out[i]``; ``rest`` writes the remainder of
    the MLP output. Destinations: ``rest`` (and unselected neurons) read the shared MLP input,
    patched at ``hook_mlp_in``; a selected neuron with removed in-edges gets its own input
    ``x − Σ removed deltas``, pushed through ``ln2`` and its ``W_in`` column at ``hook_pre``.
    """
    neuron_ids = graph.neuron_ids(L)
    assert neuron_ids is not None  # (a neuron layer)
    ids = neuron_ids.to(deltas.device)
    n = len(ids)
    rows = graph.src_slices()[f"mlp{L}"]
    cols = graph.dst_slices()[f"mlp{L}"]
    W_out, W_in, b_in = frozen(bk.W_out(L))[ids], frozen(bk.W_in(L))[:, ids], frozen(bk.b_in(L))[ids]
    ln2 = bk.norm(L, 2)
    B, P, d = deltas.B, deltas.P, deltas.d
    store: dict = {}
    hooks = []

    def keep_input(x, hook):  # the MLP input before any patching (every neuron's own input starts here)
        store["x"] = x
        return x

    hooks.append((bk.mlp_in_hook(L), keep_input))
    if graph.has_rest(L):
        h = subtract(slice(cols.stop - 1, cols.stop), up, per_head=False)
        if h is not None:
            hooks.append((bk.mlp_in_hook(L), h))

    r = removed[:, up, cols.start : cols.start + n].to(deltas.dtype)  # [K, n_up, n]
    patched = r.any(0).any(0).nonzero()[:, 0]  # neurons with some removed in-edge
    if len(patched):
        rp = r[:, :, patched]

        def own_inputs(pre, hook):
            x = store["x"].reshape(K, B, P, 1, d) - deltas.removed_sum(rp, up)
            normed = ln2(x.reshape(K * B, P, len(patched), d))
            new = torch.einsum("bpjd,dj->bpj", deltas.live(normed), W_in[:, patched]) + b_in[patched]
            pre = pre.clone()
            pre[..., ids[patched]] = new.to(pre.dtype)
            return pre

        hooks.append((bk.mlp_pre_hook(L), own_inputs))

    def keep_post(post, hook):
        store["post"] = deltas.live(post[..., ids])
        return post

    def record_out(out, hook):
        post = store["post"]  # [K*B, P, n]
        deltas.record(slice(rows.start, rows.start + n), torch.einsum("bpi,id->ibpd", post, W_out))
        if graph.has_rest(L):
            deltas.record(slice(rows.stop - 1, rows.stop), deltas.live(out) - post @ W_out)
        return out

    hooks.append((bk.mlp_post_hook(L), keep_post))
    hooks.append((bk.mlp_out_hook(L), record_out))
    return hooks


def patched_logits(
    model: Any,
    graph: Graph,
    task: Any,
    ablated: torch.Tensor | CompactSources,
    keep: torch.Tensor,
    differentiable: bool = False,
) -> torch.Tensor:
    """Logits ``[K * batch, pos, vocab]`` of the clean prompts with the edges outside each of the
    K masks ablated. ``keep`` is ``[n_src, n_dst]`` or ``[K, n_src, n_dst]``, bool or a relaxed
    float mask in [0, 1]. ``differentiable``: run under autograd with the live deltas attached (see
    the module docstring); otherwise under ``no_grad``."""
    if keep.ndim == 2:
        keep = keep[None]
    if keep.shape[1:] != graph.valid.shape:
        raise GraphError(f"edge mask must be [K, {graph.n_src}, {graph.n_dst}], got {list(keep.shape)}")
    keep = keep.to(graph.valid.device)
    K = keep.shape[0]
    tokens = task.clean.repeat(K, 1)
    kw = {}
    if task.attention_mask is not None:
        kw["attention_mask"] = task.attention_mask.repeat(K, 1)
    bk = as_backend(model)
    hooks = patch_hooks(model, graph, ablated, keep, differentiable)
    with torch.set_grad_enabled(differentiable), bk.flags(split_qkv_input=True), bk.hooks(fwd_hooks=hooks):
        return model(tokens, **kw)


def tiled(task: Any, K: int) -> Any:
    """The task repeated K times along the batch (to score K patched runs at once)."""
    if K == 1:
        return task
    return task.select(torch.arange(task.n_examples, device=task.device).repeat(K))
