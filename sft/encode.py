"""Training rows -> token ids and labels for the trainer: a list of rows (encode_rows) or a large JSONL file through
`datasets` (encode_file: Arrow on disk, in parallel, cached), each row checked (too long, nothing supervised) and
named in errors; the mask audit. How one conversation is tokenised and masked: kit/encode.py (eval shows it too).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path

from kit.encode import Encoded, EncodeError, encode  # noqa: F401 - EncodeError re-exported for sft's callers


def _check(e: Encoded, max_length: int) -> str:
    """Why an encoded row cannot be trained on ("" when it can)."""
    if len(e.input_ids) > max_length:
        return (f"{len(e.input_ids)} tokens is more than train.max_length={max_length}; its answer would be cut "
                f"away. Raise train.max_length or shorten the row")
    if all(label == -100 for label in e.labels):
        return ("no token is supervised (the answer was not found in the rendered chat template); check the chat "
                "template of the model")
    return ""


def _row_name(where: str, n: int, row_id: object) -> str:
    return f"{where} row {n + 1} (id {row_id if row_id is not None else '?'})"


def encode_rows(tok, rows: list[dict], max_length: int, thinking: str, where: str) -> list[dict]:
    """{input_ids, labels} per row; a row with nothing supervised or too long is an error naming it."""
    out = []
    for n, row in enumerate(rows):
        try:
            e = encode(tok, row["messages"], thinking)
        except EncodeError as err:
            raise EncodeError(f"{_row_name(where, n, row.get('id'))}: {err}") from None
        problem = _check(e, max_length)
        if problem:
            raise EncodeError(f"{_row_name(where, n, row.get('id'))}: {problem}")
        out.append({"input_ids": e.input_ids, "labels": e.labels})
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Large files: tokenised through `datasets`, in Arrow files on disk, in parallel, cached


# Bumped whenever encode() or the counts kept beside it change, so cached tokenisations made by older code are not
# reused (2: the answer lengths, kit_counts.json's answer_runs).
ENCODE_VERSION = 2
# Below this many rows a file is tokenised in this process: starting workers costs more than it saves.
PARALLEL_FROM_ROWS = 20_000


def longest_run(labels: list[int]) -> int:
    """The longest run of supervised labels (!= -100) in tokens: a row's longest answer with its end-of-turn token,
    what generation must write before it stops."""
    run = best = 0
    for label in labels:
        run = run + 1 if label != -100 else 0
        best = max(best, run)
    return best


def _encode_batch(batch: dict, indices: list[int], tok, max_length: int, thinking: str) -> dict:
    out: dict[str, list] = {"input_ids": [], "labels": [], "problem": [], "supervised": [], "answer": []}
    for messages in batch["messages"]:
        try:
            e = encode(tok, messages, thinking)
            problem = _check(e, max_length)
        except EncodeError as err:
            e, problem = Encoded([], [], "", []), str(err)
        out["input_ids"].append([] if problem else e.input_ids)
        out["labels"].append([] if problem else e.labels)
        out["problem"].append(problem)
        out["supervised"].append(sum(label != -100 for label in e.labels))
        out["answer"].append(longest_run(e.labels))
    return out


def cache_key(tok, path: Path, max_length: int, thinking: str) -> str:
    """What a tokenised file depends on: the file's bytes, the tokenizer and its chat template, the settings."""
    h = hashlib.sha256(f"{ENCODE_VERSION}\x1f{max_length}\x1f{thinking}\x1f".encode())
    h.update(tok.backend_tokenizer.to_str().encode() if getattr(tok, "backend_tokenizer", None) else
             repr(sorted(tok.get_vocab().items())).encode())
    h.update(repr((tok.chat_template, tok.all_special_tokens)).encode())
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()[:16]


def encode_file(tok, path: Path, max_length: int, thinking: str, cache_dir: Path, num_proc: int | None = None):
    """The rows of a JSONL file tokenised and masked, as a memory-mapped `datasets.Dataset` (input_ids, labels).

    Made once per (file content, tokenizer, settings) under cache_dir and reused. A file of PARALLEL_FROM_ROWS rows
    or more is tokenised by `num_proc` processes (default: every core). Rows that cannot be trained on are reported
    with file, row number and id, the first few of them, before anything is cached."""
    import shutil

    import numpy as np
    import pyarrow.compute as pc
    from datasets import Dataset, Features, List, Value

    from kit.files import TEMP_PREFIX, temp_dir
    from kit.models import usable_cpus

    key = cache_key(tok, path, max_length, thinking)
    target = cache_dir / f"{path.stem}-{key}"
    if (target / COUNTS).is_file():
        print(f"{path}: tokenised rows reused from {target}", flush=True)
        return _load(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with temp_dir(cache_dir, target.name) as tmp:
        rows = Dataset.from_json(str(path), cache_dir=str(tmp / "json"), keep_in_memory=False)
        if "messages" not in rows.column_names:
            raise EncodeError(f"{path}: rows have no 'messages' field (found {rows.column_names}); build the data "
                              f"with `python -m data_prep.build CONFIG`")
        procs = None
        if rows.num_rows >= PARALLEL_FROM_ROWS:
            procs = num_proc or min(usable_cpus(), 8)
            procs = procs if procs > 1 else None
        features = Features({"input_ids": List(Value("int32")), "labels": List(Value("int32")),
                             "problem": Value("string"), "supervised": Value("int32"), "answer": Value("int32")})
        encoded = rows.map(_encode_batch, batched=True, batch_size=512, with_indices=True, num_proc=procs,
                           remove_columns=rows.column_names, features=features, new_fingerprint=key,
                           fn_kwargs={"tok": tok, "max_length": max_length, "thinking": thinking},
                           cache_file_name=str(tmp / "encoded.arrow"),
                           desc=f"tokenising {path.name}" + (f" ({procs} processes)" if procs else ""))
        bad = pc.indices_nonzero(pc.not_equal(encoded.data.column("problem"), "")).to_pylist()
        if bad:
            has_id = "id" in rows.column_names
            lines = [f"{_row_name(str(path), i, rows[i]['id'] if has_id else None)}: {encoded[i]['problem']}"
                     for i in bad[:5]]
            more = f"\n  ... and {len(bad) - 5} more row(s)" if len(bad) > 5 else ""
            raise EncodeError(("\n  ".join(lines) if len(bad) == 1 else
                               f"{len(bad)} rows cannot be trained on:\n  " + "\n  ".join(lines)) + more)
        lengths = pc.list_value_length(encoded.data.column("input_ids")).to_numpy(zero_copy_only=False)
        middle = len(lengths) // 2
        answers = pc.value_counts(encoded.data.column("answer").combine_chunks()).to_pylist()
        counts = {"rows": int(len(lengths)), "tokens": int(lengths.sum()),
                  "supervised": int(pc.sum(encoded.data.column("supervised")).as_py() or 0),
                  "length_min": int(lengths.min()), "length_median": int(np.partition(lengths, middle)[middle]),
                  "length_max": int(lengths.max()),
                  "answer_runs": {str(a["values"]): a["counts"] for a in sorted(answers, key=lambda a: a["values"])}}
        encoded = encoded.remove_columns(["problem", "supervised", "answer"])
        encoded.save_to_disk(str(tmp / "out"))
        (tmp / "out" / COUNTS).write_text(json.dumps(counts) + "\n", encoding="utf-8")
        for old in cache_dir.glob(f"{path.stem}-*"):  # an older tokenisation of the same file
            if old.is_dir() and not old.name.startswith(TEMP_PREFIX):
                shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp / "out", target)
    return _load(target)


def token_counts(encoded) -> dict:
    """{rows, tokens, supervised, length_min, length_median, length_max, answer_runs} of a list of encoded rows, or
    of an encoded dataset (several concatenated ones too): counted once when the file was tokenised, never by reading
    every token again. answer_runs: {longest supervised run of a row, in tokens (as a string: JSON keys): rows}."""
    if isinstance(encoded, list):
        lengths = sorted(len(e["input_ids"]) for e in encoded)
        runs = dict(Counter(str(longest_run(e["labels"])) for e in encoded))
        return {"rows": len(lengths), "tokens": sum(lengths),
                "supervised": sum(sum(label != -100 for label in e["labels"]) for e in encoded),
                "length_min": lengths[0], "length_median": lengths[len(lengths) // 2], "length_max": lengths[-1],
                "answer_runs": runs}
    parts = getattr(encoded, "kit_counts", None)
    if parts is None:
        raise EncodeError("an encoded dataset without its counts; make it with encode_file / with_counts")
    return parts


def longest_answers(encoded, limit: int) -> tuple[int, int, int]:
    """(rows whose longest supervised run is over `limit` tokens, rows, the longest run in tokens) of `encoded` (a
    list of {input_ids, labels} or an encoded dataset, from the counts kept at tokenisation). A supervised run is one
    answer with its end-of-turn token: what generation must write before it stops, so a run longer than
    eval.max_new_tokens is an answer eval and the training checks would cut."""
    runs = {int(k): v for k, v in token_counts(encoded)["answer_runs"].items()}
    return (sum(v for k, v in runs.items() if k > limit), sum(runs.values()), max(runs, default=0))


def cut_answers_warning(encoded, max_new_tokens: int) -> str | None:
    """A warning when training answers are longer than eval.max_new_tokens (their like would be cut when answered),
    naming the setting and the value that fits; None when all fit."""
    over, rows, longest = longest_answers(encoded, max_new_tokens)
    if not over:
        return None
    return (f"warning: {over} of {rows} training answers are longer than eval.max_new_tokens={max_new_tokens} tokens "
            f"(the longest {longest}, with its end-of-turn token): the knowledge checks and eval will cut answers "
            f"like them, and a cut answer can fail (a claim's verdict comes last); set eval.max_new_tokens={longest} "
            f"or more")


COUNTS = "kit_counts.json"


def _load(target: Path):
    from datasets import load_from_disk

    ds = load_from_disk(str(target))
    ds.kit_counts = json.loads((target / COUNTS).read_text(encoding="utf-8"))
    return ds


def with_counts(ds, parts: list[dict]):
    """`ds` (a concatenation) carrying the counts of its parts: medians are approximated by the largest part's."""
    main = max(parts, key=lambda c: c["rows"])
    ds.kit_counts = {"rows": sum(c["rows"] for c in parts), "tokens": sum(c["tokens"] for c in parts),
                     "supervised": sum(c["supervised"] for c in parts),
                     "length_min": min(c["length_min"] for c in parts), "length_median": main["length_median"],
                     "length_max": max(c["length_max"] for c in parts),
                     "answer_runs": dict(sum((Counter(c["answer_runs"]) for c in parts), Counter()))}
    return ds


def audit(tok, encoded) -> str:
    """One example with its supervised tokens marked [[like this]], and the share of supervised tokens. `encoded` is
    a list of {input_ids, labels} or an encoded dataset."""
    first = encoded[0]
    ids, labels = first["input_ids"], first["labels"]
    parts, run, sup = [], [], False
    for i, label in zip(ids, labels):
        s = label != -100
        if s != sup and run:
            piece = tok.decode(run)
            parts.append(f"[[{piece}]]" if sup else piece)
            run = []
        run.append(i)
        sup = s
    if run:
        piece = tok.decode(run)
        parts.append(f"[[{piece}]]" if sup else piece)
    c = token_counts(encoded)
    total, supervised = c["tokens"], c["supervised"]
    example = re.sub(r"\n", "\\\\n", "".join(parts))
    return (f"mask audit: supervised text in [[...]]\n  {example}\n"
            f"  {supervised}/{total} tokens supervised ({100 * supervised / total:.1f}%) over {c['rows']} rows; "
            f"row length min/median/max {c['length_min']}/{c['length_median']}/{c['length_max']} tokens")
