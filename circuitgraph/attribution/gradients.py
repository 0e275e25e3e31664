"""Per-destination gradients ∂metric/∂(input of v) from one backward pass, without TransformerLens's
costly split-input flags.

``use_split_qkv_input`` would materialise a [batch, pos, head, d_model] copy of the residual
stream per q/k/v and make forward+backward ~10× slower. We instead capture the gradients at
``hook_q/k/v`` ([batch, pos, head, d_head]: small) and ``mlp.hook_pre`` (neurons), push them back
through ``W_Q/W_K/W_V`` / ``W_in`` and the norm's Jacobian analytically (kept factored, see
:mod:`circuitgraph.attribution.blocks`), and read MLP-input and final residual gradients directly
from ``hook_mlp_in`` and the last ``hook_resid_post``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from circuitgraph.attribution.blocks import DenseReaders, LowRankReaders, SourceDeltas, dense_scores, lowrank_scores
from circuitgraph.engine.activations import frozen, resid_pre0, source_hooks, store_hook
from circuitgraph.engine.sites import site_hooks, site_readers
from circuitgraph.graph import Graph
from circuitgraph.graph.compat import hook_flags


class DestinationGradients:
    """Captures what one forward+backward needs to give every destination's input gradient."""

    def __init__(self, model, graph: Graph):
        self.model, self.graph = model, graph
        self.fwd: dict[str, torch.Tensor] = {}
        self.grad: dict[str, torch.Tensor] = {}

    def hooks(self) -> tuple[list, list]:
        fwd, bwd = [], []
        has_norm = type(self.model.blocks[0].ln1).__name__ != "Identity"
        for L in range(self.graph.arch.n_layers):
            if has_norm:
                fwd.append((f"blocks.{L}.ln1.hook_scale", store_hook(self.fwd, f"scale{L}")))
                fwd.append((f"blocks.{L}.ln1.hook_normalized", store_hook(self.fwd, f"norm{L}")))
            for letter in "qkv":
                bwd.append((f"blocks.{L}.attn.hook_{letter}", store_hook(self.grad, f"{letter}{L}")))
            if self.graph.has_mlp_node(L) and (L not in self.graph.neurons or self.graph.has_rest(L)):
                bwd.append((f"blocks.{L}.hook_mlp_in", store_hook(self.grad, f"mlp{L}")))
            if L in self.graph.neurons:
                bwd.append((f"blocks.{L}.mlp.hook_pre", store_hook(self.grad, f"pre{L}")))
            reads_ln2 = L in self.graph.neurons or any(
                s.kind == "transcoder" and s.layer == L and s.normalized for s in self.graph.sites)
            if reads_ln2:  # neurons and transcoder features read through ln2: its Jacobian, factored
                if type(self.model.blocks[L].ln2).__name__ != "Identity":
                    fwd.append((f"blocks.{L}.ln2.hook_scale", store_hook(self.fwd, f"scale2_{L}")))
                    fwd.append((f"blocks.{L}.ln2.hook_normalized", store_hook(self.fwd, f"norm2_{L}")))
        bwd.append((f"blocks.{self.graph.arch.n_layers - 1}.hook_resid_post", store_hook(self.grad, "logits")))
        return fwd, bwd

    def group(self, name: str) -> list[tuple[slice, DenseReaders | LowRankReaders]]:
        """Input gradients of a destination group of :meth:`Graph.dst_slices`, as
        ``[(columns within the group, readers)]`` in factored form."""
        if name == "logits":
            return [(slice(0, 1), DenseReaders(self.grad["logits"][None]))]
        if any(site.name == name for site in self.graph.sites):
            site = self.graph.site(name)
            if site.kind == "transcoder":
                return self._transcoder_readers(site)
            return site_readers(self.graph, self.grad, site)
        if name.startswith("mlp"):
            L = int(name[3:])
            if L not in self.graph.neurons:
                return [(slice(0, 1), DenseReaders(self.grad[name][None]))]
            return self._neuron_readers(L)
        readers = self._head_readers(int(name[4:]))
        return [(slice(0, readers.n), readers)]

    def _head_readers(self, L: int) -> DenseReaders:
        """Input gradients of layer L's q/k/v destinations, ``[3·H (or H), batch, pos, d_model]``,
        with the norm's Jacobian already applied (one in-place pass over G per layer)."""
        attn, ln = self.model.blocks[L].attn, self.model.blocks[L].ln1
        xhat, scale = self.fwd.get(f"norm{L}"), self.fwd.get(f"scale{L}")
        w = frozen(ln.w) if hasattr(ln, "w") else None
        d, H = self.graph.arch.d_model, self.graph.arch.n_heads
        g0 = self.grad[f"q{L}"]
        B, P = g0.shape[:2]
        split = self.graph.split_qkv
        G = (torch.empty if split else torch.zeros)((3 if split else 1) * H, B, P, d, dtype=g0.dtype, device=g0.device)
        centres, radials = [], []  # per letter, [head, batch, pos]
        for i, (letter, W) in enumerate((("q", attn.W_Q), ("k", attn.W_K), ("v", attn.W_V))):
            W = frozen(_ungrouped(W, attn))  # [head, d_model, d_head]
            if w is not None:
                W = W * w[None, :, None]  # fold the norm's gain into the projection
            g = self.grad[f"{letter}{L}"]  # [batch, pos, head, d_head]
            if scale is not None:
                g = g / scale[..., None]
            # g' = (w ⊙ W g) / σ per head, written straight into G (no concatenation)
            gh = g.permute(2, 0, 1, 3).reshape(H, B * P, -1)
            rows = G[i * H:(i + 1) * H] if split else G
            if split:
                torch.bmm(gh, W.transpose(1, 2), out=rows.view(H, B * P, d))
            else:
                rows.view(H, B * P, d).baddbmm_(gh, W.transpose(1, 2))
            if xhat is not None:
                # the norm's Jacobian is g' − mean(g') − x̂·mean(g' ⊙ x̂); both means are
                # per-position scalars that are cheap in head space
                proj = torch.einsum("bpd,hde->bphe", xhat, W)  # x̂ through the (gained) projection
                radials.append((g * proj).sum(-1).permute(2, 0, 1) / d)
                if _centred(ln):
                    centres.append(torch.einsum("bphe,he->hbp", g, W.sum(1)) / d)
        combine = torch.cat if split else sum  # split: one row per letter; joint: the letters add up
        if centres:
            G.sub_(combine(centres)[..., None])
        if radials:
            G.addcmul_(combine(radials)[..., None], xhat, value=-1.0)
        return DenseReaders(G)

    def _neuron_readers(self, L: int) -> list:
        """Neuron j reads the MLP input through ``ln2`` and ``W_in[:, j]``; the ``rest`` node reads
        what the other neurons read (total MLP-input gradient minus the selected neurons')."""
        grad_pre = self.grad[f"pre{L}"]
        ids = self.graph.neuron_ids(L).to(grad_pre.device)
        enc = frozen(self.model.blocks[L].mlp.W_in)[:, ids].T  # [n, d]
        total = self.grad[f"mlp{L}"] if self.graph.has_rest(L) else None
        return self._through_ln2(L, grad_pre[..., ids].permute(2, 0, 1), enc, total, normalized=True)

    def _transcoder_readers(self, site) -> list:
        """A transcoder's features read like neurons (through ``ln2`` when it reads the normalised
        input, and ``W_enc[:, j]``); ``rest`` is the features' total input gradient minus the
        selected ones'; the error reads densely."""
        from circuitgraph.engine.sites import site_sae

        grad_pre = self.grad[f"pre:{site.name}"]
        ids = torch.tensor(site.features, dtype=torch.long, device=grad_pre.device)
        enc = frozen(site_sae(self.graph, site).W_enc)[:, ids].T
        total = self.grad[f"feat_in:{site.name}"] if site.has_rest else None
        out = self._through_ln2(site.layer, grad_pre[..., ids].permute(2, 0, 1), enc, total, site.normalized,
                                gain=False)  # (hook_normalized is before ln2's gain)
        k = len(site.node_names())
        return out + [(slice(k - 1, k), DenseReaders(self.grad[f"err_in:{site.name}"][None]))]

    def _through_ln2(self, L: int, g: torch.Tensor, enc: torch.Tensor, total: torch.Tensor | None,
                     normalized: bool, gain: bool = True) -> list:
        """Low-rank readers ``g [n, B, P]`` along ``enc [n, d]`` (behind ``ln2``'s normalisation
        when ``normalized``, and its gain when ``gain``), plus a dense reader for everything else
        that reads the same input when ``total`` (its full input gradient) is given."""
        ln = self.model.blocks[L].ln2
        xhat = scale = None
        if normalized:
            xhat, scale = self.fwd.get(f"norm2_{L}"), self.fwd.get(f"scale2_{L}")
            if gain and hasattr(ln, "w"):
                enc = enc * frozen(ln.w)[None]
            if scale is not None:
                g = g / scale[None, ..., 0]
        readers = LowRankReaders(g, enc, xhat, centred=normalized and _centred(ln))
        n = g.shape[0]
        out = [(slice(0, n), readers)] if n else []
        if total is not None:
            centre, radial = readers.terms()
            picked = torch.einsum("nbp,nd->bpd", g, enc)
            rest = DenseReaders(
                (total - picked)[None],
                centre=None if centre is None else -centre.sum(0, keepdim=True),
                radial=None if radial is None else -radial.sum(0, keepdim=True),
                xhat=xhat,
            )
            out.append((slice(n, n + 1), rest))
        return out


def _centred(ln) -> bool:
    """LayerNorm subtracts the mean (a centring term in its Jacobian); RMSNorm does not."""
    return type(ln).__name__ in ("LayerNorm", "LayerNormPre")


def _ungrouped(W: torch.Tensor, attn) -> torch.Tensor:
    """K/V weights of grouped-query attention repeated so every query head has its own."""
    H = attn.cfg.n_heads
    if W.shape[0] != H:
        W = W.repeat_interleave(H // W.shape[0], dim=0)
    return W


@contextmanager
def frozen_params(*modules):
    """Skip weight gradients (of the model and of any SAEs spliced into it): attribution needs
    only activation gradients, which halves backward and leaves no ``.grad`` behind."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def forward_backward(model, graph: Graph, task, input_override: torch.Tensor | None = None,
                     capture_sources: dict | None = None, extra_fwd: list | None = None) -> tuple[DestinationGradients, torch.Tensor]:
    """One forward of the clean prompts and one backward of the mean metric.

    ``input_override`` replaces the embedding (``blocks.0.hook_resid_pre``), e.g. with an
    interpolation for EAP-IG; ``capture_sources`` (a dict) receives the raw source activations.
    Returns the captured destination gradients and the per-example metric values.
    """
    dg = DestinationGradients(model, graph)
    fwd, bwd = dg.hooks()

    def leaf_input(x, hook):
        x = (input_override if input_override is not None else x).detach()
        return x.requires_grad_(True)

    fwd = [(resid_pre0(), leaf_input)] + fwd + (source_hooks(model, graph, capture_sources, sites=False) if capture_sources is not None else []) \
        + (extra_fwd or []) + site_hooks(model, graph, capture_sources, dg.grad)  # sites last at their hook point
    with torch.enable_grad(), frozen_params(model, *graph.node_graph.saes.values()), hook_flags(model, split_qkv_input=False), \
            model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
        logits = task.run(model, task.clean)
        values = task.score(logits, " during attribution")
        values.mean().backward()
    return dg, values.detach()




def contract(graph: Graph, deltas: SourceDeltas, grads: DestinationGradients, out: torch.Tensor, weight: float = 1.0) -> None:
    """``out[u, v] += weight · Σ_{batch,pos,d} delta_u · ∂m/∂in_v`` for every valid edge: per
    destination group, one matmul over the dense sources upstream of it plus one factored
    product per upstream low-rank block (neurons, SAE features)."""
    D, rows = deltas.dense, deltas.dense_rows
    row_sums = D.sum(-1)  # [n_dense, B, P], shared by every norm-centred reader
    if getattr(graph, "positions", None):
        return _contract_per_position(graph, D, row_sums, grads, out, weight)
    for name, cols in graph.dst_slices().items():
        up = graph.upstream(name)
        if deltas.contiguous and isinstance(up, slice):  # no neurons or sites: rows are graph rows
            Du, sums, target, blocks = D[up], row_sums[up], up, []
        else:  # the dense rows and low-rank blocks this group reads
            up_rows = graph.upstream_rows(name).to(rows.device)
            pick = torch.isin(rows, up_rows)
            Du, sums, target = D[pick], row_sums[pick], rows[pick]
            blocks = [b for b in deltas.lowrank if bool(torch.isin(b.rows[:1], up_rows))]
        for sub, readers in grads.group(name):
            c = slice(cols.start + sub.start, cols.start + sub.stop)
            if len(Du):
                out[target, c] += weight * dense_scores(Du, readers, sums).to(out.dtype)
            for block in blocks:
                out[block.rows, c] += weight * lowrank_scores(block, readers).to(out.dtype)


def _contract_per_position(graph, D: torch.Tensor, row_sums: torch.Tensor, grads: DestinationGradients,
                           out: torch.Tensor, weight: float) -> None:
    """The same contraction without summing over positions: scores ``[u, v, p]`` written into the
    position diagonal of a :class:`PositionalGraph`'s score matrix."""
    diag = graph.diagonal(out)  # [n_src, n_dst, P] view
    for name, cols in graph.dst_slices().items():
        n_up = graph.upstream(name).stop  # (positional graphs: always a prefix)
        for sub, readers in grads.group(name):
            c = slice(cols.start + sub.start, cols.start + sub.stop)
            acc = torch.einsum("ubpd,vbpd->uvp", D[:n_up], readers.G)
            if readers.centre is not None:
                acc -= torch.einsum("ubp,vbp->uvp", row_sums[:n_up], readers.centre)
            if readers.radial is not None:
                along = torch.einsum("ubpd,bpd->ubp", D[:n_up], readers.xhat)
                acc -= torch.einsum("ubp,vbp->uvp", along, readers.radial)
            diag[:n_up, c] += weight * acc.to(out.dtype)
