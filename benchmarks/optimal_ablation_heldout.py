"""Per-position optimal-ablation constants refitted for small induction circuits: in-sample KL
against held-out KL.

For mean ablation's 5-edge induction circuit and each of its 4-edge subsets, fit per-position
constants jointly for the circuit (Li & Janson's circuit objective, ``fit_optimal(circuit=...)``)
on all examples, and on the first half only, and measure the circuit's KL to the full model on the
examples the constants saw and on the other half. A constant per position can encode each
example's answer (the read position differs across examples), so an in-sample KL below the
threshold with a large held-out KL is memorisation, not a smaller circuit.

Usage:
    python benchmarks/optimal_ablation_heldout.py
"""

from __future__ import annotations

import itertools
import time

import torch

FIVE = ["a1.h3->logits", "a0.h1->a1.h3.k", "input->a1.h3.q", "input->a0.h1.v", "input->a1.h3.v"]


def main() -> None:
    import circuitgraph as cg
    from circuitgraph import zoo
    from circuitgraph.engine import Ablation, CircuitEvaluator

    torch.set_num_threads(1)
    entry = zoo.load("induction", device="cpu")
    model, task = entry.model, entry.tasks["induction"]
    g = cg.Graph.from_model(model)
    half = task.n_examples // 2
    fit_t, held_t = task.select(slice(0, half)), task.select(slice(half, task.n_examples))
    mean = Ablation("mean").prepare(model, g, task)

    def kl(t, abl, m) -> float:
        return float(CircuitEvaluator(model, g, t.with_metric("kl"), abl)(m[None])[0])

    for edges in [FIVE] + [list(c) for c in itertools.combinations(FIVE, 4)]:
        m = g.mask_from_edges(edges)
        t0 = time.perf_counter()
        on_all = Ablation("optimal", fit_kind="empty", per_position=True).fit_optimal(model, g, task, circuit=m)
        on_half = Ablation("optimal", fit_kind="empty", per_position=True).fit_optimal(model, g, fit_t, circuit=m)
        missing = sorted(set(FIVE) - set(edges))
        print(
            f"{len(edges)} edges (without {missing or '-'}): KL mean {kl(task, mean, m):.3f} | per-position optimal, "
            f"refitted: all {kl(task, on_all, m):.3f}, fit half {kl(fit_t, on_half, m):.3f}, held out "
            f"{kl(held_t, on_half, m):.3f} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
