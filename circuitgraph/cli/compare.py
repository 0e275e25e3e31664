"""Tabulate a sweep: ``circuitgraph-compare outputs/multirun/<date>/<time>``.

Each run folder of the sweep holds ``summary.json`` (written last by a finished run) and Hydra's
``.hydra/overrides.yaml``. :func:`compare_runs` reads them into one row per run; the command
prints the rows as a Markdown table (or JSON / CSV). The overrides that differ between runs become
columns; those shared by every run are printed above the table. A run without ``summary.json``
(still running, failed or interrupted) is listed with status ``incomplete``.

Where a run compared its circuit with the zoo's known circuit, the row carries that comparison
(``gt_precision``, ``gt_recall``, ``gt_auc``). Below the table, the edge overlap between runs
(Jaccard: shared edges / edges in either circuit) says whether the settings found the same
circuit.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import yaml

# Figures copied from summary.json into a row, in table order.
FIGURES = (
    "method",
    "model",
    "task",
    "edges_kept",
    "edges_total",
    "faithfulness",
    "target",
    "cpr",
    "cmd",
    "gt_precision",
    "gt_recall",
    "gt_auc",
    "wall_time_s",
)
# Ground-truth figures: row key → key of summary.json's ``ground_truth``.
GROUND_TRUTH = {"gt_precision": "precision", "gt_recall": "recall", "gt_auc": "auc"}
MAX_OVERLAP_RUNS = 16  # larger sweeps get the overlap in JSON/CSV only
DEFAULT_COLUMNS = ("run", "status")
ALWAYS = ("edges_kept", "faithfulness")  # shown even when no run finished
COLLAPSIBLE = ("model", "task", "edges_total")  # moved above the table when every run shares them


def _is_run_dir(p: Path) -> bool:
    return any((p / f).is_file() for f in ("summary.json", ".hydra/config.yaml", "circuit.json"))


def _run_dirs(root: Path) -> list[Path]:
    if _is_run_dir(root):
        return [root]
    found = [
        p
        for p in root.rglob("*")
        if p.is_dir()
        and not p.name.startswith(".")
        and _is_run_dir(p)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]

    def key(p: Path):
        rel = p.relative_to(root).parts
        return [(0, int(x), "") if x.isdigit() else (1, 0, x) for x in rel]

    return sorted(found, key=key)


def _overrides(run: Path) -> dict[str, str]:
    f = run / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return {}
    try:
        items = yaml.safe_load(f.read_text()) or []
    except yaml.YAMLError:
        return {}
    out = {}
    for item in items:
        if isinstance(item, str) and "=" in item:
            k, v = item.split("=", 1)
            out[k.lstrip("+~")] = v
    return out


def compare_runs(directory: str | Path) -> list[dict]:
    """One dict per run under ``directory`` (a sweep folder, or a single run folder).

    Keys: ``run`` (path relative to ``directory``), ``status`` (``ok`` / ``incomplete``), the
    run's overrides (``"method": "eap"``, ``"circuit.target": "0.8"``, …, values as given on the
    command line), then the figures of its summary.json: ``method``, ``model``, ``task``,
    ``edges_kept``, ``edges_total``, ``faithfulness``, ``target``, ``cpr``, ``cmd``,
    ``gt_precision``, ``gt_recall``, ``gt_auc`` (against the zoo's known circuit, when the run
    compared with one), ``wall_time_s``, and ``edge_overlap`` (``{other run: Jaccard}``, see
    :func:`edge_overlap`). Rows are in job order."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} is not a directory; pass a sweep folder such as outputs/multirun/<date>/<time>"
        )
    rows = []
    for run in _run_dirs(root):
        rel = run.relative_to(root).as_posix() if run != root else "."
        row: dict = {"run": rel}
        summary = None
        sf = run / "summary.json"
        if sf.is_file():
            try:
                summary = json.loads(sf.read_text())
            except json.JSONDecodeError:
                summary = None
        row["status"] = summary.get("status", "ok") if isinstance(summary, dict) else "incomplete"
        over = _overrides(run)
        row.update(over)
        figures = dict(summary) if isinstance(summary, dict) else {}
        gt = figures.get("ground_truth")
        truth = gt if isinstance(gt, dict) else {}
        figures.update({k: truth.get(v) for k, v in GROUND_TRUTH.items()})
        for k in FIGURES:  # a finished run's own figure wins over the override of the same name
            if figures.get(k) is not None:
                row[k] = figures[k]
            else:
                row.setdefault(k, None)
        rows.append(row)
    overlaps = edge_overlap(root, [r["run"] for r in rows])
    for r in rows:
        r["edge_overlap"] = overlaps.get(r["run"], {})
    return rows


def _circuit_edges(run: Path) -> tuple[str | None, set[str]] | None:
    """``(model fingerprint, {"src->dst"})`` of a run's circuit.json, or None if it has none."""
    try:
        doc = json.loads((run / "circuit.json").read_text())
        model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
        return model.get("config_hash"), {f"{e[0]}->{e[1]}" for e in doc["edges"]}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def edge_overlap(directory: str | Path, runs: list[str]) -> dict[str, dict[str, float | None]]:
    """Jaccard overlap of the circuits' edges between every two runs (``runs`` relative to
    ``directory``); None between circuits of different models. Runs without a circuit are absent."""
    root = Path(directory)
    edges = {r: _circuit_edges(root / r) for r in runs}
    have = {r: e for r, e in edges.items() if e is not None}
    out: dict[str, dict[str, float | None]] = {}
    for a, (ha, ea) in have.items():
        out[a] = {}
        for b, (hb, eb) in have.items():
            if a != b:
                union = len(ea | eb)
                out[a][b] = None if ha != hb else (len(ea & eb) / union if union else 1.0)
    return out


def format_overlap(rows: list[dict]) -> str:
    """The edge overlap of :func:`compare_runs` rows as a Markdown matrix ('' if there is none)."""
    runs = [r["run"] for r in rows if r.get("edge_overlap")]
    if len(runs) < 2 or len(runs) > MAX_OVERLAP_RUNS:
        return ""
    by_run = {r["run"]: r["edge_overlap"] for r in rows}
    lines = [
        "edge overlap between runs (Jaccard: shared edges / edges in either circuit):",
        "",
        "| run | " + " | ".join(runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for a in runs:
        cells = ["1" if a == b else _fmt(by_run[a].get(b)) for b in runs]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _columns(rows: list[dict]) -> tuple[list[str], dict[str, str]]:
    """Table columns (varying overrides first) and the overrides shared by every run."""
    common, varying = _split_overrides(rows)
    figures = [k for k in FIGURES if any(r.get(k) is not None for r in rows) or k in ALWAYS]
    if len(rows) > 1:  # a figure every run shares (same model, same task) goes above the table
        for k in COLLAPSIBLE:
            vals = {str(r.get(k)) for r in rows}
            if k in figures and len(vals) == 1 and rows[0].get(k) is not None:
                common[k] = rows[0][k]
                figures.remove(k)
    if "circuit.target" in varying and "target" in figures:  # the same numbers twice
        figures.remove("target")
    return [*DEFAULT_COLUMNS, *varying, *figures], common


def _split_overrides(rows: list[dict]) -> tuple[dict, list[str]]:
    """``(overrides every run shares, with their value; override keys that vary)``."""
    override_keys: list[str] = []
    for r in rows:
        override_keys += [
            k for k in r if k not in (*DEFAULT_COLUMNS, *FIGURES, "edge_overlap") and k not in override_keys
        ]
    common, varying = {}, []
    for k in override_keys:
        vals = {str(r.get(k)) for r in rows}
        if len(rows) > 1 and len(vals) == 1 and all(k in r for r in rows):
            common[k] = rows[0][k]
        else:
            varying.append(k)
    return common, varying


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v).replace("|", "\\|")


def format_table(rows: list[dict], columns: list[str] | None = None, sort: str | None = None) -> str:
    """A Markdown table of :func:`compare_runs` rows (shared overrides listed above it)."""
    if not rows:
        return "(no runs found)"
    cols, common = _columns(rows)
    if columns:
        cols = list(columns)
    if sort:
        rows = sorted(
            rows,
            key=lambda r: (r.get(sort) is None, r.get(sort) if not isinstance(r.get(sort), str) else str(r.get(sort))),
        )
    lines = []
    if common and not columns:
        lines.append("common: " + " ".join(f"{k}={v}" for k, v in common.items()))
        lines.append("")
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    overlap = format_overlap(rows) if not columns else ""
    return "\n".join(lines) + (f"\n\n{overlap}" if overlap else "")


def latest_sweep(base: str | Path = "outputs/multirun") -> Path | None:
    """The newest sweep folder ``base/<date>/<time>`` (by name, which sorts by time)."""
    base = Path(base)
    if not base.is_dir():
        return None
    sweeps = sorted(p for d in base.iterdir() if d.is_dir() for p in d.iterdir() if p.is_dir())
    return sweeps[-1] if sweeps else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="circuitgraph-compare",
        description="Tabulate the runs of a circuitgraph sweep (python -m circuitgraph -m ...).",
    )
    ap.add_argument("directory", nargs="?", help="sweep folder (default: the newest under outputs/multirun)")
    ap.add_argument("--sort", help="sort rows by this column (e.g. faithfulness, edges_kept)")
    ap.add_argument("--columns", help="comma-separated columns to show (default: varying overrides + figures)")
    ap.add_argument("--format", choices=("markdown", "json", "csv"), default="markdown")
    a = ap.parse_args(argv)
    directory = Path(a.directory) if a.directory else latest_sweep()
    if directory is None:
        print("circuitgraph-compare: no sweep given and none found under outputs/multirun", file=sys.stderr)
        return 2
    try:
        rows = compare_runs(directory)
    except FileNotFoundError as e:
        print(f"circuitgraph-compare: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(
            f"circuitgraph-compare: no runs (folders with summary.json or .hydra/) under {directory}", file=sys.stderr
        )
        return 1
    cols = [c.strip() for c in a.columns.split(",")] if a.columns else None
    if a.format == "json":
        print(json.dumps(rows, indent=1))
    elif a.format == "csv":
        buf = io.StringIO()
        keys = cols or list(dict.fromkeys(k for r in rows for k in r if k != "edge_overlap"))
        w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        print(buf.getvalue(), end="")
    else:
        print(f"{directory}\n")
        print(format_table(rows, cols, a.sort))
    return 0


if __name__ == "__main__":
    sys.exit(main())
