"""The zoo's trained induction model: it does induction, and through the circuit it claims.

Nothing is retrained here: the committed weights are loaded and probed on freshly generated
held-in sequences (the training distribution, a seed never used by the training script).
"""

from __future__ import annotations

import pytest
import torch

from circuitgraph import zoo

N_SEQ = 512
SEED = 777


@pytest.fixture(scope="module")
def entry():
    return zoo.load("induction", device="cpu")


@pytest.fixture(scope="module")
def heldin(entry):
    """Sequences from the training distribution: BOS then distinct tokens, with a segment of
    random period repeated once. ``mask[b, t]`` marks positions t whose next token is a
    second-occurrence token that induction can predict."""
    enc = entry.encoding
    n_ctx, vocab, bos = enc["seq_len"], enc["vocab_size"], enc["bos"]
    p_min, p_max = enc["period_range"]
    gen = torch.Generator().manual_seed(SEED)
    period = torch.randint(p_min, p_max + 1, (N_SEQ,), generator=gen)
    start = 1 + (torch.rand(N_SEQ, generator=gen) * (n_ctx - 2 * period)).long()
    body = torch.argsort(torch.rand(N_SEQ, vocab - 1, generator=gen), dim=1)[:, : n_ctx - 1] + 1
    tokens = torch.cat([torch.full((N_SEQ, 1), bos), body], dim=1)
    pos = torch.arange(n_ctx)[None]
    s, p = start[:, None], period[:, None]
    second = (pos >= s + p) & (pos < s + 2 * p)
    tokens = torch.where(second, tokens.gather(1, (pos - p).clamp(min=0)), tokens)
    mask = (pos >= s + p) & (pos < s + 2 * p - 1)
    return tokens, mask


def _accuracy(model, tokens, mask, hooks=(), split_qkv=False) -> float:
    model.set_use_split_qkv_input(split_qkv)
    try:
        with torch.no_grad():
            logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))
    finally:
        model.set_use_split_qkv_input(False)
    pred = logits[:, :-1].argmax(-1)
    m = mask[:, :-1]
    return float(((pred == tokens[:, 1:]) & m).sum() / m.sum())


def _circuit_heads(entry):
    gt = entry.ground_truth_for("corrupted")
    prev = sorted({int(n.split(".h")[1]) for n in gt.nodes if n.startswith("a0.")})
    ind = sorted({int(n.split(".h")[1]) for n in gt.nodes if n.startswith("a1.")})
    assert prev and ind, f"ground truth names no layer-0 / layer-1 heads: {sorted(gt.nodes)}"
    return prev, ind


def _zero_heads(layer, heads):
    def hook(z, hook):
        z = z.clone()
        z[:, :, heads] = 0.0
        return z

    return (f"blocks.{layer}.attn.hook_z", hook)


def _remove_path(model, src_heads, dst_heads, kind):
    """Subtract layer-0 heads' outputs from the ``kind`` input of layer-1 heads only."""
    store = {}
    W_O = model.blocks[0].attn.W_O

    def grab(z, hook):
        store["out"] = torch.einsum("bphd,hdm->bpm", z[:, :, src_heads], W_O[src_heads])
        return z

    def patch(x, hook):
        x = x.clone()
        x[:, :, dst_heads] -= store["out"][:, :, None]
        return x

    return [("blocks.0.attn.hook_z", grab), (f"blocks.1.hook_{kind}_input", patch)]


def test_config(entry):
    cfg = entry.model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head) == (2, 4, 64, 16)
    assert cfg.attn_only and cfg.attention_dir == "causal"
    n_params = sum(p.numel() for p in entry.model.parameters())
    assert 40_000 < n_params < 70_000


def test_heldin_accuracy(entry, heldin):
    tokens, mask = heldin
    assert _accuracy(entry.model, tokens, mask) >= 0.98


def test_task_clean_vs_corrupted(entry):
    task = entry.tasks["induction"]
    model = entry.model
    idx = torch.arange(task.n_examples)
    with torch.no_grad():
        lc = model(task.clean)[task.read_mask]
        lx = model(task.corrupted)[task.read_mask]
    assert float((lc.argmax(-1) == task.answer).float().mean()) >= 0.98
    ld_clean = lc[idx, task.answer] - lc[idx, task.wrong]
    ld_corr = lx[idx, task.answer] - lx[idx, task.wrong]
    assert float(ld_clean.mean()) > 5.0
    assert float(ld_corr.mean()) < 1.0
    # up to the read position (all the causal model sees), the answer never occurs in the
    # corrupted prompt and the distractor never in the clean one
    read = task.read_mask.long().argmax(1)
    for b in range(task.n_examples):
        r = int(read[b])
        assert int(task.answer[b]) in task.clean[b, : r + 1].tolist()
        assert int(task.answer[b]) not in task.corrupted[b, : r + 1].tolist()
        assert int(task.wrong[b]) not in task.clean[b].tolist()


def test_ground_truth_contains_the_induction_mechanism(entry):
    prev, ind = _circuit_heads(entry)
    for conv in ("corrupted", "resample"):
        edges = entry.ground_truth_for(conv).edges
        for p in prev:
            for i in ind:
                assert (f"a0.h{p}", f"a1.h{i}.k") in edges, conv
        for i in ind:
            assert ("input", f"a1.h{i}.v") in edges, conv
            assert (f"a1.h{i}", "logits") in edges, conv
        for p in prev:
            assert ("input", f"a0.h{p}.v") in edges, conv
    # the query reads the current token: visible under resample ablation (under the task's
    # corrupted prompts the query position is unchanged, so that edge carries no difference)
    for i in ind:
        assert ("input", f"a1.h{i}.q") in entry.ground_truth_for("resample").edges
    heads = entry.ground_truth_for("heads")
    assert heads.level == "head"
    assert heads.nodes == frozenset([f"a0.h{p}" for p in prev] + [f"a1.h{i}" for i in ind])


def test_ablating_previous_token_head_breaks_induction(entry, heldin):
    tokens, mask = heldin
    prev, _ = _circuit_heads(entry)
    assert _accuracy(entry.model, tokens, mask, [_zero_heads(0, prev)]) < 0.5


def test_ablating_induction_head_breaks_induction(entry, heldin):
    tokens, mask = heldin
    _, ind = _circuit_heads(entry)
    assert _accuracy(entry.model, tokens, mask, [_zero_heads(1, ind)]) < 0.5


def test_k_composition(entry, heldin):
    """Removing the previous-token head from the induction head's *key* input alone destroys
    induction; removing it from the query or value input does not."""
    tokens, mask = heldin
    model = entry.model
    prev, ind = _circuit_heads(entry)
    acc = {kind: _accuracy(model, tokens, mask, _remove_path(model, prev, ind, kind), split_qkv=True) for kind in "qkv"}
    assert acc["k"] < 0.5, acc
    assert acc["q"] > 0.9 and acc["v"] > 0.9, acc


def test_unused_heads_barely_matter(entry, heldin):
    tokens, mask = heldin
    prev, ind = _circuit_heads(entry)
    base = _accuracy(entry.model, tokens, mask)
    n_heads = entry.model.cfg.n_heads
    unused0 = [h for h in range(n_heads) if h not in prev]
    unused1 = [h for h in range(n_heads) if h not in ind]
    assert unused0 and unused1
    for layer, heads in ((0, unused0), (1, unused1)):
        for h in heads:
            acc = _accuracy(entry.model, tokens, mask, [_zero_heads(layer, [h])])
            assert acc >= base - 0.02, (layer, h, acc)
    # all of them at once, too
    both = [_zero_heads(0, unused0), _zero_heads(1, unused1)]
    assert _accuracy(entry.model, tokens, mask, both) >= 0.95


def test_evidence_recorded(entry):
    ev = entry.ground_truth_for("heads").evidence
    prev, ind = _circuit_heads(entry)
    for p in prev:
        assert ev["pattern_scores"][f"a0.h{p}"]["prev_token"] > 0.5
    for i in ind:
        assert ev["pattern_scores"][f"a1.h{i}"]["induction"] > 0.5
    assert ev["all_prev_to_induction_k_paths_removed"]["accuracy"] < 0.5
    for conv in ("corrupted", "resample"):
        cev = entry.ground_truth_for(conv).evidence
        assert cev["circuit_only_faithfulness"] > 0.8, conv
