"""Measure circuits by real patched forward passes: metric values, faithfulness, the faithfulness
curve, and MIB's CPR / CMD.

f(C) = (m(C) − m(∅)) / (m(N) − m(∅)), with N the full model (every edge kept) and ∅ the empty
circuit (every edge ablated). Many circuits are measured in one batched forward (one edge mask
per circuit) — the whole curve costs a handful of passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from circuitgraph.circuit.selection import prune, top_n
from circuitgraph.engine.ablation import Ablation
from circuitgraph.engine.evaluator import Baselines, CircuitEvaluator
from circuitgraph.errors import ConfigError
from circuitgraph.graph import Graph
from circuitgraph.graph.blocks import EdgeBlocks
from circuitgraph.tasks.metrics import LOWER_IS_BETTER

# MIB's edge fractions (in percent of all edges), the empty circuit (0 %) and the full model included.
CURVE_PERCENTS = (0, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
# the fractions MIB's evaluation script measures (it starts at 0.1 %)
MIB_SCRIPT_PERCENTS = CURVE_PERCENTS[1:]
COUNTINGS = ("round", "floor")


def evaluate(
    model,
    graph: Graph,
    task,
    masks: torch.Tensor | EdgeBlocks,
    ablation: str | Ablation = "corrupted",
    batch_size: int | None = None,
    mask_batch: int | None = None,
    progress: bool = True,
    memory_budget: float | None = None,
) -> torch.Tensor:
    """Mean metric of the model restricted to each circuit: ``masks [K, n_src, n_dst]`` (or one
    ``[n_src, n_dst]`` mask; dense or edge blocks) → ``[K]`` (or a scalar). ``memory_budget``:
    bytes for the mask batches (see :class:`CircuitEvaluator`)."""
    single = masks.ndim == 2
    masks = masks[None] if single else masks
    run = CircuitEvaluator(
        model, graph, task, ablation, batch_size, mask_batch, cache_bytes=0, memory_budget=memory_budget
    )
    out = run(masks, progress=progress).to(dtype=torch.float32, device=graph.valid.device)
    return out[0] if single else out


def baselines(
    model,
    graph: Graph,
    task,
    ablation: str | Ablation = "corrupted",
    batch_size: int | None = None,
    mask_batch: int | None = None,
    memory_budget: float | None = None,
) -> Baselines:
    """Metric of the full model and of the empty circuit (one batched patched forward)."""
    return CircuitEvaluator(
        model, graph, task, ablation, batch_size, mask_batch, cache_bytes=0, memory_budget=memory_budget
    ).baselines()


def faithfulness(
    model, graph: Graph, task, mask: torch.Tensor | EdgeBlocks, ablation: str | Ablation = "corrupted", **kw
) -> float:
    """Faithfulness of one circuit: 3 patched runs (the circuit, the full model, the empty circuit)
    sharing one ablation cache. Keywords: ``batch_size``, ``mask_batch``, ``memory_budget``,
    ``offload`` (see :class:`CircuitEvaluator`), ``progress``."""
    run = _evaluator(model, graph, task, ablation, kw)
    value = float(
        run(mask.to(graph.valid.device)[None], progress=kw.get("progress"))[0]
    )  # one mask at a time: at feature scale a
    return float(run.baselines().faithfulness(value))  # mask is large


def _evaluator(model, graph: Graph, task, ablation: str | Ablation, kw: dict) -> CircuitEvaluator:
    """The evaluator of :func:`faithfulness` and :func:`faithfulness_curve`, from their keywords."""
    unknown = set(kw) - {"batch_size", "mask_batch", "memory_budget", "offload", "progress"}
    if unknown:
        raise TypeError(
            f"unexpected keyword(s) {sorted(unknown)}: use batch_size, mask_batch, memory_budget, offload, progress"
        )
    return CircuitEvaluator(
        model,
        graph,
        task,
        ablation,
        kw.get("batch_size"),
        kw.get("mask_batch"),
        memory_budget=kw.get("memory_budget"),
        offload=kw.get("offload", "auto"),
    )


@dataclass
class FaithfulnessCurve:
    percents: list[float]
    signed: list[float]  # f at each fraction, edges ranked by helpfulness (signed score)
    absolute: list[float]  # f at each fraction, edges ranked by |score|
    cpr: float  # area under the signed curve (higher is better)
    cmd: float  # area under |1 − f| of the absolute curve (lower is better)
    full: float
    empty: float
    sizes: list[int] = field(default_factory=list)  # edges kept at each fraction (before pruning)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def curve_sizes(n_edges: int, percents=CURVE_PERCENTS, counting: str = "round") -> list[int]:
    """Edges kept at each fraction: ``counting="round"`` rounds p·E to the nearest integer and
    keeps at least one edge above 0 %; ``"floor"`` is MIB's scripts' ``int(p · E)`` (a small
    graph's lowest fractions then keep no edge at all)."""
    if counting not in COUNTINGS:
        raise ConfigError(f"unknown edge counting {counting!r}; choose one of {list(COUNTINGS)}")
    out = []
    for p in percents:
        if not 0 <= p <= 100:
            raise ConfigError(f"edge fractions are percentages in [0, 100], got {p}")
        exact = n_edges * p / 100
        if counting == "floor":
            out.append(int(exact + 1e-9))
        else:
            out.append(0 if p == 0 else max(1, round(exact)))
    return out


def curve_areas(percents, signed, absolute) -> tuple[float, float]:
    """MIB's CPR and CMD: trapezoid areas over the fraction of edges (x = percent / 100) of the
    signed curve and of |1 − f| of the absolute curve."""
    x = torch.tensor(list(percents), dtype=torch.float64) / 100
    cpr = float(torch.trapezoid(torch.as_tensor(signed, dtype=torch.float64), x))
    cmd = float(torch.trapezoid((1 - torch.as_tensor(absolute, dtype=torch.float64)).abs(), x))
    return cpr, cmd


def faithfulness_curve(
    model,
    graph: Graph,
    task,
    ablation: str | Ablation = "corrupted",
    percents=CURVE_PERCENTS,
    scores: torch.Tensor | EdgeBlocks | None = None,
    counting: str = "round",
    prune_circuits: bool = True,
    **kw,
) -> FaithfulnessCurve:
    """Faithfulness at MIB's edge fractions, with CPR and CMD as MIB defines them (areas over the
    fraction of edges in [0, 1], trapezoid rule).

    As MIB's evaluation does, each circuit is the top-n edges (by helpfulness for the CPR curve,
    by |score| for the CMD curve) pruned to input→logits paths (``prune_circuits``), and the area
    is taken at the nominal fractions. ``counting`` (see :func:`curve_sizes`): ``"floor"`` for
    MIB's integer edge counts; ``percents=MIB_SCRIPT_PERCENTS`` for its script's points (from
    0.1 %; the default also measures 0 %, the empty circuit, where f = 0 by definition).

    Scores may be dense or edge blocks; masks are built in the same layout, ``mask_batch`` at a
    time, and ranked straight from the scores (no ranked copy is kept: at feature scale each is
    gigabytes). Keywords: ``batch_size``, ``mask_batch``, ``memory_budget`` (bytes), ``offload``
    (see :class:`CircuitEvaluator`), ``progress``."""
    scores = graph.scores if scores is None else scores
    # helpfulness: −score under a higher-is-better metric, which top_n(absolute=False) ranks by
    helpful_scores = scores if task.metric_name not in LOWER_IS_BETTER else -scores
    sizes = curve_sizes(graph.n_edges, percents, counting)

    def circuit(n: int, absolute: bool):  # the top n valid edges (higher first)
        def build():
            m = top_n(graph, n, absolute=absolute, scores=scores if absolute else helpful_scores)
            return prune(graph, m) if prune_circuits else m

        return build

    builders = [circuit(n, False) for n in sizes] + [circuit(n, True) for n in sizes]
    builders += [graph.full_mask, graph.empty_mask]
    run = _evaluator(model, graph, task, ablation, kw)
    v = run.lazy(builders, progress=kw.get("progress"))
    n = len(sizes)
    base = Baselines(full=float(v[-2]), empty=float(v[-1]))
    f = base.faithfulness(v[:-2]).cpu()
    signed, absolute = f[:n], f[n : 2 * n]
    cpr, cmd = curve_areas(percents, signed, absolute)
    return FaithfulnessCurve(
        list(map(float, percents)), signed.tolist(), absolute.tolist(), cpr, cmd, base.full, base.empty, sizes
    )
