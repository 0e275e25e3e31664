"""SAE feature labels (top-activating tokens on the task's clean prompts) and their display in
the HTML viewer: the labels match an independent computation from the captured activations,
padding is never a top token, the labels carry their context as tokens, and the viewer page carries
them in its data (box labels and the node panel)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

import circuitgraph as cg  # noqa: E402
from circuitgraph import top_n, zoo  # noqa: E402
from circuitgraph.engine import raw_sources  # noqa: E402
from circuitgraph.export import write_html  # noqa: E402
from circuitgraph.graph import Graph, node_kind  # noqa: E402
from circuitgraph.graph.sites import site_node  # noqa: E402
from circuitgraph.sae import zoo_saes  # noqa: E402
from circuitgraph.sae.labels import feature_labels  # noqa: E402

TOP = 4


@pytest.fixture(scope="module")
def setup():
    entry = zoo.load("induction", device="cpu")
    model = entry.model
    task = entry.task("induction").select(slice(0, 12))
    graph = cg.feature_graph(model, zoo_saes("induction"), task)
    return model, graph, task


@pytest.fixture(scope="module")
def padded(setup):
    """The same prompts, but each example's last 8-20 positions marked as padding. The padded
    positions keep their (repeated, induction-rich) tokens, so their activations are real and
    often the largest: a label that looked at them would be wrong."""
    model, graph, task = setup
    B, P = task.clean.shape
    lengths = P - 8 - (torch.arange(B) % 13)
    mask = (torch.arange(P)[None, :] < lengths[:, None]).long()
    t = cg.Task(
        clean=task.clean,
        corrupted=task.corrupted,
        answer=task.answer,
        wrong=task.wrong,
        metric=task.metric,
        name="padded",
        attention_mask=mask,
    )
    return model, graph, t


def _feature_nodes(graph: Graph) -> list[str]:
    return [n for n in graph.src_names if node_kind(n) == "feature"]


def _real_acts(raw: dict, task, name: str) -> torch.Tensor:
    """Independently: the feature's activations at the real (unpadded) tokens, flattened."""
    site_name, f = site_node(name)
    acts = raw[f"acts:{site_name}"][..., int(f[1:])]  # [B, P]
    return acts[task.attention_mask.bool()] if task.attention_mask is not None else acts.flatten()


def test_labels_cover_every_feature_and_match_the_activations(setup):
    model, graph, task = setup
    labels = feature_labels(model, graph, task, top=TOP)
    features = _feature_nodes(graph)
    assert features and {n for n, v in labels.items() if v["kind"] == "feature"} == set(features)
    # rest / err nodes get a description, nothing else is labelled
    for n, v in labels.items():
        assert n in graph.src_names and v["kind"] == node_kind(n)
        if v["kind"] != "feature":
            assert v["description"] and v["site"] == graph.site(site_node(n)[0]).hook_name

    raw = raw_sources(model, graph, task, task.clean)
    n_tokens = task.clean.numel()
    checked = 0
    for n in features:
        site_name, f = site_node(n)
        site = graph.site(site_name)
        lab = labels[n]
        assert lab["site"] == site.hook_name and lab["feature"] == int(f[1:])
        acts = raw[f"acts:{site_name}"][..., lab["feature"]]  # [B, P]
        tops = lab["top_tokens"]
        got = torch.tensor([t["activation"] for t in tops])
        assert torch.all(got[:-1] >= got[1:])  # best first
        want = acts.flatten().sort(descending=True).values
        want = want[want > 0][:TOP]
        assert len(tops) == len(want) <= TOP
        torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)
        assert lab["max_activation"] == pytest.approx(float(acts.max().clamp(min=0)), rel=1e-5, abs=1e-6)
        assert lab["frequency"] == pytest.approx(float((acts > 0).sum()) / n_tokens)
        for t in tops:  # each entry points at a token where the feature has that activation
            e, p = t["example"], t["position"]
            assert float(acts[e, p]) == pytest.approx(t["activation"], rel=1e-5, abs=1e-6)
            row = task.clean[e].tolist()
            assert t["token"] == str(row[p])
            prev = " ".join(str(x) for x in row[max(p - 3, 0) : p])
            assert t["context"] == ("… " if p > 3 else "") + (prev + " " if prev else "") + f"[{row[p]}]"
        checked += bool(tops)
    assert checked > len(features) // 2  # most features fire on the clean prompts


def test_batching_and_decode(setup):
    model, graph, task = setup
    whole = feature_labels(model, graph, task, top=TOP)
    chunked = feature_labels(model, graph, task, top=TOP, batch_size=5, decode=lambda i: f"t{i}")
    assert whole.keys() == chunked.keys()
    for n, a in whole.items():
        b = chunked[n]
        if a["kind"] != "feature":
            assert a == b
            continue
        assert [t["activation"] for t in a["top_tokens"]] == pytest.approx(
            [t["activation"] for t in b["top_tokens"]], rel=1e-5
        )
        for x in b["top_tokens"]:
            assert x["token"] == f"t{int(task.clean[x['example'], x['position']])}"
            assert x["context"].endswith(f"[{x['token']}]")
    with pytest.raises(ValueError, match="top"):
        feature_labels(model, graph, task, top=0)


def test_padding_is_ignored(setup, padded):
    model, graph, task = padded
    mask = task.attention_mask.bool()
    labels = feature_labels(model, graph, task, top=TOP, batch_size=5)
    raw = raw_sources(model, graph, task, task.clean)
    unpadded = raw_sources(model, graph, setup[2], task.clean)  # what counting the padding would see
    mattered = 0
    for n in _feature_nodes(graph):
        tops = labels[n]["top_tokens"]
        assert all(mask[t["example"], t["position"]] for t in tops)
        real = _real_acts(raw, task, n)
        want = real.sort(descending=True).values
        want = want[want > 0][:TOP]
        torch.testing.assert_close(torch.tensor([t["activation"] for t in tops]), want.float(), rtol=1e-5, atol=1e-6)
        assert labels[n]["frequency"] == pytest.approx(float((real > 0).sum()) / int(mask.sum()))
        mattered += bool(_real_acts(unpadded, setup[2], n).max() > real.max() + 1e-4)
    assert mattered > 0  # the padded positions did hold larger activations


def _page_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    return json.loads(re.search(r"var DATA = (\{.*?\});\n", text, re.S).group(1).replace("<\\/", "</"))


def test_html_shows_feature_labels(setup, tmp_path):
    model, graph, task = setup
    cg.attribute(model, graph, task, method="eap-ig", progress=False)
    labels = feature_labels(model, graph, task, top=TOP)
    mask = top_n(graph, 40)
    path = write_html(graph, tmp_path / "sae.html", mask=mask, node_info=labels, show_all_nodes=True)
    text = path.read_text(encoding="utf-8")
    # self-contained: no external scripts, stylesheets or URLs
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I)
    assert not re.search(r"<link[^>]*\bhref\s*=", text, re.I)
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", text, re.I)
    data = _page_data(path)
    # the legend (built from the kinds drawn) names the SAE node kinds
    drawn_kinds = {data["nodes"][i]["kind"] for i, *_ in data["stops"][data["default_stop"]]["nodes"]}
    assert {"feature", "sae_rest", "sae_error"} <= drawn_kinds
    assert [data["kinds"][k]["label"] for k in ("feature", "sae_rest", "sae_error")] == [
        "SAE feature",
        "SAE rest (other features)",
        "SAE error",
    ]

    nodes = {n["id"]: n for n in data["nodes"]}
    features = _feature_nodes(graph)
    assert set(features) <= set(nodes)
    shown_tokens = 0
    for n in features:
        node, lab = nodes[n], labels[n]
        assert node["kind"] == "feature"
        assert node["info"]["site"] == lab["site"] and node["info"]["feature"] == lab["feature"]
        tops = lab["top_tokens"]
        # the panel's contexts: the decoded window with the activating token's index
        assert [(t["tokens"], t["at"]) for t in node["info"]["topTokens"]] == [
            (t["context_tokens"], t["context_index"]) for t in tops
        ]
        assert [t["activation"] for t in node["info"]["topTokens"]] == [t["activation"] for t in tops]
        if tops:
            distinct = list(dict.fromkeys(t["token"] for t in tops))[:2]  # the top two distinct tokens
            assert node["label"] == n and node["sub"] == " ".join(repr(tok) for tok in distinct)
            shown_tokens += 1
        else:
            assert node["sub"] == ""
    assert shown_tokens
    for n, node in nodes.items():
        if node_kind(n) in ("sae_rest", "sae_error"):
            assert node["info"]["description"] == labels[n]["description"]


def test_labels_carry_the_context_as_tokens(setup):
    model, graph, task = setup
    labels = feature_labels(model, graph, task, top=TOP, context=2, after=2)
    checked = 0
    for n in _feature_nodes(graph):
        for t in labels[n]["top_tokens"]:
            e, p, at = t["example"], t["position"], t["context_index"]
            row = [str(x) for x in task.clean[e].tolist()]
            assert t["context_tokens"][at] == t["token"] == row[p]
            assert t["context_tokens"] == row[p - at : p + len(t["context_tokens"]) - at]
            assert at == min(p, 2) and len(t["context_tokens"]) - at - 1 == min(2, len(row) - p - 1)
            checked += 1
    assert checked > 10


def test_html_without_node_info_is_unchanged(setup, tmp_path):
    model, graph, task = setup
    g = torch.Generator().manual_seed(0)
    graph.scores = torch.randn(graph.valid.shape, generator=g).masked_fill(~graph.valid, 0.0)
    mask = top_n(graph, 30)
    plain = write_html(graph, tmp_path / "a.html", mask=mask)
    empty = write_html(graph, tmp_path / "b.html", mask=mask, node_info={})
    assert plain.read_text(encoding="utf-8") == empty.read_text(encoding="utf-8")
    for node in _page_data(plain)["nodes"]:
        assert node["label"] == node["id"] and "info" not in node
    # entries for nodes that are not drawn are ignored; a non-dict is refused
    write_html(graph, tmp_path / "c.html", mask=mask, node_info={"no.such.node": {"feature": 1}})
    with pytest.raises(TypeError, match="node_info"):
        write_html(graph, tmp_path / "d.html", mask=mask, node_info=["x"])
