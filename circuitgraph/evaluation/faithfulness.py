"""Measure circuits by real patched forward passes: metric values, faithfulness, the faithfulness
curve, and MIB's CPR / CMD.

f(C) = (m(C) − m(∅)) / (m(N) − m(∅)), with N the full model (every edge kept) and ∅ the empty
circuit (every edge ablated). Many circuits are measured in one batched forward (one edge mask
per circuit) — the whole curve costs a handful of passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitgraph.circuit.selection import top_n
from circuitgraph.engine.ablation import Ablation
from circuitgraph.engine.evaluator import Baselines, CircuitEvaluator
from circuitgraph.graph import Graph
from circuitgraph.tasks.metrics import helpfulness

# MIB's edge fractions (in percent of all edges).
CURVE_PERCENTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)


def evaluate(
    model,
    graph: Graph,
    task,
    masks: torch.Tensor,
    ablation: str | Ablation = "corrupted",
    batch_size: int | None = None,
    mask_batch: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Mean metric of the model restricted to each circuit: ``masks [K, n_src, n_dst]`` (or one
    ``[n_src, n_dst]`` mask) → ``[K]`` (or a scalar)."""
    single = masks.ndim == 2
    masks = masks[None] if single else masks
    run = CircuitEvaluator(model, graph, task, ablation, batch_size, mask_batch, cache_bytes=0)
    out = run(masks, progress=progress).to(dtype=torch.float32, device=graph.valid.device)
    return out[0] if single else out


def baselines(
    model,
    graph: Graph,
    task,
    ablation: str | Ablation = "corrupted",
    batch_size: int | None = None,
    mask_batch: int | None = None,
) -> Baselines:
    """Metric of the full model and of the empty circuit (one batched patched forward)."""
    return CircuitEvaluator(model, graph, task, ablation, batch_size, mask_batch, cache_bytes=0).baselines()


def faithfulness(model, graph: Graph, task, mask: torch.Tensor, ablation: str | Ablation = "corrupted", **kw) -> float:
    """Faithfulness of one circuit: 3 patched runs (the circuit, the full model, the empty circuit)
    sharing one ablation cache."""
    run = CircuitEvaluator(model, graph, task, ablation, kw.get("batch_size"), kw.get("mask_batch"))
    value = float(run(mask.to(graph.valid.device)[None])[0])  # one mask at a time: at feature scale a
    return float(run.baselines().faithfulness(value))  # [n_src, n_dst] mask is over a gigabyte


@dataclass
class FaithfulnessCurve:
    percents: list[float]
    signed: list[float]  # f at each fraction, edges ranked by helpfulness (signed score)
    absolute: list[float]  # f at each fraction, edges ranked by |score|
    cpr: float  # area under the signed curve (higher is better)
    cmd: float  # area under |1 − f| of the absolute curve (lower is better)
    full: float
    empty: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def faithfulness_curve(
    model,
    graph: Graph,
    task,
    ablation: str | Ablation = "corrupted",
    percents=CURVE_PERCENTS,
    scores: torch.Tensor | None = None,
    **kw,
) -> FaithfulnessCurve:
    """Faithfulness at MIB's edge fractions, with CPR and CMD as MIB defines them (areas over the
    fraction of edges in [0, 1], trapezoid rule)."""
    scores = graph.scores if scores is None else scores
    helpful = helpfulness(scores, task.metric_name)
    E = graph.n_edges

    def top_fraction(rank: torch.Tensor, p: float):  # the top p % of valid edges by rank (higher first)
        return lambda: top_n(graph, max(1, round(E * p / 100)) if p > 0 else 0, absolute=False, scores=-rank)

    builders = [top_fraction(helpful, p) for p in percents] + [top_fraction(scores.abs(), p) for p in percents]
    builders += [lambda: graph.valid, lambda: torch.zeros_like(graph.valid)]
    run = CircuitEvaluator(model, graph, task, ablation, kw.get("batch_size"), kw.get("mask_batch"))
    v = run.lazy(builders)
    n = len(percents)
    base = Baselines(full=float(v[-2]), empty=float(v[-1]))
    f = base.faithfulness(v[:-2]).cpu()
    signed, absolute = f[:n], f[n : 2 * n]
    x = torch.tensor(percents, dtype=torch.float64) / 100
    cpr = float(torch.trapezoid(signed.double(), x))
    cmd = float(torch.trapezoid((1 - absolute.double()).abs(), x))
    return FaithfulnessCurve(
        list(map(float, percents)), signed.tolist(), absolute.tolist(), cpr, cmd, base.full, base.empty
    )
