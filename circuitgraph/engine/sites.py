"""SAE sites inside the engine: the splice hooks that make features, ``rest`` and ``err`` graph
nodes (see :mod:`circuitgraph.graph.sites` for what they compute).

At a site with input ``x`` the spliced forward computes::

    pre  = encoder pre-activations of x                     (feature j reads x through W_enc[:, j])
    acts = activation(pre)
    err  = x_err − decode(encode(x_err))                    (x_err: x, as a separate reader)
    out  = b_dec + acts @ W_dec + err                       (= x up to rounding)

Raw captures (like the engine's other sources): ``acts:{site}`` ``[B, P, d_sae]`` and
``err:{site}`` ``[B, P, d]``. Gradients for attribution: ``pre:{site}`` (∂m/∂pre) and
``err_in:{site}`` (∂m/∂x_err). Features are low-rank on both sides (a scalar times ``W_dec[i]``
written, ``W_enc[:, j]`` read), so EAP never materialises a feature's d-vector.
"""

from __future__ import annotations

import torch

from circuitgraph.engine.activations import frozen
from circuitgraph.graph import Graph
from circuitgraph.graph.sites import Site


def site_sae(graph: Graph, site: Site):
    """The SAE attached to ``site``; a clear error when the graph has none (e.g. loaded from a file)."""
    sae = getattr(graph, "saes", {}).get(site.hook_name)
    if sae is None:
        raise ValueError(
            f"this graph has an SAE site at {site.hook_name} but no SAE attached there; call "
            "graph.attach_saes([...]) with the SAEs it was built with (e.g. circuitgraph.sae.zoo_saes(...))")
    return sae


def _ids(site: Site, device) -> torch.Tensor:
    return torch.tensor(site.features, dtype=torch.long, device=device)


def _unselected(site: Site, device) -> torch.Tensor:
    keep = torch.ones(site.d_sae, dtype=torch.bool, device=device)
    keep[_ids(site, device)] = False
    return keep.nonzero()[:, 0]


def site_hooks(model, graph: Graph, capture: dict | None, grads: dict | None = None) -> list:
    """Forward hooks splicing every site's SAE into the model (output unchanged up to rounding),
    storing ``acts``/``err`` into ``capture`` and, under autograd, ∂m/∂pre and ∂m/∂x_err into
    ``grads``. Add them after any other hook on the same hook point."""
    graph = graph.node_graph
    hooks = []
    for site in graph.sites:
        sae = site_sae(graph, site)
        if site.kind == "transcoder":
            hooks += _transcoder_hooks(model, site, sae, capture, grads)
            continue

        def hook(x, hook, site=site, sae=sae):
            track = grads is not None and torch.is_grad_enabled() and x.requires_grad
            pre = sae.pre_acts(x)
            x_err = x.view_as(x) if track else x  # a separate node, so its gradient is the error's own
            if track:
                pre.register_hook(_keep(grads, f"pre:{site.name}"))
                x_err.register_hook(_keep(grads, f"err_in:{site.name}"))
            acts = sae.activation(pre)
            err = x_err - sae.decode(sae.encode(x_err))
            if capture is not None:
                capture[f"acts:{site.name}"] = frozen(acts)
                capture[f"err:{site.name}"] = frozen(err)
            return (acts @ sae.W_dec + sae.b_dec + err).to(x.dtype)

        hooks.append((site.hook_name, hook))
    return hooks


def _norm(model, site: Site):
    """The norm a transcoder reads through (``ln2``), or None when it reads the raw residual."""
    return model.blocks[site.layer].ln2 if site.normalized else (lambda x: x)


def _transcoder_hooks(model, site: Site, sae, capture: dict | None, grads: dict | None) -> list:
    """A transcoder stands in for layer L's MLP: at ``hook_mlp_in`` its features and its error get
    their own copies of the MLP input (so each has its own gradient); at ``hook_mlp_out`` the
    output becomes ``b_dec + acts @ W_dec + err`` with ``err = MLP(x_err) − transcoder(x_err)``
    (the model's own MLP runs on the error's copy)."""
    norm = _norm(model, site)
    state: dict = {}

    def read(x, hook):
        track = grads is not None and torch.is_grad_enabled() and x.requires_grad
        x_feat, x_err = (x.view_as(x), x.view_as(x)) if track else (x, x)
        if track:
            x_feat.register_hook(_keep(grads, f"feat_in:{site.name}"))
            x_err.register_hook(_keep(grads, f"err_in:{site.name}"))
        state.update(x_feat=x_feat, x_err=x_err, track=track)
        return x_err

    def write(out, hook):
        pre = sae.pre_acts(norm(state.pop("x_feat")))
        if state.pop("track"):
            pre.register_hook(_keep(grads, f"pre:{site.name}"))
        acts = sae.activation(pre)
        err = out - sae.decode(sae.encode(norm(state.pop("x_err"))))
        if capture is not None:
            capture[f"acts:{site.name}"] = frozen(acts)
            capture[f"err:{site.name}"] = frozen(err)
        return (acts @ sae.W_dec + sae.b_dec + err).to(out.dtype)

    L = site.layer
    return [(f"blocks.{L}.hook_mlp_in", read), (f"blocks.{L}.hook_mlp_out", write)]


def _keep(store: dict, key: str):
    def fn(g):
        store[key] = frozen(g)

    return fn


def site_sources(graph: Graph, raw: dict, site: Site, out: torch.Tensor) -> None:
    """Write the site's node activations (dense, ``[n_nodes, B, P, d]``) into ``out``."""
    sae = site_sae(graph, site)
    acts, err = raw[f"acts:{site.name}"], raw[f"err:{site.name}"]
    W_dec = frozen(sae.W_dec)
    ids = _ids(site, acts.device)
    n = len(ids)
    out[:n] = torch.einsum("bpi,id->ibpd", acts[..., ids], W_dec[ids])
    if site.has_rest:
        un = _unselected(site, acts.device)
        out[n] = acts[..., un] @ W_dec[un]
    out[-1] = err


def site_deltas(graph: Graph, diff: dict, site: Site, start: int):
    """Differences of the site's nodes: a low-rank block for the features (coefficients times
    ``W_dec`` rows) and dense rows for ``rest`` and ``err``. Returns ``(block | None, rows, dense)``."""
    from circuitgraph.attribution.blocks import LowRankSources

    sae = site_sae(graph, site)
    acts = diff[f"acts:{site.name}"]
    W_dec = frozen(sae.W_dec)
    ids = _ids(site, acts.device)
    n = len(ids)
    block = LowRankSources(torch.arange(start, start + n, device=acts.device), acts[..., ids].permute(2, 0, 1), W_dec[ids]) if n else None
    rows, dense = [], []
    if site.has_rest:
        un = _unselected(site, acts.device)
        rows.append(start + n)
        dense.append(acts[..., un] @ W_dec[un])
    rows.append(start + len(site.node_names()) - 1)
    dense.append(diff[f"err:{site.name}"])
    return block, rows, dense


def site_readers(graph: Graph, grads: dict, site: Site) -> list:
    """The site's destinations as ``[(columns within the group, readers)]``: features are
    low-rank readers (∂m/∂pre_j along ``W_enc[:, j]``); ``rest`` reads through the other
    features' encoder rows; ``err`` is a dense reader."""
    from circuitgraph.attribution.blocks import DenseReaders, LowRankReaders

    sae = site_sae(graph, site)
    g = grads[f"pre:{site.name}"]  # [B, P, d_sae]
    W_enc = frozen(sae.W_enc)
    ids = _ids(site, g.device)
    n = len(ids)
    out = []
    if n:
        out.append((slice(0, n), LowRankReaders(g[..., ids].permute(2, 0, 1), W_enc[:, ids].T)))
    if site.has_rest:
        un = _unselected(site, g.device)
        out.append((slice(n, n + 1), DenseReaders((g[..., un] @ W_enc[:, un].T)[None])))
    k = len(site.node_names())
    out.append((slice(k - 1, k), DenseReaders(grads[f"err_in:{site.name}"][None])))
    return out


def site_patch_hooks(model, graph: Graph, site: Site, removed: torch.Tensor, live_minus_ablated: torch.Tensor,
                     ablated: torch.Tensor, K: int, coefs: dict) -> list:
    """The patched forward at a site (see :func:`_sae_patch_hook`, :func:`_transcoder_patch_hooks`)."""
    if site.kind == "transcoder":
        return _transcoder_patch_hooks(model, graph, site, removed, live_minus_ablated, ablated, K, coefs)
    return [_sae_patch_hook(graph, site, removed, live_minus_ablated, ablated, K, coefs)]


def _transcoder_patch_hooks(model, graph: Graph, site: Site, removed, live_minus_ablated, ablated, K: int,
                            coefs: dict) -> list:
    """Patching a transcoder layer, as for neurons: each feature with a removed in-edge gets its
    own input ``x − Σ removed deltas`` through the norm and its encoder row; ``rest`` re-encodes its
    own input; the error's input is what the model's MLP runs on (patched at ``hook_mlp_in``)."""
    sae = site_sae(graph, site)
    norm = _norm(model, site)
    up_rows = graph.upstream_rows(site.name).to(ablated.device)
    cols, rows = graph.dst_slices()[site.name], graph.src_slices()[site.name]
    _, B, P, d = ablated.shape
    ids = _ids(site, ablated.device)
    n = len(ids)
    un = _unselected(site, ablated.device) if site.has_rest else None
    W_enc, W_dec, b_enc = frozen(sae.W_enc), frozen(sae.W_dec), frozen(sae.b_enc)
    r = removed[:, up_rows, cols]  # [K, n_up, n_nodes]
    patched = r[..., :n].any(0).any(0).nonzero()[:, 0]  # features with some removed in-edge
    r_feat = r[..., patched]
    r_rest = r[..., n] if site.has_rest and bool(r[..., n].any()) else None
    r_err = r[..., -1] if bool(r[..., -1].any()) else None
    coef_ablated = _ablated_coefs(ablated[rows.start:rows.start + n], W_dec[ids])
    state: dict = {}

    def minus_removed(x, rk):  # x [K, B, P, d] − Σ_u r[k, u] D_u
        return x - torch.einsum("ku,ukbpd->kbpd", rk, live_minus_ablated[up_rows]).to(x.dtype)

    def read(x, hook):  # the live MLP input; the model's MLP then runs on the error's input
        state["x"] = x.reshape(K, B, P, d)
        return x if r_err is None else minus_removed(state["x"], r_err).reshape(x.shape)

    def write(out, hook):
        x = state.pop("x")
        x_err = x if r_err is None else minus_removed(x, r_err)
        pre = sae.pre_acts(norm(x))  # [K, B, P, d_sae]
        if len(patched):
            own = x[..., None, :] - torch.einsum("kuj,ukbpd->kbpjd", r_feat, live_minus_ablated[up_rows]).to(x.dtype)
            normed = frozen(norm(own.reshape(K * B, P, len(patched), d))).reshape(K, B, P, len(patched), d)
            pre[..., ids[patched]] = torch.einsum("kbpjd,dj->kbpj", normed, W_enc[:, ids[patched]]) + b_enc[ids[patched]]
        acts = sae.activation(pre)
        feats = acts[..., ids]
        coefs[site.name] = feats.permute(3, 0, 1, 2) - coef_ablated[:, None]
        parts = [torch.einsum("kbpi,id->ikbpd", feats, W_dec[ids])]
        if site.has_rest:
            rest = acts[..., un] if r_rest is None else sae.encode(norm(minus_removed(x, r_rest)))[..., un]
            parts.append((rest @ W_dec[un])[None])
        parts.append((frozen(out).reshape(K, B, P, d) - sae.decode(sae.encode(norm(x_err))))[None])
        nodes = torch.cat(parts)  # [n_nodes, K, B, P, d]
        live_minus_ablated[rows] = nodes - ablated[rows, None]
        return (nodes.sum(0) + sae.b_dec).reshape(out.shape).to(out.dtype)

    L = site.layer
    return [(f"blocks.{L}.hook_mlp_in", read), (f"blocks.{L}.hook_mlp_out", write)]


def _ablated_coefs(rows: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Feature coefficients ``[n, B, P]`` read back off their ablated rows (each is coef · W[i])."""
    return torch.einsum("ibpd,id->ibp", rows, W) / (W * W).sum(1).clamp_min(1e-30)[:, None, None]


def _sae_patch_hook(graph: Graph, site: Site, removed: torch.Tensor, live_minus_ablated: torch.Tensor,
                    ablated: torch.Tensor, K: int, coefs: dict):
    """The patched forward at a site: each feature's pre-activation loses the removed upstream
    deltas projected on its encoder row (exact: the encoder is linear before the activation);
    ``rest`` and ``err`` run the SAE on ``x`` minus their removed deltas. Records the site's live
    node activations for the readers after it, and its features' coefficient deltas in ``coefs``.

    Feature → feature removals go through the virtual weights ``W_dec[u] · W_enc[:, j]`` and the
    upstream coefficient deltas, never through d-vectors: projecting every upstream d-vector onto
    every feature's encoder row would cost n_up · n_features · d per token."""
    sae = site_sae(graph, site)
    up_rows = graph.upstream_rows(site.name).to(ablated.device)
    cols = graph.dst_slices()[site.name]
    rows = graph.src_slices()[site.name]
    _, B, P, d = ablated.shape
    ids = _ids(site, ablated.device)
    n = len(ids)
    un = _unselected(site, ablated.device) if site.has_rest else None
    W_enc, W_dec = frozen(sae.W_enc), frozen(sae.W_dec)
    r = removed[:, up_rows, cols]  # [K, n_up, n_nodes]
    r_rest = r[..., n] if site.has_rest and bool(r[..., n].any()) else None
    r_err = r[..., -1] if bool(r[..., -1].any()) else None
    # upstream feature blocks of earlier sites (low-rank) and the other, dense upstream rows
    lowrank, dense = [], torch.ones(len(up_rows), dtype=torch.bool, device=ablated.device)
    for other in graph.sites:
        first = graph.src_slices()[other.name].start
        at = (up_rows == first).nonzero()
        if other.time < site.time and other.features and len(at):
            k = int(at[0, 0])
            dense[k:k + len(other.features)] = False
            r_block = r[:, k:k + len(other.features), :n]
            if bool(r_block.any()):
                V = frozen(site_sae(graph, other).W_dec)[_ids(other, ablated.device)] @ W_enc[:, ids]  # [n_u, n]
                lowrank.append((other.name, r_block, V))
    r_dense = r[:, dense, :n]
    dense_rows = up_rows[dense]
    r_dense = r_dense if bool(r_dense.any()) else None
    W_sel = W_dec[ids]
    coef_ablated = _ablated_coefs(ablated[rows.start:rows.start + n], W_sel)

    def minus_removed(x, rk):  # x [K, B, P, d] − Σ_u r[k, u] D_u
        return x - torch.einsum("ku,ukbpd->kbpd", rk, live_minus_ablated[up_rows]).to(x.dtype)

    def hook(x, hook):
        xs = x.reshape(K, B, P, d)
        pre = sae.pre_acts(xs)  # [K, B, P, d_sae]
        if r_dense is not None:
            proj = live_minus_ablated[dense_rows] @ W_enc[:, ids]  # [n_dense, K, B, P, n]
            pre[..., ids] -= (r_dense.permute(1, 0, 2)[:, :, None, None, :] * proj).sum(0).to(pre.dtype)
        for name, r_block, V in lowrank:  # Σ_u r[k,u,j] Δcoef_u · (W_dec[u] · W_enc[:, j]), one bmm
            c = coefs[name]  # [n_u, K, B, P]
            shift = torch.bmm(c.reshape(c.shape[0], K, -1).transpose(0, 1).transpose(1, 2), r_block * V)
            pre[..., ids] -= shift.reshape(K, B, P, n).to(pre.dtype)
        acts = sae.activation(pre)
        feats = acts[..., ids]
        coefs[site.name] = feats.permute(3, 0, 1, 2) - coef_ablated[:, None]  # [n, K, B, P]
        parts = [torch.einsum("kbpi,id->ikbpd", feats, W_sel)]
        if site.has_rest:
            # (unselected pre-activations were not shifted above)
            rest_acts = acts[..., un] if r_rest is None else sae.encode(minus_removed(xs, r_rest))[..., un]
            parts.append((rest_acts @ W_dec[un])[None])
        x_err = xs if r_err is None else minus_removed(xs, r_err)
        parts.append((x_err - sae.decode(sae.encode(x_err)))[None])
        nodes = torch.cat(parts)  # [n_nodes, K, B, P, d]
        live_minus_ablated[rows] = nodes - ablated[rows, None]
        return (nodes.sum(0) + sae.b_dec).reshape(x.shape).to(x.dtype)

    return site.hook_name, hook

