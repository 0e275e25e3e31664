"""Run directories that never show a stale result.

A run into a directory:

1. takes an exclusive lock on it (``fcntl.flock`` on ``.circuitgraph.lock`` inside it), so a
   second run into the same directory fails at once with :class:`RunDirectoryBusyError` naming
   the holder (pid, host, start time, command). The kernel drops the lock when the process dies,
   however it dies, so a killed run never blocks the next one;
2. :func:`begin_run`: renames a previous ``summary.json`` to ``summary.previous.json`` before it
   writes anything else (so no summary claims files the run is about to replace), and removes
   temporary ``.partial`` files left by killed runs;
3. writes its files (each atomically), then :func:`finish_run` removes the previous run's result
   files that this run did not rewrite, and the run writes ``summary.json`` last, listing every
   file with its SHA-256 (:func:`manifest`).

So ``summary.json`` exists only for a finished run, and it describes exactly the files beside it;
:func:`run_state` (``circuitgraph show DIR``) checks that, and :func:`check_member` lets a loader
refuse a file that a finished run's summary says is different.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitgraph.atomic import fault_point, is_partial
from circuitgraph.errors import CircuitGraphError, FileFormatError, RunDirectoryBusyError
from circuitgraph.files.pairs import sha256_file
from circuitgraph.files.reading import read_json

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs are then not locked
    fcntl = None  # type: ignore[assignment]

RUN_SCHEMA = "circuitgraph.run/1"
LOCK = ".circuitgraph.lock"
SUMMARY = "summary.json"
PREVIOUS_SUMMARY = "summary.previous.json"

_held: dict[str, list[int]] = {}  # real path of a locked directory → [lock fd, nesting depth]


# ------------------------------------------------------------------------------------ the lock
def _key(directory: Path) -> str:
    return os.path.realpath(directory)


def holder(directory: str | Path) -> dict[str, Any] | None:
    """Who holds (or last held) the directory's lock, as written into the lock file; None if unknown."""
    try:
        info = read_json(Path(directory) / LOCK, max_bytes=1 << 16)
    except (CircuitGraphError, OSError):
        return None
    return info if isinstance(info, dict) else None


def describe_holder(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process (it has not yet written its name into the lock file)"
    cmd = " ".join(str(a) for a in info.get("argv", []))
    return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}" + (f" ({cmd})" if cmd else "")


def acquire(directory: str | Path) -> None:
    """Lock ``directory`` for this process (re-entrant within it); :class:`RunDirectoryBusyError`
    at once if another process holds it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    k = _key(directory)
    if k in _held:
        _held[k][1] += 1
        return
    if fcntl is None:  # pragma: no cover
        _held[k] = [-1, 1]
        return
    path = directory / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirectoryBusyError(
                f"run directory {directory} is in use by {describe_holder(holder(directory))}; wait for that run "
                "to finish, or write this run elsewhere (hydra.run.dir=...)"
            ) from None
        # A releasing holder unlinks the file while it still holds the lock: make sure the file we
        # locked is still the one at the path, or two runs could each hold a lock on "the" file.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "argv": [a[:200] for a in sys.argv[:32]],
    }
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    _held[k] = [fd, 1]
    fault_point("locked")


def release(directory: str | Path) -> None:
    """Undo one :func:`acquire`; the last one removes the lock file and drops the lock."""
    directory = Path(directory)
    k = _key(directory)
    entry = _held.get(k)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _held[k]
    if entry[0] >= 0:
        with contextlib.suppress(FileNotFoundError):
            (directory / LOCK).unlink()  # while still locked: see acquire
        os.close(entry[0])


@contextlib.contextmanager
def locked(directory: str | Path) -> Iterator[Path]:
    """``with locked(dir):`` hold the run directory's lock for the block."""
    acquire(directory)
    try:
        yield Path(directory)
    finally:
        release(directory)


def is_locked(directory: str | Path) -> bool:
    """Whether some process (this one included) holds the directory's lock now."""
    directory = Path(directory)
    if _key(directory) in _held:
        return True
    if fcntl is None:  # pragma: no cover
        return False
    try:
        fd = os.open(directory / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock, if we got it
    return False


# ------------------------------------------------------------------------------------ a run's steps
def begin_run(directory: str | Path) -> None:
    """Before a (locked) run writes anything: retire the previous summary and the temporary files
    of killed runs."""
    directory = Path(directory)
    if (directory / SUMMARY).exists():
        os.replace(directory / SUMMARY, directory / PREVIOUS_SUMMARY)
    fault_point("invalidated")
    for p in directory.iterdir():
        if is_partial(p.name) and p.is_file():
            p.unlink(missing_ok=True)


def finish_run(directory: str | Path, written: Iterable[str], ours: Iterable[str]) -> None:
    """Before the summary is written: remove result files of an earlier run (any of ``ours``, the
    names runs write) that this run did not rewrite, and the previous summary."""
    directory = Path(directory)
    keep = set(written)
    for name in set(ours) - keep - {SUMMARY}:
        (directory / name).unlink(missing_ok=True)
    (directory / PREVIOUS_SUMMARY).unlink(missing_ok=True)


def manifest(directory: str | Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"sha256", "bytes"}}`` of the run's files: what ``summary.json`` vouches for."""
    directory = Path(directory)
    return {n: {"sha256": sha256_file(directory / n), "bytes": (directory / n).stat().st_size} for n in sorted(names)}


# ------------------------------------------------------------------------------------ checking a directory
@dataclass
class RunState:
    """What a run directory holds.

    ``state``: ``complete`` (summary.json says ok and every listed file has its recorded hash),
    ``unverified`` (a finished run of an older circuitgraph: no hashes to check), ``mixed``
    (summary.json says ok but files differ from it), ``running`` (a run holds the lock),
    ``unfinished`` (no summary.json and no run holds the lock: the run was interrupted or failed),
    ``invalid`` (summary.json is not a run summary)."""

    directory: Path
    state: str
    problems: list[str] = field(default_factory=list)
    holder: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)  # name → ok / changed / missing
    previous: str | None = None  # what summary.previous.json says, if there is one

    @property
    def complete(self) -> bool:
        return self.state == "complete"


def _check_files(directory: Path, listed: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    files: dict[str, str] = {}
    problems = []
    for name, rec in sorted(listed.items()):
        p = directory / name
        if not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str):
            files[name] = "changed"
            problems.append(f"{name}: its manifest entry is malformed")
        elif not p.is_file():
            files[name] = "missing"
            problems.append(f"{name}: missing")
        elif sha256_file(p) != rec["sha256"]:
            files[name] = "changed"
            problems.append(f"{name}: differs from the file the run wrote (another run or an edit replaced it)")
        else:
            files[name] = "ok"
    return files, problems


def read_summary(path: Path) -> dict[str, Any] | None:
    """A run summary (schema ``circuitgraph.run/1``), read within bounds; None if it is not one."""
    try:
        doc = read_json(path, max_bytes=64 << 20)
    except (FileFormatError, OSError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == RUN_SCHEMA else None


def run_state(directory: str | Path) -> RunState:
    """Check a run directory: is there a finished run, and are its files the ones it wrote?"""
    directory = Path(directory)
    st = RunState(directory, "unfinished")
    prev = directory / PREVIOUS_SUMMARY
    if prev.is_file():
        old = read_summary(prev)
        if old and isinstance(old.get("manifest"), dict):
            _, changed = _check_files(directory, old["manifest"])
            st.previous = (
                "intact" if not changed else f"{len(changed)} of its files have since been replaced or removed"
            )
        else:
            st.previous = "present (no file hashes to check)"
    if is_locked(directory):
        st.state, st.holder = "running", holder(directory)
        return st
    if not (directory / SUMMARY).exists():
        st.holder = holder(directory)  # a lock file left by a killed run names it
        return st
    summary = read_summary(directory / SUMMARY)
    if summary is None:
        st.state = "invalid"
        st.problems.append(f"{SUMMARY} is not a circuitgraph run summary ({RUN_SCHEMA})")
        return st
    st.summary = summary
    if summary.get("status") != "ok":
        st.state = "unfinished"
        st.problems.append(f"{SUMMARY} says status {summary.get('status')!r}")
        return st
    listed = summary.get("manifest")
    if not isinstance(listed, dict):
        st.state = "unverified"
        return st
    st.files, st.problems = _check_files(directory, listed)
    st.state = "mixed" if st.problems else "complete"
    return st


def check_member(path: str | Path) -> str | None:
    """For a loader: a problem when ``path`` sits in a run directory whose ``summary.json`` says the
    run finished and lists this file with different contents (a folder mixing runs); else None."""
    path = Path(path)
    summary_path = path.parent / SUMMARY
    if not summary_path.is_file():
        return None
    summary = read_summary(summary_path)
    if not summary or summary.get("status") != "ok" or not isinstance(summary.get("manifest"), dict):
        return None
    rec = summary["manifest"].get(path.name)
    if not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str):
        return None
    if sha256_file(path) == rec["sha256"]:
        return None
    return (
        f"{summary_path} says the finished run wrote a different {path.name}: this folder mixes files of "
        f"different runs (`circuitgraph show {path.parent}` lists them). Rerun into a fresh directory, or copy "
        "the file out of the run directory if you mean to use it on its own"
    )


__all__ = [
    "RUN_SCHEMA",
    "LOCK",
    "SUMMARY",
    "PREVIOUS_SUMMARY",
    "RunState",
    "acquire",
    "release",
    "locked",
    "is_locked",
    "holder",
    "describe_holder",
    "begin_run",
    "finish_run",
    "manifest",
    "run_state",
    "read_summary",
    "check_member",
]
