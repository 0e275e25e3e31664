"""Influence on the logits and pruning by it: the flow computed in one pass over residual times
equals an explicit sum over every path to the logits (float64), the logits' attribution is
conserved, and pruning keeps exactly the prefix of nodes and edges the thresholds ask for."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from circuitgraph import Graph, PositionalGraph, prune
from circuitgraph.circuit.influence import (
    EXEMPT_KINDS,
    _keep_share,
    cumulative_share,
    influence,
    prune_by_influence,
)
from circuitgraph.errors import ConfigError
from circuitgraph.graph.names import dst_node, node_kind


def _scored(graph: Graph, seed: int, density: float) -> torch.Tensor:
    """Random scores (heavy-tailed, both signs) on ``graph``; returns a random mask of its edges."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(graph.valid.shape, generator=g) * torch.rand(graph.valid.shape, generator=g) ** 3
    graph.scores = raw.masked_fill(~graph.valid, 0.0)
    return (torch.rand(graph.valid.shape, generator=g) < density) & graph.valid


def _paths_reference(graph: Graph, mask: torch.Tensor) -> tuple[dict[str, float], dict[tuple[int, int], float]]:
    """Node out-flow and edge flow by enumerating every path from the logits backwards, in Python
    floats: a step from node v to an edge u→j (j one of v's input columns) multiplies by
    |s_uj| / Σ|scores into v's columns. Nodes own columns as ``graph.node_dsts`` says (a
    position-resolved head owns its keys and values at every earlier position)."""
    s = graph.scores.double().abs()
    owners_cols: dict[str, list[int]] = {n: graph.node_dsts[i].tolist() for i, n in enumerate(graph.src_names)}
    logit_cols = graph.logits_columns.tolist()
    for j in logit_cols:
        owners_cols[dst_node(graph.dst_names[j])] = [j]
    edges_into = {j: [i for i in range(graph.n_src) if mask[i, j]] for j in range(graph.n_dst)}
    w_in = {n: sum(float(s[i, j]) for j in cols for i in edges_into[j]) for n, cols in owners_cols.items()}
    total = sum(w_in[dst_node(graph.dst_names[j])] for j in logit_cols)
    out = {n: 0.0 for n in graph.src_names}
    edge = {}

    def walk(v: str, weight: float) -> None:  # weight: the flow arriving at v along this path
        if w_in[v] == 0:
            return
        for j in owners_cols[v]:
            for i in edges_into[j]:
                share = weight * float(s[i, j]) / w_in[v]
                edge[(i, j)] = edge.get((i, j), 0.0) + share
                u = graph.src_names[i]
                out[u] += share
                walk(u, share)

    for j in logit_cols:
        v = dst_node(graph.dst_names[j])
        if total > 0:
            walk(v, w_in[v] / total)
    return out, edge


@pytest.mark.parametrize(
    "make,seed,density",
    [
        (lambda: Graph.from_model(tiny_model()), 0, 0.5),
        (lambda: Graph.from_model(tiny_model(n_layers=3)), 1, 0.3),
        (lambda: Graph.from_model(tiny_model(), split_qkv=False), 2, 0.6),
        (lambda: PositionalGraph.from_model(tiny_model(), positions=3), 3, 0.25),
    ],
    ids=["heads-mlps", "3-layers", "no-qkv-split", "positions"],
)
def test_flow_equals_the_sum_over_paths(make, seed, density):
    graph = make()
    mask = _scored(graph, seed, density)
    inf = influence(graph, mask)
    out, edge = _paths_reference(graph, mask)
    assert len(edge) > 5  # the random circuit has paths to the logits
    got = dict(zip([tuple(e) for e in inf.edges.tolist()], inf.edge_flow.tolist()))
    assert set(got) == {tuple(e) for e in mask.nonzero().tolist()}
    for e, f in got.items():
        assert f == pytest.approx(edge.get(e, 0.0), rel=1e-12, abs=1e-15)
    by_node = inf.by_node()
    in_flow: dict[str, float] = {}
    for (_, j), f in edge.items():
        in_flow[dst_node(graph.dst_names[j])] = in_flow.get(dst_node(graph.dst_names[j]), 0.0) + f
    for n, v in by_node.items():
        want = max(out.get(n, 0.0), in_flow.get(n, 0.0))
        assert v == pytest.approx(want, rel=1e-12, abs=1e-15), n


def test_the_logits_attribution_is_conserved():
    """Every node of a full graph reads the input, so all of the logits' attribution (1) flows
    back to it; every cut of the residual stream carries at most 1."""
    graph = Graph.from_model(tiny_model(n_layers=3))
    _scored(graph, 5, 1.0)
    inf = influence(graph, graph.valid)
    rows = inf.edges[:, 0]
    from_input = float(inf.edge_flow[rows == graph.src_index["input"]].sum())
    assert from_input == pytest.approx(1.0, abs=1e-12)
    into_logits = float(inf.edge_flow[inf.edges[:, 1] == graph.dst_index["logits"]].sum())
    assert into_logits == pytest.approx(1.0, abs=1e-12)
    assert inf.by_node()["logits"] == pytest.approx(1.0) and inf.by_node()["input"] == pytest.approx(1.0)
    assert float(inf.node_influence.max()) <= 1.0 + 1e-12


def test_an_empty_circuit_or_one_that_misses_the_logits_has_no_influence():
    graph = Graph.from_model(tiny_model())
    _scored(graph, 0, 1.0)
    assert float(influence(graph, torch.zeros_like(graph.valid)).node_influence.sum()) == 0.0
    no_logits = graph.valid.clone()
    no_logits[:, graph.dst_index["logits"]] = False
    assert float(influence(graph, no_logits).edge_flow.sum()) == 0.0
    assert not prune_by_influence(graph, no_logits).any()


def test_keep_share_and_cumulative_share():
    v = torch.tensor([0.1, 0.5, 0.0, 0.3, 0.1], dtype=torch.float64)  # total 1.0
    assert _keep_share(v, 0.5).tolist() == [False, True, False, False, False]  # 0.5 alone reaches 0.5
    assert _keep_share(v, 0.51).tolist() == [False, True, False, True, False]
    assert _keep_share(v, 0.85).tolist() == [True, True, False, True, False]  # ties: first one first
    assert _keep_share(v, 1.0).tolist() == [True, True, False, True, True]  # a zero is never kept
    assert cumulative_share(v).tolist() == pytest.approx([0.9, 0.5, 1.0, 0.8, 1.0])
    assert not _keep_share(torch.zeros(3, dtype=torch.float64), 0.8).any()


def test_prune_by_influence_keeps_the_prefix_the_thresholds_ask_for():
    graph = Graph.from_model(tiny_model(n_layers=3))
    mask = _scored(graph, 7, 0.6)
    inf = influence(graph, mask)
    vals = {n: v for n, v in inf.by_node().items() if node_kind(n) not in EXEMPT_KINDS}
    total = sum(vals.values())
    for t in (0.3, 0.6, 0.8, 0.95):
        kept = prune_by_influence(graph, mask, t, 1.0)
        assert bool((kept <= mask).all()) and torch.equal(prune(graph, kept), kept)
        nodes = {graph.src_names[i] for i, _ in kept.nonzero().tolist()} - {"input"}
        # every drawn node is among the fewest most influential ones reaching t of the total
        ranked = sorted(vals, key=lambda n: -vals[n])
        prefix, acc = set(), 0.0
        for n in ranked:
            if acc >= t * total or vals[n] <= 0:
                break
            prefix.add(n)
            acc += vals[n]
        assert nodes <= prefix
    # thresholds are monotone in what they keep, and 1/1 keeps every edge that carries flow
    sizes = [int(prune_by_influence(graph, mask, t).sum()) for t in (0.5, 0.8, 0.99)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    carrying = torch.zeros_like(mask)
    on = inf.edge_flow > 0
    carrying[inf.edges[on, 0], inf.edges[on, 1]] = True
    assert torch.equal(prune_by_influence(graph, mask, 1.0, 1.0), prune(graph, carrying))


def test_edge_threshold_keeps_the_edges_carrying_that_share():
    graph = Graph.from_model(tiny_model(n_layers=3))
    mask = _scored(graph, 11, 0.7)
    kept_nodes_only = prune_by_influence(graph, mask, 1.0, 1.0)
    inf = influence(graph, kept_nodes_only)
    for t in (0.5, 0.9):
        kept = prune_by_influence(graph, mask, 1.0, t)
        flows = dict(zip([tuple(e) for e in inf.edges.tolist()], inf.edge_flow.tolist()))
        chosen = sorted(flows.values(), reverse=True)
        need = next(k for k in range(1, len(chosen) + 1) if sum(chosen[:k]) >= t * sum(chosen))
        assert int(kept.sum()) <= need  # the edge prefix, minus edges left on no input→logits path
        smallest_kept = min(flows[tuple(e)] for e in kept.nonzero().tolist())
        assert smallest_kept >= chosen[need - 1]


def test_bad_thresholds_are_refused():
    graph = Graph.from_model(tiny_model())
    mask = _scored(graph, 0, 0.5)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="threshold"):
            prune_by_influence(graph, mask, node_threshold=bad)
        with pytest.raises(ConfigError, match="threshold"):
            prune_by_influence(graph, mask, edge_threshold=bad)
