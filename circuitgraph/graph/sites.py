"""SAE sites: where a sparse autoencoder cuts the residual stream (or a layer's output) into
feature nodes, a ``rest`` node and an error node.

A site at hook point ``h`` rewrites the activation ``x`` there as::

    x = b_dec + Σ_{i ∈ nodes} f_i(x) · W_dec[i]      feature nodes   ``{site}.f{i}``
              + Σ_{i ∉ nodes} f_i(x) · W_dec[i]      ``{site}.rest`` (features that are not nodes)
              + (x − decode(encode(x)))              ``{site}.err``  (the SAE's error)

so a model with every site spliced in computes exactly what the model computes. Each of these
nodes *reads* ``x`` (a feature through its encoder row, the rest and the error through the whole
SAE) and *writes* its term. The site is a cut: the writers that made up ``x`` are read only by the
site's nodes, and readers after the site read the site's nodes instead.

Where a site sits in the residual stream's order of reads and writes is its residual time
(:mod:`circuitgraph.graph.names`: resid_pre L at 8L+2, attn_out 8L+5, resid_mid 8L+6, mlp_out 8L+9,
resid_post 8L+10). The last layer's ``resid_post`` is what the unembedding reads: a site there
is read by ``logits`` alone.
A residual site reads every writer still visible at its time; an ``attn_out`` site reads only its
layer's heads and an ``mlp_out`` site only its layer's MLP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from circuitgraph.errors import GraphError
from circuitgraph.graph.names import SITE_KINDS, SITE_TIME, parse

# a transcoder replaces layer L's MLP: it reads the MLP's input (after ln2, or the raw residual)
# and writes the MLP's output; its nodes sit where the MLP's would
_TRANSCODER_IN = re.compile(r"^blocks\.(\d+)\.(ln2\.hook_normalized|hook_mlp_in|hook_resid_mid)$")
_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|attn_out|resid_mid|mlp_out|resid_post)$")


@dataclass(frozen=True)
class Site:
    """One SAE site of a graph: which hook point and which of its features are nodes."""

    hook_name: str
    d_sae: int
    features: tuple[int, ...]
    hook_name_out: str | None = None  # transcoders only: blocks.L.hook_mlp_out

    @property
    def kind(self) -> str:
        return "transcoder" if self.hook_name_out else parse_hook(self.hook_name)[1]

    @property
    def layer(self) -> int:
        if self.hook_name_out:
            m = _TRANSCODER_IN.match(self.hook_name)
            assert m is not None  # make_site checked the transcoder's input hook
            return int(m.group(1))
        return parse_hook(self.hook_name)[0]

    @property
    def normalized(self) -> bool:
        """A transcoder that reads the MLP input after ``ln2`` (the usual kind)."""
        return self.hook_name.endswith("ln2.hook_normalized")

    @property
    def name(self) -> str:
        """Short node prefix, e.g. ``resid_pre1`` for ``blocks.1.hook_resid_pre``."""
        return f"{self.kind}{self.layer}"

    @property
    def time(self) -> int:
        return 8 * self.layer + SITE_TIME[self.kind]

    @property
    def has_rest(self) -> bool:
        return len(self.features) < self.d_sae

    def node_names(self) -> list[str]:
        """Feature nodes, then ``rest`` (when some features are not nodes), then ``err``."""
        names = [f"{self.name}.f{i}" for i in self.features]
        if self.has_rest:
            names.append(f"{self.name}.rest")
        return names + [f"{self.name}.err"]

    def to_dict(self) -> dict:
        out = {"hook_name": self.hook_name, "d_sae": self.d_sae, "features": list(self.features)}
        return out | ({"hook_name_out": self.hook_name_out} if self.hook_name_out else {})

    @classmethod
    def from_dict(cls, d: dict) -> Site:
        return make_site(str(d["hook_name"]), int(d["d_sae"]), d["features"], d.get("hook_name_out"))


def parse_hook(hook_name: str) -> tuple[int, str]:
    """``blocks.1.hook_resid_pre`` → ``(1, "resid_pre")``; a clear error for other hook points."""
    m = _HOOK.match(hook_name)
    if not m:
        raise GraphError(
            f"SAE sites must be at a residual-stream or layer-output hook point "
            f"(blocks.L.hook_{{{','.join(SITE_KINDS)}}}), got {hook_name!r}. SAEs on other hook points "
            "(hook_z, mlp.hook_post, ...) are not graph sites: their features would reach the residual stream "
            "only through W_O / W_out, which the graph does not model. Run the model on their reconstruction "
            "with circuitgraph.sae.splice, or make an SAE at hook_attn_out / hook_mlp_out (or a transcoder) "
            "the graph site"
        )
    return int(m.group(1)), m.group(2)


def make_site(hook_name: str, d_sae: int, features, hook_name_out: str | None = None) -> Site:
    if hook_name_out is None:
        parse_hook(hook_name)
    else:
        m = _TRANSCODER_IN.match(hook_name)
        if not m or hook_name_out != f"blocks.{m.group(1)}.hook_mlp_out":
            raise GraphError(
                f"a transcoder graph site must read blocks.L.ln2.hook_normalized (or hook_mlp_in / hook_resid_mid) "
                f"and write blocks.L.hook_mlp_out of the same layer, got {hook_name} → {hook_name_out}"
            )
    ids = sorted({int(i) for i in features})
    bad = [i for i in ids if not 0 <= i < d_sae]
    if bad:
        raise GraphError(f"feature ids {bad[:5]} at {hook_name} are out of range [0, {d_sae})")
    return Site(hook_name, int(d_sae), tuple(ids), hook_name_out)


def check_sites(sites: list[Site], n_layers: int, has_mlp: bool, parallel: bool = False) -> list[Site]:
    """Sorted by time; refuses sites outside the model, two SAEs at one point, MLP sites on
    attention-only models and ``resid_mid`` sites on parallel attention+MLP models."""
    out = sorted(sites, key=lambda s: s.time)
    for s in out:
        if parallel and s.hook_name.endswith("hook_resid_mid"):
            raise GraphError(
                f"SAE site {s.hook_name}: a parallel attention+MLP block has no residual stream between its "
                "attention and its MLP (no hook_resid_mid); attach the SAE at hook_resid_pre or hook_resid_post, "
                "and a transcoder at ln2.hook_normalized or hook_mlp_in"
            )
        if not 0 <= s.layer < n_layers:
            raise GraphError(f"SAE site {s.hook_name} is outside the model (layers 0..{n_layers - 1})")
        if s.kind == "transcoder" and not has_mlp:
            raise GraphError(f"transcoder at {s.hook_name}: this model has no MLPs (attn_only)")
        if s.kind == "transcoder" and any(o.kind == "mlp_out" and o.layer == s.layer for o in out):
            raise GraphError(
                f"layer {s.layer} has a transcoder and an mlp_out SAE; the transcoder replaces the MLP "
                "whose output the SAE would read: keep one of them"
            )
        if s.kind in ("mlp_out", "resid_mid") and not has_mlp:
            raise GraphError(
                f"SAE site {s.hook_name}: this model has no MLPs (attn_only), so it has no "
                "hook_mlp_out / hook_resid_mid; use hook_resid_pre or hook_attn_out"
            )
    for a, b in zip(out, out[1:]):
        if a.time == b.time:
            raise GraphError(
                f"SAE sites {a.hook_name} and {b.hook_name} are the same point of the residual stream; keep one of them"
            )
    return out


def site_node(name: str) -> tuple[str, str] | None:
    """``resid_pre1.f12`` → ``("resid_pre1", "f12")``; None for non-site names."""
    node = parse(name)
    if node is None or node.site_name is None:
        return None
    return node.site_name, node.base.split(".", 1)[1]
