"""``scores.safetensors``: every edge's score of a run, not only the circuit's edges.

A run keeps the full ``[n_src, n_dst]`` score matrix so that another selection (a different
top-n, threshold or target) can be made later without scoring again. The tensors are ``scores``
(float32), ``valid`` and the circuit's ``mask`` (bool); the header metadata holds the node names
(JSON lists) and the provenance (model, config hash, how the scores were computed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file

from circuitgraph.atomic import atomic_write
from circuitgraph.circuit import Circuit
from circuitgraph.graph import Graph

SCORES_SCHEMA = "circuitgraph.scores/1"


def write_scores(path: str | Path, graph: Graph, circuit: Circuit, model_label: str) -> Path:
    """Write ``graph``'s scores with ``circuit``'s mask to ``path`` (atomically: an interrupted
    run leaves the previous file, never half of one)."""
    tensors = {
        "scores": graph.scores.detach().float().cpu().contiguous(),
        "valid": graph.valid.cpu().contiguous(),
        "mask": circuit.mask.cpu().contiguous(),
    }
    meta = {
        "schema": SCORES_SCHEMA,
        "src_names": json.dumps(list(graph.src_names)),
        "dst_names": json.dumps(list(graph.dst_names)),
        "model": str(model_label),
        "model_name": str(graph.model_name),
        "config_hash": str(graph.model_hash),
        "score_info": json.dumps(graph.score_info, default=str),
    }
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def read_scores(path: str | Path) -> dict[str, Any]:
    """Read a ``scores.safetensors``: ``{"scores", "valid", "mask", "src_names", "dst_names",
    "metadata"}`` (metadata: the header's strings as written)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        out = {k: f.get_tensor(k) for k in f.keys()}
    out["src_names"] = json.loads(meta.get("src_names", "[]"))
    out["dst_names"] = json.loads(meta.get("dst_names", "[]"))
    out["metadata"] = meta
    return out
