"""Measure circuits by real patched forward passes: metric values, faithfulness, the faithfulness
curve, and MIB's CPR / CMD.

f(C) = (m(C) − m(∅)) / (m(N) − m(∅)), with N the full model (every edge kept) and ∅ the empty
circuit (every edge ablated). Many circuits are measured in one batched forward (one edge mask
per circuit) — the whole curve costs a handful of passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from circuitgraph.engine.activations import Ablation
from circuitgraph.engine.batching import auto_batch_size, check_graph, example_chunks, mask_batch_size
from circuitgraph.engine.patching import patched_logits, tiled
from circuitgraph.graph import Graph
from circuitgraph.tasks.metrics import LOWER_IS_BETTER

# MIB's edge fractions (in percent of all edges).
CURVE_PERCENTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)


def evaluate(model, graph: Graph, task, masks: torch.Tensor, ablation: str | Ablation = "corrupted",
             batch_size: int | None = None, mask_batch: int | None = None, progress: bool = True) -> torch.Tensor:
    """Mean metric of the model restricted to each circuit: ``masks [K, n_src, n_dst]`` (or one
    ``[n_src, n_dst]`` mask) → ``[K]`` (or a scalar)."""
    single = masks.ndim == 2
    masks = masks[None] if single else masks
    check_graph(model, graph, task)
    task.check_model(model)
    task.prepare(model)
    abl = Ablation.coerce(ablation).prepare(model, graph, task)
    out = torch.zeros(masks.shape[0], device=graph.valid.device)
    chunks = list(example_chunks(task, batch_size or auto_batch_size(graph, task)))
    bar = tqdm(total=len(chunks) * masks.shape[0], desc="evaluate", unit="circuit", disable=not progress, delay=2.0, leave=False)
    for idx, chunk, weight in chunks:
        ablated = abl.activations(model, graph, task, idx, chunk)
        K = mask_batch or mask_batch_size(graph, chunk)
        for s in range(0, masks.shape[0], K):
            m = masks[s:s + K].to(graph.valid.device)
            values = tiled(chunk, m.shape[0]).score(patched_logits(model, graph, chunk, ablated, m), " during evaluation")
            out[s:s + K] += weight * values.view(m.shape[0], chunk.n_examples).mean(1)
            bar.update(m.shape[0])
    bar.close()
    return out[0] if single else out


@dataclass
class Baselines:
    """Metric of the full model (every edge) and of the empty circuit (no edge)."""

    full: float
    empty: float

    def faithfulness(self, value: torch.Tensor | float) -> torch.Tensor | float:
        gap = self.full - self.empty
        if abs(gap) < 1e-12:
            raise ValueError(
                "the full model and the empty circuit score the same on this task, so faithfulness is undefined; "
                "check that clean and corrupted prompts differ in what the metric reads"
            )
        return (value - self.empty) / gap


def baselines(model, graph: Graph, task, ablation: str | Ablation = "corrupted", **kw) -> Baselines:
    both = torch.stack([graph.valid, torch.zeros_like(graph.valid)])
    v = evaluate(model, graph, task, both, ablation, **kw)
    return Baselines(full=float(v[0]), empty=float(v[1]))


def faithfulness(model, graph: Graph, task, mask: torch.Tensor, ablation: str | Ablation = "corrupted", **kw) -> float:
    """Faithfulness of one circuit (3 patched runs, batched together)."""
    v = evaluate(model, graph, task, torch.stack([mask.to(graph.valid.device), graph.valid, torch.zeros_like(graph.valid)]), ablation, **kw)
    return float(Baselines(full=float(v[1]), empty=float(v[2])).faithfulness(v[0]))


def top_fraction_masks(graph: Graph, ranking: torch.Tensor, percents=CURVE_PERCENTS) -> torch.Tensor:
    """Masks keeping the top p % of valid edges by ``ranking`` (higher first): ``[len(percents), n_src, n_dst]``."""
    E = graph.n_edges
    order = ranking.masked_fill(~graph.valid, float("-inf")).flatten().argsort(descending=True)
    masks = torch.zeros(len(percents), graph.valid.numel(), dtype=torch.bool, device=graph.valid.device)
    for i, p in enumerate(percents):
        k = max(1, round(E * p / 100)) if p > 0 else 0
        masks[i, order[:k]] = True
    return masks.view(len(percents), *graph.valid.shape) & graph.valid


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


def faithfulness_curve(model, graph: Graph, task, ablation: str | Ablation = "corrupted",
                       percents=CURVE_PERCENTS, scores: torch.Tensor | None = None, **kw) -> FaithfulnessCurve:
    """Faithfulness at MIB's edge fractions, with CPR and CMD as MIB defines them (areas over the
    fraction of edges in [0, 1], trapezoid rule)."""
    scores = graph.scores if scores is None else scores
    # An edge helps if ablating it moves the metric the wrong way: score < 0 for higher-is-better.
    helpful = scores if task.metric_name in LOWER_IS_BETTER else -scores
    masks = torch.cat([
        top_fraction_masks(graph, helpful, percents),
        top_fraction_masks(graph, scores.abs(), percents),
        torch.stack([graph.valid, torch.zeros_like(graph.valid)]),
    ])
    v = evaluate(model, graph, task, masks, ablation, **kw)
    n = len(percents)
    base = Baselines(full=float(v[-2]), empty=float(v[-1]))
    f = base.faithfulness(v[:-2]).cpu()
    signed, absolute = f[:n], f[n:2 * n]
    x = torch.tensor(percents, dtype=torch.float64) / 100
    cpr = float(torch.trapezoid(signed.double(), x))
    cmd = float(torch.trapezoid((1 - absolute.double()).abs(), x))
    return FaithfulnessCurve(list(map(float, percents)), signed.tolist(), absolute.tolist(), cpr, cmd, base.full, base.empty)
