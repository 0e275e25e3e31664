"""A task: clean prompts, corrupted prompts, what to read, and the metric.

Clean and corrupted prompts are paired example by example and must have the same token length
per example (patching replaces activations position by position). Prompts of different lengths
across examples are right-padded with an attention mask; each example is read at its own
positions (by default its last real token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from circuitgraph.errors import TaskError, TaskTypeError
from circuitgraph.tasks.metrics import NEEDS_REFERENCE, Metric, checked, resolve_metric


@dataclass
class Task:
    """Paired clean/corrupted examples and a metric.

    clean, corrupted   ``[batch, pos]`` token ids (long)
    answer, wrong      ``[batch]`` (one id per example) or ``[batch, pos]`` (one per position)
    read_positions     ``[batch]`` position per example, or ``[batch, pos]`` bool mask, or None
                       (each example's last real token)
    attention_mask     ``[batch, pos]`` 1 for real tokens, 0 for padding (None: no padding)
    """

    clean: torch.Tensor
    corrupted: torch.Tensor
    answer: torch.Tensor | None = None
    wrong: torch.Tensor | None = None
    read_positions: torch.Tensor | None = None
    metric: str | Metric = "logit_diff"
    name: str = "task"
    attention_mask: torch.Tensor | None = None
    clean_reference: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.clean = _as_tokens(self.clean, "clean")
        self.corrupted = _as_tokens(self.corrupted, "corrupted")
        if self.clean.shape[0] == 0:
            raise TaskError(f"task {self.name!r} is empty: it needs at least one clean/corrupted pair")
        if self.clean.shape != self.corrupted.shape:
            raise TaskError(
                f"clean prompts have shape {list(self.clean.shape)} but corrupted prompts have shape "
                f"{list(self.corrupted.shape)}: they must pair up example by example with equal token "
                "lengths. Pad both to the same length and pass attention_mask (Task.from_strings does this)."
            )
        if self.clean.device != self.corrupted.device:
            raise TaskError("clean and corrupted tokens are on different devices; move both with task.to(device)")
        B, P = self.clean.shape
        if self.attention_mask is not None:
            self.attention_mask = torch.as_tensor(self.attention_mask, device=self.clean.device).long()
            if self.attention_mask.shape != (B, P):
                raise TaskError(f"attention_mask must have shape {[B, P]}, got {list(self.attention_mask.shape)}")
            if (self.attention_mask.sum(1) == 0).any():
                raise TaskError("attention_mask has an example with no real tokens")
        for nm in ("answer", "wrong"):
            ids = getattr(self, nm)
            if ids is None:
                continue
            ids = _as_tokens(ids, nm, allow_1d=True)
            if ids.shape not in ((B,), (B, P)):
                raise TaskError(
                    f"{nm} must have shape [{B}] (one id per example) or [{B}, {P}] (one per position), "
                    f"got {list(ids.shape)}"
                )
            setattr(self, nm, ids.to(self.clean.device))
        self.read_mask = self._read_mask()
        self.read_owner = self.read_mask.nonzero()[:, 0]  # [n_read] example of each read position
        self.read_counts = self.read_mask.sum(1)  # [batch]
        if self.metric in ("logit_diff", "prob_diff", "cross_entropy") and self.answer is None:
            raise TaskError(f"metric {self.metric!r} needs answer token ids; pass answer=…")
        self._metric_fn = resolve_metric(self.metric)

    # ------------------------------------------------------------------ construction helpers
    def _read_mask(self) -> torch.Tensor:
        B, P = self.clean.shape
        dev = self.clean.device
        rp = self.read_positions
        if rp is None:
            last = (
                (self.attention_mask.sum(1) - 1)
                if self.attention_mask is not None
                else torch.full((B,), P - 1, device=dev)
            )
            rp = last
        rp = torch.as_tensor(rp, device=dev)
        if rp.dtype == torch.bool:
            if rp.shape != (B, P):
                raise TaskError(f"a boolean read_positions mask must have shape {[B, P]}, got {list(rp.shape)}")
            if (rp.sum(1) == 0).any():
                raise TaskError("read_positions mask has an example with no position to read")
            return rp
        rp = rp.long()
        if rp.shape != (B,):
            raise TaskError(f"read_positions must be [{B}] positions or a [{B}, {P}] bool mask, got {list(rp.shape)}")
        rp = torch.where(rp < 0, rp + P, rp)
        if ((rp < 0) | (rp >= P)).any():
            raise TaskError(f"read_positions must lie in [0, {P}), got {rp.min().item()}..{rp.max().item()}")
        mask = torch.zeros(B, P, dtype=torch.bool, device=dev)
        mask[torch.arange(B, device=dev), rp] = True
        return mask

    @classmethod
    def from_strings(
        cls,
        model,
        clean: Sequence[str],
        corrupted: Sequence[str],
        answer: Sequence[str] | None = None,
        wrong: Sequence[str] | None = None,
        metric: str | Metric = "logit_diff",
        name: str = "task",
        prepend_bos: bool | None = None,
    ) -> Task:
        """Tokenize prompt strings with the model's tokenizer, right-padding to a common length.
        Each answer must be a single token (``" Mary"`` usually is, with its leading space)."""
        if model.tokenizer is None:
            raise TaskError("this model has no tokenizer: pass token ids (Task(clean=tensor, …)) instead of strings")
        if len(clean) != len(corrupted):
            raise TaskError(f"{len(clean)} clean prompts but {len(corrupted)} corrupted prompts; they must pair up")
        toks_c = [model.to_tokens(s, prepend_bos=prepend_bos)[0] for s in clean]
        toks_x = [model.to_tokens(s, prepend_bos=prepend_bos)[0] for s in corrupted]
        bad = [i for i, (a, b) in enumerate(zip(toks_c, toks_x)) if len(a) != len(b)]
        if bad:
            i = bad[0]
            raise TaskError(
                f"example {i}: clean prompt has {len(toks_c[i])} tokens but corrupted has {len(toks_x[i])} "
                f"({len(bad)} such pairs). Patching is position by position, so each corrupted prompt must "
                "tokenize to the same length as its clean prompt; rephrase it with the same token count."
            )
        pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
        P = max(len(t) for t in toks_c)
        B = len(toks_c)
        C = torch.full((B, P), pad, dtype=torch.long)
        X = torch.full((B, P), pad, dtype=torch.long)
        M = torch.zeros((B, P), dtype=torch.long)
        for i, (a, b) in enumerate(zip(toks_c, toks_x)):
            C[i, : len(a)], X[i, : len(b)], M[i, : len(a)] = a.cpu(), b.cpu(), 1

        def single(words):
            if words is None:
                return None
            ids = []
            for w in words:
                t = model.to_tokens(w, prepend_bos=False)[0]
                if len(t) != 1:
                    raise TaskError(f"answer {w!r} is {len(t)} tokens; answers must be single tokens")
                ids.append(int(t[0]))
            return torch.tensor(ids)

        dev = model.cfg.device
        return cls(
            clean=C.to(dev),
            corrupted=X.to(dev),
            answer=single(answer),
            wrong=single(wrong),
            metric=metric,
            name=name,
            attention_mask=None if bool(M.all()) else M.to(dev),
        )

    # ------------------------------------------------------------------ properties and views
    @property
    def n_examples(self) -> int:
        return self.clean.shape[0]

    @property
    def seq_len(self) -> int:
        return self.clean.shape[1]

    @property
    def device(self) -> torch.device:
        return self.clean.device

    @property
    def metric_name(self) -> str:
        return self.metric if isinstance(self.metric, str) else getattr(self.metric, "__name__", "custom")

    def _fields(self) -> dict[str, Any]:
        return dict(
            clean=self.clean,
            corrupted=self.corrupted,
            answer=self.answer,
            wrong=self.wrong,
            read_positions=self.read_mask,
            metric=self.metric,
            name=self.name,
            attention_mask=self.attention_mask,
        )

    def with_metric(self, metric: str | Metric) -> Task:
        """The same examples scored with another metric (e.g. ``"kl"`` for ACDC)."""
        if metric == self.metric:
            return self
        return Task(**{**self._fields(), "metric": metric})

    def to(self, device: torch.device | str) -> Task:
        f: dict[str, Any] = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self._fields().items()}
        t = Task(**f)
        if self.clean_reference is not None:
            t.clean_reference = self.clean_reference.to(device)
        return t

    def select(self, idx: torch.Tensor | slice) -> Task:
        """A sub-task of some examples (used for memory-bounded batching and resampling)."""
        f = self._fields()
        f = {k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in f.items()}
        t = Task(**f)
        if self.clean_reference is not None:
            # reference rows belong to read positions, grouped by example: gather each selected
            # example's rows (indices may repeat, e.g. when tiling for batched patching)
            ex = torch.arange(self.n_examples, device=self.device)[idx]
            counts = self.read_counts[ex]
            starts = (self.read_counts.cumsum(0) - self.read_counts)[ex]
            within = torch.arange(int(counts.sum()), device=self.device) - (
                counts.cumsum(0) - counts
            ).repeat_interleave(counts)
            t.clean_reference = self.clean_reference[starts.repeat_interleave(counts) + within]
        return t

    # ------------------------------------------------------------------ running
    def check_model(self, model) -> None:
        """Validate the task against a model: vocab range, context length, device."""
        cfg = model.cfg
        dev = _model_device(model)
        if self.device.type != dev.type:
            raise TaskError(
                f"the task's tensors are on {self.device} but the model is on {dev}; "
                f"move the task with task = task.to({str(dev)!r})"
            )
        for nm in ("clean", "corrupted"):
            t = getattr(self, nm)
            if int(t.max()) >= cfg.d_vocab or int(t.min()) < 0:
                raise TaskError(
                    f"{nm} token ids must lie in [0, {cfg.d_vocab}) for this model; got {int(t.min())}..{int(t.max())}"
                )
        if self.seq_len > cfg.n_ctx:
            raise TaskError(f"prompts have {self.seq_len} tokens but the model's context is {cfg.n_ctx}")
        v_out = cfg.d_vocab_out if cfg.d_vocab_out and cfg.d_vocab_out > 0 else cfg.d_vocab
        for nm in ("answer", "wrong"):
            ids = getattr(self, nm)
            if ids is not None and ids.ndim == 2:
                ids = ids[self.read_mask]  # per-position ids: only the positions read must be valid
            if ids is not None and (int(ids.max()) >= v_out or int(ids.min()) < 0):
                raise TaskError(
                    f"{nm} ids must be output-vocabulary indices in [0, {v_out}); got {int(ids.min())}..{int(ids.max())}"
                )

    def needs_reference(self) -> bool:
        return isinstance(self.metric, str) and self.metric in NEEDS_REFERENCE

    def run(self, model, tokens: torch.Tensor, **kw) -> torch.Tensor:
        """Forward ``tokens`` with this task's attention mask; returns logits ``[batch, pos, vocab]``."""
        if self.attention_mask is not None:
            kw["attention_mask"] = self.attention_mask
        return model(tokens, **kw)

    @torch.no_grad()
    def prepare(self, model) -> Task:
        """Compute the clean reference logits at the read positions if the metric needs them."""
        if self.needs_reference() and self.clean_reference is None:
            self.clean_reference = self.run(model, self.clean)[self.read_mask].detach()
        return self

    def score(self, logits: torch.Tensor, where: str = "") -> torch.Tensor:
        """Per-example metric values ``[batch]``, validated (finite, right shape)."""
        return checked(self._metric_fn(logits, self), self, where)


def _as_tokens(x, name: str, allow_1d: bool = False) -> torch.Tensor:
    """Token ids as a long tensor, refusing what only looks like ids: floats, booleans (``True``
    is not token 1), ids too large for int64, and tensors on the meta device (shapes without values)."""
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise TaskTypeError(
            f"{name} must hold integer token ids; {type(x).__name__} could not be read as ids ({e})"
        ) from None
    if t.device.type == "meta":
        raise TaskTypeError(
            f"{name} is on the meta device: it has a shape but no values. Build the task from real token ids "
            "(e.g. task.to('cpu') of a task that has values), not from a model initialised on 'meta'"
        )
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise TaskTypeError(f"{name} must hold integer token ids, got dtype {t.dtype}; use .long()")
    if t.ndim != 2 and not (allow_1d and t.ndim == 1):
        want = "[batch] or [batch, pos]" if allow_1d else "[batch, pos]"
        raise TaskError(f"{name} must have shape {want}, got {list(t.shape)}")
    return t.long()


def _model_device(model) -> torch.device:
    return next(model.parameters()).device
