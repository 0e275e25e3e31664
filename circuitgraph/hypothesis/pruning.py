"""Scrubbing-guided pruning: the smallest hypothesis whose scrubbed loss recovered stays ≥ a target.

Causal scrubbing tests a finished hypothesis; :func:`minimal_hypothesis` uses it to *prune*. The
ablation is the scrubbing engine's treeified resampling (an uncovered edge reads a random input's
activation), and the search is the one the rest of the library uses with patching:

* from a :class:`~circuitgraph.circuit.Circuit` the units are edges. The circuit's edges are
  ranked by |score|; a geometric grid of top-n prefixes (each pruned to input→logits paths) is
  scrubbed and bisected for the smallest that reaches the target; then edges are removed greedily,
  weakest first, while the scrubbed loss recovered stays ≥ target, until no single edge can go;
* from a :class:`~circuitgraph.hypothesis.Hypothesis` the units are its interpretation (i.e.
  correspondence) nodes, removed greedily with :meth:`Hypothesis.without`.

Every decision uses one seed; the result is then scrubbed again with a fresh seed
(``verified``), which is the figure to report: a hypothesis tuned to one draw of random inputs
can fall short on another.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from circuitgraph.circuit import Circuit, build_circuit, prune
from circuitgraph.errors import ConfigError
from circuitgraph.hypothesis.interpretation import Hypothesis
from circuitgraph.hypothesis.scrubbing import ScrubResult, scrub


@dataclass
class PrunedHypothesis:
    """The smallest hypothesis found, its circuit (edge search), and both scrubs."""

    hypothesis: Hypothesis
    circuit: Circuit | None
    loss_recovered: float  # with the search's seed
    verified: ScrubResult  # a fresh scrub with another seed
    target: float
    trace: list[dict] = field(default_factory=list)
    n_scrubs: int = 0
    seconds: float = 0.0

    @property
    def reached_target(self) -> bool:
        return self.verified.loss_recovered >= self.target

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "loss_recovered_search": self.loss_recovered,
            "verified": self.verified.to_dict(),
            "reached_target": self.reached_target,
            "n_edges": self.circuit.n_edges if self.circuit is not None else None,
            "edges": self.circuit.edge_names() if self.circuit is not None else None,
            "nodes": sorted(self.hypothesis.nodes),
            "n_scrubs": self.n_scrubs,
            "seconds": self.seconds,
        }


def minimal_hypothesis(
    model,
    hypothesis_or_circuit: Hypothesis | Circuit,
    task,
    target: float = 0.9,
    seed: int = 0,
    verify_seed: int | None = None,
    n_samples: int | None = None,
    grid: int = 12,
    greedy: bool = True,
    **scrub_kw,
) -> PrunedHypothesis:
    """Prune a circuit (edges) or a hypothesis (interpretation nodes) to the smallest one whose
    scrubbed loss recovered is ≥ ``target``; see the module docstring for the search.

    ``seed`` drives every scrub of the search, ``verify_seed`` (default ``seed + 1000``) the final
    one. ``n_samples`` and ``scrub_kw`` go to :func:`scrub`. If even the whole starting circuit or
    hypothesis stays below the target, it is returned unpruned (``reached_target`` is then False)."""
    if not (0 < target <= 1.5):
        raise ConfigError(f"target loss recovered must be in (0, 1.5], got {target}")
    t0 = time.perf_counter()
    verify_seed = seed + 1000 if verify_seed is None else verify_seed
    state = {"n": 0}

    def recovered(h: Hypothesis, s: int = seed) -> ScrubResult:
        state["n"] += 1
        return scrub(model, h, task, n_samples=n_samples, seed=s, warn_vacuous=False, **scrub_kw)

    if isinstance(hypothesis_or_circuit, Circuit):
        hyp, circuit, rec, trace = _prune_edges(hypothesis_or_circuit, task, target, grid, greedy, recovered)
    elif isinstance(hypothesis_or_circuit, Hypothesis):
        circuit = None
        hyp, rec, trace = _prune_nodes(hypothesis_or_circuit, target, greedy, recovered)
    else:
        raise TypeError(f"expected a Circuit or a Hypothesis, got {type(hypothesis_or_circuit).__name__}")
    verified = recovered(hyp, verify_seed)
    if circuit is not None:
        circuit.figures.update(scrubbing={"search": rec, "verified": verified.loss_recovered, "seed": verify_seed})
    return PrunedHypothesis(
        hypothesis=hyp,
        circuit=circuit,
        loss_recovered=rec,
        verified=verified,
        target=target,
        trace=trace,
        n_scrubs=state["n"],
        seconds=time.perf_counter() - t0,
    )


def _prune_edges(start: Circuit, task, target: float, grid: int, greedy: bool, recovered):
    """Bisection over top-n prefixes of the circuit's edges, then greedy removal (weakest first)."""
    graph = start.graph
    edges = start.mask.nonzero()  # [n, 2]
    strength = graph.scores[edges[:, 0], edges[:, 1]].abs()
    order = edges[torch.argsort(strength, descending=True, stable=True)]
    trace: list[dict] = []
    cache: dict[bytes, float] = {}

    def mask_of(rows: torch.Tensor) -> torch.Tensor:
        m = torch.zeros_like(graph.valid)
        m[rows[:, 0], rows[:, 1]] = True
        return prune(graph, m)

    def measure(m: torch.Tensor, step: str) -> float:
        key = m.cpu().numpy().tobytes()
        if key not in cache:
            c = Circuit(graph, m)
            r = recovered(Hypothesis.from_circuit(c)).loss_recovered if c.n_edges else float("-inf")
            cache[key] = r
            trace.append({"step": step, "n_edges": c.n_edges, "loss_recovered": r if c.n_edges else None})
        return cache[key]

    n = len(order)
    if n == 0:
        raise ConfigError("the starting circuit has no edge to prune")
    sizes = sorted({max(1, int(round(n ** (i / max(1, grid - 1))))) for i in range(grid)} | {n})
    hit = None
    prev = 0
    for k in sizes:  # the first grid size that reaches the target, then bisect below it
        if measure(mask_of(order[:k]), "grid") >= target:
            hit = k
            break
        prev = k
    if hit is None:  # nothing reaches the target: keep the whole circuit
        mask = mask_of(order)
    else:
        lo, hi = prev, hit
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if measure(mask_of(order[:mid]), "bisect") >= target:
                hi = mid
            else:
                lo = mid
        mask = mask_of(order[:hi])
        if greedy:
            mask = _greedy_edges(graph, mask, target, lambda m: measure(m, "greedy"))
    rec = measure(mask, "final")
    c = build_circuit(graph, mask, task, "resample", {"kind": "scrubbing", "target": target})
    return Hypothesis.from_circuit(c, name="scrubbing-pruned circuit"), c, rec, trace


def _greedy_edges(graph, mask: torch.Tensor, target: float, measure) -> torch.Tensor:
    """Remove single edges (weakest |score| first) while the scrub stays ≥ target, until none can go."""
    changed = True
    while changed:
        changed = False
        rows = mask.nonzero()
        strength = graph.scores[rows[:, 0], rows[:, 1]].abs()
        for i, j in rows[torch.argsort(strength, stable=True)].tolist():
            trial = mask.clone()
            trial[i, j] = False
            trial = prune(graph, trial)
            if bool(trial.any()) and measure(trial) >= target:
                mask, changed = trial, True
                break
    return mask


def _prune_nodes(hyp: Hypothesis, target: float, greedy: bool, recovered):
    """Greedy removal of interpretation nodes (leaves and inner nodes alike) while the scrub stays
    ≥ target."""
    trace: list[dict] = []
    rec = recovered(hyp).loss_recovered
    trace.append({"step": "start", "nodes": len(hyp.nodes), "loss_recovered": rec})
    if rec < target or not greedy:
        return hyp, rec, trace
    changed = True
    while changed:
        changed = False
        for name in [n for n in hyp.nodes if n != hyp.root.name]:
            trial = hyp.without(name, name=hyp.name)
            r = recovered(trial).loss_recovered
            trace.append({"step": f"without {name}", "nodes": len(trial.nodes), "loss_recovered": r})
            if r >= target:
                hyp, rec, changed = trial, r, True
                break
    return hyp, rec, trace
