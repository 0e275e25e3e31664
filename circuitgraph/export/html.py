"""A self-contained, offline, interactive HTML view of a circuit, readable at feature scale.

    write_html(circuit, "ioi.html")                       # a Circuit
    write_html(graph, "scores.html", mask=top_n(graph, 200))   # a Graph with scores and a mask
    write_html(c, "features.html", node_info=feature_labels(model, g, task))

In the spirit of circuit-tracer's and Neuronpedia's attribution-graph pages:

* Nodes are laid out by residual time (y: embeddings at the bottom, logits at the top) and, in a
  position-resolved graph, by token position (x), with the prompt's tokens under their columns
  (:mod:`circuitgraph.export.layout`). Edges never run through a node they do not touch.
* A slider prunes by influence (:mod:`circuitgraph.circuit.influence`): at each stop the page
  shows the nodes and edges that carry that share of the attribution to the logits, hiding nodes
  as well as edges. It opens at ``node_threshold`` / ``edge_threshold`` (0.8 / 0.98, as
  circuit-tracer), or on the whole circuit when that has at most ``whole_below`` nodes.
* Edge colour says whether the edge helps or hurts the task, in words, under every metric (the raw
  sign is converted with the metric's direction); the raw score is in the tooltip.
* Click a node for its panel: kind, site, influence, its incoming and outgoing edges ranked by
  |score|, and for SAE features their top-activating contexts with the activating token marked.
  Hover highlights a node's neighbourhood; the search box finds nodes by name.
* Shift-click nodes and press "group" to make a supernode; "save circuit.json" downloads the
  circuit file with the groups in ``metadata.supernodes``, which :meth:`Circuit.load` reads back.

The page is drawn as SVG by a small script inside it (no library), so it works offline and every
box, label and edge is a DOM element that tests can measure. For tests the page exposes
``window.circuitgraph`` and mirrors what it shows into ``<div id="cg-status" data-...>``.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import torch

from circuitgraph.atomic import atomic_write
from circuitgraph.circuit.circuit import Circuit, check_supernodes
from circuitgraph.circuit.influence import EDGE_THRESHOLD, NODE_THRESHOLD, influence, prune_by_influence
from circuitgraph.export.layout import box_width, layout
from circuitgraph.graph import Graph
from circuitgraph.graph.blocks import as_dense
from circuitgraph.graph.names import dst_node, node_kind, parse_node
from circuitgraph.hypothesis.render import vis_assets  # re-exported: the hypothesis page still uses vis-network
from circuitgraph.tasks.metrics import LOWER_IS_BETTER

__all__ = ["write_html", "KIND_STYLES", "vis_assets", "STOPS", "MAX_DRAWN_EDGES", "metric_direction", "effect_words"]

# Node colours by kind (``node_kind`` of the name). New node types only need an entry here;
# unknown kinds fall back to DEFAULT_STYLE.
KIND_STYLES: dict[str, dict] = {
    "input": {"color": "#b8bec6", "label": "input (embeddings)"},
    "head": {"color": "#f6c85f", "label": "attention head"},
    "mlp": {"color": "#8fd18b", "label": "MLP"},
    "neuron": {"color": "#c9a7e8", "label": "MLP neuron"},
    "feature": {"color": "#7fd6e0", "label": "SAE feature"},
    "sae_rest": {"color": "#cfe9ec", "label": "SAE rest (other features)"},
    "sae_error": {"color": "#f2b8a2", "label": "SAE error"},
    "logits": {"color": "#9aa8f0", "label": "logits"},
}
DEFAULT_STYLE = {"color": "#dddddd", "label": "other"}
HELPS, HURTS, NEUTRAL = "#1f6fd1", "#e8590c", "#9e9e9e"
STOPS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)  # node thresholds on the slider (plus the whole circuit)
MAX_DRAWN_EDGES = 5000  # a stop with more edges is left off the slider (SVG stays responsive)
WHOLE_BELOW = 25  # circuits with at most this many nodes open unpruned
LABEL_CHARS = 18  # a box label longer than this is shortened with …


def _inline_json(payload: object) -> str:
    # The payload is a JavaScript expression (not parsed as JSON), so NaN / Infinity are fine; a
    # literal "</" or "<!--" inside it would end or escape the script element early.
    data = json.dumps(payload, ensure_ascii=False, default=str, separators=(",", ":"))
    return data.replace("</", "<\\/").replace("<!--", "<\\!--")


def _dict(value: object) -> dict:
    """``value`` when it is a dict (a JSON object), else an empty one."""
    return value if isinstance(value, dict) else {}


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def _short(text: str, n: int = LABEL_CHARS) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# ------------------------------------------------------------------------------------ metric
def metric_direction(circuit, graph: Graph) -> tuple[str, bool, bool]:
    """``(metric name, lower is better, known)`` of the metric the scores were computed with (the
    attribution's, else the circuit's). Unknown names (custom callables) are read as higher is
    better, like a logit difference, and flagged so the page can say so."""
    meta = dict(getattr(circuit, "metadata", None) or {})
    attribution = _dict(meta.get("attribution"))
    name = attribution.get("metric") or (graph.score_info or {}).get("metric") or meta.get("metric") or ""
    name = str(name)
    known = name in LOWER_IS_BETTER or name in ("logit_diff", "prob_diff")
    return name, name in LOWER_IS_BETTER, known


def effect_words(score: float, metric: str, lower_is_better: bool) -> tuple[str, str]:
    """``("helps" | "hurts" | "no effect", sentence)`` for an edge of raw ``score`` (the metric with
    the edge ablated minus the clean metric), the same under every metric."""
    m = metric or "the metric"
    if not score or not math.isfinite(score):
        return "no effect", f"ablating it leaves {m} unchanged"
    way = "lowers" if score < 0 else "raises"
    helps = (score > 0) if lower_is_better else (score < 0)
    return ("helps" if helps else "hurts"), f"ablating it {way} {m} by {_fmt(abs(score))}"


# ------------------------------------------------------------------------------------ main
def write_html(
    circuit,
    path: str | Path,
    title: str | None = None,
    show_all_nodes: bool = False,
    mask: torch.Tensor | None = None,
    node_info: dict[str, dict] | None = None,
    tokens: list[str] | None = None,
    node_threshold: float = NODE_THRESHOLD,
    edge_threshold: float = EDGE_THRESHOLD,
    whole_below: int = WHOLE_BELOW,
) -> Path:
    """Write an interactive, self-contained HTML view of ``circuit`` to ``path``; returns the path.

    ``circuit`` is a :class:`~circuitgraph.circuit.Circuit`, or a :class:`~circuitgraph.graph.Graph`
    whose scores are shown on the edges in ``mask`` (default ``graph.in_circuit``). ``node_info``
    maps node names to extra information (e.g. :func:`circuitgraph.sae.labels.feature_labels`:
    ``site``, ``feature``, ``top_tokens``, ``description``), shown on the boxes and in the panel.
    ``tokens`` names the token positions of a position-resolved graph (e.g. one prompt's decoded
    tokens). The page opens pruned at ``node_threshold`` / ``edge_threshold`` (see
    :func:`~circuitgraph.circuit.influence.prune_by_influence`), or whole when the circuit has at
    most ``whole_below`` nodes. ``show_all_nodes`` also draws the model's nodes outside the circuit
    (faded).
    """
    graph, m, subject = _subject(circuit, mask)
    if node_info is not None and not isinstance(node_info, dict):
        raise TypeError(f"node_info must be a dict {{node name: dict}}, got {type(node_info).__name__}")
    node_info = node_info or {}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = _Page(graph, m, subject, node_info, tokens, show_all_nodes)
    payload = page.payload(node_threshold, edge_threshold, whole_below)
    title = _title(payload["info"]) if title is None else title
    text = _render(title, payload)
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path


def _subject(circuit, mask: torch.Tensor | None) -> tuple[Graph, torch.Tensor, Circuit]:
    """The graph, the edge mask to draw (within the valid edges, on the CPU) and the circuit
    (built around the mask for a bare graph) of ``write_html``'s first argument."""
    if isinstance(circuit, Circuit):
        graph = circuit.graph
        m = as_dense(circuit.mask if mask is None else mask)  # (the viewer's masks are dense)
    elif isinstance(circuit, Graph):
        graph = circuit
        m = graph.in_circuit if mask is None else mask
    else:
        raise TypeError(f"write_html needs a Circuit or a Graph, got {type(circuit).__name__}")
    if m.shape != graph.valid.shape:
        raise ValueError(f"mask must have shape {list(graph.valid.shape)}, got {list(m.shape)}")
    m = (m.bool().to(graph.valid.device) & graph.valid).cpu()
    if isinstance(circuit, Circuit) and mask is None:
        return graph, m, circuit
    meta = dict(getattr(circuit, "metadata", None) or {}) if isinstance(circuit, Circuit) else {}
    if not meta:
        meta = {"model": graph.model_name, "config_hash": graph.model_hash, "attribution": dict(graph.score_info)}
    faith = circuit.faithfulness if isinstance(circuit, Circuit) and mask is None else None
    return graph, m, Circuit(graph, m.to(graph.valid.device), metadata=meta, faithfulness=faith)


def _title(info: dict) -> str:
    """The default title: ``"ioi circuit in gpt2"``, or just ``"Circuit"``."""
    return (f"{info['task']} circuit" if info["task"] else "Circuit") + (
        f" in {info['model']}" if info["model"] else ""
    )


def _describe(circuit: Circuit, graph: Graph) -> dict:
    """Model, task, method, metric, selection and faithfulness for the title and header."""
    meta = dict(circuit.metadata or {})
    attribution = _dict(meta.get("attribution")) or _dict(graph.score_info)
    info = {
        "model": meta.get("model") or graph.model_name or "",
        "task": meta.get("task") or attribution.get("task") or "",
        "metric": attribution.get("metric") or meta.get("metric") or "",
        "method": attribution.get("method") or meta.get("method") or "",
    }
    selection = _dict(meta.get("selection"))
    if selection.get("kind"):
        info["selection"] = str(selection["kind"]) + (
            f" (target {selection['target']})" if "target" in selection else ""
        )
    info["faithfulness"] = None if circuit.faithfulness is None else float(circuit.faithfulness)
    return info


class _Page:
    """Everything the page shows, computed once: the circuit's edges with scores, influence and
    ranks; the nodes; and, per slider stop, which of them are drawn and where."""

    def __init__(self, graph: Graph, m: torch.Tensor, circuit: Circuit, node_info: dict, tokens, show_all: bool):
        self.graph, self.mask, self.circuit = graph, m, circuit
        self.node_info, self.tokens, self.show_all = node_info, tokens, show_all
        self.metric, self.lower_is_better, self.metric_known = metric_direction(circuit, graph)
        inf = influence(graph, m)
        self.influence = inf.by_node()
        self.idx = inf.edges  # [E, 2] row-major, as every mask below is read
        scores = graph.scores.detach().float().cpu()[self.idx[:, 0], self.idx[:, 1]].tolist() if len(self.idx) else []
        self.scores, self.flows = scores, inf.edge_flow.tolist()
        order = sorted(range(len(scores)), key=lambda k: -(abs(scores[k]) if math.isfinite(scores[k]) else math.inf))
        self.ranks = [0] * len(scores)
        for r, k in enumerate(order, 1):
            self.ranks[k] = r
        self.edge_id = torch.full(m.shape, -1, dtype=torch.long)
        self.edge_id[self.idx[:, 0], self.idx[:, 1]] = torch.arange(len(self.idx))
        self.src = [graph.src_names[i] for i in self.idx[:, 0].tolist()]
        self.dst = [graph.dst_names[j] for j in self.idx[:, 1].tolist()]
        self.dst_node = [dst_node(d) for d in self.dst]
        # each edge's bootstrap inclusion frequency, when the circuit carries stability figures
        stability = (circuit.figures or {}).get("stability") or {}
        inclusion = stability.get("inclusion") or {}
        self.n_boot = stability.get("n_boot")
        self.inclusion = [inclusion.get(f"{s}->{d}", 0.0) if self.n_boot else None for s, d in zip(self.src, self.dst)]
        self.slot = [parse_node(d).slot or "" for d in self.dst]
        logits = list(dict.fromkeys(dst_node(graph.dst_names[j]) for j in graph.logits_columns.tolist()))
        self.always = [] if graph.positions is not None else ["input"] + logits
        self.all_nodes = list(graph.src_names) + logits

    # -------------------------------------------------------------- stops
    def _stops(self, node_threshold: float, edge_threshold: float) -> list[dict]:
        """The slider's stops: node thresholds (edges at ``edge_threshold``), then the whole circuit."""
        stops = []
        for t in sorted(set(STOPS) | {float(node_threshold)}):
            kept = prune_by_influence(self.graph, self.mask, t, edge_threshold)
            stops.append(
                {
                    "label": f"{round(100 * t, 1):g}% of influence",
                    "node_threshold": t,
                    "edge_threshold": edge_threshold,
                    "edges": self.edge_id[kept].tolist(),
                }
            )
        stops.append(
            {
                "label": "whole circuit",
                "node_threshold": None,
                "edge_threshold": None,
                "edges": list(range(len(self.idx))),
            }
        )
        return stops

    def _nodes_of(self, edges: list[int]) -> list[str]:
        touched = {self.src[k] for k in edges} | {self.dst_node[k] for k in edges} | set(self.always)
        return [n for n in self.all_nodes if n in touched or self.show_all]

    # -------------------------------------------------------------- payload
    def payload(self, node_threshold: float, edge_threshold: float, whole_below: int) -> dict:
        stops = self._stops(node_threshold, edge_threshold)
        # stops with too many edges to draw are left off (the sparsest one always stays)
        skipped = [s["label"] for s in stops[1:] if len(s["edges"]) > MAX_DRAWN_EDGES]
        stops = stops[:1] + [s for s in stops[1:] if len(s["edges"]) <= MAX_DRAWN_EDGES]
        circuit_nodes = self._nodes_of(list(range(len(self.idx))))
        n_circuit_nodes = len(set(self.src) | set(self.dst_node))
        default = next((i for i, s in enumerate(stops) if s["node_threshold"] == float(node_threshold)), 0)
        if n_circuit_nodes <= whole_below and stops and stops[-1]["node_threshold"] is None:
            default = len(stops) - 1
        shown = list(dict.fromkeys(n for s in stops for n in self._nodes_of(s["edges"])))
        names = list(dict.fromkeys(circuit_nodes + shown))
        index = {n: i for i, n in enumerate(names)}
        labels = {n: self._labels(n) for n in names}
        w = box_width([a for a, _ in labels.values()] + [b for _, b in labels.values()])
        for s in stops:
            self._place(s, index, w)
        info = _describe(self.circuit, self.graph)
        info.update(
            n_edges=len(self.idx),
            n_edges_total=self.graph.n_edges,
            n_nodes=n_circuit_nodes,
            metric=self.metric,
            lower_is_better=self.lower_is_better,
            metric_known=self.metric_known,
            positions=self.graph.positions,
            skipped_stops=skipped,
        )
        doc = self.circuit.to_dict()
        doc["tensors"] = "circuit.safetensors"
        return {
            "info": info,
            "nodes": [self._node(n, labels[n]) for n in names],
            "edges": [
                [
                    index[self.src[k]],
                    index[self.dst_node[k]],
                    self.slot[k],
                    self.scores[k],
                    self.flows[k],
                    self.ranks[k],
                    self.inclusion[k],
                ]
                for k in range(len(self.idx))
            ],
            "n_boot": self.n_boot,
            "stops": stops,
            "default_stop": default,
            "box": [w, 38.0],
            "max_edges": MAX_DRAWN_EDGES,
            "kinds": {k: v for k, v in KIND_STYLES.items()},
            "colors": {"helps": HELPS, "hurts": HURTS, "neutral": NEUTRAL},
            "supernodes": check_supernodes(self.circuit.metadata.get("supernodes", []), self.graph),
            "circuit": doc,
        }

    def _place(self, stop: dict, index: dict[str, int], w: float) -> None:
        """Lay out one stop: node centres, edge paths and widths, axis labels (in place)."""
        edges = sorted(stop["edges"], key=lambda k: abs(self.scores[k]) if math.isfinite(self.scores[k]) else 0.0)
        nodes = self._nodes_of(edges)
        triples = [(self.src[k], self.dst_node[k], self.slot[k]) for k in edges]
        lay = layout(self.graph, nodes, triples, w, order=self.influence, tokens=self.tokens)
        top = max((abs(self.scores[k]) for k in edges if math.isfinite(self.scores[k])), default=0.0)
        stop["nodes"] = [[index[n], round(x, 1), round(y, 1)] for n, (x, y) in lay.centres.items()]
        stop["edges"] = [
            [k, lay.d(i), round(1.0 + 4.0 * min(abs(self.scores[k]) / top, 1.0), 2) if top > 0 else 1.5]
            for i, k in enumerate(edges)
        ]
        stop["rows"] = [[t, round(x, 1), round(y, 1)] for t, x, y in lay.row_labels]
        stop["tokens"] = [[t, p, round(x, 1), round(y, 1)] for t, p, x, y in lay.tokens]
        stop["bounds"] = [round(v, 1) for v in lay.bounds]

    def _labels(self, n: str) -> tuple[str, str]:
        """A box's two lines: its name (without the position, which its column shows) and a short
        description (a feature's top tokens, the token of an ``input@p``, the metric of logits)."""
        node = parse_node(n)
        kind = node_kind(n)
        name = node.base if node.position is not None else n
        info = _dict(self.node_info.get(n))
        if kind == "feature" and info.get("top_tokens"):
            distinct = list(dict.fromkeys(str(t.get("token", "")) for t in info["top_tokens"]))
            sub = " ".join(repr(tok) for tok in distinct[:2])
        elif kind == "input":  # (the row is labelled "embeddings"; a position shows its token)
            p = node.position
            sub = repr(self.tokens[p]) if p is not None and self.tokens and p < len(self.tokens) else ""
        elif kind == "head":
            sub = "" if self.graph.split_qkv else "head"
        else:
            sub = {"sae_error": "SAE error", "sae_rest": "other features", "mlp": "MLP"}.get(kind, "")
        return _short(name), _short(sub)

    def _node(self, n: str, labels: tuple[str, str]) -> dict:
        node = parse_node(n)
        kind = node_kind(n)
        rec: dict = {
            "id": n,
            "kind": kind,
            "label": labels[0],
            "sub": labels[1],
            "layer": node.layer,
            "influence": self.influence.get(n, 0.0),
            "qkv": kind == "head" and self.graph.split_qkv,
        }
        if node.position is not None:
            rec["position"] = node.position
            if self.tokens and node.position < len(self.tokens):
                rec["token"] = self.tokens[node.position]
        info = self.node_info.get(n)
        if isinstance(info, dict):
            rec["info"] = _node_info(info)
        return rec


def _node_info(info: dict) -> dict:
    """The parts of a ``node_info`` entry the panel shows (JSON-safe)."""
    out: dict = {}
    for key in ("site", "description"):
        if info.get(key) is not None:
            out[key] = str(info[key])
    if info.get("feature") is not None:
        out["feature"] = int(info["feature"])
    for key in ("frequency", "max_activation"):
        if info.get(key) is not None:
            out[key] = float(info[key])
    if info.get("top_tokens") is not None:
        tops = []
        for t in info["top_tokens"]:
            t = dict(t)
            pieces = t.get("context_tokens")
            at = t.get("context_index")
            if not isinstance(pieces, list) or not isinstance(at, int):  # an older label: split the text
                text = str(t.get("context", t.get("token", "")))
                m = re.search(r"\[([^\]]*)\]", text)
                pieces, at = ([text[: m.start()], m.group(1), text[m.end() :]], 1) if m else ([text], 0)
            tops.append(
                {
                    "tokens": [str(p) for p in pieces],
                    "at": int(at),
                    "activation": float(t.get("activation", math.nan)),
                    "example": t.get("example"),
                    "position": t.get("position"),
                }
            )
        out["topTokens"] = tops
    return out


def _header_html(info: dict) -> str:
    parts = []
    for key in ("model", "task", "metric", "method", "selection"):
        if info.get(key):
            parts.append(f"<span><b>{key}</b> {html.escape(str(info[key]))}</span>")
    if info.get("faithfulness") is not None:
        parts.append(f"<span><b>faithfulness</b> {html.escape(_fmt(info['faithfulness']))}</span>")
    parts.append(
        f"<span><b>circuit</b> {info['n_nodes']:,} nodes, {info['n_edges']:,} of {info['n_edges_total']:,} edges</span>"
    )
    return "\n".join(parts)


def _render(title: str, payload: dict) -> str:
    values = {
        "TITLE": html.escape(title),
        "META": _header_html(payload["info"]),
        "DATA": _inline_json(payload),
        "SCRIPT": _SCRIPT,
        "STYLE": _STYLE,
    }
    # one pass, so that text inside the inserted values is never itself substituted
    return re.sub(r"@@([A-Z_]+)@@", lambda mt: values[mt.group(1)], _TEMPLATE)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="circuitgraph">
<title>@@TITLE@@</title>
<style>
@@STYLE@@
</style>
</head>
<body>
<div id="cg-header">
  <h1>@@TITLE@@</h1>
  <div id="cg-meta">@@META@@</div>
  <div id="cg-controls">
    <label for="cg-slider">pruning</label>
    <input id="cg-slider" type="range" min="0" max="0" step="1" value="0" aria-label="influence kept">
    <span id="cg-stop"></span>
    <span id="cg-shown"></span>
    <input id="cg-search" type="search" placeholder="find a node (e.g. a1.h3)" aria-label="search nodes">
    <span id="cg-found"></span>
    <button id="cg-fit" type="button">fit</button>
    <input id="cg-group-name" type="text" placeholder="group name" aria-label="group name">
    <button id="cg-group" type="button" disabled>group</button>
    <button id="cg-save" type="button">save circuit.json</button>
  </div>
</div>
<div id="cg-main">
  <div id="cg-canvas"><svg id="cg-svg" xmlns="http://www.w3.org/2000/svg"><g id="cg-view"><g id="cg-edges"></g><g id="cg-nodes"></g><g id="cg-axis"></g></g></svg></div>
  <div id="cg-panel"></div>
</div>
<div id="cg-status" data-drawn="0"></div>
<script>
var DATA = @@DATA@@;
</script>
<script>
@@SCRIPT@@
</script>
</body>
</html>
"""

_STYLE = """
html, body { margin: 0; height: 100%; font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; }
body { display: flex; flex-direction: column; }
#cg-header { padding: 8px 14px 6px; border-bottom: 1px solid #e2e2e2; background: #fafafa; }
#cg-header h1 { font-size: 18px; margin: 0 0 4px; }
#cg-meta span { margin-right: 16px; font-size: 13px; white-space: nowrap; }
#cg-meta b { color: #666; font-weight: 600; margin-right: 3px; }
#cg-controls { margin-top: 6px; font-size: 13px; display: flex; align-items: center; gap: 8px; flex-wrap: wrap; }
#cg-controls input[type=range] { width: 200px; }
#cg-controls input[type=search] { width: 190px; }
#cg-controls input[type=text] { width: 110px; }
#cg-stop { min-width: 140px; font-weight: 600; }
#cg-shown, #cg-found { color: #555; }
#cg-main { display: flex; flex: 1 1 auto; min-height: 200px; }
#cg-canvas { position: relative; flex: 1 1 auto; overflow: hidden; background: #fff; cursor: grab; }
#cg-svg { width: 100%; height: 100%; display: block; user-select: none; }
#cg-panel { flex: none; width: 330px; border-left: 1px solid #e2e2e2; background: #fafafa; padding: 10px 12px; font-size: 12px; overflow-y: auto; }
#cg-panel h2 { font-size: 15px; margin: 0 0 4px; font-family: monospace; }
#cg-panel h3 { font-size: 12px; margin: 12px 0 4px; color: #444; }
#cg-panel .row { display: flex; align-items: center; margin: 3px 0; }
#cg-panel .sw { display: inline-block; width: 16px; height: 12px; border: 1px solid #555; border-radius: 2px; margin-right: 7px; flex: none; }
#cg-panel .ln { display: inline-block; width: 18px; height: 3px; margin-right: 7px; flex: none; }
#cg-panel .note { color: #666; }
#cg-panel table { border-collapse: collapse; width: 100%; }
#cg-panel td { padding: 1px 4px 1px 0; vertical-align: top; font-family: monospace; font-size: 11px; }
#cg-panel tr.edge-row { cursor: pointer; }
#cg-panel tr.edge-row:hover { background: #eef3fb; }
#cg-panel tr.hidden-edge { color: #999; }
#cg-panel .ctx { font-family: monospace; font-size: 11px; margin: 2px 0; white-space: pre-wrap; }
#cg-panel .ctx mark { background: #ffd43b; padding: 0 1px; }
#cg-panel .ctx .after { color: #999; }
#cg-panel button { font-size: 11px; }
#cg-status { display: none; }
svg text { pointer-events: none; }
.node rect.box { stroke: #4a4a4a; stroke-width: 1; }
.node.faded rect.box { fill: #f4f4f4 !important; stroke: #c8c8c8; }
.node.faded text { fill: #a0a0a0; }
.node { cursor: pointer; }
.node text.name { font: 12px monospace; fill: #1a1a1a; }
.node text.sub, .node text.port { font: 11px monospace; fill: #444; }
.node.selected rect.box { stroke: #000; stroke-width: 2.5; }
.node.picked rect.box { stroke-dasharray: 4 2; stroke: #000; stroke-width: 2; }
.node.match rect.box { stroke: #d6336c; stroke-width: 3; }
.node rect.group { fill: none; stroke-width: 3; }
.edge { fill: none; stroke-linecap: round; opacity: 0.8; }
svg.dim .edge { opacity: 0.07; }
svg.dim .node { opacity: 0.25; }
svg.dim .edge.hl { opacity: 0.95; }
svg.dim .node.hl { opacity: 1; }
text.axis { font: 12px sans-serif; fill: #666; }
text.tok { font: 12px monospace; fill: #333; }
text.pos { font: 10px monospace; fill: #999; }
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var info = DATA.info, nodes = DATA.nodes, edges = DATA.edges, stops = DATA.stops;
  var W = DATA.box[0], H = DATA.box[1];
  var svg = document.getElementById("cg-svg"), view = document.getElementById("cg-view");
  var gEdges = document.getElementById("cg-edges"), gNodes = document.getElementById("cg-nodes");
  var gAxis = document.getElementById("cg-axis"), panel = document.getElementById("cg-panel");
  var status = document.getElementById("cg-status"), slider = document.getElementById("cg-slider");
  var search = document.getElementById("cg-search");
  var groups = (DATA.supernodes || []).map(function (g) { return {name: g.name, nodes: g.nodes.slice()}; });
  var PALETTE = ["#7048e8", "#2f9e44", "#e03131", "#1971c2", "#f08c00", "#0c8599", "#c2255c", "#5c940d"];
  var state = {stop: DATA.default_stop, selected: null, picked: {}, shownNodes: {}, shownEdges: {}, tf: {x: 0, y: 0, k: 1}};
  var byId = {}; nodes.forEach(function (n, i) { byId[n.id] = i; });
  var inEdges = nodes.map(function () { return []; }), outEdges = nodes.map(function () { return []; });
  edges.forEach(function (e, k) { outEdges[e[0]].push(k); inEdges[e[1]].push(k); });
  var elNode = {}, elEdge = {};

  function el(tag, attrs, parent) {
    var x = document.createElementNS(NS, tag);
    for (var a in attrs) { x.setAttribute(a, attrs[a]); }
    if (parent) { parent.appendChild(x); }
    return x;
  }
  function esc(s) { return String(s).replace(/[&<>"']/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]; }); }
  function fmt(x) { return isFinite(x) ? Number(x).toPrecision(4).replace(/\.?0+($|e)/, "$1") : String(x); }
  function pct(x) { return (100 * x).toFixed(x < 0.001 ? 2 : 1) + "%"; }
  function metricName() { return info.metric || "the metric"; }
  function effect(score) {
    if (!score || !isFinite(score)) { return {word: "no effect", color: DATA.colors.neutral, text: "ablating it leaves " + metricName() + " unchanged"}; }
    var helps = info.lower_is_better ? score > 0 : score < 0;
    return {word: helps ? "helps" : "hurts", color: helps ? DATA.colors.helps : DATA.colors.hurts,
            text: "ablating it " + (score < 0 ? "lowers " : "raises ") + metricName() + " by " + fmt(Math.abs(score))};
  }
  var QKV = {q: "query", k: "key", v: "value"};
  function edgeTitle(k) {
    var e = edges[k], f = effect(e[3]);
    return nodes[e[0]].id + " \u2192 " + nodes[e[1]].id + (e[2] ? " (" + QKV[e[2]] + " input)" : "") + "\n" +
      f.word + " the task: " + f.text + "\n" +
      "raw score " + fmt(e[3]) + " (" + metricName() + " with the edge ablated \u2212 clean)\n" +
      "rank " + e[5] + " of " + edges.length + " edges by |score|; carries " + pct(e[4]) + " of the attribution to the logits" +
      (e[6] === null || e[6] === undefined ? "" : "\nin " + pct(e[6]) + " of " + DATA.n_boot + " bootstrap circuits");
  }
  function groupOf(i) {
    for (var g = 0; g < groups.length; g++) { if (groups[g].nodes.indexOf(nodes[i].id) >= 0) { return g; } }
    return -1;
  }

  // ---------------------------------------------------------------- drawing one stop
  function fitText(t, width) {
    if (t.getComputedTextLength && t.getComputedTextLength() > width) {
      t.setAttribute("textLength", String(width)); t.setAttribute("lengthAdjust", "spacingAndGlyphs");
    }
  }
  function draw() {
    var s = stops[state.stop];
    gEdges.textContent = ""; gNodes.textContent = ""; gAxis.textContent = "";
    elNode = {}; elEdge = {}; state.shownNodes = {}; state.shownEdges = {};
    s.edges.forEach(function (r) {
      var k = r[0], e = edges[k], f = effect(e[3]);
      var p = el("path", {d: r[1], "class": "edge", stroke: f.color, "stroke-width": r[2], "data-edge": k}, gEdges);
      el("title", {}, p).textContent = edgeTitle(k);
      elEdge[k] = p; state.shownEdges[k] = true;
    });
    var touched = {};
    s.edges.forEach(function (r) { touched[edges[r[0]][0]] = touched[edges[r[0]][1]] = true; });
    s.nodes.forEach(function (r) {
      var i = r[0], n = nodes[i], x = r[1], y = r[2];
      var kind = DATA.kinds[n.kind] || {color: "#ddd", label: n.kind};
      var g = el("g", {"class": "node" + (touched[i] || n.kind === "input" || n.kind === "logits" ? "" : " faded"), "data-node": n.id,
                       transform: "translate(" + x + "," + y + ")"}, gNodes);
      el("rect", {"class": "box", x: -W / 2, y: -H / 2, width: W, height: H, rx: 4, fill: kind.color}, g);
      var gi = groupOf(i);
      if (gi >= 0) { el("rect", {"class": "group", x: -W / 2 - 3, y: -H / 2 - 3, width: W + 6, height: H + 6, rx: 6, stroke: PALETTE[gi % PALETTE.length]}, g); }
      var t1 = el("text", {"class": "name", x: 0, y: n.sub || n.qkv ? -3 : 4, "text-anchor": "middle"}, g);
      t1.textContent = n.label;
      var tips = [n.id + " (" + kind.label + (n.layer >= 0 ? ", layer " + n.layer : "") + ")",
                  "carries " + pct(n.influence) + " of the attribution to the logits"];
      el("title", {}, g).textContent = tips.join("\n");
      if (n.qkv) {
        ["q", "k", "v"].forEach(function (c, j) {
          var tp = el("text", {"class": "port", x: (j - 1) * W / 4, y: H / 2 - 5, "text-anchor": "middle"}, g);
          tp.textContent = c;
        });
      } else if (n.sub) {
        var t2 = el("text", {"class": "sub", x: 0, y: 12, "text-anchor": "middle"}, g);
        t2.textContent = n.sub;
      }
      elNode[i] = g; state.shownNodes[i] = true;
      g.addEventListener("mouseenter", function () { highlight(i); });
      g.addEventListener("mouseleave", function () { highlight(null); });
      g.addEventListener("click", function (ev) { ev.stopPropagation(); if (ev.shiftKey) { pick(i); } else { select(i); } });
    });
    Array.prototype.forEach.call(gNodes.querySelectorAll("text.name, text.sub"), function (t) { fitText(t, W - 8); });
    s.rows.forEach(function (r) {
      el("text", {"class": "axis", x: r[1], y: r[2] + 4, "text-anchor": "end"}, gAxis).textContent = r[0];
    });
    s.tokens.forEach(function (r) {
      el("text", {"class": "tok", x: r[2], y: r[3], "text-anchor": "middle"}, gAxis).textContent = r[0];
      el("text", {"class": "pos", x: r[2], y: r[3] + 14, "text-anchor": "middle"}, gAxis).textContent = r[1];
    });
    slider.value = String(state.stop);
    document.getElementById("cg-stop").textContent = s.label;
    var nShown = s.nodes.length, eShown = s.edges.length;
    document.getElementById("cg-shown").textContent = "showing " + nShown + " nodes, " + eShown + " of " + edges.length + " edges";
    if (state.selected !== null) { renderPanel(state.selected); }
    markPicked(); runSearch(false);
    report();
  }
  function report(drawn) {
    var s = stops[state.stop];
    status.setAttribute("data-stop", String(state.stop));
    status.setAttribute("data-rendered-nodes", String(gNodes.querySelectorAll("g.node").length));
    status.setAttribute("data-rendered-edges", String(gEdges.querySelectorAll("path.edge").length));
    status.setAttribute("data-node-threshold", s.node_threshold === null ? "" : String(s.node_threshold));
    if (drawn) { status.setAttribute("data-drawn", "1"); }
  }

  // ---------------------------------------------------------------- view: pan, zoom, fit
  function applyTf() { view.setAttribute("transform", "translate(" + state.tf.x + "," + state.tf.y + ") scale(" + state.tf.k + ")"); }
  function fitTo(ids) {  // the view around the given nodes (those drawn at this stop)
    var want = {}; ids.forEach(function (id) { want[byId[id]] = true; });
    var rs = stops[state.stop].nodes.filter(function (r) { return want[r[0]]; });
    if (!rs.length) { return fit(); }
    var xs = rs.map(function (r) { return r[1]; }), ys = rs.map(function (r) { return r[2]; });
    fit([Math.min.apply(null, xs) - W, Math.min.apply(null, ys) - H, Math.max.apply(null, xs) + W, Math.max.apply(null, ys) + 2 * H]);
  }
  function fit(bounds) {
    var b = Array.isArray(bounds) ? bounds : stops[state.stop].bounds, r = svg.getBoundingClientRect(), pad = 20;
    var bw = Math.max(b[2] - b[0], 1), bh = Math.max(b[3] - b[1], 1);
    var k = Math.min((r.width - 2 * pad) / bw, (r.height - 2 * pad) / bh, 1.6);
    state.tf = {k: k, x: (r.width - bw * k) / 2 - b[0] * k, y: (r.height - bh * k) / 2 - b[1] * k};
    applyTf();
  }
  svg.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    var r = svg.getBoundingClientRect(), mx = ev.clientX - r.left, my = ev.clientY - r.top;
    var f = Math.exp(-ev.deltaY * 0.0015), k = Math.min(Math.max(state.tf.k * f, 0.05), 8);
    state.tf.x = mx - (mx - state.tf.x) * k / state.tf.k; state.tf.y = my - (my - state.tf.y) * k / state.tf.k; state.tf.k = k;
    applyTf();
  }, {passive: false});
  var drag = null;
  svg.addEventListener("mousedown", function (ev) { drag = {x: ev.clientX, y: ev.clientY, tx: state.tf.x, ty: state.tf.y}; });
  window.addEventListener("mousemove", function (ev) {
    if (!drag) { return; }
    state.tf.x = drag.tx + ev.clientX - drag.x; state.tf.y = drag.ty + ev.clientY - drag.y; applyTf();
  });
  window.addEventListener("mouseup", function () { drag = null; });
  svg.addEventListener("click", function (ev) { if (ev.target === svg) { select(null); } });
  document.getElementById("cg-fit").addEventListener("click", function () { fit(); });

  // ---------------------------------------------------------------- hover, select, pick
  function highlight(i) {
    Array.prototype.forEach.call(svg.querySelectorAll(".hl"), function (x) { x.classList.remove("hl"); });
    if (i === null) { svg.classList.remove("dim"); return; }
    svg.classList.add("dim");
    if (elNode[i]) { elNode[i].classList.add("hl"); }
    inEdges[i].concat(outEdges[i]).forEach(function (k) {
      if (!elEdge[k]) { return; }
      elEdge[k].classList.add("hl");
      var other = edges[k][0] === i ? edges[k][1] : edges[k][0];
      if (elNode[other]) { elNode[other].classList.add("hl"); }
    });
  }
  function select(i) {
    if (state.selected !== null && elNode[state.selected]) { elNode[state.selected].classList.remove("selected"); }
    state.selected = i;
    if (i !== null && elNode[i]) { elNode[i].classList.add("selected"); }
    if (i === null) { legend(); } else { renderPanel(i); }
  }
  function pick(i) {
    if (state.picked[i]) { delete state.picked[i]; } else { state.picked[i] = true; }
    markPicked();
  }
  function markPicked() {
    Object.keys(elNode).forEach(function (i) { elNode[i].classList.toggle("picked", !!state.picked[i]); });
    document.getElementById("cg-group").disabled = Object.keys(state.picked).length === 0;
  }

  // ---------------------------------------------------------------- the panel
  function edgeRows(list, other) {
    var sorted = list.slice().sort(function (a, b) { return edges[a][5] - edges[b][5]; });
    if (!sorted.length) { return '<div class="note">none</div>'; }
    return "<table>" + sorted.map(function (k) {
      var e = edges[k], f = effect(e[3]), o = nodes[e[other]];
      return '<tr class="edge-row' + (state.shownEdges[k] ? "" : " hidden-edge") + '" data-edge="' + k + '" data-node="' + esc(o.id) + '">' +
        "<td>" + e[5] + "</td><td>" + esc(o.id) + (e[2] ? "." + e[2] : "") + "</td>" +
        '<td style="color:' + f.color + '">' + f.word + "</td><td>" + esc(fmt(e[3])) + "</td><td>" + pct(e[4]) + "</td></tr>";
    }).join("") + "</table>";
  }
  function contexts(top) {
    if (!top || !top.length) { return '<div class="note">not active on the clean prompts</div>'; }
    return top.map(function (t) {
      var html = t.tokens.map(function (p, j) {
        var s = esc(p);
        return j === t.at ? "<mark>" + s + "</mark>" : j > t.at ? '<span class="after">' + s + "</span>" : s;
      }).join(t.tokens.length && t.tokens.every(function (p) { return p.length && p[0] !== " "; }) ? " " : "");
      return '<div class="ctx"><b>' + esc(fmt(t.activation)) + "</b> " + html +
        (t.example !== null && t.example !== undefined ? ' <span class="note">(ex ' + t.example + ", pos " + t.position + ")</span>" : "") + "</div>";
    }).join("");
  }
  function renderPanel(i) {
    var n = nodes[i], kind = DATA.kinds[n.kind] || {label: n.kind}, x = n.info || {};
    var h = "<h2>" + esc(n.id) + "</h2>";
    h += '<div class="note">' + esc(kind.label) + (n.layer >= 0 ? ", layer " + n.layer : "") +
      (n.position !== undefined ? ", position " + n.position + (n.token !== undefined ? " (" + esc(JSON.stringify(n.token)) + ")" : "") : "") + "</div>";
    if (x.site) { h += '<div class="row">SAE ' + esc(x.site) + (x.feature !== undefined ? ", feature " + x.feature : "") + "</div>"; }
    if (x.description) { h += '<div class="row note">' + esc(x.description) + "</div>"; }
    h += '<div class="row">influence: carries ' + pct(n.influence) + " of the attribution to the logits</div>";
    var ins = inEdges[i], outs = outEdges[i];
    var absIn = ins.reduce(function (a, k) { return a + Math.abs(edges[k][3]); }, 0);
    var absOut = outs.reduce(function (a, k) { return a + Math.abs(edges[k][3]); }, 0);
    h += '<div class="row">score: \u03a3|score| ' + fmt(absIn) + " in, " + fmt(absOut) + " out</div>";
    if (!state.shownNodes[i]) { h += '<div class="row note">hidden at this pruning threshold</div>'; }
    var gi = groupOf(i);
    if (gi >= 0) { h += '<div class="row">in group <b>&nbsp;' + esc(groups[gi].name) + "</b></div>"; }
    if (x.topTokens !== undefined) {
      h += "<h3>top-activating contexts" + (x.frequency !== undefined ? " (active on " + pct(x.frequency) + " of tokens)" : "") + "</h3>" + contexts(x.topTokens);
    }
    h += '<h3 id="cg-in">incoming edges (' + ins.length + ") by |score|</h3>" + edgeRows(ins, 0);
    h += '<h3 id="cg-out">outgoing edges (' + outs.length + ") by |score|</h3>" + edgeRows(outs, 1);
    h += '<p class="note">columns: rank, node, effect on the task, raw score, share of the attribution to the logits. Grey: hidden at this threshold.</p>';
    h += '<p><button id="cg-back" type="button">legend</button></p>';
    panel.innerHTML = h;
    panel.setAttribute("data-node", n.id);
    Array.prototype.forEach.call(panel.querySelectorAll("tr.edge-row"), function (tr) {
      tr.addEventListener("click", function () { var j = byId[tr.getAttribute("data-node")]; select(j); centreOn(j); });
    });
    document.getElementById("cg-back").addEventListener("click", function () { select(null); });
  }
  function legend() {
    var kinds = {}; stops[state.stop].nodes.forEach(function (r) { kinds[nodes[r[0]].kind] = true; });
    var h = "<h2>legend</h2>";
    Object.keys(DATA.kinds).forEach(function (k) {
      if (kinds[k]) { h += '<div class="row"><span class="sw" style="background:' + DATA.kinds[k].color + '"></span>' + esc(DATA.kinds[k].label) + "</div>"; }
    });
    var m = esc(metricName()), dir = info.lower_is_better ? "lower is better" : "higher is better";
    h += '<div class="row"><span class="ln" style="background:' + DATA.colors.helps + '"></span>helps the task</div>';
    h += '<div class="row"><span class="ln" style="background:' + DATA.colors.hurts + '"></span>hurts the task</div>';
    h += '<div class="row note">metric ' + m + " (" + dir + (info.metric_known ? "" : "; assumed, the metric is not a built-in one") +
      "): an edge helps when ablating it " + (info.lower_is_better ? "raises" : "lowers") + " " + m + ". The same colours under every metric; the raw score is in each edge's tooltip.</div>";
    h += '<div class="row note">width \u221d |score|; q / k / v: the ports of a head\'s query, key and value inputs</div>';
    var st = stops[state.stop];
    h += '<div class="row note">' + (st.node_threshold === null
      ? "showing the whole circuit; move the slider left to keep only the nodes and edges that carry most of the attribution to the logits."
      : "pruning keeps the fewest nodes carrying " + pct(st.node_threshold) + " of the attribution to the logits, then the fewest of their edges carrying " +
        pct(st.edge_threshold) + " (circuit-tracer's rule).") + "</div>";
    if ((info.skipped_stops || []).length) { h += '<div class="row note">not drawn (over ' + DATA.max_edges + " edges): " + esc(info.skipped_stops.join(", ")) + "</div>"; }
    h += "<h3>groups (supernodes)</h3>";
    h += groups.length ? groups.map(function (g, gi) {
      return '<div class="row"><span class="sw" style="background:' + PALETTE[gi % PALETTE.length] + '"></span><b>' + esc(g.name) + "</b>&nbsp;(" +
        g.nodes.length + ")&nbsp;<button type=\"button\" data-ungroup=\"" + gi + "\">remove</button></div>" +
        '<div class="row note">' + esc(g.nodes.join(", ")) + "</div>";
    }).join("") : '<div class="note">none</div>';
    h += '<div class="row note">shift-click nodes, name the group and press "group"; "save circuit.json" downloads the circuit file with the groups in metadata.supernodes (Circuit.load reads them).</div>';
    panel.innerHTML = h;
    panel.removeAttribute("data-node");
    Array.prototype.forEach.call(panel.querySelectorAll("button[data-ungroup]"), function (b) {
      b.addEventListener("click", function () { groups.splice(+b.getAttribute("data-ungroup"), 1); draw(); legend(); });
    });
  }
  function centreOn(i) {
    var r = stops[state.stop].nodes.filter(function (q) { return q[0] === i; })[0];
    if (!r) { return; }
    var b = svg.getBoundingClientRect();
    state.tf.x = b.width / 2 - r[1] * state.tf.k; state.tf.y = b.height / 2 - r[2] * state.tf.k; applyTf();
  }

  // ---------------------------------------------------------------- search
  function runSearch(jump) {
    var q = search.value.trim().toLowerCase(), hits = [];
    Object.keys(elNode).forEach(function (i) {
      var hit = q !== "" && nodes[i].id.toLowerCase().indexOf(q) >= 0;
      elNode[i].classList.toggle("match", hit);
      if (hit) { hits.push(+i); }
    });
    var all = q === "" ? 0 : nodes.filter(function (n) { return n.id.toLowerCase().indexOf(q) >= 0; }).length;
    document.getElementById("cg-found").textContent = q === "" ? "" : hits.length + " shown" + (all > hits.length ? " (" + (all - hits.length) + " hidden at this threshold)" : "");
    if (jump && hits.length) { select(hits[0]); centreOn(hits[0]); }
    return hits;
  }
  search.addEventListener("input", function () { runSearch(false); });
  search.addEventListener("keydown", function (ev) { if (ev.key === "Enter") { runSearch(true); } });

  // ---------------------------------------------------------------- groups and saving
  function makeGroup(name, ids) {
    name = (name || "").trim() || "group " + (groups.length + 1);
    if (groups.some(function (g) { return g.name === name; })) { name = name + " (" + (groups.length + 1) + ")"; }
    groups.forEach(function (g) { g.nodes = g.nodes.filter(function (n) { return ids.indexOf(n) < 0; }); });
    groups = groups.filter(function (g) { return g.nodes.length; });
    groups.push({name: name, nodes: ids});
    state.picked = {}; draw(); if (state.selected === null) { legend(); }
  }
  document.getElementById("cg-group").addEventListener("click", function () {
    var ids = Object.keys(state.picked).map(function (i) { return nodes[i].id; });
    if (ids.length) { makeGroup(document.getElementById("cg-group-name").value, ids); document.getElementById("cg-group-name").value = ""; }
  });
  function circuitJson() {
    var doc = JSON.parse(JSON.stringify(DATA.circuit));
    doc.metadata = doc.metadata || {};
    doc.metadata.supernodes = groups.map(function (g) { return {name: g.name, nodes: g.nodes.slice()}; });
    return JSON.stringify(doc, null, 1);
  }
  document.getElementById("cg-save").addEventListener("click", function () {
    var a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([circuitJson()], {type: "application/json"}));
    a.download = "circuit.json"; document.body.appendChild(a); a.click(); a.remove();
  });

  // ---------------------------------------------------------------- slider
  slider.max = String(stops.length - 1);
  slider.addEventListener("input", function () { state.stop = +slider.value; draw(); if (state.selected === null) { legend(); } });

  window.circuitgraph = {
    info: info, nodes: nodes, edges: edges, stops: stops,
    setStop: function (i) { state.stop = i; draw(); if (state.selected === null) { legend(); } },
    stop: function () { return state.stop; },
    select: function (id) { select(id === null ? null : byId[id]); },
    pick: function (id) { pick(byId[id]); },
    group: makeGroup,
    groups: function () { return JSON.parse(JSON.stringify(groups)); },
    search: function (q) { search.value = q; return runSearch(true).map(function (i) { return nodes[i].id; }); },
    circuitJson: circuitJson, fit: fit, fitTo: fitTo
  };
  draw(); legend(); fit(); report(true);
})();
"""
