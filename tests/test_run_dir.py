"""Run directories that never show a stale result (issue 15): the lock, the retired summary, stale
partial and result files, the summary's manifest, and ``circuitgraph show``.

The SIGKILL tests (real processes killed at every write of a rerun) are tests/test_run_dir_kill.py.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

import circuitgraph as cg
from circuitgraph.cli import main as cli
from circuitgraph.errors import RunDirectoryBusyError
from circuitgraph.files import rundir

torch.set_num_threads(1)
FAST = ("model=tracr_reverse", "method=eap", "progress=false", "export.curve=false", "export.png=false")


def compose_cfg(*overrides: str):
    cli.register_configs()
    with initialize_config_module(config_module="circuitgraph.cli.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def hold_lock_in_another_process(directory: Path) -> int:
    """Fork a process that takes the directory's lock and waits; its pid (kill it when done)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: lock, say so, wait to be killed
        try:
            os.close(r)
            rundir.acquire(directory)
            os.write(w, b"1")
            while True:
                time.sleep(1)
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    return pid


def stop(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_a_second_run_is_refused_at_once_naming_the_holder(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cli.run(compose_cfg(*FAST), out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    pid = hold_lock_in_another_process(out)
    try:

        def no_loading(*a, **k):
            raise AssertionError("the refused run loaded a model")

        monkeypatch.setattr(cli, "load_model", no_loading)
        with pytest.raises(RunDirectoryBusyError, match=rf"run directory .*run is in use by pid {pid} on \S+, started"):
            cli.run(compose_cfg(*FAST, "ablation=zero"), out)
        hydra_record = (out / ".hydra" / "overrides.yaml").read_text() if (out / ".hydra").exists() else None
        with pytest.raises(SystemExit) as e:  # the command line: exit status 3, before Hydra writes .hydra/
            cli.main([f"hydra.run.dir={out}", *FAST, "ablation=zero"])
        assert e.value.code == cli.EXIT_BUSY
        assert ((out / ".hydra" / "overrides.yaml").read_text() if (out / ".hydra").exists() else None) == hydra_record
        after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != rundir.LOCK}
        assert after == before  # the refused runs changed nothing
        assert rundir.run_state(out).state == "running"
    finally:
        stop(pid)
    assert not rundir.is_locked(out)  # the kernel dropped the dead holder's lock
    monkeypatch.undo()
    cli.run(compose_cfg(*FAST, "ablation=zero"), out)  # and the next run goes ahead
    assert json.loads((out / "summary.json").read_text())["ablation"] == "zero"


def test_a_rerun_retires_the_old_summary_partials_and_stale_files(tmp_path):
    out = tmp_path / "run"
    cli.run(compose_cfg(*FAST, "export=all"), out)
    assert (out / "circuit.graphml").is_file() and (out / "graph.html").is_file()
    (out / ".circuit.x1y2.partial.json").write_text("{half")  # as a SIGKILLed atomic write leaves it
    (out / ".scores.k9.partial.safetensors").write_bytes(b"\0" * 10)
    seen = {}
    real_begin = rundir.begin_run

    def begin(directory):
        real_begin(directory)
        seen["summary"] = (out / "summary.json").exists()
        seen["previous"] = json.loads((out / "summary.previous.json").read_text())["status"]
        seen["partials"] = sorted(p.name for p in out.iterdir() if ".partial" in p.name)

    cli.rundir.begin_run = begin
    try:
        cli.run(compose_cfg(*FAST, "export=minimal", "ablation=zero"), out)
    finally:
        cli.rundir.begin_run = real_begin
    assert seen == {"summary": False, "previous": "ok", "partials": []}  # before the run wrote anything
    # graph.html, GraphML, MIB JSON, scores and hypothesis of the first run are gone; so are the lock
    # file, the partial files and the retired summary
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "circuit.json",
        "circuit.safetensors",
        "summary.json",
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["manifest"]) == ["circuit.json", "circuit.safetensors"]
    assert summary["manifest"]["circuit.json"]["sha256"] == rundir.sha256_file(out / "circuit.json")
    assert cg.Circuit.load(out / "circuit.json").metadata["ablation"]["kind"] == "zero"
    assert rundir.run_state(out).complete


def test_show_tells_complete_mixed_running_and_unfinished(tmp_path, capsys):
    out = tmp_path / "run"
    cli.run(compose_cfg(*FAST), out)
    with pytest.raises(SystemExit) as e:
        cli.main(["show", str(out)])
    text = capsys.readouterr().out
    assert e.value.code == 0 and "state: complete" in text and "ok       circuit.json" in text
    (out / "graph.html").write_text("<html>another run's page</html>")
    with pytest.raises(SystemExit) as e:
        cli.main(["show", str(out)])
    text = capsys.readouterr().out
    assert e.value.code == 1 and "state: mixed" in text and "changed  graph.html" in text
    st = rundir.run_state(out)
    assert st.files["graph.html"] == "changed" and st.files["circuit.json"] == "ok"
    pid = hold_lock_in_another_process(out)
    try:
        with pytest.raises(SystemExit) as e:
            cli.main(["show", "--state", "--json", str(out)])
        doc = json.loads(capsys.readouterr().out)
        assert e.value.code == 1 and doc["state"] == "running" and doc["holder"]["pid"] == pid
    finally:
        stop(pid)
    (out / "summary.json").unlink()
    assert rundir.run_state(out).state == "unfinished"
    with pytest.raises(SystemExit) as e:
        cli.main(["show", str(tmp_path / "nowhere")])
    assert e.value.code == 2


def test_lock_is_reentrant_and_cleans_up(tmp_path):
    d = tmp_path / "d"
    with rundir.locked(d):
        with rundir.locked(d):
            assert rundir.is_locked(d) and (d / rundir.LOCK).is_file()
            info = json.loads((d / rundir.LOCK).read_text())
            assert info["pid"] == os.getpid()
        assert rundir.is_locked(d)
    assert not rundir.is_locked(d) and not (d / rundir.LOCK).exists()
