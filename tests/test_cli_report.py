"""What a run tells its user (issue 12): the circuit in words and against the zoo's known circuit,
``circuitgraph show``, ``Circuit.summary()``, helps/hurts words that do not flip with the metric,
edge overlap in sweep tables, progress that leaves a clean log, and the validation gaps: targets
above 1, task files checked before the model loads, group and launcher typos, the help's examples.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_module

import circuitgraph as cg
from circuitgraph import zoo
from circuitgraph.circuit import build_circuit
from circuitgraph.circuit.minimal import check_target
from circuitgraph.circuit.summary import describe, edge_rows
from circuitgraph.cli import compare as compare_mod
from circuitgraph.cli import main as cli
from circuitgraph.cli import show as show_mod
from circuitgraph.cli.config import ConfigError, check_overrides, register_configs, validate
from circuitgraph.engine import progress
from circuitgraph.evaluation import choose_ground_truth, compare_with_ground_truth
from circuitgraph.tasks.io import check_task_file
from circuitgraph.tasks.metrics import helpfulness

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def induction():
    return zoo.load("induction", device="cpu")


def _mask(graph, edges) -> torch.Tensor:
    m = torch.zeros_like(graph.valid)
    for e in edges:
        i, j = graph.edge(e)
        m[i, j] = True
    return m


def _circuit(entry, edges, scores=None, ablation="resample", metric=None):
    """A circuit of the induction graph holding ``edges``; scores −1 on them unless given."""
    graph = cg.Graph.from_model(entry.model)
    mask = _mask(graph, edges)
    graph.scores = -mask.float() if scores is None else scores
    c = build_circuit(graph, mask, entry.task(), ablation)
    if metric is not None:
        c.metadata["attribution"] = {"metric": metric}
    return c


@pytest.fixture
def no_model_loading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a model was loaded although the config is invalid")

    monkeypatch.setattr(cli, "load_model", boom)
    monkeypatch.setattr("circuitgraph.zoo.load", boom)


def _fails_before_loading(args, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------------------------------------
# ground truth, words, tables
# ---------------------------------------------------------------------------------------------


def test_ground_truth_choice_follows_the_ablation(induction):
    gts = induction.ground_truth
    assert choose_ground_truth(gts, "resample", "induction")[0] == "resample"
    assert choose_ground_truth(gts, "corrupted", "induction")[0] == "corrupted"
    assert choose_ground_truth(gts, "mean", "induction")[0] == "heads"  # the convention found under mean
    assert choose_ground_truth(gts, "zero", "induction")[0] == "corrupted"  # none under zero: the first
    assert choose_ground_truth(gts, "resample", "another_task") is None


def test_ground_truth_comparison_counts(induction):
    gt = induction.ground_truth_for("resample")
    truth = gt.edge_names
    c = _circuit(induction, [*truth, "input->logits"])
    got = compare_with_ground_truth(c, gt, "resample")
    assert got["level"] == "edge" and got["matches_ablation"]
    assert (got["n_truth"], got["n_found"], got["n_correct"]) == (5, 6, 5)
    assert got["precision"] == pytest.approx(5 / 6) and got["recall"] == 1.0
    assert got["extra"] == ["input->logits"] and got["missing"] == []
    assert got["auc"] == pytest.approx(1 - 1 / 76 / 2 * 1)  # one negative tied at the positives' score
    # drop one known edge: recall 4/5, the missing edge named; scores on the truth only: AUC 1
    scores = -_mask(c.graph, truth).float()
    c = _circuit(induction, truth[1:], scores=scores, ablation="corrupted")
    got = compare_with_ground_truth(c, gt, "resample")
    assert got["recall"] == pytest.approx(4 / 5) and got["missing"] == [truth[0]] and got["auc"] == 1.0
    assert not got["matches_ablation"]  # found under corrupted, compared with the resample truth
    # a node-level truth (heads only): items are components
    got = compare_with_ground_truth(c, induction.ground_truth_for("heads"), "heads")
    assert got["level"] == "node" and got["truth"] == ["a0.h1", "a1.h3"] and got["precision"] == 1.0


def test_helps_and_hurts_read_the_same_under_every_metric(induction):
    assert helpfulness(torch.tensor(-2.0), "logit_diff") > 0 and helpfulness(torch.tensor(2.0), "kl") > 0
    assert helpfulness(torch.tensor(2.0), "logit_diff") < 0 and helpfulness(torch.tensor(-2.0), "cross_entropy") < 0
    edges = ["a1.h3->logits", "input->a1.h3.k"]
    graph = cg.Graph.from_model(induction.model)
    scores = torch.zeros(graph.valid.shape)
    (i, j), (k, m) = graph.edge(edges[0]), graph.edge(edges[1])
    scores[i, j], scores[k, m] = -3.0, 1.0  # logit_diff: ablating the first lowers the metric
    rows = edge_rows(_circuit(induction, edges, scores=scores, metric="logit_diff"))
    assert [(r.name, r.effect, r.score) for r in rows] == [(edges[0], "helps", -3.0), (edges[1], "hurts", 1.0)]
    rows = edge_rows(_circuit(induction, edges, scores=-scores, metric="kl"))  # ACDC's KL: signs flip
    assert [(r.name, r.effect, r.score) for r in rows] == [(edges[0], "helps", 3.0), (edges[1], "hurts", -1.0)]


def test_summary_and_notebook_view(induction):
    gt = induction.ground_truth_for("resample")
    c = _circuit(induction, [*gt.edge_names, "input->a1.h3.k"])
    c.figures["ground_truth"] = compare_with_ground_truth(c, gt, "resample")
    roles = induction.head_roles()
    assert roles == {"a0.h1": "previous-token head", "a1.h3": "induction head"}
    words = describe(c, roles)
    assert words == (
        "previous-token head a0.h1 → induction head a1.h3 via key (K-composition); induction head a1.h3 → logits"
    )
    c.metadata["roles"] = roles  # saved with the circuit: summaries need no zoo
    text = c.summary()
    assert f"in words: {words}" in text and "precision 0.83, recall 1.00" in text
    table = {line.split()[1]: line.split() for line in text.splitlines() if re.match(r"\s+\d+\s", line)}
    assert set(table) == {*gt.edge_names, "input->a1.h3.k"}
    assert table["a0.h1->a1.h3.k"][-2:] == ["helps", "yes"] and table["input->a1.h3.k"][-1] == "no"
    assert "negative scores help" in text  # the raw sign explained
    page = c._repr_html_()
    assert page.count("<tr>") == 7 and "a0.h1-&gt;a1.h3.k" in page and "K-composition" in page


def test_show_prints_a_saved_circuit_without_a_model(induction, tmp_path, capsys):
    gt = induction.ground_truth_for("resample")
    c = _circuit(induction, gt.edge_names)
    c.figures["ground_truth"] = compare_with_ground_truth(c, gt, "resample")
    c.save(tmp_path / "circuit.json")
    with pytest.raises(SystemExit) as e:
        cli.main(["show", str(tmp_path)])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(str(tmp_path / "circuit.json")) and "5 of 81 edges" in out
    assert out.count(" yes") == 5 and "precision 1.00, recall 1.00" in out
    assert show_mod.main([str(tmp_path / "circuit.json"), "--json", "--top", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in rows] == [1, 2] and all(r["effect"] == "helps" for r in rows)
    assert show_mod.main([str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# sweeps: ground truth and edge overlap in the table
# ---------------------------------------------------------------------------------------------


def _fake_run(d: Path, edges: list[str], model_hash: str = "h", gt: dict | None = None) -> None:
    d.mkdir(parents=True)
    doc = {"model": {"config_hash": model_hash}, "edges": [[*e.split("->"), -1.0] for e in edges]}
    (d / "circuit.json").write_text(json.dumps(doc))
    summary = {"status": "ok", "method": "eap", "edges_kept": len(edges), "faithfulness": 0.9, "ground_truth": gt}
    (d / "summary.json").write_text(json.dumps(summary))


def test_sweep_table_has_ground_truth_and_edge_overlap(tmp_path):
    gt = {"precision": 0.5, "recall": 1.0, "auc": 0.75}
    _fake_run(tmp_path / "0", ["a->b", "b->c", "c->d"], gt=gt)
    _fake_run(tmp_path / "1", ["b->c", "c->d", "d->e"], gt=gt)
    _fake_run(tmp_path / "2", ["a->b"], model_hash="other")
    rows = compare_mod.compare_runs(tmp_path)
    assert rows[0]["edge_overlap"] == {"1": 0.5, "2": None}  # 2 shared of 4; another model: no overlap
    assert rows[1]["edge_overlap"]["0"] == 0.5
    assert (rows[0]["gt_precision"], rows[0]["gt_recall"], rows[0]["gt_auc"]) == (0.5, 1.0, 0.75)
    assert rows[2]["gt_precision"] is None
    table = compare_mod.format_table(rows)
    assert "| gt_precision | gt_recall | gt_auc |" in table
    assert "edge overlap between runs" in table and "| 0 | 1 | 0.500 | – |" in table


# ---------------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------------


def test_progress_is_plain_lines_when_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(progress, "interactive", lambda: False)
    bar = progress.progress_bar(10, "work", True, unit="step")
    for _ in range(10):
        bar.update()
    bar.close()
    assert capsys.readouterr().err == ""  # a short loop leaves nothing
    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setattr(progress, "PLAIN_EVERY", 0.0)
    with progress.phase("select"):
        for n in (3, 2):  # two loops inside a phase feed one line, labelled with the phase
            b = progress.progress_bar(n, "evaluate", None, unit="run")
            for _ in range(n):
                b.update()
            b.close()
        quiet = progress.progress_bar(4, "inner", False)
        quiet.update(4)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert lines[-1].startswith("select: 5 of 5 runs") and lines[-1].endswith("done")
    assert all(line.startswith("select: ") for line in lines)
    assert progress.progress_bar(3, "library call", None).__class__.__name__ == "_Null"  # quiet outside


def test_piped_run_prints_the_headline_once_and_a_clean_log(tmp_path):
    """Run as a user would, with stdout and stderr piped: no carriage returns, no traceback, the
    headline once; under corrupted ablation the scrubbing caveat is one line (details in summary.json)."""
    out = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "circuitgraph",
            f"hydra.run.dir={out}",
            "ablation=corrupted",
            "task.limit=16",
            "export=minimal",
            "export.hypothesis=true",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    both = r.stdout + r.stderr
    assert "\r" not in both and "Traceback" not in both
    assert r.stdout.count("circuitgraph: induction / induction") == 1
    caveat = [line for line in r.stdout.splitlines() if "caveat" in line]
    assert caveat == ["1 caveat in summary.json: scrubbing"]
    s = json.loads((out / "summary.json").read_text())
    assert "resampl" in s["caveats"]["scrubbing"] and s["ground_truth"]["convention"] == "corrupted"
    log = (out / "circuitgraph.log").read_text()
    assert log.count("circuitgraph: induction / induction") == 1  # the log file has it too, once


# ---------------------------------------------------------------------------------------------
# validation gaps (issue 12, item 8): each fails before any model is loaded
# ---------------------------------------------------------------------------------------------


def test_target_range_is_one_rule():
    check_target(1.0)
    check_target(0.01)
    for bad in (1.5, 0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=r"\(0, 1\]"):
            check_target(bad)


@pytest.mark.parametrize(
    "lines, needles",
    [
        (
            [
                '{"clean": [0, 1], "corrupted": [0, 2], "answer": 3}',
                '{"clean": [0, 1], "corruptd": [0, 2], "answer": 3}',
            ],
            ["row 2", "unknown column 'corruptd'", "Did you mean 'corrupted'"],
        ),
        (['{"clean": [0, 1], "corruptd": [0, 2], "answer": 3}'], ["row 1", "unknown column 'corruptd'"]),
        (['{"clean": [0, 1], "corrupted": [0, 2], "answr": 3}'], ["unknown column 'answr'", "Did you mean 'answer'"]),
        (['{"clean": [0, 1], "corrupted": [0, 2]}'] * 2, ["logit_diff reads the answer", "row(s) [1, 2]"]),
        (['{"clean": [0, 1], "corrupted": [0, 2, 3], "answer": 3}'] * 2, ["same length"]),
        (['{"clean": [0, 1], "corrupted": [0, 2], "answer": 3}'], ["ablation=resample", "at least 2 examples"]),
        (
            ['{"clean": [0, 1], "corrupted": [0, 2], "answer": 3}', '{"clean": "a b", "corrupted": "c d"}'],
            ["row 2 holds text"],
        ),
    ],
)
def test_task_file_is_checked_before_the_model_loads(lines, needles, tmp_path, capsys, no_model_loading):
    f = tmp_path / "task.jsonl"
    f.write_text("\n".join(lines) + "\n")
    err = _fails_before_loading([f"hydra.run.dir={tmp_path / 'run'}", "task=file", f"task.path={f}"], capsys)
    for n in needles:
        assert n in err, (n, err)


def test_task_file_check_keeps_extra_columns_and_csv(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text('clean,corrupted,answer,template\n"[1,2]","[1,3]",4,abc\n"[5,6]","[5,7]",8,abc\n')
    assert len(check_task_file(f, "logit_diff")) == 2  # an unrelated column is allowed
    assert cg.load_task(f).answer.tolist() == [4, 8]


def test_group_and_launcher_typos_name_the_fix(tmp_path, capsys, no_model_loading):
    err = _fails_before_loading([f"hydra.run.dir={tmp_path}", "ablation=resampel"], capsys)
    assert "Did you mean 'resample'" in err and "Options of ablation" in err
    check_overrides(["--config-dir", str(REPO / "conf"), "method=eap"])  # user folders still allowed
    if importlib.util.find_spec("hydra_plugins") is None or (
        importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None
    ):
        err = _fails_before_loading(["-m", "hydra/launcher=local_parallel", "method=eap,exact"], capsys)
        assert "pip install 'circuitgraph[launchers]'" in err and "hydra-joblib-launcher" in err


def test_the_help_examples_are_valid():
    conf = yaml.safe_load((REPO / "circuitgraph/cli/conf/config.yaml").read_text())
    footer = conf["hydra"]["help"]["footer"]
    examples = [line.split("#")[0].split()[3:] for line in footer.splitlines() if "python -m circuitgraph" in line]
    assert len(examples) >= 6
    register_configs()
    for args in examples:
        if args[:1] == ["show"]:
            continue
        overrides = [a for a in args if a != "-m"]
        for launcher in [a.split("=", 1)[1] for a in overrides if a.startswith("hydra/launcher=")]:
            assert (REPO / f"circuitgraph/cli/conf/hydra/launcher/{launcher}.yaml").is_file(), launcher
        overrides = [a for a in overrides if not a.startswith("hydra/launcher=")]
        check_overrides(overrides)
        with initialize_config_module(config_module="circuitgraph.cli.conf", version_base="1.3"):
            cfg = compose("config", overrides=[a.split(",")[0] for a in overrides])  # a sweep's first job
        if cfg.model.source == "pretrained" or (cfg.task.source == "file" and not Path(cfg.task.path).is_file()):
            continue  # needs the hub, or names the user's own file (ioi.jsonl)
        validate(cfg, check_hub=False)


def test_help_does_not_import_transformer_lens():
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "circuitgraph", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "circuitgraph show" in r.stdout
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time")}
    assert "circuitgraph" in imported and not {"transformer_lens", "matplotlib", "pyvis"} & imported
