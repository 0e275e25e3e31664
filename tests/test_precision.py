"""Memory options: models in bfloat16 run through the engine (its arithmetic stays float32),
``scores_dtype=torch.bfloat16`` halves the score matrix without changing which edges matter, and
the evaluator's ablation cache can live in host memory."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

import circuitgraph as cg
from circuitgraph.engine import Ablation
from circuitgraph.engine.patching import patched_logits
from circuitgraph.tasks import Task

torch.set_num_threads(1)


def _ln_model(dtype):
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_head=8,
        d_mlp=64,
        d_vocab=40,
        n_ctx=8,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    return HookedTransformer(cfg).to(dtype)


def _task():
    g = torch.Generator().manual_seed(0)
    clean, corrupted = torch.randint(0, 40, (8, 6), generator=g), torch.randint(0, 40, (8, 6), generator=g)
    return Task(clean=clean, corrupted=corrupted, answer=clean[:, 0], wrong=corrupted[:, 0])


@pytest.mark.parametrize("neurons", [None, {1: [0, 3, 5]}])
def test_bfloat16_model_scores_match_float32(neurons):
    task = _task()
    ref_model = _ln_model(torch.float32)
    graph = cg.Graph.from_model(ref_model, neurons=neurons)
    ref = cg.attribute(ref_model, graph, task, method="eap", progress=False).clone()
    model = _ln_model(torch.float32).to(torch.bfloat16)
    got = cg.attribute(model, graph, task, method="eap", progress=False)
    assert got.dtype == torch.float32
    assert (got - ref).abs().max() < 0.03 * ref.abs().max()  # bf16 forward noise, not float32 arithmetic
    # the patched full / empty circuits are the bf16 model's own clean / corrupted runs
    abl = Ablation("corrupted").prepare(model, graph, task)
    A = abl.activations(model, graph, task, slice(0, task.n_examples), task)
    assert A.dtype == torch.float32
    full = patched_logits(model, graph, task, A, graph.valid)
    assert (full.float() - model(task.clean).float()).abs().max() < 0.05
    circuit = cg.minimal_circuit(model, graph, task, target=0.8)
    assert circuit.faithfulness >= 0.8


def test_bfloat16_scores_rank_like_float32():
    task = _task()
    model = _ln_model(torch.float32)
    graph = cg.Graph.from_model(model)
    ref = cg.attribute(model, graph, task, method="eap-ig", progress=False).clone()
    half = cg.attribute(model, graph, task, method="eap-ig", progress=False, scores_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and graph.scores is half
    assert (half.float() - ref).abs().max() < 0.01 * ref.abs().max()
    top_ref = set(ref.abs().flatten().topk(30).indices.tolist())
    top_half = set(half.float().abs().flatten().topk(30).indices.tolist())
    assert len(top_ref & top_half) >= 27
    with pytest.raises(ValueError, match="scores_dtype"):
        cg.attribute(model, graph, task, scores_dtype=torch.int8, progress=False)


def test_bfloat16_model_with_sae_sites():
    from circuitgraph import zoo
    from circuitgraph.sae import zoo_saes

    entry = zoo.load("induction", device="cpu")
    model = entry.model.to(torch.bfloat16)
    try:
        task = entry.task("induction").select(slice(0, 4))
        graph = cg.feature_graph(model, zoo_saes("induction"), task)
        scores = cg.attribute(model, graph, task, method="eap", progress=False)
        assert scores.dtype == torch.float32 and bool(scores.abs().sum() > 0)
        faith = cg.faithfulness(model, graph, task, graph.valid)
        assert abs(faith - 1.0) < 1e-3
    finally:
        entry.model.to(torch.float32)


def test_offloaded_evaluator_cache_gives_the_same_metrics():
    from circuitgraph.engine import CircuitEvaluator

    task = _task()
    model = _ln_model(torch.float32)
    graph = cg.Graph.from_model(model)
    masks = torch.rand((3, *graph.valid.shape), generator=torch.Generator().manual_seed(0)) < 0.5
    plain = CircuitEvaluator(model, graph, task, offload=False)
    off = CircuitEvaluator(model, graph, task, offload=True)
    assert off.offload and not plain.offload
    for _ in range(2):  # the second call reads the cache
        assert torch.equal(off(masks), plain(masks))
    assert all(t.device.type == "cpu" for t in off._cache.values()) and len(off._cache) == len(off.chunks)
    with pytest.raises(ValueError, match="offload"):
        CircuitEvaluator(model, graph, task, offload="sometimes")
    # the public calls pass it through (their evaluators are built inside)
    mask = masks[0] & graph.valid
    assert cg.faithfulness(model, graph, task, mask, offload=True) == cg.faithfulness(model, graph, task, mask)
    with pytest.raises(ValueError, match="offload"):
        cg.faithfulness(model, graph, task, mask, offload="sometimes")
    with pytest.raises(ValueError, match="offload"):
        cg.minimal_circuit(model, graph, task, offload="sometimes")
    with pytest.raises(TypeError, match="memory_budget"):  # a misspelt keyword is named, not ignored
        cg.faithfulness_curve(model, graph, task, memory_budjet=1e9)


def test_attribution_batches_count_neurons_and_features_as_low_rank():
    """EAP and patched forwards keep a neuron or feature as one number per position, so their chunk
    budgets count them so. The score matrix is only allocated when used."""
    from circuitgraph.engine.batching import auto_batch_size

    model = _ln_model(torch.float32)
    graph = cg.Graph.from_model(model, neurons=True)
    assert graph._scores is None
    task = _task().select(torch.arange(8).repeat(64))  # 512 examples
    dense, lowrank = auto_batch_size(graph, task, 2e7), auto_batch_size(graph, task, 2e7, lowrank=True)
    assert lowrank == dense  # (patched forwards: coefficient blocks, engine/sources.py)
    as_rows = int(2e7 // (graph.n_src * graph.arch.d_model * task.seq_len * 4 * 3))  # neurons as d-vectors
    assert dense > 3 * max(as_rows, 1)
    assert graph.scores.shape == graph.valid.shape and graph._scores is not None
