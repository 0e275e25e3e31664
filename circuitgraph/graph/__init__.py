"""The graph: a pure description of a model's residual-stream writers (sources), readers
(destinations) and the edges between them (see :class:`Graph`). Nothing here runs a model."""

from circuitgraph.graph.graph import Graph, PositionalGraph
from circuitgraph.graph.names import NodeName, dst_node, node_kind, parse_node
from circuitgraph.graph.sites import Site, make_site, site_node
from circuitgraph.models.backend import Architecture, UnsupportedModelError, check_model, config_hash

__all__ = [
    "Graph",
    "PositionalGraph",
    "Architecture",
    "config_hash",
    "node_kind",
    "dst_node",
    "parse_node",
    "NodeName",
    "Site",
    "make_site",
    "site_node",
    "check_model",
    "UnsupportedModelError",
]
