"""The causal-scrubbing engine: resample activations as a hypothesis allows, measure the loss.

    result = scrub(model, hypothesis, task, seed=0)
    result.loss_recovered, result.ci            # (L_random − L_scrubbed) / (L_random − L_model)

Sampling (the recursion of Chan et al. 2022 on the treeified graph; details and the departures
from full treeification are in ``docs/causal-scrubbing.md``):

* a *sample* starts at the output with a reference input ``x`` drawn from the task's clean
  prompts; the loss is read with ``x``'s answers;
* an instance of interpretation node ``i`` (model node ``c(i)``) computed on input ``x`` builds
  each of ``c(i)``'s inputs (a head's q, k and v; an MLP's or the logits' residual input) edge by
  edge: ``input = bias + Σ_u a_u``, where for a source ``u``

  - covered by child ``j`` (``c(j) = u``): ``a_u`` is ``j``'s value computed on ``x'`` drawn
    uniformly among the inputs that agree with ``x`` on ``j``'s feature — one ``x'`` per sequence
    position for a positional feature (agreement at that position), one for the whole sequence
    otherwise — recursively (``j``'s own inputs are built the same way, with ``x'`` as reference);
  - not covered: ``a_u`` is ``u``'s activation in a clean run of a uniformly random input
    (the whole subtree above the edge runs on that input);

  every edge (and, for positional features, every position) draws independently;
* the value of node ``j`` on input ``x'`` is computed once per ``(j, x', replica)`` and cached,
  so the cost is ``|interpretation| × n_examples × replicas`` batched node evaluations whatever
  the depth (this sharing is the one departure from full treeification).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from circuitgraph.engine.progress import progress_bar
from circuitgraph.engine.sources import source_activations
from circuitgraph.errors import HypothesisError
from circuitgraph.graph import Graph
from circuitgraph.graph.names import HEAD_TIME
from circuitgraph.hypothesis.caveats import UNSUPPORTED_POST_NORMS
from circuitgraph.hypothesis.features import FeatureData, FeatureValues
from circuitgraph.hypothesis.interpretation import Hypothesis
from circuitgraph.hypothesis.nodes import input_slots, residual_order
from circuitgraph.models.backend import as_backend, check_model
from circuitgraph.tasks.metrics import METRICS, NEEDS_REFERENCE, checked

__all__ = ["scrub", "ScrubResult", "Draw", "VacuousHypothesisWarning"]


class VacuousHypothesisWarning(UserWarning):
    """A feature's equivalence classes are mostly single inputs: resampling there changes nothing,
    so the test says little about that node."""


@dataclass
class Draw:
    """One resampling decision of a scrub run, for every row of a node's batch (``trace=True``).

    parent   interpretation node whose input was built (its instances are the rows)
    child    interpretation node that covered the edge, or None for a random (uncovered) edge
    source   the model node the edge comes from; ``slot`` the destination (``a1.h3.k``, ``logits``)
    refs     ``[M]`` dataset index of each row's reference input
    sampled  ``[M, C]`` dataset index drawn per position (C = seq_len) or for all positions (C = 1)
    """

    parent: str
    child: str | None
    source: str
    slot: str
    refs: torch.Tensor
    sampled: torch.Tensor
    positional: bool


@dataclass
class ScrubResult:
    """Losses of a scrub run and the fraction of the loss the hypothesis recovers.

    loss_recovered = (random_loss − scrubbed_loss) / (random_loss − model_loss): 1 means the
    hypothesis explains everything the model does, 0 no more than random inputs would. ``ci`` is a
    percentile bootstrap interval over the ``n_samples`` root samples. ``loss_name`` is the metric
    used as loss (for a higher-is-better metric the ratio means the same)."""

    loss_recovered: float
    ci: tuple[float, float]
    scrubbed_loss: float
    model_loss: float
    random_loss: float
    n_samples: int
    n_examples: int
    loss_name: str
    confidence: float = 0.95
    n_boot: int = 1000
    replicas: int = 1
    seed: int = 0
    hypothesis: str = ""
    class_sizes: dict = field(default_factory=dict)
    per_sample: dict = field(default_factory=dict, repr=False)
    trace: list | None = field(default=None, repr=False)

    def __str__(self) -> str:
        lo, hi = self.ci
        return (
            f"{self.hypothesis or 'hypothesis'}: loss recovered {self.loss_recovered:.3f} "
            f"[{lo:.3f}, {hi:.3f}] ({self.confidence:.0%} CI, {self.n_samples} samples of {self.n_examples} inputs); "
            f"{self.loss_name}: scrubbed {self.scrubbed_loss:.4g}, model {self.model_loss:.4g}, "
            f"random {self.random_loss:.4g}"
        )

    def to_dict(self) -> dict:
        return {
            "hypothesis": self.hypothesis,
            "loss_recovered": self.loss_recovered,
            "ci": list(self.ci),
            "confidence": self.confidence,
            "scrubbed_loss": self.scrubbed_loss,
            "model_loss": self.model_loss,
            "random_loss": self.random_loss,
            "loss": self.loss_name,
            "n_samples": self.n_samples,
            "n_examples": self.n_examples,
            "n_boot": self.n_boot,
            "replicas": self.replicas,
            "seed": self.seed,
            "class_sizes": dict(self.class_sizes),
        }


# ------------------------------------------------------------------------------------------- classes


class _Classes:
    """Equivalence classes of a ``[N, C]`` key (C = 1: per example; C = P: per position) with
    uniform sampling inside a class, all vectorised."""

    def __init__(self, key: torch.Tensor):
        N, C = key.shape
        order = torch.argsort(key, dim=0, stable=True)
        sk = key.gather(0, order)
        first = torch.ones_like(sk, dtype=torch.bool)
        first[1:] = sk[1:] != sk[:-1]
        last = torch.ones_like(sk, dtype=torch.bool)
        last[:-1] = sk[1:] != sk[:-1]
        idx = torch.arange(N)[:, None].expand(N, C)
        start = torch.where(first, idx, torch.zeros_like(idx)).cummax(0).values
        end = torch.where(last, idx, torch.full_like(idx, N)).flip(0).cummin(0).values.flip(0)
        rank = torch.empty_like(order)
        rank.scatter_(0, order, idx.contiguous())
        self.order = order
        self.start = start.gather(0, rank)  # [N, C] class start (in sorted order) of each example
        self.size = (end - start + 1).gather(0, rank)  # [N, C] class size of each example
        self.C = C

    def draw(self, refs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """``[M, C]`` indices, each uniform among the examples sharing ``refs``'s class."""
        st, sz = self.start[refs], self.size[refs]
        u = torch.rand(st.shape, generator=gen, dtype=torch.float64)
        pick = st + (u * sz).long().clamp(max=sz - 1)
        return self.order.gather(0, pick)


# ------------------------------------------------------------------------------------------- engine


class _Stop(Exception):
    pass


@dataclass
class _Src:
    """How one source's contribution to one destination is obtained for every row of a node."""

    source: int  # graph source index
    child: str | None  # covering interpretation node, or None (random)
    sampled: torch.Tensor  # [M, C] dataset indices
    replica: torch.Tensor | None  # [M, C] replica of the child's table, or None


@dataclass(frozen=True, eq=False)
class _Shared:
    """What every engine on one model and task reads and never writes, computed once and shared by
    the scrubbed run and the randomised (empty-hypothesis) run: the model, graph, task and feature
    data, the clean activations of every source, the constant bias of every destination, and the
    classes of the uniform random draw."""

    model: Any
    graph: Graph
    task: Any
    data: FeatureData
    batch_size: int
    device: torch.device
    A: torch.Tensor  # [n_src, N, P, d] clean activations
    bias: dict[str, torch.Tensor]
    random: _Classes

    @classmethod
    def build(cls, model, graph: Graph, task, data: FeatureData, batch_size: int) -> _Shared:
        device = next(model.parameters()).device
        return cls(
            model,
            graph,
            task,
            data,
            batch_size,
            device,
            A=_clean_sources(model, graph, task, data.n, batch_size),
            bias=_biases(model, graph, device),
            random=_Classes(torch.zeros(data.n, 1, dtype=torch.long)),
        )


@torch.no_grad()
def _clean_sources(model, graph: Graph, task, N: int, batch_size: int) -> torch.Tensor:
    parts = []
    for i in range(0, N, batch_size):
        sub = task.select(slice(i, min(N, i + batch_size)))
        parts.append(source_activations(model, graph, sub, sub.clean))
    return torch.cat(parts, dim=1)


def _biases(model, graph: Graph, device: torch.device) -> dict[str, torch.Tensor]:
    """Constant part of each destination's input: the attention output biases written before it
    (head outputs are ``z @ W_O`` without ``b_O``; embeddings and MLP outputs are whole)."""
    backend, n_layers = as_backend(model), graph.arch.n_layers
    zero = torch.zeros(graph.arch.d_model, device=device)
    before = [zero]
    for L in range(n_layers):
        b_O = backend.b_O(L)
        before.append(before[-1] + (b_O.detach() if b_O is not None else zero))
    out = {}
    for d, reads in zip(graph.dst_names, graph.dst_time.tolist()):
        # the biases of the layers whose heads write strictly before d reads (the graph's residual
        # time): layers < L for a head of layer L, layers ≤ L for MLP L (< L in a parallel
        # attention+MLP block), all of them for the logits
        out[d] = before[sum(1 for L in range(n_layers) if 8 * L + HEAD_TIME < reads)]
    return out


class _Engine:
    """Scrubs one hypothesis: the per-hypothesis state (its feature values and classes, the
    replica count, the trace) on top of the :class:`_Shared` model and task state."""

    def __init__(self, shared: _Shared, hyp: Hypothesis, replicas: int, trace: bool):
        self.model, self.graph, self.task, self.data = shared.model, shared.graph, shared.task, shared.data
        self.batch_size, self.device = shared.batch_size, shared.device
        self.A, self.bias, self.random = shared.A, shared.bias, shared.random
        self.hyp = hyp
        self.R = replicas
        self.trace: list[Draw] | None = [] if trace else None
        self.values: dict[str, FeatureValues] = {}
        self.classes: dict[str, _Classes] = {}
        cache: dict = {}
        for n, node in hyp.nodes.items():
            if n == hyp.root.name:
                continue
            f = node.feature
            if f not in cache:
                v = f.evaluate(self.data)
                cache[f] = (v, _Classes(v.codes))
            self.values[n], self.classes[n] = cache[f]

    # ---------------------------------------------------------------- planning (all random draws)
    def plan(self, node: str, refs: torch.Tensor, gen: torch.Generator) -> dict[str, object]:
        """Draw, for every row (reference ``refs[m]``) of ``node``'s batch, the inputs every edge
        into its model node is computed on. Returns ``{dst: child-name | [ _Src, ... ]}``."""
        hyp, g = self.hyp, self.graph
        mn = hyp.model_nodes[node]
        out: dict[str, object] = {}
        for d in input_slots(mn):
            slot_child = hyp.slot_children.get((node, d))
            if slot_child is not None:
                out[d] = [self._covered(node, slot_child, -1, d, refs, gen)]
                continue
            col = g.dst_index[d]
            srcs = []
            for s in g.valid[:, col].nonzero()[:, 0].tolist():
                child = hyp.cover.get((node, d, g.src_names[s]))
                if child is not None:
                    srcs.append(self._covered(node, child, s, d, refs, gen))
                else:
                    sampled = self.random.draw(refs, gen)
                    srcs.append(_Src(s, None, sampled, None))
                    self._record(node, None, g.src_names[s], d, refs, sampled, False)
            out[d] = srcs
        return out

    def _covered(self, parent: str, child: str, s: int, d: str, refs, gen) -> _Src:
        sampled = self.classes[child].draw(refs, gen)
        reps = self._reps(child)
        replica = torch.randint(reps, sampled.shape, generator=gen) if reps > 1 else None
        self._record(parent, child, self.hyp.mapping[child], d, refs, sampled, self.values[child].positional)
        return _Src(s, child, sampled, replica)

    def _record(self, parent, child, source, slot, refs, sampled, positional) -> None:
        if self.trace is not None:
            self.trace.append(Draw(parent, child, source, slot, refs.clone(), sampled.clone(), positional))

    def _reps(self, node: str) -> int:
        return 1 if self.hyp.model_nodes[node].kind == "input" else self.R

    # ---------------------------------------------------------------- computing
    def _assemble(self, srcs, rows: slice, tables: dict, d: str) -> torch.Tensor:
        """One destination's input for ``rows`` of the batch: ``bias + Σ_u a_u``."""
        P = self.data.seq_len
        x = None
        if len(srcs) == 1 and srcs[0].source == -1:  # a child explains the slot as a whole
            return self._gather(srcs[0], rows, tables)
        for src in srcs:
            part = self._gather(src, rows, tables)
            x = part.clone() if x is None else x.add_(part)
        if x is None:
            n = rows.stop - rows.start
            x = torch.zeros(n, P, self.graph.arch.d_model, device=self.device)
        return x.add_(self.bias[d])

    def _gather(self, src: _Src, rows: slice, tables: dict) -> torch.Tensor:
        sampled = src.sampled[rows].to(self.device)
        if src.child is None:
            return self.A[src.source][sampled[:, 0]]
        table, reps = tables[src.child]
        idx = sampled * reps + (src.replica[rows].to(self.device) if src.replica is not None else 0)
        if idx.shape[1] == 1:
            return table[idx[:, 0]]
        return table[idx, torch.arange(idx.shape[1], device=self.device)[None, :]]

    def _mask(self, refs: torch.Tensor):
        if not self.data.padded:
            return None
        return self.data.mask[refs].to(self.device)

    @torch.no_grad()
    def _heads(self, layer: int, jobs: list, tables: dict) -> None:
        """Evaluate every interpretation node mapped to a head of ``layer`` in shared batched
        forwards of that block, each row with its own q/k/v inputs for its own head."""
        backend, d_model = as_backend(self.model), self.graph.arch.d_model
        W_O = backend.W_O(layer).detach()
        rows_all = [
            (name, plan, refs, self.hyp.model_nodes[name].head, r0)
            for name, plan, refs in jobs
            for r0 in range(0, len(refs), self.batch_size)
        ]
        outs = {name: torch.empty(len(refs), self.data.seq_len, d_model, device=self.device) for name, _, refs in jobs}
        # pack row chunks of several nodes into one forward while they fit in batch_size rows
        packs: list[list[tuple[tuple, int]]] = []
        cur: list[tuple[tuple, int]] = []
        size = 0
        for item in rows_all:
            n = min(self.batch_size, len(item[2]) - item[4])
            if cur and size + n > self.batch_size:
                packs.append(cur)
                cur, size = [], 0
            cur.append((item, n))
            size += n
        if cur:
            packs.append(cur)
        for pack in packs:
            inputs: dict[str, list[torch.Tensor]] = {letter: [] for letter in "qkv"}
            heads, masks = [], []
            for (_, plan, refs, head, r0), n in pack:
                rows = slice(r0, r0 + n)
                base = f"a{layer}.h{head}"
                for letter in "qkv":
                    inputs[letter].append(self._assemble(plan[f"{base}.{letter}"], rows, tables, f"{base}.{letter}"))
                heads.append(torch.full((n,), head, dtype=torch.long))
                masks.append(refs[rows])
            x_in = {k: torch.cat(v) for k, v in inputs.items()}
            hd = torch.cat(heads).to(self.device)
            B = hd.shape[0]
            ar = torch.arange(B, device=self.device)
            got: dict[str, torch.Tensor] = {}

            def setter(letter, x_in=x_in, ar=ar, hd=hd):
                def hook(x, hook):
                    x = x.clone()
                    x[ar, :, hd] = x_in[letter].to(x.dtype)
                    return x

                return hook

            def grab(z, hook, got=got, ar=ar, hd=hd):
                got["z"] = z[ar, :, hd]
                raise _Stop

            hooks = [(backend.qkv_input_hook(layer, c), setter(c)) for c in "qkv"]
            hooks.append((backend.z_hook(layer), grab))
            resid = torch.zeros(B, self.data.seq_len, d_model, device=self.device)
            with backend.flags(split_qkv_input=True), backend.hooks(fwd_hooks=hooks):
                try:
                    backend.run_layers(resid, layer, layer + 1, attention_mask=self._mask(torch.cat(masks)))
                except _Stop:
                    pass
            out = torch.einsum("bpe,bed->bpd", got["z"], W_O[hd])
            o = 0
            for (name, _, _, _, r0), n in pack:
                outs[name][r0 : r0 + n] = out[o : o + n]
                o += n
        for name, _, _ in jobs:
            tables[name] = (outs[name], self.R)

    @torch.no_grad()
    def _mlp(self, name: str, plan, refs, tables) -> None:
        mn = self.hyp.model_nodes[name]
        backend = as_backend(self.model)
        out = torch.empty(len(refs), self.data.seq_len, self.graph.arch.d_model, device=self.device)
        for r0 in range(0, len(refs), self.batch_size):
            rows = slice(r0, min(len(refs), r0 + self.batch_size))
            x = self._assemble(plan[mn.name], rows, tables, mn.name)
            out[rows] = backend.mlp(mn.layer, x)
        tables[name] = (out, self.R)

    @torch.no_grad()
    def _slot(self, name: str, plan, refs, tables) -> None:
        mn = self.hyp.model_nodes[name]
        out = torch.empty(len(refs), self.data.seq_len, self.graph.arch.d_model, device=self.device)
        for r0 in range(0, len(refs), self.batch_size):
            rows = slice(r0, min(len(refs), r0 + self.batch_size))
            out[rows] = self._assemble(plan[mn.name], rows, tables, mn.name)
        tables[name] = (out, self.R)

    @torch.no_grad()
    def run(self, root_refs: torch.Tensor, gen: torch.Generator, score) -> torch.Tensor:
        """Scores ``[S]`` of the scrubbed model, one per root sample."""
        hyp, N = self.hyp, self.data.n
        root = hyp.root.name
        nodes = sorted((n for n in hyp.nodes if n != root), key=lambda n: (residual_order(hyp.model_nodes[n]), n))
        refs_of = {n: torch.arange(N).repeat_interleave(self._reps(n)) for n in nodes}
        # 1) every random draw, deepest nodes first, then the root: the stream depends only on the
        #    hypothesis, the dataset and the seed (not on batch sizes)
        plans = {n: self.plan(n, refs_of[n], gen) for n in nodes if hyp.model_nodes[n].kind != "input"}
        root_plan = self.plan(root, root_refs, gen)
        # 2) evaluate node tables in residual-stream order, freeing each once its parents are done
        tables: dict[str, tuple[torch.Tensor, int]] = {}
        pending = {n: len(hyp.parents[n]) for n in nodes}
        remaining = list(nodes)
        bar = progress_bar(len(nodes) + 1, "scrub", None, unit="node")  # shown inside a progress phase
        while remaining:
            n = remaining[0]
            mn = hyp.model_nodes[n]
            if mn.kind == "head":
                done = [
                    m for m in remaining if hyp.model_nodes[m].kind == "head" and hyp.model_nodes[m].layer == mn.layer
                ]
                self._heads(mn.layer, [(m, plans[m], refs_of[m]) for m in done], tables)
            elif mn.kind == "input":
                tables[n] = (self.A[0], 1)
                done = [n]
            elif mn.kind == "mlp":
                self._mlp(n, plans[n], refs_of[n], tables)
                done = [n]
            elif mn.kind == "slot":
                self._slot(n, plans[n], refs_of[n], tables)
                done = [n]
            else:  # pragma: no cover - validation refuses other kinds
                raise HypothesisError(f"cannot scrub model node {mn.name!r} of kind {mn.kind}")
            for m in done:
                for c in hyp.nodes[m].children:
                    pending[c.name] -= 1
                    if pending[c.name] == 0:
                        tables.pop(c.name, None)
            remaining = [m for m in remaining if m not in done]
            bar.update(len(done))
        # 3) the root: the logits on each sample, scored with its reference's answers
        scores = []
        S = len(root_refs)
        for r0 in range(0, S, self.batch_size):
            rows = slice(r0, min(S, r0 + self.batch_size))
            x = self._assemble(root_plan["logits"], rows, tables, "logits")
            logits = as_backend(self.model).unembed(x)
            scores.append(score(logits, root_refs[rows]))
        bar.update(1)
        bar.close()
        return torch.cat(scores)


# ------------------------------------------------------------------------------------------- scrub


def _scorer(model, task, loss):
    if loss is None:
        name, fn = task.metric_name, None
    elif isinstance(loss, str):
        if loss not in METRICS:
            raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(METRICS)} or pass a callable")
        name, fn = loss, METRICS[loss]
        if loss in NEEDS_REFERENCE and task.clean_reference is None:
            task = task.to(task.device)
            with torch.no_grad():
                task.clean_reference = task.run(model, task.clean)[task.read_mask].detach()
        if loss in ("logit_diff", "prob_diff", "cross_entropy") and task.answer is None:
            raise ValueError(f"loss {loss!r} needs the task's answer ids")
    elif callable(loss):
        name, fn = getattr(loss, "__name__", "custom"), loss
    else:
        raise TypeError(
            f"loss must be None (the task's metric), a metric name or a callable, got {type(loss).__name__}"
        )

    def score(logits: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        sub = task.select(refs.to(task.device))
        vals = (
            sub.score(logits, " during scrubbing") if fn is None else checked(fn(logits, sub), sub, " during scrubbing")
        )
        return vals.detach().float().cpu()

    return name, score, task


def scrub(
    model,
    hypothesis: Hypothesis,
    task,
    n_samples: int | None = None,
    seed: int = 0,
    loss=None,
    replicas: int = 1,
    n_boot: int = 1000,
    confidence: float = 0.95,
    batch_size: int = 256,
    trace: bool = False,
    warn_vacuous: bool = True,
) -> ScrubResult:
    """Causal-scrub ``hypothesis`` on ``task``'s clean prompts and report the loss recovered.

    n_samples    root samples (reference inputs at the output; default: one per example). Each
                 example is used ⌊n_samples / N⌋ or ⌈n_samples / N⌉ times.
    loss         None: the task's metric; a metric name (``"cross_entropy"``, ``"kl"``, ...); or a
                 callable ``fn(logits, task) -> [batch]``
    replicas     independent evaluations cached per (interpretation node, input); more replicas
                 means less sharing of lower-level draws between samples (see the docs)
    trace        keep every resampling decision in ``result.trace`` (a list of :class:`Draw`)

    The scrubbed loss, the model's loss and the loss with every input randomised (the empty
    hypothesis, same seed) are all measured on the same root samples.
    """
    check_model(model)
    if not isinstance(hypothesis, Hypothesis):
        raise TypeError(f"scrub needs a Hypothesis, got {type(hypothesis).__name__}")
    graph = Graph.from_model(model, split_qkv=True)
    if graph.arch.post_norms:
        raise HypothesisError(UNSUPPORTED_POST_NORMS)
    h = as_backend(model).fingerprint()
    theirs = (hypothesis.model_info or {}).get("config_hash")
    if theirs is not None and theirs != h:
        raise HypothesisError(
            f"hypothesis {hypothesis.name!r} was written for another model (config hash {theirs}, this model's is {h})"
        )
    hypothesis.check(graph)
    if int(replicas) < 1 or int(batch_size) < 1 or int(n_boot) < 1 or not 0 < confidence < 1:
        raise ValueError("replicas, batch_size and n_boot must be ≥ 1 and confidence in (0, 1)")
    task.check_model(model)
    N = task.n_examples
    if N < 2:
        raise HypothesisError(
            f"task {task.name!r} has {N} example; causal scrubbing resamples inputs from the task's clean prompts, so it "
            "needs at least 2 (and many more for classes of agreeing inputs to be non-trivial)"
        )
    task = task.prepare(model)
    loss_name, score, task = _scorer(model, task, loss)
    S = int(n_samples) if n_samples is not None else N
    if S < 2:
        raise ValueError("n_samples must be at least 2 (the confidence interval resamples them)")

    data = FeatureData.from_task(task)
    shared = _Shared.build(model, graph, task, data, int(batch_size))
    engine = _Engine(shared, hypothesis, int(replicas), trace)
    sizes = _class_report(hypothesis, engine, data, warn_vacuous)

    g_root = torch.Generator().manual_seed(int(seed))
    root_refs = torch.cat([torch.randperm(N, generator=g_root) for _ in range(-(-S // N))])[:S]
    scrubbed = engine.run(root_refs, torch.Generator().manual_seed(int(seed) + 1), score)
    trace_out = engine.trace
    # the model itself, on the same references
    model_scores = []
    with torch.no_grad():
        for i in range(0, N, batch_size):
            idx = torch.arange(i, min(N, i + batch_size))
            sub = task.select(idx.to(task.device))
            model_scores.append(score(sub.run(model, sub.clean), idx))
    model_s = torch.cat(model_scores)[root_refs]
    # every input randomised: the empty hypothesis, with the same random stream
    random_engine = _Engine(shared, Hypothesis.empty(), int(replicas), trace=False)
    random_s = random_engine.run(root_refs, torch.Generator().manual_seed(int(seed) + 1), score)

    rec, lo, hi = _recovered(scrubbed, model_s, random_s, n_boot, confidence, seed)
    return ScrubResult(
        loss_recovered=rec,
        ci=(lo, hi),
        scrubbed_loss=float(scrubbed.mean()),
        model_loss=float(model_s.mean()),
        random_loss=float(random_s.mean()),
        n_samples=S,
        n_examples=N,
        loss_name=loss_name,
        confidence=confidence,
        n_boot=int(n_boot),
        replicas=int(replicas),
        seed=int(seed),
        hypothesis=hypothesis.name,
        class_sizes=sizes,
        per_sample={"scrubbed": scrubbed, "model": model_s, "random": random_s, "reference": root_refs},
        trace=trace_out,
    )


def _recovered(scrubbed, model_s, random_s, n_boot, confidence, seed):
    def ratio(s, m, r):
        return (r - s) / (r - m)

    S = scrubbed.shape[0]
    gap = float(random_s.mean() - model_s.mean())
    if abs(gap) < 1e-9 * max(1.0, abs(float(model_s.mean()))):
        warnings.warn(
            "the model and randomised inputs reach the same loss, so loss recovered is undefined (nan)",
            RuntimeWarning,
            stacklevel=3,
        )
        return math.nan, math.nan, math.nan
    point = float(ratio(scrubbed.double().mean(), model_s.double().mean(), random_s.double().mean())) + 0.0  # no -0.0
    g = torch.Generator().manual_seed(int(seed) + 2)
    idx = torch.randint(S, (int(n_boot), S), generator=g)
    boot = ratio(scrubbed.double()[idx].mean(1), model_s.double()[idx].mean(1), random_s.double()[idx].mean(1))
    boot = boot[torch.isfinite(boot)]
    if boot.numel() == 0:
        return point, math.nan, math.nan
    a = (1 - confidence) / 2
    lo, hi = torch.quantile(boot, torch.tensor([a, 1 - a], dtype=boot.dtype)).tolist()
    return point, float(lo) + 0.0, float(hi) + 0.0


def _class_report(hyp: Hypothesis, engine: _Engine, data: FeatureData, warn: bool) -> dict:
    """Mean class size per node; warn where most (input, position) pairs have a class of one."""
    out = {}
    for n, cls in engine.classes.items():
        size = cls.size.float()
        if engine.values[n].positional:
            w = data.mask.float()
        else:
            w = torch.ones(size.shape)
        mean = float((size * w).sum() / w.sum())
        out[n] = round(mean, 3)
        feat = hyp.nodes[n].feature
        if feat.is_whole_input or not warn:
            continue
        single = float(((size == 1).float() * w).sum() / w.sum())
        if single > 0.5:
            warnings.warn(
                VacuousHypothesisWarning(
                    f"interpretation node {n!r} ({feat.describe()}): for {single:.0%} of the dataset's inputs"
                    f"{' and positions' if engine.values[n].positional else ''} no other input agrees on the feature, so "
                    "resampling there always returns the reference itself and the test is vacuous for that node. Use a "
                    "larger dataset (task) or a coarser feature."
                ),
                stacklevel=3,
            )
    return out
