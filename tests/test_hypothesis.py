"""Causal-scrubbing hypotheses: construction, validation, files (round trips, refusal of unknown
features and other models' files) and the HTML view."""

from __future__ import annotations

import json
import string

import pytest
import torch
from conftest import tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circuitgraph.hypothesis import (
    SCHEMA,
    Correspondence,
    Feature,
    FeatureData,
    Hypothesis,
    HypothesisError,
    HypothesisFileError,
    Interpretation,
    UnknownFeatureError,
    answer_label,
    constant,
    feature,
    next_after_previous_occurrence,
    register_feature,
    seq_length,
    token_at,
    unregister_feature,
    whole_input,
)
from circuitgraph.hypothesis.render import layout


def induction_like(model=None, prev="a0.h1", ind="a1.h2") -> Hypothesis:
    prev_n = Interpretation("prev_token", token_at(-1), [Interpretation("emb_prev", token_at(0))])
    ind_n = Interpretation(
        "induction",
        next_after_previous_occurrence(),
        [Interpretation("cur", token_at(0)), prev_n, Interpretation("copied", token_at(0))],
    )
    corr = Correspondence(
        {
            "output": "logits",
            "induction": ind,
            "prev_token": prev,
            "emb_prev": "input",
            "cur": "input",
            "copied": "input",
        },
        restrict={"cur": "q", "prev_token": "k", "copied": "v", "emb_prev": "v"},
    )
    return Hypothesis(Interpretation("output", answer_label(), [ind_n]), corr, model=model, name="induction")


@pytest.fixture(scope="module")
def model2():
    return tiny_model(0)


# ------------------------------------------------------------------------------------ construction


def test_build_and_describe(model2):
    h = induction_like(model2)
    assert list(h.nodes) == ["output", "induction", "cur", "prev_token", "emb_prev", "copied"]
    assert h.covered_edges() == [
        "a0.h1->a1.h2.k",
        "a1.h2->logits",
        "input->a0.h1.v",
        "input->a1.h2.q",
        "input->a1.h2.v",
    ]
    text = h.describe()
    assert "prev_token [a0.h1 via k] token_at(-1)" in text
    assert h.model_info["config_hash"] and h.model_info["n_layers"] == 2


def test_from_circuit_and_full(model2):
    from circuitgraph.circuit import Circuit
    from circuitgraph.graph import Graph

    g = Graph.from_model(model2)
    edges = ["input->a0.h1.v", "a0.h1->a1.h2.k", "input->a1.h2.q", "a1.h2->logits", "input->m0"]  # m0 unused
    h = Hypothesis.from_circuit(Circuit(g, g.mask_from_edges(edges)))
    assert set(h.covered_edges()) == set(edges) - {"input->m0"}
    assert "m0" not in h.nodes and all(n.feature == whole_input() for n in h.nodes.values())
    full = Hypothesis.full(model2)
    assert len(full.covered_edges()) == g.n_edges


def test_feature_equality_and_names():
    assert feature("token_at", k=-1) == token_at(-1)
    assert token_at(-1) != token_at(-1, relative=False)
    assert Feature.coerce(None) == whole_input()
    assert token_at(2).describe() == "token_at(2)"
    assert token_at(2, relative=False).describe() == "token_at(k=2, relative=False)"
    with pytest.raises(HypothesisError, match="integer k"):
        feature("token_at", k="x").check()
    with pytest.raises(HypothesisError, match="takes no arguments"):
        feature("constant", x=1).check()


def test_builtin_feature_values():
    toks = torch.tensor([[0, 5, 6, 7, 5, 6], [0, 1, 2, 3, 4, 9]])
    data = FeatureData(toks, torch.ones_like(toks), answer=torch.tensor([7, 9]))
    nap = next_after_previous_occurrence().evaluate(data)
    assert nap.positional and nap.codes.tolist() == [[-1, -1, -1, -1, 6, 7], [-1] * 6]
    prev = token_at(-1).evaluate(data)
    assert prev.codes[0].tolist() == [-1, 0, 5, 6, 7, 5]
    absolute = token_at(-1, relative=False).evaluate(data)
    assert not absolute.positional and absolute.codes[:, 0].tolist() == [6, 9]
    assert answer_label().evaluate(data).codes[:, 0].tolist() == [7, 9]
    assert constant().evaluate(data).codes.unique().numel() == 1
    assert whole_input().evaluate(data).codes[:, 0].unique().numel() == 2
    padded = FeatureData(toks, torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]]), padded=True)
    assert seq_length().evaluate(padded).codes[:, 0].tolist() == [6, 3]
    assert token_at(0).evaluate(padded).codes[1].tolist() == [0, 1, 2, -1, -1, -1]


def test_python_features():
    @register_feature("test_parity_of_first")
    def parity(ex):
        return ex.tokens[1] % 2

    @register_feature("test_shifted", positional=True)
    def shifted(ex, k=0):
        j = ex.position + k
        return ex.tokens[j] if 0 <= j < len(ex.tokens) else None

    toks = torch.tensor([[0, 5, 6], [0, 2, 6], [0, 3, 1]])
    data = FeatureData(toks, torch.ones_like(toks))
    v = Feature.coerce(parity).evaluate(data)  # auto: constant along positions → sequence-level
    assert not v.positional and v.codes[:, 0].tolist() == [0, 1, 0]
    s = feature("test_shifted", k=1).evaluate(data)
    assert s.positional and s.codes[0, 2] == s.codes[1, 2] == s.codes[2, 2]  # past the end: None
    assert s.codes[0, 1] == s.codes[1, 1] != s.codes[0, 0]  # next token 6 in both; 5 differs
    assert Feature.coerce(parity) == feature("test_parity_of_first")
    anon = Feature.coerce(lambda ex: len(ex.tokens))
    assert anon.anonymous and not anon.evaluate(data).positional
    with pytest.raises(HypothesisError, match="already registered"):
        register_feature("test_parity_of_first")(lambda ex: 0)
    with pytest.raises(HypothesisError, match="built-in"):
        register_feature("token_at")
    unregister_feature("test_shifted")
    unregister_feature("test_parity_of_first")


# ------------------------------------------------------------------------------------ bad input


def test_unknown_model_node(model2):
    h = induction_like(ind="a5.h0")  # unbound: syntax is fine
    with pytest.raises(HypothesisError, match="no node 'a5.h0'.*2 layers"):
        h.bind(model2)
    with pytest.raises(HypothesisError, match="Did you mean 'a1.h2'"):
        induction_like(model2, ind="a1.h7")
    with pytest.raises(HypothesisError, match="not a model node name"):
        Correspondence({"x": "attn1.head2"})
    attn_only = tiny_model(0, attn_only=True)
    with pytest.raises(HypothesisError, match="no node 'm0'.*attention-only"):
        Hypothesis(
            Interpretation("out", None, [Interpretation("mlp")]), {"out": "logits", "mlp": "m0"}, model=attn_only
        )


def test_cycle_in_interpretation():
    a, b, c = Interpretation("a"), Interpretation("b"), Interpretation("c")
    a.add(b)
    b.add(c)
    c.add(b)
    root = Interpretation("out", None, [a])
    with pytest.raises(HypothesisError, match="cycle: b → c → b"):
        Hypothesis(root, {"out": "logits", "a": "a1.h0", "b": "a0.h0", "c": "input"})


@pytest.mark.parametrize(
    "mapping, restrict, message",
    [
        ({"out": "a1.h0", "x": "input"}, None, "root of a hypothesis is the model's output"),
        ({"out": "logits", "x": "logits"}, None, "only the root may map to 'logits'"),
        ({"out": "logits"}, None, r"\['x'\] have no model node"),
        ({"out": "logits", "x": "input", "y": "a0.h0"}, None, "not nodes of the interpretation"),
        ({"out": "logits", "x": "a1.h0.k"}, None, "feeds only that head"),
        ({"out": "logits", "x": "input"}, {"x": "k"}, "single input"),
    ],
)
def test_bad_correspondence(mapping, restrict, message):
    root = Interpretation("out", None, [Interpretation("x")])
    with pytest.raises(HypothesisError, match=message):
        Hypothesis(root, Correspondence(mapping, restrict))


def test_bad_edges():
    def two_level(parent, child):
        return Hypothesis(
            Interpretation("out", None, [Interpretation("p", None, [Interpretation("c")])]),
            {"out": "logits", "p": parent, "c": child},
        )

    with pytest.raises(HypothesisError, match="reads the residual stream before a1.h0 writes"):
        two_level("a1.h1", "a1.h0")
    with pytest.raises(HypothesisError, match="'input' reads nothing"):
        two_level("input", "input")
    assert two_level("m1", "a1.h0").covered_edges() == ["a1.h0->m1", "m1->logits"]
    # the same edge claimed twice under one parent
    root = Interpretation("out", None, [Interpretation("p", None, [Interpretation("c1"), Interpretation("c2")])])
    with pytest.raises(HypothesisError, match="covered twice"):
        Hypothesis(root, {"out": "logits", "p": "a1.h0", "c1": "input", "c2": "input"})
    ok = Hypothesis(
        root,
        Correspondence(
            {"out": "logits", "p": "a1.h0", "c1": "input", "c2": "input"}, restrict={"c1": "qk", "c2": ["v"]}
        ),
    )
    assert "input->a1.h0.v" in ok.covered_edges()
    with pytest.raises(HypothesisError, match="non-empty selection"):
        Correspondence({}, restrict={"c1": "x"})


def test_derived_hypotheses(model2):
    h = induction_like(model2)
    smaller = h.without("prev_token")
    assert "prev_token" not in smaller.nodes and "emb_prev" not in smaller.nodes
    assert "a0.h1->a1.h2.k" not in smaller.covered_edges()
    swapped = h.remap({"prev_token": "a0.h2"})
    assert "a0.h2->a1.h2.k" in swapped.covered_edges() and swapped.model_info == h.model_info
    with pytest.raises(HypothesisError, match="cannot delete the root"):
        h.without("output")


# ------------------------------------------------------------------------------------ files


def test_save_load_roundtrip(tmp_path, model2):
    h = induction_like(model2)
    h.metadata = {"author": "test", "scores": [1.5, 2]}
    path = h.save(tmp_path / "ind.json")
    doc = json.loads(path.read_text())
    assert doc["schema"] == SCHEMA == "circuitgraph.hypothesis/1"
    assert doc["nodes"][3]["feature"] == {"fn": "token_at", "args": {"k": -1, "relative": True}}
    assert {"parent": "induction", "child": "prev_token", "slots": ["k"]} in doc["restrict"]
    back = Hypothesis.load(path, model=model2)
    assert back == h and back.to_dict() == h.to_dict()


def test_load_refuses_other_model(tmp_path, model2):
    path = induction_like(model2).save(tmp_path / "ind.json")
    other = tiny_model(0, n_heads=4)
    with pytest.raises(HypothesisFileError, match="made for .* config hash"):
        Hypothesis.load(path, model=other)
    # an unbound file is checked against the model's nodes instead
    unbound = induction_like(ind="a1.h3").save(tmp_path / "unbound.json")
    with pytest.raises(HypothesisFileError, match="no node 'a1.h3'"):
        Hypothesis.load(unbound, model=model2)
    assert Hypothesis.load(unbound, model=other).model_info["n_heads"] == 4


def test_load_unregistered_feature_is_a_clear_error(tmp_path):
    @register_feature("test_secret_feature")
    def secret(ex):
        return 0

    h = Hypothesis(Interpretation("out", None, [Interpretation("x", secret)]), {"out": "logits", "x": "a0.h0"})
    path = h.save(tmp_path / "h.json")
    unregister_feature("test_secret_feature")
    with pytest.raises(UnknownFeatureError) as err:
        Hypothesis.load(path)
    msg = str(err.value)
    assert "test_secret_feature" in msg and "@register_feature('test_secret_feature')" in msg
    assert "never runs code" in msg and str(path) in msg
    register_feature("test_secret_feature")(secret)
    assert Hypothesis.load(path) == h
    unregister_feature("test_secret_feature")


def test_unsaveable_and_malformed(tmp_path):
    anon = Hypothesis(Interpretation("out", None, [Interpretation("x", lambda ex: 0)]), {"out": "logits", "x": "input"})
    with pytest.raises(HypothesisError, match="register it first"):
        anon.save(tmp_path / "a.json")
    good = induction_like().to_dict()
    bad_cases = [
        ({**good, "schema": "circuitgraph.hypothesis/2"}, "not readable by this version"),
        ({**good, "schema": "circuitgraph.circuit/1"}, "not a circuitgraph hypothesis"),
        ({**good, "root": "nope"}, "root 'nope' is not among the nodes"),
        ({**good, "nodes": good["nodes"] + [good["nodes"][1]]}, "appears twice"),
        (
            {
                **good,
                "nodes": good["nodes"] + [{"name": "orphan", "feature": {"fn": "constant", "args": {}}}],
                "correspondence": {**good["correspondence"], "orphan": "input"},
            },
            "not reachable",
        ),
        (
            {**good, "correspondence": {**good["correspondence"], "induction": 3}},
            r"correspondence.induction: expected a model node name",
        ),
        ({k: v for k, v in good.items() if k != "nodes"}, "missing key"),
    ]
    for doc, message in bad_cases:
        with pytest.raises(HypothesisFileError, match=message):
            Hypothesis.from_dict(doc)
    (tmp_path / "trunc.json").write_text(json.dumps(good)[:50])
    with pytest.raises(HypothesisFileError, match="not valid JSON"):
        Hypothesis.load(tmp_path / "trunc.json")


# ------------------------------------------------------------------------------------ property tests

_names = st.text(alphabet=string.ascii_letters + string.digits + "_-. éλ", min_size=1, max_size=12)
_features = st.one_of(
    st.builds(token_at, st.integers(-5, 5), st.booleans()),
    st.sampled_from([whole_input(), constant(), answer_label(), next_after_previous_occurrence(), seq_length()]),
)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def hypotheses(draw) -> Hypothesis:
    """Random interpretation DAGs (node 0 the root; each later node has ≥ 1 earlier parent), mapped
    onto a 3-layer, 4-head model so that every edge goes backwards in the residual stream."""
    n = draw(st.integers(1, 8))
    names = draw(st.lists(_names, min_size=n, max_size=n, unique=True))
    # model nodes in decreasing residual time; children map strictly earlier
    pool = ["logits"] + [f"a{L}.h{h}" for L in (2, 1) for h in range(4)] + ["input"]
    nodes = [Interpretation(names[0], draw(_features))]
    mapping = {names[0]: "logits"}
    order = sorted(draw(st.lists(st.integers(1, len(pool) - 1), min_size=n - 1, max_size=n - 1)))
    times = [0]
    for i in range(1, n):
        nodes.append(Interpretation(names[i], draw(_features), description=draw(st.text(max_size=6))))
        mapping[names[i]] = pool[order[i - 1]]
        times.append(order[i - 1])
    restrict = {}
    for i in range(1, n):
        earlier = [j for j in range(i) if _earlier(pool[times[j]], pool[times[i]])]
        if not earlier:
            earlier = [0]
        parents = draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=2, unique=True))
        for p in parents:
            nodes[p].add(nodes[i])
            if pool[times[p]].startswith("a") and draw(st.booleans()):
                restrict[(names[p], names[i])] = draw(st.sampled_from(["q", "k", "v", "qk", "kv", "qkv"]))
    # the same (source, slot) may not be claimed twice under one parent: keep the first child
    corr = Correspondence(mapping)
    for p in nodes:
        used = set()
        for c in list(p.children):
            key = (p.name, c.name)
            slots = restrict.get(key, "qkv" if mapping[p.name].startswith("a") else "x")
            claim = {(mapping[c.name], s) for s in slots}
            if claim & used:
                p.children.remove(c)
                continue
            used |= claim
            if key in restrict:
                corr.restrict(p.name, c.name, restrict[key])
    root = nodes[0]
    from circuitgraph.hypothesis.interpretation import _collect

    reach = _collect(root)
    corr.mapping = {k: v for k, v in corr.mapping.items() if k in reach}
    corr.restrictions = {k: v for k, v in corr.restrictions.items() if k[0] in reach and k[1] in reach}
    h = Hypothesis(
        root,
        corr,
        name=draw(_names),
        description=draw(st.text(max_size=10)),
        metadata=draw(st.dictionaries(st.text(max_size=5), _json, max_size=3)),
    )
    if draw(st.booleans()):
        h.model_info = {
            "name": "m",
            "config_hash": draw(st.text(alphabet="0123456789abcdef", min_size=16, max_size=16)),
            "n_layers": 3,
            "n_heads": 4,
            "has_mlp": False,
            "d_model": 8,
        }
    return h


def _earlier(parent: str, child: str) -> bool:
    """True if ``child`` writes before ``parent`` reads (both from the pool above)."""
    from circuitgraph.hypothesis.nodes import parse_node

    p, c = parse_node(parent), parse_node(child)
    return p.kind != "input" and c.time() < p.time()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hypotheses())
def test_roundtrip_property(h):
    doc = h.to_dict()
    back = Hypothesis.from_dict(json.loads(json.dumps(doc)))
    assert back == h
    assert back.to_dict() == doc
    assert back.covered_edges() == h.covered_edges()
    assert list(back.nodes) == list(h.nodes) and back.edges() == h.edges()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(hypotheses())
def test_roundtrip_property_files(tmp_path, h):
    path = h.save(tmp_path / "h.json")
    assert Hypothesis.load(path) == h


# ------------------------------------------------------------------------------------ rendering


def test_html_is_offline_and_shows_both_graphs(tmp_path, model2):
    h = induction_like(model2)
    path = h.to_html(tmp_path / "hyp")
    page = path.read_text()
    assert path.suffix == ".html" and "vis.Network" in page
    assert "<script src=" not in page and "https://" not in page.split("<script>")[0]
    nodes, edges = layout(h)
    ids = {n["id"] for n in nodes}
    assert {f"interp:{n}" for n in h.nodes} <= ids and {
        "model:a0.h1",
        "model:a1.h2",
        "model:input",
        "model:logits",
    } <= ids
    kinds = {e["id"].split(":")[0] for e in edges}
    assert kinds == {"map", "interp", "cover"}
    pos = {n["id"]: (n["x"], n["y"]) for n in nodes}
    assert pos["interp:prev_token"][0] == pos["model:a0.h1"][0]  # beside the model node it maps to
    assert pos["interp:prev_token"][1] < pos["model:a0.h1"][1]
