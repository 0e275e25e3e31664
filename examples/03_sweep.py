#!/usr/bin/env python
"""A Hydra sweep and its comparison table: two methods × two targets, four runs.

Runs, in a subprocess::

    python -m circuitgraph -m method=eap,eap-ig circuit.target=0.8,0.9

which writes one folder per run under ``outputs/multirun/<date>/<time>/`` (here: ``--out``), then
tabulates them with :func:`circuitgraph.cli.compare_runs` — the same table as::

    circuitgraph-compare outputs/multirun/<date>/<time>

Options: ``--quick`` (16 examples, no HTML/PNG) and ``--parallel`` (joblib launcher, needs
``pip install hydra-joblib-launcher``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from circuitgraph.cli import compare_runs, format_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="sweep folder (default: a new temporary folder)")
    ap.add_argument("--methods", default="eap,eap-ig")
    ap.add_argument("--targets", default="0.8,0.9")
    ap.add_argument("--quick", action="store_true", help="16 examples and only circuit.json + summary.json")
    ap.add_argument("--parallel", action="store_true", help="run the jobs with the joblib launcher")
    a = ap.parse_args()
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="circuitgraph-sweep-"))

    cmd = [
        sys.executable,
        "-m",
        "circuitgraph",
        "-m",
        f"method={a.methods}",
        f"circuit.target={a.targets}",
        f"hydra.sweep.dir={out}",
        "progress=false",
    ]
    if a.quick:
        cmd += ["task.limit=16", "export=minimal"]
    if a.parallel:
        cmd += ["hydra/launcher=local_parallel", "threads=1"]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)

    rows = compare_runs(out)
    print()
    print(format_table(rows, sort="faithfulness"))
    best = min(
        (
            r
            for r in rows
            if r["status"] == "ok"
            and r["faithfulness"] is not None
            and r["target"] is not None
            and r["faithfulness"] >= r["target"]
        ),
        key=lambda r: r["edges_kept"],
        default=None,
    )
    if best:
        print(
            f"\nsmallest circuit that reached its target: run {best['run']} "
            f"({best['method']}, {best['edges_kept']} edges, faithfulness {best['faithfulness']:.3f})"
        )


if __name__ == "__main__":
    main()
