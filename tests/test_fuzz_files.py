"""Fuzzing every file format we read (issue 15): mutate valid circuit, hypothesis, SAE and task
files (types, numbers, deletions, insertions, deep nesting, NaN, truncation; and for tensor files,
dtypes, shapes and non-finite values behind a valid binding) and require that each load either
round-trips exactly or raises circuitgraph's own error, within a time and a memory bound.

"Exactly" means: what loaded, written back, is the mutated file (up to the documented defaults of
optional keys and the order of unordered collections), so a loader never silently reinterprets a
value (``"no"`` as true, ``1`` as true, a float id as an int, a dropped key as a default it does
not document). Time: Hypothesis' deadline. Memory: the process's address space is capped at its
current size plus 1 GiB while the loads run (Linux), so a loader that sizes an allocation from a
number in a file fails the test with a MemoryError instead of hanging.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from circuitgraph import Circuit, Graph, load_task, top_n
from circuitgraph.circuit.circuit import CIRCUIT_FILE
from circuitgraph.errors import CircuitGraphError
from circuitgraph.files.pairs import sha256_file
from circuitgraph.graph import Architecture, PositionalGraph
from circuitgraph.graph.graph import GRAPH_SPEC, SITE_SPEC
from circuitgraph.hypothesis import Hypothesis
from circuitgraph.hypothesis import serialize as ser
from circuitgraph.models.sae import SAE, load_sae, save_sae

try:
    import resource
except ImportError:  # pragma: no cover - not on Linux: no address-space cap, the rest still runs
    resource = None  # type: ignore[assignment]

FUZZ = settings(
    deadline=3000,  # ms per example: a loader that allocates for minutes misses it by far
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


def fuzz(n: int) -> settings:
    """``n`` examples (about 200 in all, so the file stays well under a minute)."""
    return settings(FUZZ, max_examples=n)


@contextlib.contextmanager
def memory_bound(extra: int = 1 << 30):
    """Cap the address space at its current size + ``extra`` bytes for the block (Linux)."""
    status = Path("/proc/self/status")
    if resource is None or not status.exists():
        yield
        return
    vm = next(int(line.split()[1]) * 1024 for line in status.read_text().splitlines() if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and vm + extra > hard:
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# ------------------------------------------------------------------------------------ mutations


def deep(depth: int) -> str:
    """A placeholder for ``depth`` nested arrays (json.dumps cannot write them: it recurses)."""
    return f"@@DEEP{depth}@@"


def dumps(doc) -> str:
    return re.sub(r'"@@DEEP(\d+)@@"', lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), json.dumps(doc))


NASTY = st.one_of(
    st.booleans(),
    st.none(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2, 3, 7, 1024, 10**6, 10**30, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["no", "yes", "true", "", "NaN", "1", "a0.h0", "x" * 70_000]),
    st.text(max_size=6),
    st.lists(st.integers(-3, 30), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(-2, 2), max_size=2),
    st.integers(60, 5000).map(deep),
)


def locations(doc) -> list[tuple]:
    """Key paths to every value in ``doc`` (long lists: their first entries only)."""
    out, todo = [], [((), doc)]
    while todo:
        path, v = todo.pop()
        if isinstance(v, dict):
            items = list(v.items())
        elif isinstance(v, list):
            items = list(enumerate(v))[:4]
        else:
            continue
        for k, child in items:
            out.append((*path, k))
            todo.append(((*path, k), child))
    return sorted(out, key=lambda p: [str(x) for x in p])


def at(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def mutate(data, doc) -> tuple[str, str]:
    """A mutated copy of ``doc`` as JSON text, and what was done (for the failure message)."""
    doc = json.loads(json.dumps(doc))
    kind = data.draw(st.sampled_from(["replace", "replace", "replace", "delete", "insert", "truncate"]))
    text = dumps(doc)
    if kind == "truncate":
        cut = data.draw(st.integers(0, len(text) - 1))
        return text[:cut], f"truncate at {cut}"
    paths = locations(doc)
    path = data.draw(st.sampled_from(paths))
    parent = at(doc, path[:-1])
    if kind == "replace":
        value = data.draw(NASTY)
        parent[path[-1]] = value
        what = f"{path} = {json.dumps(value)[:80]}"
    elif kind == "delete":
        del parent[path[-1]]
        what = f"del {path}"
    else:  # a new key in the object at (or around) the drawn path; a list's root: a new entry
        target = at(doc, path)
        if not isinstance(target, dict):
            target, path = parent, path[:-1]
        key, value = data.draw(st.text(max_size=4)), data.draw(NASTY)
        if isinstance(target, dict):
            target[key] = value
        else:
            target.append(value)
        what = f"{path}[{key!r}] = {json.dumps(value)[:80]}"
    return dumps(doc), what


def canonical(x):
    """Numbers as floats (the schema already told ints from floats), NaN spelled out."""
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, (int, float)):
        return "nan" if math.isnan(x) else float(x)
    if isinstance(x, list):
        return [canonical(v) for v in x]
    return {k: canonical(v) for k, v in x.items()}


def refused_or(load, expect, what: str):
    """``load()`` raises circuitgraph's own error, or returns something ``expect`` accepts."""
    try:
        with memory_bound():
            obj = load()
    except CircuitGraphError as e:
        event(f"refused: {type(e).__name__}")
        return
    event("loaded and round-tripped")
    expect(obj, what)


# ------------------------------------------------------------------------------------ circuits


def circuit_variants() -> list[Circuit]:
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    graphs = [
        Graph.from_model(model),
        Graph(Architecture(2, 2, True, 8, 6), split_qkv=False, neurons={0: [1, 4]}),
        PositionalGraph(Graph(Architecture(1, 2, False, 8, 0)), 3),
    ]
    out = []
    for g in graphs:
        g.scores = torch.randn(g.valid.shape, generator=gen) * g.valid
        out.append(Circuit(g, top_n(g, 5), metadata={"task": "t", "attribution": {"method": "eap"}}, faithfulness=0.75))
    return out


CIRCUITS = circuit_variants()


def known(schema) -> set[str]:
    return {*schema.required, *schema.optional}


MODEL_DEFAULTS = {
    "name": "",
    "config_hash": "",
    "d_mlp": 0,
    "parallel_attn_mlp": False,
    "post_norms": False,
    "neurons": {},
    "positions": None,
    "causal": True,
    "sites": [],
}
BINDING = ("tensors",)  # (the pair id and hash are what the loaded circuit's to_dict carries too)


def expect_circuit(doc_text: str):
    def check(c: Circuit, what: str) -> None:
        doc = json.loads(doc_text)  # (it loaded, so it parses)
        # keys the format does not know are ignored (the versioning policy: readers ignore them)
        want = {k: v for k, v in doc.items() if k in known(CIRCUIT_FILE) and k not in BINDING}
        want = {"metadata": {}, "faithfulness": None, "figures": {}, "n_edges_total": c.graph.n_edges, **want}
        want["model"] = {k: v for k, v in {**MODEL_DEFAULTS, **want["model"]}.items() if k in known(GRAPH_SPEC)}
        want["model"]["sites"] = [{k: v for k, v in s.items() if k in known(SITE_SPEC)} for s in want["model"]["sites"]]
        assert canonical(c.to_dict()) == canonical(want), f"loaded but not as written after {what}"

    return check


@fuzz(70)
@given(data=st.data(), which=st.integers(0, len(CIRCUITS) - 1))
def test_fuzz_circuit_json(tmp_path, data, which):
    path = CIRCUITS[which].save(tmp_path / f"c{which}.json")
    text, what = mutate(data, json.loads(path.read_text()))
    path.write_text(text)
    refused_or(lambda: Circuit.load(path), expect_circuit(text), what)


TENSOR_EDITS = {
    "float64 scores": lambda t: {**t, "scores": t["scores"].double()},
    "int64 scores": lambda t: {**t, "scores": t["scores"].long()},
    "float mask": lambda t: {**t, "mask": t["mask"].float()},
    "uint8 mask": lambda t: {**t, "mask": t["mask"].to(torch.uint8)},
    "NaN score": lambda t: {**t, "scores": t["scores"].index_fill(0, torch.tensor([0]), float("nan"))},
    "inf score": lambda t: {**t, "scores": t["scores"].index_fill(1, torch.tensor([0]), float("inf"))},
    "one row fewer": lambda t: {k: v[:-1] for k, v in t.items()},
    "transposed": lambda t: {k: v.T.contiguous() for k, v in t.items()},
    "no mask": lambda t: {"scores": t["scores"]},
    "extra tensor": lambda t: {**t, "extra": torch.zeros(3)},
    "mask everywhere": lambda t: {**t, "mask": torch.ones_like(t["mask"])},
    "empty": lambda t: {k: v[:0] for k, v in t.items()},
}


@fuzz(30)
@given(edit=st.sampled_from(sorted(TENSOR_EDITS)), which=st.integers(0, len(CIRCUITS) - 1), rebind=st.booleans())
def test_fuzz_circuit_tensors(tmp_path, edit, which, rebind):
    """Tensor files of the wrong dtype, shape or values; re-bound (a buggy writer) or not (a copy)."""
    path = CIRCUITS[which].save(tmp_path / f"c{which}.json")
    st_path = path.with_suffix(".safetensors")
    with safe_open(str(st_path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(TENSOR_EDITS[edit](tensors), str(st_path), metadata=meta)
    if rebind:
        doc = json.loads(path.read_text())
        doc["tensors_sha256"] = sha256_file(st_path)
        path.write_text(json.dumps(doc))
    with pytest.raises(CircuitGraphError), memory_bound():
        Circuit.load(path)


# ------------------------------------------------------------------------------------ hypotheses

HYPOTHESIS_DOC = Hypothesis.from_circuit(CIRCUITS[0]).to_dict()
HYPOTHESIS_DOC["restrict"] = HYPOTHESIS_DOC.get("restrict") or []
HYPOTHESIS_DOC["metadata"] = {"note": "x", "n": 2}


def only(schema, doc: dict) -> dict:
    """``doc`` without the keys ``schema`` does not know (readers ignore them)."""
    return {k: v for k, v in doc.items() if k in known(schema)}


def canonical_hypothesis(doc: dict) -> dict:
    doc = {"description": "", "restrict": [], "metadata": {}, "model": None, **only(ser.HYPOTHESIS_FILE, doc)}
    if doc["model"] is not None:
        doc["model"] = only(ser._MODEL, doc["model"])
    nodes = []
    for n in doc["nodes"]:
        n = {"children": [], "description": "", **only(ser._NODE, n)}
        feat = only(ser._FEATURE, n["feature"])
        args = dict(feat.get("args", {}))
        if feat["fn"] == "token_at":
            args.setdefault("relative", True)
        n["feature"] = {"fn": feat["fn"], "args": args}
        nodes.append(n)
    doc["nodes"] = sorted(nodes, key=lambda n: n["name"])
    doc["restrict"] = sorted(
        ({**only(ser._RESTRICTION, r), "slots": [s for s in "qkv" if s in r["slots"]]} for r in doc["restrict"]),
        key=lambda r: (r["parent"], r["child"]),
    )
    return canonical(doc)


@fuzz(40)
@given(data=st.data())
def test_fuzz_hypothesis_json(tmp_path, data):
    text, what = mutate(data, HYPOTHESIS_DOC)
    path = tmp_path / "h.json"
    path.write_text(text)

    def check(h: Hypothesis, what: str) -> None:
        assert canonical_hypothesis(h.to_dict()) == canonical_hypothesis(json.loads(text)), (
            f"not as written after {what}"
        )

    refused_or(lambda: Hypothesis.load(path), check, what)


# ------------------------------------------------------------------------------------ SAEs


def sae_folder(root: Path) -> Path:
    sae = SAE(8, 12, "blocks.1.hook_resid_pre", architecture="jumprelu", cfg={"training": {"steps": 3}})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return save_sae(sae, root / "sae")


with tempfile.TemporaryDirectory() as _d:
    _folder = sae_folder(Path(_d))
    SAE_CFG = json.loads((_folder / "cfg.json").read_text())
    SAE_WEIGHTS = (_folder / "sae_weights.safetensors").read_bytes()
    SAE_ORIGINAL = load_sae(_folder)


def expect_sae(doc_text: str):
    def check(sae: SAE, what: str) -> None:
        doc = json.loads(doc_text)
        assert (sae.d_in, sae.d_sae) == (doc["d_in"], doc["d_sae"]), what
        if isinstance(doc.get("hook_name"), str) and doc["hook_name"]:
            assert sae.hook_name == doc["hook_name"], what
        if "apply_b_dec_to_input" in doc and sae.hook_name_out is None:
            assert sae.apply_b_dec_to_input is doc["apply_b_dec_to_input"], what
        if sae.W_enc.dtype == torch.float32:  # (a mutated dtype converts the weights on purpose)
            for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
                assert torch.equal(getattr(sae, k), getattr(SAE_ORIGINAL, k)), what
        with tempfile.TemporaryDirectory() as d:  # and what loaded saves and loads back as itself
            again = load_sae(save_sae(sae, Path(d) / "s"))
        assert again.config_dict() == sae.config_dict(), what

    return check


@fuzz(40)
@given(data=st.data())
def test_fuzz_sae_config(tmp_path, data):
    text, what = mutate(data, SAE_CFG)
    folder = tmp_path / "sae"
    folder.mkdir(exist_ok=True)
    (folder / "cfg.json").write_text(text)
    (folder / "sae_weights.safetensors").write_bytes(SAE_WEIGHTS)
    refused_or(lambda: load_sae(folder), expect_sae(text), what)


# ------------------------------------------------------------------------------------ task files

TASK_ROWS = [
    {"clean": [1, 2, 3, 4], "corrupted": [1, 2, 5, 4], "answer": 6, "wrong": 7},
    {"clean": [2, 2, 3, 1], "corrupted": [2, 8, 3, 1], "answer": 9, "wrong": 0},
]


@fuzz(30)
@given(data=st.data())
def test_fuzz_task_file(tmp_path, data):
    text, what = mutate(data, TASK_ROWS)
    rows = None
    with contextlib.suppress(ValueError):
        rows = json.loads(text)
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) if isinstance(rows, list) else text)

    def check(task, what: str) -> None:
        assert isinstance(rows, list), what
        assert task.clean.tolist() == [r["clean"] for r in rows], what
        assert task.corrupted.tolist() == [r["corrupted"] for r in rows], what
        for col in ("answer", "wrong"):
            vals = [r.get(col) for r in rows]
            got = getattr(task, col)
            assert (got is None) if any(v is None for v in vals) else got.tolist() == vals, what

    refused_or(lambda: load_task(path), check, what)
