"""SIGKILL a rerun into a used run directory at every write, and run two runs into one directory
(issue 15).

A driver process imports circuitgraph once and forks one child per run; each child runs the real
command-line entry point (``circuitgraph.cli.main.main``, what ``python -m circuitgraph`` calls,
Hydra included) and is SIGKILLed, by itself at a named point (``CIRCUITGRAPH_FAULT``: right after a
given file is renamed into place, or just before with its temporary file complete) or from outside
after a delay. The second run of the contention test is a separate ``python -m circuitgraph``.
Forking keeps each run to a fraction of a second instead of an interpreter start-up.

Afterwards, the issue's invariant: either the old complete run is intact and is the one that loads,
or nothing claims to be complete; and a mixed circuit pair never loads.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import circuitgraph as cg
from circuitgraph.circuit import CircuitFileError
from circuitgraph.files import rundir

REPO = Path(__file__).resolve().parents[1]
BASE = ["model=tracr_reverse", "method=eap", "progress=false", "export.curve=false", "export.png=false"]
RUN = [*BASE, "ablation=corrupted"]
RERUN = [*BASE, "ablation=zero"]
# every step of a rerun that writes, in order (hypothesis, circuit pair, scores, page, summary)
POINTS = [
    "locked",
    "invalidated",
    "hypothesis.json",
    "circuit.safetensors",
    "circuit.json.partial",
    "circuit.json",
    "scores.safetensors",
    "graph.html.partial",
    "summary.json.partial",
    "summary.json",
]
DELAYS = [0.1, 0.5]  # kills from outside, wherever the run happens to be
RERUN_AFTER = ["locked", "circuit.safetensors", "summary.json.partial"]

DRIVER = r"""
import json, os, shutil, signal, subprocess, sys, time
import torch
torch.set_num_threads(1)
import transformer_lens  # noqa: F401  (imported once here, not in every forked run)
from circuitgraph.cli import main as cli

jobs, results = json.loads(open(sys.argv[1]).read()), []
for job in jobs:
    if "copy" in job:
        shutil.copytree(*job["copy"], symlinks=True)
        results.append({})
        continue
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        if job.get("fault"):
            os.environ["CIRCUITGRAPH_FAULT"] = job["fault"]
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        code = 0
        try:
            cli.main([f"hydra.run.dir={job['dir']}", *job["args"]])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:
            print(f"run failed: {e!r}", file=sys.stderr)
            code = 1
        os._exit(code)
    out = {"pid": pid}
    if job.get("contend"):  # wait until the run has stopped itself holding the lock, then a real second run
        _, status = os.waitpid(pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), status
        t2 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "circuitgraph", f"hydra.run.dir={job['dir']}", *job["contend"]],
                           capture_output=True, text=True, timeout=300)
        out.update(second_code=r.returncode, second_stderr=r.stderr, second_seconds=time.perf_counter() - t2)
        os.kill(pid, signal.SIGKILL)
    elif job.get("kill_after") is not None:
        time.sleep(job["kill_after"])
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, status = os.waitpid(pid, 0)
    out.update(signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
               code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None, seconds=time.perf_counter() - t)
    results.append(out)
open(sys.argv[2], "w").write(json.dumps(results))
"""


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """Run the driver once: a first run, then for each kill point a copy of it that a rerun into
    it is killed in (kept as ``after/<point>`` before any further rerun), reruns, and contention."""
    root = tmp_path_factory.mktemp("kill")
    base, jobs = root / "base", []
    jobs.append({"dir": str(base), "args": RUN})
    names = [*POINTS, *(f"delay{d}" for d in DELAYS)]
    for name in names:
        jobs.append({"copy": [str(base), str(root / name)]})
        job = {"dir": str(root / name), "args": RERUN}
        if name.startswith("delay"):
            job["kill_after"] = float(name[5:])
        else:
            job["fault"] = name
        jobs.append(job)
        jobs.append({"copy": [str(root / name), str(root / "after" / name)]})
    for name in RERUN_AFTER:
        jobs.append({"dir": str(root / name), "args": RERUN})
    jobs.append({"copy": [str(base), str(root / "contended")]})
    jobs.append({"dir": str(root / "contended"), "args": RUN, "fault": "locked:stop", "contend": RERUN})
    spec, out = root / "jobs.json", root / "results.json"
    spec.write_text(json.dumps(jobs))
    r = subprocess.run(
        [sys.executable, "-c", DRIVER, str(spec), str(out)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())
    by_name = {}
    for job, res in zip(jobs, results):
        if "dir" in job and "fault" in job or "kill_after" in job:
            by_name.setdefault(Path(job["dir"]).name, res)
    return root, results, by_name


def load(path: Path):
    """``("ok", ablation kind)`` or ``("refused", message)``; anything else fails the test."""
    try:
        c = cg.Circuit.load(path)
    except CircuitFileError as e:
        return "refused", str(e)
    return "ok", c.metadata["ablation"]["kind"]


def summary_ablation(d: Path) -> str | None:
    p = d / "summary.json"
    return json.loads(p.read_text())["ablation"] if p.exists() else None


def test_the_first_run_is_complete(killed):
    root, results, _ = killed
    assert results[0]["code"] == 0 and rundir.run_state(root / "base").complete
    assert load(root / "base" / "circuit.json") == ("ok", "corrupted")


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_write(killed, point):
    root, _, by_name = killed
    assert by_name[point]["signal"] == signal.SIGKILL, by_name[point]  # the fault fired: the run died there
    d = root / "after" / point
    st = rundir.run_state(d)
    loaded = load(d / "circuit.json")
    if point == "locked":  # killed before it touched anything: the old complete run is intact and loads
        assert st.complete and summary_ablation(d) == "corrupted" and loaded == ("ok", "corrupted")
    elif point == "summary.json":  # killed after its summary landed: the rerun is complete
        assert st.complete and summary_ablation(d) == "zero" and loaded == ("ok", "zero")
    else:  # nothing claims to be complete
        assert st.state == "unfinished" and not (d / "summary.json").exists()
        previous = d / "summary.previous.json"
        if point == "summary.json.partial":  # retired with the old run's stale files, just before the summary
            assert not previous.exists()
        else:  # the old run's summary, renamed before the rerun wrote anything
            assert json.loads(previous.read_text())["ablation"] == "corrupted" and st.previous is not None
        if point in ("circuit.safetensors", "circuit.json.partial"):  # halves of two runs: refused
            assert loaded[0] == "refused" and "come from different saves" in loaded[1]
        elif point in ("invalidated", "hypothesis.json"):  # the old pair, whole, but nothing vouches for it
            assert loaded == ("ok", "corrupted")
        else:
            assert loaded == ("ok", "zero")
    assert (d / rundir.LOCK).exists()  # the killed run's lock file names it (its lock died with it)
    assert rundir.holder(d)["pid"] == by_name[point]["pid"]
    partials = [p.name for p in d.iterdir() if ".partial" in p.name]
    assert bool(partials) == point.endswith(".partial")


@pytest.mark.parametrize("name", [f"delay{d}" for d in DELAYS])
def test_kill_from_outside_at_any_moment(killed, name):
    root, _, by_name = killed
    d = root / "after" / name
    st = rundir.run_state(d)
    assert st.state in ("complete", "unfinished")  # never "mixed": a summary only for its own files
    if st.state == "complete":
        assert summary_ablation(d) in ("corrupted", "zero")
    loaded = load(d / "circuit.json")
    assert loaded[0] == "ok" or "come from different saves" in loaded[1]


@pytest.mark.parametrize("point", RERUN_AFTER)
def test_a_rerun_after_a_kill_cleans_up_and_completes(killed, point):
    root, _, _ = killed
    d = root / point
    st = rundir.run_state(d)
    assert st.complete and summary_ablation(d) == "zero" and load(d / "circuit.json") == ("ok", "zero")
    leftovers = [
        p.name for p in d.iterdir() if ".partial" in p.name or p.name in (rundir.LOCK, rundir.PREVIOUS_SUMMARY)
    ]
    assert leftovers == []
    listed = set(json.loads((d / "summary.json").read_text())["manifest"])
    assert {p.name for p in d.iterdir() if p.is_file()} - listed == {"summary.json", "circuitgraph.log"}


def test_a_second_run_into_a_busy_directory_is_refused(killed):
    root, results, _ = killed
    res = results[-1]
    assert res["second_code"] == 3, res["second_stderr"][-2000:]
    assert f"is in use by pid {res['pid']} on " in res["second_stderr"]
    d = root / "contended"
    # the refused run wrote nothing (not even Hydra's record), and the holder was killed right after
    # taking the lock: the old complete run is intact
    assert rundir.run_state(d).complete and summary_ablation(d) == "corrupted"
    assert "ablation=zero" not in (d / ".hydra" / "overrides.yaml").read_text()
    assert load(d / "circuit.json") == ("ok", "corrupted")
