"""Evaluation by real patched forward passes: metric values, faithfulness, curves, CPR and CMD,
and ROC curves against ground truth. (The batched evaluator itself is
:class:`circuitgraph.engine.CircuitEvaluator`.)"""

from circuitgraph.engine.evaluator import Baselines, CircuitEvaluator
from circuitgraph.evaluation.faithfulness import (
    CURVE_PERCENTS,
    MIB_SCRIPT_PERCENTS,
    FaithfulnessCurve,
    baselines,
    evaluate,
    faithfulness,
    faithfulness_curve,
)
from circuitgraph.evaluation.ground_truth import choose_ground_truth, compare_with_ground_truth
from circuitgraph.evaluation.roc import edge_roc, roc_auc
from circuitgraph.evaluation.stability import Stability, stability

__all__ = [
    "compare_with_ground_truth",
    "choose_ground_truth",
    "roc_auc",
    "edge_roc",
    "CircuitEvaluator",
    "evaluate",
    "faithfulness",
    "faithfulness_curve",
    "baselines",
    "Baselines",
    "FaithfulnessCurve",
    "CURVE_PERCENTS",
    "MIB_SCRIPT_PERCENTS",
    "stability",
    "Stability",
]
