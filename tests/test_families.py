"""The model families researchers study, on small random float64 HookedTransformers built from
configs: parallel attention+MLP (GPT-NeoX/Pythia, GPT-J), gated MLPs with RMS norms and grouped
keys/values (Llama, Qwen, Mistral), norms after sublayers with soft-caps, local/global attention
and GeGLU (Gemma-2), and Gemma-3's q/k norms. Each passes the same checks (tests/checks.py), at
head level and with neurons (a subset plus ``rest``):

* the full circuit is the clean run and the empty circuit the corrupted run (< 1e-6);
* each source's EAP scores summed over its outgoing edges equal the finite-difference derivative
  of the metric as that source moves toward its ablated value;
* ``exact`` scores equal single-edge runs patched with TransformerLens's own hooks and modules.
"""

import contextlib

import pytest
import torch
from checks import edge_fd_error, exact_error, full_and_empty, random_sae, single_edge_reference, source_fd_error
from conftest import tiny_model, tiny_task

import circuitgraph as cg
from circuitgraph.attribution.nodes import neuron_attribution
from circuitgraph.circuit import build_circuit
from circuitgraph.engine import Ablation
from circuitgraph.errors import CircuitGraphError, HypothesisError
from circuitgraph.graph import Graph, PositionalGraph
from circuitgraph.hypothesis import Hypothesis, scrub
from circuitgraph.models.backend import config_hash

torch.set_num_threads(1)

_GEMMA2 = dict(
    normalization_type="RMS",
    use_normalization_before_and_after=True,  # RMS norms before and after each sublayer
    gated_mlp=True,
    act_fn="gelu_pytorch_tanh",  # GeGLU
    attn_scores_soft_cap=50.0,
    output_logits_soft_cap=30.0,
    use_local_attn=True,  # sliding-window and global layers alternate
    attn_types=["local", "global"],
    window_size=3,
    n_heads=4,
    n_key_value_heads=2,
    positional_embedding_type="rotary",
    rotary_dim=4,
)
FAMILIES = {
    "gpt-neox": dict(parallel_attn_mlp=True, positional_embedding_type="rotary", rotary_dim=2, d_head=8, n_heads=2),
    "gpt-j": dict(parallel_attn_mlp=True, act_fn="gelu_new", positional_embedding_type="rotary", rotary_dim=2),
    "llama": dict(
        gated_mlp=True,
        act_fn="silu",
        normalization_type="RMS",
        n_heads=4,
        n_key_value_heads=2,
        positional_embedding_type="rotary",
        rotary_dim=4,
    ),  # fmt: skip
    "gelu-glu-parallel": dict(gated_mlp=True, act_fn="gelu", parallel_attn_mlp=True, normalization_type="RMS"),
    "gemma-2": _GEMMA2,
    "gemma-3": {**_GEMMA2, "use_qk_norm": True, "attn_scores_soft_cap": -1.0, "output_logits_soft_cap": -1.0},
}
NEURONS = {0: [1, 4, 7, 30], 1: [0, 2, 31]}


def family_model(name: str, **extra) -> torch.nn.Module:
    """The family's tiny model in float64, with every norm gain (after sublayers and on q/k too)
    perturbed away from 1, so each norm's Jacobian matters."""
    model = tiny_model(dtype=torch.float64, **{**FAMILIES[name], **extra})
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        for n, p in model.named_parameters():
            if n.endswith(("_post.w", "q_norm.w", "k_norm.w")):
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    model = family_model(request.param)
    return request.param, model, tiny_task(model)


@pytest.mark.parametrize("neurons", [None, NEURONS], ids=["heads", "neurons"])
def test_full_circuit_is_clean_and_empty_is_corrupted(family, neurons):
    _, model, task = family
    graph = Graph.from_model(model, neurons=neurons)
    full, empty = full_and_empty(model, graph, task)
    assert full < 1e-6 and empty < 1e-6, (full, empty)


@pytest.mark.parametrize("neurons", [None, NEURONS], ids=["heads", "neurons"])
def test_eap_is_the_derivative_of_patching_each_source(family, neurons):
    _, model, task = family
    graph = Graph.from_model(model, neurons=neurons)
    assert source_fd_error(model, graph, task) < 1e-6


@pytest.mark.parametrize("neurons", [None, NEURONS], ids=["heads", "neurons"])
def test_exact_scores_are_single_edge_runs(family, neurons):
    _, model, task = family
    graph = Graph.from_model(model, neurons=neurons)
    assert exact_error(model, graph, task, per_kind=2) < 1e-9


def test_every_neuron_and_gated_neuron_graph(family):
    """All neurons of both layers (no ``rest``): exact and first-order checks."""
    _, model, task = family
    graph = Graph.from_model(model, neurons=True)
    assert max(full_and_empty(model, graph, task)) < 1e-6
    assert source_fd_error(model, graph, task) < 1e-6


def test_eap_ig_completeness(family):
    """Σ_v score(input→v) ≈ m(corrupted) − m(clean) for every family: within 1 % at 64 steps (the
    midpoint rule's error falls as 1/steps²; the soft-capped, q/k-normed Gemma models curve most)."""
    _, model, task = family
    graph = Graph.from_model(model)
    scores = cg.attribute(model, graph, task, method="eap-ig", steps=64, progress=False, scores_dtype=torch.float64)
    gap = (task.score(model(task.corrupted)).mean() - task.score(model(task.clean)).mean()).item()
    assert abs(scores[graph.src("input")].sum().item() - gap) <= 0.01 * abs(gap)


def test_neuron_attribution_is_the_sum_of_out_edge_scores(family):
    """A neuron's node attribution Δpost·∂m/∂post (what ``top_neurons`` ranks) is its EAP scores
    summed over its outgoing edges: gated neurons and neurons behind the MLP's post-norm alike."""
    _, model, task = family
    graph = Graph.from_model(model, neurons=True)
    scores = cg.attribute(model, graph, task, method="eap", progress=False, scores_dtype=torch.float64)
    attr = neuron_attribution(model, task)
    for L in range(model.cfg.n_layers):
        rows = [graph.src(f"m{L}.n{i}") for i in range(model.cfg.d_mlp)]
        torch.testing.assert_close(scores[rows].sum(1), attr[L].double(), rtol=1e-6, atol=1e-9)
    chosen = cg.top_neurons(model, task, k=3)
    assert chosen[1] == sorted(attr[1].abs().topk(3).indices.tolist())


def test_removing_only_rest_edges_leaves_the_chosen_neurons_alone():
    """One edge into ``m1.rest`` changes what the other neurons read, not the chosen ones (one
    patched run at a time: batched masks used to hide that the chosen neurons read it too)."""
    for name in ("llama", "gemma-2"):
        model = family_model(name)
        task = tiny_task(model)
        graph = Graph.from_model(model, neurons=NEURONS)
        A = Ablation().prepare(model, graph, task).activations(model, graph, task, slice(None), task)
        base = task.score(cg.engine.patched_logits(model, graph, task, A, graph.valid)).mean()
        for edge in (("a0.h1", "m1.rest"), ("m0.rest", "m1.rest"), ("m0.n4", "m1.n2")):
            keep = graph.valid.clone()
            keep[graph.edge(edge)] = False
            got = task.score(cg.engine.patched_logits(model, graph, task, A, keep)).mean() - base
            assert float(got) == pytest.approx(single_edge_reference(model, graph, task, edge), abs=1e-10)


# ------------------------------------------------------------------------------------ structure


def test_architecture_facts_are_recorded_and_checked(tmp_path):
    gemma, neox = family_model("gemma-2"), family_model("gpt-neox")
    g, p = Graph.from_model(gemma), Graph.from_model(neox)
    assert g.arch.post_norms and not g.arch.parallel_attn_mlp
    assert p.arch.parallel_attn_mlp and not p.arch.post_norms
    for graph in (g, p):
        again = Graph.from_spec(graph.spec())
        assert again.arch == graph.arch and torch.equal(again.valid, graph.valid)
    # the fingerprint tells a model with norms after sublayers from the same model without them
    plain = family_model("gemma-2", use_normalization_before_and_after=False)
    assert config_hash(plain.cfg) != config_hash(gemma.cfg)
    # circuit files record the facts, and a graph of another architecture is refused
    task = tiny_task(gemma)
    c = cg.minimal_circuit(gemma, g, task, target=0.8, method="eap")
    back = cg.Circuit.load(c.save(tmp_path / "g.json"), gemma)
    assert back.graph.arch.post_norms and torch.equal(back.mask, c.mask)
    wrong = Graph.from_spec({**g.spec(), "post_norms": False, "config_hash": ""})
    with pytest.raises(CircuitGraphError, match="post_norms=False but the model has post_norms=True"):
        cg.attribute(gemma, wrong, task, progress=False)


def test_mib_json_carries_the_parallel_flag(tmp_path):
    from circuitgraph.export.formats import from_mib_json, to_mib_json

    model = family_model("gpt-neox")
    task = tiny_task(model)
    graph = Graph.from_model(model)
    cg.attribute(model, graph, task, progress=False)
    c = build_circuit(graph, cg.top_n(graph, 10), task)
    path = to_mib_json(c, tmp_path / "c.json")
    back = from_mib_json(path)  # the graph built from the file's cfg
    assert back.graph.arch.parallel_attn_mlp and torch.equal(back.mask, c.mask)
    with pytest.raises(ValueError, match="parallel attention/MLP model.*sequential"):
        from_mib_json(path, Graph.from_model(tiny_model(d_head=8, n_heads=2)))


def test_position_resolved_graphs_behind_post_norms():
    model = family_model("gemma-2")
    task = tiny_task(model)
    pg = PositionalGraph.from_model(model, positions=task.seq_len)
    assert max(full_and_empty(model, pg, task)) < 1e-6
    base = cg.attribute(model, pg.base, task, progress=False).clone()
    per_position = cg.attribute(model, pg, task, progress=False)
    torch.testing.assert_close(pg.diagonal(per_position).sum(-1), base, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["gpt-neox", "gemma-2"])
def test_sae_sites_and_transcoders(name):
    """Residual and attention-output SAEs and a transcoder on a parallel and a post-norm model:
    the graph is exact and EAP equals the derivative of patching, edge by edge (an ``attn_out``
    site of a post-norm model reads its layer's heads through the post-norm)."""
    model = family_model(name)
    task = tiny_task(model, n=4, seq=6)
    d = model.cfg.d_model
    saes = [
        random_sae("blocks.0.hook_resid_pre", d, 24, 0),
        random_sae("blocks.0.hook_attn_out", d, 24, 1),
        random_sae("blocks.1.hook_resid_pre", d, 24, 2),
        random_sae("blocks.1.ln2.hook_normalized", d, 24, 3, hook_out="blocks.1.hook_mlp_out"),
    ]
    graph = Graph.from_model(model, saes=saes, features={s.hook_name: range(0, 24, 2) for s in saes})
    assert max(full_and_empty(model, graph, task)) < 1e-6
    assert edge_fd_error(model, graph, task, n_edges=200) < 1e-4
    if name == "gpt-neox":  # no residual stream between a parallel block's attention and its MLP
        with pytest.raises(CircuitGraphError, match="no hook_resid_mid"):
            Graph.from_spec(
                {**graph.spec(), "sites": [{"hook_name": "blocks.0.hook_resid_mid", "d_sae": 4, "features": []}]}
            )


def test_scrubbing_a_post_norm_model_is_refused_with_the_reason():
    model = family_model("gemma-2")
    with pytest.raises(HypothesisError, match="norms after sublayers"):
        scrub(model, Hypothesis.full(model), tiny_task(model, metric="cross_entropy"))


def test_4bit_model_is_refused_with_the_fix():
    model = tiny_model()
    model.cfg.load_in_4bit = True
    with pytest.raises(CircuitGraphError, match="4-bit.*float32 or bfloat16"):
        Graph.from_model(model)


def test_bfloat16_gemma_2_runs_like_float32():
    """A bf16 post-norm model: the engine's arithmetic (the norms of readers' own mixes included)
    stays float32, the full and empty circuits are the bf16 model's own clean and corrupted runs
    (up to the rounding of its split-q/k/v forward), and EAP scores are the float32 model's up to
    bf16 forward noise."""
    ref = family_model("gemma-2").to(torch.float32)
    model = family_model("gemma-2").to(torch.bfloat16)
    task = tiny_task(ref)
    graph = Graph.from_model(ref)
    expect = cg.attribute(ref, graph, task, progress=False).clone()
    got = cg.attribute(model, graph, task, progress=False)
    assert (got - expect).abs().max() < 0.05 * expect.abs().max()
    full, empty = full_and_empty(model, graph, task)
    assert full < 0.05 and empty < 0.05


@pytest.mark.parametrize("name", ["llama", "gemma-3"])
def test_grouped_keys_and_values_are_projected_once_per_kv_head(name):
    """Ungrouped for the graph, a grouped-query model's gradient and capture passes (the backend's
    flags without split inputs) project each key/value head once and repeat it per query head:
    ``hook_k``/``hook_v`` and every per-query-head gradient equal TransformerLens's own ungrouped
    projection (float64); outside those passes the model is TransformerLens's own again."""
    import copy

    from circuitgraph.models.backend import as_backend

    model = family_model(name)
    task = tiny_task(model)
    cg.Graph.from_model(model)  # checks the model: ungroups grouped keys/values
    bk = as_backend(model)
    for p in model.parameters():
        p.requires_grad_(False)

    def run(shared: bool) -> list[torch.Tensor]:
        kept: dict[str, torch.Tensor] = {}

        def keep(t, hook):
            t.retain_grad()
            kept[hook.name] = t
            return t

        names = [f"blocks.{L}.attn.hook_{x}" for L in range(model.cfg.n_layers) for x in "kv"]
        leaf = [("blocks.0.hook_resid_pre", lambda t, hook: t.detach().requires_grad_(True))]
        with bk.flags() if shared else contextlib.nullcontext():
            assert ("calculate_qkv_matrices" in vars(model.blocks[1].attn)) == shared
            with model.hooks(fwd_hooks=leaf + [(n, keep) for n in names]):
                task.score(model(task.clean)).sum().backward()
        return [kept[n].detach() for n in names] + [kept[n].grad for n in names]

    got, reference = run(shared=True), run(shared=False)
    assert "calculate_qkv_matrices" not in vars(model.blocks[1].attn)  # (removed with the flags)
    assert all(t.shape[2] == model.cfg.n_heads for t in got)  # one per query head
    for a, b in zip(got, reference):
        assert (a - b).abs().max() <= 1e-12 * b.abs().max()
    grads = got[len(got) // 2 :]
    assert max(float((g[:, :, 0] - g[:, :, 1]).abs().max()) for g in grads) > 1e-6  # query heads of a group differ
    twin = copy.deepcopy(model)  # a copy made after attribution runs on its own weights
    with torch.no_grad():
        twin.blocks[0].attn._W_K.mul_(2)
        assert (twin(task.clean) - model(task.clean)).abs().max() > 1e-6


@pytest.mark.parametrize("neurons", [None, NEURONS], ids=["heads", "neurons"])
def test_eap_ig_in_uneven_chunks_equals_one_chunk(family, neurons):
    """EAP-IG reuses its buffers across steps, layers and example chunks (behind post-norms, the
    deltas through each step's Jacobian too): chunks of 4 examples and a shorter last one give the
    scores of one chunk of every example."""
    _, model, task = family
    assert task.n_examples % 4
    graph = Graph.from_model(model, neurons=neurons)
    kw = dict(method="eap-ig", steps=3, progress=False, scores_dtype=torch.float64)
    whole = cg.attribute(model, graph, task, batch_size=task.n_examples, **kw).clone()
    parts = cg.attribute(model, graph, task, batch_size=4, **kw)
    torch.testing.assert_close(parts, whole, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("split_qkv", [True, False], ids=["qkv", "joint"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_stacked_readers_equal_one_group_at_a_time(name, split_qkv, monkeypatch):
    """The contraction stacks consecutive destination groups' readers and reads each run of
    shared upstream rows once per stack. On 4-layer models (so that a layer's heads fit the
    stack), the default stack, stacks of 13 and 5 reader rows (flushes mid-layer; a heads group
    bigger than the stack scored on its own) and of 1 row give the scores of contracting one
    group at a time, for EAP and EAP-IG."""
    from circuitgraph.attribution import gradients

    class NoStack(gradients.ReaderStack):  # every group scored on its own, as before stacking
        def room(self, n):
            return None

        def add(self, stop, cols, readers):
            return False

    deeper = {"attn_types": FAMILIES[name]["attn_types"] * 2} if "attn_types" in FAMILIES[name] else {}
    model = family_model(name, n_layers=4, **deeper)
    task = tiny_task(model)
    graph = Graph.from_model(model, split_qkv=split_qkv)
    row = task.n_examples * task.clean.shape[1] * model.cfg.d_model * 8  # one float64 reader row
    for method in ("eap", "eap-ig"):
        kw = dict(method=method, steps=3, progress=False, scores_dtype=torch.float64)
        with monkeypatch.context() as m:
            m.setattr(gradients, "ReaderStack", NoStack)
            reference = cg.attribute(model, graph, task, **kw).clone()
        for rows in (None, 13, 5, 1):
            with monkeypatch.context() as m:
                if rows is not None:
                    m.setattr(gradients, "STACK_BYTES", rows * row)
                stacked = cg.attribute(model, graph, task, **kw)
            torch.testing.assert_close(stacked, reference, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("split_qkv", [True, False], ids=["qkv", "joint"])
@pytest.mark.parametrize("name", ["gemma-2", "llama", "gpt-neox"])
def test_bfloat16_products_stay_within_the_bfloat16_models_own_error(name, split_qkv, monkeypatch):
    """A bf16 model's heads' readers are projected, and the stacked readers contracted, in bf16
    (``gradients.PROJECT_IN_MODEL_DTYPE``). Against the same weights in float64, its scores are off
    by the bf16 forward and backward anyway; the bf16 products add a fraction of that, on a
    post-norm model (each EAP-IG step contracted), a summed RMS model and a LayerNorm model
    (centred readers), heads stacked or not (neurons), for EAP and EAP-IG."""
    from circuitgraph.attribution import gradients

    deeper = {"attn_types": FAMILIES[name]["attn_types"] * 2} if "attn_types" in FAMILIES[name] else {}
    truth_model = family_model(name, n_layers=4, **deeper)
    model = family_model(name, n_layers=4, **deeper).to(torch.bfloat16)
    task = tiny_task(truth_model)
    for neurons in (None, NEURONS):
        graph = Graph.from_model(truth_model, split_qkv=split_qkv, neurons=neurons)
        for method in ("eap", "eap-ig"):
            kw = dict(method=method, steps=3, progress=False, scores_dtype=torch.float64)
            truth = cg.attribute(truth_model, graph, task, **kw).clone()
            with monkeypatch.context() as m:
                m.setattr(gradients, "PROJECT_IN_MODEL_DTYPE", ())
                wide = cg.attribute(model, graph, task, **kw).clone()
            low = cg.attribute(model, graph, task, **kw)
            own, added, total = ((x - y).norm() / truth.norm() for x, y in ((wide, truth), (low, wide), (low, truth)))
            assert 0 < added < 0.5 * own
            assert total < 1.2 * own


def test_automatic_chunks_count_what_the_contraction_holds(monkeypatch):
    """``auto_batch_size`` for attribution counts the deltas as a post-norm's Jacobian sees them
    (EAP-IG behind post-norms), a bf16 model's half-size copy for the reader stack, and the stack's
    own buffer; graphs that never stack (neurons) hold none of the latter two."""
    import sys

    from circuitgraph.attribution.gradients import STACK_BYTES, contraction_memory
    from circuitgraph.engine.batching import auto_batch_size
    from circuitgraph.models.backend import as_backend

    gemma = family_model("gemma-2").to(torch.bfloat16)
    llama = family_model("llama")
    heads, neurons = Graph.from_model(gemma), Graph.from_model(gemma, neurons=NEURONS)
    bk = as_backend(gemma)
    assert contraction_memory(bk, heads, "eap-ig") == (1.5, STACK_BYTES)
    assert contraction_memory(bk, heads, "eap") == (0.5, STACK_BYTES)
    assert contraction_memory(bk, neurons, "eap-ig-activations") == (1.0, 0.0)
    blocks = Graph.from_model(gemma)
    blocks.edge_layout = "blocks"  # (contracted group by group: no stack)
    assert contraction_memory(bk, blocks, "eap") == (0.0, 0.0)
    assert contraction_memory(as_backend(llama), Graph.from_model(llama), "eap-ig") == (0.0, STACK_BYTES)
    small = tiny_task(gemma)
    task = small.select(torch.arange(small.n_examples).repeat(40))
    per_example = heads.n_src * heads.arch.d_model * task.seq_len * 4  # bytes of one dense copy
    budget = STACK_BYTES + 50 * 4.5 * per_example
    assert auto_batch_size(heads, task, budget, lowrank=True) == min(task.n_examples, int(budget // (3 * per_example)))
    assert auto_batch_size(heads, task, budget, lowrank=True, copies=4.5, reserved_bytes=STACK_BYTES) == 50
    attribute_module = sys.modules["circuitgraph.attribution.attribute"]  # (the package exports the function)
    seen = []  # what attribute() asks for
    real = attribute_module.auto_batch_size
    monkeypatch.setattr(attribute_module, "auto_batch_size", lambda *a, **k: seen.append(k) or real(*a, **k))
    cg.attribute(gemma, heads, small, method="eap-ig", steps=2, progress=False)
    assert seen == [dict(lowrank=True, copies=4.5, reserved_bytes=STACK_BYTES)]
