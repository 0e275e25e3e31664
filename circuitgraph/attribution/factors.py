"""Factored edge-score contractions: dense or low-rank sources against dense or low-rank readers.

A head or MLP writes a full vector per position (dense: ``D [n, batch, pos, d]``). A neuron (or an
SAE feature) writes a scalar times a fixed direction (low-rank: ``coef [n, batch, pos]`` and
``dirs [n, d]``). Likewise a destination's input gradient is either a full vector per position
or a scalar gradient times a fixed read direction (a neuron's ``W_in`` column). Behind a norm,
the gradient is ``G − centre·1 − radial·x̂`` (the norm's Jacobian, kept factored).

score(u, v) = Σ_{batch,pos} D_u · ∂m/∂in_v for every pair of blocks, without materialising
``[n_src, n_dst, d]``; neuron→neuron edges go through the virtual weights ``dirs_u · enc_v``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitgraph.engine.tensors import LowRankSources


@dataclass
class DenseReaders:
    """Input gradients ``G − centre·1 − radial·x̂``: G [n, B, P, d]; centre, radial [n, B, P]."""

    G: torch.Tensor
    centre: torch.Tensor | None = None
    radial: torch.Tensor | None = None
    xhat: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return self.G.shape[0]

    @property
    def has_centre(self) -> bool:
        """Whether scoring these readers needs each source row's sum over d (a LayerNorm's centring)."""
        return self.centre is not None

    def dense(self) -> torch.Tensor:
        G = self.G
        if self.centre is not None:
            G = G - self.centre[..., None]
        if self.radial is not None:
            assert self.xhat is not None  # a radial term always comes with the x̂ it runs along
            G = G - self.radial[..., None] * self.xhat
        return G

    def along(self, field: torch.Tensor) -> torch.Tensor:
        """``[n, B, P]``: each reader's input gradient dotted with a per-position ``field [B, P, d]``."""
        out = torch.einsum("nbpd,bpd->nbp", self.G, field)
        return _norm_terms(out, self.centre, self.radial, self.xhat, field)


@dataclass
class LowRankReaders:
    """Input gradient of reader j at (b, p): ``g[j,b,p] · enc[j]`` pushed through the norm, i.e.
    ``g·enc − centre·1 − radial·x̂`` with centre = g·Σenc/d and radial = g·(x̂·enc)/d
    (``g`` already divided by the norm's scale, ``enc`` already multiplied by its gain)."""

    g: torch.Tensor  # [n, B, P]
    enc: torch.Tensor  # [n, d]
    xhat: torch.Tensor | None = None  # [B, P, d]
    centred: bool = False  # LayerNorm subtracts the mean; RMSNorm does not

    @property
    def n(self) -> int:
        return self.g.shape[0]

    @property
    def has_centre(self) -> bool:
        """Whether scoring these readers needs each source row's sum over d (a LayerNorm's centring)."""
        return self.centred and self.xhat is not None

    def terms(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(centre, radial) per-position coefficients, each [n, B, P] or None."""
        if self.xhat is None:
            return None, None
        d = self.enc.shape[1]
        radial = self.g * torch.einsum("bpd,nd->nbp", self.xhat, self.enc) / d
        centre = self.g * (self.enc.sum(1) / d)[:, None, None] if self.centred else None
        return centre, radial

    def along(self, field: torch.Tensor) -> torch.Tensor:
        """``[n, B, P]``: each reader's input gradient dotted with a per-position ``field [B, P, d]``."""
        centre, radial = self.terms()
        out = self.g * torch.einsum("bpd,nd->nbp", field, self.enc)
        return _norm_terms(out, centre, radial, self.xhat, field)

    def dense(self) -> torch.Tensor:
        centre, radial = self.terms()
        G = torch.einsum("nbp,nd->nbpd", self.g, self.enc)
        if centre is not None:
            G = G - centre[..., None]
        if radial is not None:
            assert self.xhat is not None  # terms() gives a radial term only with x̂
            G = G - radial[..., None] * self.xhat
        return G


def _norm_terms(out, centre, radial, xhat, field: torch.Tensor) -> torch.Tensor:
    """``out`` less the norm Jacobian's centre and radial terms along ``field``."""
    if centre is not None:
        out = out - centre * field.sum(-1)[None]
    if radial is not None:
        out = out - radial * (xhat * field).sum(-1)[None]
    return out


def pair(a: torch.Tensor, b: torch.Tensor, per_position: bool = False) -> torch.Tensor:
    """``Σ_{batch,pos} a[i] · b[j]`` for per-position coefficients ``a [n_a, B, P]``, ``b [n_b, B, P]``:
    ``[n_a, n_b]``, or ``[n_a, n_b, P]`` summed over the batch only (position-resolved graphs)."""
    if per_position:
        return torch.einsum("ibp,jbp->ijp", a, b)
    return a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1).T


def dense_scores(
    D: torch.Tensor, readers, row_sums: torch.Tensor | None = None, per_position: bool = False
) -> torch.Tensor:
    """``[n_u, n_v]`` scores of dense sources ``D [n_u, B, P, d]`` against any readers (``[n_u, n_v, P]``,
    each position's own, with ``per_position``)."""
    n_u = D.shape[0]
    if isinstance(readers, DenseReaders):
        if per_position:
            acc = torch.einsum("ubpd,vbpd->uvp", D, readers.G)
        else:
            acc = D.reshape(n_u, -1) @ readers.G.reshape(readers.n, -1).T
        centre, radial, xhat = readers.centre, readers.radial, readers.xhat
    else:
        # Σ_bp g[j,bp] (D_u[bp] · enc_j): project sources onto the read directions, a few at a time
        B, P = readers.g.shape[1:]
        g = readers.g.reshape(readers.n, -1).T  # [BP, n_j]
        flat = D.reshape(n_u, -1, D.shape[-1])
        step = max(1, int(2.5e7 // max(1, flat.shape[1] * readers.n)))

        def chunk(i: int) -> torch.Tensor:  # [s, n_j] (per position: [s, n_j, P]), one [s, BP, n_j] at a time
            t = (flat[i : i + step] @ readers.enc.T).mul_(g)
            return t.view(len(t), B, P, -1).sum(1).transpose(1, 2) if per_position else t.sum(1)

        acc = torch.cat([chunk(i) for i in range(0, n_u, step)])
        centre, radial = readers.terms()
        xhat = readers.xhat
    if centre is not None:
        acc -= pair(row_sums if row_sums is not None else D.sum(-1), centre, per_position)
    if radial is not None:
        acc -= pair(torch.einsum("ubpd,bpd->ubp", D, xhat), radial, per_position)
    return acc


def lowrank_scores(
    src: LowRankSources, readers: DenseReaders | LowRankReaders, per_position: bool = False
) -> torch.Tensor:
    """``[n_i, n_v]`` scores of low-rank sources against any readers (``[n_i, n_v, P]`` with
    ``per_position``)."""
    coef = src.coef  # [n_i, B, P]
    if isinstance(readers, DenseReaders):
        # Σ_bp coef[i,bp] (G_v[bp] · dirs_i): G projected onto the write directions
        GD = readers.G @ src.dirs.T  # [n_v, B, P, n_i]
        acc = torch.einsum("ibp,vbpi->ivp" if per_position else "ibp,vbpi->iv", coef, GD)
        centre, radial, xhat = readers.centre, readers.radial, readers.xhat
    else:
        # virtual weights dirs_i · enc_j times the co-occurrence of coefficient and gradient
        virtual = src.dirs @ readers.enc.T
        acc = (virtual[..., None] if per_position else virtual) * pair(coef, readers.g, per_position)
        centre, radial = readers.terms()
        xhat = readers.xhat
    if centre is not None:
        sums = src.dirs.sum(1)
        acc -= (sums[:, None, None] if per_position else sums[:, None]) * pair(coef, centre, per_position)
    if radial is not None:
        assert xhat is not None  # a radial term always comes with the x̂ it runs along
        along = coef * torch.einsum("bpd,id->ibp", xhat, src.dirs)  # [n_i, B, P]
        acc -= pair(along, radial, per_position)
    if src.field is not None:  # the shared per-position part (sources behind a post-norm)
        assert src.field_coef is not None  # a field always comes with its coefficients
        acc += pair(src.field_coef, readers.along(src.field), per_position)
    return acc
