"""Exports: a self-contained interactive HTML viewer, the EAP-IG / MIB graph JSON layout,
GraphML, and the Neuronpedia / circuit-tracer attribution-graph JSON. (Circuits' own JSON +
safetensors files are ``Circuit.save`` / ``Circuit.load``.)"""

from circuitgraph.export.formats import from_graphml, from_mib_json, to_graphml, to_mib_json
from circuitgraph.export.html import write_html
from circuitgraph.export.mib import read_mib_submission, write_mib_submission
from circuitgraph.export.neuronpedia import from_neuronpedia_json, neuronpedia_graph, to_neuronpedia_json

__all__ = [
    "write_html",
    "to_mib_json",
    "from_mib_json",
    "to_graphml",
    "from_graphml",
    "write_mib_submission",
    "read_mib_submission",
    "to_neuronpedia_json",
    "from_neuronpedia_json",
    "neuronpedia_graph",
]
