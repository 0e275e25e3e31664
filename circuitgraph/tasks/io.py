"""Tasks from files: JSONL or CSV with columns ``clean``, ``corrupted``, ``answer`` and
optionally ``wrong`` (strings, tokenized with the model's tokenizer, or JSON lists of token ids).

Every row is checked against :data:`TASK_ROW` before a tensor is made from it: token ids are
non-negative integers (never booleans, never floats) of bounded size, prompts are bounded in
length, and with a model the ids are checked against its vocabulary and context at once, with the
file named in the error.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from circuitgraph.errors import TaskError
from circuitgraph.files.reading import parse_json, read_text
from circuitgraph.files.schema import LIMITS, Either, Int, ListOf, Null, Obj, Str, validate
from circuitgraph.tasks.metrics import Metric
from circuitgraph.tasks.task import Task

REQUIRED = ("clean", "corrupted")
TOKEN_IDS = ListOf(
    Int(0, LIMITS.max_token_id), min_len=1, max_len=LIMITS.max_positions
)  # a prompt as ids: [1, 2, 3], no booleans
_PROMPT = Either(Str(), TOKEN_IDS, label="a prompt: text, or a list of integer token ids")
_ANSWER = Either(
    Str(), Int(0, LIMITS.max_token_id), TOKEN_IDS, Null(), label="an answer: text, a token id or a list of token ids"
)
# one row of a task file, declaratively (other columns are ignored)
TASK_ROW = Obj(
    required={"clean": _PROMPT, "corrupted": _PROMPT},
    optional={"answer": _ANSWER, "wrong": _ANSWER},
    label="a row {clean, corrupted, answer[, wrong]}",
)


def load_task(path: str | Path, model=None, metric: str | Metric = "logit_diff", name: str | None = None) -> Task:
    """Read a task file. String prompts need ``model`` (for its tokenizer); id lists do not. With
    ``model``, token ids are checked against its vocabulary and context here."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise TaskError(f"task file {path} has no examples")
    missing = [c for c in REQUIRED if c not in rows[0]] if isinstance(rows[0], dict) else []
    if missing:
        raise TaskError(f"task file {path} lacks column(s) {missing}; it needs clean, corrupted, answer[, wrong]")
    for i, row in enumerate(rows):
        validate(row, TASK_ROW, f"task file {path}, row {i}", TaskError)
    name = name or path.stem
    cols = _columns(rows)
    if isinstance(cols["clean"][0], str) and not cols["clean"][0].lstrip().startswith("["):
        if model is None:
            raise TaskError(f"task file {path} holds text prompts: pass model= so they can be tokenized")
        return Task.from_strings(
            model, cols["clean"], cols["corrupted"], cols["answer"], cols["wrong"], metric=metric, name=name
        )
    task = _id_task(cols, path, model, metric, name)
    if model is not None:
        try:
            task.check_model(model)
        except TaskError as e:
            raise type(e)(f"task file {path}: {e}") from None
    return task


def _columns(rows: list[dict]) -> dict[str, list | None]:
    """The four columns; ``answer`` / ``wrong`` become None when any row leaves them empty."""
    cols: dict[str, list | None] = {c: [r.get(c) for r in rows] for c in ("clean", "corrupted", "answer", "wrong")}
    for c in ("wrong", "answer"):
        if any(v is None or v == "" for v in cols[c]):
            cols[c] = None
    return cols


def _id_task(cols: dict[str, list | None], path: Path, model, metric: str | Metric, name: str) -> Task:
    """A task from token-id columns (JSON lists, or strings holding them): no tokenizer needed."""
    as_ids = {k: ([_ids(x, path, i, k) for i, x in enumerate(v)] if v is not None else None) for k, v in cols.items()}
    lengths = {len(x) for x in as_ids["clean"]} | {len(x) for x in as_ids["corrupted"]}
    if len(lengths) != 1:
        raise TaskError(
            f"task file {path}: token-id prompts must all have the same length, found lengths {sorted(lengths)}"
        )
    dev = model.cfg.device if model is not None else "cpu"

    def t(v):
        return None if v is None else torch.tensor(v, dtype=torch.long, device=dev)

    return Task(
        clean=t(as_ids["clean"]),
        corrupted=t(as_ids["corrupted"]),
        answer=t(as_ids["answer"]),
        wrong=t(as_ids["wrong"]),
        metric=metric,
        name=name,
    )


def _read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".tsv"):
        raise TaskError(f"unsupported task file type {path.suffix!r}; use .jsonl, .json, .csv or .tsv")
    text = read_text(path, TaskError)
    if suffix in (".jsonl", ".json"):
        return [
            parse_json(line, f"{path}:{i + 1} (each line must be one JSON object)", TaskError, allow_nan=False)
            for i, line in enumerate(text.splitlines())
            if line.strip()
        ]
    rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ","))
    # a short row leaves missing columns as None, a long one puts the excess under None: both are malformed
    return [{k: v for k, v in r.items() if k is not None and v is not None} for r in rows]


def _ids(x, path: Path, i: int, column: str):
    """An id-valued cell: a list of ids (a JSON list, or a CSV string holding one) or one id."""
    where = f"task file {path}, row {i}"
    if isinstance(x, str):
        if not x.strip().lstrip("-").isdigit() and not x.lstrip().startswith("["):
            raise TaskError(f"{where}: {x!r} is neither text (needs model=) nor a list of ids")
        x = parse_json(x, f"{where}, column {column}", TaskError, allow_nan=False)
    return validate(x, Either(Int(0, LIMITS.max_token_id), TOKEN_IDS), where, TaskError, path=f"$.{column}")
