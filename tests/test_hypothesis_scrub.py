"""The causal-scrubbing engine on tiny random models: sanity bounds, agreement with a slow
row-by-row reimplementation of the recursion, equivalence classes respected, bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import tiny_model, tiny_task

from circuitgraph.graph import Graph
from circuitgraph.hypothesis import (
    Correspondence,
    FeatureData,
    Hypothesis,
    HypothesisError,
    VacuousHypothesisWarning,
    constant,
    feature,
    register_feature,
    scrub,
    token_at,
    unregister_feature,
)
from circuitgraph.hypothesis import (
    Interpretation as I,
)
from circuitgraph.models.backend import hook_flags
from circuitgraph.tasks import Task


@pytest.fixture(scope="module", autouse=True)
def planted_features():
    @register_feature("planted_pair_parity", positional=False)
    def pair_parity(ex):
        return (ex.tokens[1] + ex.tokens[2]) % 2

    @register_feature("planted_pos_mod3", positional=True)
    def pos_mod3(ex):
        return (ex.tokens[ex.position] + ex.position) % 3 if ex.position < len(ex.tokens) else None

    @register_feature("planted_index")
    def index(ex):
        return ex.index

    yield
    for n in ("planted_pair_parity", "planted_pos_mod3", "planted_index"):
        unregister_feature(n)


def small_vocab_task(model, n=24, seq=6, seed=0, padded=False):
    g = torch.Generator().manual_seed(seed)
    V = model.cfg.d_vocab
    clean = torch.randint(0, V, (n, seq), generator=g)
    answer = torch.randint(0, V, (n,), generator=g)
    mask = None
    if padded:
        lengths = torch.randint(3, seq + 1, (n,), generator=g)
        mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    return Task(
        clean=clean,
        corrupted=clean.roll(1, 0),
        answer=answer,
        metric="cross_entropy",
        name="small",
        attention_mask=mask,
    )


def planted_hypothesis(model) -> Hypothesis:
    """out ← a1.h0 (pair parity) ← {a0.h1 via k (pos mod 3) ← input via v (token), input via q (pair parity)}
    plus m0 and a direct input→logits edge, so every node kind and both feature kinds appear."""
    prev = I("early", "planted_pos_mod3", [I("early_v", token_at(0))])
    late = I("late", "planted_pair_parity", [I("late_q", "planted_pair_parity"), prev])
    mlp = I("mlp", "planted_pos_mod3", [I("mlp_in", constant())])
    out = I("output", None, [late, mlp, I("direct", token_at(0))])
    corr = Correspondence(
        {
            "output": "logits",
            "late": "a1.h0",
            "late_q": "input",
            "early": "a0.h1",
            "early_v": "input",
            "mlp": "m0",
            "mlp_in": "input",
            "direct": "input",
        },
        restrict={"late_q": "q", "early": "k", "early_v": "v"},
    )
    return Hypothesis(out, corr, model=model, name="planted")


# ------------------------------------------------------------------------------------ sanity bounds


@pytest.mark.parametrize(
    "overrides, padded",
    [
        ({}, False),
        ({"attn_only": True}, False),
        ({"normalization_type": None}, False),
        ({"normalization_type": "RMS", "n_layers": 3}, False),
        ({"parallel_attn_mlp": True}, False),  # each MLP reads its layer's input, without its layer's b_O
        ({"gated_mlp": True, "act_fn": "silu", "normalization_type": "RMS"}, False),
        ({}, True),
    ],
)
def test_identity_recovers_model_and_empty_recovers_nothing(overrides, padded):
    model = tiny_model(1, **overrides)
    task = small_vocab_task(model, padded=padded) if padded else tiny_task(model, n=16, seq=7, metric="cross_entropy")
    full = scrub(model, Hypothesis.full(model), task, seed=3)
    assert abs(full.loss_recovered - 1) < 1e-4
    assert torch.allclose(full.per_sample["scrubbed"], full.per_sample["model"], atol=1e-4)
    assert full.ci[0] > 1 - 1e-3 and full.ci[1] < 1 + 1e-3
    empty = scrub(model, Hypothesis.empty(model), task, seed=3)
    assert empty.loss_recovered == 0.0 and empty.ci == (0.0, 0.0)
    assert empty.random_loss == full.random_loss and empty.model_loss == full.model_loss
    # the plain hypothesis of an edgeless circuit is the empty hypothesis too
    from circuitgraph.circuit import Circuit

    g = Graph.from_model(model)
    none = scrub(model, Hypothesis.from_circuit(Circuit(g, torch.zeros_like(g.valid))), task, seed=3)
    assert none.loss_recovered == 0.0


def test_result_fields_and_determinism():
    model = tiny_model(2)
    task = tiny_task(model, n=12, seq=6, metric="logit_diff")
    h = planted_hypothesis(model)
    a = scrub(model, h, task, seed=5, n_samples=30, warn_vacuous=False)
    b = scrub(model, h, task, seed=5, n_samples=30, batch_size=7, warn_vacuous=False)  # other chunking
    assert a.loss_recovered == pytest.approx(b.loss_recovered, abs=1e-5)
    assert a.n_samples == 30 and a.n_examples == 12 and a.loss_name == "logit_diff"
    assert a.ci[0] <= a.loss_recovered <= a.ci[1]
    counts = torch.bincount(a.per_sample["reference"], minlength=12)
    assert counts.min() >= 2 and counts.max() <= 3  # every example used ⌊30/12⌋ or ⌈30/12⌉ times
    c = scrub(model, h, task, seed=6, n_samples=30, warn_vacuous=False)
    assert c.scrubbed_loss != a.scrubbed_loss
    assert "loss recovered" in str(a) and a.to_dict()["n_samples"] == 30
    ce = scrub(model, h, task, seed=5, loss="cross_entropy", replicas=3, warn_vacuous=False)
    assert ce.loss_name == "cross_entropy" and ce.replicas == 3
    custom = scrub(model, h, task, seed=5, loss=lambda logits, t: logits[:, -1].max(-1).values, warn_vacuous=False)
    assert custom.loss_name == "<lambda>"


# ------------------------------------------------------------------------------------ equivalence classes


def test_resampling_respects_equivalence_classes():
    model = tiny_model(0, d_vocab=4)
    task = small_vocab_task(model, n=40)
    h = planted_hypothesis(model)
    res = scrub(model, h, task, seed=0, n_samples=60, trace=True, replicas=2)
    data = FeatureData.from_task(task)
    codes = {n: h.nodes[n].feature.evaluate(data) for n in h.nodes if n != "output"}
    assert codes["late"].positional is False and codes["early"].positional is True
    covered = [d for d in res.trace if d.child is not None]
    assert {(d.parent, d.child) for d in covered} == {(p, c) for p, c in h.edges()}
    moved = 0
    for d in covered:
        v = codes[d.child]
        assert d.positional == v.positional and d.sampled.shape[1] == (task.seq_len if v.positional else 1)
        ref_codes = v.codes[d.refs]  # [M, C]
        got = v.codes.gather(0, d.sampled) if v.positional else v.codes[d.sampled[:, 0]]
        assert torch.equal(got, ref_codes), f"{d.child} under {d.parent}: a sampled input disagrees with its reference"
        moved += int((d.sampled != d.refs[:, None]).sum())
    assert moved > 0  # the classes are not trivial: resampling really moved inputs
    random_draws = [d for d in res.trace if d.child is None]
    assert random_draws and all(d.sampled.shape[1] == 1 for d in random_draws)
    assert float(torch.cat([(d.sampled[:, 0] != d.refs).float() for d in random_draws]).mean()) > 0.8


# ------------------------------------------------------------------------------------ reference implementation


def _reference_scores(model, h: Hypothesis, task, res) -> torch.Tensor:
    """Recompute every scrubbed sample row by row from the recorded draws, with the patching
    formula input_d = live_d(ref) + Σ_u (a_u(chosen) − a_u(ref)) on single-example forwards."""
    from circuitgraph.engine import source_activations

    g = Graph.from_model(model)
    A = source_activations(model, g, task, task.clean)  # [n_src, N, P, d]
    with hook_flags(model, split_qkv_input=True):
        _, cache = model.run_with_cache(task.clean)
    L = model.cfg.n_layers

    def live(d: str, x: int) -> torch.Tensor:
        if d == "logits":
            return cache[f"blocks.{L - 1}.hook_resid_post"][x]
        node = Graph.dst_node(d)
        if node.startswith("a"):
            layer, head = (int(t[1:]) for t in node.split("."))
            return cache[f"blocks.{layer}.hook_{d[-1]}_input"][x, :, head]
        return cache[f"blocks.{int(node[1:])}.hook_mlp_in"][x]

    draws = {}
    for d in res.trace:
        draws.setdefault((d.parent, d.slot), []).append(d)
    R = res.replicas
    assert R == 1
    memo = {}

    def slot_input(node: str, d: str, row: int, ref: int) -> torch.Tensor:
        recs = draws[(node, d)]
        if len(recs) == 1 and recs[0].child is not None and h.model_nodes[recs[0].child].kind == "slot":
            r = recs[0]
            return torch.stack(
                [value(r.child, int(r.sampled[row, p if r.positional else 0]))[p] for p in range(task.seq_len)]
            )
        x = live(d, ref).clone()
        for r in recs:
            s = g.src_index[r.source]
            chosen = torch.stack(
                [
                    (
                        A[s, int(r.sampled[row, 0])][p]
                        if r.child is None
                        else value(r.child, int(r.sampled[row, p if r.positional else 0]))[p]
                    )
                    for p in range(task.seq_len)
                ]
            )
            x += chosen - A[s, ref]
        return x

    def value(node: str, x: int) -> torch.Tensor:
        if (node, x) in memo:
            return memo[(node, x)]
        mn = h.model_nodes[node]
        if mn.kind == "input":
            out = A[0, x]
        elif mn.kind == "slot":
            out = slot_input(node, mn.name, x, x)
        elif mn.kind == "mlp":
            blk = model.blocks[mn.layer]
            out = blk.apply_mlp(blk.ln2(slot_input(node, mn.name, x, x)[None]))[0]
        else:
            ins = {c: slot_input(node, f"{mn.name}.{c}", x, x) for c in "qkv"}
            got = {}

            def setter(c):
                def hook(t, hook):
                    t = t.clone()
                    t[0, :, mn.head] = ins[c]
                    return t

                return hook

            def grab(z, hook):
                got["z"] = z[0, :, mn.head]

            hooks = [(f"blocks.{mn.layer}.hook_{c}_input", setter(c)) for c in "qkv"]
            hooks.append((f"blocks.{mn.layer}.attn.hook_z", grab))
            with hook_flags(model, split_qkv_input=True):
                model.run_with_hooks(task.clean[x : x + 1], fwd_hooks=hooks)
            out = got["z"] @ model.blocks[mn.layer].attn.W_O[mn.head]
        memo[(node, x)] = out
        return out

    refs = res.per_sample["reference"]
    scores = []
    for row, ref in enumerate(refs.tolist()):
        resid = slot_input(h.root.name, "logits", row, ref)
        logits = model.unembed(model.ln_final(resid[None]))
        scores.append(task.select(torch.tensor([ref])).score(logits)[0])
    return torch.stack(scores)


@pytest.mark.parametrize("with_slot_node", [False, True])
def test_engine_matches_rowwise_reference(with_slot_node):
    torch.manual_seed(0)
    model = tiny_model(3, d_vocab=5)
    task = small_vocab_task(model, n=10, seq=5, seed=1)
    h = planted_hypothesis(model)
    if with_slot_node:  # explain a1.h0's key input as a node of its own
        keys = I("late_keys", "planted_pos_mod3", [I("keys_from_early", "planted_pos_mod3")])
        late = I("late", "planted_pair_parity", [I("late_q", "planted_pair_parity"), keys])
        h = Hypothesis(
            I("output", None, [late]),
            Correspondence(
                {
                    "output": "logits",
                    "late": "a1.h0",
                    "late_q": "input",
                    "late_keys": "a1.h0.k",
                    "keys_from_early": "a0.h1",
                },
                restrict={"late_q": "q"},
            ),
            model=model,
        )
    with torch.no_grad():
        res = scrub(model, h, task, seed=4, n_samples=12, trace=True, warn_vacuous=False)
        ref = _reference_scores(model, h, task, res)
    assert torch.allclose(res.per_sample["scrubbed"], ref.float(), atol=1e-4), (res.per_sample["scrubbed"], ref)


# ------------------------------------------------------------------------------------ bad input


def test_dataset_too_small():
    model = tiny_model(0)
    one = tiny_task(model, n=1, seq=5, metric="cross_entropy")
    with pytest.raises(HypothesisError, match="has 1 example.*at least 2"):
        scrub(model, Hypothesis.full(model), one)


def test_vacuous_feature_warns():
    model = tiny_model(0)
    task = tiny_task(model, n=12, seq=5, metric="cross_entropy")
    h = Hypothesis(I("out", None, [I("who", feature("planted_index"))]), {"out": "logits", "who": "a1.h0"}, model=model)
    with pytest.warns(VacuousHypothesisWarning, match="'who'.*100% of the dataset's inputs.*vacuous"):
        res = scrub(model, h, task)
    assert res.class_sizes["who"] == 1.0
    with warnings.catch_warnings():  # the whole-input feature claims nothing, so it never warns
        warnings.simplefilter("error", VacuousHypothesisWarning)
        scrub(model, Hypothesis.full(model), task)


def test_scrub_refuses_other_models_hypothesis():
    a, b = tiny_model(0), tiny_model(0, n_heads=4)
    task = tiny_task(b, n=8, seq=5, metric="cross_entropy")
    with pytest.raises(HypothesisError, match="written for another model"):
        scrub(b, Hypothesis.full(a), task)
    lacks = Hypothesis(I("out", None, [I("x")]), {"out": "logits", "x": "a2.h0"})  # unbound
    with pytest.raises(HypothesisError, match="no node 'a2.h0'"):
        scrub(b, lacks, task)
    with pytest.raises(ValueError, match="unknown loss"):
        scrub(b, Hypothesis.full(b), task, loss="accuracy")
