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

from collections.abc import Callable
from typing import Any

import torch

from circuitgraph.engine.tensors import LowRankSources, frozen
from circuitgraph.errors import GraphError
from circuitgraph.graph import Graph
from circuitgraph.graph.sites import Site
from circuitgraph.models.backend import as_backend


def site_sae(graph: Graph, site: Site) -> Any:
    """The SAE attached to ``site``; a clear error when the graph has none (e.g. loaded from a file)."""
    sae = graph.saes.get(site.hook_name)
    if sae is None:
        raise GraphError(
            f"this graph has an SAE site at {site.hook_name} but no SAE attached there; call "
            "graph.attach_saes([...]) with the SAEs it was built with (e.g. circuitgraph.sae.zoo_saes(...))"
        )
    return sae


def feature_ids(site: Site, device) -> torch.Tensor:
    return torch.tensor(site.features, dtype=torch.long, device=device)


def other_features(site: Site, device) -> torch.Tensor:
    keep = torch.ones(site.d_sae, dtype=torch.bool, device=device)
    keep[feature_ids(site, device)] = False
    return keep.nonzero()[:, 0]


def site_hooks(
    model,
    graph: Graph,
    capture: dict | None,
    grads: dict | None = None,
    act_grads: bool = False,
    values: dict[str, torch.Tensor] | None = None,
) -> list:
    """Forward hooks splicing every site's SAE into the model (output unchanged up to rounding),
    storing ``acts``/``err`` into ``capture`` and, under autograd, ∂m/∂pre and ∂m/∂x_err into
    ``grads`` (and ∂m/∂acts, with ``act_grads``: node attribution). ``values`` (raw captures
    ``acts:{site}`` / ``err:{site}``) fixes the site's nodes to those values while gradients flow
    through the live computation (straight-through: activation EAP-IG). Add them after any other
    hook on the same hook point."""
    graph = graph.node_graph
    hooks = []
    fix = _fixer(values)
    for site in graph.sites:
        sae = site_sae(graph, site)
        if site.kind == "transcoder":
            hooks += _transcoder_hooks(model, site, sae, capture, grads, act_grads, fix)
            continue

        def hook(x, hook, site=site, sae=sae):
            track = grads is not None and torch.is_grad_enabled() and x.requires_grad
            pre = sae.pre_acts(x)
            x_err = x.view_as(x) if track else x  # a separate node, so its gradient is the error's own
            if track:
                pre.register_hook(_keep(grads, f"pre:{site.name}"))
                x_err.register_hook(_keep(grads, f"err_in:{site.name}"))
            acts = sae.activation(pre)
            if track and act_grads:
                acts.register_hook(_keep(grads, f"act:{site.name}"))
            acts, err = fix(f"acts:{site.name}", acts), fix(f"err:{site.name}", sae.error(x_err))
            if capture is not None:
                capture[f"acts:{site.name}"] = frozen(acts)
                capture[f"err:{site.name}"] = frozen(err)
            return (acts @ sae.W_dec + sae.b_dec + err).to(x.dtype)

        hooks.append((site.hook_name, hook))
    return hooks


def _norm(model: Any, site: Site) -> Any:
    """What a transcoder reads: ``ln2.hook_normalized``, i.e. the MLP input centred (LayerNorm)
    and divided by its scale, *before* ln2's gain and bias; or the raw MLP input."""
    bk = as_backend(model)
    kind, eps = bk.norm_kind(site.layer, 2), bk.norm_eps(site.layer, 2)
    if not site.normalized or kind == "none":
        return lambda x: x

    def normalize(x: torch.Tensor) -> torch.Tensor:
        if kind == "layernorm":
            x = x - x.mean(-1, keepdim=True)
        return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()

    return normalize


def _fixer(values: dict[str, torch.Tensor] | None):
    """``fix(key, t)``: ``t`` with the value ``values[key]`` and ``t``'s gradient (identity without values)."""

    def fix(key: str, t: torch.Tensor) -> torch.Tensor:
        if values is None:
            return t
        return t + (values[key].to(t.dtype) - t.detach())

    return fix


def _transcoder_hooks(
    model, site: Site, sae, capture: dict | None, grads: dict | None, act_grads: bool, fix: Callable
) -> list:
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
        track = state.pop("track")
        if track:
            pre.register_hook(_keep(grads, f"pre:{site.name}"))
        acts = sae.activation(pre)
        if track and act_grads:
            acts.register_hook(_keep(grads, f"act:{site.name}"))
        acts = fix(f"acts:{site.name}", acts)
        err = fix(f"err:{site.name}", sae.error(norm(state.pop("x_err")), target=out))
        if capture is not None:
            capture[f"acts:{site.name}"] = frozen(acts)
            capture[f"err:{site.name}"] = frozen(err)
        return (acts @ sae.W_dec + sae.b_dec + err).to(out.dtype)

    bk = as_backend(model)
    return [(bk.mlp_in_hook(site.layer), read), (bk.mlp_out_hook(site.layer), write)]


def _keep(store: dict, key: str):
    def fn(g):
        store[key] = frozen(g)

    return fn


def site_sources(graph: Graph, raw: dict, site: Site, out: torch.Tensor, features: bool = True) -> None:
    """Write the site's node activations (dense, ``[n_nodes, B, P, d]``) into ``out``; without
    ``features``, only its ``rest`` and ``err`` rows (``out`` holds just those)."""
    sae = site_sae(graph, site)
    acts, err = raw[f"acts:{site.name}"], raw[f"err:{site.name}"]
    W_dec = frozen(sae.W_dec)
    ids = feature_ids(site, acts.device)
    n = len(ids) if features else 0
    if n:
        out[:n] = torch.einsum("bpi,id->ibpd", acts[..., ids], W_dec[ids])
    if site.has_rest:
        un = other_features(site, acts.device)
        out[n] = acts[..., un] @ W_dec[un]
    out[-1] = err


def site_coefficients(graph: Graph, raw: dict, site: Site) -> torch.Tensor:
    """The site's feature activations as ``[n_features, B, P]`` (each writes coef · W_dec[i])."""
    return raw[f"acts:{site.name}"][..., feature_ids(site, raw[f"acts:{site.name}"].device)].permute(2, 0, 1)


def site_deltas(graph: Graph, diff: dict, site: Site, start: int):
    """Differences of the site's nodes: a low-rank block for the features (coefficients times
    ``W_dec`` rows) and dense rows for ``rest`` and ``err``. Returns ``(block | None, rows, dense)``."""
    sae = site_sae(graph, site)
    acts = diff[f"acts:{site.name}"]
    W_dec = frozen(sae.W_dec)
    ids = feature_ids(site, acts.device)
    n = len(ids)
    block = (
        LowRankSources(torch.arange(start, start + n, device=acts.device), acts[..., ids].permute(2, 0, 1), W_dec[ids])
        if n
        else None
    )
    rows, dense = [], []
    if site.has_rest:
        un = other_features(site, acts.device)
        rows.append(start + n)
        dense.append(acts[..., un] @ W_dec[un])
    rows.append(start + len(site.node_names()) - 1)
    dense.append(diff[f"err:{site.name}"])
    return block, rows, dense


def site_patch_hooks(model, graph: Graph, site: Site, removed: Any, deltas) -> list:
    """The patched forward at a site (see :func:`_sae_patch_hook`, :func:`_transcoder_patch_hooks`);
    ``deltas`` is the run's :class:`~circuitgraph.engine.deltas.LiveDeltas`."""
    if site.kind == "transcoder":
        return _transcoder_patch_hooks(model, graph, site, removed, deltas)
    return [_sae_patch_hook(graph, site, removed, deltas)]


class _SitePatch:
    """What both kinds of site need in a patched forward: the removals into the site's nodes
    (``r [K, n_up, n_nodes]``, split into features / rest / err) and the live-delta sums."""

    def __init__(self, graph: Graph, site: Site, removed: Any, deltas) -> None:
        self.sae = site_sae(graph, site)
        self.deltas = deltas
        device = deltas.device
        self.up = graph.upstream_rows(site.name).to(device)
        self.rows = graph.src_slices()[site.name]
        self.ids = feature_ids(site, device)
        self.n = n = len(self.ids)
        self.un = other_features(site, device) if site.has_rest else None
        # [K, n_up, n_nodes], or [K, n_up, n_nodes, P] on a position-resolved graph
        r = removed[:, self.up, graph.dst_slices()[site.name]].to(deltas.dtype)
        self.r_feat = r[:, :, :n]
        self.r_rest = r[:, :, n : n + 1] if site.has_rest and bool(r[:, :, n].any()) else None
        self.r_err = r[:, :, -1:] if bool(r[:, :, -1].any()) else None
        self.W_enc, self.W_dec, self.b_dec = frozen(self.sae.W_enc), frozen(self.sae.W_dec), frozen(self.sae.b_dec)
        self.shape = (deltas.K, deltas.B, deltas.P, deltas.d)

    def error(self, target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """:meth:`SAE.error` computed in float32, exactly as :meth:`finish` sums the nodes (a
        half-precision SAE's own decode would round differently, and the site would stop adding up)."""
        return self.deltas.live(target) - (self.deltas.live(self.sae.encode(x)) @ self.W_dec + self.b_dec)

    def minus(self, x: torch.Tensor, r: torch.Tensor | None) -> torch.Tensor:
        """``x [K, B, P, d]`` minus the removed deltas of one node (``r [K, n_up, 1]``; None: none)."""
        return x if r is None else x - self.deltas.removed_sum(r, self.up)[..., 0, :].to(x.dtype)

    def finish(
        self,
        site_name: str,
        acts: torch.Tensor,
        rest_acts: torch.Tensor | None,
        err: torch.Tensor,
        out_shape,
        out_dtype,
    ) -> torch.Tensor:
        """Record the site's live nodes (feature coefficients, dense rest and err) and return its output."""
        feats = self.deltas.live(acts[..., self.ids])  # [K, B, P, n]
        err = self.deltas.live(err)
        if self.n:
            self.deltas.record_coefs(site_name, feats.permute(3, 0, 1, 2))
        out = self.b_dec + feats @ self.W_dec[self.ids] + err
        if rest_acts is not None:
            rest = self.deltas.live(rest_acts) @ self.W_dec[self.un]
            self.deltas.record(slice(self.rows.start + self.n, self.rows.start + self.n + 1), rest[None])
            out = out + rest
        self.deltas.record(slice(self.rows.stop - 1, self.rows.stop), err[None])
        return out.reshape(out_shape).to(out_dtype)


def _transcoder_patch_hooks(model, graph: Graph, site: Site, removed, deltas) -> list:
    """Patching a transcoder layer, as for neurons: each feature with a removed in-edge gets its
    own input ``x − Σ removed deltas`` through the norm and its encoder row; ``rest`` re-encodes its
    own input; the error's input is what the model's MLP runs on (patched at ``hook_mlp_in``)."""
    sp = _SitePatch(graph, site, removed, deltas)
    sae, norm, ids = sp.sae, _norm(model, site), sp.ids
    K, B, P, d = sp.shape
    patched = sp.n and bool(sp.r_feat.any())  # some feature has a removed in-edge
    reads = [(sp.W_enc[:, ids], frozen(sae.b_enc)[ids])]
    state: dict = {}

    def read(x, hook):  # the live MLP input; the model's MLP then runs on the error's input
        state["x"] = x.reshape(K, B, P, d)
        return sp.minus(state["x"], sp.r_err).reshape(x.shape)

    def write(out, hook):
        x = state.pop("x")
        pre = sae.pre_acts(norm(x))  # [K, B, P, d_sae]
        if patched:  # each feature with a removed in-edge reads its own input (as neurons do)
            for which, new, where in deltas.own_reads(x, sp.r_feat, sp.up, norm, reads)[0]:
                cols, new = ids[which], new.to(pre.dtype)
                pre[..., cols] = new if where is None else torch.where(where[:, None, None], new, pre[..., cols])
        acts = sae.activation(pre)
        rest = None
        if site.has_rest:
            rest = acts[..., sp.un] if sp.r_rest is None else sae.encode(norm(sp.minus(x, sp.r_rest)))[..., sp.un]
        err = sp.error(out.reshape(K, B, P, d), norm(sp.minus(x, sp.r_err)))
        return sp.finish(site.name, acts, rest, err, out.shape, out.dtype)

    bk = as_backend(model)
    return [(bk.mlp_in_hook(site.layer), read), (bk.mlp_out_hook(site.layer), write)]


def _sae_patch_hook(graph: Graph, site: Site, removed: Any, deltas):
    """The patched forward at an SAE site: each feature's pre-activation loses the removed upstream
    deltas projected on its encoder row (exact: the encoder is linear before the activation; for
    upstream features through virtual weights, see :meth:`LiveDeltas.projected`); ``rest`` and
    ``err`` run the SAE on ``x`` minus their removed deltas."""
    sp = _SitePatch(graph, site, removed, deltas)
    sae, ids = sp.sae, sp.ids
    K, B, P, d = sp.shape
    r_feat = sp.r_feat if sp.n and bool(sp.r_feat.any()) else None

    def hook(x, hook):
        xs = x.reshape(K, B, P, d)
        pre = sae.pre_acts(xs)  # [K, B, P, d_sae]
        if r_feat is not None:
            pre[..., ids] -= deltas.projected(r_feat, sp.up, sp.W_enc[:, ids]).to(pre.dtype)
        acts = sae.activation(pre)
        # (unselected pre-activations were not shifted above)
        rest = None
        if site.has_rest:
            rest = acts[..., sp.un] if sp.r_rest is None else sae.encode(sp.minus(xs, sp.r_rest))[..., sp.un]
        x_err = sp.minus(xs, sp.r_err)
        return sp.finish(site.name, acts, rest, sp.error(x_err, x_err), x.shape, x.dtype)

    return site.hook_name, hook
