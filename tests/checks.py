"""The checks every model family's graph must pass, shared by the test files.

* :func:`full_and_empty`: the full circuit is the clean run, the empty circuit the corrupted run.
* :func:`source_fd_error`: for every source node, its EAP scores summed over its outgoing edges
  equal the derivative of the metric when that source moves toward its ablated value (central
  finite difference of patched runs).
* :func:`edge_fd_error`: the same, edge by edge (SAE graphs, whose features are sparse).
* :func:`single_edge_reference`: the effect of removing one edge, by a run of the model patched
  with TransformerLens's own hooks and modules and the SAE's own encoder (written from the model,
  not from the engine), for ``exact`` scores to equal; at one position on position-resolved
  graphs. It runs on a HookedTransformer and on a TransformerBridge alike (both expose the same
  hook names, weight views and norm modules).
"""

from __future__ import annotations

from typing import Any

import torch

from circuitgraph.attribution import attribute
from circuitgraph.engine import Ablation, source_activations
from circuitgraph.engine.patching import patched_logits, tiled
from circuitgraph.graph import parse_node
from circuitgraph.models.sae import SAE
from circuitgraph.tasks import Task


def _activations(model, graph, task):
    """Ablated (corrupted) and clean source activations ``[n_src, B, P, d]``."""
    A = (
        Ablation("corrupted")
        .prepare(model, graph, task)
        .activations(model, graph, task, slice(0, task.n_examples), task)
    )
    return A, source_activations(model, graph, task, task.clean)


def _metrics(model, graph, task, ablated, keep) -> torch.Tensor:
    """Mean metric of each patched run, ``keep [K, n_src, n_dst]`` → ``[K]``."""
    K = keep.shape[0]
    return tiled(task, K).score(patched_logits(model, graph, task, ablated, keep)).view(K, -1).mean(1)


def full_and_empty(model, graph, task) -> tuple[float, float]:
    """Largest logit error of the full circuit against the clean run and of the empty circuit
    against the corrupted run."""
    A, _ = _activations(model, graph, task)
    full = patched_logits(model, graph, task, A, graph.valid)
    empty = patched_logits(model, graph, task, A, torch.zeros_like(graph.valid))
    kw = {} if task.attention_mask is None else {"attention_mask": task.attention_mask}
    return (
        float((full - model(task.clean, **kw)).detach().abs().max()),
        float((empty - model(task.corrupted, **kw)).detach().abs().max()),
    )


def source_fd_error(model, graph, task, method: str = "eap", eps: float = 1e-5) -> float:
    """Worst relative error, over source nodes, of Σ_v score(u→v) against d/dε of the metric with
    every out-edge of u carrying ``clean + ε(ablated − clean)`` (central difference). For
    ``eap`` the two are equal exactly (to rounding); use float64 models."""
    scores = attribute(model, graph, task, method=method, progress=False, scores_dtype=torch.float64)
    A, C = _activations(model, graph, task)
    n = graph.n_src
    keep = graph.valid.expand(n, -1, -1).clone()
    keep[torch.arange(n), torch.arange(n)] = False  # mask u: every out-edge of source u removed
    plus = _metrics(model, graph, task, C + eps * (A - C), keep)
    minus = _metrics(model, graph, task, C - eps * (A - C), keep)
    fd = (plus - minus) / (2 * eps)
    total = scores.sum(1)
    assert fd.abs().max() > 1e-6 and (total.abs() > 1e-8).sum() > n // 2  # a real check, not zeros
    return float(((total - fd).abs() / (fd.abs().max() * 1e-3 + fd.abs())).max())


def edge_fd_error(model, graph, task, n_edges: int, eps: float = 1e-5, per_kind: int = 0) -> float:
    """EAP scores vs the derivative of the *patched* metric along (ablated − clean), edge by edge
    (central finite difference), for ``n_edges`` edges (half drawn among the non-zero scores:
    features are sparse), plus ``per_kind`` edges of every (source kind, reader kind) pair.
    Returns the worst relative error."""
    scores = attribute(model, graph, task, method="eap", progress=False, scores_dtype=torch.float64)
    A, C = _activations(model, graph, task)
    gen = torch.Generator().manual_seed(0)
    edges, live = graph.valid.nonzero(), (scores.abs() > 1e-6).nonzero()
    kinds = [graph.edge(e) for e in edges_of_every_kind(graph, per_kind)] if per_kind else []
    pick = torch.cat(
        [
            live[torch.randperm(len(live), generator=gen)[: n_edges // 2]],
            edges[torch.randperm(len(edges), generator=gen)[: n_edges - n_edges // 2]],
            torch.tensor(kinds, dtype=torch.long).reshape(-1, 2),
        ]
    )
    keep = graph.valid.expand(len(pick), -1, -1).clone()
    keep[torch.arange(len(pick)), pick[:, 0], pick[:, 1]] = False
    plus = _metrics(model, graph, task, C + eps * (A - C), keep)
    minus = _metrics(model, graph, task, C - eps * (A - C), keep)
    fd = (plus - minus) / (2 * eps)
    ref = scores[pick[:, 0], pick[:, 1]]
    assert (ref.abs() > 1e-6).sum() > n_edges // 4  # a real check, not zeros against zeros
    return float(((fd - ref).abs() / (ref.abs() + 1e-4)).max())


# ------------------------------------------------------------------ independent single-edge runs


def _set_flags(model, on: bool) -> None:
    model.set_use_split_qkv_input(on)
    if not model.cfg.attn_only:
        model.set_use_hook_mlp_in(on)


def _neuron_ids(graph, layer: int) -> list[int]:
    return list(graph.neurons[layer])


def _bias(module, name: str):
    """A module's bias, 0 where it has none (a TransformerBridge leaves absent biases out)."""
    b = getattr(module, name, None)
    return 0.0 if b is None else b


def _change(model, graph, clean, corrupt, src: str) -> torch.Tensor:
    """What a reader's input loses, ``[B, P, d]``, when its edge from ``src`` carries the corrupted
    value instead of the clean one (the source's clean value is its value in the patched run: the
    edge is downstream of it). Written from the model's modules: a post-norm layer's heads and
    neurons reach the reader through the layer's own post-norm module."""
    node = parse_node(src)
    if node.kind == "input":
        h = "blocks.0.hook_resid_pre"
        return clean[h] - corrupt[h]
    if node.site is not None:  # an SAE site's node: its term of the SAE run on the site's input
        site, sae = _site_of(graph, node)
        return _site_term(sae, site, node, clean[site.hook_name]) - _site_term(sae, site, node, corrupt[site.hook_name])
    block = model.blocks[node.layer]
    if node.kind == "head":
        W_O = block.attn.W_O  # [head, d_head, d_model]

        def write(cache):
            return cache[f"blocks.{node.layer}.attn.hook_z"][:, :, node.head] @ W_O[node.head]

        def total(cache):
            z = cache[f"blocks.{node.layer}.attn.hook_z"]
            return torch.einsum("bphe,hed->bpd", z, W_O) + _bias(block.attn, "b_O")

        post = getattr(block, "ln1_post", None)
    elif node.kind == "mlp":
        h = f"blocks.{node.layer}.hook_mlp_out"
        return clean[h] - corrupt[h]
    else:  # a neuron or the rest of a neuron-split layer
        W_out = block.mlp.W_out
        chosen = _neuron_ids(graph, node.layer)
        ids = [node.index] if node.kind == "neuron" else [i for i in range(W_out.shape[0]) if i not in chosen]

        def write(cache):
            return cache[f"blocks.{node.layer}.mlp.hook_post"][..., ids] @ W_out[ids]

        def total(cache):
            return cache[f"blocks.{node.layer}.mlp.hook_post"] @ W_out + _bias(block.mlp, "b_out")

        post = getattr(block, "ln2_post", None)
    if post is None:
        return write(clean) - write(corrupt)
    S = total(clean)
    return post(S) - post(S - write(clean) + write(corrupt))


def _site_of(graph, node):
    """The site and SAE of an SAE site's node (residual and layer-output sites; not transcoders)."""
    site = graph.node_graph.site(node.site_name)
    assert site.kind != "transcoder", "the single-edge reference covers SAE sites, not transcoders"
    return site, graph.node_graph.saes[site.hook_name]


def _site_term(sae, site, node, x: torch.Tensor) -> torch.Tensor:
    """What a site's node writes when the site's input is ``x [B, P, d]``: feature i's
    ``f_i(x)·W_dec[i]``, the other features' sum (``rest``), or ``x − decode(encode(x))`` (``err``)."""
    acts = sae.encode(x)
    if node.kind == "feature":
        return acts[..., [node.index]] @ sae.W_dec[[node.index]]
    if node.kind == "sae_rest":
        others = [i for i in range(site.d_sae) if i not in site.features]
        return acts[..., others] @ sae.W_dec[others]
    return x - (acts @ sae.W_dec + sae.b_dec)


def single_edge_reference(model, graph, task, edge: tuple[str, str]) -> float:
    """m(clean run with edge ``src → dst`` carrying its source's corrupted value) − m(clean run),
    by TransformerLens hooks on the reader's own input (a q/k/v input per head, the MLP input, a
    neuron's own pre-activations recomputed from its own input, the final residual)."""
    src, dst = edge
    _set_flags(model, True)
    try:
        _, clean = model.run_with_cache(task.clean)
        _, corrupt = model.run_with_cache(task.corrupted)
        base = task.score(model(task.clean)).mean()
        at = parse_node(src).position  # position-resolved graphs: u@p → v@p changes position p only
        change = _change(model, graph, clean, corrupt, parse_node(src).base)
        if at is not None:
            change = change * (torch.arange(change.shape[1], device=change.device) == at).to(change.dtype)[:, None]
        reader = parse_node(dst.partition("@")[0])
        hooks = []
        if reader.kind == "logits":
            hooks.append((f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", lambda x, hook: x - change))
        elif reader.kind == "slot":

            def qkv(x, hook, h=reader.head):
                x = x.clone()
                x[:, :, h] -= change
                return x

            hooks.append((f"blocks.{reader.layer}.hook_{reader.slot}_input", qkv))
        elif reader.kind in ("mlp", "mlp_rest"):
            hooks.append((f"blocks.{reader.layer}.hook_mlp_in", lambda x, hook: x - change))
            if reader.kind == "mlp_rest":  # the chosen neurons keep their own (clean) inputs
                chosen = _neuron_ids(graph, reader.layer)
                for name in _pre_hooks(model, reader.layer):

                    def restore(x, hook, name=name):
                        x = x.clone()
                        x[..., chosen] = clean[name][..., chosen]
                        return x

                    hooks.append((name, restore))
        elif reader.site is not None:  # an SAE site's node: only its own term sees the change
            site, sae = _site_of(graph, reader)

            def reread(x, hook, site=site, sae=sae):
                return x - _site_term(sae, site, reader, x) + _site_term(sae, site, reader, x - change)

            hooks.append((site.hook_name, reread))
        else:  # a neuron: only its own pre-activations see the change, through ln2 and its columns
            block, j = model.blocks[reader.layer], reader.index
            own = block.ln2(clean[f"blocks.{reader.layer}.hook_mlp_in"] - change)
            cols = {f"blocks.{reader.layer}.mlp.hook_pre": block.mlp.W_gate if model.cfg.gated_mlp else block.mlp.W_in}
            if model.cfg.gated_mlp:
                cols[f"blocks.{reader.layer}.mlp.hook_pre_linear"] = block.mlp.W_in
            for name, W in cols.items():
                bias = 0.0 if model.cfg.gated_mlp else block.mlp.b_in[j]

                def recompute(x, hook, W=W, bias=bias):
                    x = x.clone()
                    x[..., j] = own @ W[:, j] + bias
                    return x

                hooks.append((name, recompute))
        with model.hooks(fwd_hooks=hooks):
            value = task.score(model(task.clean)).mean()
        return float((value - base).detach())
    finally:
        _set_flags(model, False)


def _pre_hooks(model, layer: int) -> list[str]:
    names = [f"blocks.{layer}.mlp.hook_pre"]
    return names + ([f"blocks.{layer}.mlp.hook_pre_linear"] if model.cfg.gated_mlp else [])


def edges_of_every_kind(graph, per_kind: int = 2, seed: int = 0) -> list[tuple[str, str]]:
    """Up to ``per_kind`` random edges of each (source kind, reader kind) pair of ``graph``."""
    gen = torch.Generator().manual_seed(seed)
    by_kind: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for s, d in graph.edges():
        by_kind.setdefault((parse_node(s).kind, parse_node(d).kind), []).append((s, d))
    out = []
    for edges in by_kind.values():
        out += [edges[i] for i in torch.randperm(len(edges), generator=gen)[:per_kind].tolist()]
    return out


def exact_error(model, graph, task, per_kind: int = 2) -> float:
    """Worst absolute difference between ``exact`` scores and :func:`single_edge_reference` over
    edges of every kind."""
    exact = attribute(model, graph, task, method="exact", progress=False, scores_dtype=torch.float64)
    worst, edges, live = 0.0, edges_of_every_kind(graph, per_kind), 0
    for s, d in edges:
        ref = single_edge_reference(model, graph, task, (s, d))
        worst, live = max(worst, abs(float(exact[graph.src(s), graph.dst(d)]) - ref)), live + (abs(ref) > 1e-8)
    assert live > len(edges) // 4  # a real check, not zeros against zeros
    return worst


def random_sae(hook: str, d: int = 16, d_sae: int = 24, seed: int = 0, hook_out: str | None = None) -> SAE:
    """A float64 SAE (a transcoder when ``hook_out`` is given) with random weights: small enough
    that features fire on random prompts, seeded so that tests can rebuild it."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d, d_sae, hook, dtype=torch.float64, hook_name_out=hook_out, apply_b_dec_to_input=hook_out is None)
    with torch.no_grad():
        for p, scale in ((sae.W_enc, 0.25), (sae.W_dec, 0.25), (sae.b_enc, 0.1), (sae.b_dec, 0.1)):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
    return sae


def model64(seed: int = 0, **overrides) -> Any:
    """A random 2-layer LN model with GELU MLPs in float64 (``overrides``: other config fields)."""
    # (imported here: transformer-lens 4.x, whose bridge tests import this module, has no HookedTransformer)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = dict(
        n_layers=2,
        d_model=16,
        n_heads=2,
        d_head=8,
        d_mlp=32,
        d_vocab=20,
        n_ctx=8,
        act_fn="gelu",
        normalization_type="LN",
        dtype=torch.float64,
        seed=seed,
    )
    cfg.update(overrides)
    return HookedTransformer(HookedTransformerConfig(**cfg))


def five_site_case() -> tuple[Any, list[str], list[SAE], Task]:
    """:func:`model64` with a random SAE at each of the five site kinds (resid_pre, mlp_out,
    resid_post, attn_out, resid_mid; one group's upstream rows then not contiguous) and a random
    task: ``(model, hooks, saes, task)``."""
    hooks = [
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_mlp_out",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_attn_out",
        "blocks.1.hook_resid_mid",
    ]
    saes = [random_sae(h, 16, 24, seed=i) for i, h in enumerate(hooks)]
    g = torch.Generator().manual_seed(1)
    clean, corrupted = torch.randint(0, 20, (4, 6), generator=g), torch.randint(0, 20, (4, 6), generator=g)
    return model64(), hooks, saes, Task(clean=clean, corrupted=corrupted, answer=clean[:, 0], wrong=corrupted[:, 0])


def random_masks(g, seed: int = 0) -> torch.Tensor:
    """Masks for every route of a patched forward's removal sums: a small circuit and a nearly
    full one (few exceptions: shared inputs and sparse sums), half the edges (the direct sums),
    whole reader columns removed or kept with a few exceptions, and a relaxed (float) mask."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand((4, *g.valid.shape), generator=gen, dtype=torch.float64)
    cols = torch.rand(g.n_dst, generator=gen) < 0.5  # columns losing every edge but a few
    masks = [u[0] < 0.03, u[1] < 0.97, u[2] < 0.5, ~cols[None, :] ^ (u[3] < 0.03)]
    masks = [m & g.valid for m in masks]
    relaxed = torch.rand(g.valid.shape, generator=gen, dtype=torch.float64) * g.valid
    return torch.stack([m.double() for m in masks] + [relaxed])
