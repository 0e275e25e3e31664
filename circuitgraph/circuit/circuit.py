"""A circuit: a set of edges of a graph, their scores, and where they came from.

Saved as ``name.json`` (human-readable: schema version, model fingerprint, provenance, the kept
edges with scores, measured figures) plus ``name.safetensors`` (the full ``[n_src, n_dst]`` score
matrix and the edge mask). No pickle: loading a file never runs code. Both files are written to a
temporary name and renamed, so an interrupted save never leaves a half-written circuit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from circuitgraph.atomic import atomic_write
from circuitgraph.circuit.summary import summary_html, summary_text
from circuitgraph.errors import FileFormatError, GraphError
from circuitgraph.graph import Graph, config_hash
from circuitgraph.graph.names import dst_node

SCHEMA = "circuitgraph.circuit/1"
SUPERNODES = "supernodes"  # metadata key of the user's node groups (see Circuit.supernodes)


class CircuitFileError(FileFormatError):
    """A circuit file is malformed, truncated, or belongs to another model."""


@dataclass
class Circuit:
    """Edges ``mask [n_src, n_dst]`` of ``graph`` plus provenance and measured figures."""

    graph: Graph
    mask: torch.Tensor
    metadata: dict = field(default_factory=dict)
    faithfulness: float | None = None
    figures: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mask.shape != self.graph.valid.shape or self.mask.dtype != torch.bool:
            raise GraphError(f"circuit mask must be a bool tensor of shape {list(self.graph.valid.shape)}")
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
        return int(torch.count_nonzero(self.mask))

    @property
    def scores(self) -> torch.Tensor:
        return self.graph.scores

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
    def to_dict(self) -> dict:
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
        }

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.json) and its ``.safetensors`` sibling atomically; returns the JSON path."""
        path = Path(path)
        if path.suffix != ".json":
            path = path.with_suffix(".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "scores": self.graph.scores.detach().float().cpu().contiguous(),
            "mask": self.mask.cpu().contiguous(),
        }
        st_path = path.with_suffix(".safetensors")
        atomic_write(st_path, lambda p: save_file(tensors, str(p), metadata={"schema": SCHEMA}))
        doc = self.to_dict()
        doc["tensors"] = st_path.name
        atomic_write(path, lambda p: Path(p).write_text(json.dumps(doc, indent=1)))
        return path

    @classmethod
    def load(cls, path: str | Path, model=None) -> Circuit:
        """Read a saved circuit. With ``model``, refuse a circuit found on a different model."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CircuitFileError(
                f"{path} is not valid circuit JSON ({e}); the file is corrupted or truncated"
            ) from None
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise CircuitFileError(
                f"{path} is not a circuitgraph circuit (schema {doc.get('schema') if isinstance(doc, dict) else None!r}, expected {SCHEMA!r})"
            )
        try:
            graph = Graph.from_spec(doc["model"])
        except (KeyError, TypeError, ValueError) as e:
            raise CircuitFileError(f"{path} lacks or garbles model field {e}; the file is corrupted") from None
        if model is not None:
            h = config_hash(model.cfg)
            if h != graph.model_hash:
                raise CircuitFileError(
                    f"{path} was found on a different model (config hash {graph.model_hash}, this model's is {h}); "
                    "load it with the model it was found on, or rediscover the circuit on this model"
                )
            graph.to(next(model.parameters()).device)
        st = path.with_suffix(".safetensors")
        try:
            t = load_file(str(st))
        except FileNotFoundError:
            raise CircuitFileError(f"{st} is missing; a circuit needs both its .json and .safetensors files") from None
        except (SafetensorError, OSError, ValueError) as e:
            raise CircuitFileError(f"{st} is corrupted or truncated ({e}); re-save the circuit") from None
        if (
            t.get("scores") is None
            or t["scores"].shape != graph.valid.shape
            or t.get("mask") is None
            or t["mask"].shape != graph.valid.shape
        ):
            raise CircuitFileError(f"{st} does not hold [{graph.n_src}, {graph.n_dst}] scores and mask for this graph")
        graph.scores = t["scores"].to(graph.valid.device)
        graph.score_info = doc.get("metadata", {}).get("attribution", {})
        if SUPERNODES in doc.get("metadata", {}):
            try:
                doc["metadata"][SUPERNODES] = check_supernodes(doc["metadata"][SUPERNODES], graph)
            except GraphError as e:
                raise CircuitFileError(f"{path}: metadata.{SUPERNODES} is malformed: {e}") from None
        c = cls(
            graph,
            t["mask"].bool(),
            metadata=doc.get("metadata", {}),
            faithfulness=doc.get("faithfulness"),
            figures=doc.get("figures", {}),
        )
        if c.n_edges != doc.get("n_edges", c.n_edges):
            raise CircuitFileError(
                f"{path} says {doc.get('n_edges')} edges but its tensors hold {c.n_edges}; the pair is inconsistent"
            )
        return c


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
