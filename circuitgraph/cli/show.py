"""``circuitgraph show DIR``: is this run directory a complete run, and are its files its own?

Prints the directory's state (``complete``, ``running`` with the lock holder, ``unfinished``,
``mixed`` with the files that differ from the summary's hashes, ``unverified`` for runs of older
versions), the run's figures when it finished, and each listed file. Exit status 0 only for a
complete run, so scripts can rely on it (``circuitgraph show DIR && ...``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from circuitgraph.files import rundir

_MEANING = {
    "complete": "a finished run; every file it lists has the SHA-256 it recorded",
    "unverified": "a finished run of an older circuitgraph (its summary has no file hashes to check)",
    "mixed": "summary.json says the run finished, but files differ from what it wrote: do not trust this folder",
    "running": "a run is writing into this folder now",
    "unfinished": "no finished run: the last run was interrupted, failed, or is yet to write its summary",
    "invalid": "summary.json is not a circuitgraph run summary",
}


def describe(st: rundir.RunState) -> str:
    """The report ``show`` prints for one directory."""
    lines = [f"run directory: {st.directory}", f"state: {st.state} ({_MEANING[st.state]})"]
    if st.state == "running":
        lines.append(f"held by: {rundir.describe_holder(st.holder)}")
    elif st.state == "unfinished" and st.holder:
        lines.append(f"last run: {rundir.describe_holder(st.holder)} (it left its lock file: it was killed)")
    s = st.summary or {}
    if s.get("status") == "ok":
        faith = s.get("faithfulness")
        lines.append(
            f"run: {s.get('model')} / {s.get('task')} / {s.get('method')} / ablation {s.get('ablation')}: "
            f"{s.get('edges_kept')} of {s.get('edges_total')} edges"
            + (f", faithfulness {faith:.3f}" if isinstance(faith, (int, float)) else "")
        )
    for name, verdict in st.files.items():
        lines.append(f"  {verdict:8s} {name}")
    lines += [f"problem: {p}" for p in st.problems]
    if st.previous:
        lines.append(f"{rundir.PREVIOUS_SUMMARY}: an earlier run's summary, retired by a later run ({st.previous})")
    return "\n".join(lines)


def show(argv: list[str]) -> int:
    """Entry point of ``circuitgraph show``; returns the exit status (0: complete)."""
    ap = argparse.ArgumentParser(
        prog="circuitgraph show", description="Check a run directory: complete, running, unfinished or mixed."
    )
    ap.add_argument("directory", help="a run directory (hydra.run.dir)")
    ap.add_argument("--json", action="store_true", help="print the state as JSON")
    a = ap.parse_args(argv)
    if not Path(a.directory).is_dir():
        print(f"circuitgraph show: {a.directory} is not a directory; pass a run directory", file=sys.stderr)
        return 2
    st = rundir.run_state(a.directory)
    if a.json:
        doc = {
            "directory": str(st.directory),
            "state": st.state,
            "files": st.files,
            "problems": st.problems,
            "holder": st.holder,
            "previous": st.previous,
        }
        print(json.dumps(doc, indent=1))
    else:
        print(describe(st), file=sys.stdout)
    return 0 if st.complete else 1
