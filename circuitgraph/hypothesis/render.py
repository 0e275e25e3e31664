"""A hypothesis as an offline, interactive HTML page (vis-network, inlined).

The model nodes the hypothesis maps to sit on the lower band, one column per residual-stream
time (``input`` left, ``logits`` right), joined by the model edges the hypothesis covers (labelled
``q``/``k``/``v`` for a head's inputs). Each interpretation node sits just above the model node it
maps to, joined to it by a dashed line, and to its parent interpretation node by an arrow.
Hover for features and descriptions. The page needs no network: vis-network's JavaScript and
CSS are read by :func:`vis_assets` and inlined.

:func:`vis_assets` lives here, the lowest layer that draws vis-network pages, and the circuit
viewer (:mod:`circuitgraph.export.html`) imports it from here: the import runs one way, from
export to hypothesis.
"""

from __future__ import annotations

import html
import json
import re
from functools import lru_cache
from pathlib import Path

from circuitgraph.atomic import atomic_write
from circuitgraph.hypothesis.nodes import parse_node, residual_order

INTERP_COLOR = "#c9a7e8"
MODEL_COLORS = {
    "input": "#b8bec6",
    "head": "#f6c85f",
    "mlp": "#8fd18b",
    "slot": "#f9e2a6",
    "logits": "#9aa8f0",
    "neuron": "#c9a7e8",
}
COVER_COLOR, INTERP_EDGE, MAP_EDGE = "#4a78c2", "#7a3fb0", "#9e9e9e"
X_STEP, Y_STEP = 330, 85


# vis-network copies put here win over pyvis's; the folder is documented as the circuit viewer's
# (``circuitgraph/export/vendor/``), and both pages read it
_VENDOR = Path(__file__).parents[1] / "export" / "vendor"


@lru_cache(maxsize=1)
def vis_assets() -> tuple[str, str]:
    """``(javascript, css)`` of vis-network, read from the vendor folder or the installed pyvis."""
    candidates = []
    if (_VENDOR / "vis-network.min.js").is_file():
        candidates.append(_VENDOR)
    try:
        import pyvis  # optional dependency: only the HTML pages need it

        root = Path(pyvis.__file__).parent
        found = [
            d
            for base in (root / "templates" / "lib", root / "lib")
            if base.is_dir()
            for d in base.glob("vis-*")
            if (d / "vis-network.min.js").is_file()
        ]

        def version(d: Path) -> tuple:
            return tuple(int(x) for x in re.findall(r"\d+", d.name))

        candidates += sorted(found, key=version, reverse=True)
    except ImportError:
        pass
    for d in candidates:
        css = d / "vis-network.css"
        if not css.is_file():
            css = d / "vis-network.min.css"
        if css.is_file():
            return (d / "vis-network.min.js").read_text(encoding="utf-8"), css.read_text(encoding="utf-8")
    raise RuntimeError(
        "cannot find vis-network's JavaScript to inline into the HTML viewer: install pyvis>=0.3.2 "
        "(it ships vis-network under pyvis/templates/lib/), or put vis-network.min.js and "
        f"vis-network.css into {_VENDOR}"
    )


def _safe(text: str, tag: str) -> str:
    return re.sub(f"</(?={tag})", r"<\\/", text, flags=re.IGNORECASE)


def _column(name: str) -> tuple[float, int]:
    return residual_order(parse_node(name))


def layout(h) -> tuple[list[dict], list[dict]]:
    """vis-network node and edge records for hypothesis ``h`` (exposed for tests)."""
    # one column per residual time, a head's q/k/v inputs just left of the head, logits last
    model_names = sorted(set(h.mapping.values()), key=lambda n: (residual_order(parse_node(n)), n))
    times = sorted({_column(n) for n in model_names if _column(n)[0] != float("inf")})
    col = {t: i for i, t in enumerate(times)}
    last = len(times)
    per_col: dict[int, list[str]] = {}
    for n in model_names:
        t = _column(n)
        c = last if t[0] == float("inf") else col[t]
        per_col.setdefault(c, []).append(n)
    pos = {}
    for c, names in per_col.items():
        for r, n in enumerate(names):
            pos[n] = (c * X_STEP, r * Y_STEP * 2)
    nodes = _model_nodes(model_names, pos)
    interp_nodes, edges = _interpretation(h, pos)
    nodes += interp_nodes
    ids = {n["id"] for n in nodes}
    return nodes, edges + _cover_edges(h, ids)


def _model_nodes(model_names: list[str], pos: dict[str, tuple[int, int]]) -> list[dict]:
    """One ellipse per model node the hypothesis maps to, at its column."""
    nodes = []
    for n in model_names:
        mn = parse_node(n)
        x, y = pos[n]
        nodes.append(
            {
                "id": f"model:{n}",
                "label": n,
                "x": x,
                "y": y,
                "shape": "ellipse",
                "color": MODEL_COLORS.get(mn.kind, "#dddddd"),
                "group": "model",
                "title": f"model node {n} ({mn.kind})",
            }
        )
    return nodes


def _interpretation(h, pos: dict[str, tuple[int, int]]) -> tuple[list[dict], list[dict]]:
    """Interpretation nodes stacked above the model node each maps to, their mapping edges and the
    interpretation edges between them."""
    nodes, edges = [], []
    stacked: dict[str, int] = {}
    for name, node in h.nodes.items():
        m = h.mapping[name]
        k = stacked.get(m, 0)
        stacked[m] = k + 1
        x, y = pos[m]
        tip = [f"interpretation node {name}", f"feature: {node.feature.describe()}", f"model node: {m}"]
        if node.description:
            tip.append(node.description)
        nodes.append(
            {
                "id": f"interp:{name}",
                "label": f"{name}\n{node.feature.describe()}",
                "x": x,
                "y": y - Y_STEP * (1 + k),
                "shape": "box",
                "color": INTERP_COLOR,
                "group": "interpretation",
                "widthConstraint": {"maximum": X_STEP - 40},
                "title": "\n".join(tip),
            }
        )
        edges.append(
            {
                "id": f"map:{name}",
                "from": f"interp:{name}",
                "to": f"model:{m}",
                "dashes": True,
                "color": MAP_EDGE,
                "arrows": "",
                "title": f"{name} is computed by {m}",
            }
        )
    for parent, child in h.edges():
        restr = h.restrictions.get((parent, child))
        edges.append(
            {
                "id": f"interp:{child}->{parent}",
                "from": f"interp:{child}",
                "to": f"interp:{parent}",
                "color": INTERP_EDGE,
                "arrows": "to",
                "label": "".join(restr) if restr else "",
                "title": f"{parent} is computed from {child}",
                "smooth": {"enabled": True, "type": "curvedCCW", "roundness": 0.2},
            }
        )
    return nodes, edges


def _cover_edges(h, ids: set[str]) -> list[dict]:
    """The model edges the hypothesis covers, between model nodes that are drawn."""
    edges = []
    for e in h.covered_edges():
        s, d = e.split("->")
        target = d if f"model:{d}" in ids else parse_node(d).owner
        if f"model:{target}" not in ids or f"model:{s}" not in ids:
            continue
        letter = d[-1] if parse_node(d).kind == "slot" and target != d else ""
        edges.append(
            {
                "id": f"cover:{e}",
                "from": f"model:{s}",
                "to": f"model:{target}",
                "color": COVER_COLOR,
                "arrows": "to",
                "label": letter,
                "title": f"covered edge {e}",
                "smooth": {"enabled": True, "type": "curvedCW", "roundness": 0.15},
            }
        )
    return edges


def write_html(h, path: str | Path, title: str | None = None) -> Path:
    """Write hypothesis ``h`` as a self-contained HTML page; returns the path."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        path = path.with_suffix(".html")
    nodes, edges = layout(h)
    js, css = vis_assets()
    title = title or f"hypothesis: {h.name}"
    options = {
        "physics": {"enabled": False},
        "interaction": {"hover": True, "dragNodes": True},
        "nodes": {"font": {"face": "monospace", "size": 14}, "margin": 8},
        "edges": {"font": {"size": 11, "strokeWidth": 3, "strokeColor": "#ffffff"}},
    }
    data = json.dumps({"nodes": nodes, "edges": edges, "options": options}).replace("</", "<\\/")
    model = (h.model_info or {}).get("name") or ""
    info = f"{len(h.nodes)} interpretation nodes, {len(h.covered_edges())} covered model edges" + (
        f", model {html.escape(model)}" if model else ""
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="generator" content="circuitgraph.hypothesis">
<title>{html.escape(title)}</title>
<style>{_safe(css, "style")}</style>
<style>html,body{{margin:0;height:100%;overflow:hidden;font-family:Helvetica,Arial,sans-serif}}
header{{position:absolute;top:0;left:0;right:0;height:52px;box-sizing:border-box;padding:8px 14px;
border-bottom:1px solid #ddd;font-size:14px;overflow:hidden}}
#net{{position:absolute;top:52px;bottom:0;left:0;right:0}}
.k{{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}}</style>
</head><body>
<header><b>{html.escape(title)}</b> — {info}
<span class="k" style="background:{INTERP_COLOR}"></span>interpretation node (feature)
<span class="k" style="background:{MODEL_COLORS["head"]}"></span>model node
<span class="k" style="background:{INTERP_EDGE}"></span>computed from
<span class="k" style="background:{COVER_COLOR}"></span>covered model edge
<span class="k" style="background:{MAP_EDGE}"></span>correspondence</header>
<div id="net"></div>
<script>{_safe(js, "script")}</script>
<script>
const DATA = {data};
const net = new vis.Network(document.getElementById("net"),
  {{nodes: new vis.DataSet(DATA.nodes), edges: new vis.DataSet(DATA.edges)}}, DATA.options);
window.circuitgraph = {{network: net, nNodes: DATA.nodes.length, nEdges: DATA.edges.length}};
</script></body></html>
"""
    return atomic_write(path, lambda p: p.write_text(page, encoding="utf-8"))
