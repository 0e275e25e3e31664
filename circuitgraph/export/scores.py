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

import torch
from safetensors.torch import save_file

from circuitgraph.atomic import atomic_write
from circuitgraph.circuit import Circuit
from circuitgraph.errors import FileFormatError
from circuitgraph.files.pairs import TensorSpec, read_header, read_tensors
from circuitgraph.files.reading import parse_json
from circuitgraph.files.rundir import check_member
from circuitgraph.files.schema import ListOf, MapOf, Str, validate
from circuitgraph.graph import Graph
from circuitgraph.graph.blocks import as_dense

SCORES_SCHEMA = "circuitgraph.scores/1"
# the header metadata: strings, two of them JSON lists of node names (docs/circuit-schema.md)
SCORES_HEADER = MapOf(Str(max_len=64 << 20), key_label="a header key")
_NAMES = ListOf(Str(max_len=256, min_len=1, label="a node name"))


def write_scores(path: str | Path, graph: Graph, circuit: Circuit, model_label: str) -> Path:
    """Write ``graph``'s scores with ``circuit``'s mask to ``path`` (atomically: an interrupted
    run leaves the previous file, never half of one). When ``circuit`` has been saved, the header
    records its pair id, tying the two files of a run together."""
    tensors = {  # 0 where no edge exists, as the format says
        # (edge blocks are written dense here: this file is still one [n_src, n_dst] matrix)
        "scores": as_dense(graph.scores).detach().float().masked_fill(~graph.valid, 0).cpu().contiguous(),
        "valid": graph.valid.cpu().contiguous(),
        "mask": as_dense(circuit.mask).cpu().contiguous(),
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
    if circuit.pair_id:
        meta["circuit_pair_id"] = circuit.pair_id
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def read_scores(path: str | Path) -> dict[str, Any]:
    """Read a ``scores.safetensors``: ``{"scores", "valid", "mask", "src_names", "dst_names",
    "metadata"}`` (metadata: the header's strings as written).

    Checked before the tensors are loaded: the header's schema and node-name lists, and that the
    tensors are ``scores`` F32 and ``valid``/``mask`` BOOL, all ``[len(src_names), len(dst_names)]``;
    then that no score is NaN and the mask marks only valid edges."""
    path = Path(path)
    meta, _ = read_header(path, FileFormatError)
    validate(meta, SCORES_HEADER, f"{path} (header)")
    if meta.get("schema") != SCORES_SCHEMA:
        raise FileFormatError(f"{path}: header schema {meta.get('schema')!r}, expected {SCORES_SCHEMA!r}")
    names = {}
    for k in ("src_names", "dst_names"):
        names[k] = validate(
            parse_json(meta.get(k, "[]"), f"{path} (header {k})"), _NAMES, f"{path} (header)", path=f"$.{k}"
        )
    shape = (len(names["src_names"]), len(names["dst_names"]))
    if 0 in shape:
        raise FileFormatError(f"{path}: header names {shape[0]} sources and {shape[1]} destinations; a graph has both")
    specs = {
        "scores": TensorSpec(("F32",), shape),  # never NaN
        "valid": TensorSpec(("BOOL",), shape),
        "mask": TensorSpec(("BOOL",), shape),
    }
    tensors, _ = read_tensors(path, specs, schema=SCORES_SCHEMA)
    stray = int(torch.count_nonzero(tensors["mask"] & ~tensors["valid"]))
    stray += int(torch.count_nonzero(tensors["scores"].masked_fill(tensors["valid"], 0)))
    if stray:
        raise FileFormatError(
            f"{path}: {stray} cell(s) that are not valid edges are marked in the mask or hold a score; the file is corrupted"
        )
    problem = check_member(path)
    if problem:
        raise FileFormatError(problem)
    out: dict[str, Any] = {**tensors, **names, "metadata": meta}
    return out
