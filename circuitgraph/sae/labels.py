"""What an SAE feature node responds to: its top-activating tokens on the task's clean prompts.

A feature node's name (``resid_pre1.f7``) says nothing about what it represents; the tokens where
it fires hardest are the usual first label. :func:`feature_labels` runs the clean prompts once
with every site's SAE spliced in and, per site, takes a top-k over all (example, position) pairs
at once, so the cost is a forward pass plus one ``topk`` per site and batch. The result can be
handed to :func:`circuitgraph.export.write_html` as ``node_info``:

>>> info = feature_labels(model, graph, task)
>>> info["resid_pre1.f7"]["top_tokens"][0]
{'token': '31', 'position': 12, 'example': 3, 'activation': 2.71, 'context': '… 12 7 [31]'}
>>> write_html(circuit, "c.html", node_info=info)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from circuitgraph.engine.sites import site_hooks
from circuitgraph.errors import ConfigError
from circuitgraph.graph import Graph
from circuitgraph.graph.sites import Site
from circuitgraph.models.backend import as_backend

__all__ = ["feature_labels", "decode_tokens"]

ELLIPSIS = "…"


def _decoder(model, decode: Callable[[int], str] | None) -> tuple[Callable[[int], str], str]:
    """``(decode, separator)``: the tokenizer's text pieces carry their own spaces and are joined
    as they are; bare ids (no tokenizer) or a caller's ``decode`` are joined with spaces."""
    if decode is not None:
        return decode, " "
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        return (lambda i: tok.decode([int(i)])), ""
    return str, " "


def decode_tokens(model, ids, decode: Callable[[int], str] | None = None) -> list[str]:
    """Each token id of ``ids`` as text: the model's tokenizer's piece, or the id itself when the
    model has none (e.g. one prompt's tokens, to label a position-resolved graph's columns)."""
    fn, _ = _decoder(model, decode)
    return [fn(int(t)) for t in torch.as_tensor(ids).flatten().tolist()]


@torch.no_grad()
def _top_activations(model, graph: Graph, task, top: int, batch_size: int):
    """Per site name: ``(values, example, position, n_active)``: the first three ``[k, n_features]``
    (best first; padding is ``-inf`` so it never outranks a real token), the last ``[n_features]``,
    the number of real tokens where each feature is active. Batches of ``batch_size`` examples;
    each batch's top k is merged into the running top k with one more ``topk``."""
    bk = as_backend(model)
    sites = [s for s in graph.sites if s.features]
    tokens, mask = task.clean, task.attention_mask
    B, P = tokens.shape
    stop = max(s.layer for s in sites) + 1  # nothing after the last site is needed
    best: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # site → (values, flat index b*P+p)
    active: dict[str, torch.Tensor] = {}
    for start in range(0, B, batch_size):
        toks = tokens[start : start + batch_size]
        m = None if mask is None else mask[start : start + batch_size]
        kw = {} if m is None else {"attention_mask": m}
        buf: dict = {}
        with bk.flags(), bk.hooks(fwd_hooks=site_hooks(model, graph, buf)):
            model(toks, stop_at_layer=stop, **kw)
        for s in sites:
            acts = buf[f"acts:{s.name}"]
            acts = acts[..., torch.tensor(s.features, device=acts.device)].float()  # [b, P, n]
            if m is not None:
                acts = acts.masked_fill(~m.bool().to(acts.device)[..., None], float("-inf"))
            flat = acts.reshape(-1, acts.shape[-1])  # [b*P, n]
            k = min(top, flat.shape[0])
            vals, idx = flat.topk(k, dim=0)  # [k, n]
            idx = idx + start * P  # flat index into the whole task
            cnt = (flat > 0).sum(0)
            if s.name in best:  # merge with the best so far: one more topk over 2k candidates
                pv, pi = best[s.name]
                vals, pos = torch.cat([pv, vals]).topk(min(top, pv.shape[0] + k), dim=0)
                idx = torch.cat([pi, idx]).gather(0, pos)
                cnt = cnt + active[s.name]
            best[s.name], active[s.name] = (vals, idx), cnt
    out = {}
    for s in sites:
        vals, idx = best[s.name]
        out[s.name] = (vals.cpu(), (idx // P).cpu(), (idx % P).cpu(), active[s.name].cpu())
    return out


def _entry(
    site: Site,
    feature: int,
    vals,
    ex,
    pos,
    n_active: int,
    n_tokens: int,
    tokens,
    real,
    decode,
    sep: str,
    context: int,
    after: int,
) -> dict:
    top_tokens = []
    for v, e, p in zip(vals.tolist(), ex.tolist(), pos.tolist()):
        if not v > 0:  # padding (-inf) or not active: not something the feature responds to
            break
        row = tokens[e]
        start = max(p - context, 0)
        before = [decode(t) for t in row[start:p].tolist()]
        token = decode(int(row[p]))
        stop = p + 1
        while stop < min(p + 1 + after, len(row)) and bool(real[e, stop]):  # real tokens only
            stop += 1
        ctx = sep.join(([ELLIPSIS] if start > 0 else []) + before + [f"[{token}]"])
        top_tokens.append(
            {
                "token": token,
                "position": p,
                "example": e,
                "activation": v,
                "context": ctx,
                # the same window as pieces, with up to `after` following tokens: a viewer shows it
                # as text with the activating token (context_tokens[context_index]) highlighted
                "context_tokens": before + [token] + [decode(t) for t in row[p + 1 : stop].tolist()],
                "context_index": p - start,
            }
        )
    return {
        "kind": "feature",
        "site": site.hook_name,
        "feature": int(feature),
        "top_tokens": top_tokens,
        "max_activation": top_tokens[0]["activation"] if top_tokens else 0.0,
        "frequency": n_active / n_tokens if n_tokens else 0.0,
    }


def feature_labels(
    model,
    graph: Graph,
    task,
    top: int = 5,
    decode: Callable[[int], str] | None = None,
    context: int = 3,
    batch_size: int = 64,
    after: int = 2,
) -> dict[str, dict]:
    """Labels for the SAE nodes of ``graph`` from the ``task``'s clean prompts (padding ignored).

    For every feature node (``resid_pre1.f7``)::

        {"kind": "feature", "site": "blocks.1.hook_resid_pre", "feature": 7,
         "top_tokens": [{"token", "position", "example", "activation", "context"}, ...],
         "max_activation": float, "frequency": fraction of real tokens where it is active}

    ``top_tokens`` holds the ``top`` largest activations (best first; only where the feature is
    active, so fewer when it rarely fires); ``context`` is the token with up to ``context``
    preceding tokens, e.g. ``"… 12 7 [31]"``; ``context_tokens`` holds the same window as decoded
    pieces plus up to ``after`` following tokens, with the activating one at ``context_index``
    (the viewer highlights it). ``decode`` turns a token id into text (default: the
    model's tokenizer, or the id itself when the model has none). Each site's ``rest`` and ``err``
    node gets ``{"kind", "site", "description"}``. Empty for a graph without SAE sites.
    """
    if top < 1:
        raise ConfigError(f"top must be at least 1, got {top}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    graph = graph.node_graph
    if not graph.sites:
        return {}
    decode_fn, sep = _decoder(model, decode)
    tokens = task.clean.cpu()
    real = (
        torch.ones_like(tokens, dtype=torch.bool) if task.attention_mask is None else task.attention_mask.cpu().bool()
    )
    n_tokens = int(task.attention_mask.sum()) if task.attention_mask is not None else tokens.numel()
    found = _top_activations(model, graph, task, top, batch_size) if any(s.features for s in graph.sites) else {}
    labels: dict[str, dict] = {}
    for site in graph.sites:
        if site.features:
            vals, ex, pos, cnt = found[site.name]
            for j, f in enumerate(site.features):
                labels[f"{site.name}.f{f}"] = _entry(
                    site,
                    f,
                    vals[:, j],
                    ex[:, j],
                    pos[:, j],
                    int(cnt[j]),
                    n_tokens,
                    tokens,
                    real,
                    decode_fn,
                    sep,
                    context,
                    after,
                )
        if site.has_rest:
            labels[f"{site.name}.rest"] = {
                "kind": "sae_rest",
                "site": site.hook_name,
                "description": f"the {site.d_sae - len(site.features)} of {site.d_sae} features of this SAE "
                "that are not graph nodes, together",
            }
        labels[f"{site.name}.err"] = {
            "kind": "sae_error",
            "site": site.hook_name,
            "description": "the SAE's reconstruction error (activation minus reconstruction)",
        }
    return labels
