"""Tasks from files: JSONL or CSV with columns ``clean``, ``corrupted``, ``answer`` and
optionally ``wrong`` (strings, tokenized with the model's tokenizer, or JSON lists of token ids)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TypedDict

import torch

from circuitgraph.errors import TaskError
from circuitgraph.tasks.metrics import Metric
from circuitgraph.tasks.task import Task

REQUIRED = ("clean", "corrupted")


def load_task(path: str | Path, model=None, metric: str | Metric = "logit_diff", name: str | None = None) -> Task:
    """Read a task file. String prompts need ``model`` (for its tokenizer); id lists do not."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"task file {path} does not exist")
    rows = _read_rows(path)
    if not rows:
        raise TaskError(f"task file {path} has no examples")
    missing = [c for c in REQUIRED if c not in rows[0]]
    if missing:
        raise TaskError(f"task file {path} lacks column(s) {missing}; it needs clean, corrupted, answer[, wrong]")
    name = name or path.stem
    cols = _columns(rows)
    clean, corrupted = cols["clean"], cols["corrupted"]
    if isinstance(clean[0], str) and not clean[0].lstrip().startswith("["):
        if model is None:
            raise TaskError(f"task file {path} holds text prompts: pass model= so they can be tokenized")
        return Task.from_strings(model, clean, corrupted, cols["answer"], cols["wrong"], metric=metric, name=name)
    return _id_task(cols, path, model, metric, name)


class _Columns(TypedDict):
    clean: list
    corrupted: list
    answer: list | None
    wrong: list | None


def _columns(rows: list[dict]) -> _Columns:
    """The four columns; ``answer`` / ``wrong`` become None when any row leaves them empty."""

    def column(c: str) -> list:
        return [r.get(c) for r in rows]

    def optional(c: str) -> list | None:
        values = column(c)
        return None if any(v is None or v == "" for v in values) else values

    return _Columns(
        clean=column("clean"), corrupted=column("corrupted"), answer=optional("answer"), wrong=optional("wrong")
    )


def _id_task(cols: _Columns, path: Path, model, metric: str | Metric, name: str) -> Task:
    """A task from token-id columns (JSON lists, or strings holding them): no tokenizer needed."""

    def ids(v: list) -> list:
        return [_ids(x, path, i) for i, x in enumerate(v)]

    clean, corrupted = ids(cols["clean"]), ids(cols["corrupted"])
    answer = None if cols["answer"] is None else ids(cols["answer"])
    wrong = None if cols["wrong"] is None else ids(cols["wrong"])
    lengths = {len(x) for x in clean} | {len(x) for x in corrupted}
    if len(lengths) != 1:
        raise TaskError(
            f"task file {path}: token-id prompts must all have the same length, found lengths {sorted(lengths)}"
        )
    dev = model.cfg.device if model is not None else "cpu"

    def t(v):
        return None if v is None else torch.tensor(v, dtype=torch.long, device=dev)

    return Task(
        clean=t(clean),
        corrupted=t(corrupted),
        answer=t(answer),
        wrong=t(wrong),
        metric=metric,
        name=name,
    )


def _read_rows(path: Path) -> list[dict]:
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for i, line in enumerate(path.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise TaskError(
                    f"{path}:{i + 1} is not valid JSON ({e.msg}); each line must be one JSON object"
                ) from None
        return rows
    if path.suffix.lower() in (".csv", ".tsv"):
        with path.open(newline="") as f:
            return list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    raise TaskError(f"unsupported task file type {path.suffix!r}; use .jsonl, .json, .csv or .tsv")


def _ids(x, path, i):
    if isinstance(x, str):
        try:
            x = json.loads(x)
        except json.JSONDecodeError:
            raise TaskError(f"{path} row {i}: {x!r} is neither text (needs model=) nor a list of ids") from None
    if isinstance(x, int):
        return x
    if not isinstance(x, list) or not all(isinstance(v, int) for v in x):
        raise TaskError(f"{path} row {i}: expected a list of integer token ids, got {x!r}")
    return x
