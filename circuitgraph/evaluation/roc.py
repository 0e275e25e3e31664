"""ROC curves of circuit discovery against a ground-truth circuit.

Two kinds of input:

* **scores** (one number per edge, e.g. ``graph.scores`` after :func:`~circuitgraph.attribute`):
  items are ranked by |score| and the threshold is swept over every distinct value. Items with
  equal scores are one group that enters the circuit together, so the curve goes diagonally across
  a tie and the area (trapezoids) equals the Mann–Whitney probability that a random positive
  outranks a random negative, ties counting one half.
* **circuits** (a list of boolean masks or :class:`~circuitgraph.circuit.Circuit`, e.g. ACDC at
  several thresholds): each circuit is one (FPR, TPR) point. The curve is the *achievable* one —
  at each FPR the best TPR of any circuit whose FPR is no larger, plus the empty circuit (0, 0)
  and the full graph (1, 1) — a staircase; its area is a lower bound that never rewards
  interpolating between circuits that were not found (ACDC's paper calls this "pessimistic").

Three levels (:func:`edge_roc`):

``edge``  every valid edge of the graph, with q, k and v inputs of a head as separate items
``head``  q/k/v inputs promoted to their head: the item ``src → a1.h2`` is in the ground truth if
          any of ``src → a1.h2.q/.k/.v`` is, its score is the max |score| of the three, and a
          circuit contains it if it contains any of them
``node``  components (heads and MLPs; ``input`` and ``logits`` are left out because every
          non-empty circuit touches them): a node's score is the max |score| over its incident
          edges (in and out), it is in a circuit if any incident edge is, and it is in the ground
          truth if it is an endpoint of a ground-truth edge (or listed in a zoo ``GroundTruth``'s
          ``nodes``, which lets a node-only ground truth be scored)
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass, field

import torch

from circuitgraph.errors import ConfigError
from circuitgraph.graph import Graph, dst_node

LEVELS = ("edge", "head", "node")


@dataclass
class RocCurve:
    """An ROC curve: points from (0, 0) to (1, 1) in order, and the area under it.

    ``thresholds[i]`` is the score cut (items with score ≥ it are selected) of point ``i`` for a
    score curve (``inf`` at (0, 0)), or the index of the circuit that achieves the point for a
    circuit curve (−1 for the added end points). ``auc`` is NaN when the labels hold no positive
    or no negative (the rates are then undefined)."""

    auc: float
    fpr: list[float]
    tpr: list[float]
    thresholds: list[float]
    n_pos: int
    n_neg: int
    kind: str = "scores"  # or "circuits"
    level: str | None = None
    items: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("items")
        return d


def roc_auc(scores, labels) -> RocCurve:
    """ROC of ranking items by ``scores`` (higher = more likely positive) against bool ``labels``.

    The threshold sweeps every distinct score, highest first; tied scores form one step."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten().cpu()
    y = torch.as_tensor(labels).flatten().cpu().bool()
    if s.shape != y.shape:
        raise ConfigError(f"scores and labels must have the same number of items, got {s.numel()} and {y.numel()}")
    if not torch.isfinite(s).all():
        raise ConfigError("scores must be finite (no NaN or inf)")
    P, N = int(y.sum()), int((~y).sum())
    order = torch.argsort(s, descending=True, stable=True)
    s, y = s[order], y[order]
    # last index of each group of equal scores
    if s.numel():
        ends = torch.cat([(s[1:] != s[:-1]).nonzero()[:, 0], torch.tensor([s.numel() - 1])])
    else:
        ends = torch.zeros(0, dtype=torch.long)
    tp = torch.cumsum(y.double(), 0)[ends]
    fp = torch.cumsum((~y).double(), 0)[ends]
    tpr = [0.0] + (tp / P).tolist() if P else [0.0] + [float("nan")] * len(ends)
    fpr = [0.0] + (fp / N).tolist() if N else [0.0] + [float("nan")] * len(ends)
    thresholds = [float("inf")] + s[ends].tolist()
    auc = _trapezoid(fpr, tpr) if (P and N) else float("nan")
    return RocCurve(auc, fpr, tpr, thresholds, P, N, kind="scores")


def points_auc(fpr: Sequence[float], tpr: Sequence[float]) -> RocCurve:
    """The achievable (staircase) ROC curve through circuits' (FPR, TPR) points; see the module
    docstring. Adds the empty circuit (0, 0) and the full graph (1, 1)."""
    pts = sorted((float(f), float(t), i) for i, (f, t) in enumerate(zip(fpr, tpr)))
    xs, ys, ids = [0.0], [0.0], [-1]
    best = 0.0
    for f, t, i in pts + [(1.0, 1.0, -1)]:
        if t <= best:  # dominated: a circuit with no larger FPR already reaches this TPR
            continue
        if f > xs[-1]:  # step right at the old TPR, then up
            xs.append(f)
            ys.append(best)
            ids.append(ids[-1])
        xs.append(f)
        ys.append(t)
        ids.append(i)
        best = t
    if xs[-1] < 1.0:
        xs.append(1.0)
        ys.append(best)
        ids.append(ids[-1])
    return RocCurve(_trapezoid(xs, ys), xs, ys, [float(i) for i in ids], 0, 0, kind="circuits")


def edge_roc(
    graph: Graph,
    scores_or_masks,
    ground_truth_edges,
    level: str = "edge",
) -> RocCurve:
    """ROC of a discovery result against ground-truth edges at ``level`` ("edge", "head", "node").

    ``scores_or_masks``: an ``[n_src, n_dst]`` score tensor (ranked by |score|), or a list of bool
    masks / :class:`~circuitgraph.circuit.Circuit` (one ROC point each). ``ground_truth_edges``:
    ``(src, dst)`` pairs or ``"src->dst"`` strings in the graph's naming, or a zoo ``GroundTruth``.
    A ground truth given at head level (destinations ``a1.h2`` on a q/k/v-split graph) cannot be
    scored at edge level; ask for ``level="head"`` or ``"node"``.
    """
    if level not in LEVELS:
        raise ConfigError(f"unknown ROC level {level!r}; choose one of {list(LEVELS)}")
    gt = _gt_pairs(ground_truth_edges)
    names, member = _membership(graph, level)
    labels = _gt_labels(graph, gt, level, names, _gt_nodes(ground_truth_edges))
    if isinstance(scores_or_masks, torch.Tensor) and scores_or_masks.dtype != torch.bool:
        if scores_or_masks.shape != graph.valid.shape:
            raise ConfigError(f"scores must be [{graph.n_src}, {graph.n_dst}], got {list(scores_or_masks.shape)}")
        roc = roc_auc(_reduce(member, len(names), scores_or_masks.detach().abs()), labels)
    else:
        masks = [scores_or_masks] if isinstance(scores_or_masks, torch.Tensor) else list(scores_or_masks)
        masks = [getattr(m, "mask", m) for m in masks]  # Circuit → its mask
        P, N = int(labels.sum()), int((~labels).sum())
        fpr, tpr = [], []
        for m in masks:
            m = torch.as_tensor(m).bool().cpu()
            if m.ndim == 3 and m.shape[0] == 1:
                m = m[0]
            if m.shape != graph.valid.shape:
                raise ConfigError(f"each mask must be [{graph.n_src}, {graph.n_dst}], got {list(m.shape)}")
            sel = _reduce(member, len(names), m.double()) > 0
            tpr.append(float((sel & labels).sum()) / P if P else float("nan"))
            fpr.append(float((sel & ~labels).sum()) / N if N else float("nan"))
        if P and N:
            roc = points_auc(fpr, tpr)
        else:  # rates undefined without both classes
            roc = RocCurve(float("nan"), fpr, tpr, [float(i) for i in range(len(fpr))], 0, 0, kind="circuits")
        roc.n_pos, roc.n_neg = P, N
    roc.level = level
    roc.items = names
    return roc


def item_scores(graph: Graph, scores: torch.Tensor, level: str = "edge") -> tuple[list[str], torch.Tensor]:
    """The items of ``level`` and their scores (max |score| over their edges), as ROC ranks them."""
    names, member = _membership(graph, level)
    return names, _reduce(member, len(names), scores.detach().abs())


def item_selection(graph: Graph, mask: torch.Tensor, level: str = "edge") -> tuple[list[str], torch.Tensor]:
    """The items of ``level`` and whether a circuit ``mask`` contains each (any of its edges)."""
    names, member = _membership(graph, level)
    return names, _reduce(member, len(names), mask.bool().cpu().double()) > 0


def item_labels(graph: Graph, ground_truth_edges, level: str = "edge") -> tuple[list[str], torch.Tensor]:
    """The items of ``level`` and whether each is in the ground truth (for inspection)."""
    gt = _gt_pairs(ground_truth_edges)
    names, _ = _membership(graph, level)
    return names, _gt_labels(graph, gt, level, names, _gt_nodes(ground_truth_edges))


# ---------------------------------------------------------------------------------------------


def _trapezoid(xs, ys) -> float:
    return float(sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1)))


def _gt_pairs(gt) -> set[tuple[str, str]]:
    edges = getattr(gt, "edges", gt)
    out = set()
    for e in edges:
        if isinstance(e, str):
            if "->" not in e:
                raise ConfigError(f"ground-truth edge {e!r} must look like 'src->dst'")
            e = tuple(e.split("->", 1))
        s, d = e
        out.add((str(s), str(d)))
    return out


def _membership(graph: Graph, level: str) -> tuple[list[str], tuple[torch.Tensor, torch.Tensor]]:
    """Item names of ``level`` and a sparse membership: ``(item [M], flat edge index [M])`` (an
    edge belongs to one item at edge and head level, to its two endpoint components at node level)."""
    if level not in LEVELS:
        raise ConfigError(f"unknown ROC level {level!r}; choose one of {list(LEVELS)}")
    valid = graph.valid.cpu()
    n_dst = valid.shape[1]
    index: dict[str, int] = {}
    if level == "node":
        for name in graph.src_names[1:]:  # components: every source but input
            index[name] = len(index)
    items, edges = [], []
    for i, j in valid.nonzero().tolist():
        d = graph.dst_names[j]
        if level == "node":
            keys = [k for k in (graph.src_names[i], dst_node(d)) if k in index]
        else:
            keys = [f"{graph.src_names[i]}->{dst_node(d) if level == 'head' else d}"]
        for k in keys:
            items.append(index.setdefault(k, len(index)))
            edges.append(i * n_dst + j)
    return list(index), (torch.tensor(items, dtype=torch.long), torch.tensor(edges, dtype=torch.long))


def _reduce(member, n_items: int, values: torch.Tensor) -> torch.Tensor:
    """Per-item max of ``values [n_src, n_dst]`` over the item's edges (0 for an item without edges)."""
    items, edges = member
    v = values.detach().double().cpu().flatten()[edges]
    return torch.zeros(n_items, dtype=torch.float64).scatter_reduce(0, items, v, "amax", include_self=True)


def _gt_nodes(gt) -> set[str]:
    """Extra ground-truth nodes: a zoo ``GroundTruth`` lists its components in ``nodes`` (a
    head-level ground truth may name nodes only, with no edges)."""
    return set(getattr(gt, "nodes", ()) or ())


def _gt_labels(
    graph: Graph, gt: set[tuple[str, str]], level: str, names: list[str], extra_nodes: Set[str] = frozenset()
) -> torch.Tensor:
    heads_only = {d for _, d in gt if d not in graph.dst_index}
    for s, d in gt:
        if s not in graph.src_index:
            raise ConfigError(f"ground-truth edge {s}->{d}: {s!r} is not a source node of this graph")
        if d not in graph.dst_index and f"{d}.q" not in graph.dst_index:  # a head name is allowed
            raise ConfigError(f"ground-truth edge {s}->{d}: {d!r} is not a destination of this graph")
    if level == "edge" and heads_only:
        raise ConfigError(
            f"the ground truth names whole heads as destinations ({', '.join(sorted(heads_only)[:3])}…) "
            "while the graph splits q/k/v inputs, so it cannot be scored at edge level; use level='head' or 'node'"
        )
    if level == "node":
        unknown = extra_nodes - set(graph.src_names) - {"logits"}
        if unknown:
            raise ConfigError(f"ground-truth nodes {sorted(unknown)[:3]} are not nodes of this graph")
        pos = set(extra_nodes)
        for s, d in gt:
            pos.update({s, dst_node(d)})
        return torch.tensor([n in pos for n in names], dtype=torch.bool)
    if level == "head":
        pos = {f"{s}->{dst_node(d)}" for s, d in gt}
    else:
        pos = {f"{s}->{d}" for s, d in gt}
    unknown = pos - set(names)
    if unknown:
        raise ConfigError(f"ground-truth edges {sorted(unknown)[:3]} are not valid edges of this graph")
    return torch.tensor([n in pos for n in names], dtype=torch.bool)
