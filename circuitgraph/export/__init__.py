"""Exports: a self-contained interactive HTML viewer, the EAP-IG / MIB graph JSON layout, and
GraphML. (Circuits' own JSON + safetensors files are ``Circuit.save`` / ``Circuit.load``.)"""

from circuitgraph.export.formats import from_graphml, from_mib_json, to_graphml, to_mib_json
from circuitgraph.export.html import write_html
from circuitgraph.export.mib import read_mib_submission, write_mib_submission

__all__ = [
    "write_html",
    "to_mib_json",
    "from_mib_json",
    "to_graphml",
    "from_graphml",
    "write_mib_submission",
    "read_mib_submission",
]
