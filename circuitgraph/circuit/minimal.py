"""The minimal circuit: the smallest top-n circuit whose measured faithfulness reaches a target.

Faithfulness is not monotone in n, so the search measures a geometric grid of sizes in batched
patched forwards, takes the first size that reaches the target, and bisects between it and the
previous grid point (each probe is a real patched run, never an estimate from scores). The grid is
measured in ascending order and stops at the batch that first reaches the target: the answer never
lies past it, and at neuron or feature scale a patched forward of a mask with a large fraction of
the edges removed *and* kept costs far more than one of a small circuit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from circuitgraph.attribution import attribute
from circuitgraph.circuit.circuit import Circuit
from circuitgraph.circuit.selection import prune, top_n
from circuitgraph.engine.ablation import Ablation
from circuitgraph.engine.evaluator import Baselines, CircuitEvaluator
from circuitgraph.errors import ConfigError
from circuitgraph.graph import Graph
from circuitgraph.graph.blocks import EdgeBlocks


def build_circuit(
    graph: Graph, mask: torch.Tensor | EdgeBlocks, task=None, ablation="corrupted", selection: dict | None = None
) -> Circuit:
    """Wrap a mask with provenance metadata."""
    meta = {
        "model": graph.model_name,
        "config_hash": graph.model_hash,
        "task": getattr(task, "name", None),
        "metric": getattr(task, "metric_name", None),
        "attribution": graph.score_info,
        "ablation": Ablation.coerce(ablation).to_dict(),
        "selection": selection or {},
    }
    return Circuit(graph, mask, metadata=meta, ablation_tensors=Ablation.coerce(ablation).tensors())


def check_target(target: float) -> None:
    """A faithfulness target must lie in (0, 1]. 1 is the whole model's effect, which the full
    circuit reaches by definition; a larger target asks for more than the model does, so it is a
    mistake rather than a stricter search."""
    if not (math.isfinite(target) and 0 < target <= 1):
        raise ConfigError(
            f"a target faithfulness must be in (0, 1] (0.9 = 90% of the model's effect on the metric), got {target}"
        )


def minimal_circuit(
    model,
    graph: Graph,
    task,
    target: float = 0.9,
    method: str | None = None,
    ablation: str | Ablation = "corrupted",
    absolute: bool = True,
    steps: int = 5,
    grid: int = 24,
    batch_size: int | None = None,
    memory_budget: float | None = None,
    offload: bool | str = "auto",
) -> Circuit:
    """Smallest top-n (pruned) circuit with faithfulness ≥ ``target``, measured by patching.

    ``method=None`` (default) uses the scores already in the graph (from :func:`attribute`), or
    computes EAP-IG scores when it has none; a named ``method`` always recomputes. The returned
    circuit carries its measured ``faithfulness`` and the search trace. ``memory_budget``: bytes
    for the evaluator's mask batches and ablation cache, ``offload`` whether that cache waits in
    host memory (see :class:`CircuitEvaluator`); masks are built a batch at a time in the scores'
    layout.
    """
    check_target(target)
    t0 = time.perf_counter()
    if method is None and not bool(graph.scores.any()):
        method = "eap-ig"
    abl = Ablation.coerce(ablation)  # one object: a fitted (optimal) ablation is fitted once
    if method is not None:
        attribute(model, graph, task, method=method, ablation=abl, steps=steps, batch_size=batch_size)
    E = graph.n_edges
    sizes = sorted({max(1, int(round(E ** (i / (grid - 1))))) for i in range(grid)} | {E})
    # ablations computed once
    run = CircuitEvaluator(model, graph, task, abl, batch_size=batch_size, memory_budget=memory_budget, offload=offload)

    def grid_point(n: int) -> Callable[[], torch.Tensor | EdgeBlocks]:
        return lambda: prune(graph, top_n(graph, n, absolute))

    builders = [graph.full_mask, graph.empty_mask] + [grid_point(n) for n in sizes]
    values: list[float] = []
    for i in range(0, len(builders), run.mask_batch):  # ascending, until a batch reaches the target
        values += [float(v) for v in run.lazy(builders[i : i + run.mask_batch])]
        base = Baselines(full=values[0], empty=values[1]) if len(values) > 1 else None
        if base is not None and any(base.faithfulness(v) >= target for v in values[2:]):
            break
    assert base is not None  # (the first two builders are the full model and the empty circuit)
    faith = [float(base.faithfulness(v)) for v in values[2:]]
    sizes = sizes[: len(faith)]
    trace = {n: f for n, f in zip(sizes, faith)}
    hit = next((i for i, f in enumerate(faith) if f >= target), None)
    if hit is None:
        best = max(range(len(sizes)), key=lambda i: faith[i])
        n, f = sizes[best], faith[best]
    else:
        lo, hi = (sizes[hit - 1] if hit > 0 else 0), sizes[hit]
        n, f = hi, faith[hit]
        while hi - lo > 1:  # bisect: smallest n in (lo, hi] that reaches the target
            mid = (lo + hi) // 2
            fm = float(base.faithfulness(run(prune(graph, top_n(graph, mid, absolute))[None])[0]))
            trace[mid] = fm
            if fm >= target:
                hi, n, f = mid, mid, fm
            else:
                lo = mid
    mask = prune(graph, top_n(graph, n, absolute))
    c = build_circuit(graph, mask, task, abl, {"kind": "minimal", "target": target, "top_n": n, "absolute": absolute})
    c.faithfulness = f
    c.figures = {
        "faithfulness": f,
        "reached_target": f >= target,
        "metric_full": base.full,
        "metric_empty": base.empty,
        "n_edges": c.n_edges,
        "top_n": n,
        "search": {str(k): v for k, v in sorted(trace.items())},
        "seconds": time.perf_counter() - t0,
    }
    return c
