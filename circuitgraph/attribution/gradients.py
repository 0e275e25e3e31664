"""Per-destination gradients ∂metric/∂(input of v) from one backward pass, without TransformerLens's
costly split-input flags.

``use_split_qkv_input`` would materialise a [batch, pos, head, d_model] copy of the residual
stream per q/k/v and make forward+backward ~10× slower. We instead capture the gradients at
``hook_q/k/v`` ([batch, pos, head, d_head]: small) and ``mlp.hook_pre`` (neurons), push them back
through ``W_Q/W_K/W_V`` / ``W_in`` and the norm's Jacobian analytically (kept factored, see
:mod:`circuitgraph.attribution.factors`), and read MLP-input and final residual gradients directly
from ``hook_mlp_in`` and the last ``hook_resid_post``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch

from circuitgraph.attribution.factors import DenseReaders, LowRankReaders, dense_scores, lowrank_scores
from circuitgraph.attribution.post_norms import capture_hooks, through_post_norms
from circuitgraph.engine.batching import lowrank_rows
from circuitgraph.engine.post_norms import norm_groups
from circuitgraph.engine.sites import feature_ids, other_features, site_hooks, site_sae
from circuitgraph.engine.sources import source_hooks
from circuitgraph.engine.tensors import SourceDeltas, frozen, frozen_params, reusable, store_hook
from circuitgraph.graph import Graph, PositionalGraph
from circuitgraph.graph.blocks import EdgeBlocks
from circuitgraph.graph.sites import Site
from circuitgraph.models.backend import as_backend

# a destination group's readers: ``[(columns within the group, readers)]``
Readers = list[tuple[slice, DenseReaders | LowRankReaders]]
# ``rows → [rows, B, P, d]`` buffer for a group's readers, or None where it has no room
Allocator = Callable[[int], "torch.Tensor | None"]


class DestinationGradients:
    """Captures what one forward+backward needs to give every destination's input gradient."""

    def __init__(self, model: Any, graph: Graph, workspace: dict | None = None) -> None:
        self.model, self.graph = model, graph
        self.workspace = {} if workspace is None else workspace  # scratch shared by one attribution's runs
        self.bk = as_backend(model)
        self.groups = norm_groups(self.bk, graph)  # sources behind norms after sublayers (Gemma-2/3)
        self.fwd: dict[str, torch.Tensor] = {}
        self.grad: dict[str, torch.Tensor] = {}

    def hooks(self) -> tuple[list, list]:
        bk, graph = self.bk, self.graph
        fwd, bwd = [], []
        for L in range(graph.arch.n_layers):
            if bk.norm_kind(L, 1) != "none":
                fwd.append((bk.norm_hook(L, 1, "scale"), store_hook(self.fwd, f"scale{L}")))
                fwd.append((bk.norm_hook(L, 1, "normalized"), store_hook(self.fwd, f"norm{L}")))
            for letter in "qkv":
                bwd.append((bk.qkv_hook(L, letter), store_hook(self.grad, f"{letter}{L}")))
            if graph.has_mlp_node(L) and (L not in graph.neurons or graph.has_rest(L)):
                bwd.append((bk.mlp_in_hook(L), store_hook(self.grad, f"mlp{L}")))
            if L in graph.neurons:  # ∂m/∂pre of each way the neurons read (a gated MLP: gate and linear part)
                for r, read in enumerate(bk.neuron_reads(L)):
                    bwd.append((read.hook, store_hook(self.grad, f"pre{L}.{r}")))
            reads_ln2 = L in graph.neurons or any(
                s.kind == "transcoder" and s.layer == L and s.normalized for s in graph.sites
            )
            if reads_ln2 and bk.norm_kind(L, 2) != "none":  # neurons and transcoders read through ln2: its Jacobian
                fwd.append((bk.norm_hook(L, 2, "scale"), store_hook(self.fwd, f"scale2_{L}")))
                fwd.append((bk.norm_hook(L, 2, "normalized"), store_hook(self.fwd, f"norm2_{L}")))
        bwd.append((bk.final_hook(), store_hook(self.grad, "logits")))
        return fwd + capture_hooks(bk, self.groups, self.fwd), bwd

    def residual_deltas(self, deltas: SourceDeltas, out: torch.Tensor | None = None) -> SourceDeltas:
        """``deltas`` as this run's residual stream sees them: post-normed sources through their
        norm's Jacobian at this run (see :mod:`circuitgraph.attribution.post_norms`; ``out``: where
        the dense rows go), as they are for every other model."""
        return through_post_norms(self.bk, self.groups, self.fwd, deltas, out=out)

    def group(self, name: str, into: Allocator | None = None) -> Readers:
        """Input gradients of a destination group of :meth:`Graph.dst_slices`, as
        ``[(columns within the group, readers)]`` in factored form. Heads' readers go into
        ``into(rows)`` when it gives a buffer, else into a workspace buffer: use them before asking
        for the next group."""
        if name == "logits":
            return [(slice(0, 1), DenseReaders(self.grad["logits"][None]))]
        site = next((s for s in self.graph.sites if s.name == name), None)
        if site is not None:
            if site.kind == "transcoder":
                return self._transcoder_readers(site)
            return site_readers(self.graph, self.grad, site)
        kind, L = _group(name)
        if kind == "mlp":
            if L not in self.graph.neurons:
                return [(slice(0, 1), DenseReaders(self.grad[name][None]))]
            return self._neuron_readers(L)
        sums = HeadSums(radial=False)
        sums.add(self.bk, L, self)
        readers = head_readers(self.bk, self.graph, L, sums, self.workspace, into)
        return [(slice(0, readers.n), readers)]

    def _neuron_readers(self, L: int) -> list:
        """Neuron j reads the MLP input through ``ln2`` and ``W[:, j]`` of each of its reads (a
        gated neuron two: its input gradient is g_gate·W_gate[:, j] + g_in·W_in[:, j]); the ``rest``
        node reads what the other neurons read (total MLP-input gradient minus the selected neurons')."""
        neuron_ids = self.graph.neuron_ids(L)
        assert neuron_ids is not None  # (called for neuron layers only)
        parts = []
        for r, read in enumerate(self.bk.neuron_reads(L)):
            grad_pre = self.grad[f"pre{L}.{r}"]  # [B, P, d_mlp]
            ids = neuron_ids.to(grad_pre.device)
            parts.append((grad_pre[..., ids].permute(2, 0, 1), frozen(read.W)[:, ids].T))  # [n, B, P], [n, d]
        total = self.grad[f"mlp{L}"] if self.graph.has_rest(L) else None
        return self._through_ln2(L, parts, total, normalized=True)

    def _transcoder_readers(self, site: Site) -> Readers:
        """A transcoder's features read like neurons (through ``ln2`` when it reads the normalised
        input, and ``W_enc[:, j]``); ``rest`` is the features' total input gradient minus the
        selected ones'; the error reads densely."""
        grad_pre = self.grad[f"pre:{site.name}"]
        ids = torch.tensor(site.features, dtype=torch.long, device=grad_pre.device)
        enc = frozen(site_sae(self.graph, site).W_enc)[:, ids].T
        total = self.grad[f"feat_in:{site.name}"] if site.has_rest else None
        out = self._through_ln2(
            site.layer, [(grad_pre[..., ids].permute(2, 0, 1), enc)], total, site.normalized, gain=False
        )  # (hook_normalized is before ln2's gain)
        k = len(site.node_names())
        return out + [(slice(k - 1, k), DenseReaders(self.grad[f"err_in:{site.name}"][None]))]

    def _through_ln2(
        self,
        L: int,
        parts: list[tuple[torch.Tensor, torch.Tensor]],
        total: torch.Tensor | None,
        normalized: bool,
        gain: bool = True,
    ) -> list:
        """Low-rank readers, one set per part ``(g [n, B, P], enc [n, d])`` of the same n readers
        (their gradients add up), behind ``ln2``'s normalisation when ``normalized`` (and its gain
        when ``gain``); plus a dense reader for everything else that reads the same input when
        ``total`` (its full input gradient) is given."""
        ln_gain, centred = self.bk.norm_gain(L, 2), self.bk.norm_kind(L, 2) == "layernorm"
        xhat = scale = None
        if normalized:
            xhat, scale = self.fwd.get(f"norm2_{L}"), self.fwd.get(f"scale2_{L}")
        readers = []
        for g, enc in parts:
            if normalized and gain and ln_gain is not None:
                enc = enc * frozen(ln_gain)[None]
            if scale is not None:
                g = g / scale[None, ..., 0]
            readers.append(LowRankReaders(g, enc, xhat, centred=normalized and centred))
        n = parts[0][0].shape[0]
        out: Readers = [(slice(0, n), r) for r in readers] if n else []
        if total is not None:
            picked = sum(torch.einsum("nbp,nd->bpd", r.g, r.enc) for r in readers)
            terms = [r.terms() for r in readers]
            # the readers share x̂ and the norm kind: every one has a centre (radial) term, or none does
            centres = [c for c, _ in terms if c is not None]
            radials = [a for _, a in terms if a is not None]
            centre = -cast(torch.Tensor, sum(c.sum(0, keepdim=True) for c in centres)) if centres else None
            radial = -cast(torch.Tensor, sum(a.sum(0, keepdim=True) for a in radials)) if radials else None
            out.append((slice(n, n + 1), DenseReaders((total - picked)[None], centre=centre, radial=radial, xhat=xhat)))
        return out


# Model dtypes in which the heads' readers are projected and the stacked readers contracted
# (see :func:`head_readers` and :class:`ReaderStack`); float16's range is too narrow for g/σ
PROJECT_IN_MODEL_DTYPE = (torch.bfloat16,)


def projection_dtype(bk: Any) -> torch.dtype | None:
    """The model's dtype where the big products run in it (bfloat16), else None (float32 at least)."""
    return bk.dtype if bk.dtype in PROJECT_IN_MODEL_DTYPE else None


def _gained(bk: Any, L: int, letter: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``W_Q/K/V`` of layer L, ``[head, d_model, d_head]`` (one per query head), with ln1's gain
    folded in: in float32 at least (:func:`frozen`), or in ``dtype`` (rounded once)."""
    W, gain = bk.W_qkv(L, letter).detach(), bk.norm_gain(L, 1)
    if dtype is None:
        W, gain = frozen(W), None if gain is None else frozen(gain)
    else:
        W, gain = W.to(dtype), None if gain is None else gain.detach().to(dtype)
    return W if gain is None else W * gain[None, :, None]


class HeadSums:
    """Layer L's q/k/v input gradients in head space, summed over runs: ``Σ g/σ`` per letter
    ``[batch, pos, head, d_head]``, and (with ``radial``) each run's own x̂ term of the norm's
    Jacobian, ``(g/σ)·(x̂ W)/d`` per letter ``[head, batch, pos]``, with its x̂. Adding a run
    reads what it needs, so the run's head-space captures can be dropped after."""

    def __init__(self, radial: bool) -> None:
        self.radial = radial
        self.total: list[torch.Tensor] = []
        self.radials: list[tuple[list[torch.Tensor], torch.Tensor]] = []
        self.xhat: torch.Tensor | None = None  # the first run's x̂ (whether ln1 normalises at all)

    def add(self, bk: Any, L: int, run: DestinationGradients) -> None:
        scale, xhat = run.fwd.get(f"scale{L}"), run.fwd.get(f"norm{L}")  # [B, P, 1], [B, P, d]
        self.xhat = xhat if self.xhat is None else self.xhat
        parts = []
        for i, letter in enumerate("qkv"):
            g = run.grad[f"{letter}{L}"]  # [batch, pos, head, d_head]
            if scale is not None:
                g = g / scale[..., None]
            if len(self.total) < 3:
                self.total.append(g.clone() if g is run.grad[f"{letter}{L}"] else g)
            else:
                self.total[i] += g
            if self.radial and xhat is not None:
                W = _gained(bk, L, letter)
                flat = W.permute(1, 0, 2).reshape(W.shape[1], -1)  # [d_model, head·d_head]: one GEMM
                proj = (xhat.reshape(-1, xhat.shape[-1]) @ flat).view(g.shape)  # x̂ through the (gained) projection
                parts.append((g * proj).sum(-1).permute(2, 0, 1) / xhat.shape[-1])
        if parts and xhat is not None:
            self.radials.append((parts, xhat))


def head_readers(
    bk: Any, graph: Graph, L: int, sums: HeadSums, workspace: dict, into: Allocator | None = None
) -> DenseReaders:
    """Input gradients of layer L's q/k/v destinations, ``[3·H (or H), batch, pos, d_model]``,
    with the norm's Jacobian already applied, from their head-space sums over runs.

    Per head, g' = (w ⊙ W g) / σ, less the Jacobian's per-position terms mean(g') and
    x̂·mean(g' ⊙ x̂), which are cheap in head space. The first term is linear in g/σ, so the runs'
    head-space gradients are summed before one projection into G; the x̂ term is each run's own
    (``sums.radials``). For one run (EAP; every EAP-IG step behind post-norms) the sums carry no
    radial terms: x̂ · g' is read off G itself before the centre term is subtracted.

    In a bfloat16 model the projection W g runs in bfloat16 (float32 accumulation, its output
    rounded to 2⁻⁹ relative); G stays bfloat16 where ``into`` gives a bfloat16 buffer (a
    :class:`ReaderStack`'s), else is kept in float32. The inputs already carry that rounding from
    every op of the model's bf16 backward (benchmarks/RESULTS.md, issue 11, measures what it moves).

    G is ``into(rows)`` where that gives a buffer, else the workspace's: valid until the next
    call for any layer."""
    centred = bk.norm_kind(L, 1) == "layernorm"
    low = projection_dtype(bk)
    d, H = graph.arch.d_model, graph.arch.n_heads
    B, P = sums.total[0].shape[:2]
    split = graph.split_qkv
    shape = ((3 if split else 1) * H, B, P, d)
    # (read by the contraction before the next group asks: one buffer serves every layer and run)
    G = into(shape[0]) if into is not None else None
    if G is None or G.dtype not in (sums.total[0].dtype, low):
        G = reusable(workspace, "head_readers", shape, sums.total[0])
    if not split:
        G.zero_()
    centres = []  # per letter, [head, batch, pos] (summed over runs)
    for i, letter in enumerate("qkv"):
        W = _gained(bk, L, letter, low)
        total = sums.total[i]  # Σ_runs g / σ, [batch, pos, head, d_head]
        # g' written straight into G (no concatenation)
        gh = total.permute(2, 0, 1, 3).reshape(H, B * P, -1)
        rows = G[i * H : (i + 1) * H].view(H, B * P, d) if split else G.view(H, B * P, d)
        if low is not None and G.dtype != low:  # projected in the model's dtype, kept in float32
            prod = reusable(workspace, "head_readers_low", (H, B * P, d), W)
            torch.bmm(gh.to(low), W.transpose(1, 2), out=prod)
            rows.copy_(prod) if split else rows.add_(prod)
        elif split:
            torch.bmm(gh.to(G.dtype), W.transpose(1, 2), out=rows)
        else:
            rows.baddbmm_(gh.to(G.dtype), W.transpose(1, 2))
        if centred and sums.xhat is not None:
            centres.append(torch.einsum("bphe,he->hbp", total, W.sum(1, dtype=total.dtype)) / d)

    def combine(parts: list[torch.Tensor]) -> torch.Tensor:  # split: one row per letter; joint: they add up
        return torch.cat(parts) if split else cast(torch.Tensor, sum(parts))  # (parts: never empty)

    radials = sums.radials
    if sums.xhat is not None and not sums.radial:  # x̂ · g' (all letters at once)
        radials = [([torch.einsum("nbpd,bpd->nbp", G, sums.xhat.to(G.dtype)) / d], sums.xhat)]
    if centres:
        G.sub_(combine(centres).to(G.dtype)[..., None])
    for parts, xhat in radials:  # (in G's dtype: mixed-dtype elementwise ops are slow on CPU)
        G.addcmul_(combine(parts).to(G.dtype)[..., None], xhat.to(G.dtype), value=-1.0)
    return DenseReaders(G)


class SummedGradients:
    """The input gradients of several runs with the same source deltas (EAP-IG's steps), summed
    where that is exact, so that one contraction serves them all: plain dense readers (whole
    MLPs, the logits) and heads' head-space gradients are summed as each run is added
    (:class:`HeadSums` keeps only each run's x̂ and its per-head radial coefficients); other
    dense readers add up at contraction; low-rank readers behind a norm carry each run's own x̂
    in their Jacobian and are kept per run.

    What is kept per run is small (one norm input per layer besides the neurons' and sites'
    captures), so keeping all of EAP-IG's steps costs far less than contracting every edge once
    per step."""

    def __init__(self) -> None:
        self.runs: list[DestinationGradients] = []
        self.heads: dict[int, HeadSums] = {}
        self.plain: dict[str, torch.Tensor] = {}  # group → Σ_runs input gradient [B, P, d]
        self.owned: set[str] = set()  # which of them are new tensors (see :func:`_add_into`)

    def add(self, run: DestinationGradients) -> None:
        graph = run.graph.node_graph
        for L in range(graph.arch.n_layers):
            if f"q{L}" not in run.grad:  # (no gradient reached this layer's heads)
                continue
            self.heads.setdefault(L, HeadSums(radial=True)).add(run.bk, L, run)
            for letter in "qkv":  # (summed: no longer needed)
                del run.grad[f"{letter}{L}"]
        plain = ["logits"] + [f"mlp{L}" for L in range(graph.arch.n_layers) if L not in graph.neurons]
        for key in plain:  # (a site at the MLP is its own group: "mlp{L}" is then not captured)
            g = run.grad.pop(key, None)
            if g is not None:
                _add_into(self.plain, self.owned, key, g)
        self.runs.append(run)

    @property
    def workspace(self) -> dict:
        return self.runs[0].workspace

    @property
    def bk(self) -> Any:
        return self.runs[0].bk

    def nbytes(self) -> int:
        """Bytes kept that grow with the runs: their captures (the heads' sums are one run's
        head-space gradients, however many runs they sum)."""
        return sum(_captured_bytes(dg) for dg in self.runs)

    def next_nbytes(self) -> int:
        """About what :meth:`nbytes` would be with one more run like the last."""
        return self.nbytes() + _captured_bytes(self.runs[-1])

    def group(self, name: str, into: Allocator | None = None) -> list[tuple[slice, DenseReaders | LowRankReaders]]:
        dg = self.runs[0]
        if name in self.plain:
            return [(slice(0, 1), DenseReaders(self.plain[name][None]))]
        if name.startswith("attn") and not any(s.name == name for s in dg.graph.sites):
            readers = head_readers(dg.bk, dg.graph, _group(name)[1], self.heads[_group(name)[1]], dg.workspace, into)
            return [(slice(0, readers.n), readers)]
        summed: dict[tuple[int, int], torch.Tensor] = {}  # columns → Σ_runs dense input gradients
        owned: set[tuple[int, int]] = set()  # (see :func:`_add_into`)
        kept: list[tuple[slice, DenseReaders | LowRankReaders]] = []
        for dg in self.runs:
            for sub, part in dg.group(name):
                if not isinstance(part, DenseReaders):
                    kept.append((sub, part))
                    continue
                key = (sub.start, sub.stop)
                _add_into(summed, owned, key, part.dense())  # (DenseReaders here)
        dense: list[tuple[slice, DenseReaders | LowRankReaders]] = [
            (slice(*k), DenseReaders(G)) for k, G in summed.items()
        ]
        return dense + kept


def _add_into(sums: dict, owned: set, key: Any, G: torch.Tensor) -> None:
    """``sums[key] += G``, never writing into a run's own capture: the first G is kept as it is
    (a capture may alias another), the second makes a new tensor (``owned``), later ones add in place."""
    if key not in sums:
        sums[key] = G
    elif key in owned:
        sums[key] += G
    else:
        sums[key] = sums[key] + G
        owned.add(key)


def _captured_bytes(dg: DestinationGradients) -> int:
    return sum(t.numel() * t.element_size() for d in (dg.fwd, dg.grad) for t in d.values())


def _group(name: str) -> tuple[str, int]:
    """A destination group of the graph (``attn3``, ``mlp3``) → ``("attn", 3)``."""
    kind = "attn" if name.startswith("attn") else "mlp"
    return kind, int(name[len(kind) :])


def site_readers(graph: Graph, grads: dict, site: Site) -> Readers:
    """The site's destinations as ``[(columns within the group, readers)]``: features are
    low-rank readers (∂m/∂pre_j along ``W_enc[:, j]``); ``rest`` reads through the other
    features' encoder rows; ``err`` is a dense reader."""
    sae = site_sae(graph, site)
    g = grads[f"pre:{site.name}"]  # [B, P, d_sae]
    W_enc = frozen(sae.W_enc)
    ids = feature_ids(site, g.device)
    n = len(ids)
    out: Readers = []
    if n:
        out.append((slice(0, n), LowRankReaders(g[..., ids].permute(2, 0, 1), W_enc[:, ids].T)))
    if site.has_rest:
        un = other_features(site, g.device)
        out.append((slice(n, n + 1), DenseReaders((g[..., un] @ W_enc[:, un].T)[None])))
    k = len(site.node_names())
    out.append((slice(k - 1, k), DenseReaders(grads[f"err_in:{site.name}"][None])))
    return out


def forward_backward(
    model: Any,
    graph: Graph,
    task: Any,
    input_override: torch.Tensor | None = None,
    capture_sources: dict | None = None,
    extra_fwd: list | None = None,
    site_values: dict[str, torch.Tensor] | None = None,
    workspace: dict | None = None,
) -> tuple[DestinationGradients, torch.Tensor]:
    """One forward of the clean prompts and one backward of the mean metric.

    ``input_override`` replaces the embedding (``blocks.0.hook_resid_pre``), e.g. with an
    interpolation for EAP-IG; ``capture_sources`` (a dict) receives the raw source activations;
    ``site_values`` fixes the SAE sites' nodes (straight-through, see :func:`site_hooks`);
    ``workspace`` (a dict) keeps scratch buffers for the contraction across runs.
    Returns the captured destination gradients and the per-example metric values.
    """
    dg = DestinationGradients(model, graph, workspace)
    bk = dg.bk
    fwd, bwd = dg.hooks()

    def leaf_input(x, hook):
        x = (input_override if input_override is not None else x).detach()
        return x.requires_grad_(True)

    fwd = (
        [(bk.embed_hook(), leaf_input)]
        + fwd
        + (source_hooks(model, graph, capture_sources, sites=False) if capture_sources is not None else [])
        + (extra_fwd or [])
        + site_hooks(model, graph, capture_sources, dg.grad, values=site_values)
    )  # sites last at their hook point
    with (
        torch.enable_grad(),
        frozen_params(model, *graph.node_graph.saes.values()),
        bk.flags(split_qkv_input=False),
        bk.hooks(fwd_hooks=fwd, bwd_hooks=bwd),
    ):
        logits = task.run(model, task.clean)
        values = task.score(logits, " during attribution")
        values.mean().backward()
    return dg, values.detach()


def contract(
    graph: Graph,
    deltas: SourceDeltas,
    grads: DestinationGradients | SummedGradients,
    out: torch.Tensor | EdgeBlocks,
    weight: float = 1.0,
) -> None:
    """``out[u, v] += weight · Σ_{batch,pos,d} delta_u · ∂m/∂in_v`` for every valid edge: per
    destination group, one matmul over the dense sources upstream of it (consecutive groups'
    plain dense readers stacked, see :class:`ReaderStack`) plus one factored product per
    upstream low-rank block (neurons, SAE features). ``out`` is a dense
    ``[n_src, n_dst]`` tensor or :class:`EdgeBlocks` (each group's products go into its block). A
    position-resolved graph keeps each position's own sum, written into the position diagonal of
    its (dense) score matrix."""
    row_sums = RowSums(deltas.dense)
    per_position = isinstance(graph, PositionalGraph)
    if isinstance(out, EdgeBlocks):
        assert not per_position  # (EdgeBlocks refuse position-resolved graphs)
        for name in graph.dst_slices():
            _contract_group(graph, name, deltas, grads, out, weight, row_sums)
        return
    scores = graph.diagonal(out) if isinstance(graph, PositionalGraph) else out  # [n_src, n_dst(, P)] view
    node = graph.node_graph
    stack = (
        ReaderStack(deltas.dense, scores, weight, grads.workspace, projection_dtype(grads.bk))
        if stacks(graph) and deltas.contiguous
        else None
    )
    for name, cols in node.dst_slices().items():
        Du, pick, target, blocks = _upstream_deltas(node, name, deltas)
        # plain dense readers of a prefix of the rows wait in the stack (heads' are written there)
        stop = target.stop if isinstance(target, slice) and not target.start and not blocks else None
        room = stack.room if stack is not None and stop is not None else None
        for sub, readers in grads.group(name, into=room):
            c = slice(cols.start + sub.start, cols.start + sub.stop)
            if stack is not None and stop is not None and stack.add(stop, c, readers):
                continue
            if len(Du):
                sums = row_sums[pick] if readers.has_centre else None
                scores[target, c] += weight * dense_scores(Du, readers, sums, per_position).to(out.dtype)
            for block in blocks:
                scores[block.rows, c] += weight * lowrank_scores(block, readers, per_position).to(out.dtype)
    if stack is not None:
        stack.flush()


STACK_BYTES = 2**28  # readers stacked per pass over the deltas (at most 256 MiB: a few layers' heads)


def contraction_memory(bk: Any, graph: Graph, method: str) -> tuple[float, float]:
    """What attribution holds beyond the ablated, clean and delta buffers that
    :func:`~circuitgraph.engine.batching.auto_batch_size` counts: ``(copies of the deltas, fixed
    bytes)``. Behind post-norms, EAP-IG's steps each see the deltas through their own Jacobian
    (one more copy; EAP writes in place); a :class:`ReaderStack` holds its buffer, and in a
    bfloat16 model a half-size copy of the deltas."""
    copies = 1.0 if method != "eap" and norm_groups(bk, graph) else 0.0
    if not stacks(graph):
        return copies, 0.0
    return copies + (0.5 if projection_dtype(bk) is not None else 0.0), float(STACK_BYTES)


def stacks(graph: Graph) -> bool:
    """Whether :func:`contract` stacks readers (:class:`ReaderStack`) on this graph: a dense score
    matrix (not edge blocks, not per position) and no low-rank sources, whose rows (neurons',
    features') break the prefixes of dense rows that groups read."""
    node = graph.node_graph
    return not (isinstance(graph, PositionalGraph) or graph.uses_blocks or node.neurons or lowrank_rows(graph))


class ReaderStack:
    """Consecutive destination groups' plain dense readers ``[n, B, P, d]``, stacked in one buffer
    so that one matmul per run of shared upstream rows scores them all. The contraction is
    bound by reading the deltas ``[n_up, B, P, d]``: group by group, every upstream row is read
    once per group (twice per layer); stacked, once per stack. Groups read prefixes of the rows
    (graph order is topological), so the groups after the i-th stop share rows up to it. The
    buffer (at most ``STACK_BYTES`` and the deltas' own size) is counted in ``auto_batch_size``'s
    budget (:func:`contraction_memory`).

    ``dtype`` (a bfloat16 model's): the stack and a copy of the deltas are held in it, and its
    products run in it (float32 accumulation, each product rounded to 2⁻⁹ relative before it is
    added to the float32 scores); about 4× the float32 rate on a CPU with bf16 matrix units."""

    def __init__(
        self, D: torch.Tensor, scores: torch.Tensor, weight: float, workspace: dict, dtype: torch.dtype | None = None
    ) -> None:
        if dtype is not None and dtype != D.dtype:  # D: [n_dense, B, P, d]
            D = reusable(workspace, "stack_deltas", tuple(D.shape), D.new_empty(0, dtype=dtype)).copy_(D)
        self.D, self.scores, self.weight = D, scores, weight
        row = D[0].numel() * D.element_size() if len(D) else 1
        # never more readers than columns, nor more bytes than the deltas themselves hold
        rows = max(1, min(STACK_BYTES // row, scores.shape[1], len(D)))
        self.buf = reusable(workspace, "reader_stack", (rows, *D.shape[1:]), D)
        self.used = 0
        self.items: list[tuple[int, slice, slice]] = []  # (upstream stop, score columns, buffer rows)

    def room(self, n: int) -> torch.Tensor | None:
        """The next ``n`` rows of the buffer (after scoring what it holds, if they would not fit),
        or None when ``n`` rows exceed the buffer."""
        if n > len(self.buf):
            return None
        if self.used + n > len(self.buf):
            self.flush()
        return self.buf[self.used : self.used + n]

    def add(self, stop: int, cols: slice, readers: DenseReaders | LowRankReaders) -> bool:
        """Stack ``readers`` of the upstream rows before ``stop`` for columns ``cols``; False
        (nothing done) for readers that are not plain dense, or that do not fit."""
        if not isinstance(readers, DenseReaders) or readers.centre is not None or readers.radial is not None:
            return False
        G, n = readers.G, readers.n
        if G.shape[1:] != self.buf.shape[1:]:
            return False
        here = self.buf[self.used : self.used + n]
        if not (G.data_ptr() == here.data_ptr() and len(here) == n):  # (heads' readers are written in place)
            free = self.room(n)
            if free is None:
                return False
            free.copy_(G)
        self.items.append((int(stop), cols, slice(self.used, self.used + n)))
        self.used += n
        return True

    def flush(self) -> None:
        """Score every stacked group: the rows between consecutive stops against the groups that
        read them (all groups from that stop on, one matmul)."""
        items, self.items, self.used = self.items, [], 0
        stops = [stop for stop, _, _ in items]
        if stops != sorted(stops):  # (graph order never does this; exact regardless)
            for item in items:
                self._score(0, item[0], [item])
            return
        start = 0
        for i, (stop, _, _) in enumerate(items):
            if stop > start:
                self._score(start, stop, items[i:])
                start = stop

    def _score(self, start: int, stop: int, items: list[tuple[int, slice, slice]]) -> None:
        first, last = items[0][2].start, items[-1][2].stop  # (stacked items are adjacent rows)
        Du = self.D[start:stop]
        acc = Du.reshape(len(Du), -1) @ self.buf[first:last].reshape(last - first, -1).T  # [rows, readers]
        for _, cols, r in items:
            self.scores[start:stop, cols] += self.weight * acc[:, r.start - first : r.stop - first].to(
                self.scores.dtype
            )


class RowSums:
    """Σ over d of every dense delta row, ``[n_dense, B, P]``: summed on first use, once per
    contraction, since only norm-centred readers need them (a LayerNorm model's neurons, their
    ``rest`` node and its transcoders), and a pass over the deltas is most of a group's cost."""

    def __init__(self, D: torch.Tensor) -> None:
        self.D = D  # [n_dense, B, P, d]
        self.sums: torch.Tensor | None = None

    def __getitem__(self, rows: slice | torch.Tensor) -> torch.Tensor:
        if self.sums is None:
            self.sums = self.D.sum(-1)
        return self.sums[rows]


def _upstream_deltas(
    graph: Graph, name: str, deltas: SourceDeltas
) -> tuple[torch.Tensor, slice | torch.Tensor, slice | torch.Tensor, list]:
    """The deltas destination group ``name`` reads: dense ``[n, B, P, d]`` rows, which of the
    dense rows they are, their graph rows (slices when they are a prefix), and the upstream
    low-rank blocks."""
    D, rows = deltas.dense, deltas.dense_rows
    up = graph.upstream(name)
    if deltas.contiguous and isinstance(up, slice):  # no neurons or sites: rows are graph rows
        return D[up], up, up, []
    up_rows = graph.upstream_rows(name).to(rows.device)
    mask = torch.isin(rows, up_rows)
    blocks = [b for b in deltas.lowrank if bool(torch.isin(b.rows[:1], up_rows))]
    target = rows[mask]
    k = len(target)
    # upstream rows come first in graph order: then a view, not a copy of the rows
    pick: slice | torch.Tensor = slice(0, k) if bool(mask[:k].all()) else mask
    return D[pick], pick, target, blocks


def _contract_group(
    graph: Graph,
    name: str,
    deltas: SourceDeltas,
    grads: DestinationGradients | SummedGradients,
    out: EdgeBlocks,
    weight: float,
    row_sums: RowSums,
) -> None:
    """One destination group's scores, added into its block of ``out`` (rows: the group's own
    upstream rows, in order)."""
    block = out.blocks[name]  # [n_up, n_cols]
    lay = out.layout
    Du, pick, target, blocks = _upstream_deltas(graph, name, deltas)
    local = slice(None) if isinstance(target, slice) else lay.local_rows(name, target)
    for sub, readers in grads.group(name):
        if len(Du):
            sums = row_sums[pick] if readers.has_centre else None
            block[local, sub] += weight * dense_scores(Du, readers, sums).to(block.dtype)
        for lr in blocks:
            block[lay.local_rows(name, lr.rows), sub] += weight * lowrank_scores(lr, readers).to(block.dtype)
