"""Optimal ablation: fitted constants as a fifth ablation kind, usable everywhere, saved as data."""

import json

import pytest
import torch
from conftest import tiny_model, tiny_task

from circuitgraph import Circuit, Graph, attribute, faithfulness, minimal_circuit
from circuitgraph.circuit import CircuitFileError
from circuitgraph.engine import Ablation, CircuitEvaluator
from circuitgraph.errors import ConfigError


@pytest.fixture(scope="module")
def fitted():
    model = tiny_model()
    task = tiny_task(model, n=10)
    graph = Graph.from_model(model)
    abl = Ablation("optimal", steps=30, lr=0.05).prepare(model, graph, task)
    return model, task, graph, abl


def flat_mean(model, graph, task) -> Ablation:
    """The per-position mean averaged over positions, as fixed constants: where a fit starts."""
    means = Ablation("mean")._mean_captures(model, graph, task)
    return Ablation("optimal", values={k: v.mean(0, keepdim=True).expand_as(v).clone() for k, v in means.items()})


def test_fit_lowers_the_loss_it_minimises(fitted):
    _, task, graph, abl = fitted
    assert abl.fit["loss_fitted"] < abl.fit["loss_at_mean"]
    assert abl.fit["per_position"] is False  # a node-level graph: one constant per node
    assert set(abl.values) == {"input", "z0", "z1", "mlp0", "mlp1"}
    v = abl.values["z0"]
    assert v.shape == (task.seq_len, graph.arch.n_heads, 4)
    assert bool((v == v[:1]).all())  # the same constant at every position


def test_node_fit_beats_the_mean_node_by_node(fitted):
    """Each node's constant is fitted with that node alone ablated: ablating one node with its
    fitted constant costs no more (KL to the clean run) than ablating it with its mean."""
    model, task, graph, abl = fitted
    mean_flat = flat_mean(model, graph, task)
    kl_task = task.with_metric("kl")
    better = 0
    for node in ["a0.h1", "a1.h2", "m0", "m1"]:
        keep = graph.valid.clone()
        keep[graph.src_index[node]] = False
        fitted_kl = float(CircuitEvaluator(model, graph, kl_task, abl)(keep[None])[0])
        mean_kl = float(CircuitEvaluator(model, graph, kl_task, mean_flat)(keep[None])[0])
        better += fitted_kl <= mean_kl + 1e-6
    assert better >= 3  # (stochastic minibatches: allow one near-tie)


def test_usable_by_attribution_and_evaluation(fitted):
    model, task, graph, abl = fitted
    scores = attribute(model, graph, task, method="exact", ablation=abl, progress=False).clone()
    run = CircuitEvaluator(model, graph, task, abl)
    i, j = graph.edge("a0.h1->logits")
    keep = graph.valid.clone()
    keep[i, j] = False
    assert float(scores[i, j]) == pytest.approx(float(run(keep[None])[0] - run(graph.valid[None])[0]), abs=1e-5)
    assert graph.score_info["ablation"]["kind"] == "optimal"


def test_saved_with_the_circuit_as_data(tmp_path, fitted):
    model, task, graph, abl = fitted
    c = minimal_circuit(model, graph, task, target=0.8, method="eap", ablation=abl)
    path = c.save(tmp_path / "c.json")
    doc = json.loads(path.read_text())
    assert doc["metadata"]["ablation"]["kind"] == "optimal"
    assert doc["metadata"]["ablation"]["values"] == sorted(abl.values)
    back = Circuit.load(path, model)
    loaded = back.ablation()
    assert loaded.kind == "optimal" and loaded.fit == abl.fit
    for k, v in abl.values.items():
        assert torch.equal(loaded.values[k], v.float())
    f1 = faithfulness(model, graph, task, c.mask, ablation=abl)
    f2 = faithfulness(model, back.graph, task, back.mask, ablation=loaded)
    assert f2 == pytest.approx(f1, abs=1e-6)


def test_bad_records_and_mismatched_constants(tmp_path, fitted):
    model, task, graph, abl = fitted
    with pytest.raises(Exception, match="missing"):
        Ablation.from_dict(abl.to_dict(), {})
    neuron_graph = Graph.from_model(model, neurons=True)
    with pytest.raises(ConfigError, match="lack"):
        Ablation("optimal", values=abl.values).prepare(model, neuron_graph, task)
    with pytest.raises(ConfigError, match="values"):
        Ablation("mean", values=abl.values)
    # a circuit file whose tensors lost a constant is refused
    c = minimal_circuit(model, graph, task, target=0.8, method="eap", ablation=abl)
    path = c.save(tmp_path / "c.json")
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    st = path.with_suffix(".safetensors")
    with safe_open(str(st), "pt") as f:
        meta = f.metadata()  # the pair binding stays, so the refusal is about the content
    t = load_file(str(st))
    t.pop("ablation.z0")
    save_file(t, str(st), metadata=meta)
    with pytest.raises(CircuitFileError, match="inconsistent|has changed since"):
        Circuit.load(path, model)


def test_constants_fitted_for_a_circuit_lower_its_loss(fitted):
    """Li & Janson's circuit objective: constants fitted jointly for one circuit give that circuit
    a lower KL to the clean run than constants fitted for the empty circuit, and never move the
    full model (no edge carries them)."""
    model, task, graph, _ = fitted
    keep = graph.mask_from_edges(["a1.h2->logits", "input->a1.h2.v", "m0->logits"])
    kl = task.with_metric("kl")
    empty = Ablation("optimal", fit_kind="empty", steps=30).prepare(model, graph, task)
    mine = Ablation("optimal", fit_kind="empty", steps=30).fit_optimal(model, graph, task, circuit=keep)
    assert mine.fit["fit"] == "circuit" and empty.fit["fit"] == "empty"
    both = torch.stack([keep, graph.valid])
    kl_empty_fit = CircuitEvaluator(model, graph, kl, empty)(both)
    kl_circuit_fit = CircuitEvaluator(model, graph, kl, mine)(both)
    assert float(kl_circuit_fit[0]) < float(kl_empty_fit[0])
    assert float(kl_circuit_fit[1]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="edge mask"):
        Ablation("optimal").fit_optimal(model, graph, task, circuit=keep[:2])


def test_a_fit_keeps_its_best_constants_measured_on_every_example(fitted):
    """Adam on minibatches can end worse than its start: with a step size far too large the fit
    diverges, and the mean it started from is kept. The losses recorded are each circuit's KL on
    every example, as the evaluator measures it independently."""
    model, task, graph, _ = fitted
    kl = task.with_metric("kl")
    empty = graph.valid.clone().fill_(False)[None]
    wild = Ablation("optimal", fit_kind="empty", steps=12, lr=50.0, checks=3).prepare(model, graph, task)
    assert wild.fit["kept_step"] == 0
    assert wild.fit["loss_fitted"] == wild.fit["loss_at_mean"]
    at_mean = float(CircuitEvaluator(model, graph, kl, flat_mean(model, graph, task))(empty)[0])
    assert wild.fit["loss_at_mean"] == pytest.approx(at_mean, rel=1e-4)
    assert float(CircuitEvaluator(model, graph, kl, wild)(empty)[0]) == pytest.approx(at_mean, rel=1e-4)
    tame = Ablation("optimal", fit_kind="empty", steps=12, lr=0.05, checks=3).prepare(model, graph, task)
    assert tame.fit["kept_step"] in (4, 8, 12) and tame.fit["loss_fitted"] < tame.fit["loss_at_mean"]
    assert float(CircuitEvaluator(model, graph, kl, tame)(empty)[0]) == pytest.approx(tame.fit["loss_fitted"], rel=1e-4)
    back = Ablation.from_dict(tame.to_dict(), tame.tensors())
    assert back.checks == 3 and back.fit == tame.fit
