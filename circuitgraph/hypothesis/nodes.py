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

Names are parsed by the package's one grammar, :mod:`circuitgraph.graph.names`; a hypothesis
accepts the subset above (no ``@position``, no SAE nodes) and :data:`SUPPORTED_KINDS` of it can be
scrubbed. A new node kind becomes scrubbable by adding it to :data:`NAMEABLE_KINDS` /
:data:`SUPPORTED_KINDS` and giving it a compute rule in :mod:`circuitgraph.hypothesis.scrubbing`
(``_Engine.run``); validation, files and rendering go through :func:`parse_node` and need no change.
"""

from __future__ import annotations

import difflib

from circuitgraph.errors import HypothesisError
from circuitgraph.graph import names
from circuitgraph.graph.names import QKV as SLOTS
from circuitgraph.graph.names import NodeName

# A hypothesis's model node is a parsed name of the package grammar; the alias keeps the name that
# callers import from here.
ModelNode = NodeName

# kinds a hypothesis may name, and the kinds the scrubbing engine can compute today
NAMEABLE_KINDS = ("input", "logits", "head", "slot", "mlp", "neuron")
SUPPORTED_KINDS = ("input", "logits", "head", "slot", "mlp")
_SAE_KINDS = ("feature", "sae_rest", "sae_error")

__all__ = [
    "HypothesisError",
    "ModelNode",
    "SLOTS",
    "NAMEABLE_KINDS",
    "SUPPORTED_KINDS",
    "parse_node",
    "input_slots",
    "residual_order",
    "check_node_exists",
]


def parse_node(name: str) -> ModelNode:
    """``"a1.h2.k"`` → ``NodeName(kind="slot", layer=1, head=2, slot="k")``; a
    :class:`HypothesisError` saying what is valid for anything a hypothesis cannot name."""
    if not isinstance(name, str):
        raise HypothesisError(f"a model node name must be a string, got {type(name).__name__} {name!r}")
    node = names.parse(name)
    if node is not None and node.position is None and node.kind in NAMEABLE_KINDS:
        return node
    base = names.parse(name.partition("@")[0])
    if base is not None and base.kind in _SAE_KINDS:
        raise HypothesisError(
            f"{name!r} is an SAE node (feature, rest or error); causal scrubbing supports heads and MLPs "
            "so far: build the hypothesis from a circuit of a graph without SAE sites"
        )
    raise HypothesisError(
        f"{name!r} is not a model node name. Valid names: 'input', 'logits', heads 'a{{L}}.h{{H}}' "
        "(e.g. 'a1.h3'), a head's query/key/value input 'a{L}.h{H}.q' / '.k' / '.v', MLPs 'm{L}'."
    )


def input_slots(node: ModelNode) -> tuple[str, ...]:
    """Destination names (graph naming) through which ``node`` reads the residual stream: a head
    reads through its three q/k/v inputs, everything else through one."""
    if node.kind == "head":
        return tuple(f"{node.name}.{s}" for s in SLOTS)
    if node.kind in ("mlp", "logits", "slot"):
        return (node.name,)
    if node.kind == "neuron":
        return (f"m{node.layer}",)
    return ()


def residual_order(node: ModelNode) -> tuple[float, int]:
    """Sort key in residual-stream order. A head's q/k/v inputs share its time but come just before
    it, because they are assembled before the head computes (scrubbing evaluates in this order)."""
    return node.time(), 0 if node.kind == "slot" else 1


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
