"""Circuits: selection from scores (top-n, threshold), pruning (to input→logits paths, or by
influence on the logits), the minimal faithful circuit, ACDC, and saving/loading as JSON +
safetensors."""

from circuitgraph.circuit.acdc import acdc, acdc_sweep
from circuitgraph.circuit.circuit import SCHEMA, Circuit, CircuitFileError, check_supernodes
from circuitgraph.circuit.influence import Influence, influence, prune_by_influence
from circuitgraph.circuit.minimal import build_circuit, minimal_circuit
from circuitgraph.circuit.selection import prune, threshold, top_n

__all__ = [
    "acdc",
    "acdc_sweep",
    "Circuit",
    "CircuitFileError",
    "SCHEMA",
    "minimal_circuit",
    "build_circuit",
    "top_n",
    "threshold",
    "prune",
    "prune_by_influence",
    "influence",
    "Influence",
    "check_supernodes",
]
