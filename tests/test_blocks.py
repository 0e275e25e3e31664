"""Block-sparse scores and masks (EdgeBlocks) against the dense [n_src, n_dst] layout: the same
scores, top-n, thresholds, pruning, curves, minimal circuits and files, on head, neuron and SAE
graphs; the patched forward with block masks stays exact; the evaluator's memory budget."""

from __future__ import annotations

import pytest
import torch
from checks import five_site_case, random_sae
from conftest import tiny_model, tiny_task

import circuitgraph as cg
from circuitgraph import zoo
from circuitgraph.engine.ablation import Ablation
from circuitgraph.engine.evaluator import CircuitEvaluator
from circuitgraph.engine.patching import patched_logits
from circuitgraph.errors import ConfigError, GraphError
from circuitgraph.graph.blocks import EdgeBlocks, layout_of
from circuitgraph.sae import feature_graph, zoo_saes


@pytest.fixture(scope="module")
def entry():
    return zoo.load("induction", device="cpu")


@pytest.fixture(scope="module")
def task(entry):
    return entry.task("induction").select(slice(0, 8))


def _pair(build):
    """The same graph twice: dense and as edge blocks."""
    dense, blocks = build(), build()
    dense.edge_layout, blocks.edge_layout = "dense", "blocks"
    return dense, blocks


@pytest.fixture(scope="module", params=["heads", "neurons", "sae"])
def case(request, entry, task):
    """(model, task, dense graph, block graph) for heads (the induction model), neurons (some
    layers split, a ``rest`` node; a tiny MLP model) and SAE features (the zoo's SAEs)."""
    if request.param == "heads":
        model = entry.model
        return (model, task, *_pair(lambda: cg.Graph.from_model(model)))
    if request.param == "neurons":
        model = tiny_model()
        return (model, tiny_task(model), *_pair(lambda: cg.Graph.from_model(model, neurons={0: [1, 5, 9], 1: None})))
    saes = zoo_saes("induction")
    return (entry.model, task, *_pair(lambda: feature_graph(entry.model, saes, task)))


@pytest.fixture(scope="module")
def graphs(case):
    return case[2], case[3]


@pytest.fixture(scope="module")
def scored(case):
    model, task, dense, blocks = case
    sd = cg.attribute(model, dense, task, method="eap", progress=False)
    sb = cg.attribute(model, blocks, task, method="eap", progress=False)
    return dense, blocks, sd, sb


def test_blocks_hold_exactly_the_edges(graphs):
    """Every entry of every block is an edge, and every edge is in one block."""
    dense, _ = graphs
    lay = layout_of(dense)
    assert lay.n_entries() == dense.n_edges
    ones = EdgeBlocks.full(dense, True, torch.bool)
    assert torch.equal(ones.dense(), dense.valid)


def test_scores_are_the_dense_scores(scored):
    dense, blocks, sd, sb = scored
    assert isinstance(sb, EdgeBlocks) and isinstance(sd, torch.Tensor)
    assert blocks.scores is sb and dense.scores is sd
    torch.testing.assert_close(sb.dense(), sd, rtol=1e-6, atol=1e-7)
    assert bool(sd.ne(0).any())
    # gathering edge values and the row-major non-zero order agree with the dense tensor
    idx = dense.valid.nonzero()
    torch.testing.assert_close(sb[idx[:, 0], idx[:, 1]], sd[idx[:, 0], idx[:, 1]], rtol=1e-6, atol=1e-7)
    assert torch.equal(EdgeBlocks.from_dense(blocks, sd).nonzero(), (sd * dense.valid).nonzero())


def test_eap_ig_scores_are_the_dense_scores(case):
    model, task, dense, blocks = case
    sd = cg.attribute(model, dense, task, method="eap-ig", steps=3, progress=False)
    sb = cg.attribute(model, blocks, task, method="eap-ig", steps=3, progress=False)
    torch.testing.assert_close(sb.dense(), sd, rtol=1e-5, atol=1e-6)


def test_selection_is_the_dense_selection(scored):
    """top-n (ties included: many edges score exactly alike), threshold and pruning pick the same
    edges in both layouts, with the scores given as either layout."""
    dense, blocks, sd, sb = scored
    same = EdgeBlocks.from_dense(blocks, sd)  # the dense scores, cut into blocks: exact ties
    E = dense.n_edges
    for n in (0, 1, 3, 10, E // 3, E - 1, E, E + 7):
        for absolute in (True, False):
            md = cg.top_n(dense, n, absolute, scores=sd)
            mb = cg.top_n(blocks, n, absolute, scores=same)
            assert isinstance(mb, EdgeBlocks)
            assert torch.equal(mb.dense(), md), (n, absolute)
            assert int(torch.count_nonzero(md)) == min(n, E)
            assert torch.equal(cg.prune(blocks, mb).dense(), cg.prune(dense, md)), (n, absolute)
    tau = float(sd.abs().flatten().kthvalue(sd.numel() - 5).values)
    assert torch.equal(cg.threshold(blocks, tau, scores=same).dense(), cg.threshold(dense, tau, scores=sd))
    # ties only: every score equal, the first n edges in row-major order
    flat = EdgeBlocks.full(blocks, 1.0)
    first = dense.valid.flatten().nonzero()[:7, 0]
    expect = torch.zeros(dense.valid.numel(), dtype=torch.bool)
    expect[first] = True
    assert torch.equal(cg.top_n(blocks, 7, scores=flat).dense(), expect.view_as(dense.valid))


def test_prune_drops_what_reaches_no_logit(scored):
    """A random mask: pruned in blocks as densely, and what pruning keeps is a fixed point."""
    dense, blocks, _, _ = scored
    g = torch.Generator().manual_seed(0)
    m = (torch.rand(dense.valid.shape, generator=g) < 0.2) & dense.valid
    pd, pb = cg.prune(dense, m), cg.prune(blocks, EdgeBlocks.from_dense(blocks, m))
    assert torch.equal(pb.dense(), pd)
    assert torch.equal(cg.prune(blocks, pb).dense(), pd)


def test_curves_and_minimal_circuits_are_the_dense_ones(scored, case):
    model, task = case[:2]
    dense, blocks, _, _ = scored
    cd = cg.faithfulness_curve(model, dense, task)
    cb = cg.faithfulness_curve(model, blocks, task)
    assert cb.sizes == cd.sizes
    torch.testing.assert_close(torch.tensor(cb.signed), torch.tensor(cd.signed), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(cb.absolute), torch.tensor(cd.absolute), rtol=1e-5, atol=1e-6)
    assert cd.absolute[-1] == pytest.approx(1.0) and cd.absolute[0] == pytest.approx(0.0)
    md = cg.minimal_circuit(model, dense, task, target=0.8, grid=8)
    mb = cg.minimal_circuit(model, blocks, task, target=0.8, grid=8)
    assert isinstance(mb.mask, EdgeBlocks)
    assert torch.equal(mb.dense_mask(), md.mask)
    assert mb.faithfulness == pytest.approx(md.faithfulness, abs=1e-6)
    assert mb.edges() == md.edges() or [e[:2] for e in mb.edges()] == [e[:2] for e in md.edges()]


def test_circuit_files_per_block(scored, tmp_path, case):
    """A circuit of a block graph is saved one block per destination group and loads back equal
    to the dense circuit; a file whose block has the wrong shape is refused."""
    dense, blocks, sd, _ = scored
    mask = cg.top_n(blocks, 12)
    c = cg.Circuit(blocks, mask, faithfulness=0.5)
    path = c.save(tmp_path / "c.json")
    from safetensors import safe_open

    with safe_open(str(path.with_suffix(".safetensors")), framework="pt") as f:
        keys = set(f.keys())
    assert "scores" not in keys and {f"scores.{g}" for g in layout_of(blocks).names} <= keys
    back = cg.Circuit.load(path, case[0])
    assert isinstance(back.mask, EdgeBlocks)
    assert torch.equal(back.dense_mask(), cg.top_n(dense, 12))
    torch.testing.assert_close(back.graph.scores.dense(), blocks.scores.dense())
    assert back.edges() == c.edges() and back.n_edges == 12
    # the same circuit saved dense loads to the same edges and scores
    cd = cg.Circuit(dense, cg.top_n(dense, 12), faithfulness=0.5)
    back_dense = cg.Circuit.load(cd.save(tmp_path / "d.json"), case[0])
    assert [e[:2] for e in back_dense.edges()] == [e[:2] for e in back.edges()]


def test_block_file_with_a_wrong_block_is_refused(scored, tmp_path, case):
    from safetensors.torch import load_file, save_file

    from circuitgraph.circuit.circuit import CircuitFileError
    from circuitgraph.files.pairs import read_header

    _, blocks, _, _ = scored
    path = cg.Circuit(blocks, cg.top_n(blocks, 5)).save(tmp_path / "c.json")
    st = path.with_suffix(".safetensors")
    meta, _ = read_header(st)
    t = load_file(str(st))
    g = layout_of(blocks).names[0]
    t[f"scores.{g}"] = torch.zeros(t[f"scores.{g}"].shape[0] + 1, t[f"scores.{g}"].shape[1])
    save_file(t, str(st), metadata=meta)
    with pytest.raises(CircuitFileError):
        cg.Circuit.load(path, case[0])


def test_auto_layout_follows_the_size(entry):
    g = cg.Graph.from_model(entry.model)
    assert not g.uses_blocks and isinstance(g.scores, torch.Tensor)
    g.edge_layout = "blocks"
    assert g.uses_blocks
    g.edge_layout = "sparse"
    with pytest.raises(GraphError, match="edge_layout"):
        assert g.uses_blocks


def test_block_masks_patch_exactly_on_every_site_kind():
    """float64, SAEs at five site kinds (one group's upstream rows not contiguous): with block
    masks the full circuit is the clean run, the empty one the corrupted run, and a random mask
    gives the dense mask's logits."""
    model, hooks, saes, task = five_site_case()
    clean, corrupted = task.clean, task.corrupted
    g = torch.Generator().manual_seed(2)  # random masks
    graph = cg.Graph.from_model(model, saes=saes, features={h: range(0, 24, 2) for h in hooks})
    graph.edge_layout = "blocks"
    assert isinstance(graph.upstream("resid_mid1"), torch.Tensor)
    abl = Ablation("corrupted").prepare(model, graph, task)
    A = abl.activations(model, graph, task, slice(0, task.n_examples), task)
    full = patched_logits(model, graph, task, A, graph.full_mask())
    empty = patched_logits(model, graph, task, A, graph.empty_mask())
    assert (full - model(clean)).abs().max() < 1e-10
    assert (empty - model(corrupted)).abs().max() < 1e-10
    m = (torch.rand(graph.valid.shape, generator=g) < 0.5) & graph.valid
    both = patched_logits(model, graph, task, A, m)
    blocked = patched_logits(model, graph, task, A, EdgeBlocks.from_dense(graph, m))
    assert (both - blocked).abs().max() < 1e-12
    assert (both - full).abs().max() > 1e-3  # the mask changes something
    # scores and pruning on this graph (transcoder-free, output sites, a non-contiguous group)
    twin = cg.Graph.from_model(model, saes=saes, features={h: range(0, 24, 2) for h in hooks})
    twin.edge_layout = "dense"
    sd = cg.attribute(model, twin, task, method="eap", progress=False)
    sb = cg.attribute(model, graph, task, method="eap", progress=False)
    torch.testing.assert_close(sb.dense(), sd, rtol=1e-10, atol=1e-12)
    sparse_mask = (torch.rand(graph.valid.shape, generator=g) < 0.3) & graph.valid
    assert torch.equal(cg.prune(graph, EdgeBlocks.from_dense(graph, sparse_mask)).dense(), cg.prune(twin, sparse_mask))
    # relaxed (float) block masks too
    r = torch.rand(graph.valid.shape, generator=g, dtype=torch.float64) * graph.valid
    torch.testing.assert_close(
        patched_logits(model, graph, task, A, EdgeBlocks.from_dense(graph, r)),
        patched_logits(model, graph, task, A, r),
        rtol=1e-12,
        atol=1e-12,
    )


def test_sae_blocks_are_much_smaller_than_dense(entry, task):
    """Sites cut the residual stream: the blocks hold a fraction of the dense matrix."""
    graph = feature_graph(entry.model, zoo_saes("induction"), task)
    lay = layout_of(graph)
    assert lay.n_entries() == graph.n_edges < graph.n_src * graph.n_dst


def test_memory_budget_bounds_masks_and_cache(entry, task, capsys):
    model = entry.model
    graph = cg.Graph.from_model(model)
    big = CircuitEvaluator(model, graph, task, memory_budget=3e9)
    tiny = CircuitEvaluator(model, graph, task, memory_budget=1e3)
    assert tiny.mask_batch == 1 and tiny._cache is None and big._cache is not None
    assert big.mask_batch > tiny.mask_batch
    assert "budget 0.0 GB: 1 masks/pass, no ablation cache" in tiny.budget_note()
    masks = torch.stack([graph.valid, torch.zeros_like(graph.valid)])
    torch.testing.assert_close(tiny(masks), big(masks))
    with pytest.raises(ConfigError, match="memory_budget"):
        CircuitEvaluator(model, graph, task, memory_budget=0)
    # the budget rides through the curve and the minimal circuit
    curve = cg.faithfulness_curve(model, graph, task, memory_budget=1e3)
    assert curve.absolute[-1] == pytest.approx(1.0)


def test_the_progress_line_names_the_budget(entry, task, capsys, monkeypatch):
    from circuitgraph.engine import progress

    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setattr(progress, "PLAIN_EVERY", 0.0)
    monkeypatch.setattr(progress, "interactive", lambda: False)
    graph = cg.Graph.from_model(entry.model)
    run = CircuitEvaluator(entry.model, graph, task, memory_budget=2e9)
    run(graph.valid[None], progress=True)
    err = capsys.readouterr().err
    assert "evaluate: " in err and f"budget 2.0 GB: {run.mask_batch} masks/pass, ablation cache" in err


def test_scores_files_per_block(scored, tmp_path):
    """scores.safetensors of a block graph: one rows/scores/mask triple per group, read back to
    the dense file's numbers; a block list that does not tile the columns is refused."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from circuitgraph.errors import FileFormatError
    from circuitgraph.export.scores import read_scores, write_scores

    dense, blocks, sd, _ = scored
    c = cg.Circuit(blocks, cg.top_n(blocks, 9))
    back = read_scores(write_scores(tmp_path / "b.safetensors", blocks, c, "m"))
    assert back["layout"] == "blocks" and "scores" not in back
    flat = torch.zeros(dense.valid.shape)
    mask = torch.zeros(dense.valid.shape, dtype=torch.bool)
    for b in back["blocks"].values():
        start, stop = b["cols"]
        flat[b["rows"], start:stop] = b["scores"]
        mask[b["rows"], start:stop] = b["mask"]
    plain = read_scores(write_scores(tmp_path / "d.safetensors", dense, cg.Circuit(dense, cg.top_n(dense, 9)), "m"))
    torch.testing.assert_close(flat, plain["scores"], rtol=1e-6, atol=1e-7)
    assert torch.equal(mask, plain["mask"]) and int(mask.sum()) == 9
    p = tmp_path / "b.safetensors"
    with safe_open(str(p), framework="pt") as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    listed = json.loads(meta["blocks"])
    save_file(t, str(p), metadata={**meta, "blocks": json.dumps(listed[1:])})
    with pytest.raises(FileFormatError, match="do not tile"):
        read_scores(p)
    g0 = listed[0][0]
    save_file({**t, f"rows.{g0}": t[f"rows.{g0}"].flip(0)}, str(p), metadata=meta)
    if len(t[f"rows.{g0}"]) > 1:
        with pytest.raises(FileFormatError, match="increasing source rows"):
            read_scores(p)


@pytest.mark.parametrize("name", ["gpt-neox", "gemma-2"])
def test_blocks_on_transcoders_and_post_norms(name):
    """A parallel and a post-norm model (float64) with residual, attention-output and transcoder
    sites, and a neuron graph of each: block scores equal dense scores, and block masks patch
    like dense ones (full = clean run, empty = corrupted run)."""
    from test_families import family_model

    model = family_model(name)
    task = tiny_task(model, n=4, seq=6)
    d = model.cfg.d_model
    saes = [
        random_sae("blocks.0.hook_resid_pre", d, 24, 0),
        random_sae("blocks.0.hook_attn_out", d, 24, 1),
        random_sae("blocks.1.hook_resid_pre", d, 24, 2),
        random_sae("blocks.1.ln2.hook_normalized", d, 24, 3, hook_out="blocks.1.hook_mlp_out"),
    ]
    features = {s.hook_name: range(0, 24, 2) for s in saes}
    for build in (
        lambda: cg.Graph.from_model(model, saes=saes, features=features),
        lambda: cg.Graph.from_model(model, neurons={0: [1, 4, 7], 1: None}),
    ):
        dense, blocks = _pair(build)
        sd = cg.attribute(model, dense, task, method="eap", progress=False, scores_dtype=torch.float64)
        sb = cg.attribute(model, blocks, task, method="eap", progress=False, scores_dtype=torch.float64)
        torch.testing.assert_close(sb.dense(), sd, rtol=1e-10, atol=1e-12)
        abl = Ablation("corrupted").prepare(model, blocks, task)
        A = abl.activations(model, blocks, task, slice(0, task.n_examples), task)
        full = patched_logits(model, blocks, task, A, blocks.full_mask())
        empty = patched_logits(model, blocks, task, A, blocks.empty_mask())
        assert (full - model(task.clean)).abs().max() < 1e-8
        assert (empty - model(task.corrupted)).abs().max() < 1e-8
        m = cg.top_n(dense, dense.n_edges // 3)
        torch.testing.assert_close(
            patched_logits(model, blocks, task, A, EdgeBlocks.from_dense(blocks, m)),
            patched_logits(model, dense, task, A, m),
            rtol=1e-10,
            atol=1e-10,
        )
