"""The pieces the CLI was split into: each rule lives in one module, below the CLI, and the CLI
reads its lists of valid values from the modules that implement them."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import circuitgraph as cg
from circuitgraph import errors, zoo
from circuitgraph.attribution import METHODS as ATTRIBUTION_METHODS
from circuitgraph.attribution.diagnosis import zero_score_diagnosis
from circuitgraph.circuit import SEARCH_METHODS, build_circuit
from circuitgraph.cli import config as cli_config
from circuitgraph.engine import ABLATIONS
from circuitgraph.export.scores import SCORES_SCHEMA, read_scores, write_scores
from circuitgraph.hypothesis.caveats import hypothesis_unsupported, large_scrubbing_gap, scrubbing_caveat
from circuitgraph.tasks import load_task
from circuitgraph.tasks.metrics import METRICS

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "circuitgraph"


def test_cli_lists_come_from_their_modules():
    assert cli_config.METHODS == (*ATTRIBUTION_METHODS, *SEARCH_METHODS)
    assert cli_config.METRICS == tuple(METRICS)
    assert cli_config.ABLATIONS is ABLATIONS


def test_cli_config_error_is_the_package_error():
    assert cli_config.ConfigError is errors.ConfigError
    with pytest.raises(errors.CircuitGraphError, match="unknown method"):
        cli_config.validate(cli_config.Config(method=cli_config.MethodConfig(name="nope")))


def test_zero_score_diagnosis():
    msg = zero_score_diagnosis(0.0, method="eap", task_name="t", metric_name="kl")
    assert msg is not None and "method=eap" in msg and "kl" in msg and "logit_diff" in msg
    assert zero_score_diagnosis(1e-9, method="eap", task_name="t", metric_name="kl") is None
    assert zero_score_diagnosis(math.nan, method="eap", task_name="t", metric_name="kl") is None


def test_scrubbing_caveats():
    assert scrubbing_caveat("resample", 0.2) is None
    assert scrubbing_caveat("corrupted", None) is None
    note = scrubbing_caveat("mean", 0.2)
    assert note is not None and "mean ablation" in note and "ablation=resample" in note
    assert large_scrubbing_gap(0.9, 0.5) and not large_scrubbing_gap(0.9, 0.7)
    assert hypothesis_unsupported(neurons=False, positions=False, features=False) is None
    assert "SAE" in hypothesis_unsupported(neurons=False, positions=False, features=True)


def test_scores_file_roundtrip(tmp_path):
    entry = zoo.load("induction", device="cpu")
    graph = cg.Graph.from_model(entry.model)
    graph.scores = torch.randn(graph.valid.shape) * graph.valid
    circuit = build_circuit(graph, cg.top_n(graph, 5), entry.task())
    write_scores(tmp_path / "scores.safetensors", graph, circuit, "induction")
    back = read_scores(tmp_path / "scores.safetensors")
    assert back["metadata"]["schema"] == SCORES_SCHEMA and back["metadata"]["model"] == "induction"
    assert back["src_names"] == list(graph.src_names) and back["dst_names"] == list(graph.dst_names)
    assert torch.equal(back["scores"], graph.scores.float()) and torch.equal(back["valid"], graph.valid)
    assert int(back["mask"].sum()) == circuit.n_edges


def test_zoo_errors_are_package_errors(tmp_path):
    assert issubclass(zoo.ZooLookupError, (errors.CircuitGraphError)) and issubclass(zoo.ZooLookupError, KeyError)
    with pytest.raises(errors.CircuitGraphError):
        zoo.load("no_such_model")
    dst = tmp_path / "entry"
    shutil.copytree(zoo.DATA_DIR / "induction", dst)
    doc = json.loads((dst / "model.json").read_text())
    doc["schema"] = "circuitgraph.zoo/999"
    (dst / "model.json").write_text(json.dumps(doc))
    with pytest.raises(errors.FileFormatError) as info:
        zoo.load_path(dst, device="cpu")
    assert str(info.value).startswith(f"{dst / 'model.json'}: schema is 'circuitgraph.zoo/999'")


def test_task_errors_are_task_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(errors.TaskError, match="no examples"):
        load_task(empty)


def test_cli_import_stays_light():
    """A config error must not wait for transformer_lens or matplotlib to import."""
    code = (
        "import sys, circuitgraph.cli.main; "
        "print(sorted(m for m in ('transformer_lens', 'matplotlib') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
