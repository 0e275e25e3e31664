"""From scores to edge masks: top-n, threshold, and pruning to input→logits paths. (The minimal
circuit, which measures, is :mod:`circuitgraph.circuit.minimal`.)

Every function takes scores in either layout: a dense ``[n_src, n_dst]`` tensor, or
:class:`~circuitgraph.graph.blocks.EdgeBlocks` (per destination group, only the rows it reads),
and returns masks in the same layout. Neither makes a full-size copy of the scores: rankings are
computed a block of rows (or a group's block) at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, overload

import torch

from circuitgraph.errors import ConfigError
from circuitgraph.graph import Graph
from circuitgraph.graph.blocks import EdgeBlocks, layout_of

ROWS_PER_PIECE = 1 << 24  # entries per piece of a dense matrix ranked at once


def ranking(graph: Graph, absolute: bool = True, scores: torch.Tensor | EdgeBlocks | None = None):
    """What edges are ranked by: |score|, or −score (helpfulness under a higher-is-better
    metric) when ``absolute=False``. A new tensor of the scores' size: selection itself works
    a piece at a time (:func:`top_n`)."""
    s = graph.scores if scores is None else scores
    return s.abs() if absolute else -s


class _Pieces:
    """The scores as pieces, each ``(values, valid or None, global rows, first column)``, with the
    ranking of a piece computed on demand (``-inf`` off the graph), and masks written back per piece."""

    def __init__(
        self, graph: Graph | None, scores: torch.Tensor | EdgeBlocks, absolute: bool | None, block: int = ROWS_PER_PIECE
    ) -> None:
        self.scores, self.absolute = scores, absolute  # absolute None: the scores are the ranks
        self.items: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int]]
        if isinstance(scores, EdgeBlocks):
            lay = scores.layout
            self.items = [(scores.blocks[g], None, lay.row_index(g), lay.cols[g].start) for g in lay.names]
            self.n_rows = lay.n_src
        else:
            R, C = scores.shape
            step = max(1, block // max(C, 1))
            rows = torch.arange(R, device=scores.device)
            self.items = [
                (scores[i : i + step], None if graph is None else graph.valid[i : i + step], rows[i : i + step], 0)
                for i in range(0, R, step)
            ]
            self.n_rows = R

    @classmethod
    def ranked(cls, r: torch.Tensor, block: int = ROWS_PER_PIECE) -> _Pieces:
        """Ranks given directly (``-inf`` for what may never be chosen), a dense ``[R, C]``."""
        return cls(None, r, None, block)

    def ranks(self) -> Iterator[torch.Tensor]:
        for values, valid, _, _ in self.items:
            if self.absolute is None:
                yield values
                continue
            r = values.abs() if self.absolute else -values
            if valid is not None:
                r = r.masked_fill(~valid, float("-inf"))
            yield r

    def mask(self, parts: list[torch.Tensor]) -> torch.Tensor | EdgeBlocks:
        if isinstance(self.scores, EdgeBlocks):
            return self.scores.like(dict(zip(self.scores.layout.names, parts)))
        return torch.cat(parts)


@overload
def top_n(graph: Graph, n: int, absolute: bool = ..., *, scores: torch.Tensor) -> torch.Tensor: ...
@overload
def top_n(graph: Graph, n: int, absolute: bool = ..., *, scores: EdgeBlocks) -> EdgeBlocks: ...
@overload
def top_n(graph: Graph, n: int, absolute: bool = ..., scores: None = ...) -> Any: ...
def top_n(
    graph: Graph, n: int, absolute: bool = True, scores: torch.Tensor | EdgeBlocks | None = None
) -> torch.Tensor | EdgeBlocks | Any:
    """The ``n`` highest-ranked valid edges (by |score|, or by −score when ``absolute=False``);
    ties at the cut go to the first edges in row-major order (the same in either layout)."""
    if n < 0:
        raise ConfigError(f"n must be ≥ 0, got {n}")
    s = graph.scores if scores is None else scores
    return _largest(_Pieces(graph, s, absolute), min(n, graph.n_edges))


def _largest(pieces: _Pieces, k: int) -> torch.Tensor | EdgeBlocks:
    """A bool mask of the ``k`` largest ranks (ties: first in row-major order).

    Memory stays O(piece): a whole-matrix sort (or CPU ``topk``) keeps an int64 index per entry,
    8 bytes per edge, more than the scores themselves at neuron or feature scale. So the k-th value
    is found by a radix selection on the float's bits (two histogram passes, a piece at a time),
    and ties at it are filled in row order."""
    ninf = float("-inf")  # (off the graph; never chosen, so k is at most the other entries)
    k = min(k, sum(int(torch.count_nonzero(r > ninf)) for r in pieces.ranks()))
    if k == 0:
        return pieces.mask([torch.zeros(v.shape, dtype=torch.bool, device=v.device) for v, *_ in pieces.items])
    kth = _kth_largest(pieces, k)
    parts = [r > kth for r in pieces.ranks()]  # everything above it, then ties in row order
    need = k - sum(int(torch.count_nonzero(p)) for p in parts)
    if need > 0:
        _fill_ties(pieces, parts, kth, need)
    return pieces.mask(parts)


def _order_keys(r: torch.Tensor) -> torch.Tensor:
    """int32 keys that order like the float32 values of ``r`` (−0 read as +0, so they tie)."""
    bits = (r.float() + 0.0).view(torch.int32)
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


def _kth_largest(pieces: _Pieces, k: int) -> float:
    """The k-th largest rank (1 ≤ k ≤ entries): the high 16 bits of its order key from one
    histogram over every piece, the low 16 from a second over the entries in that bin."""
    high, above = _top_bin(pieces, k, lambda key: (key >> 16) + 32768, None)
    low, _ = _top_bin(pieces, k - above, lambda key: key & 0xFFFF, lambda key: (key >> 16) == high - 32768)
    key = (high - 32768) * 65536 + low  # (a signed int32)
    bits = key if key >= 0 else key ^ 0x7FFFFFFF
    return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32))


def _top_bin(pieces: _Pieces, k: int, digit, keep) -> tuple[int, int]:
    """The 16-bit digit bin holding the k-th largest key (among those ``keep`` selects), and how
    many keys lie in higher bins."""
    hist = torch.zeros(1 << 16, dtype=torch.long)
    for r in pieces.ranks():
        key = _order_keys(r).flatten()
        if keep is not None:
            key = key[keep(key)]
        hist += torch.bincount(digit(key).long(), minlength=1 << 16).cpu()
    from_top = hist.flip(0).cumsum(0)
    j = int(torch.searchsorted(from_top, torch.tensor(k)))
    return (1 << 16) - 1 - j, int(from_top[j - 1]) if j > 0 else 0


def _fill_ties(pieces: _Pieces, parts: list[torch.Tensor], kth: float, need: int) -> None:
    """Add the first ``need`` entries equal to ``kth`` in row-major order of the dense matrix:
    whole rows while their tie counts fit, then the first columns of the last row."""
    per_row = torch.zeros(pieces.n_rows, dtype=torch.long, device=parts[0].device if parts else None)
    for r, (_, _, rows, _) in zip(pieces.ranks(), pieces.items):
        per_row.index_add_(0, rows.to(per_row.device), (r == kth).sum(1))
    cum = per_row.cumsum(0)
    last = int(torch.searchsorted(cum, torch.tensor(need, device=cum.device)))  # first row reaching need
    before = int(cum[last - 1]) if last > 0 else 0
    in_last: list[tuple[int, int, int]] = []  # (global column, piece, local column) of ties in row `last`
    for p, (r, (_, _, rows, c0)) in enumerate(zip(pieces.ranks(), pieces.items)):
        ties = r == kth
        parts[p] |= ties & (rows < last)[:, None].to(ties.device)
        hit = (rows == last).nonzero()[:, 0]
        if len(hit):
            cols = ties[int(hit[0])].nonzero()[:, 0].tolist()
            in_last += [(c0 + c, p, c) for c in cols]
    for _, p, c in sorted(in_last)[: need - before]:
        row = int((pieces.items[p][2] == last).nonzero()[0, 0])
        parts[p][row, c] = True


@overload
def threshold(graph: Graph, tau: float, absolute: bool = ..., *, scores: torch.Tensor) -> torch.Tensor: ...
@overload
def threshold(graph: Graph, tau: float, absolute: bool = ..., *, scores: EdgeBlocks) -> EdgeBlocks: ...
@overload
def threshold(graph: Graph, tau: float, absolute: bool = ..., scores: None = ...) -> Any: ...
def threshold(
    graph: Graph, tau: float, absolute: bool = True, scores: torch.Tensor | EdgeBlocks | None = None
) -> torch.Tensor | EdgeBlocks | Any:
    """Valid edges whose |score| (or −score) is at least ``tau``."""
    pieces = _Pieces(graph, graph.scores if scores is None else scores, absolute)
    return pieces.mask([r >= tau for r in pieces.ranks()])


@overload
def prune(graph: Graph, mask: torch.Tensor) -> torch.Tensor: ...
@overload
def prune(graph: Graph, mask: EdgeBlocks) -> EdgeBlocks: ...
def prune(graph: Graph, mask: torch.Tensor | EdgeBlocks) -> torch.Tensor | EdgeBlocks:
    """Drop edges that lie on no path from ``input`` to ``logits``: they cannot carry a clean/ablated
    difference to the output. One pass forward and one backward over nodes (not edges); for edge
    blocks, over destination groups."""
    if isinstance(mask, EdgeBlocks):
        return _prune_blocks(graph, mask)
    mask = mask & graph.valid
    reach = torch.zeros(graph.n_src, dtype=torch.bool, device=mask.device)  # reachable from input
    inputs = graph.input_rows.to(mask.device)
    reach[inputs] = True
    for s in range(graph.n_src):
        if len(graph.node_dsts[s]):  # every node but the input reads something
            reach[s] = bool((mask[:, graph.node_dsts[s]] & reach[:, None]).any())
    reads_live = torch.zeros(graph.n_dst, dtype=torch.bool, device=mask.device)  # owner reaches logits
    reads_live[graph.logits_columns] = True
    for s in range(graph.n_src - 1, -1, -1):
        if bool((mask[s] & reads_live).any()):
            reads_live[graph.node_dsts[s]] = True
    return mask & reach[:, None] & reads_live[None, :]


def _prune_blocks(graph: Graph, mask: EdgeBlocks) -> EdgeBlocks:
    """:func:`prune` a group at a time. Groups are in residual time, and an edge joins a source
    written strictly before its reader, so a node's inputs all sit in groups before any group
    that reads it: one forward pass settles what the input reaches, one backward pass what reaches
    the logits."""
    lay = layout_of(graph)
    dev = mask.device
    owner = graph.dst_owner.to(dev)  # the source node each destination belongs to (logits: -1)
    reach = torch.zeros(graph.n_src, dtype=torch.bool, device=dev)
    reach[graph.input_rows.to(dev)] = True
    for g in lay.names:
        cols = lay.cols[g]
        read = (mask.blocks[g] & reach[lay.row_index(g).to(dev)][:, None]).any(0)  # [n_cols]
        own = owner[cols]
        hit = own >= 0
        # (a node may own several columns of a group, q/k/v: counted, then "any")
        reached = torch.zeros(graph.n_src, dtype=torch.int32, device=dev).index_add_(0, own[hit], read[hit].int())
        reach |= reached > 0
    live = torch.zeros(graph.n_src, dtype=torch.bool, device=dev)  # the node reaches the logits
    col_live: dict[str, torch.Tensor] = {}
    for g in reversed(lay.names):
        own = owner[lay.cols[g]]
        cl = torch.where(own >= 0, live[own.clamp(min=0)], torch.ones_like(own, dtype=torch.bool))
        col_live[g] = cl
        rows = lay.row_index(g).to(dev)
        live[rows] |= (mask.blocks[g] & cl[None]).any(1)  # (a group's rows are distinct)
    return mask.like(
        {g: mask.blocks[g] & reach[lay.row_index(g).to(dev)][:, None] & col_live[g][None] for g in lay.names}
    )
