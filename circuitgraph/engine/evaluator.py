"""The batched patched-run engine: the mean metric of many circuits on one task.

Every measurement of a circuit (faithfulness, curves, the minimal-circuit search, ACDC, exact
scores) is a call of one :class:`CircuitEvaluator`, so ablations are prepared once and cached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, overload

import torch

from circuitgraph.engine.ablation import Ablation
from circuitgraph.engine.batching import (
    CACHE_SHARE,
    MEMORY_BUDGET,
    auto_batch_size,
    check_graph,
    dense_sources,
    example_chunks,
    mask_batch_size,
)
from circuitgraph.engine.patching import patched_logits, tiled
from circuitgraph.engine.progress import progress_bar
from circuitgraph.engine.tensors import CompactSources
from circuitgraph.errors import ConfigError, TaskError
from circuitgraph.graph import Graph
from circuitgraph.graph.blocks import EdgeBlocks, stack


class CircuitEvaluator:
    """Mean metric of many circuits on one task, by batched patched forwards.

    The task and ablation are prepared once. ``memory_budget`` (bytes; default ``MEMORY_BUDGET``)
    bounds what the evaluator holds besides the model: two thirds for the ablated source
    activations of every example chunk, cached when they fit (searches such as
    :func:`minimal_circuit` and ACDC evaluate hundreds of circuits; recomputed per call otherwise),
    and the rest for the masks one patched forward carries (``mask_batch`` of them, each with its
    removal mask and activations). ``cache_bytes`` overrides the cache's share. The progress line
    names the budget and what it allows.
    ``offload`` keeps that cache in host memory (pinned, copied to the accelerator chunk by chunk):
    ``"auto"`` does so on an accelerator when the cache would take over a quarter of its free
    memory."""

    def __init__(
        self,
        model: Any,
        graph: Graph,
        task: Any,
        ablation: str | Ablation = "corrupted",
        batch_size: int | None = None,
        mask_batch: int | None = None,
        cache_bytes: float | None = None,
        offload: bool | str = "auto",
        memory_budget: float | None = None,
    ) -> None:
        check_graph(model, graph, task)
        task.check_model(model)
        task.prepare(model)
        if memory_budget is not None and not memory_budget > 0:
            raise ConfigError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
        self.model, self.graph, self.task = model, graph, task
        self.memory_budget = float(memory_budget or MEMORY_BUDGET)
        cache_bytes = self.memory_budget * CACHE_SHARE if cache_bytes is None else cache_bytes
        self.ablation = Ablation.coerce(ablation).prepare(model, graph, task)
        self.chunks = list(example_chunks(task, batch_size or auto_batch_size(graph, task)))
        masks_budget = self.memory_budget * (1 - CACHE_SHARE)
        self.mask_batch = mask_batch or min(mask_batch_size(graph, chunk, masks_budget) for _, chunk, _ in self.chunks)
        n_dense = dense_sources(graph)
        per_example = (n_dense * graph.arch.d_model + graph.node_graph.n_src - n_dense) * task.seq_len * 4
        total = per_example * task.n_examples
        self._cache: dict[int, torch.Tensor | CompactSources] | None = {} if total <= cache_bytes else None
        self.cache_bytes = total if self._cache is not None else 0
        self.offload = _offload(offload, graph.valid.device, total)
        self.n_circuits = 0  # circuits evaluated so far (for reports)

    def budget_note(self) -> str:
        """The memory budget and what it allows, for the progress line."""
        cache = f"ablation cache {self.cache_bytes / 1e9:.2f} GB" if self._cache is not None else "no ablation cache"
        return f"budget {self.memory_budget / 1e9:.1f} GB: {self.mask_batch} masks/pass, {cache}"

    def ablated(self, i: int) -> torch.Tensor | CompactSources:
        """The ablated source activations of example chunk ``i`` (from the cache when it holds them)."""
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
    def __call__(
        self, masks: torch.Tensor | EdgeBlocks, progress: bool | None = None, per_example: bool = False
    ) -> torch.Tensor:
        """``masks [K, n_src, n_dst]`` (dense or edge blocks) → mean metric per circuit ``[K]`` (float64, on CPU); with
        ``per_example``, every example's metric ``[K, n_examples]`` (bootstrap resampling reweights
        these instead of rerunning).

        ``progress``: True shows a bar, False never; None (default) only inside a progress phase
        (:func:`circuitgraph.engine.progress.phase`), where every call feeds the phase's bar."""
        out = torch.zeros(masks.shape[0], dtype=torch.float64)
        each = torch.zeros(masks.shape[0], self.task.n_examples, dtype=torch.float64) if per_example else None
        bar = progress_bar(len(self.chunks) * masks.shape[0], "evaluate", progress, unit="run", note=self.budget_note())
        for i, (idx, chunk, weight) in enumerate(self.chunks):
            ablated = self.ablated(i)
            for s in range(0, masks.shape[0], self.mask_batch):
                m = masks[s : s + self.mask_batch].to(self.graph.valid.device)
                k = m.shape[0]
                logits = patched_logits(self.model, self.graph, chunk, ablated, m)
                values = tiled(chunk, k).score(logits, " during evaluation").view(k, chunk.n_examples)
                out[s : s + k] += weight * values.double().mean(1).cpu()
                if each is not None:
                    each[s : s + k, idx] = values.double().cpu()
                bar.update(k)
        bar.close()
        self.n_circuits += masks.shape[0]
        return out if each is None else each

    def lazy(
        self, builders: Sequence[Callable[[], torch.Tensor | EdgeBlocks]], progress: bool | None = None
    ) -> torch.Tensor:
        """Mean metric of the circuits that ``builders`` (callables returning a mask) make, built a
        batch at a time: at neuron or feature scale each mask is large, so a whole grid of them is
        never held at once (only ``mask_batch``, within the memory budget)."""
        out = [
            self(stack([b() for b in builders[i : i + self.mask_batch]]), progress=progress)
            for i in range(0, len(builders), self.mask_batch)
        ]
        return torch.cat(out)

    def baselines(self) -> Baselines:
        """Metric of the full model and of the empty circuit."""
        full = self(self.graph.full_mask()[None])[0]  # (two calls, not one stacked pair: at
        empty = self(self.graph.empty_mask()[None])[0]  # feature scale a mask is large)
        return Baselines(full=float(full), empty=float(empty))


def _offload(offload: bool | str, device: torch.device, cache_bytes: float) -> bool:
    if offload not in (True, False, "auto"):
        raise ConfigError(f"offload must be True, False or 'auto', got {offload!r}")
    if offload != "auto":
        return bool(offload)
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return cache_bytes > free / 4


@dataclass
class Baselines:
    """Metric of the full model (every edge) and of the empty circuit (no edge)."""

    full: float
    empty: float

    @overload
    def faithfulness(self, value: torch.Tensor) -> torch.Tensor: ...
    @overload
    def faithfulness(self, value: float) -> float: ...
    def faithfulness(self, value: torch.Tensor | float) -> torch.Tensor | float:
        gap = self.full - self.empty
        if abs(gap) < 1e-12:
            raise TaskError(
                "the full model and the empty circuit score the same on this task, so faithfulness is undefined; "
                "check that clean and corrupted prompts differ in what the metric reads"
            )
        return (value - self.empty) / gap
