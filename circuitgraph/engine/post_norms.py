"""Norms after sublayers (Gemma-2/3): which sources reach the residual stream through one norm,
together, and how a reader sees a mix of their kept and ablated values.

In such a model a layer writes ``post_norm(Σ_h head_h + b_O)`` (and ``post_norm(MLP(x))``), so a
single head's write is not a term of the residual stream. The graph keeps each head as a source,
with its raw output ``z_h @ W_O[h]`` as its activation, and defines what an edge means through the
norm (``docs/model-families.md``): a reader v sees layer L's attention as

    post_norm(b_O + Σ_{h: edge h→v kept} head_h(live) + Σ_{h: removed} head_h(ablated))

so removing edges into v replaces v's share of that layer by the norm of its own mix. With every
edge kept this is the model; with every edge removed (corrupted ablation) it is the corrupted run's
attention output: the graph stays exact. First-order attribution then pushes a head's delta
through the norm's Jacobian at the run's point (:mod:`circuitgraph.attribution.post_norms`).

A layer split into neurons has the same structure behind the MLP's post-norm: its neurons (and
``rest``) write ``post_i · W_out[i]`` raw, and the norm sees ``b_out + Σ`` of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from circuitgraph.engine.tensors import frozen
from circuitgraph.graph import Graph
from circuitgraph.models.backend import Backend


@dataclass
class NormGroup:
    """Source rows that reach the residual stream through one norm, together."""

    rows: slice  # graph source rows (a layer's heads; or its neurons and ``rest``)
    layer: int
    which: int  # the backend's norm ``(layer, which, post=True)``: 1 after attention, 2 after the MLP
    bias: torch.Tensor | None  # constant part of the norm's input (``b_O``, ``b_out``), [d]
    norm: Callable[[torch.Tensor], torch.Tensor]  # the norm itself, in the engine's precision

    def key(self) -> str:
        """Capture names of the norm's ``scale`` / ``normalized`` hooks: ``post{which}_{layer}``."""
        return f"post{self.which}_{self.layer}"


def norm_groups(backend: Backend, graph: Graph) -> list[NormGroup]:
    """The post-norm groups of ``graph`` (empty for models without norms after sublayers)."""
    graph = graph.node_graph
    if not graph.arch.post_norms:
        return []
    slices = graph.src_slices()
    out = []
    for L in range(graph.arch.n_layers):
        if backend.norm_kind(L, 1, post=True) != "none":
            out.append(NormGroup(slices[f"attn{L}"], L, 1, _bias(backend.b_O(L)), _normalize(backend, L, 1)))
        if L in graph.neurons and backend.norm_kind(L, 2, post=True) != "none":
            out.append(NormGroup(slices[f"mlp{L}"], L, 2, _bias(backend.b_out(L)), _normalize(backend, L, 2)))
    return out


def _bias(b: torch.Tensor | None) -> torch.Tensor | None:
    return None if b is None else frozen(b)


def _normalize(backend: Backend, layer: int, which: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def norm(x: torch.Tensor) -> torch.Tensor:
        return backend.normalize(layer, which, x, post=True)

    return norm


class GroupMix:
    """Live norm inputs of a patched forward, and what a reader loses when some of a group's edges
    into it are removed: ``norm(S) − norm(S − Σ_u r_u D_u)`` (S the group's live norm input, D_u
    the rows' live − ablated deltas)."""

    def __init__(self, groups: list[NormGroup]) -> None:
        self.groups = groups
        self.live: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # group → (S, norm(S)), [K, B, P, d]

    def record(self, index: int, S: torch.Tensor) -> None:
        """The group's live norm input ``S [K, B, P, d]`` (bias included)."""
        self.live[index] = (S, self.groups[index].norm(S))

    def loss(self, index: int, r: torch.Tensor, D: torch.Tensor, out: torch.Tensor) -> None:
        """Add to ``out [K, B, P, C, d]`` what each reader column loses: ``r [K, n, C]`` (or
        ``[K, n, C, P]``: per position) removals of the group's rows with deltas ``D [n, K, B, P, d]``.
        Only the columns with a removal are normed (the others lose nothing)."""
        cols = r.flatten(3).any(-1).any(0).any(0) if r.ndim == 4 else r.any(0).any(0)
        cols = cols.nonzero()[:, 0]
        if not len(cols):
            return
        S, normed = self.live[index]
        rc = r[:, :, cols]
        if r.ndim == 4:  # a removal applies at its own position only
            removed = torch.einsum("kucp,ukbpd->kbpcd", rc, D)
        else:
            removed = torch.einsum("kuc,ukbpd->kbpcd", rc, D)
        mixed = self.groups[index].norm(S[:, :, :, None, :] - removed)
        out[:, :, :, cols] += normed[:, :, :, None, :] - mixed

    def norm_input(self, index: int, rows_live: torch.Tensor) -> torch.Tensor:
        """``S = bias + Σ rows`` from the group's live rows ``[n, K, B, P, d]``."""
        bias = self.groups[index].bias
        S = rows_live.sum(0)
        return S if bias is None else S + bias
