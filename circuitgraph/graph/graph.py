"""The computational graph of a transformer: residual-stream writers (sources) and readers
(destinations), with one dense ``[n_src, n_dst]`` tensor each for validity, scores and circuit
membership.

Why dense tensors: every attribution method produces a score for *all* edges at once by a tensor
contraction, and circuit selection is a top-k / threshold on the same tensor. Keeping everything
as ``[n_src, n_dst]`` on the model's device means no Python loop ever touches single edges.

Node naming (stable, documented in the README):
    sources       ``input`` (token + positional embedding), ``a{L}.h{H}`` (head output), ``m{L}``
                  (MLP output)
    destinations  ``a{L}.h{H}.q`` / ``.k`` / ``.v`` (a head's query/key/value input; with
                  ``split_qkv=False`` a single ``a{L}.h{H}``), ``m{L}`` (MLP input), ``logits``
An edge is written ``"src->dst"``, e.g. ``"a0.h1->a1.h2.k"``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import networkx as nx
import torch

from circuitgraph.errors import GraphError
from circuitgraph.files.schema import LIMITS, Bool, Int, ListOf, MapOf, Obj, Optional, Str
from circuitgraph.graph.blocks import DENSE_ENTRIES, EdgeBlocks
from circuitgraph.graph.names import HEAD_TIME, MLP_TIME, QKV, dst_node, mlp_read_offset, node_kind, parse_node
from circuitgraph.graph.sites import Site, check_sites, make_site
from circuitgraph.models.backend import Architecture, check_model
from circuitgraph.models.sae import as_sae_list, validate

# The ``model`` block of every file that rebuilds a graph (:meth:`Graph.spec`): checked before a
# graph is sized from it. Documented in docs/circuit-schema.md.
SITE_SPEC = Obj(
    required={
        "hook_name": Str(max_len=256, min_len=1),
        "d_sae": Int(1, LIMITS.max_d_sae),
        "features": ListOf(Int(0, LIMITS.max_d_sae - 1), max_len=LIMITS.max_d_sae, increasing=True),
    },
    optional={"hook_name_out": Optional(Str(max_len=256, min_len=1))},
    label="an SAE site {hook_name, d_sae, features[, hook_name_out]}",
)
GRAPH_SPEC = Obj(
    required={
        "n_layers": Int(1, LIMITS.max_layers),
        "n_heads": Int(1, LIMITS.max_heads),
        "has_mlp": Bool(),
        "d_model": Int(1, LIMITS.max_d_model),
        "split_qkv": Bool(),
    },
    optional={
        "name": Str(max_len=1024),
        "config_hash": Str(max_len=64),
        "d_mlp": Int(0, LIMITS.max_d_mlp),
        "parallel_attn_mlp": Bool(),
        "post_norms": Bool(),
        "neurons": MapOf(
            ListOf(Int(0, LIMITS.max_d_mlp - 1), max_len=LIMITS.max_d_mlp, increasing=True),
            key_pattern=r"0|[1-9][0-9]{0,5}",
            key_label="a layer number",
        ),
        "positions": Optional(Int(1, LIMITS.max_positions)),
        "causal": Bool(),
        "sites": ListOf(SITE_SPEC, max_len=6 * LIMITS.max_layers),
    },
    label="a model block {n_layers, n_heads, has_mlp, d_model, split_qkv, ...}",
)


class Graph:
    """Sources × destinations of one model, with edge scores.

    ``valid[s, d]`` is True where source ``s`` writes into the residual stream before destination
    ``d`` reads it. ``scores`` holds the latest :func:`circuitgraph.attribute` result (a
    compatibility shim: ``attribute`` returns the same tensor as a value).

    ``neurons`` splits MLPs into single neurons: ``{layer: None}`` (every neuron of that layer) or
    ``{layer: [ids]}`` (those neurons, plus an ``m{L}.rest`` node for the others, so the graph
    still sums to the model). A neuron ``m{L}.n{i}`` writes ``post_i · W_out[i]`` and reads the
    residual stream through ``W_in[:, i]``.

    A graph is a description: it never runs a model. The SAEs of its sites are *attached*
    (``saes``, by hook name) so that graph and weights travel together through every call; the
    graph itself never calls them.
    """

    positions: int | None = None  # token positions of a position-resolved graph (PositionalGraph)
    causal: bool = True  # (position-resolved graphs: does attention look only backwards?)
    # how scores and circuit masks are stored: "dense" [n_src, n_dst], "blocks" (EdgeBlocks: per
    # destination group, only the rows it reads) or "auto" (blocks above DENSE_ENTRIES entries)
    edge_layout: str = "auto"

    def __init__(
        self,
        arch: Architecture,
        split_qkv: bool = True,
        device: torch.device | str = "cpu",
        model_name: str = "",
        model_hash: str = "",
        neurons: dict[int, list[int] | None] | None = None,
        sites: list[Site] | None = None,
    ) -> None:
        self._describe(
            arch,
            split_qkv,
            model_name,
            model_hash,
            _normalise_neurons(neurons, arch),
            check_sites(list(sites or []), arch.n_layers, arch.has_mlp, arch.parallel_attn_mlp),
        )
        replaced = sorted(s.layer for s in self.sites if s.kind == "transcoder" and s.layer in self.neurons)
        if replaced:
            raise GraphError(
                f"layer {replaced[0]} has neuron nodes and a transcoder, which replaces that layer's MLP and so "
                "its neurons: split the layer into neurons or attach the transcoder, not both"
            )
        L, H = arch.n_layers, arch.n_heads
        # Residual "time" (see graph/names.py): input 0, layer L's heads 8L+4, its MLP 8L+8, SAE
        # sites in between, logits 8·n_layers+4. Rows and columns are ordered by time.
        src = [("input", 0, -1, "input")]
        dst = []
        letters = QKV if split_qkv else ("",)
        reads = mlp_read_offset(arch.parallel_attn_mlp)  # (parallel blocks: the MLP reads with the heads)
        for layer in range(L):
            t = 8 * layer
            src += [(f"a{layer}.h{h}", t + HEAD_TIME, layer, f"attn{layer}") for h in range(H)]
            dst += [
                (f"a{layer}.h{h}.{c}" if c else f"a{layer}.h{h}", t + HEAD_TIME, layer, f"attn{layer}")
                for c in letters
                for h in range(H)
            ]
            for name in self.mlp_node_names(layer):
                src.append((name, t + MLP_TIME, layer, f"mlp{layer}"))
                dst.append((name, t + reads, layer, f"mlp{layer}"))
        for site in self.sites:
            read = 8 * site.layer + reads if site.kind == "transcoder" else site.time
            for name in site.node_names():
                src.append((name, site.time, site.layer, site.name))
                dst.append((name, read, site.layer, site.name))
        dst.append(("logits", 8 * L + HEAD_TIME, L, "logits"))
        src.sort(key=lambda e: e[1])  # stable: within a time, the order above
        dst.sort(key=lambda e: e[1])
        src_names, src_time, src_layer, self._src_groups = (list(x) for x in zip(*src))
        dst_names, dst_time, _, self._dst_groups = (list(x) for x in zip(*dst))
        self.src_time = torch.tensor(src_time)
        self.dst_time = torch.tensor(dst_time)
        # Each destination belongs to a node, which is also a source (logits: -1).
        src_index = {n: i for i, n in enumerate(src_names)}
        self.dst_owner = torch.tensor([src_index.get(dst_node(n), -1) for n in dst_names])
        order = torch.argsort(self.dst_owner, stable=True)
        counts = torch.bincount(self.dst_owner + 1, minlength=len(src_names) + 1)[1:]
        starts = int((self.dst_owner < 0).sum())
        node_dsts = list(torch.split(order[starts:], counts.tolist()))  # destinations of each source node
        # A destination reads a source written strictly earlier, unless an SAE site in between
        # already read it (the site's nodes carry it on): valid iff t_src < t_dst ≤ hidden_after.
        self._set_tables(src_names, dst_names, torch.tensor(src_layer), self._edges(), node_dsts, device)
        self._layout()

    def _describe(
        self,
        arch: Architecture,
        split_qkv: bool,
        model_name: str,
        model_hash: str,
        neurons: dict[int, list[int]],
        sites: list[Site],
    ) -> None:
        """What the graph is of: the model's shape and which nodes it splits (shared by every graph)."""
        self.arch = arch
        self.split_qkv = split_qkv
        self.model_name = model_name
        self.model_hash = model_hash
        self.neurons = neurons
        self.sites = sites

    def _set_tables(
        self,
        src_names: list[str],
        dst_names: list[str],
        src_layer: torch.Tensor,
        valid: torch.Tensor,
        node_dsts: list[torch.Tensor],
        device: torch.device | str,
    ) -> None:
        """Names, indices, the edge table and the (empty) results: the second step of every graph."""
        self.src_names: list[str] = src_names
        self.dst_names: list[str] = dst_names
        self.src_index = {n: i for i, n in enumerate(src_names)}
        self.dst_index = {n: i for i, n in enumerate(dst_names)}
        self.src_layer = src_layer
        self.node_dsts = node_dsts
        self.device = torch.device(device)
        self.valid = valid.to(self.device)
        self._upstream: dict[str, slice | torch.Tensor] = {}
        self._scores: torch.Tensor | EdgeBlocks | None = None  # allocated when first used (see scores)
        self._in_circuit: torch.Tensor | None = None
        self.score_info: dict = {}
        self.saes: dict[str, Any] = {}  # hook name → SAE, for graphs with SAE sites (see attach_saes)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(
        cls,
        model: Any,
        split_qkv: bool = True,
        neurons: bool | dict | None = None,
        saes: Any = None,
        features: str | int | Mapping[str, Iterable[int]] = "all",
        task: Any = None,
    ) -> Graph:
        """Compile a model into its edge graph (refusing architectures whose residual stream does
        not decompose as heads + MLPs). ``neurons=True`` splits every MLP into its neurons; a dict
        ``{layer: [ids] | None}`` splits only those. ``saes`` adds an SAE site per SAE, whose
        ``features`` (``"all"`` or ``{hook_name: [ids]}``) become nodes; to choose features from a
        task (``"active"``, or the top k), use :func:`circuitgraph.feature_graph`, which runs the
        model."""
        backend = check_model(model, neurons=bool(neurons))
        cfg = backend.cfg
        sites = None
        if saes is not None:
            saes = as_sae_list(saes)
            sites = _sites_for(model, saes, features)
        if neurons is True:  # (every layer whose MLP is in the graph: a transcoder replaces its layer's)
            replaced = {s.layer for s in sites or [] if s.kind == "transcoder"}
            neurons = {layer: None for layer in range(cfg.n_layers) if layer not in replaced}
        graph = cls(
            backend.architecture(),
            split_qkv=split_qkv,
            device=cfg.device or "cpu",
            model_name=backend.name,
            model_hash=backend.fingerprint(),
            neurons=neurons or None,
            sites=sites,
        )
        return graph.attach_saes(saes) if saes is not None else graph

    def attach_saes(self, saes: Any) -> Graph:
        """Give the engine the SAEs of this graph's sites (a graph rebuilt from a file knows its
        sites but not their weights). Refuses SAEs that do not fit a site."""
        by_hook = {sae.hook_name: sae for sae in as_sae_list(saes)}
        for site in self.sites:
            sae = by_hook.get(site.hook_name)
            if sae is None:
                raise GraphError(f"no SAE given for the graph's site {site.hook_name}; got SAEs for {sorted(by_hook)}")
            if sae.d_sae != site.d_sae or sae.d_in != self.arch.d_model or sae.hook_name_out != site.hook_name_out:
                raise GraphError(
                    f"the SAE for {site.hook_name} has d_in={sae.d_in}, d_sae={sae.d_sae}, hook_name_out={sae.hook_name_out}, "
                    f"but the graph's site expects d_in={self.arch.d_model}, d_sae={site.d_sae}, "
                    f"hook_name_out={site.hook_name_out}: it is not the SAE the graph was built with"
                )
            self.saes[site.hook_name] = sae
        return self

    def mlp_node_names(self, layer: int) -> list[str]:
        """The nodes layer ``layer``'s MLP contributes: ``m{L}``, or its neurons (+ ``m{L}.rest``);
        none when a transcoder stands in for it."""
        if not self.has_mlp_node(layer):
            return []
        if layer not in self.neurons:
            return [f"m{layer}"]
        ids = self.neurons[layer]
        names = [f"m{layer}.n{i}" for i in ids]
        if len(ids) < self.arch.d_mlp:
            names.append(f"m{layer}.rest")
        return names

    def has_mlp_node(self, layer: int) -> bool:
        """Layer ``layer``'s MLP is in the graph as ``m{L}`` or neurons (not replaced by a transcoder)."""
        return self.arch.has_mlp and not any(s.kind == "transcoder" and s.layer == layer for s in self.sites)

    def neuron_ids(self, layer: int) -> torch.Tensor | None:
        """Neuron indices of layer ``layer``'s neuron nodes (None when the MLP is one node)."""
        if layer not in self.neurons:
            return None
        return torch.tensor(self.neurons[layer], dtype=torch.long)

    def has_rest(self, layer: int) -> bool:
        return layer in self.neurons and len(self.neurons[layer]) < self.arch.d_mlp

    @property
    def uses_blocks(self) -> bool:
        """Whether this graph keeps scores and masks as :class:`EdgeBlocks` (``edge_layout``;
        ``"auto"``: when the dense matrix has more than ``DENSE_ENTRIES`` entries). Position-resolved
        graphs are always dense."""
        if self.positions or self.edge_layout == "dense":
            return False
        if self.edge_layout not in ("auto", "blocks"):
            raise GraphError(f"edge_layout must be 'auto', 'dense' or 'blocks', got {self.edge_layout!r}")
        return self.edge_layout == "blocks" or self.n_src * self.n_dst > DENSE_ENTRIES

    @property
    def scores(self) -> Any:
        """Edge scores (zeros until :func:`circuitgraph.attribute` fills them): a dense
        ``[n_src, n_dst]`` tensor, or :class:`EdgeBlocks` for a graph that :attr:`uses_blocks`
        (``.dense()`` gives the dense view). Allocated on first use: at neuron or feature scale
        it is the largest object there is, and :func:`~circuitgraph.attribute` makes its own."""
        if self._scores is None:
            self._scores = (
                EdgeBlocks.zeros(self) if self.uses_blocks else torch.zeros(self.valid.shape, device=self.valid.device)
            )
        return self._scores

    @scores.setter
    def scores(self, value: torch.Tensor | EdgeBlocks | None) -> None:
        self._scores = value

    def full_mask(self) -> torch.Tensor | EdgeBlocks:
        """Every edge kept, in the graph's layout (``valid`` itself when dense: no copy)."""
        return EdgeBlocks.full(self, True, torch.bool) if self.uses_blocks else self.valid

    def empty_mask(self) -> torch.Tensor | EdgeBlocks:
        """No edge kept, in the graph's layout."""
        return EdgeBlocks.zeros(self, torch.bool) if self.uses_blocks else torch.zeros_like(self.valid)

    @property
    def in_circuit(self) -> torch.Tensor:
        """The graph's current circuit mask (default: every valid edge; no copy is made)."""
        return self.valid if self._in_circuit is None else self._in_circuit

    @in_circuit.setter
    def in_circuit(self, mask: torch.Tensor) -> None:
        self._in_circuit = mask.to(self.valid.device).bool() & self.valid

    # ------------------------------------------------------------------ persistence of the shape
    def spec(self) -> dict:
        """A JSON-able description from which :meth:`from_spec` rebuilds this graph (scores aside):
        what circuit files store about their model."""
        return {
            "name": self.model_name,
            "config_hash": self.model_hash,
            "n_layers": self.arch.n_layers,
            "n_heads": self.arch.n_heads,
            "has_mlp": self.arch.has_mlp,
            "d_model": self.arch.d_model,
            "d_mlp": self.arch.d_mlp,
            "parallel_attn_mlp": self.arch.parallel_attn_mlp,
            "post_norms": self.arch.post_norms,
            "split_qkv": self.split_qkv,
            "neurons": {str(k): v for k, v in sorted(self.neurons.items())},
            "positions": self.positions,
            "causal": self.causal,
            "sites": [site.to_dict() for site in self.sites],
        }

    @staticmethod
    def spec_size(spec: dict) -> tuple[int, int]:
        """``(n_src, n_dst)`` of the graph :meth:`from_spec` would build, by arithmetic, without
        building it: a loader compares this with its tensor file before allocating anything.
        (Must agree with the constructor; tests/test_files.py checks it on every kind of graph.)
        ``spec`` must fit :data:`GRAPH_SPEC`; raises ``GraphError`` on inconsistent sites."""
        L, H, d_mlp = spec["n_layers"], spec["n_heads"], spec.get("d_mlp") or 0
        sites = [Site.from_dict(d) for d in spec.get("sites") or []]
        replaced = {s.layer for s in sites if s.kind == "transcoder"}
        neurons = {int(k): v for k, v in (spec.get("neurons") or {}).items()}
        mlp = 0
        if spec["has_mlp"]:
            for layer in range(L):
                if layer in replaced:
                    continue
                if layer not in neurons:
                    mlp += 1
                    continue
                n = d_mlp if neurons[layer] is None else len(set(neurons[layer]))  # (None: from a caller, not a file)
                mlp += n + (1 if n < d_mlp else 0)
        site_nodes = sum(len(s.features) + (1 if s.has_rest else 0) + 1 for s in sites)
        n_src = 1 + L * H + mlp + site_nodes
        n_dst = L * H * (len(QKV) if spec["split_qkv"] else 1) + mlp + site_nodes + 1
        P = spec.get("positions") or 1
        return n_src * P, n_dst * P

    @staticmethod
    def from_spec(spec: dict, device: torch.device | str = "cpu") -> Graph:
        """Rebuild a graph (a :class:`PositionalGraph` when the spec has positions). Raises
        ``KeyError``/``TypeError``/``ValueError`` on a malformed spec."""
        arch = Architecture(
            int(spec["n_layers"]),
            int(spec["n_heads"]),
            bool(spec["has_mlp"]),
            int(spec["d_model"]),
            int(spec.get("d_mlp") or 0),
            parallel_attn_mlp=bool(spec.get("parallel_attn_mlp", False)),  # (absent from older files)
            post_norms=bool(spec.get("post_norms", False)),
        )
        neurons = {int(k): v for k, v in (spec.get("neurons") or {}).items()}
        graph = Graph(
            arch,
            split_qkv=bool(spec["split_qkv"]),
            device=device,
            model_name=str(spec.get("name") or ""),
            model_hash=str(spec.get("config_hash") or ""),
            neurons=neurons or None,
            sites=[Site.from_dict(d) for d in spec.get("sites") or []],
        )
        if spec.get("positions"):
            return PositionalGraph(graph, int(spec["positions"]), causal=bool(spec.get("causal", True)))
        return graph

    # ------------------------------------------------------------------ sizes and names
    @property
    def n_src(self) -> int:
        return len(self.src_names)

    @property
    def n_dst(self) -> int:
        return len(self.dst_names)

    @property
    def n_edges(self) -> int:
        return int(torch.count_nonzero(self.valid))  # (bool .sum() would materialise int64)

    def __repr__(self) -> str:
        return (
            f"Graph({self.model_name or 'model'}: {self.n_src} sources, {self.n_dst} destinations, "
            f"{self.n_edges} edges, split_qkv={self.split_qkv})"
        )

    def src(self, name: str) -> int:
        """Index of a source node; a clear error for unknown names."""
        try:
            return self.src_index[name]
        except KeyError:
            raise KeyError(_unknown(name, "source", self.src_names)) from None

    def dst(self, name: str) -> int:
        try:
            return self.dst_index[name]
        except KeyError:
            raise KeyError(_unknown(name, "destination", self.dst_names)) from None

    def edge(self, name_or_pair: str | tuple[str, str]) -> tuple[int, int]:
        """``"a0.h1->a1.h2.k"`` or ``("a0.h1", "a1.h2.k")`` → ``(src_idx, dst_idx)``."""
        if isinstance(name_or_pair, str):
            if "->" not in name_or_pair:
                raise KeyError(f"edge name {name_or_pair!r} must look like 'src->dst', e.g. 'input->logits'")
            s, d = name_or_pair.split("->", 1)
        else:
            s, d = name_or_pair
        i, j = self.src(s), self.dst(d)
        if not bool(self.valid[i, j]):
            raise KeyError(f"there is no edge {s}->{d}: {d} reads the residual stream before {s} writes to it")
        return i, j

    def has_edge(self, src: str, dst: str) -> bool:
        i, j = self.src_index.get(src), self.dst_index.get(dst)
        return i is not None and j is not None and bool(self.valid[i, j])

    def edge_names(self, mask: torch.Tensor | EdgeBlocks | None = None) -> list[str]:
        """Names of the edges where ``mask`` (default: all valid) is True, in row-major order."""
        m = self.valid if mask is None else _masked(mask, self.valid)
        idx = m.nonzero().tolist()
        return [f"{self.src_names[i]}->{self.dst_names[j]}" for i, j in idx]

    def edges(self) -> Iterator[tuple[str, str]]:
        for i, j in self.valid.nonzero().tolist():
            yield self.src_names[i], self.dst_names[j]

    def mask_from_edges(self, edges: Iterable[str | tuple[str, str]]) -> torch.Tensor:
        """A boolean ``[n_src, n_dst]`` mask with the named edges set."""
        mask = torch.zeros_like(self.valid)
        for e in edges:
            mask[self.edge(e)] = True
        return mask

    @staticmethod
    def dst_node(dst_name: str) -> str:
        """The node a destination belongs to (see :func:`circuitgraph.graph.names.dst_node`)."""
        return dst_node(dst_name)

    @property
    def logits_columns(self) -> torch.Tensor:
        """Column indices of the ``logits`` destination(s)."""
        return torch.tensor([self.dst_index["logits"]])

    @property
    def input_rows(self) -> torch.Tensor:
        """Row indices of the ``input`` source(s)."""
        return torch.tensor([self.src_index["input"]])

    @property
    def node_graph(self) -> Graph:
        """The position-free graph the engine computes on (itself, unless position-resolved)."""
        return self

    # ------------------------------------------------------------------ views
    def to_networkx(self, mask: torch.Tensor | EdgeBlocks | None = None) -> nx.DiGraph:
        """A DiGraph over model nodes (q/k/v inputs folded into their head, recorded on the edge
        as ``qkv``) with ``score`` edge attributes; restricted to ``mask`` when given."""
        m = self.valid if mask is None else _masked(mask, self.valid)
        g = nx.DiGraph(model=self.model_name, model_hash=self.model_hash)
        for name, layer in zip(self.src_names, self.src_layer.tolist()):
            g.add_node(name, kind=node_kind(name), layer=layer)
        for name in dict.fromkeys(self.dst_node(d) for d in self.dst_names if node_kind(d) == "logits"):
            g.add_node(name, kind="logits", layer=self.arch.n_layers)
        idx = m.nonzero()
        values = self.scores[idx[:, 0], idx[:, 1]].detach().float().cpu().tolist() if len(idx) else []
        for (i, j), score in zip(idx.tolist(), values):
            reader = parse_node(self.dst_names[j])
            node = reader.owner
            qkv = reader.slot or ""
            if g.has_edge(self.src_names[i], node) and qkv:
                g.edges[self.src_names[i], node]["qkv"] += qkv
                g.edges[self.src_names[i], node]["score_" + qkv] = score
                g.edges[self.src_names[i], node]["score"] += score
                continue
            attrs = {"score": score, "qkv": qkv}
            if qkv:
                attrs["score_" + qkv] = score
            g.add_edge(self.src_names[i], node, **attrs)
        return g

    def to(self, device: torch.device | str) -> Graph:
        self.device = torch.device(device)
        self.valid = self.valid.to(device)
        if self._scores is not None:
            self._scores = self._scores.to(device)
        self._upstream = {g: u if isinstance(u, slice) else u.to(device) for g, u in self._upstream.items()}
        self.__dict__.pop("_block_layout", None)  # (rebuilt on the new device when next asked for)
        if self._in_circuit is not None:
            self._in_circuit = self._in_circuit.to(device)
        return self

    # ------------------------------------------------------------------ layout helpers used by the engine
    def dst_slices(self) -> dict[str, slice]:
        """Column ranges of each destination group, in time order: ``attn{L}`` (all q/k/v of layer
        L, ordered q-heads, k-heads, v-heads), ``mlp{L}`` (the MLP input, or its neurons' inputs),
        one group per SAE site (``resid_pre1``: its features, ``rest``, ``err``) and ``logits``."""
        return dict(self._dst_slices)

    def src_slices(self) -> dict[str, slice]:
        """Row ranges of each source group: ``input``, ``attn{L}`` (heads), ``mlp{L}`` (the MLP or
        its neurons), one per SAE site."""
        return dict(self._src_slices)

    def upstream(self, group: str) -> slice | torch.Tensor:
        """The source rows a destination group reads: a slice when they are contiguous (always,
        without SAE sites: a prefix of the rows), else a sorted index tensor."""
        return self._upstream[group]

    def upstream_rows(self, group: str) -> torch.Tensor:
        """:meth:`upstream` as an index tensor."""
        up = self._upstream[group]
        return torch.arange(up.start, up.stop, device=self.device) if isinstance(up, slice) else up

    def site(self, name: str) -> Site:
        """The SAE site called ``name`` (``resid_pre1``) or at hook point ``name``."""
        for s in self.sites:
            if name in (s.name, s.hook_name):
                return s
        raise KeyError(f"no SAE site {name!r} in this graph; its sites are {[s.name for s in self.sites]}")

    def _edges(self) -> torch.Tensor:
        """``valid [n_src, n_dst]``: t_src < t_dst, except that an SAE site hides the writers it
        reads from every later reader, and an ``attn_out`` / ``mlp_out`` site reads only its
        layer's heads / MLP."""
        never = 8 * self.arch.n_layers + 100
        hidden = torch.full((len(self._src_groups),), never)  # last time a source is read directly
        only: list[tuple[str, torch.Tensor]] = []  # (site group, the rows it reads) for output sites
        groups = self._src_groups
        for site in self.sites:
            if site.kind == "transcoder":  # stands in for the MLP: reads and writes like it, no cut
                continue
            if site.kind in ("attn_out", "mlp_out"):
                layer_group = f"{'attn' if site.kind == 'attn_out' else 'mlp'}{site.layer}"
                rows = torch.tensor([g == layer_group for g in groups])
                only.append((site.name, rows))
            else:
                rows = (self.src_time < site.time) & (hidden == never)
            hidden[rows] = site.time
        valid = self.src_time[:, None] < self.dst_time[None, :]
        valid &= self.dst_time[None, :] <= hidden[:, None]  # (in place: at neuron scale each is 1.4 GB)
        dst_groups = self._dst_groups
        for name, rows in only:
            cols = torch.tensor([g == name for g in dst_groups])
            valid[:, cols] = rows[:, None]
        return valid

    def _layout(self) -> None:
        """Group slices and upstream rows: fixed by the graph's shape, so computed once (the
        engine asks for them in every contraction and patched forward)."""
        self._src_slices = _runs(self._src_groups)
        self._dst_slices = _runs(self._dst_groups)
        self._upstream = {}
        valid = self.valid.cpu()
        for g, cols in self._dst_slices.items():
            rows = valid[:, cols.start].nonzero()[:, 0]
            lo, n = (int(rows[0]), len(rows)) if len(rows) else (0, 0)
            contiguous = n == 0 or int(rows[-1]) == lo + n - 1
            self._upstream[g] = slice(lo, lo + n) if contiguous else rows.to(self.device)


def _masked(mask: torch.Tensor | EdgeBlocks, valid: torch.Tensor) -> torch.Tensor | EdgeBlocks:
    """``mask`` restricted to the graph's edges (edge blocks hold nothing else)."""
    return mask if isinstance(mask, EdgeBlocks) else mask & valid


def _runs(groups: list[str]) -> dict[str, slice]:
    """Contiguous runs of equal labels → ``{label: slice}`` (labels are contiguous by construction)."""
    out: dict[str, slice] = {}
    for i, g in enumerate(groups):
        out[g] = slice(out[g].start, i + 1) if g in out else slice(i, i + 1)
    return out


def _normalise_neurons(neurons, arch: Architecture) -> dict[int, list[int]]:
    """``{layer: [sorted unique ids]}``, validated against the architecture."""
    if not neurons:
        return {}
    if not arch.has_mlp:
        raise GraphError("neurons were requested but this model has no MLPs (attn_only)")
    out = {}
    for layer, ids in dict(neurons).items():
        layer = int(layer)
        if not 0 <= layer < arch.n_layers:
            raise GraphError(f"neuron layer {layer} does not exist; the model has layers 0..{arch.n_layers - 1}")
        ids = list(range(arch.d_mlp)) if ids is None else sorted({int(i) for i in ids})
        bad = [i for i in ids if not 0 <= i < arch.d_mlp]
        if bad:
            raise GraphError(f"neuron ids {bad[:5]} of layer {layer} are out of range [0, {arch.d_mlp})")
        out[layer] = ids
    return out


def _unknown(name: str, what: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (
        f"unknown {what} node {name!r}.{hint} Valid {what} names look like "
        f"{', '.join(valid[:3])}, …, {valid[-1]} ({len(valid)} in all)."
    )


def _sites_for(model: Any, saes: list, features: Any) -> list[Site]:
    """One site per SAE, with the features given explicitly (``"all"`` or ``{hook_name: ids}``)."""
    for sae in saes:
        make_site(sae.hook_name, sae.d_sae, [], sae.hook_name_out)  # a site kind the graph supports
    if not saes:
        raise GraphError("a graph with SAE sites needs at least one SAE")
    validate(model, saes)  # hook exists, one SAE per site, d_in matches the activation width
    if isinstance(features, Mapping):
        unknown = set(features) - {s.hook_name for s in saes}
        if unknown:
            raise GraphError(
                f"features given for {sorted(unknown)}, which have no SAE; SAEs are at {[s.hook_name for s in saes]}"
            )
        chosen = {s.hook_name: list(features.get(s.hook_name, [])) for s in saes}
    elif features == "all":
        chosen = {s.hook_name: list(range(s.d_sae)) for s in saes}
    elif features == "active" or isinstance(features, int):
        raise GraphError(
            f"features={features!r} chooses features by running the model on a task; a graph is a description "
            "and never runs the model: use circuitgraph.feature_graph(model, saes, task, features=...) instead"
        )
    else:
        raise GraphError(f"features must be 'active', 'all', an int k or {{hook_name: [ids]}}, got {features!r}")
    return [make_site(s.hook_name, s.d_sae, chosen[s.hook_name], s.hook_name_out) for s in saes]


# ---------------------------------------------------------------------- position-resolved graphs
# Position-resolved graphs: every node once per token position (``a1.h3@5``), as in
# position-aware EAP, for tasks whose prompts share a template (equal lengths, no padding).
#
# Edges are residual-stream reads, so they join a writer and a reader at the *same* position:
# ``u@p → v@p``. Information moves between positions only inside attention heads: the head's output
# at position p reads its query input at p and its key/value inputs at every position p' ≤ p
# (all positions for bidirectional attention). Those within-node dependencies are what
# :func:`circuitgraph.circuit.prune` follows, so a circuit keeps ``input@2 → a0.h1.k@2`` only if
# some ``a0.h1@p`` with p ≥ 2 is on a path to the logits.
#
# The score matrix is ``[n_src·P, n_dst·P]`` with rows ``u·P + p``; only its position diagonal can
# be non-zero, and :meth:`PositionalGraph.diagonal` views it as ``[n_src, n_dst, P]``.
#
# The base graph may split MLPs into neurons and hold SAE sites: a neuron or a feature at position p
# reads and writes the residual stream at p, like an MLP; the engine computes on the base graph
# with per-position removals, and attribution keeps each position's own sum.


class PositionalGraph(Graph):
    """A :class:`Graph` whose nodes are (node, position) pairs; ``base`` is the position-free graph."""

    positions: int  # always set (≥ 1)

    def __init__(self, base: Graph, positions: int, causal: bool = True) -> None:
        if positions < 1:
            raise GraphError(f"positions must be ≥ 1, got {positions}")
        self.base = base
        self.positions = P = positions
        self.causal = causal
        self._describe(base.arch, base.split_qkv, base.model_name, base.model_hash, base.neurons, base.sites)
        self.src_time = base.src_time.repeat_interleave(P)
        self.dst_time = base.dst_time.repeat_interleave(P)
        eye = torch.eye(P, dtype=torch.bool, device=base.device)
        valid = (base.valid[:, None, :, None] & eye[None, :, None, :]).reshape(base.n_src * P, base.n_dst * P)
        # node u@p reads: q (and MLP / logits inputs) at p; k and v at every position it attends to
        self.dst_owner = torch.tensor([-1] * (base.n_dst * P))  # not unique with positions; use node_dsts
        node_dsts = []
        for s in range(base.n_src):
            own = base.node_dsts[s].tolist()
            for p in range(P):
                cols: list[int] = []
                for j in own:
                    reader = parse_node(base.dst_names[j])
                    if reader.slot in ("k", "v") or (not base.split_qkv and reader.kind == "head"):
                        reach = range(p + 1) if causal else range(P)
                        cols.extend(j * P + q for q in reach)
                    else:
                        cols.append(j * P + p)
                node_dsts.append(torch.tensor(sorted(cols), dtype=torch.long))
        self._set_tables(
            [f"{n}@{p}" for n in base.src_names for p in range(P)],
            [f"{n}@{p}" for n in base.dst_names for p in range(P)],
            base.src_layer.repeat_interleave(P),
            valid,
            node_dsts,
            base.device,
        )
        self.saes = base.saes  # (shared: the engine reads a site's SAE from either graph)

    @classmethod
    def from_model(  # type: ignore[override]
        cls,
        model: Any,
        positions: int,
        split_qkv: bool = True,
        neurons: bool | dict | None = None,
        saes: Any = None,
        features: str | int | Mapping[str, Iterable[int]] = "all",
    ) -> PositionalGraph:
        """Every node of ``Graph.from_model(model, split_qkv, neurons, saes, features)`` once per
        token position (for features chosen from a task, wrap :func:`circuitgraph.feature_graph`'s
        graph: ``PositionalGraph(graph, positions)``)."""
        base = Graph.from_model(model, split_qkv=split_qkv, neurons=neurons, saes=saes, features=features)
        return cls(base, positions, causal=getattr(model.cfg, "attention_dir", "causal") == "causal")

    def diagonal(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """``[n_src, n_dst, P]`` view of the position diagonal of ``t`` (default: the scores)."""
        t = self.scores if t is None else t
        b = self.base
        return t.view(b.n_src, self.positions, b.n_dst, self.positions).diagonal(0, 1, 3)

    def dst_slices(self) -> dict[str, slice]:
        return self.base.dst_slices()

    def src_slices(self) -> dict[str, slice]:
        return self.base.src_slices()

    def upstream(self, group: str) -> slice | torch.Tensor:
        """The base graph's upstream rows of ``group`` (the engine computes on the base graph)."""
        return self.base.upstream(group)

    def mlp_node_names(self, layer: int) -> list[str]:
        return self.base.mlp_node_names(layer)

    @property
    def logits_columns(self) -> torch.Tensor:
        j = self.base.dst_index["logits"]
        return torch.arange(j * self.positions, (j + 1) * self.positions)

    @property
    def input_rows(self) -> torch.Tensor:
        return torch.arange(self.positions)  # input@0 … input@{P-1}

    def position_free(self) -> torch.Tensor:
        """Scores summed over positions: ``[n_src, n_dst]`` of the base graph."""
        return self.diagonal().sum(-1)

    @property
    def node_graph(self) -> Graph:
        return self.base

    def to(self, device: torch.device | str) -> PositionalGraph:
        super().to(device)
        self.base.to(device)
        return self

    def __repr__(self) -> str:
        return (
            f"PositionalGraph({self.model_name or 'model'}: {self.base.n_src} sources × {self.positions} positions, "
            f"{self.n_edges} edges, split_qkv={self.split_qkv})"
        )
