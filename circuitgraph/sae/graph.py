"""Graphs whose nodes include SAE features: choosing which features become nodes.

Every feature of a site could be a node, but a 16× SAE on GPT-2 has 12,288 features per site and
the score matrix is dense ``[n_src, n_dst]``. Features that are zero on every prompt of the task
(clean and corrupted) have zero attribution and contribute nothing to the clean or corrupted
run, so ``features="active"`` (default) makes only the others nodes; ``features=k`` keeps the k
features per site with the largest node attribution ``|Σ Δf_i · ∂m/∂f_i|`` (the first stage of
Marks et al.'s two-stage search). Features that are not nodes stay in the model as the site's
``rest`` node, so the graph still computes exactly what the model computes.
"""

from __future__ import annotations

import torch

from circuitgraph.graph.graph import Architecture, Graph, config_hash
from circuitgraph.graph.compat import hook_flags
from circuitgraph.graph.sites import make_site
from circuitgraph.sae.splice import _as_list, validate


def feature_graph(model, saes, task=None, features="active", split_qkv: bool = True) -> Graph:
    """A graph of ``model`` with an SAE site per SAE in ``saes`` (one, a list or a
    ``{hook_name: SAE}`` dict), the SAEs attached.

    ``features``: ``"active"`` (features non-zero on some real token of the task's clean or
    corrupted prompts; needs ``task``), ``"all"``, an int k (top k per site by node attribution;
    needs ``task``) or ``{hook_name: [ids]}``.
    """
    from circuitgraph.graph.compat import check_model

    check_model(model)
    saes = _as_list(saes)
    if not saes:
        raise ValueError("feature_graph needs at least one SAE")
    for sae in saes:
        make_site(sae.hook_name, sae.d_sae, [], sae.hook_name_out)  # a site kind the graph supports
    validate(model, saes)  # hook exists, one SAE per site, d_in matches the activation width
    device = next(model.parameters()).device
    for sae in saes:  # (feature choice runs them before any engine call would move them)
        sae.to(device)
    if isinstance(features, dict):
        unknown = set(features) - {s.hook_name for s in saes}
        if unknown:
            raise ValueError(f"features given for {sorted(unknown)}, which have no SAE; SAEs are at {[s.hook_name for s in saes]}")
        chosen = {s.hook_name: features.get(s.hook_name, []) for s in saes}
    elif features == "all":
        chosen = {s.hook_name: range(s.d_sae) for s in saes}
    elif features == "active" or (isinstance(features, int) and not isinstance(features, bool)):
        if task is None:
            raise ValueError(f"features={features!r} chooses features from the task's prompts: pass task=...")
        if isinstance(features, int) and features < 0:
            raise ValueError(f"features=k needs k ≥ 0, got {features}")
        chosen = _active(model, saes, task) if features == "active" else _top_k(model, saes, task, features)
    else:
        raise ValueError(f"features must be 'active', 'all', an int k or {{hook_name: [ids]}}, got {features!r}")
    cfg = model.cfg
    graph = Graph(
        Architecture.from_config(cfg), split_qkv=split_qkv, device=cfg.device or "cpu",
        model_name=str(getattr(cfg, "model_name", "") or ""), model_hash=config_hash(cfg),
        sites=[make_site(s.hook_name, s.d_sae, chosen[s.hook_name], s.hook_name_out) for s in saes],
    )
    return graph.attach_saes(saes)


def _probe(model, saes) -> Graph:
    """A graph with every SAE site and no feature nodes: the engine's splice and captures, for
    choosing features before the real graph exists."""
    cfg = model.cfg
    return Graph(Architecture.from_config(cfg), device=cfg.device or "cpu",
                 sites=[make_site(s.hook_name, s.d_sae, [], s.hook_name_out) for s in saes]).attach_saes(saes)


def _active(model, saes, task) -> dict[str, list[int]]:
    """Per site, the features non-zero on some real (unpadded) token of the clean or corrupted prompts."""
    from circuitgraph.engine.activations import raw_sources
    from circuitgraph.engine.batching import example_chunks

    probe = _probe(model, saes)
    task.prepare(model)
    seen = {s.name: torch.zeros(s.d_sae, dtype=torch.bool, device=task.device) for s in probe.sites}
    for _, chunk, _ in example_chunks(task, 64):
        real = torch.ones_like(chunk.clean, dtype=torch.bool) if chunk.attention_mask is None else chunk.attention_mask.bool()
        for tokens in (chunk.clean, chunk.corrupted):
            raw = raw_sources(model, probe, chunk, tokens)
            for s in probe.sites:
                seen[s.name] |= ((raw[f"acts:{s.name}"] != 0) & real[..., None]).flatten(0, -2).any(0)
    return {s.hook_name: seen[s.name].nonzero()[:, 0].tolist() for s in probe.sites}


def _top_k(model, saes, task, k: int) -> dict[str, list[int]]:
    """Per site, the k features with the largest |Σ_{b,p} (f(corrupted) − f(clean)) · ∂m/∂f| at
    the clean run (attribution patching at node level). The gradient is taken with the engine's
    own splice, whose error term is a separate function of the site's input: with the error
    computed as ``x − recon(f)``, ∂m/∂f would be exactly zero."""
    from circuitgraph.attribution.gradients import frozen_params
    from circuitgraph.engine.activations import raw_sources, resid_pre0
    from circuitgraph.engine.batching import example_chunks
    from circuitgraph.engine.sites import site_hooks

    graph = _probe(model, saes)
    task.prepare(model)
    scores = {s.name: torch.zeros(s.d_sae, device=task.device) for s in graph.sites}
    leaf = [(resid_pre0(), lambda x, hook: x.detach().requires_grad_(True))]  # weights are frozen
    for _, chunk, weight in example_chunks(task, 64):
        corrupted = raw_sources(model, graph, chunk, chunk.corrupted)
        clean, grads = {}, {}
        with torch.enable_grad(), frozen_params(model, *saes), hook_flags(model), \
                model.hooks(fwd_hooks=leaf + site_hooks(model, graph, clean, grads, act_grads=True)):
            values = chunk.score(chunk.run(model, chunk.clean), " while choosing SAE features")
            values.mean().backward()
        for s in graph.sites:
            delta = corrupted[f"acts:{s.name}"] - clean[f"acts:{s.name}"]
            scores[s.name] += weight * (delta * grads[f"act:{s.name}"]).flatten(0, -2).sum(0)
    return {s.hook_name: scores[s.name].abs().topk(min(k, s.d_sae)).indices.tolist() for s in graph.sites}
