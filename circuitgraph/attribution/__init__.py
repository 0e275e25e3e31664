"""Edge attribution: EAP, EAP-IG (inputs / activations) and exact patching scores for every edge."""

from circuitgraph.attribution.attribute import METHODS, attribute

__all__ = ["attribute", "METHODS"]
