"""Attributes -> varied question/answer chat conversations, split into train and test (or a conversation dataset,
checked and split). What data.source can be: data_prep/sources.py.

    python -m data_prep.build configs/quickstart.yaml
    python -m data_prep.build configs/quickstart.yaml data.source=my_roles.json data.split=entity output_dir=runs/x

Writes <data dir>/train.jsonl, test.jsonl and stats.json (default data dir: <output_dir>/data).
The same input, config and seed give byte-identical files; adding an entity leaves the rows of the others unchanged.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from data_prep import beyond
from data_prep.banks import (
    BUILTIN_DIR,
    REVERSE,
    Bank,
    Banks,
    bank_files,
    humanise,
    load_banks,
    render,
    spoken,
    template_id,
)
from data_prep.kinds import Origin, resolve_banks
from data_prep.sources import Attributes, Conversations, DataError, ListValue, is_hub, load_source, text_key
from kit.beyond import BEYOND_FILE
from kit.chat import system_messages
from kit.config import VALIDATION_FILE, Config, DataConfig, parse_args, run_main
from kit.files import atomic_file, write_text_atomic
from kit.rows import CLAIM_BANK, COMPOSE_BANK, CONVERSATION, MULTI, UNKNOWN, Row, is_fact, is_reverse, qa_row, row_id

__all__ = ["DataError", "build", "build_rows", "ensure_built", "load_attributes", "main", "stream"]


def load_attributes(path: str | Path, language: str = "zh", entity_column: str | None = None) -> Attributes:
    """Read and check {entity: {attribute: value}} from an attribute file of any supported type; every problem in the
    file is reported at once."""
    got = load_source(str(path), language, entity_column)
    if isinstance(got, Conversations):
        raise DataError(f"{path}: a conversation dataset, where an attribute file was expected")
    return got


# ---------------------------------------------------------------------------------------------------------------------
# Generation


def _rng(*parts: object) -> random.Random:
    """An RNG per (seed, entity, ...) key, so one entity's rows never depend on another's."""
    return random.Random(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest())


def _unit(*parts: object) -> float:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big") / 2**64


def _fact_slots(entity: str, attribute: str, value: str, gender: dict[str, str] | None,
                language: str) -> dict[str, str]:
    """Placeholder values: the attribute key read as words (start_year -> start year), a list value with every item
    named ("Yoruba and Portuguese")."""
    value = spoken(value, language)
    slots = {"entity": entity, "attribute": humanise(attribute), "value": value,
             "gender": value, "honorific": "", "pronoun": entity}
    if gender:
        slots.update(gender)
    return slots


def _expected(bank: Bank, slots: dict[str, str], value: str) -> str:
    """What a right answer must contain: the bank's match; each item of a list value (" | ", as value match reads)."""
    if isinstance(value, ListValue) and bank.match == "{value}":
        return " | ".join(value.items)
    return render(bank.match, slots)


def _held_out(bank: Bank, bank_name: str, attribute: str, test_size: float, seed: int,
              validation_size: float = 0.0) -> tuple[set[str], set[str]]:
    """(test, validation) question templates, chosen per attribute (never per entity), so a held-out phrasing is
    never seen in training with any entity. Test: the bank's own `held_out` list when it has one. Validation is
    drawn after test from the same shuffled order, so asking for one leaves the test questions as they were."""
    questions = bank.questions
    n_test = 0 if bank.held_out else max(1, round(len(questions) * test_size))
    n_val = max(1, round(len(questions) * validation_size)) if validation_size else 0
    if n_test + n_val >= len(questions):
        asked = " and ".join(f"{n} out for {what}" for n, what in ((n_test, "test"), (n_val, "validation")) if n)
        raise DataError(f"question bank '{bank_name}' (attribute \"{attribute}\") has {len(questions)} phrasing(s): "
                        f"too few to hold {asked} with data.test_size={test_size}, data.validation_size="
                        f"{validation_size}; add phrasings (data.question_banks) or use data.split=random")
    order = sorted(questions)
    _rng(seed, "held-out", attribute).shuffle(order)
    test = set(bank.held_out) if bank.held_out else set(order[:n_test])
    return test, set(order[n_test:n_test + n_val])


def stream(attrs: Attributes, data: DataConfig, banks: Banks,
           origins: dict[str, Origin] | None = None) -> Iterator[tuple[str, Row]]:
    """("train" | "test", row) pairs, in file order, generated entity by entity: nothing is held but one entity's
    train rows (for its multi-turn conversations) and the per-attribute held-out phrasings. Each attribute is asked
    with `origins` (data_prep.kinds.resolve_banks: its bank, else its kind's frames; computed when not given)."""
    seed = data.seed
    if origins is None:
        origins = resolve_banks(attrs, banks, data.source)
    entities = list(attrs)
    test_entities: set[str] = set()
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

    held: dict[str, tuple[set[str], set[str]]] = {}
    for entity in entities:
        gender = banks.gender_slots(attrs[entity])
        entity_train: list[dict] = []
        for attribute, value in attrs[entity].items():
            bank_name, bank = origins[attribute].bank_name, origins[attribute].bank
            slots = _fact_slots(entity, attribute, value, gender, data.language)
            expected = _expected(bank, slots, value)
            rng = _rng(seed, "fact", entity, attribute)
            if data.split == "phrasing" and attribute not in held:
                held[attribute] = _held_out(bank, bank_name, attribute, data.test_size, seed, data.validation_size)
            rows = _phrasings(bank, bank_name, slots, data, rng, held.get(attribute, (set(), set())),
                              entity in test_entities, ("row", entity, attribute))
            for split, items in rows.items():
                for item in items:
                    row = _row(entity, attribute, value, expected, item, data)
                    yield split, row
                    if split == "train":
                        entity_train.append(row)
        for row in _multi_turn(entity, entity_train, data):
            yield "train", row
    if data.reverse:
        yield from _reverse(attrs, data, banks, test_entities)
    for row in _unknown_entities(attrs, data, origins, held):
        yield "train", row
    yield from _beyond(attrs, data, banks, test_entities)


def _beyond(attrs: Attributes, data: DataConfig, banks: Banks,
            test_entities: set[str]) -> Iterator[tuple[str, Row]]:
    """data.verify / data.compose train rows, then ("beyond", row): what eval asks beyond lookup (data_prep/beyond.py),
    the reverse questions included whether data.reverse trains them or not."""
    for row in beyond.train_rows(attrs, data, banks):
        yield "train", row
    reverse_test = (r for split, r in _reverse(attrs, data, banks, test_entities) if split == "test")
    for row in beyond.eval_rows(attrs, data, banks, reverse_test):
        yield "beyond", row


def build_rows(attrs: Attributes, data: DataConfig, banks: Banks) -> tuple[list[Row], list[Row]]:
    """(train rows, test rows) in memory: `stream` collected, for small sets and tests."""
    out: dict[str, list[Row]] = {"train": [], "test": [], "beyond": [], "validation": []}
    for split, row in stream(attrs, data, banks):
        out[split].append(row)
    _check_not_empty(len(out["train"]), len(out["test"]), data)
    return out["train"], out["test"]


def _check_not_empty(n_train: int, n_test: int, data: DataConfig) -> None:
    if not n_train or not n_test:
        raise DataError(f"data.test_size={data.test_size} with data.split={data.split} leaves the "
                        f"{'train' if not n_train else 'test'} split empty ({n_train} train, {n_test} test rows); "
                        f"change data.test_size or add data")


def _phrasings(bank, bank_name: str, slots: dict[str, str], data: DataConfig, rng: random.Random,
               held: tuple[set[str], set[str]], test_entity: bool, key: tuple[str, ...]) -> dict[str, list[dict]]:
    """{"train": items, "test": items, "validation": items}: one question/answer per phrasing of `bank`, split by
    data.split (held-out (test, validation) phrasings `held`, a test entity, or by hash of `key` and the question),
    at most data.max_train_phrasings in train."""
    rows: dict[str, list[dict]] = {"train": [], "test": [], "validation": []}
    seen: dict[str, str] = {}
    test_held, validation_held = held
    for template in bank.questions + bank.held_out:
        question = render(template, slots)
        if data.split == "phrasing":
            split = "test" if template in test_held else "validation" if template in validation_held else "train"
        elif data.split == "entity":
            split = "test" if test_entity else "train"
        else:
            unit = _unit(data.seed, *key, question)
            split = ("test" if unit < data.test_size else
                     "validation" if unit < data.test_size + data.validation_size else "train")
        # Two templates can render the same string (e.g. an empty honorific), or the same once full-width forms and
        # spaces are read alike (text_key): keep one, and never in both splits (train wins).
        same = text_key(question)
        if same in seen:
            if seen[same] != "train" and split == "train":
                rows[seen[same]] = [r for r in rows[seen[same]] if text_key(r["question"]) != same]
            else:
                continue
        seen[same] = split
        answer_template = rng.choice(bank.answers) if data.vary_answers else bank.answers[0]
        rows[split].append({"question": question, "answer": render(answer_template, slots),
                            "template": template_id(bank_name, template)})
    if data.max_train_phrasings is not None and len(rows["train"]) > data.max_train_phrasings:
        keep = sorted(rng.sample(range(len(rows["train"])), data.max_train_phrasings))
        rows["train"] = [rows["train"][i] for i in keep]
    return rows


def _reverse(attrs: Attributes, data: DataConfig, banks: Banks,
             test_entities: set[str]) -> Iterator[tuple[str, Row]]:
    """(split, row) questions from a value back to its entity, for values exactly one entity has (in any
    attribute): "谁的身份是往生堂客卿?" -> "钟离". Split like the facts: held-out phrasings, entities or rows."""
    from kit.specificity import normalise

    owners: dict[str, set[str]] = defaultdict(set)
    for entity, values in attrs.items():
        for value in values.values():
            owners[normalise(value)].add(entity)
    bank = banks.reverse
    gender_keys = {k.lower() for k in banks.gender_keys}  # "who is an adult male?" has no single answer
    # reverse questions are never validation rows: training checks what eval's forward value match measures
    held = ((_held_out(bank, REVERSE, REVERSE, data.test_size, data.seed)[0], set()) if data.split == "phrasing"
            else (set(), set()))
    for entity, values in attrs.items():
        gender = banks.gender_slots(values)
        for attribute, value in values.items():
            if len(owners[normalise(value)]) != 1 or attribute.strip().lower() in gender_keys:
                continue
            slots = _fact_slots(entity, attribute, value, gender, data.language)
            rng = _rng(data.seed, "reverse", entity, attribute)
            rows = _phrasings(bank, REVERSE, slots, data, rng, held, entity in test_entities,
                              ("reverse", entity, attribute))
            for split, items in rows.items():
                for item in items:
                    row = _row(entity, attribute, value, render(bank.match, slots), item, data)
                    yield "train" if split == "validation" else split, row


def _unknown_entities(attrs: dict[str, dict[str, str]], data: DataConfig, origins: dict[str, Origin],
                      held: dict[str, tuple[set[str], set[str]]]) -> list[Row]:
    """data.unknown_entities invented people, each asked every attribute once, in a train phrasing, and answered
    "I don't know" (kit/specificity.py: the names are never the ones eval probes invention with)."""
    from kit.specificity import UNKNOWN_ANSWER, invented_names

    if not data.unknown_entities:
        return []
    attributes = list(dict.fromkeys(a for values in attrs.values() for a in values))
    rows = []
    for name in invented_names(data.language, data.unknown_entities, set(attrs), "train"):
        slots = _fact_slots(name, "", "", None, data.language)
        for attribute in attributes:
            bank = origins[attribute].bank
            test, validation = held.get(attribute, (set(), set()))
            phrasings = [q for q in bank.questions if q not in test and q not in validation]
            template = _rng(data.seed, "unknown", name, attribute).choice(phrasings)
            item = {"question": render(template, {**slots, "attribute": humanise(attribute)}),
                    "answer": UNKNOWN_ANSWER[data.language].format(entity=name), "template": UNKNOWN}
            rows.append(_row(name, attribute, "", "", item, data))
    return rows


def conversation_rows(conv: Conversations, data: DataConfig) -> tuple[list[dict], list[dict], dict[str, int]]:
    """(train, test, dropped) of a conversation dataset: its own train/test (or validation) splits when it has
    them, else a split by data.test_size and data.seed (by each row's content, so adding rows moves no other).

    Each message is trained as written less leading and trailing whitespace. Texts are compared by text_key (NFKC:
    "？" is "?"; spaces ignored): a conversation repeated is kept once, and a test conversation whose question
    (every message before the last answer) is a train one's is dropped, whatever its answer: no test question was
    seen in training. `dropped` counts them: {"test_in_train": test rows dropped, "repeated": repeats within a
    split}. Rows that carry entity / attribute / value (/ expected) keep them: value match is reported on those
    only."""
    names = set(conv.splits)
    held = "test" if "test" in names else "validation" if "validation" in names else None
    if "train" in names and held:
        given = [("train", r) for r in conv.splits["train"]] + [("test", r) for r in conv.splits[held]]
    else:
        given = [(None, r) for name in conv.splits for r in conv.splits[name]]
    out: dict[str, list[dict]] = {"train": [], "test": []}
    seen: set[tuple[str, str]] = set()  # (split, the conversation as compared)
    dropped = {"test_in_train": 0, "repeated": 0}
    for split, raw in given:
        messages = [{"role": m["role"], "content": m["content"].strip()} for m in raw["messages"]]
        if data.system_prompt and messages[0]["role"] != "system":
            messages = system_messages(data.system_prompt) + messages
        key = json.dumps(messages, ensure_ascii=False, sort_keys=True)
        split = split or ("test" if _unit(data.seed, "conversation", key) < data.test_size else "train")
        same = json.dumps([[m["role"], text_key(m["content"])] for m in messages], ensure_ascii=False)
        if (split, same) in seen:
            dropped["repeated"] += 1
            continue
        seen.add((split, same))
        value = str(raw.get("value") or "")
        out[split].append(Row(id=row_id(key), messages=messages, entity=str(raw.get("entity") or ""),
                              attribute=str(raw.get("attribute") or ""), value=value,
                              expected=str(raw.get("expected") or value), template=CONVERSATION,
                              turns=sum(m["role"] == "assistant" for m in messages)))
    asked = {_question(r["messages"]) for r in out["train"]}
    test = [r for r in out["test"] if _question(r["messages"]) not in asked]
    dropped["test_in_train"] += len(out["test"]) - len(test)
    out["test"] = test
    if not out["train"] or not out["test"]:
        also = (f" ({dropped['test_in_train']} test conversation(s) dropped: they ask what train ones ask)"
                if dropped["test_in_train"] else "")
        fix = (f"add {held} rows that ask what no train row asks" if held and out["train"]
               else f"change data.test_size (now {data.test_size}) or add rows")
        raise DataError(f"{conv.where}: {len(out['train'])} train and {len(out['test'])} test conversations{also}; "
                        f"{fix}")
    return out["train"], out["test"], dropped


def _question(messages: list[dict]) -> tuple[tuple[str, str], ...]:
    """What a conversation asks: its messages before the last (the answer), compared by text_key."""
    return tuple((m["role"], text_key(m["content"])) for m in messages[:-1])


def _row(entity: str, attribute: str, value: str, expected: str, item: dict, data: DataConfig) -> Row:
    return qa_row(row_id(entity, attribute, item["question"]), system_messages(data.system_prompt), item["question"],
                  item["answer"], item["template"], entity=entity, attribute=attribute, value=value, expected=expected)


def _multi_turn(entity: str, rows: list[Row], data: DataConfig) -> list[Row]:
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
        messages = system_messages(data.system_prompt)
        for row in picked:
            messages += [m for m in row["messages"] if m["role"] != "system"]
        out.append(Row(id=row_id(entity, MULTI, str(k)), messages=messages, entity=entity,
                       attribute="+".join(r["attribute"] for r in picked), value=" | ".join(r["value"] for r in picked),
                       expected=" | ".join(r["expected"] for r in picked), template=MULTI, turns=len(picked)))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Output


def _source_exists(source: str) -> bool:
    return is_hub(source) or Path(source).expanduser().exists()


def fingerprint(data: DataConfig, banks: list[str] | None = None) -> str:
    """What the built files depend on: the input bytes (every file of a save_to_disk directory; a hub dataset by
    its id only), the banks (`banks`: the user's, data.question_banks when not given) and the data settings."""
    h = hashlib.sha256()
    source = Path(data.source).expanduser()
    if is_hub(data.source):
        h.update(data.source.encode())
    elif source.is_dir():
        for f in sorted(p for p in source.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(source)).encode() + b"\0" + f.read_bytes())
    else:
        h.update(source.read_bytes())
    for path in [BUILTIN_DIR / f"{data.language}.yaml", BUILTIN_DIR / "kinds" / f"{data.language}.yaml",
                 BUILTIN_DIR / f"beyond_{data.language}.yaml",
                 *map(Path, data.question_banks if banks is None else banks)]:
        h.update(path.expanduser().read_bytes() if path.expanduser().is_file() else b"")
    # data_prep.phrase's settings change the rows only through the bank file it writes, hashed above
    settings = {k: v for k, v in vars(data).items() if k != "output_dir" and not k.startswith("phrasing")}
    h.update(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


class Stats:
    """stats.json, counted row by row as the rows stream past."""

    def __init__(self) -> None:
        self.rows = {"train": 0, "test": 0, "train_multi_turn": 0, "train_unknown_entity": 0, "train_reverse": 0,
                     "test_reverse": 0, "conversations": 0, "train_verify": 0, "train_compose": 0,
                     "beyond": 0, "validation": 0}
        self.per = {split: {"attribute": Counter(), "entity": Counter()} for split in ("train", "test")}
        self.per_fact = {"train": Counter(), "test": Counter()}
        self.facts: set[tuple[str, str]] = set()
        self.beyond: Counter = Counter()

    def add(self, split: str, r: dict) -> None:
        self.rows[split] += 1
        if split == "beyond":  # eval-only rows (beyond.jsonl): counted by kind, never a fact of the splits
            self.beyond[r["split"]] += 1
            return
        if split == "validation":  # checked during training (sft.checks), never trained or reported by eval
            return
        reverse = is_reverse(r["template"])
        claim, compose = (r["template"].startswith(bank + "/") for bank in (CLAIM_BANK, COMPOSE_BANK))
        fact = is_fact(r) and not reverse
        if split == "train":
            self.rows["train_verify"] += claim
            self.rows["train_compose"] += compose
            self.rows["train_multi_turn"] += r["turns"] > 1
            self.rows["train_unknown_entity"] += r["template"] == UNKNOWN
            self.rows["train_reverse"] += reverse
        else:
            self.rows["test_reverse"] += reverse
        self.rows["conversations"] += r["template"] == CONVERSATION
        if fact:
            # a single fact
            self.per[split]["attribute"][r["attribute"]] += 1
            self.per[split]["entity"][r["entity"]] += 1
            self.per_fact[split][(r["entity"], r["attribute"])] += 1
            self.facts.add((r["entity"], r["attribute"]))

    def result(self) -> dict:
        def phrasings(counts: list[int]) -> dict[str, float]:
            if not counts:
                return {"min": 0, "mean": 0.0, "max": 0}
            return {"min": min(counts), "mean": round(sum(counts) / len(counts), 2), "max": max(counts)}

        return {
            "rows": dict(self.rows),
            "facts": len(self.facts),
            "per_attribute": {s: dict(self.per[s]["attribute"]) for s in ("train", "test")},
            "per_entity": {s: dict(self.per[s]["entity"]) for s in ("train", "test")},
            "phrasings_per_fact": {s: phrasings(list(self.per_fact[s].values())) for s in ("train", "test")},
            "beyond_eval_rows": {k: self.beyond[k] for k in ("verify", "reverse", "onehop")},
        }


def write_rows(out_dir: Path, pairs: Iterable[tuple[str, dict]], data: DataConfig, extra: dict) -> dict:
    """Stream (split, row) pairs into train.jsonl / test.jsonl, then write stats.json; returns the stats.

    Each file is written beside its target and renamed whole, stats.json last: its fingerprint is what marks the set
    as built (ensure_built), so the old stats.json goes once the new rows are all written, before they are renamed
    in: a run killed half-way leaves a set that is rebuilt, never one read as whole, and an error while generating
    leaves the old set untouched. The directory itself is never replaced, as data.output_dir may hold other
    files."""
    counted = Stats()
    with atomic_file(out_dir / "train.jsonl") as train_tmp, atomic_file(out_dir / "test.jsonl") as test_tmp, \
            atomic_file(out_dir / BEYOND_FILE) as beyond_tmp, \
            atomic_file(out_dir / VALIDATION_FILE) as validation_tmp:
        with train_tmp.open("w", encoding="utf-8", newline="") as train, \
                test_tmp.open("w", encoding="utf-8", newline="") as test, \
                beyond_tmp.open("w", encoding="utf-8", newline="") as beyond, \
                validation_tmp.open("w", encoding="utf-8", newline="") as validation:
            files = {"train": train, "test": test, "beyond": beyond, "validation": validation}
            for split, row in pairs:
                files[split].write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
                counted.add(split, row)
        _check_not_empty(counted.rows["train"], counted.rows["test"], data)
        if data.validation_size and not counted.rows["validation"]:
            raise DataError(f"data.validation_size={data.validation_size} left the validation split empty; raise it, "
                            f"or set it to 0 (no knowledge checks during training)")
        (out_dir / "stats.json").unlink(missing_ok=True)  # whole new files from here on: unmark the set first
    s = {**counted.result(), **extra}
    write_text_atomic(out_dir / "stats.json", json.dumps(s, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
    return s


def _dropped(dropped: dict | None) -> str:
    """'; dropped 2 test conversation(s) asking what train ones ask and 1 repeat(s) (...)': conversation_rows."""
    parts = []
    if dropped and dropped["test_in_train"]:
        parts.append(f"{dropped['test_in_train']} test conversation(s) asking what train ones ask")
    if dropped and dropped["repeated"]:
        parts.append(f"{dropped['repeated']} repeat(s)")
    if not parts:
        return ""
    return "; dropped " + " and ".join(parts) + " (compared after Unicode NFKC, ignoring spaces)"


def language_note(attrs: Attributes, data: DataConfig) -> str | None:
    """A warning when the file's text does not look like data.language: no Chinese character at all with zh, or
    Chinese in most values with en (the questions would mix two languages)."""
    texts = [t for e, values in attrs.items() for t in (e, *values, *values.values())]
    cjk = sum(any("\u4e00" <= ch <= "\u9fff" for ch in str(t)) for t in texts)
    if data.language == "zh" and cjk == 0:
        return (f"note: data.language=zh, but {data.source} has no Chinese text: the questions will be Chinese; "
                f"pass data.language=en for English data")
    if data.language == "en" and cjk > len(texts) / 2:
        return (f"note: data.language=en, but most of {data.source} is Chinese: the questions will be English; "
                f"pass data.language=zh for Chinese data")
    return None


def describe_origins(origins: dict[str, Origin]) -> str:
    """'question banks: 性别 bank, 入职年份 kind frames (year.start), ...': where each attribute's phrasings come
    from (data_prep.kinds)."""
    return "question banks: " + ", ".join(f"{a} {o.describe()}" for a, o in origins.items())


def format_stats(s: dict) -> str:
    lines = [f"rows: {s['rows']['train']} train ({s['rows']['train_multi_turn']} multi-turn, "
             f"{s['rows']['train_unknown_entity']} about unknown people), "
             f"{s['rows']['test']} test"
             + (f", {s['rows']['validation']} validation" if s["rows"].get("validation") else "")
             + f"; {s['facts']} facts"
             + (f"; reverse questions {s['rows']['train_reverse']} train / {s['rows']['test_reverse']} test"
                if s["rows"]["train_reverse"] + s["rows"]["test_reverse"] else "")
             + (f"; {s['rows']['conversations']} conversations from data.source" if s["rows"]["conversations"] else "")
             + "".join(f"; {s['rows'][k]} {k[6:]} rows" for k in ("train_verify", "train_compose")
                       if s["rows"].get(k))
             + _dropped(s.get("conversations_dropped")),
             f"phrasings per fact: train {s['phrasings_per_fact']['train']}, test {s['phrasings_per_fact']['test']}",
             "per attribute (train/test): " + ", ".join(
                 f"{a} {n}/{s['per_attribute']['test'].get(a, 0)}" for a, n in s["per_attribute"]["train"].items()),
             "per entity (train/test): " + ", ".join(f"{e} {n}/{s['per_entity']['test'].get(e, 0)}"
                                                    for e, n in islice(s["per_entity"]["train"].items(), 20))
             + (f", ... ({len(s['per_entity']['train']) - 20} more in stats.json)"
                if len(s["per_entity"]["train"]) > 20 else "")]
    return "\n".join(lines)


def build(cfg: Config) -> Path:
    """Build train.jsonl / test.jsonl / stats.json; returns the data directory."""
    from kit.lock import run_lock

    with run_lock(cfg, "data_prep.build"):
        return _build(cfg)


def _build(cfg: Config) -> Path:
    data = cfg.data
    extra: dict = {}
    source = load_source(data.source, data.language, data.entity_column)
    banks = bank_files(cfg, say=not isinstance(source, Conversations))
    if isinstance(source, Conversations):
        if data.validation_size:
            raise DataError(f"data.validation_size={data.validation_size}: {data.source} is a conversation dataset; "
                            f"training checks value match on attribute rows (entity, attribute, value), which it "
                            f"has none of. Set data.validation_size: 0 (and leave train.stop_at out)")
        train, test, dropped = conversation_rows(source, data)
        pairs: Iterable[tuple[str, dict]] = [*(("train", r) for r in train), *(("test", r) for r in test)]
        extra["conversations_dropped"] = dropped
        skipped = [k for k in ("unknown_entities", "multi_turn", "reverse", "verify", "compose") if getattr(data, k)]
        if skipped:  # they are built from attributes, which a conversation dataset does not have
            print(f"note: {', '.join('data.' + k for k in skipped)} ignored: {data.source} is a conversation "
                  f"dataset, and these rows are built from attributes")
    else:
        if note := language_note(source, data):
            print(note)
        loaded = load_banks(data.language, banks, data.question_banks_mode)
        origins = resolve_banks(source, loaded, data.source)
        print(describe_origins(origins))
        extra["question_banks"] = {a: o.describe() for a, o in origins.items()}
        pairs = stream(source, data, loaded, origins)
    out = cfg.data_dir
    new_dir = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)
    out.mkdir(parents=True, exist_ok=True)
    try:
        s = write_rows(out, pairs, data, {"fingerprint": fingerprint(data, banks), "source": str(data.source),
                                          "split": data.split, **extra})
    except BaseException:
        if new_dir is not None:  # made for this build: a failed build leaves nothing behind
            shutil.rmtree(new_dir, ignore_errors=True)
        raise
    print(format_stats(s))
    return out


def ensure_built(cfg: Config) -> Path:
    """The data directory, built first when missing or built from a different input/config."""
    stats_file = cfg.data_dir / "stats.json"
    if stats_file.is_file() and (cfg.data_dir / "train.jsonl").is_file() and (cfg.data_dir / "test.jsonl").is_file():
        if not _source_exists(cfg.data.source):  # prebuilt data without its source: use as is
            return cfg.data_dir
        banks = bank_files(cfg)
        if json.loads(stats_file.read_text(encoding="utf-8")).get("fingerprint") == fingerprint(cfg.data, banks):
            if str(cfg.phrasings_file) in banks:  # built with them: say so, as a build would
                bank_files(cfg, say=True)
            return cfg.data_dir
    return build(cfg)



def main(argv: list[str] | None = None) -> int:
    _, cfg = parse_args(argv, __doc__.splitlines()[0])
    out = build(cfg)
    print(f"wrote {out}/train.jsonl, test.jsonl, stats.json")
    return 0


if __name__ == "__main__":
    run_main(main)
