"""One declarative schema per file format, checked before anything is allocated from the file.

A schema is a tree of small checkers (:class:`Int`, :class:`Float`, :class:`Bool`, :class:`Str`,
:class:`Null`, :class:`Either`, :class:`ListOf`, :class:`TupleOf`, :class:`Obj`, :class:`MapOf`,
:class:`Json`). :func:`validate` walks a parsed JSON document against one and raises the caller's
error type naming the file, the key path (``$.model.n_layers``) and what was expected. The rules
that make a file unable to lie by accident:

* a boolean is not an integer, and a string is not a boolean (``"split_qkv": "no"`` is refused,
  never read by truthiness);
* numbers are range-checked against :data:`LIMITS` before a graph, tensor or list is sized from
  them, so an edited ``n_layers`` cannot make a loader allocate for minutes;
* strings and free-form values are bounded (length, nesting depth).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from circuitgraph.errors import CircuitGraphError, FileFormatError


@dataclass(frozen=True)
class Limits:
    """What a file may ask for. Far above any real model (GPT-3 has 96 layers, 96 heads and
    d_model 12,288), far below what would hang a loader."""

    max_layers: int = 1024
    max_heads: int = 1024
    max_d_model: int = 1 << 17  # 131,072
    max_d_mlp: int = 1 << 20  # 1,048,576
    max_d_sae: int = 1 << 24  # 16,777,216 features
    max_positions: int = 1 << 16  # 65,536 token positions
    max_token_id: int = (1 << 31) - 1  # token ids (and vocabularies) fit an int32
    max_depth: int = 64  # JSON nesting
    max_string: int = 1 << 16  # characters in one JSON string
    max_json_bytes: int = 1 << 30  # one JSON (or JSONL / CSV) file


LIMITS = Limits()


class Violation(Exception):
    """A value that does not fit its schema: where (key path), what was expected, what was found."""

    def __init__(self, path: str, expected: str, got: Any = None, *, detail: str | None = None):
        self.path, self.expected, self.got, self.detail = path, expected, got, detail
        super().__init__(self.message())

    def message(self) -> str:
        if self.detail is not None:
            return f"{self.path}: {self.detail}"
        return f"{self.path}: expected {self.expected}, got {describe(self.got)}"


def describe(value: Any) -> str:
    """A value as an error shows it: its JSON type and a short repr."""
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return f"an {kind} of {len(value)} item(s)"
    text = repr(value)
    return f"{kind} {text[:60] + '…' if len(text) > 60 else text}"


def key(path: str, k: Any) -> str:
    """``$.a`` + ``b`` → ``$.a.b``; list indices as ``$.a[3]``; odd keys quoted."""
    if isinstance(k, int):
        return f"{path}[{k}]"
    return f"{path}.{k}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) else f"{path}[{k!r}]"


class Schema:
    """A checker for one JSON value. ``what`` is how an error names the expected value."""

    what = "a value"

    def check(self, value: Any, path: str) -> None:  # pragma: no cover - every schema overrides it
        raise NotImplementedError

    def accepts_type(self, value: Any) -> bool:
        """Whether ``value`` has this schema's JSON type (so :class:`Either` reports the right branch)."""
        return True


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" ≥ {lo}"
    return f" ≤ {hi}" if hi is not None else ""


@dataclass(frozen=True)
class Int(Schema):
    """An integer (never a boolean), optionally within ``[lo, hi]``."""

    lo: int | None = None
    hi: int | None = None

    @property
    def what(self) -> str:  # type: ignore[override]
        return f"an integer{_range(self.lo, self.hi)}"

    def accepts_type(self, value: Any) -> bool:
        return _is_int(value)

    def check(self, value: Any, path: str) -> None:
        if not _is_int(value) or (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise Violation(path, self.what, value)


@dataclass(frozen=True)
class Float(Schema):
    """A number (an integer is a number; a boolean is not); finite, or with ``finite=False`` also
    ±infinity. Never NaN: no schema has a use for a value that compares unequal to itself."""

    lo: float | None = None
    hi: float | None = None
    finite: bool = True

    @property
    def what(self) -> str:  # type: ignore[override]
        return f"a {'finite ' if self.finite else ''}number{_range(self.lo, self.hi)}" + (
            "" if self.finite else " (not NaN)"
        )

    def accepts_type(self, value: Any) -> bool:
        return _is_int(value) or isinstance(value, float)

    def check(self, value: Any, path: str) -> None:
        if not self.accepts_type(value):
            raise Violation(path, self.what, value)
        if isinstance(value, float) and not math.isfinite(value):
            if self.finite or math.isnan(value):
                raise Violation(path, self.what, value)
            return
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise Violation(path, self.what, value)


@dataclass(frozen=True)
class Bool(Schema):
    """``true`` or ``false``; not ``0``/``1``, not ``"no"``."""

    what = "true or false"

    def accepts_type(self, value: Any) -> bool:
        return isinstance(value, bool)

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, bool):
            raise Violation(path, self.what, value)


@dataclass(frozen=True)
class Str(Schema):
    """A string of bounded length, optionally one of ``choices`` or matching ``pattern``."""

    max_len: int = LIMITS.max_string
    min_len: int = 0
    choices: tuple[str, ...] | None = None
    pattern: str | None = None
    label: str | None = None

    @property
    def what(self) -> str:  # type: ignore[override]
        if self.label:
            return self.label
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.pattern is not None:
            return f"a string matching {self.pattern}"
        return "a non-empty string" if self.min_len else "a string"

    def accepts_type(self, value: Any) -> bool:
        return isinstance(value, str)

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, str):
            raise Violation(path, self.what, value)
        if not self.min_len <= len(value) <= self.max_len:
            raise Violation(
                path, self.what, detail=f"a string of {len(value)} characters (allowed: {self.min_len}..{self.max_len})"
            )
        if self.choices is not None and value not in self.choices:
            raise Violation(path, self.what, value)
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise Violation(path, self.what, value)


@dataclass(frozen=True)
class Null(Schema):
    what = "null"

    def accepts_type(self, value: Any) -> bool:
        return value is None

    def check(self, value: Any, path: str) -> None:
        if value is not None:
            raise Violation(path, self.what, value)


class Either(Schema):
    """One of several schemas. When exactly one option has the value's JSON type, that option's own
    error is reported (so a bad item deep inside a list names its own path)."""

    def __init__(self, *options: Schema, label: str | None = None):
        self.options = options
        self.label = label

    @property
    def what(self) -> str:  # type: ignore[override]
        return self.label or " or ".join(o.what for o in self.options)

    def accepts_type(self, value: Any) -> bool:
        return any(o.accepts_type(value) for o in self.options)

    def check(self, value: Any, path: str) -> None:
        typed = [o for o in self.options if o.accepts_type(value)]
        if len(typed) == 1:
            typed[0].check(value, path)
            return
        for o in typed:
            try:
                o.check(value, path)
                return
            except Violation:
                continue
        raise Violation(path, self.what, value)


def Optional(schema: Schema) -> Either:  # noqa: N802  (reads like the type it describes)
    """``schema`` or ``null``."""
    return Either(schema, Null())


@dataclass(frozen=True)
class ListOf(Schema):
    """An array of ``item`` with ``min_len..max_len`` entries; ``increasing``: strictly increasing
    (ids that a reader would otherwise sort and deduplicate, so that what loads is what is written)."""

    item: Schema
    max_len: int | None = None
    min_len: int = 0
    increasing: bool = False

    @property
    def what(self) -> str:  # type: ignore[override]
        n = f" of {self.min_len}..{self.max_len}" if self.max_len is not None else ""
        return f"an array{n} of {self.item.what}" + (", strictly increasing" if self.increasing else "")

    def accepts_type(self, value: Any) -> bool:
        return isinstance(value, list)

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, list):
            raise Violation(path, self.what, value)
        if len(value) < self.min_len or (self.max_len is not None and len(value) > self.max_len):
            hi = self.max_len if self.max_len is not None else "∞"
            raise Violation(path, self.what, detail=f"an array of {len(value)} items (allowed: {self.min_len}..{hi})")
        for i, v in enumerate(value):
            self.item.check(v, key(path, i))
        if self.increasing and any(a >= b for a, b in zip(value, value[1:])):
            i = next(i for i, (a, b) in enumerate(zip(value, value[1:])) if a >= b)
            raise Violation(
                path,
                self.what,
                detail=f"entries {i} and {i + 1} ({value[i]}, {value[i + 1]}) are not strictly increasing",
            )


class TupleOf(Schema):
    """A fixed-length array whose entries have their own schemas (``[src, dst, score]``)."""

    def __init__(self, *items: Schema):
        self.items = items

    @property
    def what(self) -> str:  # type: ignore[override]
        return "[" + ", ".join(i.what for i in self.items) + "]"

    def accepts_type(self, value: Any) -> bool:
        return isinstance(value, list)

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, list) or len(value) != len(self.items):
            raise Violation(path, self.what, value)
        for i, (s, v) in enumerate(zip(self.items, value)):
            s.check(v, key(path, i))


@dataclass(frozen=True)
class Json(Schema):
    """Any JSON value (free-form metadata). Depth and string lengths are bounded when the file is
    parsed (:func:`circuitgraph.files.reading.parse_json`), so there is nothing more to check here."""

    what = "a JSON value"

    def check(self, value: Any, path: str) -> None:
        return None


ANY = Json()


@dataclass(frozen=True)
class JsonObject(Schema):
    """A free-form JSON object (``{}``; not an array, not a string)."""

    what = "an object"

    def accepts_type(self, value: Any) -> bool:
        return isinstance(value, dict)

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise Violation(path, self.what, value)


@dataclass(frozen=True)
class Obj(Schema):
    """An object with ``required`` and ``optional`` keys, each with its schema. Other keys are
    checked with ``extra`` (default: any JSON value, since readers ignore keys they do not know);
    ``extra=None`` refuses them."""

    required: Mapping[str, Schema] = field(default_factory=dict)
    optional: Mapping[str, Schema] = field(default_factory=dict)
    extra: Schema | None = ANY
    label: str = "an object"

    @property
    def what(self) -> str:  # type: ignore[override]
        return self.label

    def accepts_type(self, value: Any) -> bool:
        return isinstance(value, dict)

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise Violation(path, self.what, value)
        missing = [k for k in self.required if k not in value]
        if missing:
            raise Violation(path, self.what, detail=f"missing key(s) {missing} (required: {list(self.required)})")
        for k, v in value.items():
            schema = self.required[k] if k in self.required else self.optional.get(k)
            if schema is None:
                if self.extra is None:
                    known = [*self.required, *self.optional]
                    raise Violation(key(path, k), "", detail=f"unknown key (known keys: {known})")
                schema = self.extra
            schema.check(v, key(path, k))


@dataclass(frozen=True)
class MapOf(Schema):
    """An object used as a map: every key matches ``key_pattern`` (a regex), every value ``value``."""

    value: Schema
    key_pattern: str = r".+"
    key_label: str = "a name"
    max_len: int | None = None

    @property
    def what(self) -> str:  # type: ignore[override]
        return f"an object mapping {self.key_label} to {self.value.what}"

    def accepts_type(self, value: Any) -> bool:
        return isinstance(value, dict)

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise Violation(path, self.what, value)
        if self.max_len is not None and len(value) > self.max_len:
            raise Violation(path, self.what, detail=f"an object of {len(value)} keys (allowed: at most {self.max_len})")
        for k, v in value.items():
            if not re.fullmatch(self.key_pattern, k):
                raise Violation(key(path, k), "", detail=f"key {k!r} is not {self.key_label}")
            self.value.check(v, key(path, k))


def validate(
    doc: Any, schema: Schema, source: object, kind: type[CircuitGraphError] = FileFormatError, path: str = "$"
) -> Any:
    """``doc`` if it fits ``schema``; otherwise ``kind("{source}: {key path}: expected …, got …")``."""
    try:
        schema.check(doc, path)
    except Violation as v:
        raise kind(f"{source}: {v.message()}") from None
    return doc


__all__ = [
    "LIMITS",
    "Limits",
    "Schema",
    "Violation",
    "Int",
    "Float",
    "Bool",
    "Str",
    "Null",
    "Either",
    "Optional",
    "ListOf",
    "TupleOf",
    "Json",
    "JsonObject",
    "ANY",
    "Obj",
    "MapOf",
    "validate",
    "describe",
]
