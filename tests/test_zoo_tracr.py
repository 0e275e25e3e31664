"""Committed tracr zoo models: exact agreement with tracr's recorded outputs.

Each ``circuitgraph/zoo/data/tracr_*/`` holds a HookedTransformer state dict converted
from a tracr-compiled RASP program plus ``model.json`` with tracr's own outputs on a
sample of inputs (recorded by ``scripts/zoo/tracr/build_tracr_zoo.py`` in a separate
jax environment). These tests rebuild the model with plain TransformerLens, never
import jax, and check the outputs, the task data and the ground-truth node names.
"""

from __future__ import annotations

import json
import pathlib
import re
import warnings

import pytest
import torch

DATA = pathlib.Path(__file__).resolve().parents[1] / "circuitgraph" / "zoo" / "data"
MODEL_DIRS = sorted(p for p in DATA.glob("tracr_*") if (p / "model.json").exists())
REQUIRED_PROGRAMS = {"reverse", "frac_prevs", "sort_unique", "hist"}

SRC_RE = re.compile(r"^(input|a(\d+)\.h(\d+)|m(\d+))$")
DST_RE = re.compile(r"^(logits|a(\d+)\.h(\d+)\.[qkv]|m(\d+))$")
NODE_RE = re.compile(r"^(a(\d+)\.h(\d+)|m(\d+))$")


def _load(model_dir: pathlib.Path):
    from safetensors.torch import load_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        doc = json.loads((model_dir / "model.json").read_text())
        model = HookedTransformer(HookedTransformerConfig(**doc["config"]))
    state = load_file(str(model_dir / "model.safetensors"))
    model.load_state_dict(state, strict=True)
    model.eval()
    return doc, model, state


@pytest.fixture(scope="module", params=MODEL_DIRS, ids=[p.name for p in MODEL_DIRS])
def zoo_model(request):
    return _load(request.param)


def test_zoo_present():
    names = {p.name[len("tracr_") :] for p in MODEL_DIRS}
    assert REQUIRED_PROGRAMS <= names, REQUIRED_PROGRAMS - names
    assert len(names) >= 6


def test_jax_not_imported():
    import sys

    assert "jax" not in sys.modules and "tracr" not in sys.modules


def test_schema_and_config(zoo_model):
    doc, model, state = zoo_model
    assert doc["schema"] == "circuitgraph.zoo/1"
    cfg = doc["config"]
    assert cfg["normalization_type"] is None
    assert cfg["act_fn"] == "relu"
    assert cfg["attention_dir"] == "bidirectional"
    assert cfg["positional_embedding_type"] == "standard"
    enc = doc["encoding"]
    assert enc["kind"] == "tracr"
    assert len(enc["input_vocab"]) == cfg["d_vocab"]
    assert enc["input_vocab"][enc["bos"]] == enc["bos_id"]
    assert cfg["n_ctx"] == enc["max_seq_len"] + 1
    if enc["categorical_output"]:
        assert len(enc["output_vocab"]) == cfg["d_vocab_out"]
    else:
        assert enc["output_vocab"] == {"numeric": True} and cfg["d_vocab_out"] == 1
    assert len(enc["residual_labels"]) == cfg["d_model"]
    for value in state.values():
        assert value.dtype in (torch.float32, torch.bool)


def test_matches_tracr_outputs(zoo_model):
    doc, model, _ = zoo_model
    enc = doc["encoding"]
    check = enc["check"]
    assert len(check["inputs"]) >= 50
    lengths = {len(x) for x in check["inputs"]}
    assert len(lengths) > 1
    agree = total = 0
    with torch.no_grad():
        for n in sorted(lengths):
            rows = [i for i, x in enumerate(check["inputs"]) if len(x) == n]
            ids = torch.tensor([check["inputs"][i] for i in rows])
            assert (ids[:, 0] == enc["bos_id"]).all()
            logits = model(ids)
            for r, i in enumerate(rows):
                want = check["outputs"][i]
                for pos in range(1, n):
                    total += 1
                    if enc["categorical_output"]:
                        agree += int(logits[r, pos].argmax().item() == want[pos])
                    else:
                        agree += int(abs(logits[r, pos, 0].item() - want[pos]) <= 1e-4)
    assert agree == total, f"{agree}/{total} positions agree with tracr"


def test_tasks(zoo_model):
    doc, model, _ = zoo_model
    cfg = doc["config"]
    categorical = doc["encoding"]["categorical_output"]
    assert doc["tasks"]
    for task in doc["tasks"].values():
        clean, corrupted = task["clean"], task["corrupted"]
        assert len(clean) == len(corrupted) > 0
        lengths = {len(x) for x in clean + corrupted}
        assert len(lengths) == 1 and lengths.pop() <= cfg["n_ctx"]
        for seq in clean + corrupted:
            assert all(0 <= t < cfg["d_vocab"] for t in seq)
        assert task["metric"] == ("kl" if categorical else "l2")
        read = torch.tensor(task["read_positions"])
        assert read.shape == torch.tensor(clean).shape and not read[:, 0].any()
        if categorical:
            with torch.no_grad():
                pred = model(torch.tensor(clean)).argmax(-1)
            answer = torch.tensor(task["answer"])
            assert (pred[read] == answer[read]).all()
        else:
            assert task["answer"] is None


def test_ground_truth_names(zoo_model):
    doc, _, _ = zoo_model
    cfg = doc["config"]
    gts = doc["ground_truth"]
    assert {"zero", "corrupted"} <= set(gts)

    def check_indices(match, layer_group, head_group, mlp_group):
        if match.group(layer_group) is not None:
            assert int(match.group(layer_group)) < cfg["n_layers"]
            assert int(match.group(head_group)) < cfg["n_heads"]
        if match.group(mlp_group) is not None:
            assert int(match.group(mlp_group)) < cfg["n_layers"]

    for conv, gt in gts.items():
        assert gt["ablation"] in ("zero", "corrupted")
        assert gt["task"] in doc["tasks"]
        assert gt["level"] == "edge"
        assert gt["notes"]
        assert gt["evidence"]["verified_inputs"] >= 50
        edges = gt["edges"]
        assert edges and len({tuple(e) for e in edges}) == len(edges)
        for src, dst in edges:
            ms, md = SRC_RE.match(src), DST_RE.match(dst)
            assert ms and md, (conv, src, dst)
            check_indices(ms, 2, 3, 4)
            check_indices(md, 2, 3, 4)
        for node in gt["nodes"]:
            m = NODE_RE.match(node)
            assert m, (conv, node)
            check_indices(m, 2, 3, 4)
        touched = set()
        for src, dst in edges:
            for n in (src, dst):
                if n not in ("input", "logits"):
                    touched.add(n[:-2] if n.endswith((".q", ".k", ".v")) else n)
        assert touched == set(gt["nodes"])
        assert any(dst == "logits" for _, dst in edges)
    # patching-convention circuit is a sub-circuit of the zero-ablation one
    zero = {tuple(e) for e in gts["zero"]["edges"]}
    assert {tuple(e) for e in gts["corrupted"]["edges"]} <= zero


def test_ground_truth_heads_have_weights(zoo_model):
    doc, _, state = zoo_model
    for gt in doc["ground_truth"].values():
        for node in gt["nodes"]:
            if node.startswith("a"):
                layer, head = (int(x[1:]) for x in node.split("."))
                ov = state[f"blocks.{layer}.attn.W_V"][head] @ state[f"blocks.{layer}.attn.W_O"][head]
                assert ov.abs().max() > 0, node
            else:
                assert state[f"blocks.{int(node[1:])}.mlp.W_in"].abs().max() > 0, node
