"""Diagnosing attribution results that cannot select a circuit.

Kept apart from the scoring code: these are rules about what a result means, stated on plain
values, so any caller (the CLI, a notebook, a sweep script) can give the same explanation.
"""

from __future__ import annotations


def zero_score_diagnosis(total_abs_score: float, *, method: str, task_name: str, metric_name: str) -> str | None:
    """Why every edge scored 0, and what to do instead; None when some edge scored.

    ``total_abs_score`` is the sum of ``|score|`` over the graph. All-zero scores usually mean a
    gradient method met a metric that is flat at the clean run (kl and l2 to the clean output
    are 0 there, with zero gradient), so no ranking of edges exists to select from."""
    if total_abs_score != 0:
        return None
    return (
        f"method={method} scored every edge 0 on task {task_name!r} (metric {metric_name}); a "
        "gradient method sees nothing when the metric is flat at the clean run (kl and l2 to the "
        "clean output are). Use method=exact or method=acdc, or a metric such as logit_diff "
        "(task.metric=...)"
    )
