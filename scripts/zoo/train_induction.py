#!/usr/bin/env python
"""Train the zoo's 2-layer attention-only induction model and derive its ground truth.

Run from the repository root::

    .venv/bin/python scripts/zoo/train_induction.py

It writes ``circuitgraph/zoo/data/induction/model.safetensors`` (the model's ``state_dict()``)
and ``circuitgraph/zoo/data/induction/model.json`` (config, encoding, the ``induction`` task and
the ground-truth circuits with the ablation evidence behind them).  Everything is seeded: running
it twice on the same torch build gives the same files.

Data: every sequence starts with BOS (token 0) followed by 39 *distinct* tokens from 1..127, in
which a segment of random length ``p`` (the repeat period, 3..19) starting at a random offset is
immediately repeated once.  The loss is taken only on predictions whose target lies inside the
second occurrence (i.e. the tokens an induction head can infer).  Because the period and the
offset change from sequence to sequence, a fixed positional offset cannot solve the task: the
model has to find the previous occurrence of the current token and copy what followed it.

After training the script analyses the model:

* attention-pattern scores (previous-token score for layer-0 heads, induction score for layer-1
  heads);
* head ablations (zero and mean) and their effect on accuracy and on the task's logit difference;
* path ablations of every layer-0 head out of every layer-1 head's query, key or value input
  (TransformerLens ``use_split_qkv_input=True``; the head's output ``z @ W_O[h]`` is subtracted from
  ``blocks.1.hook_{q,k,v}_input`` of that one layer-1 head) -- K-composition must be the one that
  destroys induction;
* single-edge patching of every edge of the model's computational graph, under two conventions
  (corrupted and resample ablation), followed by a faithfulness check of the selected circuit
  (every edge *not* in the circuit ablated at once).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from transformer_lens import HookedTransformer, HookedTransformerConfig

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "circuitgraph" / "zoo" / "data" / "induction"

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

N_CTX = 40
D_VOCAB = 128
BOS = 0
P_MIN, P_MAX = 3, 19  # repeat period range (inclusive)

CONFIG = dict(
    n_layers=2,
    d_model=64,
    n_ctx=N_CTX,
    d_head=16,
    n_heads=4,
    d_vocab=D_VOCAB,
    d_vocab_out=D_VOCAB,
    act_fn=None,
    attn_only=True,
    normalization_type="LN",
    positional_embedding_type="standard",
    attention_dir="causal",
    model_name="induction",
    default_prepend_bos=False,
)
# (no ``seed`` in the config on purpose: HookedTransformerConfig(seed=...) reseeds torch's global
# RNG whenever the zoo loads the model; training seeds explicitly instead)

TRAIN_SEED = 0
EVAL_SEED = 12345
N_EVAL = 2048  # held-in sequences for the headline accuracy
N_ABL = 512  # held-in sequences for accuracies under ablation
TASK_SEED = 2024
N_TASK = 64


def build_model(device: str = "cpu") -> HookedTransformer:
    cfg = HookedTransformerConfig(**CONFIG, device=device, dtype=torch.float32)
    return HookedTransformer(cfg)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def distinct_tokens(gen: torch.Generator, batch: int, length: int) -> torch.Tensor:
    """``[batch, length]`` tokens from 1..D_VOCAB-1, all distinct within each row."""
    order = torch.argsort(torch.rand(batch, D_VOCAB - 1, generator=gen), dim=1)
    return order[:, :length] + 1


def make_batch(gen: torch.Generator, batch: int) -> dict[str, torch.Tensor]:
    """Repeated-segment sequences.

    Returns ``tokens [B, N_CTX]``, ``mask [B, N_CTX]`` (True at positions whose *next* token is a
    second-occurrence token predictable by induction), ``period [B]`` and ``start [B]`` (position
    of the first occurrence's first token).
    """
    period = torch.randint(P_MIN, P_MAX + 1, (batch,), generator=gen)
    # first occurrence at [start, start+p), second at [start+p, start+2p); start >= 1 (after BOS)
    max_start = N_CTX - 2 * period  # inclusive upper bound so that start + 2p <= N_CTX
    start = 1 + (torch.rand(batch, generator=gen) * max_start).long()  # uniform in [1, max_start]
    body = distinct_tokens(gen, batch, N_CTX - 1)
    tokens = torch.cat([torch.full((batch, 1), BOS, dtype=torch.long), body], dim=1)
    pos = torch.arange(N_CTX).unsqueeze(0)
    s, p = start.unsqueeze(1), period.unsqueeze(1)
    second = (pos >= s + p) & (pos < s + 2 * p)
    src = (pos - p).clamp(min=0)
    tokens = torch.where(second, tokens.gather(1, src), tokens)
    # predicting position t+1 from position t, where t+1 lies in [s+p+1, s+2p)
    mask = (pos >= s + p) & (pos < s + 2 * p - 1)
    return {"tokens": tokens, "mask": mask, "period": period, "start": start}


def make_task(seed: int, n: int) -> dict:
    """The ``induction`` task: clean/corrupted pairs read at one second-occurrence position.

    clean: a repeated-segment sequence.  The read position ``r`` is a random position of the
    second occurrence whose next token is determined by the first occurrence; ``answer`` is the
    token that followed the previous occurrence of ``clean[r]``.
    corrupted: the same sequence with every token of the first occurrence replaced by a fresh
    token that appears nowhere in the clean sequence (the second occurrence and everything else
    is unchanged), so induction has no previous occurrence to find.
    wrong: the corrupted sequence's token in the answer's slot of the first occurrence -- the
    token that would stand where the answer stood (it never occurs in the clean sequence).
    """
    gen = torch.Generator().manual_seed(seed)
    b = make_batch(gen, n)
    tokens, period, start = b["tokens"], b["period"], b["start"]
    clean = tokens.clone()
    corrupted = tokens.clone()
    read, answer, wrong = [], [], []
    for i in range(n):
        s, p = int(start[i]), int(period[i])
        used = set(clean[i].tolist())
        pool = [t for t in range(1, D_VOCAB) if t not in used]
        perm = torch.randperm(len(pool), generator=gen)[:p]
        fresh = torch.tensor([pool[j] for j in perm.tolist()], dtype=torch.long)
        corrupted[i, s : s + p] = fresh
        j = int(torch.randint(0, p - 1, (1,), generator=gen))  # offset within second occurrence
        r = s + p + j
        read.append(r)
        answer.append(int(clean[i, s + j + 1]))
        wrong.append(int(corrupted[i, s + j + 1]))
        assert int(clean[i, r + 1]) == answer[-1]
    return {
        "clean": clean,
        "corrupted": corrupted,
        "answer": torch.tensor(answer),
        "wrong": torch.tensor(wrong),
        "read": torch.tensor(read),
        "period": period,
        "start": start,
    }


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def masked_loss_acc(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor):
    pred_logits = logits[:, :-1]
    targets = tokens[:, 1:]
    m = mask[:, :-1]
    lp = F.log_softmax(pred_logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    loss = -(lp * m).sum() / m.sum()
    acc = ((pred_logits.argmax(-1) == targets) & m).sum().float() / m.sum()
    return loss, acc


def head_usage_penalty(model: HookedTransformer, zs: dict[int, torch.Tensor]) -> torch.Tensor:
    """Concave group penalty on how much each head writes: sum over heads of RMS(output)^(1/2).

    Redundant copies of one mechanism cost more than a single head doing the job, so the model
    concentrates each mechanism in as few heads as it can (an L1 penalty would be indifferent to
    splitting a function across parallel heads)."""
    total = torch.zeros(())
    for layer, z in zs.items():
        out = head_out(model, layer, z)  # [B, P, H, d_model]
        rms = out.pow(2).sum(-1).mean(dim=(0, 1))  # [H]
        total = total + (rms + 1e-6).pow(0.25).sum()
    return total


def train(steps: int, batch: int, lr: float, seed: int, sparsity: float = 0.0,
          log_every: int = 250) -> tuple:
    torch.manual_seed(seed)
    model = build_model()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = 100

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    t0 = time.time()
    history = []
    for step in range(steps):
        b = make_batch(gen, batch)
        zs: dict[int, torch.Tensor] = {}

        def keep(z, hook):
            zs[hook.layer()] = z
            return z

        logits = model.run_with_hooks(b["tokens"], fwd_hooks=[(lambda n: n.endswith("hook_z"), keep)])
        loss, acc = masked_loss_acc(logits, b["tokens"], b["mask"])
        total = loss + sparsity * head_usage_penalty(model, zs) if sparsity else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            history.append((step, float(loss), float(acc)))
            print(f"step {step:5d}  loss {float(loss):.4f}  acc {float(acc):.4f}  "
                  f"({time.time() - t0:.1f}s)", flush=True)
    model.eval()
    return model, history, time.time() - t0


@torch.no_grad()
def eval_accuracy(model: HookedTransformer, seed: int, n: int = 2048, hooks=()) -> float:
    """Next-token accuracy on the second-occurrence tokens of ``n`` fresh sequences."""
    gen = torch.Generator().manual_seed(seed)
    b = make_batch(gen, n)
    logits = model.run_with_hooks(b["tokens"], fwd_hooks=list(hooks))
    _, acc = masked_loss_acc(logits, b["tokens"], b["mask"])
    return float(acc)


# ---------------------------------------------------------------------------------------------
# Analysis helpers
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def pattern_scores(model: HookedTransformer, seed: int, n: int = 512) -> dict:
    gen = torch.Generator().manual_seed(seed)
    b = make_batch(gen, n)
    _, cache = model.run_with_cache(b["tokens"], names_filter=lambda k: k.endswith("hook_pattern"))
    out = {}
    pos = torch.arange(N_CTX)
    for layer in range(model.cfg.n_layers):
        pat = cache[f"blocks.{layer}.attn.hook_pattern"]  # [B, H, Q, K]
        # previous-token score: attention from q to q-1, averaged over q >= 2 (q=1 can only
        # choose between BOS and itself) and all sequences
        prev = pat[:, :, pos[2:], pos[1:-1]].mean(dim=(0, 2))
        # induction score: attention from a second-occurrence position t to t - p + 1 (the token
        # after the previous occurrence of the current token), over induction-predictable t
        m = b["mask"]  # [B, Q]
        key = (pos.unsqueeze(0) - b["period"].unsqueeze(1) + 1).clamp(min=0)  # [B, Q]
        gathered = pat.gather(3, key[:, None, :, None].expand(-1, pat.shape[1], -1, 1)).squeeze(-1)
        ind = (gathered * m[:, None, :]).sum(dim=(0, 2)) / m.sum()
        for h in range(model.cfg.n_heads):
            out[f"a{layer}.h{h}"] = {"prev_token": round(float(prev[h]), 4),
                                     "induction": round(float(ind[h]), 4)}
    return out


def head_out(model: HookedTransformer, layer: int, z: torch.Tensor) -> torch.Tensor:
    """Per-head contribution to the residual stream: ``[B, P, H, d_model]``."""
    return torch.einsum("bphd,hdm->bphm", z, model.blocks[layer].attn.W_O)


@torch.no_grad()
def logit_diff(logits: torch.Tensor, task: dict) -> torch.Tensor:
    idx = torch.arange(logits.shape[0])
    last = logits[idx, task["read"]]
    return last[idx, task["answer"]] - last[idx, task["wrong"]]


@torch.no_grad()
def task_accuracy(logits: torch.Tensor, task: dict) -> float:
    idx = torch.arange(logits.shape[0])
    return float((logits[idx, task["read"]].argmax(-1) == task["answer"]).float().mean())


def head_ablation_hook(layer: int, head: int, mean_z: torch.Tensor | None):
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0 if mean_z is None else mean_z[: z.shape[1], head]
        return z

    return (f"blocks.{layer}.attn.hook_z", hook)


def path_ablation_hooks(model, src_layer: int, src_head: int, dst_layer: int, dst_head: int,
                        dst_kind: str, mean_out: torch.Tensor | None):
    """Remove head (src_layer, src_head)'s output from one qkv input of (dst_layer, dst_head).

    ``mean_out=None`` subtracts the head's output (zero ablation of the path); otherwise the
    head's output is replaced with ``mean_out`` (its position-wise mean) on that path only.
    """
    store = {}

    def grab(z, hook):
        store["out"] = head_out(model, src_layer, z)[:, :, src_head]
        return z

    def patch(x, hook):
        x = x.clone()
        delta = -store["out"]
        if mean_out is not None:
            delta = delta + mean_out[: x.shape[1]]
        x[:, :, dst_head] = x[:, :, dst_head] + delta
        return x

    return [(f"blocks.{src_layer}.attn.hook_z", grab),
            (f"blocks.{dst_layer}.hook_{dst_kind}_input", patch)]


# ---------------------------------------------------------------------------------------------
# Edge-level patching on the computational graph
#   sources: input, a{L}.h{H};  destinations: a{L}.h{H}.{q,k,v}, logits
# ---------------------------------------------------------------------------------------------


def graph_edges(cfg) -> list[tuple[str, str]]:
    edges = []
    for layer in range(cfg.n_layers):
        srcs = ["input"] + [f"a{l}.h{h}" for l in range(layer) for h in range(cfg.n_heads)]
        for h in range(cfg.n_heads):
            for kind in "qkv":
                edges += [(s, f"a{layer}.h{h}.{kind}") for s in srcs]
    srcs = ["input"] + [f"a{l}.h{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    edges += [(s, "logits") for s in srcs]
    return edges


@torch.no_grad()
def source_values(model: HookedTransformer, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each source node's output ``[B, P, d_model]`` on ``tokens``."""
    names = lambda k: k in ("hook_embed", "hook_pos_embed") or k.endswith("attn.hook_z")
    _, cache = model.run_with_cache(tokens, names_filter=names)
    out = {"input": cache["hook_embed"] + cache["hook_pos_embed"]}
    for layer in range(model.cfg.n_layers):
        per_head = head_out(model, layer, cache[f"blocks.{layer}.attn.hook_z"])
        for h in range(model.cfg.n_heads):
            out[f"a{layer}.h{h}"] = per_head[:, :, h]
    return out


@torch.no_grad()
def run_with_ablated_edges(model: HookedTransformer, tokens: torch.Tensor, ablated: set,
                           ref: dict[str, torch.Tensor]) -> torch.Tensor:
    """Forward ``tokens`` with each edge in ``ablated`` carrying ``ref[src]`` instead of the
    source's value in this forward pass (all other edges carry their own current value)."""
    cfg = model.cfg
    model.set_use_split_qkv_input(True)
    current: dict[str, torch.Tensor] = {}
    by_dst: dict[str, list[str]] = {}
    for s, d in ablated:
        by_dst.setdefault(d, []).append(s)

    def grab_embed(x, hook):
        current["embed"] = x
        return x

    def grab_pos(x, hook):
        current["input"] = current["embed"] + x
        return x

    def grab_z(layer):
        def hook(z, hook):
            per_head = head_out(model, layer, z)
            for h in range(cfg.n_heads):
                current[f"a{layer}.h{h}"] = per_head[:, :, h]
            return z

        return hook

    def patch_qkv(layer, kind):
        def hook(x, hook):
            x = x.clone()
            for h in range(cfg.n_heads):
                for s in by_dst.get(f"a{layer}.h{h}.{kind}", []):
                    x[:, :, h] = x[:, :, h] + ref[s] - current[s]
            return x

        return hook

    def patch_logits(x, hook):
        x = x.clone()
        for s in by_dst.get("logits", []):
            x = x + ref[s] - current[s]
        return x

    hooks = [("hook_embed", grab_embed), ("hook_pos_embed", grab_pos)]
    for layer in range(cfg.n_layers):
        for kind in "qkv":
            hooks.append((f"blocks.{layer}.hook_{kind}_input", patch_qkv(layer, kind)))
        hooks.append((f"blocks.{layer}.attn.hook_z", grab_z(layer)))
    hooks.append((f"blocks.{cfg.n_layers - 1}.hook_resid_post", patch_logits))
    try:
        return model.run_with_hooks(tokens, fwd_hooks=hooks)
    finally:
        model.set_use_split_qkv_input(False)


@torch.no_grad()
def edge_analysis(model, task: dict, ref: dict, ref_metric: float, threshold: float) -> dict:
    """Single-edge patching effects, normalised so that 1.0 = the full clean-vs-reference gap."""
    clean = task["clean"]
    base = float(logit_diff(model(clean), task).mean())
    gap = base - ref_metric
    effects = {}
    for e in graph_edges(model.cfg):
        ld = float(logit_diff(run_with_ablated_edges(model, clean, {e}, ref), task).mean())
        effects[e] = (base - ld) / gap
    chosen = sorted(e for e, v in effects.items() if v >= threshold)
    others = set(graph_edges(model.cfg)) - set(chosen)
    logits_circ = run_with_ablated_edges(model, clean, others, ref)
    ld_circ = float(logit_diff(logits_circ, task).mean())
    logits_none = run_with_ablated_edges(model, clean, set(graph_edges(model.cfg)), ref)
    ld_none = float(logit_diff(logits_none, task).mean())
    return {
        "clean_logit_diff": base,
        "reference_logit_diff": ref_metric,
        "effects": effects,
        "chosen": chosen,
        "circuit_only_logit_diff": ld_circ,
        "circuit_only_accuracy": task_accuracy(logits_circ, task),
        "circuit_only_faithfulness": (ld_circ - ref_metric) / gap,
        "all_ablated_logit_diff": ld_none,
    }


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def r4(x: float) -> float:
    return round(float(x), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=TRAIN_SEED)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sparsity", type=float, default=0.1,
                    help="weight of the concave per-head usage penalty (0 disables it)")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--analyse-only", action="store_true",
                    help="skip training: load OUT/model.safetensors and redo the analysis and "
                         "model.json (the training figures are then taken from the old JSON)")
    ap.add_argument("--threshold", type=float, default=0.1,
                    help="edge kept in a ground truth if its single-edge ablation removes at "
                         "least this fraction of the clean-vs-reference logit-diff gap")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    from safetensors.torch import load_file, save_file

    args.out.mkdir(parents=True, exist_ok=True)
    if args.analyse_only:
        model = build_model()
        model.load_state_dict(load_file(str(args.out / "model.safetensors")), strict=True)
        model.eval()
        old_json = args.out / "model.json"
        old = (json.loads(old_json.read_text())["encoding"]["training"] if old_json.is_file()
               else {"final_train_loss": None, "train_seconds": None})
        history, train_s = [(args.steps - 1, old["final_train_loss"], None)], old["train_seconds"]
    else:
        model, history, train_s = train(args.steps, args.batch, args.lr, args.seed,
                                        args.sparsity)
    t_analysis = time.time()
    acc = eval_accuracy(model, EVAL_SEED, N_EVAL)
    print(f"held-in accuracy on repeated tokens: {acc:.4f}  (training took {train_s}s)")

    cfg = model.cfg
    heads = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    scores = pattern_scores(model, EVAL_SEED + 1)
    for name, s in scores.items():
        print(f"  {name}: prev-token {s['prev_token']:.3f}  induction {s['induction']:.3f}")

    task = make_task(TASK_SEED, N_TASK)
    with torch.no_grad():
        logits_clean = model(task["clean"])
        logits_corr = model(task["corrupted"])
    ld_clean = float(logit_diff(logits_clean, task).mean())
    ld_corr = float(logit_diff(logits_corr, task).mean())
    print(f"task: clean logit diff {ld_clean:.3f} (acc {task_accuracy(logits_clean, task):.3f}), "
          f"corrupted {ld_corr:.3f} (acc {task_accuracy(logits_corr, task):.3f})")

    # mean activations over a batch of held-in sequences (position-wise)
    gen = torch.Generator().manual_seed(EVAL_SEED + 2)
    mean_tokens = make_batch(gen, 1024)["tokens"]
    with torch.no_grad():
        _, mcache = model.run_with_cache(mean_tokens, names_filter=lambda k: k.endswith("hook_z"))
    mean_z = {l: mcache[f"blocks.{l}.attn.hook_z"].mean(0) for l in range(cfg.n_layers)}

    # --- head ablations -----------------------------------------------------------------------
    head_abl = {}
    for (l, h) in heads:
        row = {}
        for kind, mz in (("zero", None), ("mean", mean_z[l])):
            hook = head_ablation_hook(l, h, mz)
            with torch.no_grad():
                lg = model.run_with_hooks(task["clean"], fwd_hooks=[hook])
            row[f"{kind}_accuracy"] = r4(eval_accuracy(model, EVAL_SEED, N_ABL, [hook]))
            row[f"{kind}_logit_diff"] = r4(logit_diff(lg, task).mean())
        head_abl[f"a{l}.h{h}"] = row
        print(f"  ablate a{l}.h{h}: {row}")

    # --- identify heads ---------------------------------------------------------------------
    drop = lambda n: acc - head_abl[n]["mean_accuracy"]
    prev_heads = [h for h in range(cfg.n_heads)
                  if scores[f"a0.h{h}"]["prev_token"] >= 0.3 and drop(f"a0.h{h}") >= 0.2]
    ind_heads = [h for h in range(cfg.n_heads)
                 if scores[f"a1.h{h}"]["induction"] >= 0.3 and drop(f"a1.h{h}") >= 0.2]
    print(f"previous-token heads: {['a0.h%d' % h for h in prev_heads]}; "
          f"induction heads: {['a1.h%d' % h for h in ind_heads]}")
    if not prev_heads or not ind_heads:
        raise SystemExit("no clear previous-token / induction heads: training failed to find "
                         "the induction circuit; try another --seed or more --steps")

    print(f"  [{time.time() - t_analysis:.1f}s]")
    # --- path ablations: every a0 head out of every a1 head's q / k / v input -----------------
    W_O0 = model.blocks[0].attn.W_O
    path_abl = {}
    for p in range(cfg.n_heads):
        mean_out = torch.einsum("pd,dm->pm", mean_z[0][:, p], W_O0[p])
        for i in range(cfg.n_heads):
            for kind in "qkv":
                row = {}
                for abl, mo in (("zero", None), ("mean", mean_out)):
                    hooks = path_ablation_hooks(model, 0, p, 1, i, kind, mo)
                    model.set_use_split_qkv_input(True)
                    try:
                        with torch.no_grad():
                            lg = model.run_with_hooks(task["clean"], fwd_hooks=hooks)
                        row[f"{abl}_accuracy"] = r4(eval_accuracy(model, EVAL_SEED, N_ABL, hooks))
                    finally:
                        model.set_use_split_qkv_input(False)
                    row[f"{abl}_logit_diff"] = r4(logit_diff(lg, task).mean())
                path_abl[f"a0.h{p}->a1.h{i}.{kind}"] = row
    for p in prev_heads:
        for i in ind_heads:
            for kind in "qkv":
                k = f"a0.h{p}->a1.h{i}.{kind}"
                print(f"  path {k}: {path_abl[k]}")

    # all prev-token heads out of all induction heads' key inputs at once
    def combined_k_hooks():
        hooks = []
        for p in prev_heads:
            for i in ind_heads:
                hooks += path_ablation_hooks(model, 0, p, 1, i, "k", None)
        return hooks

    model.set_use_split_qkv_input(True)
    try:
        k_all_acc = eval_accuracy(model, EVAL_SEED, N_ABL, combined_k_hooks())
        with torch.no_grad():
            k_all_ld = float(logit_diff(
                model.run_with_hooks(task["clean"], fwd_hooks=combined_k_hooks()), task).mean())
    finally:
        model.set_use_split_qkv_input(False)
    print(f"  all prev->induction K paths removed: acc {k_all_acc:.4f}, logit diff {k_all_ld:.3f}")

    print(f"  [{time.time() - t_analysis:.1f}s]")
    # --- edge-level ground truths -------------------------------------------------------------
    ref_corr = source_values(model, task["corrupted"])
    edge_corr = edge_analysis(model, task, ref_corr, ld_corr, args.threshold)
    # resample: each example's sources come from the clean run of another example of the task
    # (the batch rolled by one), so every edge from `input` carries another sequence's tokens
    shifted = {k: v.roll(1, dims=0) for k, v in source_values(model, task["clean"]).items()}
    with torch.no_grad():
        ld_resample_ref = float(logit_diff(model(task["clean"].roll(1, dims=0)), task).mean())
    edge_res = edge_analysis(model, task, shifted, ld_resample_ref, args.threshold)
    for name, ea in (("corrupted", edge_corr), ("resample", edge_res)):
        print(f"[{name}] chosen edges: {ea['chosen']}")
        print(f"[{name}] circuit-only faithfulness {ea['circuit_only_faithfulness']:.3f} "
              f"(acc {ea['circuit_only_accuracy']:.3f})")
        top = sorted(ea["effects"].items(), key=lambda kv: -abs(kv[1]))[:14]
        for e, v in top:
            print(f"    {e[0]:>6} -> {e[1]:<9} {v:+.3f}")

    # --- write artifacts ----------------------------------------------------------------------
    print(f"analysis took {time.time() - t_analysis:.1f}s")

    prev_names = [f"a0.h{h}" for h in prev_heads]
    ind_names = [f"a1.h{h}" for h in ind_heads]
    unused = [f"a{l}.h{h}" for (l, h) in heads
              if f"a{l}.h{h}" not in prev_names + ind_names]

    def excluded_notes(ea: dict, query_unchanged: bool) -> str:
        eff, chosen = ea["effects"], set(ea["chosen"])
        parts = []
        for p in prev_names:
            qk = [(k, eff[("input", f"{p}.{k}")]) for k in "qk" if ("input", f"{p}.{k}") not in chosen]
            if qk:
                parts.append(
                    f"input->{p}.q/k are out (effects "
                    + ", ".join(f"{k} {v:+.3f}" for k, v in qk)
                    + "): the previous-token head locates position t-1 through the positional "
                    "embedding, which is identical in the clean and ablated runs; it reads the "
                    "token to pass on through its value (input->" + p + ".v).")
        for i in ind_names:
            e = ("input", f"{i}.q")
            if e not in chosen and query_unchanged:
                parts.append(
                    f"input->{i}.q is out (effect {eff[e]:+.3f}) only because under this "
                    "convention the query position and the second occurrence before it are "
                    "identical in clean and corrupted prompts, so the edge carries no "
                    "difference; the query does read the current token (see the resample "
                    "ground truth).")
        rest = sorted(((v, e) for e, v in eff.items() if e not in chosen), key=lambda t: -abs(t[0]))
        parts.append("Largest excluded effects: " + ", ".join(
            f"{s}->{d} {v:+.3f}" for v, (s, d) in rest[:4]) + ".")
        return " ".join(parts)

    def edge_gt(ea: dict, ablation: str, what: str, query_unchanged: bool = False) -> dict:
        edges = [list(e) for e in ea["chosen"]]
        nodes = sorted({s for s, _ in ea["chosen"] if s != "input"}
                       | {d.rsplit(".", 1)[0] for _, d in ea["chosen"] if d != "logits"})
        effects = {f"{s}->{d}": r4(v) for (s, d), v in sorted(ea["effects"].items())}
        return {
            "ablation": ablation,
            "task": "induction",
            "level": "edge",
            "edges": edges,
            "nodes": nodes,
            "evidence": {
                "metric": "logit_diff (mean over the task's 64 examples)",
                "clean_logit_diff": r4(ea["clean_logit_diff"]),
                "reference_logit_diff": r4(ea["reference_logit_diff"]),
                "threshold": args.threshold,
                "single_edge_effect": effects,
                "circuit_only_logit_diff": r4(ea["circuit_only_logit_diff"]),
                "circuit_only_accuracy": r4(ea["circuit_only_accuracy"]),
                "circuit_only_faithfulness": r4(ea["circuit_only_faithfulness"]),
                "all_edges_ablated_logit_diff": r4(ea["all_ablated_logit_diff"]),
            },
            "notes": (
                f"Edge-level ground truth under {what}. Every one of the model's "
                f"{len(ea['effects'])} edges was patched on its own; single_edge_effect is "
                "(clean - patched) / (clean - reference) of the mean logit difference, where "
                "the reference is the logit difference with every edge ablated. Edges with an "
                f"effect >= {args.threshold} are in the circuit. circuit_only_faithfulness is the "
                "same normalised logit difference with every edge NOT in the circuit ablated at "
                "once (1.0 = the circuit alone reproduces the clean behaviour). `nodes` lists "
                "the attention heads the edges touch (input and logits are always present and "
                "are not listed). " + excluded_notes(ea, query_unchanged)
            ),
        }

    task_json = {
        "description": (
            "Induction on a repeated random segment. clean: BOS + 39 distinct tokens in which a "
            "segment of length 3..19 is repeated once; read at a position inside the second "
            "occurrence; answer: the token that followed the previous occurrence of the current "
            "token. corrupted: the same sequence with the first occurrence's tokens replaced by "
            "fresh tokens absent from the clean sequence (so there is nothing to induct from). "
            "wrong: the corrupted sequence's token in the answer's slot of the first occurrence."
        ),
        "clean": task["clean"].tolist(),
        "corrupted": task["corrupted"].tolist(),
        "answer": task["answer"].tolist(),
        "wrong": task["wrong"].tolist(),
        "read_positions": task["read"].tolist(),
        "metric": "logit_diff",
    }

    head_level = {
        "ablation": "mean",
        "task": "induction",
        "level": "head",
        "edges": [],
        "nodes": sorted(prev_names + ind_names),
        "evidence": {
            "heldin_accuracy": r4(acc),
            "task_clean_logit_diff": r4(ld_clean),
            "task_corrupted_logit_diff": r4(ld_corr),
            "pattern_scores": scores,
            "head_ablation": head_abl,
            "path_ablation_a0_to_a1_qkv_input": path_abl,
            "all_prev_to_induction_k_paths_removed": {"accuracy": r4(k_all_acc),
                                                      "logit_diff": r4(k_all_ld)},
            "previous_token_heads": prev_names,
            "induction_heads": ind_names,
            "unused_heads": unused,
        },
        "notes": (
            "Head-level ground truth. pattern_scores: prev_token = mean attention from position "
            "q to q-1 (q >= 2); induction = mean attention from an induction-predictable "
            "second-occurrence position t to t-p+1 (the token after the previous occurrence). "
            "head_ablation: the head's z replaced by 0 (zero) or by its position-wise mean over "
            "1024 held-in sequences (mean); *_accuracy is next-token accuracy on the second "
            f"occurrence of {N_ABL} held-in sequences, *_logit_diff the induction task's mean logit "
            "difference. A layer-0 head is a previous-token head if prev_token >= 0.3 and mean-"
            "ablating it costs >= 0.2 accuracy; a layer-1 head is an induction head if induction "
            ">= 0.3 and mean-ablating it costs >= 0.2 accuracy. path_ablation: the layer-0 "
            "head's output z @ W_O[h] removed (zero) or replaced by its mean (mean) in one "
            "layer-1 head's q, k or v input only (use_split_qkv_input=True); removing the "
            "previous-token head from the induction head's key input alone destroys induction "
            "(K-composition), while its q and v paths matter little: "
            + "; ".join(
                f"{p}->{i}.{kind} accuracy "
                f"{path_abl[f'{p}->{i}.{kind}']['zero_accuracy']:.3f}"
                for p in prev_names for i in ind_names for kind in "qkv")
            + f" (unablated {acc:.4f}). `edges` is empty at this level."
        ),
    }

    doc = {
        "schema": "circuitgraph.zoo/1",
        "name": "induction",
        "description": (
            "2-layer attention-only transformer (4 heads of size 16 per layer, d_model 64, "
            "LayerNorm, learned positional embeddings, n_ctx 40, vocab 128 with BOS = 0) trained "
            "on random sequences with a repeated segment of varying period. Layer 0 holds "
            f"previous-token head(s) {prev_names}, layer 1 induction head(s) {ind_names}, "
            "joined by K-composition. Trained by scripts/zoo/train_induction.py."
        ),
        "config": CONFIG,
        "encoding": {
            "kind": "tokens",
            "vocab_size": D_VOCAB,
            "bos": BOS,
            "content_tokens": [1, D_VOCAB - 1],
            "seq_len": N_CTX,
            "period_range": [P_MIN, P_MAX],
            "prepend_bos": "sequences already start with BOS; do not add another",
            "training": {
                "steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed,
                "head_usage_penalty": args.sparsity,
                "optimizer": "AdamW(betas=(0.9, 0.98), weight_decay=0.01), 100 warm-up steps, "
                             "cosine to 0.1x, gradient clipping at 1.0",
                "regulariser": "head_usage_penalty * sum over heads of RMS(head output)^0.5 "
                               "(concave group penalty: concentrates each mechanism in one "
                               "head instead of redundant copies)",
                "loss": "cross-entropy on second-occurrence tokens only",
                "heldin_accuracy": r4(acc),
                "heldin_eval": "2048 sequences from the training distribution, seed "
                               f"{EVAL_SEED}",
                "final_train_loss": None if history[-1][1] is None else r4(history[-1][1]),
                "train_seconds": None if train_s is None else round(train_s, 1),
                "torch": torch.__version__,
            },
        },
        "tasks": {"induction": task_json},
        "ground_truth": {
            "corrupted": edge_gt(edge_corr, "corrupted",
                                 "interchange ablation with the induction task's corrupted "
                                 "sequences", query_unchanged=True),
            "resample": edge_gt(edge_res, "resample",
                                "resample ablation: each example's edges carry the values from "
                                "the clean run of the previous example of the task (batch "
                                "rolled by one)"),
            "heads": head_level,
        },
    }
    # write both files only now that the analysis succeeded, each atomically (tmp + rename), so
    # a failed run never leaves weights and JSON that disagree
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp_w, tmp_j = args.out / "model.safetensors.tmp", args.out / "model.json.tmp"
    save_file(state, str(tmp_w))
    with open(tmp_j, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp_w, args.out / "model.safetensors")
    os.replace(tmp_j, args.out / "model.json")
    os.chmod(args.out / "model.safetensors", 0o644)  # safetensors creates files owner-only
    print(f"wrote {args.out / 'model.safetensors'} and {args.out / 'model.json'}")


if __name__ == "__main__":
    main()
