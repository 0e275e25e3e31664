"""The one grammar of node names, and the one residual-time scale.

Every module that needs to know what ``a1.h2.k@5`` means parses it here, so a new node kind is
added in one place.

==========================  ===========  ==================================================
name                        kind         what it is
==========================  ===========  ==================================================
``input``                   input        token (+ positional) embedding
``a{L}.h{H}``               head         head H of layer L (its output, ``z @ W_O[H]``)
``a{L}.h{H}.q|k|v``         slot         that head's query / key / value input
``m{L}``                    mlp          layer L's MLP
``m{L}.n{i}``               neuron       neuron i of layer L's MLP
``m{L}.rest``               mlp_rest     the neurons of layer L that are not nodes
``{site}{L}.f{i}``          feature      feature i of an SAE site (``resid_pre1.f12``)
``{site}{L}.rest``          sae_rest     that site's features that are not nodes
``{site}{L}.err``           sae_error    that site's error term, x − SAE(x)
``logits``                  logits       the unembedding's input
==========================  ===========  ==================================================

``{site}`` is one of ``resid_pre attn_out resid_mid mlp_out resid_post transcoder``. Any name may
end in ``@{p}``: the same node at token position p (position-resolved graphs).

Residual time orders reads and writes, in units of 1/8 layer: a node reads exactly the writers of
strictly smaller time (SAE sites then cut what later readers see, see :mod:`.sites`)::

    input 0 · resid_pre L 8L+2 · heads L 8L+4 · attn_out L 8L+5 · resid_mid L 8L+6 ·
    MLP L 8L+8 · mlp_out L 8L+9 · resid_post L 8L+10 (= resid_pre L+1) · logits 8·n_layers+4

A node reads and writes at its time, with one exception: in a parallel attention+MLP block
(GPT-J, GPT-NeoX, Pythia) the MLP (its neurons, a transcoder standing in for it) reads at 8L+4,
the same residual stream as its layer's heads, and still writes at 8L+8 (:func:`read_time`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

QKV = ("q", "k", "v")
SITE_KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
SITE_PREFIXES = (*SITE_KINDS, "transcoder")

HEAD_TIME, MLP_TIME = 4, 8  # a layer's heads / MLP read and write at 8L + these
SITE_TIME = {"resid_pre": 2, "attn_out": 5, "resid_mid": 6, "mlp_out": 9, "resid_post": 10, "transcoder": MLP_TIME}

_SITE = "|".join(SITE_PREFIXES)
_GRAMMAR: list[tuple[str, re.Pattern[str]]] = [
    ("input", re.compile(r"input")),
    ("logits", re.compile(r"logits")),
    ("head", re.compile(r"a(?P<layer>\d+)\.h(?P<head>\d+)")),
    ("slot", re.compile(r"a(?P<layer>\d+)\.h(?P<head>\d+)\.(?P<slot>[qkv])")),
    ("mlp", re.compile(r"m(?P<layer>\d+)")),
    ("neuron", re.compile(r"m(?P<layer>\d+)\.n(?P<index>\d+)")),
    ("mlp_rest", re.compile(r"m(?P<layer>\d+)\.rest")),
    ("feature", re.compile(rf"(?P<site>{_SITE})(?P<layer>\d+)\.f(?P<index>\d+)")),
    ("sae_rest", re.compile(rf"(?P<site>{_SITE})(?P<layer>\d+)\.rest")),
    ("sae_error", re.compile(rf"(?P<site>{_SITE})(?P<layer>\d+)\.err")),
]
KINDS = tuple(kind for kind, _ in _GRAMMAR)


@dataclass(frozen=True)
class NodeName:
    """A parsed node name (see the module docstring). ``layer`` is -1 for ``input`` and ``logits``."""

    name: str
    kind: str
    layer: int = -1
    head: int | None = None
    slot: str | None = None
    index: int | None = None  # neuron or feature id
    site: str | None = None  # site kind of SAE nodes (``resid_pre``, …, ``transcoder``)
    position: int | None = None

    @property
    def base(self) -> str:
        """The name without its ``@p`` position suffix."""
        return self.name.partition("@")[0]

    @property
    def owner(self) -> str:
        """The node whose input this is (``a1.h2.k@3`` → ``a1.h2@3``); the name itself otherwise."""
        if self.kind != "slot":
            return self.name
        at = "" if self.position is None else f"@{self.position}"
        return f"a{self.layer}.h{self.head}{at}"

    @property
    def site_name(self) -> str | None:
        """``resid_pre1`` for ``resid_pre1.f12``; None for nodes that are not SAE-site nodes."""
        return None if self.site is None else f"{self.site}{self.layer}"

    def time(self, n_layers: int | None = None) -> float:
        """Residual time at which this node reads (destinations) or writes (sources). ``logits``
        is at ``8·n_layers+4``, or +inf when the model's depth is not given."""
        if self.kind == "input":
            return 0.0
        if self.kind == "logits":
            return float("inf") if n_layers is None else float(8 * n_layers + HEAD_TIME)
        if self.site is not None:
            return float(8 * self.layer + SITE_TIME[self.site])
        return float(8 * self.layer + (HEAD_TIME if self.kind in ("head", "slot") else MLP_TIME))


_MLP_READERS = ("mlp", "neuron", "mlp_rest")


def mlp_read_offset(parallel: bool) -> int:
    """An MLP reads at 8L + this: after its layer's heads in a sequential block, with them in a
    parallel attention+MLP block (where ``hook_resid_mid`` does not exist)."""
    return HEAD_TIME if parallel else MLP_TIME


def read_time(node: NodeName, n_layers: int | None = None, parallel: bool = False) -> float:
    """Residual time at which ``node`` *reads*: :meth:`NodeName.time`, except for the MLP-side
    readers of a parallel attention+MLP model, which read with their layer's heads."""
    if parallel and (node.kind in _MLP_READERS or node.site == "transcoder"):
        return float(8 * node.layer + mlp_read_offset(parallel))
    return node.time(n_layers)


def parse(name: str) -> NodeName | None:
    """``name`` parsed, or None when it is not a node name of the grammar."""
    base, at, pos = name.partition("@")
    if at and not pos.isdigit():
        return None
    for kind, pattern in _GRAMMAR:
        m = pattern.fullmatch(base)
        if m:
            g = m.groupdict()
            return NodeName(
                name=name,
                kind=kind,
                layer=int(g.get("layer") or -1),
                head=_int(g.get("head")),
                slot=g.get("slot"),
                index=_int(g.get("index")),
                site=g.get("site"),
                position=int(pos) if at else None,
            )
    return None


def parse_node(name: str) -> NodeName:
    """``name`` parsed; a ``KeyError`` naming the grammar for anything else."""
    node = parse(name)
    if node is None:
        raise KeyError(
            f"{name!r} is not a node name; node names look like input, a1.h2, a1.h2.k, m3, m3.n17, "
            f"resid_pre1.f12, resid_pre1.err or logits, optionally with @position"
        )
    return node


def dst_node(dst_name: str) -> str:
    """The node a destination belongs to: ``a1.h2.k`` → ``a1.h2``; ``m3`` → ``m3``;
    ``a1.h2.k@5`` → ``a1.h2@5``. Names outside the grammar are returned unchanged."""
    node = parse(dst_name)
    return dst_name if node is None else node.owner


def node_kind(name: str) -> str:
    """The coarse kind used for colours and file formats: ``input``, ``head`` (q/k/v inputs
    included), ``mlp`` (an MLP's ``rest`` included), ``neuron``, ``feature``, ``sae_rest``,
    ``sae_error``, ``logits``, or ``other`` for names outside the grammar."""
    node = parse(name)
    if node is None:
        return "other"
    return {"slot": "head", "mlp_rest": "mlp"}.get(node.kind, node.kind)


def _int(text: str | None) -> int | None:
    return None if text is None else int(text)
