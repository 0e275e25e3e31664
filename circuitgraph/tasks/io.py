"""Tasks from files: JSONL or CSV with columns ``clean``, ``corrupted``, ``answer`` and
optionally ``wrong`` (strings, tokenized with the model's tokenizer, or JSON lists of token ids).

:func:`check_task_file` reads and checks a file without a model (columns, empty cells, token-id
lists), so the command line can refuse a bad file before it spends seconds loading a model. Every
row is also checked against :data:`TASK_ROW` before a tensor is made from it: token ids are
non-negative integers (never booleans, never floats) of bounded size, prompts are bounded in
length, the file is read within the limits of :mod:`circuitgraph.files.reading`, and with a model
the ids are checked against its vocabulary and context at once, with the file named in the error.
"""

from __future__ import annotations

import csv
import difflib
import io
from pathlib import Path

import torch

from circuitgraph.errors import MissingFileError, TaskError
from circuitgraph.files.reading import parse_json, read_text
from circuitgraph.files.schema import LIMITS, Either, Int, ListOf, Null, Obj, Str, validate
from circuitgraph.tasks.metrics import Metric
from circuitgraph.tasks.task import Task

REQUIRED = ("clean", "corrupted")
COLUMNS = ("clean", "corrupted", "answer", "wrong")
# Metrics that read the answer token (the others compare with the clean run's output).
NEEDS_ANSWER = ("logit_diff", "prob_diff", "cross_entropy")
# a prompt as token ids: [1, 2, 3] (no booleans, no floats, bounded)
TOKEN_IDS = ListOf(Int(0, LIMITS.max_token_id), min_len=1, max_len=LIMITS.max_positions)
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
    rows = check_task_file(path, metric=metric if isinstance(metric, str) else None)
    name = name or path.stem
    cols = _columns(rows)
    clean, corrupted = cols["clean"], cols["corrupted"]
    assert clean is not None and corrupted is not None  # required columns: _columns never drops them
    if _is_text(clean[0]):
        if model is None:
            raise TaskError(f"task file {path} holds text prompts: pass model= so they can be tokenized")
        return Task.from_strings(model, clean, corrupted, cols["answer"], cols["wrong"], metric=metric, name=name)
    task = _id_task(cols, path, model, metric, name)
    assert task is not None
    if model is not None:
        try:
            task.check_model(model)
        except TaskError as e:
            raise type(e)(f"task file {path}: {e}") from None
    return task


def check_task_file(path: str | Path, metric: str | None = None) -> list[dict]:
    """The rows of a task file, checked without a model; a :class:`TaskError` naming the row and
    the fix for a missing or misspelled column, an empty cell, mixed text and id prompts, or
    token-id prompts of different lengths. ``metric`` (a name) also checks that the answers it
    reads are there."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise MissingFileError(f"task file {path} does not exist")
    rows = _read_rows(path)
    if not rows:
        raise TaskError(f"task file {path} has no examples")
    for i, row in enumerate(rows):
        _check_row(row, i, path)
        validate({k: v for k, v in row.items() if k is not None}, TASK_ROW, f"task file {path} row {i + 1}", TaskError)
    text = [_is_text(r["clean"]) for r in rows]
    if any(text) and not all(text):
        i = text.index(not text[0])
        raise TaskError(
            f"task file {path}: row {i + 1} holds {'text' if text[i] else 'token ids'} but row 1 holds "
            f"{'text' if text[0] else 'token ids'}; use one kind of prompt for the whole file"
        )
    if not text[0]:
        _id_task(_columns(rows), path, None, metric or "logit_diff", path.stem, build=False)
    if metric in NEEDS_ANSWER:
        empty = [i + 1 for i, r in enumerate(rows) if r.get("answer") in (None, "")]
        if empty:
            raise TaskError(
                f"task file {path}: metric {metric} reads the answer token, but row(s) {empty[:5]} have no "
                "'answer'; add an answer column or use task.metric=kl (compares with the clean output)"
            )
    return rows


def _check_row(row, i: int, path: Path) -> None:
    """One row's columns: a misspelled known column is named, with the column it resembles."""
    if not isinstance(row, dict):
        raise TaskError(f"{path} row {i + 1} is {type(row).__name__}, not an object with columns {', '.join(COLUMNS)}")
    keys = [k for k in row if k is not None]
    for k in keys:
        if k in COLUMNS:
            continue
        close = difflib.get_close_matches(str(k), COLUMNS, n=1, cutoff=0.6)
        if close and close[0] not in row:
            raise TaskError(
                f"task file {path} row {i + 1}: unknown column {k!r}. Did you mean {close[0]!r}? "
                f"The columns are {', '.join(COLUMNS[:3])}[, {COLUMNS[3]}] (other columns are ignored)."
            )
    missing = [c for c in REQUIRED if c not in row]
    if missing:
        raise TaskError(
            f"task file {path} row {i + 1} lacks column(s) {missing} (it has {sorted(map(str, keys))}); "
            "every row needs clean, corrupted, answer[, wrong]"
        )
    blank = [c for c in REQUIRED if row[c] is None or row[c] == ""]
    if blank:
        raise TaskError(f"task file {path} row {i + 1}: column(s) {blank} are empty")


def _is_text(x) -> bool:
    return isinstance(x, str) and not x.lstrip().startswith("[")


def _columns(rows: list[dict]) -> dict[str, list | None]:
    """The four columns; ``answer`` / ``wrong`` become None when any row leaves them empty."""
    lists = {c: [r.get(c) for r in rows] for c in ("clean", "corrupted", "answer", "wrong")}
    cols: dict[str, list | None] = dict(lists)
    for c in ("wrong", "answer"):
        if any(v is None or v == "" for v in lists[c]):
            cols[c] = None
    return cols


def _id_task(
    cols: dict[str, list | None], path: Path, model, metric: str | Metric, name: str, build: bool = True
) -> Task | None:
    """A task from token-id columns (JSON lists, or strings holding them): no tokenizer needed.
    ``build=False`` only checks the ids."""
    as_ids = {k: ([_ids(x, path, i, k) for i, x in enumerate(v)] if v is not None else None) for k, v in cols.items()}
    clean, corrupted = as_ids["clean"], as_ids["corrupted"]
    assert clean is not None and corrupted is not None  # required columns: _columns never drops them
    lengths = {len(x) for x in clean} | {len(x) for x in corrupted}
    if len(lengths) != 1:
        raise TaskError(
            f"task file {path}: token-id prompts must all have the same length, found lengths {sorted(lengths)}"
        )
    if not build:
        return None
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
    text = read_text(path, TaskError)  # a regular file of bounded size
    if suffix in (".jsonl", ".json"):
        return [
            parse_json(line, f"{path}:{i + 1} (each line must be one JSON object)", TaskError, allow_nan=False)
            for i, line in enumerate(text.splitlines())
            if line.strip()
        ]
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ","))


def _ids(x, path: Path, i: int, column: str):
    """An id-valued cell: a list of ids (a JSON list, or a CSV string holding one) or one id."""
    where = f"task file {path} row {i + 1}"
    if isinstance(x, str):
        if not x.strip().lstrip("-").isdigit() and not x.lstrip().startswith("["):
            raise TaskError(f"{where}: {x!r} is neither text (needs model=) nor a list of ids")
        x = parse_json(x, f"{where}, column {column}", TaskError, allow_nan=False)
    return validate(x, Either(Int(0, LIMITS.max_token_id), TOKEN_IDS), where, TaskError, path=f"$.{column}")
