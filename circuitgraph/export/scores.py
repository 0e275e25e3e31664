"""``scores.safetensors``: every edge's score of a run, not only the circuit's edges.

A run keeps every edge's score so that another selection (a different top-n, threshold or
target) can be made later without scoring again. Dense layout: the tensors are ``scores``
(float32), ``valid`` and the circuit's ``mask`` (bool), ``[n_src, n_dst]``. Block layout (a graph
kept as :class:`~circuitgraph.graph.blocks.EdgeBlocks`; header ``layout: blocks``): per
destination group ``g`` of the header's ``blocks`` list ``[[g, first column, end column], ...]``,
``rows.<g>`` (int64, the source rows it reads, increasing), ``scores.<g>`` and ``mask.<g>``
``[len(rows), columns]``; every entry is an edge. The header metadata holds the node names (JSON
lists) and the provenance (model, config hash, how the scores were computed).
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
from circuitgraph.files.schema import Int, ListOf, MapOf, Str, TupleOf, validate
from circuitgraph.graph import Graph
from circuitgraph.graph.blocks import EdgeBlocks, as_blocks, as_dense

SCORES_SCHEMA = "circuitgraph.scores/1"
# the header metadata: strings, two of them JSON lists of node names (docs/circuit-schema.md)
SCORES_HEADER = MapOf(Str(max_len=64 << 20), key_label="a header key")
_NAMES = ListOf(Str(max_len=256, min_len=1, label="a node name"))
_BLOCKS = ListOf(TupleOf(Str(max_len=64, min_len=1), Int(0, None), Int(0, None)))


def write_scores(path: str | Path, graph: Graph, circuit: Circuit, model_label: str) -> Path:
    """Write ``graph``'s scores with ``circuit``'s mask to ``path`` (atomically: an interrupted
    run leaves the previous file, never half of one). When ``circuit`` has been saved, the header
    records its pair id, tying the two files of a run together."""
    blocked = graph.uses_blocks or isinstance(graph.scores, EdgeBlocks) or isinstance(circuit.mask, EdgeBlocks)
    tensors, layout = _block_tensors(graph, circuit) if blocked else (_dense_tensors(graph, circuit), {})
    meta = {
        "schema": SCORES_SCHEMA,
        "src_names": json.dumps(list(graph.src_names)),
        "dst_names": json.dumps(list(graph.dst_names)),
        "model": str(model_label),
        "model_name": str(graph.model_name),
        "config_hash": str(graph.model_hash),
        "score_info": json.dumps(graph.score_info, default=str),
    }
    meta.update(layout)
    if circuit.pair_id:
        meta["circuit_pair_id"] = circuit.pair_id
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def _dense_tensors(graph: Graph, circuit: Circuit) -> dict[str, torch.Tensor]:
    return {  # 0 where no edge exists, as the format says
        "scores": as_dense(graph.scores).detach().float().masked_fill(~graph.valid, 0).cpu().contiguous(),
        "valid": graph.valid.cpu().contiguous(),
        "mask": as_dense(circuit.mask).cpu().contiguous(),
    }


def _block_tensors(graph: Graph, circuit: Circuit) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    scores = as_blocks(graph, graph.scores).detach().float()
    mask = as_blocks(graph, circuit.mask)
    lay = scores.layout
    tensors: dict[str, torch.Tensor] = {}
    for g in lay.names:
        tensors[f"rows.{g}"] = lay.row_index(g).cpu().contiguous()
        tensors[f"scores.{g}"] = scores.blocks[g].cpu().contiguous()
        tensors[f"mask.{g}"] = mask.blocks[g].cpu().contiguous()
    blocks = [[g, lay.cols[g].start, lay.cols[g].stop] for g in lay.names]
    return tensors, {"layout": "blocks", "blocks": json.dumps(blocks)}


def read_scores(path: str | Path) -> dict[str, Any]:
    """Read a ``scores.safetensors``: ``{"scores", "valid", "mask", "src_names", "dst_names",
    "metadata"}`` (metadata: the header's strings as written).

    Checked before the tensors are loaded: the header's schema and node-name lists, and that the
    tensors are ``scores`` F32 and ``valid``/``mask`` BOOL, all ``[len(src_names), len(dst_names)]``;
    then that no score is NaN and the mask marks only valid edges.

    A block-layout file gives ``{"blocks": {group: {"rows", "cols", "scores", "mask"}}, ...}``
    instead of the three matrices (``cols``: ``(first, end)``); its block list must tile the
    columns, and each block's rows must be increasing source indices."""
    path = Path(path)
    meta, info = read_header(path, FileFormatError)
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
    if meta.get("layout") == "blocks":
        blocked = {"blocks": _read_blocks(path, meta, info, shape), **names, "metadata": meta, "layout": "blocks"}
        problem = check_member(path)
        if problem:
            raise FileFormatError(problem)
        return blocked
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


def _read_blocks(path: Path, meta: dict, info: dict, shape: tuple[int, int]) -> dict[str, dict[str, Any]]:
    """The blocks of a block-layout scores file, every shape checked against the header first."""
    blocks = validate(parse_json(meta.get("blocks", "[]"), f"{path} (header blocks)"), _BLOCKS, f"{path} (header)")
    n_src, n_dst = shape
    edges = sorted((start, stop) for _, start, stop in blocks)
    if [s for s, _ in edges] != [0] + [e for _, e in edges[:-1]] or (edges and edges[-1][1] != n_dst):
        raise FileFormatError(f"{path}: the header's blocks do not tile the {n_dst} destination columns")
    specs = {}
    for g, start, stop in blocks:
        rows_shape = info.get(f"rows.{g}", ("", []))[1]
        n = rows_shape[0] if len(rows_shape) == 1 else -1
        if not 0 <= n <= n_src:
            raise FileFormatError(f"{path}: tensor 'rows.{g}' must be [n] with n ≤ {n_src} source rows")
        specs[f"rows.{g}"] = TensorSpec(("I64",), (n,))
        specs[f"scores.{g}"] = TensorSpec(("F32",), (n, stop - start))  # never NaN
        specs[f"mask.{g}"] = TensorSpec(("BOOL",), (n, stop - start))
    tensors, _ = read_tensors(path, specs, schema=SCORES_SCHEMA)
    out = {}
    for g, start, stop in blocks:
        rows = tensors[f"rows.{g}"]
        if len(rows) and (int(rows[0]) < 0 or int(rows[-1]) >= n_src or bool((rows[1:] <= rows[:-1]).any())):
            raise FileFormatError(f"{path}: tensor 'rows.{g}' must hold increasing source rows in [0, {n_src})")
        out[g] = {"rows": rows, "cols": (start, stop), "scores": tensors[f"scores.{g}"], "mask": tensors[f"mask.{g}"]}
    return out
