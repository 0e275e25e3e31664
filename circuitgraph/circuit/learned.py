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
    log_alpha: torch.Tensor  # [K, n_learnable] final gate parameters, per λ
    learnable: torch.Tensor  # [n_src, n_dst] bool: the edges that had a gate
    masks: torch.Tensor  # [K, n_src, n_dst] bool, binarised and pruned
    faithfulness: list[float]  # measured by ordinary patching, one per λ
    n_edges: list[int]
    ranking: torch.Tensor  # [n_src, n_dst] importance from the sweep (higher = kept at larger λ)
    baselines: Baselines
    trace: list[dict] = field(default_factory=list)
    seconds: float = 0.0

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
    gap = base.full - base.empty
    if abs(gap) < 1e-12:
        raise ConfigError(
            "the full model and the empty circuit score the same on this task, so there is nothing to learn; "
            "check the task's clean and corrupted prompts"
        )
    objective_task = task.with_metric("kl").prepare(model) if objective == "kl" else None
    kl_empty, objective_chunks = None, None
    if objective_task is not None:
        objective_chunks = [objective_task.select(ix) for ix, _, _ in run.chunks]
        kl_empty = float(
            CircuitEvaluator(model, graph, objective_task, abl, batch_size=batch_size)(
                torch.zeros_like(graph.valid)[None]
            )[0]
        )
    device = graph.valid.device
    learnable = graph.valid.clone() if restrict is None else (restrict.to(device).bool() & graph.valid)
    idx = learnable.nonzero()  # [E, 2]
    if len(idx) == 0:
        raise ConfigError("no learnable edge: restrict= selects none of the graph's valid edges")
    K = len(lambdas)
    la = torch.full((K, len(idx)), 3.0, device=device)
    if init is not None:
        s = init.to(device).abs()[idx[:, 0], idx[:, 1]].double()
        rank = torch.argsort(torch.argsort(s)).double() / max(1, len(s) - 1)  # 0 … 1, ties broken by order
        la = (-2.0 + 6.0 * rank).float()[None].expand(K, -1).clone()
    la.requires_grad_(True)
    opt = torch.optim.Adam([la], lr=lr)
    lam = torch.tensor(lambdas, device=device)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
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
            _, chunk, _ = run.chunks[i]
            pick = torch.randperm(chunk.n_examples, generator=gen)[: examples_per_step or chunk.n_examples]
            pick = pick.sort().values.to(device)
            sub = chunk.select(pick)
            if estimator == "sampled":
                la.grad = _sampled_gradient(
                    run, graph, sub, _examples(run.ablated(i), pick), la, idx, samples, gen, base, lam * ramp, objective
                )
                opt.step()
                if step % 25 == 0 or step == steps - 1:
                    trace.append({"step": step, "expected_edges": torch.sigmoid(la).sum(1).detach().cpu().tolist()})
                bar.update(1)
                continue
            u = torch.rand(la.shape, generator=gen).clamp(1e-6, 1 - 1e-6).to(device)
            z = gate(la, beta, u)  # [K, E]
            keep = torch.zeros((K, *graph.valid.shape), dtype=z.dtype, device=device)
            keep[:, idx[:, 0], idx[:, 1]] = z
            logits = patched_logits(model, graph, sub, _examples(run.ablated(i), pick), keep, differentiable=True)
            if objective_task is None:
                values = tiled(sub, K).score(logits).view(K, sub.n_examples).mean(1)
                task_loss = _shortfall(1 - (values - base.empty) / gap, objective)  # per mask
            else:
                assert objective_chunks is not None
                kl = tiled(objective_chunks[i].select(pick), K).score(logits).view(K, sub.n_examples).mean(1)
                assert kl_empty is not None
                task_loss = kl / max(kl_empty, 1e-12)
            l0 = expected_open(la, BETA).sum(1)  # [K]
            loss = (task_loss + ramp * lam * l0).sum()
            opt.zero_grad(set_to_none=True)
            (grad,) = torch.autograd.grad(loss, [la])
            la.grad = grad
            opt.step()
            if step % 25 == 0 or step == steps - 1:
                trace.append(
                    {
                        "step": step,
                        "beta": beta,
                        "task_loss": task_loss.detach().cpu().tolist(),
                        "expected_edges": l0.detach().cpu().tolist(),
                    }
                )
            bar.update(1)
    bar.close()
    la = la.detach()
    masks = torch.zeros((K, *graph.valid.shape), dtype=torch.bool, device=device)
    masks[:, idx[:, 0], idx[:, 1]] = la > 0
    masks = torch.stack([prune(graph, m) for m in masks])
    faith = base.faithfulness(run(masks)).tolist()
    ranking = _ranking(graph, idx, la, masks, lambdas)
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
    )


@torch.no_grad()
def _sampled_gradient(
    run: CircuitEvaluator,
    graph: Graph,
    sub,
    ablated,
    la: torch.Tensor,
    idx: torch.Tensor,
    samples: int,
    gen: torch.Generator,
    base: Baselines,
    lam: torch.Tensor,
    objective: str,
) -> torch.Tensor:
    """The score-function gradient of E[|1 − f|] + λ·E[L0] for Bernoulli gates p = σ(log_alpha):
    ``samples`` binary masks per λ, measured in one batched (gradient-free) patched forward, with a
    leave-one-out baseline. Binary masks never leave the model's distribution, so this sees the
    steps that a relaxed gate cannot (saturated attention, tracr's lookup tables)."""
    K, E = la.shape
    p = torch.sigmoid(la)
    b = torch.rand((K, samples, E), generator=gen).to(la.device) < p[:, None]
    keep = torch.zeros((K * samples, *graph.valid.shape), dtype=torch.bool, device=la.device)
    keep[:, idx[:, 0], idx[:, 1]] = b.view(K * samples, E)
    values = torch.cat(
        [
            tiled(sub, len(m)).score(patched_logits(run.model, graph, sub, ablated, m)).view(len(m), -1).mean(1)
            for m in keep.split(run.mask_batch)
        ]
    ).view(K, samples)
    loss = _shortfall(1 - (values - base.empty) / (base.full - base.empty), objective)
    baseline = (loss.sum(1, keepdim=True) - loss) / (samples - 1)
    grad = ((loss - baseline)[..., None] * (b.to(p.dtype) - p[:, None])).mean(1)
    return grad + lam[:, None] * p * (1 - p)


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
