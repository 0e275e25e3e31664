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
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from circuitgraph.hypothesis.features import Feature, UnknownFeatureError
from circuitgraph.hypothesis.interpretation import Correspondence, Hypothesis, Interpretation
from circuitgraph.hypothesis.nodes import HypothesisError

SCHEMA = "circuitgraph.hypothesis/1"
_KEYS = ("schema", "name", "root", "nodes", "correspondence")
_MODEL_KEYS = ("config_hash", "n_layers", "n_heads", "has_mlp", "d_model")


class HypothesisFileError(HypothesisError):
    """A hypothesis file is malformed, uses an unknown feature, or belongs to another model."""


def to_dict(h: Hypothesis) -> dict:
    nodes = []
    for n, node in h.nodes.items():
        try:
            feat = node.feature.to_json()
        except HypothesisError as e:
            raise HypothesisError(f"interpretation node {n!r}: {e}") from None
        nodes.append({"name": n, "feature": feat, "children": [c.name for c in node.children],
                      "description": node.description})
    return {
        "schema": SCHEMA,
        "name": h.name,
        "description": h.description,
        "model": dict(h.model_info) if h.model_info is not None else None,
        "root": h.root.name,
        "nodes": nodes,
        "correspondence": dict(h.mapping),
        "restrict": [{"parent": p, "child": c, "slots": list(s)} for (p, c), s in sorted(h.restrictions.items())],
        "metadata": h.metadata,
    }


def _bad(source: str, msg: str) -> HypothesisFileError:
    return HypothesisFileError(f"{source}: {msg}")


def from_dict(doc, model=None, source: str = "hypothesis") -> Hypothesis:
    if not isinstance(doc, dict):
        raise _bad(source, f"a hypothesis file holds a JSON object, got {type(doc).__name__}")
    schema = doc.get("schema")
    if schema != SCHEMA:
        if isinstance(schema, str) and schema.startswith("circuitgraph.hypothesis/"):
            raise _bad(source, f"schema {schema!r} is not readable by this version of circuitgraph (reads {SCHEMA!r})")
        raise _bad(source, f"not a circuitgraph hypothesis (schema {schema!r}, expected {SCHEMA!r})")
    missing = [k for k in _KEYS if k not in doc]
    if missing:
        raise _bad(source, f"missing key(s) {missing}")
    for k, typ, what in (("name", str, "a string"), ("root", str, "a string"), ("nodes", list, "a list"),
                         ("correspondence", dict, "an object"), ("restrict", list, "a list"),
                         ("metadata", dict, "an object"), ("description", str, "a string")):
        if k in doc and not isinstance(doc[k], typ):
            raise _bad(source, f"{k!r} must be {what}, got {type(doc[k]).__name__}")

    specs: dict[str, dict] = {}
    for i, spec in enumerate(doc["nodes"]):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise _bad(source, f"nodes[{i}] must be an object with a non-empty string 'name'")
        name = spec["name"]
        if name in specs:
            raise _bad(source, f"node name {name!r} appears twice")
        children = spec.get("children", [])
        if not isinstance(children, list) or not all(isinstance(c, str) for c in children):
            raise _bad(source, f"node {name!r}: 'children' must be a list of node names")
        if not isinstance(spec.get("description", ""), str):
            raise _bad(source, f"node {name!r}: 'description' must be a string")
        specs[name] = spec
    nodes: dict[str, Interpretation] = {}
    for name, spec in specs.items():
        try:
            feat = Feature.from_json(spec.get("feature"), where=f"node {name!r}: ")
        except UnknownFeatureError as e:
            e.where = f"{source}: node {name!r}: "
            raise
        except HypothesisError as e:
            raise _bad(source, f"node {name!r}: {e}") from None
        nodes[name] = Interpretation(name, feat, (), spec.get("description", ""))
    for name, spec in specs.items():
        for c in spec.get("children", []):
            if c not in nodes:
                raise _bad(source, f"node {name!r} lists child {c!r}, which is not among the nodes")
        nodes[name].add(*[nodes[c] for c in spec.get("children", [])])
    root = doc["root"]
    if root not in nodes:
        raise _bad(source, f"root {root!r} is not among the nodes")
    reach, todo = set(), [root]
    while todo:
        n = todo.pop()
        if n not in reach:
            reach.add(n)
            todo.extend(specs[n].get("children", []))
    unreachable = [n for n in nodes if n not in reach]
    if unreachable:
        raise _bad(source, f"node(s) {unreachable} are not reachable from the root {root!r}")

    corr_doc = doc["correspondence"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in corr_doc.items()):
        raise _bad(source, "'correspondence' must map node names to model node names (strings)")
    try:
        corr = Correspondence(corr_doc)
        for i, r in enumerate(doc.get("restrict", [])):
            if not isinstance(r, dict) or not isinstance(r.get("parent"), str) or not isinstance(r.get("child"), str) \
                    or not isinstance(r.get("slots"), list):
                raise _bad(source, f"restrict[{i}] must be {{\"parent\": name, \"child\": name, \"slots\": [...]}}")
            corr.restrict(r["parent"], r["child"], r["slots"])
        info = doc.get("model")
        if info is not None:
            if not isinstance(info, dict) or any(k not in info for k in _MODEL_KEYS):
                raise _bad(source, f"'model' must be null or an object with {list(_MODEL_KEYS)}")
        h = Hypothesis(nodes[root], corr, name=doc["name"], description=doc.get("description", ""),
                       metadata=doc.get("metadata", {}))
    except HypothesisFileError:
        raise
    except HypothesisError as e:
        raise _bad(source, str(e)) from None
    h.model_info = dict(info) if info is not None else None
    if model is not None:
        _check_model(h, model, source)
    return h


def _check_model(h: Hypothesis, model, source: str) -> None:
    from circuitgraph.graph import config_hash

    mine = config_hash(model.cfg)
    theirs = (h.model_info or {}).get("config_hash")
    if theirs is not None and theirs != mine:
        made = h.model_info.get("name") or "another model"
        raise _bad(
            source,
            f"this hypothesis was made for {made!r} (config hash {theirs}) but the model given has config hash {mine} "
            f"({model.cfg.n_layers} layers × {model.cfg.n_heads} heads); load it with the model it was written for, or "
            "rebuild it for this model",
        )
    try:
        h.bind(model)
    except HypothesisError as e:
        raise _bad(source, str(e)) from None


def save(h: Hypothesis, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".json":
        path = path.with_suffix(".json")
    doc = to_dict(h)
    try:
        text = json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise HypothesisError(f"hypothesis {h.name!r} cannot be saved: its metadata is not plain JSON ({e})") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path, model=None) -> Hypothesis:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise HypothesisFileError(f"{path} is not a text file ({e})") from None
    try:
        doc = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        raise HypothesisFileError(f"{path} is not valid JSON ({e}); the file is corrupted or truncated") from None
    return from_dict(doc, model=model, source=str(path))


def _no_constants(name: str):
    raise HypothesisFileError(f"hypothesis files hold plain JSON; {name} is not allowed")

