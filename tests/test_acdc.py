"""ACDC: its decisions equal strict one-at-a-time ACDC, the limits of the threshold, pruning, and
recovery of a circuit planted by hand."""

import pytest
import torch
from conftest import tiny_model, tiny_task
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitgraph import Graph, evaluate, faithfulness, prune
from circuitgraph.circuit.acdc import acdc, acdc_sweep
from circuitgraph.tasks import Task


@pytest.fixture(scope="module")
def setup():
    model = tiny_model()
    return model, tiny_task(model, n=8)


def strict_acdc(model, graph, task, tau, metric="kl", sign=1.0, ablation="corrupted", absolute=False):
    """Textbook ACDC, one patched forward per edge, every edge tested (no shortcuts)."""
    t = Task(**{**task._fields(), "metric": metric}) if metric else task
    mask = graph.valid.clone()
    current = float(evaluate(model, graph, t, mask, ablation))
    for d in range(graph.n_dst - 1, -1, -1):
        for s in mask[:, d].nonzero()[:, 0].flip(0).tolist():
            mask[s, d] = False
            v = float(evaluate(model, graph, t, mask, ablation))
            change = sign * (v - current)
            if (abs(change) if absolute else change) < tau:
                current = v
            else:
                mask[s, d] = True
    return prune(graph, mask)


@pytest.mark.parametrize("tau", [3e-4, 3e-3, 2e-2])
def test_matches_strict_one_at_a_time_acdc(setup, tau):
    model, task = setup
    graph = Graph.from_model(model)
    c = acdc(model, graph, task, threshold=tau, progress=False)
    assert torch.equal(c.mask, strict_acdc(model, graph, task, tau))
    assert c.figures["mispredictions"] > 0  # the speculative walk had to restart (the hard case)
    assert 0 < c.n_edges < graph.n_edges or tau == 2e-2
    # tested edges that were kept raised the KL by at least τ; removed ones by less
    tested = graph.scores != 0
    assert (graph.scores[tested & c.mask] >= tau).all()


def test_task_metric_and_small_mask_batches(setup):
    # logit difference (higher is better: loss = −metric) and speculation windows of 2 circuits,
    # which forces many restarts of the speculative walk
    model, task = setup
    graph = Graph.from_model(model)
    c = acdc(model, graph, task, threshold=0.05, metric=None, mask_batch=2, progress=False)
    assert torch.equal(c.mask, strict_acdc(model, graph, task, 0.05, metric=None, sign=-1.0))
    assert c.metadata["selection"]["metric"] == "logit_diff"


def test_zero_ablation_absolute_rule(setup):
    model, task = setup
    graph = Graph.from_model(model)
    c = acdc(model, graph, task, threshold=0.1, ablation="zero", metric=None, absolute=True, progress=False)
    assert torch.equal(
        c.mask, strict_acdc(model, graph, task, 0.1, metric=None, sign=-1.0, ablation="zero", absolute=True)
    )
    assert c.metadata["ablation"]["kind"] == "zero"
    raw = acdc(
        model,
        graph,
        task,
        threshold=0.1,
        ablation="zero",
        metric=None,
        absolute=True,
        prune_result=False,
        progress=False,
    )
    assert torch.equal(prune(graph, raw.mask), c.mask)
    assert raw.n_edges == c.n_edges + c.figures["edges_dropped_by_prune"]


def test_position_resolved_graph():
    from circuitgraph.graph import PositionalGraph

    model = tiny_model(n_layers=1)
    task = tiny_task(model, n=6, seq=4)
    graph = PositionalGraph.from_model(model, positions=4)
    c = acdc(model, graph, task, threshold=3e-3, progress=False)
    assert torch.equal(c.mask, strict_acdc(model, graph, task, 3e-3))
    assert 0 < c.n_edges < graph.n_edges and torch.equal(c.mask, prune(graph, c.mask))


def test_threshold_zero_keeps_the_model_and_huge_threshold_removes_all(setup):
    model, task = setup
    graph = Graph.from_model(model)
    c0 = acdc(model, graph, task, threshold=0.0, progress=False)
    assert c0.faithfulness == pytest.approx(1.0, abs=1e-3)
    assert faithfulness(model, graph, task, c0.mask) == pytest.approx(c0.faithfulness, abs=1e-5)
    assert c0.figures["acdc_metric"] < 1e-5
    big = acdc(model, graph, task, threshold=1e9, progress=False)
    assert big.n_edges == 0


def test_result_is_pruned_and_scores_are_recorded(setup):
    model, task = setup
    graph = Graph.from_model(model)
    c = acdc(model, graph, task, threshold=3e-3, progress=False)
    assert torch.equal(c.mask, prune(graph, c.mask))
    assert graph.score_info["method"] == "acdc" and graph.score_info["threshold"] == 3e-3
    f = c.figures
    assert f["edges_tested"] + f["edges_pruned_untested"] == graph.n_edges
    assert int((graph.scores != 0).sum()) <= f["edges_tested"]
    assert c.metadata["selection"]["kind"] == "acdc"


def test_sweep_runs_independent_acdc(setup):
    model, task = setup
    graph = Graph.from_model(model)
    cs = acdc_sweep(model, graph, task, [3e-2, 1e-3, 1e-2], progress=False)
    assert [c.metadata["selection"]["threshold"] for c in cs] == [3e-2, 1e-3, 1e-2]
    assert graph.score_info["threshold"] == 1e-3  # scores of the smallest threshold
    assert cs[1].n_edges >= cs[2].n_edges >= cs[0].n_edges
    alone = acdc(model, Graph.from_model(model), task, threshold=1e-2, progress=False)
    assert torch.equal(alone.mask, cs[2].mask)


def planted_model() -> HookedTransformer:
    """Attention-only, no norms, residual dims 0-3 ("visible") and 4-7 ("hidden", the unembedding
    ignores them). Only a0.h0 reaches the output: it averages the visible token embedding over
    the prefix (uniform attention: W_Q = W_K = 0) and writes it back to the visible dims. a0.h1
    writes hidden dims, a1.h0 reads and writes hidden dims, a1.h1 has W_O = 0."""
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=8,
        d_head=4,
        n_heads=2,
        d_vocab=10,
        n_ctx=8,
        attn_only=True,
        normalization_type=None,
        act_fn="relu",
        seed=0,
        device="cpu",
    )
    m = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(0)
    eye = torch.eye(4)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.embed.W_E.copy_(torch.randn(10, 8, generator=g))
        m.unembed.W_U[:4].copy_(torch.randn(4, 10, generator=g))
        a0, a1 = m.blocks[0].attn, m.blocks[1].attn
        a0.W_V[0, :4] = eye
        a0.W_O[0, :, :4] = 2 * eye
        a0.W_Q[1], a0.W_K[1] = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
        a0.W_V[1, :4], a0.W_O[1, :, 4:] = eye, eye
        for h in range(2):
            a1.W_Q[h], a1.W_K[h], a1.W_V[h] = (torch.randn(8, 4, generator=g) for _ in range(3))
        a1.W_O[0, :, 4:] = eye
    m.eval()
    return m


def test_recovers_a_planted_circuit():
    model = planted_model()
    task = tiny_task(model, n=8, seq=6, seed=3)
    graph = Graph.from_model(model)
    c = acdc(model, graph, task, threshold=1e-5, progress=False)
    assert set(c.edge_names()) == {"input->logits", "input->a0.h0.v", "a0.h0->logits"}
    assert c.faithfulness == pytest.approx(1.0, abs=1e-4)
    # a1.* and a0.h1 lose their way to the logits, so their inputs are pruned without a test
    assert c.figures["edges_pruned_untested"] == sum(
        int(graph.valid[:, graph.dst(f"a{L}.h{h}.{x}")].sum()) for L, h in [(1, 0), (1, 1), (0, 1)] for x in "qkv"
    )


def test_bad_threshold(setup):
    model, task = setup
    with pytest.raises(ValueError, match="finite"):
        acdc(model, Graph.from_model(model), task, threshold=float("nan"), progress=False)
