"""Circuit exchange formats: the EAP-IG / MIB ``Graph`` JSON layout and GraphML.

Both exporters write every valid edge with its score (as the float32 value, printed with
Python's shortest round-trip ``repr``) and its circuit membership, so importing a file gives back
the same mask and bit-identical scores. Our own ``Circuit.save`` format is documented in
``docs/circuit-schema.md``.

EAP-IG / MIB JSON (``to_mib_json`` / ``from_mib_json``)
    The layout written by ``eap.graph.Graph.to_json`` in hannamw/EAP-IG and read by the MIB
    circuit-localization track::

        {"cfg":   {"n_layers": 2, "n_heads": 3, "parallel_attn_mlp": false, "d_model": 16},
         "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": false}, ..., "logits": {...}},
         "edges": {"input->a0.h0<q>": {"score": -0.0123, "in_graph": true}, ..., "m1->logits": {...}}}

    Names are ours except that a head's q/k/v input is written ``a1.h2<k>`` instead of
    ``a1.h2.k``. An extra top-level ``"circuitgraph"`` object carries our provenance (EAP-IG
    ignores unknown keys). The format always has MLP nodes and separate q/k/v inputs, so graphs of
    attention-only models or with ``split_qkv=False`` cannot be written in it (use GraphML).

GraphML (``to_graphml`` / ``from_graphml``)
    A directed multigraph over model nodes (``input``, ``a{L}.h{H}``, ``m{L}``, ``logits``), one
    GraphML edge per graph edge: its id is the destination name (``a1.h2.k``, ``m1``, ``logits``)
    and it carries ``dst``, ``qkv``, ``score`` and ``in_circuit``. Graph-level attributes record the
    schema, the model's shape and fingerprint, and the circuit's metadata as a JSON string. Opens
    in Gephi, yEd, Cytoscape and networkx.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import networkx as nx
import torch

from circuitgraph.atomic import atomic_write
from circuitgraph.circuit.circuit import Circuit
from circuitgraph.errors import GraphError, file_error
from circuitgraph.graph import Architecture, Graph
from circuitgraph.graph.blocks import as_dense
from circuitgraph.graph.names import dst_node, node_kind
from circuitgraph.graph.sites import Site

MIB_SCHEMA = "circuitgraph.mib/1"
GRAPHML_SCHEMA = "circuitgraph.graphml/1"

__all__ = ["to_mib_json", "from_mib_json", "to_graphml", "from_graphml", "MIB_SCHEMA", "GRAPHML_SCHEMA"]


# ---------------------------------------------------------------------------------------- helpers
def _as_circuit(obj, mask: torch.Tensor | None = None) -> Circuit:
    """A Circuit from a Circuit, or from a Graph plus a mask (default: ``graph.in_circuit``)."""
    if isinstance(obj, Circuit):
        if mask is not None:
            return Circuit(obj.graph, mask.bool(), dict(obj.metadata), obj.faithfulness, dict(obj.figures))
        return obj
    if isinstance(obj, Graph):
        m = obj.in_circuit if mask is None else mask
        meta = {"model": obj.model_name, "config_hash": obj.model_hash, "attribution": obj.score_info}
        return Circuit(obj, m.bool(), metadata=meta)
    raise TypeError(f"expected a Circuit or a Graph, got {type(obj).__name__}")


def _as_graph(graph_or_model) -> Graph | None:
    """Accept a Graph, a HookedTransformer (compiled with split_qkv=True) or None."""
    if graph_or_model is None or isinstance(graph_or_model, Graph):
        return graph_or_model
    if hasattr(graph_or_model, "cfg"):
        return Graph.from_model(graph_or_model)
    raise TypeError(f"expected a Graph, a HookedTransformer or None, got {type(graph_or_model).__name__}")


def _blank_like(graph: Graph) -> Graph:
    """A new Graph of the same model (shape, neuron split, name, fingerprint, device), zero scores."""
    return Graph.from_spec(graph.spec(), device=graph.device)


def _jsonable(x):
    """json.dumps fallback for tensors and numpy scalars that sneak into metadata."""
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def _score_rows(circuit: Circuit) -> tuple[list[list[float]], list[list[bool]]]:
    g = circuit.graph
    # float32 -> Python float is exact; json/str then print the shortest repr that reads back to it.
    scores = as_dense(g.scores).detach().float().cpu().masked_fill(~g.valid.cpu(), 0.0).tolist()
    mask = circuit.dense_mask().detach().cpu().tolist()
    return scores, mask


def _check_float(value, where: str, path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise file_error(path, f"{where} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def _check_bool(value, where: str, path) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise file_error(path, f"{where} must be true or false, got {value!r}")


def _few(names, n: int = 3) -> str:
    names = list(names)
    more = f" (and {len(names) - n} more)" if len(names) > n else ""
    return ", ".join(repr(x) for x in names[:n]) + more


# ------------------------------------------------------------------------------------ EAP-IG / MIB
_MIB_EDGE = re.compile(r"^(?P<src>[^<>]+)->(?P<dst>[^<>]+?)(?:<(?P<qkv>[qkv])>)?$")


def _mib_edge_name(src: str, dst: str) -> str:
    node = dst_node(dst)
    return f"{src}->{node}<{dst[-1]}>" if node != dst else f"{src}->{dst}"


def _mib_edge_order(graph: Graph) -> list[tuple[int, int]]:
    """Valid (src, dst) index pairs in the order EAP-IG's ``Graph.from_model`` creates them:
    per layer, every upstream node into each head's q, k, v; then into the MLP (which, in a
    parallel attention+MLP block, does not read its layer's heads); finally logits."""
    H = graph.arch.n_heads
    order = []
    upstream = [graph.src_index["input"]]
    for layer in range(graph.arch.n_layers):
        heads = [graph.src_index[f"a{layer}.h{h}"] for h in range(H)]
        for s in upstream:
            for h in range(H):
                for letter in "qkv":
                    order.append((s, graph.dst_index[f"a{layer}.h{h}.{letter}"]))
        mlp_reads = list(upstream) if graph.arch.parallel_attn_mlp else upstream + heads
        upstream = upstream + heads
        for s in mlp_reads:
            order.append((s, graph.dst_index[f"m{layer}"]))
        upstream.append(graph.src_index[f"m{layer}"])
    for s in upstream:
        order.append((s, graph.dst_index["logits"]))
    return order


def _check_mib_graph(graph: Graph, what: str) -> None:
    """Refuse graphs the EAP-IG/MIB layout cannot express (a fault of the graph, not of a file)."""
    if not graph.split_qkv:
        raise GraphError(
            f"cannot {what} the EAP-IG/MIB format with a split_qkv=False graph: that format scores each "
            "head's q, k and v inputs separately; use Graph.from_model(model, split_qkv=True), or GraphML"
        )
    if not graph.arch.has_mlp:
        raise GraphError(
            f"cannot {what} the EAP-IG/MIB format for an attention-only model: EAP-IG graphs always "
            "contain an MLP node per layer; use GraphML (to_graphml) instead"
        )
    if graph.positions:
        raise GraphError(
            f"cannot {what} the EAP-IG/MIB format with a position-resolved graph ({graph.positions} "
            "positions): EAP-IG graphs have one node per component; use GraphML instead, or "
            "PositionalGraph.position_free() for position-summed scores"
        )
    if graph.neurons:
        raise GraphError(
            f"cannot {what} the EAP-IG/MIB format with a graph that splits MLPs into neuron nodes "
            f"(layers {sorted(graph.neurons)}): EAP-IG edges join whole heads and MLPs; use GraphML instead"
        )
    if graph.sites:
        raise GraphError(
            f"cannot {what} the EAP-IG/MIB format with a graph that has SAE feature nodes (sites "
            f"{[s.hook_name for s in graph.sites]}): EAP-IG graphs have no features; use GraphML instead"
        )


def to_mib_json(
    circuit, path: str | Path, *, scores: bool = True, mask: torch.Tensor | None = None, score_sign: int = 1
) -> Path:
    """Write ``circuit`` (a Circuit, or a Graph with its scores and ``mask``, default
    ``graph.in_circuit``) in the EAP-IG / MIB ``Graph.to_json`` layout. With ``scores=False`` the
    edge scores are left out (MIB's binary-membership submissions). ``score_sign=-1`` writes −score
    (MIB ranks "helpful first" by the score of a loss; see :mod:`circuitgraph.export.mib`); the
    sign is recorded, and :func:`from_mib_json` undoes it. Returns the path written."""
    if score_sign not in (1, -1):
        raise ValueError(f"score_sign must be 1 or -1, got {score_sign!r}")
    c = _as_circuit(circuit, mask)
    g = c.graph
    _check_mib_graph(g, "write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    score_rows, mask_rows = _score_rows(c)
    used: set[str] = set()
    edges = {}
    for i, j in _mib_edge_order(g):
        src, dst = g.src_names[i], g.dst_names[j]
        info = (
            {"score": score_sign * score_rows[i][j], "in_graph": bool(mask_rows[i][j])}
            if scores
            else {"in_graph": bool(mask_rows[i][j])}
        )
        edges[_mib_edge_name(src, dst)] = info
        if mask_rows[i][j]:
            used.update((src, dst_node(dst)))
    nodes = {name: {"in_graph": name in used} for name in g.src_names}
    nodes["logits"] = {"in_graph": True}  # EAP-IG's logits node is always in the graph
    doc = {
        "cfg": {
            "n_layers": g.arch.n_layers,
            "n_heads": g.arch.n_heads,
            "parallel_attn_mlp": g.arch.parallel_attn_mlp,
            "d_model": g.arch.d_model,
        },
        "nodes": nodes,
        "edges": edges,
        "circuitgraph": {
            "schema": MIB_SCHEMA,
            "model": g.model_name,
            "config_hash": g.model_hash,
            "metadata": c.metadata,
            "faithfulness": c.faithfulness,
            "figures": c.figures,
            "n_edges": c.n_edges,
            "score_sign": score_sign,
        },
    }
    text = json.dumps(doc, default=_jsonable)
    atomic_write(path, lambda p: p.write_text(text))
    return path


def _read_json(path: Path, what: str) -> dict:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise file_error(path, f"not a {what} JSON file (it is not UTF-8 text)") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise file_error(path, f"not valid JSON ({e}); the file is corrupted or truncated") from None
    if not isinstance(doc, dict):
        raise file_error(path, f"not a {what} file: the top level is a {type(doc).__name__}, expected an object")
    return doc


def from_mib_json(path: str | Path, graph=None, *, strict: bool = True) -> Circuit:
    """Read an EAP-IG / MIB ``Graph`` JSON file as a Circuit.

    ``graph`` (a Graph or a HookedTransformer) fixes the model; the file must describe the same
    shape, and a :class:`~circuitgraph.errors.FileFormatError` (a ``ValueError``) names any
    mismatch. Without it the graph is built from the file's ``cfg``. The returned circuit's
    ``.graph`` is a new Graph holding the file's scores (``graph`` itself is not modified). Edge
    ``in_graph`` flags give the mask; node flags are checked for form but not used, since edges
    alone define the circuit. Files without edge scores (MIB's binary-membership circuits) give
    zero scores. With ``strict`` (default) every edge of the graph must be listed, as EAP-IG writes
    them; ``strict=False`` reads absent edges as not in the circuit with score 0.
    """
    path = Path(path)
    doc = _read_json(path, "EAP-IG/MIB graph")
    cfg = _mib_cfg(doc, path)
    extra = _as_dict(doc.get("circuitgraph"))
    graph = _mib_graph(_as_graph(graph), cfg, extra, path)
    _check_mib_nodes(doc["nodes"], graph, path)
    scores, mask = _mib_edges(doc["edges"], graph, path, strict)

    sign = extra.get("score_sign", 1)
    if sign not in (1, -1):
        raise file_error(path, f"circuitgraph.score_sign must be 1 or -1, got {sign!r}")
    out = _blank_like(graph)
    out.scores = (sign * scores).to(out.device)
    meta = dict(extra["metadata"]) if isinstance(extra.get("metadata"), dict) else {}
    meta.setdefault("model", graph.model_name)
    meta.setdefault("config_hash", graph.model_hash)
    meta["imported_from"] = {"format": "eap-ig/mib json", "path": str(path)}
    out.score_info = meta.get("attribution", {}) if isinstance(meta.get("attribution"), dict) else {}
    faith = extra.get("faithfulness")
    return Circuit(
        out,
        mask.to(out.device),
        metadata=meta,
        faithfulness=float(faith) if isinstance(faith, (int, float)) and not isinstance(faith, bool) else None,
        figures=_as_dict(extra.get("figures")),
    )


def _as_dict(value: Any) -> dict:
    """``value`` when it is a dict (a JSON object), else an empty one."""
    return value if isinstance(value, dict) else {}


def _mib_cfg(doc: dict, path: Path) -> dict:
    """The file's ``cfg``, checked: positive n_layers / n_heads, a sequential model, an integer
    d_model if any; and ``nodes`` / ``edges`` are objects."""
    missing = [k for k in ("cfg", "nodes", "edges") if k not in doc]
    if missing:
        raise file_error(
            path,
            f"not an EAP-IG/MIB graph file: it lacks the key(s) {_few(missing)} (expected 'cfg', 'nodes' and 'edges')",
        )
    cfg = doc["cfg"]
    if not isinstance(cfg, dict):
        raise file_error(path, "'cfg' must be an object with n_layers, n_heads, parallel_attn_mlp, d_model")
    for key in ("n_layers", "n_heads"):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise file_error(path, f"cfg.{key} must be a positive integer, got {v!r}")
    if not isinstance(cfg.get("parallel_attn_mlp", False), bool):
        raise file_error(path, f"cfg.parallel_attn_mlp must be true or false, got {cfg['parallel_attn_mlp']!r}")
    d_model = cfg.get("d_model")
    if d_model is not None and (isinstance(d_model, bool) or not isinstance(d_model, int)):
        raise file_error(path, f"cfg.d_model must be an integer, got {d_model!r}")
    if not isinstance(doc["nodes"], dict) or not isinstance(doc["edges"], dict):
        raise file_error(path, "'nodes' and 'edges' must be objects mapping names to entries")
    return cfg


def _mib_graph(graph: Graph | None, cfg: dict, extra: dict, path: Path) -> Graph:
    """``graph``, checked against the file's shape and fingerprint; or one built from ``cfg``."""
    d_model = cfg.get("d_model")
    parallel = bool(cfg.get("parallel_attn_mlp", False))
    if graph is None:
        arch = Architecture(cfg["n_layers"], cfg["n_heads"], True, d_model or 0, parallel_attn_mlp=parallel)
        graph = Graph(arch, split_qkv=True)
    _check_mib_graph(graph, "read")
    a = graph.arch
    if (cfg["n_layers"], cfg["n_heads"]) != (a.n_layers, a.n_heads):
        raise file_error(
            path,
            f"the file is for a model with {cfg['n_layers']} layers × {cfg['n_heads']} heads, but the graph has "
            f"{a.n_layers} layers × {a.n_heads} heads; pass the graph of the model the file was made for",
        )
    if parallel != a.parallel_attn_mlp:
        kinds = {True: "a parallel attention/MLP model", False: "a sequential (attention, then MLP) model"}
        raise file_error(
            path,
            f"the file describes {kinds[parallel]} (cfg.parallel_attn_mlp is {str(parallel).lower()}), but the "
            f"graph's model is {kinds[a.parallel_attn_mlp]}: its MLPs read different edges; pass the graph of "
            "the model the file was made for",
        )
    if d_model is not None and a.d_model and d_model != a.d_model:
        raise file_error(
            path,
            f"the file is for a model with d_model={d_model}, but the graph's model has d_model={a.d_model}; "
            "pass the graph of the model the file was made for",
        )
    _check_hash(str(extra.get("config_hash") or ""), graph, path)
    return graph


def _check_hash(file_hash: str, graph: Graph, path: Path) -> None:
    if file_hash and graph.model_hash and file_hash != graph.model_hash:
        raise file_error(
            path,
            f"the file was written for a different model (config hash {file_hash}, this graph's is "
            f"{graph.model_hash}); import it with the graph of the model it was found on",
        )


def _check_mib_nodes(nodes: dict, graph: Graph, path: Path) -> None:
    """Node names exist; values are ``{"in_graph": bool, ...}`` (or a bare bool in old EAP-IG
    files) without a neuron-level mask."""
    a = graph.arch
    unknown = [n for n in nodes if n not in set(graph.src_names) | {"logits"}]
    if unknown:
        raise file_error(
            path,
            f"unknown node name(s) {_few(unknown)} for a {a.n_layers}-layer, "
            f"{a.n_heads}-head model (nodes look like 'input', 'a0.h1', 'm0', 'logits')",
        )
    for name, entry in nodes.items():
        if not isinstance(entry, dict):
            _check_bool(entry, f"nodes[{name!r}]", path)
            continue
        if "in_graph" not in entry:
            raise file_error(path, f"node {name!r} lacks 'in_graph'")
        _check_bool(entry["in_graph"], f"nodes[{name!r}].in_graph", path)
        neurons = entry.get("neurons")
        if neurons is not None and not (isinstance(neurons, list) and all(x is True or x == 1 for x in neurons)):
            raise file_error(
                path,
                f"node {name!r} has a neuron-level mask ('neurons'); neuron-level "
                "circuits are not supported, only edge-level ones",
            )


def _mib_edges(edges: dict, graph: Graph, path: Path, strict: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n_src, n_dst]`` scores and mask of the file's edges (absent ones 0 / False; with
    ``strict``, none may be absent)."""
    scores = [[0.0] * graph.n_dst for _ in range(graph.n_src)]
    mask = [[False] * graph.n_dst for _ in range(graph.n_src)]
    seen = torch.zeros(graph.valid.shape, dtype=torch.bool)
    for name, info in edges.items():
        i, j = _mib_edge_index(name, graph, path)
        if not isinstance(info, dict) or "in_graph" not in info:
            raise file_error(
                path, f"edge {name!r} must map to an object with 'in_graph' (and usually 'score'), got {info!r}"
            )
        mask[i][j] = _check_bool(info["in_graph"], f"edges[{name!r}].in_graph", path)
        if info.get("score") is not None:
            scores[i][j] = _check_float(info["score"], f"edges[{name!r}].score", path)
        seen[i, j] = True
    if strict and int(seen.sum()) != graph.n_edges:
        absent = [
            _mib_edge_name(graph.src_names[i], graph.dst_names[j])
            for i, j in (graph.valid.cpu() & ~seen).nonzero().tolist()
        ]
        raise file_error(
            path,
            f"the file lists {int(seen.sum())} of the graph's {graph.n_edges} edges; missing {_few(absent)}. "
            "EAP-IG writes every edge; pass strict=False to read absent edges as not in the circuit",
        )
    return torch.tensor(scores, dtype=torch.float32), torch.tensor(mask, dtype=torch.bool)


def _mib_edge_index(name, graph: Graph, path: Path) -> tuple[int, int]:
    """The graph's ``(src, dst)`` indices of an EAP-IG edge name (``a0.h1->a1.h2<k>``)."""
    m = _MIB_EDGE.match(name) if isinstance(name, str) else None
    if m is None:
        raise file_error(
            path, f"malformed edge name {name!r}; EAP-IG edges look like 'a0.h1->a1.h2<k>', 'input->m0' or 'm1->logits'"
        )
    src, node, qkv = m.group("src"), m.group("dst"), m.group("qkv")
    if node_kind(node) == "head" and not qkv:
        raise file_error(path, f"edge {name!r} into attention head {node} must name its input, e.g. '{src}->{node}<q>'")
    if qkv and node_kind(node) != "head":
        raise file_error(path, f"edge {name!r} has a <{qkv}> suffix but {node} is not an attention head")
    i, j = graph.src_index.get(src), graph.dst_index.get(f"{node}.{qkv}" if qkv else node)
    if i is None or j is None or not bool(graph.valid[i, j]):
        bad = src if i is None else node if j is None else None
        why = f"unknown node {bad!r}" if bad else f"{node} reads the residual stream before {src} writes it"
        a = graph.arch
        raise file_error(
            path, f"edge {name!r} does not exist in this {a.n_layers}-layer, {a.n_heads}-head graph ({why})"
        )
    return i, j


# ------------------------------------------------------------------------------------------ GraphML
def to_graphml(circuit, path: str | Path, *, all_edges: bool = True, mask: torch.Tensor | None = None) -> Path:
    """Write ``circuit`` (a Circuit, or a Graph with its scores and ``mask``) as GraphML.

    With ``all_edges`` (default) every valid edge is written with its score and an
    ``in_circuit`` flag, so scores survive a round-trip; ``all_edges=False`` writes only the
    circuit's edges (smaller files for other tools; the other scores read back as 0)."""
    c = _as_circuit(circuit, mask)
    g = c.graph
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    score_rows, mask_rows = _score_rows(c)
    G = nx.MultiDiGraph()
    G.graph.update(
        {
            "schema": GRAPHML_SCHEMA,
            "model": g.model_name,
            "config_hash": g.model_hash,
            "n_layers": g.arch.n_layers,
            "n_heads": g.arch.n_heads,
            "has_mlp": g.arch.has_mlp,
            "d_model": g.arch.d_model,
            "d_mlp": g.arch.d_mlp,
            "parallel_attn_mlp": g.arch.parallel_attn_mlp,
            "post_norms": g.arch.post_norms,
            "split_qkv": g.split_qkv,
            "neurons": json.dumps({str(k): v for k, v in sorted(g.neurons.items())}),
            "sites": json.dumps([site.to_dict() for site in g.sites]),
            "positions": int(g.positions or 0),
            "causal": bool(getattr(g, "causal", True)),
            "n_edges": c.n_edges,
            "n_edges_total": g.n_edges,
            "all_edges": all_edges,
            "metadata": json.dumps(c.metadata, default=_jsonable),
            "figures": json.dumps(c.figures, default=_jsonable),
        }
    )
    if c.faithfulness is not None:
        G.graph["faithfulness"] = float(c.faithfulness)
    touched = c.nodes()
    layers = g.src_layer.tolist()
    for name, layer in zip(g.src_names, layers):
        G.add_node(name, kind=node_kind(name), layer=int(layer), in_circuit=name in touched)
    G.add_node("logits", kind="logits", layer=g.arch.n_layers, in_circuit="logits" in touched)
    for i, j in g.valid.nonzero().tolist():
        if not all_edges and not mask_rows[i][j]:
            continue
        src, dst = g.src_names[i], g.dst_names[j]
        node = dst_node(dst)
        G.add_edge(
            src,
            node,
            key=dst,
            dst=dst,
            qkv=dst[-1] if node != dst else "",
            score=float(score_rows[i][j]),
            in_circuit=bool(mask_rows[i][j]),
        )
    atomic_write(path, lambda p: nx.write_graphml(G, p))
    return path


def from_graphml(path: str | Path, graph=None) -> Circuit:
    """Read a GraphML file written by :func:`to_graphml` as a Circuit.

    ``graph`` (a Graph or a HookedTransformer) fixes the model: a file made for another graph
    shape raises a :class:`~circuitgraph.errors.FileFormatError` (a ``ValueError``) naming the
    mismatch. Without it the graph is rebuilt from the file's attributes. The returned circuit's
    ``.graph`` is a new Graph with the file's scores."""
    path = Path(path)
    G = _read_graphml(path)
    attrs = G.graph
    spec, sites = _graphml_spec(attrs, path)
    graph = _as_graph(graph)
    if graph is None:
        try:
            graph = Graph.from_spec(spec)
        except ValueError as e:
            raise file_error(path, f"the file describes an impossible graph ({e}); it is corrupted") from None
    _check_graphml_fits(spec, sites, graph, path)
    _check_hash(str(attrs.get("config_hash", "") or ""), graph, path)
    scores, mask, n_seen = _graphml_edges(G, graph, path)
    if bool(attrs.get("all_edges", True)) and n_seen != graph.n_edges:
        raise file_error(
            path,
            f"the file holds {n_seen} of the graph's {graph.n_edges} edges but says it holds all "
            "of them; the file is truncated or was edited",
        )

    out = _blank_like(graph)
    out.scores = scores.to(out.device)
    meta = _loads_dict(attrs.get("metadata"), "metadata", path)
    meta.setdefault("model", graph.model_name)
    meta["imported_from"] = {"format": "graphml", "path": str(path)}
    out.score_info = meta.get("attribution", {}) if isinstance(meta.get("attribution"), dict) else {}
    faith = attrs.get("faithfulness")
    faith = None if faith is None else float(faith)
    return Circuit(
        out,
        mask.to(out.device),
        metadata=meta,
        faithfulness=faith,
        figures=_loads_dict(attrs.get("figures"), "figures", path),
    )


def _read_graphml(path: Path) -> nx.MultiDiGraph:
    """The file as a networkx multigraph, refusing GraphML that :func:`to_graphml` did not write."""
    try:
        G = nx.read_graphml(path, force_multigraph=True)
    except FileNotFoundError:
        raise
    except (ET.ParseError, nx.NetworkXError, KeyError, ValueError, UnicodeDecodeError) as e:
        raise file_error(path, f"not a readable GraphML file ({type(e).__name__}: {e})") from None
    schema = G.graph.get("schema")
    if schema != GRAPHML_SCHEMA:
        raise file_error(
            path,
            f"not a circuitgraph GraphML file (graph attribute 'schema' is {schema!r}, "
            f"expected {GRAPHML_SCHEMA!r}); write it with to_graphml",
        )
    return G


def _graphml_spec(attrs: dict, path: Path) -> tuple[dict, list[Site]]:
    """The graph the file was written for, as a :meth:`Graph.spec` dict, and its SAE sites."""
    try:
        sites = [Site.from_dict(d) for d in json.loads(attrs.get("sites") or "[]")]
        spec = {
            "name": attrs.get("model", ""),
            "config_hash": attrs.get("config_hash", ""),
            "n_layers": int(attrs["n_layers"]),
            "n_heads": int(attrs["n_heads"]),
            "has_mlp": bool(attrs["has_mlp"]),
            "d_model": int(attrs["d_model"]),
            "d_mlp": int(attrs.get("d_mlp", 0)),
            "parallel_attn_mlp": bool(attrs.get("parallel_attn_mlp", False)),  # (absent from older files)
            "post_norms": bool(attrs.get("post_norms", False)),
            "split_qkv": bool(attrs["split_qkv"]),
            "neurons": {int(k): v for k, v in _loads_dict(attrs.get("neurons"), "neurons", path).items()},
            "positions": int(attrs.get("positions", 0) or 0) or None,
            "causal": bool(attrs.get("causal", True)),
            "sites": [site.to_dict() for site in sites],
        }
        Architecture(spec["n_layers"], spec["n_heads"], spec["has_mlp"], spec["d_model"], spec["d_mlp"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise file_error(path, f"the file lacks or garbles the graph attribute {e}; it is corrupted") from None
    return spec, sites


def _check_graphml_fits(spec: dict, sites: list[Site], graph: Graph, path: Path) -> None:
    """Refuse a file written for another graph shape, listing every difference."""
    a = graph.arch

    def show_neurons(n):
        return "{" + ", ".join(f"{k}: {len(v)} neurons" for k, v in sorted(n.items())) + "}" if n else "none"

    def show_sites(sites):
        return ", ".join(f"{s.hook_name} ({len(s.features)} features)" for s in sites) or "none"

    def present(has_mlp):
        return "present" if has_mlp else "absent"

    positions = graph.positions
    checks = [
        (
            (spec["n_layers"], spec["n_heads"]) != (a.n_layers, a.n_heads),
            f"{spec['n_layers']} layers × {spec['n_heads']} heads in the file, {a.n_layers} × {a.n_heads} in the graph",
        ),
        (
            spec["has_mlp"] != a.has_mlp,
            f"MLPs {present(spec['has_mlp'])} in the file, {present(a.has_mlp)} in the graph",
        ),
        (spec["d_model"] != a.d_model, f"d_model {spec['d_model']} in the file, {a.d_model} in the graph"),
        *[
            (spec[fact] != getattr(a, fact), f"{fact}={spec[fact]} in the file, {getattr(a, fact)} in the graph")
            for fact in ("parallel_attn_mlp", "post_norms")
        ],
        (
            spec["split_qkv"] != graph.split_qkv,
            f"split_qkv={spec['split_qkv']} in the file, split_qkv={graph.split_qkv} in the graph",
        ),
        (
            spec["neurons"] != graph.neurons,
            f"neuron nodes {show_neurons(spec['neurons'])} in the file, {show_neurons(graph.neurons)} in the graph",
        ),
        (
            sites != list(graph.node_graph.sites),
            f"SAE sites {show_sites(sites)} in the file, {show_sites(graph.node_graph.sites)} in the graph",
        ),
        (
            spec["positions"] != positions,
            f"{spec['positions'] or 'no'} token positions in the file, {positions or 'no'} in the graph",
        ),
    ]
    problems = [msg for differs, msg in checks if differs]
    if problems:
        raise file_error(
            path,
            "the file was written for a different graph: "
            + "; ".join(problems)
            + ". Import it with the graph of the model it was made for",
        )


def _graphml_edges(G: nx.MultiDiGraph, graph: Graph, path: Path) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``[n_src, n_dst]`` scores and mask of the file's edges, and how many it lists (each once)."""
    scores = torch.zeros(graph.valid.shape, dtype=torch.float32)
    mask = torch.zeros(graph.valid.shape, dtype=torch.bool)
    seen = set()
    for u, v, key, data in G.edges(keys=True, data=True):
        dst = data.get("dst", key)
        if dst_node(str(dst)) != v:
            raise file_error(path, f"edge {u}->{v} has destination {dst!r}, which does not belong to node {v!r}")
        i, j = graph.src_index.get(u), graph.dst_index.get(dst)
        if i is None or j is None or not bool(graph.valid[i, j]):
            raise file_error(path, f"edge {u}->{dst} does not exist in this graph")
        if (i, j) in seen:
            raise file_error(path, f"edge {u}->{dst} is listed twice")
        seen.add((i, j))
        if "score" not in data or "in_circuit" not in data:
            raise file_error(path, f"edge {u}->{dst} lacks its 'score' or 'in_circuit' attribute")
        scores[i, j] = _check_float(data["score"], f"edge {u}->{dst} score", path)
        mask[i, j] = _check_bool(data["in_circuit"], f"edge {u}->{dst} in_circuit", path)
    return scores, mask, len(seen)


def _loads_dict(text, what: str, path) -> dict:
    if text in (None, ""):
        return {}
    try:
        d = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        raise file_error(path, f"the graph attribute {what!r} is not valid JSON") from None
    if not isinstance(d, dict):
        raise file_error(path, f"the graph attribute {what!r} must be a JSON object")
    return d
