"""From scores to edge masks: top-n, threshold, and pruning to input→logits paths. (The minimal
circuit, which measures, is :mod:`circuitgraph.circuit.minimal`.)
"""

from __future__ import annotations

import torch

from circuitgraph.errors import ConfigError
from circuitgraph.graph import Graph


def ranking(graph: Graph, absolute: bool = True, scores: torch.Tensor | None = None) -> torch.Tensor:
    s = graph.scores if scores is None else scores
    return s.abs() if absolute else -s


def top_n(graph: Graph, n: int, absolute: bool = True, scores: torch.Tensor | None = None) -> torch.Tensor:
    """The ``n`` highest-ranked valid edges (by |score|, or by −score when ``absolute=False``)."""
    if n < 0:
        raise ConfigError(f"n must be ≥ 0, got {n}")
    r = ranking(graph, absolute, scores).masked_fill_(~graph.valid, float("-inf"))  # (a fresh copy)
    return _largest(r, min(n, graph.n_edges))


def _largest(r: torch.Tensor, k: int, block: int = 1 << 24) -> torch.Tensor:
    """A bool mask of the ``k`` largest entries of ``r [R, C]`` (ties: first in row-major order).

    Memory stays O(block): a whole-matrix sort (or CPU ``topk``) keeps an int64 index per entry,
    8 bytes × n_src × n_dst, more than the scores themselves at neuron or feature scale. So the
    k-th value is found by bisection on counts, a block of rows at a time, and ties at it are
    filled in row order."""
    R, C = r.shape
    mask = torch.zeros(R, C, dtype=torch.bool, device=r.device)
    if k == 0:
        return mask
    step = max(1, block // max(C, 1))
    blocks = [r[i : i + step] for i in range(0, R, step)]

    def count(t: float) -> int:  # entries ≥ t, a block at a time (no copy of r)
        return sum(int(torch.count_nonzero(b >= t)) for b in blocks)

    inf = float("inf")
    lo = min(float(torch.where(torch.isfinite(b), b, inf).min()) for b in blocks)  # count(≥ lo) ≥ k
    hi = max(float(torch.where(torch.isfinite(b), b, -inf).max()) for b in blocks)
    if count(hi) >= k:  # the k largest are all the maximum
        kth = hi
    else:  # bisect to the k-th largest value t*: count(≥ t*) ≥ k > count(≥ anything above t*)
        while True:  # (ends: exactly k entries ≥ lo, or lo and hi adjacent floats)
            mid = lo + (hi - lo) / 2
            if mid in (lo, hi):
                break
            c = count(mid)
            if c >= k:
                lo = mid
                if c == k:
                    break
            else:
                hi = mid
        # t* is the smallest entry ≥ lo (exactly k of them, or none strictly between lo and hi)
        kth = min(float(b[b >= lo].min()) for b in blocks if bool((b >= lo).any()))
    for i, b in zip(range(0, R, step), blocks):  # everything above it, then ties in row order
        mask[i : i + step] = b > kth
    need = k - int(torch.count_nonzero(mask))  # (a bool .sum() would make an int64 copy)
    for i, b in zip(range(0, R, step), blocks):  # (per block: a whole-matrix compare upcasts bf16)
        if need <= 0:
            break
        ties = (b == kth).flatten().nonzero()[:need, 0]
        mask[i : i + step].view(-1)[ties] = True
        need -= len(ties)
    return mask


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
