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

import networkx as nx
import torch

from circuitgraph.atomic import atomic_write
from circuitgraph.circuit.circuit import Circuit
from circuitgraph.graph import Architecture, Graph
from circuitgraph.graph import node_kind
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
    scores = g.scores.detach().float().cpu().masked_fill(~g.valid.cpu(), 0.0).tolist()
    mask = circuit.mask.detach().cpu().tolist()
    return scores, mask


def _check_float(value, where: str, path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: {where} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def _check_bool(value, where: str, path) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{path}: {where} must be true or false, got {value!r}")


def _few(names, n: int = 3) -> str:
    names = list(names)
    more = f" (and {len(names) - n} more)" if len(names) > n else ""
    return ", ".join(repr(x) for x in names[:n]) + more


# ------------------------------------------------------------------------------------ EAP-IG / MIB
_MIB_EDGE = re.compile(r"^(?P<src>[^<>]+)->(?P<dst>[^<>]+?)(?:<(?P<qkv>[qkv])>)?$")


def _mib_edge_name(src: str, dst: str) -> str:
    node = Graph.dst_node(dst)
    return f"{src}->{node}<{dst[-1]}>" if node != dst else f"{src}->{dst}"


def _mib_edge_order(graph: Graph) -> list[tuple[int, int]]:
    """Valid (src, dst) index pairs in the order EAP-IG's ``Graph.from_model`` creates them:
    per layer, every upstream node into each head's q, k, v; then into the MLP; finally logits."""
    H = graph.arch.n_heads
    order = []
    upstream = [graph.src_index["input"]]
    for layer in range(graph.arch.n_layers):
        heads = [graph.src_index[f"a{layer}.h{h}"] for h in range(H)]
        for s in upstream:
            for h in range(H):
                for letter in "qkv":
                    order.append((s, graph.dst_index[f"a{layer}.h{h}.{letter}"]))
        upstream = upstream + heads
        for s in upstream:
            order.append((s, graph.dst_index[f"m{layer}"]))
        upstream.append(graph.src_index[f"m{layer}"])
    for s in upstream:
        order.append((s, graph.dst_index["logits"]))
    return order


def _check_mib_graph(graph: Graph, what: str) -> None:
    if not graph.split_qkv:
        raise ValueError(
            f"cannot {what} the EAP-IG/MIB format with a split_qkv=False graph: that format scores each "
            "head's q, k and v inputs separately; use Graph.from_model(model, split_qkv=True), or GraphML"
        )
    if not graph.arch.has_mlp:
        raise ValueError(
            f"cannot {what} the EAP-IG/MIB format for an attention-only model: EAP-IG graphs always "
            "contain an MLP node per layer; use GraphML (to_graphml) instead"
        )
    if getattr(graph, "positions", None):
        raise ValueError(
            f"cannot {what} the EAP-IG/MIB format with a position-resolved graph ({graph.positions} "
            "positions): EAP-IG graphs have one node per component; use GraphML instead, or "
            "PositionalGraph.position_free() for position-summed scores"
        )
    if graph.neurons:
        raise ValueError(
            f"cannot {what} the EAP-IG/MIB format with a graph that splits MLPs into neuron nodes "
            f"(layers {sorted(graph.neurons)}): EAP-IG edges join whole heads and MLPs; use GraphML instead"
        )
    if graph.sites:
        raise ValueError(
            f"cannot {what} the EAP-IG/MIB format with a graph that has SAE feature nodes (sites "
            f"{[s.hook_name for s in graph.sites]}): EAP-IG graphs have no features; use GraphML instead"
        )


def to_mib_json(circuit, path: str | Path, *, scores: bool = True, mask: torch.Tensor | None = None) -> Path:
    """Write ``circuit`` (a Circuit, or a Graph with its scores and ``mask``, default
    ``graph.in_circuit``) in the EAP-IG / MIB ``Graph.to_json`` layout. With ``scores=False`` the
    edge scores are left out (MIB's binary-membership submissions). Returns the path written."""
    c = _as_circuit(circuit, mask)
    g = c.graph
    _check_mib_graph(g, "write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    score_rows, mask_rows = _score_rows(c)
    used = set()
    edges = {}
    for i, j in _mib_edge_order(g):
        src, dst = g.src_names[i], g.dst_names[j]
        info = {"score": score_rows[i][j], "in_graph": bool(mask_rows[i][j])} if scores else {"in_graph": bool(mask_rows[i][j])}
        edges[_mib_edge_name(src, dst)] = info
        if mask_rows[i][j]:
            used.update((src, Graph.dst_node(dst)))
    nodes = {name: {"in_graph": name in used} for name in g.src_names}
    nodes["logits"] = {"in_graph": True}  # EAP-IG's logits node is always in the graph
    doc = {
        "cfg": {"n_layers": g.arch.n_layers, "n_heads": g.arch.n_heads, "parallel_attn_mlp": False,
                "d_model": g.arch.d_model},
        "nodes": nodes,
        "edges": edges,
        "circuitgraph": {"schema": MIB_SCHEMA, "model": g.model_name, "config_hash": g.model_hash,
                         "metadata": c.metadata, "faithfulness": c.faithfulness, "figures": c.figures,
                         "n_edges": c.n_edges},
    }
    text = json.dumps(doc, default=_jsonable)
    atomic_write(path, lambda p: p.write_text(text))
    return path


def _read_json(path: Path, what: str) -> dict:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a {what} JSON file (it is not UTF-8 text)") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the file is corrupted or truncated") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a {what} file: the top level is a {type(doc).__name__}, expected an object")
    return doc


def from_mib_json(path: str | Path, graph=None, *, strict: bool = True) -> Circuit:
    """Read an EAP-IG / MIB ``Graph`` JSON file as a Circuit.

    ``graph`` (a Graph or a HookedTransformer) fixes the model; the file must describe the same
    shape, and a ``ValueError`` names any mismatch. Without it the graph is built from the file's
    ``cfg``. The returned circuit's ``.graph`` is a new Graph holding the file's scores (``graph``
    itself is not modified). Edge ``in_graph`` flags give the mask; node flags are checked for
    form but not used, since edges alone define the circuit. Files without edge scores (MIB's
    binary-membership circuits) give zero scores. With ``strict`` (default) every edge of the
    graph must be listed, as EAP-IG writes them; ``strict=False`` reads absent edges as not in
    the circuit with score 0.
    """
    path = Path(path)
    doc = _read_json(path, "EAP-IG/MIB graph")
    missing = [k for k in ("cfg", "nodes", "edges") if k not in doc]
    if missing:
        raise ValueError(f"{path} is not an EAP-IG/MIB graph file: it lacks the key(s) {_few(missing)} "
                         "(expected 'cfg', 'nodes' and 'edges')")
    cfg, nodes, edges = doc["cfg"], doc["nodes"], doc["edges"]
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: 'cfg' must be an object with n_layers, n_heads, parallel_attn_mlp, d_model")
    for key in ("n_layers", "n_heads"):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{path}: cfg.{key} must be a positive integer, got {v!r}")
    if cfg.get("parallel_attn_mlp"):
        raise ValueError(f"{path} describes a parallel attention/MLP model (cfg.parallel_attn_mlp is true), "
                         "which circuitgraph's graph does not support")
    d_model = cfg.get("d_model")
    if d_model is not None and (isinstance(d_model, bool) or not isinstance(d_model, int)):
        raise ValueError(f"{path}: cfg.d_model must be an integer, got {d_model!r}")
    if not isinstance(nodes, dict) or not isinstance(edges, dict):
        raise ValueError(f"{path}: 'nodes' and 'edges' must be objects mapping names to entries")

    graph = _as_graph(graph)
    if graph is None:
        graph = Graph(Architecture(cfg["n_layers"], cfg["n_heads"], True, d_model or 0), split_qkv=True)
    _check_mib_graph(graph, "read")
    a = graph.arch
    if (cfg["n_layers"], cfg["n_heads"]) != (a.n_layers, a.n_heads):
        raise ValueError(
            f"{path} is for a model with {cfg['n_layers']} layers × {cfg['n_heads']} heads, but the graph has "
            f"{a.n_layers} layers × {a.n_heads} heads; pass the graph of the model the file was made for"
        )
    if d_model is not None and a.d_model and d_model != a.d_model:
        raise ValueError(f"{path} is for a model with d_model={d_model}, but the graph's model has d_model={a.d_model}")
    extra = doc.get("circuitgraph") if isinstance(doc.get("circuitgraph"), dict) else {}
    file_hash = extra.get("config_hash") or ""
    if file_hash and graph.model_hash and file_hash != graph.model_hash:
        raise ValueError(
            f"{path} was written for a different model (config hash {file_hash}, this graph's is "
            f"{graph.model_hash}); import it with the graph of the model it was found on"
        )

    # nodes: names must exist; values are {"in_graph": bool, ...} (or a bare bool in old EAP-IG files)
    node_names = set(graph.src_names) | {"logits"}
    unknown = [n for n in nodes if n not in node_names]
    if unknown:
        raise ValueError(f"{path}: unknown node name(s) {_few(unknown)} for a {a.n_layers}-layer, "
                         f"{a.n_heads}-head model (nodes look like 'input', 'a0.h1', 'm0', 'logits')")
    for name, entry in nodes.items():
        if isinstance(entry, dict):
            if "in_graph" not in entry:
                raise ValueError(f"{path}: node {name!r} lacks 'in_graph'")
            _check_bool(entry["in_graph"], f"nodes[{name!r}].in_graph", path)
            neurons = entry.get("neurons")
            if neurons is not None and not (isinstance(neurons, list) and all(x is True or x == 1 for x in neurons)):
                raise ValueError(f"{path}: node {name!r} has a neuron-level mask ('neurons'); neuron-level "
                                 "circuits are not supported, only edge-level ones")
        else:
            _check_bool(entry, f"nodes[{name!r}]", path)

    n_src, n_dst = graph.n_src, graph.n_dst
    scores = [[0.0] * n_dst for _ in range(n_src)]
    mask = [[False] * n_dst for _ in range(n_src)]
    seen = torch.zeros(graph.valid.shape, dtype=torch.bool)
    for name, info in edges.items():
        m = _MIB_EDGE.match(name) if isinstance(name, str) else None
        if m is None:
            raise ValueError(f"{path}: malformed edge name {name!r}; EAP-IG edges look like "
                             "'a0.h1->a1.h2<k>', 'input->m0' or 'm1->logits'")
        src, node, qkv = m.group("src"), m.group("dst"), m.group("qkv")
        dst = f"{node}.{qkv}" if qkv else node
        if node_kind(node) == "head" and not qkv:
            raise ValueError(f"{path}: edge {name!r} into attention head {node} must name its input, "
                             f"e.g. '{src}->{node}<q>'")
        if qkv and node_kind(node) != "head":
            raise ValueError(f"{path}: edge {name!r} has a <{qkv}> suffix but {node} is not an attention head")
        i, j = graph.src_index.get(src), graph.dst_index.get(dst)
        if i is None or j is None or not bool(graph.valid[i, j]):
            bad = src if i is None else node if j is None else None
            why = f"unknown node {bad!r}" if bad else f"{node} reads the residual stream before {src} writes it"
            raise ValueError(f"{path}: edge {name!r} does not exist in this {a.n_layers}-layer, {a.n_heads}-head "
                             f"graph ({why})")
        if not isinstance(info, dict) or "in_graph" not in info:
            raise ValueError(f"{path}: edge {name!r} must map to an object with 'in_graph' (and usually 'score'), "
                             f"got {info!r}")
        mask[i][j] = _check_bool(info["in_graph"], f"edges[{name!r}].in_graph", path)
        if info.get("score") is not None:
            scores[i][j] = _check_float(info["score"], f"edges[{name!r}].score", path)
        seen[i, j] = True
    if strict and int(seen.sum()) != graph.n_edges:
        absent = [_mib_edge_name(graph.src_names[i], graph.dst_names[j])
                  for i, j in (graph.valid.cpu() & ~seen).nonzero().tolist()]
        raise ValueError(f"{path} lists {int(seen.sum())} of the graph's {graph.n_edges} edges; missing {_few(absent)}. "
                         "EAP-IG writes every edge; pass strict=False to read absent edges as not in the circuit")

    out = _blank_like(graph)
    out.scores = torch.tensor(scores, dtype=torch.float32, device=out.device)
    meta = dict(extra["metadata"]) if isinstance(extra.get("metadata"), dict) else {}
    meta.setdefault("model", graph.model_name)
    meta.setdefault("config_hash", graph.model_hash)
    meta["imported_from"] = {"format": "eap-ig/mib json", "path": str(path)}
    out.score_info = meta.get("attribution", {}) if isinstance(meta.get("attribution"), dict) else {}
    faith = extra.get("faithfulness")
    return Circuit(out, torch.tensor(mask, dtype=torch.bool, device=out.device), metadata=meta,
                   faithfulness=float(faith) if isinstance(faith, (int, float)) and not isinstance(faith, bool) else None,
                   figures=extra.get("figures") if isinstance(extra.get("figures"), dict) else {})


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
    G.graph.update({
        "schema": GRAPHML_SCHEMA, "model": g.model_name, "config_hash": g.model_hash,
        "n_layers": g.arch.n_layers, "n_heads": g.arch.n_heads, "has_mlp": g.arch.has_mlp,
        "d_model": g.arch.d_model, "d_mlp": g.arch.d_mlp, "split_qkv": g.split_qkv,
        "neurons": json.dumps({str(k): v for k, v in sorted(g.neurons.items())}),
        "sites": json.dumps([site.to_dict() for site in g.sites]),
        "positions": int(getattr(g, "positions", None) or 0), "causal": bool(getattr(g, "causal", True)),
        "n_edges": c.n_edges,
        "n_edges_total": g.n_edges, "all_edges": all_edges,
        "metadata": json.dumps(c.metadata, default=_jsonable),
        "figures": json.dumps(c.figures, default=_jsonable),
    })
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
        node = Graph.dst_node(dst)
        G.add_edge(src, node, key=dst, dst=dst, qkv=dst[-1] if node != dst else "",
                   score=float(score_rows[i][j]), in_circuit=bool(mask_rows[i][j]))
    atomic_write(path, lambda p: nx.write_graphml(G, p))
    return path


def from_graphml(path: str | Path, graph=None) -> Circuit:
    """Read a GraphML file written by :func:`to_graphml` as a Circuit.

    ``graph`` (a Graph or a HookedTransformer) fixes the model: a file made for another graph
    shape raises a ``ValueError`` naming the mismatch. Without it the graph is rebuilt from the
    file's attributes. The returned circuit's ``.graph`` is a new Graph with the file's scores."""
    path = Path(path)
    try:
        G = nx.read_graphml(path, force_multigraph=True)
    except FileNotFoundError:
        raise
    except (ET.ParseError, nx.NetworkXError, KeyError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a readable GraphML file ({type(e).__name__}: {e})") from None
    attrs = G.graph
    if attrs.get("schema") != GRAPHML_SCHEMA:
        raise ValueError(f"{path} is not a circuitgraph GraphML file (graph attribute 'schema' is "
                         f"{attrs.get('schema')!r}, expected {GRAPHML_SCHEMA!r}); write it with to_graphml")
    try:
        file_arch = Architecture(int(attrs["n_layers"]), int(attrs["n_heads"]), bool(attrs["has_mlp"]),
                                 int(attrs["d_model"]), int(attrs.get("d_mlp", 0)))
        file_split = bool(attrs["split_qkv"])
        file_neurons = {int(k): v for k, v in _loads_dict(attrs.get("neurons"), "neurons", path).items()}
        file_positions = int(attrs.get("positions", 0) or 0) or None
        file_sites = [Site.from_dict(d) for d in json.loads(attrs.get("sites") or "[]")]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path} lacks or garbles the graph attribute {e}; the file is corrupted") from None
    graph = _as_graph(graph)
    if graph is None:
        try:
            graph = Graph.from_spec({
                "name": attrs.get("model", ""), "config_hash": attrs.get("config_hash", ""),
                "n_layers": file_arch.n_layers, "n_heads": file_arch.n_heads, "has_mlp": file_arch.has_mlp,
                "d_model": file_arch.d_model, "d_mlp": file_arch.d_mlp, "split_qkv": file_split,
                "neurons": file_neurons, "positions": file_positions, "causal": bool(attrs.get("causal", True)),
                "sites": [site.to_dict() for site in file_sites],
            })
        except ValueError as e:
            raise ValueError(f"{path} describes an impossible graph ({e}); the file is corrupted") from None
    problems = []
    a = graph.arch
    if (file_arch.n_layers, file_arch.n_heads) != (a.n_layers, a.n_heads):
        problems.append(f"{file_arch.n_layers} layers × {file_arch.n_heads} heads in the file, "
                        f"{a.n_layers} × {a.n_heads} in the graph")
    if file_arch.has_mlp != a.has_mlp:
        problems.append(f"MLPs {'present' if file_arch.has_mlp else 'absent'} in the file, "
                        f"{'present' if a.has_mlp else 'absent'} in the graph")
    if file_arch.d_model != a.d_model:
        problems.append(f"d_model {file_arch.d_model} in the file, {a.d_model} in the graph")
    if file_split != graph.split_qkv:
        problems.append(f"split_qkv={file_split} in the file, split_qkv={graph.split_qkv} in the graph")
    if file_neurons != graph.neurons:
        def show(n):
            return "{" + ", ".join(f"{k}: {len(v)} neurons" for k, v in sorted(n.items())) + "}" if n else "none"
        problems.append(f"neuron nodes {show(file_neurons)} in the file, {show(graph.neurons)} in the graph")
    if file_sites != list(graph.node_graph.sites):
        def show_sites(sites):
            return ", ".join(f"{s.hook_name} ({len(s.features)} features)" for s in sites) or "none"
        problems.append(f"SAE sites {show_sites(file_sites)} in the file, {show_sites(graph.node_graph.sites)} in the graph")
    if file_positions != getattr(graph, "positions", None):
        problems.append(f"{file_positions or 'no'} token positions in the file, "
                        f"{getattr(graph, 'positions', None) or 'no'} in the graph")
    if problems:
        raise ValueError(f"{path} was written for a different graph: " + "; ".join(problems)
                         + ". Import it with the graph of the model it was made for")
    file_hash = str(attrs.get("config_hash", "") or "")
    if file_hash and graph.model_hash and file_hash != graph.model_hash:
        raise ValueError(
            f"{path} was written for a different model (config hash {file_hash}, this graph's is "
            f"{graph.model_hash}); import it with the graph of the model it was found on"
        )

    scores = torch.zeros(graph.valid.shape, dtype=torch.float32)
    mask = torch.zeros(graph.valid.shape, dtype=torch.bool)
    seen = set()
    for u, v, key, data in G.edges(keys=True, data=True):
        dst = data.get("dst", key)
        if Graph.dst_node(str(dst)) != v:
            raise ValueError(f"{path}: edge {u}->{v} has destination {dst!r}, which does not belong to node {v!r}")
        i, j = graph.src_index.get(u), graph.dst_index.get(dst)
        if i is None or j is None or not bool(graph.valid[i, j]):
            raise ValueError(f"{path}: edge {u}->{dst} does not exist in this graph")
        if (i, j) in seen:
            raise ValueError(f"{path}: edge {u}->{dst} is listed twice")
        seen.add((i, j))
        if "score" not in data or "in_circuit" not in data:
            raise ValueError(f"{path}: edge {u}->{dst} lacks its 'score' or 'in_circuit' attribute")
        scores[i, j] = _check_float(data["score"], f"edge {u}->{dst} score", path)
        mask[i, j] = _check_bool(data["in_circuit"], f"edge {u}->{dst} in_circuit", path)
    if bool(attrs.get("all_edges", True)) and len(seen) != graph.n_edges:
        raise ValueError(f"{path} holds {len(seen)} of the graph's {graph.n_edges} edges but says it holds all "
                         "of them; the file is truncated or was edited")

    out = _blank_like(graph)
    out.scores = scores.to(out.device)
    meta = _loads_dict(attrs.get("metadata"), "metadata", path)
    meta.setdefault("model", graph.model_name)
    meta["imported_from"] = {"format": "graphml", "path": str(path)}
    out.score_info = meta.get("attribution", {}) if isinstance(meta.get("attribution"), dict) else {}
    faith = attrs.get("faithfulness")
    faith = None if faith is None else float(faith)
    return Circuit(out, mask.to(out.device), metadata=meta, faithfulness=faith,
                   figures=_loads_dict(attrs.get("figures"), "figures", path))


def _loads_dict(text, what: str, path) -> dict:
    if text in (None, ""):
        return {}
    try:
        d = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        raise ValueError(f"{path}: the graph attribute {what!r} is not valid JSON") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: the graph attribute {what!r} must be a JSON object")
    return d
