"""``attribute(model, graph, task, method=...)``: fill ``graph.scores`` with one score per edge.

Sign convention (all methods): score(u→v) estimates m(edge ablated) − m(clean), averaged over
examples. So for a metric where higher is better, important edges have negative scores; circuits
select by |score| unless told otherwise.

methods
    eap                  (a_u(ablated) − a_u(clean)) · ∂m/∂in_v at the clean run: 2 forwards + 1 backward
    eap-ig               same, with ∂m/∂in_v averaged over ``steps`` runs whose embedding is
                         interpolated between ablated and clean (midpoint rule)
    eap-ig-activations   every source's output interpolated jointly at each step (values fixed to
                         the interpolation, gradients flowing straight through the live computation)
    exact                the true m(edge ablated) − m(clean) for every edge, by patched forwards
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from circuitgraph.attribution.gradients import contract, forward_backward
from circuitgraph.engine.activations import Ablation, raw_difference, raw_sources, stack_sources
from circuitgraph.engine.batching import auto_batch_size, check_graph, example_chunks, mask_batch_size
from circuitgraph.engine.patching import patched_logits, tiled
from circuitgraph.graph import Graph, check_model

METHODS = ("eap", "eap-ig", "eap-ig-activations", "exact")


def attribute(
    model,
    graph: Graph,
    task,
    method: str = "eap",
    ablation: str | Ablation = "corrupted",
    steps: int = 5,
    batch_size: int | None = None,
    edge_batch: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Score every edge of ``graph`` for ``task`` and store the scores in ``graph.scores``.

    ``batch_size`` bounds how many examples go through the model at once (default: chosen from
    a memory budget); ``edge_batch`` bounds how many single-edge patches ``exact`` runs together.
    Returns the ``[n_src, n_dst]`` score tensor.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of {list(METHODS)} (acdc lives in circuitgraph.circuit.acdc)")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    check_model(model)
    check_graph(model, graph)
    task.check_model(model)
    task.prepare(model)
    abl = Ablation.coerce(ablation).prepare(model, graph, task)
    bs = batch_size or auto_batch_size(graph, task)
    t0 = time.perf_counter()
    scores = torch.zeros(graph.valid.shape, dtype=torch.float32, device=graph.valid.device)
    chunks = list(example_chunks(task, bs))
    if method == "exact":
        _exact(model, graph, task, abl, chunks, scores, edge_batch, progress)
    else:
        n_steps = 1 if method == "eap" else steps
        bar = tqdm(total=len(chunks) * n_steps, desc=method, disable=not progress, delay=2.0, leave=False)
        for idx, chunk, weight in chunks:
            ablated = abl.raw(model, graph, task, idx, chunk)
            if method == "eap":
                clean: dict = {}
                grads, _ = forward_backward(model, graph, chunk, capture_sources=clean)
                # a(ablated) − a(clean), differenced before projecting heads through W_O
                contract(graph, stack_sources(model, graph, raw_difference(ablated, clean)), grads, scores, weight)
                bar.update(1)
                continue
            clean = raw_sources(model, graph, chunk, chunk.clean)
            deltas = stack_sources(model, graph, raw_difference(ablated, clean))  # [n_src, B, P, d]
            ablated, clean = stack_sources(model, graph, ablated), stack_sources(model, graph, clean)
            for k in range(steps):
                alpha = (k + 0.5) / steps  # midpoint rule: second-order accurate in 1/steps
                x = ablated[0] + alpha * (clean[0] - ablated[0])
                extra = _interpolate_sources(model, graph, clean, ablated, alpha) if method == "eap-ig-activations" else None
                grads, _ = forward_backward(model, graph, chunk, input_override=x, extra_fwd=extra)
                contract(graph, deltas, grads, scores, weight / steps)
                bar.update(1)
        bar.close()
    scores = scores.masked_fill(~graph.valid, 0.0)
    graph.scores = scores
    graph.score_info = {
        "method": method, "ablation": abl.to_dict(), "steps": steps if method.startswith("eap-ig") else None,
        "task": task.name, "metric": task.metric_name, "n_examples": task.n_examples,
        "seconds": time.perf_counter() - t0,
    }
    return scores


def _interpolate_sources(model, graph: Graph, clean: torch.Tensor, ablated: torch.Tensor, alpha: float) -> list:
    """Hooks fixing every head/MLP output's *value* to ablated + α(clean − ablated) while letting
    gradients flow through the live computation (straight-through)."""
    hooks = []
    src = graph.src_slices()
    for L in range(graph.arch.n_layers):
        W_O = model.blocks[L].attn.W_O.detach()  # [H, d_head, d]
        W_O_pinv = torch.linalg.pinv(W_O)  # [H, d, d_head]
        rows = src[f"attn{L}"]
        target = ablated[rows] + alpha * (clean[rows] - ablated[rows])  # [H, B, P, d]

        def head_hook(z, hook, target=target, W_O=W_O, W_O_pinv=W_O_pinv):
            # Shift z so z @ W_O equals the target. Target and live output both lie in W_O's row
            # space, so the pseudo-inverse recovers the shift exactly.
            live = torch.einsum("bphe,hed->hbpd", z.detach(), W_O)
            return z + torch.einsum("hbpd,hde->bphe", target - live, W_O_pinv)

        hooks.append((f"blocks.{L}.attn.hook_z", head_hook))
        if graph.arch.has_mlp:
            t = ablated[src[f"mlp{L}"]][0] + alpha * (clean[src[f"mlp{L}"]][0] - ablated[src[f"mlp{L}"]][0])
            hooks.append((f"blocks.{L}.hook_mlp_out", lambda x, hook, t=t: x + (t - x.detach())))
    return hooks


def _exact(model, graph: Graph, task, abl: Ablation, chunks, scores: torch.Tensor, edge_batch, progress: bool) -> None:
    """True single-edge ablation effects, K edges per batched patched forward."""
    edges = graph.valid.nonzero()  # [E, 2]
    E = edges.shape[0]
    for idx, chunk, weight in chunks:
        ablated = abl.activations(model, graph, task, idx, chunk)
        K = edge_batch or max(1, min(E, mask_batch_size(graph, chunk)))
        base = chunk.score(patched_logits(model, graph, chunk, ablated, graph.valid)).mean()
        bar = tqdm(total=E, desc="exact", disable=not progress, delay=2.0, leave=False)
        for start in range(0, E, K):
            e = edges[start:start + K]
            k = e.shape[0]
            keep = graph.valid.expand(k, -1, -1).clone()
            keep[torch.arange(k), e[:, 0], e[:, 1]] = False
            values = tiled(chunk, k).score(patched_logits(model, graph, chunk, ablated, keep))
            per_edge = values.view(k, chunk.n_examples).mean(1)
            scores[e[:, 0], e[:, 1]] += weight * (per_edge - base)
            bar.update(k)
        bar.close()
