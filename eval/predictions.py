"""Predictions in: the kit's own files (checked complete) or a user's CSV/JSONL with question, answer, prediction."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable
from pathlib import Path

from eval.questions import iter_eval_rows
from kit.config import Config, KitError
from kit.files import read_text
from kit.specificity import SPECIFICITY_SPLITS

REQUIRED = ("question", "answer", "prediction")


def read_predictions(path: Path) -> list[dict]:
    """Rows of a CSV, TSV, JSON or JSONL predictions file, checked: required columns present, no empty question or
    answer. Raises KitError naming the file (and the row) when it is missing, unreadable, empty or incomplete."""
    import pandas as pd

    if not path.is_file():
        raise KitError(f"{path}: predictions file not found")
    if path.suffix.lower() == ".jsonl":
        return _check_rows(path, _read_jsonl_rows(path), first=1)
    text = io.StringIO(read_text(path, "predictions file"))
    try:
        if path.suffix.lower() == ".json":
            df = pd.read_json(text, dtype=False)
        elif path.suffix.lower() in (".csv", ".tsv"):
            df = pd.read_csv(text, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str,
                             keep_default_na=False)
        else:
            raise KitError(f"{path}: unsupported predictions format; use .csv, .tsv, .json or .jsonl")
    except ValueError as e:
        if isinstance(e, KitError):
            raise
        raise KitError(f"{path}: could not be read as {path.suffix} ({str(e).splitlines()[0][:200]})") from None
    if df.empty:
        raise KitError(f"{path}: has no rows")
    df = df.fillna("")
    return _check_rows(path, df.to_dict("records"), first=2 if path.suffix.lower() in (".csv", ".tsv") else 1)


def _read_jsonl_rows(path: Path) -> list[dict]:
    """A JSONL predictions file, line by line (the kit's own files can be large: never held as text besides the
    rows). A file that is not UTF-8 goes through read_text: UTF-16 is decoded, anything else named in an error."""
    try:
        with path.open(encoding="utf-8-sig") as f:
            return _json_lines(path, f)
    except UnicodeDecodeError:
        return _json_lines(path, read_text(path, "predictions file").splitlines())


def _json_lines(path: Path, lines: Iterable[str]) -> list[dict]:
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise KitError(f"{path}: line {n} is not JSON ({e}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise KitError(f"{path}: line {n} is not a JSON object")
        rows.append(row)
    return rows


def _check_rows(path: Path, rows: list[dict], first: int) -> list[dict]:
    """Required columns present, no empty question/answer; every value as a string ("" for a missing one). A row
    without an id is known by its place in the file ("row 3": the line of a CSV, the row of a JSONL)."""
    if not rows:
        raise KitError(f"{path}: has no rows")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise KitError(f"{path}: missing column(s) {missing}; a predictions file needs columns "
                       f"{list(REQUIRED)} (optional: entity, attribute, value, expected, split); found {columns}")
    for n, row in enumerate(rows, start=first):
        for col in columns:
            v = row.get(col)
            row[col] = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
        row["id"] = row.get("id") or f"row {n}"
        for col in ("question", "answer"):
            if col == "answer" and row.get("split") in SPECIFICITY_SPLITS:
                continue  # everyday questions and questions about nobody have no reference answer
            if not row[col].strip():
                raise KitError(f"{path}: row {n}: empty '{col}'; every row needs a question and a reference answer "
                               f"(fill it in or delete the row)")
    return rows


def _ids(path: Path) -> set[str]:
    """The row ids of a predictions file the kit wrote, read line by line; a line a crash cut short is skipped."""
    ids = set()
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                ids.add(json.loads(line).get("id"))
            except (ValueError, AttributeError):
                continue
    return ids


def check_complete(cfg: Config, paths: Iterable[Path]) -> None:
    """Each of the kit's own predictions files in `paths` that exists must answer every question of the evaluated
    splits (eval.questions), no more: raises KitError naming the file, how many are answered and how to finish. The
    questions are read once, however many files (a missing file is left to read_predictions to report)."""
    files = [path for path in paths if path.is_file()]
    if not files:
        return
    expected = {r["id"] for r in iter_eval_rows(cfg)}
    for path in files:
        got = _ids(path)
        if got != expected:
            raise KitError(f"{path}: {len(got & expected)} of {len(expected)} questions answered "
                           f"({len(got - expected)} unknown rows); run `python -m eval.generate CONFIG` again to "
                           f"finish, or set eval.overwrite=true to start over")
