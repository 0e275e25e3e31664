"""Influence on the logits, and pruning a circuit to the nodes and edges that carry most of it.

A feature circuit can hold hundreds of nodes whose edges each carry a sliver of the effect. As in
circuit-tracer's attribution graphs, we keep the few nodes and edges through which most of the
attribution to the logits flows, but computed from our edge scores:

* The logits' attribution (1 in total; spread over the ``logits@p`` nodes of a position-resolved
  graph in proportion to the |score| reaching each) flows backwards. A node passes the flow it
  receives to its incoming edges in proportion to their |score|, so an edge's flow is the share of
  the logits' attribution that passes through it. A node's influence is the flow through it: what
  leaves through its output, or what enters through the inputs it owns, whichever is larger (they
  differ only at the ends, and at position-resolved heads, which read keys and values at earlier
  positions than the one they write at).
* :func:`prune_by_influence` keeps the fewest nodes whose influence adds up to ``node_threshold``
  of the total (``input`` and ``logits`` nodes are exempt), recomputes the flow among them, keeps
  the fewest edges whose flow adds up to ``edge_threshold``, and finally drops edges on no
  input→logits path (:func:`circuitgraph.circuit.prune`). circuit-tracer's defaults are 0.8 and 0.98.

The flow is computed in float64, one pass over the graph's residual times (latest first), each a
vectorised sum over that time's edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from circuitgraph.circuit.selection import prune
from circuitgraph.errors import ConfigError
from circuitgraph.graph import Graph
from circuitgraph.graph.blocks import as_dense
from circuitgraph.graph.names import dst_node, node_kind

__all__ = ["Influence", "influence", "prune_by_influence", "cumulative_share", "NODE_THRESHOLD", "EDGE_THRESHOLD"]

NODE_THRESHOLD, EDGE_THRESHOLD = 0.8, 0.98  # circuit-tracer's defaults
EXEMPT_KINDS = ("input", "logits")  # never pruned for low influence (they are the graph's ends)


@dataclass
class Influence:
    """The flow of the logits' attribution through a circuit (all float64, summing to at most 1
    per residual cut).

    ``edges [E, 2]`` (row, column) are the circuit's edges in row-major order and ``edge_flow [E]``
    what each carries. ``nodes`` names every node (sources, then the logits node(s)) and
    ``node_influence`` is the flow through each (see the module docstring)."""

    edges: torch.Tensor
    edge_flow: torch.Tensor
    nodes: list[str]
    node_influence: torch.Tensor

    def by_node(self) -> dict[str, float]:
        return dict(zip(self.nodes, self.node_influence.tolist()))


def _owners(graph: Graph) -> tuple[torch.Tensor, list[str]]:
    """For each destination column, the index of the node that owns it in ``sources + logits
    nodes``; and the logits node names (``logits``, or ``logits@p``)."""
    owners, logits = _owner_table(tuple(graph.src_names), tuple(graph.dst_names), tuple(graph.logits_columns.tolist()))
    return owners.clone(), list(logits)


@lru_cache(maxsize=8)  # a page asks for the same graph's table once per slider stop
def _owner_table(src_names: tuple, dst_names: tuple, logit_cols: tuple) -> tuple[torch.Tensor, tuple]:
    index = {n: i for i, n in enumerate(src_names)}
    logits = []
    for j in logit_cols:
        n = dst_node(dst_names[j])
        if n not in index:
            index[n] = len(index)
            logits.append(n)
    return torch.tensor([index[dst_node(d)] for d in dst_names], dtype=torch.long), tuple(logits)


def influence(graph: Graph, mask: Any, scores: Any = None) -> Influence:
    """The flow of the logits' attribution through the edges in ``mask`` (default scores:
    ``graph.scores``), by |score|. See the module docstring."""
    s = as_dense(graph.scores if scores is None else scores)  # (the viewer's flows: small graphs)
    mask = as_dense(mask)
    m = (mask.to(graph.valid.device) & graph.valid).cpu()
    idx = m.nonzero()  # [E, 2] row-major
    rows, cols = idx[:, 0], idx[:, 1]
    w = s.detach().cpu()[rows, cols].double().abs().nan_to_num(0.0, posinf=0.0)  # [E]
    n_src, n_dst = graph.n_src, graph.n_dst
    owners, logits = _owners(graph)
    nodes = list(graph.src_names) + logits

    col_in = torch.zeros(n_dst, dtype=torch.float64).index_add_(0, cols, w)  # |score| reaching each column
    reads = [torch.as_tensor(d, dtype=torch.long) for d in graph.node_dsts]  # columns each source node owns
    r_rows = torch.repeat_interleave(torch.arange(n_src), torch.tensor([len(r) for r in reads], dtype=torch.long))
    r_cols = torch.cat(reads) if reads else torch.zeros(0, dtype=torch.long)
    w_in = torch.zeros(n_src, dtype=torch.float64).index_add_(0, r_rows, col_in[r_cols])  # [n_src]

    per_weight = torch.zeros(n_dst, dtype=torch.float64)  # flow per unit |score| into each column
    logit_cols = graph.logits_columns.cpu()
    total = float(col_in[logit_cols].sum())
    out_flow = torch.zeros(n_src, dtype=torch.float64)
    if total > 0:
        per_weight[logit_cols] = 1.0 / total
        src_time = graph.src_time.cpu()
        edge_time, read_time = src_time[rows], src_time[r_rows]
        safe_w_in = torch.where(w_in > 0, w_in, torch.ones_like(w_in))
        for t in torch.unique(src_time).flip(0).tolist():  # latest writers first: their readers are done
            e = edge_time == t
            out_flow.index_add_(0, rows[e], w[e] * per_weight[cols[e]])
            r = (read_time == t) & (w_in[r_rows] > 0)
            per_weight.index_add_(0, r_cols[r], out_flow[r_rows[r]] / safe_w_in[r_rows[r]])
    edge_flow = w * per_weight[cols]
    in_flow = torch.zeros(len(nodes), dtype=torch.float64).index_add_(0, owners[cols], edge_flow)
    out_all = torch.cat([out_flow, torch.zeros(len(logits), dtype=torch.float64)])
    return Influence(idx, edge_flow, nodes, torch.maximum(out_all, in_flow))


def _keep_share(values: torch.Tensor, share: float) -> torch.Tensor:
    """Bool mask of the fewest entries, largest first, whose sum reaches ``share`` of the total
    (entries that are 0 are never kept; ``share`` ≥ 1 keeps every positive one)."""
    keep = torch.zeros(len(values), dtype=torch.bool)
    total = float(values.sum())
    if total <= 0:
        return keep
    order = torch.argsort(values, descending=True, stable=True)
    before = torch.cumsum(values[order], 0) - values[order]  # sum of the larger ones
    keep[order] = (before < share * total) & (values[order] > 0)
    return keep


def cumulative_share(values: torch.Tensor) -> torch.Tensor:
    """For each entry, the share of the total held by it and every larger entry (1 for the
    smallest; circuit-tracer's ``influence`` field of a node). All 0 when the total is 0."""
    out = torch.zeros(len(values), dtype=torch.float64)
    total = float(values.sum())
    if total <= 0:
        return out
    order = torch.argsort(values, descending=True, stable=True)
    out[order] = torch.cumsum(values[order].double(), 0) / total
    return out


def prune_by_influence(
    graph: Graph,
    mask: torch.Tensor,
    node_threshold: float = NODE_THRESHOLD,
    edge_threshold: float = EDGE_THRESHOLD,
    scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """The edges of ``mask`` that carry most of the attribution to the logits: a bool mask (on
    ``mask``'s device) inside ``mask``. See the module docstring for the rule."""
    for name, t in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 < t <= 1.0:
            raise ConfigError(f"{name} must be in (0, 1], got {t}")
    device = mask.device
    m = (mask.to(graph.valid.device) & graph.valid).cpu()
    inf = influence(graph, m, scores)
    exempt = torch.tensor([node_kind(n) in EXEMPT_KINDS for n in inf.nodes], dtype=torch.bool)
    values = torch.where(exempt, torch.zeros_like(inf.node_influence), inf.node_influence)
    kept_nodes = _keep_share(values, node_threshold) | exempt
    owners, _ = _owners(graph)
    rows, cols = inf.edges[:, 0], inf.edges[:, 1]
    on = kept_nodes[rows] & kept_nodes[owners[cols]]
    m1 = torch.zeros_like(m)
    m1[rows[on], cols[on]] = True
    inf1 = influence(graph, m1, scores)
    keep = _keep_share(inf1.edge_flow, edge_threshold)
    m2 = torch.zeros_like(m)
    m2[inf1.edges[keep, 0], inf1.edges[keep, 1]] = True
    return prune(graph, m2.to(graph.valid.device)).to(device)
