"""Reading a file so that nothing in it can hang, exhaust or confuse the loader.

Every loader opens its files through :func:`check_file` and :func:`read_json`:

* a missing file is a :class:`~circuitgraph.errors.MissingFileError` (also a ``FileNotFoundError``);
  a symlink loop, a dangling link, a directory, a pipe or a device each get their own message, so
  a loop never reads as "missing" and a FIFO never blocks the loader;
* a file larger than :data:`~circuitgraph.files.schema.LIMITS` allows is refused before it is read;
* JSON is parsed with its nesting depth and string lengths bounded (no ``RecursionError``), and
  with ``NaN``/``Infinity`` refused where the format says so.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from circuitgraph.errors import CircuitGraphError, FileFormatError, MissingFileError
from circuitgraph.files.schema import LIMITS, key


def check_file(path: str | Path, kind: type[CircuitGraphError] = FileFormatError, missing: str = "") -> os.stat_result:
    """``os.stat(path)`` of a regular file, or an error that says what is there instead.

    ``missing`` is added to the message of a missing file (what the reader should do)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():
            raise kind(f"{path}: is a symbolic link to {os.readlink(path)!r}, which does not exist") from None
        raise MissingFileError(f"{path}: no such file{'; ' + missing if missing else ''}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise kind(f"{path}: is a symbolic link loop ({e.strerror}); point the link at a real file") from None
        raise kind(f"{path}: cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise kind(f"{path}: is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise kind(
            f"{path}: is not a regular file (a pipe, socket or device); loaders read regular files only, "
            "so that reading can neither block nor run forever"
        )
    return st


def read_text(
    path: str | Path, kind: type[CircuitGraphError] = FileFormatError, max_bytes: int = LIMITS.max_json_bytes
) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` bytes."""
    path = Path(path)
    st = check_file(path, kind)
    if st.st_size > max_bytes:
        raise kind(f"{path}: is {st.st_size:,} bytes; files of this kind are at most {max_bytes:,} bytes")
    try:
        with open(path, "rb") as f:
            data = f.read(st.st_size + 1)  # (f.read(n) allocates n bytes up front: never the limit itself)
    except OSError as e:
        raise kind(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(data) > st.st_size:
        raise kind(f"{path}: grew while it was read; read it when the program writing it has finished")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise kind(f"{path}: is not UTF-8 text ({e.reason} at byte {e.start}); the file is corrupted") from None


def parse_json(
    text: str, source: object, kind: type[CircuitGraphError] = FileFormatError, allow_nan: bool = True
) -> Any:
    """Parse ``text`` as one JSON value, bounded: nesting at most ``LIMITS.max_depth`` levels, every
    string (and key) at most ``LIMITS.max_string`` characters, and with ``allow_nan=False`` no
    ``NaN``/``Infinity``."""

    def no_constant(name: str) -> Any:
        raise kind(f"{source}: {name} is not allowed in this file (plain JSON numbers only)")

    try:
        doc = json.loads(text, parse_constant=None if allow_nan else no_constant)
    except json.JSONDecodeError as e:
        raise kind(f"{source}: not valid JSON ({e}); the file is corrupted or truncated") from None
    except RecursionError:
        raise kind(f"{source}: JSON nested deeper than {LIMITS.max_depth} levels; the file is corrupted") from None
    except ValueError as e:  # e.g. an integer literal longer than Python's digit limit
        raise kind(f"{source}: not valid JSON ({e})") from None
    check_bounds(doc, source, kind)
    return doc


def check_bounds(doc: Any, source: object, kind: type[CircuitGraphError] = FileFormatError) -> None:
    """Nesting depth and string lengths of a parsed document, walked without recursion."""
    # entries: (value, depth, parent entry index, key); the path is rebuilt only for an error
    entries: list[tuple[Any, int, int, Any]] = [(doc, 0, -1, None)]
    i = 0
    while i < len(entries):
        value, depth, _, _ = entries[i]
        if isinstance(value, (dict, list)):
            if depth >= LIMITS.max_depth:
                raise kind(f"{source}: {_path(entries, i)}: JSON nested deeper than {LIMITS.max_depth} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                if isinstance(k, str) and len(k) > LIMITS.max_string:
                    raise kind(
                        f"{source}: {_path(entries, i)}: a key of {len(k):,} characters (at most {LIMITS.max_string:,})"
                    )
                entries.append((v, depth + 1, i, k))
        elif isinstance(value, str) and len(value) > LIMITS.max_string:
            raise kind(
                f"{source}: {_path(entries, i)}: a string of {len(value):,} characters (at most {LIMITS.max_string:,})"
            )
        i += 1


def _path(entries: list[tuple[Any, int, int, Any]], i: int) -> str:
    keys = []
    while entries[i][2] >= 0:
        keys.append(entries[i][3])
        i = entries[i][2]
    path = "$"
    for k in reversed(keys):
        path = key(path, k)
    return path


def read_json(
    path: str | Path,
    kind: type[CircuitGraphError] = FileFormatError,
    allow_nan: bool = True,
    max_bytes: int = LIMITS.max_json_bytes,
) -> Any:
    """The JSON document in ``path``, read and parsed within the limits (see :func:`parse_json`)."""
    return parse_json(read_text(path, kind, max_bytes), path, kind, allow_nan)


__all__ = ["check_file", "read_text", "parse_json", "check_bounds", "read_json"]
