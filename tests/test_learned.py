"""Learned edge masks: the relaxed patched forward, its gradient, and the mask search."""

import pytest
import torch
from conftest import tiny_model, tiny_task

from circuitgraph import Graph, PositionalGraph, faithfulness
from circuitgraph.circuit.learned import expected_open, gate, learn_edge_masks, learned_circuit
from circuitgraph.engine import Ablation
from circuitgraph.engine.patching import patched_logits
from circuitgraph.errors import ConfigError


def _setup(**graph_kw):
    model = tiny_model(dtype=torch.float64)
    task = tiny_task(model, n=5)
    positions = graph_kw.pop("positions", None)
    if positions:
        graph = PositionalGraph.from_model(model, positions=task.seq_len)
    else:
        graph = Graph.from_model(model, **graph_kw)
    ablated = Ablation().prepare(model, graph, task).activations(model, graph, task, slice(None), task)
    return model, task, graph, ablated


@pytest.mark.parametrize("graph_kw", [{}, {"neurons": True}, {"positions": True}])
def test_relaxed_forward_is_clean_at_one_and_ablated_at_zero(graph_kw):
    model, task, graph, ablated = _setup(**graph_kw)
    ones = graph.valid.to(torch.float64)
    with torch.no_grad():
        clean, corrupted = model(task.clean), model(task.corrupted)
    full = patched_logits(model, graph, task, ablated, ones, differentiable=True)
    empty = patched_logits(model, graph, task, ablated, torch.zeros_like(ones), differentiable=True)
    assert (full - clean).abs().max() < 1e-10
    assert (empty - corrupted).abs().max() < 1e-10
    # a relaxed mask at 0.5 is neither (the forward really reads the mask)
    half = patched_logits(model, graph, task, ablated, 0.5 * ones, differentiable=True)
    assert (half - clean).abs().max() > 1e-3 and (half - corrupted).abs().max() > 1e-3


@pytest.mark.parametrize("graph_kw", [{}, {"neurons": True}, {"positions": True}])
def test_gate_gradient_matches_finite_difference(graph_kw):
    """float64: d metric / d keep[u, v] by autograd equals a central difference, for edges deep
    in the graph whose effect also runs through downstream nodes' live deltas (detaching them
    would change the first figures below by far more than the tolerance)."""
    model, task, graph, ablated = _setup(**graph_kw)
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(graph.valid.shape, generator=g, dtype=torch.float64) * graph.valid
    keep.requires_grad_(True)

    def metric(k):
        return task.score(patched_logits(model, graph, task, ablated, k, differentiable=True)).mean()

    (grad,) = torch.autograd.grad(metric(keep), keep)
    edges = graph.valid.nonzero()
    picks = edges[torch.linspace(0, len(edges) - 1, 6).long()]
    eps = 1e-6
    for i, j in picks.tolist():
        plus, minus = keep.detach().clone(), keep.detach().clone()
        plus[i, j] += eps
        minus[i, j] -= eps
        with torch.no_grad():
            fd = (metric(plus) - metric(minus)) / (2 * eps)
        assert float(grad[i, j]) == pytest.approx(float(fd), rel=1e-5, abs=1e-9)
    assert float(grad.abs().sum()) > 0


def test_gradient_needs_the_live_deltas(monkeypatch):
    """The finite-difference check above would fail if a reader's upstream deltas were detached."""
    from circuitgraph.engine import deltas as deltas_module

    model, task, graph, ablated = _setup()
    keep = (0.5 * graph.valid.double()).requires_grad_(True)

    def grad_of_first_edge():
        v = task.score(patched_logits(model, graph, task, ablated, keep, differentiable=True)).mean()
        return float(torch.autograd.grad(v, keep)[0][0, 0])

    true = grad_of_first_edge()
    record = deltas_module.LiveDeltas.record
    monkeypatch.setattr(deltas_module.LiveDeltas, "record", lambda self, rows, live: record(self, rows, live.detach()))
    assert abs(grad_of_first_edge() - true) > 1e-3 * abs(true)


def test_hard_concrete_gates():
    la = torch.tensor([-8.0, 0.0, 8.0])
    det = gate(la, 2 / 3)
    assert det.tolist() == pytest.approx([0.0, 0.5, 1.0], abs=1e-3)
    u = torch.rand(2000, 3, generator=torch.Generator().manual_seed(0)).clamp(1e-6, 1 - 1e-6)
    z = gate(la, 2 / 3, u)
    assert float(z.min()) >= 0 and float(z.max()) <= 1
    open_frac = (z > 0).double().mean(0)
    assert open_frac.tolist() == pytest.approx(expected_open(la, 2 / 3).tolist(), abs=0.03)


@pytest.mark.parametrize("estimator", ["hard-concrete", "sampled"])
def test_learned_masks_are_remeasured_by_patching(estimator):
    model = tiny_model()
    task = tiny_task(model, n=8)
    graph = Graph.from_model(model)
    res = learn_edge_masks(model, graph, task, lambdas=(0.001, 0.3), steps=40, estimator=estimator, seed=0)
    assert res.masks.shape == (2, *graph.valid.shape) and res.masks.dtype == torch.bool
    for m, f, n in zip(res.masks, res.faithfulness, res.n_edges):
        assert n == int(m.sum())
        assert faithfulness(model, graph, task, m) == pytest.approx(f, abs=1e-5)
    assert res.n_edges[1] <= res.n_edges[0]  # a larger λ keeps no more edges
    assert bool((res.ranking[~graph.valid] == 0).all())


def test_learned_circuit_reaches_the_target_or_reports_it():
    model = tiny_model()
    task = tiny_task(model, n=8)
    graph = Graph.from_model(model)
    c = learned_circuit(model, graph, task, target=0.8, steps=40, lambdas=(0.003, 0.03))
    assert c.figures["reached_target"] == (c.faithfulness >= 0.8)
    assert faithfulness(model, graph, task, c.mask) == pytest.approx(c.faithfulness, abs=1e-5)
    assert graph.score_info["method"] == "edge-pruning"
    assert c.metadata["selection"]["kind"] == "edge-pruning"


def test_restrict_and_bad_options():
    model = tiny_model()
    task = tiny_task(model, n=6)
    graph = Graph.from_model(model)
    only = graph.mask_from_edges(["input->logits", "input->a1.h0.v", "a1.h0->logits"])
    res = learn_edge_masks(model, graph, task, lambdas=(0.001,), steps=5, restrict=only)
    assert not bool((res.masks[0] & ~only).any())
    with pytest.raises(ConfigError, match="objective"):
        learn_edge_masks(model, graph, task, objective="nope")
    with pytest.raises(ConfigError, match="lambdas"):
        learn_edge_masks(model, graph, task, lambdas=(-1,))
    with pytest.raises(ConfigError, match="learnable"):
        learn_edge_masks(model, graph, task, restrict=torch.zeros_like(graph.valid))


def test_relaxed_forward_and_gradient_with_sae_sites():
    """Every site kind (features kept low-rank, rest and err nodes): the relaxed mask is clean at
    one and corrupted at zero, and a gate's gradient matches a central difference in float64."""
    from checks import random_sae
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from circuitgraph import Task

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=20, n_ctx=8, act_fn="gelu",
        normalization_type="LN", dtype=torch.float64, seed=0,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    hooks = ["blocks.0.hook_resid_pre", "blocks.0.hook_mlp_out", "blocks.1.hook_attn_out", "blocks.1.hook_resid_mid"]
    saes = [random_sae(h, 16, 24, seed=i) for i, h in enumerate(hooks)]
    g = torch.Generator().manual_seed(1)
    clean, corrupted = torch.randint(0, 20, (3, 6), generator=g), torch.randint(0, 20, (3, 6), generator=g)
    task = Task(clean=clean, corrupted=corrupted, answer=clean[:, 0], wrong=corrupted[:, 0])
    graph = Graph.from_model(model, saes=saes, features={h: range(0, 24, 3) for h in hooks})
    ablated = Ablation().prepare(model, graph, task).activations(model, graph, task, slice(None), task, compact=True)
    ones = graph.valid.double()
    with torch.no_grad():
        ref_clean, ref_corrupted = model(clean), model(corrupted)
    assert (patched_logits(model, graph, task, ablated, ones, differentiable=True) - ref_clean).abs().max() < 1e-9
    empty = patched_logits(model, graph, task, ablated, 0 * ones, differentiable=True)
    assert (empty - ref_corrupted).abs().max() < 1e-9
    keep = (torch.rand(graph.valid.shape, generator=g, dtype=torch.float64) * graph.valid).requires_grad_(True)

    def metric(k):
        return task.score(patched_logits(model, graph, task, ablated, k, differentiable=True)).mean()

    (grad,) = torch.autograd.grad(metric(keep), keep)
    edges = graph.valid.nonzero()
    for i, j in edges[torch.linspace(0, len(edges) - 1, 6).long()].tolist():
        plus, minus = keep.detach().clone(), keep.detach().clone()
        plus[i, j] += 1e-6
        minus[i, j] -= 1e-6
        with torch.no_grad():
            fd = (metric(plus) - metric(minus)) / 2e-6
        assert float(grad[i, j]) == pytest.approx(float(fd), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("estimator", ["hard-concrete", "sampled"])
def test_replicates_train_as_one_batch_and_equal_separate_runs(estimator):
    """R bootstrap replicates (example weights) trained at once give each replicate the masks of
    its own run (weights row r), and a replicate weighted by bootstrap multiplicities is the run
    on the resampled task itself (duplicates included)."""
    from circuitgraph.evaluation.stability import resample_indices

    model = tiny_model(dtype=torch.float64)
    task = tiny_task(model, n=8)
    graph = Graph.from_model(model)
    idx = resample_indices(task.n_examples, 3, seed=2)
    counts = torch.zeros(3, task.n_examples).scatter_add_(1, idx, torch.ones(idx.shape))
    kw = dict(lambdas=(0.003, 0.03), steps=30, estimator=estimator, examples_per_step=None)
    batched = learn_edge_masks(model, graph, task, weights=counts, seed=5, **kw)
    assert batched.masks.shape == (6, *graph.valid.shape) and batched.replicates == 3
    assert batched.ranking.shape == (3, *graph.valid.shape)
    for r in range(3):
        alone = learn_edge_masks(model, graph, task, weights=counts[r : r + 1], seed=5, **kw)
        assert torch.equal(batched.masks[2 * r : 2 * r + 2], alone.masks)
        assert (batched.log_alpha[2 * r : 2 * r + 2] - alone.log_alpha).abs().max() < 1e-6
        assert batched.faithfulness[2 * r : 2 * r + 2] == pytest.approx(alone.faithfulness, abs=1e-9)
    assert (batched.log_alpha[:2] - batched.log_alpha[2:4]).abs().max() > 1e-3  # the data matter
    # replicate 0 is training on the resample: same gates and re-measured faithfulness
    first = learn_edge_masks(model, graph, task, weights=counts[:1], seed=5, **kw)
    direct = learn_edge_masks(model, graph, task.select(idx[0]), seed=5, **kw)
    assert torch.equal(first.masks, direct.masks)
    assert (first.log_alpha - direct.log_alpha).abs().max() < 1e-6
    assert first.faithfulness == pytest.approx(direct.faithfulness, abs=1e-9)
    with pytest.raises(ConfigError, match="weights"):
        learn_edge_masks(model, graph, task, weights=torch.ones(2, 3), **kw)
    with pytest.raises(ConfigError, match="weights"):
        learn_edge_masks(model, graph, task, weights=-torch.ones(1, task.n_examples), **kw)
