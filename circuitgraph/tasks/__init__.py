"""Tasks (clean/corrupted prompt pairs with answers) and metrics."""

from circuitgraph.tasks.io import load_task
from circuitgraph.tasks.metrics import LOWER_IS_BETTER, METRICS, resolve_metric
from circuitgraph.tasks.task import Task

__all__ = ["Task", "load_task", "METRICS", "LOWER_IS_BETTER", "resolve_metric"]
