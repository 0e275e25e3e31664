"""Evaluation by real patched forward passes: metric values, faithfulness, curves, CPR and CMD."""

from circuitgraph.evaluation.faithfulness import (
    CURVE_PERCENTS, Baselines, CircuitEvaluator, FaithfulnessCurve, baselines, evaluate, faithfulness, faithfulness_curve,
)

from circuitgraph.evaluation.roc import edge_roc, roc_auc  # noqa: E402

__all__ = ["roc_auc", "edge_roc", "CircuitEvaluator", "evaluate", "faithfulness", "faithfulness_curve", "baselines", "Baselines", "FaithfulnessCurve", "CURVE_PERCENTS"]
