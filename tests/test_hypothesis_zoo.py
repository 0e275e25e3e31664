"""Causal scrubbing on the zoo's models with known mechanisms: the induction model (2 layers,
attention only) and the tracr-compiled ``reverse`` program."""

from __future__ import annotations

import pytest
import torch

from circuitgraph import zoo
from circuitgraph.hypothesis import (
    Correspondence,
    Hypothesis,
    VacuousHypothesisWarning,
    answer_label,
    constant,
    next_after_previous_occurrence,
    register_feature,
    scrub,
    seq_length,
    token_at,
    unregister_feature,
)
from circuitgraph.hypothesis import (
    Interpretation as I,
)
from circuitgraph.tasks import Task

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _zoo_or_skip(name: str):
    if name not in zoo.list():
        pytest.skip(f"zoo model {name!r} is not in circuitgraph/zoo/data (its build script has not been run)")
    return zoo.load(name, device="cpu")


# ------------------------------------------------------------------------------------ induction


@pytest.fixture(scope="module")
def induction():
    entry = _zoo_or_skip("induction")
    gt = entry.ground_truth_for("heads") if "heads" in entry.ground_truth else next(iter(entry.ground_truth.values()))
    prev = sorted(n for n in gt.nodes if n.startswith("a0."))[0]
    ind = sorted(n for n in gt.nodes if n.startswith("a1."))[0]
    scores = gt.evidence.get("pattern_scores", {})
    used = set().union(*(g.nodes for g in entry.ground_truth.values()))

    def unused(layer: int, score: str) -> str:  # a head the ground truth leaves out, least like the role
        heads = [f"a{layer}.h{h}" for h in range(entry.model.cfg.n_heads) if f"a{layer}.h{h}" not in used]
        return min(heads, key=lambda h: (scores.get(h, {}).get(score, 0.0), h))

    return entry, prev, ind, unused(0, "prev_token"), unused(1, "induction")


def induction_task(encoding: dict, n: int, seed: int) -> Task:
    """Fresh sequences from the zoo model's training distribution (BOS, then distinct tokens with a
    segment repeated once at a random period), read at one position inside the repeat: the answer
    is the token that followed the previous occurrence of the current token."""
    V, P = encoding["vocab_size"], encoding["seq_len"]
    lo, hi = encoding["period_range"]
    g = torch.Generator().manual_seed(seed)
    period = torch.randint(lo, hi + 1, (n,), generator=g)
    start = 1 + (torch.rand(n, generator=g) * (P - 2 * period)).long()
    body = torch.argsort(torch.rand(n, V - 1, generator=g), dim=1)[:, : P - 1] + 1
    toks = torch.cat([torch.full((n, 1), encoding["bos"]), body], 1)
    pos = torch.arange(P)[None]
    s, p = start[:, None], period[:, None]
    toks = torch.where((pos >= s + p) & (pos < s + 2 * p), toks.gather(1, (pos - p).clamp(min=0)), toks)
    read = start + period + (torch.rand(n, generator=g) * (period - 1)).long()
    answer = toks[torch.arange(n), read + 1]
    return Task(
        clean=toks, corrupted=toks, answer=answer, read_positions=read, metric="cross_entropy", name="induction-fresh"
    )


def induction_hypothesis(model, prev: str, ind: str, name: str = "induction") -> Hypothesis:
    """The previous-token head copies the previous token; the induction head's key reads it, its
    query reads the current token, its value the token to predict."""
    prev_n = I("prev_token", token_at(-1), [I("emb_prev", token_at(0))])
    ind_n = I(
        "induction",
        next_after_previous_occurrence(),
        [I("cur_token", token_at(0)), prev_n, I("copied_token", token_at(0))],
    )
    corr = Correspondence(
        {
            "output": "logits",
            "induction": ind,
            "prev_token": prev,
            "emb_prev": "input",
            "cur_token": "input",
            "copied_token": "input",
        },
        restrict={"cur_token": "q", "prev_token": "k", "copied_token": "v", "emb_prev": "v"},
    )
    return Hypothesis(I("output", answer_label(), [ind_n]), corr, model=model, name=name)


def test_induction_hypothesis_recovers_the_loss(induction):
    entry, prev, ind, free0, free1 = induction
    model, task = entry.model, induction_task(entry.encoding, n=512, seed=7)
    h = induction_hypothesis(model, prev, ind)
    res = scrub(model, h, task, seed=0)
    swapped_prev = scrub(model, h.remap({"prev_token": free0}, name=f"prev-token role on {free0}"), task, seed=0)
    swapped_ind = scrub(model, h.remap({"induction": free1}, name=f"induction role on {free1}"), task, seed=0)
    for r in (res, swapped_prev, swapped_ind):
        print(r)
    assert res.model_loss < 0.1 < 5 < res.random_loss
    assert res.loss_recovered >= 0.90 and res.ci[0] >= 0.85
    # the same roles on unused heads explain clearly less
    assert res.loss_recovered - swapped_prev.loss_recovered >= 0.4
    assert swapped_prev.ci[1] < res.ci[0]
    assert swapped_ind.loss_recovered <= 0.3 and swapped_ind.ci[1] < res.ci[0]
    # the classes are real (tokens recur at each position across 512 sequences): no warning needed
    assert min(res.class_sizes.values()) > 2


def test_induction_ground_truth_circuit_as_hypothesis(induction):
    from circuitgraph.circuit import Circuit
    from circuitgraph.graph import Graph

    entry = induction[0]
    model = entry.model
    gt = entry.ground_truth_for("resample")
    g = Graph.from_model(model)
    circuit = Circuit(g, g.mask_from_edges(gt.edge_names))
    res = scrub(
        model,
        Hypothesis.from_circuit(circuit, name="ground-truth circuit"),
        induction_task(entry.encoding, n=256, seed=3),
        seed=0,
    )
    print(res)
    assert res.loss_recovered >= 0.9


def test_the_zoo_task_alone_is_too_small_for_token_features(induction):
    entry, prev, ind, _, _ = induction
    small = entry.task()  # 64 sequences: a token at a given position rarely recurs
    with pytest.warns(VacuousHypothesisWarning) as caught:
        scrub(entry.model, induction_hypothesis(entry.model, prev, ind), small, seed=0)
    flagged = {str(w.message).split("'")[1] for w in caught if issubclass(w.category, VacuousHypothesisWarning)}
    assert {"prev_token", "cur_token", "copied_token"} <= flagged and "induction" not in flagged


# ------------------------------------------------------------------------------------ tracr reverse


@pytest.fixture(scope="module")
def reverse_features():
    @register_feature("tracr_reverse_output", positional=True)
    def reversed_token(ex):
        """reverse = Aggregate(Select(indices, opp_idx-1, EQ), tokens): position i (1..L, after
        BOS) holds token L+1-i."""
        n = len(ex.tokens) - 1
        return ex.tokens[n + 1 - ex.position] if 1 <= ex.position <= n else None

    @register_feature("tracr_opp_index", positional=True)
    def opp_index(ex):
        """opp_idx = length - indices (and opp_idx-1, the same partition)."""
        return len(ex.tokens) - 1 - ex.position

    @register_feature("tracr_real_position", positional=True)
    def real_position(ex):
        """Whether the position holds a real token (tracr's 'one' direction and indices)."""
        return ex.position < len(ex.tokens)

    yield
    for n in ("tracr_reverse_output", "tracr_opp_index", "tracr_real_position"):
        unregister_feature(n)


def reverse_hypothesis(model, padded: bool) -> Hypothesis:
    """Written from the RASP program of lib.make_reverse:
        length = SelectorWidth(Select(tokens, tokens, TRUE))       a0.h0 (attention) + m0 (MLP)
        opp_idx = length - indices                                  m1
        opp_idx-1 = opp_idx - 1                                     m2
        reverse = Aggregate(Select(indices, opp_idx-1, EQ), tokens) a3.h0: q ← m2, k ← indices, v ← tokens
    The constant inputs (BOS, 'one', indices) are `constant()` for equal-length prompts; with
    padding they carry whether a position is real, so they get that feature instead."""
    pos = "tracr_real_position" if padded else constant()
    sw = I("selector_width_attn", seq_length(), [I("bos", pos)])
    length = I("length", seq_length(), [sw, I("bos_m0", pos)])
    opp = I("opp_idx", "tracr_opp_index", [length, I("indices_m1", pos)])
    opp1 = I("opp_idx_minus_1", "tracr_opp_index", [opp])
    rev = I("reverse", "tracr_reverse_output", [opp1, I("indices", pos), I("tokens", token_at(0))])
    corr = Correspondence(
        {
            "output": "logits",
            "reverse": "a3.h0",
            "opp_idx_minus_1": "m2",
            "opp_idx": "m1",
            "length": "m0",
            "selector_width_attn": "a0.h0",
            "bos": "input",
            "bos_m0": "input",
            "indices_m1": "input",
            "indices": "input",
            "tokens": "input",
        },
        restrict={"opp_idx_minus_1": "q", "indices": "k", "tokens": "v"},
    )
    return Hypothesis(I("output", answer_label(), [rev]), corr, model=model, name="tracr reverse (RASP)")


@pytest.fixture(scope="module")
def tracr_reverse(reverse_features):
    return _zoo_or_skip("tracr_reverse")


def test_tracr_reverse_rasp_hypothesis(tracr_reverse):
    entry = tracr_reverse
    model, zt = entry.model, entry.task()
    # answers are -1 at the unread BOS position, which Task.check_model rejects; they are never read
    task = Task(
        clean=zt.clean,
        corrupted=zt.corrupted,
        answer=zt.answer.clamp(min=0),
        read_positions=zt.read_mask,
        metric=zt.metric,
        name=zt.name,
    )
    h = reverse_hypothesis(model, padded=False)
    res = scrub(model, h, task, seed=0, n_samples=200)
    no_tokens = scrub(model, h.without("tokens"), task, seed=0, n_samples=200)
    print(res, no_tokens, sep="\n")
    assert res.loss_recovered >= 0.99 and res.ci[0] >= 0.98
    assert no_tokens.loss_recovered <= 0.3 and no_tokens.ci[1] < 0.5


def reverse_task_with_lengths(entry, n: int, seed: int) -> Task:
    """Prompts of every length 1..max_seq_len, right-padded; the metric is KL to the model."""
    enc = entry.encoding
    P = enc["max_seq_len"] + 1
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, enc["max_seq_len"] + 1, (n,), generator=g)
    toks = torch.full((n, P), enc["pad_id"])
    answer = torch.zeros(n, P, dtype=torch.long)
    for i, L in enumerate(lengths.tolist()):
        body = torch.randint(0, len(enc["output_vocab"]), (L,), generator=g)
        toks[i, 0], toks[i, 1 : L + 1], answer[i, 1 : L + 1] = enc["bos_id"], body, body.flip(0)
    mask = (torch.arange(P)[None] <= lengths[:, None]).long()
    return Task(
        clean=toks,
        corrupted=toks,
        answer=answer,
        read_positions=mask.bool() & (torch.arange(P) > 0),
        attention_mask=mask,
        metric="kl",
        name="reverse-lengths",
    )


def test_tracr_reverse_every_rasp_node_matters_when_lengths_vary(tracr_reverse):
    entry = tracr_reverse
    model = entry.model
    task = reverse_task_with_lengths(entry, n=300, seed=0)
    with torch.no_grad():  # the compiled model reverses every length exactly
        pred = model(task.clean, attention_mask=task.attention_mask).argmax(-1)
    assert torch.equal(pred[task.read_mask], task.answer[task.read_mask])
    h = reverse_hypothesis(model, padded=True)
    res = scrub(model, h, task, seed=0)
    print(res)
    assert res.loss_recovered >= 0.99
    for node in ("tokens", "opp_idx_minus_1", "length", "selector_width_attn"):
        cut = scrub(model, h.without(node), task, seed=0)
        print(cut)
        assert cut.loss_recovered <= 0.7 and cut.ci[1] < res.ci[0] - 0.2, node
    # the equal-length hypothesis (constant BOS/indices) is wrong on padded prompts, and scrubbing says so
    naive = scrub(model, reverse_hypothesis(model, padded=False), task, seed=0)
    assert naive.loss_recovered < 0.8
