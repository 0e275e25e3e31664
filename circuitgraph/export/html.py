"""A self-contained, offline, interactive HTML view of a circuit (pyvis / vis-network).

    write_html(circuit, "ioi.html")                       # a Circuit
    write_html(graph, "scores.html", mask=top_n(graph, 200))   # a Graph with scores and a mask

Layout: x is the residual-stream position (``input`` at the left; each layer's heads, then its
MLP; ``logits`` at the right); heads are stacked vertically within their layer. Positions are
fixed and physics is off, so the picture is the same every time. Nodes are coloured by kind,
edges by the sign of their score (blue positive, red negative) with width ∝ |score|; an edge into
a head's query, key or value input is labelled ``q``, ``k`` or ``v``. Hovering shows names, scores
and ranks (by |score| within the circuit). A slider and a number box hide edges below an
|score| threshold.

The page is one file with no network access: vis-network's JavaScript and CSS (the copy shipped
inside the pyvis package, or ``circuitgraph/export/vendor/`` if present) are inlined into it. For
tests and scripts the page exposes ``window.circuitgraph`` (node/edge counts, the vis DataSets and
network) and mirrors the counts into ``<div id="cg-status" data-...>`` once vis has drawn.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from circuitgraph.atomic import atomic_write
from circuitgraph.circuit.circuit import Circuit
from circuitgraph.graph import Graph
from circuitgraph.graph.names import dst_node, node_kind
from circuitgraph.hypothesis.render import vis_assets  # shared with the hypothesis page (the lower layer)

__all__ = ["write_html", "KIND_STYLES", "vis_assets"]

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
POSITIVE, NEGATIVE, ZERO = "#1f6fd1", "#d62728", "#9e9e9e"
QKV_NAMES = {"q": "query", "k": "key", "v": "value"}
X_STEP, X_MIN, Y_STEP, MAX_WIDTH = 190, 120, 72, 1400
MAX_SLOTS = 48  # columns with more nodes than this are laid out with their shown nodes only,
WRAP_ROWS = 24  # in sub-columns of at most this many rows
LABEL_TOKENS = 2  # distinct top-activating tokens shown under a feature node's name


def _inline(text: str, tag: str) -> str:
    # A literal "</script" (or "</style") inside the inlined text would end the element early, and
    # "<!--" inside a script can switch the HTML parser into its escaped state; neutralise both
    # (in JavaScript strings "<\/" and "<\!" mean the same as "</" and "<!").
    text = re.sub(f"</(?={tag})", r"<\\/", text, flags=re.IGNORECASE)
    return text.replace("<!--", "<\\!--") if tag == "script" else text


# ------------------------------------------------------------------------------------ helpers
def _style(kind: str) -> dict:
    return KIND_STYLES.get(kind, DEFAULT_STYLE)


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.4g}"


def _finite_abs(x: float) -> float:
    return math.inf if math.isnan(x) else abs(x)


def _rank(values: list[float]) -> list[int]:
    """1-based rank of each value by |value|, largest first (ties keep their order)."""
    order = sorted(range(len(values)), key=lambda k: -_finite_abs(values[k]))
    rank = [0] * len(values)
    for r, k in enumerate(order, 1):
        rank[k] = r
    return rank


def _node_info(info: dict, lines: list[str]) -> tuple[str | None, dict]:
    """For one ``node_info`` entry (e.g. from :func:`circuitgraph.sae.labels.feature_labels`):
    the two-line label (``None``: the node's name), tooltip lines appended to ``lines``, and the
    node's data attributes (``site``, ``feature``, ``topTokens``, ...) for the page's JSON."""
    data: dict = {}
    site, feature = info.get("site"), info.get("feature")
    if site is not None:
        data["site"] = str(site)
    if feature is not None:
        data["feature"] = int(feature)
    if site is not None or feature is not None:
        lines.append(
            "SAE " + (str(site) if site is not None else "") + (f", feature {feature}" if feature is not None else "")
        )
    if info.get("description"):
        data["description"] = str(info["description"])
        lines.append(str(info["description"]))
    label = None
    tops = info.get("top_tokens")
    if tops is not None:
        tops = [dict(t) for t in tops]
        data["topTokens"] = tops
        if "frequency" in info:
            data["frequency"] = float(info["frequency"])
            lines.append(f"active on {100 * float(info['frequency']):.3g}% of the clean prompts' tokens")
        if tops:
            lines.append("top activating tokens (activation, example:position, context):")
            for t in tops:
                where = f"{t.get('example', '?')}:{t.get('position', '?')}"
                lines.append(
                    f"  {_fmt(float(t.get('activation', math.nan))):>8}  {where:>7}  {t.get('context', t.get('token', ''))}"
                )
            distinct = list(dict.fromkeys(str(t.get("token", "")) for t in tops))  # a token once
            label = " ".join(repr(tok) for tok in distinct[:LABEL_TOKENS])
        else:
            lines.append("not active on the clean prompts")
    return label, data


def _logits_nodes(graph: Graph) -> list[str]:
    """``["logits"]``, or ``logits@p`` for each position of a position-resolved graph."""
    return [dst_node(graph.dst_names[j]) for j in graph.logits_columns.tolist()]


def _layout(graph: Graph, shown: list[str]) -> dict[str, tuple[int, int]]:
    """Fixed positions: one column per residual-stream time (input, then each layer's heads, SAE
    sites, its MLP, ..., logits), rows centred within each column. A column keeps a slot for every
    node of the model, so a head sits at the same height in every circuit, unless it is long (an
    MLP split into neurons, an SAE site's features): then only the shown nodes get slots, wrapped
    into side-by-side sub-columns of at most ``WRAP_ROWS``, so the picture keeps a screen's shape."""
    logits = _logits_nodes(graph)
    times = graph.src_time.tolist() + [int(graph.dst_time.max())] * len(logits)
    names = list(graph.src_names) + logits
    keep = set(shown)
    columns: dict[int, list[str]] = {}
    for n, t in zip(names, times):
        columns.setdefault(t, []).append(n)
    columns = {t: [n for n in col if n in keep] if len(col) > MAX_SLOTS else col for t, col in columns.items()}
    widths = {t: -(-len(col) // WRAP_ROWS) if len(col) > MAX_SLOTS else 1 for t, col in columns.items()}
    rows = {t: -(-len(col) // widths[t]) for t, col in columns.items()}
    # Column spacing: X_STEP while the picture stays within a screen's width; for deep models,
    # narrower (down to X_MIN, where labels still clear each other), aiming at a picture about 1.6
    # times as wide as it is tall.
    gaps = max(sum(widths.values()) - 1, 1)
    height = max(rows.values()) * Y_STEP
    x_step = X_STEP if gaps * X_STEP <= MAX_WIDTH else min(max(max(1.6 * height, MAX_WIDTH) / gaps, X_MIN), X_STEP)
    pos, x = {}, 0
    for t in sorted(columns):
        col, per = columns[t], rows[t]
        for i, n in enumerate(col):
            sub, r = divmod(i, per)
            in_sub = min(per, len(col) - sub * per)
            pos[n] = (round((x + sub) * x_step), round((r - (in_sub - 1) / 2) * Y_STEP))
        x += widths[t]
    return pos


def _describe(circuit, graph: Graph) -> dict:
    """Model, task, method, metric, faithfulness, edge counts for the title and header."""
    meta = dict(getattr(circuit, "metadata", None) or {})
    attribution = meta.get("attribution")
    if not isinstance(attribution, dict):
        attribution = graph.score_info or {}
    info = {
        "model": meta.get("model") or graph.model_name or "",
        "task": meta.get("task") or attribution.get("task") or "",
        "metric": meta.get("metric") or attribution.get("metric") or "",
        "method": attribution.get("method") or meta.get("method") or "",
    }
    selection = meta.get("selection")
    if not isinstance(selection, dict):
        selection = {}
    if selection.get("kind"):
        info["selection"] = str(selection["kind"]) + (
            f" (target {selection['target']})" if "target" in selection else ""
        )
    faith = getattr(circuit, "faithfulness", None)
    info["faithfulness"] = None if faith is None else float(faith)
    return info


# ------------------------------------------------------------------------------------ main
def write_html(
    circuit,
    path: str | Path,
    title: str | None = None,
    show_all_nodes: bool = False,
    mask: torch.Tensor | None = None,
    node_info: dict[str, dict] | None = None,
) -> Path:
    """Write an interactive, self-contained HTML view of ``circuit`` to ``path``.

    ``circuit`` is a :class:`~circuitgraph.circuit.Circuit`, or a :class:`~circuitgraph.graph.Graph`
    whose scores are shown on the edges in ``mask`` (default ``graph.in_circuit``). With
    ``show_all_nodes`` every node of the model is drawn (those outside the circuit faded);
    otherwise only the circuit's nodes plus ``input`` and ``logits``. ``node_info`` maps node names
    to extra information (e.g. :func:`circuitgraph.sae.labels.feature_labels`): a node with an
    entry shows its ``site``, ``feature`` and ``top_tokens`` (or ``description``) in its tooltip,
    its top tokens under its name, and carries them in the page's data. Returns the path.
    """
    from pyvis.network import Network  # optional dependency (it imports IPython): kept off `import circuitgraph`

    graph, m, subject = _subject(circuit, mask)
    if node_info is not None and not isinstance(node_info, dict):
        raise TypeError(f"node_info must be a dict {{node name: dict}}, got {type(node_info).__name__}")
    node_info = node_info or {}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    edges = _Edges.of(graph, m)
    touched = edges.touched(graph)
    logits = _logits_nodes(graph)
    names = list(graph.src_names) + logits
    always = ("input", "logits")  # a position-resolved graph shows only the positions in use
    shown = names if show_all_nodes else [n for n in names if n in touched or n in always]
    net = Network(directed=True)
    kinds_present = _add_nodes(net, graph, shown, touched, node_info)
    _add_edges(net, graph, edges)
    nodes_data, edges_data = _records(net.nodes), _records(net.edges)

    info = _describe(subject, graph)
    info.update(n_edges=edges.n, n_edges_total=graph.n_edges, n_nodes=len(nodes_data))
    title = _title(info) if title is None else title
    payload = {"nodes": nodes_data, "edges": edges_data, "options": _OPTIONS, "info": info}
    page = _page(title, info, kinds_present, len(touched) < len(nodes_data), payload)
    atomic_write(path, lambda p: p.write_text(page, encoding="utf-8"))
    return path


def _records(items: list[dict]) -> list[dict]:
    """pyvis node / edge records without their unset (None) attributes."""
    return [{k: v for k, v in d.items() if v is not None} for d in items]


def _title(info: dict) -> str:
    """The default title: ``"ioi circuit in gpt2"``, or just ``"Circuit"``."""
    return (f"{info['task']} circuit" if info["task"] else "Circuit") + (
        f" in {info['model']}" if info["model"] else ""
    )


# vis-network options of the page: fixed layout, no physics, hover tooltips
_OPTIONS = {
    "autoResize": True,
    "physics": {"enabled": False},
    "layout": {"improvedLayout": False, "randomSeed": 0},
    "interaction": {
        "hover": True,
        "tooltipDelay": 60,
        "dragNodes": True,
        "zoomView": True,
        "navigationButtons": False,
        "keyboard": False,
    },
    "nodes": {
        "shape": "box",
        "margin": 7,
        "borderWidth": 1,
        "borderWidthSelected": 2,
        "font": {"face": "monospace", "size": 15},
    },
    "edges": {
        "arrows": {"to": {"enabled": True, "scaleFactor": 0.45}},
        "arrowStrikethrough": False,
        "font": {"size": 11, "align": "middle", "strokeWidth": 3, "strokeColor": "#ffffff", "color": "#333333"},
        "selectionWidth": 1.5,
        "hoverWidth": 0.8,
    },
}


def _subject(circuit, mask: torch.Tensor | None) -> tuple[Graph, torch.Tensor, Circuit | None]:
    """The graph, the edge mask to draw (within the valid edges, on the CPU) and the circuit (None
    for a bare graph) of ``write_html``'s first argument."""
    if isinstance(circuit, Circuit):
        graph, subject = circuit.graph, circuit
        m = circuit.mask if mask is None else mask
    elif isinstance(circuit, Graph):
        graph, subject = circuit, None
        m = graph.in_circuit if mask is None else mask
    else:
        raise TypeError(f"write_html needs a Circuit or a Graph, got {type(circuit).__name__}")
    if m.shape != graph.valid.shape:
        raise ValueError(f"mask must have shape {list(graph.valid.shape)}, got {list(m.shape)}")
    return graph, (m.bool().to(graph.valid.device) & graph.valid).cpu(), subject


@dataclass
class _Edges:
    """The circuit's edges: ``(src, dst)`` indices, scores and ranks by |score|, in row-major order."""

    idx: list[list[int]]
    scores: list[float]
    ranks: list[int]
    max_abs: float

    @classmethod
    def of(cls, graph: Graph, m: torch.Tensor) -> _Edges:
        scores = graph.scores.detach().float().cpu()[m].tolist()  # row-major, like nonzero()
        return cls(
            m.nonzero().tolist(), scores, _rank(scores), max((abs(s) for s in scores if math.isfinite(s)), default=0.0)
        )

    @property
    def n(self) -> int:
        return len(self.idx)

    def touched(self, graph: Graph) -> dict[str, dict]:
        """Per node of the circuit: edges in, edges out, Σ|score|, and its rank by that sum."""
        touched: dict[str, dict] = {}
        for (i, j), s in zip(self.idx, self.scores):
            for n, way in ((graph.src_names[i], "out"), (dst_node(graph.dst_names[j]), "in")):
                t = touched.setdefault(n, {"in": 0, "out": 0, "abs": 0.0})
                t[way] += 1
                t["abs"] += _finite_abs(s)
        for n, r in zip(list(touched), _rank([t["abs"] for t in touched.values()])):
            touched[n]["rank"] = r
        return touched


_IN_COLOR = {"border": "#4a4a4a", "highlight": "#000000", "font": "#1a1a1a"}
_OUT_COLOR = {"background": "#f4f4f4", "border": "#c8c8c8", "highlight": "#888888", "font": "#a0a0a0"}


def _node_look(style: dict, in_circuit: bool) -> tuple[dict, dict]:
    """vis ``color`` and ``font`` of a node: its kind's colour, or faded when outside the circuit."""
    c = _IN_COLOR if in_circuit else _OUT_COLOR
    bg = style["color"] if in_circuit else c["background"]
    return (
        {
            "background": bg,
            "border": c["border"],
            "highlight": {"background": bg, "border": c["highlight"]},
            "hover": {"background": bg, "border": c["highlight"]},
        },
        {"color": c["font"]},
    )


def _add_nodes(net, graph: Graph, shown: list[str], touched: dict[str, dict], node_info: dict) -> list[str]:
    """Add the ``shown`` nodes at their fixed positions; returns the node kinds present (legend order)."""
    pos = _layout(graph, shown)
    layer_of = dict(zip(graph.src_names, graph.src_layer.tolist()))
    layer_of.update({n: graph.arch.n_layers for n in _logits_nodes(graph)})
    kinds_present: list[str] = []
    for n in shown:
        kind = node_kind(n)
        style = _style(kind)
        if kind not in kinds_present:
            kinds_present.append(kind)
        layer = layer_of.get(n, -1)
        where = "" if kind in ("input", "logits") else f", layer {layer}"
        lines = [f"{n} ({style['label'] if kind in KIND_STYLES else kind}{where})"]
        t = touched.get(n)
        if t:
            lines.append(f"circuit edges: {t['in']} in, {t['out']} out")
            lines.append(f"Σ|score| of its circuit edges: {_fmt(t['abs'])} (rank {t['rank']} of {len(touched)} nodes)")
        else:
            lines.append("not in the circuit")
        label, extra = _node_info(node_info[n], lines) if isinstance(node_info.get(n), dict) else (None, {})
        color, font = _node_look(style, bool(t))
        x, y = pos[n]
        net.add_node(
            n,
            label=n if label is None else f"{n}\n{label}",
            x=x,
            y=y,
            color=color,
            font=font,
            title="\n".join(lines),
            shape="box",
            physics=False,
            kind=kind,
            layer=layer,
            inCircuit=bool(t),
            **extra,
        )
    return kinds_present


def _add_edges(net, graph: Graph, edges: _Edges) -> None:
    """Add the circuit's edges, weakest first so that the strongest are drawn on top."""
    src_time, dst_time = graph.src_time.tolist(), graph.dst_time.tolist()
    for k in sorted(range(edges.n), key=lambda k: _finite_abs(edges.scores[k])):
        i, j = edges.idx[k]
        s = edges.scores[k]
        src, dst = graph.src_names[i], graph.dst_names[j]
        node = dst_node(dst)
        base = dst.partition("@")[0]  # a position suffix (a1.h2.k@5) is not part of q/k/v
        qkv = base[-1] if base[-2:] in (".q", ".k", ".v") else ""
        a = _finite_abs(s)
        width = 1.0 + 7.0 * min(a / edges.max_abs, 1.0) if edges.max_abs > 0 else 1.5
        colour = POSITIVE if s > 0 else NEGATIVE if s < 0 else ZERO
        into = f" ({QKV_NAMES[qkv]} input)" if qkv else ""
        tip = f"{src} → {node}{into}\nscore: {_fmt(s)}\nrank {edges.ranks[k]} of {edges.n} edges by |score|"
        # Curvature grows with the number of columns an edge spans, so that long edges arc over the
        # nodes in between; a head's q / k / v edges from one source bend differently to stay apart.
        span = max((dst_time[j] - src_time[i]) / 4, 1)  # in layers / 2 (graph time is 1/8 layer)
        bend = min(0.08 + 0.05 * (span - 1), 0.45)
        smooth = {
            "enabled": True,
            "type": "curvedCCW" if qkv == "q" else "curvedCW",
            "roundness": round(bend + (0.18 if qkv == "v" else 0.0), 3),
        }
        net.add_edge(
            src,
            node,
            id=f"{src}->{dst}",
            label=qkv or None,
            title=tip,
            width=width,
            color={"color": colour, "highlight": colour, "hover": colour, "opacity": 0.85},
            smooth=smooth,
            score=s,
            absScore=a,
            rank=edges.ranks[k],
            qkv=qkv,
        )


def _header_html(info: dict) -> str:
    parts = []
    for key, label in (
        ("model", "model"),
        ("task", "task"),
        ("metric", "metric"),
        ("method", "method"),
        ("selection", "selection"),
    ):
        if info.get(key):
            parts.append(f"<span><b>{label}</b> {html.escape(str(info[key]))}</span>")
    if info.get("faithfulness") is not None:
        parts.append(f"<span><b>faithfulness</b> {html.escape(_fmt(info['faithfulness']))}</span>")
    parts.append(f"<span><b>edges</b> {info['n_edges']:,} of {info['n_edges_total']:,}</span>")
    parts.append(f"<span><b>nodes</b> {info['n_nodes']:,}</span>")
    return "\n".join(parts)


def _legend_html(kinds: list[str], faded: bool) -> str:
    rows = []
    for k in kinds:
        st = _style(k)
        label = st["label"] if k in KIND_STYLES else k
        rows.append(
            f'<div class="row"><span class="sw" style="background:{st["color"]}"></span>{html.escape(label)}</div>'
        )
    if faded:
        rows.append(
            '<div class="row"><span class="sw" style="background:#f4f4f4;border-color:#c8c8c8"></span>not in the circuit</div>'
        )
    rows.append(f'<div class="row"><span class="ln" style="background:{POSITIVE}"></span>positive score</div>')
    rows.append(f'<div class="row"><span class="ln" style="background:{NEGATIVE}"></span>negative score</div>')
    rows.append('<div class="row note">width ∝ |score|</div>')
    rows.append('<div class="row note">q / k / v: edge into the head\'s query / key / value input</div>')
    return "\n".join(rows)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="circuitgraph">
<title>@@TITLE@@</title>
<style>
@@VIS_CSS@@
</style>
<style>
html, body { margin: 0; height: 100%; font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; }
body { display: flex; flex-direction: column; }
#cg-header { padding: 8px 14px 6px; border-bottom: 1px solid #e2e2e2; background: #fafafa; }
#cg-header h1 { font-size: 18px; margin: 0 0 4px; }
#cg-meta span { margin-right: 16px; font-size: 13px; white-space: nowrap; }
#cg-meta b { color: #666; font-weight: 600; margin-right: 3px; }
#cg-controls { margin-top: 6px; font-size: 13px; display: flex; align-items: center; gap: 8px; flex-wrap: wrap; }
#cg-controls input[type=range] { width: 260px; }
#cg-controls input[type=number] { width: 110px; }
#cg-main { display: flex; flex: 1 1 auto; min-height: 200px; }
#cg-network { position: relative; flex: 1 1 auto; }
#cg-legend { flex: none; width: 200px; border-left: 1px solid #e2e2e2; background: #fafafa; padding: 10px 12px; font-size: 12px; }
#cg-legend .row { display: flex; align-items: center; margin: 3px 0; }
#cg-legend .sw { display: inline-block; width: 16px; height: 12px; border: 1px solid #555; border-radius: 2px; margin-right: 7px; flex: none; }
#cg-legend .ln { display: inline-block; width: 18px; height: 3px; margin-right: 7px; flex: none; }
#cg-legend .note { color: #666; }
#cg-status { display: none; }
div.vis-tooltip { white-space: pre; font-family: monospace; font-size: 12px; }
</style>
</head>
<body>
<div id="cg-header">
  <h1>@@TITLE@@</h1>
  <div id="cg-meta">@@META@@</div>
  <div id="cg-controls">
    <label for="cg-threshold">|score| &ge;</label>
    <input id="cg-threshold" type="number" min="0" step="any" value="0">
    <input id="cg-slider" type="range" min="0" max="0" step="1" value="0" aria-label="edge threshold">
    <span id="cg-shown"></span>
    <button id="cg-fit" type="button">fit</button>
  </div>
</div>
<div id="cg-main">
  <div id="cg-network"></div>
  <div id="cg-legend"><div class="row"><b>legend</b></div>@@LEGEND@@</div>
</div>
<div id="cg-status" data-drawn="0"></div>
<script>
@@VIS_JS@@
</script>
<script>
(function () {
  "use strict";
  var DATA = @@DATA@@;
  var status = document.getElementById("cg-status");
  var nodes = new vis.DataSet(DATA.nodes);
  var edges = new vis.DataSet(DATA.edges);
  var threshold = 0;
  var view = new vis.DataView(edges, { filter: function (e) { return e.absScore >= threshold; } });
  var container = document.getElementById("cg-network");
  var network = new vis.Network(container, { nodes: nodes, edges: view }, DATA.options);

  // |score| levels for the slider: position p shows the edges with |score| >= levels[p]
  var levels = edges.get().map(function (e) { return e.absScore; }).sort(function (a, b) { return a - b; });
  var slider = document.getElementById("cg-slider");
  var box = document.getElementById("cg-threshold");
  var shown = document.getElementById("cg-shown");
  slider.max = Math.max(levels.length - 1, 0);
  slider.disabled = levels.length === 0;

  function rendered() {
    var body = network.body || {};
    return {
      nodes: body.nodeIndices ? body.nodeIndices.length : nodes.length,
      edges: body.edgeIndices ? body.edgeIndices.length : view.length
    };
  }
  function report(drawn) {
    var r = rendered();
    window.circuitgraph.rendered = r;
    status.setAttribute("data-nodes", String(nodes.length));
    status.setAttribute("data-edges", String(edges.length));
    status.setAttribute("data-rendered-nodes", String(r.nodes));
    status.setAttribute("data-rendered-edges", String(r.edges));
    status.setAttribute("data-visible-edges", String(view.length));
    if (drawn) { status.setAttribute("data-drawn", "1"); }
    shown.textContent = "showing " + view.length + " of " + edges.length + " edges";
  }
  function setThreshold(t, fromSlider) {
    threshold = isFinite(t) && t > 0 ? t : 0;
    view.refresh();
    if (!fromSlider) {
      var p = 0;
      while (p < levels.length - 1 && levels[p] < threshold) { p++; }
      slider.value = String(p);
    }
    report(false);
    network.redraw();
  }
  slider.addEventListener("input", function () {
    var t = levels.length ? levels[Number(slider.value)] : 0;
    box.value = Number(slider.value) === 0 ? "0" : String(t);
    setThreshold(Number(slider.value) === 0 ? 0 : t, true);
  });
  box.addEventListener("input", function () { setThreshold(parseFloat(box.value), false); });
  document.getElementById("cg-fit").addEventListener("click", function () { network.fit(); });

  window.circuitgraph = {
    nodes: nodes.length, edges: edges.length, info: DATA.info, network: network,
    nodesData: nodes, edgesData: edges, edgesView: view, setThreshold: setThreshold, rendered: null
  };
  report(false);
  network.once("afterDrawing", function () {
    network.fit({ animation: false });  // node sizes are known once drawn
    report(true);
  });
})();
</script>
</body>
</html>
"""


def _page(title: str, info: dict, kinds: list[str], faded: bool, payload: dict) -> str:
    js, css = vis_assets()
    # The payload is a JavaScript expression (not parsed as JSON), so NaN / Infinity are fine.
    data = json.dumps(payload, ensure_ascii=False, default=str)
    data = data.replace("</", "<\\/").replace("<!--", "<\\!--")
    values = {
        "TITLE": html.escape(title),
        "META": _header_html(info),
        "LEGEND": _legend_html(kinds, faded),
        "DATA": data,
        "VIS_CSS": _inline(css, "style"),
        "VIS_JS": _inline(js, "script"),
    }
    # one pass, so that text inside the inserted values is never itself substituted
    return re.sub(r"@@([A-Z_]+)@@", lambda mt: values[mt.group(1)], _TEMPLATE)
