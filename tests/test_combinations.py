"""Combinations of graph refinements (issue 14, part 4): the last layer's resid_post as an SAE
site, neurons with SAE sites, positions with neurons and with SAE sites, and activation EAP-IG on
SAE graphs. Each passes the package's exactness checks in float64: the full circuit is the clean
run, the empty circuit the corrupted run, and EAP equals the derivative of the patched metric."""

import pytest
import torch
from checks import edge_fd_error, full_and_empty
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitgraph.graph import Graph
from circuitgraph.models.sae import SAE
from circuitgraph.tasks import Task

torch.set_num_threads(1)


def model64(seed: int = 0, **overrides) -> HookedTransformer:
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


def task_for(model, n: int = 4, seq: int = 5, seed: int = 1) -> Task:
    g = torch.Generator().manual_seed(seed)
    V = model.cfg.d_vocab
    clean, corrupted = torch.randint(0, V, (n, seq), generator=g), torch.randint(0, V, (n, seq), generator=g)
    return Task(clean=clean, corrupted=corrupted, answer=clean[:, 0], wrong=corrupted[:, 0])


def random_sae(hook: str, d: int = 16, d_sae: int = 24, seed: int = 0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d, d_sae, hook, dtype=torch.float64)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d, d_sae, generator=g, dtype=torch.float64) / 4)
        sae.W_dec.copy_(torch.randn(d_sae, d, generator=g, dtype=torch.float64) / 4)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g, dtype=torch.float64) * 0.1)
        sae.b_dec.copy_(torch.randn(d, generator=g, dtype=torch.float64) * 0.1)
    return sae


# ------------------------------------------------------------------ the last layer's resid_post


def test_last_resid_post_site_is_read_by_the_logits_alone():
    model = model64()
    task = task_for(model)
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    saes = [random_sae(h, seed=i) for i, h in enumerate(hooks)]
    graph = Graph.from_model(model, saes=saes, features={h: range(0, 24, 2) for h in hooks})
    last = graph.site("blocks.1.hook_resid_post")
    assert last.name == "resid_post1" and graph.has_edge("resid_post1.f0", "logits")
    assert not graph.has_edge("a1.h0", "logits") and graph.has_edge("a1.h0", "resid_post1.err")
    readers = {graph.dst_names[j] for j in graph.valid[graph.src("resid_post1.f2")].nonzero()[:, 0].tolist()}
    assert readers == {"logits"}
    full, empty = full_and_empty(model, graph, task)
    assert full < 1e-10 and empty < 1e-10
    assert edge_fd_error(model, graph, task, n_edges=200) < 1e-4
