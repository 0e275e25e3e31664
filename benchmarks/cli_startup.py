"""How long ``circuitgraph --help`` takes, and what it imports (issue 12: "under 3 s").

Runs ``python -m circuitgraph --help`` ``--runs`` times in fresh interpreters and prints the median
wall time, the median CPU time (user + system, which load on a shared machine inflates less) and
whether TransformerLens or matplotlib were imported (they were the slow part; --help needs neither).

Usage:
    python benchmarks/cli_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run() -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one ``--help``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "circuitgraph", "--help"], cwd=REPO, capture_output=True, check=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def heavy_imports() -> list[str]:
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "circuitgraph", "--help"], cwd=REPO, capture_output=True, text=True
    )
    names = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time")}
    return sorted(names & {"transformer_lens", "matplotlib", "pyvis", "transformers"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    one_run()  # warm the file cache and the bytecode
    runs = [one_run() for _ in range(a.runs)]
    wall = statistics.median(w for w, _ in runs)
    cpu = statistics.median(c for _, c in runs)
    print(f"circuitgraph --help: median wall {wall:.2f} s, median CPU {cpu:.2f} s over {a.runs} runs")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; heavy imports: {heavy_imports() or 'none'}")


if __name__ == "__main__":
    main()
