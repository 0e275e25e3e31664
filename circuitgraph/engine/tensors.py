"""The engine's containers for activations: detached float32 copies, and source activations kept
as compactly as their readers allow (dense d-vectors, or a coefficient times a fixed direction)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


def store_hook(buf: dict, key: str):
    """A hook that keeps a detached copy of what passes (an activation, or in a backward hook its
    gradient) in ``buf[key]`` (see :func:`frozen` for the dtype) and changes nothing."""

    def hook(x, hook):
        buf[key] = frozen(x)

    return hook


def frozen(t: torch.Tensor) -> torch.Tensor:
    """Detached, and in float32 at least: the engine's own arithmetic (contractions, Jacobians,
    ablation deltas) runs in float32 even for half-precision models, whose bf16 edge scores would
    be mostly rounding error; float64 models stay float64. (The one exception, a bf16 model's two
    big contraction products, is ``attribution.gradients.PROJECT_IN_MODEL_DTYPE``.)"""
    t = t.detach()
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def reusable(workspace: dict, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A scratch tensor of ``shape`` (``like``'s dtype and device), kept in ``workspace`` under
    ``name`` and handed out again while they match; its contents are the caller's until the next
    request. On a CPU the allocator returns a buffer of tens of MB to the OS when it is freed, so a
    fresh one costs page faults on every use: EAP-IG behind post-norms paid that per layer per step."""
    t = workspace.get(name)
    if t is None or t.shape != shape or t.dtype != like.dtype or t.device != like.device:
        t = workspace[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return t


@dataclass
class LowRankSources:
    """Writes ``coef[i, b, p] · dirs[i]``: neurons (dirs = W_out rows) or SAE features; behind a
    norm after the sublayer (to first order), plus ``field_coef[i, b, p] · field[b, p]``, a
    per-position direction all of the block's sources share."""

    rows: torch.Tensor  # [n] source indices in the graph
    coef: torch.Tensor  # [n, B, P]
    dirs: torch.Tensor  # [n, d]
    field_coef: torch.Tensor | None = None  # [n, B, P]
    field: torch.Tensor | None = None  # [B, P, d]


@dataclass
class SourceDeltas:
    """a(ablated) − a(clean) for every source: dense rows (input, heads, MLPs, ``rest`` nodes)
    in one compact tensor, neurons as low-rank blocks."""

    dense: torch.Tensor  # [n_dense, B, P, d]
    dense_rows: torch.Tensor  # [n_dense] sorted graph row indices
    lowrank: list[LowRankSources]

    @property
    def contiguous(self) -> bool:
        return not self.lowrank


@dataclass
class CompactSources:
    """Source activations with SAE features and neurons kept as coefficients: ``dense``
    ``[n_dense, B, P, d]`` for every other row (in graph order; see
    :func:`~circuitgraph.engine.sources.coefficient_blocks`) and ``coefs`` ``{group: [n, B, P]}``
    (each feature writes coef · W_dec[i], each neuron post · W_out[i]). What a patched
    forward needs of the ablated run, at a fraction of ``[n_src, B, P, d]``."""

    dense: torch.Tensor
    coefs: dict[str, torch.Tensor]
    n_src: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n_src, *self.dense.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return self.dense.dtype

    @property
    def device(self) -> torch.device:
        return self.dense.device

    def to(self, *args, **kw) -> CompactSources:
        return CompactSources(
            self.dense.to(*args, **kw), {k: v.to(*args, **kw) for k, v in self.coefs.items()}, self.n_src
        )

    def pin_memory(self) -> CompactSources:
        return CompactSources(self.dense.pin_memory(), {k: v.pin_memory() for k, v in self.coefs.items()}, self.n_src)


@contextmanager
def frozen_params(*modules: nn.Module) -> Iterator[None]:
    """Skip weight gradients (of the model and of any SAEs spliced into it): attribution needs
    only activation gradients, which halves backward and leaves no ``.grad`` behind."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
