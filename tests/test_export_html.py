"""The HTML circuit viewer: self-contained (no network references), and, in headless Chromium,
rendering exactly the circuit's nodes and edges. Screenshots go to outputs/test-artifacts/.

The browser is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``): we fix
the viewport, open the file, wait until the page reports that vis-network has drawn, read the
counts from ``window.circuitgraph`` and the vis DataSets, and capture a screenshot. (Plain
``--screenshot``/``--dump-dom`` lay the page out in a smaller window than they capture, which
stretches the canvas.)
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import tiny_model, tiny_task

from circuitgraph import Graph, prune, top_n
from circuitgraph.circuit import build_circuit
from circuitgraph.export import write_html

ARTIFACTS = Path(__file__).resolve().parent.parent / "outputs" / "test-artifacts"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _circuit(n_edges: int = 16, seed: int = 0, **model_overrides):
    """A circuit on a tiny model, from fixed pseudo-random scores (so the test depends on the
    graph and the viewer only, not on an attribution method)."""
    model = tiny_model(**model_overrides)
    task = tiny_task(model)
    graph = Graph.from_model(model)
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(graph.valid.shape, generator=g) * torch.rand(graph.valid.shape, generator=g) ** 2
    graph.scores = raw.masked_fill(~graph.valid, 0.0)
    mask = top_n(graph, n_edges)
    c = build_circuit(graph, mask, task, selection={"kind": "top_n", "top_n": n_edges})
    c.metadata["attribution"] = {"method": "eap-ig", "task": task.name}
    c.faithfulness = 0.912
    return c


def _expected_nodes(c, show_all: bool) -> int:
    if show_all:
        return c.graph.n_src + 1
    return len(c.nodes() | {"input", "logits"})


# ----------------------------------------------------------------------------- offline checks
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
    assert "vis.Network" in text and "window.circuitgraph" in text
    # the inlined vis-network library is really there
    assert "vis-network" in text and len(text) > 200_000
    # title and metadata are in the header
    assert "faithfulness" in text and "0.912" in text and "eap-ig" in text


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
    with pytest.raises(ValueError, match="shape"):
        write_html(g, tmp_path / "bad.html", mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError):
        write_html("not a circuit", tmp_path / "bad.html")


def test_long_columns_wrap_into_sub_columns():
    """An SAE site with hundreds of feature nodes is drawn as a grid between its neighbours, not
    as one column taller than the screen."""
    from circuitgraph.export.html import WRAP_ROWS, _layout
    from circuitgraph.graph import Architecture
    from circuitgraph.graph.sites import make_site

    g = Graph(
        Architecture(n_layers=2, n_heads=4, has_mlp=False, d_model=64),
        sites=[make_site("blocks.1.hook_resid_pre", 512, range(300))],
    )
    shown = ["input", "a0.h1", "a1.h3", "logits"] + [f"resid_pre1.f{i}" for i in range(0, 300, 2)]
    pos = _layout(g, shown)
    feats = [pos[n] for n in shown if ".f" in n]
    xs, ys = {x for x, _ in feats}, {y for _, y in feats}
    assert len(xs) == -(-150 // WRAP_ROWS) and len(ys) <= WRAP_ROWS
    assert pos["a0.h1"][0] < min(xs) and max(xs) < pos["a1.h3"][0] < pos["logits"][0]


def test_html_positions_are_fixed_and_layered(tmp_path):
    c = _circuit()
    path = write_html(c, tmp_path / "c.html", show_all_nodes=True)
    text, data = path.read_text(encoding="utf-8"), _page_data(path)
    pos = {n["id"]: (n["x"], n["y"]) for n in data["nodes"]}
    assert data["options"]["physics"]["enabled"] is False
    assert (
        pos["input"][0]
        < pos["a0.h0"][0]
        == pos["a0.h2"][0]
        < pos["m0"][0]
        < pos["a1.h0"][0]
        < pos["m1"][0]
        < pos["logits"][0]
    )
    assert pos["a0.h0"][1] < pos["a0.h1"][1] < pos["a0.h2"][1]
    # the same page twice is byte-identical (no jitter, no random ids)
    again = write_html(c, tmp_path / "c2.html", show_all_nodes=True).read_text(encoding="utf-8")
    assert again == text
    # edges: colour by sign, q/k/v labels, rank by |score|
    ranks = sorted(e["rank"] for e in data["edges"])
    assert ranks == list(range(1, c.n_edges + 1))
    for e in data["edges"]:
        assert e["color"]["color"] == ("#1f6fd1" if e["score"] > 0 else "#d62728")
        dst = e["id"].split("->")[1]
        assert e.get("label", "") == (dst[-1] if dst[-2:] in (".q", ".k", ".v") else "")


def _page_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    return json.loads(re.search(r"var DATA = (\{.*?\});\n", text, re.S).group(1).replace("<\\/", "</"))


def test_html_neuron_nodes(tmp_path):
    """MLPs split into neurons: neuron nodes get their own colour and share their MLP's column;
    a long neuron column is laid out with the circuit's neurons only."""
    model = tiny_model(d_mlp=64)
    graph = Graph.from_model(model, neurons={0: [2, 5, 7], 1: None})
    g = torch.Generator().manual_seed(0)
    graph.scores = torch.randn(graph.valid.shape, generator=g).masked_fill(~graph.valid, 0.0)
    mask = top_n(graph, 40)
    data = _page_data(write_html(graph, tmp_path / "n.html", mask=mask))
    nodes = {n["id"]: n for n in data["nodes"]}
    assert len(data["edges"]) == 40
    neurons = [n for n in nodes if ".n" in n]
    assert neurons and all(nodes[n]["kind"] == "neuron" for n in neurons)
    assert {nodes[n]["color"]["background"] for n in neurons} == {"#c9a7e8"}
    layer1 = sorted((nodes[n]["y"], n) for n in nodes if n.startswith("m1."))
    assert len({nodes[n]["x"] for _, n in layer1}) == 1  # one column
    ys = [y for y, _ in layer1]
    assert ys == [round((r - (len(ys) - 1) / 2) * 72) for r in range(len(ys))]  # compact, no gaps
    text = (tmp_path / "n.html").read_text(encoding="utf-8")
    assert "MLP neuron" in text  # legend


# ----------------------------------------------------------------------------- the browser
class _DevTools:
    """The smallest DevTools-protocol client: JSON messages, NUL-separated, over fds 3 and 4."""

    def __init__(self, binary: str, profile: Path):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4.
        os.set_inheritable(to_chrome_r, True)
        os.set_inheritable(from_chrome_w, True)

        def _fds():  # in the child: move the pipe ends out of the way, then onto fds 3 and 4
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_fds,
            close_fds=False,
            start_new_session=True,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise TimeoutError(f"no reply to {method} from chromium")
            ready, _, _ = select.select([self._r], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += chunk

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # only the process we started
            self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass


_WAIT_AND_COUNT = """
new Promise(function (resolve, reject) {
  var t0 = Date.now();
  (function poll() {
    var s = document.getElementById("cg-status");
    if (s && s.getAttribute("data-drawn") === "1" && window.circuitgraph) {
      var cg = window.circuitgraph, body = cg.network.body;
      resolve(JSON.stringify({
        nodes: cg.nodes, edges: cg.edges,
        dataset_nodes: cg.nodesData.length, dataset_edges: cg.edgesData.length,
        drawn_nodes: body.nodeIndices.length, drawn_edges: body.edgeIndices.length,
        status: {nodes: +s.getAttribute("data-rendered-nodes"), edges: +s.getAttribute("data-rendered-edges")},
        canvas: document.querySelector("#cg-network canvas") ? document.querySelector("#cg-network canvas").width : 0,
        ids: cg.edgesData.getIds()
      }));
    } else if (Date.now() - t0 > 20000) {
      reject(new Error("the viewer never reported drawing"));
    } else { setTimeout(poll, 50); }
  })();
})
"""


@contextmanager
def _page(html_path: Path, profile: Path):
    """Open ``html_path`` in headless Chromium at 1200×800 and wait until the viewer has drawn;
    yields ``(devtools, session, counts)``."""
    binary = _chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the browser test needs it")
    dt = _DevTools(binary, profile)
    try:
        target = dt.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = dt.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        dt.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1200, "height": 800, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        dt.call("Page.enable", session=session)
        dt.call("Page.navigate", {"url": html_path.resolve().as_uri()}, session)
        counts = _evaluate(dt, session, _WAIT_AND_COUNT, timeout=40)
        time.sleep(0.3)  # let the fit-to-view redraw land
        yield dt, session, counts
    finally:
        dt.close()


def _evaluate(dt: _DevTools, session: str, expression: str, timeout: float = 30):
    res = dt.call(
        "Runtime.evaluate",
        {"expression": expression, "awaitPromise": True, "returnByValue": True},
        session,
        timeout=timeout,
    )
    if "exceptionDetails" in res:
        raise AssertionError(f"page script failed: {res['exceptionDetails']}")
    return json.loads(res["result"]["value"])


def _screenshot(dt: _DevTools, session: str, png_path: Path) -> None:
    shot = dt.call("Page.captureScreenshot", {"format": "png"}, session)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.write_bytes(base64.b64decode(shot["data"]))


def _hover(dt: _DevTools, session: str, node: str) -> dict:
    """Move the mouse onto ``node`` and return the tooltip's text and visibility."""
    xy = _evaluate(
        dt,
        session,
        f"""(function () {{
        var net = window.circuitgraph.network, p = net.canvasToDOM(net.getPositions([{node!r}])[{node!r}]);
        var r = document.getElementById("cg-network").getBoundingClientRect();
        return JSON.stringify([r.left + p.x, r.top + p.y]);
    }})()""",
    )
    for dx in (8, 0):  # two moves, so that vis sees the pointer arrive
        dt.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": xy[0] + dx, "y": xy[1]}, session)
        time.sleep(0.1)
    return _evaluate(
        dt,
        session,
        """new Promise(function (resolve) {
        var t0 = Date.now();
        (function poll() {
            var t = document.querySelector("div.vis-tooltip");
            var shown = t && getComputedStyle(t).visibility === "visible";
            if (shown || Date.now() - t0 > 5000) {
                resolve(JSON.stringify(t ? {text: t.innerText, visible: getComputedStyle(t).visibility} : null));
            } else { setTimeout(poll, 50); }
        })();
    })""",
    )


@pytest.mark.parametrize("show_all", [False, True], ids=["circuit-nodes", "all-nodes"])
def test_browser_renders_the_circuit(tmp_path, show_all):
    c = _circuit(n_edges=6 if show_all else 16)
    html_path = write_html(c, tmp_path / "circuit.html", show_all_nodes=show_all)
    name = "viewer_all_nodes" if show_all else "viewer_circuit"
    # raise the threshold to the 3rd-largest |score|: exactly 3 edges must stay visible
    third = sorted((abs(s) for _, _, s in c.edges()), reverse=True)[2]
    with _page(html_path, tmp_path / "profile") as (dt, session, counts):
        _screenshot(dt, session, ARTIFACTS / f"{name}.png")
        n_nodes = _expected_nodes(c, show_all)
        assert (
            counts["nodes"] == counts["dataset_nodes"] == counts["drawn_nodes"] == counts["status"]["nodes"] == n_nodes
        )
        assert (
            counts["edges"]
            == counts["dataset_edges"]
            == counts["drawn_edges"]
            == counts["status"]["edges"]
            == c.n_edges
        )
        assert sorted(counts["ids"]) == sorted(c.graph.edge_names(c.mask))
        assert counts["canvas"] >= 900  # the canvas really has the page's width

        # hovering a node shows its tooltip with its circuit rank
        node = max(c.nodes() - {"input", "logits"})
        tip = _hover(dt, session, node)
        assert tip and tip["visible"] == "visible" and tip["text"].startswith(node) and "rank" in tip["text"]
        if not show_all:
            _screenshot(dt, session, ARTIFACTS / "viewer_tooltip.png")

        filtered = _evaluate(
            dt,
            session,
            f"""(function () {{
            window.circuitgraph.setThreshold({third!r});
            return JSON.stringify({{visible: window.circuitgraph.edgesView.length,
                                   drawn: window.circuitgraph.network.body.edgeIndices.length,
                                   label: document.getElementById("cg-shown").textContent}});
        }})()""",
        )
        assert filtered["visible"] == filtered["drawn"] == 3
        assert filtered["label"] == f"showing 3 of {c.n_edges} edges"


def test_browser_renders_a_bigger_pruned_circuit(tmp_path):
    c = _circuit(n_edges=150, seed=3, n_layers=4, n_heads=6, d_model=24)
    c.mask = prune(c.graph, c.mask)
    assert 0 < c.n_edges < 150
    with _page(write_html(c, tmp_path / "big.html"), tmp_path / "profile") as (dt, session, counts):
        _screenshot(dt, session, ARTIFACTS / "viewer_4layer_pruned.png")
    assert counts["drawn_nodes"] == _expected_nodes(c, False)
    assert counts["drawn_edges"] == counts["edges"] == c.n_edges


def test_browser_renders_an_empty_circuit(tmp_path):
    c = _circuit()
    c.mask = torch.zeros_like(c.mask)
    with _page(write_html(c, tmp_path / "empty.html"), tmp_path / "profile") as (dt, session, counts):
        _screenshot(dt, session, ARTIFACTS / "viewer_empty.png")
    assert counts["drawn_nodes"] == 2 and counts["drawn_edges"] == 0
