"""Ablations: what an ablated edge carries instead of its clean source activation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from circuitgraph.engine.sources import raw_sources, stack_sources
from circuitgraph.engine.tensors import CompactSources
from circuitgraph.errors import ConfigError, TaskError
from circuitgraph.graph import Graph

ABLATIONS = ("corrupted", "zero", "mean", "resample")


@dataclass
class Ablation:
    """What an ablated edge carries instead of its clean source activation.

    corrupted  the source's activation on the corrupted prompt (activation patching; default)
    zero       zero
    mean       the per-position mean over ``reference`` token ids (default: the task's clean prompts)
    resample   the source's activation on another example's clean prompt (seeded derangement)
    """

    kind: str = "corrupted"
    reference: torch.Tensor | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ABLATIONS:
            raise ConfigError(f"unknown ablation {self.kind!r}; choose one of {list(ABLATIONS)}")
        self._mean: dict[str, torch.Tensor] | None = None  # raw capture name → mean [pos, ...]
        self._perm: torch.Tensor | None = None

    @classmethod
    def coerce(cls, ablation: str | Ablation) -> Ablation:
        return ablation if isinstance(ablation, Ablation) else cls(kind=ablation)

    def prepare(self, model: Any, graph: Graph, task: Any) -> Ablation:
        """Compute what is shared across batches (the mean, the resampling permutation)."""
        if self.kind == "mean" and self._mean is None:
            ref = task.clean if self.reference is None else torch.as_tensor(self.reference, device=task.device)
            if ref.ndim != 2 or ref.shape[1] != task.seq_len:
                raise TaskError(f"mean-ablation reference must be [n, {task.seq_len}] token ids, got {list(ref.shape)}")
            mask = task.attention_mask if self.reference is None else None
            total: dict[str, torch.Tensor] = {}
            count: torch.Tensor | None = None
            for i in range(0, ref.shape[0], 64):
                m = mask[i : i + 64] if mask is not None else torch.ones(ref[i : i + 64].shape, device=ref.device)
                raw = raw_sources(model, graph, _Plain(mask[i : i + 64] if mask is not None else None), ref[i : i + 64])
                for k, v in raw.items():
                    w = m.to(v.dtype).view(*m.shape, *([1] * (v.ndim - 2)))
                    total[k] = total.get(k, 0) + (v * w).sum(0)  # [pos, ...]
                count = m.sum(0) if count is None else count + m.sum(0)
            self._mean = {}
            if count is not None:  # (an empty reference leaves nothing to average)
                self._mean = {
                    k: v / count.clamp(min=1).to(v.dtype).view(-1, *([1] * (v.ndim - 1))) for k, v in total.items()
                }
        if self.kind == "resample" and self._perm is None:
            n = task.n_examples
            if n < 2:
                raise TaskError("resample ablation needs at least 2 examples to resample from")
            g = torch.Generator().manual_seed(self.seed)
            shift = torch.randint(1, n, (n,), generator=g)
            self._perm = ((torch.arange(n) + shift) % n).to(task.device)  # never maps an example to itself
        return self

    def activations(
        self, model: Any, graph: Graph, task: Any, idx: slice | torch.Tensor, chunk: Any, compact: bool = False
    ) -> torch.Tensor | CompactSources:
        """Ablated source activations ``[n_src, batch, pos, d]`` for examples ``idx`` of ``task``
        (``chunk`` is ``task.select(idx)``); ``compact``: SAE features as coefficients."""
        return stack_sources(model, graph, self.raw(model, graph, task, idx, chunk), compact=compact)

    def raw(self, model: Any, graph: Graph, task: Any, idx: slice | torch.Tensor, chunk: Any) -> dict:
        """The same as raw captures (see :func:`raw_sources`)."""
        B, P = chunk.clean.shape
        if self.kind == "corrupted":
            return raw_sources(model, graph, chunk, chunk.corrupted)
        if self.kind == "mean":
            assert self._mean is not None  # set by prepare()
            return {k: v[None].expand(B, *v.shape).contiguous() for k, v in self._mean.items()}
        if self.kind == "zero":
            like = raw_sources(model, graph, _Plain(None), chunk.clean[:1, :1])  # shapes and dtypes only
            return {k: torch.zeros((B, P, *v.shape[2:]), dtype=v.dtype, device=v.device) for k, v in like.items()}
        assert self._perm is not None  # set by prepare()
        partner = self._perm[idx]
        return raw_sources(
            model,
            graph,
            _Plain(task.attention_mask[partner] if task.attention_mask is not None else None),
            task.clean[partner],
        )

    def to_dict(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "reference": "custom" if self.reference is not None else None}


class _Plain:
    """A minimal stand-in for a task when running reference tokens with a given mask."""

    def __init__(self, attention_mask):
        self.attention_mask = attention_mask

    def run(self, model, tokens, **kw):
        if self.attention_mask is not None:
            kw["attention_mask"] = self.attention_mask
        return model(tokens, **kw)
