"""Where the circuit viewer draws each node, and the path each edge takes.

Rows are residual times, earliest at the bottom (``input``) and ``logits`` at the top, so a node
always sits above everything it reads. In a position-resolved graph every token position is a
column and a node sits in its position's column. Otherwise a layer's heads keep one slot per head
(a head is in the same place in every circuit of a model), and the nodes of long rows (SAE
features, neurons) are packed by influence, most influential first, onto bands of at most
``WRAP`` boxes. Every box has the same size, so no label can run into another.

An edge leaves the top of its source and enters the bottom of its destination (a head's query,
key and value inputs are three ports, left to right). It crosses each band between its ends
vertically, inside a gap between that band's boxes, and bends only in the empty space between
bands. So no edge is ever drawn through a node it does not touch, by construction;
:func:`crossings` checks it on the drawn curves.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from circuitgraph.graph import Graph
from circuitgraph.graph.names import parse_node

__all__ = ["Layout", "layout", "box_width", "crossings", "sample_path", "NODE_H", "SLOT_OFFSET"]

NODE_H = 38.0  # box height: two lines of text
CHAR_W = 7.3  # width of one character of the 12 px monospace labels
PAD_X = 10.0  # text padding inside a box
MIN_W, MAX_CHARS = 64.0, 18  # box width limits (longer labels are shortened with …)
GAP_X = 18.0  # between boxes of a band: room for the edges that pass
GAP_Y = 70.0  # between bands: where edges bend
COL_GAP = 28.0  # between token positions
WRAP, MIN_WRAP = 14, 4  # most boxes in one band (longer rows wrap onto more bands), chosen in this range
ASPECT = 1.4  # the width / height a wrapped picture aims at (a screen's shape)
CLEAR = 5.0  # an edge passes at least this far from any box it does not touch
OUTSIDE = 18.0  # edges may pass this far beyond the outermost boxes
SLOT_OFFSET = {"q": -0.25, "k": 0.0, "v": 0.25}  # ports of a head's inputs, in box widths
TOKEN_CHARS = 10  # a prompt token under its column is shortened to this many characters


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def box_width(labels: Sequence[str]) -> float:
    """One box width for a whole page: its longest label (capped at ``MAX_CHARS``) plus padding."""
    chars = min(max((len(s) for s in labels), default=0), MAX_CHARS)
    return max(MIN_W, chars * CHAR_W + 2 * PAD_X)


@dataclass
class Band:
    """One horizontal strip of boxes: its centre ``y`` and its boxes' centres ``xs`` (sorted)."""

    y: float
    xs: list[float] = field(default_factory=list)


@dataclass
class Layout:
    """Box centres, box size, bands, edge paths and the axis labels of one drawing."""

    w: float
    h: float
    centres: dict[str, tuple[float, float]]
    bands: list[Band]
    paths: list[list[tuple[float, float]]]  # per edge: start, (band bottom, band top)*, end
    row_labels: list[tuple[str, float, float]]  # (text, x of its right end, y)
    tokens: list[tuple[str, str, float, float]]  # (token, position, x, y) under the input row
    bounds: tuple[float, float, float, float]  # x0, y0, x1, y1 of everything drawn

    def d(self, k: int) -> str:
        """SVG path data of edge ``k``: a vertical-tangent cubic across each gap between bands,
        a straight line through each band it crosses."""
        pts = self.paths[k]
        out = [f"M{pts[0][0]:.1f} {pts[0][1]:.1f}"]
        for i in range(1, len(pts)):
            (x0, y0), (x1, y1) = pts[i - 1], pts[i]
            if i % 2:  # a gap between bands
                ym = (y0 + y1) / 2
                out.append(f"C{x0:.1f} {ym:.1f} {x1:.1f} {ym:.1f} {x1:.1f} {y1:.1f}")
            else:  # through a band, inside one of its gaps
                out.append(f"L{x1:.1f} {y1:.1f}")
        return "".join(out)


def _row_label(name: str) -> str:
    node = parse_node(name)
    if node.kind in ("input", "logits"):
        return "embeddings" if node.kind == "input" else "logits"
    if node.kind == "head":
        return f"layer {node.layer} heads"
    if node.site == "transcoder":
        return f"layer {node.layer} transcoder"
    if node.site is not None:
        return f"{node.site}{node.layer} SAE"
    return f"layer {node.layer} MLP"


def layout(
    graph: Graph,
    nodes: Sequence[str],
    edges: Sequence[tuple[str, str, str]],
    w: float,
    order: Mapping[str, float] | None = None,
    tokens: Sequence[str] | None = None,
) -> Layout:
    """Place ``nodes`` and route ``edges`` (``(source, destination node, slot)``, slot ``q``/``k``/
    ``v`` or ``""``) with boxes ``w`` wide. ``order`` ranks the nodes of packed rows (larger
    first); ``tokens`` labels the columns of a position-resolved graph."""
    rows = _Rows(graph, nodes, order or {})
    positional = getattr(graph, "positions", None) is not None
    if positional:
        centres, bands, firsts, col_x = _place_columns(rows, int(graph.positions or 0), w, tokens)
    else:
        (centres, bands, firsts), col_x = _place_layers(rows, graph.arch.n_heads, w), {}
    xs = [x for x, _ in centres.values()] or [0.0]
    left, right = min(xs) - w / 2 - OUTSIDE, max(xs) + w / 2 + OUTSIDE
    paths = _route(edges, centres, bands, w, left, right)

    label_x = left - 12.0
    row_labels = [(text, label_x, bands[b].y) for text, b in firsts]
    bottom_y = (bands[-1].y if bands else 0.0) + NODE_H / 2
    token_marks = [
        (_clip(tokens[p], TOKEN_CHARS), str(p), x, bottom_y + 22.0)
        for p, x in col_x.items()
        if tokens and p < len(tokens)
    ]
    label_w = max((len(t) for t, _, _ in row_labels), default=0) * CHAR_W
    x0 = min([label_x - label_w] + [x - len(t) * CHAR_W / 2 for t, _, x, _ in token_marks])
    x1 = max([right] + [x + len(t) * CHAR_W / 2 for t, _, x, _ in token_marks])
    y0 = (bands[0].y if bands else 0.0) - NODE_H / 2
    y1 = bottom_y + (44.0 if token_marks else 0.0)
    return Layout(w, NODE_H, centres, bands, paths, row_labels, token_marks, (x0, y0, x1, y1))


class _Rows:
    """The nodes to draw, grouped by residual time (latest first), and their order in a row."""

    def __init__(self, graph: Graph, nodes: Sequence[str], order: Mapping[str, float]) -> None:
        self.parsed = {n: parse_node(n) for n in nodes}
        self.order = order
        self.rank = {n: i for i, n in enumerate(graph.src_names)}
        self.rows: dict[float, list[str]] = {}
        for n in nodes:
            self.rows.setdefault(self.parsed[n].time(graph.arch.n_layers), []).append(n)
        self.times = sorted(self.rows, reverse=True)  # top band first: logits

    def packed(self, names: list[str]) -> list[str]:
        """Heads in head order; other nodes by influence (largest first), then graph order."""

        def key(n: str) -> tuple:
            p = self.parsed[n]
            if p.kind == "head":
                return (0, p.head, 0.0, 0)
            return (1, 0, -self.order.get(n, 0.0), self.rank.get(n, len(self.rank)))

        return sorted(names, key=key)


Placed = tuple[dict[str, tuple[float, float]], list[Band], list[tuple[str, int]]]


def _place_layers(rows: _Rows, n_heads: int, w: float) -> Placed:
    """Position-free graphs: a layer's heads in fixed slots, other rows packed and wrapped onto
    bands (as many boxes per band as keeps the picture about ``ASPECT`` times as wide as it is
    tall); every band centred on x = 0. Returns centres, bands, each row's label and first band."""
    pitch = w + GAP_X
    packed = {t: rows.packed(rows.rows[t]) for t in rows.times}

    def fixed(names: list[str]) -> bool:  # a layer's heads, one slot per head
        return all(rows.parsed[n].kind == "head" for n in names) and n_heads <= WRAP

    def aspect(wrap: int) -> float:
        widths = [n_heads if fixed(v) else min(len(v), wrap) for v in packed.values()]
        n_bands = sum(1 if fixed(v) else -(-len(v) // wrap) for v in packed.values())
        return max(widths, default=1) * pitch / max(n_bands * (NODE_H + GAP_Y), 1.0)

    longest = max((len(v) for v in packed.values()), default=1)
    wraps = range(min(MIN_WRAP, longest), max(min(WRAP, longest), MIN_WRAP) + 1)
    wrap = min(wraps, key=lambda k: (abs(math.log(aspect(k) / ASPECT)), -k))
    centres: dict[str, tuple[float, float]] = {}
    bands: list[Band] = []
    firsts: list[tuple[str, int]] = []
    for t in rows.times:
        names = packed[t]
        if fixed(names):
            chunks = [names]
            slots = {n: (rows.parsed[n].head or 0) - (n_heads - 1) / 2 for n in names}
        else:
            chunks = [names[i : i + wrap] for i in range(0, len(names), wrap)]
            slots = {n: i - (len(c) - 1) / 2 for c in chunks for i, n in enumerate(c)}
        firsts.append((_row_label(names[0]), len(bands)))
        for c in chunks:
            y = len(bands) * (NODE_H + GAP_Y)
            for n in c:
                centres[n] = (slots[n] * pitch, y)
            bands.append(Band(y, sorted(centres[n][0] for n in c)))
    return centres, bands, firsts


def _place_columns(
    rows: _Rows, positions: int, w: float, tokens: Sequence[str] | None
) -> tuple[dict[str, tuple[float, float]], list[Band], list[tuple[str, int]], dict[int, float]]:
    """Position-resolved graphs: one column per token position, as wide as its fullest cell (or
    its token); one band per row. Also returns each column's centre."""
    pitch = w + GAP_X
    cells: dict[tuple[float, int], list[str]] = {}
    for t in rows.times:
        for n in rows.rows[t]:
            cells.setdefault((t, rows.parsed[n].position or 0), []).append(n)
    col_x: dict[int, float] = {}
    x, last_full = 0.0, None
    for p in range(positions):
        k = max((len(v) for (_, q), v in cells.items() if q == p), default=0)
        tok_w = len(_clip(tokens[p], TOKEN_CHARS)) * CHAR_W + 6 if tokens and p < len(tokens) else 0.0
        width = max(k * pitch - GAP_X, tok_w, 16.0)
        if p:  # room for passing edges beside columns with boxes; empty columns sit close together
            x += COL_GAP if (k or last_full) else 6.0
        col_x[p] = x + width / 2
        x += width
        last_full = bool(k)
    centres: dict[str, tuple[float, float]] = {}
    bands: list[Band] = []
    firsts: list[tuple[str, int]] = []
    for b, t in enumerate(rows.times):
        y = b * (NODE_H + GAP_Y)
        for p in range(positions):
            cell = rows.packed(cells.get((t, p), []))
            for i, n in enumerate(cell):
                centres[n] = (col_x[p] + (i - (len(cell) - 1) / 2) * pitch, y)
        bands.append(Band(y, sorted(centres[n][0] for n in rows.rows[t])))
        firsts.append((_row_label(rows.rows[t][0]), b))
    return centres, bands, firsts, col_x


def _route(
    edges: Sequence[tuple[str, str, str]],
    centres: dict[str, tuple[float, float]],
    bands: list[Band],
    w: float,
    left: float,
    right: float,
) -> list[list[tuple[float, float]]]:
    """Each edge's points: its source's top, then the bottom and top of every band it crosses at
    the free x nearest to the straight line from the last point to its end, then its end."""
    free = [_free(b.xs, w, left, right) for b in bands]
    band_at = {b.y: i for i, b in enumerate(bands)}
    paths = []
    for src, dst, slot in edges:
        (xs, ys), (xd, yd) = centres[src], centres[dst]
        px, py = xs, ys - NODE_H / 2
        x1, y1 = xd + SLOT_OFFSET.get(slot, 0.0) * w, yd + NODE_H / 2
        pts = [(px, py)]
        for b in range(band_at[ys] - 1, band_at[yd], -1):
            y = bands[b].y
            x = _nearest(free[b], px + (x1 - px) * (py - y) / (py - y1))
            pts += [(x, y + NODE_H / 2), (x, y - NODE_H / 2)]
            px, py = x, y - NODE_H / 2
        pts.append((x1, y1))
        paths.append(pts)
    return paths


def _free(xs: list[float], w: float, left: float, right: float) -> list[tuple[float, float]]:
    """The x-intervals of a band (boxes centred at ``xs``, sorted) where an edge may pass:
    ``CLEAR`` away from every box, and within ``[left, right]``."""
    out, at = [], left
    for x in xs:
        if x - w / 2 - CLEAR >= at:
            out.append((at, x - w / 2 - CLEAR))
        at = x + w / 2 + CLEAR
    if right >= at:
        out.append((at, right))
    return out


def _nearest(intervals: list[tuple[float, float]], x: float) -> float:
    """The point of ``intervals`` (sorted, disjoint) nearest to ``x``."""
    starts = [a for a, _ in intervals]
    i = bisect.bisect_right(starts, x) - 1
    best, dist = x, math.inf
    for j in (i, i + 1):
        if 0 <= j < len(intervals):
            a, b = intervals[j]
            c = min(max(x, a), b)
            if abs(c - x) < dist:
                best, dist = c, abs(c - x)
    return best


def sample_path(pts: Sequence[tuple[float, float]], per_segment: int = 24) -> list[tuple[float, float]]:
    """Points along an edge's drawn path (cubic gaps, straight bands), for geometry checks."""
    out = [pts[0]]
    for i in range(1, len(pts)):
        (x0, y0), (x1, y1) = pts[i - 1], pts[i]
        for k in range(1, per_segment + 1):
            t = k / per_segment
            if i % 2:
                ym = (y0 + y1) / 2
                a, b, c, d = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3
                out.append((a * x0 + b * x0 + c * x1 + d * x1, a * y0 + (b + c) * ym + d * y1))
            else:
                out.append((x0 + (x1 - x0) * t, y0 + (y1 - y0) * t))
    return out


def crossings(lay: Layout, edges: Sequence[tuple[str, str, str]]) -> list[tuple[int, str]]:
    """``(edge index, node)`` for every drawn edge that passes through a box other than its own
    two ends (inside by more than half a pixel). Empty when the drawing is correct."""
    hw, hh = lay.w / 2 - 0.5, lay.h / 2 - 0.5
    boxes = list(lay.centres.items())
    bad = []
    for k, (src, dst, _) in enumerate(edges):
        pts = sample_path(lay.paths[k])
        for n, (cx, cy) in boxes:
            if n in (src, dst):
                continue
            if any(abs(x - cx) < hw and abs(y - cy) < hh for x, y in pts):
                bad.append((k, n))
    return bad
