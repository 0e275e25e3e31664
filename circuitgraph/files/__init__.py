"""Files that cannot lie: declarative schemas checked before allocation, bounded readers, JSON +
safetensors pairs bound by a pair id and a content hash, and locked run directories.

* :mod:`~circuitgraph.files.schema`: one declarative schema per format, and the limits.
* :mod:`~circuitgraph.files.reading`: opening and parsing files within those limits.
* :mod:`~circuitgraph.files.pairs`: binding a JSON file to its tensor file; tensor specs.
* :mod:`~circuitgraph.files.rundir`: the run-directory lock, the summary's manifest, ``show``.
"""

from circuitgraph.files.pairs import Binding, TensorSpec, read_tensors, sha256_file, write_tensors
from circuitgraph.files.reading import check_file, parse_json, read_json
from circuitgraph.files.schema import LIMITS, Limits, validate

__all__ = [
    "LIMITS",
    "Limits",
    "validate",
    "check_file",
    "parse_json",
    "read_json",
    "Binding",
    "TensorSpec",
    "read_tensors",
    "sha256_file",
    "write_tensors",
]
