"""ACDC: automatic circuit discovery by iterative edge pruning (Conmy et al., 2023).

The algorithm, exactly as implemented here
------------------------------------------
Start from the full graph ``C`` (every valid edge kept) and its metric value ``m(C)``. The metric
is by default the KL divergence of the circuit's output from the clean model's output at the
task's read positions (``metric="kl"``: a copy of the task with that metric), so ``m(full) = 0``.
Write ``loss(v) = v`` for metrics where lower is better (kl, l2, cross_entropy) and ``−v`` for
the others (logit_diff, prob_diff), so that a larger loss always means "further from the model".

Visit the destinations in reverse topological order — ``logits`` first, then layer by layer
downwards (the MLP input of a layer before its heads' v, k and q inputs; concretely, destination
columns in decreasing index order). For each destination ``d``:

* if no node reading ``d`` (the head or MLP that owns it; on a position-resolved graph, every
  position of the head that attends to it) still reaches the logits through kept edges, every
  edge into ``d`` is removed outright, untested (it cannot influence the output; its score stays
  0);
* otherwise visit the kept edges ``u → d`` in *reverse source order* (latest source first) and,
  one edge at a time, remove the edge from the current circuit ``C`` if

      loss(m(C \\ {u → d})) − loss(m(C)) < τ        (``absolute=True``: |…| < τ)

  in which case ``C`` becomes ``C \\ {u → d}``; otherwise the edge is put back.

After the last destination, :func:`~circuitgraph.circuit.selection.prune` drops edges that lie on
no ``input → logits`` path, as every circuit selector of the library does (``prune_result=False``
keeps ACDC's raw result). Under corrupted
ablation such edges carry nothing, so pruning changes no output; under zero or mean ablation a
node whose every input was removed still differs from its ablated value, so pruning can change the
circuit's output — the figures then record ``edges_dropped_by_prune`` and the metric is re-measured
on the pruned circuit.

Batching without changing the answer
------------------------------------
Strict ACDC needs one forward pass per edge, in sequence. We keep its exact decisions but batch the
passes by *speculation*. For destination ``d`` we predict a decision for each incoming edge
(initially "removed": most edges are) and build the circuits along the predicted path — circuit
``j`` is the current circuit with edges 1..j−1 removed or kept as predicted and edge j removed —
and run all of them in one batched patched forward (:func:`~circuitgraph.engine.patching.patched_logits`
with K masks). Walking the results in order, the value for edge j is exactly the value strict
ACDC would measure as long as every earlier prediction was right, so every decision up to and
including the first misprediction is exact. The values after a misprediction were measured on the
wrong path: they are not used as decisions, only as refreshed predictions, and the walk restarts
from the first undecided edge with the corrected circuit. The result is therefore identical to
one-at-a-time ACDC (up to float rounding of batched versus unbatched forwards, which matters only
for an edge whose change lies within float error of τ; ``tests/test_acdc.py`` checks equality with
a textbook implementation). The cost is one batched forward per tested destination plus one per
misprediction (``figures["rounds"]``), instead of one forward per edge.

Scores
------
``graph.scores[u, d]`` is set to the change of the ACDC metric (in the metric's own sign, like
:func:`~circuitgraph.attribution.attribute`: m(edge removed) − m(current circuit)) measured when
ACDC decided the edge, i.e. relative to the circuit *at that moment*, not to the full model. Edges
pruned untested (their destination no longer reached the logits) score 0. These scores depend on
the threshold and the visiting order; for ROC curves use :func:`acdc_sweep` (one circuit per
threshold) rather than ranking a single run's scores.
"""

from __future__ import annotations

import math
import time

import torch

from circuitgraph.circuit.circuit import Circuit
from circuitgraph.circuit.minimal import build_circuit
from circuitgraph.circuit.selection import prune
from circuitgraph.engine.ablation import Ablation
from circuitgraph.engine.evaluator import CircuitEvaluator
from circuitgraph.engine.progress import progress_bar
from circuitgraph.errors import ConfigError
from circuitgraph.graph import Graph
from circuitgraph.models.backend import check_model
from circuitgraph.tasks.metrics import LOWER_IS_BETTER
from circuitgraph.tasks.task import Task


def acdc(
    model,
    graph: Graph,
    task: Task,
    threshold: float = 0.01,
    ablation: str | Ablation = "corrupted",
    metric: str | None = "kl",
    absolute: bool = False,
    batch_size: int | None = None,
    mask_batch: int | None = None,
    prune_result: bool = True,
    progress: bool = True,
) -> Circuit:
    """Run ACDC and return the pruned circuit.

    threshold   τ: an edge is removed when removing it raises the loss by less than τ (see the
                module docstring for the exact rule and order)
    ablation    what a removed edge carries instead ("corrupted", "zero", "mean", "resample" or an
                :class:`~circuitgraph.engine.ablation.Ablation`)
    metric      the quantity ACDC tracks: "kl" (default; KL to the clean output at the read
                positions), any metric name of :mod:`circuitgraph.tasks.metrics`, or None for the
                task's own metric
    absolute    remove when |change| < τ instead of change < τ
    batch_size  examples per forward chunk (default: from a memory budget)
    mask_batch  most circuits per batched forward (default: from a memory budget)
    prune_result  drop edges on no input → logits path at the end (see the module docstring;
                exact under corrupted ablation, a change of the circuit under zero/mean ablation)

    Fills ``graph.scores`` (see the module docstring) and returns a :class:`Circuit` whose
    ``faithfulness`` is measured with the task's own metric and whose ``figures`` hold the final
    ACDC metric value, the number of edges, rounds and patched circuits evaluated, and the time.
    """
    runner = _Runner(model, graph, task, ablation, metric, batch_size, mask_batch)
    return _acdc(runner, float(threshold), absolute, progress, prune_result)


def acdc_sweep(
    model,
    graph: Graph,
    task: Task,
    thresholds,
    ablation: str | Ablation = "corrupted",
    metric: str | None = "kl",
    absolute: bool = False,
    batch_size: int | None = None,
    mask_batch: int | None = None,
    prune_result: bool = True,
    progress: bool = True,
) -> list[Circuit]:
    """One ACDC circuit per threshold (in the order given), sharing the ablated activations.

    Each run is a full, independent ACDC run. ``graph.scores`` is left holding the scores of the
    run at the smallest threshold (the one that tests the most edges)."""
    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise ConfigError("acdc_sweep needs at least one threshold")
    runner = _Runner(model, graph, task, ablation, metric, batch_size, mask_batch)
    circuits, kept_scores, kept_info = [], None, None
    smallest = min(thresholds)
    bar = progress_bar(len(thresholds), "acdc sweep", progress, unit="threshold")
    for t in thresholds:
        c = _acdc(runner, t, absolute, False, prune_result)
        circuits.append(c)
        if t == smallest and kept_scores is None:
            kept_scores, kept_info = graph.scores.clone(), dict(graph.score_info)
        bar.update(1)
    bar.close()
    assert kept_scores is not None and kept_info is not None  # (kept at the smallest threshold, which ran)
    graph.scores, graph.score_info = kept_scores, kept_info
    return circuits


# ---------------------------------------------------------------------------------------------
# internals
# ---------------------------------------------------------------------------------------------


class _Runner:
    """Mean metric of many circuits at once, with the ablated activations computed once."""

    def __init__(self, model, graph: Graph, task: Task, ablation, metric, batch_size, mask_batch):
        check_model(model)
        self.model, self.graph = model, graph
        self.task = task
        self.metric_task = task if metric is None else task.with_metric(metric)
        self.metric_name = self.metric_task.metric_name
        self.sign = 1.0 if self.metric_name in LOWER_IS_BETTER else -1.0  # loss = sign * metric
        # every chunk's ablated activations stay cached: ACDC evaluates hundreds of circuits
        self.evaluator = CircuitEvaluator(
            model, graph, self.metric_task, ablation, batch_size, mask_batch, cache_bytes=float("inf")
        )
        self._args = (ablation, batch_size, mask_batch)
        self._task_runner: _Runner | None = None
        self._baselines: tuple[float, float] | None = None

    @property
    def n_circuits(self) -> int:
        """Patched circuits evaluated (for the report)."""
        return self.evaluator.n_circuits

    @property
    def mask_batch(self) -> int:
        return self.evaluator.mask_batch

    @property
    def ablation(self) -> Ablation:
        return self.evaluator.ablation

    def task_metric(self) -> _Runner:
        """A runner for the task's own metric (self when ACDC already tracks it)."""
        if self.metric_task is self.task:
            return self
        if self._task_runner is None:
            ablation, bs, mb = self._args
            self._task_runner = _Runner(self.model, self.graph, self.task, ablation, None, bs, mb)
        return self._task_runner

    def baselines(self) -> tuple[float, float]:
        """Metric of the full model and of the empty circuit (computed once)."""
        if self._baselines is None:
            b = self.evaluator.baselines()
            self._baselines = (b.full, b.empty)
        return self._baselines

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        """``masks [K, n_src, n_dst]`` → mean metric per circuit ``[K]`` (float64, CPU)."""
        return self.evaluator(masks)


# One algorithm: the speculative passes share the mask, the running metric and the estimates
# across iterations; split into functions, that state would travel through every call.
def _acdc(run: _Runner, tau: float, absolute: bool, progress: bool, prune_result: bool = True) -> Circuit:  # noqa: C901
    if not math.isfinite(tau):
        raise ConfigError(f"the ACDC threshold must be a finite number, got {tau}")
    graph = run.graph
    t0 = time.perf_counter()
    n_before = run.n_circuits
    valid = graph.valid
    mask = valid.clone()
    scores = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
    dst_time = graph.dst_time.tolist()
    logits_cols = set(graph.logits_columns.tolist())
    live: list[bool] = []  # which destinations are read by a node that reaches the logits (set at the first d)
    live_time: int | None = None
    current = float(run(mask[None])[0])  # metric of the full model
    full_value = current
    rounds, tested, untested, mispredicted = 1, 0, 0, 0

    def loss(v: float) -> float:
        return run.sign * v

    def removable(delta: float) -> bool:
        return (abs(delta) if absolute else delta) < tau

    bar = progress_bar(graph.n_dst, f"acdc τ={tau:g}", progress, unit="node")
    for d in range(graph.n_dst - 1, -1, -1):
        bar.update(1)
        srcs = mask[:, d].nonzero()[:, 0].flip(0).tolist()  # reverse source order
        if not srcs:
            continue
        if d not in logits_cols:
            # the readers of d write only to later destinations, all decided already, so their
            # connection to the logits is final once we reach d's time step
            if dst_time[d] != live_time:
                live, live_time = _reads_live(graph, mask), dst_time[d]
            if not live[d]:
                mask[srcs, d] = False
                untested += len(srcs)
                continue
        # 1. initial predictions: every edge removed (circuits are sparse); a misprediction
        #    refreshes the predictions of the later edges from the speculative values
        estimate = [-math.inf] * len(srcs)
        # 2. speculative sequential passes (exact ACDC decisions; see the module docstring)
        i = 0
        while i < len(srcs):
            K = min(len(srcs) - i, run.mask_batch)
            predicted = [removable(estimate[i + j]) for j in range(K)]
            path = mask.clone()
            masks = torch.empty((K, *mask.shape), dtype=torch.bool, device=mask.device)
            for j in range(K):
                masks[j] = path
                masks[j, srcs[i + j], d] = False
                if predicted[j]:
                    path[srcs[i + j], d] = False
            values = run(masks).tolist()
            rounds += 1
            # walk the results; also refresh the estimates from the speculative path's values
            spec_base, base, decided, on_path = current, current, 0, True
            for j in range(K):
                v = values[j]
                if on_path:  # every earlier prediction held: this value is exact
                    delta = loss(v) - loss(base)
                    scores[srcs[i + j], d] = v - base
                    tested += 1
                    decided += 1
                    remove = removable(delta)
                    if remove:
                        mask[srcs[i + j], d] = False
                        base = v
                    if remove != predicted[j]:  # later values were measured on the wrong path
                        mispredicted += 1
                        on_path = False
                else:
                    estimate[i + j] = loss(v) - loss(spec_base)
                if predicted[j]:
                    spec_base = v
            current = base
            i += decided
    bar.close()
    final = prune(graph, mask) if prune_result else mask
    graph.scores = scores
    info = {
        "method": "acdc",
        "threshold": tau,
        "absolute": absolute,
        "metric": run.metric_name,
        "ablation": run.ablation.to_dict(),
        "task": run.task.name,
        "n_examples": run.task.n_examples,
        "score": "metric change when the edge was removed from the circuit at the time ACDC decided it",
    }
    graph.score_info = info
    n_lost = int((mask & ~final).sum())
    if n_lost:  # pruning changed the circuit: measure what ACDC actually ends with
        current = float(run(final[None])[0])
    n_evaluated = run.n_circuits - n_before
    c = build_circuit(
        graph,
        final,
        run.task,
        run.ablation,
        {"kind": "acdc", "threshold": tau, "absolute": absolute, "metric": run.metric_name},
    )
    c.metadata["attribution"] = dict(info)
    c.faithfulness = _faithfulness(run, final)
    c.figures = {
        "faithfulness": c.faithfulness,
        "acdc_metric": current,
        "acdc_metric_full": full_value,
        "n_edges": c.n_edges,
        "n_edges_total": graph.n_edges,
        "edges_tested": tested,
        "edges_pruned_untested": untested,
        "edges_dropped_by_prune": n_lost,
        "mispredictions": mispredicted,
        "rounds": rounds,
        "circuits_evaluated": n_evaluated,
        "seconds": time.perf_counter() - t0,
    }
    return c


def _reads_live(graph: Graph, mask: torch.Tensor) -> list[bool]:
    """For each destination: is it read by a node with a path of kept edges to the logits?
    (The backward half of :func:`~circuitgraph.circuit.selection.prune`.)"""
    live = torch.zeros(graph.n_dst, dtype=torch.bool, device=mask.device)
    live[graph.logits_columns.to(mask.device)] = True
    for s in range(graph.n_src - 1, 0, -1):
        if bool((mask[s] & live).any()):
            live[graph.node_dsts[s].to(mask.device)] = True
    return live.tolist()


def _faithfulness(run: _Runner, mask: torch.Tensor) -> float | None:
    """Faithfulness of ``mask`` under the task's own metric (None when undefined: full = empty)."""
    r = run.task_metric()
    full, empty = r.baselines()
    if abs(full - empty) < 1e-12:
        return None
    return (float(r(mask[None])[0]) - empty) / (full - empty)
