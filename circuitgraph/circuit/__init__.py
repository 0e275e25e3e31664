"""Circuits: selection from scores (top-n, threshold), pruning (to input→logits paths, or by
influence on the logits), the minimal faithful circuit, ACDC, learned edge masks, and
saving/loading as JSON + safetensors."""

from circuitgraph.circuit.acdc import acdc, acdc_sweep
from circuitgraph.circuit.circuit import SCHEMA, Circuit, CircuitFileError, check_supernodes
from circuitgraph.circuit.influence import Influence, influence, prune_by_influence
from circuitgraph.circuit.learned import LearnedMasks, learn_edge_masks, learned_circuit
from circuitgraph.circuit.minimal import build_circuit, minimal_circuit
from circuitgraph.circuit.selection import prune, threshold, top_n

# methods that search for the circuit themselves (beside the attribution methods that score edges)
SEARCH_METHODS = ("acdc", "edge-pruning")

__all__ = [
    "SEARCH_METHODS",
    "acdc",
    "acdc_sweep",
    "Circuit",
    "CircuitFileError",
    "SCHEMA",
    "minimal_circuit",
    "learned_circuit",
    "learn_edge_masks",
    "LearnedMasks",
    "build_circuit",
    "top_n",
    "threshold",
    "prune",
    "prune_by_influence",
    "influence",
    "Influence",
    "check_supernodes",
]
