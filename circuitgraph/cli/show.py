"""``circuitgraph show RUN_DIR|circuit.json``: a saved circuit in the terminal, no model needed.

Prints what :meth:`Circuit.summary` prints (the circuit in words, the comparison with the zoo's
known circuit when the run made one, the edges ranked with their raw score, whether each helps or
hurts the task, and whether it is in the ground truth), plus the run's scrubbing result and
caveats when ``summary.json`` is beside the circuit.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from circuitgraph.circuit import Circuit
from circuitgraph.circuit.summary import edge_rows
from circuitgraph.errors import CircuitGraphError


def find_circuit_file(path: str | Path) -> Path:
    """``path`` itself when it is a circuit file, ``path/circuit.json`` for a run directory."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "circuit.json").is_file():
            return p / "circuit.json"
        raise FileNotFoundError(
            f"{p} holds no circuit.json; give a run directory (outputs/<date>/<time>) or a circuit file"
        )
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist; give a run directory or a circuit .json file")
    return p


def _run_summary(circuit_file: Path) -> dict:
    f = circuit_file.parent / "summary.json"
    try:
        doc = json.loads(f.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def show_text(path: str | Path, top: int | None = 20) -> str:
    """The text ``circuitgraph show`` prints for a run directory or circuit file."""
    cf = find_circuit_file(path)
    circuit = Circuit.load(cf)
    lines = [str(cf), circuit.summary(top=top)]
    run = _run_summary(cf)
    for key, label in (("circuit", "the circuit"), ("file", "the hypothesis file")):
        r = (run.get("scrubbing") or {}).get(key)
        if r:
            lines.append(
                f"causal scrubbing: {label} recovers {r['loss_recovered']:.3f} of the loss "
                f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
            )
    for topic, text in (run.get("caveats") or {}).items():
        lines.append(f"caveat ({topic}): {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="circuitgraph show", description="Print a saved circuit: in words, and its edges ranked."
    )
    ap.add_argument("path", help="a run directory (outputs/<date>/<time>) or a circuit .json file")
    ap.add_argument("--top", type=int, default=20, help="edges to list (0: all; default %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the ranked edges as JSON")
    a = ap.parse_args(argv)
    top = a.top or None
    try:
        if a.json:
            rows = edge_rows(Circuit.load(find_circuit_file(a.path)), top)
            print(json.dumps([{**asdict(r), "effect": r.effect} for r in rows], indent=1))
        else:
            print(show_text(a.path, top))
    except (FileNotFoundError, CircuitGraphError) as e:
        print(f"circuitgraph show: {e}", file=sys.stderr)
        return 2
    return 0
