"""a(live) − a(ablated) of every source during a patched forward, kept as compactly as its readers
allow.

A removed edge u→v makes v read ``live_input_v − (a_u(live) − a_u(ablated))``, so each reader
needs ``Σ_u r[k, u, c] · D_u`` over its removed upstream edges. Heads, MLPs and SAE
``rest``/``err`` nodes keep ``D_u`` as a d-vector per (mask, example, position). SAE features
write ``coef · W_dec[i]`` and neurons ``post_i · W_out[i]``, so they keep only the coefficient
delta ``[n, K, B, P]`` (:func:`~circuitgraph.engine.sources.coefficient_blocks`): a graph with tens
of thousands of feature or neuron nodes never holds ``[n, K, B, P, d]``.

A circuit is usually far smaller than the graph (or nearly all of it), so most reader columns
remove all of their upstream edges or none: each column's sum is ``base · T + Σ_{exceptions}
(r − base) D_u`` with ``T`` the sum over every upstream row (computed once per block) and the
exceptions few. Its cost then scales with the circuit's edges, not with n_up × columns × d;
columns without exceptions share one input (:meth:`LiveDeltas.split_columns`: a layer's neurons).
SAE features read the same way through their encoder rows (:meth:`LiveDeltas.projected`): the base
through the upstream total, each exception through one virtual weight ``W_dec[u] · W_enc[:, j]``,
so no ``[n_up, n]`` virtual-weight matrix is formed for a small circuit.

With ``differentiable=True`` (learned edge masks, fitted ablations) the live activations keep their
autograd history, so ``D_v`` of a downstream node carries the effect of every gate upstream of it:
the gradient of the loss with respect to a gate is then the true gradient of the relaxed forward.
Deltas are then kept as the recorded blocks themselves (no preallocated buffer written in place,
which autograd could not differentiate through), and each reader sums over the blocks it reads.

Behind a norm after a sublayer (Gemma-2/3), a layer's heads (or neurons) are not terms of the
residual stream: a reader loses ``norm(S) − norm(S − Σ removed D_u)`` of such a group instead of
``Σ removed D_u`` (:mod:`circuitgraph.engine.post_norms`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from circuitgraph.engine.post_norms import GroupMix, NormGroup
from circuitgraph.engine.sources import coefficient_blocks, coefficient_rows
from circuitgraph.engine.tensors import CompactSources, frozen
from circuitgraph.graph import Graph

_CHUNK = 2**25  # elements of a [K, B, P, columns, d] temporary (post-norm readers of SAE features)
_SPARSE = 8  # a reader's sum goes through its exceptions when they are under 1/_SPARSE of its (row, column) pairs


class LiveDeltas:
    """Dense rows ``[n_dense, K, B, P, d]`` plus one coefficient block per SAE site's features and
    per neuron layer."""

    def __init__(
        self,
        graph: Graph,
        ablated: torch.Tensor | CompactSources,
        K: int,
        directions: dict[str, torch.Tensor] | None = None,
        groups: list[NormGroup] | None = None,
        differentiable: bool = False,
    ) -> None:
        """``ablated``: ``[n_src, B, P, d]``, or :class:`~circuitgraph.engine.tensors.CompactSources`;
        ``directions``: each coefficient block's write directions
        (:func:`~circuitgraph.engine.sources.block_directions`); ``groups``: the graph's post-norm
        groups (:func:`~circuitgraph.engine.post_norms.norm_groups`)."""
        _, B, P, d = ablated.shape
        self.K, self.B, self.P, self.d = K, B, P, d
        self.ablated = ablated
        self.differentiable = differentiable
        device = ablated.device
        self.device, self.dtype = device, ablated.dtype
        dense = ~coefficient_rows(graph).to(device)
        # block name → (first row, write directions [n, d], ablated coefficients [n, B, P])
        self.blocks: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}
        self.coefs: dict[str, torch.Tensor] = {}  # block name → coefficient deltas [n, K, B, P], once recorded
        self._totals: dict[str, torch.Tensor] = {}  # block name → Σ of its rows' deltas [K, B, P, d]
        for name, rows in coefficient_blocks(graph).items():
            assert directions is not None  # (a graph with coefficient blocks)
            start, W = rows.start, directions[name].to(device=device, dtype=self.dtype)
            if isinstance(ablated, CompactSources):
                coef = ablated.coefs[name]
            else:  # dense ablated rows hold coef · W[i]: read the coefficients back off them
                coef = torch.einsum("ibpd,id->ibp", ablated[rows], W) / (W * W).sum(1).clamp_min(1e-30)[:, None, None]
            self.blocks[name] = (start, W, coef)
        self.is_dense = dense
        self.pos = torch.cumsum(dense, 0) - 1  # row → index among the dense rows
        # the ablated dense rows, indexed like self.dense (CompactSources hold exactly those)
        self.ablated_dense = ablated.dense if isinstance(ablated, CompactSources) else None
        self.mix = GroupMix(list(groups or []))
        self.group_of_row = torch.full((graph.n_src,), -1, dtype=torch.long, device=device)
        for i, group in enumerate(self.mix.groups):
            self.group_of_row[group.rows] = i
        self.simple = not self.blocks and not self.mix.groups  # dense rows are the graph's rows, all additive
        self.dense: torch.Tensor | None = None
        self._parts: list[tuple[int, torch.Tensor]] = []  # differentiable: (first dense row, D [n, K, B, P, d])
        if not differentiable:
            self.dense = torch.empty(int(dense.sum()), K, B, P, d, dtype=ablated.dtype, device=device)

    def live(self, t: torch.Tensor) -> torch.Tensor:
        """How a live activation is kept: detached (``frozen``), or with its autograd history when
        differentiable (upcast to float32 from half precision either way)."""
        if not self.differentiable:
            return frozen(t)
        return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t

    # ---------------------------------------------------------------------------------- recording
    def record(self, rows: slice, live: torch.Tensor) -> None:
        """Live activations ``[n, K, B, P, d]`` (or anything reshaping to it) of dense rows ``rows``."""
        at = int(self.pos[rows.start])
        n = rows.stop - rows.start
        # CompactSources hold exactly the dense rows (self.ablated_dense); a tensor holds every row
        ablated = self.ablated
        ref = ablated.dense[at : at + n] if isinstance(ablated, CompactSources) else ablated[rows]
        live = live.reshape(n, self.K, self.B, self.P, self.d)
        D = live - ref[:, None]
        if self.dense is None:
            self._parts.append((at, D))
        else:
            self.dense[at : at + n] = D
        group = next((i for i, g in enumerate(self.mix.groups) if g.rows == rows and g.which == 1), None)
        if group is not None:  # a layer's heads, behind its post-attention norm: their live norm input
            self.mix.record(group, self.mix.norm_input(group, live))

    def record_norm_input(self, rows: slice, S: torch.Tensor) -> None:
        """The live norm input ``S [K, B, P, d]`` of the post-norm group whose rows are ``rows``
        (for groups recorded in parts: a layer's neurons, then its ``rest``)."""
        group = next(i for i, g in enumerate(self.mix.groups) if g.rows == rows)
        self.mix.record(group, S.reshape(self.K, self.B, self.P, self.d))

    def record_coefs(self, block: str, coef: torch.Tensor) -> None:
        """Live coefficients ``[n, K, B, P]`` of a coefficient block (a site's features, a layer's
        neurons)."""
        _, _, ablated = self.blocks[block]
        self.coefs[block] = coef.reshape(len(ablated), self.K, self.B, self.P) - ablated[:, None]

    def rows(self, up: slice | torch.Tensor) -> torch.Tensor:
        """Dense ``D`` for upstream rows ``up`` (all dense; a view when ``up`` is a slice of a simple graph)."""
        if self.simple and self.dense is not None:
            return self.dense[up]
        return self._at(self.pos[_as_rows(up, self.device)])

    def _at(self, idx: torch.Tensor) -> torch.Tensor:
        """``D`` of dense rows ``idx`` (a copy when differentiable: gathered from the recorded blocks)."""
        if self.dense is not None:
            return self.dense[idx]
        pieces, where = [], []
        for at, D in self._parts:
            inside = (idx >= at) & (idx < at + len(D))
            if bool(inside.any()):
                pieces.append(D[idx[inside] - at])
                where.append(inside.nonzero()[:, 0])
        return torch.cat(pieces)[torch.argsort(torch.cat(where))]

    def _weighted(self, r: torch.Tensor, idx: torch.Tensor, eq: str = "kuc,ukbpd->kbpcd") -> torch.Tensor:
        """``Σ_u r[k, u, c] · D_u`` → ``[K, B, P, C, d]`` over dense rows ``idx`` (``r [K, len(idx), C]``).
        Differentiable: one term per recorded block, each block used as it is (no gathered copy that
        autograd would have to keep alive)."""
        if self.dense is not None:
            return torch.einsum(eq, r, self.dense[idx])
        out = None
        for at, D in self._parts:
            inside = (idx >= at) & (idx < at + len(D))
            if not bool(inside.any()):
                continue
            sel = idx[inside] - at
            whole = len(sel) == len(D) and bool((sel == torch.arange(len(D), device=sel.device)).all())
            term = torch.einsum(eq, r[:, inside], D if whole else D[sel])
            out = term if out is None else out + term
        if out is None:
            return torch.zeros(self.K, self.B, self.P, r.shape[2], self.d, dtype=self.dtype, device=self.device)
        return out

    # ---------------------------------------------------------------------------------- reading
    def removed_sum(self, r: torch.Tensor, up: slice | torch.Tensor) -> torch.Tensor:
        """What each reader column loses, ``[K, B, P, C, d]``, for removals ``r [K, n_up, C]`` (or
        ``[K, n_up, C, P]``: per position; bool or float) over the upstream rows ``up`` (in that
        order): ``Σ_u r[k, u, c] · D_u`` for additive rows, the norm of the column's own mix for the
        rows of a post-norm group."""
        # per-position removals take the sums below: a column's base and exceptions (and the
        # shared inputs of split_columns) are per column, not per (column, position)
        if self.blocks and self.dense is not None and r.ndim == 3:
            out = self._sum_by_exceptions(r, up)
            if out is not None:
                return out
        r = r.to(self.dtype)
        eq = "kucp,ukbpd->kbpcd" if r.ndim == 4 else "kuc,ukbpd->kbpcd"
        if self.simple and self.dense is not None:
            return torch.einsum(eq, r, self.dense[up])
        if not self.blocks and isinstance(up, slice) and self.dense is not None:
            # post-norm groups only: no gathered copy of the rows
            additive = (self.group_of_row[up] < 0).to(r.dtype)
            out = torch.einsum(eq, r * additive.view(1, -1, *([1] * (r.ndim - 2))), self.dense[up])
            self._add_group_losses(r, _as_rows(up, self.device), out)
            return out
        up = _as_rows(up, self.device)
        keep = self.is_dense[up] & (self.group_of_row[up] < 0)
        out = self._weighted(r[:, keep], self.pos[up[keep]], eq)
        self._add_group_losses(r, up, out)
        K, C, BP = self.K, r.shape[2], self.B * self.P
        for name, (start, W, _) in self.blocks.items():
            inside = (up >= start) & (up < start + len(W))
            if not bool(inside.any()):
                continue
            r_b = r[:, inside]  # [K, n_b, C(, P)]
            if not bool(r_b.any()):
                continue
            n_b = r_b.shape[1]
            coef = self.coefs[name][up[inside] - start]  # [n_b, K, B, P]
            A = coef.reshape(n_b, K, -1).permute(1, 2, 0)  # [K, BP, n_b]
            W_b = W[up[inside] - start]
            # Σ_u r[k,u,c] coef_u W_u: weight the coefficients per reader column, then one matmul
            step = max(1, _CHUNK // (K * BP * n_b))  # columns per [K, BP, columns, n_b] temporary
            parts = []
            for c in range(0, C, step):
                r_c = r_b[:, :, c : c + step]
                if r.ndim == 4:  # per position: [K, B, P, columns, n_b]
                    weighted = torch.einsum("ukbp,kucp->kbpcu", coef, r_c).reshape(K, BP, -1, n_b)
                else:
                    weighted = A[:, :, None, :] * r_c.transpose(1, 2)[:, None]  # [K, BP, columns, n_b]
                parts.append(weighted @ W_b)
            out = out + torch.cat(parts, 2).reshape(out.shape)
        return out

    def split_columns(
        self, r: torch.Tensor, up: slice | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Reader columns that need no input of their own: ``(base [K, C] bool, total, own [C] bool)``.
        A column outside ``own`` loses ``total [K, B, P, d]`` (every upstream row's delta) in the
        masks where ``base`` is set and nothing elsewhere; only the ``own`` columns need
        :meth:`removed_sum`. ``r [K, n_up, C]`` as for :meth:`removed_sum`."""
        K, C = r.shape[0], r.shape[2]
        nothing = torch.zeros(K, C, dtype=torch.bool, device=r.device)
        if not self.blocks or self.dense is None or r.ndim != 3:
            # nothing to share; per position (``r [K, n_up, C, P]``) every column with a removal at
            # some position gets its own input (the dense path: base and total are per column)
            hit = (r != 0).any(-1) if r.ndim == 4 else r != 0
            return nothing, None, hit.any(0).any(0)
        up = _as_rows(up, self.device)
        additive = self.group_of_row[up] < 0
        r_add = r if bool(additive.all()) else r[:, additive]
        base = self._base(r_add)
        own = (r_add != base.to(r.dtype)[:, None]).any(0).any(0)
        if not bool(additive.all()):
            own |= (r[:, ~additive] != 0).any(0).any(0)
        total = self._total(up[additive]) if bool((base & ~own).any()) else None
        return base, total, own

    def own_reads(
        self,
        x: torch.Tensor,
        r: torch.Tensor,
        up: slice | torch.Tensor,
        norm: Callable[[torch.Tensor], torch.Tensor],
        weights: list[tuple[torch.Tensor, torch.Tensor | None]],
    ) -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]]:
        """Readers that each normalise their own input and read it through their own column (a
        layer's neurons: ln2 and ``W_in``; a transcoder's features: its norm and ``W_enc``): the
        pre-activations that change, given the live input ``x [K, B, P, d]`` and the removals
        ``r [K, n_up, C]`` (or ``[K, n_up, C, P]``: per position, each column then reads its own
        input). Per read ``(W [d, C], b [C] | None)`` of ``weights``, a list of
        ``(columns [j], values [K, B, P, j], in which masks [K, j] | None: all)``.

        Columns without exceptions (:meth:`split_columns`) share one input per mask, ``x`` (left
        as it is) or ``x − total``; only the others get ``x − Σ their removed deltas`` as a
        d-vector each, a chunk of columns at a time."""
        out: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]] = [[] for _ in weights]

        def add(y: torch.Tensor, which: torch.Tensor, where: torch.Tensor | None) -> None:
            normed = self.live(norm(y))  # [K, B, P, d] (one input for all of ``which``) or [K, B, P, j, d]
            for k, (W, b) in enumerate(weights):
                new = normed @ W[:, which] if normed.ndim == 4 else torch.einsum("kbpjd,dj->kbpj", normed, W[:, which])
                out[k].append((which, new if b is None else new + b[which], where))

        base, total, own = self.split_columns(r, up)
        shared = (base & ~own).any(0)  # columns that read x − total in some mask
        if total is not None and bool(shared.any()):
            add(x - total.to(x.dtype), shared.nonzero()[:, 0], base[:, shared])
        mine = own.nonzero()[:, 0]
        step = max(1, _CHUNK // (self.K * self.B * self.P * self.d))
        for s in range(0, len(mine), step):
            j = mine[s : s + step]
            add(x[..., None, :] - self.removed_sum(r[:, :, j], up).to(x.dtype), j, None)
        return out

    @staticmethod
    def _base(r: torch.Tensor) -> torch.Tensor:
        """``[K, C]`` bool: columns of ``r [K, n, C]`` that remove more than half of their rows."""
        removed = _count(r if r.dtype == torch.bool else r >= 0.5, dim=1)
        return 2 * removed > r.shape[1]

    def _exceptions(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """``(base [K, C], exceptions [K, n, C] bool, their count)`` of removals ``r [K, n, C]``:
        the entries that differ from their column's base; None when they are too many (over
        1/_SPARSE of the entries) for a sum over them to pay."""
        base = self._base(r)
        exceptions = r != base.to(r.dtype)[:, None]
        n_exceptions = int(_count(exceptions))
        if n_exceptions * _SPARSE > exceptions.numel():
            return None
        return base, exceptions, n_exceptions

    def _sum_by_exceptions(self, r: torch.Tensor, up: slice | torch.Tensor) -> torch.Tensor | None:
        """:meth:`removed_sum` as ``base · T + Σ_{exceptions} (r − base) · D_u`` (see the module
        docstring); None when the exceptions are too many for that to pay."""
        up = _as_rows(up, self.device)
        additive = self.group_of_row[up] < 0
        whole = bool(additive.all())
        r_add, up_add = (r, up) if whole else (r[:, additive], up[additive])
        sparse = self._exceptions(r_add)
        if sparse is None:
            return None
        base, exceptions, n_exceptions = sparse
        K, C = r.shape[0], r.shape[2]
        B, P, d = self.B, self.P, self.d
        out = torch.zeros(K, C, B, P, d, dtype=self.dtype, device=self.device)
        if bool(base.any()):
            out += base.to(self.dtype)[:, :, None, None, None] * self._total(up_add)[:, None]
        if n_exceptions:
            k, i, c = exceptions.nonzero().unbind(1)
            rows, target = up_add[i], k * C + c  # each exception's graph row, and its (mask, column)
            value = r_add[k, i, c].to(self.dtype) - base[k, c].to(self.dtype)
            flat = out.view(K * C, B * P * d)
            dense = self.is_dense[rows]
            dense_up = self.is_dense[up_add]
            if int(dense.sum()) * _SPARSE > K * int(dense_up.sum()) * C:  # many: one matmul over the dense rows
                assert self.dense is not None  # (not differentiable)
                E = r_add[:, dense_up].to(self.dtype) - base.to(self.dtype)[:, None]  # [K, n_dense, C]
                out += torch.einsum("kuc,ukbpd->kcbpd", E, self.dense[self.pos[up_add[dense_up]]])
            elif bool(dense.any()):
                self._dense_exceptions(flat, rows[dense], k[dense], target[dense], value[dense])
            for name, (start, W, _) in self.blocks.items():
                inside = (rows >= start) & (rows < start + len(W))
                if bool(inside.any()):
                    self._block_exceptions(flat, name, rows[inside] - start, k[inside], target[inside], value[inside])
        out = out.permute(0, 2, 3, 1, 4)  # [K, B, P, C, d]
        if not whole:
            out = out.contiguous()
            self._add_group_losses(r, up, out)
        return out

    def _dense_exceptions(
        self, flat: torch.Tensor, rows: torch.Tensor, k: torch.Tensor, target: torch.Tensor, value: torch.Tensor
    ) -> None:
        """Add ``value · D_row[k]`` of dense rows into ``flat [K·C, B·P·d]`` at ``target``."""
        assert self.dense is not None  # (not differentiable)
        step = max(1, _CHUNK // flat.shape[1])
        for s in range(0, len(rows), step):
            e = slice(s, s + step)
            D = self.dense[self.pos[rows[e]], k[e]].reshape(len(value[e]), -1)  # [m, B·P·d]
            flat.index_add_(0, target[e], D * value[e, None])

    def _block_exceptions(
        self,
        flat: torch.Tensor,
        name: str,
        at: torch.Tensor,
        k: torch.Tensor,
        target: torch.Tensor,
        value: torch.Tensor,
    ) -> None:
        """Add ``Σ value · coef_at[k] ⊗ W[at]`` of one coefficient block into ``flat [K·C, B·P·d]``,
        one matmul per (mask, column) target (``[B·P, m] @ [m, d]``, batched over targets with the
        same number of exceptions, up to a power of two): no d-vector per exception."""
        _, W, _ = self.blocks[name]
        coef = self.coefs[name]  # [n_b, K, B, P]
        T, d = self.B * self.P, self.d
        order = torch.argsort(target, stable=True)
        target, at, k, value = target[order], at[order], k[order], value[order]
        groups, counts = torch.unique_consecutive(target, return_counts=True)
        group = torch.repeat_interleave(torch.arange(len(groups), device=target.device), counts)
        slot = torch.arange(len(target), device=target.device) - (torch.cumsum(counts, 0) - counts)[group]
        width = 2 ** torch.ceil(torch.log2(counts.double())).long()  # padded exceptions per target
        for w in torch.unique(width).tolist():
            members = (width == w).nonzero()[:, 0]  # this width's targets
            local = torch.full((len(groups),), -1, dtype=torch.long, device=target.device)
            local[members] = torch.arange(len(members), device=target.device)
            step = max(1, _CHUNK // (w * (T + d) + T * d))  # targets per batched matmul
            for g0 in range(0, len(members), step):
                n_g = min(step, len(members) - g0)
                pick = (local[group] >= g0) & (local[group] < g0 + n_g)
                where = (local[group[pick]] - g0, slot[pick])
                Z = torch.zeros(n_g, w, T, dtype=self.dtype, device=self.device)
                Z[where] = coef[at[pick], k[pick]].reshape(-1, T) * value[pick, None]
                Wp = torch.zeros(n_g, w, d, dtype=self.dtype, device=self.device)
                Wp[where] = W[at[pick]]
                flat.index_add_(0, groups[members[g0 : g0 + n_g]], torch.bmm(Z.transpose(1, 2), Wp).reshape(n_g, -1))

    def _total(self, up: torch.Tensor) -> torch.Tensor:
        """``Σ_u D_u`` over the (additive) rows ``up``, ``[K, B, P, d]``; a whole block's sum is
        computed once per forward."""
        dense = self.is_dense[up]
        assert self.dense is not None  # (not differentiable)
        out = self.dense[self.pos[up[dense]]].sum(0)
        for name, (start, W, _) in self.blocks.items():
            inside = (up >= start) & (up < start + len(W))
            n_in = int(inside.sum())
            if not n_in:
                continue
            if n_in == len(W):
                if name not in self._totals:
                    self._totals[name] = torch.einsum("ukbp,ud->kbpd", self.coefs[name], W)
                out = out + self._totals[name]
            else:
                at = up[inside] - start
                out = out + torch.einsum("ukbp,ud->kbpd", self.coefs[name][at], W[at])
        return out

    def _add_group_losses(self, r: torch.Tensor, up: torch.Tensor, out: torch.Tensor) -> None:
        """Add each post-norm group's nonlinear loss (see :class:`GroupMix`) to ``out``."""
        groups = self.group_of_row[up]
        for i in range(len(self.mix.groups)):
            inside = groups == i
            if bool(inside.any()) and bool(r[:, inside].any()):
                self.mix.loss(i, r[:, inside], self._at(self.pos[up[inside]]), out)

    def projected(self, r: torch.Tensor, up: slice | torch.Tensor, W_enc: torch.Tensor) -> torch.Tensor:
        """``Σ_u r[k, u, j] · (D_u · W_enc[:, j])`` → ``[K, B, P, n]``: the removals linear readers
        (SAE features' encoder rows) see, through the virtual weights ``W_dec[u] · W_enc[:, j]`` for
        upstream features (projecting every d-vector onto every encoder row would cost
        n_up · n · d per token)."""
        up = _as_rows(up, self.device)
        if self.dense is not None and r.ndim == 3 and not self.mix.groups:
            sparse = self._projected_by_exceptions(r, up, W_enc)
            if sparse is not None:
                return sparse
        keep = self.is_dense[up] & (self.group_of_row[up] < 0)
        out = torch.zeros(self.K, self.B, self.P, W_enc.shape[1], dtype=self.dtype, device=self.device)
        r_d = r[:, keep]
        if bool(r_d.any()):
            proj = self._at(self.pos[up[keep]]) @ W_enc  # [n_dense, K, B, P, n]
            # r_d [K, n_dense, n] → [n_dense, K, 1, 1, n]; per position [K, n_dense, n, P] → [n_dense, K, 1, P, n]
            r_u = r_d.permute(1, 0, 3, 2)[:, :, None] if r.ndim == 4 else r_d.permute(1, 0, 2)[:, :, None, None, :]
            out = out + (r_u * proj).sum(0)
        if self.mix.groups:  # post-norm groups are not linear: each column's loss, then its projection
            step = max(1, _CHUNK // (self.K * self.B * self.P * self.d))
            for c in range(0, W_enc.shape[1], step):
                cols = slice(c, min(c + step, W_enc.shape[1]))
                lost = out.new_zeros(self.K, self.B, self.P, cols.stop - c, self.d)
                self._add_group_losses(r[:, :, cols], up, lost)
                out[..., cols] += torch.einsum("kbpcd,dc->kbpc", lost, W_enc[:, cols])
        for name, (start, W, _) in self.blocks.items():
            inside = (up >= start) & (up < start + len(W))
            r_b = r[:, inside]
            if not bool(inside.any()) or not bool(r_b.any()):
                continue
            rows = up[inside] - start
            coef = self.coefs[name][rows]  # [n_b, K, B, P]
            V = W[rows] @ W_enc  # virtual weights [n_b, n]
            if r.ndim == 4:  # per position
                out = out + torch.einsum("ukbp,kujp->kbpj", coef, r_b * V[None, :, :, None])
            else:
                A = coef.reshape(len(rows), self.K, -1).permute(1, 2, 0)  # [K, BP, n_b]
                out = out + torch.bmm(A, r_b * V).reshape(out.shape)
        return out

    def _projected_by_exceptions(self, r: torch.Tensor, up: torch.Tensor, W_enc: torch.Tensor) -> torch.Tensor | None:
        """:meth:`projected` as ``base · (T · W_enc) + Σ_{exceptions} (r − base) · (D_u · W_enc[:, j])``
        (additive rows only): no virtual-weight matrix ``[n_up, n]`` and no projection of every
        dense row on every encoder row, so a circuit's cost scales with its edges. None when the
        exceptions are too many for that to pay."""
        sparse = self._exceptions(r)
        if sparse is None:
            return None
        base, exceptions, n_exceptions = sparse
        K, n, BP = self.K, r.shape[2], self.B * self.P
        out = torch.zeros(K, n, BP, dtype=self.dtype, device=self.device)  # (mask, column, token)
        if bool(base.any()):
            total = self._total(up).reshape(K, BP, self.d)
            out += base.to(self.dtype)[:, :, None] * (total @ W_enc).transpose(1, 2)
        if n_exceptions:
            k, i, c = exceptions.nonzero().unbind(1)
            rows, target = up[i], k * n + c
            value = r[k, i, c].to(self.dtype) - base[k, c].to(self.dtype)
            flat = out.view(K * n, BP)
            E = W_enc.T.contiguous()  # [n, d]: one encoder row per column, gathered per exception
            dense = self.is_dense[rows]
            if bool(dense.any()):
                self._project_dense_exceptions(flat, E, rows[dense], k[dense], c[dense], value[dense])
            for name, (start, W, _) in self.blocks.items():
                inside = ((rows >= start) & (rows < start + len(W))).nonzero()[:, 0]
                if not len(inside):
                    continue
                at = rows[inside] - start
                weight = _virtual_weights(W, E, at, c[inside]) * value[inside]  # W_u · W_enc[:, j], [m]
                step = _CHUNK // BP
                for s in range(0, len(inside), step):  # coef_u[k] · weight per exception
                    e = slice(s, s + step)
                    coef = self.coefs[name][at[e], k[inside[e]]].reshape(-1, BP)
                    flat.index_add_(0, target[inside[e]], coef * weight[e, None])
        return out.transpose(1, 2).reshape(K, self.B, self.P, n)

    def _project_dense_exceptions(
        self,
        flat: torch.Tensor,
        E: torch.Tensor,
        rows: torch.Tensor,
        k: torch.Tensor,
        c: torch.Tensor,
        value: torch.Tensor,
    ) -> None:
        """The dense rows' exceptions of :meth:`_projected_by_exceptions` into ``flat [K·n, BP]``:
        each row with exceptions is projected on the encoder rows of its exceptions' columns only
        (one matmul per row, no gathered copy of ``D``)."""
        assert self.dense is not None  # (not differentiable)
        K, n, BP, d = self.K, E.shape[0], self.B * self.P, self.d
        order = torch.argsort(rows, stable=True)
        rows, k, c, value = rows[order], k[order], c[order], value[order]
        which, counts = torch.unique_consecutive(rows, return_counts=True)
        for row, sel in zip(which.tolist(), torch.arange(len(rows), device=rows.device).split(counts.tolist())):
            # (a loop over source rows with exceptions: a site's heads, MLPs and error nodes)
            cols, at = torch.unique(c[sel], return_inverse=True)
            D = self.dense[int(self.pos[row])].reshape(K, BP, d)
            projected = E[cols] @ D.transpose(1, 2)  # [K, columns, BP]: each exception's row contiguous
            flat.index_add_(0, k[sel] * n + c[sel], projected[k[sel], at] * value[sel, None])


def _virtual_weights(W: torch.Tensor, E: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``W[rows[m]] · E[cols[m]]`` for each of m (row, column) pairs, ``[m]``. Where the pairs fill
    more than 1/128 of the rows × columns they touch, one matmul over those rows and columns, a
    block of rows at a time: a GEMM does a d-long dot product about a hundred times faster than
    two gathered d-vectors (measured on CPU at d = 768); otherwise a dot per pair."""
    out = torch.empty(len(rows), dtype=W.dtype, device=W.device)
    urows, ri = torch.unique(rows, return_inverse=True)
    ucols, ci = torch.unique(cols, return_inverse=True)
    if 128 * len(rows) > len(urows) * len(ucols):
        Ec = E[ucols]  # [columns, d]
        step = max(1, _CHUNK // len(ucols))
        for r0 in range(0, len(urows), step):
            block = W[urows[r0 : r0 + step]] @ Ec.T  # [rows, columns]
            pick = ((ri >= r0) & (ri < r0 + step)).nonzero()[:, 0]
            out[pick] = block[ri[pick] - r0, ci[pick]]
        return out
    step = max(1, _CHUNK // E.shape[1])
    for s in range(0, len(rows), step):
        e = slice(s, s + step)
        out[e] = (W[rows[e]] * E[cols[e]]).sum(1)
    return out


def _count(mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """True entries of a bool tensor (over ``dim``): summed as bytes, twice as fast on CPU as
    ``count_nonzero`` over the strided column blocks of a ``[K, n_src, n_dst]`` removal mask."""
    as_bytes = mask.view(torch.uint8)
    return as_bytes.sum(dtype=torch.int64) if dim is None else as_bytes.sum(dim, dtype=torch.int32)


def _as_rows(up: slice | torch.Tensor, device) -> torch.Tensor:
    return torch.arange(up.start, up.stop, device=device) if isinstance(up, slice) else up.to(device)
