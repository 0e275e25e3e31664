#!/usr/bin/env python
"""A feature-level circuit: the induction model with its shipped SAEs spliced in as graph nodes
(features, plus a ``rest`` and an error node per site), scored with EAP-IG, pruned to the smallest
circuit whose *patched* faithfulness reaches the target, re-measured, saved and drawn with each
feature labelled by its top-activating tokens.

    python examples/05_feature_circuit.py [--limit 16] [--target 0.8] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import torch

import circuitgraph as cg
from circuitgraph import zoo
from circuitgraph.export import write_html
from circuitgraph.graph import node_kind
from circuitgraph.sae import feature_labels, zoo_saes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="use the first N examples of the task")
    ap.add_argument("--target", type=float, default=0.8)
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    ap.add_argument("--out", default=None, help="folder for circuit.json and graph.html (default: a temporary one)")
    a = ap.parse_args()
    torch.set_num_threads(1)

    entry = zoo.load("induction")
    model, task = entry.model, entry.task("induction")
    if a.limit:
        task = task.select(slice(0, a.limit))
    saes = zoo_saes("induction")  # blocks.0.hook_attn_out and blocks.1.hook_resid_pre, 512 features each
    graph = cg.feature_graph(model, saes, task)  # features active on the task become nodes
    print(graph)
    print("feature nodes per site:", {s.name: len(s.features) for s in graph.sites})

    circuit = cg.minimal_circuit(model, graph, task, target=a.target, method="eap-ig", steps=a.steps)
    again = cg.faithfulness(model, graph, task, circuit.mask)  # an independent patched re-measurement
    print(f"{circuit}; re-measured faithfulness {again:.3f}")

    nodes = {n for e in graph.edge_names(circuit.mask) for n in (e.split("->")[0], cg.Graph.dst_node(e.split("->")[1]))}
    print("circuit nodes by kind:", dict(Counter(node_kind(n) for n in nodes)))
    into_k = graph.scores[:, graph.dst("a1.h3.k")].abs() * circuit.mask[:, graph.dst("a1.h3.k")]
    labels = feature_labels(model, graph, task)
    print("strongest inputs to the induction head's key (a1.h3.k):")
    for i in into_k.topk(5).indices.tolist():
        name = graph.src_names[i]
        top = labels.get(name, {}).get("top_tokens", [])[:3]
        print(
            f"  {name:22s} score {graph.scores[i, graph.dst('a1.h3.k')]:+.3f}  top tokens:",
            ", ".join(f"{t['context']} ({t['activation']:.2f})" for t in top) or "-",
        )

    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="circuitgraph-features-"))
    out.mkdir(parents=True, exist_ok=True)
    circuit.save(out / "circuit.json")
    html = write_html(
        circuit,
        out / "graph.html",
        node_info=labels,
        title=f"induction + SAEs: {circuit.n_edges} edges, faithfulness {again:.3f}",
    )
    print(f"circuit.json: {(out / 'circuit.json').resolve()}")
    print(f"graph.html: {Path(html).resolve()}")


if __name__ == "__main__":
    main()
