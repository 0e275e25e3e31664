"""``circuitgraph show RUN_DIR|circuit.json``: a saved circuit in the terminal, no model needed.

Prints what :meth:`Circuit.summary` prints (the circuit in words, the comparison with the zoo's
known circuit when the run made one, the edges ranked with their raw score, whether each helps or
hurts the task, and whether it is in the ground truth), plus the run's scrubbing result and
caveats when ``summary.json`` is beside the circuit.

For a run directory it first says whether the directory holds a complete run
(:func:`circuitgraph.files.rundir.run_state`): ``complete`` (every file has the SHA-256 its
summary recorded), ``running`` (with the lock's holder), ``unfinished`` (interrupted or failed),
``mixed`` (files replaced since the summary was written, listed), or ``unverified`` (a run of an
older version). The exit status is 0 only for a circuit file or a complete run; ``--state`` prints
the state alone (as JSON with ``--json``).
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
from circuitgraph.files import rundir

_MEANING = {
    "complete": "a finished run; every file it lists has the SHA-256 it recorded",
    "unverified": "a finished run of an older circuitgraph (its summary has no file hashes to check)",
    "mixed": "summary.json says the run finished, but files differ from what it wrote: do not trust this folder",
    "running": "a run is writing into this folder now",
    "unfinished": "no finished run: the last run was interrupted, failed, or is yet to write its summary",
    "invalid": "summary.json is not a circuitgraph run summary",
}


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
    return rundir.read_summary(circuit_file.parent / rundir.SUMMARY) or {}


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


def is_run_directory(path: Path) -> bool:
    """A folder a run wrote into (not merely one that holds a saved circuit)."""
    return path.is_dir() and any(
        (path / n).exists() for n in (rundir.SUMMARY, rundir.PREVIOUS_SUMMARY, rundir.LOCK, ".hydra")
    )


def state_text(st: rundir.RunState) -> str:
    """What ``show`` says about a run directory before its circuit."""
    lines = [f"run directory: {st.directory}", f"state: {st.state} ({_MEANING[st.state]})"]
    if st.state == "running":
        lines.append(f"held by: {rundir.describe_holder(st.holder)}")
    elif st.state == "unfinished" and st.holder:
        lines.append(f"last run: {rundir.describe_holder(st.holder)} (it left its lock file: it was killed)")
    lines += [f"  {verdict:8s} {name}" for name, verdict in st.files.items()]
    lines += [f"problem: {p}" for p in st.problems]
    if st.previous:
        lines.append(f"{rundir.PREVIOUS_SUMMARY}: an earlier run's summary, retired by a later run ({st.previous})")
    return "\n".join(lines)


def state_json(st: rundir.RunState) -> str:
    doc = {
        "directory": str(st.directory),
        "state": st.state,
        "files": st.files,
        "problems": st.problems,
        "holder": st.holder,
        "previous": st.previous,
    }
    return json.dumps(doc, indent=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="circuitgraph show",
        description="Print a saved circuit: in words, and its edges ranked; for a run directory, first "
        "whether it holds a complete run.",
    )
    ap.add_argument("path", help="a run directory (outputs/<date>/<time>) or a circuit .json file")
    ap.add_argument("--top", type=int, default=20, help="edges to list (0: all; default %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the ranked edges (or with --state, the state) as JSON")
    ap.add_argument("--state", action="store_true", help="only say whether the run directory holds a complete run")
    a = ap.parse_args(argv)
    top = a.top or None
    path = Path(a.path).expanduser()
    st = rundir.run_state(path) if is_run_directory(path) else None
    if a.state:
        if st is None:
            print(f"circuitgraph show: {path} is not a run directory", file=sys.stderr)
            return 2
        print(state_json(st) if a.json else state_text(st))
        return 0 if st.complete else 1
    try:
        if a.json:
            rows = edge_rows(Circuit.load(find_circuit_file(path)), top)
            print(json.dumps([{**asdict(r), "effect": r.effect} for r in rows], indent=1))
        else:
            if st is not None:
                print(state_text(st))
            print(show_text(path, top))
    except (FileNotFoundError, CircuitGraphError) as e:
        print(f"circuitgraph show: {e}", file=sys.stderr)
        return 2
    return 0 if st is None or st.complete else 1
