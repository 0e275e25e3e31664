"""Neuron-level graphs: exact patching, linearity against the MLP-level graph, a naive reference."""

import pytest
import torch
from checks import random_masks
from conftest import tiny_model, tiny_task

import circuitgraph as cg
from circuitgraph.attribution.nodes import neuron_attribution, top_neurons
from circuitgraph.engine import Ablation
from circuitgraph.engine.patching import patched_logits
from circuitgraph.engine.tensors import CompactSources


def fold(g_fine, g_node, scores):
    """Sum a neuron-level score matrix back to MLP-level nodes."""

    def base(n):
        return n.split(".n")[0].replace(".rest", "") if n.startswith("m") else n

    S = torch.zeros(g_node.n_src, g_fine.n_src)
    for i, n in enumerate(g_fine.src_names):
        S[g_node.src(base(n)), i] = 1
    T = torch.zeros(g_fine.n_dst, g_node.n_dst)
    for j, n in enumerate(g_fine.dst_names):
        T[j, g_node.dst(base(n))] = 1
    return S @ scores @ T


@pytest.mark.parametrize("norm", ["LN", "LNPre", "RMS", None])
@pytest.mark.parametrize("neurons", [True, {0: [1, 4, 7], 1: [0, 2]}])
@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_neuron_scores_sum_to_mlp_scores(norm, neurons, method):
    model = tiny_model(normalization_type=norm)
    task = tiny_task(model)
    node = cg.Graph.from_model(model)
    fine = cg.Graph.from_model(model, neurons=neurons)
    s_node = cg.attribute(model, node, task, method=method, steps=3, progress=False).clone()
    s_fine = cg.attribute(model, fine, task, method=method, steps=3, progress=False)
    assert (s_fine[~fine.valid] == 0).all()
    err = (fold(fine, node, s_fine) - s_node).abs().max() / s_node.abs().max()
    assert err < 1e-5, err


@pytest.mark.parametrize("neurons", [True, {0: [1, 4, 7], 1: [0, 2]}])
def test_neuron_patching_full_and_empty(neurons):
    model = tiny_model()
    task = tiny_task(model)
    g = cg.Graph.from_model(model, neurons=neurons)
    abl = Ablation().prepare(model, g, task).activations(model, g, task, slice(None), task)
    assert (patched_logits(model, g, task, abl, g.valid) - model(task.clean)).abs().max() < 1e-4
    assert (patched_logits(model, g, task, abl, torch.zeros_like(g.valid)) - model(task.corrupted)).abs().max() < 1e-4


@pytest.mark.parametrize("neurons", [True, {0: [1, 4, 7], 1: [0, 2, 30], 2: list(range(0, 32, 2))}])
@pytest.mark.parametrize("compact", [True, False])
def test_lowrank_neurons_patch_as_dense_rows_did(neurons, compact, monkeypatch):
    """Neurons kept as coefficients (``post_i`` against ``W_out[i]``) patch exactly as they did as
    d-vector rows (the path a layer behind a post-norm still takes), in float64, on random masks of
    every kind; from the evaluator's compact ablations and from a dense ``[n_src, B, P, d]`` tensor."""
    from circuitgraph.engine import deltas as deltas_module
    from circuitgraph.engine import sources as sources_module

    model = tiny_model(n_layers=3, dtype=torch.float64)
    task = tiny_task(model)
    g = cg.Graph.from_model(model, neurons=neurons)
    masks = random_masks(g)
    abl = Ablation().prepare(model, g, task)
    ablated = abl.activations(model, g, task, slice(None), task, compact=compact)
    assert isinstance(ablated, CompactSources) == compact
    if compact:  # neurons are coefficients: [n, B, P], not [n, B, P, d]
        assert set(ablated.coefs) == {f"mlp{L}" for L in g.neurons}
        assert len(ablated.dense) == g.n_src - sum(len(v) for v in g.neurons.values())
    # one mask per forward (a forward takes its route for all its masks at once), then three together
    batches = [masks[k : k + 1] for k in range(len(masks))] + [masks[[0, 1, 3]]]
    lowrank = [patched_logits(model, g, task, ablated, m) for m in batches]
    for module in (deltas_module, sources_module):
        monkeypatch.setattr(module, "coefficient_blocks", lambda graph: {})
    dense = abl.activations(model, g, task, slice(None), task, compact=True)
    assert isinstance(dense, torch.Tensor)  # (no coefficient block left)
    reference = [patched_logits(model, g, task, dense, m) for m in batches]
    clean = model(task.clean)
    for got, ref in zip(lowrank, reference):
        assert (ref - clean.repeat(len(ref) // len(clean), 1, 1)).abs().max() > 1e-2  # the masks matter
        assert (got - ref).abs().max() < 1e-10 * ref.abs().max()


def test_neuron_eap_tracks_exact_for_small_perturbations():
    model = tiny_model()
    task = tiny_task(model)
    task.corrupted = task.clean.clone()
    task.corrupted[:, 3] = (task.clean[:, 3] + 1) % model.cfg.d_vocab
    g = cg.Graph.from_model(model, neurons={0: list(range(0, 32, 3)), 1: list(range(1, 32, 4))})
    ex = cg.attribute(model, g, task, method="exact", progress=False).clone()
    eap = cg.attribute(model, g, task, method="eap", progress=False)
    corr = torch.corrcoef(torch.stack([ex[g.valid], eap[g.valid]]))[0, 1]
    assert corr > 0.9, corr


def test_neuron_to_neuron_scores_match_naive_autograd():
    """m0.n_i → m1.n_j scores from per-neuron input copies and autograd (slow and obvious)."""
    model = tiny_model()
    task = tiny_task(model)
    g = cg.Graph.from_model(model, neurons=True)
    fast = cg.attribute(model, g, task, method="eap", progress=False)
    mlp0, mlp1, ln2 = model.blocks[0].mlp, model.blocks[1].mlp, model.blocks[1].ln2
    _, corrupt = model.run_with_cache(task.corrupted)
    model.set_use_hook_mlp_in(True)
    store = {}

    def own_inputs(pre, hook):
        x = store["x"]  # [B, P, d]
        leaf = x[:, :, None, :].expand(-1, -1, pre.shape[-1], -1).detach().clone().requires_grad_(True)
        store["leaf"] = leaf
        return torch.einsum("bpjd,dj->bpj", ln2(leaf), mlp1.W_in) + mlp1.b_in

    def keep_x(x, hook):
        store["x"] = x
        return x

    def keep_post(x, hook):
        store["post0"] = x.detach()
        return x

    try:
        with model.hooks(
            fwd_hooks=[
                ("blocks.1.hook_mlp_in", keep_x),
                ("blocks.1.mlp.hook_pre", own_inputs),
                ("blocks.0.mlp.hook_post", keep_post),
            ]
        ):
            task.score(model(task.clean)).mean().backward()
    finally:
        model.set_use_hook_mlp_in(False)
        model.zero_grad()
    grad_in = store["leaf"].grad  # [B, P, d_mlp, d]
    d_post = corrupt["blocks.0.mlp.hook_post"] - store["post0"]  # [B, P, d_mlp]
    ref = torch.einsum("bpi,id,bpjd->ij", d_post, mlp0.W_out, grad_in)
    rows = [g.src(f"m0.n{i}") for i in range(model.cfg.d_mlp)]
    cols = [g.dst(f"m1.n{j}") for j in range(model.cfg.d_mlp)]
    got = fast[rows][:, cols]
    assert ((got - ref).abs().max() / ref.abs().max()) < 1e-4


def test_top_neurons_and_neuron_circuit_roundtrip(tmp_path):
    model = tiny_model()
    task = tiny_task(model)
    attr = neuron_attribution(model, task)
    assert set(attr) == {0, 1} and attr[0].shape == (model.cfg.d_mlp,)
    chosen = top_neurons(model, task, k=4)
    assert all(len(v) == 4 for v in chosen.values())
    assert chosen[1] == sorted(attr[1].abs().topk(4).indices.tolist())
    g = cg.Graph.from_model(model, neurons=chosen)
    assert "m1.rest" in g.src_names
    c = cg.minimal_circuit(model, g, task, target=0.8, method="eap-ig", steps=3)
    assert cg.faithfulness(model, g, task, c.mask) == pytest.approx(c.faithfulness, abs=1e-5)
    d = cg.Circuit.load(c.save(tmp_path / "n.json"), model)
    assert d.graph.neurons == g.neurons and torch.equal(d.mask, c.mask)


def test_bad_neuron_requests():
    with pytest.raises(ValueError, match="no MLPs"):
        cg.Graph.from_model(tiny_model(attn_only=True), neurons=True)
    with pytest.raises(ValueError, match="out of range"):
        cg.Graph.from_model(tiny_model(), neurons={0: [999]})
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        cg.Graph.from_model(tiny_model(), neurons={5: None})
