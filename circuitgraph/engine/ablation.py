"""Ablations: what an ablated edge carries instead of its clean source activation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from circuitgraph.engine.batching import example_chunks
from circuitgraph.engine.patching import patched_logits
from circuitgraph.engine.patching import tiled as _tiled
from circuitgraph.engine.sources import raw_sources, stack_sources
from circuitgraph.engine.tensors import CompactSources, frozen_params
from circuitgraph.errors import ConfigError, FileFormatError, TaskError
from circuitgraph.graph import Graph
from circuitgraph.tasks.metrics import LOWER_IS_BETTER as _LOWER_IS_BETTER

ABLATIONS = ("corrupted", "zero", "mean", "resample", "optimal")
OPTIMAL_OBJECTIVES = ("kl", "metric")


@dataclass
class Ablation:
    """What an ablated edge carries instead of its clean source activation.

    corrupted  the source's activation on the corrupted prompt (activation patching; default)
    zero       zero
    mean       the per-position mean over ``reference`` token ids (default: the task's clean prompts)
    resample   the source's activation on another example's clean prompt (seeded derangement)
    optimal    a constant per node (and position), fitted to minimise the loss of the empty circuit
               on the task (Li & Janson 2024; see :meth:`fit_optimal`); the constants are data
               (``values``), saved with a circuit and never recomputed once given
    """

    kind: str = "corrupted"
    reference: torch.Tensor | None = None
    seed: int = 0
    values: dict[str, torch.Tensor] | None = None  # optimal: fitted constants, raw capture → [pos, ...]
    per_position: bool | None = None  # optimal: one constant per position (None: on positional graphs)
    objective: str = "kl"  # optimal: what the constants minimise (see fit_optimal)
    fit_kind: str = "node"  # optimal: "node" (each node alone, Li & Janson) or "empty" (all jointly)
    steps: int = 100  # optimal: Adam steps of the fit
    lr: float = 0.05
    checks: int = 4  # optimal: times the fit is measured on every example (the best constants are kept)
    fit: dict = field(default_factory=dict)  # optimal: figures of the fit (losses before and after)

    def __post_init__(self) -> None:
        if self.kind not in ABLATIONS:
            raise ConfigError(f"unknown ablation {self.kind!r}; choose one of {list(ABLATIONS)}")
        if self.objective not in OPTIMAL_OBJECTIVES:
            raise ConfigError(
                f"unknown optimal-ablation objective {self.objective!r}; choose one of {list(OPTIMAL_OBJECTIVES)}"
            )
        if self.fit_kind not in ("node", "empty"):
            raise ConfigError(f"fit_kind must be 'node' or 'empty', got {self.fit_kind!r}")
        if int(self.checks) < 1:
            raise ConfigError(f"checks must be ≥ 1 (the fit's last step is always measured), got {self.checks}")
        if self.values is not None and self.kind != "optimal":
            raise ConfigError(f"values= (fitted constants) belong to optimal ablation, not {self.kind!r}")
        self._mean: dict[str, torch.Tensor] | None = None  # raw capture name → mean [pos, ...]
        self._perm: torch.Tensor | None = None

    @classmethod
    def coerce(cls, ablation: str | Ablation) -> Ablation:
        return ablation if isinstance(ablation, Ablation) else cls(kind=ablation)

    def prepare(self, model: Any, graph: Graph, task: Any) -> Ablation:
        """Compute what is shared across batches (the mean, the resampling permutation, the
        fitted optimal constants)."""
        if self.kind in ("mean", "optimal") and self._mean is None and self.values is None:
            self._mean = self._mean_captures(model, graph, task)
        if self.kind == "optimal" and self.values is None:
            self.fit_optimal(model, graph, task)
        if self.kind == "optimal":
            assert self.values is not None
            self._check_values(graph, task)
        if self.kind == "resample" and self._perm is None:
            n = task.n_examples
            if n < 2:
                raise TaskError("resample ablation needs at least 2 examples to resample from")
            g = torch.Generator().manual_seed(self.seed)
            shift = torch.randint(1, n, (n,), generator=g)
            self._perm = ((torch.arange(n) + shift) % n).to(task.device)  # never maps an example to itself
        return self

    def _mean_captures(self, model: Any, graph: Graph, task: Any) -> dict[str, torch.Tensor]:
        """Per-position means of every raw capture over the reference tokens."""
        ref = task.clean if self.reference is None else torch.as_tensor(self.reference, device=task.device)
        if ref.ndim != 2 or ref.shape[1] != task.seq_len:
            raise TaskError(f"mean-ablation reference must be [n, {task.seq_len}] token ids, got {list(ref.shape)}")
        mask = task.attention_mask if self.reference is None else None
        total: dict[str, torch.Tensor] = {}
        count: torch.Tensor | None = None
        for i in range(0, ref.shape[0], 64):
            m = mask[i : i + 64] if mask is not None else torch.ones(ref[i : i + 64].shape, device=ref.device)
            raw = raw_sources(model, graph, _Plain(mask[i : i + 64] if mask is not None else None), ref[i : i + 64])
            for k, v in raw.items():
                w = m.to(v.dtype).view(*m.shape, *([1] * (v.ndim - 2)))
                total[k] = total.get(k, 0) + (v * w).sum(0)  # [pos, ...]
            count = m.sum(0) if count is None else count + m.sum(0)
        if count is None:  # (an empty reference leaves nothing to average)
            return {}
        return {k: v / count.clamp(min=1).to(v.dtype).view(-1, *([1] * (v.ndim - 1))) for k, v in total.items()}

    def fit_optimal(
        self, model: Any, graph: Graph, task: Any, examples_per_step: int = 8, circuit: torch.Tensor | None = None
    ) -> Ablation:
        """Fit the optimal-ablation constants (Li & Janson 2024), starting from the mean.

        ``fit="node"`` (default, as Li & Janson and MIB's ``oa.py``): each node's constant minimises
        the loss of the model with *that node alone* ablated (all its out-edges removed). Every
        node is fitted at once: one mask per node in the engine's batched forward, whose loss reaches
        that node's constant only. ``fit="empty"``: all constants jointly minimise the loss of the
        empty circuit. ``circuit`` (an ``[n_src, n_dst]`` edge mask): all constants jointly minimise
        the loss of *that* circuit, whose removed edges carry them (Li & Janson's circuit
        objective, for one circuit; recorded as ``fit="circuit"``). The loss is
        ``objective="kl"`` (KL of the output to the clean run at the read positions) or
        ``"metric"`` (the task's metric, minimised when lower is better, maximised otherwise). Constants are per position only on a position-resolved graph (unless
        ``per_position`` says otherwise). Gradients reach the constants only. The loss is measured on
        every example at the mean and ``checks`` times during the fit, and the best constants are
        kept, so a fit never ends worse than its start (each check is a pass without gradients over
        every example and mask, about n_examples / 24 Adam steps' worth); ``self.fit`` records
        both losses and the step kept. Per-position constants can memorise a small ``task`` (one
        constant per read position can encode its examples' answers): fit on a larger sample than
        the one you measure on, and pass the fitted ablation on (its ``values`` are not refitted)."""
        mean = self._mean if self._mean is not None else self._mean_captures(model, graph, task)
        per_position = bool(graph.positions) if self.per_position is None else bool(self.per_position)
        params = {
            k: (v if per_position else v.mean(0, keepdim=True)).detach().clone().requires_grad_(True)
            for k, v in mean.items()
        }
        opt = torch.optim.Adam(list(params.values()), lr=self.lr)
        scored = task.with_metric("kl") if self.objective == "kl" else task
        scored.prepare(model)
        sign = 1.0 if self.objective == "kl" or scored.metric_name in _LOWER_IS_BETTER else -1.0
        gen = torch.Generator().manual_seed(int(self.seed))
        group = max(1, 64 // examples_per_step)  # masks per forward
        n_fits = 1 if self.fit_kind == "empty" or circuit is not None else graph.node_graph.n_src
        if circuit is not None:
            circuit = torch.as_tensor(circuit).to(graph.valid.device).bool()
            if circuit.shape != graph.valid.shape:
                raise ConfigError(
                    f"circuit= must be an [n_src, n_dst] = {list(graph.valid.shape)} edge mask, got {list(circuit.shape)}"
                )
        masks = (
            (lambda: _fit_masks(graph, self.fit_kind, group))
            if circuit is None
            else (lambda: [(circuit & graph.valid)[None]])
        )

        def loss_on(sub: Any, backward: bool) -> float:
            """The objective on ``sub``'s examples summed over the fits (each fit's mean over examples)."""
            B, P = sub.clean.shape
            total = 0.0
            for m in masks():
                raw = {k: v.expand(P, *v.shape[1:])[None].expand(B, P, *v.shape[1:]) for k, v in params.items()}
                logits = patched_logits(model, graph, sub, stack_sources(model, graph, raw), m, differentiable=True)
                loss = sign * _tiled(sub, len(m)).score(logits).view(len(m), B).mean(1).sum()
                total += float(loss.detach())
                if backward:
                    loss.backward(inputs=list(params.values()))
            return total

        def full_loss() -> float:
            """The objective on every example (minibatch losses are too noisy to compare fits by)."""
            with torch.no_grad():
                total = sum(loss_on(sub, backward=False) * w for _, sub, w in example_chunks(scored, examples_per_step))
            return total / n_fits

        steps = int(self.steps)
        # Adam on minibatches can end worse than it started (even worse than the mean it started
        # from), so the constants are checked on every example a few times and the best are kept.
        n_checks = min(int(self.checks), max(steps, 1))
        checks = {round(steps * (j + 1) / n_checks) for j in range(n_checks)}  # evenly spaced, the last step included
        with frozen_params(model, *graph.node_graph.saes.values()):
            best = (full_loss(), {k: v.detach().clone() for k, v in params.items()}, 0)
            at_mean = best[0]
            for step in range(1, steps + 1):
                pick = torch.randperm(task.n_examples, generator=gen)[:examples_per_step].sort().values
                opt.zero_grad(set_to_none=True)
                loss_on(scored.select(pick.to(task.device)), backward=True)
                opt.step()
                if step in checks:
                    now = full_loss()
                    if now < best[0]:
                        best = (now, {k: v.detach().clone() for k, v in params.items()}, step)
        loss, kept, kept_step = best
        self.values = {k: v.expand(task.seq_len, *v.shape[1:]).contiguous() for k, v in kept.items()}
        self.fit = {
            "fit": self.fit_kind if circuit is None else "circuit",
            "objective": self.objective,
            "loss_at_mean": sign * at_mean,
            "loss_fitted": sign * loss,
            "steps": steps,
            "kept_step": kept_step,
            "per_position": per_position,
        }
        return self

    def _check_values(self, graph: Graph, task: Any) -> None:
        """Fitted constants must hold every capture this graph's sources need, at the task's length."""
        assert self.values is not None
        need = set(_capture_names(graph))
        missing = sorted(need - set(self.values))
        if missing:
            raise ConfigError(
                f"the optimal-ablation constants lack {missing[:3]} (they were fitted on another graph); "
                "fit them again with Ablation('optimal') on this graph"
            )
        bad = [k for k in need if self.values[k].shape[0] != task.seq_len]
        if bad:
            raise TaskError(
                f"the optimal-ablation constants are per position for {self.values[bad[0]].shape[0]} tokens, but the "
                f"task's prompts have {task.seq_len}; fit them again on this task"
            )

    def activations(
        self, model: Any, graph: Graph, task: Any, idx: slice | torch.Tensor, chunk: Any, compact: bool = False
    ) -> torch.Tensor | CompactSources:
        """Ablated source activations ``[n_src, batch, pos, d]`` for examples ``idx`` of ``task``
        (``chunk`` is ``task.select(idx)``); ``compact``: SAE features as coefficients."""
        return stack_sources(model, graph, self.raw(model, graph, task, idx, chunk), compact=compact)

    def raw(self, model: Any, graph: Graph, task: Any, idx: slice | torch.Tensor, chunk: Any) -> dict:
        """The same as raw captures (see :func:`raw_sources`)."""
        B, P = chunk.clean.shape
        if self.kind == "corrupted":
            return raw_sources(model, graph, chunk, chunk.corrupted)
        if self.kind == "mean":
            assert self._mean is not None  # set by prepare()
            return {k: v[None].expand(B, *v.shape).contiguous() for k, v in self._mean.items()}
        if self.kind == "optimal":
            assert self.values is not None  # set by prepare()
            return {k: v.to(chunk.device)[None].expand(B, *v.shape).contiguous() for k, v in self.values.items()}
        if self.kind == "zero":
            like = raw_sources(model, graph, _Plain(None), chunk.clean[:1, :1])  # shapes and dtypes only
            return {k: torch.zeros((B, P, *v.shape[2:]), dtype=v.dtype, device=v.device) for k, v in like.items()}
        assert self._perm is not None  # set by prepare()
        partner = self._perm[idx]
        return raw_sources(
            model,
            graph,
            _Plain(task.attention_mask[partner] if task.attention_mask is not None else None),
            task.clean[partner],
        )

    def to_dict(self) -> dict:
        """The ablation as JSON data (optimal: its settings and fit; the constants themselves are
        tensors, see :meth:`tensors`)."""
        d = {"kind": self.kind, "seed": self.seed, "reference": "custom" if self.reference is not None else None}
        if self.kind == "optimal":
            d.update(
                objective=self.objective,
                per_position=self.per_position,
                fit_kind=self.fit_kind,
                steps=self.steps,
                lr=self.lr,
                checks=self.checks,
                fit=dict(self.fit),
                values=sorted(self.values) if self.values is not None else None,
            )
        return d

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fitted constants, named ``ablation.<capture>`` (what a circuit's safetensors file holds)."""
        if not self.values:
            return {}
        return {f"ablation.{k}": v.detach().float().cpu().contiguous() for k, v in self.values.items()}

    @classmethod
    def from_dict(cls, doc: dict, tensors: dict[str, torch.Tensor] | None = None) -> Ablation:
        """Rebuild an ablation from :meth:`to_dict` data and, for optimal ablation, the
        ``ablation.<capture>`` tensors (read as data: nothing is refitted or executed)."""
        if not isinstance(doc, dict) or doc.get("kind") not in ABLATIONS:
            raise FileFormatError(f"not an ablation record: {doc!r}; expected a 'kind' among {list(ABLATIONS)}")
        kw: dict[str, Any] = {"kind": doc["kind"], "seed": int(doc.get("seed") or 0)}
        if doc["kind"] == "optimal":
            names = doc.get("values") or []
            have = {k[len("ablation.") :]: v for k, v in (tensors or {}).items() if k.startswith("ablation.")}
            missing = [n for n in names if n not in have]
            if missing or not names:
                raise FileFormatError(
                    f"the optimal-ablation constants {missing[:3] or '(none listed)'} are missing from the tensors; "
                    "the circuit's .safetensors file does not belong to its .json file"
                )
            kw.update(
                values={n: have[n] for n in names},
                objective=str(doc.get("objective", "kl")),
                per_position=doc.get("per_position"),
                fit_kind=str(doc.get("fit_kind", "node")),
                steps=int(doc.get("steps", 100)),
                lr=float(doc.get("lr", 0.05)),
                checks=int(doc.get("checks", 4)),
                fit=dict(doc.get("fit") or {}),
            )
        return cls(**kw)


class _Plain:
    """A minimal stand-in for a task when running reference tokens with a given mask."""

    def __init__(self, attention_mask):
        self.attention_mask = attention_mask

    def run(self, model, tokens, **kw):
        if self.attention_mask is not None:
            kw["attention_mask"] = self.attention_mask
        return model(tokens, **kw)


def _fit_masks(graph: Graph, kind: str, group: int) -> Iterator[torch.Tensor]:
    """Edge masks to fit optimal constants on, ``group`` at a time: the empty circuit, or one per
    source node with that node's out-edges (at every position) removed."""
    valid = graph.valid
    if kind == "empty":
        yield torch.zeros((1, *valid.shape), dtype=torch.bool, device=valid.device)
        return
    n_nodes = graph.node_graph.n_src
    per_node = valid.shape[0] // n_nodes  # rows per node (its positions, on a position-resolved graph)
    for k0 in range(0, n_nodes, group):
        ks = range(k0, min(n_nodes, k0 + group))
        masks = valid[None].repeat(len(ks), 1, 1)
        for i, k in enumerate(ks):
            masks[i, k * per_node : (k + 1) * per_node] = False
        yield masks


def _capture_names(graph: Graph) -> list[str]:
    """The raw captures a graph's sources are stacked from (see :func:`source_hooks`)."""
    g = graph.node_graph
    names = ["input"]
    for L in range(g.arch.n_layers):
        names.append(f"z{L}")
        if g.has_mlp_node(L):
            names.append(f"mlp{L}")
        if L in g.neurons:
            names.append(f"post{L}")
    for site in g.sites:
        names += [f"acts:{site.name}", f"err:{site.name}"]
    return names
