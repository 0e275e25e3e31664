"""The package's error types: one base class, so a caller can catch everything circuitgraph
raises on purpose, and one subclass per kind of fault, so the message's reader knows where to look.

Each subclass also derives from the builtin its faults used to raise (``ValueError``, ``TypeError``,
``KeyError``), so code written against those keeps working.
"""

from __future__ import annotations

from pathlib import Path


class CircuitGraphError(Exception):
    """Base of every error circuitgraph raises on purpose. Messages name the problem and the fix."""


class ConfigError(CircuitGraphError, ValueError):
    """A run's configuration (CLI/Hydra options, function arguments) is invalid."""


class TaskError(CircuitGraphError, ValueError):
    """A task (prompts, answers, metric, task file) is malformed or does not fit the model."""


class GraphError(CircuitGraphError, ValueError):
    """A graph cannot be built as asked (nodes, sites, positions out of range or incompatible)."""


class ModelUnsupportedError(CircuitGraphError, TypeError):
    """The model's architecture or backend is one circuitgraph cannot represent exactly (yet)."""


class FileFormatError(CircuitGraphError, ValueError):
    """A file circuitgraph reads (circuit, scores, SAE, MIB JSON, GraphML, …) is malformed."""


class MissingFileError(FileFormatError, FileNotFoundError):
    """A file circuitgraph was asked to read does not exist (also a ``FileNotFoundError``)."""


class TaskTypeError(TaskError, TypeError):
    """Token ids of the wrong kind (floats, booleans, tensors without values)."""


class RunDirectoryBusyError(CircuitGraphError, RuntimeError):
    """Another run holds the lock of the run directory this run was asked to write into."""


class HypothesisError(CircuitGraphError, ValueError):
    """A causal-scrubbing hypothesis is malformed or does not fit the model it is used with."""


def file_error(source: str | Path, msg: str, kind: type[FileFormatError] = FileFormatError) -> FileFormatError:
    """``kind`` with the file named first: ``"{source}: {msg}"`` (the one place that formats it)."""
    return kind(f"{source}: {msg}")


__all__ = [
    "CircuitGraphError",
    "ConfigError",
    "TaskError",
    "GraphError",
    "ModelUnsupportedError",
    "FileFormatError",
    "MissingFileError",
    "TaskTypeError",
    "RunDirectoryBusyError",
    "HypothesisError",
    "file_error",
]
