"""ROC curves and AUC: hand-computed cases, ties, Mann–Whitney agreement, graph levels."""

import numpy as np
import pytest
import torch
from conftest import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu

from circuitgraph import Graph
from circuitgraph.evaluation.roc import edge_roc, item_labels, points_auc, roc_auc


def test_perfect_reversed_and_all_tied():
    assert roc_auc([4, 3, 2, 1], [1, 1, 0, 0]).auc == 1.0
    assert roc_auc([4, 3, 2, 1], [0, 0, 1, 1]).auc == 0.0
    assert roc_auc([7, 7, 7, 7], [1, 0, 1, 0]).auc == 0.5


def test_small_mixed_case_by_hand():
    # ranking +, −, +, −: pairs (pos, neg) ordered correctly: (p1,n1), (p1,n2), (p2,n2) = 3 of 4
    r = roc_auc([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    assert r.auc == pytest.approx(0.75)
    assert r.fpr == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert r.tpr == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert r.thresholds[0] == float("inf") and r.thresholds[1:] == [0.9, 0.8, 0.7, 0.6]


def test_ties_are_one_step():
    # scores 3 (+), 2 (+, −) tied, 1 (−): the tie contributes half a pair → (2 + 1 + 0.5) / 4
    r = roc_auc([3, 2, 2, 1], [1, 1, 0, 0])
    assert r.auc == pytest.approx(0.875)
    assert len(r.fpr) == 4  # (0,0) + one point per distinct score
    assert (r.fpr[2], r.tpr[2]) == (0.5, 1.0)
    # the order of tied items does not matter
    assert roc_auc([3, 2, 2, 1], [1, 0, 1, 0]).auc == pytest.approx(0.875)


def test_undefined_without_both_classes():
    assert np.isnan(roc_auc([1, 2, 3], [1, 1, 1]).auc)
    with pytest.raises(ValueError, match="same number"):
        roc_auc([1, 2], [1])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(4, 60), st.integers(2, 8))
def test_matches_mann_whitney(seed, n, levels):
    g = np.random.default_rng(seed)
    s = g.integers(0, levels, n).astype(float)  # few levels: many ties
    y = g.random(n) < 0.4
    if y.all() or (~y).all():
        y[0] = not y[0]
    u = mannwhitneyu(s[y], s[~y]).statistic
    assert roc_auc(s, y).auc == pytest.approx(u / (y.sum() * (~y).sum()), abs=1e-12)


def test_points_auc_is_the_achievable_staircase():
    r = points_auc([0.1, 0.5], [0.5, 0.9])
    assert r.auc == pytest.approx(0.4 * 0.5 + 0.5 * 0.9)
    # a dominated circuit (more false positives, fewer true positives) changes nothing
    assert points_auc([0.1, 0.5, 0.6], [0.5, 0.9, 0.7]).auc == pytest.approx(r.auc)
    assert points_auc([0.0], [1.0]).auc == 1.0
    assert points_auc([], []).auc == 0.0


@pytest.fixture
def graph():
    return Graph.from_model(tiny_model())


def test_edge_level_scores(graph):
    gt = [("a0.h1", "a1.h2.k"), ("a1.h2", "logits")]
    scores = torch.zeros(graph.valid.shape)
    scores[graph.edge("a0.h1->a1.h2.k")] = -2.0  # ranked by |score|
    scores[graph.edge("a1.h2->logits")] = 1.0
    assert edge_roc(graph, scores, gt).auc == 1.0
    # now a0.h1->a1.h2.k is a negative scored 2, and one positive is tied at 0 with the other
    # n_neg − 1 negatives: pairs won = (n_neg − 1) for the positive at 1, ½(n_neg − 1) for the tie
    r = edge_roc(graph, scores, ["a0.h1->a1.h2.q", "a1.h2->logits"])
    n_neg = graph.n_edges - 2
    assert r.auc == pytest.approx(1.5 * (n_neg - 1) / (2 * n_neg))


def test_head_level_promotes_qkv(graph):
    names, labels = item_labels(graph, [("a0.h1", "a1.h2.k")], level="head")
    assert names[int(labels.nonzero()[0, 0])] == "a0.h1->a1.h2" and int(labels.sum()) == 1
    n_head_inputs = sum(int(graph.valid[:, graph.dst(f"a{L}.h{h}.q")].sum()) for L in range(2) for h in range(3))
    assert len(names) == graph.n_edges - 2 * n_head_inputs  # three items (q, k, v) become one
    scores = torch.zeros(graph.valid.shape)
    scores[graph.edge("a0.h1->a1.h2.v")] = 5.0  # max over q/k/v
    assert edge_roc(graph, scores, [("a0.h1", "a1.h2.k")], level="head").auc == 1.0
    assert edge_roc(graph, scores, [("a0.h1", "a1.h2.k")], level="edge").auc < 1.0
    # a head-level ground truth cannot be scored at edge level on a q/k/v-split graph
    with pytest.raises(ValueError, match="level='head'"):
        edge_roc(graph, scores, [("a0.h1", "a1.h2")], level="edge")
    assert edge_roc(graph, scores, [("a0.h1", "a1.h2")], level="head").auc == 1.0


def test_node_level(graph):
    names, labels = item_labels(graph, [("input", "a0.h1.q"), ("a0.h1", "logits")], level="node")
    assert "input" not in names and "logits" not in names
    assert {n for n, l in zip(names, labels.tolist()) if l} == {"a0.h1"}
    scores = torch.zeros(graph.valid.shape)
    scores[graph.edge("a0.h1->m1")] = 3.0  # an incident edge outside the ground truth still counts
    r = edge_roc(graph, scores, [("input", "a0.h1.q"), ("a0.h1", "logits")], level="node")
    assert r.auc < 1.0  # m1 ties a0.h1 at 3.0
    assert r.auc == pytest.approx((len(names) - 2 + 0.5) / (len(names) - 1))


def test_circuit_masks_give_points(graph):
    gt = [("a0.h1", "a1.h2.k"), ("a1.h2", "logits")]
    exact = graph.mask_from_edges(["a0.h1->a1.h2.k", "a1.h2->logits"])
    r = edge_roc(graph, [exact], gt)
    assert r.kind == "circuits" and r.auc == 1.0
    half = graph.mask_from_edges(["a1.h2->logits", "input->logits"])
    r = edge_roc(graph, [half, graph.valid], gt)
    assert r.auc == pytest.approx(0.5 * (1 - 1 / (graph.n_edges - 2)))  # TPR ½ from FPR 1/N on
    with pytest.raises(ValueError, match="level"):
        edge_roc(graph, [exact], gt, level="nodes")


def test_node_only_ground_truth(graph):
    from circuitgraph.zoo import GroundTruth

    gt = GroundTruth("heads", "mean", "t", "head", frozenset(), frozenset({"a0.h1", "a1.h2"}))
    scores = torch.zeros(graph.valid.shape)
    scores[graph.edge("a0.h1->a1.h2.q")] = 1.0
    assert edge_roc(graph, scores, gt, level="node").auc == 1.0
    assert np.isnan(edge_roc(graph, scores, gt, level="head").auc)  # no positive edges
    assert np.isnan(edge_roc(graph, [graph.valid], gt, level="edge").auc)
