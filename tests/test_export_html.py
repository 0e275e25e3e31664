"""The HTML circuit viewer without a browser: the page is self-contained and deterministic, its
slider stops are exactly the influence-pruned circuits, edge colours say helps/hurts the same way
under every metric, and the layout never draws an edge through a node it does not touch.
(tests/test_viewer_browser.py opens the pages in Chromium.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_model, tiny_task

from circuitgraph import Graph, PositionalGraph, top_n
from circuitgraph.circuit import build_circuit
from circuitgraph.circuit.influence import prune_by_influence
from circuitgraph.export import write_html
from circuitgraph.export.html import HELPS, HURTS, STOPS, effect_words, metric_direction
from circuitgraph.export.layout import GAP_Y, NODE_H, WRAP, box_width, crossings, layout, sample_path
from circuitgraph.graph import Architecture
from circuitgraph.graph.names import dst_node, parse_node
from circuitgraph.graph.sites import make_site


def _circuit(n_edges: int = 16, seed: int = 0, metric: str = "logit_diff", **model_overrides):
    """A circuit on a tiny model from fixed pseudo-random scores (so the test depends on the
    graph and the viewer only, not on an attribution method)."""
    model = tiny_model(**model_overrides)
    task = tiny_task(model, metric=metric)
    graph = Graph.from_model(model)
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(graph.valid.shape, generator=g) * torch.rand(graph.valid.shape, generator=g) ** 2
    graph.scores = raw.masked_fill(~graph.valid, 0.0)
    graph.score_info = {"method": "eap-ig", "task": task.name, "metric": metric}
    mask = top_n(graph, n_edges)
    c = build_circuit(graph, mask, task, selection={"kind": "top_n", "top_n": n_edges})
    c.faithfulness = 0.912
    return c


def page_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    return json.loads(re.search(r"var DATA = (\{.*?\});\n", text, re.S).group(1).replace("<\\/", "</"))


def stop_edges(data: dict, stop: dict) -> set[str]:
    """The edge names (``src->dst``) drawn at a slider stop."""
    nodes = data["nodes"]
    out = set()
    for k, *_ in stop["edges"]:
        s, d, slot = data["edges"][k][:3]
        out.add(f"{nodes[s]['id']}->{_dst_name(nodes[d]['id'], slot)}")
    return out


def _dst_name(node: str, slot: str) -> str:
    if not slot:
        return node
    base, at, pos = node.partition("@")
    return f"{base}.{slot}" + (f"@{pos}" if at else "")


# ----------------------------------------------------------------------------- the file
def test_html_is_self_contained(tmp_path):
    c = _circuit()
    path = write_html(c, tmp_path / "c.html")
    text = path.read_text(encoding="utf-8")
    # no external scripts, stylesheets, imports, frames or images: everything is inline
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I)
    assert not re.search(r"<link[^>]*\bhref\s*=", text, re.I)
    assert not re.search(r"<(iframe|img|embed|object)\b[^>]*\b(src|data)\s*=\s*[\"']?\s*https?:", text, re.I)
    assert not re.search(r"@import|url\(\s*[\"']?\s*(https?:)?//", text, re.I)
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", text, re.I)
    assert "window.circuitgraph" in text and "createElementNS" in text  # drawn by the page's own script
    assert "faithfulness" in text and "0.912" in text and "eap-ig" in text
    # the same page twice is byte-identical (no jitter, no random ids, no timestamps)
    assert write_html(c, tmp_path / "c2.html").read_text(encoding="utf-8") == text


def test_html_accepts_graph_with_mask_and_escapes(tmp_path):
    c = _circuit()
    g = c.graph
    path = write_html(g, tmp_path / "g.partial", mask=c.mask, title="<b>x</b> & </script>")
    assert path == tmp_path / "g.partial"  # written exactly where asked (callers may rename it)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    assert path.stat().st_mode & 0o044  # ordinary permissions, not mkstemp's 0600
    text = path.read_text(encoding="utf-8")
    assert "&lt;b&gt;x&lt;/b&gt; &amp; &lt;/script&gt;" in text
    assert text.count("</script>") == 2 and "<!--" not in text  # nothing ends or escapes a script early
    assert page_data(path)["circuit"]["n_edges"] == c.n_edges
    with pytest.raises(ValueError, match="shape"):
        write_html(g, tmp_path / "bad.html", mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError):
        write_html("not a circuit", tmp_path / "bad.html")
    with pytest.raises(TypeError, match="node_info"):
        write_html(c, tmp_path / "bad.html", node_info=["x"])


# ----------------------------------------------------------------------------- pruning stops
def test_stops_are_the_influence_pruned_circuits(tmp_path):
    c = _circuit(n_edges=150, seed=3, n_layers=4, n_heads=6, d_model=24)
    data = page_data(write_html(c, tmp_path / "c.html"))
    stops = data["stops"]
    assert [s["node_threshold"] for s in stops] == [*STOPS, None]
    names = set(c.graph.edge_names(c.mask))
    for s in stops[:-1]:
        want = set(c.graph.edge_names(prune_by_influence(c.graph, c.mask, s["node_threshold"], 0.98)))
        assert stop_edges(data, s) == want
        drawn = {data["nodes"][i]["id"] for i, *_ in s["nodes"]}
        touched = {e.split("->")[0] for e in want} | {dst_node(e.split("->")[1]) for e in want}
        assert drawn == touched | {"input", "logits"}  # nodes are hidden with their edges
    assert stop_edges(data, stops[-1]) == names and stops[-1]["label"] == "whole circuit"
    assert len(stop_edges(data, stops[0])) < len(stop_edges(data, stops[3])) < len(names)
    assert stops[data["default_stop"]]["node_threshold"] == 0.8  # more than 25 nodes: opens pruned
    # a small circuit opens whole; a custom threshold becomes a stop and the default
    small = page_data(write_html(_circuit(n_edges=6), tmp_path / "s.html"))
    assert small["stops"][small["default_stop"]]["label"] == "whole circuit"
    custom = page_data(write_html(c, tmp_path / "t.html", node_threshold=0.65, edge_threshold=0.9))
    s = custom["stops"][custom["default_stop"]]
    assert s["node_threshold"] == 0.65 and s["edge_threshold"] == 0.9
    assert stop_edges(custom, s) == set(c.graph.edge_names(prune_by_influence(c.graph, c.mask, 0.65, 0.9)))


# ----------------------------------------------------------------------------- helps / hurts
@pytest.mark.parametrize(
    "metric,lower",
    [("logit_diff", False), ("prob_diff", False), ("kl", True), ("cross_entropy", True), ("l2", True)],
)
def test_helps_and_hurts_do_not_depend_on_the_metric(metric, lower):
    c = _circuit(metric=metric)
    name, lower_is_better, known = metric_direction(c, c.graph)
    assert (name, lower_is_better, known) == (metric, lower, True)
    # removing a helping edge makes the task worse: lower for higher-is-better, higher for losses
    worse = 1.0 if lower else -1.0
    assert effect_words(worse, metric, lower)[0] == "helps"
    assert effect_words(-worse, metric, lower)[0] == "hurts"
    word, text = effect_words(worse, metric, lower)
    assert text == f"ablating it {'raises' if lower else 'lowers'} {metric} by 1"
    assert effect_words(0.0, metric, lower)[0] == "no effect"


def test_the_page_carries_the_metric_direction(tmp_path):
    for metric, lower in (("logit_diff", False), ("kl", True)):
        info = page_data(write_html(_circuit(metric=metric), tmp_path / f"{metric}.html"))["info"]
        assert info["metric"] == metric and info["lower_is_better"] is lower and info["metric_known"]
    c = _circuit()
    c.metadata["attribution"] = {"method": "mine", "metric": "my_metric"}
    info = page_data(write_html(c, tmp_path / "custom.html"))["info"]
    assert info["metric"] == "my_metric" and info["lower_is_better"] is False and not info["metric_known"]
    assert HELPS != HURTS


# ----------------------------------------------------------------------------- layout
def test_no_edge_is_drawn_through_a_node_it_does_not_touch(tmp_path):
    """The layout routes edges through the gaps of the rows they cross; checked on the drawn
    curves of every stop of several circuits (the browser test checks the rendered paths)."""
    for c in (
        _circuit(n_edges=150, seed=3, n_layers=4, n_heads=6, d_model=24),
        _circuit(n_edges=60, seed=1, n_layers=3),
        _circuit(n_edges=40, seed=2, n_layers=6, n_heads=2, d_model=8),
    ):
        data = page_data(write_html(c, tmp_path / "c.html"))
        graph = c.graph
        w = data["box"][0]
        for s in data["stops"]:
            ids = [data["nodes"][i]["id"] for i, *_ in s["nodes"]]
            edges = [
                (
                    data["nodes"][data["edges"][k][0]]["id"],
                    data["nodes"][data["edges"][k][1]]["id"],
                    data["edges"][k][2],
                )
                for k, *_ in s["edges"]
            ]
            lay = layout(
                graph,
                ids,
                edges,
                w,
                order={data["nodes"][i]["id"]: data["nodes"][i]["influence"] for i, *_ in s["nodes"]},
            )
            assert [lay.d(k) for k in range(len(edges))] == [d for _, d, _ in s["edges"]]  # the page draws this layout
            assert crossings(lay, edges) == []


def test_empty_and_show_all_pages(tmp_path):
    c = _circuit()
    c.mask = torch.zeros_like(c.mask)
    data = page_data(write_html(c, tmp_path / "empty.html"))
    for s in data["stops"]:
        assert s["edges"] == [] and sorted(data["nodes"][i]["id"] for i, *_ in s["nodes"]) == ["input", "logits"]
    c = _circuit(n_edges=20)
    data = page_data(write_html(c, tmp_path / "all.html", show_all_nodes=True))
    whole = data["stops"][-1]
    assert len(whole["nodes"]) == c.graph.n_src + 1  # every node of the model, the logits included
    ids = [data["nodes"][i]["id"] for i, *_ in whole["nodes"]]
    edges = [
        tuple(data["nodes"][data["edges"][k][j]]["id"] for j in (0, 1)) + (data["edges"][k][2],)
        for k, *_ in whole["edges"]
    ]
    lay = layout(c.graph, ids, edges, data["box"][0], order={n["id"]: n["influence"] for n in data["nodes"]})
    assert crossings(lay, edges) == []


def test_a_straight_edge_would_cross_and_the_routed_one_does_not():
    """input → a1.h1 passes layer 0's row where a0.h1 sits right between them: a straight line
    (what vis-network drew) goes through a0.h1, the routed path goes around it."""
    graph = Graph.from_model(tiny_model(n_heads=3))
    nodes = ["input", "a0.h1", "a1.h1", "logits"]
    edges = [("input", "a1.h1", "v"), ("input", "a0.h1", "v"), ("a0.h1", "a1.h1", "k"), ("a1.h1", "logits", "")]
    lay = layout(graph, nodes, edges, box_width(nodes))
    (xi, yi), (xa, ya), (xh, yh) = lay.centres["input"], lay.centres["a0.h1"], lay.centres["a1.h1"]
    assert xi == xa == xh and yh < ya < yi  # stacked: a straight line would cut through a0.h1
    straight = [(xi, yi - NODE_H / 2), (xh, yh + NODE_H / 2)]
    hw, hh = lay.w / 2, lay.h / 2
    assert any(abs(x - xa) < hw and abs(y - ya) < hh for x, y in sample_path(straight))
    assert crossings(lay, edges) == []
    passing = sample_path(lay.paths[0])
    assert min(abs(x - xa) for x, y in passing if abs(y - ya) < hh) >= hw + 4  # it keeps clear


def test_rows_are_layers_and_long_rows_wrap():
    """Rows go up with residual time (input at the bottom, logits at the top); an SAE site with
    hundreds of feature nodes wraps onto several bands between its neighbours, most influential
    first."""
    g = Graph(
        Architecture(n_layers=2, n_heads=4, has_mlp=False, d_model=64),
        sites=[make_site("blocks.1.hook_resid_pre", 512, range(300))],
    )
    feats = [f"resid_pre1.f{i}" for i in range(0, 300, 2)]
    nodes = ["input", "a0.h1", "a1.h3", "logits"] + feats
    order = {n: float(i) for i, n in enumerate(feats)}  # the last is the most influential
    lay = layout(g, nodes, [], box_width(nodes), order=order)
    y = {n: lay.centres[n][1] for n in nodes}
    assert y["logits"] < y["a1.h3"] < min(y[f] for f in feats) <= max(y[f] for f in feats) < y["a0.h1"] < y["input"]
    bands = sorted({y[f] for f in feats})
    assert len(bands) == -(-len(feats) // max(sum(1 for f in feats if y[f] == b) for b in bands))
    assert all(sum(1 for f in feats if y[f] == b) <= WRAP for b in bands)
    assert all(b2 - b1 == NODE_H + GAP_Y for b1, b2 in zip(bands, bands[1:]))
    first = sorted((lay.centres[f][0], f) for f in feats if y[f] == bands[0])
    assert first[0][1] == feats[-1] or feats[-1] in {f for _, f in first}  # most influential on the first band
    # heads keep their slot: a0.h1 is left of a1.h3 (head 1 vs head 3), whichever else is drawn
    assert lay.centres["a0.h1"][0] < lay.centres["a1.h3"][0]


def test_positions_are_columns_with_their_tokens():
    model = tiny_model()
    gp = PositionalGraph.from_model(model, positions=5)
    nodes = ["input@1", "input@3", "a0.h2@3", "a1.h0@3", "a1.h2@3", "m1@4", "logits@4"]
    edges = [("input@3", "a1.h0@3", "q"), ("input@1", "a0.h2@3", "k"), ("a1.h2@3", "m1@4", "")]
    tokens = ["The", " cat", " sat", " on", " a-very-long-token"]
    lay = layout(gp, nodes, edges[:1], box_width(nodes), tokens=tokens)
    x = {n: lay.centres[n][0] for n in nodes}
    assert x["input@1"] < x["input@3"] < x["m1@4"] == x["logits@4"]
    assert x["input@3"] == x["a0.h2@3"]  # one column per position
    assert x["a1.h0@3"] < x["a1.h2@3"] and x["input@3"] == (x["a1.h0@3"] + x["a1.h2@3"]) / 2
    assert [t for t, *_ in lay.tokens] == ["The", " cat", " sat", " on", " a-very-l…"]
    assert [p for _, p, *_ in lay.tokens] == ["0", "1", "2", "3", "4"]
    assert [tx for *_, tx, _ in lay.tokens] == sorted(tx for *_, tx, _ in lay.tokens)
    assert crossings(lay, edges[:1]) == []
    with pytest.raises(KeyError):
        parse_node("a1.h0.x@3")


def test_neuron_and_feature_nodes_get_their_kind(tmp_path):
    model = tiny_model(d_mlp=64)
    graph = Graph.from_model(model, neurons={0: [2, 5, 7], 1: None})
    g = torch.Generator().manual_seed(0)
    graph.scores = torch.randn(graph.valid.shape, generator=g).masked_fill(~graph.valid, 0.0)
    mask = top_n(graph, 40)
    data = page_data(write_html(graph, tmp_path / "n.html", mask=mask))
    kinds = {n["id"]: n["kind"] for n in data["nodes"]}
    assert {kinds[n] for n in kinds if ".n" in n} == {"neuron"}
    assert data["kinds"]["neuron"]["label"] == "MLP neuron"
    whole = data["stops"][-1]
    assert len(whole["edges"]) == int(mask.sum())


def test_supernodes_are_validated_and_carried(tmp_path):
    c = _circuit()
    node = sorted(c.nodes() - {"input", "logits"})[0]
    c.supernodes = [{"name": "mine", "nodes": [node, "input"]}]
    data = page_data(write_html(c, tmp_path / "g.html"))
    assert data["supernodes"] == [{"name": "mine", "nodes": [node, "input"]}]
    assert data["circuit"]["metadata"]["supernodes"] == data["supernodes"]
