"""A found circuit against a known one: precision, recall and the edge ROC AUC of the scores.

The zoo ships ground-truth circuits, one per ablation convention (see
:class:`circuitgraph.zoo.GroundTruth`). :func:`choose_ground_truth` picks the one that matches a
run, and :func:`compare_with_ground_truth` measures the circuit against it at the finest level
the ground truth has (edges; heads when it names whole heads as destinations; nodes when it
names no edge), with the same items as :mod:`circuitgraph.evaluation.roc`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from circuitgraph.evaluation.roc import edge_roc, item_labels, item_selection
from circuitgraph.graph import Graph
from circuitgraph.graph.blocks import as_dense


def ground_truth_level(graph: Graph, ground_truth: Any) -> str:
    """``edge`` when every ground-truth destination is a destination of ``graph``; ``head`` when it
    names whole heads (q/k/v merged); ``node`` when it lists components only."""
    edges = list(getattr(ground_truth, "edges", ()) or ())
    if not edges:
        return "node"
    return "edge" if all(d in graph.dst_index for _, d in edges) else "head"


def choose_ground_truth(ground_truths: Mapping[str, Any], ablation: str, task: str) -> tuple[str, Any] | None:
    """The ``(convention, ground truth)`` to compare a run with: the one for the run's task under
    its ablation (the convention of the same name first), else the task's first one (the caller
    says that the conventions differ); None when the task has none."""
    for_task = [(c, gt) for c, gt in ground_truths.items() if getattr(gt, "task", task) == task]
    if not for_task:
        return None
    same = [(c, gt) for c, gt in for_task if c == ablation] + [
        (c, gt) for c, gt in for_task if getattr(gt, "ablation", None) == ablation and c != ablation
    ]
    return (same or for_task)[0]


def compare_with_ground_truth(
    circuit: Any, ground_truth: Any, convention: str | None = None, scores: torch.Tensor | None = None
) -> dict:
    """How ``circuit`` compares with ``ground_truth`` (a zoo ``GroundTruth``, or anything with
    ``edges`` and ``nodes``). Returns a JSON-ready dict:

    ``level``                   the items compared: edge, head or node
    ``precision``, ``recall``   of the circuit's items (None when it or the truth has none)
    ``auc``                     ROC AUC of ranking the items by |score| (None when undefined)
    ``n_truth``, ``n_found``, ``n_correct``
    ``truth``, ``missing``, ``extra``   item names (``src->dst``, or node names at node level)
    ``convention``, ``ablation``, ``matches_ablation``   which ground truth, and whether it was
                                found under the circuit's own ablation

    Raises :class:`~circuitgraph.errors.ConfigError` when the ground truth names nodes this graph
    does not have (e.g. a position- or feature-resolved graph)."""
    graph = circuit.graph
    level = ground_truth_level(graph, ground_truth)
    names, labels = item_labels(graph, ground_truth, level)
    _, selected = item_selection(graph, circuit.dense_mask(), level)
    truth = {n for n, y in zip(names, labels.tolist()) if y}
    found = {n for n, s in zip(names, selected.tolist()) if s}
    correct = truth & found
    s = as_dense(graph.scores if scores is None else scores)  # (ground truths are for small graphs)
    auc = edge_roc(graph, s, ground_truth, level=level).auc if bool(s.abs().sum()) else float("nan")
    ablation = getattr(ground_truth, "ablation", None)
    ran_under = ((circuit.metadata or {}).get("ablation") or {}).get("kind")
    return {
        "convention": convention,
        "ablation": ablation,
        "matches_ablation": ablation is None or ran_under is None or ablation == ran_under,
        "level": level,
        "precision": len(correct) / len(found) if found else None,
        "recall": len(correct) / len(truth) if truth else None,
        "auc": None if auc != auc else float(auc),  # NaN (one class only) → None, valid JSON
        "n_truth": len(truth),
        "n_found": len(found),
        "n_correct": len(correct),
        "truth": sorted(truth),
        "missing": sorted(truth - found),
        "extra": sorted(found - truth),
    }
