"""Graphs with SAE features as nodes: the cut at each site, exactness of the spliced graph (with and
without its error nodes), EAP against finite-difference patching and against the plain graph,
and the bad inputs a user will hit."""

import pytest
import torch
from checks import edge_fd_error, five_site_case, model64, random_masks, random_sae

from circuitgraph import zoo
from circuitgraph.attribution import attribute
from circuitgraph.engine import Ablation
from circuitgraph.engine.patching import patched_logits
from circuitgraph.errors import CircuitGraphError
from circuitgraph.graph import Graph, node_kind
from circuitgraph.sae import SAE, feature_graph, splice, zoo_saes
from circuitgraph.tasks import Task

torch.set_num_threads(1)

RESID, ATTN = "blocks.1.hook_resid_pre", "blocks.0.hook_attn_out"


@pytest.fixture(scope="module")
def entry():
    return zoo.load("induction", device="cpu")


@pytest.fixture(scope="module")
def task(entry):
    return entry.task("induction").select(slice(0, 8))


@pytest.fixture(scope="module")
def saes():
    return zoo_saes("induction")


@pytest.fixture(scope="module")
def graph(entry, saes, task):
    return feature_graph(entry.model, saes, task)


def run(model, graph, task, keep, ablation="corrupted"):
    abl = Ablation(ablation).prepare(model, graph, task)
    A = abl.activations(model, graph, task, slice(0, task.n_examples), task)
    return patched_logits(model, graph, task, A, keep)


# ------------------------------------------------------------------------------------ structure


def test_sites_cut_the_residual_stream(graph):
    names = graph.src_names
    assert [s.name for s in graph.sites] == ["attn_out0", "resid_pre1"]
    assert (
        names.index("attn_out0.err") < names.index(f"resid_pre1.f{graph.sites[1].features[0]}") < names.index("a1.h0")
    )
    # the attn_out site reads only its layer's heads
    assert graph.upstream("attn_out0") == slice(1, 5)
    # the residual site reads the input and the attn_out site's nodes, not the heads it replaced
    up = [names[i] for i in graph.upstream("resid_pre1").tolist()]
    assert up[0] == "input" and all(n.startswith("attn_out0.") for n in up[1:])
    assert not any(n.startswith("a0.h") for n in up)
    # layer 1 reads only the residual site; logits read it and layer 1's heads
    assert {names[i].split(".")[0] for i in range(graph.upstream("attn1").start, graph.upstream("attn1").stop)} == {
        "resid_pre1"
    }
    assert not graph.has_edge("input", "a1.h3.k") and not graph.has_edge("a0.h1", "logits")
    assert graph.has_edge("resid_pre1.err", "a1.h3.k") and graph.has_edge("a0.h1", "attn_out0.err")
    assert node_kind("attn_out0.f3") == "feature" and node_kind("resid_pre1.err") == "sae_error"
    assert node_kind("resid_pre1.rest") == "sae_rest" and node_kind("a0.h1") == "head"


def test_active_features_are_the_nonzero_ones(entry, saes, task, graph):
    for site in graph.sites:
        acts = []
        for tokens in (task.clean, task.corrupted):
            with splice(entry.model, saes) as sp:
                entry.model(tokens)
            acts.append(sp.acts[site.hook_name])
        active = ((acts[0] > 0) | (acts[1] > 0)).flatten(0, 1).any(0)
        assert list(site.features) == active.nonzero()[:, 0].tolist()
        assert not site.has_rest or 0 < len(site.features) < site.d_sae


def test_spec_round_trip_keeps_sites(graph, saes):
    again = Graph.from_spec(graph.spec())
    assert again.src_names == graph.src_names and again.dst_names == graph.dst_names
    assert torch.equal(again.valid, graph.valid)
    with pytest.raises(ValueError, match="no SAE attached"):
        from circuitgraph.engine.sites import site_sae

        site_sae(again, again.sites[0])
    again.attach_saes(saes)
    assert set(again.saes) == {RESID, ATTN}


# ------------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("subset", [False, True])
def test_full_and_empty_circuits_are_the_clean_and_corrupted_runs(entry, saes, task, subset):
    model = entry.model
    features = {RESID: list(range(0, 512, 7)), ATTN: [1, 2, 3]} if subset else "active"
    g = feature_graph(model, saes, task, features=features)
    assert all(s.has_rest for s in g.sites)  # features that are not nodes stay in the model as `rest`
    clean, corrupted = model(task.clean), model(task.corrupted)
    assert (run(model, g, task, g.valid) - clean).abs().max() < 1e-4
    assert (run(model, g, task, ~g.valid) - corrupted).abs().max() < 1e-4


def test_compact_ablations_patch_like_dense_ones(entry, task, graph):
    """The evaluator caches ablations with SAE features as coefficients; patched runs from them equal
    patched runs from the dense ``[n_src, B, P, d]`` activations."""
    from circuitgraph.engine.tensors import CompactSources

    model = entry.model
    abl = Ablation("zero").prepare(model, graph, task)
    every = slice(0, task.n_examples)
    dense = abl.activations(model, graph, task, every, task)
    compact = abl.activations(model, graph, task, every, task, compact=True)
    n_features = sum(len(s.features) for s in graph.sites)
    assert isinstance(compact, CompactSources) and compact.shape == dense.shape
    assert compact.dense.shape[0] == graph.n_src - n_features
    masks = (torch.rand((3, *graph.valid.shape), generator=torch.Generator().manual_seed(0)) < 0.3) & graph.valid
    a, b = (patched_logits(model, graph, task, A, masks) for A in (dense, compact))
    assert (a - b).abs().max() < 1e-4 and (a - model(task.clean).repeat(3, 1, 1)).abs().max() > 1e-2


@pytest.mark.parametrize("compact", [True, False])
def test_feature_reads_by_exceptions_patch_as_virtual_weights_did(compact, monkeypatch):
    """An SAE feature's removed input, summed over the circuit's exceptions (a column's base removal
    through the upstream total, then one term per edge that differs from it), equals the sum through
    the virtual weights ``W_dec · W_enc`` and every dense row projected on every encoder row, in
    float64, on random masks of every route; from compact and from dense ablations."""
    from circuitgraph.engine.deltas import LiveDeltas

    model, _, saes, task = five_site_case()
    g = feature_graph(model, saes, task, features="active")
    masks = random_masks(g, seed=3)
    abl = Ablation().prepare(model, g, task)
    ablated = abl.activations(model, g, task, slice(None), task, compact=compact)
    batches = [masks[k : k + 1] for k in range(len(masks))] + [masks[[0, 1, 3]]]
    sparse = LiveDeltas._projected_by_exceptions
    taken = []

    def counted(self, *args):
        out = sparse(self, *args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(LiveDeltas, "_projected_by_exceptions", counted)
    got = [patched_logits(model, g, task, ablated, m) for m in batches]
    assert any(taken) and not all(taken)  # both routes ran (half the edges: too many exceptions)
    monkeypatch.setattr(LiveDeltas, "_projected_by_exceptions", lambda self, *args: None)
    reference = [patched_logits(model, g, task, ablated, m) for m in batches]
    clean = model(task.clean)
    for a, ref in zip(got, reference):
        assert (ref - clean.repeat(len(ref) // len(clean), 1, 1)).abs().max() > 1e-2  # the masks matter
        assert (a - ref).abs().max() < 1e-10 * ref.abs().max()


def test_removing_the_error_node_is_running_on_the_reconstruction(entry, saes, task, graph):
    """Zero-ablating every edge out of a site's error node equals splicing the SAE without its
    error term; keeping it equals the model (the graph is exact)."""
    model = entry.model
    for hook in (RESID, ATTN):
        site = graph.site(hook)
        keep = graph.valid.clone()
        keep[graph.src(f"{site.name}.err")] = False
        patched = run(model, graph, task, keep, ablation="zero")
        with splice(model, [saes[hook]], keep_error=False):
            recon_only = model(task.clean)
        with splice(model, [saes[hook]], keep_error=True):
            spliced = model(task.clean)
        clean = model(task.clean)
        assert (spliced - clean).abs().max() < 1e-4
        assert (patched - recon_only).abs().max() < 1e-4
        assert (patched - clean).abs().max() > 1e-2  # the error term matters


def test_eap_sums_match_the_plain_graph(entry, task, graph):
    """A site's nodes sum to its input, and its readers' gradients sum to the residual gradient,
    so summed SAE-graph scores equal summed scores of the graph without SAEs."""
    model = entry.model
    se = attribute(model, graph, task, method="eap", progress=False).clone()
    # the SAEs' weights were frozen for the backward (no .grad left behind), then restored
    assert all(p.grad is None and p.requires_grad for sae in graph.saes.values() for p in sae.parameters())
    plain = Graph.from_model(model)
    sp = attribute(model, plain, task, method="eap", progress=False)
    heads0 = [plain.src(f"a0.h{h}") for h in range(4)]
    after = [j for j, n in enumerate(plain.dst_names) if n.startswith("a1") or n == "logits"]
    site_cols = graph.dst_slices()["resid_pre1"]
    torch.testing.assert_close(
        se[graph.src("input"), site_cols].sum(), sp[plain.src("input"), after].sum(), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        se[graph.src_slices()["attn_out0"], site_cols].sum(), sp[heads0][:, after].sum(), rtol=1e-4, atol=1e-5
    )
    rows = graph.src_slices()["resid_pre1"]
    for v in ("a1.h3.k", "a1.h3.q", "a1.h2.v", "logits"):
        torch.testing.assert_close(
            se[rows, graph.dst(v)].sum(), sp[[0] + heads0, plain.dst(v)].sum(), rtol=1e-4, atol=1e-5
        )


def test_eap_equals_patching_derivative_on_every_site_kind():
    """Random LN model with GELU MLPs, SAEs at all five site kinds (some features left to ``rest``),
    float64: EAP edge scores equal d/dε of the patched metric."""
    model, hooks, saes, task = five_site_case()
    clean, corrupted = task.clean, task.corrupted
    graph = Graph.from_model(model, saes=saes, features={h: range(0, 24, 2) for h in hooks})
    assert isinstance(graph.upstream("resid_mid1"), torch.Tensor)  # non-contiguous: skips the heads attn_out1 hides
    assert (run(model, graph, task, graph.valid) - model(clean)).abs().max() < 1e-10
    assert (run(model, graph, task, ~graph.valid) - model(corrupted)).abs().max() < 1e-10
    assert edge_fd_error(model, graph, task, n_edges=300) < 1e-4


def test_eap_equals_patching_derivative_on_the_zoo_saes(entry, saes):
    model = entry.model.to(torch.float64)
    try:
        s64 = {k: SAE(v.d_in, v.d_sae, k, dtype=torch.float64) for k, v in saes.items()}
        for k, s in s64.items():
            s.load_state_dict({n: p.double() for n, p in saes[k].state_dict().items()})
        task = entry.task("induction").select(slice(0, 2))
        active = feature_graph(model, s64, task)
        graph = Graph.from_model(
            model, saes=s64, features={h: site.features[::3] for h, site in ((s.hook_name, s) for s in active.sites)}
        )
        assert edge_fd_error(model, graph, task, n_edges=64) < 1e-3
    finally:
        entry.model.to(torch.float32)


# ------------------------------------------------------------------------------------ bad input


def test_bad_sae_inputs(entry, saes, task):
    model = entry.model
    with pytest.raises(ValueError, match="d_in=32"):
        Graph.from_model(model, saes=[SAE(32, 8, RESID)], features="all")
    with pytest.raises(ValueError, match="not a hook point of this model"):
        Graph.from_model(model, saes=[SAE(64, 8, "blocks.7.hook_resid_pre")], features="all")
    with pytest.raises(ValueError, match="residual-stream or layer-output hook point"):
        Graph.from_model(model, saes=[SAE(64, 8, "blocks.0.attn.hook_z")], features="all")
    with pytest.raises(ValueError, match="same point of the residual stream"):
        Graph.from_model(model, saes=[SAE(64, 8, "blocks.0.hook_resid_post"), SAE(64, 8, RESID)], features="all")
    with pytest.raises(ValueError, match="pass task="):
        feature_graph(model, saes)
    with pytest.raises(CircuitGraphError, match="never runs the model"):
        Graph.from_model(model, saes=saes, features="active")
    with pytest.raises(ValueError, match="out of range"):
        Graph.from_model(model, saes=saes, features={RESID: [512]})
    with pytest.raises(ValueError, match="which have no SAE"):
        Graph.from_model(model, saes=saes, features={"blocks.0.hook_resid_pre": [1]})
    with pytest.raises(ValueError, match="no MLPs"):
        Graph.from_model(model, saes=[SAE(64, 8, "blocks.0.hook_mlp_out")], features="all")
    with pytest.raises(ValueError, match="no MLPs"):  # (neurons with SAE sites: tests/test_combinations.py)
        Graph.from_model(model, saes=saes, neurons=True)
    g = feature_graph(model, saes, task)
    with pytest.raises(ValueError, match="not the SAE the graph was built with"):
        Graph.from_spec(g.spec()).attach_saes([SAE(64, 256, RESID), saes[ATTN]])
    with pytest.raises(ValueError, match="no SAE given"):
        Graph.from_spec(g.spec()).attach_saes([saes[ATTN]])
    transcoder = SAE(64, 512, RESID, apply_b_dec_to_input=False, hook_name_out="blocks.1.hook_mlp_out")
    with pytest.raises(ValueError, match="hook_name_out"):  # a transcoder is not the site's SAE
        Graph.from_spec(g.spec()).attach_saes([transcoder, saes[ATTN]])


def test_top_k_features_are_the_largest_node_attributions(entry, saes, task):
    """``features=k`` keeps, per site, the k features whose node attribution Δf · ∂m/∂f is largest;
    by EAP's linearity that is the sum of each feature's out-edge scores in the all-features graph."""
    model = entry.model
    chosen = feature_graph(model, saes, task, features=12)
    full = Graph.from_model(model, saes=saes, features="all")
    scores = attribute(model, full, task, method="eap", progress=False)
    for site in chosen.sites:
        rows = full.src_slices()[site.name]
        node = scores[rows.start : rows.start + site.d_sae].sum(1).abs()  # features first, in id order
        assert set(site.features) == set(node.topk(12).indices.tolist())
        assert len(site.features) == 12 and site.features != tuple(range(12))


def test_sites_with_padding_half_precision_saes_and_zero_ablation(entry, saes):
    """Padded prompts (each read at its own last token), bf16 SAEs on the float32 model, and zero
    ablation: the full circuit is still the model, and patched forwards run."""
    model = entry.model
    base = entry.task("induction").select(slice(0, 4))
    mask = torch.ones_like(base.clean)
    mask[:2, -5:] = 0
    task = Task(
        clean=base.clean,
        corrupted=base.corrupted,
        answer=base.answer,
        wrong=base.wrong,
        attention_mask=mask,
        read_positions=mask.sum(1) - 1,
    )
    half = {k: SAE(v.d_in, v.d_sae, k, dtype=torch.bfloat16) for k, v in saes.items()}
    for k, h in half.items():
        h.load_state_dict({n: p.to(torch.bfloat16) for n, p in saes[k].state_dict().items()})
    graph = feature_graph(model, half, task)
    full = run(model, graph, task, graph.valid, ablation="zero")
    clean = model(task.clean, attention_mask=mask)
    read = (torch.arange(4), task.read_positions)
    assert (full[read] - clean[read]).abs().max() < 1e-3
    empty = run(model, graph, task, torch.zeros_like(graph.valid), ablation="zero")
    assert (empty[read] - clean[read]).abs().max() > 1e-2


# ------------------------------------------------------------------------------------ files and exports


def test_sae_circuits_save_export_and_refuse_what_they_cannot_be(entry, saes, task, graph, tmp_path):
    from circuitgraph import Circuit
    from circuitgraph.circuit import build_circuit, top_n
    from circuitgraph.export.formats import from_graphml, to_graphml, to_mib_json
    from circuitgraph.hypothesis import Hypothesis
    from circuitgraph.hypothesis.nodes import HypothesisError

    attribute(entry.model, graph, task, method="eap", progress=False)
    circuit = build_circuit(graph, top_n(graph, 60), task)
    circuit.save(tmp_path / "c.json")
    back = Circuit.load(tmp_path / "c.json", entry.model)
    assert back.graph.sites == graph.sites and torch.equal(back.mask, circuit.mask)
    to_graphml(circuit, tmp_path / "c.graphml")
    again = from_graphml(tmp_path / "c.graphml")
    assert again.graph.sites == graph.sites and torch.equal(again.mask, circuit.mask)
    torch.testing.assert_close(again.graph.scores, graph.scores)
    other = Graph.from_model(entry.model, saes=saes, features={RESID: [1, 2], ATTN: [3]})
    with pytest.raises(ValueError, match="SAE sites"):
        from_graphml(tmp_path / "c.graphml", other)
    with pytest.raises(ValueError, match="MIB format"):
        to_mib_json(circuit, tmp_path / "c.mib.json")
    with pytest.raises(HypothesisError, match="SAE node"):
        Hypothesis.from_circuit(circuit)


# ------------------------------------------------------------------------------------ transcoders


def _transcoder(layer: int, reads: str, seed: int) -> SAE:
    """A random transcoder from layer ``layer``'s MLP input (``reads``) to its output."""
    sae = random_sae(f"blocks.{layer}.{reads}", 16, 24, seed)
    tc = SAE(
        16,
        24,
        f"blocks.{layer}.{reads}",
        dtype=torch.float64,
        apply_b_dec_to_input=False,
        hook_name_out=f"blocks.{layer}.hook_mlp_out",
    )
    tc.load_state_dict(sae.state_dict())
    return tc


def test_transcoders_replace_mlps_exactly(tmp_path):
    """Transcoders (one reading through ln2, one reading the raw MLP input) stand in for both MLPs,
    next to a residual SAE: the graph is exact, EAP equals the patching derivative, zero-ablating a
    transcoder's error node is the transcoder-only splice, and transcoders round-trip on disk."""
    from circuitgraph.models.backend import hook_flags
    from circuitgraph.sae import load_sae, save_sae

    model = model64()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # an unfolded ln2: hook_normalized (what the transcoder reads) is before w, b
        model.blocks[0].ln2.w.copy_(1 + 0.5 * torch.randn(16, generator=g, dtype=torch.float64))
        model.blocks[0].ln2.b.copy_(0.5 * torch.randn(16, generator=g, dtype=torch.float64))
    tcs = [_transcoder(0, "ln2.hook_normalized", 5), _transcoder(1, "hook_mlp_in", 6)]
    saes = tcs + [random_sae("blocks.1.hook_resid_pre", 16, 24, 7)]
    g = torch.Generator().manual_seed(1)
    clean, corrupted = torch.randint(0, 20, (4, 6), generator=g), torch.randint(0, 20, (4, 6), generator=g)
    task = Task(clean=clean, corrupted=corrupted, answer=clean[:, 0], wrong=corrupted[:, 0])
    graph = Graph.from_model(model, saes=saes, features={s.hook_name: range(0, 24, 2) for s in saes})
    assert [s.name for s in graph.sites] == ["transcoder0", "resid_pre1", "transcoder1"]
    assert "m0" not in graph.src_index and graph.has_edge("transcoder0.f2", "resid_pre1.err")
    assert graph.has_edge("resid_pre1.f0", "transcoder1.f4") and graph.has_edge("transcoder1.err", "logits")
    assert (run(model, graph, task, graph.valid) - model(clean)).abs().max() < 1e-10
    assert (run(model, graph, task, ~graph.valid) - model(corrupted)).abs().max() < 1e-10
    assert edge_fd_error(model, graph, task, n_edges=300) < 1e-3

    with hook_flags(model):
        with splice(model, tcs):
            spliced = model(clean)
        with splice(model, [tcs[0]], keep_error=False):
            recon_only = model(clean)
    assert (spliced - model(clean)).abs().max() < 1e-10
    keep = graph.valid.clone()
    keep[graph.src("transcoder0.err")] = False  # (the transcoder's own reading of hook_normalized)
    assert (run(model, graph, task, keep, ablation="zero") - recon_only).abs().max() < 1e-8

    save_sae(tcs[0], tmp_path / "tc0")
    back = load_sae(tmp_path / "tc0")
    assert back.hook_name_out == "blocks.0.hook_mlp_out" and not back.apply_b_dec_to_input
    assert torch.equal(back.W_enc, tcs[0].W_enc)
    again = Graph.from_spec(graph.spec())
    assert again.sites == graph.sites and torch.equal(again.valid, graph.valid)


def test_bad_transcoders():
    model = model64(dtype=torch.float32)
    with pytest.raises(ValueError, match="apply_b_dec_to_input must be false"):
        SAE(16, 8, "blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out")
    wrong_layer = SAE(
        16, 8, "blocks.0.ln2.hook_normalized", apply_b_dec_to_input=False, hook_name_out="blocks.1.hook_mlp_out"
    )
    with pytest.raises(ValueError, match="same layer"):
        Graph.from_model(model, saes=[wrong_layer], features="all")
    tc = SAE(16, 8, "blocks.0.ln2.hook_normalized", apply_b_dec_to_input=False, hook_name_out="blocks.0.hook_mlp_out")
    with pytest.raises(ValueError, match="transcoder and an mlp_out SAE"):
        Graph.from_model(model, saes=[tc, SAE(16, 8, "blocks.0.hook_mlp_out")], features="all")
