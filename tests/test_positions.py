"""Position-resolved graphs (a1.h3@5): linearity, exact patching, causal pruning, files."""

import pytest
import torch
from conftest import tiny_model, tiny_task

import circuitgraph as cg
from circuitgraph.engine import Ablation
from circuitgraph.engine.patching import patched_logits
from circuitgraph.graph import PositionalGraph


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
@pytest.mark.parametrize("overrides", [{}, {"normalization_type": "RMS"}, {"attn_only": True}])
def test_position_scores_sum_to_position_free_scores(method, overrides):
    model = tiny_model(**overrides)
    task = tiny_task(model)
    g = cg.Graph.from_model(model)
    gp = PositionalGraph.from_model(model, positions=task.seq_len)
    s = cg.attribute(model, g, task, method=method, steps=3, progress=False).clone()
    sp = cg.attribute(model, gp, task, method=method, steps=3, progress=False)
    assert (sp[~gp.valid] == 0).all()
    torch.testing.assert_close(gp.position_free(), s, rtol=1e-4, atol=1e-6)
    assert gp.has_edge("a0.h1@3", "a1.h2.k@3") and not gp.has_edge("a0.h1@3", "a1.h2.k@4")


def test_positional_patching_is_exact_and_local():
    model = tiny_model()
    task = tiny_task(model)
    gp = PositionalGraph.from_model(model, positions=task.seq_len)
    abl = Ablation().prepare(model, gp, task).activations(model, gp, task, slice(None), task)
    assert (patched_logits(model, gp, task, abl, gp.valid) - model(task.clean)).abs().max() < 1e-4
    assert (patched_logits(model, gp, task, abl, torch.zeros_like(gp.valid)) - model(task.corrupted)).abs().max() < 1e-4
    # removing every edge at the last position only: earlier positions' logits stay clean (causal)
    keep = gp.valid.clone()
    P = task.seq_len
    keep.view(gp.base.n_src, P, gp.base.n_dst, P)[:, P - 1, :, P - 1] = False
    out = patched_logits(model, gp, task, abl, keep)
    clean = model(task.clean)
    assert (out[:, : P - 1] - clean[:, : P - 1]).abs().max() < 1e-4
    assert (out[:, P - 1] - clean[:, P - 1]).abs().max() > 1e-3


def test_exact_per_position_sums_to_first_order_budget():
    model = tiny_model()
    task = tiny_task(model, n=4, seq=4)
    gp = PositionalGraph.from_model(model, positions=4)
    ex = cg.attribute(model, gp, task, method="exact", progress=False)
    assert ex.abs().sum() > 0 and (ex[~gp.valid] == 0).all()


def test_causal_pruning_follows_attention():
    model = tiny_model(attn_only=True)
    gp = PositionalGraph.from_model(model, positions=3)
    # input@0 → a0.h0.k@0 feeds a0.h0@2 (a later query), which writes to logits@2
    keep = gp.mask_from_edges(["input@0->a0.h0.k@0", "a0.h0@2->logits@2"])
    assert set(gp.edge_names(cg.prune(gp, keep))) == {"input@0->a0.h0.k@0", "a0.h0@2->logits@2"}
    # a key at position 2 cannot feed the head's output at position 0
    keep = gp.mask_from_edges(["input@2->a0.h0.k@2", "a0.h0@0->logits@0"])
    assert cg.prune(gp, keep).sum() == 0
    # every position's input is a source: input@2 reaches logits@2 directly
    keep = gp.mask_from_edges(["input@2->logits@2", "input@1->a0.h0.q@1"])
    assert gp.edge_names(cg.prune(gp, keep)) == ["input@2->logits@2"]


def test_positional_minimal_circuit_and_file(tmp_path):
    model = tiny_model()
    task = tiny_task(model)
    gp = PositionalGraph.from_model(model, positions=task.seq_len)
    c = cg.minimal_circuit(model, gp, task, target=0.8, steps=3)
    assert c.n_edges > 0 and c.faithfulness >= 0.8
    assert cg.faithfulness(model, gp, task, c.mask) == pytest.approx(c.faithfulness, abs=1e-5)
    assert torch.equal(cg.prune(gp, c.mask), c.mask)  # already pruned
    d = cg.Circuit.load(c.save(tmp_path / "p.json"), model)
    assert isinstance(d.graph, PositionalGraph) and torch.equal(d.mask, c.mask)
    assert all("@" in e for e in d.edge_names())


def test_positions_need_one_template_length():
    model = tiny_model()
    task = tiny_task(model, seq=7)
    gp = PositionalGraph.from_model(model, positions=6)
    with pytest.raises(ValueError, match="positions need prompts of one template length"):
        cg.attribute(model, gp, task, progress=False)
    padded = cg.Task(
        clean=task.clean,
        corrupted=task.corrupted,
        answer=task.answer,
        wrong=task.wrong,
        attention_mask=torch.ones_like(task.clean).index_fill_(1, torch.tensor([6]), 0),
    )
    with pytest.raises(ValueError, match="with padding"):
        cg.attribute(model, PositionalGraph.from_model(model, positions=7), padded, progress=False)


def test_positional_circuit_views(tmp_path):
    """networkx and the HTML viewer understand position-resolved names; MIB JSON refuses them."""
    from circuitgraph.export import to_mib_json

    model = tiny_model()
    task = tiny_task(model)
    gp = PositionalGraph.from_model(model, positions=task.seq_len)
    c = cg.minimal_circuit(model, gp, task, target=0.8, steps=3)
    g = c.to_networkx()
    assert g.number_of_edges() > 0
    assert {d["kind"] for _, d in g.nodes(data=True)} <= {"input", "head", "mlp", "logits"}
    assert all("@" in n for n in g.nodes)
    assert {d["qkv"] for *_, d in g.edges(data=True)} <= {"", "q", "k", "v", "qk", "qv", "kv", "qkv"}
    page = cg.write_html(c, tmp_path / "p.html").read_text()
    assert "logits@" in page and "input@" in page
    with pytest.raises(ValueError):
        to_mib_json(c, tmp_path / "p.mib.json")


def test_positional_graphml_roundtrip(tmp_path):
    from circuitgraph.export import from_graphml, to_graphml

    model = tiny_model()
    task = tiny_task(model)
    gp = PositionalGraph.from_model(model, positions=task.seq_len)
    c = cg.minimal_circuit(model, gp, task, target=0.8, steps=3)
    to_graphml(c, tmp_path / "p.graphml")
    for graph in (gp, None):
        d = from_graphml(tmp_path / "p.graphml", graph)
        assert isinstance(d.graph, PositionalGraph) and torch.equal(d.mask.cpu(), c.mask.cpu())
        assert torch.equal(d.graph.scores.cpu(), c.graph.scores.cpu())
    with pytest.raises(ValueError, match="token positions"):
        from_graphml(tmp_path / "p.graphml", cg.Graph.from_model(model))
