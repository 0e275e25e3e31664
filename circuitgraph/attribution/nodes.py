"""Node-level attribution for choosing which neurons become graph nodes.

A neuron's attribution is (post(ablated) − post(clean)) · ∂m/∂post, summed over positions and
averaged over examples (attribution patching at the node). ``top_neurons`` keeps the k largest
|attribution| per layer; the graph then adds an ``m{L}.rest`` node for the others, so it still
computes exactly what the model computes.
"""

from __future__ import annotations

import torch

from circuitgraph.attribution.gradients import frozen_params
from circuitgraph.engine.activations import store_hook
from circuitgraph.graph.compat import check_model


def neuron_attribution(model, task, ablation: str = "corrupted") -> dict[int, torch.Tensor]:
    """``{layer: [d_mlp]}`` node attributions of every MLP neuron (one forward per prompt set,
    one backward). ``ablation`` is ``corrupted`` or ``zero``."""
    check_model(model, neurons=True)
    if model.cfg.attn_only:
        raise ValueError("this model has no MLP neurons (attn_only)")
    if ablation not in ("corrupted", "zero"):
        raise ValueError(f"neuron selection supports ablation 'corrupted' or 'zero', got {ablation!r}")
    task.check_model(model)
    task.prepare(model)
    L = model.cfg.n_layers
    names = [f"blocks.{layer}.mlp.hook_post" for layer in range(L)]
    ablated: dict[str, torch.Tensor] = {}
    if ablation == "corrupted":
        with torch.no_grad(), model.hooks(fwd_hooks=[(n, store_hook(ablated, n)) for n in names]):
            task.run(model, task.corrupted)
    clean, grads = {}, {}
    def leaf(x, hook):
        return x.detach().requires_grad_(True)

    with torch.enable_grad(), frozen_params(model), model.hooks(
        fwd_hooks=[("blocks.0.hook_resid_pre", leaf)] + [(n, store_hook(clean, n)) for n in names],
        bwd_hooks=[(n, store_hook(grads, n)) for n in names],
    ):
        task.score(task.run(model, task.clean), " during neuron attribution").mean().backward()
    out = {}
    for layer, n in enumerate(names):
        delta = (ablated[n] if ablation == "corrupted" else torch.zeros_like(clean[n])) - clean[n]
        out[layer] = (delta * grads[n]).sum((0, 1))  # grads already carry the 1/batch of the mean
    return out


def top_neurons(model, task, k: int, ablation: str = "corrupted", layers: list[int] | None = None) -> dict[int, list[int]]:
    """The ``k`` neurons per layer with the largest |attribution|: pass the result to
    ``Graph.from_model(model, neurons=...)``."""
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    attr = neuron_attribution(model, task, ablation)
    layers = list(attr) if layers is None else layers
    return {layer: sorted(attr[layer].abs().topk(min(k, attr[layer].numel())).indices.tolist()) for layer in layers}
