"""Bootstrap stability of circuits: inclusion frequencies, Jaccard, the stable circuit."""

import pytest
import torch
from conftest import tiny_model, tiny_task

from circuitgraph import Graph, attribute, prune, top_n
from circuitgraph.attribution.attribute import exact_per_example
from circuitgraph.errors import ConfigError
from circuitgraph.evaluation.stability import mean_jaccard, resample_indices, stability


@pytest.fixture(scope="module")
def setup():
    model = tiny_model()
    task = tiny_task(model, n=8)
    return model, task, Graph.from_model(model)


@pytest.mark.parametrize("method", ["eap", "exact"])
def test_identical_resamples_give_stability_one(setup, method):
    model, task, graph = setup
    same = torch.arange(task.n_examples).repeat(4, 1)
    st = stability(model, graph, task, method=method, n_edges=6, indices=same)
    assert st.jaccard == 1.0
    assert st.n_boot == 4
    scores = attribute(model, graph, task, method=method, progress=False)
    expected = prune(graph, top_n(graph, 6, scores=scores))
    assert torch.equal(st.stable, expected)
    assert set(st.inclusion.unique().tolist()) <= {0.0, 1.0}


def test_exact_per_example_rows_average_to_exact(setup):
    model, task, graph = setup
    rows = exact_per_example(model, graph, task)
    exact = attribute(model, graph, task, method="exact", progress=False)
    assert rows.shape == (task.n_examples, *graph.valid.shape)
    assert (rows.mean(0).float() - exact).abs().max() < 1e-5


def test_reweighted_exact_equals_exact_on_the_resample(setup):
    """A bootstrap resample's exact scores from reweighted per-example rows are the exact scores
    of the resampled task itself (duplicates included)."""
    model, task, graph = setup
    idx = resample_indices(task.n_examples, 1, seed=3)
    st = stability(model, graph, task, method="exact", n_edges=5, indices=idx)
    direct = attribute(model, graph, task.select(idx[0]), method="exact", progress=False)
    assert torch.equal(st.stable, prune(graph, top_n(graph, 5, scores=direct)))


def test_random_resamples_and_figures(setup):
    model, task, graph = setup
    st = stability(model, graph, task, method="eap", n_boot=12, n_edges=6, seed=1)
    assert 0 < st.jaccard <= 1
    assert float(st.inclusion.max()) <= 1 and float(st.inclusion.min()) >= 0
    assert bool((st.inclusion[~graph.valid] == 0).all())
    d = st.to_dict(graph)
    assert d["n_boot"] == 12 and d["jaccard"] == st.jaccard
    assert all(v >= 0.9 for e, v in d["inclusion"].items() if e in d["stable_edges"])
    assert len(st.sizes) == 12


def test_callable_method_and_jaccard():
    m = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]]).bool()
    # pairs: {a,b}∩{a} = 1/2; {a,b} vs {} = 0; {a} vs {} = 0
    assert mean_jaccard(m) == pytest.approx((0.5 + 0 + 0) / 3)
    assert mean_jaccard(torch.zeros(2, 3).bool()) == 1.0
    model = tiny_model()
    task = tiny_task(model, n=6)
    graph = Graph.from_model(model)
    fixed = graph.mask_from_edges(["input->logits"])
    st = stability(model, graph, task, method=lambda mdl, g, t: fixed, n_boot=3)
    assert st.jaccard == 1.0 and torch.equal(st.stable, fixed)
    with pytest.raises(ConfigError, match="unknown method"):
        stability(model, graph, task, method="nope")


def test_learned_masks_resamples_in_one_batch(setup):
    """Edge pruning's resamples train together, at the whole task's choice: identical resamples
    give one circuit (Jaccard 1.0; the replicates share their gate noise), and the batch holds
    each resample's own circuit (the one a separate run with its weights learns)."""
    from circuitgraph.circuit.learned import learn_edge_masks, learned_circuit

    model, task, graph = setup
    kw = dict(train_steps=50, lambdas=(0.003, 0.03), examples_per_step=None)
    ref = learned_circuit(model, graph, task, target=0.8, steps=50, lambdas=(0.003, 0.03), examples_per_step=None)
    same = torch.arange(task.n_examples).repeat(3, 1)
    st = stability(model, graph, task, method="edge-pruning", indices=same, target=0.8, reference=ref, **kw)
    assert st.jaccard == 1.0 and st.n_boot == 3
    assert st.selection["kind"] == "edge-pruning, batched resamples"
    idx = resample_indices(task.n_examples, 4, seed=1)
    counts = torch.zeros(4, task.n_examples).scatter_add_(1, idx, torch.ones(idx.shape))
    # the whole task's choice: its own (here the ranking's top-n), or a winning sweep mask's λ
    for source in (ref.figures["source"], {"kind": "sweep mask", "lambda": 0.03}):
        ref.figures["source"] = source
        st = stability(model, graph, task, method="edge-pruning", indices=idx, target=0.8, reference=ref, **kw)
        lambdas = [source["lambda"]] if "lambda" in source else [0.003, 0.03]
        fixed = {k: v for k, v in st.selection["fixed"].items() if k != "resample_faithfulness"}
        assert fixed == ({"lambda": 0.03} if "lambda" in source else {"top_n": source["top_n"], "lambdas": lambdas})
        alone = []
        for r in range(4):
            one = learn_edge_masks(
                model, graph, task, weights=counts[r : r + 1], steps=50, examples_per_step=None, lambdas=lambdas
            )
            alone.append(
                one.masks[0]
                if "lambda" in source
                else prune(graph, top_n(graph, source["top_n"], scores=one.ranking[0]))
            )
        alone = torch.stack(alone)
        assert st.sizes == [int(m.sum()) for m in alone]
        assert torch.equal(st.inclusion, alone.double().mean(0).float())
        assert st.jaccard == pytest.approx(mean_jaccard(alone)) and st.jaccard < 1  # resamples differ here
        if "lambda" in source:  # each resample's circuit measured on its own resample
            assert 0 <= st.selection["fixed"]["resample_faithfulness"]["reached_target"] <= 1


def test_time_limit_stops_drawing_resamples(setup):
    model, task, graph = setup
    fixed = graph.mask_from_edges(["input->logits"])
    st = stability(model, graph, task, method=lambda mdl, g, t: fixed, n_boot=50, time_limit=0.0)
    assert st.n_boot == 2 and len(st.sizes) == 2 and st.jaccard == 1.0


def test_learned_masks_resamples_in_batches_and_within_a_time_limit(setup):
    from circuitgraph.circuit.learned import learned_circuit

    model, task, graph = setup
    ref = learned_circuit(model, graph, task, target=0.8, steps=50, lambdas=(0.003, 0.03), examples_per_step=None)
    ref.figures["source"] = {"kind": "sweep mask", "lambda": 0.03}
    kw = dict(method="edge-pruning", target=0.8, reference=ref, train_steps=50, examples_per_step=None)
    idx = resample_indices(task.n_examples, 4, seed=1)
    whole = stability(model, graph, task, indices=idx, **kw)
    split = stability(model, graph, task, indices=idx, resamples_per_batch=3, **kw)
    assert torch.equal(whole.inclusion, split.inclusion) and whole.sizes == split.sizes
    cut = stability(model, graph, task, indices=idx, resamples_per_batch=2, time_limit=0.0, **kw)
    assert cut.n_boot == 2 and cut.sizes == whole.sizes[:2]
