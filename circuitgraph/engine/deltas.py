"""a(live) − a(ablated) of every source during a patched forward, kept as compactly as its readers
allow.

A removed edge u→v makes v read ``live_input_v − (a_u(live) − a_u(ablated))``, so each reader
needs ``Σ_u r[k, u, c] · D_u`` over its removed upstream edges. Heads, MLPs, neurons and SAE
``rest``/``err`` nodes keep ``D_u`` as a d-vector per (mask, example, position). SAE features
write ``coef · W_dec[i]``, so they keep only the coefficient delta ``[n, K, B, P]``: a graph with
thousands of feature nodes never holds ``[n_features, K, B, P, d]``.

With ``differentiable=True`` (learned edge masks, fitted ablations) the live activations keep their
autograd history, so ``D_v`` of a downstream node carries the effect of every gate upstream of it:
the gradient of the loss with respect to a gate is then the true gradient of the relaxed forward.
Deltas are then kept as the recorded blocks themselves (no preallocated buffer written in place,
which autograd could not differentiate through), and each reader sums over the blocks it reads.
"""

from __future__ import annotations

import torch

from circuitgraph.engine.sites import feature_rows, site_sae
from circuitgraph.engine.tensors import CompactSources, frozen
from circuitgraph.graph import Graph


class LiveDeltas:
    """Dense rows ``[n_dense, K, B, P, d]`` plus one low-rank block per SAE site's features."""

    def __init__(
        self, graph: Graph, ablated: torch.Tensor | CompactSources, K: int, differentiable: bool = False
    ) -> None:
        """``ablated``: ``[n_src, B, P, d]``, or :class:`~circuitgraph.engine.tensors.CompactSources`."""
        _, B, P, d = ablated.shape
        self.K, self.B, self.P, self.d = K, B, P, d
        self.ablated = ablated
        self.differentiable = differentiable
        device = ablated.device
        self.device, self.dtype = device, ablated.dtype
        dense = ~feature_rows(graph).to(device)
        # site name → (first row, W_dec rows [n, d], ablated coefficients [n, B, P])
        self.blocks: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}
        self.coefs: dict[str, torch.Tensor] = {}  # site name → coefficient deltas [n, K, B, P], once recorded
        for site in graph.sites:
            n = len(site.features)
            if not n:
                continue
            start = graph.src_slices()[site.name].start
            ids = torch.tensor(site.features, dtype=torch.long, device=device)
            W = frozen(site_sae(graph, site).W_dec)[ids]
            if isinstance(ablated, CompactSources):
                coef = ablated.coefs[site.name]
            else:  # dense ablated feature rows hold coef · W[i]: read the coefficients back off them
                coef = (
                    torch.einsum("ibpd,id->ibp", ablated[start : start + n], W)
                    / (W * W).sum(1).clamp_min(1e-30)[:, None, None]
                )
            self.blocks[site.name] = (start, W, coef)
        self.is_dense = dense
        self.pos = torch.cumsum(dense, 0) - 1  # row → index among the dense rows
        self.simple = not self.blocks  # dense rows are the graph's rows
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
        # CompactSources hold exactly the dense rows, indexed like self.dense
        ref = self.ablated.dense[at : at + n] if isinstance(self.ablated, CompactSources) else self.ablated[rows]
        D = live.reshape(n, self.K, self.B, self.P, self.d) - ref[:, None]
        if self.dense is None:
            self._parts.append((at, D))
        else:
            self.dense[at : at + n] = D

    def record_features(self, site_name: str, coef: torch.Tensor) -> None:
        """Live coefficients ``[n, K, B, P]`` of a site's feature nodes."""
        _, _, ablated = self.blocks[site_name]
        self.coefs[site_name] = coef - ablated[:, None]

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

    def _weighted(self, r: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``Σ_u r[k, u, c] · D_u`` → ``[K, B, P, C, d]`` over dense rows ``idx`` (``r [K, len(idx), C]``).
        Differentiable: one term per recorded block, each block used as it is (no gathered copy that
        autograd would have to keep alive)."""
        if self.dense is not None:
            return torch.einsum("kuc,ukbpd->kbpcd", r, self.dense[idx])
        out = None
        for at, D in self._parts:
            inside = (idx >= at) & (idx < at + len(D))
            if not bool(inside.any()):
                continue
            sel = idx[inside] - at
            whole = len(sel) == len(D) and bool((sel == torch.arange(len(D), device=sel.device)).all())
            term = torch.einsum("kuc,ukbpd->kbpcd", r[:, inside], D if whole else D[sel])
            out = term if out is None else out + term
        if out is None:
            return torch.zeros(self.K, self.B, self.P, r.shape[2], self.d, dtype=self.dtype, device=self.device)
        return out

    # ---------------------------------------------------------------------------------- reading
    def removed_sum(self, r: torch.Tensor, up: slice | torch.Tensor) -> torch.Tensor:
        """``Σ_u r[k, u, c] · D_u`` → ``[K, B, P, C, d]`` for removals ``r [K, n_up, C]`` over the
        upstream rows ``up`` (in that order)."""
        if self.simple and self.dense is not None:
            return torch.einsum("kuc,ukbpd->kbpcd", r, self.dense[up])
        up = _as_rows(up, self.device)
        keep = self.is_dense[up]
        out = self._weighted(r[:, keep], self.pos[up[keep]])
        for name, (start, W, _) in self.blocks.items():
            inside = (up >= start) & (up < start + len(W))
            if not bool(inside.any()):
                continue
            r_b = r[:, inside]  # [K, n_b, C]
            if not bool(r_b.any()):
                continue
            n_b = r_b.shape[1]
            coef = self.coefs[name][up[inside] - start]  # [n_b, K, B, P]
            A = coef.reshape(n_b, self.K, -1).permute(1, 2, 0)  # [K, BP, n_b]
            # Σ_u r[k,u,c] coef_u W_u: weight the coefficients per reader column, then one matmul
            weighted = A[:, :, None, :] * r_b.transpose(1, 2)[:, None]  # [K, BP, C, n_b]
            out = out + (weighted @ W[up[inside] - start]).reshape(out.shape)
        return out

    def projected(self, r: torch.Tensor, up: slice | torch.Tensor, W_enc: torch.Tensor) -> torch.Tensor:
        """``Σ_u r[k, u, j] · (D_u · W_enc[:, j])`` → ``[K, B, P, n]``: the removals linear readers
        (SAE features' encoder rows) see, through the virtual weights ``W_dec[u] · W_enc[:, j]`` for
        upstream features (projecting every d-vector onto every encoder row would cost
        n_up · n · d per token)."""
        up = _as_rows(up, self.device)
        keep = self.is_dense[up]
        out = torch.zeros(self.K, self.B, self.P, W_enc.shape[1], dtype=self.dtype, device=self.device)
        r_d = r[:, keep]
        if bool(r_d.any()):
            proj = self._at(self.pos[up[keep]]) @ W_enc  # [n_dense, K, B, P, n]
            out = out + (r_d.permute(1, 0, 2)[:, :, None, None, :] * proj).sum(0)
        for name, (start, W, _) in self.blocks.items():
            inside = (up >= start) & (up < start + len(W))
            r_b = r[:, inside]
            if not bool(inside.any()) or not bool(r_b.any()):
                continue
            rows = up[inside] - start
            c = self.coefs[name][rows]  # [n_b, K, B, P]
            V = W[rows] @ W_enc  # virtual weights [n_b, n]
            out = out + torch.bmm(c.reshape(len(rows), self.K, -1).permute(1, 2, 0), r_b * V).reshape(out.shape)
        return out


def _as_rows(up: slice | torch.Tensor, device) -> torch.Tensor:
    return torch.arange(up.start, up.stop, device=device) if isinstance(up, slice) else up.to(device)
