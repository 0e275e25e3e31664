#!/usr/bin/env python
"""Write the interactive HTML view of a circuit and print its path; open it in a browser only
when a display exists (a desktop session, not an SSH shell or CI).

    python examples/04_open_html.py [--out graph.html] [--no-browser]

Every ``python -m circuitgraph`` run writes the same viewer as ``graph.html`` in its run folder
(``export.open_browser=true`` opens it).
"""

from __future__ import annotations

import argparse
import tempfile
import webbrowser
from pathlib import Path

import torch

import circuitgraph as cg
from circuitgraph import zoo
from circuitgraph.cli.main import display_available
from circuitgraph.export import write_html


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="induction", choices=zoo.list())
    ap.add_argument("--out", default=None, help="HTML file (default: in a temporary folder)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--no-browser", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)

    entry = zoo.load(a.model)
    model, task = entry.model, entry.task()
    if a.limit:
        task = task.select(slice(0, a.limit))
    graph = cg.Graph.from_model(model)
    circuit = cg.minimal_circuit(model, graph, task, target=0.9, method="eap")

    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="circuitgraph-html-")) / "graph.html"
    path = write_html(
        circuit, out, title=f"{entry.name}: {circuit.n_edges} edges, faithfulness {circuit.faithfulness:.3f}"
    )
    print(f"graph.html: {Path(path).resolve()}")
    if not a.no_browser and display_available():
        webbrowser.open(Path(path).resolve().as_uri())
    else:
        print("(no display: open the file above in a browser)")


if __name__ == "__main__":
    main()
