"""Graph compiler: a HookedTransformer → sources, destinations and edges (see :class:`Graph`)."""

from circuitgraph.graph.compat import UnsupportedModelError, check_model
from circuitgraph.graph.graph import Architecture, Graph, config_hash, node_kind
from circuitgraph.graph.positional import PositionalGraph

__all__ = ["Graph", "PositionalGraph", "Architecture", "config_hash", "node_kind", "check_model", "UnsupportedModelError"]
