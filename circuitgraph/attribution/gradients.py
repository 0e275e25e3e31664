"""Per-destination gradients ∂metric/∂(input of v) from one backward pass, without TransformerLens's
costly split-input flags.

``use_split_qkv_input`` would materialise a [batch, pos, head, d_model] copy of the residual
stream per q/k/v and make forward+backward ~10× slower. We instead capture the gradients at
``hook_q/k/v`` ([batch, pos, head, d_head]: small), push them back through ``W_Q/W_K/W_V`` and
the norm's Jacobian analytically (kept factored, see :class:`GroupGradient`), and read MLP-input and final
residual gradients directly from ``hook_mlp_in`` and the last ``hook_resid_post``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from circuitgraph.engine.activations import resid_pre0, source_hooks
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
                fwd.append((f"blocks.{L}.ln1.hook_scale", self._keep(f"scale{L}")))
                fwd.append((f"blocks.{L}.ln1.hook_normalized", self._keep(f"norm{L}")))
            for letter in "qkv":
                bwd.append((f"blocks.{L}.attn.hook_{letter}", self._keep_grad(f"{letter}{L}")))
            if self.graph.arch.has_mlp:
                bwd.append((f"blocks.{L}.hook_mlp_in", self._keep_grad(f"mlp{L}")))
        bwd.append((f"blocks.{self.graph.arch.n_layers - 1}.hook_resid_post", self._keep_grad("logits")))
        return fwd, bwd

    def _keep(self, key):
        def hook(x, hook):
            self.fwd[key] = x.detach()

        return hook

    def _keep_grad(self, key):
        def hook(g, hook):
            self.grad[key] = g.detach()

        return hook

    def group(self, name: str) -> "GroupGradient":
        """Gradients for a destination group of :meth:`Graph.dst_slices` (``attn{L}`` ordered
        q-heads, k-heads, v-heads), in factored form (see :class:`GroupGradient`)."""
        if name == "logits":
            return GroupGradient(self.grad["logits"][None])
        if name.startswith("mlp"):
            return GroupGradient(self.grad[name][None])
        L = int(name[4:])
        attn, ln = self.model.blocks[L].attn, self.model.blocks[L].ln1
        kind = type(ln).__name__
        xhat, scale = self.fwd.get(f"norm{L}"), self.fwd.get(f"scale{L}")
        w = ln.w.detach() if hasattr(ln, "w") else None
        d = self.graph.arch.d_model
        parts, centre, radial = [], [], []
        for letter, W in (("q", attn.W_Q), ("k", attn.W_K), ("v", attn.W_V)):
            W = _ungrouped(W, attn).detach()  # [head, d_model, d_head]
            if w is not None:
                W = W * w[None, :, None]  # fold the norm's gain into the projection
            g = self.grad[f"{letter}{L}"]  # [batch, pos, head, d_head]
            if scale is not None:
                g = g / scale[..., None]
            # g' = (w ⊙ W g) / σ, written straight into [head, batch, pos, d_model]
            parts.append(torch.einsum("bphe,hde->hbpd", g, W))
            if xhat is not None:
                # the norm's Jacobian is g' − mean(g') − x̂·mean(g' ⊙ x̂); both means are
                # per-position scalars that are cheap in head space
                proj = torch.einsum("bpd,hde->bphe", xhat, W)  # x̂ through the (gained) projection
                radial.append((g * proj).sum(-1).permute(2, 0, 1) / d)
                if kind in ("LayerNorm", "LayerNormPre"):
                    centre.append(torch.einsum("bphe,he->hbp", g, W.sum(1)) / d)
        if self.graph.split_qkv:
            G = torch.cat(parts)
            cat = torch.cat
        else:
            G = parts[0] + parts[1] + parts[2]
            cat = lambda xs: xs[0] + xs[1] + xs[2]  # noqa: E731
        return GroupGradient(G, centre=cat(centre) if centre else None,
                             radial=cat(radial) if radial else None, xhat=xhat)


class GroupGradient:
    """∂m/∂in_v for a group of destinations, as ``G − centre·1 − radial·x̂`` per position.

    G [n, batch, pos, d]; centre, radial [n, batch, pos] or None; xhat [batch, pos, d]. Keeping the
    norm's Jacobian factored lets the contraction apply it to per-position sums of the source
    deltas instead of to every element of G.
    """

    def __init__(self, G, centre=None, radial=None, xhat=None):
        self.G, self.centre, self.radial, self.xhat = G, centre, radial, xhat

    def dense(self) -> torch.Tensor:
        G = self.G
        if self.centre is not None:
            G = G - self.centre[..., None]
        if self.radial is not None:
            G = G - self.radial[..., None] * self.xhat
        return G


def _ungrouped(W: torch.Tensor, attn) -> torch.Tensor:
    """K/V weights of grouped-query attention repeated so every query head has its own."""
    H = attn.cfg.n_heads
    if W.shape[0] != H:
        W = W.repeat_interleave(H // W.shape[0], dim=0)
    return W


@contextmanager
def frozen_params(model):
    """Skip weight gradients: attribution needs only activation gradients, which halves backward."""
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
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

    fwd = [(resid_pre0(), leaf_input)] + fwd + (source_hooks(graph, capture_sources) if capture_sources is not None else []) + (extra_fwd or [])
    with torch.enable_grad(), frozen_params(model), hook_flags(model, split_qkv_input=False), \
            model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
        logits = task.run(model, task.clean)
        values = task.score(logits, " during attribution")
        values.mean().backward()
    return dg, values.detach()


def contract(graph: Graph, deltas: torch.Tensor, grads: DestinationGradients, out: torch.Tensor, weight: float = 1.0) -> None:
    """``out[u, v] += weight · Σ_{batch,pos,d} deltas[u] · ∂m/∂in_v`` for every valid edge: one
    matmul per destination group over the sources upstream of it (``deltas`` [n_src, batch, pos, d])."""
    n_src = graph.n_src
    flat = deltas.reshape(n_src, -1)
    row_sums = None
    for name, cols in graph.dst_slices().items():
        n_up = graph.n_upstream(name)
        gg = grads.group(name)
        n = gg.G.shape[0]
        acc = flat[:n_up] @ gg.G.reshape(n, -1).T  # [n_up, n]
        if gg.centre is not None:
            if row_sums is None:
                row_sums = deltas.sum(-1).reshape(n_src, -1)  # [n_src, batch*pos]
            acc -= row_sums[:n_up] @ gg.centre.reshape(n, -1).T
        if gg.radial is not None:
            along = torch.einsum("ubpd,bpd->ubp", deltas[:n_up], gg.xhat).reshape(n_up, -1)
            acc -= along @ gg.radial.reshape(n, -1).T
        out[:n_up, cols] += weight * acc.to(out.dtype)
