"""Questions beyond lookup, generated from the attribute table: yes/no claims, and one hop over the table.

- claims (data.verify trains them): "钟离来自蒙德吗?" -> "钟离来自璃月,不是蒙德", "钟离来自璃月吗?" -> "钟离来自璃月,没错":
  the fact first, then the verdict, so the model recalls the value before it compares it with the claim (answered
  verdict first, "不是,钟离来自璃月", the quickstart picked yes or no by the question's wording: bench/RESULTS.md,
  issue 28). The false value is another entity's value of the same attribute, so a model cannot pass by spotting
  values it never saw.
- one hop (data.compose trains them): same-value comparisons of two entities, every entity with a value, how many.
  Knowledge-editing work calls answering these *portability* (EasyEdit: Wang et al. 2023; MQuAKE: Zhong et al. 2023
  shows edited facts failing on multi-hop questions).

Phrasings: data_prep/question_banks/beyond_<language>.yaml. Training rows use its `questions`, on the train entity pairs
only; the rows eval asks (split "beyond" of `stream`, written to <data dir>/beyond.jsonl) use its `held_out`
phrasings and the held-out pairs, with the reverse bank's held-out phrasings for reverse questions. Each eval row
carries `check`: a JSON string of what kit/beyond.py needs to judge the answer.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.banks import BUILTIN_DIR, Banks, humanise, join_items, render, spoken, template_id
from data_prep.sources import Attributes, DataError
from kit.chat import system_messages
from kit.config import ConfigError, DataConfig, load_yaml
from kit.files import read_text
from kit.rows import CLAIM_BANK, COMPOSE_BANK, Row, qa_row, row_id
from kit.specificity import normalise

# Claims trained per fact and answer (data.verify): this many true and this many false, each in its own phrasing.
CLAIMS_PER_FACT = 2
# Train phrasings per list / count question (data.compose); comparisons use one phrasing per train pair.
COMPOSE_PHRASINGS = 2
PLACEHOLDERS = {"entity", "attribute", "value", "claimed", "other", "other_value", "entities", "count",
                "gender", "honorific", "pronoun"}


@dataclass
class Phrasings:
    questions: list[str]
    held_out: list[str]
    answers: dict[str, str]  # "yes"/"no" (claims, same) or "answer" (list, count)


@dataclass
class BeyondBank:
    claims: Phrasings
    claims_by_attribute: dict[str, Phrasings] = field(default_factory=dict)
    same: Phrasings | None = None
    list: Phrasings | None = None
    count: Phrasings | None = None
    path: Path | None = None


def bank_path(language: str) -> Path:
    return BUILTIN_DIR / f"beyond_{language}.yaml"


def load_beyond(language: str) -> BeyondBank:
    """The claim and one-hop phrasings of `language`, checked; every problem reported at once (ConfigError)."""
    path = bank_path(language)
    raw = load_yaml(read_text(path, "beyond-lookup phrasings"), str(path)) or {}
    errors: list[str] = []

    def phrasings(node: object, where: str, answer_keys: tuple[str, ...]) -> Phrasings | None:
        if not isinstance(node, dict):
            errors.append(f"{path}: {where}: must be a mapping with questions, held_out and {'/'.join(answer_keys)}")
            return None
        out = Phrasings([], [], {})
        for key in ("questions", "held_out"):
            items = node.get(key)
            if not isinstance(items, list) or not items or not all(isinstance(q, str) and q.strip() for q in items):
                errors.append(f"{path}: {where}.{key}: must be a non-empty list of strings")
                continue
            setattr(out, key, list(items))
        for key in answer_keys:
            if not isinstance(node.get(key), str) or not node[key].strip():
                errors.append(f"{path}: {where}.{key}: must be a non-empty string")
            else:
                out.answers[key] = node[key]
        for text in out.questions + out.held_out + list(out.answers.values()):
            try:
                names = {n for _, n, _, _ in string.Formatter().parse(text) if n is not None}
            except ValueError as e:
                errors.append(f"{path}: {where}: '{text}': {e}")
                continue
            if names - PLACEHOLDERS:
                errors.append(f"{path}: {where}: '{text}' uses unknown placeholder(s) "
                              f"{sorted(names - PLACEHOLDERS)}; known: {sorted(PLACEHOLDERS)}")
        both = set(out.questions) & set(out.held_out)
        if both:
            errors.append(f"{path}: {where}: {sorted(both)} in both questions and held_out; a held-out phrasing is "
                          f"for eval only, keep it in one list")
        return out

    yes_no = ("yes", "no")
    claims_raw = raw.get("claims") or {}
    claims = phrasings(claims_raw, "claims", yes_no)
    by_attr = {}
    for name, node in (claims_raw.get("attributes") or {}).items() if isinstance(claims_raw, dict) else []:
        by_attr[str(name)] = phrasings(node, f"claims.attributes.{name}", yes_no)
    bank = BeyondBank(claims=claims, claims_by_attribute=by_attr, path=path,
                      same=phrasings(raw.get("same"), "same", yes_no),
                      list=phrasings(raw.get("list"), "list", ("answer",)),
                      count=phrasings(raw.get("count"), "count", ("answer",)))
    if errors:
        raise ConfigError.of("beyond-lookup phrasings", errors)
    return bank


# ---------------------------------------------------------------------------------------------------------------------
# The table, as the questions need it


def _rng_pick(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def _unit(*parts: object) -> float:
    return _rng_pick(*parts) / 2**64


def _ordered(items: list[str], *key: object) -> list[str]:
    """`items` in an order fixed by `key` (sha256), independent of Python's hash seed."""
    return sorted(items, key=lambda x: _rng_pick(*key, x))


def _values(attrs: Attributes, banks: Banks) -> dict[str, dict[str, list[str]]]:
    """{attribute: {normalised value: [entities]}} over every entity, attributes in order of first appearance."""
    out: dict[str, dict[str, list[str]]] = {}
    for entity, values in attrs.items():
        for attribute, value in values.items():
            out.setdefault(attribute, {}).setdefault(normalise(spoken(value, banks.language)), []).append(entity)
    return out


def _text(attrs: Attributes, entity: str, attribute: str, language: str) -> str:
    return spoken(attrs[entity][attribute], language)


def _slots(banks: Banks, attrs: Attributes, entity: str, attribute: str, **more: str) -> dict[str, str]:
    slots = {"entity": entity, "attribute": humanise(attribute),
             "value": _text(attrs, entity, attribute, banks.language), "honorific": "", "pronoun": entity,
             "gender": ""}
    slots.update(banks.gender_slots(attrs[entity]) or {})
    slots.update(more)
    return slots


def _pairs(entities: list[str], data: DataConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train pairs, held-out pairs) of entities, in file order; a pair is held out by its own hash (adding an entity
    moves no other pair), with at least one pair on each side when there are two or more."""
    pairs = [(a, b) for i, a in enumerate(entities) for b in entities[i + 1:]]
    unit = {p: _unit(data.seed, "pair", *p) for p in pairs}
    held = [p for p in pairs if unit[p] < data.test_size]
    if not held and len(pairs) >= 2:
        held = [min(pairs, key=unit.get)]
    if len(held) == len(pairs) and len(pairs) >= 2:
        held.remove(max(pairs, key=unit.get))
    return [p for p in pairs if p not in held], held


def _comparable(table: dict[str, dict[str, list[str]]], banks: Banks) -> list[str]:
    """Attributes worth comparing: some value shared by two entities and more than one value in all."""
    return [a for a, by_value in table.items() if len(by_value) >= 2 and any(len(e) >= 2 for e in by_value.values())]


def _row(data: DataConfig, bank: str, template: str, question: str, answer: str, entity: str, attribute: str,
         value: str, check: dict | None = None) -> Row:
    row = qa_row(row_id(bank, entity, attribute, question), system_messages(data.system_prompt), question, answer,
                 template_id(bank, template), entity=entity, attribute=attribute, value=value)
    if check is not None:
        row["check"] = json.dumps(check, ensure_ascii=False, sort_keys=True)
    return row


def _claim_phrasings(bank: BeyondBank, banks: Banks, attribute: str) -> Phrasings:
    name, _ = banks.for_attribute(attribute)
    return bank.claims_by_attribute.get(name) or bank.claims


def _false_values(table: dict[str, dict[str, list[str]]], attrs: Attributes, entity: str, attribute: str,
                  language: str) -> list[str]:
    """The attribute's other values (each as the first entity that has it says it), never the true one."""
    own = normalise(_text(attrs, entity, attribute, language))
    return [_text(attrs, owners[0], attribute, language) for v, owners in table[attribute].items() if v != own]


# ---------------------------------------------------------------------------------------------------------------------
# Rows


def claim_rows(attrs: Attributes, data: DataConfig, banks: Banks, bank: BeyondBank,
               held_out: bool) -> Iterator[dict]:
    """Yes/no claims about every fact whose attribute has another value in the table: train phrasings
    (`held_out=False`: CLAIMS_PER_FACT true and CLAIMS_PER_FACT false, each in a different phrasing and false value
    when there are enough) or every held-out phrasing once true and once false (`held_out=True`, with `check`)."""
    table = _values(attrs, banks)
    for entity, values in attrs.items():
        for attribute in values:
            false = _false_values(table, attrs, entity, attribute, banks.language)
            if not false:
                continue
            ph = _claim_phrasings(bank, banks, attribute)
            value = _text(attrs, entity, attribute, banks.language)
            every = [_text(attrs, owners[0], attribute, banks.language) for owners in table[attribute].values()]
            if held_out:
                plan = [(t, truth) for t in ph.held_out for truth in (True, False)]
            else:
                order = _ordered(ph.questions, data.seed, "claim", entity, attribute)
                n = min(2 * CLAIMS_PER_FACT, len(order))
                plan = [(order[k], k % 2 == 0) for k in range(n)]
            false_order = _ordered(false, data.seed, "claimed", entity, attribute, held_out)
            k_false = 0
            for template, truth in plan:
                claimed = value if truth else false_order[k_false % len(false_order)]
                k_false += not truth
                slots = _slots(banks, attrs, entity, attribute, claimed=claimed)
                question = render(template, slots)
                answer = render(ph.answers["yes" if truth else "no"], slots)
                check = {"kind": "claim", "truth": truth, "entity": entity, "value": value, "claimed": claimed,
                         "values": every} if held_out else None
                yield _row(data, CLAIM_BANK, template, question, answer, entity, attribute, value, check)


def compose_rows(attrs: Attributes, data: DataConfig, banks: Banks, bank: BeyondBank,
                 held_out: bool) -> Iterator[dict]:
    """One-hop questions over the table: same-value comparisons of two entities (train pairs in one train phrasing
    each, or held-out pairs in every held-out phrasing), and for each value two or more entities have, who has it
    and how many (COMPOSE_PHRASINGS train phrasings, or every held-out one)."""
    table = _values(attrs, banks)
    language = banks.language
    train_pairs, test_pairs = _pairs(list(attrs), data)
    for attribute in _comparable(table, banks):
        for a, b in (test_pairs if held_out else train_pairs):
            if attribute not in attrs[a] or attribute not in attrs[b]:
                continue
            va, vb = _text(attrs, a, attribute, language), _text(attrs, b, attribute, language)
            truth = normalise(va) == normalise(vb)
            ph = bank.same
            templates = ph.held_out if held_out else _ordered(ph.questions, data.seed, "same", a, b, attribute)[:1]
            for template in templates:
                slots = _slots(banks, attrs, a, attribute, other=b, other_value=vb)
                check = {"kind": "same", "truth": truth, "entity": a, "other": b, "value": va,
                         "other_value": vb} if held_out else None
                yield _row(data, COMPOSE_BANK, template, render(template, slots),
                           render(ph.answers["yes" if truth else "no"], slots), f"{a}+{b}", attribute,
                           va if truth else "", check)
        for owners in table[attribute].values():
            if len(owners) < 2:
                continue
            others = [e for e in attrs if e not in owners]
            value = _text(attrs, owners[0], attribute, language)
            for kind, ph in (("list", bank.list), ("count", bank.count)):
                templates = (ph.held_out if held_out else
                             _ordered(ph.questions, data.seed, kind, attribute, value)[:COMPOSE_PHRASINGS])
                for template in templates:
                    slots = _slots(banks, attrs, owners[0], attribute, entities=join_items(owners, language),
                                   count=str(len(owners)))
                    check = ({"kind": kind, "entities": owners, "others": others, "count": len(owners)}
                             if held_out else None)
                    yield _row(data, COMPOSE_BANK, template, render(template, slots),
                               render(ph.answers["answer"], slots), "", attribute, value, check)


def eval_rows(attrs: Attributes, data: DataConfig, banks: Banks, reverse_test: Iterator[dict]) -> Iterator[dict]:
    """Every row eval asks beyond lookup, with its `split` ("verify", "reverse", "onehop") and `check`: held-out
    claims, the held-out reverse questions (`reverse_test`: the test rows data.reverse would write), held-out
    one-hop questions. Ids differ from any train/test row's (the bank name is part of them)."""
    bank = load_beyond(banks.language)
    for r in claim_rows(attrs, data, banks, bank, held_out=True):
        yield {**r, "split": "verify"}
    entities = list(attrs)
    for r in reverse_test:
        check = {"kind": "reverse", "entities": [r["entity"]], "others": [e for e in entities if e != r["entity"]]}
        yield {**r, "id": hashlib.sha1(f"beyond\x1f{r['id']}".encode()).hexdigest()[:12], "split": "reverse",
               "check": json.dumps(check, ensure_ascii=False, sort_keys=True)}
    for r in compose_rows(attrs, data, banks, bank, held_out=True):
        yield {**r, "split": "onehop"}


def train_rows(attrs: Attributes, data: DataConfig, banks: Banks) -> Iterator[dict]:
    """The train rows data.verify and data.compose ask for (none when both are off)."""
    if not (data.verify or data.compose):
        return
    bank = load_beyond(banks.language)
    table = _values(attrs, banks)
    if data.verify and not any(len(by_value) >= 2 for by_value in table.values()):
        raise DataError(f"{data.source}: data.verify=true, but no attribute has two different values, so there is no "
                        f"false claim to make (a false value is another entity's value of the same attribute); add "
                        f"entities or set data.verify=false")
    if data.compose and not _comparable(table, banks):
        raise DataError(f"{data.source}: data.compose=true, but no attribute has a value two entities share and "
                        f"another value besides, so there is nothing to compare, list or count; add entities or set "
                        f"data.compose=false")
    if data.verify:
        yield from claim_rows(attrs, data, banks, bank, held_out=False)
    if data.compose:
        yield from compose_rows(attrs, data, banks, bank, held_out=False)
