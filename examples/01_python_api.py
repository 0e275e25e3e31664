#!/usr/bin/env python
"""The Python API on a shipped zoo model: score every edge, find the minimal faithful circuit,
measure it, compare it with the model's known circuit, and save it.

    python examples/01_python_api.py                       # induction model, EAP-IG, target 0.9
    python examples/01_python_api.py --model tracr_reverse --method eap --limit 16 --out /tmp/c

The command-line equivalent is ``python -m circuitgraph model=induction method=eap-ig``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

import circuitgraph as cg
from circuitgraph import zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.environ.get("CG_EXAMPLE_MODEL", "induction"), choices=zoo.list())
    ap.add_argument("--method", default="eap-ig", choices=cg.METHODS)
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N examples")
    ap.add_argument("--out", default=None, help="folder for circuit.json (default: a temporary folder)")
    a = ap.parse_args()
    torch.set_num_threads(1)  # the zoo models are tiny: one thread is fastest

    entry = zoo.load(a.model)  # a HookedTransformer plus its tasks and known circuits
    model, task = entry.model, entry.task()  # the entry's first task
    if a.limit:
        task = task.select(slice(0, a.limit))
    print(f"{entry.name}: {entry.description.splitlines()[0][:100]}")
    print(f"task {task.name!r}: {task.n_examples} examples × {task.seq_len} tokens, metric {task.metric_name}")

    graph = cg.Graph.from_model(model)  # every edge of the computational graph
    cg.attribute(model, graph, task, method=a.method, progress=False)  # fills graph.scores
    top = cg.top_n(graph, 5)
    print("top-5 edges by |score|:", ", ".join(graph.edge_names(top)))

    circuit = cg.minimal_circuit(model, graph, task, target=a.target, method=None)  # keep the scores
    print(circuit, "edges:", ", ".join(circuit.edge_names()))

    # Faithfulness measured again by patching, and the curve over MIB's edge fractions.
    f = cg.faithfulness(model, graph, task, circuit.mask)
    curve = cg.faithfulness_curve(model, graph, task)
    print(f"faithfulness {f:.3f}; CPR {curve.cpr:.3f} (higher is better), CMD {curve.cmd:.3f} (lower is better)")

    # The zoo knows which components the model really uses.
    if "corrupted" in entry.ground_truth:
        gt = entry.ground_truth_for("corrupted")
        found = circuit.nodes() - {"input", "logits"}
        known = set(gt.nodes) - {"input", "logits"}
        print(f"known circuit nodes {sorted(known)}; found {sorted(found)}; shared {sorted(found & known)}")

    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="circuitgraph-"))
    path = circuit.save(out / "circuit.json")  # + circuit.safetensors
    again = cg.Circuit.load(path, model)
    assert again.n_edges == circuit.n_edges
    print(f"saved {path}")


if __name__ == "__main__":
    main()
