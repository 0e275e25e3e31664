"""Supernodes (the user's groups of nodes) live in ``circuit.json``'s ``metadata.supernodes``:
set through ``Circuit.supernodes`` (checked against the graph), saved, and read back by
``Circuit.load``, which refuses a malformed list with a message naming the problem."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model

from circuitgraph import Circuit, Graph, top_n
from circuitgraph.circuit import CircuitFileError
from circuitgraph.errors import GraphError


@pytest.fixture
def circuit():
    graph = Graph.from_model(tiny_model())
    graph.scores = torch.randn(graph.valid.shape, generator=torch.Generator().manual_seed(0)).masked_fill(
        ~graph.valid, 0.0
    )
    return Circuit(graph, top_n(graph, 12), metadata={"task": "tiny"})


def test_supernodes_round_trip(circuit, tmp_path):
    assert circuit.supernodes == []
    circuit.supernodes = [{"name": " heads ", "nodes": ["a0.h1", "a1.h2"]}, {"name": "out", "nodes": ["logits"]}]
    assert circuit.supernodes == [{"name": "heads", "nodes": ["a0.h1", "a1.h2"]}, {"name": "out", "nodes": ["logits"]}]
    path = circuit.save(tmp_path / "c.json")
    assert json.loads(path.read_text())["metadata"]["supernodes"] == circuit.supernodes
    back = Circuit.load(path)
    assert back.supernodes == circuit.supernodes and torch.equal(back.mask, circuit.mask)
    back.supernodes = []
    assert Circuit.load(back.save(tmp_path / "d.json")).supernodes == []


@pytest.mark.parametrize(
    "groups,match",
    [
        ({"name": "x"}, "must be a list"),
        ([["a0.h1"]], "supernode 0 must be"),
        ([{"name": "", "nodes": ["a0.h1"]}], "needs a name"),
        ([{"name": "a", "nodes": ["a0.h1"]}, {"name": "a", "nodes": ["a1.h0"]}], "needs a name of its own"),
        ([{"name": "a", "nodes": ["a9.h9"]}], "names no node of this graph: \\['a9.h9'\\]"),
        ([{"name": "a", "nodes": []}], "at least one"),
        ([{"name": "a", "nodes": ["a0.h1", "a0.h1"]}], "distinct"),
    ],
)
def test_malformed_supernodes_are_refused(circuit, tmp_path, groups, match):
    with pytest.raises(GraphError, match=match):
        circuit.supernodes = groups
    path = circuit.save(tmp_path / "c.json")
    doc = json.loads(path.read_text())
    doc["metadata"]["supernodes"] = groups
    path.write_text(json.dumps(doc))
    with pytest.raises(CircuitFileError, match="metadata.supernodes is malformed"):
        Circuit.load(path)
