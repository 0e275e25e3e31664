"""Memory-bounded batching over examples and over edge masks, shared by attribution and evaluation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from circuitgraph.engine.sites import site_sae
from circuitgraph.engine.sources import coefficient_blocks
from circuitgraph.errors import GraphError, TaskError
from circuitgraph.graph import Graph
from circuitgraph.graph.blocks import layout_of
from circuitgraph.models.backend import as_backend


def example_chunks(task: Any, batch_size: int) -> Iterator[tuple[slice, Any, float]]:
    """Yield ``(idx, sub_task, weight)`` covering the task; weights (example fractions) sum to 1."""
    n = task.n_examples
    for i in range(0, n, batch_size):
        j = min(n, i + batch_size)
        idx = slice(i, j)
        yield idx, (task if (i == 0 and j == n) else task.select(idx)), (j - i) / n


def auto_batch_size(
    graph: Graph,
    task: Any,
    budget_bytes: float = 1.5e9,
    lowrank: bool = False,
    copies: float = 3.0,
    reserved_bytes: float = 0.0,
) -> int:
    """Examples per chunk so that the [n_src, batch, pos, d] source buffers stay within budget.

    ``lowrank``: attribution, where neurons and SAE features are a scalar per position (their
    direction is shared), so only the other rows cost a d-vector; otherwise a patched forward's,
    where the rows of :func:`~circuitgraph.engine.sources.coefficient_blocks` are scalars.
    ``copies``: how many such buffers are held at once (ablated, clean, deltas; attribution adds
    its own, e.g. the deltas as a post-norm's Jacobian sees them); ``reserved_bytes``: taken off
    the budget first, for buffers whose size does not grow with the chunk."""
    node, d = graph.node_graph, graph.arch.d_model
    n_lowrank = lowrank_rows(graph) if lowrank else node.n_src - dense_sources(graph)
    per_position = (node.n_src - n_lowrank) * d + n_lowrank
    per_position += sum(s.d_sae + d for s in node.sites)  # each site's activations and error, per run
    per_example = per_position * task.seq_len * 4 * copies
    budget = max(budget_bytes - reserved_bytes, 0.0)
    return max(1, min(task.n_examples, int(budget // max(per_example, 1))))


def lowrank_rows(graph: Graph) -> int:
    """Sources that attribution keeps as a scalar per position times a fixed direction: neurons
    and SAE features (:class:`~circuitgraph.engine.tensors.LowRankSources`)."""
    node = graph.node_graph
    return sum(len(ids) for ids in node.neurons.values()) + sum(len(s.features) for s in node.sites)


def dense_sources(graph: Graph) -> int:
    """Sources that a patched forward holds as d-vectors (SAE features and neurons are coefficients
    there, see :func:`~circuitgraph.engine.sources.coefficient_blocks`)."""
    return graph.node_graph.n_src - sum(r.stop - r.start for r in coefficient_blocks(graph).values())


MEMORY_BUDGET = 3e9  # bytes for a CircuitEvaluator's mask batches and ablation cache, by default
CACHE_SHARE = 2 / 3  # of the budget, for the cached ablated activations (the rest: mask batches)


def mask_bytes(graph: Graph) -> int:
    """Bytes of one bool edge mask in the graph's layout (dense, or only its blocks)."""
    return layout_of(graph).n_entries() if graph.uses_blocks else graph.valid.numel()  # (positional: dense)


def mask_batch_size(graph: Graph, chunk: Any, budget_bytes: float = 1.0e9) -> int:
    """How many edge masks one patched forward may carry (each tiles the chunk once, and holds its
    bool mask and removal mask, in the graph's layout, and its readers' float removal blocks)."""
    rows = dense_sources(graph)
    if graph.arch.post_norms:  # each post-norm group's live input and its norm (engine/post_norms.py)
        rows += 2 * (graph.arch.n_layers + len(graph.node_graph.neurons))
    per_mask = rows * chunk.n_examples * chunk.seq_len * graph.arch.d_model * 4 * 2
    # its mask and removal mask (bool), and each reader's removal block as floats (edges only)
    per_mask += 2 * mask_bytes(graph) + 4 * layout_of(graph.node_graph).n_entries() * (graph.positions or 1)
    return max(1, int(budget_bytes // max(per_mask, 1)))


def check_graph(model: Any, graph: Graph, task: Any = None) -> None:
    """Refuse a graph built for another model (or, position-resolved, for other prompt lengths);
    move it (and its SAEs) to the model's device, where every engine tensor lives."""
    P = graph.positions
    bk = as_backend(model)
    if P and task is not None:
        padded = task.attention_mask is not None and not bool(task.attention_mask.bool().all())
        if task.seq_len != P or padded:
            raise TaskError(
                f"this graph resolves {P} token positions, but the task's prompts have {task.seq_len} tokens"
                f"{' with padding' if padded else ''}; positions need prompts of one template length with no "
                "padding. Build the graph with PositionalGraph.from_model(model, positions=task.seq_len)."
            )
    if graph.model_hash and graph.model_hash != bk.fingerprint():
        raise GraphError(
            "this graph was built for a different model (config hash mismatch); build it with Graph.from_model(model)"
        )
    arch = bk.architecture()
    if (graph.arch.n_layers, graph.arch.n_heads) != (arch.n_layers, arch.n_heads):
        raise GraphError("graph shape does not match the model; build it with Graph.from_model(model)")
    for fact in ("parallel_attn_mlp", "post_norms"):  # they change which edges exist and what they mean
        if getattr(graph.arch, fact) != getattr(arch, fact):
            raise GraphError(
                f"the graph says {fact}={getattr(graph.arch, fact)} but the model has {fact}={getattr(arch, fact)}; "
                "build the graph with Graph.from_model(model)"
            )
    device = bk.device
    if graph.valid.device != device:
        graph.to(device)
    for site in graph.node_graph.sites:
        site_sae(graph.node_graph, site).to(device)
