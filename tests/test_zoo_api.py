"""The zoo API: listing, loading, and clear errors for every way an entry can be broken."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from circuitgraph import zoo
from circuitgraph.zoo import GroundTruth, ZooModel


@pytest.fixture(scope="module")
def induction() -> ZooModel:
    return zoo.load("induction", device="cpu")


@pytest.fixture
def entry_copy(tmp_path):
    """A private copy of the induction entry that a test may damage."""
    dst = tmp_path / "induction"
    shutil.copytree(zoo.DATA_DIR / "induction", dst)
    return dst


def _edit_json(folder, edit):
    path = folder / "model.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_list_contains_induction():
    names = zoo.list()
    assert "induction" in names
    assert names == sorted(names)
    for n in names:
        assert (zoo.DATA_DIR / n / "model.json").is_file()
        assert (zoo.DATA_DIR / n / "model.safetensors").is_file()


def test_load_induction_structure(induction):
    from transformer_lens import HookedTransformer

    from circuitgraph.tasks import Task

    assert induction.name == "induction"
    assert isinstance(induction.model, HookedTransformer)
    assert not induction.model.training
    assert induction.model.cfg.n_layers == 2 and induction.model.cfg.attn_only
    assert induction.encoding["kind"] == "tokens"
    task = induction.tasks["induction"]
    assert isinstance(task, Task)
    assert task.clean.shape == task.corrupted.shape == (64, induction.model.cfg.n_ctx)
    assert task.metric == "logit_diff"
    gt = induction.ground_truth_for("corrupted")
    assert isinstance(gt, GroundTruth)
    assert gt.level == "edge" and gt.ablation == "corrupted" and gt.task == "induction"
    assert all(isinstance(e, tuple) and len(e) == 2 for e in gt.edges)
    with pytest.raises(dataclasses.FrozenInstanceError):
        gt.level = "head"  # frozen


def test_ground_truth_edges_exist_in_graph(induction):
    from circuitgraph.graph import Graph

    g = Graph.from_model(induction.model)
    for gt in induction.ground_truth.values():
        for s, d in gt.edges:
            assert g.has_edge(s, d), (gt.convention, s, d)
        for n in gt.nodes:
            assert n in g.src_names or n in g.dst_names


def test_every_entry_loads():
    for name in zoo.list():
        entry = zoo.load(name, device="cpu")
        assert entry.name == name
        assert entry.tasks and entry.ground_truth
        for gt in entry.ground_truth.values():
            assert gt.task in entry.tasks


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError) as info:
        zoo.load("no_such_model")
    msg = str(info.value)
    assert "no_such_model" in msg and "induction" in msg
    # the same error is also a ValueError
    with pytest.raises(ValueError):
        zoo.load("no_such_model")


def test_unknown_convention_lists_available(induction):
    with pytest.raises(KeyError) as info:
        induction.ground_truth_for("banana")
    msg = str(info.value)
    assert "banana" in msg and "'corrupted'" in msg and "'resample'" in msg


def test_load_path_roundtrip(entry_copy, induction):
    other = zoo.load_path(entry_copy, device="cpu")
    assert other.path == entry_copy
    toks = induction.tasks["induction"].clean[:4]
    with torch.no_grad():
        assert torch.equal(other.model(toks), induction.model(toks))


def test_truncated_weights_raise_clear_error(entry_copy):
    w = entry_copy / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"(?s)corrupted.*train_induction\.py"):
        zoo.load_path(entry_copy, device="cpu")


def test_garbage_weights_raise_clear_error(entry_copy):
    (entry_copy / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="corrupted"):
        zoo.load_path(entry_copy, device="cpu")


def test_weights_not_matching_config(entry_copy):
    _edit_json(entry_copy, lambda d: d["config"].update(d_model=32, d_head=8))
    with pytest.raises(ValueError, match="do not match the config"):
        zoo.load_path(entry_copy, device="cpu")


def test_bad_node_in_ground_truth(entry_copy):
    def edit(doc):
        doc["ground_truth"]["corrupted"]["nodes"].append("a7.h9")

    _edit_json(entry_copy, edit)
    with pytest.raises(ValueError, match=r"(?s)a7\.h9.*a0\.h0") as info:
        zoo.load_path(entry_copy, device="cpu")
    assert "corrupted" in str(info.value)


def test_bad_edge_endpoint_in_ground_truth(entry_copy):
    def edit(doc):
        doc["ground_truth"]["resample"]["edges"].append(["a0.h1", "a1.h9.k"])

    _edit_json(entry_copy, edit)
    with pytest.raises(ValueError, match=r"a1\.h9\.k"):
        zoo.load_path(entry_copy, device="cpu")


def test_backwards_edge_in_ground_truth(entry_copy):
    def edit(doc):
        doc["ground_truth"]["corrupted"]["edges"].append(["a1.h0", "a0.h1.k"])

    _edit_json(entry_copy, edit)
    with pytest.raises(ValueError, match=r"a1\.h0->a0\.h1\.k"):
        zoo.load_path(entry_copy, device="cpu")


def test_wrong_schema_version(entry_copy):
    _edit_json(entry_copy, lambda d: d.update(schema="circuitgraph.zoo/999"))
    with pytest.raises(ValueError, match="schema"):
        zoo.load_path(entry_copy, device="cpu")


@pytest.mark.parametrize("key", ["config", "tasks", "ground_truth", "name"])
def test_missing_top_level_key(entry_copy, key):
    _edit_json(entry_copy, lambda d: d.pop(key))
    with pytest.raises(ValueError, match=key):
        zoo.load_path(entry_copy, device="cpu")


def test_missing_task_key(entry_copy):
    _edit_json(entry_copy, lambda d: d["tasks"]["induction"].pop("corrupted"))
    with pytest.raises(ValueError, match="corrupted"):
        zoo.load_path(entry_copy, device="cpu")


def test_ground_truth_refers_to_unknown_task(entry_copy):
    _edit_json(entry_copy, lambda d: d["ground_truth"]["corrupted"].update(task="nope"))
    with pytest.raises(ValueError, match="nope"):
        zoo.load_path(entry_copy, device="cpu")


def test_invalid_json(entry_copy):
    (entry_copy / "model.json").write_text('{"schema": "circuitgraph.zoo/1", ')
    with pytest.raises(ValueError, match="not valid JSON"):
        zoo.load_path(entry_copy, device="cpu")


def test_config_with_device_key_rejected(entry_copy):
    _edit_json(entry_copy, lambda d: d["config"].update(device="cuda"))
    with pytest.raises(ValueError, match="device"):
        zoo.load_path(entry_copy, device="cpu")


def test_missing_weight_file(entry_copy):
    (entry_copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        zoo.load_path(entry_copy, device="cpu")
    # a folder without both files is not listed
    assert zoo.list_models(entry_copy.parent) == []
