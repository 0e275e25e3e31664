"""From scores to circuits: top-n, threshold, pruning to input→logits paths, and the minimal
circuit whose *measured* faithfulness reaches a target.
"""

from __future__ import annotations

import torch

from circuitgraph.graph import Graph


def ranking(graph: Graph, absolute: bool = True, scores: torch.Tensor | None = None) -> torch.Tensor:
    s = graph.scores if scores is None else scores
    return s.abs() if absolute else -s


def top_n(graph: Graph, n: int, absolute: bool = True, scores: torch.Tensor | None = None) -> torch.Tensor:
    """The ``n`` highest-ranked valid edges (by |score|, or by −score when ``absolute=False``)."""
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}")
    r = ranking(graph, absolute, scores).masked_fill_(~graph.valid, float("-inf"))  # (a fresh copy)
    mask = torch.zeros(r.numel(), dtype=torch.bool, device=r.device)
    mask[_largest(r, min(n, graph.n_edges))] = True
    return mask.view(graph.valid.shape)


def _largest(r: torch.Tensor, k: int, block: int = 1 << 24) -> torch.Tensor:
    """Flat indices of the ``k`` largest entries of ``r [R, C]``, a block of rows at a time: a
    whole-matrix sort (or CPU ``topk``) keeps an int64 index per entry, 8 bytes × n_src × n_dst,
    which at neuron or feature scale is more than the scores themselves."""
    R, C = r.shape
    step = max(1, block // max(C, 1))
    best_v = best_i = None
    for i in range(0, R, step):
        part = r[i:i + step].flatten()
        v, j = part.topk(min(k, part.numel()))
        j = j + i * C
        if best_v is not None:
            v, j = torch.cat([best_v, v]), torch.cat([best_i, j])
            keep = v.topk(min(k, v.numel())).indices
            v, j = v[keep], j[keep]
        best_v, best_i = v, j
    return best_i


def threshold(graph: Graph, tau: float, absolute: bool = True, scores: torch.Tensor | None = None) -> torch.Tensor:
    """Valid edges whose |score| (or −score) is at least ``tau``."""
    return (ranking(graph, absolute, scores) >= tau) & graph.valid


def prune(graph: Graph, mask: torch.Tensor) -> torch.Tensor:
    """Drop edges that lie on no path from ``input`` to ``logits``: they cannot carry a clean/ablated
    difference to the output. One pass forward and one backward over nodes (not edges)."""
    mask = mask & graph.valid
    reach = torch.zeros(graph.n_src, dtype=torch.bool, device=mask.device)  # reachable from input
    inputs = graph.input_rows.to(mask.device)
    reach[inputs] = True
    for s in range(graph.n_src):
        if len(graph.node_dsts[s]):  # every node but the input reads something
            reach[s] = bool((mask[:, graph.node_dsts[s]] & reach[:, None]).any())
    reads_live = torch.zeros(graph.n_dst, dtype=torch.bool, device=mask.device)  # owner reaches logits
    reads_live[graph.logits_columns] = True
    for s in range(graph.n_src - 1, -1, -1):
        if bool((mask[s] & reads_live).any()):
            reads_live[graph.node_dsts[s]] = True
    return mask & reach[:, None] & reads_live[None, :]
