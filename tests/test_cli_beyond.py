"""The command line's learned masks, optimal ablation, bootstrap stability, scrubbing-guided
pruning and MIB submission folder (issue 13)."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_module

import circuitgraph as cg
from circuitgraph.cli import main as cli
from circuitgraph.cli.config import register_configs
from circuitgraph.export import read_mib_submission

torch.set_num_threads(1)


def compose_cfg(*overrides: str):
    register_configs()
    with initialize_config_module(config_module="circuitgraph.cli.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_learned_masks_optimal_ablation_stability_and_mib(tmp_path):
    out = tmp_path / "run"
    s = cli.run(
        compose_cfg(
            "model=tracr_hist",
            "method=edge-pruning",
            "method.estimator=sampled",
            "method.train_steps=25",
            "method.lambdas=[0.01,0.3]",
            "ablation=optimal",
            "export.stability=2",
            "export.mib_submission=true",
            "export.png=false",
            "export.curve=false",
            "progress=false",
        ),
        out,
    )
    assert s["method"] == "edge-pruning" and s["selection"]["kind"] == "edge-pruning"
    assert s["target"] == 0.9 and s["reached_target"] == (s["faithfulness"] >= 0.9)
    assert s["optimal_ablation"]["loss_fitted"] <= s["optimal_ablation"]["loss_at_mean"]
    st = s["stability"]
    assert st["n_boot"] == 2 and 0 <= st["jaccard"] <= 1 and st["method"] == "edge-pruning"
    entry = cg.zoo.load("tracr_hist", device="cpu")
    c = cg.Circuit.load(out / "circuit.json", entry.model)
    assert c.figures["stability"]["n_boot"] == 2
    abl = c.ablation()  # the fitted constants, read back as data
    assert abl.kind == "optimal" and set(abl.values) >= {"input", "z0", "mlp0"}
    f = cg.faithfulness(entry.model, c.graph, entry.task(), c.mask, ablation=abl)
    assert f == pytest.approx(s["faithfulness"], abs=1e-5)
    html = (out / "graph.html").read_text()
    assert "bootstrap circuits" in html  # each edge's inclusion frequency in its tooltip
    sub = read_mib_submission(out / s["files"]["mib_submission"].rsplit("/", 1)[0], entry.model)
    assert torch.equal(sub["importances"].mask.cpu(), c.mask.cpu())


def test_prune_by_scrubbing_on_induction(tmp_path):
    out = tmp_path / "run"
    s = cli.run(
        compose_cfg("ablation=resample", "prune=scrubbing", "export=minimal", "export.curve=false", "progress=false"),
        out,
    )
    gt = cg.zoo.load("induction", device="cpu").ground_truth["resample"]
    assert s["selection"]["kind"] == "scrubbing" and s["target"] is None
    assert s["prune"]["reached_target"] and s["prune"]["verified"]["loss_recovered"] >= 0.9
    assert set(s["prune"]["edges"]) == set(gt.edge_names)
    assert s["edges_kept"] == len(gt.edges)
    doc = json.loads((out / "circuit.json").read_text())
    assert doc["metadata"]["selection"]["kind"] == "scrubbing"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["prune=scrubbing", "prune.target=2"], "prune.target"),
        (["prune=scrubbing", "graph.neurons=true"], "heads and MLPs"),
        (["method=edge-pruning", "method.estimator=magic"], "method.estimator"),
        (["method=edge-pruning", "method.train_steps=0"], "train_steps"),
        (["export.stability=1"], "export.stability"),
    ],
)
def test_invalid_new_options_fail_fast(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    with pytest.raises(SystemExit) as e:
        cli.main([f"hydra.run.dir={tmp_path / 'run'}", *args])
    assert e.value.code == 2 and needle in capsys.readouterr().err
