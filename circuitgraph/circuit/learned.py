"""Learned edge masks (Edge Pruning, Bhaskar et al. 2024): optimise the circuit itself.

Every learnable edge u→v gets a hard-concrete gate ``z_uv`` in [0, 1] (Louizos et al. 2018), and
the engine's relaxed patched forward makes v read ``live_input_v − Σ_u (1 − z_uv)(a_u(live) −
a_u(ablated))``. The gate parameters ``log_alpha`` (and nothing else) are trained on

    max(0, 1 − f(z)) + λ · E[L0(z)]

where ``f`` is the faithfulness of the relaxed circuit on a batch under the task's metric (or
|1 − f| with ``objective="deviation"``, which also penalises overshooting the model, or KL to the
clean run relative to the empty circuit's with ``objective="kl"``, Edge Pruning's own loss) and
``E[L0]`` the expected number of open gates. λ is therefore "faithfulness per edge": an edge stays
when its share of the task exceeds λ. Several λ train at
once, one mask each in the same batched forward (the engine's K masks). Over the last part of
training the gates' temperature is annealed towards a binary distribution; each mask is then
binarised (``log_alpha > 0``), pruned to input→logits paths and *re-measured* by ordinary patching.

:func:`learned_circuit` returns the smallest measured circuit that reaches a target faithfulness,
among the binarised masks and the top-n circuits of the sweep's edge ranking.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from circuitgraph.circuit.circuit import Circuit
from circuitgraph.circuit.minimal import build_circuit, minimal_circuit
from circuitgraph.circuit.selection import prune
from circuitgraph.engine.ablation import Ablation
from circuitgraph.engine.evaluator import Baselines, CircuitEvaluator
from circuitgraph.engine.patching import patched_logits, tiled
from circuitgraph.engine.tensors import CompactSources, frozen_params
from circuitgraph.errors import ConfigError
from circuitgraph.graph import Graph
from circuitgraph.models.backend import check_model
from circuitgraph.tasks.metrics import LOWER_IS_BETTER

# hard-concrete stretch (γ, ζ) and the temperature training starts at (Louizos et al.)
GAMMA, ZETA, BETA = -0.1, 1.1, 2 / 3
DEFAULT_LAMBDAS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
OBJECTIVES = ("faithfulness", "deviation", "kl")
ESTIMATORS = ("hard-concrete", "sampled")


def gate(log_alpha: torch.Tensor, beta: float, u: torch.Tensor | None = None) -> torch.Tensor:
    """Hard-concrete gates in [0, 1]: a sample for uniform noise ``u``, or (``u=None``) the
    deterministic gate used at the end."""
    if u is None:
        s = torch.sigmoid(log_alpha)
    else:
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def expected_open(log_alpha: torch.Tensor, beta: float) -> torch.Tensor:
    """P(gate > 0) per gate: the expected L0 norm is its sum."""
    return torch.sigmoid(log_alpha - beta * math.log(-GAMMA / ZETA))


@dataclass
class LearnedMasks:
    """The result of a λ sweep: one binarised, pruned and re-measured mask per λ."""

    lambdas: list[float]
    log_alpha: torch.Tensor  # [R·K, n_learnable] final gate parameters, per replicate and λ
    learnable: torch.Tensor  # [n_src, n_dst] bool: the edges that had a gate
    masks: torch.Tensor  # [R·K, n_src, n_dst] bool, binarised and pruned (replicate-major)
    faithfulness: list[float]  # measured by ordinary patching, one per mask (its replicate's weights)
    n_edges: list[int]
    ranking: torch.Tensor  # [n_src, n_dst] importance from the sweep ([R, n_src, n_dst] with replicates)
    baselines: Baselines  # of the whole task, unweighted
    trace: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    replicates: int = 1  # R: example reweightings trained at once (``weights=``)

    def table(self) -> list[dict]:
        return [
            {"lambda": lam, "n_edges": n, "faithfulness": f}
            for lam, n, f in zip(self.lambdas, self.n_edges, self.faithfulness)
        ]


def learn_edge_masks(  # noqa: C901  (one training loop: its state is shared by every step)
    model,
    graph: Graph,
    task,
    lambdas=DEFAULT_LAMBDAS,
    ablation: str | Ablation = "corrupted",
    steps: int = 300,
    lr: float = 0.1,
    objective: str = "faithfulness",
    init: torch.Tensor | None = None,
    restrict: torch.Tensor | None = None,
    anneal: float = 0.3,
    warmup: float = 0.2,
    examples_per_step: int | None = 16,
    estimator: str = "hard-concrete",
    samples: int = 8,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
    weights: torch.Tensor | None = None,
) -> LearnedMasks:
    """Train one hard-concrete edge mask per λ (jointly, in one batched forward per step).

    objective   "faithfulness": max(0, 1 − f) with f the faithfulness under the task's metric on
                the batch (a circuit may overshoot the model: the search is for f ≥ a target);
                "deviation": |1 − f|;
                "kl": KL of the circuit's output to the clean run, relative to the empty circuit's
    init        optional ``[n_src, n_dst]`` scores (e.g. EAP-IG) to warm-start the gates: edges
                with larger |score| start more open
    restrict    optional ``[n_src, n_dst]`` bool: only these edges get a gate, all others are
                removed (HAP: let EAP narrow the graph, learn the mask inside it)
    anneal      fraction of the steps (at the end) over which the gate temperature falls from 2/3
                towards 0.05, so the relaxed masks approach the binary ones that are measured
    warmup      fraction of the steps over which λ ramps up from 0
    examples_per_step  a random minibatch of the task per step (None: a whole chunk); the
                measured faithfulness at the end uses every example
    weights     optional ``[R, n_examples]`` example weights ≥ 0 (e.g. bootstrap multiplicities):
                R replicates, each one mask per λ, train at once in the same batched forwards
                (cached ablations, shared minibatches and shared gate noise: common random
                numbers, so replicates differ by their data only); each replicate's loss and
                re-measured faithfulness are its weighted means, so replicate r equals a run of
                its own with ``weights=weights[r:r+1]``

    Gradients reach the gate parameters only (the model's weights are frozen)."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose one of {list(OBJECTIVES)}")
    if estimator not in ESTIMATORS:
        raise ConfigError(f"unknown estimator {estimator!r}; choose one of {list(ESTIMATORS)}")
    if estimator == "sampled" and (objective == "kl" or samples < 2):
        raise ConfigError("estimator='sampled' needs a faithfulness objective and samples ≥ 2")
    lambdas = [float(x) for x in lambdas]
    if not lambdas or any(not math.isfinite(x) or x < 0 for x in lambdas):
        raise ConfigError(f"lambdas must be finite numbers ≥ 0, got {lambdas}")
    if steps < 1 or lr <= 0:
        raise ConfigError(f"steps must be ≥ 1 and lr > 0, got steps={steps}, lr={lr}")
    check_model(model)
    t0 = time.perf_counter()
    abl = Ablation.coerce(ablation)
    run = CircuitEvaluator(model, graph, task, abl, batch_size=batch_size)  # ablations cached within its budget
    base = run.baselines()
    device = graph.valid.device
    K = len(lambdas)
    W = None if weights is None else _replicate_weights(weights, task.n_examples)  # [R, N], rows sum to 1
    R = 1 if W is None else W.shape[0]
    M = R * K  # masks, replicate-major: mask r·K + k is replicate r at λ_k
    full_m, empty_m = _mask_baselines(run, graph, base, W, K)  # [M] float64
    if bool(((full_m - empty_m).abs() < 1e-12).any()):
        raise ConfigError(
            "the full model and the empty circuit score the same on this task (or on a replicate's examples), so "
            "there is nothing to learn; check the task's clean and corrupted prompts"
        )
    gap_m = full_m - empty_m
    objective_task = task.with_metric("kl").prepare(model) if objective == "kl" else None
    kl_empty_m, objective_chunks = None, None
    if objective_task is not None:
        objective_chunks = [objective_task.select(ix) for ix, _, _ in run.chunks]
        empty_each = CircuitEvaluator(model, graph, objective_task, abl, batch_size=batch_size)(
            torch.zeros_like(graph.valid)[None], per_example=True
        )[0]  # [N]
        kl_empty_m = (empty_each.mean()[None] if W is None else W.cpu() @ empty_each).repeat_interleave(K)
    learnable = graph.valid.clone() if restrict is None else (restrict.to(device).bool() & graph.valid)
    idx = learnable.nonzero()  # [E, 2]
    if len(idx) == 0:
        raise ConfigError("no learnable edge: restrict= selects none of the graph's valid edges")
    la = torch.full((M, len(idx)), 3.0, device=device)
    if init is not None:
        s = init.to(device).abs()[idx[:, 0], idx[:, 1]].double()
        rank = torch.argsort(torch.argsort(s)).double() / max(1, len(s) - 1)  # 0 … 1, ties broken by order
        la = (-2.0 + 6.0 * rank).float()[None].expand(M, -1).clone()
    la.requires_grad_(True)
    opt = torch.optim.Adam([la], lr=lr)
    lam = torch.tensor(lambdas, device=device).repeat(R)  # [M]
    picks = torch.Generator(device="cpu").manual_seed(int(seed) + 2**31)  # minibatches, shared by replicates
    noise = torch.Generator(device="cpu").manual_seed(int(seed))  # gates, the same draw for every replicate
    group = max(K, run.mask_batch)  # masks per differentiable forward
    n_chunks = len(run.chunks)
    anneal_from = int(steps * (1 - anneal))
    trace: list[dict] = []
    bar = tqdm(total=steps, desc="edge masks", disable=not progress, delay=2.0, leave=False)
    with frozen_params(model, *graph.node_graph.saes.values()):
        for step in range(steps):
            if step < anneal_from:
                beta = BETA
            else:  # geometric fall to 0.05 over the last steps
                frac = (step - anneal_from + 1) / max(1, steps - anneal_from)
                beta = BETA * (0.05 / BETA) ** frac
            ramp = min(1.0, (step + 1) / max(1, warmup * steps))
            i = step % n_chunks
            ix, chunk, _ = run.chunks[i]
            pick = torch.randperm(chunk.n_examples, generator=picks)[: examples_per_step or chunk.n_examples]
            pick = pick.sort().values.to(device)
            sub = chunk.select(pick)
            wm, present = _minibatch_weights(W, ix, pick, K)  # [M, b] (None: plain means), [M]
            if estimator == "sampled":
                la.grad = _sampled_gradient(
                    run,
                    graph,
                    sub,
                    _examples(run.ablated(i), pick),
                    la,
                    idx,
                    samples,
                    noise,
                    R,
                    (empty_m, gap_m, wm, present),
                    lam * ramp,
                    objective,
                )
                opt.step()
                if step % 25 == 0 or step == steps - 1:
                    trace.append({"step": step, "expected_edges": torch.sigmoid(la).sum(1).detach().cpu().tolist()})
                bar.update(1)
                continue
            u = _uniform(noise, (K, len(idx)), R, device)  # [M, E]
            grad = torch.zeros_like(la)
            task_losses, l0s = [], []
            for g0 in range(0, M, group):  # relaxed forwards of a bounded number of masks each
                g = slice(g0, min(M, g0 + group))
                z = gate(la[g], beta, u[g])  # [G, E]
                keep = torch.zeros((z.shape[0], *graph.valid.shape), dtype=z.dtype, device=device)
                keep[:, idx[:, 0], idx[:, 1]] = z
                logits = patched_logits(model, graph, sub, _examples(run.ablated(i), pick), keep, differentiable=True)
                n_g = z.shape[0]
                if objective_task is None:
                    values = tiled(sub, n_g).score(logits).view(n_g, sub.n_examples)
                    values = _weighted_mean(values, None if wm is None else wm[g])
                    e, gp = empty_m[g].to(device, values.dtype), gap_m[g].to(device, values.dtype)
                    task_loss = _shortfall(1 - (values - e) / gp, objective)  # per mask
                else:
                    assert objective_chunks is not None and kl_empty_m is not None
                    kl = tiled(objective_chunks[i].select(pick), n_g).score(logits).view(n_g, sub.n_examples)
                    kl = _weighted_mean(kl, None if wm is None else wm[g])
                    task_loss = kl / kl_empty_m[g].to(device, kl.dtype).clamp(min=1e-12)
                task_loss = task_loss * present[g].to(task_loss.dtype)
                l0 = expected_open(la[g], BETA).sum(1)  # [G]
                loss = (task_loss + ramp * lam[g] * l0).sum()
                grad += torch.autograd.grad(loss, [la])[0]
                task_losses.append(task_loss.detach())
                l0s.append(l0.detach())
            opt.zero_grad(set_to_none=True)
            la.grad = grad
            opt.step()
            if step % 25 == 0 or step == steps - 1:
                trace.append(
                    {
                        "step": step,
                        "beta": beta,
                        "task_loss": torch.cat(task_losses).cpu().tolist(),
                        "expected_edges": torch.cat(l0s).cpu().tolist(),
                    }
                )
            bar.update(1)
    bar.close()
    la = la.detach()
    masks = torch.zeros((M, *graph.valid.shape), dtype=torch.bool, device=device)
    masks[:, idx[:, 0], idx[:, 1]] = la > 0
    masks = torch.stack([prune(graph, m) for m in masks])
    if W is None:
        faith = base.faithfulness(run(masks)).tolist()
        ranking = _ranking(graph, idx, la, masks, lambdas)
    else:
        values = (run(masks, per_example=True) * W.repeat_interleave(K, 0)).sum(1)  # [M] weighted means
        faith = ((values - empty_m) / gap_m).tolist()
        ranking = torch.stack(
            [_ranking(graph, idx, la[r * K : (r + 1) * K], masks[r * K : (r + 1) * K], lambdas) for r in range(R)]
        )
    return LearnedMasks(
        lambdas=lambdas,
        log_alpha=la.cpu(),
        learnable=learnable,
        masks=masks,
        faithfulness=[float(f) for f in faith],
        n_edges=[int(torch.count_nonzero(m)) for m in masks],
        ranking=ranking,
        baselines=base,
        trace=trace,
        seconds=time.perf_counter() - t0,
        replicates=R,
    )


def _replicate_weights(weights: torch.Tensor, n_examples: int) -> torch.Tensor:
    """``[R, n_examples]`` example weights, each row normalised to sum 1 (float64, CPU)."""
    w = torch.as_tensor(weights).detach().double().cpu()
    if w.ndim == 1:
        w = w[None]
    if w.ndim != 2 or w.shape[1] != n_examples or w.shape[0] < 1:
        raise ConfigError(f"weights must be [n_replicates, {n_examples}] (one weight per example), got {list(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or bool((w.sum(1) <= 0).any()):
        raise ConfigError("weights must be finite and ≥ 0, with a positive sum in every replicate")
    return w / w.sum(1, keepdim=True)


def _mask_baselines(
    run: CircuitEvaluator, graph: Graph, base: Baselines, W: torch.Tensor | None, K: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The full and empty metric each mask's faithfulness is relative to: the task's, or (with
    replicate weights) each replicate's weighted mean, ``[R·K]`` float64 on CPU."""
    if W is None:
        return torch.full((K,), base.full, dtype=torch.float64), torch.full((K,), base.empty, dtype=torch.float64)
    full = run(graph.valid[None], per_example=True)[0]  # [N]
    empty = run(torch.zeros_like(graph.valid)[None], per_example=True)[0]
    return (W @ full).repeat_interleave(K), (W @ empty).repeat_interleave(K)


def _minibatch_weights(
    W: torch.Tensor | None, ix: slice | torch.Tensor, pick: torch.Tensor, K: int
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Per-mask weights of a minibatch's examples ``[R·K, b]`` (each replicate's weights of those
    examples, renormalised), and which masks' replicates hold any of them ``[R·K]`` (1.0 / 0.0)."""
    if W is None:
        return None, torch.ones(K, dtype=torch.float64)
    w = W[:, ix][:, pick.cpu()]  # [R, b]
    total = w.sum(1, keepdim=True)
    present = (total[:, 0] > 0).double().repeat_interleave(K)
    return (w / total.clamp(min=1e-300)).repeat_interleave(K, 0), present


def _weighted_mean(values: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """``values [n, b]`` → per-row mean ``[n]``, or the ``w``-weighted sum (rows of ``w`` sum to 1)."""
    return values.mean(1) if w is None else (values * w.to(values.device, values.dtype)).sum(1)


def _uniform(gen: torch.Generator, shape: tuple[int, ...], R: int, device: torch.device) -> torch.Tensor:
    """Uniform noise in (0, 1): one draw of ``shape``, repeated for each of ``R`` replicates ``[R·shape[0], …]``."""
    u = torch.rand(shape, generator=gen).clamp(1e-6, 1 - 1e-6)
    return u.repeat(R, *([1] * (len(shape) - 1))).to(device)


@torch.no_grad()
def _sampled_gradient(
    run: CircuitEvaluator,
    graph: Graph,
    sub,
    ablated,
    la: torch.Tensor,
    idx: torch.Tensor,
    samples: int,
    noise: torch.Generator,
    replicates: int,
    reference: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor],
    lam: torch.Tensor,
    objective: str,
) -> torch.Tensor:
    """The score-function gradient of E[|1 − f|] + λ·E[L0] for Bernoulli gates p = σ(log_alpha):
    ``samples`` binary masks per gate vector, measured in batched (gradient-free) patched forwards,
    with a leave-one-out baseline. Binary masks never leave the model's distribution, so this sees
    the steps that a relaxed gate cannot (saturated attention, tracr's lookup tables).
    ``reference``: each mask's empty metric and gap ``[M]``, its minibatch weights ``[M, b]`` (None:
    plain means) and whether its replicate holds any of the minibatch ``[M]``."""
    empty, gap, wm, present = reference
    M, E = la.shape
    p = torch.sigmoid(la)
    b = _uniform(noise, (M // replicates, samples, E), replicates, la.device) < p[:, None]  # [M, S, E]
    keep = torch.zeros((M * samples, *graph.valid.shape), dtype=torch.bool, device=la.device)
    keep[:, idx[:, 0], idx[:, 1]] = b.view(M * samples, E)
    w = None if wm is None else wm.repeat_interleave(samples, 0)  # [M·S, b]
    values = torch.cat(
        [
            _weighted_mean(
                tiled(sub, len(m)).score(patched_logits(run.model, graph, sub, ablated, m)).view(len(m), -1),
                None if w is None else w[s : s + len(m)],
            )
            for s, m in zip(range(0, M * samples, run.mask_batch), keep.split(run.mask_batch))
        ]
    ).view(M, samples)
    e, gp = empty.to(values.device, values.dtype), gap.to(values.device, values.dtype)
    loss = (
        _shortfall(1 - (values - e[:, None]) / gp[:, None], objective)
        * present.to(values.device, values.dtype)[:, None]
    )
    baseline = (loss.sum(1, keepdim=True) - loss) / (samples - 1)
    grad = ((loss - baseline)[..., None] * (b.to(p.dtype) - p[:, None])).mean(1)
    return (grad + lam[:, None] * p * (1 - p)).to(la.dtype)


def _shortfall(one_minus_f: torch.Tensor, objective: str) -> torch.Tensor:
    """The task loss from 1 − f: one-sided for "faithfulness", two-sided for "deviation"."""
    return one_minus_f.clamp(min=0) if objective == "faithfulness" else one_minus_f.abs()


def _examples(ablated: torch.Tensor | CompactSources, pick: torch.Tensor) -> torch.Tensor | CompactSources:
    """The ablated activations of some examples of a chunk (``[n_src, B, P, d]`` → ``[n_src, b, P, d]``)."""
    if isinstance(ablated, CompactSources):
        return CompactSources(ablated.dense[:, pick], {k: v[:, pick] for k, v in ablated.coefs.items()}, ablated.n_src)
    return ablated[:, pick]


def _ranking(
    graph: Graph, idx: torch.Tensor, la: torch.Tensor, masks: torch.Tensor, lambdas: list[float]
) -> torch.Tensor:
    """An edge ranking from the sweep: the number of λ (ascending) at which the edge is kept, ties
    broken by its mean gate probability (scaled into [0, 0.5))."""
    order = sorted(range(len(lambdas)), key=lambda k: lambdas[k])
    kept = masks[order].float().sum(0)  # [n_src, n_dst]
    prob = torch.zeros_like(kept)
    prob[idx[:, 0], idx[:, 1]] = torch.sigmoid(la).mean(0)
    return (kept + 0.5 * prob).masked_fill(~graph.valid, 0)


def learned_circuit(
    model,
    graph: Graph,
    task,
    target: float = 0.9,
    ablation: str | Ablation = "corrupted",
    lambdas=DEFAULT_LAMBDAS,
    batch_size: int | None = None,
    **learn,
) -> Circuit:
    """The smallest circuit with measured faithfulness ≥ ``target`` found by learned edge masks:
    among the binarised masks of a λ sweep (:func:`learn_edge_masks`; ``learn`` passes its options)
    and the top-n circuits of the sweep's edge ranking (measured like :func:`minimal_circuit`).

    ``graph.scores`` is set to the sweep's ranking (larger |score| = more important; signed like
    attribution scores, so negative for a higher-is-better metric), with
    ``graph.score_info["method"] = "edge-pruning"``. The circuit's figures hold the sweep table
    and which candidate won."""
    if not (0 < target <= 1.5):
        raise ConfigError(f"target faithfulness must be in (0, 1.5], got {target}")
    t0 = time.perf_counter()
    abl = Ablation.coerce(ablation)
    res = learn_edge_masks(model, graph, task, lambdas=lambdas, ablation=abl, batch_size=batch_size, **learn)
    # in the library's sign (m(edge ablated) − m(clean)): important edges negative when higher is better
    graph.scores = res.ranking.clone() * (1.0 if task.metric_name in LOWER_IS_BETTER else -1.0)
    graph.score_info = {
        "method": "edge-pruning",
        "ablation": abl.to_dict(),
        "lambdas": res.lambdas,
        "task": getattr(task, "name", None),
        "metric": getattr(task, "metric_name", None),
        "n_examples": task.n_examples,
        "score": "± (number of swept λ at which the learned mask keeps the edge + mean gate probability / 2), "
        "negative for important edges when the metric is higher-is-better",
        "seconds": res.seconds,
    }
    ranked = minimal_circuit(model, graph, task, target=target, method=None, ablation=abl, batch_size=batch_size)
    hits = [k for k, f in enumerate(res.faithfulness) if f >= target]
    best_k = min(hits, key=lambda k: (res.n_edges[k], -res.faithfulness[k])) if hits else None
    use_sweep = best_k is not None and (
        ranked.figures["faithfulness"] < target or res.n_edges[best_k] <= ranked.n_edges
    )
    if use_sweep:
        assert best_k is not None
        mask, f = res.masks[best_k], res.faithfulness[best_k]
        source = {"kind": "sweep mask", "lambda": res.lambdas[best_k]}
    else:
        mask, f = ranked.dense_mask(), float(ranked.figures["faithfulness"])
        source = {"kind": "ranking top-n", "top_n": ranked.figures["top_n"]}
    c = build_circuit(
        graph, mask, task, abl, {"kind": "edge-pruning", "target": target, "lambdas": res.lambdas, "source": source}
    )
    c.faithfulness = f
    c.figures = {
        "faithfulness": f,
        "reached_target": f >= target,
        "metric_full": res.baselines.full,
        "metric_empty": res.baselines.empty,
        "n_edges": c.n_edges,
        "source": source,
        "sweep": res.table(),
        "ranking_top_n": {"n_edges": ranked.n_edges, "faithfulness": ranked.figures["faithfulness"]},
        "seconds": time.perf_counter() - t0,
    }
    return c
