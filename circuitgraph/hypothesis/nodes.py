"""Model nodes a hypothesis can point at, by their stable names.

=====================  =========  ===================================================
name                   kind       what the node's value is
=====================  =========  ===================================================
``input``              input      token + positional embedding
``a{L}.h{H}``          head       the head's output ``z @ W_O[H]`` (no bias)
``a{L}.h{H}.q|k|v``    slot       the residual-stream sum the head reads as its query /
                                  key / value input (before LayerNorm)
``m{L}``               mlp        the MLP's output
``logits``             logits     the model's output (the root of every hypothesis)
``m{L}.n{i}``          neuron     reserved: a single MLP neuron (not scrubbable yet)
=====================  =========  ===================================================

New node kinds (neurons, SAE features) are added by giving them a pattern in ``_PATTERNS`` and a
compute rule in :mod:`circuitgraph.hypothesis.scrubbing` (``_Engine._compute``); everything else
(validation, files, rendering) goes through :func:`parse_node` and needs no change.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

SLOTS = ("q", "k", "v")

_PATTERNS: list[tuple[str, re.Pattern]] = [
    ("input", re.compile(r"input")),
    ("logits", re.compile(r"logits")),
    ("head", re.compile(r"a(?P<layer>\d+)\.h(?P<head>\d+)")),
    ("slot", re.compile(r"a(?P<layer>\d+)\.h(?P<head>\d+)\.(?P<slot>[qkv])")),
    ("mlp", re.compile(r"m(?P<layer>\d+)")),
    ("neuron", re.compile(r"m(?P<layer>\d+)\.n(?P<index>\d+)")),
]
# kinds the scrubbing engine can compute today
SUPPORTED_KINDS = ("input", "logits", "head", "slot", "mlp")


class HypothesisError(ValueError):
    """A hypothesis is malformed or does not fit the model it is used with."""


@dataclass(frozen=True)
class ModelNode:
    """A parsed model node name (see the module docstring)."""

    name: str
    kind: str
    layer: int = -1
    head: int | None = None
    slot: str | None = None
    index: int | None = None

    @property
    def time(self) -> float:
        """Residual-stream time: a node only reads nodes of strictly smaller time. ``input`` writes
        at 0, layer L's q/k/v inputs are read at 2L+0.5, its heads write at 2L+1, its MLP at 2L+2."""
        if self.kind == "input":
            return 0.0
        if self.kind == "logits":
            return float("inf")
        if self.kind == "slot":
            return 2 * self.layer + 0.5
        if self.kind == "head":
            return 2 * self.layer + 1.0
        return 2 * self.layer + 2.0  # mlp, neuron

    @property
    def owner(self) -> str:
        """The node whose input this is (``a1.h2.k`` → ``a1.h2``); the node itself otherwise."""
        return f"a{self.layer}.h{self.head}" if self.kind == "slot" else self.name

    def input_slots(self) -> tuple[str, ...]:
        """Destination names (graph naming) through which this node reads the residual stream."""
        if self.kind == "head":
            return tuple(f"{self.name}.{s}" for s in SLOTS)
        if self.kind in ("mlp", "logits", "slot"):
            return (self.name,)
        if self.kind == "neuron":
            return (f"m{self.layer}",)
        return ()


def parse_node(name: str) -> ModelNode:
    """``"a1.h2.k"`` → ``ModelNode(kind="slot", layer=1, head=2, slot="k")``; a clear error for
    anything else."""
    if not isinstance(name, str):
        raise HypothesisError(f"a model node name must be a string, got {type(name).__name__} {name!r}")
    for kind, pat in _PATTERNS:
        m = pat.fullmatch(name)
        if m:
            g = m.groupdict()
            return ModelNode(
                name=name, kind=kind,
                layer=int(g["layer"]) if g.get("layer") is not None else -1,
                head=int(g["head"]) if g.get("head") is not None else None,
                slot=g.get("slot"),
                index=int(g["index"]) if g.get("index") is not None else None,
            )
    from circuitgraph.graph.sites import site_node

    if site_node(name) is not None:
        raise HypothesisError(
            f"{name!r} is an SAE node (feature, rest or error); causal scrubbing supports heads and MLPs "
            "so far: build the hypothesis from a circuit of a graph without SAE sites")
    raise HypothesisError(
        f"{name!r} is not a model node name. Valid names: 'input', 'logits', heads 'a{{L}}.h{{H}}' "
        "(e.g. 'a1.h3'), a head's query/key/value input 'a{L}.h{H}.q' / '.k' / '.v', MLPs 'm{L}'."
    )


def check_node_exists(node: ModelNode, graph) -> None:
    """Raise :class:`HypothesisError` if ``graph`` (a :class:`~circuitgraph.graph.Graph`) has no
    such node, suggesting the closest names."""
    if node.kind not in SUPPORTED_KINDS:
        raise HypothesisError(
            f"model node {node.name!r} is a {node.kind}; causal scrubbing supports {', '.join(SUPPORTED_KINDS)} "
            "nodes so far (neuron and SAE-feature nodes come with a later release)"
        )
    if node.kind == "logits":
        return
    known = node.name in graph.src_index if node.kind != "slot" else node.name in graph.dst_index
    if not known:
        valid = list(graph.src_names) + ["logits"] + [d for d in graph.dst_names if d.endswith((".q", ".k", ".v"))]
        close = difflib.get_close_matches(node.name, valid, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        a = graph.arch
        shape = f"{a.n_layers} layers × {a.n_heads} heads" + ("" if a.has_mlp else ", attention-only (no MLPs)")
        raise HypothesisError(f"the model has no node {node.name!r} ({shape}).{hint}")
