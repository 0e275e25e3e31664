"""Progress for long loops, and for the phases of a run, that leaves a clean log.

On a terminal a tqdm bar appears after two seconds and erases itself when done. When stderr is
not a terminal (piped, redirected, a batch job) there is no carriage-return animation to garble
the log: a plain line at most every ``PLAIN_EVERY`` seconds, and one when a loop that took a
while finishes. In a notebook, tqdm's widget.

Inside a :func:`phase` (the command line wraps select, verify, curve and scrub in one), every
loop feeds the phase's single bar, so a phase made of many short evaluations still shows one
line that moves, labelled with the phase's name. Loops whose caller passes ``progress=None``
report only inside a phase, so library calls stay quiet unless asked.
"""

from __future__ import annotations

import contextvars
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

DELAY = 2.0  # seconds before anything is shown: short loops stay silent
PLAIN_EVERY = 15.0  # seconds between plain lines when stderr is not a terminal

_PHASE: contextvars.ContextVar[_Phase | None] = contextvars.ContextVar("circuitgraph_phase", default=None)


def interactive() -> bool:
    """Whether progress may animate: stderr is a terminal, or we run in a notebook kernel."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)()) or "ipykernel" in sys.modules


class _Null:
    """A progress bar that shows nothing."""

    def update(self, n: float = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _Plain:
    """Plain lines for a log: a line at most every ``PLAIN_EVERY`` s once ``DELAY`` has passed,
    and a last one at the end when any was printed (a short loop leaves no line at all)."""

    def __init__(self, total: float | None, desc: str, unit: str, note: str = "") -> None:
        self.total, self.desc, self.unit, self.note = total, desc, unit, note
        self.n = 0.0
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.printed = False

    def _line(self, end: str = "") -> None:
        elapsed = time.perf_counter() - self.t0
        of = f" of {self.total:g}" if self.total else ""
        note = f" ({self.note})" if self.note else ""
        print(f"{self.desc}: {self.n:g}{of} {self.unit}s, {elapsed:.0f} s{note}{end}", file=sys.stderr, flush=True)
        self.printed = True

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.t0 >= DELAY and now - self.last >= PLAIN_EVERY:
            self.last = now
            self._line()

    def close(self) -> None:
        if self.printed:
            self._line(", done")


def _bar(total: float | None, desc: str, unit: str, note: str = "") -> Any:
    if interactive():
        # the width from the terminal, with a fallback: some terminals report 0 columns, where
        # tqdm would draw nothing at all
        width = shutil.get_terminal_size().columns or 80
        return tqdm(total=total, desc=desc, unit=unit, delay=DELAY, leave=False, ncols=width, postfix=note or None)
    return _Plain(total, desc, unit, note)


def _set_note(bar: Any, note: str) -> None:
    """Show ``note`` after the bar's count (tqdm's postfix; a plain line's parenthesis)."""
    if not note:
        return
    if isinstance(bar, _Plain):
        bar.note = note
    elif hasattr(bar, "set_postfix_str"):
        bar.set_postfix_str(note, refresh=False)


class _Phase:
    """A named phase: one bar that every loop inside it feeds (its total grows as loops start)."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name, self.enabled = name, enabled
        self.bar: Any = None

    def child(self, total: float | None, unit: str, note: str = "") -> Any:
        if not self.enabled:
            return _Null()
        if self.bar is None:
            self.bar = _bar(total, self.name, unit, note)
        else:
            if total:
                self.bar.total = (self.bar.total or 0) + total
            _set_note(self.bar, note)
        return _Child(self.bar)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Child:
    """A loop inside a phase: updates go to the phase's bar, closing is the phase's business."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def update(self, n: float = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        pass


def progress_bar(total: float | None, desc: str, enabled: bool | None = True, unit: str = "it", note: str = "") -> Any:
    """A bar for one loop (``update(n)``, ``close()``). Inside a :func:`phase` it feeds the phase's
    bar (``enabled=False`` still silences it); outside one, ``enabled=None`` means quiet. ``note``
    follows the count on the line (e.g. the memory budget a loop works within)."""
    ph = _PHASE.get()
    if ph is not None:
        return ph.child(total, unit, note) if enabled is not False else _Null()
    if not enabled:
        return _Null()
    return _bar(total, desc, unit, note)


@contextmanager
def phase(name: str, enabled: bool = True) -> Iterator[None]:
    """Run a phase of work under one progress line named ``name``."""
    ph = _Phase(name, enabled)
    token = _PHASE.set(ph)
    try:
        yield
    finally:
        _PHASE.reset(token)
        ph.close()
