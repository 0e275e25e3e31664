"""First-order attribution behind norms after sublayers (Gemma-2/3).

A reader v sees a post-norm group (a layer's heads; a split MLP's neurons) as ``norm(S_v)``, where
``S_v`` mixes the kept and ablated values of the group's sources (:mod:`circuitgraph.engine.post_norms`).
Moving source u a step ε toward its ablated value moves v's input by ``ε · J δ_u``, with J the
norm's Jacobian at the run's norm input S and ``δ_u = a_u(ablated) − a_u(clean)``. So the EAP
score of u→v is ``∂m/∂in_v · J δ_u``: the contraction is the usual one once each post-normed
source's delta is replaced by ``J δ_u``, its delta as the residual stream sees it, to first order.

For an RMS norm ``y = w ⊙ x / s`` (s = rms(x), x̂ = x / s):  ``J v = (w / s) ⊙ (v − x̂ (x̂·v) / d)``;
a LayerNorm first centres v. A neuron's delta ``c · W_out[i]`` then becomes
``(c/s) · (w ⊙ W_out[i])`` (low-rank still) minus ``(c/s)(x̂·W_out[i])/d`` times the per-position
direction ``w ⊙ x̂``, which every neuron of the layer shares (:class:`LowRankSources` ``field``).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from circuitgraph.engine.post_norms import NormGroup
from circuitgraph.engine.tensors import SourceDeltas, frozen, store_hook
from circuitgraph.models.backend import Backend


def capture_hooks(backend: Backend, groups: list[NormGroup], buf: dict) -> list:
    """Forward hooks keeping each group's norm scale ``[B, P, 1]`` and normalised input x̂ ``[B, P, d]``."""
    hooks = []
    for g in groups:
        for part in ("scale", "normalized"):
            hooks.append((backend.norm_hook(g.layer, g.which, part, post=True), store_hook(buf, f"{g.key()}.{part}")))
    return hooks


def through_post_norms(
    backend: Backend, groups: list[NormGroup], captures: dict, deltas: SourceDeltas, out: torch.Tensor | None = None
) -> SourceDeltas:
    """``deltas`` with every post-normed source's delta replaced by ``J δ`` at the captured run.
    The dense rows go into ``out``: ``deltas.dense`` itself (in place), a buffer of its shape
    (EAP-IG reuses one across its steps: on a CPU a fresh buffer of this size costs page faults on
    every step), or a new tensor when None."""
    if not groups:
        return deltas
    src = deltas.dense  # [n, B, P, d]
    dense = torch.empty_like(src) if out is None else out
    inplace = dense is src
    untouched = torch.ones(len(deltas.dense_rows), dtype=torch.bool, device=src.device)
    lowrank = list(deltas.lowrank)
    for g in groups:
        scale, xhat = captures[f"{g.key()}.scale"], captures[f"{g.key()}.normalized"]  # [B, P, 1], [B, P, d]
        gain = backend.norm_gain(g.layer, g.which, post=True)
        w = None if gain is None else frozen(gain).to(xhat.dtype)
        centred = backend.norm_kind(g.layer, g.which, post=True) == "layernorm"
        d = xhat.shape[-1]
        at = ((deltas.dense_rows >= g.rows.start) & (deltas.dense_rows < g.rows.stop)).nonzero()[:, 0]
        if len(at):
            # (dense rows are sorted, so a group's rows are one run: views, written in place)
            rows = slice(int(at[0]), int(at[-1]) + 1)
            assert rows.stop - rows.start == len(at)
            untouched[rows] = False
            D, target = src[rows], dense[rows]
            if centred:
                D = D - D.mean(-1, keepdim=True)
            along = torch.einsum("nbpd,bpd->nbp", D, xhat) / d  # x̂ · δ / d
            torch.addcmul(D, along[..., None], xhat, value=-1.0, out=target)
            target.mul_(1 / scale if w is None else w / scale)  # w ⊙ (δ − x̂ (x̂·δ)/d) / s
        for i, block in enumerate(lowrank):
            if not g.rows.start <= int(block.rows[0]) < g.rows.stop:
                continue
            dirs = block.dirs - block.dirs.mean(-1, keepdim=True) if centred else block.dirs  # [n, d]
            coef = block.coef / scale[None, ..., 0]  # [n, B, P]
            along = torch.einsum("bpd,nd->nbp", xhat, dirs) / d
            field = xhat if w is None else xhat * w
            lowrank[i] = replace(
                block, coef=coef, dirs=dirs if w is None else dirs * w, field_coef=-coef * along, field=field
            )
    if not inplace:
        dense[untouched] = src[untouched]
    return SourceDeltas(dense, deltas.dense_rows, lowrank)
