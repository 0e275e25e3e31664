"""Source activations in residual-stream space, and the ablations that replace them.

A source's activation is what it adds to the residual stream: the embedding (``input``), a
head's ``z @ W_O[h]`` (read from ``hook_z``; no ``use_attn_result`` copy needed), an MLP's
``hook_mlp_out``. They are kept as one ``[n_src, batch, pos, d_model]`` tensor so that a
contraction against destination gradients scores every edge at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitgraph.graph import Graph
from circuitgraph.graph.compat import hook_flags

ABLATIONS = ("corrupted", "zero", "mean", "resample")


def resid_pre0(L: int = 0) -> str:
    return f"blocks.{L}.hook_resid_pre"


def source_hooks(model, graph: Graph, buf: dict, sites: bool = True) -> list:
    """Forward hooks that store the raw source activations (input, per-layer z, MLP outputs)
    into ``buf`` without changing the forward pass (SAE sites, when ``sites``, splice their SAE in:
    the output is unchanged up to rounding, and ``acts:``/``err:`` captures are stored)."""
    from circuitgraph.engine.sites import site_hooks

    graph = graph.node_graph
    hooks = [(resid_pre0(), store_hook(buf, "input"))]
    for L in range(graph.arch.n_layers):
        hooks.append((f"blocks.{L}.attn.hook_z", store_hook(buf, f"z{L}")))
        if graph.has_mlp_node(L):
            hooks.append((f"blocks.{L}.hook_mlp_out", store_hook(buf, f"mlp{L}")))
        if L in graph.neurons:
            hooks.append((f"blocks.{L}.mlp.hook_post", store_hook(buf, f"post{L}")))
    return hooks + (site_hooks(model, graph, buf) if sites else [])


def store_hook(buf: dict, key: str):
    """A hook that keeps a detached copy of what passes (an activation, or in a backward hook its
    gradient) in ``buf[key]`` (see :func:`frozen` for the dtype) and changes nothing."""

    def hook(x, hook):
        buf[key] = frozen(x)

    return hook


def frozen(t: torch.Tensor) -> torch.Tensor:
    """Detached, and in float32 at least: the engine's own arithmetic (contractions, Jacobians,
    ablation deltas) runs in float32 even for half-precision models, whose bf16 edge scores would
    be mostly rounding error; float64 models stay float64."""
    t = t.detach()
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def stack_sources(model, graph: Graph, buf: dict, out: torch.Tensor | None = None,
                  compact: bool = False) -> "torch.Tensor | CompactSources":
    """Raw captures → ``[n_src, batch, pos, d_model]`` (heads projected through ``W_O``, neurons
    through their ``W_out`` rows). Dense: for patching and small graphs; attribution at neuron
    scale uses :func:`source_deltas`, which keeps neurons low-rank. With ``compact`` (and SAE
    sites), SAE features stay coefficients: a :class:`CompactSources`."""
    graph = graph.node_graph
    x0 = buf["input"]
    B, P, d = x0.shape
    slices = graph.src_slices()
    if compact and graph.sites:
        is_feature = feature_rows(graph)
        pos = torch.cumsum(~is_feature, 0) - 1

        def at(rows: slice) -> slice:  # a group's dense rows (a site's features come first)
            first = rows.start + int(is_feature[rows].sum())
            return slice(int(pos[first]), int(pos[first]) + rows.stop - first)

        out = torch.empty(int((~is_feature).sum()), B, P, d, dtype=x0.dtype, device=x0.device)
    else:
        def at(rows: slice) -> slice:
            return rows

        if out is None:
            out = torch.empty(graph.n_src, B, P, d, dtype=x0.dtype, device=x0.device)
    out[at(slices["input"])] = x0[None]
    for L in range(graph.arch.n_layers):
        W_O = frozen(model.blocks[L].attn.W_O)  # [head, d_head, d_model]
        out[at(slices[f"attn{L}"])] = torch.einsum("bphe,hed->hbpd", buf[f"z{L}"], W_O)
        if not graph.has_mlp_node(L):
            continue
        rows = slices[f"mlp{L}"]
        if L not in graph.neurons:
            out[at(rows)] = buf[f"mlp{L}"][None]
            continue
        post, W_out = _neuron_parts(model, graph, buf, L)
        n = post.shape[-1]
        out[rows.start:rows.start + n] = torch.einsum("bpi,id->ibpd", post, W_out)
        if graph.has_rest(L):
            out[rows.start + n] = buf[f"mlp{L}"] - post @ W_out
    if not graph.sites:
        return out
    from circuitgraph.engine.sites import site_coefficients, site_sources

    for site in graph.sites:
        site_sources(graph, buf, site, out[at(slices[site.name])], features=not compact)
    if not compact:
        return out
    return CompactSources(out, {site.name: site_coefficients(graph, buf, site) for site in graph.sites if site.features},
                          graph.n_src)


def feature_rows(graph: Graph) -> torch.Tensor:
    """``[n_src]`` bool: the rows that are SAE features (a site's first rows)."""
    out = torch.zeros(graph.n_src, dtype=torch.bool)
    for site in graph.sites:
        start = graph.src_slices()[site.name].start
        out[start:start + len(site.features)] = True
    return out


@dataclass
class CompactSources:
    """Source activations of a graph with SAE sites, features kept as coefficients: ``dense``
    ``[n_dense, B, P, d]`` for every other row (in graph order; see :func:`feature_rows`) and
    ``coefs`` ``{site: [n_features, B, P]}`` (each feature writes coef · W_dec[i]). What a patched
    forward needs of the ablated run, at a fraction of ``[n_src, B, P, d]``."""

    dense: torch.Tensor
    coefs: dict[str, torch.Tensor]
    n_src: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n_src, *self.dense.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return self.dense.dtype

    @property
    def device(self) -> torch.device:
        return self.dense.device

    def to(self, *args, **kw) -> "CompactSources":
        return CompactSources(self.dense.to(*args, **kw), {k: v.to(*args, **kw) for k, v in self.coefs.items()}, self.n_src)

    def pin_memory(self) -> "CompactSources":
        return CompactSources(self.dense.pin_memory(), {k: v.pin_memory() for k, v in self.coefs.items()}, self.n_src)


def _neuron_parts(model, graph: Graph, buf: dict, L: int):
    """The selected neurons' activations ``[B, P, n]`` and write directions ``[n, d]``."""
    ids = graph.neuron_ids(L).to(buf[f"post{L}"].device)
    return buf[f"post{L}"][..., ids], frozen(model.blocks[L].mlp.W_out)[ids]


def source_deltas(model, graph: Graph, diff: dict):
    """Raw differences (see :func:`raw_difference`) → :class:`SourceDeltas`: dense rows for the
    input, heads, whole MLPs and ``rest`` nodes; a low-rank block per neuron layer."""
    from circuitgraph.attribution.blocks import LowRankSources, SourceDeltas

    graph = graph.node_graph
    if not graph.neurons and not graph.sites:
        return SourceDeltas(stack_sources(model, graph, diff), torch.arange(graph.n_src, device=diff["input"].device), [])
    x0 = diff["input"]
    slices = graph.src_slices()
    dense, rows, lowrank = [x0[None]], [0], []
    for L in range(graph.arch.n_layers):
        s = slices[f"attn{L}"]
        dense.append(torch.einsum("bphe,hed->hbpd", diff[f"z{L}"], frozen(model.blocks[L].attn.W_O)))
        rows.extend(range(s.start, s.stop))
        if not graph.has_mlp_node(L):
            continue
        m = slices[f"mlp{L}"]
        if L not in graph.neurons:
            dense.append(diff[f"mlp{L}"][None])
            rows.append(m.start)
            continue
        post, W_out = _neuron_parts(model, graph, diff, L)
        n = post.shape[-1]
        lowrank.append(LowRankSources(torch.arange(m.start, m.start + n, device=x0.device), post.permute(2, 0, 1), W_out))
        if graph.has_rest(L):
            dense.append((diff[f"mlp{L}"] - post @ W_out)[None])
            rows.append(m.start + n)
    if graph.sites:
        from circuitgraph.engine.sites import site_deltas

        for site in graph.sites:
            block, site_rows, site_dense = site_deltas(graph, diff, site, slices[site.name].start)
            if block is not None:
                lowrank.append(block)
            rows.extend(site_rows)
            dense.extend(t[None] for t in site_dense)
    rows, dense = torch.tensor(rows, device=x0.device), torch.cat(dense)
    if graph.sites:  # dense rows in graph order (sites sit between layers)
        order = torch.argsort(rows)
        rows, dense = rows[order], dense[order]
    return SourceDeltas(dense, rows, lowrank)


@torch.no_grad()
def raw_sources(model, graph: Graph, task, tokens: torch.Tensor) -> dict:
    """Run ``tokens`` (with the task's attention mask) and return the raw captures
    (``input`` [B,P,d], ``z{L}`` [B,P,H,d_head], ``mlp{L}`` [B,P,d])."""
    buf: dict = {}
    with hook_flags(model), model.hooks(fwd_hooks=source_hooks(model, graph, buf)):  # (transcoders read hook_mlp_in)
        task.run(model, tokens)
    return buf


def source_activations(model, graph: Graph, task, tokens: torch.Tensor) -> torch.Tensor:
    """``[n_src, batch, pos, d]`` source activations of ``tokens``."""
    return stack_sources(model, graph, raw_sources(model, graph, task, tokens))


def raw_difference(a: dict, b: dict) -> dict:
    """``a − b`` capture by capture (heads stay in z space: W_O is applied once, afterwards)."""
    return {k: a[k] - b[k] for k in a}


@dataclass
class Ablation:
    """What an ablated edge carries instead of its clean source activation.

    corrupted  the source's activation on the corrupted prompt (activation patching; default)
    zero       zero
    mean       the per-position mean over ``reference`` token ids (default: the task's clean prompts)
    resample   the source's activation on another example's clean prompt (seeded derangement)
    """

    kind: str = "corrupted"
    reference: torch.Tensor | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ABLATIONS:
            raise ValueError(f"unknown ablation {self.kind!r}; choose one of {list(ABLATIONS)}")
        self._mean: torch.Tensor | None = None
        self._perm: torch.Tensor | None = None

    @classmethod
    def coerce(cls, ablation: "str | Ablation") -> "Ablation":
        return ablation if isinstance(ablation, Ablation) else cls(kind=ablation)

    def prepare(self, model, graph: Graph, task) -> "Ablation":
        """Compute what is shared across batches (the mean, the resampling permutation)."""
        if self.kind == "mean" and self._mean is None:
            ref = task.clean if self.reference is None else torch.as_tensor(self.reference, device=task.device)
            if ref.ndim != 2 or ref.shape[1] != task.seq_len:
                raise ValueError(f"mean-ablation reference must be [n, {task.seq_len}] token ids, got {list(ref.shape)}")
            mask = task.attention_mask if self.reference is None else None
            total, count = {}, None
            for i in range(0, ref.shape[0], 64):
                m = mask[i:i + 64] if mask is not None else torch.ones(ref[i:i + 64].shape, device=ref.device)
                raw = raw_sources(model, graph, _Plain(mask[i:i + 64] if mask is not None else None), ref[i:i + 64])
                for k, v in raw.items():
                    w = m.to(v.dtype).view(*m.shape, *([1] * (v.ndim - 2)))
                    total[k] = total.get(k, 0) + (v * w).sum(0)  # [pos, ...]
                count = m.sum(0) if count is None else count + m.sum(0)
            self._mean = {k: v / count.clamp(min=1).to(v.dtype).view(-1, *([1] * (v.ndim - 1))) for k, v in total.items()}
        if self.kind == "resample" and self._perm is None:
            n = task.n_examples
            if n < 2:
                raise ValueError("resample ablation needs at least 2 examples to resample from")
            g = torch.Generator().manual_seed(self.seed)
            shift = torch.randint(1, n, (n,), generator=g)
            self._perm = ((torch.arange(n) + shift) % n).to(task.device)  # never maps an example to itself
        return self

    def activations(self, model, graph: Graph, task, idx: slice | torch.Tensor, chunk,
                    compact: bool = False) -> "torch.Tensor | CompactSources":
        """Ablated source activations ``[n_src, batch, pos, d]`` for examples ``idx`` of ``task``
        (``chunk`` is ``task.select(idx)``); ``compact``: SAE features as coefficients."""
        return stack_sources(model, graph, self.raw(model, graph, task, idx, chunk), compact=compact)

    def raw(self, model, graph: Graph, task, idx: slice | torch.Tensor, chunk) -> dict:
        """The same as raw captures (see :func:`raw_sources`)."""
        B, P = chunk.clean.shape
        if self.kind == "corrupted":
            return raw_sources(model, graph, chunk, chunk.corrupted)
        if self.kind == "mean":
            return {k: v[None].expand(B, *v.shape).contiguous() for k, v in self._mean.items()}
        if self.kind == "zero":
            like = raw_sources(model, graph, _Plain(None), chunk.clean[:1, :1])  # shapes and dtypes only
            return {k: torch.zeros((B, P, *v.shape[2:]), dtype=v.dtype, device=v.device) for k, v in like.items()}
        partner = self._perm[idx]
        return raw_sources(model, graph, _Plain(task.attention_mask[partner] if task.attention_mask is not None else None), task.clean[partner])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "reference": "custom" if self.reference is not None else None}


class _Plain:
    """A minimal stand-in for a task when running reference tokens with a given mask."""

    def __init__(self, attention_mask):
        self.attention_mask = attention_mask

    def run(self, model, tokens, **kw):
        if self.attention_mask is not None:
            kw["attention_mask"] = self.attention_mask
        return model(tokens, **kw)


