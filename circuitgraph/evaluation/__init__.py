"""Evaluation by real patched forward passes: metric values, faithfulness, curves, CPR and CMD."""

from circuitgraph.evaluation.faithfulness import (
    CURVE_PERCENTS, Baselines, FaithfulnessCurve, baselines, evaluate, faithfulness, faithfulness_curve,
)

__all__ = ["evaluate", "faithfulness", "faithfulness_curve", "baselines", "Baselines", "FaithfulnessCurve", "CURVE_PERCENTS"]
