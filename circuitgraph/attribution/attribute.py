"""``attribute(model, graph, task, method=...)``: fill ``graph.scores`` with one score per edge.

Sign convention (all methods): score(u→v) estimates m(edge ablated) − m(clean), averaged over
examples. So for a metric where higher is better, important edges have negative scores; circuits
select by |score| unless told otherwise.

methods
    eap                  (a_u(ablated) − a_u(clean)) · ∂m/∂in_v at the clean run: 2 forwards + 1 backward
    eap-ig               same, with ∂m/∂in_v averaged over ``steps`` runs whose embedding is
                         interpolated between ablated and clean (midpoint rule)
    eap-ig-activations   every source's output interpolated jointly at each step (values fixed to
                         the interpolation, gradients flowing straight through the live computation;
                         SAE sites' feature activations and errors too)
    exact                the true m(edge ablated) − m(clean) for every edge, by patched forwards
"""

from __future__ import annotations

import time
from typing import Any

import torch

from circuitgraph.attribution.gradients import SummedGradients, contract, contraction_memory, forward_backward
from circuitgraph.engine.ablation import Ablation
from circuitgraph.engine.batching import auto_batch_size, check_graph, example_chunks, lowrank_rows
from circuitgraph.engine.evaluator import CircuitEvaluator
from circuitgraph.engine.progress import progress_bar
from circuitgraph.engine.sources import raw_difference, raw_sources, source_deltas
from circuitgraph.engine.tensors import SourceDeltas, reusable
from circuitgraph.errors import ConfigError
from circuitgraph.graph import Graph
from circuitgraph.graph.blocks import EdgeBlocks
from circuitgraph.models.backend import Backend, check_model

METHODS = ("eap", "eap-ig", "eap-ig-activations", "exact")
SUMMED_BYTES = 1e9  # EAP-IG: at most this many bytes of gradient captures kept to be summed over steps


def attribute(
    model: Any,
    graph: Graph,
    task: Any,
    method: str = "eap",
    ablation: str | Ablation = "corrupted",
    steps: int = 5,
    batch_size: int | None = None,
    edge_batch: int | None = None,
    progress: bool = True,
    scores_dtype: torch.dtype = torch.float32,
) -> torch.Tensor | EdgeBlocks:
    """Score every edge of ``graph`` for ``task``; returns the scores: a dense ``[n_src, n_dst]``
    tensor, or :class:`~circuitgraph.graph.blocks.EdgeBlocks` (only the rows each destination
    group reads; ``.dense()`` for the dense view) when the graph :attr:`~Graph.uses_blocks`
    (``graph.edge_layout``: by default, graphs of more than 2²⁶ source × destination pairs).

    The graph keeps the latest scores and their provenance as ``graph.scores`` and
    ``graph.score_info`` (a compatibility shim, so ``top_n(graph, n)`` and ``minimal_circuit``
    find them; the returned tensor is the same object).

    ``batch_size`` bounds how many examples go through the model at once (default: chosen from
    a memory budget); ``edge_batch`` bounds how many single-edge patches ``exact`` runs together.
    ``scores_dtype=torch.bfloat16`` halves the ``[n_src, n_dst]`` score matrix, the largest object
    at neuron or feature scale (scores then carry ~3 significant digits: enough to rank edges).
    """
    if method not in METHODS:
        raise ConfigError(
            f"unknown attribution method {method!r}; choose one of {list(METHODS)} (acdc lives in circuitgraph.circuit.acdc)"
        )
    if steps < 1:
        raise ConfigError(f"steps must be ≥ 1, got {steps}")
    if not (isinstance(scores_dtype, torch.dtype) and scores_dtype.is_floating_point):
        raise ConfigError(
            f"scores_dtype must be a floating-point torch dtype (float32, bfloat16, ...), got {scores_dtype!r}"
        )
    backend = check_model(model)
    check_graph(model, graph, task)
    task.check_model(model)
    task.prepare(model)
    abl = Ablation.coerce(ablation).prepare(model, graph, task)
    if batch_size:
        bs = batch_size
    elif method == "exact":
        bs = auto_batch_size(graph, task)
    else:
        more, reserved = contraction_memory(backend, graph, method)
        bs = auto_batch_size(graph, task, lowrank=True, copies=3 + more, reserved_bytes=reserved)
    t0 = time.perf_counter()
    # A fresh tensor, so scores a caller kept from an earlier call stay intact; the graph's old one
    # is released first (at neuron granularity the [n_src, n_dst] matrix is the largest object).
    graph.scores = None
    scores: torch.Tensor | EdgeBlocks
    if graph.uses_blocks:
        scores = EdgeBlocks.zeros(graph, scores_dtype)
    else:
        scores = torch.zeros(graph.valid.shape, dtype=scores_dtype, device=graph.valid.device)
    graph.scores = scores
    if method == "exact":
        _exact(model, graph, task, abl, bs, scores, edge_batch, progress)
    else:
        chunks = list(example_chunks(task, bs))
        n_steps = 1 if method == "eap" else steps
        bar = progress_bar(len(chunks) * n_steps, method, progress, unit="step")
        workspace: dict = {}  # the contractions' scratch buffers, reused by every run
        for idx, chunk, weight in chunks:
            if method != "eap":
                _integrated_chunk(
                    backend, model, graph, task, abl, idx, chunk, method, steps, scores, weight, workspace, bar
                )
                workspace.pop("post_normed_deltas", None)  # (not held while the next chunk's deltas are built)
                continue
            ablated = abl.raw(model, graph, task, idx, chunk)
            clean: dict = {}
            grads, _ = forward_backward(model, graph, chunk, capture_sources=clean, workspace=workspace)
            # a(ablated) − a(clean), differenced before projecting through W_O / W_out
            deltas = source_deltas(model, graph, raw_difference(ablated, clean))
            del ablated, clean  # (the raw captures: not held through the contraction)
            contract(graph, grads.residual_deltas(deltas, out=deltas.dense), grads, scores, weight)
            del grads, deltas  # (not held through the next chunk's passes)
            bar.update(1)
        bar.close()
    # (contractions only ever write upstream-source × destination blocks, so invalid entries stay 0)
    graph.score_info = {
        "method": method,
        "ablation": abl.to_dict(),
        "steps": steps if method.startswith("eap-ig") else None,
        "task": task.name,
        "metric": task.metric_name,
        "n_examples": task.n_examples,
        "seconds": time.perf_counter() - t0,
    }
    return scores


def _integrated_chunk(
    backend: Backend,
    model: Any,
    graph: Graph,
    task: Any,
    abl: Ablation,
    idx: slice | torch.Tensor,
    chunk: Any,
    method: str,
    steps: int,
    scores: torch.Tensor | EdgeBlocks,
    weight: float,
    workspace: dict,
    bar: Any,
) -> None:
    """EAP-IG (``eap-ig``, ``eap-ig-activations``) on one chunk of examples: ``steps``
    interpolated forward and backward passes, contracted per step behind post-norms, else summed
    and contracted once (or whenever the kept captures reach the budget)."""
    ablated = abl.raw(model, graph, task, idx, chunk)  # (made here, so that only this frame holds it)
    clean = raw_sources(model, graph, chunk, chunk.clean)
    # a(ablated) − a(clean) with heads still in z space: small until projected, so the
    # dense deltas [n_dense, B, P, d] are built when first contracted, not held through
    # the summed path's forward and backward passes
    diff: dict | None = raw_difference(ablated, clean)
    deltas: SourceDeltas | None = None
    if method == "eap-ig":  # its steps interpolate the embedding only: the rest is not held
        ablated, clean = {"input": ablated["input"]}, {"input": clean["input"]}
    summed = SummedGradients()  # steps whose gradients are summed before one contraction
    # (the kept captures never cost more than the deltas the contraction holds, so summing
    # trades contractions for at most that much memory)
    row = clean["input"].numel() * clean["input"].element_size()  # one dense row's bytes (float32 at least)
    budget = min(SUMMED_BYTES, (graph.node_graph.n_src - lowrank_rows(graph)) * row)
    for k in range(steps):
        alpha = (k + 0.5) / steps  # midpoint rule: second-order accurate in 1/steps
        x = ablated["input"] + alpha * (clean["input"] - ablated["input"])
        extra, fixed = (
            _interpolate_sources(backend, graph, clean, ablated, alpha)
            if method == "eap-ig-activations"
            else (None, None)
        )
        grads, _ = forward_backward(
            model, graph, chunk, input_override=x, extra_fwd=extra, site_values=fixed, workspace=workspace
        )
        bar.update(1)
        if not grads.groups:  # (behind post-norms each step sees the deltas through its own Jacobian)
            summed.add(grads)
            if k < steps - 1 and summed.next_nbytes() <= budget:
                continue  # summed with the next steps
        if deltas is None:
            assert diff is not None  # (dropped once the deltas are built)
            deltas, diff = source_deltas(model, graph, diff), None
        if grads.groups:
            into = reusable(workspace, "post_normed_deltas", tuple(deltas.dense.shape), deltas.dense)
            contract(graph, grads.residual_deltas(deltas, out=into), grads, scores, weight / steps)
        else:
            contract(graph, deltas, summed, scores, weight / steps)
            summed = SummedGradients()


def _interpolate_sources(
    backend: Backend, graph: Graph, clean: dict, ablated: dict, alpha: float
) -> tuple[list, dict[str, torch.Tensor]]:
    """Hooks fixing every head's z and every MLP's output to ablated + α(clean − ablated) in
    value, while gradients flow through the live computation (straight-through); and the same
    interpolation of every SAE site's feature activations and error, which the sites' own hooks
    fix (all of a graph's sources move jointly, features included)."""

    def target(key):
        return ablated[key] + alpha * (clean[key] - ablated[key])

    def fixed(key):
        value = target(key)
        return lambda x, hook: x + (value - x.detach())

    node = graph.node_graph
    hooks = []
    for L in range(node.arch.n_layers):
        hooks.append((backend.z_hook(L), fixed(f"z{L}")))
        if node.has_mlp_node(L):  # (a transcoder's layer: its features and error are fixed at the site)
            hooks.append((backend.mlp_out_hook(L), fixed(f"mlp{L}")))
    sites = {f"{part}:{site.name}": target(f"{part}:{site.name}") for site in node.sites for part in ("acts", "err")}
    return hooks, sites


def _exact(
    model: Any,
    graph: Graph,
    task: Any,
    abl: Ablation,
    batch_size: int,
    scores: torch.Tensor | EdgeBlocks,
    edge_batch: int | None,
    progress: bool,
) -> None:
    """True single-edge ablation effects, K edges per batched patched forward."""
    run = CircuitEvaluator(model, graph, task, abl, batch_size=batch_size, mask_batch=edge_batch)
    for e, effect in _single_edge_effects(run, graph, progress, per_example=False):
        if isinstance(scores, EdgeBlocks):
            scores.put(e[:, 0], e[:, 1], effect)
        else:
            scores[e[:, 0], e[:, 1]] = effect.to(scores)


def exact_per_example(
    model: Any,
    graph: Graph,
    task: Any,
    ablation: str | Ablation = "corrupted",
    batch_size: int | None = None,
    edge_batch: int | None = None,
) -> torch.Tensor:
    """Exact single-edge effects per example: ``[n_examples, n_src, n_dst]`` (float64, CPU), whose
    mean over examples is ``attribute(..., method="exact")``. Bootstrap resamples reweight these
    rows instead of patching again."""
    check_model(model)
    check_graph(model, graph, task)
    run = CircuitEvaluator(model, graph, task, ablation, batch_size=batch_size, mask_batch=edge_batch)
    out = torch.zeros(task.n_examples, *graph.valid.shape, dtype=torch.float64)
    for e, effect in _single_edge_effects(run, graph, False, per_example=True):
        out[:, e[:, 0].cpu(), e[:, 1].cpu()] = effect.T
    return out


def _single_edge_effects(run: CircuitEvaluator, graph: Graph, progress: bool, per_example: bool):
    """Yield ``(edges [k, 2], m(edge ablated) − m(full))`` for every valid edge, ``[k]`` or
    ``[k, n_examples]`` per batch of K single-edge patches."""
    edges = graph.valid.nonzero()  # [E, 2]
    E = edges.shape[0]
    base = run(graph.valid[None], progress=False, per_example=per_example)[0]
    K = max(1, min(E, run.mask_batch))
    bar = progress_bar(E, "exact", progress, unit="edge")
    for start in range(0, E, K):
        e = edges[start : start + K]
        k = e.shape[0]
        keep = graph.valid.expand(k, -1, -1).clone()
        keep[torch.arange(k), e[:, 0], e[:, 1]] = False
        yield e, run(keep, progress=False, per_example=per_example) - base
        bar.update(k)
    bar.close()
