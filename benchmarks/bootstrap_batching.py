"""Bootstrap resamples of learned edge masks: trained as one batch of masks, or one run each.

Both train the same resamples (example weights from bootstrap multiplicities) at one λ for the same
steps; the batch should give the same circuits in less time (the cached ablations, minibatches and
gate noise are shared, and one patched forward carries every resample's mask).

Usage:
    python benchmarks/bootstrap_batching.py [model] [convention] [lambda] [resamples]
    python benchmarks/bootstrap_batching.py tracr_hist corrupted 0.1 25
"""

from __future__ import annotations

import sys
import time

import torch


def main() -> None:
    import circuitgraph as cg
    from circuitgraph import zoo
    from circuitgraph.circuit.learned import learn_edge_masks
    from circuitgraph.evaluation.stability import resample_indices

    args = sys.argv[1:] + ["tracr_hist", "corrupted", "0.1", "25"][len(sys.argv) - 1 :]
    name, conv, lam, n = args[0], args[1], float(args[2]), int(args[3])
    torch.set_num_threads(1)
    estimator = "sampled" if name.startswith("tracr_") else "hard-concrete"
    entry = zoo.load(name, device="cpu")
    gt = entry.ground_truth[conv]
    task = entry.tasks[gt.task]
    graph = cg.Graph.from_model(entry.model)
    idx = resample_indices(task.n_examples, n, seed=0)
    counts = torch.zeros(n, task.n_examples, dtype=torch.float64)
    counts.scatter_add_(1, idx, torch.ones(idx.shape, dtype=torch.float64))
    kw = dict(lambdas=[lam], ablation=gt.ablation, steps=200, estimator=estimator)
    t0 = time.perf_counter()
    batched = learn_edge_masks(entry.model, graph, task, weights=counts, **kw)
    t1 = time.perf_counter()
    alone = [learn_edge_masks(entry.model, graph, task, weights=counts[r : r + 1], **kw).masks[0] for r in range(n)]
    t2 = time.perf_counter()
    same = sum(bool(torch.equal(a, b)) for a, b in zip(alone, batched.masks))
    print(
        f"{name}/{conv} λ={lam} resamples={n}: batched {t1 - t0:.1f} s, one run each {t2 - t1:.1f} s "
        f"({(t2 - t1) / (t1 - t0):.1f}x); identical circuits {same}/{n}"
    )


if __name__ == "__main__":
    main()
