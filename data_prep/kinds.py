"""Question frames by kind, for attributes that no question bank covers.

An attribute without a bank of its own (入职年份, office_city, 保修期) is given a kind from its values and its name:

    date, year, number, price, duration, place, person, organisation, language, list, yes_no, text

and asked with that kind's frames in the data language (`data_prep/question_banks/kinds/<language>.yaml`): "X是哪一年进公司
的?" for a start year, "Which city is X based in?" for an office city, "X会说哪些语言?" for a list of languages. A
sense narrows a kind by words in the attribute's name (year.start, place.office, organisation.department). `text`
has no frames of its own: it is asked with the generic bank ("X的武器是什么?").

The values decide what they can (every value a year, a date, a price, a duration, a number, yes/no, or a list); the
name decides the rest (a city, a department, a person), then the values' own endings (财务部 is an organisation,
杭州市 a place, 粤语 a language, another entity of the file a person). A user bank overrides with
`kinds: {attribute: kind}` or `kind.sense`.

Where an attribute's phrasings come from, in order: a bank for it (built-in or data.question_banks: "bank"), its kind's
frames ("kind frames"), the generic bank ("generic"); the phrasings data_prep.phrase wrote are added to the kind's
frames ("model-written + kind frames (year.start)"), never in their place: a small model writes some that pass every
check and still read wrong (SmolLM2-135M for 部门: "X的股税是什么"), and the frames keep the ways people ask.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from data_prep.banks import BUILTIN_DIR, GENERIC, Bank, Banks, humanise
from data_prep.sources import DataError, ListValue
from kit.config import ConfigError, load_yaml
from kit.files import read_text

__all__ = ["KINDS", "Kind", "Sense", "Origin", "infer_kind", "load_kinds", "resolve_banks", "value_kind"]

KINDS_DIR = BUILTIN_DIR / "kinds"
KINDS = ("date", "year", "number", "price", "duration", "place", "person", "organisation", "language", "list",
         "yes_no", "text")
MIN_FRAMES = 15  # frames per kind and language: as many as a bundled attribute's bank has (性别: 15)

YES_NO = {"是", "否", "是的", "不是", "有", "无", "没有", "对", "不对", "yes", "no", "true", "false", "y", "n"}
_NUM = r"[-+]?\d[\d,]*(?:\.\d+)?"
_YEAR = re.compile(r"^(?:1[0-9]|20|21)\d{2}\s*年?$")
_MONTH = (r"(?:january|february|march|april|may|june|july|august|september|october|november|december"
          r"|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec)\.?")
_DATE = re.compile(
    rf"^(?:\d{{4}}\s*[-/.年]\s*\d{{1,2}}\s*[-/.月]\s*\d{{1,2}}\s*[日号]?"
    rf"|(?:\d{{4}}\s*年\s*)?\d{{1,2}}\s*月\s*\d{{1,2}}\s*[日号]"
    rf"|\d{{1,2}}/\d{{1,2}}(?:/\d{{2,4}})?"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}(?:,?\s+\d{{4}})?"
    rf"|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?)$", re.IGNORECASE)
_CURRENCY = r"(?:元|块|块钱|人民币|美元|欧元|英镑|日元|港币|rmb|cny|usd|eur|gbp|jpy|dollars?|euros?|pounds?|yuan)"
_PRICE = re.compile(rf"^(?:[¥￥$€£]\s*{_NUM}|{_NUM}\s*{_CURRENCY}|{_CURRENCY}\s*{_NUM})$", re.IGNORECASE)
_DURATION = re.compile(
    rf"^(?:{_NUM}|[一二两三四五六七八九十半]+)\s*(?:个)?\s*(?:年|月|周|星期|天|日|小时|分钟|秒|years?|months?|weeks?|days?|"
    rf"hours?|minutes?|seconds?|yrs?|mos?)$", re.IGNORECASE)
_NUMBER = re.compile(rf"^{_NUM}\s*[^\d\s]{{0,6}}$")
# Value endings that say the kind when the name does not (zh): 财务部, 杭州市, 粤语.
ENDINGS = {"organisation": ("部", "公司", "集团", "团队", "小组", "组", "局", "协会", "学校", "大学", "学院", "中心",
                            "商会", "骑士团", "委员会", "研究所", "医院", "银行"),
           "place": ("市", "省", "县", "区", "州", "镇", "村"),
           "language": ("语", "话", "文")}


@dataclass
class Sense:
    names: list[str]
    questions: list[str]


@dataclass
class Kind:
    names: list[str]
    questions: list[str]
    senses: dict[str, Sense] = field(default_factory=dict)
    # The kind's own answers and match (yes/no: "X的是否支持快充:否", matched with the field), else the generic bank's.
    answers: list[str] = field(default_factory=list)
    match: str | None = None


@dataclass
class Origin:
    """Where an attribute's phrasings come from: `source` is "bank", "model-written", "kind frames" or "generic";
    `kind` is the kind (with its sense: "year.start") or "" for a bank; `bank_name` names the bank in template ids."""

    source: str
    kind: str
    bank_name: str
    bank: Bank

    def describe(self) -> str:
        if self.source == "kind frames":
            return f"kind frames ({self.kind})"
        if self.source == "model-written":
            return f"model-written + kind frames ({self.kind})" if self.kind else "model-written"
        if self.source == "generic":
            return f"generic bank (kind {self.kind})"
        return self.source


def _check_list(raw: object, where: str, errors: list[str]) -> list[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) and x.strip() for x in raw):
        errors.append(f"{where}: must be a non-empty list of strings")
        return []
    return list(raw)


def load_kinds(language: str) -> dict[str, Kind]:
    """The frames of `language` (data_prep/question_banks/kinds/<language>.yaml), checked: every kind but `text`
    present, at least MIN_FRAMES questions each, placeholders known. Raises ConfigError naming the file and kind."""
    from data_prep.banks import _check_template

    path = KINDS_DIR / f"{language}.yaml"
    raw = load_yaml(read_text(path, "kind frames"), str(path)) or {}
    kinds = raw.get("kinds") if isinstance(raw, dict) else None
    errors: list[str] = []
    if not isinstance(kinds, dict):
        raise ConfigError(f"{path}: must be a mapping with 'kinds'")
    out: dict[str, Kind] = {}
    for name in KINDS:
        if name == "text":
            continue
        k = kinds.get(name)
        where = f"{path}: kinds.{name}"
        if not isinstance(k, dict):
            errors.append(f"{where}: missing")
            continue
        questions = _check_list(k.get("questions"), f"{where}.questions", errors)
        if questions and len(questions) < MIN_FRAMES:
            errors.append(f"{where}.questions: {len(questions)} frames, fewer than {MIN_FRAMES}")
        for i, q in enumerate(questions):
            _check_template(q, f"{where}.questions[{i}]", errors)
        senses = {}
        for sense, s in (k.get("senses") or {}).items():
            sw = f"{where}.senses.{sense}"
            if not isinstance(s, dict):
                errors.append(f"{sw}: must be a mapping with names and questions")
                continue
            sq = _check_list(s.get("questions"), f"{sw}.questions", errors)
            for i, q in enumerate(sq):
                _check_template(q, f"{sw}.questions[{i}]", errors)
            senses[str(sense)] = Sense(_check_list(s.get("names"), f"{sw}.names", errors), sq)
        answers = _check_list(k["answers"], f"{where}.answers", errors) if "answers" in k else []
        for i, a in enumerate(answers):
            _check_template(a, f"{where}.answers[{i}]", errors)
        if "match" in k:
            _check_template(k["match"], f"{where}.match", errors)
        out[name] = Kind(_check_list(k.get("names"), f"{where}.names", errors), questions, senses, answers,
                         k.get("match"))
    unknown = set(kinds) - set(KINDS)
    if unknown:
        errors.append(f"{path}: unknown kind(s) {sorted(unknown)}; known: {', '.join(KINDS)}")
    if errors:
        raise ConfigError.of("kind frames", errors)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Inference


def value_kind(value: str) -> str:
    """What one value is, from its text alone: yes_no, year, date, price, duration, number, list or text (the kinds
    the values decide; the others are told apart by the attribute's name).

    >>> [value_kind(v) for v in ("2019", "2019年", "3月14日", "¥3999", "2年", "18 months", "120cm", "是", "杭州")]
    ['year', 'year', 'date', 'price', 'duration', 'duration', 'number', 'yes_no', 'text']
    """
    if isinstance(value, ListValue):
        return "list"
    text = str(value).strip()
    if text.lower() in YES_NO:
        return "yes_no"
    for kind, pattern in (("year", _YEAR), ("date", _DATE), ("price", _PRICE), ("duration", _DURATION),
                          ("number", _NUMBER)):
        if pattern.match(text):
            return kind
    return "text"


def _words(name: str) -> list[str]:
    return humanise(name).lower().split()


def _cue_end(name: str, cues: list[str]) -> tuple[int, int]:
    """(where the last cue found in `name` ends, its length); (-1, 0) when none is. A Chinese cue is found anywhere
    in the name; a Latin one at the start of a word ("languages" has "language", "language" has no "age")."""
    best = (-1, 0)
    text = humanise(name).lower()
    words = _words(name)
    for cue in cues:
        c = cue.lower()
        if c.isascii():
            first, *rest = c.split()
            for i, w in enumerate(words):
                if w.startswith(first) and words[i + 1:i + 1 + len(rest)] == rest:  # "made by": both words
                    best = max(best, (1000 + i + len(rest), len(c)))  # word position, after any CJK position
        else:
            at = text.rfind(c)
            if at >= 0:
                best = max(best, (at + len(c), len(c)))
    return best


def _last_cue(name: str, cues: dict[str, list[str]]) -> str | None:
    """The key of `cues` whose cue is found last in `name` (the longer on a tie); None when none is."""
    found = {key: _cue_end(name, words) for key, words in cues.items()}
    found = {key: end for key, end in found.items() if end[0] >= 0}
    return max(found, key=found.get) if found else None


def _by_name(name: str, kinds: dict[str, Kind], among: tuple[str, ...]) -> str | None:
    return _last_cue(name, {k: kinds[k].names for k in among if k in kinds})


def _sense(name: str, kind: Kind) -> str | None:
    return _last_cue(name, {s: sense.names for s, sense in kind.senses.items()})


def infer_kind(attribute: str, values: list[str], kinds: dict[str, Kind], entities: set[str] | None = None,
               where: str = "") -> str:
    """The kind of `attribute` ("year", "place", ...) with its sense when the name has one ("year.start").

    Raises DataError naming the attribute and `where` when its values mix kinds (a year here, a word there).
    """
    seen: dict[str, list[str]] = {}
    for v in values:
        seen.setdefault(value_kind(v), []).append(str(v))
    if set(seen) <= {"number", "year"} and len(seen) == 2:  # 1998 and 12 are both numbers
        seen = {"number": seen["number"] + seen["year"]}
    if len(seen) > 1:
        shown = "; ".join(f"{k}: {', '.join(v[:3])}" for k, v in seen.items())
        fix = ("write the single values as one-item lists ([\"Excel\"])" if "list" in seen
               else "leave the attribute out of an entity that has no value (rather than 无, unknown, n/a)"
               if {"yes_no", "text"} & set(seen) and len(seen) == 2 else "make its values one kind")
        raise DataError(f"{where}: attribute \"{attribute}\" mixes kinds of values ({shown}); {fix}, or name its "
                        f"kind in a question bank (data.question_banks=[bank.yaml] holding "
                        f"`kinds: {{{attribute}: text}}`)")
    kind = next(iter(seen), "text")
    if kind == "list":
        items = [i for v in values for i in getattr(v, "items", (v,))]
        if _by_name(attribute, kinds, ("language",)) or all(str(i).endswith(ENDINGS["language"]) for i in items):
            kind = "language"
    elif kind == "number":
        kind = _by_name(attribute, kinds, ("price", "duration")) or "number"
    elif kind == "text":
        kind = (_by_name(attribute, kinds, ("person", "place", "organisation", "language"))
                or ("person" if entities and all(v in entities for v in values) else None)
                or next((k for k, ends in ENDINGS.items() if all(str(v).endswith(ends) for v in values)), "text"))
    if kind in kinds and (sense := _sense(attribute, kinds[kind])):
        return f"{kind}.{sense}"
    return kind


def check_kind(spec: str, kinds: dict[str, Kind]) -> str | None:
    """Why `spec` ("year", "year.start") names no kind of `kinds`; None when it does."""
    kind, _, sense = str(spec).partition(".")
    if kind not in KINDS:
        return f"unknown kind \"{spec}\"; known: {', '.join(KINDS)}"
    if sense and sense not in (kinds[kind].senses if kind in kinds else {}):
        known = ", ".join(f"{kind}.{s}" for s in (kinds[kind].senses if kind in kinds else {})) or "none"
        return f"kind \"{kind}\" has no sense \"{sense}\"; its senses: {known}"
    return None


def frames_bank(spec: str, kinds: dict[str, Kind], generic: Bank) -> Bank:
    """The bank of a kind (with its sense): the sense's frames, then the kind's; the generic bank's answers."""
    kind, _, sense = spec.partition(".")
    if kind not in kinds:
        return generic
    k = kinds[kind]
    questions = (k.senses[sense].questions if sense else []) + k.questions
    return Bank(questions=list(dict.fromkeys(questions)), answers=list(k.answers or generic.answers),
                match=k.match or generic.match)


def resolve_banks(attrs: dict[str, dict[str, str]], banks: Banks, where: str = "") -> dict[str, Origin]:
    """{attribute: Origin} for every attribute of `attrs`, in file order: its bank, else its kind's frames (kind
    inferred by `infer_kind`, or named in a bank's `kinds:`), else the generic bank; a bank data_prep.phrase wrote
    (`written_by`) with its kind's frames added after its own phrasings. Raises DataError (a kind that mixes values,
    or an unknown kind named in a bank) naming the attribute and the file."""
    kinds = load_kinds(banks.language)
    values: dict[str, list[str]] = {}
    for entity_values in attrs.values():
        for attribute, value in entity_values.items():
            values.setdefault(attribute, []).append(value)
    errors = []
    known = {a.strip().lower() for a in values}
    for attribute, (spec, path) in banks.kinds.items():
        if why := check_kind(spec, kinds):
            errors.append(f"{path}: kinds.{attribute}: {why}")
        elif attribute.strip().lower() not in known:
            errors.append(f"{path}: kinds.{attribute}: {where or 'the data'} has no attribute \"{attribute}\"; its "
                          f"attributes: {', '.join(values)}")
    overrides = {k.strip().lower(): spec for k, (spec, _) in banks.kinds.items() if not check_kind(spec, kinds)}
    out: dict[str, Origin] = {}
    for attribute, vals in values.items():
        name, bank = banks.for_attribute(attribute)
        if name != GENERIC and not bank.written_by:
            out[attribute] = Origin("bank", "", name, bank)
            continue
        try:
            spec = overrides.get(attribute.strip().lower()) or infer_kind(attribute, vals, kinds, set(attrs), where)
        except DataError as e:  # every attribute's problem at once
            errors.append(str(e))
            continue
        kind = spec.partition(".")[0]
        if name != GENERIC:  # model-written: the frames added, held-out phrasings its own
            frames = frames_bank(spec, kinds, banks.generic) if kind != "text" else banks.generic
            merged = Bank(questions=list(dict.fromkeys(bank.questions + [q for q in frames.questions
                                                                          if q not in bank.held_out])),
                          answers=bank.answers, match=bank.match, aliases=bank.aliases, held_out=bank.held_out,
                          source=bank.source, written_by=bank.written_by)
            out[attribute] = Origin("model-written", spec if kind != "text" else "", name, merged)
        elif kind == "text":
            out[attribute] = Origin("generic", spec, GENERIC, banks.generic)
        else:
            out[attribute] = Origin("kind frames", spec, f"kind:{spec}", frames_bank(spec, kinds, banks.generic))
    if errors:
        raise DataError(errors[0]) if len(errors) == 1 else DataError.of("question banks", errors)
    return out
