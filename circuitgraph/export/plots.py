"""Static figures of a run: the faithfulness curve as a PNG.

matplotlib is imported inside the function that draws: it is heavy to import and only a run that
writes a PNG needs it (a missing install then costs that file, not the run's others)."""

from __future__ import annotations

from pathlib import Path

from circuitgraph.atomic import atomic_write
from circuitgraph.circuit import Circuit
from circuitgraph.evaluation import FaithfulnessCurve
from circuitgraph.graph import Graph


def curve_title(model_label: str, task_name: str, method: str, curve: FaithfulnessCurve) -> str:
    """The PNG's title: what was run, and the curve's two summary figures."""
    return f"{model_label} / {task_name} / {method}:  CPR = {curve.cpr:.3f}   CMD = {curve.cmd:.3f}"


def write_curve_png(
    path: str | Path, curve: FaithfulnessCurve, circuit: Circuit, graph: Graph, title: str, target: float | None = None
) -> Path:
    """Plot the faithfulness curve (edges ranked by helpfulness and by |score|) with the chosen
    circuit marked, so one picture shows how far the circuit is from the best of its size.

    Uses matplotlib's Agg canvas directly: no pyplot state, no display. Raises ImportError when
    matplotlib is missing (the caller decides whether that is fatal)."""
    # optional and heavy: imported only when a PNG is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    shown = [i for i, p in enumerate(curve.percents) if p > 0]  # (a log axis has no 0 %)
    x = [curve.percents[i] for i in shown]
    ax.plot(x, [curve.signed[i] for i in shown], "o-", color="#1f77b4", label="ranked by helpfulness (CPR: area)")
    ax.plot(
        x, [curve.absolute[i] for i in shown], "s--", color="#ff7f0e", label="ranked by |score| (CMD: area of |1 − f|)"
    )
    ax.axhline(1.0, color="0.4", lw=0.8)
    ax.axhline(0.0, color="0.7", lw=0.8)
    if target is not None:
        ax.axhline(target, color="#2ca02c", lw=0.8, ls=":", label=f"target {target:g}")
    if circuit.faithfulness is not None and graph.n_edges:
        pct = max(100.0 * circuit.n_edges / graph.n_edges, min(x))
        ax.plot(
            [pct],
            [circuit.faithfulness],
            "*",
            ms=14,
            color="#d62728",
            label=f"circuit: {circuit.n_edges} edges, f = {circuit.faithfulness:.3f}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("edges kept (% of all edges, log scale)")
    ax.set_ylabel("faithfulness")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return atomic_write(path, lambda p: fig.savefig(str(p), format="png"))
