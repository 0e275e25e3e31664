"""Circuits with confidence: how much a circuit depends on which examples it was found on.

Méloux et al. (2025) show that circuits found by one method vary across resamples of the data, and
suggest reporting bootstrap stability. :func:`stability` draws ``n_boot`` resamples of the task's
examples (with replacement), finds the circuit again on each with the same method and selection
rule, and reports each edge's inclusion frequency, the mean pairwise Jaccard similarity of the
circuits, and the circuit of edges kept in at least ``threshold`` of the resamples.

Recomputation is shared wherever the method allows: exact scores are patched once per example and
every resample reweights those rows (a matrix product); EAP and EAP-IG run the engine's batched
attribution once per resample; learned masks train every resample at once, each a reweighting of
the examples (one batched mask per resample, with the choice the whole task's search made: its λ,
or its top-n size on the sweep's ranking); ACDC or a callable of your own run per resample.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from circuitgraph.attribution import METHODS as SCORE_METHODS
from circuitgraph.attribution import attribute
from circuitgraph.attribution.attribute import exact_per_example
from circuitgraph.circuit import SEARCH_METHODS
from circuitgraph.circuit.acdc import acdc
from circuitgraph.circuit.circuit import Circuit
from circuitgraph.circuit.learned import DEFAULT_LAMBDAS, learn_edge_masks, learned_circuit
from circuitgraph.circuit.minimal import minimal_circuit
from circuitgraph.circuit.selection import prune, top_n
from circuitgraph.engine.ablation import Ablation
from circuitgraph.errors import ConfigError
from circuitgraph.graph import Graph
from circuitgraph.graph.blocks import as_dense

METHODS = (*SCORE_METHODS, *SEARCH_METHODS)


@dataclass
class Stability:
    """Bootstrap stability of a circuit-discovery method on a task."""

    inclusion: torch.Tensor  # [n_src, n_dst] fraction of resamples whose circuit holds the edge
    jaccard: float  # mean pairwise Jaccard similarity of the resampled circuits
    stable: torch.Tensor  # [n_src, n_dst] bool: edges with inclusion ≥ threshold
    threshold: float
    n_boot: int
    sizes: list[int]  # edges of each resampled circuit
    method: str
    selection: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self, graph: Graph) -> dict:
        """JSON figures: the Jaccard, and every edge's inclusion frequency (those ever included)."""
        idx = (self.inclusion > 0).nonzero().tolist()
        inc = {f"{graph.src_names[i]}->{graph.dst_names[j]}": round(float(self.inclusion[i, j]), 4) for i, j in idx}
        return {
            "method": self.method,
            "selection": self.selection,
            "n_boot": self.n_boot,
            "jaccard": self.jaccard,
            "threshold": self.threshold,
            "stable_edges": sorted(e for e, v in inc.items() if v >= self.threshold),
            "mean_size": sum(self.sizes) / len(self.sizes) if self.sizes else 0.0,
            "inclusion": dict(sorted(inc.items(), key=lambda kv: -kv[1])),
            "seconds": self.seconds,
        }


def mean_jaccard(masks: torch.Tensor) -> float:
    """Mean Jaccard similarity over all pairs of ``masks [n, ...]`` (two empty circuits count 1;
    NaN for fewer than two circuits: no pair)."""
    M = masks.reshape(masks.shape[0], -1).double()
    n = M.shape[0]
    if n < 2:
        return float("nan")
    inter = M @ M.T
    size = M.sum(1)
    union = size[:, None] + size[None, :] - inter
    J = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    pairs = torch.triu_indices(n, n, offset=1)
    return float(J[pairs[0], pairs[1]].mean())


def resample_indices(n_examples: int, n_boot: int, seed: int = 0) -> torch.Tensor:
    """``[n_boot, n_examples]`` example indices drawn with replacement (seeded)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(n_examples, (n_boot, n_examples), generator=g)


def stability(
    model,
    graph: Graph,
    task,
    method: str | Callable = "eap-ig",
    n_boot: int = 100,
    n_edges: int | None = None,
    target: float = 0.9,
    ablation: str | Ablation = "corrupted",
    steps: int = 5,
    threshold: float = 0.9,
    seed: int = 0,
    indices: torch.Tensor | None = None,
    batched: bool = True,
    reference: Circuit | None = None,
    time_limit: float | None = None,
    resamples_per_batch: int | None = None,
    **method_kw,
) -> Stability:
    """Resample the task's examples ``n_boot`` times and find the circuit again on each.

    method     "eap", "eap-ig", "eap-ig-activations", "exact" (score methods: the circuit is the
               pruned top ``n_edges`` of each resample's scores; ``n_edges=None`` takes the size
               of :func:`minimal_circuit` at ``target`` on the whole task), "acdc" (``threshold=``
               of ACDC goes in ``method_kw`` as ``tau``), "edge-pruning" (:func:`learned_circuit`
               at ``target``; its training steps as ``train_steps``), or a callable
               ``fn(model, graph, task) -> bool mask``
    indices    ``[n_boot, n_examples]`` resample indices (default: drawn with replacement from
               ``seed``); identical rows give identical circuits for a deterministic method
    threshold  inclusion frequency an edge needs to be in the ``stable`` circuit
    batched    edge-pruning: train all resamples at once as example reweightings, with the
               hyper-parameter fixed at the whole task's choice (the λ of its winning sweep mask,
               or the size n of its ranking's top-n); False: :func:`learned_circuit` on each
               resample, choosing again each time (one search per resample)
    reference  edge-pruning, batched: the :func:`learned_circuit` result on the whole task that
               fixes that choice (default: computed here with the same options)
    time_limit draw no further resample after this many seconds (at least two are always run;
               batched edge pruning: start no further batch); the figures then cover the
               resamples done, and ``n_boot`` says how many
    resamples_per_batch  batched edge pruning: resamples trained together (default: all)

    ``graph.scores`` is left as it was."""
    if not (callable(method) or method in METHODS):
        raise ConfigError(f"unknown method {method!r}; choose one of {list(METHODS)} or pass a callable")
    if n_boot < 1 and indices is None:
        raise ConfigError(f"n_boot must be ≥ 1, got {n_boot}")
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}")
    t0 = time.perf_counter()
    N = task.n_examples
    idx = resample_indices(N, n_boot, seed) if indices is None else torch.as_tensor(indices).long()
    if idx.ndim != 2 or int(idx.min()) < 0 or int(idx.max()) >= N:
        raise ConfigError(f"indices must be [n_boot, n] example indices in [0, {N}), got shape {list(idx.shape)}")
    abl = Ablation.coerce(ablation)
    saved = (graph.scores, graph.score_info)
    selection: dict = {}
    try:
        if isinstance(method, str) and method in SCORE_METHODS:
            if n_edges is None:
                ref = minimal_circuit(model, graph, task, target=target, method=method, ablation=abl, steps=steps)
                n_edges = ref.n_edges
            selection = {"kind": "top-n", "n": int(n_edges), "prune": True}
            masks = _score_method_masks(model, graph, task, method, abl, steps, idx, int(n_edges), method_kw)
        elif method == "edge-pruning" and batched:
            masks, selection = _learned_masks(
                model, graph, task, abl, target, idx, reference, method_kw, t0, time_limit, resamples_per_batch
            )
        else:
            done: list[torch.Tensor] = []
            for row in idx:
                if time_limit is not None and len(done) >= 2 and time.perf_counter() - t0 > time_limit:
                    break
                done.append(_select(model, graph, task.select(row.to(task.device)), method, abl, target, method_kw))
            masks = torch.stack(done)
            selection = {"kind": "method", "target": target, **{k: v for k, v in method_kw.items() if _plain(v)}}
    finally:
        graph.scores, graph.score_info = saved
    masks = masks.to(graph.valid.device) & graph.valid
    inclusion = masks.double().mean(0).float()
    return Stability(
        inclusion=inclusion,
        jaccard=mean_jaccard(masks),
        stable=(inclusion >= threshold - 1e-9) & graph.valid,
        threshold=threshold,
        n_boot=int(masks.shape[0]),
        sizes=[int(torch.count_nonzero(m)) for m in masks],
        method=method if isinstance(method, str) else getattr(method, "__name__", "custom"),
        selection=selection,
        seconds=time.perf_counter() - t0,
    )


def _plain(v) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def _score_method_masks(model, graph, task, method, abl, steps, idx, n_edges, method_kw) -> torch.Tensor:
    """Pruned top-n circuits of each resample's scores."""
    if method == "exact":
        per_example = exact_per_example(model, graph, task, abl, edge_batch=method_kw.get("edge_batch"))
        counts = torch.zeros(idx.shape[0], task.n_examples, dtype=torch.float64)
        counts.scatter_add_(1, idx, torch.ones(idx.shape, dtype=torch.float64))  # multiplicity of each example
        boot = (counts / idx.shape[1]) @ per_example.reshape(task.n_examples, -1)  # [n_boot, n_src·n_dst]
        all_scores = boot.reshape(idx.shape[0], *graph.valid.shape).to(graph.valid.device).float()
        return torch.stack([prune(graph, top_n(graph, n_edges, scores=s)) for s in all_scores])
    out = []
    for row in idx:
        scores = attribute(
            model, graph, task.select(row.to(task.device)), method=method, ablation=abl, steps=steps, progress=False
        )
        out.append(prune(graph, top_n(graph, n_edges, scores=as_dense(scores))))
    return torch.stack(out)


def _learned_masks(
    model, graph, task, abl, target, idx, reference, method_kw, t0, time_limit, per_batch
) -> tuple[torch.Tensor, dict]:
    """Learned-mask circuits of every resample, trained as batches of masks (each resample a
    reweighting of the examples by its multiplicities), at the whole task's choice: the winning
    sweep mask's λ (one mask per resample; ``fixed["resample_faithfulness"]`` sums up how each
    resample's circuit does on its own resample), or the top-n size on the sweep's ranking (the
    whole sweep per resample, then each resample's own ranking cut at that n)."""
    kw = dict(method_kw)
    if "train_steps" in kw:  # (``steps`` is EAP-IG's here)
        kw["steps"] = kw.pop("train_steps")
    lambdas = [float(x) for x in kw.pop("lambdas", DEFAULT_LAMBDAS)]
    ref = reference or learned_circuit(model, graph, task, target=target, ablation=abl, lambdas=lambdas, **kw)
    source = ref.figures["source"]
    counts = torch.zeros(idx.shape[0], task.n_examples, dtype=torch.float64)
    counts.scatter_add_(1, idx, torch.ones(idx.shape, dtype=torch.float64))  # multiplicity of each example
    sweep = source["kind"] == "sweep mask"
    chosen: dict = {"lambda": float(source["lambda"])} if sweep else {"top_n": int(source["top_n"]), "lambdas": lambdas}
    done: list[torch.Tensor] = []
    faith: list[float] = []  # sweep masks: each resample's circuit, measured on its resample
    per_batch = per_batch or len(counts)
    for b0 in range(0, len(counts), per_batch):
        if time_limit is not None and b0 >= 2 and time.perf_counter() - t0 > time_limit:
            break
        w = counts[b0 : b0 + per_batch]
        if sweep:
            res = learn_edge_masks(model, graph, task, lambdas=[chosen["lambda"]], ablation=abl, weights=w, **kw)
            done += list(res.masks)
            faith += res.faithfulness
        else:
            res = learn_edge_masks(model, graph, task, lambdas=lambdas, ablation=abl, weights=w, **kw)
            done += [prune(graph, top_n(graph, chosen["top_n"], scores=r)) for r in res.ranking]
    masks = torch.stack(done)
    if faith:
        chosen["resample_faithfulness"] = {
            "mean": sum(faith) / len(faith),
            "min": min(faith),
            "reached_target": sum(f >= target for f in faith) / len(faith),
        }
    selection = {
        "kind": "edge-pruning, batched resamples",
        "target": target,
        "fixed": chosen,
        **{k: v for k, v in kw.items() if _plain(v)},
    }
    return masks, selection


def _select(model, graph, sub, method, abl, target, method_kw) -> torch.Tensor:
    """One resample's circuit by a searching method (or a callable)."""
    if callable(method):
        mask = method(model, graph, sub)
        return torch.as_tensor(mask).bool()
    if method == "acdc":
        kw = dict(method_kw)
        tau = kw.pop("tau", 0.01)
        return acdc(model, graph, sub, threshold=tau, ablation=abl, progress=False, **kw).dense_mask()
    kw = dict(method_kw)
    if "train_steps" in kw:  # (``steps`` is EAP-IG's here)
        kw["steps"] = kw.pop("train_steps")
    return learned_circuit(model, graph, sub, target=target, ablation=abl, **kw).dense_mask()
