"""Node attribution, and the one selector that turns it into graph nodes: which neurons split an
MLP (:func:`top_neurons`) and which SAE features become nodes (:func:`feature_graph`).

A node's attribution is (a(ablated) − a(clean)) · ∂m/∂a, summed over positions and averaged over
examples (attribution patching at the node: the first stage of Marks et al.'s two-stage search).
Nodes that are not chosen stay in the model as a ``rest`` node (``m{L}.rest``, ``{site}.rest``),
so the graph still computes exactly what the model computes.

Features that are zero on every prompt of the task (clean and corrupted) have zero attribution and
contribute nothing to either run, so ``features="active"`` (default) makes only the others nodes;
``features=k`` keeps the k features per site with the largest |attribution|.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any, TypeVar

import torch

from circuitgraph.attribution.gradients import frozen_params
from circuitgraph.engine.batching import example_chunks
from circuitgraph.engine.sites import site_hooks
from circuitgraph.engine.sources import raw_sources
from circuitgraph.engine.tensors import store_hook
from circuitgraph.errors import ConfigError, GraphError
from circuitgraph.graph import Graph
from circuitgraph.models.backend import check_model
from circuitgraph.models.sae import as_sae_list

Key = TypeVar("Key", bound=Hashable)


def largest_k(attributions: Mapping[Key, torch.Tensor], k: int) -> dict[Key, list[int]]:
    """The selector: per group (a layer, an SAE site), the sorted ids of the ``k`` entries with
    the largest |attribution|."""
    if k < 0:
        raise ConfigError(f"k must be ≥ 0, got {k}")
    return {key: sorted(a.abs().topk(min(k, a.numel())).indices.tolist()) for key, a in attributions.items()}


def neuron_attribution(model: Any, task: Any, ablation: str = "corrupted") -> dict[int, torch.Tensor]:
    """``{layer: [d_mlp]}`` node attributions of every MLP neuron (one forward per prompt set,
    one backward). ``ablation`` is ``corrupted`` or ``zero``."""
    bk = check_model(model, neurons=True)
    if bk.cfg.attn_only:
        raise GraphError("this model has no MLP neurons (attn_only)")
    if ablation not in ("corrupted", "zero"):
        raise ConfigError(f"neuron selection supports ablation 'corrupted' or 'zero', got {ablation!r}")
    task.check_model(model)
    task.prepare(model)
    names = [bk.mlp_post_hook(layer) for layer in range(bk.cfg.n_layers)]
    ablated: dict[str, torch.Tensor] = {}
    if ablation == "corrupted":
        with torch.no_grad(), bk.hooks(fwd_hooks=[(n, store_hook(ablated, n)) for n in names]):
            task.run(model, task.corrupted)
    clean: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    with (
        torch.enable_grad(),
        frozen_params(model),
        bk.hooks(
            fwd_hooks=[(bk.embed_hook(), _leaf)] + [(n, store_hook(clean, n)) for n in names],
            bwd_hooks=[(n, store_hook(grads, n)) for n in names],
        ),
    ):
        task.score(task.run(model, task.clean), " during neuron attribution").mean().backward()
    out = {}
    for layer, n in enumerate(names):
        delta = (ablated[n] if ablation == "corrupted" else torch.zeros_like(clean[n])) - clean[n]
        out[layer] = (delta * grads[n]).sum((0, 1))  # grads already carry the 1/batch of the mean
    return out


def top_neurons(
    model: Any, task: Any, k: int, ablation: str = "corrupted", layers: list[int] | None = None
) -> dict[int, list[int]]:
    """The ``k`` neurons per layer with the largest |attribution|: pass the result to
    ``Graph.from_model(model, neurons=...)``."""
    if k < 1:
        raise ConfigError(f"k must be ≥ 1, got {k}")
    attr = neuron_attribution(model, task, ablation)
    return largest_k({layer: attr[layer] for layer in (list(attr) if layers is None else layers)}, k)


def feature_attribution(model: Any, saes: Any, task: Any) -> dict[str, torch.Tensor]:
    """``{hook_name: [d_sae]}`` node attributions Σ_{b,p} (f(corrupted) − f(clean)) · ∂m/∂f of every
    feature, at the clean run. The gradient is taken with the engine's own splice, whose error
    term is a separate function of the site's input: with the error computed as ``x − recon(f)``,
    ∂m/∂f would be exactly zero."""
    graph = _probe(model, saes)
    bk = check_model(model)
    task.prepare(model)
    scores = {s.hook_name: torch.zeros(s.d_sae, device=task.device) for s in graph.sites}
    for _, chunk, weight in example_chunks(task, 64):
        corrupted = raw_sources(model, graph, chunk, chunk.corrupted)
        clean: dict[str, torch.Tensor] = {}
        grads: dict[str, torch.Tensor] = {}
        with (
            torch.enable_grad(),
            frozen_params(model, *graph.saes.values()),
            bk.flags(),
            bk.hooks(fwd_hooks=[(bk.embed_hook(), _leaf)] + site_hooks(model, graph, clean, grads, act_grads=True)),
        ):
            values = chunk.score(chunk.run(model, chunk.clean), " while choosing SAE features")
            values.mean().backward()
        for s in graph.sites:
            delta = corrupted[f"acts:{s.name}"] - clean[f"acts:{s.name}"]
            scores[s.hook_name] += weight * (delta * grads[f"act:{s.name}"]).flatten(0, -2).sum(0)
    return scores


def active_features(model: Any, saes: Any, task: Any) -> dict[str, list[int]]:
    """Per SAE, the features non-zero on some real (unpadded) token of the clean or corrupted prompts."""
    probe = _probe(model, saes)
    task.prepare(model)
    seen = {s.name: torch.zeros(s.d_sae, dtype=torch.bool, device=task.device) for s in probe.sites}
    for _, chunk, _ in example_chunks(task, 64):
        mask = chunk.attention_mask
        real = torch.ones_like(chunk.clean, dtype=torch.bool) if mask is None else mask.bool()
        for tokens in (chunk.clean, chunk.corrupted):
            raw = raw_sources(model, probe, chunk, tokens)
            for s in probe.sites:
                seen[s.name] |= ((raw[f"acts:{s.name}"] != 0) & real[..., None]).flatten(0, -2).any(0)
    return {s.hook_name: seen[s.name].nonzero()[:, 0].tolist() for s in probe.sites}


def feature_graph(
    model: Any,
    saes: Any,
    task: Any = None,
    features: str | int | Mapping[str, Iterable[int]] = "active",
    split_qkv: bool = True,
    neurons: bool | dict | None = None,
) -> Graph:
    """A graph of ``model`` with an SAE site per SAE in ``saes`` (one, a list or a
    ``{hook_name: SAE}`` dict), the SAEs attached.

    ``features``: ``"active"`` (features non-zero on some real token of the task's clean or
    corrupted prompts; needs ``task``), ``"all"``, an int k (top k per site by node attribution;
    needs ``task``) or ``{hook_name: [ids]}``. ``neurons`` also splits MLPs into neurons (as in
    :meth:`Graph.from_model`; a transcoder's layer keeps none).
    """
    saes = as_sae_list(saes)
    if features == "active" or (isinstance(features, int) and not isinstance(features, bool)):
        if task is None:
            raise ConfigError(f"features={features!r} chooses features from the task's prompts: pass task=...")
        if isinstance(features, int) and features < 0:
            raise ConfigError(f"features=k needs k ≥ 0, got {features}")
        _probe(model, saes)  # refuses SAEs that do not fit before anything runs
        device = next(model.parameters()).device
        for sae in saes:  # (feature choice runs them before any engine call would move them)
            sae.to(device)
        if isinstance(features, int):
            features = largest_k(feature_attribution(model, saes, task), features)
        else:  # "active"
            features = active_features(model, saes, task)
    return Graph.from_model(model, split_qkv=split_qkv, neurons=neurons, saes=saes, features=features)


def _probe(model: Any, saes: Any) -> Graph:
    """A graph with every SAE site and no feature nodes: the engine's splice and captures, for
    choosing features before the real graph exists."""
    saes = as_sae_list(saes)
    return Graph.from_model(model, saes=saes, features={s.hook_name: [] for s in saes})


def _leaf(x: torch.Tensor, hook: Any) -> torch.Tensor:
    """The embedding as a fresh leaf, so one backward reaches every activation (weights are frozen)."""
    return x.detach().requires_grad_(True)
