"""Circuits as Neuronpedia / circuit-tracer attribution-graph JSON, and back.

circuit-tracer (``circuit_tracer/frontend/graph_models.py``) and Neuronpedia's graph viewer read
one JSON layout: ``metadata`` (slug, scan, prompt tokens, pruning threshold), ``qParams`` (saved
view state: pinned nodes, supernodes), ``nodes`` (``node_id``, ``layer``, ``ctx_idx``,
``feature_type``, ``clerp`` label, ``influence``, ...) and ``links`` (``source``, ``target``,
``weight``). :func:`to_neuronpedia_json` writes a circuit in it, so a feature circuit found here can
be opened there; :func:`from_neuronpedia_json` reads such a file back into the same circuit.
``docs/neuronpedia-format.md`` documents the mapping; in short:

* ``layer`` is the node's row: the rank of its residual time among the model's (so a layer's
  heads, its SAE sites and its MLP are separate rows, in order), ``"E"`` for the embeddings, and
  one past the last row for the logits. ``ctx_idx`` is the token position (a position-free circuit
  sums over positions: all its nodes sit at the last token).
* ``node_id`` is ``{layer}_{index}_{ctx_idx}``: ``index`` is the feature, head or neuron id, 0 for
  an MLP, −1 for an SAE error node and −2 for a ``rest`` node; ``E_{token}_{ctx}`` for the input.
* ``weight`` is how much the edge *helps the task* (the raw score with the metric's direction
  applied: −score for a higher-is-better metric), so positive links help under every metric. A
  head's q/k/v inputs from one source are one link (their weights summed); each raw score is kept
  on the link under ``"circuitgraph"``.
* ``influence`` is circuit-tracer's cumulative influence (:mod:`circuitgraph.circuit.influence`),
  which the viewers' pruning slider reads; ``metadata.node_threshold`` is its starting value.
* ``metadata.circuitgraph`` carries what the reader needs: the schema, the model's graph spec,
  the circuit's metadata, faithfulness and figures, and each node's name (``node["circuitgraph"]``).
"""

from __future__ import annotations

import json
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from circuitgraph.atomic import atomic_write
from circuitgraph.circuit.circuit import Circuit, check_supernodes
from circuitgraph.circuit.influence import EDGE_THRESHOLD, EXEMPT_KINDS, NODE_THRESHOLD, cumulative_share, influence
from circuitgraph.errors import GraphError, file_error
from circuitgraph.export.formats import _as_circuit, _as_dict, _check_hash, _jsonable, _read_json
from circuitgraph.export.html import metric_direction
from circuitgraph.graph import Graph
from circuitgraph.graph.names import dst_node, node_kind, parse_node

NEURONPEDIA_SCHEMA = "circuitgraph.neuronpedia/1"

__all__ = ["to_neuronpedia_json", "from_neuronpedia_json", "neuronpedia_graph", "NEURONPEDIA_SCHEMA"]

FEATURE_TYPES = {"input": "embedding", "logits": "logit", "sae_error": "mlp reconstruction error"}
GENERIC = "cross layer transcoder"  # the type both viewers draw as an ordinary feature node
INDEX = {"mlp": 0, "sae_error": -1, "sae_rest": -2, "mlp_rest": -2}


def _rows(graph: Graph) -> dict[float, int]:
    """Residual time → row number (the ``layer`` field), over the model's every source but the input."""
    base = graph.node_graph
    times = sorted({float(t) for t in base.src_time.tolist()} - {0.0})
    return {t: r for r, t in enumerate(times)}


def _clerp(name: str, kind: str, info: dict, metric: str) -> str:
    """The node's label in the viewers: its name and what it is (top tokens for features)."""
    node = parse_node(name)
    base = node.base
    if kind == "feature" and info.get("top_tokens"):
        tokens = list(dict.fromkeys(str(t.get("token", "")) for t in info["top_tokens"]))[:3]
        return f"{base}: " + " ".join(repr(t) for t in tokens)
    what = {
        "head": "attention head",
        "mlp": "MLP",
        "neuron": "MLP neuron",
        "feature": "SAE feature",
        "sae_rest": "SAE features that are not nodes",
        "sae_error": "SAE error",
        "input": "embeddings",
        "logits": f"logits ({metric})" if metric else "logits",
    }.get(kind, kind)
    return f"{base} ({what})"


def neuronpedia_graph(
    circuit,
    *,
    slug: str | None = None,
    tokens: list[str] | None = None,
    token_ids: list[int] | None = None,
    node_info: dict[str, dict] | None = None,
    node_threshold: float = NODE_THRESHOLD,
    edge_threshold: float = EDGE_THRESHOLD,
    mask: torch.Tensor | None = None,
) -> dict:
    """The circuit (a Circuit, or a Graph with ``mask``) as a Neuronpedia / circuit-tracer graph
    document (a dict). ``tokens`` are the prompt's tokens as text (a position-resolved graph needs
    one per position; a position-free circuit places its nodes at the last one), ``token_ids``
    their ids (used in the input nodes' ids), ``node_info`` labels (e.g.
    :func:`circuitgraph.sae.feature_labels`)."""
    c = _as_circuit(circuit, mask)
    g = c.graph
    node_info = node_info or {}
    P = g.positions
    if tokens is None:
        tokens = [f"pos{p}" for p in range(P)] if P else ["(prompt)", "(read position)"]
    if P and len(tokens) != P:
        raise GraphError(f"tokens must name each of the graph's {P} positions, got {len(tokens)}")
    if len(tokens) < 2:  # the viewers hide nodes present at more than 2/3 of the prompt's tokens
        tokens = ["(prompt)"] + list(tokens)
    last = len(tokens) - 1
    rows = _rows(g)
    n_rows = len(rows)
    metric, lower_is_better, _ = metric_direction(c, g)
    inf = influence(g, c.dense_mask())
    names = inf.nodes
    values = torch.tensor(
        [0.0 if node_kind(n) in EXEMPT_KINDS else v for n, v in zip(names, inf.node_influence.tolist())],
        dtype=torch.float64,
    )
    cumulative = dict(zip(names, cumulative_share(values).tolist()))

    idx = inf.edges
    scores = g.scores.detach().float().cpu()[idx[:, 0], idx[:, 1]].tolist() if len(idx) else []
    used = {g.src_names[i] for i in idx[:, 0].tolist()} | {dst_node(g.dst_names[j]) for j in idx[:, 1].tolist()}
    nodes, ids = [], {}
    for n in [x for x in names if x in used]:
        node = parse_node(n)
        kind = node_kind(n)
        ctx = node.position if node.position is not None else last
        if kind == "input":
            tok = token_ids[ctx] if token_ids is not None and ctx < len(token_ids) else 0
            layer, index, nid, js = "E", ctx, f"E_{tok}_{ctx}", f"E_{tok}-{ctx}"
        else:
            row = n_rows if kind == "logits" else rows[node.time(g.arch.n_layers)]
            index = INDEX.get(kind, node.index if node.index is not None else node.head or 0)
            layer, nid, js = str(row), f"{row}_{index}_{ctx}", f"{row}_{index}-{ctx}"
        info = _as_dict(node_info.get(n))
        ids[n] = nid
        nodes.append(
            {
                "node_id": nid,
                "feature": index,
                "layer": layer,
                "ctx_idx": ctx,
                "feature_type": FEATURE_TYPES.get(kind, GENERIC),
                "token_prob": 0.0,
                "is_target_logit": kind == "logits",
                "run_idx": 0,
                "reverse_ctx_idx": 0,
                "jsNodeId": js,
                "clerp": _clerp(n, kind, info, metric),
                "influence": None if kind in EXEMPT_KINDS else cumulative.get(n),
                "activation": float(info["max_activation"]) if info.get("max_activation") is not None else None,
                "circuitgraph": n,
            }
        )
    links: dict[tuple[str, str], dict] = {}
    for (i, j), s in zip(idx.tolist(), scores):
        src, dst = g.src_names[i], g.dst_names[j]
        key = (ids[src], ids[dst_node(dst)])
        link = links.setdefault(key, {"source": key[0], "target": key[1], "weight": 0.0, "circuitgraph": []})
        link["weight"] += s if lower_is_better else -s  # helpfulness: positive helps the task
        link["circuitgraph"].append([dst, s])
    groups = check_supernodes(c.metadata.get("supernodes", []), g)
    meta = c.metadata
    attribution = _as_dict(meta.get("attribution"))
    slug = slug or _slug(
        f"{g.model_name or 'model'}-{meta.get('task') or 'task'}-{attribution.get('method') or 'circuit'}"
    )
    prompt = ("" if any(t[:1].isspace() for t in tokens) else " ").join(tokens)
    description = (
        f"circuitgraph circuit: {c.n_edges} of {g.n_edges} edges"
        + (f", faithfulness {c.faithfulness:.3f}" if c.faithfulness is not None else "")
        + f"; a link's weight is how much it helps the task (metric {metric or 'unknown'}, "
        + ("lower" if lower_is_better else "higher")
        + " is better): positive helps, negative hurts"
    )
    return {
        "metadata": {
            "slug": slug,
            "scan": g.model_name or "model",
            "transcoder_list": [],
            "prompt_tokens": list(tokens),
            "prompt": prompt,
            "node_threshold": node_threshold,
            "schema_version": 1,
            "info": {"description": description, "generator": {"name": "circuitgraph", "version": _version()}},
            "pruning_settings": {"node_threshold": node_threshold, "edge_threshold": edge_threshold},
            "circuitgraph": {
                "schema": NEURONPEDIA_SCHEMA,
                "model": g.spec(),
                "metadata": meta,
                "faithfulness": c.faithfulness,
                "figures": c.figures,
                "n_edges": c.n_edges,
                "metric": metric,
                "lower_is_better": lower_is_better,
                "weight": "helpfulness: -score for a higher-is-better metric, +score for a lower-is-better one",
            },
        },
        "qParams": {
            "pinnedIds": [ids[n] for grp in groups for n in grp["nodes"] if n in ids],
            "supernodes": [[grp["name"]] + [ids[n] for n in grp["nodes"] if n in ids] for grp in groups],
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": nodes,
        "links": list(links.values()),
    }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "circuit"


def _version() -> str:
    try:
        return version("circuitgraph")
    except PackageNotFoundError:
        return "unknown"


def to_neuronpedia_json(circuit, path: str | Path, *, index: bool = False, **kw) -> Path:
    """Write :func:`neuronpedia_graph` of ``circuit`` to ``path`` (keywords as there); returns the
    path. With ``index``, also add the graph to ``graph-metadata.json`` beside it, the list
    circuit-tracer's local viewer (``circuit_tracer.frontend.local_server``) reads from its data
    folder, whose graphs live in ``<slug>.json``."""
    doc = neuronpedia_graph(circuit, **kw)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, default=_jsonable)
    atomic_write(path, lambda p: p.write_text(text))
    if index:
        listing = path.parent / "graph-metadata.json"
        graphs = _read_json(listing, "graph-metadata").get("graphs", []) if listing.is_file() else []
        entry = {k: v for k, v in doc["metadata"].items() if k != "circuitgraph"}
        graphs = [x for x in graphs if not (isinstance(x, dict) and x.get("slug") == entry["slug"])] + [entry]
        atomic_write(listing, lambda p: p.write_text(json.dumps({"graphs": graphs}, indent=1)))
    return path


def from_neuronpedia_json(path: str | Path, graph=None) -> Circuit:
    """Read a file written by :func:`to_neuronpedia_json` back as a Circuit: the same edges, their
    raw scores (other edges score 0), metadata (supernodes from ``qParams`` included), faithfulness
    and figures. ``graph`` (a Graph or a model) must be the circuit's model when given. Files from
    other tools name no nodes of a model graph and are refused with a
    :class:`~circuitgraph.errors.FileFormatError`."""
    path = Path(path)
    doc = _read_json(path, "Neuronpedia graph")
    block = _as_dict(_as_dict(doc.get("metadata")).get("circuitgraph"))
    if block.get("schema") != NEURONPEDIA_SCHEMA:
        raise file_error(
            path,
            f"not written by circuitgraph (metadata.circuitgraph.schema is {block.get('schema')!r}, expected "
            f"{NEURONPEDIA_SCHEMA!r}); circuitgraph reads back its own exports only: a graph made by another "
            "tool names no nodes of a model graph",
        )
    try:
        own = Graph.from_spec(block["model"])
    except (KeyError, TypeError, ValueError, GraphError) as e:
        raise file_error(path, f"metadata.circuitgraph.model is not a graph description ({e})") from None
    g = own
    if isinstance(graph, Graph):  # it must be the same graph (shape, sites, positions)
        if graph.spec() != {**own.spec(), "name": graph.model_name, "config_hash": graph.model_hash}:
            raise file_error(path, "the file describes another graph than the one given; pass the circuit's own graph")
        _check_hash(str(block["model"].get("config_hash") or ""), graph, path)
        g = Graph.from_spec(graph.spec(), device=graph.device)
    elif graph is not None:  # a model: its fingerprint must match
        _check_hash(str(block["model"].get("config_hash") or ""), _fingerprint(graph), path)
        g.to(next(graph.parameters()).device)
    names = _node_names(doc, path)
    scores = torch.zeros(g.valid.shape)
    mask = torch.zeros(g.valid.shape, dtype=torch.bool)
    for k, link in enumerate(doc.get("links") or []):
        src, tgt = names.get(str(_as_dict(link).get("source"))), names.get(str(_as_dict(link).get("target")))
        parts = _as_dict(link).get("circuitgraph")
        if src is None or tgt is None or not isinstance(parts, list) or not parts:
            raise file_error(path, f"link {k} names unknown nodes or lacks its circuitgraph scores: {link!r}")
        for part in parts:
            ok = isinstance(part, list) and len(part) == 2 and isinstance(part[0], str)
            if not ok or part[0] not in g.dst_index or dst_node(part[0]) != tgt or src not in g.src_index:
                raise file_error(path, f"link {k} ({src} -> {tgt}) has a malformed score entry {part!r}")
            i, j = g.src_index[src], g.dst_index[part[0]]
            if not bool(g.valid[i, j]):
                raise file_error(path, f"{src}->{part[0]} is not an edge of this graph")
            mask[i, j] = True
            scores[i, j] = float(part[1])
    g.scores = scores.to(g.device)
    meta = dict(_as_dict(block.get("metadata")))
    groups = []
    for k, sn in enumerate(_as_dict(doc.get("qParams")).get("supernodes") or []):
        if not isinstance(sn, list) or not sn or any(x not in names for x in sn[1:]):
            raise file_error(path, f"qParams.supernodes[{k}] must be [name, node ids of this file...], got {sn!r}")
        groups.append({"name": str(sn[0]), "nodes": [names[x] for x in sn[1:]]})
    if groups or "supernodes" in meta:
        try:
            meta["supernodes"] = check_supernodes(groups, g)
        except GraphError as e:
            raise file_error(path, f"qParams.supernodes: {e}") from None
    g.score_info = dict(_as_dict(meta.get("attribution")))
    faith = block.get("faithfulness")
    return Circuit(
        g,
        mask.to(g.device),
        metadata=meta,
        faithfulness=float(faith) if isinstance(faith, (int, float)) and not isinstance(faith, bool) else None,
        figures=dict(_as_dict(block.get("figures"))),
    )


def _fingerprint(model) -> Graph:
    """A bare graph carrying ``model``'s config hash, for :func:`_check_hash`."""
    if not hasattr(model, "cfg"):
        raise TypeError(f"graph must be a Graph, a HookedTransformer or None, got {type(model).__name__}")
    return Graph.from_model(model)


def _node_names(doc: dict, path: Path) -> dict[str, str]:
    """``node_id`` → our node name, from each node's ``circuitgraph`` field."""
    names = {}
    for k, node in enumerate(doc.get("nodes") or []):
        node = _as_dict(node)
        nid, name = node.get("node_id"), node.get("circuitgraph")
        if not isinstance(nid, str) or not isinstance(name, str) or nid in names:
            raise file_error(path, f"node {k} needs a unique node_id and its circuitgraph name, got {node!r}")
        names[nid] = name
    return names
