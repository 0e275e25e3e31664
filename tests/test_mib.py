"""MIB protocol: curves at MIB's edge fractions (0 % included), CPR / CMD as MIB's evaluation
computes them, integer edge counting, and the submission folder read back by our importer."""

import json

import pytest
import torch
from conftest import tiny_model, tiny_task

from circuitgraph import Graph, attribute, faithfulness, prune, top_n
from circuitgraph.circuit import build_circuit
from circuitgraph.evaluation import CURVE_PERCENTS, MIB_SCRIPT_PERCENTS, faithfulness_curve
from circuitgraph.evaluation.faithfulness import curve_sizes
from circuitgraph.export import read_mib_submission, write_mib_submission
from circuitgraph.export.mib import SUBMISSION_PERCENTS, circuit_file_name


@pytest.fixture(scope="module")
def scored():
    model = tiny_model()
    task = tiny_task(model, n=8)
    graph = Graph.from_model(model)
    attribute(model, graph, task, method="eap-ig", steps=3, progress=False)
    return model, task, graph


def test_curve_has_mib_fractions_with_zero(scored):
    model, task, graph = scored
    curve = faithfulness_curve(model, graph, task)
    assert curve.percents == [float(p) for p in CURVE_PERCENTS]
    assert curve.percents[0] == 0 and curve.sizes[0] == 0
    assert curve.signed[0] == 0.0 and curve.absolute[0] == 0.0  # the empty circuit, by definition
    assert curve.signed[-1] == pytest.approx(1.0, abs=1e-6)


def test_edge_counting():
    assert curve_sizes(81, (0, 0.1, 1, 5, 50, 100), "round") == [0, 1, 1, 4, 40, 81]
    assert curve_sizes(81, (0, 0.1, 1, 5, 50, 100), "floor") == [0, 0, 0, 4, 40, 81]  # MIB: int(p · E)


def _mib_area(percents, values):
    """The trapezoid sum of MIB's evaluation script, written out: Σ (x₂ − x₁)(f₁ + f₂)/2 with x the
    fraction of edges."""
    x = [p / 100 for p in percents]
    return sum((x[i + 1] - x[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(x) - 1))


@pytest.mark.parametrize("counting", ["floor", "round"])
def test_cpr_cmd_match_mib_definitions(scored, counting):
    """Each point re-measured independently (pruned top-n circuits, as MIB's evaluator builds them)
    and integrated by hand must give our CPR and CMD."""
    model, task, graph = scored
    curve = faithfulness_curve(model, graph, task, percents=MIB_SCRIPT_PERCENTS, counting=counting)
    E = graph.n_edges
    sizes = [
        int(E * p / 100 + 1e-9) if counting == "floor" else max(1, round(E * p / 100)) for p in MIB_SCRIPT_PERCENTS
    ]
    f_signed = [faithfulness(model, graph, task, prune(graph, top_n(graph, n, absolute=False))) for n in sizes]
    f_abs = [faithfulness(model, graph, task, prune(graph, top_n(graph, n))) for n in sizes]
    assert curve.signed == pytest.approx(f_signed, abs=1e-5)
    assert curve.absolute == pytest.approx(f_abs, abs=1e-5)
    assert curve.cpr == pytest.approx(_mib_area(MIB_SCRIPT_PERCENTS, f_signed), abs=1e-5)
    assert curve.cmd == pytest.approx(_mib_area(MIB_SCRIPT_PERCENTS, [abs(1 - f) for f in f_abs]), abs=1e-5)


def test_importances_submission_reads_back(tmp_path, scored):
    model, task, graph = scored
    mask = prune(graph, top_n(graph, 7))
    c = build_circuit(graph, mask, task, "corrupted", {"kind": "top-n", "n": 7})
    folder = write_mib_submission(c, tmp_path, "tiny", "toy-model")
    assert folder.name == "tiny_toy-model" and (folder / "importances.json").is_file()
    doc = json.loads((folder / "importances.json").read_text())
    assert set(doc) >= {"cfg", "nodes", "edges"}  # what MIB's circuit loader requires
    i, j = graph.edge("a1.h0->logits")
    # MIB ranks by the score of a loss: helpful edges positive, the opposite of logit-difference scores
    assert doc["edges"]["a1.h0->logits"]["score"] == -float(graph.scores[i, j])
    back = read_mib_submission(folder, model)["importances"]
    assert torch.equal(back.mask.cpu(), mask.cpu())
    assert torch.equal(back.graph.scores.cpu(), graph.scores.cpu())  # bit-identical after the sign round trip


def test_circuits_submission_reads_back(tmp_path, scored):
    model, task, graph = scored
    c = build_circuit(graph, graph.valid.clone(), task, "corrupted")
    folder = write_mib_submission(c, tmp_path, "tiny", "toy", kind="circuits")
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(circuit_file_name(p) for p in SUBMISSION_PERCENTS)
    back = read_mib_submission(folder, model)
    E = graph.n_edges
    for p in SUBMISSION_PERCENTS:
        m = back[circuit_file_name(p)[:-5]].mask
        n = int(E * p / 100 + 1e-9)
        assert int(m.sum()) <= n
        assert torch.equal(m.cpu(), prune(graph, top_n(graph, n, absolute=False)).cpu())


def test_submission_refuses_bad_names_and_oversized_circuits(tmp_path, scored):
    model, task, graph = scored
    c = build_circuit(graph, graph.valid.clone(), task, "corrupted")
    with pytest.raises(ValueError, match="splits folder names"):
        write_mib_submission(c, tmp_path, "my_task", "gpt2")
    with pytest.raises(ValueError, match="more than"):
        write_mib_submission(c, tmp_path, "t", "m", kind="circuits", masks=[graph.valid] * 9)
