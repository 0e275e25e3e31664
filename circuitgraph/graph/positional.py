"""Position-resolved graphs: every node once per token position (``a1.h3@5``), as in
position-aware EAP, for tasks whose prompts share a template (equal lengths, no padding).

Edges are residual-stream reads, so they join a writer and a reader at the *same* position:
``u@p → v@p``. Information moves between positions only inside attention heads: the head's output
at position p reads its query input at p and its key/value inputs at every position p' ≤ p
(all positions for bidirectional attention). Those within-node dependencies are what
:func:`circuitgraph.circuit.prune` follows, so a circuit keeps ``input@2 → a0.h1.k@2`` only if
some ``a0.h1@p`` with p ≥ 2 is on a path to the logits.

The score matrix is ``[n_src·P, n_dst·P]`` with rows ``u·P + p``; only its position diagonal can
be non-zero, and :meth:`PositionalGraph.diagonal` views it as ``[n_src, n_dst, P]``.
"""

from __future__ import annotations

import torch

from circuitgraph.graph.graph import Graph


class PositionalGraph(Graph):
    """A :class:`Graph` whose nodes are (node, position) pairs; ``base`` is the position-free graph."""

    def __init__(self, base: Graph, positions: int, causal: bool = True) -> None:
        if base.neurons:
            raise ValueError("position-resolved graphs with neuron nodes are not supported yet; use one or the other")
        if base.sites:
            raise ValueError("position-resolved graphs with SAE sites are not supported yet; use one or the other")
        if positions < 1:
            raise ValueError(f"positions must be ≥ 1, got {positions}")
        self.base = base
        self.positions = P = positions
        self.causal = causal
        self.arch, self.split_qkv, self.neurons, self.sites = base.arch, base.split_qkv, {}, []
        self.model_name, self.model_hash = base.model_name, base.model_hash
        self.src_names = [f"{n}@{p}" for n in base.src_names for p in range(P)]
        self.dst_names = [f"{n}@{p}" for n in base.dst_names for p in range(P)]
        self.src_index = {n: i for i, n in enumerate(self.src_names)}
        self.dst_index = {n: i for i, n in enumerate(self.dst_names)}
        self.src_time = base.src_time.repeat_interleave(P)
        self.dst_time = base.dst_time.repeat_interleave(P)
        self.src_layer = base.src_layer.repeat_interleave(P)
        self.device = base.device
        eye = torch.eye(P, dtype=torch.bool, device=base.device)
        self.valid = (base.valid[:, None, :, None] & eye[None, :, None, :]).reshape(base.n_src * P, base.n_dst * P)
        self._scores = None
        self.score_info = {}
        self._in_circuit = None
        # node u@p reads: q (and MLP / logits inputs) at p; k and v at every position it attends to
        self.dst_owner = torch.tensor([-1] * len(self.dst_names))  # not unique with positions; use node_dsts
        self.node_dsts = []
        for s, name in enumerate(base.src_names):
            own = base.node_dsts[s].tolist()
            for p in range(P):
                cols = []
                for j in own:
                    letter = base.dst_names[j][-1] if base.dst_names[j][-2:] in (".k", ".v") else ""
                    if letter or (not base.split_qkv and name.startswith("a")):
                        reach = range(p + 1) if causal else range(P)
                        cols.extend(j * P + q for q in reach)
                    else:
                        cols.append(j * P + p)
                self.node_dsts.append(torch.tensor(sorted(cols), dtype=torch.long))

    @classmethod
    def from_model(cls, model, positions: int, split_qkv: bool = True) -> "PositionalGraph":  # type: ignore[override]
        base = Graph.from_model(model, split_qkv=split_qkv)
        return cls(base, positions, causal=getattr(model.cfg, "attention_dir", "causal") == "causal")

    def diagonal(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """``[n_src, n_dst, P]`` view of the position diagonal of ``t`` (default: the scores)."""
        t = self.scores if t is None else t
        b = self.base
        return t.view(b.n_src, self.positions, b.n_dst, self.positions).diagonal(0, 1, 3)

    def dst_slices(self) -> dict[str, slice]:
        return self.base.dst_slices()

    def src_slices(self) -> dict[str, slice]:
        return self.base.src_slices()

    def upstream(self, group: str):
        return self.base.upstream(group)

    def mlp_node_names(self, layer: int) -> list[str]:
        return self.base.mlp_node_names(layer)

    @property
    def logits_columns(self) -> torch.Tensor:
        j = self.base.dst_index["logits"]
        return torch.arange(j * self.positions, (j + 1) * self.positions)

    @property
    def input_rows(self) -> torch.Tensor:
        return torch.arange(self.positions)  # input@0 … input@{P-1}

    def position_free(self) -> torch.Tensor:
        """Scores summed over positions: ``[n_src, n_dst]`` of the base graph."""
        return self.diagonal().sum(-1)

    def to(self, device) -> "PositionalGraph":
        super().to(device)
        self.base.to(device)
        return self

    def __repr__(self) -> str:
        return (f"PositionalGraph({self.model_name or 'model'}: {self.base.n_src} sources × {self.positions} positions, "
                f"{self.n_edges} edges, split_qkv={self.split_qkv})")
