"""Task metrics: functions of the model's logits that the attribution differentiates and the
evaluation measures.

Every metric returns one value per example (``[batch]``), read at the example's read positions
(averaged when an example reads several), so that batching and averaging stay in one place.
Signature of a custom metric: ``fn(logits: [batch, pos, vocab], batch: Task) -> [batch]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from circuitgraph.errors import TaskError, TaskTypeError

# fn(logits, batch) with batch a Task (not imported here: task.py imports this module)
Metric = Callable[[torch.Tensor, Any], torch.Tensor]


def read_logits(logits: torch.Tensor, task) -> torch.Tensor:
    """Logits at the read positions, flattened: ``[n_read, vocab]`` (row order = ``read_mask.nonzero()``)."""
    return logits[task.read_mask]


def per_example_mean(values: torch.Tensor, task) -> torch.Tensor:
    """Average per-read-position ``values [n_read]`` into per-example values ``[batch]``."""
    owner = task.read_owner  # [n_read] example index of each read position
    out = torch.zeros(task.n_examples, dtype=values.dtype, device=values.device)
    out = out.index_add(0, owner, values)
    return out / task.read_counts.to(values.dtype)


def _answer_at_reads(ids: torch.Tensor, task) -> torch.Tensor:
    """Token ids per read position ``[n_read]`` (ids given per example or per position)."""
    return ids[task.read_owner] if ids.ndim == 1 else ids[task.read_mask]


def _answer_minus_wrong(table: torch.Tensor, task) -> torch.Tensor:
    """``table[answer] − table[wrong]`` per read position (``table [n_read, vocab]``), averaged per example."""
    val = table.gather(1, _answer_at_reads(task.answer, task)[:, None])[:, 0]
    if task.wrong is not None:
        val = val - table.gather(1, _answer_at_reads(task.wrong, task)[:, None])[:, 0]
    return per_example_mean(val, task)


def logit_diff(logits: torch.Tensor, task) -> torch.Tensor:
    """logit(answer) − logit(wrong answer); with no wrong answer, logit(answer)."""
    return _answer_minus_wrong(read_logits(logits, task), task)


def prob_diff(logits: torch.Tensor, task) -> torch.Tensor:
    """p(answer) − p(wrong answer); with no wrong answer, p(answer)."""
    return _answer_minus_wrong(read_logits(logits, task).float().softmax(-1), task)


def cross_entropy(logits: torch.Tensor, task) -> torch.Tensor:
    """−log p(answer): lower is better."""
    logp = read_logits(logits, task).float().log_softmax(-1)
    val = -logp.gather(1, _answer_at_reads(task.answer, task)[:, None])[:, 0]
    return per_example_mean(val, task)


def kl_divergence(logits: torch.Tensor, task) -> torch.Tensor:
    """KL(clean ‖ current) at the read positions: 0 for the full model, lower is better."""
    ref = _reference(task)
    logp = read_logits(logits, task).float().log_softmax(-1)
    ref_logp = ref.float().log_softmax(-1)
    val = F.kl_div(logp, ref_logp, log_target=True, reduction="none").sum(-1)
    return per_example_mean(val, task)


def l2(logits: torch.Tensor, task) -> torch.Tensor:
    """Squared distance of the read logits to the clean run's (for numeric outputs)."""
    ref = _reference(task)
    val = (read_logits(logits, task).float() - ref.float()).pow(2).sum(-1)
    return per_example_mean(val, task)


def _reference(task) -> torch.Tensor:
    if task.clean_reference is None:
        raise RuntimeError(
            "this metric compares to the clean run: call task.prepare(model) first "
            "(attribute() and evaluate() do this for you)"
        )
    return task.clean_reference


METRICS: dict[str, Metric] = {
    "logit_diff": logit_diff,
    "prob_diff": prob_diff,
    "cross_entropy": cross_entropy,
    "kl": kl_divergence,
    "l2": l2,
}
NEEDS_REFERENCE = {"kl", "l2"}
# Metrics for which a *lower* value means the task is done better (used for reporting only).
LOWER_IS_BETTER = {"cross_entropy", "kl", "l2"}


def helpfulness(scores, metric_name: str | None):
    """How much each edge helps the task, whatever the metric: positive = helps, negative = hurts.

    A score estimates m(edge ablated) − m(clean). Under a higher-is-better metric (logit_diff) an
    edge the task needs scores negative, under a lower-is-better one (kl, cross_entropy, l2)
    positive; this flips the sign so that "helps" reads the same under every metric."""
    return scores if metric_name in LOWER_IS_BETTER else -scores


def resolve_metric(metric: str | Metric) -> Metric:
    if callable(metric):
        return metric
    try:
        return METRICS[metric]
    except KeyError:
        raise TaskError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)} or pass a callable") from None


def checked(values: torch.Tensor, task, where: str = "") -> torch.Tensor:
    """Validate a metric's output: one finite floating-point value per example (a scalar is
    broadcast), so that a bad metric is named here and not blamed on the model later."""
    if not isinstance(values, torch.Tensor):
        raise TaskTypeError(f"the metric must return a torch.Tensor, got {type(values).__name__}{where}")
    if not values.is_floating_point():
        raise TaskTypeError(
            f"the metric must return floating-point values (gradients and faithfulness need real numbers), "
            f"got dtype {values.dtype}{where}; return e.g. logit differences, not a count or a comparison"
        )
    if values.ndim == 0:
        values = values.expand(task.n_examples)
    if values.shape != (task.n_examples,):
        raise TaskError(
            f"the metric must return one value per example (shape [{task.n_examples}]) or a scalar, "
            f"got shape {list(values.shape)}{where}"
        )
    if not torch.isfinite(values).all():
        bad = (~torch.isfinite(values)).nonzero()[:5, 0].tolist()
        raise TaskError(
            f"the metric returned NaN or inf for examples {bad}{where}; check the answer ids and "
            "that the metric does not divide by zero or take log(0)"
        )
    return values
