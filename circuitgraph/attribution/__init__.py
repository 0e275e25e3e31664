"""Edge attribution: EAP, EAP-IG (inputs / activations) and exact patching scores for every edge;
node attribution and the selector that chooses neurons and SAE features as graph nodes."""

from circuitgraph.attribution.attribute import METHODS, attribute
from circuitgraph.attribution.nodes import feature_graph, largest_k, neuron_attribution, top_neurons

__all__ = ["attribute", "METHODS", "feature_graph", "largest_k", "neuron_attribution", "top_neurons"]
