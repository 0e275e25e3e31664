"""Block-sparse edge tensors: per destination group, only the source rows that group can read.

A graph's edges are not scattered: every destination group (a layer's q/k/v inputs, an MLP's or
its neurons' inputs, an SAE site, the logits) reads one set of upstream sources, the same for every
column of the group (:meth:`Graph.upstream`). So the ``[n_src, n_dst]`` edge matrix is a union of
dense blocks ``[n_up(group), n_cols(group)]``, and every entry of every block is an edge. For SAE
graphs, whose sites cut the residual stream, those blocks hold 8 % of the dense matrix; memory then
scales with real edges, not with n_src × n_dst.

:class:`EdgeBlocks` holds scores (float) or circuit masks (bool) that way, optionally with leading
batch dimensions (``[K, n_up, n_cols]`` per block: K masks measured in one patched forward). It
answers the few tensor operations the engine uses on a dense matrix (``shape``, ``to``, slicing the
batch, ``[:, up, cols]`` for a group's own rows and columns, gathering ``[rows, cols]``), so the
patched forward and the circuit views take either layout; :meth:`dense` gives the ``[n_src, n_dst]``
view for small graphs.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from circuitgraph.errors import GraphError

DENSE_ENTRIES = 1 << 26  # graphs with more n_src × n_dst entries keep scores and masks as blocks by default


class BlockLayout:
    """Where each destination group's block sits in the dense matrix: its columns (a slice) and
    the rows it reads (a slice when contiguous, else a sorted index tensor)."""

    def __init__(self, graph: Any) -> None:
        if graph.positions:
            raise GraphError(
                "position-resolved graphs keep dense scores and masks (their edges are a position diagonal, "
                "not blocks); use the dense tensors"
            )
        dst = graph.dst_slices()
        # time order (what pruning walks), then column order
        self.names: list[str] = sorted(dst, key=lambda g: (int(graph.dst_time[dst[g].start]), dst[g].start))
        self.cols: dict[str, slice] = {g: dst[g] for g in self.names}
        self.rows: dict[str, slice | torch.Tensor] = {g: graph.upstream(g) for g in self.names}
        self.n_src, self.n_dst = graph.n_src, graph.n_dst
        self.device = graph.valid.device
        starts = torch.tensor([dst[g].start for g in self.names])
        self._col_order = starts.argsort()
        self._col_starts = starts[self._col_order]

    def n_rows(self, g: str) -> int:
        r = self.rows[g]
        return r.stop - r.start if isinstance(r, slice) else len(r)

    def row_index(self, g: str) -> torch.Tensor:
        r = self.rows[g]
        return torch.arange(r.start, r.stop, device=self.device) if isinstance(r, slice) else r.to(self.device)

    def local_rows(self, g: str, rows: torch.Tensor) -> torch.Tensor:
        """Positions within group ``g``'s block of source rows ``rows`` (which it must read)."""
        r = self.rows[g]
        if isinstance(r, slice):
            return rows - r.start
        r = r.to(rows.device)
        return torch.searchsorted(r, rows)

    def group_of(self, cols: slice) -> str:
        """The group whose columns contain ``cols``."""
        i = int(torch.searchsorted(self._col_starts, torch.tensor(cols.start), right=True)) - 1
        g = self.names[int(self._col_order[i])]
        full = self.cols[g]
        if not (full.start <= cols.start and (cols.stop or full.stop) <= full.stop):
            raise GraphError(f"columns {cols} cross destination groups; a block covers one group ({g}: {full})")
        return g

    def groups_of_columns(self, cols: torch.Tensor) -> torch.Tensor:
        """For each column index, the position of its group in :attr:`names`."""
        i = torch.searchsorted(self._col_starts.to(cols.device), cols.contiguous(), right=True) - 1
        return self._col_order.to(cols.device)[i]

    def n_entries(self) -> int:
        return sum(self.n_rows(g) * (c.stop - c.start) for g, c in self.cols.items())


def layout_of(graph: Any) -> BlockLayout:
    """The graph's block layout, computed once per graph."""
    lay = graph.__dict__.get("_block_layout")
    if lay is None:
        lay = graph.__dict__["_block_layout"] = BlockLayout(graph)
    return lay


class EdgeBlocks:
    """Edge values stored per destination group: ``blocks[g]`` is ``[*batch, n_up(g), n_cols(g)]``.
    Every entry is an edge, so nothing off the graph is stored or can be set."""

    def __init__(self, layout: BlockLayout, blocks: dict[str, torch.Tensor]) -> None:
        self.layout = layout
        self.blocks = blocks
        first = next(iter(blocks.values()))
        self.batch: tuple[int, ...] = tuple(first.shape[:-2])

    # ------------------------------------------------------------------ construction
    @classmethod
    def full(
        cls,
        graph: Any,
        value: float | bool = 0.0,
        dtype: torch.dtype = torch.float32,
        batch: tuple[int, ...] = (),
        device: torch.device | str | None = None,
    ) -> EdgeBlocks:
        lay = layout_of(graph)
        dev = device if device is not None else lay.device
        blocks = {
            g: torch.full((*batch, lay.n_rows(g), c.stop - c.start), value, dtype=dtype, device=dev)
            for g, c in lay.cols.items()
        }
        return cls(lay, blocks)

    @classmethod
    def zeros(cls, graph: Any, dtype: torch.dtype = torch.float32, batch: tuple[int, ...] = ()) -> EdgeBlocks:
        return cls.full(graph, False if dtype == torch.bool else 0.0, dtype, batch)

    @classmethod
    def from_dense(cls, graph: Any, t: torch.Tensor) -> EdgeBlocks:
        """The blocks of a dense ``[*batch, n_src, n_dst]`` tensor (entries off the graph dropped)."""
        return cls.from_dense_layout(layout_of(graph), t)

    @classmethod
    def from_dense_layout(cls, layout: BlockLayout, t: torch.Tensor) -> EdgeBlocks:
        rows = {g: r if isinstance(r, slice) else r.to(t.device) for g, r in layout.rows.items()}
        return cls(layout, {g: t[..., rows[g], c].contiguous() for g, c in layout.cols.items()})

    def like(self, blocks: dict[str, torch.Tensor]) -> EdgeBlocks:
        return EdgeBlocks(self.layout, blocks)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> EdgeBlocks:
        return self.like({g: fn(b) for g, b in self.blocks.items()})

    # ------------------------------------------------------------------ tensor-like facts
    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.batch, self.layout.n_src, self.layout.n_dst))

    @property
    def ndim(self) -> int:
        return len(self.batch) + 2

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.blocks.values())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self.blocks.values())).device

    def numel(self) -> int:
        return sum(b.numel() for b in self.blocks.values())

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.blocks.values())

    def to(self, *args: Any, **kw: Any) -> EdgeBlocks:
        return self.map(lambda b: b.to(*args, **kw))

    def float(self) -> EdgeBlocks:
        return self.map(lambda b: b.float())

    def detach(self) -> EdgeBlocks:
        return self.map(lambda b: b.detach())

    def cpu(self) -> EdgeBlocks:
        return self.to("cpu")

    def clone(self) -> EdgeBlocks:
        return self.map(lambda b: b.clone())

    def abs(self) -> EdgeBlocks:
        return self.map(lambda b: b.abs())

    def __neg__(self) -> EdgeBlocks:
        return self.map(lambda b: -b)

    def __mul__(self, other: Any) -> EdgeBlocks:
        if isinstance(other, EdgeBlocks):
            return self.like({g: b * other.blocks[g] for g, b in self.blocks.items()})
        return self.map(lambda b: b * other)

    __rmul__ = __mul__

    def __and__(self, other: Any) -> EdgeBlocks:
        if isinstance(other, EdgeBlocks):
            return self.like({g: b & other.blocks[g] for g, b in self.blocks.items()})
        if isinstance(other, torch.Tensor) and other.shape[-2:] == (self.layout.n_src, self.layout.n_dst):
            return self & EdgeBlocks.from_dense_layout(self.layout, other)
        return self.map(lambda b: b & other)

    def logical_not(self) -> EdgeBlocks:
        return self.map(lambda b: b.logical_not())

    def sum(self) -> torch.Tensor:
        return sum((b.sum() for b in self.blocks.values()), torch.zeros((), dtype=self.dtype, device=self.device))

    def any(self) -> torch.Tensor:
        return torch.tensor(any(bool(b.any()) for b in self.blocks.values()))

    def count_nonzero(self) -> int:
        return sum(int(torch.count_nonzero(b)) for b in self.blocks.values())

    # ------------------------------------------------------------------ views
    def dense(self, fill: builtins.float | bool = 0) -> torch.Tensor:
        """The ``[*batch, n_src, n_dst]`` dense view (a new tensor; ``fill`` off the graph). For
        small graphs: at feature scale it is what the blocks exist to avoid."""
        lay = self.layout
        out = torch.full((*self.batch, lay.n_src, lay.n_dst), fill, dtype=self.dtype, device=self.device)
        for g, c in lay.cols.items():
            r = lay.rows[g]
            if isinstance(r, slice):
                out[..., r, c] = self.blocks[g]
            else:
                out[..., r.to(self.device), c] = self.blocks[g]
        return out

    def nonzero(self) -> torch.Tensor:
        """``[E, 2]`` (row, column) of the non-zero entries, row-major like ``Tensor.nonzero``
        (unbatched stores only)."""
        if self.batch:
            raise GraphError("nonzero() of a batch of edge blocks: take one element first")
        lay = self.layout
        parts = []
        for g, c in lay.cols.items():
            nz = self.blocks[g].nonzero()
            if len(nz):
                rows = lay.row_index(g).to(nz.device)[nz[:, 0]]
                parts.append(torch.stack([rows, nz[:, 1] + c.start], 1))
        if not parts:
            return torch.zeros(0, 2, dtype=torch.long, device=self.device)
        idx = torch.cat(parts)
        order = (idx[:, 0] * lay.n_dst + idx[:, 1]).argsort()
        return idx[order]

    def gather(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Values at edges ``(rows[i], cols[i])`` (which must be edges of the graph)."""
        out = torch.zeros((*self.batch, len(rows)), dtype=self.dtype, device=self.device)
        for g, sel, r, c in self._by_group(rows, cols):
            out[..., sel] = self.blocks[g][..., r, c]
        return out

    def put(self, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> None:
        """Set the values at edges ``(rows[i], cols[i])``."""
        for g, sel, r, c in self._by_group(rows, cols):
            self.blocks[g][..., r, c] = values[..., sel].to(self.dtype)

    def _by_group(
        self, rows: torch.Tensor, cols: torch.Tensor
    ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per destination group holding some of the edges ``(rows[i], cols[i])``: its name, the
        edges' positions ``i``, and their rows and columns within its block."""
        lay = self.layout
        rows, cols = rows.to(self.device), cols.to(self.device)
        which = lay.groups_of_columns(cols)
        for i, g in enumerate(lay.names):
            sel = (which == i).nonzero()[:, 0]
            if len(sel):
                yield g, sel, lay.local_rows(g, rows[sel]), cols[sel] - lay.cols[g].start

    def __getitem__(self, idx: Any) -> Any:
        """What the engine indexes a dense edge tensor with: a batch index or slice (``m[2:4]``),
        ``[:, up, cols]`` / ``[up, cols]`` with a group's own upstream rows and columns within that
        group (the patched forward's readers; the block itself, no copy), or two index tensors
        ``[rows, cols]`` (values at those edges)."""
        if idx is None:  # a batch dimension of one
            return self.map(lambda b: b[None])
        if isinstance(idx, tuple) and len(idx) == 2 and all(isinstance(i, torch.Tensor) for i in idx):
            return self.gather(idx[0], idx[1])
        if isinstance(idx, tuple) and isinstance(idx[-1], slice) and len(idx) >= 2:
            lead, cols = idx[:-2], idx[-1]
            if any(not (isinstance(i, slice) and i == slice(None)) for i in lead):
                raise GraphError("edge blocks: only [:, up, cols] reads a group's block")
            g = self.layout.group_of(cols)
            full = self.layout.cols[g]
            start, stop = cols.start - full.start, (cols.stop or full.stop) - full.start
            return self.blocks[g][..., start:stop]
        if isinstance(idx, (int, slice)) and self.batch:
            return self.like({g: b[idx] for g, b in self.blocks.items()})
        raise GraphError(f"edge blocks cannot be indexed with {idx!r}; use .dense() for a dense view")


def stack(masks: Sequence[torch.Tensor | EdgeBlocks]) -> torch.Tensor | EdgeBlocks:
    """``torch.stack`` for edge tensors of either layout (all of one layout)."""
    if all(isinstance(m, torch.Tensor) for m in masks):
        return torch.stack(list(masks))  # type: ignore[arg-type]
    if not all(isinstance(m, EdgeBlocks) for m in masks):
        raise GraphError("cannot stack dense edge tensors with edge blocks; convert with EdgeBlocks.from_dense")
    first = masks[0]
    assert isinstance(first, EdgeBlocks)
    return first.like({g: torch.stack([m.blocks[g] for m in masks]) for g in first.blocks})  # type: ignore[union-attr]


def as_blocks(graph: Any, t: torch.Tensor | EdgeBlocks) -> EdgeBlocks:
    """``t`` as edge blocks (a dense tensor is cut into them)."""
    return t if isinstance(t, EdgeBlocks) else EdgeBlocks.from_dense(graph, t)


def as_dense(t: torch.Tensor | EdgeBlocks) -> torch.Tensor:
    """``t`` as a dense ``[..., n_src, n_dst]`` tensor (edge blocks are materialised)."""
    return t.dense() if isinstance(t, EdgeBlocks) else t
