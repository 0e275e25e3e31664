"""Patched forward, faithfulness, minimal circuits, pruning and circuit files."""

import json

import pytest
import torch
from conftest import tiny_model, tiny_task

from circuitgraph import Circuit, Graph, attribute, faithfulness, faithfulness_curve, minimal_circuit, prune, top_n
from circuitgraph.circuit import CircuitFileError
from circuitgraph.engine import Ablation
from circuitgraph.engine.patching import patched_logits


@pytest.fixture
def setup():
    model = tiny_model()
    task = tiny_task(model, n=12)
    return model, Graph.from_model(model), task


def test_full_circuit_is_clean_and_empty_is_corrupted(setup):
    model, graph, task = setup
    abl = Ablation().prepare(model, graph, task).activations(model, graph, task, slice(None), task)
    full = patched_logits(model, graph, task, abl, graph.valid)
    assert (full - model(task.clean)).abs().max() < 1e-4
    empty = patched_logits(model, graph, task, abl, torch.zeros_like(graph.valid))
    assert (empty - model(task.corrupted)).abs().max() < 1e-4


def test_batched_masks_equal_separate_runs(setup):
    model, graph, task = setup
    abl = Ablation().prepare(model, graph, task).activations(model, graph, task, slice(None), task)
    g = torch.Generator().manual_seed(1)
    masks = torch.rand((3, *graph.valid.shape), generator=g) < 0.5
    together = patched_logits(model, graph, task, abl, masks).view(3, task.n_examples, task.seq_len, -1)
    for k in range(3):
        alone = patched_logits(model, graph, task, abl, masks[k])
        assert (together[k] - alone).abs().max() < 1e-4


def test_minimal_circuit_faithfulness_is_remeasured(setup):
    model, graph, task = setup
    c = minimal_circuit(model, graph, task, target=0.9, method="eap-ig", steps=5)
    assert c.faithfulness >= 0.9
    # independent re-measurement through the public API
    assert faithfulness(model, graph, task, c.mask) == pytest.approx(c.faithfulness, abs=1e-5)
    # and by hand: the circuit's metric against the clean and corrupted runs
    abl = Ablation().prepare(model, graph, task).activations(model, graph, task, slice(None), task)
    m_c = task.score(patched_logits(model, graph, task, abl, c.mask)).mean()
    with torch.no_grad():
        m_n, m_0 = task.score(model(task.clean)).mean(), task.score(model(task.corrupted)).mean()
    assert float((m_c - m_0) / (m_n - m_0)) == pytest.approx(c.faithfulness, abs=1e-4)
    assert c.n_edges < graph.n_edges


def test_prune_keeps_only_input_to_logits_paths(setup):
    _, graph, _ = setup
    mask = graph.mask_from_edges(["input->a0.h0.q", "a0.h0->a1.h1.k", "a1.h1->logits", "a0.h2->m0"])
    pruned = prune(graph, mask)
    assert set(graph.edge_names(pruned)) == {"input->a0.h0.q", "a0.h0->a1.h1.k", "a1.h1->logits"}
    dangling = graph.mask_from_edges(["a0.h1->logits"])  # a0.h1 reads nothing kept
    assert prune(graph, dangling).sum() == 0


def test_top_n_and_curve(setup):
    model, graph, task = setup
    attribute(model, graph, task, method="eap-ig", steps=3, progress=False)
    m = top_n(graph, 10)
    assert int(m.sum()) == 10
    assert graph.scores.abs()[m].min() >= graph.scores.abs()[graph.valid & ~m].max()
    curve = faithfulness_curve(model, graph, task)
    assert curve.absolute[-1] == pytest.approx(1.0, abs=1e-5)
    assert len(curve.signed) == 11 and curve.signed[0] == 0 and curve.cmd >= 0


def test_save_load_roundtrip(tmp_path, setup):
    model, graph, task = setup
    c = minimal_circuit(model, graph, task, target=0.8, method="eap", steps=1)
    path = c.save(tmp_path / "c.json")
    d = Circuit.load(path, model)
    assert torch.equal(d.mask, c.mask) and torch.equal(d.graph.scores, c.graph.scores)
    assert d.faithfulness == c.faithfulness and d.edge_names() == c.edge_names()
    assert d.metadata["attribution"]["method"] == "eap"
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_load_refuses_other_model(tmp_path, setup):
    model, graph, task = setup
    attribute(model, graph, task, method="eap", progress=False)
    path = Circuit(graph, top_n(graph, 5)).save(tmp_path / "c.json")
    other = tiny_model(d_model=24)
    with pytest.raises(CircuitFileError, match="different model"):
        Circuit.load(path, other)


def test_load_refuses_corrupted_files(tmp_path, setup):
    model, graph, task = setup
    path = Circuit(graph, top_n(graph, 5)).save(tmp_path / "c.json")
    st = path.with_suffix(".safetensors")
    st.write_bytes(st.read_bytes()[:40])
    with pytest.raises(CircuitFileError, match="corrupted or truncated"):
        Circuit.load(path)
    path.write_text(path.read_text()[:30])
    with pytest.raises(CircuitFileError, match="not valid JSON"):
        Circuit.load(path)
    path.write_text(json.dumps({"schema": "something/9"}))
    with pytest.raises(CircuitFileError, match="not a circuitgraph circuit"):
        Circuit.load(path)


def test_failed_save_keeps_previous_file(tmp_path, setup, monkeypatch):
    _, graph, _ = setup
    c = Circuit(graph, top_n(graph, 3))
    path = c.save(tmp_path / "c.json")
    before = path.read_text()
    import circuitgraph.circuit.circuit as mod

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod.json, "dumps", boom)
    with pytest.raises(KeyboardInterrupt):
        Circuit(graph, top_n(graph, 7)).save(path)
    assert path.read_text() == before
    assert not list(tmp_path.glob(".*"))  # the temporary file is gone


def test_minimal_circuit_stops_the_grid_at_the_first_batch_reaching_the_target(setup, monkeypatch):
    """Measured a few masks per forward, the grid stops at the batch that first reaches the target
    and finds the same circuit as the whole grid measured at once."""
    from circuitgraph.engine import evaluator

    model, graph, task = setup
    attribute(model, graph, task, method="eap", progress=False)
    whole = minimal_circuit(model, graph, task, target=0.8)
    monkeypatch.setattr(evaluator, "mask_batch_size", lambda graph, chunk, budget_bytes=1e9: 2)
    early = minimal_circuit(model, graph, task, target=0.8)
    assert early.figures["top_n"] == whole.figures["top_n"] and torch.equal(early.mask, whole.mask)
    assert early.faithfulness == pytest.approx(whole.faithfulness, abs=1e-6)
    assert len(early.figures["search"]) < len(whole.figures["search"])  # the larger sizes were never run
    hit = min(int(n) for n, f in whole.figures["search"].items() if f >= 0.8)
    assert all(int(n) <= 2 * hit for n in early.figures["search"])


def test_minimal_circuit_reuses_existing_scores(setup):
    model, graph, task = setup
    scores = attribute(model, graph, task, method="exact", progress=False)
    c = minimal_circuit(model, graph, task, target=0.8)  # method=None: keep the exact scores
    assert graph.scores is scores and c.metadata["attribution"]["method"] == "exact"
    fresh = Graph.from_model(model)
    assert minimal_circuit(model, fresh, task, target=0.8).metadata["attribution"]["method"] == "eap-ig"


def test_largest_selects_exactly_the_k_largest_in_blocks():
    """top_n's selection works a block of rows at a time (no int64 index per edge): exactly k
    entries, none smaller than one left out, with ties, bf16 scores and invalid (-inf) entries."""
    from circuitgraph.circuit.selection import _largest, _Pieces

    g = torch.Generator().manual_seed(0)
    for trial in range(120):
        R, C = torch.randint(1, 40, (2,), generator=g).tolist()
        r = torch.randn(R, C, generator=g)
        if trial % 3 == 1:
            r = torch.randint(0, 4, (R, C), generator=g).float()  # many ties
        if trial % 3 == 2:
            r = r.to(torch.bfloat16)
        r[torch.rand(R, C, generator=g) < 0.2] = float("-inf")
        E = int(torch.isfinite(r).sum())
        for k in (0, 1, E // 3, E // 2, E):
            m = _largest(_Pieces.ranked(r, block=37), k)
            assert int(m.sum()) == k
            if 0 < k < r.numel():
                assert bool(torch.isfinite(r[m]).all()) and float(r[m].min()) >= float(r[~m].max())
