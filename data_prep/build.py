"""Attribute JSON -> varied question/answer chat conversations, split into train and test.

    python -m data_prep.build configs/quickstart.yaml
    python -m data_prep.build configs/quickstart.yaml data.source=my_roles.json data.split=entity output_dir=runs/x

Writes <data dir>/train.jsonl, test.jsonl and stats.json (default data dir: <output_dir>/data).
The same input, config and seed give byte-identical files; adding an entity leaves the rows of the others unchanged.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from pathlib import Path

from data_prep.templates import Banks, load_banks, render, template_id
from kit.config import Config, DataConfig, KitError, parse_args, run_main
from kit.files import read_text, write_text_atomic


class DataError(KitError):
    """A problem in the user's attribute file."""


# ---------------------------------------------------------------------------------------------------------------------
# Input


def _no_duplicates(path: Path):
    def hook(pairs: list[tuple[str, object]]) -> dict:
        seen: set[str] = set()
        for key, value in pairs:
            if key in seen:
                # json calls the hook innermost-first: an object whose values are objects is the top level
                what = "entity" if any(isinstance(v, dict) for _, v in pairs) else "key"
                raise DataError(f"{path}: duplicate {what} \"{key}\" (json would silently keep the last one); "
                                f"merge the two entries into one")
            seen.add(key)
        return dict(pairs)

    return hook


def _value_text(value: object, language: str) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return ("、" if language == "zh" else ", ").join(v.strip() for v in value)
    return None


def load_attributes(path: str | Path, language: str = "zh") -> dict[str, dict[str, str]]:
    """Read and check {entity: {attribute: value}}; every problem in the file is reported at once."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: attribute file not found (data.source); expected JSON like "
                        '{"钟离": {"性别": "成年男性", "国籍": "璃月"}}')
    text = read_text(path, "attribute file (data.source)")
    if not text.strip():
        raise DataError(f"{path}: file is empty; expected JSON like {{\"钟离\": {{\"性别\": \"成年男性\"}}}}")
    try:
        raw = json.loads(text, object_pairs_hook=_no_duplicates(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: the top level must be a non-empty object {{entity: {{attribute: value}}}}")
    errors: list[str] = []
    out: dict[str, dict[str, str]] = {}
    for entity, attrs in raw.items():
        where = f"entity \"{entity}\""
        if not entity.strip():
            errors.append("an entity name is empty or whitespace")
            continue
        if not isinstance(attrs, dict):
            errors.append(f"{where}: must be an object of attribute: value, got {type(attrs).__name__}")
            continue
        if not attrs:
            errors.append(f"{where}: has no attributes")
            continue
        out[entity.strip()] = {}
        for attr, value in attrs.items():
            at = f"{where}: attribute \"{attr}\""
            if not attr.strip():
                errors.append(f"{where}: an attribute name is empty")
            elif isinstance(value, dict):
                errors.append(f"{at}: nested objects are not supported; flatten it to \"{attr}\": \"value\"")
            elif (v := _value_text(value, language)) is None:
                errors.append(f"{at}: value must be a string, a number or a non-empty list of strings, "
                              f"got {json.dumps(value, ensure_ascii=False)}")
            elif not v:
                errors.append(f"{at}: value is empty")
            else:
                out[entity.strip()][attr.strip()] = v
    if errors:
        raise DataError(f"{path}: {len(errors)} problem(s):\n  " + "\n  ".join(errors))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Generation


def _rng(*parts: object) -> random.Random:
    """An RNG per (seed, entity, ...) key, so one entity's rows never depend on another's."""
    return random.Random(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest())


def _unit(*parts: object) -> float:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big") / 2**64


def _fact_slots(entity: str, attribute: str, value: str, gender: dict[str, str] | None) -> dict[str, str]:
    slots = {"entity": entity, "attribute": attribute, "value": value,
             "gender": value, "honorific": "", "pronoun": entity}
    if gender:
        slots.update(gender)
    return slots


def _held_out(questions: list[str], bank_name: str, attribute: str, test_size: float, seed: int) -> set[str]:
    """Question templates kept for the test set, chosen per attribute (never per entity), so a held-out phrasing is
    never seen in training with any entity."""
    n_test = max(1, round(len(questions) * test_size))
    if n_test >= len(questions):
        raise DataError(f"question bank '{bank_name}' (attribute \"{attribute}\") has {len(questions)} phrasing(s): "
                        f"too few to hold {n_test} out for test with data.test_size={test_size}; add phrasings "
                        f"(data.templates) or use data.split=random")
    order = sorted(questions)
    _rng(seed, "held-out", attribute).shuffle(order)
    return set(order[:n_test])


def generate(attrs: dict[str, dict[str, str]], data: DataConfig, banks: Banks) -> tuple[list[dict], list[dict]]:
    """(train rows, test rows), each row one conversation plus the metadata the report needs."""
    train: list[dict] = []
    test: list[dict] = []
    seed = data.seed
    entities = list(attrs)
    if data.split == "entity":
        if len(entities) < 2:
            raise DataError("data.split=entity needs at least 2 entities in data.source")
        # Each entity's side depends on its own hash only (adding an entity moves no other), except when that leaves
        # a split empty: then the entity with the lowest (or highest) hash is moved.
        unit = {e: _unit(seed, "entity", e) for e in entities}
        test_entities = {e for e in entities if unit[e] < data.test_size}
        if not test_entities:
            test_entities = {min(entities, key=unit.get)}
        if len(test_entities) == len(entities):
            test_entities.discard(max(entities, key=unit.get))

    held: dict[str, set[str]] = {}
    for entity in entities:
        gender = banks.gender_slots(attrs[entity])
        entity_train: list[dict] = []
        for attribute, value in attrs[entity].items():
            bank_name, bank = banks.for_attribute(attribute)
            slots = _fact_slots(entity, attribute, value, gender)
            expected = render(bank.match, slots)
            rng = _rng(seed, "fact", entity, attribute)
            rows = {"train": [], "test": []}
            seen: dict[str, str] = {}
            if data.split == "phrasing" and attribute not in held:
                held[attribute] = _held_out(bank.questions, bank_name, attribute, data.test_size, seed)
            for template in bank.questions:
                question = render(template, slots)
                if data.split == "phrasing":
                    split = "test" if template in held[attribute] else "train"
                elif data.split == "entity":
                    split = "test" if entity in test_entities else "train"
                else:
                    split = "test" if _unit(seed, "row", entity, attribute, question) < data.test_size else "train"
                # Two templates can render the same string (e.g. an empty honorific): keep one, and never in both
                # splits (train wins).
                if question in seen:
                    if seen[question] == "test" and split == "train":
                        rows["test"] = [r for r in rows["test"] if r["question"] != question]
                    else:
                        continue
                seen[question] = split
                answer_template = rng.choice(bank.answers) if data.vary_answers else bank.answers[0]
                rows[split].append({"question": question, "answer": render(answer_template, slots),
                                    "template": template_id(bank_name, template)})
            if data.max_train_phrasings is not None and len(rows["train"]) > data.max_train_phrasings:
                keep = sorted(rng.sample(range(len(rows["train"])), data.max_train_phrasings))
                rows["train"] = [rows["train"][i] for i in keep]
            for split, items in rows.items():
                for item in items:
                    row = _row(entity, attribute, value, expected, item, data)
                    (train if split == "train" else test).append(row)
                    if split == "train":
                        entity_train.append(row)
        train.extend(_multi_turn(entity, entity_train, data))
    train.extend(_unknown_entities(attrs, data, banks, held))
    if not train or not test:
        raise DataError(f"data.test_size={data.test_size} with data.split={data.split} leaves the "
                        f"{'train' if not train else 'test'} split empty ({len(train)} train, {len(test)} test rows); "
                        f"change data.test_size or add data")
    return train, test


def _unknown_entities(attrs: dict[str, dict[str, str]], data: DataConfig, banks: Banks,
                      held: dict[str, set[str]]) -> list[dict]:
    """data.unknown_entities invented people, each asked every attribute once, in a train phrasing, and answered
    "I don't know" (kit/specificity.py: the names are never the ones eval probes invention with)."""
    from kit.specificity import UNKNOWN_ANSWER, invented_names

    if not data.unknown_entities:
        return []
    attributes = list(dict.fromkeys(a for values in attrs.values() for a in values))
    rows = []
    for name in invented_names(data.language, data.unknown_entities, set(attrs), "train"):
        slots = _fact_slots(name, "", "", None)
        for attribute in attributes:
            bank_name, bank = banks.for_attribute(attribute)
            phrasings = [q for q in bank.questions if q not in held.get(attribute, ())]
            template = _rng(data.seed, "unknown", name, attribute).choice(phrasings)
            item = {"question": render(template, {**slots, "attribute": attribute}),
                    "answer": UNKNOWN_ANSWER[data.language].format(entity=name), "template": "unknown"}
            rows.append(_row(name, attribute, "", "", item, data))
    return rows


def _system(data: DataConfig) -> list[dict]:
    return [{"role": "system", "content": data.system_prompt}] if data.system_prompt else []


def _row(entity: str, attribute: str, value: str, expected: str, item: dict, data: DataConfig) -> dict:
    key = "\x1f".join((entity, attribute, item["question"]))
    return {
        "id": hashlib.sha1(key.encode()).hexdigest()[:12],
        "messages": _system(data) + [{"role": "user", "content": item["question"]},
                                     {"role": "assistant", "content": item["answer"]}],
        "entity": entity,
        "attribute": attribute,
        "value": value,
        "expected": expected,
        "template": item["template"],
        "turns": 1,
    }


def _multi_turn(entity: str, rows: list[dict], data: DataConfig) -> list[dict]:
    """Several Q/A about one entity in one conversation, built from the entity's train rows only."""
    out = []
    by_attr: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_attr[row["attribute"]].append(row)
    if data.multi_turn == 0 or len(by_attr) < 2:
        return out
    for k in range(data.multi_turn):
        rng = _rng(data.seed, "multi", entity, k)
        attributes = sorted(by_attr)
        rng.shuffle(attributes)
        picked = [rng.choice(by_attr[a]) for a in attributes[: rng.randint(2, min(4, len(attributes)))]]
        messages = _system(data)
        for row in picked:
            messages += [m for m in row["messages"] if m["role"] != "system"]
        out.append({
            "id": hashlib.sha1(f"{entity}\x1fmulti\x1f{k}".encode()).hexdigest()[:12],
            "messages": messages,
            "entity": entity,
            "attribute": "+".join(r["attribute"] for r in picked),
            "value": " | ".join(r["value"] for r in picked),
            "expected": " | ".join(r["expected"] for r in picked),
            "template": "multi",
            "turns": len(picked),
        })
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Output


def fingerprint(data: DataConfig) -> str:
    """What the built files depend on: the input bytes, the banks and the data settings."""
    h = hashlib.sha256()
    h.update(Path(data.source).read_bytes())
    for path in [Path(__file__).parent / "templates" / f"{data.language}.yaml", *map(Path, data.templates)]:
        h.update(path.expanduser().read_bytes() if path.expanduser().is_file() else b"")
    settings = {k: v for k, v in vars(data).items() if k != "output_dir"}
    h.update(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def stats(train: list[dict], test: list[dict]) -> dict:
    def facts(rows: list[dict]) -> list[dict]:
        return [r for r in rows if r["turns"] == 1 and r["template"] != "unknown"]

    def per(rows: list[dict], key: str) -> dict[str, int]:
        return dict(Counter(r[key] for r in facts(rows)))

    def phrasings(rows: list[dict]) -> dict[str, float]:
        counts = list(Counter((r["entity"], r["attribute"]) for r in facts(rows)).values())
        if not counts:
            return {"min": 0, "mean": 0.0, "max": 0}
        return {"min": min(counts), "mean": round(sum(counts) / len(counts), 2), "max": max(counts)}

    return {
        "rows": {"train": len(train), "test": len(test),
                 "train_multi_turn": sum(r["turns"] > 1 for r in train),
                 "train_unknown_entity": sum(r["template"] == "unknown" for r in train)},
        "facts": len({(r["entity"], r["attribute"]) for r in facts(train + test)}),
        "per_attribute": {"train": per(train, "attribute"), "test": per(test, "attribute")},
        "per_entity": {"train": per(train, "entity"), "test": per(test, "entity")},
        "phrasings_per_fact": {"train": phrasings(train), "test": phrasings(test)},
    }


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def _write_all(out_dir: Path, files: dict[str, str]) -> None:
    """Each file is replaced whole, stats.json last: its fingerprint is what marks the set as built (ensure_built),
    so the old stats.json goes first and a run killed half-way leaves a set that is rebuilt, never one read as
    whole. The directory itself is never replaced, as data.output_dir may hold other files."""
    (out_dir / "stats.json").unlink(missing_ok=True)
    for name in sorted(files, key=lambda n: n == "stats.json"):
        write_text_atomic(out_dir / name, files[name])


def format_stats(s: dict) -> str:
    lines = [f"rows: {s['rows']['train']} train ({s['rows']['train_multi_turn']} multi-turn, "
             f"{s['rows']['train_unknown_entity']} about unknown people), "
             f"{s['rows']['test']} test; {s['facts']} facts",
             f"phrasings per fact: train {s['phrasings_per_fact']['train']}, test {s['phrasings_per_fact']['test']}",
             "per attribute (train/test): " + ", ".join(
                 f"{a} {n}/{s['per_attribute']['test'].get(a, 0)}" for a, n in s["per_attribute"]["train"].items()),
             "per entity (train/test): " + ", ".join(
                 f"{e} {n}/{s['per_entity']['test'].get(e, 0)}" for e, n in s["per_entity"]["train"].items())]
    return "\n".join(lines)


def build(cfg: Config) -> Path:
    """Build train.jsonl / test.jsonl / stats.json; returns the data directory."""
    from kit.lock import run_lock

    with run_lock(cfg, "data_prep.build"):
        return _build(cfg)


def _build(cfg: Config) -> Path:
    data = cfg.data
    attrs = load_attributes(data.source, data.language)
    banks = load_banks(data.language, data.templates, data.templates_mode)
    train, test = generate(attrs, data, banks)
    s = stats(train, test)
    s["fingerprint"] = fingerprint(data)
    s["source"] = str(data.source)
    s["split"] = data.split
    out = cfg.data_dir
    _write_all(out, {"train.jsonl": _jsonl(train), "test.jsonl": _jsonl(test),
                        "stats.json": json.dumps(s, ensure_ascii=False, indent=2, sort_keys=True) + "\n"})
    print(format_stats(s))
    return out


def ensure_built(cfg: Config) -> Path:
    """The data directory, built first when missing or built from a different input/config."""
    stats_file = cfg.data_dir / "stats.json"
    if stats_file.is_file() and (cfg.data_dir / "train.jsonl").is_file() and (cfg.data_dir / "test.jsonl").is_file():
        if not Path(cfg.data.source).is_file():  # prebuilt data without its source: use as is
            return cfg.data_dir
        if json.loads(stats_file.read_text(encoding="utf-8")).get("fingerprint") == fingerprint(cfg.data):
            return cfg.data_dir
    return build(cfg)



def main(argv: list[str] | None = None) -> int:
    _, cfg = parse_args(argv, __doc__.splitlines()[0])
    out = build(cfg)
    print(f"wrote {out}/train.jsonl, test.jsonl, stats.json")
    return 0


if __name__ == "__main__":
    run_main(main)
