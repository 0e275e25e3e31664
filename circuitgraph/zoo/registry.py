"""Loader for the model zoo: small models shipped as data, each with known circuits.

An entry is a folder under ``circuitgraph/zoo/data/`` holding two files:

``model.json``
    schema ``circuitgraph.zoo/1``: the ``HookedTransformerConfig`` keyword arguments, the token
    encoding, one or more tasks (clean/corrupted token ids, answers, read positions, metric) and
    the ground-truth circuits, one per ablation convention, with the evidence behind them.
``model.safetensors``
    the model's ``state_dict()``.

Loading reads only JSON and safetensors (no pickle, no code from the data folder) and works
offline from the installed package data.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from circuitgraph.engine import ABLATIONS
from circuitgraph.errors import CircuitGraphError, FileFormatError, ModelUnsupportedError, file_error
from circuitgraph.graph import Graph
from circuitgraph.tasks import METRICS, Task

SCHEMA = "circuitgraph.zoo/1"
DATA_DIR = Path(__file__).resolve().parent / "data"
MODEL_JSON = "model.json"
WEIGHTS = "model.safetensors"

LEVELS = ("edge", "head")
_TOP_KEYS = ("schema", "name", "description", "config", "encoding", "tasks", "ground_truth")
_TASK_KEYS = ("clean", "corrupted", "answer", "metric")
_GT_KEYS = ("ablation", "task", "level", "edges", "nodes")

# how to rebuild an entry's files, for error messages
_REGENERATE = {"induction": "python scripts/zoo/train_induction.py"}


class ZooLookupError(CircuitGraphError, KeyError, ValueError):
    """An unknown zoo entry or ground-truth convention (a ``KeyError`` and a ``ValueError``, as
    callers of a mapping-like lookup expect either).

    ``str()`` gives the plain message (``KeyError`` would wrap it in quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class GroundTruth:
    """A known circuit of a zoo model under one ablation convention.

    edges  ``(src, dst)`` pairs in the graph's naming (``"a0.h1"``, ``"a1.h2.k"``, ``"logits"``)
    nodes  the components (heads / MLPs) the circuit uses
    """

    convention: str
    ablation: str
    task: str
    level: str
    edges: frozenset[tuple[str, str]]
    nodes: frozenset[str]
    evidence: dict = field(default_factory=dict, compare=False, hash=False)
    notes: str = ""

    @property
    def edge_names(self) -> list[str]:
        """Edges as sorted ``"src->dst"`` strings (the graph's edge-name format)."""
        return sorted(f"{s}->{d}" for s, d in self.edges)


@dataclass
class ZooModel:
    """A loaded zoo entry: the model, its tasks and its ground-truth circuits."""

    name: str
    description: str
    model: Any  # transformer_lens.HookedTransformer
    tasks: dict
    ground_truth: dict
    encoding: dict
    path: Path

    def ground_truth_for(self, convention: str) -> GroundTruth:
        """The ground truth under ``convention`` (e.g. ``"corrupted"``); a clear error if absent."""
        try:
            return self.ground_truth[convention]
        except KeyError:
            have = ", ".join(repr(c) for c in sorted(self.ground_truth)) or "none"
            raise ZooLookupError(
                f"zoo model {self.name!r} has no ground truth for convention {convention!r}; "
                f"it has: {have}. Call ground_truth_for() with one of those."
            ) from None

    def head_roles(self) -> dict[str, str]:
        """Known roles of heads, read from the ground truths' evidence (``previous_token_heads`` →
        ``{"a0.h1": "previous-token head"}``), so reports can name what a head does."""
        roles: dict[str, str] = {}
        for gt in self.ground_truth.values():
            for key, heads in (gt.evidence or {}).items():
                if key.endswith("_heads") and key != "unused_heads" and isinstance(heads, builtins.list):
                    role = key[: -len("_heads")].replace("_token", "-token").replace("_", " ") + " head"
                    roles.update({str(h): role for h in heads})
        return roles

    def task(self, name: str | None = None):
        """A task by name (default: the only task, or the first one in the file)."""
        if name is None:
            if not self.tasks:
                raise ZooLookupError(f"zoo model {self.name!r} has no tasks")
            return next(iter(self.tasks.values()))
        try:
            return self.tasks[name]
        except KeyError:
            raise ZooLookupError(
                f"zoo model {self.name!r} has no task {name!r}; it has: {', '.join(repr(t) for t in self.tasks)}"
            ) from None

    def __repr__(self) -> str:
        return (
            f"ZooModel({self.name!r}, tasks={builtins.list(self.tasks)}, "
            f"ground_truth={builtins.list(self.ground_truth)}, path={str(self.path)!r})"
        )


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def list_models(data_dir: Path | str | None = None) -> list[str]:
    """Names of the zoo entries: every folder holding ``model.json`` and ``model.safetensors``."""
    root = Path(data_dir) if data_dir is not None else DATA_DIR
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and (p / MODEL_JSON).is_file() and (p / WEIGHTS).is_file()
    )


def load(name: str, device: str | torch.device | None = None) -> ZooModel:
    """Load the zoo entry ``name`` (see :func:`list_models`) onto ``device`` (default: CUDA if
    available, else CPU)."""
    names = list_models()
    if not isinstance(name, str) or name not in names:
        raise ZooLookupError(
            f"unknown zoo model {name!r}; available: {', '.join(names) or '(none)'}. "
            "Use circuitgraph.zoo.list() to see them, or circuitgraph.zoo.load_path(folder) for "
            "an entry outside the package."
        )
    entry = load_path(DATA_DIR / name, device=device)
    if entry.name != name:
        raise file_error(
            entry.path / MODEL_JSON,
            f"malformed zoo entry: folder {name!r} holds a model.json whose name is "
            f"{entry.name!r}; the folder and the name must agree",
        )
    return entry


def load_path(path: Path | str, device: str | torch.device | None = None) -> ZooModel:
    """Load a zoo entry from an explicit folder holding ``model.json`` + ``model.safetensors``."""
    path = Path(path)
    json_path, weights_path = path / MODEL_JSON, path / WEIGHTS
    for f in (json_path, weights_path):
        if not f.is_file():
            raise FileNotFoundError(
                f"zoo entry folder {str(path)!r} has no {f.name}; an entry needs both {MODEL_JSON} and {WEIGHTS}"
            )
    doc = _read_json(json_path)
    name = doc["name"]
    dev = torch.device(device) if device is not None else _default_device()

    model = _build_model(doc["config"], json_path, dev)
    state = _read_weights(weights_path, name)
    _load_state(model, state, weights_path, name)
    model.eval()

    tasks = {t: _make_task(t, spec, json_path, dev) for t, spec in doc["tasks"].items()}
    ground_truth = {
        conv: _make_ground_truth(conv, spec, json_path, tasks) for conv, spec in doc["ground_truth"].items()
    }
    if ground_truth:
        _validate_nodes(model, ground_truth, json_path)

    return ZooModel(
        name=name,
        description=str(doc.get("description", "")),
        model=model,
        tasks=tasks,
        ground_truth=ground_truth,
        encoding=dict(doc["encoding"]),
        path=path,
    )


# ---------------------------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------------------------


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _read_json(json_path: Path) -> dict:
    try:
        with open(json_path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise file_error(
            json_path,
            f"not valid JSON ({e}). Restore it from version control or "
            "regenerate it with its script under scripts/zoo/.",
        ) from None
    if not isinstance(doc, dict):
        raise file_error(json_path, f"the top level must be a JSON object, got {type(doc).__name__}")
    schema = doc.get("schema")
    if schema != SCHEMA:
        raise file_error(
            json_path,
            f"schema is {schema!r} but this version of circuitgraph reads "
            f"{SCHEMA!r}; regenerate the entry or upgrade circuitgraph",
        )
    missing = [k for k in _TOP_KEYS if k not in doc]
    if missing:
        raise file_error(
            json_path, f"missing top-level key(s) {missing}; a {SCHEMA} file needs {builtins.list(_TOP_KEYS)}"
        )
    for k, typ in (("name", str), ("config", dict), ("encoding", dict), ("tasks", dict), ("ground_truth", dict)):
        if not isinstance(doc[k], typ):
            raise file_error(
                json_path, f"{k!r} must be a JSON {'string' if typ is str else 'object'}, got {type(doc[k]).__name__}"
            )
    return doc


def _build_model(config: dict, json_path: Path, device: torch.device):
    try:  # transformer_lens takes seconds to import: only pay for it when a model is built
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as e:  # transformer-lens 4.x removed HookedTransformer, which zoo models are
        raise ModelUnsupportedError(
            "zoo models are HookedTransformers, which the installed transformer-lens no longer has (4.x removed "
            "them): install transformer-lens>=3.9,<4 for the zoo, or analyse a Hugging Face model through the "
            "TransformerBridge (circuitgraph.models.load_bridge(folder), or model=hf model.path=DIR)"
        ) from e

    for k in ("dtype", "device"):
        if k in config:
            raise file_error(json_path, f"config must not contain {k!r} (the loader chooses it); remove the key")
    fields = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise file_error(json_path, f"config has key(s) {unknown} that HookedTransformerConfig does not accept")
    try:
        cfg = HookedTransformerConfig(**config, device=str(device), dtype=torch.float32)
    except Exception as e:  # the config's own validation (inconsistent sizes etc.)
        raise file_error(json_path, f"config is not a valid HookedTransformerConfig: {e}") from e
    return HookedTransformer(cfg, move_to_device=True)


def _regenerate_hint(name: str, path: Path) -> str:
    how = _REGENERATE.get(name)
    script = f"re-run `{how}`" if how else "re-run the script under scripts/zoo/ that builds it"
    return f"Regenerate it ({script}) or restore it with `git checkout -- {path}`."


def _read_weights(weights_path: Path, name: str) -> dict[str, torch.Tensor]:
    try:
        state = load_file(str(weights_path), device="cpu")
    except Exception as e:  # safetensors raises its own error type for truncated/garbled files
        raise file_error(
            weights_path,
            f"the weight file of zoo model {name!r} is corrupted or truncated and cannot be read "
            f"({type(e).__name__}: {e}). " + _regenerate_hint(name, weights_path),
        ) from None
    return state


def _load_state(model, state: dict, weights_path: Path, name: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise file_error(
            weights_path,
            f"the weights do not match the config in model.json of zoo model {name!r} (missing, "
            f"unexpected or mis-shaped tensors): {e}. " + _regenerate_hint(name, weights_path),
        ) from None
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise file_error(
            weights_path,
            f"the weight file of zoo model {name!r} holds non-finite values in {bad[:5]}: it is "
            "corrupted. " + _regenerate_hint(name, weights_path),
        )


def _tensor(json_path: Path, where: str, value, dtype) -> torch.Tensor:
    try:
        return torch.tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as e:
        raise file_error(
            json_path,
            f"{where} must be a rectangular list of {'booleans' if dtype is torch.bool else 'integers'} ({e})",
        ) from None


def _make_task(name: str, spec: dict, json_path: Path, device: torch.device):
    if not isinstance(spec, dict):
        raise file_error(json_path, f"task {name!r} must be an object")
    missing = [k for k in _TASK_KEYS if k not in spec]
    if missing:
        raise file_error(json_path, f"task {name!r} is missing key(s) {missing}")
    metric = spec["metric"]
    if metric not in METRICS:
        raise file_error(json_path, f"task {name!r} has metric {metric!r}; expected one of {builtins.list(METRICS)}")
    where = f"task {name!r}"
    clean = _tensor(json_path, f"{where} clean", spec["clean"], torch.long)
    corrupted = _tensor(json_path, f"{where} corrupted", spec["corrupted"], torch.long)
    answer = spec["answer"]
    answer = None if answer is None else _tensor(json_path, f"{where} answer", answer, torch.long)
    wrong = spec.get("wrong")
    wrong = None if wrong is None else _tensor(json_path, f"{where} wrong", wrong, torch.long)
    rp = spec.get("read_positions")
    if rp is not None:
        is_mask = isinstance(rp, builtins.list) and rp and isinstance(rp[0], builtins.list)
        rp = _tensor(json_path, f"{where} read_positions", rp, torch.bool if is_mask else torch.long)
    try:
        task = Task(
            clean=clean, corrupted=corrupted, answer=answer, wrong=wrong, read_positions=rp, metric=metric, name=name
        )
    except (TypeError, ValueError) as e:
        raise file_error(json_path, f"{where} is inconsistent: {e}") from None
    return task.to(device) if device.type != "cpu" else task


def _pairs(json_path: Path, conv: str, edges) -> frozenset[tuple[str, str]]:
    out = set()
    if not isinstance(edges, builtins.list):
        raise file_error(json_path, f"ground truth {conv!r}: edges must be a list of [src, dst] pairs")
    for e in edges:
        if isinstance(e, str) and "->" in e:
            e = e.split("->", 1)
        if not (isinstance(e, (builtins.list, tuple)) and len(e) == 2 and all(isinstance(x, str) for x in e)):
            raise file_error(json_path, f"ground truth {conv!r}: edge {e!r} is not a [src, dst] pair of node names")
        out.add((e[0], e[1]))
    return frozenset(out)


def _make_ground_truth(conv: str, spec: dict, json_path: Path, tasks: dict) -> GroundTruth:
    if not isinstance(spec, dict):
        raise file_error(json_path, f"ground truth {conv!r} must be an object")
    missing = [k for k in _GT_KEYS if k not in spec]
    if missing:
        raise file_error(json_path, f"ground truth {conv!r} is missing key(s) {missing}")
    if spec["ablation"] not in ABLATIONS:
        raise file_error(
            json_path,
            f"ground truth {conv!r} has ablation {spec['ablation']!r}; expected one of {builtins.list(ABLATIONS)}",
        )
    if spec["level"] not in LEVELS:
        raise file_error(json_path, f"ground truth {conv!r} has level {spec['level']!r}; expected one of {LEVELS}")
    if spec["task"] not in tasks:
        raise file_error(
            json_path,
            f"ground truth {conv!r} refers to task {spec['task']!r}, which is "
            f"not among the file's tasks {builtins.list(tasks)}",
        )
    nodes = spec["nodes"]
    if not isinstance(nodes, builtins.list) or not all(isinstance(n, str) for n in nodes):
        raise file_error(json_path, f"ground truth {conv!r}: nodes must be a list of node names")
    evidence = spec.get("evidence") or {}
    if not isinstance(evidence, dict):
        raise file_error(json_path, f"ground truth {conv!r}: evidence must be an object")
    return GroundTruth(
        convention=conv,
        ablation=spec["ablation"],
        task=spec["task"],
        level=spec["level"],
        edges=_pairs(json_path, conv, spec["edges"]),
        nodes=frozenset(nodes),
        evidence=evidence,
        notes=str(spec.get("notes", "")),
    )


def _validate_nodes(model, ground_truth: dict, json_path: Path) -> None:
    """Every node and edge of every ground truth must exist in the model's graph."""
    g = Graph.from_model(model)
    srcs, dsts = builtins.list(g.src_names), builtins.list(g.dst_names)
    known = set(srcs) | set(dsts)

    def unknown(conv: str, node: str, role: str, valid: list[str]) -> FileFormatError:
        sample = ", ".join(valid[:6]) + (", …" if len(valid) > 6 else "")
        return file_error(
            json_path,
            f"ground truth {conv!r} names {role} {node!r}, which does not exist in this model's "
            f"graph; valid {role} names: {sample} ({len(valid)} in all). Fix the node name in "
            "model.json.",
        )

    for conv, gt in ground_truth.items():
        for n in sorted(gt.nodes):
            if n not in known:
                raise unknown(conv, n, "node", srcs + [d for d in dsts if d not in srcs])
        for s, d in sorted(gt.edges):
            if s not in g.src_index:
                raise unknown(conv, s, "source node", srcs)
            if d not in g.dst_index:
                raise unknown(conv, d, "destination node", dsts)
            if not g.has_edge(s, d):
                raise file_error(
                    json_path,
                    f"ground truth {conv!r} has edge {s}->{d}, which is not an edge of this "
                    f"model's graph ({d} reads the residual stream before {s} writes to it). Fix "
                    "the edge in model.json.",
                )
