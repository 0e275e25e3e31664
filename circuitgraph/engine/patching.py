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

from typing import Any

import torch

from circuitgraph.engine.deltas import LiveDeltas
from circuitgraph.engine.post_norms import norm_groups
from circuitgraph.engine.sites import site_patch_hooks
from circuitgraph.engine.sources import block_directions
from circuitgraph.engine.tensors import CompactSources, frozen
from circuitgraph.errors import GraphError
from circuitgraph.graph import Graph, PositionalGraph
from circuitgraph.graph.blocks import EdgeBlocks
from circuitgraph.models.backend import Backend, as_backend


# One hook list in forward order: the per-layer closures share the removal tensor and the live
# deltas, and reading it top to bottom is reading the patched forward pass.
def patch_hooks(  # noqa: C901
    model: Any,
    graph: Graph,
    ablated: torch.Tensor | CompactSources,
    keep: torch.Tensor | EdgeBlocks,
    differentiable: bool = False,
) -> list:
    """Forward hooks implementing the patched run for ``keep [K, n_src, n_dst]`` (True = edge
    kept; or floats in [0, 1], a relaxed mask; dense, or :class:`EdgeBlocks` whose readers take
    their group's block as it is) given ``ablated [n_src, batch, pos, d]`` (or
    :class:`CompactSources`). Needs ``use_split_qkv_input`` and ``use_hook_mlp_in`` (see
    :func:`patched_logits`)."""
    bk = as_backend(model)
    K = keep.shape[0]
    _, B, P, d = ablated.shape
    H = graph.arch.n_heads
    removed: torch.Tensor | EdgeBlocks
    if isinstance(keep, EdgeBlocks):  # every entry of a block is an edge
        removed = keep.logical_not() if keep.dtype == torch.bool else keep.map(lambda b: 1 - b)
    elif keep.dtype == torch.bool:
        removed = keep.logical_not()  # [K, n_src, n_dst] bool (each reader takes its block as floats)
        removed &= graph.valid
    else:  # a relaxed mask: the removed fraction of each edge
        removed = (1 - keep) * graph.valid
    if isinstance(graph, PositionalGraph):  # [K, n_src·P, n_dst·P] → per-position removals [K, n_src, n_dst, P]
        assert isinstance(removed, torch.Tensor)  # (position-resolved graphs are dense)
        removed = torch.stack([graph.diagonal(r) for r in removed])
        graph = graph.base
    deltas = LiveDeltas(graph, ablated, K, block_directions(model, graph), norm_groups(bk, graph), differentiable)
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

        def hook(x, hook):  # x [K*B, P, H, d] per head, else [K*B, P, d]
            # (positional graphs: r [K, n_up, n_cols, P], a removal applies at its own position only)
            delta = deltas.removed_sum(r if per_head else r[:, :, :1], up)  # [K, B, P, C, d]
            return x - delta.reshape(x.shape).to(x.dtype)

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
            hooks += _neuron_hooks(bk, graph, L, removed, deltas, K, up)
    # SAE sites after the records above that share their hook point
    for site in graph.sites:
        hooks += site_patch_hooks(model, graph, site, removed, deltas)
    h = subtract(dst["logits"], graph.upstream("logits"), per_head=False)
    if h is not None:  # last: a site at the final hook_resid_post is upstream of the logits
        hooks.append((bk.final_hook(), h))
    return hooks


def _neuron_hooks(
    bk: Backend,
    graph: Graph,
    L: int,
    removed: torch.Tensor | EdgeBlocks,
    deltas: LiveDeltas,
    K: int,
    up: slice | torch.Tensor,
) -> list:
    """Patching for a layer split into neurons.

    Sources: each selected neuron writes ``post_i · W_out[i]``; ``rest`` writes the remainder of
    the MLP output. Destinations: each reader gets its own input, pushed through ``ln2`` and, at
    each of the neurons' reads (``hook_pre``; a gated MLP also ``hook_pre_linear``), its own
    columns of that read's weights: a selected neuron with removed in-edges reads
    ``x − Σ its removed deltas``; the other neurons (``rest``) read ``x − Σ rest's removed
    deltas``; everything else reads the MLP input ``x`` as it is.
    """
    store: dict = {}  # the MLP input, then the neurons' activations, of the running forward

    def keep(key: str):
        def hook(x, hook):
            store[key] = x
            return x

        return hook

    hooks = [(bk.mlp_in_hook(L), keep("x"))]
    hooks += _neuron_read_hooks(bk, graph, L, removed, deltas, K, up, store)
    hooks.append((bk.mlp_post_hook(L), keep("post")))
    hooks.append((bk.mlp_out_hook(L), _neuron_record_hook(bk, graph, L, deltas, store)))
    return hooks


def _neuron_read_hooks(
    bk: Backend,
    graph: Graph,
    L: int,
    removed: torch.Tensor | EdgeBlocks,
    deltas: LiveDeltas,
    K: int,
    up: slice | torch.Tensor,
    store: dict,
) -> list:
    """The neurons' pre-activation hooks: the readers with removed in-edges get their own inputs.

    Most neurons share one input per mask (:meth:`LiveDeltas.own_reads`): a circuit much smaller
    than the graph, or nearly all of it, removes all or none of most neurons' in-edges."""
    neuron_ids = graph.neuron_ids(L)
    assert neuron_ids is not None  # (called for neuron layers only)
    ids = neuron_ids.to(deltas.device)
    n = len(ids)
    cols = graph.dst_slices()[f"mlp{L}"]
    reads = bk.neuron_reads(L)
    weights = [(frozen(read.W), None if read.b is None else frozen(read.b)) for read in reads]
    ln2 = bk.norm(L, 2)
    B, P, d = deltas.B, deltas.P, deltas.d
    r = removed[:, up, cols.start : cols.stop]  # [K, n_up, n (+ rest)(, P: per position)]; a view of a bool mask
    if not bool(r.any()):
        return []
    others = None  # the neurons ``rest`` stands for, when it has a removed in-edge
    if graph.has_rest(L) and bool(r[:, :, n].any()):
        unchosen = torch.ones(weights[0][0].shape[1], dtype=torch.bool, device=ids.device)
        unchosen[ids] = False
        others = unchosen.nonzero()[:, 0]

    def patches() -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]]:
        """Per read: ``(neurons [j], new pre-activations [K, B, P, j], in which masks [K, j] | None: all)``."""
        assert ln2 is not None  # a layer with neurons has an MLP, and so its ln2
        x = store["x"].reshape(K, B, P, d)

        def norm(y: torch.Tensor) -> torch.Tensor:  # ln2 of inputs [K, B, P, (j,) d]
            return ln2(y.reshape(K * B, *y.shape[2:])).reshape(y.shape)

        mine = [(W[:, ids], None if b is None else b[ids]) for W, b in weights]
        out = [[(ids[j], v, m) for j, v, m in read] for read in deltas.own_reads(x, r[:, :, :n], up, norm, mine)]
        if others is not None:  # one input, read by every neuron ``rest`` stands for
            y = deltas.live(norm(x - deltas.removed_sum(r[:, :, n:], up)[..., 0, :].to(x.dtype)))
            for k, (W, b) in enumerate(weights):
                new = y @ W[:, others]
                out[k].append((others, new if b is None else new + b[others], None))
        return out

    def read_hook(k: int):
        def hook(pre, hook):  # pre [K·B, P, d_mlp]
            if k == 0:
                store["patches"] = patches()
            pre = pre.clone()
            view = pre.view(K, B, P, -1)
            for which, new, where in store["patches"][k]:
                new = new.to(pre.dtype)
                view[..., which] = new if where is None else torch.where(where[:, None, None], new, view[..., which])
            if k == len(weights) - 1:
                store.pop("patches")
            return pre

        return hook

    return [(read.hook, read_hook(k)) for k, read in enumerate(reads)]


def _neuron_record_hook(bk: Backend, graph: Graph, L: int, deltas: LiveDeltas, store: dict):
    """The hook at the MLP's output recording its neurons' (and ``rest``'s) live writes: the
    neurons as coefficients (their ``hook_post``), except behind the MLP's post-norm (Gemma-2/3),
    where the rows are raw d-vectors before the norm, and the norm's input ``b_out + Σ neurons +
    rest`` is recorded for the readers' own mixes (engine/post_norms.py)."""
    neuron_ids = graph.neuron_ids(L)
    assert neuron_ids is not None  # (called for neuron layers only)
    ids = neuron_ids.to(deltas.device)
    n = len(ids)
    rows = graph.src_slices()[f"mlp{L}"]
    W_all, b_out = frozen(bk.W_out(L)), bk.b_out(L)
    W_out = W_all[ids]
    post_normed = any(g.rows == rows for g in deltas.mix.groups)
    lowrank = f"mlp{L}" in deltas.blocks

    def record_out(out, hook):
        post_all = deltas.live(store.pop("post"))  # [K*B, P, d_mlp]
        post = post_all[..., ids]
        if lowrank:
            deltas.record_coefs(f"mlp{L}", post.permute(2, 0, 1))
        else:
            deltas.record(slice(rows.start, rows.start + n), torch.einsum("bpi,id->ibpd", post, W_out))
        raw = post_all @ W_all if post_normed else None  # the MLP's output before its post-norm, less b_out
        if graph.has_rest(L):
            picked = post @ W_out
            rest = raw - picked if post_normed else deltas.live(out) - picked
            deltas.record(slice(rows.stop - 1, rows.stop), rest)
        if post_normed:
            deltas.record_norm_input(rows, raw if b_out is None else raw + frozen(b_out))
        return out

    return record_out


def patched_logits(
    model: Any,
    graph: Graph,
    task: Any,
    ablated: torch.Tensor | CompactSources,
    keep: torch.Tensor | EdgeBlocks,
    differentiable: bool = False,
) -> torch.Tensor:
    """Logits ``[K * batch, pos, vocab]`` of the clean prompts with the edges outside each of the
    K masks ablated. ``keep`` is ``[n_src, n_dst]`` or ``[K, n_src, n_dst]`` (dense or
    :class:`EdgeBlocks`), bool or a relaxed float mask in [0, 1]. ``differentiable``: run under autograd with the live deltas attached (see
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
