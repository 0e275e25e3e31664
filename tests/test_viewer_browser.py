"""The circuit viewer in headless Chromium, on the three pictures a researcher meets first: the
demo circuit (induction model, EAP-IG, minimal circuit), a position-resolved graph and the
induction model's SAE feature graph.

Each test reads what the page really drew (SVG elements, their rendered boxes and the points
of each edge's path): node and edge counts equal the influence-pruned circuit at the default
threshold, the feature graph stays within 60 nodes, no label overlaps another, no edge passes
through a node it does not touch, and clicking a node opens its panel with its ranked edges.
Screenshots go to outputs/test-artifacts/ (and to $CIRCUITGRAPH_SCREENSHOTS if set: the README's
pictures in docs/img/ are made with ``CIRCUITGRAPH_SCREENSHOTS=docs/img``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from chromium import chromium, open_page

import circuitgraph as cg
from circuitgraph import Circuit, prune, top_n, zoo
from circuitgraph.circuit.influence import prune_by_influence
from circuitgraph.export import write_html
from circuitgraph.graph.names import dst_node
from circuitgraph.sae import feature_labels, zoo_saes

pytestmark = pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt-get install chromium)")

ARTIFACTS = Path(__file__).resolve().parent.parent / "outputs" / "test-artifacts"
READY = 'document.getElementById("cg-status").getAttribute("data-drawn") === "1"'


def _shoot(page, name: str) -> None:
    page.screenshot(ARTIFACTS / f"{name}.png")
    extra = os.environ.get("CIRCUITGRAPH_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / f"{name}.png", Path(extra) / f"{name}.png")


# ----------------------------------------------------------------------------- the circuits
@pytest.fixture(scope="module")
def induction():
    torch.set_num_threads(1)
    entry = zoo.load("induction", device="cpu")
    return entry.model, entry.task("induction")


@pytest.fixture(scope="module")
def demo(induction):
    """The demo's circuit: EAP-IG scores and the minimal circuit at faithfulness 0.9 (16 examples)."""
    model, task = induction
    task = task.select(slice(0, 16))
    g = cg.Graph.from_model(model)
    cg.attribute(model, g, task, method="eap-ig", progress=False)
    return cg.minimal_circuit(model, g, task, target=0.9)


@pytest.fixture(scope="module")
def positional(induction):
    """A position-resolved graph of the induction model: its 200 strongest edges, pruned."""
    model, task = induction
    task = task.select(slice(0, 16))
    gp = cg.PositionalGraph.from_model(model, positions=task.clean.shape[1])
    cg.attribute(model, gp, task, method="eap-ig", progress=False)
    mask = prune(gp, top_n(gp, 200))
    return gp, mask, [str(t) for t in task.clean[0].tolist()]


@pytest.fixture(scope="module")
def features(induction):
    """The induction feature graph (cg.feature_graph with the shipped SAEs), its 3,000 strongest
    edges pruned (the size of the CLI's feature circuit), and the features' labels."""
    model, task = induction
    task = task.select(slice(0, 12))
    g = cg.feature_graph(model, zoo_saes("induction"), task)
    cg.attribute(model, g, task, method="eap-ig", progress=False)
    return build(g, prune(g, top_n(g, 3000)), task), feature_labels(model, g, task)


def build(graph, mask, task) -> Circuit:
    return cg.circuit.build_circuit(graph, mask, task, selection={"kind": "top_n"})


def pruned(graph, mask, threshold: float = 0.8) -> tuple[set[str], set[str]]:
    """The nodes (plus input and logits, always drawn in a position-free graph) and edges of the
    circuit pruned at ``threshold`` / 0.98, computed here without the page."""
    m = prune_by_influence(graph, mask, threshold, 0.98)
    edges = set(graph.edge_names(m))
    nodes = {e.split("->")[0] for e in edges} | {dst_node(e.split("->")[1]) for e in edges}
    if graph.positions is None:
        nodes |= {"input", "logits"}
    return nodes, edges


# ----------------------------------------------------------------------------- page probes
DRAWN = """JSON.stringify((function () {
  var cg = window.circuitgraph, nodes = [], edges = [];
  document.querySelectorAll("#cg-nodes g.node").forEach(function (g) { nodes.push(g.getAttribute("data-node")); });
  document.querySelectorAll("#cg-edges path.edge").forEach(function (p) {
    var e = cg.edges[+p.getAttribute("data-edge")], dst = cg.nodes[e[1]].id;
    if (e[2]) { var at = dst.indexOf("@"); dst = at < 0 ? dst + "." + e[2] : dst.slice(0, at) + "." + e[2] + dst.slice(at); }
    edges.push(cg.nodes[e[0]].id + "->" + dst);
  });
  var s = document.getElementById("cg-status");
  return {nodes: nodes, edges: edges, stop: cg.stop(), label: document.getElementById("cg-stop").textContent,
          status: [+s.getAttribute("data-rendered-nodes"), +s.getAttribute("data-rendered-edges")]};
})())"""

# every rendered text's box against every other's; every box label inside its box
LABELS = """JSON.stringify((function () {
  var texts = [], inside = [];
  document.querySelectorAll("#cg-svg text").forEach(function (t) {
    if (!t.textContent.trim()) { return; }
    var r = t.getBoundingClientRect();
    texts.push([t.textContent, r.left, r.top, r.right, r.bottom]);
    var box = t.parentNode.querySelector && t.parentNode.querySelector("rect.box");
    if (box) {
      var b = box.getBoundingClientRect();
      if (r.left < b.left - 0.5 || r.right > b.right + 0.5 || r.top < b.top - 0.5 || r.bottom > b.bottom + 0.5) {
        inside.push(t.textContent);
      }
    }
  });
  var overlaps = [];
  for (var i = 0; i < texts.length; i++) {
    for (var j = i + 1; j < texts.length; j++) {
      var a = texts[i], b = texts[j];
      var w = Math.min(a[3], b[3]) - Math.max(a[1], b[1]), h = Math.min(a[4], b[4]) - Math.max(a[2], b[2]);
      if (w > 0.5 && h > 0.5) { overlaps.push([a[0], b[0]]); }
    }
  }
  return {n: texts.length, overlaps: overlaps.slice(0, 10), outside: inside.slice(0, 10)};
})())"""

# every rendered edge path, sampled densely (its d attribute: M, then cubic C and straight L
# segments, in the same coordinates as the node groups); a point inside another node's rendered
# box is a crossing. (getPointAtLength gives the same points, but at ~0.1 ms a call.)
CROSSINGS = """JSON.stringify((function () {
  var cg = window.circuitgraph, boxes = [], bad = [], samples = 0;
  document.querySelectorAll("#cg-nodes g.node").forEach(function (g) {
    var m = g.transform.baseVal.consolidate().matrix, r = g.querySelector("rect.box");
    boxes.push([g.getAttribute("data-node"), m.e, m.f, +r.getAttribute("width") / 2, +r.getAttribute("height") / 2]);
  });
  function points(d) {
    var tok = d.match(/[MCL]|-?[0-9.]+(?:e-?[0-9]+)?/g), out = [], i = 0, x = 0, y = 0, cmd;
    while (i < tok.length) {
      if (/[MCL]/.test(tok[i])) { cmd = tok[i++]; }
      if (cmd === "M" || cmd === "L") {
        var nx = +tok[i++], ny = +tok[i++];
        for (var k = 1; k <= 40 && cmd === "L"; k++) { out.push([x + (nx - x) * k / 40, y + (ny - y) * k / 40]); }
        x = nx; y = ny; if (cmd === "M") { out.push([x, y]); }
      } else {
        var c = [x, y, +tok[i++], +tok[i++], +tok[i++], +tok[i++], +tok[i++], +tok[i++]];
        for (var k = 1; k <= 60; k++) {
          var t = k / 60, a = (1 - t) * (1 - t) * (1 - t), b = 3 * (1 - t) * (1 - t) * t, e = 3 * (1 - t) * t * t, f = t * t * t;
          out.push([a * c[0] + b * c[2] + e * c[4] + f * c[6], a * c[1] + b * c[3] + e * c[5] + f * c[7]]);
        }
        x = c[6]; y = c[7];
      }
    }
    return out;
  }
  document.querySelectorAll("#cg-edges path.edge").forEach(function (p) {
    var e = cg.edges[+p.getAttribute("data-edge")], ends = [cg.nodes[e[0]].id, cg.nodes[e[1]].id];
    var pts = points(p.getAttribute("d"));
    samples += pts.length;
    for (var j = 0; j < pts.length; j++) {
      for (var i = 0; i < boxes.length; i++) {
        var b = boxes[i];
        if (ends.indexOf(b[0]) >= 0) { continue; }
        if (Math.abs(pts[j][0] - b[1]) < b[3] - 0.5 && Math.abs(pts[j][1] - b[2]) < b[4] - 0.5) { bad.push([ends.join("->"), b[0]]); j = pts.length; break; }
      }
    }
  });
  // the browser draws that path: its own length agrees with the sampled one
  var p0 = document.querySelector("#cg-edges path.edge"), check = null;
  if (p0) {
    var q = points(p0.getAttribute("d")), len = 0;
    for (var k = 1; k < q.length; k++) { len += Math.hypot(q[k][0] - q[k - 1][0], q[k][1] - q[k - 1][1]); }
    check = [len, p0.getTotalLength()];
  }
  return {bad: bad.slice(0, 10), samples: samples, length: check};
})())"""


def _screen_centre(page, node: str) -> tuple[float, float]:
    r = page.evaluate(
        f"JSON.stringify((function () {{ var g = document.querySelector('#cg-nodes g.node[data-node=\"{node}\"]');"
        " var r = g.querySelector('rect.box').getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; })())"
    )
    return r[0], r[1]


def check_drawing(page) -> None:
    assert page.errors() == []
    labels = page.evaluate(LABELS)
    assert labels["n"] > 0 and labels["overlaps"] == [] and labels["outside"] == [], labels
    geometry = page.evaluate(CROSSINGS)
    assert geometry["samples"] > 0 and geometry["bad"] == [], geometry
    ours, browsers = geometry["length"]
    assert abs(ours - browsers) <= 0.01 * browsers + 0.5  # the parsed path is the drawn one


def check_panel(page, circuit_edges: set[str], node: str) -> None:
    """Click ``node``: its panel names it and lists its incoming and outgoing circuit edges,
    ranked by |score|."""
    page.click(*_screen_centre(page, node))
    panel = page.evaluate(
        """JSON.stringify((function () {
      var p = document.getElementById("cg-panel");
      function rows(id) {
        var t = document.getElementById(id).nextElementSibling, out = [];
        if (!t || t.tagName !== "TABLE") { return out; }
        t.querySelectorAll("tr").forEach(function (tr) {
          var c = tr.querySelectorAll("td"); out.push([+c[0].textContent, c[1].textContent, c[2].textContent, +c[3].textContent]);
        });
        return out;
      }
      return {node: p.getAttribute("data-node"), title: p.querySelector("h2").textContent, ins: rows("cg-in"), outs: rows("cg-out"),
              marks: Array.prototype.map.call(p.querySelectorAll(".ctx mark"), function (m) { return m.textContent; })};
    })())"""
    )
    assert panel["node"] == node and panel["title"] == node
    into = [e for e in circuit_edges if dst_node(e.split("->")[1]) == node]
    out = [e for e in circuit_edges if e.split("->")[0] == node]
    assert len(panel["ins"]) == len(into) and len(panel["outs"]) == len(out)
    for rows in (panel["ins"], panel["outs"]):
        ranks = [r[0] for r in rows]
        assert ranks == sorted(ranks)  # ranked by |score|, largest first
        mags = [abs(r[3]) for r in rows]
        assert all(a >= b * (1 - 1e-3) for a, b in zip(mags, mags[1:]))
        assert {r[2] for r in rows} <= {"helps", "hurts", "no effect"}
    return panel


# ----------------------------------------------------------------------------- the tests
def test_demo_circuit(demo, tmp_path):
    c = demo
    circuit_edges = set(c.edge_names())
    assert len(c.nodes()) <= 25  # a small circuit opens whole
    with open_page(write_html(c, tmp_path / "demo.html"), tmp_path / "profile", READY) as page:
        drawn = page.evaluate(DRAWN)
        assert drawn["label"] == "whole circuit"
        assert set(drawn["edges"]) == circuit_edges and len(drawn["edges"]) == c.n_edges == drawn["status"][1]
        assert set(drawn["nodes"]) == c.nodes() | {"input", "logits"} and len(drawn["nodes"]) == drawn["status"][0]
        check_drawing(page)
        # the edge colour names the effect on the task: every edge of this circuit is coloured by
        # the sign of its score under logit_diff (higher is better): negative helps
        colours = page.evaluate(
            "JSON.stringify(Array.prototype.map.call(document.querySelectorAll('#cg-edges path.edge'),"
            " function (p) { return [window.circuitgraph.edges[+p.getAttribute('data-edge')][3], p.getAttribute('stroke')]; }))"
        )
        assert {("helps" if s < 0 else "hurts", col) for s, col in colours} <= {
            ("helps", "#1f6fd1"),
            ("hurts", "#e8590c"),
        }
        panel = check_panel(page, circuit_edges, "a1.h3")
        assert panel["ins"] and panel["outs"]
        page.mouse("mouseMoved", 2, 2)
        _shoot(page, "viewer_demo")
        # the slider's 80 % stop is the influence-pruned circuit: nodes are hidden with their edges
        stop = page.evaluate("window.circuitgraph.stops.findIndex(function (s) { return s.node_threshold === 0.8; })")
        page.evaluate(f"window.circuitgraph.setStop({stop})")
        drawn = page.evaluate(DRAWN)
        nodes, edges = pruned(c.graph, c.mask)
        assert (
            set(drawn["nodes"]) == nodes
            and set(drawn["edges"]) == edges
            and drawn["status"] == [len(nodes), len(edges)]
        )
        check_drawing(page)


def test_position_graph(positional, tmp_path):
    gp, mask, tokens = positional
    circuit_edges = set(gp.edge_names(mask))
    html = write_html(gp, tmp_path / "pos.html", mask=mask, tokens=tokens)
    with open_page(html, tmp_path / "profile", READY, width=1400, height=700) as page:
        drawn = page.evaluate(DRAWN)
        nodes, edges = pruned(gp, mask)
        assert drawn["label"] == "80% of influence"
        assert set(drawn["nodes"]) == nodes and set(drawn["edges"]) == edges
        assert drawn["status"] == [len(nodes), len(edges)] and len(edges) < len(circuit_edges)
        shown = page.evaluate(
            "JSON.stringify(Array.prototype.map.call(document.querySelectorAll('#cg-axis text.tok'), function (t) { return t.textContent; }))"
        )
        assert shown == [t if len(t) <= 10 else t[:9] + "…" for t in tokens]  # every prompt token, in order
        check_drawing(page)
        head = max((n for n in nodes if n.startswith("a1.")), key=lambda n: sum(e.startswith(n) for e in edges))
        check_panel(page, circuit_edges, head)
        pos = {n: int(n.split("@")[1]) for n in nodes}  # the screenshot: the busiest 14 positions
        start = max(range(len(tokens)), key=lambda s: sum(s <= p < s + 14 for p in pos.values()))
        window = sorted(n for n, p in pos.items() if start <= p < start + 14)
        page.evaluate(f"window.circuitgraph.fitTo({window!r}); null")
        page.mouse("mouseMoved", 2, 2)  # off the nodes: no hover highlight in the picture
        _shoot(page, "viewer_positions")


def test_feature_graph(features, tmp_path):
    c, labels = features
    circuit_edges = set(c.edge_names())
    assert len(c.nodes()) > 200  # unreadable drawn whole
    c.save(tmp_path / "run" / "circuit.json")
    html = write_html(Circuit.load(tmp_path / "run" / "circuit.json"), tmp_path / "features.html", node_info=labels)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with open_page(html, tmp_path / "profile", READY, downloads=downloads) as page:
        drawn = page.evaluate(DRAWN)
        nodes, edges = pruned(c.graph, c.mask)
        assert drawn["label"] == "80% of influence"
        assert set(drawn["nodes"]) == nodes and set(drawn["edges"]) == edges
        assert drawn["status"] == [len(nodes), len(edges)] and len(nodes) <= 60
        check_drawing(page)
        _shoot(page, "viewer_features")

        # a feature's panel: its top-activating contexts with the activating token marked
        feature = max((n for n in nodes if ".f" in n), key=lambda n: sum(n in e for e in edges))
        panel = check_panel(page, circuit_edges, feature)
        tops = labels[feature]["top_tokens"]
        assert panel["marks"] == [t["token"] for t in tops] and tops
        _shoot(page, "viewer_feature_panel")

        # hover highlights the node, its drawn edges and their other ends
        x, y = _screen_centre(page, "a1.h3")
        page.mouse("mouseMoved", x, y)
        hl = page.evaluate(
            "JSON.stringify({dim: document.getElementById('cg-svg').classList.contains('dim'),"
            " nodes: Array.prototype.map.call(document.querySelectorAll('#cg-nodes g.node.hl'), function (g) { return g.getAttribute('data-node'); }),"
            " edges: document.querySelectorAll('#cg-edges path.edge.hl').length})"
        )
        touching = [e for e in edges if e.split("->")[0] == "a1.h3" or dst_node(e.split("->")[1]) == "a1.h3"]
        neighbours = {e.split("->")[0] for e in touching} | {dst_node(e.split("->")[1]) for e in touching}
        assert hl["dim"] and hl["edges"] == len(touching) and set(hl["nodes"]) == neighbours | {"a1.h3"}

        # search by name
        assert page.evaluate("JSON.stringify(window.circuitgraph.search('a0.h1'))") == ["a0.h1"]

        # group two nodes into a supernode and save: the downloaded circuit.json loads with it
        page.evaluate(f"window.circuitgraph.pick('a0.h1'); window.circuitgraph.pick('{feature}')")
        page.evaluate("document.getElementById('cg-group-name').value = 'previous token'; null")
        page.click(*_button(page, "cg-group"))
        page.click(*_button(page, "cg-save"))
        saved = _wait_for(downloads / "circuit.json")
    shutil.copy(saved, tmp_path / "run" / "circuit.json")
    back = Circuit.load(tmp_path / "run" / "circuit.json")
    assert back.supernodes == [{"name": "previous token", "nodes": ["a0.h1", feature]}]
    assert torch.equal(back.mask, c.mask) and back.graph.edge_names(back.mask) == c.graph.edge_names(c.mask)


def _button(page, element_id: str) -> tuple[float, float]:
    return tuple(
        page.evaluate(
            f"JSON.stringify((function () {{ var r = document.getElementById('{element_id}').getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })())"
        )
    )


def _wait_for(path: Path, timeout: float = 15.0) -> Path:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.is_file() and path.stat().st_size > 0:
            return path
        time.sleep(0.1)
    raise AssertionError(f"the page's download never arrived at {path}")
