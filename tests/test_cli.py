"""The Hydra command line: a default run's files, a sweep and its table, fail-fast config errors,
interrupted runs, local HF folders and the launcher presets.

Runs go through ``circuitgraph.cli.main.main(argv)`` in-process (the same code path as
``python -m circuitgraph``, without paying the interpreter + torch import per run); one test runs
the real ``python -m circuitgraph`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_module

import circuitgraph as cg
import circuitgraph.zoo  # noqa: F401  (cg.zoo below, whatever ran before)
from circuitgraph.cli import compare as compare_mod
from circuitgraph.cli import main as cli
from circuitgraph.cli.compare import compare_runs, format_table
from circuitgraph.cli.config import (
    METHODS,
    ConfigError,
    check_overrides,
    is_cached,
    register_configs,
    validate,
)

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def compose_cfg(*overrides: str, hydra_cfg: bool = False, config_dir: Path | None = None):
    register_configs()
    if config_dir is not None:  # a user folder beside the shipped configs, as --config-dir adds it
        overrides = (f"hydra.searchpath=[file://{config_dir}]", *overrides)
    with initialize_config_module(config_module="circuitgraph.cli.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_cfg)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Make any attempt to load a model fail the test."""

    def boom(*a, **k):
        raise AssertionError("a model was loaded although the config is invalid")

    monkeypatch.setattr(cli, "load_model", boom)
    monkeypatch.setattr("circuitgraph.zoo.load", boom)
    monkeypatch.setattr("circuitgraph.zoo.registry.load_path", boom)


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("circuitgraph.cli.config.hub_cache_dir", lambda: tmp_path / "hf" / "hub")
    return tmp_path / "hf" / "hub"


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if ".partial" in p.name or p.name.startswith(".") and p.name != ".hydra")


# ---------------------------------------------------------------------------------------------
# the default run
# ---------------------------------------------------------------------------------------------


def test_default_run_writes_every_file(tmp_path, capsys):
    out = tmp_path / "run"
    cli.main([f"hydra.run.dir={out}", "progress=false"])
    printed = capsys.readouterr().out
    assert f"graph.html: {(out / 'graph.html').resolve()}" in printed
    # the headline, once: what was found first, then the zoo comparison, faithfulness, scrubbing
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("circuitgraph: induction / induction"))
    assert sum(line.startswith("circuitgraph: induction / induction") for line in lines) == 1
    assert lines[start + 1] == (
        "found: previous-token head a0.h1 → induction head a1.h3 via key (K-composition); induction head a1.h3 → logits"
    )
    assert lines[start + 2].startswith("vs the zoo's known circuit: precision ")
    assert lines[start + 3].startswith("faithfulness ") and lines[start + 4].startswith("causal scrubbing: ")
    assert "caveat" not in printed  # one convention throughout: nothing to warn about

    for f in (
        "circuit.json",
        "circuit.safetensors",
        "scores.safetensors",
        "graph.html",
        "faithfulness.png",
        "summary.json",
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
    ):
        assert (out / f).is_file(), f
    assert leftovers(out) == []

    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "ok" and s["model"] == "induction" and s["task"] == "induction"
    assert s["method"] == "eap-ig" and s["ablation"] == "resample" and s["device"] == "cpu"
    assert s["selection"]["kind"] == "minimal" and s["target"] == 0.9
    assert s["reached_target"] and s["faithfulness"] >= 0.9
    assert 0 < s["edges_kept"] < s["edges_total"]
    assert s["cpr"] is not None and s["cmd"] is not None and s["wall_time_s"] > 0
    assert set(s["files"]) >= {"circuit", "scores", "html", "png", "summary"}

    model = cg.zoo.load("induction", device="cpu").model
    c = cg.Circuit.load(out / "circuit.json", model)
    assert c.n_edges == s["edges_kept"] and abs(c.faithfulness - s["faithfulness"]) < 1e-6
    assert c.metadata["attribution"]["method"] == "eap-ig"
    assert {"cpr", "cmd", "curve", "verified_faithfulness"} <= set(c.figures)

    # the circuit as a causal-scrubbing hypothesis, saved and scrubbed (issue 6)
    assert (out / "hypothesis.json").is_file() and s["files"]["hypothesis"] == "hypothesis.json"
    r = s["scrubbing"]["circuit"]
    assert r["ci"][0] <= r["loss_recovered"] <= r["ci"][1] and r["n_samples"] == 1024
    # one convention (resampling) for selection, faithfulness and scrubbing: the figures agree
    assert abs(r["loss_recovered"] - s["faithfulness"]) <= 0.05
    assert "note" not in s["scrubbing"] and s["caveats"] == {}
    hyp = cg.Hypothesis.load(out / "hypothesis.json", model=model)
    entry = cg.zoo.load("induction", device="cpu")
    again = cg.scrub(entry.model, hyp, entry.tasks["induction"], n_samples=1024, seed=0, warn_vacuous=False)
    assert again.loss_recovered == pytest.approx(r["loss_recovered"], abs=1e-6)
    # against the zoo's known circuit under the same convention: every known edge found
    gt = s["ground_truth"]
    assert gt["convention"] == "resample" and gt["matches_ablation"] and gt["level"] == "edge"
    assert gt["recall"] == 1.0 and gt["n_correct"] == gt["n_truth"] == 5 and gt["auc"] > 0.95
    assert gt["precision"] == pytest.approx(5 / s["edges_kept"])
    assert c.figures["ground_truth"]["truth"] == gt["truth"]  # circuit.json carries it too

    sc = cli.read_scores(out / "scores.safetensors")
    g = cg.Graph.from_model(model)
    assert sc["scores"].shape == sc["valid"].shape == sc["mask"].shape == g.valid.shape
    assert sc["src_names"] == list(g.src_names) and sc["dst_names"] == list(g.dst_names)
    assert torch.equal(sc["valid"], g.valid.cpu()) and int(sc["mask"].sum()) == s["edges_kept"]
    assert torch.allclose(sc["scores"], c.scores.cpu())

    assert (out / "faithfulness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "graph.html").read_text()
    assert "<html" in html.lower() and "induction" in html
    modes = {f.name: f.stat().st_mode & 0o777 for f in out.iterdir() if f.is_file()}
    assert set(modes) >= {"circuit.json", "hypothesis.json", "summary.json", "graph.html"}
    assert all(m & 0o044 for m in modes.values()), modes  # ordinary modes (not mkstemp's 0600), hypothesis too


# ---------------------------------------------------------------------------------------------
# a sweep and its table
# ---------------------------------------------------------------------------------------------


def test_multirun_two_methods_and_compare_table(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    cli.main(
        ["-m", "method=eap,eap-ig", f"hydra.sweep.dir={sweep}", "task.limit=8", "export=minimal", "progress=false"]
    )
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert runs == ["0", "1"]
    for r in runs:
        assert (sweep / r / "summary.json").is_file() and (sweep / r / "circuit.json").is_file()
        assert not (sweep / r / "graph.html").exists()  # export=minimal

    rows = compare_runs(sweep)
    assert [r["method"] for r in rows] == ["eap", "eap-ig"]
    assert all(r["status"] == "ok" and r["edges_kept"] > 0 and r["faithfulness"] is not None for r in rows)
    table = format_table(rows)
    assert "| run | status |" in table and "| eap |" in table and "| eap-ig |" in table
    assert "task.limit=8" in table  # shared overrides listed above the table
    # each run against the zoo's known circuit, and how far the two circuits agree
    assert all(r["gt_recall"] is not None and r["gt_auc"] is not None for r in rows)
    overlap = rows[0]["edge_overlap"]["1"]
    a, b = ({f"{e[0]}->{e[1]}" for e in json.loads((sweep / r / "circuit.json").read_text())["edges"]} for r in runs)
    assert overlap == pytest.approx(len(a & b) / len(a | b)) and "edge overlap between runs" in table

    capsys.readouterr()
    assert compare_mod.main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("| ok |") == 2
    assert compare_mod.main([str(sweep), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


# ---------------------------------------------------------------------------------------------
# invalid configurations fail before any model is loaded
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, code, needles",
    [
        (["memory_gb=0"], 2, ["memory_gb", "positive number of gigabytes"]),
        (["method=eapx"], 2, ["unknown method 'eapx'", "eap-ig", "exact", "acdc"]),
        (["method=eap-gi"], 2, ["unknown method 'eap-gi'", "Did you mean 'eap-ig'"]),
        (["circuit.target=1.5"], 2, ["circuit.target", "(0, 1]", "1.5"]),
        (["method.name=eapx"], 2, ["unknown method", "eap-ig", "exact", "acdc"]),
        (["circuit.taget=0.8"], 2, ["circuit.taget", "Did you mean 'target'", "Valid keys of circuit"]),
        (["sed=3"], 2, ["'sed'", "Did you mean 'seed'", "Valid top-level keys"]),
        (["circuit.target=-0.5"], 2, ["circuit.target", "-0.5"]),
        (["model=tracr_revers"], 2, ["unknown model 'tracr_revers'", "Did you mean 'tracr_reverse'"]),
        (["model=zoo", "model.name=inductoin"], 2, ["unknown zoo model", "Did you mean 'induction'"]),
        (["task.name=nope"], 2, ["no task 'nope'", "induction"]),
        (["model=pretrained"], 2, ["model.name"]),
        (["model=pretrained", "model.name=gpt2"], 2, ["task=file"]),  # no built-in task
        (["device=cuda:7"] if not torch.cuda.is_available() else ["device=tpu"], 2, ["device"]),
        (["graph.saes=/no/such/folder"], 2, ["graph.saes=/no/such/folder", "no such folder"]),
        (["graph.saes=zoo", "graph.features=most"], 2, ["graph.features", "active, all"]),
    ],
)
def test_invalid_config_fails_fast(args, code, needles, tmp_path, capsys, no_model_loading):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        cli.main([f"hydra.run.dir={out}", *args])
    assert e.value.code == code
    err = capsys.readouterr().err
    for n in needles:
        assert n in err, (n, err)
    assert not (out / "circuit.json").exists() and not (out / "summary.json").exists()


@pytest.mark.parametrize(
    "sweep, needles",
    [
        (["circuit.target=0.9,-1"], ["circuit.target=-1", "(0, 1]"]),
        (["circuit.target=0.9,1.5"], ["circuit.target=1.5", "(0, 1]"]),
        (["method=eap,foo"], ["unknown method 'foo'", "Options of method"]),
    ],
)
def test_invalid_sweep_value_fails_before_the_first_job(sweep, needles, tmp_path, capsys, no_model_loading):
    with pytest.raises(SystemExit) as e:
        cli.main(["-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", *sweep])
    assert e.value.code == 2
    err = capsys.readouterr().err
    for n in needles:
        assert n in err, (n, err)
    assert not (tmp_path / "sweep").exists()


def test_hub_model_offline_fails_fast_with_instructions(tmp_path, capsys, no_model_loading, offline_hub):
    task = tmp_path / "t.jsonl"
    task.write_text((json.dumps({"clean": "a b", "corrupted": "c d", "answer": " e"}) + "\n") * 2)
    with pytest.raises(SystemExit) as e:
        cli.main(
            [
                f"hydra.run.dir={tmp_path / 'run'}",
                "model=pretrained",
                "model.name=gpt2",
                "task=file",
                f"task.path={task}",
            ]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err
    for n in (
        "gpt2",
        "not in the local Hugging Face cache",
        "HF_HUB_OFFLINE",
        "model=induction",
        "model=local model.path=DIR",
    ):
        assert n in err, (n, err)
    # an unknown name is refused without looking at the hub at all
    with pytest.raises(SystemExit):
        cli.main(
            [
                f"hydra.run.dir={tmp_path / 'run'}",
                "model=pretrained",
                "model.name=gtp2",
                "task=file",
                f"task.path={task}",
            ]
        )
    assert "not a TransformerLens model name" in capsys.readouterr().err
    # once the model is in the cache the check passes (loading would then read the cache)
    (offline_hub / "models--openai-community--gpt2" / "snapshots" / "abc").mkdir(parents=True)
    (offline_hub / "models--gpt2" / "snapshots" / "abc").mkdir(parents=True)
    validate(compose_cfg("model=pretrained", "model.name=gpt2", "task=file", f"task.path={task}"))


def test_cli_subprocess_exit_code_and_message():
    r = subprocess.run(
        [sys.executable, "-m", "circuitgraph", "method.stesp=3"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2
    assert "Did you mean 'steps'" in r.stderr and "Valid keys of method" in r.stderr


def test_every_shipped_option_composes_and_validates(tmp_path):
    for m in METHODS:
        validate(compose_cfg(f"method={m}"), check_hub=False)
    for a in ("corrupted", "zero", "mean", "resample"):
        assert compose_cfg(f"ablation={a}").ablation.kind == a
    for c in ("minimal", "top-n", "threshold"):
        validate(compose_cfg(f"circuit={c}"), check_hub=False)
    for e in ("default", "minimal", "all"):
        validate(compose_cfg(f"export={e}"), check_hub=False)
    for name in cg.zoo.list():
        cfg = compose_cfg(f"model={name}")
        assert cfg.model.name == name and cfg.model.source == "zoo"
        validate(cfg, check_hub=False)
    cfg = compose_cfg("task=file", f"task.path={REPO / 'examples/data/induction_repeats.jsonl'}")
    validate(cfg, check_hub=False)
    for experiment in sorted((REPO / "conf" / "experiment").glob("*.yaml")):  # the user-config examples
        cfg = compose_cfg(f"+experiment={experiment.stem}", config_dir=REPO / "conf")
        validate(cfg, check_hub=False)
    assert compose_cfg("+experiment=induction_features", config_dir=REPO / "conf").graph.saes == "zoo"
    with pytest.raises(ConfigError, match="task.path"):
        validate(compose_cfg("task=file"))


def test_check_overrides_leaves_hydra_and_user_groups_alone(tmp_path):
    check_overrides(
        [
            "-m",
            "hydra.run.dir=x",
            "hydra/launcher=basic",  # (a launcher whose plugin is missing is refused: test_cli_report)
            "method=eap,exact",
            "circuit.target=0.8,0.9",
            "+experiment=mine",
            "--cfg",
            "job",
        ]
    )
    (tmp_path / "experiment").mkdir()
    check_overrides(["--config-dir", str(tmp_path), "experiment=mine"])
    with pytest.raises(ConfigError, match="experiment"):
        check_overrides(["experiment=mine"])
    with pytest.raises(ConfigError, match="plain value"):
        check_overrides(["seed.x=1"])


def test_cached_detection(offline_hub):
    assert not is_cached("gpt2")
    (offline_hub / "models--EleutherAI--pythia-14m" / "snapshots" / "s").mkdir(parents=True)
    assert is_cached("EleutherAI/pythia-14m")


# ---------------------------------------------------------------------------------------------
# interrupted runs leave no half-written files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_interrupt_during_html_leaves_no_partial_files(exc, tmp_path, monkeypatch):
    def broken_write_html(circuit, path, title=None, **kw):
        Path(path).write_text("<html><body>half a grap")  # half-written, then the failure
        raise exc("interrupted while writing the HTML")

    monkeypatch.setattr("circuitgraph.export.write_html", broken_write_html)
    out = tmp_path / "run"
    cfg = compose_cfg("task.limit=8", "export.curve=false", "export.png=false", "progress=false")
    with pytest.raises(exc):
        cli.run(cfg, out)
    assert not (out / "summary.json").exists()  # written last: the run is visibly unfinished
    assert not (out / "graph.html").exists()
    assert leftovers(out) == []
    c = cg.Circuit.load(out / "circuit.json")  # what was written is whole
    assert c.n_edges > 0
    assert json.loads((out / "circuit.json").read_text())["schema"] == "circuitgraph.circuit/1"
    assert compare_runs(out)[0]["status"] == "incomplete"


def test_atomic_write_cleans_up(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")

    def fail(p):
        Path(p).write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        cli.atomic_write(target, fail)
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["x.json"]


# ---------------------------------------------------------------------------------------------
# other sources and selections
# ---------------------------------------------------------------------------------------------


def test_local_hf_folder_with_jsonl_task(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # n_ctx: TransformerLens' GPT-2 converter reads it (hub configs of GPT-2 carry it)
    hf = GPT2LMHeadModel(
        GPT2Config(
            n_layer=1, n_embd=16, n_head=2, vocab_size=31, n_positions=16, n_ctx=16, bos_token_id=0, eos_token_id=0
        )
    ).eval()
    hf.save_pretrained(tmp_path / "tiny-gpt2")
    task = tmp_path / "ids.jsonl"
    g = torch.Generator().manual_seed(1)
    with task.open("w") as f:
        for _ in range(6):
            clean, corr = torch.randint(0, 31, (2, 7), generator=g).tolist()
            f.write(json.dumps({"clean": clean, "corrupted": corr, "answer": clean[-1], "wrong": corr[-1]}) + "\n")
    out = tmp_path / "run"
    cfg = compose_cfg(
        "model=local",
        f"model.path={tmp_path / 'tiny-gpt2'}",
        "task=file",
        f"task.path={task}",
        "method=eap",
        "circuit=top-n",
        "circuit.n=5",
        "export.html=false",
        "export.png=false",
        "progress=false",
    )
    s = cli.run(cfg, out)
    assert s["model"] == "tiny-gpt2" and s["model_source"] == "local" and s["task"] == "ids"
    assert s["selection"]["kind"] == "top-n" and 0 < s["edges_kept"] <= 5
    assert (out / "summary.json").is_file() and (out / "scores.safetensors").is_file()
    # the converted model computes what the HF model computes (up to the centred unembedding)
    tl, _, label = cli.load_model(cfg.model, torch.device("cpu"))
    ids = torch.randint(0, 31, (2, 9), generator=g)
    with torch.no_grad():
        want = hf(ids).logits.log_softmax(-1)
        got = tl(ids).log_softmax(-1)
    assert label == "tiny-gpt2" and torch.allclose(want, got, atol=1e-4)


def test_acdc_and_threshold_selection(tmp_path):
    out = tmp_path / "acdc"
    s = cli.run(
        compose_cfg("method=acdc", "method.threshold=0.05", "task.limit=8", "export=minimal", "progress=false"), out
    )
    assert s["method"] == "acdc" and s["selection"]["kind"] == "acdc" and s["edges_kept"] > 0
    s = cli.run(
        compose_cfg(
            "method=eap", "circuit=threshold", "circuit.tau=0.0", "task.limit=8", "export=minimal", "progress=false"
        ),
        tmp_path / "thr",
    )
    assert s["selection"] == {"kind": "threshold", "tau": 0.0, "absolute": True, "prune": True}


def test_sae_feature_graph_run(tmp_path):
    """graph.saes=zoo: feature nodes from the shipped SAEs, the circuit re-measured, HTML labels,
    the hypothesis step skipped with a reason rather than failing."""
    s = cli.run(
        compose_cfg(
            "graph.saes=zoo",
            "graph.features=24",
            "method=eap",
            "task.limit=8",
            "circuit.target=0.7",
            "export.curve=false",
            "export.png=false",
            "progress=false",
        ),
        tmp_path / "sae",
    )
    assert s["graph"]["sae_sites"] == {"blocks.0.hook_attn_out": 24, "blocks.1.hook_resid_pre": 24}
    assert s["reached_target"] and "hypothesis" in s["skipped"]
    circuit = cg.Circuit.load(tmp_path / "sae" / "circuit.json")
    assert [site.hook_name for site in circuit.graph.sites] == ["blocks.0.hook_attn_out", "blocks.1.hook_resid_pre"]
    assert any(".f" in n for n in circuit.nodes())  # features carry the circuit, not only the error nodes
    assert '"topTokens"' in (tmp_path / "sae" / "graph.html").read_text()


def test_positions_graph_run(tmp_path):
    s = cli.run(
        compose_cfg(
            "graph.positions=true",
            "method=eap",
            "task.limit=8",
            "circuit=top-n",
            "circuit.n=40",
            "export=minimal",
            "progress=false",
        ),
        tmp_path / "pos",
    )
    assert s["graph"]["positions"] == 40 and s["edges_kept"] > 0


def test_positions_with_sae_features_and_activation_ig_run(tmp_path):
    """Granularities combine: SAE features at every token position, scored by activation EAP-IG."""
    s = cli.run(
        compose_cfg(
            "graph.positions=true",
            "graph.saes=zoo",
            "graph.features=4",
            "method=eap-ig-activations",
            "method.steps=2",
            "task.limit=4",
            "circuit=top-n",
            "circuit.n=40",
            "export=minimal",
            "progress=false",
        ),
        tmp_path / "pos_sae",
    )
    assert s["graph"]["positions"] == 40 and s["graph"]["sae_sites"] == {
        "blocks.0.hook_attn_out": 4,
        "blocks.1.hook_resid_pre": 4,
    }
    circuit = cg.Circuit.load(tmp_path / "pos_sae" / "circuit.json")
    assert isinstance(circuit.graph, cg.PositionalGraph) and len(circuit.graph.sites) == 2
    assert s["edges_kept"] > 0 and all("@" in e for e in circuit.edge_names())


def test_launcher_presets_compose():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cfg = compose_cfg("hydra/launcher=local_parallel", hydra_cfg=True)
    assert cfg.hydra.launcher.n_jobs == 2 and "joblib" in cfg.hydra.launcher._target_.lower()
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_cfg("hydra/launcher=slurm", hydra_cfg=True)
    assert cfg.hydra.launcher.gpus_per_node == 1 and "slurm" in cfg.hydra.launcher._target_.lower()


def test_config_files_are_valid_yaml():
    conf = REPO / "circuitgraph" / "cli" / "conf"
    files = sorted(conf.rglob("*.yaml"))
    assert len(files) > 20
    for f in files:
        yaml.safe_load(f.read_text())


def test_hypothesis_file_is_tested(tmp_path):
    """+hypothesis=path.json scrubs a saved hypothesis against the run's model and task."""
    cli.main(
        [
            f"hydra.run.dir={tmp_path / 'a'}",
            "progress=false",
            "ablation=resample",
            "export=minimal",
            "export.hypothesis=true",
        ]
    )
    cli.main(
        [
            f"hydra.run.dir={tmp_path / 'b'}",
            "progress=false",
            "export=minimal",
            f"+hypothesis={tmp_path / 'a' / 'hypothesis.json'}",
        ]
    )
    first = json.loads((tmp_path / "a" / "summary.json").read_text())
    second = json.loads((tmp_path / "b" / "summary.json").read_text())
    got = second["scrubbing"]["file"]
    assert got["path"].endswith("hypothesis.json")
    assert got["loss_recovered"] == pytest.approx(first["scrubbing"]["circuit"]["loss_recovered"], abs=1e-6)
    assert got["loss_recovered"] > 0.85  # a circuit selected under resampling passes scrubbing
    assert "circuit" not in second["scrubbing"]  # export=minimal writes no hypothesis of its own


def test_missing_hypothesis_file_fails_fast(tmp_path):
    with pytest.raises(ConfigError, match=r"\+hypothesis=.*no such file"):
        validate(compose_cfg(f"+hypothesis={tmp_path / 'nope.json'}"), check_hub=False)
