"""Files that cannot lie (issue 15): every example of the adversarial report, one test each.

Circuit pairs bound by pair id + hash, schemas checked before allocation, bounded readers, SAE /
hypothesis / task / scores files, and inputs checked at the boundary. The run directory (lock,
stale summaries, kills) is tests/test_run_dir.py; the fuzz test is tests/test_fuzz_files.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_model, tiny_task
from safetensors import safe_open
from safetensors.torch import save_file

from circuitgraph import Circuit, Graph, Task, attribute, load_task, top_n
from circuitgraph.circuit import CircuitFileError
from circuitgraph.errors import (
    CircuitGraphError,
    FileFormatError,
    GraphError,
    HypothesisError,
    MissingFileError,
    TaskError,
    TaskTypeError,
)
from circuitgraph.export.scores import read_scores, write_scores
from circuitgraph.files import rundir
from circuitgraph.files.pairs import sha256_file
from circuitgraph.files.reading import parse_json, read_json
from circuitgraph.files.schema import LIMITS, Bool, Float, Int, ListOf, Obj, Str, validate
from circuitgraph.graph import Architecture, PositionalGraph, make_site
from circuitgraph.hypothesis import Hypothesis, token_at
from circuitgraph.hypothesis.serialize import HypothesisFileError
from circuitgraph.models.sae import SAE, load_sae, save_sae
from circuitgraph.sae import splice

# ------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def scored_graph(model, seed: int = 0) -> Graph:
    g = Graph.from_model(model)
    gen = torch.Generator().manual_seed(seed)
    g.scores = torch.randn(g.valid.shape, generator=gen) * g.valid
    return g


def saved_circuit(model, path: Path, n: int = 6, seed: int = 0, **meta) -> Path:
    g = scored_graph(model, seed)
    return Circuit(g, top_n(g, n), metadata={"ablation": {"kind": "corrupted"}, **meta}, faithfulness=0.9).save(path)


def edit_json(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def rewrite_tensors(path: Path, fn) -> None:
    """Rewrite a circuit's tensor file through ``fn(tensors)``, and re-bind the JSON to it (a buggy
    writer that binds what it wrote), so that the dtype/shape/value checks behind the binding run."""
    st = path.with_suffix(".safetensors")
    with safe_open(str(st), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(fn(tensors), str(st), metadata=meta)
    edit_json(path, lambda d: d.update(tensors_sha256=sha256_file(st)))


# ------------------------------------------------------------------------------------ circuit pairs


def test_circuit_round_trip_is_exact_and_bound(tmp_path, model):
    path = saved_circuit(model, tmp_path / "c.json")
    doc = json.loads(path.read_text())
    with safe_open(str(path.with_suffix(".safetensors")), framework="pt") as f:
        header_id = f.metadata()["pair_id"]
    assert doc["pair_id"] == header_id and len(header_id) == 32
    assert doc["tensors_sha256"] == sha256_file(path.with_suffix(".safetensors"))
    c = Circuit.load(path, model)
    assert c.pair_id == doc["pair_id"]
    again = c.save(tmp_path / "d.json")
    redoc = json.loads(again.read_text())
    assert {k: v for k, v in redoc.items() if k not in ("pair_id", "tensors_sha256", "tensors")} == {
        k: v for k, v in doc.items() if k not in ("pair_id", "tensors_sha256", "tensors")
    }
    assert c.pair_id == redoc["pair_id"] != doc["pair_id"]  # every save is a new pair


def test_halves_of_two_saves_do_not_load_as_one(tmp_path, model):
    """The stale-run example: circuit.json from run 1, circuit.safetensors from run 2."""
    first = saved_circuit(model, tmp_path / "a" / "circuit.json", n=4, seed=0, ablation={"kind": "zero"})
    second = saved_circuit(model, tmp_path / "b" / "circuit.json", n=9, seed=1)
    second.with_suffix(".safetensors").replace(first.with_suffix(".safetensors"))
    with pytest.raises(CircuitFileError, match="come from different saves"):
        Circuit.load(first)


def test_tensor_file_changed_after_the_json_is_refused(tmp_path, model):
    path = saved_circuit(model, tmp_path / "c.json")
    st = path.with_suffix(".safetensors")
    data = bytearray(st.read_bytes())
    data[-3] ^= 0x40  # one bit of the tensor data; the header (and its pair id) is intact
    st.write_bytes(bytes(data))
    with pytest.raises(CircuitFileError, match="has changed since c.json was written"):
        Circuit.load(path)


def test_unbound_files_load_only_as_an_unbound_pair(tmp_path, model):
    """Files from before bindings existed still load; a bound half never pairs with an unbound one."""
    path = saved_circuit(model, tmp_path / "c.json")
    want = Circuit.load(path)
    edit_json(path, lambda d: [d.pop("pair_id"), d.pop("tensors_sha256")])
    with pytest.raises(CircuitFileError, match="records no pair id but c.safetensors has one"):
        Circuit.load(path)
    st = path.with_suffix(".safetensors")
    with safe_open(str(st), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(st), metadata={"schema": "circuitgraph.circuit/1"})  # as older versions wrote it
    legacy = Circuit.load(path)
    assert torch.equal(legacy.mask, want.mask) and torch.equal(legacy.scores, want.scores)
    assert legacy.pair_id is None


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["model"].update(split_qkv="no"), r"\$\.model\.split_qkv: expected true or false, got string 'no'"),
        (lambda d: d["model"].update(has_mlp=1), r"\$\.model\.has_mlp: expected true or false, got integer 1"),
        (lambda d: d["model"].update(n_heads=True), r"\$\.model\.n_heads: expected an integer in \[1, 1024\]"),
        (lambda d: d.update(faithfulness="0.9"), r"\$\.faithfulness: expected a finite number or null, got string"),
        (lambda d: d.update(metadata=[1, 2]), r"\$\.metadata: expected an object, got an array of 2"),
        (lambda d: d["metadata"].update(attribution="eap"), r"\$\.metadata\.attribution: expected an object"),
        (lambda d: d.update(n_edges=-1), r"\$\.n_edges: expected an integer ≥ 0"),
        (lambda d: d["edges"][0].__setitem__(2, "big"), r"\$\.edges\[0\]\[2\]: expected a number \(not NaN\)"),
        (lambda d: d.pop("model"), r"\$: missing key\(s\) \['model'\]"),
        (
            lambda d: d["model"].update(neurons={"0": [3, 1]}),
            r"\$\.model\.neurons\[?'?\.?0'?\]?.*not strictly increasing",
        ),
    ],
)
def test_circuit_json_types_are_strict(tmp_path, model, edit, message):
    """Booleans are not integers, strings are not booleans or numbers; each error names the key path."""
    path = saved_circuit(model, tmp_path / "c.json")
    edit_json(path, edit)
    with pytest.raises(CircuitFileError, match=message) as err:
        Circuit.load(path)
    assert str(path) in str(err.value)


def test_huge_model_block_fails_fast_without_allocating(tmp_path, model):
    """n_layers = 10⁶ used to allocate for minutes; now the schema's limit refuses it at once, and a
    size within the limits but unlike the tensors is refused before the graph is built."""
    path = saved_circuit(model, tmp_path / "c.json")
    edit_json(path, lambda d: d["model"].update(n_layers=10**6))
    t = time.perf_counter()
    with pytest.raises(
        CircuitFileError, match=r"\$\.model\.n_layers: expected an integer in \[1, 1024\], got integer 1000000"
    ):
        Circuit.load(path)
    edit_json(path, lambda d: d["model"].update(n_layers=1024, n_heads=1024))  # a 3-billion-cell graph
    with pytest.raises(
        CircuitFileError, match=r"tensor 'scores' is F32 \[\d+, \d+\], expected F32 \[1049601, 3146753\]"
    ):
        Circuit.load(path)
    assert time.perf_counter() - t < 2.0


def test_deep_nesting_is_a_file_error_not_a_recursion_error(tmp_path, model):
    path = saved_circuit(model, tmp_path / "c.json")
    text = path.read_text()
    for depth in (LIMITS.max_depth + 5, 200_000):
        path.write_text(text[:-1] + ', "figures": ' + "[" * depth + "]" * depth + "}")
        with pytest.raises(CircuitFileError, match="nested deeper than 64 levels"):
            Circuit.load(path)


def test_nan_and_wrong_dtypes_in_tensors_are_refused(tmp_path, model):
    """int64 scores, a float mask and NaN scores used to load (and .bool() made every nonzero an edge)."""
    path = saved_circuit(model, tmp_path / "c.json")
    rewrite_tensors(path, lambda t: {**t, "scores": t["scores"].long()})
    with pytest.raises(CircuitFileError, match=r"tensor 'scores' is I64 \[\d+, \d+\], expected F32"):
        Circuit.load(path)
    path = saved_circuit(model, tmp_path / "c.json")
    rewrite_tensors(path, lambda t: {**t, "mask": t["mask"].float() + 0.5})
    with pytest.raises(CircuitFileError, match=r"tensor 'mask' is F32 \[\d+, \d+\], expected BOOL"):
        Circuit.load(path)
    path = saved_circuit(model, tmp_path / "c.json")

    def nan(t):
        s = t["scores"].clone()
        s[0, :3] = float("nan")
        s[1, 0] = float("inf")
        return {**t, "scores": s}

    rewrite_tensors(path, nan)
    with pytest.raises(CircuitFileError, match=r"tensor 'scores' has 3 NaN value\(s\) \(first at index \[0, 0\]\)"):
        Circuit.load(path)  # (±inf is a score that ranks: it round-trips, as in the exchange formats)
    g = scored_graph(model)
    g.scores[0, 0] = float("nan")
    with pytest.raises(CircuitFileError, match=r"its scores has 1 NaN value"):  # never written, so never loaded
        Circuit(g, top_n(g, 3)).save(tmp_path / "nan.json")
    assert not list(tmp_path.glob("nan*"))


def test_mask_and_edge_list_must_agree(tmp_path, model):
    path = saved_circuit(model, tmp_path / "c.json")
    rewrite_tensors(path, lambda t: {**t, "mask": torch.ones_like(t["mask"])})  # cells that are not edges
    with pytest.raises(CircuitFileError, match="mask marks .* cell\\(s\\) that are not edges"):
        Circuit.load(path)
    path = saved_circuit(model, tmp_path / "c.json")
    edit_json(path, lambda d: (d["edges"].pop(), d.update(n_edges=d["n_edges"] - 1)))
    with pytest.raises(CircuitFileError, match="says 5 edges but its tensors hold 6"):
        Circuit.load(path)
    path = saved_circuit(model, tmp_path / "c.json")
    edit_json(path, lambda d: d["edges"].__setitem__(1, d["edges"][0]))  # one edge twice, one missing
    with pytest.raises(CircuitFileError, match=r"\$\.edges lists 5 distinct edge\(s\) but the mask holds 6"):
        Circuit.load(path)
    path = saved_circuit(model, tmp_path / "c.json")
    edit_json(path, lambda d: d["edges"][2].__setitem__(2, d["edges"][2][2] + 1.0))
    with pytest.raises(CircuitFileError, match=r"\$\.edges\[2\] gives .* but the tensors hold"):
        Circuit.load(path)


def test_missing_loop_and_special_files(tmp_path, model):
    """A missing file is MissingFileError (a FileNotFoundError); a symlink loop says so instead of
    'missing'; a FIFO is refused without blocking; a directory says it is one."""
    with pytest.raises(MissingFileError) as err:
        Circuit.load(tmp_path / "nope.json")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, CircuitGraphError)
    loop = tmp_path / "loop.json"
    os.symlink(tmp_path / "loop.json", loop)
    with pytest.raises(CircuitFileError, match="symbolic link loop"):
        Circuit.load(loop)
    dangling = tmp_path / "dangling.json"
    os.symlink(tmp_path / "gone.json", dangling)
    with pytest.raises(CircuitFileError, match="symbolic link to .*gone.json', which does not exist"):
        Circuit.load(dangling)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(CircuitFileError, match="not a regular file"):
        Circuit.load(fifo)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(CircuitFileError, match="is a directory"):
        Circuit.load(tmp_path / "dir.json")
    path = saved_circuit(model, tmp_path / "c.json")
    st = path.with_suffix(".safetensors")
    st.unlink()
    os.symlink(st, st)
    with pytest.raises(CircuitFileError, match="symbolic link loop"):
        Circuit.load(path)


def test_graph_size_by_arithmetic_agrees_with_the_graph():
    """Graph.spec_size is what loaders compare with the tensor header before building a graph."""
    arch = Architecture(3, 2, True, 16, 8)
    graphs = [
        Graph(arch),
        Graph(arch, split_qkv=False),
        Graph(Architecture(2, 3, False, 16, 0)),
        Graph(arch, neurons={0: [1, 5], 2: None}),
        Graph(arch, neurons={1: list(range(8))}),
        Graph(
            arch, sites=[make_site("blocks.1.hook_resid_pre", 6, [0, 4]), make_site("blocks.0.hook_attn_out", 4, [])]
        ),
        Graph(arch, sites=[make_site("blocks.2.ln2.hook_normalized", 5, [1], "blocks.2.hook_mlp_out")]),
        Graph(arch, sites=[make_site("blocks.0.hook_mlp_out", 3, [0, 1, 2])]),
        PositionalGraph(Graph(arch), 4),
        PositionalGraph(Graph(arch, split_qkv=False), 3, causal=False),
        # combined granularities (tests/test_combinations.py)
        Graph(arch, neurons={0: [1, 5], 1: None}, sites=[make_site("blocks.0.hook_mlp_out", 3, [2])]),
        Graph(arch, sites=[make_site("blocks.2.hook_resid_post", 4, [0, 3])]),
        PositionalGraph(Graph(arch, neurons={2: [0, 7]}), 3),
        PositionalGraph(
            Graph(
                arch,
                neurons={0: [1]},
                sites=[
                    make_site("blocks.1.hook_resid_mid", 4, [1, 2]),
                    make_site("blocks.2.ln2.hook_normalized", 5, [1], "blocks.2.hook_mlp_out"),
                ],
            ),
            2,
        ),
    ]
    for g in graphs:
        spec = json.loads(json.dumps(g.spec()))
        assert Graph.spec_size(spec) == tuple(g.valid.shape)
        assert tuple(Graph.from_spec(spec).valid.shape) == tuple(g.valid.shape)


def test_a_run_folder_summary_that_disagrees_is_refused(tmp_path, model):
    """summary.json lists circuit.json with its hash: a circuit.json from another run is refused."""
    path = saved_circuit(model, tmp_path / "circuit.json")
    (tmp_path / "summary.json").write_text(
        json.dumps(
            {
                "schema": rundir.RUN_SCHEMA,
                "status": "ok",
                "manifest": rundir.manifest(tmp_path, ["circuit.json", "circuit.safetensors"]),
            }
        )
    )
    Circuit.load(path)  # the files are the run's own
    saved_circuit(model, path, n=3, seed=5)  # another save over them
    with pytest.raises(CircuitFileError, match="summary.json says the finished run wrote a different circuit.json"):
        Circuit.load(path)


# ------------------------------------------------------------------------------------ scores files


def test_scores_file_checks(tmp_path, model):
    g = scored_graph(model)
    c = Circuit(g, top_n(g, 4))
    c.save(tmp_path / "circuit.json")
    p = write_scores(tmp_path / "scores.safetensors", g, c, "tiny")
    back = read_scores(p)
    assert torch.equal(back["scores"], g.scores.float()) and back["metadata"]["circuit_pair_id"] == c.pair_id
    with safe_open(str(p), framework="pt") as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    bad = t["scores"].clone()
    bad[2, 2] = float("nan")
    save_file({**t, "scores": bad}, str(p), metadata=meta)
    with pytest.raises(FileFormatError, match=r"tensor 'scores' has 1 NaN value"):
        read_scores(p)
    save_file({**t, "mask": t["mask"].long()}, str(p), metadata=meta)
    with pytest.raises(FileFormatError, match=r"tensor 'mask' is I64"):
        read_scores(p)
    save_file(t, str(p), metadata={**meta, "src_names": json.dumps(["input", True])})
    with pytest.raises(FileFormatError, match=r"\$\.src_names\[1\]: expected a node name, got boolean True"):
        read_scores(p)


# ------------------------------------------------------------------------------------ SAE files


def random_sae(seed: int = 0, hook: str = "blocks.1.hook_resid_pre") -> SAE:
    sae = SAE(16, 24, hook)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return sae


def test_sae_files_are_bound_and_checked(tmp_path):
    a, b = save_sae(random_sae(0), tmp_path / "a"), save_sae(random_sae(1), tmp_path / "b")
    assert torch.equal(load_sae(a).W_enc, random_sae(0).W_enc)
    (b / "sae_weights.safetensors").replace(a / "sae_weights.safetensors")
    with pytest.raises(FileFormatError, match="come from different saves"):
        load_sae(a)
    c = save_sae(random_sae(2), tmp_path / "c")
    edit_json(c / "cfg.json", lambda d: d.update(apply_b_dec_to_input="no"))
    with pytest.raises(FileFormatError, match=r"\$\.apply_b_dec_to_input: expected true or false, got string 'no'"):
        load_sae(c)


def test_sae_with_nan_weights_is_refused_where_it_is(tmp_path, model):
    """An SAE with NaN weights used to load, and the failure was then blamed on the metric."""
    sae = random_sae(0, "blocks.1.hook_resid_pre")
    folder = tmp_path / "sae"
    folder.mkdir()
    w = {k: getattr(sae, k).detach().clone() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    w["W_dec"][3, :2] = float("nan")
    save_file(w, str(folder / "sae_weights.safetensors"))  # as SAELens writes it: no binding
    (folder / "cfg.json").write_text(json.dumps(sae.config_dict()))
    with pytest.raises(FileFormatError, match=r"tensor 'W_dec' has 2 non-finite value\(s\)"):
        load_sae(folder)
    with torch.no_grad():
        sae.b_enc[0] = float("inf")
    with pytest.raises(GraphError, match=r"the SAE at 'blocks.1.hook_resid_pre': b_enc has 1 non-finite value"):
        splice(model, [sae])
    with pytest.raises(GraphError, match="non-finite"):
        Graph.from_model(model, saes=[sae])


def test_sae_symlink_loop_is_not_missing(tmp_path):
    folder = save_sae(random_sae(0), tmp_path / "sae")
    (folder / "cfg.json").unlink()
    os.symlink(folder / "cfg.json", folder / "cfg.json")
    with pytest.raises(FileFormatError, match="symbolic link loop"):
        load_sae(folder)
    with pytest.raises(MissingFileError, match="sae_weights.safetensors"):
        (folder / "sae_weights.safetensors").unlink()
        (folder / "cfg.json").unlink()
        (folder / "cfg.json").write_text("{}")
        load_sae(folder)


# ------------------------------------------------------------------------------------ hypotheses


def test_token_at_range_is_checked_before_scrubbing(tmp_path, model):
    """token_at(k=10**30) used to raise OverflowError at scrub time."""
    with pytest.raises(HypothesisError, match=r"token_at's k=10{30} is beyond any prompt"):
        token_at(10**30)
    with pytest.raises(HypothesisError, match="integer k"):
        token_at(True)
    g = scored_graph(model)
    path = Hypothesis.from_circuit(Circuit(g, top_n(g, 4))).save(tmp_path / "h.json")
    doc = json.loads(path.read_text())
    doc["nodes"][0]["feature"] = {"fn": "token_at", "args": {"k": 10**30, "relative": True}}
    path.write_text(json.dumps(doc))
    with pytest.raises(HypothesisFileError, match="beyond any prompt"):
        Hypothesis.load(path, model=model)


def test_hypothesis_file_form(tmp_path, model):
    g = scored_graph(model)
    path = Hypothesis.from_circuit(Circuit(g, top_n(g, 4))).save(tmp_path / "h.json")
    good = path.read_text()
    for edit, message in [
        (lambda d: d.update(metadata=[1, 2]), r"\$\.metadata: expected an object"),
        (lambda d: d["nodes"][0].update(children="a0.h1"), r"\$\.nodes\[0\]\.children: expected an array"),
        (lambda d: d["model"].update(n_layers=10**6), r"\$\.model\.n_layers: expected an integer in \[1, 1024\]"),
        (lambda d: d["model"].update(has_mlp="yes"), r"\$\.model\.has_mlp: expected true or false"),
    ]:
        doc = json.loads(good)
        edit(doc)
        path.write_text(json.dumps(doc))
        with pytest.raises(HypothesisFileError, match=message):
            Hypothesis.load(path)
    path.write_text(good[:-2] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(HypothesisFileError, match="nested deeper"):
        Hypothesis.load(path)
    path.write_text(good.replace('"metadata": {', '"metadata": {"x": NaN, ', 1))
    with pytest.raises(HypothesisFileError, match="NaN is not allowed"):
        Hypothesis.load(path)


# ------------------------------------------------------------------------------------ tasks


def test_task_file_token_ids_are_strict(tmp_path, model):
    p = tmp_path / "t.jsonl"
    p.write_text('{"clean": [1, true, 3], "corrupted": [1, 2, 3], "answer": 4}\n')
    with pytest.raises(
        TaskError, match=r"row 1: \$\.clean\[1\]: expected an integer in \[0, 2147483647\], got boolean True"
    ):
        load_task(p)
    p.write_text('{"clean": [1, 2, 3], "corrupted": [1, 2, 3], "answer": false}\n')
    with pytest.raises(TaskError, match=r"row 1: \$\.answer: expected an answer"):
        load_task(p)
    p.write_text('{"clean": [1, 2.0, 3], "corrupted": [1, 2, 3]}\n')
    with pytest.raises(TaskError, match=r"\$\.clean\[1\]: expected an integer"):
        load_task(p)
    p.write_text('{"clean": [1, 1000000000000000000000000000000, 3], "corrupted": [1, 2, 3]}\n')
    with pytest.raises(TaskError, match=r"\$\.clean\[1\]: expected an integer in \[0, 2147483647\]"):
        load_task(p)
    p.write_text('{"clean": [1, 2, 30], "corrupted": [1, 2, 3], "answer": 4}\n')  # vocabulary is 23
    with pytest.raises(TaskError, match=r"task file .*t.jsonl: clean token ids must lie in \[0, 23\)"):
        load_task(p, model)
    q = tmp_path / "t.csv"
    q.write_text('clean,corrupted,answer\n"[1,2,3]","[3,2,1]",true\n')
    with pytest.raises(TaskError, match="'true' is neither text"):
        load_task(q)
    assert load_task(p).clean.tolist() == [[1, 2, 30]]  # without a model there is no vocabulary to check


def test_token_tensors_checked_at_the_boundary(model):
    ids = torch.zeros(2, 5, dtype=torch.long)
    for bad, message in [
        (torch.zeros(2, 5), "integer token ids, got dtype torch.float32"),
        (torch.zeros(2, 5, dtype=torch.bool), "integer token ids, got dtype torch.bool"),
        (torch.zeros(2, 5, dtype=torch.long, device="meta"), "meta device: it has a shape but no values"),
        ([[1, 2, 10**30]], "could not be read as ids"),
    ]:
        with pytest.raises(TaskTypeError, match=message) as err:
            Task(clean=bad, corrupted=bad, answer=torch.zeros(len(bad), dtype=torch.long))
        assert isinstance(err.value, TypeError) and isinstance(err.value, TaskError)
    t = Task(clean=ids - 1, corrupted=ids, answer=torch.zeros(2, dtype=torch.long))
    with pytest.raises(TaskError, match=r"clean token ids must lie in \[0, 23\)"):
        attribute(model, Graph.from_model(model), t, progress=False)


def test_metric_outputs_checked(model):
    t = tiny_task(model)
    t.metric = lambda logits, task: logits[:, -1, 0] > 0
    t.__post_init__()
    with pytest.raises(TaskTypeError, match="floating-point values .* got dtype torch.bool"):
        attribute(model, Graph.from_model(model), t, progress=False)


# ------------------------------------------------------------------------------------ the schema checker


def test_schema_checker_basics():
    schema = Obj(
        required={"n": Int(0, 3), "b": Bool(), "s": Str(max_len=3)}, optional={"f": Float(), "l": ListOf(Int())}
    )
    validate({"n": 3, "b": False, "s": "abc", "f": 1, "l": [1, 2]}, schema, "x")
    for doc, message in [
        ({"n": True, "b": False, "s": ""}, r"x: \$\.n: expected an integer in \[0, 3\], got boolean True"),
        ({"n": 0, "b": 0, "s": ""}, r"\$\.b: expected true or false, got integer 0"),
        ({"n": 0, "b": True, "s": "abcd"}, r"\$\.s: a string of 4 characters \(allowed: 0\.\.3\)"),
        ({"n": 0, "b": True, "s": "", "f": float("nan")}, r"\$\.f: expected a finite number, got number nan"),
        ({"n": 0, "b": True, "s": "", "l": [1, "2"]}, r"\$\.l\[1\]: expected an integer, got string '2'"),
        ({"n": 0, "b": True}, r"\$: missing key\(s\) \['s'\]"),
        ([], r"\$: expected an object, got an array of 0"),
    ]:
        with pytest.raises(FileFormatError, match=message):
            validate(doc, schema, "x")
    with pytest.raises(FileFormatError, match="Infinity is not allowed"):
        parse_json('{"a": Infinity}', "x", allow_nan=False)
    assert parse_json('{"a": NaN}', "x")["a"] != 0  # free-form files may hold NaN where the schema allows


def test_read_json_size_limit(tmp_path):
    p = tmp_path / "big.json"
    p.write_text("[" + "0," * 1000 + "0]")
    with pytest.raises(FileFormatError, match="files of this kind are at most 100 bytes"):
        read_json(p, max_bytes=100)


def test_the_limits_are_documented():
    text = (Path(__file__).resolve().parents[1] / "docs" / "circuit-schema.md").read_text()
    table = text[text.index("### Limits") : text.index("## Other files")]
    for name, value in dataclasses.asdict(LIMITS).items():
        assert f"| {value}" in table, f"docs/circuit-schema.md's limits table lacks {name} = {value}"


def test_a_document_written_elsewhere_still_pairs_with_its_tensors(tmp_path, model):
    """The viewer's "save" writes circuit.to_dict() (plus supernodes) beside the tensor file it came
    with: the document carries that file's binding, so it loads; edited edges do not."""
    path = saved_circuit(model, tmp_path / "circuit.json")
    c = Circuit.load(path)
    doc = c.to_dict()
    doc["metadata"]["supernodes"] = [{"name": "g", "nodes": [doc["edges"][0][0]]}]
    path.write_text(json.dumps(doc))
    assert Circuit.load(path).supernodes == [{"name": "g", "nodes": [doc["edges"][0][0]]}]
    c.mask[tuple(c.mask.nonzero()[0].tolist())] = False  # an edge fewer in memory, not on disk
    path.write_text(json.dumps(c.to_dict()))
    with pytest.raises(CircuitFileError, match="says 5 edges but its tensors hold 6"):
        Circuit.load(path)
