"""The Neuronpedia / circuit-tracer graph JSON: every field those viewers require, with the types
they expect; link weights that say "helps the task" under every metric; node ids unique and
parseable; and a round trip back to the same circuit (edges, raw scores, metadata, supernodes)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_model, tiny_task

import circuitgraph as cg
from circuitgraph import Circuit, Graph, PositionalGraph, prune, top_n, zoo
from circuitgraph.circuit import build_circuit
from circuitgraph.circuit.influence import cumulative_share, influence
from circuitgraph.errors import FileFormatError
from circuitgraph.export import from_neuronpedia_json, neuronpedia_graph, to_neuronpedia_json
from circuitgraph.graph.names import dst_node
from circuitgraph.sae import feature_labels, zoo_saes


def _random_circuit(graph: Graph, n: int, seed: int = 0, metric: str = "logit_diff") -> Circuit:
    g = torch.Generator().manual_seed(seed)
    graph.scores = (torch.randn(graph.valid.shape, generator=g) * 2).masked_fill(~graph.valid, 0.0)
    graph.score_info = {"method": "eap", "metric": metric}
    c = build_circuit(graph, prune(graph, top_n(graph, n)), tiny_task(tiny_model(), metric=metric))
    c.faithfulness, c.figures = 0.875, {"n_edges": c.n_edges, "search": {"3": 0.5}}
    return c


def check_viewer_fields(doc: dict) -> None:
    """What circuit-tracer's pydantic models and Neuronpedia's upload schema require."""
    meta = doc["metadata"]
    for key, kind in (
        ("slug", str),
        ("scan", str),
        ("prompt", str),
        ("prompt_tokens", list),
        ("transcoder_list", list),
    ):
        assert isinstance(meta[key], kind), key
    assert all(isinstance(t, str) for t in meta["prompt_tokens"]) and len(meta["prompt_tokens"]) >= 2
    assert isinstance(meta["node_threshold"], float) and meta["schema_version"] == 1
    q = doc["qParams"]
    assert isinstance(q["pinnedIds"], list) and isinstance(q["supernodes"], list)
    assert all(isinstance(q[k], str) for k in ("linkType", "clickedId", "sg_pos"))
    ids = [n["node_id"] for n in doc["nodes"]]
    assert len(set(ids)) == len(ids) and len({n["jsNodeId"] for n in doc["nodes"]}) == len(ids)
    for n in doc["nodes"]:
        assert isinstance(n["feature"], int) and isinstance(n["layer"], str) and isinstance(n["ctx_idx"], int)
        assert 0 <= n["ctx_idx"] < len(meta["prompt_tokens"])
        assert n["feature_type"] in ("cross layer transcoder", "mlp reconstruction error", "embedding", "logit")
        assert isinstance(n["clerp"], str) and n["clerp"]
        assert n["influence"] is None or 0.0 < n["influence"] <= 1.0 + 1e-12
        layer, _, ctx = n["node_id"].split("_")  # circuit-tracer's {layer}_{feature}_{ctx} ids
        assert layer == n["layer"] and int(ctx) == n["ctx_idx"]
        assert (layer == "E") == (n["feature_type"] == "embedding")
    for link in doc["links"]:
        assert link["source"] in ids and link["target"] in ids and isinstance(link["weight"], float)
    for sn in q["supernodes"]:
        assert isinstance(sn[0], str) and all(x in ids for x in sn[1:])


def test_heads_circuit_round_trips(tmp_path):
    graph = Graph.from_model(tiny_model())
    c = _random_circuit(graph, 30)
    c.supernodes = [{"name": "early", "nodes": sorted(c.nodes() - {"input", "logits"})[:2]}]
    path = to_neuronpedia_json(c, tmp_path / "g.json")
    doc = json.loads(path.read_text())
    check_viewer_fields(doc)
    assert doc["qParams"]["supernodes"][0][0] == "early" and len(doc["qParams"]["pinnedIds"]) == 2
    back = from_neuronpedia_json(path)
    assert torch.equal(back.mask, c.mask)
    assert torch.equal(back.graph.scores[c.mask], c.graph.scores[c.mask])  # bit-identical raw scores
    assert not back.graph.scores[~c.mask].any()  # the format holds the circuit's edges only
    assert back.metadata == c.metadata and back.supernodes == c.supernodes
    assert back.faithfulness == c.faithfulness and back.figures == c.figures
    assert back.graph.spec() == c.graph.spec()
    # with the model: same fingerprint accepted, another refused
    assert torch.equal(from_neuronpedia_json(path, tiny_model()).mask, c.mask)
    with pytest.raises(FileFormatError, match="different model"):
        from_neuronpedia_json(path, tiny_model(n_layers=3))


def test_links_say_helps_the_same_way_under_every_metric():
    """A link's weight is the edge's helpfulness: −score under a higher-is-better metric, +score
    under a loss, so positive always means "ablating it makes the task worse"."""
    for metric, sign in (("logit_diff", -1.0), ("kl", 1.0)):
        graph = Graph.from_model(tiny_model())
        c = _random_circuit(graph, 30, metric=metric)
        doc = neuronpedia_graph(c)
        names = {n["node_id"]: n["circuitgraph"] for n in doc["nodes"]}
        summed: dict[tuple[str, str], float] = {}
        for s, d, score in c.edges():
            key = (s, dst_node(d))
            summed[key] = summed.get(key, 0.0) + sign * score
        assert len(doc["links"]) == len(summed) < c.n_edges  # q/k/v inputs of one head share a link
        for link in doc["links"]:
            key = (names[link["source"]], names[link["target"]])
            assert link["weight"] == pytest.approx(summed[key], rel=1e-6)
            assert sum(1 for _ in link["circuitgraph"]) >= 1
        assert doc["metadata"]["circuitgraph"]["lower_is_better"] is (sign > 0)


def test_influence_field_is_the_cumulative_influence():
    graph = Graph.from_model(tiny_model(n_layers=3))
    c = _random_circuit(graph, 40, seed=3)
    doc = neuronpedia_graph(c)
    inf = influence(c.graph, c.mask).by_node()
    inner = [n for n in inf if n not in ("input", "logits") and n in c.nodes()]
    want = dict(zip(inner, cumulative_share(torch.tensor([inf[n] for n in inner], dtype=torch.float64)).tolist()))
    for n in doc["nodes"]:
        name = n["circuitgraph"]
        if name in ("input", "logits"):
            assert n["influence"] is None  # the viewers never prune the ends
        else:
            assert math.isclose(n["influence"], want[name], rel_tol=1e-9)
    assert doc["metadata"]["node_threshold"] == 0.8
    assert doc["metadata"]["pruning_settings"] == {"node_threshold": 0.8, "edge_threshold": 0.98}


def test_positions_are_context_indices(tmp_path):
    model = tiny_model()
    task = tiny_task(model)
    gp = PositionalGraph.from_model(model, positions=task.seq_len)
    c = _random_circuit(gp, 60, seed=2)
    tokens = [f"t{i}" for i in range(task.seq_len)]
    doc = neuronpedia_graph(c, tokens=tokens, token_ids=list(range(100, 100 + task.seq_len)))
    check_viewer_fields(doc)
    assert doc["metadata"]["prompt_tokens"] == tokens and doc["metadata"]["prompt"] == " ".join(tokens)
    for n in doc["nodes"]:
        assert n["ctx_idx"] == int(n["circuitgraph"].split("@")[1])
        if n["feature_type"] == "embedding":
            assert n["node_id"] == f"E_{100 + n['ctx_idx']}_{n['ctx_idx']}"
    path = to_neuronpedia_json(c, tmp_path / "p.json", tokens=tokens)
    back = from_neuronpedia_json(path)
    assert isinstance(back.graph, PositionalGraph) and torch.equal(back.mask, c.mask)
    with pytest.raises(cg.errors.GraphError, match="positions"):
        neuronpedia_graph(c, tokens=tokens[:-1])


def test_feature_circuit_round_trips_with_labels(tmp_path):
    entry = zoo.load("induction", device="cpu")
    model, task = entry.model, entry.task("induction").select(slice(0, 8))
    torch.set_num_threads(1)
    g = cg.feature_graph(model, zoo_saes("induction"), task)
    cg.attribute(model, g, task, method="eap", progress=False)
    labels = feature_labels(model, g, task)
    c = build_circuit(g, prune(g, top_n(g, 300)), task)
    path = to_neuronpedia_json(c, tmp_path / "data" / "induction.json", node_info=labels, index=True)
    doc = json.loads(path.read_text())
    check_viewer_fields(doc)
    by_name = {n["circuitgraph"]: n for n in doc["nodes"]}
    feats = [n for n in by_name if ".f" in n]
    assert feats
    for n in feats:  # a feature's label names its top tokens; its activation is the largest seen
        assert by_name[n]["clerp"].startswith(n + ":") and by_name[n]["activation"] == labels[n]["max_activation"]
    errs = [n for n in by_name if n.endswith(".err")]
    assert all(by_name[n]["feature_type"] == "mlp reconstruction error" and by_name[n]["feature"] == -1 for n in errs)
    # rows: attn_out0's features sit below resid_pre1's, which sit below layer 1's heads
    rows = {n: by_name[n]["layer"] for n in by_name}
    assert int(rows["a0.h1"]) < int(rows[next(n for n in feats if n.startswith("attn_out0"))])
    back = from_neuronpedia_json(path, model)
    assert torch.equal(back.mask, c.mask) and [s.name for s in back.graph.sites] == ["attn_out0", "resid_pre1"]
    listing = json.loads((tmp_path / "data" / "graph-metadata.json").read_text())
    assert [x["slug"] for x in listing["graphs"]] == [doc["metadata"]["slug"]]
    to_neuronpedia_json(c, path, index=True)  # written again: listed once
    assert len(json.loads((tmp_path / "data" / "graph-metadata.json").read_text())["graphs"]) == 1


def test_foreign_and_broken_files_are_refused(tmp_path):
    foreign = {"metadata": {"slug": "x", "scan": "gemma-2-2b", "prompt_tokens": ["a", "b"], "prompt": "ab"},
               "qParams": {}, "nodes": [], "links": []}  # fmt: skip
    (tmp_path / "f.json").write_text(json.dumps(foreign))
    with pytest.raises(FileFormatError, match="not written by circuitgraph"):
        from_neuronpedia_json(tmp_path / "f.json")
    graph = Graph.from_model(tiny_model())
    doc = neuronpedia_graph(_random_circuit(graph, 20))
    broken = json.loads(json.dumps(doc))
    broken["links"][0]["circuitgraph"] = [["a9.h9.q", 1.0]]
    (tmp_path / "b.json").write_text(json.dumps(broken))
    with pytest.raises(FileFormatError, match="malformed score entry"):
        from_neuronpedia_json(tmp_path / "b.json")
    broken = json.loads(json.dumps(doc))
    broken["nodes"][1]["node_id"] = broken["nodes"][0]["node_id"]
    (tmp_path / "d.json").write_text(json.dumps(broken))
    with pytest.raises(FileFormatError, match="unique node_id"):
        from_neuronpedia_json(tmp_path / "d.json")
    (tmp_path / "t.json").write_text(json.dumps(doc)[:100])
    with pytest.raises(FileFormatError, match="not valid JSON"):
        from_neuronpedia_json(tmp_path / "t.json")


def test_a_run_writes_it_and_labels_positions(tmp_path):
    """``export.neuronpedia=true`` writes circuit.neuronpedia.json beside circuit.json (the same
    circuit); a position-resolved run's graph.html names each column's token."""
    from hydra import compose, initialize_config_module

    from circuitgraph.cli import main as cli
    from circuitgraph.cli.config import register_configs

    register_configs()
    overrides = ["task.limit=8", "graph.positions=true", "export.neuronpedia=true", "export.curve=false"]
    overrides += ["export.png=false", "export.hypothesis=false", "progress=false", "circuit.target=0.8"]
    with initialize_config_module(config_module="circuitgraph.cli.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    out = tmp_path / "run"
    cli.run(cfg, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"]["neuronpedia"] == "circuit.neuronpedia.json"
    saved = Circuit.load(out / "circuit.json")
    back = from_neuronpedia_json(out / "circuit.neuronpedia.json")
    assert torch.equal(back.mask, saved.mask) and back.metadata == saved.metadata
    doc = json.loads((out / "circuit.neuronpedia.json").read_text())
    entry = zoo.load("induction", device="cpu")
    want = [str(t) for t in entry.task("induction").clean[0].tolist()]
    assert doc["metadata"]["prompt_tokens"] == want  # no tokenizer: the ids as text
    html = (out / "graph.html").read_text()
    data = json.loads(html.split("var DATA = ", 1)[1].split(";\n", 1)[0].replace("<\\/", "</"))
    assert [t[0] for t in data["stops"][data["default_stop"]]["tokens"]] == [t[:10] for t in want]
