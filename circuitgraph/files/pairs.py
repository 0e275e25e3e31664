"""A JSON file and its safetensors sibling, bound so that halves of two saves never load as one.

Writing (:func:`write_tensors`) draws a fresh *pair id*, puts it in the safetensors header and
returns it with the SHA-256 of the written tensor file; the caller records both in its JSON
(``"pair_id"``, ``"tensors_sha256"``) and writes the JSON second. Reading (:func:`read_tensors`)
checks, in this order and before any tensor is allocated:

1. the tensor file is a regular file; its header parses;
2. the pair id in its header equals the JSON's, and its content hash equals the JSON's record;
3. every tensor the format names is there, with its dtype and shape (:class:`TensorSpec`);

then loads the tensors and refuses NaN (and, where the spec says finite, ±inf), naming the tensor
and the count. A JSON half without a binding (files written before bindings existed) is
read only with an unbound tensor half: a bound half never pairs with an unbound one.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from circuitgraph.atomic import atomic_write
from circuitgraph.errors import CircuitGraphError, FileFormatError
from circuitgraph.files.reading import check_file
from circuitgraph.files.schema import Str

PAIR_ID = "pair_id"
TENSORS_SHA256 = "tensors_sha256"
# the two binding keys as a JSON file declares them (part of each format's schema)
BINDING_FIELDS = {
    PAIR_ID: Str(pattern=r"[0-9a-f]{32}", label="a pair id (32 hex digits)"),
    TENSORS_SHA256: Str(pattern=r"[0-9a-f]{64}", label="a SHA-256 digest (64 hex digits)"),
}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_TORCH_DTYPES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.bool: "BOOL",
    torch.int64: "I64",
    torch.int32: "I32",
}


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (no more memory than that, whatever its size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Binding:
    """What ties a JSON file to its tensor file: a pair id in both, and the tensor file's hash."""

    pair_id: str
    tensors_sha256: str

    def to_json(self) -> dict[str, str]:
        return {PAIR_ID: self.pair_id, TENSORS_SHA256: self.tensors_sha256}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], source: object, kind: type[CircuitGraphError]) -> Binding | None:
        """The binding a (schema-checked) JSON document records, or None for an unbound file."""
        has = [k for k in (PAIR_ID, TENSORS_SHA256) if doc.get(k) is not None]
        if not has:
            return None
        if len(has) == 1:
            lacking = PAIR_ID if has == [TENSORS_SHA256] else TENSORS_SHA256
            raise kind(f"{source}: has {has[0]!r} but not {lacking!r}; a bound file records both (re-save it)")
        return cls(doc[PAIR_ID], doc[TENSORS_SHA256])


def write_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Binding:
    """Write ``tensors`` atomically with ``metadata`` and a fresh pair id in the header; return the
    binding for the JSON half to record."""
    pair_id = uuid.uuid4().hex
    digest: dict[str, str] = {}

    def write(tmp: Path) -> None:
        save_file(dict(tensors), str(tmp), metadata={**metadata, PAIR_ID: pair_id})
        digest["sha256"] = sha256_file(tmp)  # hashed before the rename: the file that lands is this one

    atomic_write(path, write)
    return Binding(pair_id, digest["sha256"])


@dataclass(frozen=True)
class TensorSpec:
    """What a format says a tensor is: its dtype(s) (safetensors codes: ``F32``, ``BOOL``, …), its
    shape (``None`` for any extent of a dimension; ``shape=None`` for any shape), whether its values
    must be finite (else: only never NaN), and whether it must be present."""

    dtypes: tuple[str, ...]
    shape: tuple[int | None, ...] | None = None
    finite: bool = False
    required: bool = True

    def describe(self) -> str:
        shape = (
            "any shape"
            if self.shape is None
            else "[" + ", ".join("*" if d is None else str(d) for d in self.shape) + "]"
        )
        return f"{'/'.join(self.dtypes)} {shape}"

    def fits(self, dtype: str, shape: list[int]) -> bool:
        if dtype not in self.dtypes:
            return False
        if self.shape is None:
            return True
        return len(shape) == len(self.shape) and all(w is None or w == s for w, s in zip(self.shape, shape))


def read_header(
    path: str | Path, kind: type[CircuitGraphError] = FileFormatError
) -> tuple[dict[str, str], dict[str, tuple[str, list[int]]]]:
    """``(metadata, {tensor: (dtype code, shape)})`` of a safetensors file, without loading a tensor."""
    check_file(path, kind)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            info = {k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise kind(f"{path}: is corrupted or truncated ({e}); re-save it") from None
    return meta, info


def check_binding(
    path: Path, meta: Mapping[str, str], binding: Binding | None, json_source: object, kind: type[CircuitGraphError]
) -> None:
    """The tensor file at ``path`` (header ``meta``) is the one the JSON half recorded."""
    theirs = meta.get(PAIR_ID)
    if binding is None:
        if theirs is not None:
            raise kind(
                f"{json_source} records no pair id but {path.name} has one ({theirs}): the two files come from "
                "different saves (an interrupted rewrite, or one file copied over another). Re-save or rerun"
            )
        return
    if theirs != binding.pair_id:
        raise kind(
            f"{json_source} and {path.name} come from different saves (pair id {binding.pair_id} in the JSON, "
            f"{theirs} in the tensor file), e.g. a run interrupted while it rewrote them. Re-save or rerun; "
            "never mix the halves of two saves"
        )
    actual = sha256_file(path)
    if actual != binding.tensors_sha256:
        raise kind(
            f"{path.name} has changed since {json_source} was written (SHA-256 {actual[:16]}…, recorded "
            f"{binding.tensors_sha256[:16]}…): its tensors are not the ones saved. Re-save or rerun"
        )


def read_tensors(
    path: str | Path,
    specs: Mapping[str, TensorSpec],
    kind: type[CircuitGraphError] = FileFormatError,
    *,
    binding: Binding | None = None,
    json_source: object = None,
    schema: str | None = None,
    extra: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of ``path`` named by ``specs`` and its header metadata, checked as the module
    docstring says. ``json_source``: the JSON half (for messages); ``schema``: the header's
    required ``schema`` value; ``extra=False`` refuses tensors the specs do not name."""
    meta = check_tensor_file(path, specs, kind, binding=binding, json_source=json_source, schema=schema, extra=extra)
    return load_tensors(path, specs, kind, extra=extra), meta


def check_tensor_file(
    path: str | Path,
    specs: Mapping[str, TensorSpec],
    kind: type[CircuitGraphError] = FileFormatError,
    *,
    binding: Binding | None = None,
    json_source: object = None,
    schema: str | None = None,
    extra: bool = True,
) -> dict[str, str]:
    """Everything :func:`read_tensors` checks before it loads a tensor (steps 1-3 of the module
    docstring); the header metadata. For loaders that size something else (a graph) in between."""
    path = Path(path)
    meta, info = read_header(path, kind)
    if schema is not None and meta.get("schema") != schema:
        raise kind(
            f"{path}: its header says schema {meta.get('schema')!r}, expected {schema!r}; it is not this kind of file"
        )
    if json_source is not None:
        check_binding(path, meta, binding, json_source, kind)
    missing = [k for k, s in specs.items() if s.required and k not in info]
    if missing:
        raise kind(f"{path}: lacks tensor(s) {missing} (it has {sorted(info)})")
    if not extra and set(info) - set(specs):
        raise kind(f"{path}: holds unexpected tensor(s) {sorted(set(info) - set(specs))}")
    for k, s in specs.items():
        if k in info and not s.fits(*info[k]):
            dtype, shape = info[k]
            raise kind(f"{path}: tensor {k!r} is {dtype} {shape}, expected {s.describe()}")
    return meta


def load_tensors(
    path: str | Path,
    specs: Mapping[str, TensorSpec],
    kind: type[CircuitGraphError] = FileFormatError,
    extra: bool = True,
) -> dict[str, torch.Tensor]:
    """The tensors of a file :func:`check_tensor_file` accepted, with NaN refused (and ±inf where
    a spec says finite)."""
    path = Path(path)
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                if k in specs or extra:
                    out[k] = f.get_tensor(k)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise kind(f"{path}: is corrupted or truncated ({e}); re-save it") from None
    for k, s in specs.items():
        if k in out:
            check_finite(out[k], f"{path}: tensor {k!r}", kind, allow_inf=not s.finite)
    return out


def check_finite(t: torch.Tensor, what: str, kind: type[CircuitGraphError], allow_inf: bool = False) -> None:
    """Refuse NaN (and unless ``allow_inf``, ±inf) in ``t``, with the count and the first index.
    Checked 2**22 values at a time, so no temporary of ``t``'s size is made."""
    if not t.is_floating_point():
        return
    flat, step = t.reshape(-1), 1 << 22
    n, first_flat = 0, None
    for i in range(0, flat.numel(), step):
        chunk = flat[i : i + step]
        if bool(torch.isfinite(chunk.sum())):  # the usual case, in one read-only pass: no NaN, no inf
            continue
        bad = chunk.isnan() if allow_inf else ~torch.isfinite(chunk)
        found = int(torch.count_nonzero(bad))
        if found and first_flat is None:
            first_flat = i + int(bad.nonzero()[0, 0])
        n += found
    if n:
        first = [int(x) for x in torch.unravel_index(torch.tensor(first_flat), t.shape)] if t.dim() else []
        if allow_inf:
            raise kind(f"{what} has {n} NaN value(s) (first at index {first}); NaN is never a valid value here")
        raise kind(
            f"{what} has {n} non-finite value(s) (NaN or ±inf; first at index {first}); finite values are required"
        )


def dtype_code(t: torch.Tensor) -> str:
    """The safetensors code of a tensor's dtype (``F32``, ``BOOL``, …)."""
    return _TORCH_DTYPES.get(t.dtype, str(t.dtype))


__all__ = [
    "PAIR_ID",
    "TENSORS_SHA256",
    "BINDING_FIELDS",
    "FLOAT_DTYPES",
    "Binding",
    "TensorSpec",
    "sha256_file",
    "write_tensors",
    "read_header",
    "check_binding",
    "check_tensor_file",
    "load_tensors",
    "read_tensors",
    "check_finite",
    "dtype_code",
]
