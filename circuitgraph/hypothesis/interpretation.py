"""Causal-scrubbing hypotheses: an interpretation graph, and where it sits in the model.

A hypothesis (Chan et al. 2022) has three parts:

* an **interpretation** — a graph of :class:`Interpretation` nodes, rooted at the output. Each
  node has a *feature* (a function of the input; see :mod:`circuitgraph.hypothesis.features`)
  and *children*: the nodes whose values it is computed from;
* a **correspondence** — which model node each interpretation node is (:class:`Correspondence`),
  and optionally which of a node's inputs (a head's q, k or v) a child feeds;
* the model's computational graph (:class:`circuitgraph.graph.Graph`).

The claim: at every model node of the hypothesis, only the children's features matter, through
exactly the edges the correspondence names; every other edge into it carries nothing that
matters. :func:`circuitgraph.hypothesis.scrub` tests the claim by resampling.

The standard induction hypothesis, in a few lines::

    from circuitgraph.hypothesis import (Interpretation as I, Correspondence, Hypothesis,
                                         token_at, next_after_previous_occurrence, answer_label)

    prev = I("prev_token", token_at(-1), [I("emb_prev", token_at(0))])  # a0.h1 copies the previous token
    ind = I("induction", next_after_previous_occurrence(), [
        I("cur_token", token_at(0)),        # the query reads the current token
        prev,                               # the key reads the previous token
        I("copied_token", token_at(0)),     # the value reads the token to predict
    ])
    out = I("output", answer_label(), [ind])
    corr = Correspondence(
        {"output": "logits", "induction": "a1.h3", "prev_token": "a0.h1", "emb_prev": "input",
         "cur_token": "input", "copied_token": "input"},
        restrict={"cur_token": "q", "prev_token": "k", "copied_token": "v", "emb_prev": "v"})
    hyp = Hypothesis(out, corr, model=model, name="induction")

The plain "only these edges matter" hypothesis of a circuit is ``Hypothesis.from_circuit(c)``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

from circuitgraph.circuit import Circuit
from circuitgraph.errors import HypothesisError, file_error
from circuitgraph.graph import Graph, config_hash
from circuitgraph.graph.names import dst_node
from circuitgraph.hypothesis import render, serialize
from circuitgraph.hypothesis.features import Feature, whole_input
from circuitgraph.hypothesis.nodes import SLOTS, ModelNode, check_node_exists, input_slots, parse_node
from circuitgraph.hypothesis.serialize import HypothesisFileError, HypothesisRecord, NodeRecord

# which model-node kinds may feed which (beyond the residual-time order)
_SOURCES = ("input", "head", "mlp")


class Interpretation:
    """One node of the interpretation graph: a ``name`` (unique in the hypothesis), a ``feature``
    (default :func:`whole_input`: "this node matters, for reasons not spelled out") and the
    ``children`` it is computed from."""

    def __init__(self, name: str, feature=None, children: Iterable[Interpretation] = (), description: str = ""):
        if not isinstance(name, str) or not name:
            raise HypothesisError(f"an interpretation node needs a non-empty string name, got {name!r}")
        self.name = name
        self.feature: Feature = Feature.coerce(feature)
        self.children: list[Interpretation] = []
        self.description = str(description)
        self.add(*children)

    def add(self, *children: Interpretation) -> Interpretation:
        """Append children; returns ``self`` (so trees can be built inline)."""
        for c in children:
            if not isinstance(c, Interpretation):
                raise HypothesisError(
                    f"children of interpretation node {self.name!r} must be Interpretation nodes, got {type(c).__name__}"
                )
            self.children.append(c)
        return self

    def __repr__(self) -> str:
        kids = ", ".join(c.name for c in self.children)
        return f"Interpretation({self.name!r}, {self.feature.describe()}" + (f", children=[{kids}])" if kids else ")")


def _norm_slots(slots, where: str) -> tuple[str, ...]:
    if isinstance(slots, str):
        slots = [s for s in slots.replace(",", " ").split()] if ("," in slots or " " in slots) else list(slots)
    try:
        items = [str(s) for s in slots]
    except TypeError:
        raise HypothesisError(
            f"{where}: slots must be letters from 'qkv', e.g. 'k' or ['q', 'v'], got {slots!r}"
        ) from None
    bad = [s for s in items if s not in SLOTS]
    if bad or not items:
        raise HypothesisError(f"{where}: slots must be a non-empty selection of 'q', 'k', 'v', got {slots!r}")
    return tuple(s for s in SLOTS if s in items)


class Correspondence:
    """Interpretation node name → model node name, plus optional restrictions of which of a
    head's inputs (``q``/``k``/``v``) a child's edge covers.

    ``restrict`` keys are ``(parent, child)`` pairs, or a child name alone (applies under every
    parent of that child); values are slot letters: ``"k"``, ``"qv"`` or ``["q", "v"]``. Without
    a restriction a child feeding a head covers all three of its inputs."""

    def __init__(self, mapping: dict | None = None, restrict: dict | None = None):
        self.mapping: dict[str, str] = {}
        self.restrictions: dict[tuple[str | None, str], tuple[str, ...]] = {}
        for k, v in (mapping or {}).items():
            self.add(k, v)
        for key, slots in (restrict or {}).items():
            if isinstance(key, tuple):
                if len(key) != 2:
                    raise HypothesisError(f"restriction key {key!r} must be (parent, child) or a child name")
                self.restrict(key[0], key[1], slots)
            else:
                self.restrict(None, key, slots)

    def add(self, interp, model_node: str) -> Correspondence:
        name = interp.name if isinstance(interp, Interpretation) else interp
        if not isinstance(name, str):
            raise HypothesisError(f"correspondence keys are interpretation node names, got {name!r}")
        parse_node(model_node)  # syntax check now; existence when bound to a model
        self.mapping[name] = model_node
        return self

    def restrict(self, parent, child, slots) -> Correspondence:
        p = parent.name if isinstance(parent, Interpretation) else parent
        c = child.name if isinstance(child, Interpretation) else child
        self.restrictions[(p, c)] = _norm_slots(slots, f"restriction of {c!r}" + (f" under {p!r}" if p else ""))
        return self

    def __getitem__(self, name: str) -> str:
        return self.mapping[name]

    def __contains__(self, name) -> bool:
        return name in self.mapping

    def __repr__(self) -> str:
        return f"Correspondence({self.mapping!r}, restrict={self.restrictions!r})"


class Hypothesis:
    """An interpretation graph (``root``, the output node) with its correspondence to model nodes.

    ``model`` (optional) binds the hypothesis to a model: node names are checked against it and
    its config hash is saved with the hypothesis, so a file is never applied to another model.
    """

    def __init__(
        self,
        root: Interpretation,
        correspondence: Correspondence | dict,
        *,
        name: str = "hypothesis",
        description: str = "",
        model=None,
        metadata: dict | None = None,
    ):
        if not isinstance(root, Interpretation):
            raise HypothesisError(f"the root of a hypothesis must be an Interpretation node, got {type(root).__name__}")
        if isinstance(correspondence, dict):
            correspondence = Correspondence(correspondence)
        if not isinstance(correspondence, Correspondence):
            raise HypothesisError(
                f"correspondence must be a Correspondence or a dict, got {type(correspondence).__name__}"
            )
        self.name = str(name)
        self.description = str(description)
        self.metadata = dict(metadata or {})
        self.root = root
        self.nodes: dict[str, Interpretation] = _collect(root)
        self.parents: dict[str, list[str]] = {n: [] for n in self.nodes}
        for node in self.nodes.values():
            for c in node.children:
                if node.name not in self.parents[c.name]:
                    self.parents[c.name].append(node.name)
        self.mapping: dict[str, str] = {}
        self.model_nodes: dict[str, ModelNode] = {}
        self.restrictions: dict[tuple[str, str], tuple[str, ...]] = {}
        self.model_info: dict | None = None
        self._resolve(correspondence)
        self._check_structure()
        if model is not None:
            self.bind(model)

    # ------------------------------------------------------------------ construction checks
    def _resolve(self, corr: Correspondence) -> None:
        missing = [n for n in self.nodes if n not in corr.mapping]
        if missing:
            raise HypothesisError(
                f"interpretation node(s) {missing} have no model node in the correspondence; map each to a model "
                "node name, e.g. Correspondence({'" + missing[0] + "': 'a1.h3', ...})"
            )
        extra = [n for n in corr.mapping if n not in self.nodes]
        if extra:
            raise HypothesisError(
                f"the correspondence maps {extra}, which are not nodes of the interpretation (reachable from root "
                f"{self.root.name!r}); remove them or add them as children"
            )
        for n in self.nodes:  # interpretation order
            self.mapping[n] = corr.mapping[n]
            self.model_nodes[n] = parse_node(corr.mapping[n])
        for (p, c), slots in corr.restrictions.items():
            if c not in self.nodes:
                raise HypothesisError(f"restriction names child {c!r}, which is not an interpretation node")
            parents = [p] if p is not None else self.parents[c]
            if p is not None and p not in self.nodes:
                raise HypothesisError(f"restriction names parent {p!r}, which is not an interpretation node")
            if not parents:
                raise HypothesisError(f"restriction of {c!r}: it has no parent whose inputs it could restrict")
            for parent in parents:
                if c not in [k.name for k in self.nodes[parent].children]:
                    raise HypothesisError(f"restriction ({parent!r}, {c!r}): {c!r} is not a child of {parent!r}")
                self.restrictions[(parent, c)] = slots

    def _check_structure(self) -> None:
        """The root is the output, and every interpretation edge is a model edge claimed once: fills
        ``cover`` ((parent, dst name, src model node) → child) and ``slot_children`` ((parent, dst
        name) → the child mapped to that head input itself)."""
        root_node = self.model_nodes[self.root.name]
        if root_node.kind != "logits":
            raise HypothesisError(
                f"the root {self.root.name!r} maps to {root_node.name!r}, but the root of a hypothesis is the model's "
                "output: map it to 'logits' (and make your node a child of it)"
            )
        for n, mn in self.model_nodes.items():
            if mn.kind == "logits" and n != self.root.name:
                raise HypothesisError(f"only the root may map to 'logits'; {n!r} does too")
        self.cover: dict[tuple[str, str, str], str] = {}
        self.slot_children: dict[tuple[str, str], str] = {}
        for pname, parent in self.nodes.items():
            seen = set()
            for child in parent.children:
                if child.name in seen:
                    raise HypothesisError(f"{child.name!r} is listed twice among the children of {pname!r}")
                seen.add(child.name)
                self._check_edge(pname, self.model_nodes[pname], child.name, self.model_nodes[child.name])
                self._claim(pname, child.name)
        for (pname, d), c in self.slot_children.items():
            clash = [k[2] for k in self.cover if k[0] == pname and k[1] == d]
            if clash:
                raise HypothesisError(
                    f"{d} is explained by {c!r} (mapped to the input itself) and also fed directly from {clash} under "
                    f"{pname!r}; make those nodes children of {c!r} instead"
                )

    def _claim(self, pname: str, cname: str) -> None:
        """Record the model edges the interpretation edge ``cname → pname`` covers, refusing a
        restriction that cannot apply, or an edge another child of ``pname`` already explains."""
        pm, cm = self.model_nodes[pname], self.model_nodes[cname]
        restr = self.restrictions.get((pname, cname))
        if cm.kind == "slot":
            if restr is not None:
                raise HypothesisError(
                    f"{cname!r} maps to the input {cm.name!r} itself; a restriction of its slots makes no sense"
                )
            key = (pname, cm.name)
            if key in self.slot_children:
                raise HypothesisError(
                    f"{cm.name} is explained twice under {pname!r}: by {self.slot_children[key]!r} and {cname!r}"
                )
            self.slot_children[key] = cname
            return
        if restr is not None and pm.kind != "head":
            raise HypothesisError(
                f"restriction ({pname!r}, {cname!r}): {pm.name} has a single input; only edges into a "
                "head's q/k/v inputs can be restricted"
            )
        dsts = [f"{pm.name}.{s}" for s in restr] if restr is not None else list(input_slots(pm))
        for d in dsts:
            key3 = (pname, d, cm.name)
            if key3 in self.cover:
                raise HypothesisError(
                    f"the edge {cm.name}->{d} is covered twice under {pname!r}: by {self.cover[key3]!r} and "
                    f"{cname!r}; restrict one of them to other slots (e.g. restrict={{{cname!r}: 'v'}})"
                )
            self.cover[key3] = cname

    def _check_edge(self, pname: str, pm: ModelNode, cname: str, cm: ModelNode) -> None:
        where = f"interpretation edge {cname!r} → {pname!r} ({cm.name} → {pm.name})"
        if pm.kind == "input":
            raise HypothesisError(f"{where}: 'input' reads nothing, so {pname!r} cannot have children")
        if cm.kind == "slot":
            if pm.kind == "head" and cm.owner == pm.name:
                return
            raise HypothesisError(f"{where}: {cm.name} is an input of {cm.owner} and feeds only that head")
        if cm.kind not in _SOURCES and cm.kind != "neuron":
            raise HypothesisError(f"{where}: {cm.name} does not write to the residual stream")
        # residual time (graph.names, 8L+k): a head reads and writes at 8L+4, so heads of one layer
        # do not feed each other; an MLP reads its own layer's heads; everything reads input (0)
        if not cm.time() < pm.time():
            raise HypothesisError(
                f"{where}: {pm.name} reads the residual stream before {cm.name} writes to it, so there is no such edge"
            )

    # ------------------------------------------------------------------ binding to a model
    def bind(self, model) -> Hypothesis:
        """Check every node against ``model`` and record its config hash (refusing a hypothesis
        already bound to a different model)."""
        h = config_hash(model.cfg)
        if self.model_info is not None and self.model_info.get("config_hash") not in (None, h):
            raise HypothesisError(
                f"hypothesis {self.name!r} was written for another model (config hash {self.model_info['config_hash']}, "
                f"this model's is {h}); rebuild it for this model"
            )
        graph = Graph.from_model(model, split_qkv=True)
        self.check(graph)
        a = graph.arch
        self.model_info = {
            "name": str(getattr(model.cfg, "model_name", "") or ""),
            "config_hash": h,
            "n_layers": a.n_layers,
            "n_heads": a.n_heads,
            "has_mlp": a.has_mlp,
            "d_model": a.d_model,
        }
        return self

    def check(self, graph) -> None:
        """Check every model node against ``graph``; raise :class:`HypothesisError` naming the first
        node the model lacks."""
        for n, mn in self.model_nodes.items():
            try:
                check_node_exists(mn, graph)
            except HypothesisError as e:
                raise HypothesisError(f"interpretation node {n!r} → {mn.name!r}: {e}") from None
        for parent, d, s in self.cover:  # (a parallel attention+MLP block: an MLP does not read its layer's heads)
            if not graph.has_edge(s, d):
                raise HypothesisError(
                    f"interpretation node {parent!r} covers the edge {s} → {d}, which this model does not have: "
                    f"{d} reads the residual stream before {s} writes to it"
                )

    # ------------------------------------------------------------------ views
    def edges(self) -> list[tuple[str, str]]:
        """Interpretation edges as ``(parent, child)`` pairs."""
        return [(p, c.name) for p, node in self.nodes.items() for c in node.children]

    def covered_edges(self) -> list[str]:
        """Model edges the hypothesis claims matter, ``"src->dst"`` (graph naming), sorted."""
        return sorted({f"{s}->{d}" for (_, d, s) in self.cover})

    def describe(self) -> str:
        """A readable indented tree: ``name [model node] feature``."""
        lines: list[str] = []

        def walk(n: str, depth: int, via) -> None:
            restr = self.restrictions.get(via, None) if via else None
            r = f" via {''.join(restr)}" if restr else ""
            lines.append(f"{'  ' * depth}{n} [{self.mapping[n]}{r}] {self.nodes[n].feature.describe()}")
            for c in self.nodes[n].children:
                walk(c.name, depth + 1, (n, c.name))

        walk(self.root.name, 0, None)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Hypothesis({self.name!r}: {len(self.nodes)} nodes, {len(self.covered_edges())} covered edges)"

    def _spec(self) -> tuple:
        nodes = tuple(
            (n, node.feature, tuple(c.name for c in node.children), node.description) for n, node in self.nodes.items()
        )
        return (
            self.name,
            self.description,
            self.root.name,
            nodes,
            tuple(self.mapping.items()),
            tuple(sorted(self.restrictions.items())),
            _hashable(self.metadata),
            _hashable(self.model_info),
        )

    def __eq__(self, other) -> bool:
        return isinstance(other, Hypothesis) and self._spec() == other._spec()

    __hash__ = None  # type: ignore[assignment]  # mutable: unhashable (mypy rejects the standard idiom)

    # ------------------------------------------------------------------ derived hypotheses
    def copy(self, **changes) -> Hypothesis:
        return self._rebuild(drop=(), remap={}, **changes)

    def without(self, *names: str, name: str | None = None) -> Hypothesis:
        """A copy with the named interpretation nodes deleted (their parents lose the child; nodes
        no longer reachable from the root go too). The edges they covered become random."""
        unknown = [n for n in names if n not in self.nodes]
        if unknown:
            raise HypothesisError(f"no interpretation node(s) {unknown}; nodes: {list(self.nodes)}")
        if self.root.name in names:
            raise HypothesisError("cannot delete the root; use Hypothesis.empty() for the empty hypothesis")
        return self._rebuild(drop=set(names), remap={}, name=name or f"{self.name} without {', '.join(names)}")

    def remap(self, mapping: dict[str, str], name: str | None = None) -> Hypothesis:
        """A copy with some interpretation nodes mapped to other model nodes (e.g. to test the same
        roles on other heads)."""
        unknown = [n for n in mapping if n not in self.nodes]
        if unknown:
            raise HypothesisError(f"no interpretation node(s) {unknown}; nodes: {list(self.nodes)}")
        return self._rebuild(drop=(), remap=dict(mapping), name=name or f"{self.name} remapped")

    def _rebuild(self, drop, remap, **changes) -> Hypothesis:
        new = {
            n: Interpretation(n, node.feature, (), node.description) for n, node in self.nodes.items() if n not in drop
        }
        for n, node in self.nodes.items():
            if n in new:
                new[n].add(*[new[c.name] for c in node.children if c.name in new])
        root = new[self.root.name]
        reach = _collect(root)
        corr = Correspondence({n: remap.get(n, self.mapping[n]) for n in reach})
        for (p, c), slots in self.restrictions.items():
            if p in reach and c in reach:
                corr.restrict(p, c, slots)
        h = Hypothesis(
            root,
            corr,
            name=changes.get("name", self.name),
            description=changes.get("description", self.description),
            metadata=copy.deepcopy(changes.get("metadata", self.metadata)),
        )
        h.model_info = copy.deepcopy(self.model_info)
        return h

    # ------------------------------------------------------------------ standard hypotheses
    @classmethod
    def empty(cls, model=None, name: str = "empty") -> Hypothesis:
        """The output with no explanation: every edge into ``logits`` is resampled at random."""
        return cls(Interpretation("output", whole_input()), {"output": "logits"}, name=name, model=model)

    @classmethod
    def full(cls, model, name: str = "full model") -> Hypothesis:
        """Every node, every edge, each with the whole-input feature: scrubbing it reproduces the model."""
        graph = Graph.from_model(model, split_qkv=True)
        return cls.from_circuit(Circuit(graph, graph.valid.clone()), name=name).bind(model)

    @classmethod
    def from_circuit(cls, circuit, name: str | None = None) -> Hypothesis:
        """The plain hypothesis of a circuit: "only these edges matter". Every circuit node that
        reaches the logits becomes an interpretation node (named like the model node) with the
        whole-input feature; its children are its circuit sources, restricted to the q/k/v inputs the
        circuit's edges enter. Scrubbing it resamples every other edge from a random input."""
        graph = circuit.graph
        into: dict[str, dict[str, set]] = {}  # dst node → src node → slot letters
        for s, d, _ in circuit.edges():
            node = dst_node(d)
            letter = d[-1] if node != d else None
            slots = into.setdefault(node, {}).setdefault(s, set())
            if letter:
                slots.add(letter)
            elif parse_node(node).kind == "head":  # graph without q/k/v split: all three
                slots.update(SLOTS)
        reach, todo = set(), ["logits"]
        while todo:
            n = todo.pop()
            if n in reach:
                continue
            reach.add(n)
            todo.extend(into.get(n, {}))
        order = ["logits"] + [n for n in graph.src_names[::-1] if n in reach]  # output first
        nodes = {n: Interpretation(n, whole_input()) for n in order}
        corr = Correspondence({n: n for n in order})
        for n in order:
            for s in sorted(into.get(n, {}), key=lambda x: graph.src_names.index(x)):
                nodes[n].add(nodes[s])
                slots = into[n][s]
                if parse_node(n).kind == "head" and slots != set(SLOTS):
                    corr.restrict(n, s, "".join(sorted(slots, key=SLOTS.index)))
        meta = {"from_circuit": {"n_edges": int(circuit.n_edges)}}
        h = cls(nodes["logits"], corr, name=name or str(circuit.metadata.get("name", "circuit")), metadata=meta)
        if graph.model_hash:
            a = graph.arch
            h.model_info = {
                "name": graph.model_name,
                "config_hash": graph.model_hash,
                "n_layers": a.n_layers,
                "n_heads": a.n_heads,
                "has_mlp": a.has_mlp,
                "d_model": a.d_model,
            }
        return h

    # ------------------------------------------------------------------ files and pictures
    # The file format lives in :mod:`.serialize`, which knows records, not Hypothesis objects; these
    # methods convert between the two, so the import runs one way (interpretation → serialize).
    def to_record(self) -> HypothesisRecord:
        """The hypothesis as plain data (what its file holds)."""
        nodes = {
            n: NodeRecord(n, node.feature, tuple(c.name for c in node.children), node.description)
            for n, node in self.nodes.items()
        }
        return HypothesisRecord(
            name=self.name,
            root=self.root.name,
            nodes=nodes,
            correspondence=dict(self.mapping),
            restrict=[(p, c, list(s)) for (p, c), s in sorted(self.restrictions.items())],
            description=self.description,
            model=self.model_info,
            metadata=self.metadata,
        )

    @classmethod
    def from_record(cls, rec: HypothesisRecord, model=None, source: str | Path = "hypothesis") -> Hypothesis:
        """Build the hypothesis a record describes; faults are :class:`HypothesisFileError` naming
        ``source``. With ``model``, refuse a record made for another model and check every node."""
        nodes = {n: Interpretation(n, r.feature, (), r.description) for n, r in rec.nodes.items()}
        for n, r in rec.nodes.items():
            nodes[n].add(*[nodes[c] for c in r.children])
        try:
            corr = Correspondence(rec.correspondence)
            for parent, child, slots in rec.restrict:
                corr.restrict(parent, child, slots)
            h = cls(nodes[rec.root], corr, name=rec.name, description=rec.description, metadata=rec.metadata)
        except HypothesisError as e:
            raise file_error(source, str(e), kind=HypothesisFileError) from None
        h.model_info = dict(rec.model) if rec.model is not None else None
        if model is not None:
            serialize.check_model(h.model_info, model, source)
            try:
                h.bind(model)
            except HypothesisError as e:
                raise file_error(source, str(e), kind=HypothesisFileError) from None
        return h

    def to_dict(self) -> dict:
        """The JSON document of the hypothesis (schema ``circuitgraph.hypothesis/1``)."""
        return serialize.to_doc(self.to_record())

    @classmethod
    def from_dict(cls, doc: dict, model=None, source: str = "hypothesis") -> Hypothesis:
        """The hypothesis of a JSON document; :class:`HypothesisFileError` naming ``source`` for any fault."""
        return cls.from_record(serialize.from_doc(doc, source), model=model, source=source)

    def save(self, path: str | Path) -> Path:
        """Write the hypothesis as JSON (schema ``circuitgraph.hypothesis/1``); returns the path."""
        return serialize.write_doc(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path, model=None) -> Hypothesis:
        """Read a saved hypothesis. Never runs code from the file: features are built-ins or names
        registered with :func:`register_feature`. With ``model``, refuse a file made for another
        model and check every node exists."""
        return cls.from_dict(serialize.read_doc(path), model=model, source=str(path))

    def to_html(self, path: str | Path, title: str | None = None) -> Path:
        """An offline, interactive page: interpretation nodes beside the model nodes they map to."""
        return render.write_html(self, path, title=title)


def _collect(root: Interpretation) -> dict[str, Interpretation]:
    """Nodes reachable from ``root`` in depth-first pre-order; errors on cycles and name clashes."""
    out: dict[str, Interpretation] = {}
    state: dict[int, int] = {}  # id → 1 on the current path, 2 done

    def visit(node: Interpretation, path: list[str]) -> None:
        s = state.get(id(node))
        if s == 1:
            cyc = path[path.index(node.name) :] + [node.name]
            raise HypothesisError(
                "the interpretation has a cycle: " + " → ".join(cyc) + ". An interpretation node's children are the "
                "nodes it is computed from, so they must lie strictly upstream (a directed acyclic graph)"
            )
        if s == 2:
            return
        other = out.get(node.name)
        if other is not None and other is not node:
            raise HypothesisError(f"two different interpretation nodes are named {node.name!r}; names must be unique")
        out[node.name] = node
        state[id(node)] = 1
        for c in node.children:
            visit(c, path + [node.name])
        state[id(node)] = 2

    visit(root, [])
    return out


def _hashable(x):
    if isinstance(x, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return tuple(_hashable(v) for v in x)
    return x
