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
from circuitgraph.engine.batching import auto_batch_size, check_graph, dense_sources, example_chunks, mask_batch_size
from circuitgraph.engine.patching import patched_logits, tiled
from circuitgraph.graph import Graph
from circuitgraph.tasks.metrics import LOWER_IS_BETTER

# MIB's edge fractions (in percent of all edges).
CURVE_PERCENTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)


class CircuitEvaluator:
    """Mean metric of many circuits on one task, by batched patched forwards.

    The task and ablation are prepared once. The ablated source activations of each example chunk
    are cached when they fit in ``cache_bytes`` (searches such as :func:`minimal_circuit` and ACDC
    evaluate hundreds of circuits), and recomputed per call otherwise, so memory stays bounded.
    ``offload`` keeps that cache in host memory (pinned, copied to the accelerator chunk by chunk):
    ``"auto"`` does so on an accelerator when the cache would take over a quarter of its free
    memory."""

    def __init__(self, model, graph: Graph, task, ablation: str | Ablation = "corrupted",
                 batch_size: int | None = None, mask_batch: int | None = None, cache_bytes: float = 2e9,
                 offload: bool | str = "auto"):
        check_graph(model, graph, task)
        task.check_model(model)
        task.prepare(model)
        self.model, self.graph, self.task = model, graph, task
        self.ablation = Ablation.coerce(ablation).prepare(model, graph, task)
        self.chunks = list(example_chunks(task, batch_size or auto_batch_size(graph, task)))
        self.mask_batch = mask_batch or min(mask_batch_size(graph, chunk) for _, chunk, _ in self.chunks)
        n_dense = dense_sources(graph)
        per_example = (n_dense * graph.arch.d_model + graph.node_graph.n_src - n_dense) * task.seq_len * 4
        total = per_example * task.n_examples
        self._cache: dict[int, torch.Tensor] | None = {} if total <= cache_bytes else None
        self.offload = _offload(offload, graph.valid.device, total)
        self.n_circuits = 0  # circuits evaluated so far (for reports)

    def _ablated(self, i: int) -> torch.Tensor:
        device = self.graph.valid.device
        if self._cache is not None and i in self._cache:
            return self._cache[i].to(device, non_blocking=True)
        idx, chunk, _ = self.chunks[i]
        ablated = self.ablation.activations(self.model, self.graph, self.task, idx, chunk, compact=True)
        if self._cache is not None:
            kept = ablated
            if self.offload:
                kept = ablated.to("cpu")
                if device.type == "cuda":
                    kept = kept.pin_memory()
            self._cache[i] = kept
        return ablated

    @torch.no_grad()
    def __call__(self, masks: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """``masks [K, n_src, n_dst]`` → mean metric per circuit ``[K]`` (float64, on CPU)."""
        out = torch.zeros(masks.shape[0], dtype=torch.float64)
        bar = tqdm(total=len(self.chunks) * masks.shape[0], desc="evaluate", unit="circuit", disable=not progress,
                   delay=2.0, leave=False)
        for i, (_, chunk, weight) in enumerate(self.chunks):
            ablated = self._ablated(i)
            for s in range(0, masks.shape[0], self.mask_batch):
                m = masks[s:s + self.mask_batch].to(self.graph.valid.device)
                k = m.shape[0]
                logits = patched_logits(self.model, self.graph, chunk, ablated, m)
                values = tiled(chunk, k).score(logits, " during evaluation").view(k, chunk.n_examples)
                out[s:s + k] += weight * values.double().mean(1).cpu()
                bar.update(k)
        bar.close()
        self.n_circuits += masks.shape[0]
        return out

    def lazy(self, builders) -> torch.Tensor:
        """Mean metric of the circuits that ``builders`` (callables returning a mask) make, built a
        batch at a time: at neuron or feature scale each ``[n_src, n_dst]`` mask is over a
        gigabyte, so a whole grid of them is never held at once."""
        out = [self(torch.stack([b() for b in builders[i:i + self.mask_batch]]))
               for i in range(0, len(builders), self.mask_batch)]
        return torch.cat(out)

    def baselines(self) -> "Baselines":
        """Metric of the full model and of the empty circuit."""
        full = self(self.graph.valid[None])[0]  # (two calls, not one stacked pair: masks are
        empty = self(torch.zeros_like(self.graph.valid)[None])[0]  # [n_src, n_dst] each)
        return Baselines(full=float(full), empty=float(empty))


def _offload(offload: bool | str, device: torch.device, cache_bytes: float) -> bool:
    if offload not in (True, False, "auto"):
        raise ValueError(f"offload must be True, False or 'auto', got {offload!r}")
    if offload != "auto":
        return bool(offload)
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return cache_bytes > free / 4


def evaluate(model, graph: Graph, task, masks: torch.Tensor, ablation: str | Ablation = "corrupted",
             batch_size: int | None = None, mask_batch: int | None = None, progress: bool = True) -> torch.Tensor:
    """Mean metric of the model restricted to each circuit: ``masks [K, n_src, n_dst]`` (or one
    ``[n_src, n_dst]`` mask) → ``[K]`` (or a scalar)."""
    single = masks.ndim == 2
    masks = masks[None] if single else masks
    run = CircuitEvaluator(model, graph, task, ablation, batch_size, mask_batch, cache_bytes=0)
    out = run(masks, progress=progress).to(dtype=torch.float32, device=graph.valid.device)
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


def baselines(model, graph: Graph, task, ablation: str | Ablation = "corrupted",
              batch_size: int | None = None, mask_batch: int | None = None) -> Baselines:
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


def faithfulness_curve(model, graph: Graph, task, ablation: str | Ablation = "corrupted",
                       percents=CURVE_PERCENTS, scores: torch.Tensor | None = None, **kw) -> FaithfulnessCurve:
    """Faithfulness at MIB's edge fractions, with CPR and CMD as MIB defines them (areas over the
    fraction of edges in [0, 1], trapezoid rule)."""
    from circuitgraph.circuit.selection import top_n

    scores = graph.scores if scores is None else scores
    # An edge helps if ablating it moves the metric the wrong way: score < 0 for higher-is-better.
    helpful = scores if task.metric_name in LOWER_IS_BETTER else -scores
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
    signed, absolute = f[:n], f[n:2 * n]
    x = torch.tensor(percents, dtype=torch.float64) / 100
    cpr = float(torch.trapezoid(signed.double(), x))
    cmd = float(torch.trapezoid((1 - absolute.double()).abs(), x))
    return FaithfulnessCurve(list(map(float, percents)), signed.tolist(), absolute.tolist(), cpr, cmd, base.full, base.empty)
