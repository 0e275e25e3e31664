"""Source activations in residual-stream space.

A source's activation is what it adds to the residual stream: the embedding (``input``), a
head's ``z @ W_O[h]`` (read from ``hook_z``; no ``use_attn_result`` copy needed), an MLP's
``hook_mlp_out``. They are kept as one ``[n_src, batch, pos, d_model]`` tensor so that a
contraction against destination gradients scores every edge at once.
"""

from __future__ import annotations

import re
from typing import Any, Literal, overload

import torch

from circuitgraph.engine.sites import site_coefficients, site_deltas, site_hooks, site_sae, site_sources
from circuitgraph.engine.tensors import CompactSources, LowRankSources, SourceDeltas, frozen, store_hook
from circuitgraph.graph import Graph
from circuitgraph.models.backend import as_backend


def source_hooks(model: Any, graph: Graph, buf: dict, sites: bool = True) -> list:
    """Forward hooks that store the raw source activations (input, per-layer z, MLP outputs)
    into ``buf`` without changing the forward pass (SAE sites, when ``sites``, splice their SAE in:
    the output is unchanged up to rounding, and ``acts:``/``err:`` captures are stored)."""
    bk = as_backend(model)
    graph = graph.node_graph
    hooks = [(bk.embed_hook(), store_hook(buf, "input"))]
    for L in range(graph.arch.n_layers):
        hooks.append((bk.z_hook(L), store_hook(buf, f"z{L}")))
        if graph.has_mlp_node(L):
            hooks.append((bk.mlp_out_hook(L), store_hook(buf, f"mlp{L}")))
        if L in graph.neurons:
            hooks.append((bk.mlp_post_hook(L), store_hook(buf, f"post{L}")))
    return hooks + (site_hooks(model, graph, buf) if sites else [])


@overload
def stack_sources(
    model: Any, graph: Graph, buf: dict, out: torch.Tensor | None = None, compact: Literal[False] = False
) -> torch.Tensor: ...
@overload
def stack_sources(
    model: Any, graph: Graph, buf: dict, out: torch.Tensor | None = None, compact: bool = False
) -> torch.Tensor | CompactSources: ...
def stack_sources(
    model: Any, graph: Graph, buf: dict, out: torch.Tensor | None = None, compact: bool = False
) -> torch.Tensor | CompactSources:
    """Raw captures → ``[n_src, batch, pos, d_model]`` (heads projected through ``W_O``, neurons
    through their ``W_out`` rows). Dense: for patching and small graphs; attribution at neuron
    scale uses :func:`source_deltas`, which keeps neurons low-rank. With ``compact`` (and SAE
    sites), SAE features stay coefficients: a :class:`CompactSources`."""
    bk = as_backend(model)
    graph = graph.node_graph
    x0 = buf["input"]
    B, P, d = x0.shape
    slices = graph.src_slices()
    blocks = coefficient_blocks(graph) if compact else {}
    if blocks:
        is_coef = coefficient_rows(graph)
        pos = torch.cumsum(~is_coef, 0) - 1

        def at(rows: slice) -> slice:  # a group's dense rows (a block's coefficient rows come first)
            first = rows.start + int(is_coef[rows].sum())
            return slice(int(pos[first]), int(pos[first]) + rows.stop - first)

        out = torch.empty(int((~is_coef).sum()), B, P, d, dtype=x0.dtype, device=x0.device)
    else:

        def at(rows: slice) -> slice:
            return rows

        if out is None:
            out = torch.empty(graph.n_src, B, P, d, dtype=x0.dtype, device=x0.device)
    out[at(slices["input"])] = x0[None]
    for L in range(graph.arch.n_layers):
        W_O = frozen(bk.W_O(L))  # [head, d_head, d_model]
        out[at(slices[f"attn{L}"])] = torch.einsum("bphe,hed->hbpd", buf[f"z{L}"], W_O)
        if not graph.has_mlp_node(L):
            continue
        rows = slices[f"mlp{L}"]
        if L not in graph.neurons:
            out[at(rows)] = buf[f"mlp{L}"][None]
            continue
        post, W_out = _neuron_parts(model, graph, buf, L)
        n = post.shape[-1]
        # (compact: coefficient rows before this layer, and its own neurons, shift its dense rows)
        if f"mlp{L}" not in blocks:
            out[at(rows).start : at(rows).start + n] = torch.einsum("bpi,id->ibpd", post, W_out)
        if graph.has_rest(L):
            out[at(rows).stop - 1] = _rest(model, graph, buf, L, post @ W_out)
    for site in graph.sites:
        site_sources(graph, buf, site, out[at(slices[site.name])], features=site.name not in blocks)
    if not blocks:
        return out
    coefs = {}
    for name in blocks:
        layer = neuron_layer(name)
        coefs[name] = (
            site_coefficients(graph, buf, graph.site(name))
            if layer is None
            else _neuron_parts(model, graph, buf, layer)[0].permute(2, 0, 1)
        )
    return CompactSources(out, coefs, graph.n_src)


def coefficient_blocks(graph: Graph) -> dict[str, slice]:
    """The source rows a patched forward keeps as coefficients, by group: every SAE site's features
    (``coef · W_dec[i]``) and every neuron layer's neurons (``post_i · W_out[i]``). A block's live
    and ablated values are then ``[n, K, B, P]`` instead of ``[n, K, B, P, d]``, which is what lets
    a patched forward carry tens of thousands of them. Not behind a norm after the MLP (Gemma-2/3),
    whose readers see the norm of their own mix of the layer's rows (engine/post_norms.py): such
    neurons stay d-vectors."""
    graph = graph.node_graph
    slices = graph.src_slices()
    out = {}
    if not graph.arch.post_norms:
        for L in sorted(graph.neurons):
            first = slices[f"mlp{L}"].start
            out[f"mlp{L}"] = slice(first, first + len(graph.neurons[L]))
    for site in graph.sites:
        if site.features:
            first = slices[site.name].start
            out[site.name] = slice(first, first + len(site.features))
    return out


def coefficient_rows(graph: Graph) -> torch.Tensor:
    """``[n_src]`` bool: the rows of :func:`coefficient_blocks` (each a group's first rows)."""
    out = torch.zeros(graph.node_graph.n_src, dtype=torch.bool)
    for rows in coefficient_blocks(graph).values():
        out[rows] = True
    return out


def block_directions(model: Any, graph: Graph) -> dict[str, torch.Tensor]:
    """Each coefficient block's write directions ``[n, d]``: the features' ``W_dec`` rows, the
    neurons' ``W_out`` rows."""
    graph = graph.node_graph
    bk = as_backend(model)
    out = {}
    for name in coefficient_blocks(graph):
        layer = neuron_layer(name)
        if layer is None:
            site = graph.site(name)
            ids, W = torch.tensor(site.features, dtype=torch.long), frozen(site_sae(graph, site).W_dec)
        else:
            neuron_ids = graph.neuron_ids(layer)
            assert neuron_ids is not None  # (a neuron block)
            ids, W = neuron_ids, frozen(bk.W_out(layer))
        out[name] = W[ids.to(W.device)]
    return out


def neuron_layer(block: str) -> int | None:
    """The layer of a neuron block's name (``mlp3`` → 3); None for an SAE site's (``mlp_out3``)."""
    m = re.fullmatch(r"mlp(\d+)", block)
    return int(m.group(1)) if m else None


def _neuron_parts(model: Any, graph: Graph, buf: dict, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The selected neurons' activations ``[B, P, n]`` and write directions ``[n, d]``."""
    neuron_ids = graph.neuron_ids(L)
    assert neuron_ids is not None  # (called for neuron layers only)
    ids = neuron_ids.to(buf[f"post{L}"].device)
    return buf[f"post{L}"][..., ids], frozen(as_backend(model).W_out(L))[ids]


def _rest(model: Any, graph: Graph, buf: dict, L: int, picked: torch.Tensor) -> torch.Tensor:
    """What layer L's ``rest`` node writes: the MLP's output less the selected neurons' writes
    (``picked [B, P, d]``). Behind the MLP's post-norm the neurons are raw, and so is ``rest``: the
    other neurons' writes, before the norm (whose input adds ``b_out``; see engine/post_norms.py)."""
    bk = as_backend(model)
    if graph.arch.post_norms and bk.norm_kind(L, 2, post=True) != "none":
        return buf[f"post{L}"] @ frozen(bk.W_out(L)) - picked
    return buf[f"mlp{L}"] - picked


def source_deltas(model: Any, graph: Graph, diff: dict) -> SourceDeltas:
    """Raw differences (see :func:`raw_difference`) → :class:`SourceDeltas`: dense rows for the
    input, heads, whole MLPs and ``rest`` nodes; a low-rank block per neuron layer."""
    bk = as_backend(model)
    graph = graph.node_graph
    if not graph.neurons and not graph.sites:
        return SourceDeltas(
            stack_sources(model, graph, diff), torch.arange(graph.n_src, device=diff["input"].device), []
        )
    x0 = diff["input"]
    slices = graph.src_slices()
    dense: list[torch.Tensor] = [x0[None]]
    rows: list[int] = [0]
    lowrank: list[LowRankSources] = []
    for L in range(graph.arch.n_layers):
        s = slices[f"attn{L}"]
        dense.append(torch.einsum("bphe,hed->hbpd", diff[f"z{L}"], frozen(bk.W_O(L))))
        rows.extend(range(s.start, s.stop))
        if not graph.has_mlp_node(L):
            continue
        m = slices[f"mlp{L}"]
        if L not in graph.neurons:
            dense.append(diff[f"mlp{L}"][None])
            rows.append(m.start)
            continue
        post, W_out = _neuron_parts(model, graph, diff, L)
        n = post.shape[-1]
        lowrank.append(
            LowRankSources(torch.arange(m.start, m.start + n, device=x0.device), post.permute(2, 0, 1), W_out)
        )
        if graph.has_rest(L):
            dense.append(_rest(model, graph, diff, L, post @ W_out)[None])
            rows.append(m.start + n)
    if graph.sites:
        for site in graph.sites:
            block, site_rows, site_dense = site_deltas(graph, diff, site, slices[site.name].start)
            if block is not None:
                lowrank.append(block)
            rows.extend(site_rows)
            dense.extend(t[None] for t in site_dense)
    row_index, stacked = torch.tensor(rows, device=x0.device), torch.cat(dense)
    if graph.sites:  # dense rows in graph order (sites sit between layers)
        order = torch.argsort(row_index)
        row_index, stacked = row_index[order], stacked[order]
    return SourceDeltas(stacked, row_index, lowrank)


@torch.no_grad()
def raw_sources(model: Any, graph: Graph, task: Any, tokens: torch.Tensor) -> dict:
    """Run ``tokens`` (with the task's attention mask) and return the raw captures
    (``input`` [B,P,d], ``z{L}`` [B,P,H,d_head], ``mlp{L}`` [B,P,d])."""
    buf: dict = {}
    bk = as_backend(model)
    with bk.flags(), bk.hooks(fwd_hooks=source_hooks(model, graph, buf)):  # (transcoders read hook_mlp_in)
        task.run(model, tokens)
    return buf


def source_activations(model: Any, graph: Graph, task: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``[n_src, batch, pos, d]`` source activations of ``tokens``."""
    return stack_sources(model, graph, raw_sources(model, graph, task, tokens))


def raw_difference(a: dict, b: dict) -> dict:
    """``a − b`` capture by capture (heads stay in z space: W_O is applied once, afterwards)."""
    return {k: a[k] - b[k] for k in a}
