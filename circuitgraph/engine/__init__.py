"""Engine: the patched forward pass and what it needs — source activations, ablations, SAE sites
inside the model, and the batched evaluator shared by attribution, circuits and evaluation.
It talks to the model only through :mod:`circuitgraph.models.backend`."""

from circuitgraph.engine.ablation import ABLATIONS, Ablation
from circuitgraph.engine.evaluator import Baselines, CircuitEvaluator
from circuitgraph.engine.patching import patched_logits
from circuitgraph.engine.sources import raw_sources, source_activations

__all__ = [
    "ABLATIONS",
    "Ablation",
    "Baselines",
    "CircuitEvaluator",
    "patched_logits",
    "raw_sources",
    "source_activations",
]
