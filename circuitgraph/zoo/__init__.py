"""The model zoo: small TransformerLens models with known circuits, shipped as package data.

>>> from circuitgraph import zoo
>>> zoo.list()                        # e.g. ['induction', 'tracr_reverse', …]
>>> entry = zoo.load("induction")     # ZooModel: .model, .tasks, .ground_truth, .encoding
>>> gt = entry.ground_truth_for("corrupted")
>>> gt.edges                          # frozenset of (src, dst) node-name pairs

Entries are read from JSON and safetensors only; nothing is downloaded and no code is executed.
"""

from circuitgraph.zoo.registry import (
    DATA_DIR,
    SCHEMA,
    GroundTruth,
    ZooLookupError,
    ZooModel,
    list_models,
    load,
    load_path,
)

list = list_models  # noqa: A001  (``circuitgraph.zoo.list()`` is the public name)

__all__ = [
    "list",
    "list_models",
    "load",
    "load_path",
    "ZooModel",
    "GroundTruth",
    "ZooLookupError",
    "SCHEMA",
    "DATA_DIR",
]
