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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitgraph.atomic import atomic_write
from circuitgraph.errors import FileFormatError, HypothesisError, file_error
from circuitgraph.graph import config_hash
from circuitgraph.hypothesis.features import Feature, UnknownFeatureError

SCHEMA = "circuitgraph.hypothesis/1"
_KEYS = ("schema", "name", "root", "nodes", "correspondence")
_MODEL_KEYS = ("config_hash", "n_layers", "n_heads", "has_mlp", "d_model")
_TYPES = (
    ("name", str, "a string"),
    ("root", str, "a string"),
    ("nodes", list, "a list"),
    ("correspondence", dict, "an object"),
    ("restrict", list, "a list"),
    ("metadata", dict, "an object"),
    ("description", str, "a string"),
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
    """Check ``doc``'s form and return it as a record; a :class:`HypothesisFileError` (or an
    :class:`UnknownFeatureError`) naming ``source`` and the fault otherwise."""
    _check_header(doc, source)
    nodes = _read_nodes(doc["nodes"], source)
    _check_node_graph(nodes, doc["root"], source)
    correspondence = _read_correspondence(doc["correspondence"], source)
    restrict = [_read_restriction(i, r, source) for i, r in enumerate(doc.get("restrict", []))]
    return HypothesisRecord(
        name=doc["name"],
        root=doc["root"],
        nodes=nodes,
        correspondence=correspondence,
        restrict=restrict,
        description=doc.get("description", ""),
        model=_read_model(doc.get("model"), source),
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
    missing = [k for k in _KEYS if k not in doc]
    if missing:
        raise file_error(source, f"missing key(s) {missing}", kind=HypothesisFileError)
    for k, typ, what in _TYPES:
        if k in doc and not isinstance(doc[k], typ):
            raise file_error(source, f"{k!r} must be {what}, got {type(doc[k]).__name__}", kind=HypothesisFileError)


def _read_nodes(specs: list, source: str | Path) -> dict[str, NodeRecord]:
    """Node entries, each with a unique name, a list of child names and a known feature. Features
    are read last, so that a malformed node list is reported before an unknown feature."""
    checked: dict[str, dict] = {}
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise file_error(
                source, f"nodes[{i}] must be an object with a non-empty string 'name'", kind=HypothesisFileError
            )
        name = spec["name"]
        if name in checked:
            raise file_error(source, f"node name {name!r} appears twice", kind=HypothesisFileError)
        children = spec.get("children", [])
        if not isinstance(children, list) or not all(isinstance(c, str) for c in children):
            raise file_error(
                source, f"node {name!r}: 'children' must be a list of node names", kind=HypothesisFileError
            )
        if not isinstance(spec.get("description", ""), str):
            raise file_error(source, f"node {name!r}: 'description' must be a string", kind=HypothesisFileError)
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


def _read_correspondence(corr: dict, source: str | Path) -> dict[str, str]:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in corr.items()):
        raise file_error(
            source, "'correspondence' must map node names to model node names (strings)", kind=HypothesisFileError
        )
    return dict(corr)


def _read_restriction(i: int, r: Any, source: str | Path) -> tuple[str, str, list[str]]:
    if (
        not isinstance(r, dict)
        or not isinstance(r.get("parent"), str)
        or not isinstance(r.get("child"), str)
        or not isinstance(r.get("slots"), list)
    ):
        raise file_error(
            source, f'restrict[{i}] must be {{"parent": name, "child": name, "slots": [...]}}', kind=HypothesisFileError
        )
    return r["parent"], r["child"], r["slots"]


def _read_model(info: Any, source: str | Path) -> dict | None:
    if info is not None and (not isinstance(info, dict) or any(k not in info for k in _MODEL_KEYS)):
        raise file_error(
            source, f"'model' must be null or an object with {list(_MODEL_KEYS)}", kind=HypothesisFileError
        )
    return dict(info) if info is not None else None


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
    return atomic_write(path, lambda p: p.write_text(text + "\n", encoding="utf-8"))


def read_doc(path: str | Path) -> Any:
    """The JSON document in ``path``; a :class:`HypothesisFileError` if it is not plain JSON text."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise file_error(path, f"not a text file ({e})", kind=HypothesisFileError) from None

    def no_constants(name: str):
        raise file_error(path, f"hypothesis files hold plain JSON; {name} is not allowed", kind=HypothesisFileError)

    try:
        return json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as e:
        raise file_error(
            path, f"not valid JSON ({e}); the file is corrupted or truncated", kind=HypothesisFileError
        ) from None
