"""A circuit: a set of edges of a graph, their scores, and where they came from.

Saved as ``name.json`` (human-readable: schema version, model fingerprint, provenance, the kept
edges with scores, measured figures) plus ``name.safetensors`` (the full ``[n_src, n_dst]`` score
matrix and the edge mask; for a graph kept as edge blocks, one ``scores.<group>`` and
``mask.<group>`` tensor per destination group, ``[n_up, n_cols]``: only the rows it reads). No pickle: loading a file never runs code. Both files are written to a
temporary name and renamed, so an interrupted save never leaves a half-written circuit, and they
are bound by a pair id and the tensor file's hash, so the halves of two saves never load as one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import torch

from circuitgraph.atomic import atomic_write
from circuitgraph.circuit.summary import summary_html, summary_text
from circuitgraph.engine.ablation import Ablation
from circuitgraph.errors import FileFormatError, GraphError
from circuitgraph.files.pairs import (
    BINDING_FIELDS,
    Binding,
    TensorSpec,
    check_finite,
    check_tensor_file,
    load_tensors,
    read_header,
    write_tensors,
)
from circuitgraph.files.reading import check_bounds, read_json
from circuitgraph.files.rundir import check_member
from circuitgraph.files.schema import Float, Int, JsonObject, ListOf, Obj, Optional, Str, TupleOf, validate
from circuitgraph.graph import Graph, config_hash
from circuitgraph.graph.blocks import EdgeBlocks, as_blocks, layout_of
from circuitgraph.graph.graph import GRAPH_SPEC
from circuitgraph.graph.names import dst_node

SCHEMA = "circuitgraph.circuit/1"
SUPERNODES = "supernodes"  # metadata key of the user's node groups (see Circuit.supernodes)
_NODE = Str(max_len=256, min_len=1, label="a node name")
# name.json, declaratively (docs/circuit-schema.md); checked before anything is sized from it
CIRCUIT_FILE = Obj(
    required={
        "schema": Str(choices=(SCHEMA,)),
        "model": GRAPH_SPEC,
        "n_edges": Int(0, None),
        "edges": ListOf(TupleOf(_NODE, _NODE, Float(finite=False))),
    },
    optional={
        "metadata": Obj(optional={"attribution": JsonObject()}),  # (supernodes: check_supernodes)
        "faithfulness": Optional(Float()),
        "figures": JsonObject(),
        "n_edges_total": Int(0, None),
        "tensors": Str(max_len=1024),
        **BINDING_FIELDS,
    },
    label="a circuit file object",
)


def off_graph(t: torch.Tensor, valid: torch.Tensor) -> int:
    """Non-zero entries of ``t [n_src, n_dst]`` where ``valid`` is false, a block of rows at a time:
    a full-size temporary would double the largest tensor of a neuron- or feature-scale circuit."""
    block = max(1, (1 << 22) // max(1, t.shape[1]))
    return sum(  # (bool > bool is "non-zero and not valid": three times faster than a masked_fill)
        int(torch.count_nonzero(t[i : i + block].ne(0) > valid[i : i + block])) for i in range(0, t.shape[0], block)
    )


class CircuitFileError(FileFormatError):
    """A circuit file is malformed, truncated, mixed with another save, or belongs to another model."""


@dataclass
class Circuit:
    """Edges ``mask [n_src, n_dst]`` of ``graph`` plus provenance and measured figures."""

    graph: Graph
    mask: torch.Tensor | EdgeBlocks
    metadata: dict = field(default_factory=dict)
    faithfulness: float | None = None
    figures: dict = field(default_factory=dict)
    ablation_tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # fitted constants
    # the binding of the files it was last saved to or loaded from (their pair id and tensor hash)
    binding: Binding | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mask.shape != self.graph.valid.shape or self.mask.dtype != torch.bool:
            raise GraphError(f"circuit mask must be a bool tensor of shape {list(self.graph.valid.shape)}")
        if isinstance(self.mask, EdgeBlocks):  # (blocks hold edges only)
            self.mask = self.mask.to(self.graph.valid.device)
        else:
            self.mask = self.mask.to(self.graph.valid.device) & self.graph.valid

    # ------------------------------------------------------------------ supernodes
    @property
    def supernodes(self) -> list[dict]:
        """The user's groups of nodes (as drawn by the viewer and saved by its "save" button):
        ``[{"name": str, "nodes": [node names]}]``, kept in ``metadata["supernodes"]``."""
        return [{"name": g["name"], "nodes": list(g["nodes"])} for g in self.metadata.get(SUPERNODES, [])]

    @supernodes.setter
    def supernodes(self, groups: list[dict]) -> None:
        self.metadata[SUPERNODES] = check_supernodes(groups, self.graph)

    # ------------------------------------------------------------------ views
    @property
    def n_edges(self) -> int:
        if isinstance(self.mask, EdgeBlocks):
            return self.mask.count_nonzero()
        return int(torch.count_nonzero(self.mask))

    @property
    def scores(self) -> torch.Tensor | EdgeBlocks:
        return self.graph.scores

    def dense_mask(self) -> torch.Tensor:
        """The ``[n_src, n_dst]`` mask, whichever layout the circuit keeps (small graphs)."""
        return self.mask.dense() if isinstance(self.mask, EdgeBlocks) else self.mask

    def edges(self) -> list[tuple[str, str, float]]:
        """Kept edges as ``(src, dst, score)``, highest |score| first."""
        idx = self.mask.nonzero()
        sc = self.graph.scores[idx[:, 0], idx[:, 1]].detach().cpu() if len(idx) else torch.zeros(0)
        order = sc.abs().argsort(descending=True)
        g = self.graph
        return [(g.src_names[int(idx[i, 0])], g.dst_names[int(idx[i, 1])], float(sc[i])) for i in order.tolist()]

    def edge_names(self) -> list[str]:
        return [f"{s}->{d}" for s, d, _ in self.edges()]

    def nodes(self) -> set[str]:
        """Model nodes touched by the circuit (q/k/v inputs folded into their head)."""
        out = set()
        for s, d, _ in self.edges():
            out.add(s)
            out.add(Graph.dst_node(d))
        return out

    def to_networkx(self) -> nx.DiGraph:
        g = self.graph.to_networkx(self.mask)
        g.remove_nodes_from([n for n in list(g.nodes) if g.degree(n) == 0])
        g.graph.update(self.metadata)
        return g

    def ablation(self) -> Ablation:
        """The ablation the circuit was found and measured under, rebuilt from its record (an
        optimal ablation with its fitted constants, read as data)."""
        doc = self.metadata.get("ablation") or {"kind": "corrupted"}
        return Ablation.from_dict(doc, self.ablation_tensors)

    def __repr__(self) -> str:
        f = f", faithfulness={self.faithfulness:.3f}" if self.faithfulness is not None else ""
        return f"Circuit({self.n_edges} of {self.graph.n_edges} edges{f})"

    def summary(self, top: int | None = 20, roles: dict[str, str] | None = None) -> str:
        """The circuit in words and its edges ranked by |score|, each saying whether it helps or
        hurts the task (and is in the ground truth, when ``figures["ground_truth"]`` holds a
        comparison). ``print(circuit.summary())``; ``top=None`` lists every edge."""
        return summary_text(self, top, roles)

    def _repr_html_(self) -> str:
        """Notebooks show a circuit as its summary table."""
        return summary_html(self)

    # ------------------------------------------------------------------ persistence
    @property
    def pair_id(self) -> str | None:
        return self.binding.pair_id if self.binding else None

    def to_dict(self) -> dict:
        """The JSON document; with the binding of the tensor file it was saved to or loaded from,
        so that a document written elsewhere (the viewer's "save") still pairs with that file."""
        g = self.graph
        return {
            "schema": SCHEMA,
            "model": g.spec(),
            "metadata": self.metadata,
            "faithfulness": self.faithfulness,
            "figures": self.figures,
            "n_edges": self.n_edges,
            "n_edges_total": g.n_edges,
            "edges": [[s, d, sc] for s, d, sc in self.edges()],
            **(self.binding.to_json() if self.binding else {}),
        }

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.json) and its ``.safetensors`` sibling atomically; returns the JSON path.

        The tensor file is written first with a fresh pair id in its header; the JSON second, with
        the same pair id and the tensor file's SHA-256, so :meth:`load` can tell a true pair from
        the halves of two saves. Both are checked against the schema :meth:`load` uses first, so
        what is saved always loads (a NaN score or faithfulness is refused here, not later)."""
        path = Path(path)
        if path.suffix != ".json":
            path = path.with_suffix(".json")
        tensors = self._score_tensors()
        tensors.update({k: v.detach().float().cpu().contiguous() for k, v in self.ablation_tensors.items()})
        st_path = path.with_suffix(".safetensors")
        doc = self.to_dict()
        doc["tensors"] = st_path.name
        where = f"circuit to be saved as {path}"
        for k, t in tensors.items():
            if k == "scores" or k.startswith("scores."):
                check_finite(t, f"{where}: its scores", CircuitFileError, allow_inf=True)
        validate(doc, CIRCUIT_FILE, where, CircuitFileError)
        check_bounds(doc, where, CircuitFileError)
        path.parent.mkdir(parents=True, exist_ok=True)
        binding = write_tensors(st_path, tensors, {"schema": SCHEMA})
        doc.update(binding.to_json())
        atomic_write(path, lambda p: Path(p).write_text(json.dumps(doc, indent=1)))
        self.binding = binding
        return path

    def _score_tensors(self) -> dict[str, torch.Tensor]:
        """The scores and the mask as the tensor file holds them: dense, or one block per
        destination group when the graph's scores or the mask are edge blocks."""
        graph = self.graph
        if isinstance(self.mask, EdgeBlocks) or isinstance(graph.scores, EdgeBlocks):
            scores = as_blocks(graph, graph.scores).detach().float()
            mask = as_blocks(graph, self.mask)
            out = {f"scores.{g}": b.cpu().contiguous() for g, b in scores.blocks.items()}
            out.update({f"mask.{g}": b.cpu().contiguous() for g, b in mask.blocks.items()})
            return out
        dense, valid = graph.scores.detach().float(), graph.valid
        if off_graph(dense, valid):  # a cell that is no edge holds no score (the format says 0 there)
            dense = dense.masked_fill(~valid, 0)
        return {"scores": dense.cpu().contiguous(), "mask": self.mask.cpu().contiguous()}

    @classmethod
    def load(cls, path: str | Path, model: Any = None) -> Circuit:
        """Read a saved circuit. With ``model``, refuse a circuit found on a different model.

        Everything is checked before the graph or a tensor is allocated: the JSON against
        :data:`CIRCUIT_FILE` (types, ranges, limits), the graph size it implies against the tensor
        file's header, the pair id and content hash binding the two files, the tensors' dtypes and
        shapes. Then: no score is NaN, the mask marks only edges of the graph, and the JSON's
        edge list is exactly the mask's edges with the same scores."""
        path = Path(path)
        doc = read_json(path, CircuitFileError)
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise CircuitFileError(
                f"{path} is not a circuitgraph circuit (schema {doc.get('schema') if isinstance(doc, dict) else None!r}, expected {SCHEMA!r})"
            )
        validate(doc, CIRCUIT_FILE, path, CircuitFileError)
        spec = doc["model"]
        if model is not None:
            h = config_hash(model.cfg)
            if h != (spec.get("config_hash") or ""):
                raise CircuitFileError(
                    f"{path} was found on a different model (config hash {spec.get('config_hash')}, this model's is {h}); "
                    "load it with the model it was found on, or rediscover the circuit on this model"
                )
        try:
            n_src, n_dst = Graph.spec_size(spec)
        except GraphError as e:
            raise CircuitFileError(f"{path}: $.model: {e}") from None
        st = path.with_suffix(".safetensors")
        if not st.exists() and not st.is_symlink():
            raise CircuitFileError(f"{st} is missing; a circuit needs both its .json and .safetensors files")
        _, info = read_header(st, CircuitFileError)
        blocked = "scores" not in info and any(k.startswith("scores.") for k in info)
        graph = None
        if blocked:  # block shapes come from the graph, so it is built first
            graph = _graph_of(spec, path)
            specs = _block_specs(graph)
        else:
            specs = {
                "scores": TensorSpec(("F32",), (n_src, n_dst)),  # never NaN; ±inf round-trips
                "mask": TensorSpec(("BOOL",), (n_src, n_dst)),
            }
        # optimal ablation's fitted constants ride along as ``ablation.*`` tensors
        fitted = bool(((doc.get("metadata") or {}).get("ablation") or {}).get("values"))
        binding = Binding.from_doc(doc, path, CircuitFileError)
        check_tensor_file(
            st, specs, CircuitFileError, binding=binding, json_source=path.name, schema=SCHEMA, extra=fitted
        )
        problem = check_member(path)
        if problem:
            raise CircuitFileError(problem)
        if graph is None:  # the graph before the tensors: its build's temporaries and the tensors never coexist
            graph = _graph_of(spec, path)
        if model is not None:
            graph.to(next(model.parameters()).device)
        t = load_tensors(st, specs, CircuitFileError, extra=fitted)
        mask = _scores_and_mask(graph, t, blocked, st)
        metadata = doc.get("metadata", {})
        graph.score_info = metadata.get("attribution", {})
        if SUPERNODES in metadata:  # their form, and that they name this graph's nodes
            try:
                metadata[SUPERNODES] = check_supernodes(metadata[SUPERNODES], graph)
            except GraphError as e:
                raise CircuitFileError(f"{path}: metadata.{SUPERNODES} is malformed: {e}") from None
        marked = mask.count_nonzero() if isinstance(mask, EdgeBlocks) else int(torch.count_nonzero(mask))
        c = cls(
            graph,
            mask,
            metadata=metadata,
            faithfulness=doc.get("faithfulness"),
            figures=doc.get("figures", {}),
            ablation_tensors={k: v for k, v in t.items() if k.startswith("ablation.")},
        )
        named = (c.metadata.get("ablation") or {}).get("values") or []
        if named and len(named) != len(c.ablation_tensors):
            raise CircuitFileError(
                f"{path} names {len(named)} optimal-ablation constants but {st} holds {len(c.ablation_tensors)}; "
                "the pair is inconsistent"
            )
        n = c.n_edges  # the constructor keeps only the mask's cells that are edges
        if marked != n:
            raise CircuitFileError(
                f"{st}: the mask marks {marked - n} cell(s) that are not edges of the graph; the file is corrupted"
            )
        c.binding = binding
        c._check_readable_copy(doc, path, n)
        return c

    def _check_readable_copy(self, doc: dict, path: Path, n: int) -> None:
        """The JSON's counts and edge list say what the tensors (``n`` edges) hold: it is what people read."""
        if doc["n_edges"] != n:
            raise CircuitFileError(
                f"{path} says {doc['n_edges']} edges but its tensors hold {n}; the pair is inconsistent"
            )
        if "n_edges_total" in doc and doc["n_edges_total"] != (total := self.graph.n_edges):
            raise CircuitFileError(f"{path}: $.n_edges_total is {doc['n_edges_total']} but the graph has {total} edges")
        g, edges = self.graph, doc["edges"]
        rows = [g.src_index.get(s, -1) for s, _, _ in edges]
        cols = [g.dst_index.get(d, -1) for _, d, _ in edges]
        unknown = [f"{s}->{d}" for (s, d, _), r, c in zip(edges, rows, cols) if r < 0 or c < 0]
        if unknown:
            raise CircuitFileError(f"{path}: $.edges names edge(s) the graph does not have: {unknown[:3]}")
        r = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        k = torch.tensor(cols, dtype=torch.long, device=self.mask.device)
        # compared as sorted flat indices: nothing of the mask's full size is allocated
        listed = r * g.n_dst + k
        held = self.mask.nonzero()  # [n_edges, 2], row-major
        held = held[:, 0] * g.n_dst + held[:, 1]
        if len(edges) != n or not torch.equal(listed.sort().values, held):
            raise CircuitFileError(
                f"{path}: $.edges lists {int(listed.unique().numel())} distinct edge(s) but the mask holds "
                f"{n} ({int(torch.count_nonzero(~torch.isin(listed, held)))} listed edge(s) are not in "
                "the mask); the pair is inconsistent"
            )
        written = torch.tensor([float(sc) for _, _, sc in edges], dtype=torch.float64)
        held = g.scores[r, k].detach().double().cpu()
        if not torch.equal(written, held):
            i = int((written != held).nonzero()[0, 0])
            raise CircuitFileError(
                f"{path}: $.edges[{i}] gives {edges[i][0]}->{edges[i][1]} the score {edges[i][2]!r} but the tensors "
                f"hold {float(held[i])!r}; the pair is inconsistent"
            )


def _scores_and_mask(graph: Graph, t: dict[str, torch.Tensor], blocked: bool, st: Path) -> torch.Tensor | EdgeBlocks:
    """Give ``graph`` the loaded scores (taken out of ``t``); return the mask, in the file's layout."""
    if blocked:
        graph.edge_layout = "blocks"
        lay = layout_of(graph)
        graph.scores = EdgeBlocks(lay, {g: t.pop(f"scores.{g}").to(graph.valid.device) for g in lay.names})
        return EdgeBlocks(lay, {g: t.pop(f"mask.{g}") for g in lay.names})
    scores = t.pop("scores").to(graph.valid.device)
    off = off_graph(scores, graph.valid)
    if off:
        raise CircuitFileError(
            f"{st}: {off} score(s) where the graph has no edge (the format holds 0 there); the file is corrupted"
        )
    graph.scores = scores
    return t.pop("mask")


def _block_specs(graph: Graph) -> dict[str, TensorSpec]:
    """The tensors of a circuit file kept as edge blocks: per destination group, its scores and mask."""
    lay = layout_of(graph)
    specs = {}
    for g, cols in lay.cols.items():
        shape = (lay.n_rows(g), cols.stop - cols.start)
        specs[f"scores.{g}"] = TensorSpec(("F32",), shape)  # never NaN; ±inf round-trips
        specs[f"mask.{g}"] = TensorSpec(("BOOL",), shape)
    return specs


def _graph_of(spec: dict, path: Path) -> Graph:
    try:
        return Graph.from_spec(spec)
    except GraphError as e:
        raise CircuitFileError(f"{path}: $.model: {e}") from None


def check_supernodes(groups, graph: Graph) -> list[dict]:
    """``groups`` as ``[{"name": str, "nodes": [str, ...]}]`` after checking it: a list of groups,
    each with a non-empty name (unique) and a list of distinct nodes of ``graph`` (sources, or the
    logits). Raises :class:`~circuitgraph.errors.GraphError` naming the first problem."""
    if not isinstance(groups, list):
        raise GraphError(
            f"supernodes must be a list of {{'name': str, 'nodes': [node names]}}, got {type(groups).__name__}"
        )
    known = set(graph.src_names) | {dst_node(graph.dst_names[j]) for j in graph.logits_columns.tolist()}
    out, names = [], set()
    for k, g in enumerate(groups):
        if not isinstance(g, dict) or not isinstance(g.get("name"), str) or not isinstance(g.get("nodes"), list):
            raise GraphError(f"supernode {k} must be {{'name': str, 'nodes': [node names]}}, got {g!r}")
        name, nodes = g["name"].strip(), g["nodes"]
        if not name or name in names:
            raise GraphError(f"supernode {k} needs a name of its own, got {g['name']!r}")
        bad = [n for n in nodes if not isinstance(n, str) or n not in known]
        if bad or not nodes or len(set(nodes)) != len(nodes):
            what = f"names no node of this graph: {bad[:5]}" if bad else "must list distinct nodes, at least one"
            raise GraphError(f"supernode {name!r} {what}")
        names.add(name)
        out.append({"name": name, "nodes": list(nodes)})
    return out
