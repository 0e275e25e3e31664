"""Sweeps through the optional Hydra launchers, run for real and compared number by number with the
basic launcher: joblib (``local_parallel``), submitit (its local executor, every job in its own
subprocess; and the ``slurm`` preset through submitit's SLURM executor against a stand-in for
sbatch/srun/sacct) and Ray (a local ``ray.init()``, the ``ray_local`` preset). Also what a user gets
when a plugin is missing.

The plugins come with the optional ``launchers`` extra: ``make test-launchers`` builds
``.venv-launchers`` with it and runs this file. Without the extra the sweeps skip with the reason;
the missing-plugin messages are checked everywhere.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_module

from circuitgraph.cli import compare as compare_mod
from circuitgraph.cli import config as cli_config
from circuitgraph.cli import main as cli
from circuitgraph.cli.compare import compare_runs
from circuitgraph.cli.config import register_configs

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)

# Four jobs on the induction model: two methods × two targets, 8 examples, circuit + summary only.
SWEEP = [
    "method=eap,exact",
    "circuit.target=0.8,0.9",
    "task.limit=8",
    "export=minimal",
    "progress=false",
    "threads=1",
]
# The compare table without the one column that differs between launchers (wall time).
COLUMNS = (
    "run,status,method,circuit.target,edges_kept,edges_total,faithfulness,target,cpr,cmd,gt_precision,gt_recall,gt_auc"
)


def _installed(*modules: str) -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except ModuleNotFoundError:  # no hydra_plugins namespace at all
        return False


needs_submitit = pytest.mark.skipif(
    not _installed("hydra_plugins.hydra_submitit_launcher", "submitit"),
    reason="hydra-submitit-launcher is not installed (optional: pip install 'circuitgraph[launchers]'; "
    "make test-launchers runs these tests in .venv-launchers)",
)
needs_joblib = pytest.mark.skipif(
    not _installed("hydra_plugins.hydra_joblib_launcher", "joblib"),
    reason="hydra-joblib-launcher is not installed (optional: pip install 'circuitgraph[launchers]'; "
    "make test-launchers runs these tests in .venv-launchers)",
)
needs_ray = pytest.mark.skipif(
    not _installed("hydra_plugins.hydra_ray_launcher", "ray"),
    reason="hydra-ray-launcher / ray are not installed (optional: pip install 'circuitgraph[launchers]'; "
    "make test-launchers runs these tests in .venv-launchers)",
)


def _sweep(launcher_args: list[str], sweep_dir: Path, env: dict | None = None, timeout: int = 600) -> str:
    """``python -m circuitgraph -m ...`` in a subprocess started in another folder (so every path
    that matters is absolute, as on a cluster); its output."""
    cmd = [sys.executable, "-m", "circuitgraph", "-m", *launcher_args, *SWEEP, f"hydra.sweep.dir={sweep_dir}"]
    run_env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    p = subprocess.run(
        cmd, cwd=sweep_dir.parent, env=run_env, capture_output=True, text=True, timeout=timeout, check=False
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    return out


def _table(sweep_dir: Path, capsys) -> str:
    """What ``circuitgraph-compare SWEEP --columns ...`` prints, below its first line (the folder)."""
    capsys.readouterr()
    assert compare_mod.main([str(sweep_dir), "--columns", COLUMNS]) == 0
    folder, table = capsys.readouterr().out.split("\n", 1)
    assert folder == str(sweep_dir) and table.count("| ok |") == 4
    return table


def _same_rows(got: list[dict], want: list[dict]) -> None:
    """Every figure of every run equal (floats to 1e-9 relative), wall time aside."""
    assert len(got) == len(want) == 4
    for g, w in zip(got, want):
        assert set(g) == set(w)
        for k in w:
            if k == "wall_time_s":
                continue
            if isinstance(w[k], float):
                assert g[k] == pytest.approx(w[k], rel=1e-9, abs=1e-12), (g["run"], k)
            else:
                assert g[k] == w[k], (g["run"], k)


@pytest.fixture(scope="module")
def basic(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The sweep under Hydra's basic launcher (jobs one after another, in this process)."""
    sweep = tmp_path_factory.mktemp("basic") / "sweep"
    cli.main(["-m", *SWEEP, f"hydra.sweep.dir={sweep}"])
    rows = compare_runs(sweep)
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert {(r["method"], r["circuit.target"]) for r in rows} == {
        (m, t) for m in ("eap", "exact") for t in ("0.8", "0.9")
    }
    assert all(r["edges_kept"] > 0 and r["faithfulness"] >= float(r["circuit.target"]) for r in rows)
    return sweep, rows


def _job_ids(sweep_dir: Path) -> list[str]:
    return [
        str(yaml.safe_load((sweep_dir / str(i) / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"])
        for i in range(4)
    ]


# ---------------------------------------------------------------------------------------------
# joblib and submitit
# ---------------------------------------------------------------------------------------------


@needs_joblib
def test_local_parallel_sweep_matches_the_basic_launcher(basic, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _sweep(["hydra/launcher=local_parallel"], sweep)
    _same_rows(compare_runs(sweep), basic[1])
    assert _table(sweep, capsys) == _table(basic[0], capsys)


@needs_submitit
def test_submitit_local_sweep_matches_the_basic_launcher(basic, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _sweep(["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=15"], sweep)
    _same_rows(compare_runs(sweep), basic[1])
    assert _table(sweep, capsys) == _table(basic[0], capsys)
    # each job ran in a process of its own (submitit's local job ids are the job processes' pids)
    ids = _job_ids(sweep)
    assert len(set(ids)) == 4 and all(i.isdigit() and int(i) != os.getpid() for i in ids)
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 4  # submitit's own records, hidden


@needs_submitit
def test_slurm_preset_runs_through_submitits_slurm_executor(basic, tmp_path, capsys):
    """The ``slurm`` preset through the plugin's SlurmLauncher and submitit's SLURM executor, with
    sbatch, srun and sacct replaced by stand-ins that run the job array here (two tasks at a
    time) with SLURM's environment variables: what changes on a real cluster is only who runs
    the script."""
    bin_dir = _fake_slurm(tmp_path)
    sweep = tmp_path / "sweep"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_LOG": str(tmp_path / "sbatch.txt")}
    _sweep(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=15"], sweep, env, 300)
    _same_rows(compare_runs(sweep), basic[1])
    assert _table(sweep, capsys) == _table(basic[0], capsys)
    script = (tmp_path / "sbatch.txt").read_text()  # what SLURM would have been given
    for flag in (
        "#SBATCH --array=0-3%4",
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --time=15",
    ):
        assert flag in script, (flag, script)
    assert _job_ids(sweep) == [f"4242_{i}" for i in range(4)]  # SLURM array task ids, read by submitit


def _fake_slurm(tmp_path: Path) -> Path:
    """``sbatch``, ``srun``, ``sacct`` and ``scancel`` stand-ins in a folder to put first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        # answers with a job id at once (submitit names the tasks' pickles after it), then runs the
        # array's tasks in the background, two at a time, as SLURM would with their variables
        "sbatch": """
            import os, re, subprocess, sys
            path = sys.argv[-1]
            text = open(path).read()
            with open(os.environ["FAKE_SLURM_LOG"], "a") as log:
                log.write(text)
            m = re.search(r"--array=0-(\\d+)", text)
            n = int(m.group(1)) + 1 if m else 1
            code = (
                "import os, subprocess, sys\\n"
                "running = []\\n"
                f"for i in range({n}):\\n"
                "    env = dict(os.environ, SLURM_JOB_ID=str(5000 + i), SLURM_ARRAY_JOB_ID='4242',\\n"
                "               SLURM_ARRAY_TASK_ID=str(i), SLURM_NTASKS='1', SLURM_JOB_NUM_NODES='1',\\n"
                "               SLURM_NODEID='0', SLURM_JOB_NODELIST='localhost', SLURM_PROCID='0',\\n"
                "               SLURM_LOCALID='0')\\n"
                f"    running.append(subprocess.Popen(['bash', {path!r}], env=env))\\n"
                "    if len(running) == 2:\\n"  # two tasks at a time (this machine's cores)
                "        running.pop(0).wait()\\n"
                "for p in running:\\n"
                "    p.wait()\\n"
            )
            subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print("Submitted batch job 4242")
        """,
        # runs the command with its output where --output/--error say, once submitit has written
        # the task's pickle (it does so right after sbatch answers)
        "srun": """
            import os, subprocess, sys, time
            args, files = sys.argv[1:], {}
            while args and args[0].startswith("--"):
                flag = args.pop(0)
                if flag in ("--output", "--error"):
                    files[flag] = args.pop(0)
            job = os.environ["SLURM_ARRAY_JOB_ID"] + "_" + os.environ["SLURM_ARRAY_TASK_ID"]
            def fill(p):
                return (p.replace("%A", os.environ["SLURM_ARRAY_JOB_ID"]).replace("%a", os.environ["SLURM_ARRAY_TASK_ID"])
                        .replace("%j", job).replace("%t", "0"))
            pickle = os.path.join(fill(args[-1]), job + "_submitted.pkl")
            for _ in range(600):
                if os.path.exists(pickle):
                    break
                time.sleep(0.1)
            out = open(fill(files.get("--output", os.devnull)), "a")
            err = open(fill(files["--error"]), "a") if "--error" in files else subprocess.STDOUT
            sys.exit(subprocess.run(" ".join(args), shell=True, stdout=out, stderr=err).returncode)
        """,
        "sacct": """
            print("JobID|State|NodeList")
        """,
        "scancel": """
            pass
        """,
    }
    for name, body in scripts.items():
        f = bin_dir / name
        f.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
        f.chmod(f.stat().st_mode | stat.S_IXUSR)
    return bin_dir


# ---------------------------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------------------------


@needs_ray
def test_ray_local_sweep_matches_the_basic_launcher(basic, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    out = _sweep(["hydra/launcher=ray_local"], sweep)
    assert "Ray Launcher is launching 4 jobs" in out
    _same_rows(compare_runs(sweep), basic[1])
    assert _table(sweep, capsys) == _table(basic[0], capsys)


@needs_ray
def test_ray_local_preset_is_sized_for_two_cores():
    register_configs()
    with initialize_config_module(config_module="circuitgraph.cli.conf", version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=ray_local"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("RayLauncher")
    assert launcher.ray.init.num_cpus == 2 and launcher.ray.remote.num_cpus == 1
    assert launcher.ray.init.address is None and launcher.ray.init.include_dashboard is False


# ---------------------------------------------------------------------------------------------
# a missing plugin is named, with the fix (checked with or without the extra)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "launcher, absent, needles",
    [
        ("ray_local", ("hydra_plugins.hydra_ray_launcher", "ray"), ["hydra-ray-launcher", "(with ray)"]),
        (
            "ray",
            ("hydra_plugins.hydra_ray_launcher", "ray"),
            ["hydra-ray-launcher", "hydra_plugins.hydra_ray_launcher"],
        ),
        ("ray", ("ray",), ["hydra-ray-launcher (with ray)", "ray)"]),  # the plugin without ray
        ("submitit_local", ("submitit",), ["hydra-submitit-launcher (with submitit)", "submitit)"]),
        ("slurm", ("hydra_plugins.hydra_submitit_launcher",), ["hydra-submitit-launcher"]),
    ],
)
def test_missing_launcher_plugin_names_the_install(launcher, absent, needles, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        cli_config.importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a)
    )
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as e:
        cli.main(["-m", f"hydra/launcher={launcher}", "method=eap,exact"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"hydra/launcher={launcher} needs" in err
    assert "pip install 'circuitgraph[launchers]'" in err
    for n in needles:
        assert n in err, (n, err)
