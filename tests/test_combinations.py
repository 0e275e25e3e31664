"""Combinations of graph refinements (issue 14, part 4): the last layer's resid_post as an SAE
site, neurons with SAE sites, positions with neurons and with SAE sites, and activation EAP-IG on
SAE graphs. Each passes the package's exactness checks in float64: the full circuit is the clean
run, the empty circuit the corrupted run, and EAP equals the derivative of the patched metric."""

import pytest
import torch
from checks import edge_fd_error, full_and_empty, model64, random_sae

from circuitgraph.engine import Ablation
from circuitgraph.engine.patching import patched_logits
from circuitgraph.graph import Graph
from circuitgraph.models.sae import SAE
from circuitgraph.tasks import Task

torch.set_num_threads(1)


def task_for(model, n: int = 4, seq: int = 5, seed: int = 1) -> Task:
    g = torch.Generator().manual_seed(seed)
    V = model.cfg.d_vocab
    clean, corrupted = torch.randint(0, V, (n, seq), generator=g), torch.randint(0, V, (n, seq), generator=g)
    return Task(clean=clean, corrupted=corrupted, answer=clean[:, 0], wrong=corrupted[:, 0])


# ------------------------------------------------------------------ the last layer's resid_post


def test_last_resid_post_site_is_read_by_the_logits_alone():
    model = model64()
    task = task_for(model)
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    saes = [random_sae(h, seed=i) for i, h in enumerate(hooks)]
    graph = Graph.from_model(model, saes=saes, features={h: range(0, 24, 2) for h in hooks})
    last = graph.site("blocks.1.hook_resid_post")
    assert last.name == "resid_post1" and graph.has_edge("resid_post1.f0", "logits")
    assert not graph.has_edge("a1.h0", "logits") and graph.has_edge("a1.h0", "resid_post1.err")
    readers = {graph.dst_names[j] for j in graph.valid[graph.src("resid_post1.f2")].nonzero()[:, 0].tolist()}
    assert readers == {"logits"}
    full, empty = full_and_empty(model, graph, task)
    assert full < 1e-10 and empty < 1e-10
    assert edge_fd_error(model, graph, task, n_edges=200) < 1e-4


# ------------------------------------------------------------------ neurons × SAE sites

NEURON_SITES = [
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_mlp_out",
    "blocks.1.hook_resid_mid",
    "blocks.1.hook_resid_post",
]


@pytest.mark.parametrize("neurons", [True, {0: [1, 4, 7, 30], 1: [0, 2, 5]}])
def test_neurons_with_sae_sites_are_exact(neurons):
    """Neuron nodes next to SAE sites before, between and after them (an mlp_out site reads a
    neuron layer's neurons): full = clean, empty = corrupted, EAP = the patching derivative for
    every kind of edge, neuron→feature and feature→neuron through virtual weights included."""
    model = model64()
    task = task_for(model)
    saes = [random_sae(h, seed=i) for i, h in enumerate(NEURON_SITES)]
    graph = Graph.from_model(model, neurons=neurons, saes=saes, features={h: range(0, 24, 3) for h in NEURON_SITES})
    n0 = "m0.n4"
    assert graph.has_edge("resid_pre0.f3", n0) and graph.has_edge(n0, "mlp_out0.f0")
    assert not graph.has_edge(n0, "a1.h0.q") and graph.has_edge("mlp_out0.err", "a1.h0.q")
    assert graph.has_edge("resid_mid1.f6", "m1.n2") and graph.has_edge("m1.n2", "resid_post1.err")
    full, empty = full_and_empty(model, graph, task)
    assert full < 1e-10 and empty < 1e-10
    assert edge_fd_error(model, graph, task, n_edges=300, per_kind=3) < 1e-4
    assert compact_patching_error(model, graph, task) < 1e-10


def compact_patching_error(model, graph, task) -> float:
    """Patched runs from the evaluator's compact ablations (features as coefficients) against runs
    from dense ``[n_src, B, P, d]`` ones, on random masks."""
    abl = Ablation("corrupted").prepare(model, graph, task)
    every = slice(0, task.n_examples)
    masks = (torch.rand((3, *graph.valid.shape), generator=torch.Generator().manual_seed(0)) < 0.5) & graph.valid
    dense, compact = (abl.activations(model, graph, task, every, task, compact=c) for c in (False, True))
    a, b = (patched_logits(model, graph, task, A, masks) for A in (dense, compact))
    assert (a - model(task.clean).repeat(3, 1, 1)).abs().max() > 1e-3  # the masks change the run
    return float((a - b).abs().max())


def test_neurons_with_a_transcoder_elsewhere_and_refused_on_its_layer():
    model = model64()
    task = task_for(model)
    tc = SAE(
        16,
        24,
        "blocks.1.ln2.hook_normalized",
        dtype=torch.float64,
        apply_b_dec_to_input=False,
        hook_name_out="blocks.1.hook_mlp_out",
    )
    tc.load_state_dict(random_sae("blocks.1.ln2.hook_normalized", seed=5).state_dict())
    graph = Graph.from_model(model, neurons=True, saes=[tc], features={tc.hook_name: range(0, 24, 2)})
    assert graph.neurons.keys() == {0} and "m1" not in graph.src_index and graph.has_edge("m0.n3", "transcoder1.f2")
    full, empty = full_and_empty(model, graph, task)
    assert full < 1e-10 and empty < 1e-10
    assert edge_fd_error(model, graph, task, n_edges=200, per_kind=3) < 1e-4
    with pytest.raises(ValueError, match="replaces that layer's MLP"):
        Graph.from_model(model, neurons={1: [0, 1]}, saes=[tc], features="all")


# ------------------------------------------------------------------ activation EAP-IG on SAE graphs


@pytest.mark.parametrize(
    "hook", ["blocks.1.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.1.hook_resid_post", "transcoder"]
)
def test_activation_ig_on_a_site_sums_to_the_plain_graph(hook):
    """``eap-ig-activations`` fixes a site's features, rest and error to their interpolations along
    with every head and MLP. The site's nodes then add up, in value, to what the plain graph has
    there (the residual stream; for a transcoder, the interpolated MLP output), and their input
    gradients to its input gradient (straight-through), so at every step a site's nodes carry
    exactly what the plain graph carries through that point: summed over the site, the scores
    equal the plain graph's activation-IG scores. (A transcoder left live would write the MLP's
    output at the interpolated input instead, and fail this.)"""
    from circuitgraph.attribution import attribute

    model = model64()
    task = task_for(model)
    if hook == "transcoder":
        sae = SAE(
            16,
            24,
            "blocks.0.ln2.hook_normalized",
            dtype=torch.float64,
            apply_b_dec_to_input=False,
            hook_name_out="blocks.0.hook_mlp_out",
        )
        sae.load_state_dict(random_sae(sae.hook_name, seed=3).state_dict())
    else:
        sae = random_sae(hook, seed=3)
    graph = Graph.from_model(model, saes=[sae], features={sae.hook_name: range(0, 24, 2)})
    plain = Graph.from_model(model)
    kw = dict(method="eap-ig-activations", steps=3, progress=False, scores_dtype=torch.float64)
    s, p = attribute(model, graph, task, **kw), attribute(model, plain, task, **kw)
    assert p.abs().max() > 1e-3
    site = graph.sites[0]
    rows, cols = graph.src_slices()[site.name], graph.dst_slices()[site.name]
    upstream = [graph.src_names[i] for i in graph.upstream_rows(site.name).tolist()]
    readers = [graph.dst_names[j] for j in graph.valid[rows.start].nonzero()[:, 0].tolist()]
    assert len(upstream) > 1 and len(readers) > 0
    # the plain graph's counterpart: the edges through the cut, or (transcoder) the MLP's own
    R = [plain.dst("m0")] if hook == "transcoder" else [plain.dst(v) for v in readers]
    U = [plain.src("m0")] if hook == "transcoder" else [plain.src(u) for u in upstream]
    into = torch.stack([s[graph.src(u), cols].sum() for u in upstream])
    torch.testing.assert_close(into, torch.stack([p[plain.src(u), R].sum() for u in upstream]), rtol=1e-9, atol=1e-12)
    out = torch.stack([s[rows, graph.dst(v)].sum() for v in readers])
    torch.testing.assert_close(out, torch.stack([p[U, plain.dst(v)].sum() for v in readers]), rtol=1e-9, atol=1e-12)
    for u, v in graph.edges():  # edges that do not touch the site are the plain graph's
        if not (u.startswith(site.name) or v.startswith(site.name)):
            assert abs(float(s[graph.src(u), graph.dst(v)] - p[plain.src(u), plain.dst(v)])) < 1e-10
    # and activation IG is not input IG: the interpolated sources change the scores
    ig = attribute(model, graph, task, method="eap-ig", steps=3, progress=False, scores_dtype=torch.float64)
    assert (ig - s).abs().max() > 1e-4


# ------------------------------------------------------------------ positions × neurons


@pytest.mark.parametrize("neurons", [True, {0: [1, 4, 7], 1: [0, 2]}])
def test_positions_with_neurons_are_exact(neurons):
    """``m0.n4@3``: a neuron at a position reads and writes the residual stream at that position.
    Full = clean, empty = corrupted; each node's EAP scores (summed over its out-edges) equal the
    derivative of the patched metric, edge by edge too; per-position scores sum to the
    position-free neuron graph's; ``exact`` equals single-edge runs patched with TransformerLens's
    own hooks at one position (neuron readers through ln2 and their own W_in columns)."""
    from checks import exact_error, source_fd_error

    from circuitgraph.attribution import attribute
    from circuitgraph.graph import PositionalGraph

    model = model64()
    task = task_for(model, n=3, seq=4)
    graph = PositionalGraph.from_model(model, positions=task.seq_len, neurons=neurons)
    assert graph.neurons == Graph.from_model(model, neurons=neurons).neurons
    assert graph.has_edge("m0.n4@2", "m1.n0@2") and not graph.has_edge("m0.n4@2", "m1.n0@3")
    assert graph.has_edge("m0.n1@1", "a1.h0.k@1") and graph.has_edge("a0.h1@3", "m0.n7@3")
    full, empty = full_and_empty(model, graph, task)
    assert full < 1e-10 and empty < 1e-10
    assert source_fd_error(model, graph, task) < 1e-5
    assert edge_fd_error(model, graph, task, n_edges=100, per_kind=2) < 1e-4
    plain = Graph.from_model(model, neurons=neurons)
    kw = dict(method="eap-ig", steps=3, progress=False, scores_dtype=torch.float64)
    s, p = attribute(model, graph, task, **kw), attribute(model, plain, task, **kw)
    assert (s[~graph.valid] == 0).all() and p.abs().max() > 1e-3
    torch.testing.assert_close(graph.position_free(), p, rtol=1e-9, atol=1e-12)
    if neurons is not True:  # (every neuron: the same code, 4× the edges)
        assert exact_error(model, graph, task, per_kind=2) < 1e-10


# ------------------------------------------------------------------ positions × SAE sites

EVERY_SITE = [
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_mlp_out",
    "blocks.0.hook_resid_post",
    "blocks.1.hook_attn_out",
    "blocks.1.hook_resid_mid",
    "blocks.1.hook_resid_post",
]


def _transcoder(layer: int, seed: int) -> SAE:
    tc = SAE(
        16,
        24,
        f"blocks.{layer}.ln2.hook_normalized",
        dtype=torch.float64,
        apply_b_dec_to_input=False,
        hook_name_out=f"blocks.{layer}.hook_mlp_out",
    )
    tc.load_state_dict(random_sae(tc.hook_name, seed=seed).state_dict())
    return tc


@pytest.mark.parametrize("kind", ["every site kind", "transcoder and neurons"])
def test_positions_with_sae_sites_are_exact(kind):
    """``resid_pre1.f12@3``: a feature at a position reads and writes that position only; features
    stay coefficients in patched forwards (per-position removals projected on encoder rows and
    through virtual weights). Full = clean, empty = corrupted, EAP = the patching derivative edge by
    edge, compact ablations patch like dense ones, and per-position scores sum to the
    position-free SAE graph's."""
    from circuitgraph.attribution import attribute
    from circuitgraph.graph import PositionalGraph

    model = model64()
    task = task_for(model, n=3, seq=4)
    if kind == "every site kind":
        saes, neurons = [random_sae(h, seed=i) for i, h in enumerate(EVERY_SITE)], None
    else:
        saes, neurons = [random_sae("blocks.1.hook_resid_pre", seed=1), _transcoder(1, seed=2)], {0: [1, 4, 7]}
    features = {s.hook_name: range(0, 24, 3) for s in saes}
    graph = PositionalGraph.from_model(model, positions=task.seq_len, neurons=neurons, saes=saes, features=features)
    plain = Graph.from_model(model, neurons=neurons, saes=saes, features=features)
    site = graph.sites[0].name
    assert graph.has_edge("input@2", f"{site}.f3@2") and not graph.has_edge("input@2", f"{site}.f3@3")
    full, empty = full_and_empty(model, graph, task)
    assert full < 1e-10 and empty < 1e-10
    assert edge_fd_error(model, graph, task, n_edges=200, per_kind=2) < 1e-4
    assert compact_patching_error(model, graph, task) < 1e-10
    kw = dict(method="eap", progress=False, scores_dtype=torch.float64)
    s, p = attribute(model, graph, task, **kw), attribute(model, plain, task, **kw)
    assert (s[~graph.valid] == 0).all() and p.abs().max() > 1e-3
    torch.testing.assert_close(graph.position_free(), p, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ low-rank neurons × the others


@pytest.mark.parametrize("kind", ["positions × neurons", "neurons × sites", "all three"])
def test_lowrank_neurons_patch_as_dense_neuron_rows_with_positions_and_sites(kind, monkeypatch):
    """Neurons kept as coefficients in patched forwards patch exactly as neuron d-vector rows do,
    with per-position removals (which take the direct sums, not the base-and-exceptions route) and
    next to SAE features (the compact dense rows after them shift): random masks of every kind,
    small, nearly full, half, whole reader columns, relaxed; one forward each, then together."""
    from circuitgraph.engine import deltas as deltas_module
    from circuitgraph.engine import sources as sources_module
    from circuitgraph.engine.sources import coefficient_blocks, neuron_layer
    from circuitgraph.engine.tensors import CompactSources
    from circuitgraph.graph import PositionalGraph

    model = model64()
    task = task_for(model, n=3, seq=4)
    neurons = {0: [1, 4, 7, 30], 1: [0, 2, 5]}
    saes = [] if kind == "positions × neurons" else [random_sae(h, seed=i) for i, h in enumerate(NEURON_SITES[:3])]
    features = {s.hook_name: range(0, 24, 3) for s in saes}
    kw = dict(neurons=neurons, saes=saes or None, features=features or None)
    if kind == "neurons × sites":
        graph = Graph.from_model(model, **kw)
    else:
        graph = PositionalGraph.from_model(model, positions=task.seq_len, **kw)
    valid = graph.valid
    gen = torch.Generator().manual_seed(3)
    u = torch.rand((4, *valid.shape), generator=gen, dtype=torch.float64)
    cols = torch.rand(valid.shape[1], generator=gen) < 0.5  # columns losing every edge but a few
    masks = [u[0] < 0.03, u[1] < 0.97, u[2] < 0.5, ~cols[None, :] ^ (u[3] < 0.03)]
    relaxed = torch.rand(valid.shape, generator=gen, dtype=torch.float64) * valid
    masks = torch.stack([(m & valid).double() for m in masks] + [relaxed])
    batches = [masks[k : k + 1] for k in range(len(masks))] + [masks[[0, 1, 3]]]
    abl = Ablation("corrupted").prepare(model, graph, task)
    every = slice(0, task.n_examples)
    ablated = abl.activations(model, graph, task, every, task, compact=True)
    assert isinstance(ablated, CompactSources) and {"mlp0", "mlp1"} <= set(ablated.coefs)
    lowrank = [patched_logits(model, graph, task, ablated, m) for m in batches]

    def features_only(g):  # the SAE sites' blocks, neurons as d-vector rows
        return {k: v for k, v in coefficient_blocks(g).items() if neuron_layer(k) is None}

    for module in (deltas_module, sources_module):
        monkeypatch.setattr(module, "coefficient_blocks", features_only)
    dense = abl.activations(model, graph, task, every, task, compact=True)
    assert not isinstance(dense, CompactSources) or not {"mlp0", "mlp1"} & set(dense.coefs)
    reference = [patched_logits(model, graph, task, dense, m) for m in batches]
    clean = model(task.clean)
    for got, ref in zip(lowrank, reference):
        assert (ref - clean.repeat(len(ref) // len(clean), 1, 1)).abs().max() > 1e-3  # the masks matter
        assert (got - ref).abs().max() < 1e-10 * ref.abs().max()


# ------------------------------------------------------------------ on the model families


@pytest.mark.parametrize("name", ["gpt-neox", "llama", "gemma-2"])
def test_every_refinement_at_once_on_the_model_families(name):
    """Positions × neurons × SAE sites (a residual SAE and an attention-output SAE, which a
    post-norm model's heads reach through their post-norm) on a parallel, a gated and a post-norm
    model: exact, EAP = the patching derivative edge by edge, and per-position scores sum to the
    position-free graph's."""
    from conftest import tiny_task
    from test_families import family_model

    from circuitgraph.attribution import attribute
    from circuitgraph.graph import PositionalGraph

    model = family_model(name)
    task = tiny_task(model, n=3, seq=4)
    d = model.cfg.d_model
    saes = [random_sae("blocks.1.hook_resid_pre", d=d, seed=1), random_sae("blocks.0.hook_attn_out", d=d, seed=2)]
    neurons, features = {0: [1, 4, 30], 1: [0, 31]}, {s.hook_name: range(0, 24, 3) for s in saes}
    graph = PositionalGraph.from_model(model, positions=task.seq_len, neurons=neurons, saes=saes, features=features)
    plain = Graph.from_model(model, neurons=neurons, saes=saes, features=features)
    full, empty = full_and_empty(model, graph, task)
    assert full < 1e-8 and empty < 1e-8
    assert edge_fd_error(model, graph, task, n_edges=120, per_kind=1) < 1e-4
    kw = dict(method="eap", progress=False, scores_dtype=torch.float64)
    s, p = attribute(model, graph, task, **kw), attribute(model, plain, task, **kw)
    assert p.abs().max() > 1e-3
    torch.testing.assert_close(graph.diagonal(s).sum(-1), p, rtol=1e-8, atol=1e-11)


# ------------------------------------------------------------------ exact = independent single-edge runs


@pytest.mark.parametrize("kind", ["last resid_post", "neurons × sites", "positions × sites", "all three"])
def test_exact_scores_equal_single_edge_runs(kind):
    """``exact`` (the evaluator's batched patched forwards, features kept as coefficients) equals,
    for edges of every kind, one run of the model patched with TransformerLens hooks where only the
    edge's reader sees its source's corrupted value: a feature, ``rest`` or ``err`` reader re-runs
    the SAE's own encoder on its own input (tests/checks.py)."""
    from checks import exact_error

    from circuitgraph.graph import PositionalGraph

    model = model64()
    task = task_for(model, n=2, seq=3)
    hooks = {
        "last resid_post": ["blocks.1.hook_resid_post"],
        "neurons × sites": ["blocks.0.hook_mlp_out", "blocks.1.hook_resid_pre"],
        "positions × sites": ["blocks.0.hook_attn_out", "blocks.1.hook_resid_mid"],
        "all three": ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"],
    }[kind]
    saes = [random_sae(h, seed=i) for i, h in enumerate(hooks)]
    features = {h: [1, 6, 11] for h in hooks}
    neurons = {0: [1, 4], 1: [2]} if kind in ("neurons × sites", "all three") else None
    graph = Graph.from_model(model, neurons=neurons, saes=saes, features=features)
    if kind in ("positions × sites", "all three"):
        graph = PositionalGraph(graph, positions=task.seq_len)
    assert exact_error(model, graph, task, per_kind=2) < 1e-10
