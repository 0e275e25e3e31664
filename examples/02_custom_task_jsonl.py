#!/usr/bin/env python
"""A custom task from a JSONL file: token-id prompts for the zoo's induction model.

Each line of ``examples/data/induction_repeats.jsonl`` is one example::

    {"clean": [0, 6, 34, ...], "corrupted": [0, 6, 34, ...], "answer": 37, "wrong": 69}

(regenerate it with ``examples/data/make_induction_repeats.py``). Text prompts work the same way
for models with a tokenizer: ``{"clean": "When Mary and John ...", "answer": " Mary", ...}``.
CSV files with the same columns work too.

    python examples/02_custom_task_jsonl.py [--task FILE] [--method eap] [--limit 16]

Command-line equivalent::

    python -m circuitgraph task=file task.path=examples/data/induction_repeats.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import circuitgraph as cg
from circuitgraph import zoo

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default=str(HERE / "data" / "induction_repeats.jsonl"))
    ap.add_argument("--method", default="eap-ig", choices=cg.METHODS)
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)

    entry = zoo.load("induction")
    model = entry.model
    task = cg.load_task(a.task, model, metric="logit_diff")  # read at each prompt's last token
    if a.limit:
        task = task.select(slice(0, a.limit))
    with torch.no_grad():
        clean = task.score(task.run(model, task.clean)).mean()
        corrupted = task.score(task.run(model, task.corrupted)).mean()
    print(f"task {task.name!r}: {task.n_examples} examples; logit diff clean {clean:.2f}, corrupted {corrupted:.2f}")

    graph = cg.Graph.from_model(model)
    circuit = cg.minimal_circuit(model, graph, task, target=a.target, method=a.method)
    print(circuit)
    for src, dst, score in circuit.edges():
        print(f"  {src:>6} -> {dst:<10} {score:+.3f}")

    gt = entry.ground_truth_for("corrupted")
    heads = sorted(n for n in circuit.nodes() if n.startswith("a"))
    print(f"heads used: {heads}; the zoo's known circuit: {sorted(n for n in gt.nodes if n.startswith('a'))}")


if __name__ == "__main__":
    main()
