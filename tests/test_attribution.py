"""EAP, EAP-IG and exact scores against independent references on tiny random models."""

import pytest
import torch
from conftest import tiny_model, tiny_task

from circuitgraph import Graph, attribute
from circuitgraph.engine import Ablation


def set_flags(model, on: bool) -> None:
    model.set_use_split_qkv_input(on)
    model.set_use_attn_result(on)
    if not model.cfg.attn_only:
        model.set_use_hook_mlp_in(on)


def naive_eap(model, graph, task):
    """EAP edge by edge from TransformerLens's own split-input hooks and autograd (slow, obvious)."""
    set_flags(model, True)
    try:

        def sources(tokens):
            _, cache = model.run_with_cache(tokens)
            out = {"input": cache["blocks.0.hook_resid_pre"]}
            for L in range(model.cfg.n_layers):
                for h in range(model.cfg.n_heads):
                    out[f"a{L}.h{h}"] = cache[f"blocks.{L}.attn.hook_result"][:, :, h]
                if not model.cfg.attn_only:
                    out[f"m{L}"] = cache[f"blocks.{L}.hook_mlp_out"]
            return out

        clean, corrupt = sources(task.clean), sources(task.corrupted)
        grads = {}

        def keep(name):
            def hook(g, hook):
                grads[name] = g.detach()

            return hook

        bwd = [(f"blocks.{L}.hook_{x}_input", keep(f"{L}{x}")) for L in range(model.cfg.n_layers) for x in "qkv"]
        bwd += [
            (f"blocks.{L}.hook_mlp_in", keep(f"{L}m")) for L in range(model.cfg.n_layers) if not model.cfg.attn_only
        ]
        bwd += [(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", keep("logits"))]
        with model.hooks(bwd_hooks=bwd):
            task.score(model(task.clean)).mean().backward()
        model.zero_grad()
        ref = torch.zeros_like(graph.scores)
        for s, d in graph.edges():
            if d == "logits":
                g = grads["logits"]
            elif d.startswith("m"):
                g = grads[f"{d[1:]}m"]
            else:
                L, h, x = d[1:].split(".")
                g = grads[f"{L}{x}"][:, :, int(h[1:])]
            ref[graph.src(s), graph.dst(d)] = ((corrupt[s] - clean[s]) * g).sum()
        return ref
    finally:
        set_flags(model, False)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"normalization_type": "LNPre"},
        {"normalization_type": "RMS"},
        {"normalization_type": None},
        {"attn_only": True},
        {"positional_embedding_type": "rotary", "rotary_dim": 4},
        {"attention_dir": "bidirectional"},
    ],
)
def test_eap_matches_naive_autograd(overrides):
    model = tiny_model(**overrides)
    task = tiny_task(model)
    graph = Graph.from_model(model)
    fast = attribute(model, graph, task, method="eap", progress=False)
    ref = naive_eap(model, graph, task)
    rel = (fast - ref).abs().max() / ref.abs().max()
    assert rel < 1e-4, rel


def test_eap_unsplit_graph_sums_qkv():
    model = tiny_model()
    task = tiny_task(model)
    split, joint = Graph.from_model(model), Graph.from_model(model, split_qkv=False)
    s = attribute(model, split, task, method="eap", progress=False)
    j = attribute(model, joint, task, method="eap", progress=False)
    for L in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            cols = [split.dst(f"a{L}.h{h}.{x}") for x in "qkv"]
            torch.testing.assert_close(s[:, cols].sum(1), j[:, joint.dst(f"a{L}.h{h}")], rtol=1e-4, atol=1e-6)


def test_exact_equals_independent_single_edge_runs():
    """Each exact score = m(clean run with that one edge's source replaced by its corrupted value,
    computed with TransformerLens's split-input hooks) − m(clean)."""
    model = tiny_model()
    task = tiny_task(model)
    graph = Graph.from_model(model)
    exact = attribute(model, graph, task, method="exact", progress=False).clone()
    base = task.score(model(task.clean)).mean()
    set_flags(model, True)
    try:
        _, corrupt = model.run_with_cache(task.corrupted)
        rng = torch.Generator().manual_seed(0)
        edges = list(graph.edges())
        for k in torch.randperm(len(edges), generator=rng)[:12].tolist():
            s, d = edges[k]
            # the source's live activation in the clean run is its clean activation, except that
            # it is itself unaffected by this single edge (the edge is downstream of it)
            if s == "input":
                src_hook, take = "blocks.0.hook_resid_pre", lambda c: c
            elif s.startswith("a"):
                L, h = s[1:].split(".h")
                src_hook, take = f"blocks.{L}.attn.hook_result", (lambda c, h=int(h): c[:, :, h])
            else:
                src_hook, take = f"blocks.{s[1:]}.hook_mlp_out", lambda c: c
            store = {}

            def grab(x, hook, store=store, take=take):
                store["live"] = take(x).detach()

            if d == "logits":
                dst_hook, sel = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", None
            elif d.startswith("m"):
                dst_hook, sel = f"blocks.{d[1:]}.hook_mlp_in", None
            else:
                L, h, x = d[1:].split(".")
                dst_hook, sel = f"blocks.{L}.hook_{x}_input", int(h[1:])

            def patch(x, hook, store=store, sel=sel, take=take, src_hook=src_hook):
                delta = store["live"] - take(corrupt[src_hook])
                x = x.clone()
                if sel is None:
                    x -= delta
                else:
                    x[:, :, sel] -= delta
                return x

            with model.hooks(fwd_hooks=[(src_hook, grab), (dst_hook, patch)]):
                value = task.score(model(task.clean)).mean()
            assert exact[graph.src(s), graph.dst(d)].item() == pytest.approx((value - base).item(), abs=1e-5)
    finally:
        set_flags(model, False)


def test_eap_approximates_exact_on_small_perturbations():
    """With corrupted prompts close to clean ones, first-order EAP tracks exact patching."""
    model = tiny_model()
    task = tiny_task(model)
    task.corrupted = task.clean.clone()
    task.corrupted[:, 2] = (task.clean[:, 2] + 1) % model.cfg.d_vocab
    graph = Graph.from_model(model)
    ex = attribute(model, graph, task, method="exact", progress=False).clone()
    eap = attribute(model, graph, task, method="eap", progress=False)
    corr = torch.corrcoef(torch.stack([ex[graph.valid], eap[graph.valid]]))[0, 1]
    assert corr > 0.9, corr


@pytest.mark.parametrize("method", ["eap-ig", "eap-ig-activations"])
def test_ig_completeness(method):
    """Σ_v score(input→v) ≈ m(corrupted) − m(clean) for input-interpolating IG (within 5 % at 20
    steps); activation IG's input edges hold only the direct share, so only its sign is checked."""
    model = tiny_model(seed=3)
    task = tiny_task(model, n=8, seed=3)
    graph = Graph.from_model(model)
    scores = attribute(model, graph, task, method=method, steps=20, progress=False)
    gap = (task.score(model(task.corrupted)).mean() - task.score(model(task.clean)).mean()).item()
    total = scores[graph.src("input")].sum().item()
    if method == "eap-ig":
        assert abs(total - gap) <= 0.05 * abs(gap), (total, gap)
    else:
        assert scores.abs().sum() > 0


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_other_ablations_match_exact_for_linear_readout(kind):
    """For edges into logits the metric is linear in the edge (logit_diff through LN is not, so
    compare ranks): EAP and exact agree on the sign of the strongest logits edges."""
    model = tiny_model()
    task = tiny_task(model)
    graph = Graph.from_model(model)
    ex = attribute(model, graph, task, method="exact", ablation=kind, progress=False).clone()
    eap = attribute(model, graph, task, method="eap", ablation=kind, progress=False)
    col = graph.dst("logits")
    corr = torch.corrcoef(torch.stack([ex[:, col], eap[:, col]]))[0, 1]
    assert corr > 0.5, corr


def test_batching_does_not_change_scores():
    model = tiny_model()
    task = tiny_task(model, n=10)
    graph = Graph.from_model(model)
    whole = attribute(model, graph, task, method="eap-ig", steps=3, progress=False).clone()
    parts = attribute(model, graph, task, method="eap-ig", steps=3, batch_size=3, progress=False)
    torch.testing.assert_close(whole, parts, rtol=1e-4, atol=1e-6)


def test_mean_ablation_uses_reference_set():
    model = tiny_model()
    task = tiny_task(model)
    graph = Graph.from_model(model)
    ref = torch.randint(0, model.cfg.d_vocab, (20, task.seq_len), generator=torch.Generator().manual_seed(9))
    a = attribute(model, graph, task, method="eap", ablation=Ablation("mean", reference=ref), progress=False).clone()
    b = attribute(model, graph, task, method="eap", ablation="mean", progress=False)
    assert not torch.allclose(a, b)


def test_scores_from_an_earlier_call_are_not_overwritten():
    model = tiny_model()
    task = tiny_task(model)
    graph = Graph.from_model(model)
    first = attribute(model, graph, task, method="eap", progress=False)
    kept = first.clone()
    second = attribute(model, graph, task, method="exact", progress=False)
    assert torch.equal(first, kept) and second is graph.scores and not torch.equal(first, second)


@pytest.mark.parametrize("neurons", [None, {0: [1, 4, 7], 1: [0, 2]}])
@pytest.mark.parametrize("method", ["eap-ig", "eap-ig-activations"])
def test_ig_steps_summed_before_contracting_equal_per_step_contractions(monkeypatch, neurons, method):
    """EAP-IG sums the steps' dense input gradients and contracts once (low-rank neuron readers
    stay per step); with no room to keep steps it contracts every step: the scores agree."""
    import importlib

    attribute_module = importlib.import_module("circuitgraph.attribution.attribute")
    model = tiny_model(dtype=torch.float64, normalization_type="RMS")
    task = tiny_task(model)
    graph = Graph.from_model(model, neurons=neurons)
    summed = attribute(model, graph, task, method=method, steps=4, progress=False, scores_dtype=torch.float64)
    monkeypatch.setattr(attribute_module, "SUMMED_BYTES", 0)
    per_step = attribute(model, graph, task, method=method, steps=4, progress=False, scores_dtype=torch.float64)
    assert summed.abs().max() > 1e-3
    torch.testing.assert_close(summed, per_step, rtol=1e-10, atol=1e-12)
    if method == "eap-ig":  # and both equal each step's own contraction, written out here
        from circuitgraph.attribution.gradients import contract, forward_backward
        from circuitgraph.engine import Ablation
        from circuitgraph.engine.sources import raw_difference, raw_sources, source_deltas

        ablated = Ablation("corrupted").prepare(model, graph, task).raw(model, graph, task, slice(None), task)
        clean = raw_sources(model, graph, task, task.clean)
        deltas = source_deltas(model, graph, raw_difference(ablated, clean))
        reference = torch.zeros_like(summed)
        for k in range(4):
            x = ablated["input"] + (k + 0.5) / 4 * (clean["input"] - ablated["input"])
            contract(graph, deltas, forward_backward(model, graph, task, input_override=x)[0], reference, 0.25)
        torch.testing.assert_close(summed, reference, rtol=1e-10, atol=1e-12)


def test_eap_ig_builds_the_dense_deltas_only_to_contract(monkeypatch):
    """The dense deltas ``[n_src, B, P, d]`` are the largest thing attribution holds; the summed
    path's forward and backward passes run without them (built after the last step, or at the
    first contraction the capture budget forces), and only then."""
    import importlib

    attribute_module = importlib.import_module("circuitgraph.attribution.attribute")
    model = tiny_model(dtype=torch.float64, normalization_type="RMS")
    task, graph = tiny_task(model), Graph.from_model(model)
    calls = []

    def recorder(real, label):
        def record(*a, **k):
            calls.append(label)
            return real(*a, **k)

        return record

    for name, label in (("forward_backward", "pass"), ("source_deltas", "deltas"), ("contract", "contract")):
        monkeypatch.setattr(attribute_module, name, recorder(getattr(attribute_module, name), label))
    attribute(model, graph, task, method="eap-ig", steps=3, progress=False)
    assert calls == ["pass", "pass", "pass", "deltas", "contract"]
    calls.clear()
    monkeypatch.setattr(attribute_module, "SUMMED_BYTES", 0)  # (a contraction every step)
    attribute(model, graph, task, method="eap-ig", steps=3, progress=False)
    assert calls == ["pass", "deltas", "contract", "pass", "contract", "pass", "contract"]
