"""One way to write result files: to a temporary sibling, then rename.

An interrupted run (Ctrl-C, a crash, a full disk) therefore never leaves a half-written circuit,
score file or page behind, and a failed write keeps the previous file intact. A process killed
outright (SIGKILL, power loss) can leave its temporary file (``.<stem>.<random>.partial<suffix>``);
:func:`is_partial` recognises them, and the next run into the folder removes them."""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

PARTIAL = ".partial"
# Fault injection for the kill tests (tests/test_run_dir_kill.py): with CIRCUITGRAPH_FAULT=<point>
# (or <point>:stop) in the environment, the process SIGKILLs (or SIGSTOPs) itself at that point:
# right after the file named <point> is renamed into place (<name>.partial: just before, with the
# temporary file complete), or at a named step of a run (circuitgraph.files.rundir).
FAULT_ENV = "CIRCUITGRAPH_FAULT"


def is_partial(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_write`'s temporary files."""
    return name.startswith(".") and PARTIAL in name


def fault_point(name: str) -> None:
    """Die (or stop) here when ``CIRCUITGRAPH_FAULT`` names this point; otherwise nothing."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    point, _, action = wanted.partition(":")
    if point == name:
        os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``.

    The temporary name keeps ``path``'s suffix (writers that pick a format from it still work),
    the file gets ordinary permissions (mkstemp's are 0600), and it is removed if ``write`` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{PARTIAL}{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        fault_point(f"{path.name}{PARTIAL}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fault_point(path.name)
    return path
