"""A run as a MIB circuit-localization-track submission folder.

MIB's evaluator (Mueller et al. 2025; the circuit-track repositories' ``run_evaluation.py`` and
``circuit_loading.py``) reads one folder per task and model, named ``<task>_<model>``, holding
either

* ``importances``: one EAP-IG graph JSON file with a floating-point score per edge. The evaluator
  builds its circuits itself: the top ``int(p · E)`` edges at p ∈ {0.1, 0.2, 0.5, 1, 2, 5, 10, 20,
  50, 100} %, pruned, ranked by signed score (CPR) and by |score| (CMD), higher = more important;
* ``circuits``: nine EAP-IG graph JSON files of binary membership (``in_graph``), one circuit of
  at most p % of the edges for p in :data:`SUBMISSION_PERCENTS`; it sorts them by size and adds
  the full model at 100 %.

Our scores estimate m(edge ablated) − m(clean); MIB's are computed on a loss, so for a metric where
higher is better (logit difference) the helpful edges carry *negative* scores here and positive
ones there. The files therefore hold ``score_sign · score`` with the sign recorded in their
``circuitgraph`` block, which :func:`~circuitgraph.export.formats.from_mib_json` (and so
:func:`read_mib_submission`) undoes. ``docs/circuit-schema.md`` shows the layout.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from circuitgraph.circuit.circuit import Circuit
from circuitgraph.circuit.selection import prune, top_n
from circuitgraph.errors import ConfigError, file_error
from circuitgraph.export.formats import from_mib_json, to_mib_json
from circuitgraph.graph.blocks import as_dense
from circuitgraph.tasks.metrics import LOWER_IS_BETTER

SUBMISSION_PERCENTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)
KINDS = ("importances", "circuits")
IMPORTANCES = "importances.json"
_NAME = re.compile(r"^[A-Za-z0-9.\-]+$")


def circuit_file_name(percent: float) -> str:
    """``edges_0.1pct.json`` … ``edges_50pct.json``."""
    return f"edges_{percent:g}pct.json"


def write_mib_submission(
    circuit: Circuit,
    folder: str | Path,
    task_name: str,
    model_name: str,
    kind: str = "importances",
    masks: list[torch.Tensor] | None = None,
) -> Path:
    """Write ``folder/<task_name>_<model_name>/`` for MIB's circuit track; returns that folder.

    ``kind="importances"``: ``importances.json`` with every edge's score (in MIB's sign: helpful
    edges positive) and the circuit's membership. ``kind="circuits"``: nine binary circuits, by
    default the pruned top ``int(p · E)`` edges by helpfulness (MIB's integer edge counting), or
    ``masks`` (nine bool masks, one per :data:`SUBMISSION_PERCENTS`, each within its budget) for
    circuits a method found itself (e.g. learned masks at chosen sizes)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown submission kind {kind!r}; choose one of {list(KINDS)}")
    for what, name in (("task_name", task_name), ("model_name", model_name)):
        if not _NAME.match(name) or "_" in name:
            raise ConfigError(
                f"{what} {name!r} must be letters, digits, '.' or '-' (MIB splits folder names at '_'), "
                "e.g. 'ioi' and 'gpt2'"
            )
    graph = circuit.graph
    metric = (circuit.metadata.get("metric") or (graph.score_info or {}).get("metric")) or "logit_diff"
    sign = 1 if metric in LOWER_IS_BETTER else -1
    out = Path(folder) / f"{task_name}_{model_name}"
    out.mkdir(parents=True, exist_ok=True)
    if kind == "importances":
        to_mib_json(circuit, out / IMPORTANCES, scores=True, score_sign=sign)
        return out
    E = graph.n_edges
    if masks is None:
        helpful = sign * as_dense(graph.scores)  # (top_n with absolute=False ranks by −scores)
        masks = [
            prune(graph, top_n(graph, int(E * p / 100 + 1e-9), absolute=False, scores=-helpful))
            for p in SUBMISSION_PERCENTS
        ]
    if len(masks) != len(SUBMISSION_PERCENTS):
        raise ConfigError(
            f"a circuits submission needs {len(SUBMISSION_PERCENTS)} masks (one per fraction), got {len(masks)}"
        )
    for p, m in zip(SUBMISSION_PERCENTS, masks):
        m = m.to(graph.valid.device).bool() & graph.valid
        if int(torch.count_nonzero(m)) > int(E * p / 100 + 1e-9):
            raise ConfigError(f"the circuit for {p:g} % holds {int(m.sum())} edges, more than int({p:g} % of {E})")
        to_mib_json(circuit, out / circuit_file_name(p), scores=False, mask=m, score_sign=sign)
    return out


def read_mib_submission(folder: str | Path, graph=None) -> dict[str, Circuit]:
    """Read a ``<task>_<model>`` submission folder back: ``{file stem: Circuit}``, for an
    importances file or the nine circuits (each file read by :func:`from_mib_json`)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise file_error(folder, "holds no .json circuit file (expected importances.json or edges_<p>pct.json files)")
    return {f.stem: from_mib_json(f, graph) for f in files}
