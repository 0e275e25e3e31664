"""Hypotheses as data: a versioned JSON file (schema ``circuitgraph.hypothesis/1``).

::

    {
      "schema": "circuitgraph.hypothesis/1",
      "name": "induction", "description": "...",
      "model": {"name": "...", "config_hash": "3f2a...", "n_layers": 2, "n_heads": 4,
                "has_mlp": false, "d_model": 64},            # or null: not tied to a model
      "root": "output",
      "nodes": [                                             # depth-first from the root
        {"name": "output", "feature": {"fn": "answer_label", "args": {}},
         "children": ["induction"], "description": ""},
        {"name": "prev_token", "feature": {"fn": "token_at", "args": {"k": -1, "relative": true}},
         "children": ["emb_prev"], "description": ""},
        ...
      ],
      "correspondence": {"output": "logits", "induction": "a1.h3", "prev_token": "a0.h1", ...},
      "restrict": [{"parent": "induction", "child": "prev_token", "slots": ["k"]}, ...],
      "metadata": {...}                                      # free-form JSON
    }

Features are referenced declaratively (a built-in or a registered name with JSON arguments);
loading never imports or evaluates anything from the file. Writes are atomic (temporary file,
then rename).

This module knows the file, not the hypothesis: it turns a document into a
:class:`HypothesisRecord` (plain data, checked for form) and back, and reads and writes the JSON.
:class:`~circuitgraph.hypothesis.interpretation.Hypothesis` builds itself from a record (checking
meaning) and is the one that imports this module, so the dependency runs one way.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitgraph.atomic import atomic_write
from circuitgraph.errors import FileFormatError, HypothesisError, file_error
from circuitgraph.files.reading import check_bounds, read_json
from circuitgraph.files.rundir import check_member
from circuitgraph.files.schema import LIMITS, Bool, Int, JsonObject, ListOf, MapOf, Obj, Optional, Str, validate
from circuitgraph.graph import config_hash
from circuitgraph.hypothesis.features import Feature, UnknownFeatureError

SCHEMA = "circuitgraph.hypothesis/1"
_NAME = Str(max_len=256, min_len=1, label="a non-empty name")
_MODEL = Obj(
    required={
        "config_hash": Str(max_len=64),
        "n_layers": Int(1, LIMITS.max_layers),
        "n_heads": Int(1, LIMITS.max_heads),
        "has_mlp": Bool(),
        "d_model": Int(1, LIMITS.max_d_model),
    },
    optional={"name": Optional(Str(max_len=1024))},
    label="an object {config_hash, n_layers, n_heads, has_mlp, d_model}",
)
_FEATURE = Obj(required={"fn": _NAME}, optional={"args": JsonObject()}, label='a feature {"fn": name, "args": {...}}')
_NODE = Obj(
    required={"name": _NAME, "feature": _FEATURE},
    optional={"children": ListOf(_NAME), "description": Str()},
    label="an interpretation node {name, feature, children, description}",
)
_RESTRICTION = Obj(
    required={"parent": _NAME, "child": _NAME, "slots": ListOf(Str(choices=("q", "k", "v")), min_len=1, max_len=3)},
    label='a restriction {"parent": name, "child": name, "slots": [...]}',
)
# the file, declaratively (the module docstring shows it; docs/causal-scrubbing.md explains it)
HYPOTHESIS_FILE = Obj(
    required={
        "schema": Str(max_len=64),
        "name": Str(max_len=1024),
        "root": _NAME,
        "nodes": ListOf(_NODE, min_len=1, max_len=1 << 16),
        "correspondence": MapOf(Str(max_len=256, label="a model node name"), key_label="a node name"),
    },
    optional={
        "restrict": ListOf(_RESTRICTION),
        "metadata": JsonObject(),
        "description": Str(),
        "model": Optional(_MODEL),
    },
    label="a hypothesis object",
)

__all__ = [
    "SCHEMA",
    "HypothesisFileError",
    "NodeRecord",
    "HypothesisRecord",
    "to_doc",
    "from_doc",
    "check_model",
    "write_doc",
    "read_doc",
]


class HypothesisFileError(HypothesisError, FileFormatError):
    """A hypothesis file is malformed, uses an unknown feature, or belongs to another model."""


@dataclass(frozen=True)
class NodeRecord:
    """One interpretation node as stored: its feature and its children's names."""

    name: str
    feature: Feature
    children: tuple[str, ...] = ()
    description: str = ""


@dataclass
class HypothesisRecord:
    """A hypothesis as plain data, exactly what a file holds. :func:`from_doc` checks its form (the
    node graph is closed and rooted, names are strings); whether it fits a model is checked when a
    Hypothesis is built from it."""

    name: str
    root: str
    nodes: dict[str, NodeRecord]  # depth-first from the root
    correspondence: dict[str, str]
    restrict: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (parent, child, slots)
    description: str = ""
    model: dict | None = None
    metadata: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------ record → doc
def to_doc(rec: HypothesisRecord) -> dict:
    """The JSON document of ``rec``; a :class:`HypothesisError` if a feature has no name to save."""
    nodes = []
    for n, node in rec.nodes.items():
        try:
            feat = node.feature.to_json()
        except HypothesisError as e:
            raise HypothesisError(f"interpretation node {n!r}: {e}") from None
        nodes.append({"name": n, "feature": feat, "children": list(node.children), "description": node.description})
    return {
        "schema": SCHEMA,
        "name": rec.name,
        "description": rec.description,
        "model": dict(rec.model) if rec.model is not None else None,
        "root": rec.root,
        "nodes": nodes,
        "correspondence": dict(rec.correspondence),
        "restrict": [{"parent": p, "child": c, "slots": list(s)} for p, c, s in rec.restrict],
        "metadata": rec.metadata,
    }


# ------------------------------------------------------------------------------------ doc → record
def from_doc(doc: Any, source: str | Path = "hypothesis") -> HypothesisRecord:
    """Check ``doc``'s form (:data:`HYPOTHESIS_FILE`, then the node graph) and return it as a
    record; a :class:`HypothesisFileError` (or an :class:`UnknownFeatureError`) naming ``source``
    and the fault otherwise."""
    _check_header(doc, source)
    nodes = _read_nodes(doc["nodes"], source)
    _check_node_graph(nodes, doc["root"], source)
    restrict = [(r["parent"], r["child"], list(r["slots"])) for r in doc.get("restrict", [])]
    twice = sorted(pc for pc, n in Counter((p, c) for p, c, _ in restrict).items() if n > 1)
    if twice:
        raise file_error(
            source, f"restrict lists the edge {twice[0][0]} → {twice[0][1]} twice", kind=HypothesisFileError
        )
    return HypothesisRecord(
        name=doc["name"],
        root=doc["root"],
        nodes=nodes,
        correspondence=dict(doc["correspondence"]),
        restrict=restrict,
        description=doc.get("description", ""),
        model=dict(doc["model"]) if doc.get("model") is not None else None,
        metadata=doc.get("metadata", {}),
    )


def _check_header(doc: Any, source: str | Path) -> None:
    """The document is an object of this schema with the required keys, each of the right type."""
    if not isinstance(doc, dict):
        raise file_error(
            source, f"a hypothesis file holds a JSON object, got {type(doc).__name__}", kind=HypothesisFileError
        )
    schema = doc.get("schema")
    if schema != SCHEMA:
        if isinstance(schema, str) and schema.startswith("circuitgraph.hypothesis/"):
            raise file_error(
                source,
                f"schema {schema!r} is not readable by this version of circuitgraph (reads {SCHEMA!r})",
                kind=HypothesisFileError,
            )
        raise file_error(
            source, f"not a circuitgraph hypothesis (schema {schema!r}, expected {SCHEMA!r})", kind=HypothesisFileError
        )
    validate(doc, HYPOTHESIS_FILE, source, HypothesisFileError)


def _read_nodes(specs: list, source: str | Path) -> dict[str, NodeRecord]:
    """Node entries (their form checked by the schema), each with a unique name and a known
    feature. Features are read last, so that a malformed node list is reported before an unknown
    feature."""
    checked: dict[str, dict] = {}
    for spec in specs:
        name = spec["name"]
        if name in checked:
            raise file_error(source, f"node name {name!r} appears twice", kind=HypothesisFileError)
        checked[name] = spec
    return {
        name: NodeRecord(
            name, _read_feature(spec, source), tuple(spec.get("children", [])), spec.get("description", "")
        )
        for name, spec in checked.items()
    }


def _read_feature(spec: dict, source: str | Path) -> Feature:
    name = spec["name"]
    try:
        return Feature.from_json(spec.get("feature"), where=f"node {name!r}: ")
    except UnknownFeatureError as e:
        e.where = f"{source}: node {name!r}: "
        raise
    except HypothesisError as e:
        raise file_error(source, f"node {name!r}: {e}", kind=HypothesisFileError) from None


def _check_node_graph(nodes: dict[str, NodeRecord], root: str, source: str | Path) -> None:
    """Every child is a node, the root is one, and every node is reachable from the root."""
    for name, node in nodes.items():
        for c in node.children:
            if c not in nodes:
                raise file_error(
                    source, f"node {name!r} lists child {c!r}, which is not among the nodes", kind=HypothesisFileError
                )
    if root not in nodes:
        raise file_error(source, f"root {root!r} is not among the nodes", kind=HypothesisFileError)
    reach, todo = set(), [root]
    while todo:
        n = todo.pop()
        if n not in reach:
            reach.add(n)
            todo.extend(nodes[n].children)
    unreachable = [n for n in nodes if n not in reach]
    if unreachable:
        raise file_error(
            source, f"node(s) {unreachable} are not reachable from the root {root!r}", kind=HypothesisFileError
        )


# ------------------------------------------------------------------------------------ model check
def check_model(info: dict | None, model, source: str | Path) -> None:
    """Refuse a file made for another model (by config hash), naming both models."""
    mine = config_hash(model.cfg)
    info = info or {}
    theirs = info.get("config_hash")
    if theirs is not None and theirs != mine:
        made = info.get("name") or "another model"
        raise file_error(
            source,
            f"this hypothesis was made for {made!r} (config hash {theirs}) but the model given has config hash {mine} "
            f"({model.cfg.n_layers} layers × {model.cfg.n_heads} heads); load it with the model it was written for, or "
            "rebuild it for this model",
            kind=HypothesisFileError,
        )


# ------------------------------------------------------------------------------------ files
def write_doc(doc: dict, path: str | Path) -> Path:
    """Write ``doc`` as JSON to ``path`` (``.json`` appended if missing), atomically."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        path = path.with_suffix(".json")
    try:
        text = json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise HypothesisError(
            f"hypothesis {doc.get('name')!r} cannot be saved: its metadata is not plain JSON ({e})"
        ) from None
    where = f"hypothesis {doc.get('name')!r} (to be saved as {path})"
    validate(doc, HYPOTHESIS_FILE, where, HypothesisError)  # what is saved always loads
    check_bounds(doc, where, HypothesisError)
    return atomic_write(path, lambda p: p.write_text(text + "\n", encoding="utf-8"))


def read_doc(path: str | Path) -> Any:
    """The JSON document in ``path`` (plain JSON: no NaN or Infinity), read within the limits of
    :mod:`circuitgraph.files.reading`; a :class:`HypothesisFileError` otherwise."""
    doc = read_json(path, HypothesisFileError, allow_nan=False)
    problem = check_member(path)
    if problem:
        raise file_error(path, problem, kind=HypothesisFileError)
    return doc
