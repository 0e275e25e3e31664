"""Scrubbing-guided pruning: the smallest hypothesis whose scrubbed loss recovered stays ≥ target."""

import pytest
import torch

import circuitgraph as cg
from circuitgraph import zoo
from circuitgraph.errors import ConfigError
from circuitgraph.hypothesis import minimal_hypothesis

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def induction():
    entry = zoo.load("induction", device="cpu")
    return entry.model, entry.tasks["induction"], entry.ground_truth["resample"]


def test_induction_edges_prune_to_the_known_circuit(induction):
    """From every edge, ranked by EAP-IG under resampling: the previous-token head's value input,
    the K-composition edge, the induction head's query and value inputs and its write to the
    logits, and nothing else; loss recovered ≥ 0.9 again on a fresh seed."""
    model, task, gt = induction
    graph = cg.Graph.from_model(model)
    cg.attribute(model, graph, task, method="eap-ig", ablation="resample", progress=False)
    res = minimal_hypothesis(model, cg.Circuit(graph, graph.valid.clone()), task, target=0.9, seed=0)
    assert set(res.circuit.edge_names()) == set(gt.edge_names)
    assert "a0.h1->a1.h3.k" in res.circuit.edge_names()
    assert res.loss_recovered >= 0.9
    assert res.verified.seed == 1000 and res.verified.loss_recovered >= 0.9
    assert res.reached_target
    d = res.to_dict()
    assert d["n_edges"] == len(gt.edges) and d["verified"]["seed"] == 1000


def test_hypothesis_nodes_prune_away_an_idle_head(induction):
    """A hypothesis that also claims a head the task does not need loses that node."""
    model, task, gt = induction
    graph = cg.Graph.from_model(model)
    edges = gt.edge_names + ["input->a0.h0.v", "a0.h0->logits"]
    hyp = cg.Hypothesis.from_circuit(cg.Circuit(graph, graph.mask_from_edges(edges)))
    assert "a0.h0" in hyp.nodes
    res = minimal_hypothesis(model, hyp, task, target=0.9, seed=0)
    assert "a0.h0" not in res.hypothesis.nodes
    assert {"a1.h3", "a0.h1"} <= set(res.hypothesis.nodes)
    assert res.verified.loss_recovered >= 0.9


def test_bad_target(induction):
    model, task, _ = induction
    graph = cg.Graph.from_model(model)
    with pytest.raises(ConfigError, match="target"):
        minimal_hypothesis(model, cg.Circuit(graph, graph.valid.clone()), task, target=2.0)
    with pytest.raises(TypeError):
        minimal_hypothesis(model, "not a hypothesis", task)
