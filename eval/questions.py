"""The questions eval asks: the single-turn rows of eval.splits (test by default), then the specificity rows
(everyday probes, invented people) and the beyond rows (claims, reverse, one hop), read lazily."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from kit.beyond import BEYOND_FILE
from kit.config import Config, KitError
from kit.files import iter_jsonl
from kit.rows import Row
from kit.specificity import specificity_rows


def iter_eval_rows(cfg: Config) -> Iterator[Row]:
    """Single-turn rows of eval.splits, each with its split name, then the specificity rows, then the beyond rows;
    read from the files one at a time. The files are checked when this is called, before anything is read: raises
    KitError when a split's file is missing or holds no single-turn row."""
    paths = []
    for split in cfg.eval.splits:
        path = cfg.data_dir / f"{split}.jsonl"
        if not path.is_file():
            raise KitError(f"{path}: not found; build the data first with `python -m data_prep.build CONFIG`")
        paths.append((split, path))

    def rows() -> Iterator[Row]:
        for split, path in paths:
            n = 0
            for r in iter_jsonl(path):
                if r.get("turns", 1) != 1:
                    continue
                if cfg.eval.max_rows and n >= cfg.eval.max_rows:
                    break
                n += 1
                yield dict(r, split=split)
        if cfg.eval.specificity:  # everyday questions (leak, drift) and questions about nobody (invention)
            train = cfg.data_dir / "train.jsonl"
            yield from specificity_rows(lambda: iter_jsonl(train), cfg.data.language, cfg.eval.probe_file,
                                        cfg.eval.unknown_names)
        beyond = cfg.data_dir / BEYOND_FILE
        if cfg.eval.beyond and beyond.is_file():  # held-out claims, reverse and one-hop questions (kit/beyond.py)
            taken: dict[str, int] = {}
            for r in iter_jsonl(beyond):  # eval.max_rows caps each of their splits too
                taken[r["split"]] = taken.get(r["split"], 0) + 1
                if not cfg.eval.max_rows or taken[r["split"]] <= cfg.eval.max_rows:
                    yield r

    it = rows()
    first = next(it, None)
    if first is None or first["split"] not in cfg.eval.splits:  # none of the data's own rows
        raise KitError(f"no single-turn rows to answer in {cfg.data_dir} for eval.splits={cfg.eval.splits}")
    return itertools.chain([first], it)


def eval_rows(cfg: Config) -> list[Row]:
    """iter_eval_rows, in a list (for small sets)."""
    return list(iter_eval_rows(cfg))
