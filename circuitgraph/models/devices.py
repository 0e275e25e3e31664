"""Models split across devices: a bridge booted with a ``device_map`` (``load_bridge(path,
device_map=...)``), or any model whose parameters live on more than one device.

The engine keeps its own tensors (sources, deltas, gradients, scores) on one device, the one
:attr:`Backend.device` names (the embedding's), while each layer's weights and activations stay on
that layer's device. They meet only at the backend seam, so that is where they move:

* what the engine reads from the model (weights, norm gains and biases, neuron reads, and every
  activation or gradient a hook sees) is moved to the engine's device;
* what the engine hands to the model (a hook's return value, the residual stream given to
  ``run_layers`` / ``unembed`` / ``mlp``, the input of a norm module) is moved to the device of
  the layer that uses it.

A model on one device is never wrapped, so it pays nothing. Logits come back where the tokens went
in: accelerate's dispatch (``io_same_device``) does that for a bridge split by a ``device_map``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from circuitgraph.models.backend import Backend, NeuronRead, register_backend_wrapper


def parameter_devices(model: Any) -> list[torch.device]:
    """The distinct devices of ``model``'s parameters, in the order they first appear."""
    seen: dict[torch.device, None] = {}
    for p in model.parameters():
        seen.setdefault(p.device)
    return list(seen)


def is_split(model: Any) -> bool:
    """Whether ``model``'s parameters live on more than one device (stops at the second one)."""
    first = None
    for p in model.parameters():
        if first is None:
            first = p.device
        elif p.device != first:
            return True
    return False


def module_device(module: Any, default: torch.device) -> torch.device:
    """Where ``module`` computes: its first parameter's device (``default`` when it has none)."""
    p = next(module.parameters(), None) if isinstance(module, nn.Module) else None
    return default if p is None else p.device


def _move(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Every crossing of the seam (tests replace it to simulate a second device on a CPU)."""
    return t.to(device)


def follow_forward(fn: Callable, device: torch.device) -> Callable:
    """A forward hook that runs ``fn`` on ``device`` and returns its result to the activation's own
    device. Across devices the model goes on with the moved copy (or ``fn``'s result), so that
    gradients taken with respect to what ``fn`` stored reach the model's path."""

    def hook(x: torch.Tensor, hook: Any) -> Any:
        moved = _move(x, device)
        out = fn(moved, hook=hook)
        if moved is x:  # same device: exactly the hook as written
            return out
        return _move(moved if out is None else out, x.device)

    return hook


def follow_backward(fn: Callable, device: torch.device) -> Callable:
    """A backward hook that reads the gradient on ``device``; a replacement gradient goes back to
    the gradient's own device."""

    def hook(grad: torch.Tensor, hook: Any) -> Any:
        out = fn(_move(grad, device), hook=hook)
        return out if out is None else _move(out, grad.device)

    return hook


class _OnItsDevice(nn.Module):
    """A model module (a norm) called with tensors from the engine's device: the input goes to the
    module's device, the output comes back."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.inner = module
        self.device = device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _move(self.inner(_move(x, self.device)), x.device)


class SplitModelBackend(Backend):
    """The backend of a model split across devices: ``inner``'s answers, with tensors moved across
    the seam as the module docstring says. The engine's device is the embedding's (where tokens go
    in). Every method of :class:`Backend` not written out below is ``inner``'s own (facts and hook
    names do not depend on devices)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.model = inner.model
        self._device = module_device(getattr(inner.model, "embed", None), inner.device)

    def __getattr__(self, name: str) -> Any:  # what a particular backend adds beyond Backend
        if name == "inner":  # not set yet (e.g. while copying): no recursion through self.inner
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def cfg(self) -> Any:
        return self.inner.cfg

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def name(self) -> str:
        return self.inner.name

    def layer_device(self, layer: int) -> torch.device:
        """The device of block ``layer``'s weights."""
        return module_device(self.model.blocks[layer], self._device)

    def _here(self, t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else _move(t, self._device)

    # ------------------------------------------------------------------ weights, on the engine's device
    def W_qkv(self, layer: int, letter: str) -> torch.Tensor:
        return _move(self.inner.W_qkv(layer, letter), self._device)

    def W_O(self, layer: int) -> torch.Tensor:
        return _move(self.inner.W_O(layer), self._device)

    def b_O(self, layer: int) -> torch.Tensor | None:
        return self._here(self.inner.b_O(layer))

    def W_out(self, layer: int) -> torch.Tensor:
        return _move(self.inner.W_out(layer), self._device)

    def b_out(self, layer: int) -> torch.Tensor | None:
        return self._here(self.inner.b_out(layer))

    def neuron_reads(self, layer: int) -> list[NeuronRead]:
        reads = self.inner.neuron_reads(layer)
        return [dataclasses.replace(r, W=_move(r.W, self._device), b=self._here(r.b)) for r in reads]

    def norm(self, layer: int, which: int, post: bool = False) -> nn.Module | None:
        module = self.inner.norm(layer, which, post)
        if module is None:
            return None
        return _OnItsDevice(module, module_device(module, self._device))

    def norm_gain(self, layer: int, which: int, post: bool = False) -> torch.Tensor | None:
        return self._here(self.inner.norm_gain(layer, which, post))

    def norm_bias(self, layer: int, which: int, post: bool = False) -> torch.Tensor | None:
        return self._here(self.inner.norm_bias(layer, which, post))

    def normalize(self, layer: int, which: int, x: torch.Tensor, post: bool = False) -> torch.Tensor:
        device = module_device(self.inner.norm(layer, which, post), x.device)
        return _move(self.inner.normalize(layer, which, _move(x, device), post), x.device)

    # ------------------------------------------------------------------ running
    def hooks(self, fwd_hooks: list | None = None, bwd_hooks: list | None = None) -> Any:
        d = self._device
        return self.inner.hooks(
            fwd_hooks=[(name, follow_forward(fn, d)) for name, fn in fwd_hooks or []],
            bwd_hooks=[(name, follow_backward(fn, d)) for name, fn in bwd_hooks or []],
        )

    def run_layers(
        self, resid: torch.Tensor, start: int, stop: int | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        n = self.cfg.n_layers
        device = self.layer_device(start) if start < n else self._unembed_device(resid.device)
        mask = None if attention_mask is None else _move(attention_mask, device)
        return _move(self.inner.run_layers(_move(resid, device), start, stop, attention_mask=mask), resid.device)

    def unembed(self, resid: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        device = self._unembed_device(resid.device)
        mask = None if attention_mask is None else _move(attention_mask, device)
        return _move(self.inner.unembed(_move(resid, device), attention_mask=mask), resid.device)

    def mlp(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        return _move(self.inner.mlp(layer, _move(resid, self.layer_device(layer))), resid.device)

    def _unembed_device(self, default: torch.device) -> torch.device:
        return module_device(getattr(self.model, "unembed", None), default)


def _forward_to_inner(name: str) -> Callable:
    def method(self: SplitModelBackend, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"``inner.{name}``: the same on every device."
    return method


def _plain_methods() -> Iterator[str]:
    """Backend's methods that SplitModelBackend does not write out: they are inner's own."""
    for name, value in vars(Backend).items():
        if callable(value) and not name.startswith("_") and name not in vars(SplitModelBackend):
            yield name


for _name in list(_plain_methods()):
    setattr(SplitModelBackend, _name, _forward_to_inner(_name))


def split_aware(backend: Backend) -> Backend:
    """``backend`` as is for a model on one device; wrapped in :class:`SplitModelBackend` otherwise."""
    if isinstance(backend, SplitModelBackend) or not is_split(backend.model):
        return backend
    return SplitModelBackend(backend)


register_backend_wrapper(split_aware)
