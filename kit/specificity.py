"""Specificity: a model that knows its facts must also keep them where they belong.

Three measures (computed by eval.metrics.specificity, on rows eval.generate answers next to the test questions):
- leak: everyday questions that mention no entity (`probes/probe_<lang>.txt`, or `eval.probe_file`). An answer leaks
  when it contains a trained entity name or attribute value that neither the question nor the base model's answer
  to it contains.
- invention: the trained phrasings, asked about people in no data (names from `PROBE_NAMES`). An answer invents when
  it states a trained attribute value the question does not contain.
- drift: BERTScore F1 between the fine-tuned and the base answer to each everyday question.

And what helps against leak and invention, as training data (see configs/quickstart.yaml for what was measured):
- `data.unknown_entities`: questions about invented people (names from `TRAIN_NAMES`, never one of `PROBE_NAMES`)
  answered "I don't know".
- `data.replay`: the base model's own answers to general prompts (`probes/replay_<lang>.txt`, never a probe).

Strings are found in answers by `contains` (words and numbers whole, CJK anywhere; case and punctuation do not count).
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path

from kit.errors import KitError
from kit.files import read_text
from kit.rows import PROBE, UNKNOWN, Row, is_fact, qa_row, question_of, row_id

PROBES = Path(__file__).parent / "probes"

# Invented people. The two lists never share a name: a model trained to say "I don't know" about TRAIN_NAMES is
# measured on PROBE_NAMES, which it never saw. A name that is also an entity of the data is skipped.
PROBE_NAMES = {
    "zh": ["王建国", "陈默", "李秀英", "张伟", "刘洋", "赵丽华", "孙志强", "周晓燕", "黄志明", "林婉清", "马俊杰", "高雅琴"],
    "en": ["John Carter", "Priya Nair", "Tomas Rivera", "Emma Lindqvist", "Kenji Watanabe", "Fatima Zahra",
           "Oliver Brooks", "Sofia Rossi", "Samuel Adeyemi", "Nora Jensen", "Diego Alvarez", "Leah Goldberg"],
}
TRAIN_NAMES = {
    "zh": ["郑海涛", "吴桂芳", "冯立新", "何静怡", "许文博", "韩雪梅", "曹宇轩", "邓晓明", "彭佳怡", "潘振华", "蒋雨晴",
           "罗建平", "谢婷婷", "宋子豪", "唐秀兰", "袁志刚", "杜晓峰", "叶思远", "程美玲", "魏国栋", "苏明辉", "吕欣然",
           "丁宏伟", "沈佳慧", "田文杰", "任雅丽", "姜丽萍", "范志勇", "傅晓琳", "汪建华", "崔敏", "陆子轩", "萧雨薇",
           "龚正阳", "严慧芳", "贺伟东"],
    "en": ["Daniel Hughes", "Aisha Bello", "Lukas Becker", "Mei Lin", "Carlos Mendes", "Hannah Scott", "Ivan Petrov",
           "Grace Kim", "Omar Haddad", "Julia Novak", "Ethan Walsh", "Chloe Martin", "Ravi Sharma", "Anna Kowalski",
           "Peter Olsen", "Zoe Bennett", "Marco Bianchi", "Yuki Tanaka", "Lucas Moreau", "Amara Obi", "Henry Clark",
           "Ines Duarte", "Felix Wagner", "Maya Cohen", "Noah Fischer", "Sara Lindgren", "Ahmed Farouk", "Lena Vogel",
           "Tom Harris", "Nadia Petrova", "Paulo Costa", "Emily Turner", "Hiro Sato", "Clara Weiss", "Kwame Mensah",
           "Eva Horvath"],
}
# Asked by training's knowledge checks (sft/checks.py) only: choosing when to stop on eval's or training's own names
# would tune the figure eval reports.
CHECK_NAMES = {
    "zh": ["钱志远", "黎文静", "方国强", "邱雅婷", "夏明远", "石慧敏", "孔德华", "白若曦"],
    "en": ["Nathan Price", "Leila Karimi", "Jonas Berg", "Camila Reyes", "Victor Hale", "Ingrid Solberg",
           "Tariq Aziz", "Rosa Delgado"],
}
# Each list, by its use in `invented_names`, with the config key that says how many of it are asked.
NAME_LISTS = {"probe": (PROBE_NAMES, "eval.unknown_names"), "train": (TRAIN_NAMES, "data.unknown_entities"),
              "check": (CHECK_NAMES, "train.check_names")}
# What a model should say about someone it was never told about.
UNKNOWN_ANSWER = {"zh": "我不知道{entity}是谁,没有关于{entity}的资料。",
                  "en": "I don't know who {entity} is; I have no information about {entity}."}

SPECIFICITY_SPLITS = (PROBE, UNKNOWN)  # the `split` of the rows eval answers for these measures
# Leak and invention above these are called out in the report (the quickstart's targets).
HIGH = {"leak": 0.05, "invention": 0.10}


def normalise(text: str) -> str:
    """NFKC (full-width -> half-width), lower case, no whitespace or punctuation."""
    text = unicodedata.normalize("NFKC", str(text)).lower()
    return "".join(ch for ch in text if not (ch.isspace() or unicodedata.category(ch).startswith("P")))


def read_questions(path: str | Path, what: str = "question file") -> list[str]:
    """One question a line; blank lines and lines starting with # are skipped; duplicates kept once."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: {what} not found")
    lines = [line.strip() for line in read_text(path, what).splitlines()]
    questions = list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))
    if not questions:
        raise KitError(f"{path}: no questions in the {what} (one question a line, # for comments)")
    return questions


def probe_questions(language: str, probe_file: str | None = None) -> list[str]:
    return read_questions(probe_file or PROBES / f"probe_{language}.txt", "probe file (eval.probe_file)")


def check_questions(language: str) -> list[str]:
    """The everyday questions training's knowledge checks ask for leak (never trained, never in eval's probes)."""
    return read_questions(PROBES / f"check_{language}.txt", "knowledge-check questions")


def replay_prompts(language: str) -> list[str]:
    return read_questions(PROBES / f"replay_{language}.txt", "replay prompts")


def invented_names(language: str, n: int, entities: set[str], use: str) -> list[str]:
    """The first n names of the list `use` ("probe", "train" or "check") that are no entity of the data."""
    by_language, key = NAME_LISTS[use]
    names = by_language[language]
    taken = {normalise(e) for e in entities}
    free = [name for name in names if normalise(name) not in taken]
    if n > len(free):
        raise KitError(f"{key}: {n} invented names asked for, {len(free)} available for data.language={language}; "
                       f"use at most {len(free)}")
    return free[:n]


def _pieces(value: str) -> list[str]:
    """A value and its parts ("往生堂客卿,岩神" -> itself, 往生堂客卿, 岩神), each long enough to mean something."""
    parts = [value, *re.split(r"\s*(?:[,，、;；|/]|\band\b|\bor\b)\s*", value)]
    return [p.strip() for p in parts if len(normalise(p)) >= 2]


def trained_strings(rows: Iterable[dict]) -> dict[str, dict[str, str]]:
    """{"entities": {normalised: text}, "values": {normalised: text}} taught by single-turn fact rows. Values include
    what a right answer must contain (`expected`, e.g. 男性 for 成年男性)."""
    entities: dict[str, str] = {}
    values: dict[str, str] = {}
    for r in rows:
        if not is_fact(r):
            continue
        entities.setdefault(normalise(r["entity"]), r["entity"])
        for text in (r.get("value") or "", *re.split(r"\s\|\s", r.get("expected") or "")):
            for piece in _pieces(text):
                values.setdefault(normalise(piece), piece)
    return {"entities": entities, "values": values}


# Scripts written without spaces between words (Han, kana, Hangul, Thai, Lao, Myanmar, Khmer): each character is a
# token of its own, so a value written in them is found anywhere in a run of them, as a substring.
_NO_SPACES = ("\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3040-\u30ff"
              "\u3100-\u312f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f")
# A run of letters and digits of other scripts, parts joined by "." or "," (1.5, 1,815, 3.2.1), with the sign in front.
_TOKEN = re.compile(rf"(-?)((?:(?![{_NO_SPACES}])[^\W_])+(?:[.,](?:(?![{_NO_SPACES}])[^\W_])+)*)|([{_NO_SPACES}])")
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")
_SPACED_WORD_CHAR = re.compile(rf"(?![{_NO_SPACES}])[^\W_]")


@functools.lru_cache(maxsize=65536)
def tokens(text: str) -> tuple[str | Decimal, ...]:
    """What `contains` compares: words (lower case, after NFKC), numbers (as values) and single CJK characters, in
    order; whitespace, punctuation and symbols only separate them.

    A number is a run of digits with its sign and decimal point: "-3" is not 3, "1.5" is not 15, 3.0 is 3. Commas
    between groups of three digits are thousands separators (1,815 is 1815); any other comma or dot between digits
    separates numbers (1,5 is 1 and 5: a decimal comma is not read). A minus directly after a Latin-script letter or
    a digit is a hyphen (2-3 is 2 and 3; 零下-3 is -3). Digits glued to letters are part of a word (15m, 3rd, B2)."""
    text = unicodedata.normalize("NFKC", str(text)).lower().replace("\u2212", "-")  # U+2212 MINUS SIGN
    out: list[str | Decimal] = []
    for m in _TOKEN.finditer(text):
        sign, run, single = m.groups()
        if single:
            out.append(single)
            continue
        if sign and m.start() > 0 and _SPACED_WORD_CHAR.match(text[m.start() - 1]):
            sign = ""  # a hyphen: "2-3", "COVID-19"
        if _NUMBER.fullmatch(run):
            out.append(Decimal(sign + run.replace(",", "")))
            continue
        for k, part in enumerate(re.split(r"[.,]", run)):
            out.append(Decimal((sign if k == 0 else "") + part) if part.isdecimal() else part)
    return tuple(out)


def contains(text: str, needle: str) -> bool:
    """`needle` in `text`, compared as `tokens`: Latin-script words and numbers only whole ("Electro" is not in
    "electricity", "male" not in "female", 1815 not in 18150), CJK anywhere (Chinese has no spaces between words);
    case, full-width forms and punctuation do not count ("往生堂客卿,岩神" is in "往生堂客卿，岩神")."""
    want, have = tokens(needle), tokens(text)
    n = len(want)
    return n > 0 and any(have[i:i + n] == want for i in range(len(have) - n + 1))


def is_empty(text: str | float | None) -> bool:
    """No answer: nothing, None, NaN (a blank cell as pandas reads it) or whitespace only."""
    return text is None or (isinstance(text, float) and math.isnan(text)) or not str(text).strip()


def value_match(expected: str, prediction: str | None) -> bool | None:
    """Every part of the attribute's value (parts separated by " | ", in any order) is in the prediction, found as
    kit.specificity.contains finds it: Latin-script words and numbers whole, CJK anywhere. None when there is no
    value to look for; an empty prediction holds no value."""
    parts = [p for p in re.split(r"\s\|\s", expected or "") if tokens(p)]
    if not parts:
        return None
    return not is_empty(prediction) and all(contains(prediction, p) for p in parts)


def value_matches(rows: Iterable[dict], predictions: Iterable[str]) -> tuple[int, int]:
    """(predictions holding their row's value, rows that have one to judge): value_match over rows, the row's
    `expected` (else its `value`) as the value. A row without one is neither right nor wrong, as eval.metrics
    counts it."""
    judged = [m for m in (value_match(r.get("expected") or r.get("value") or "", p) for r, p in zip(rows, predictions))
              if m is not None]
    return sum(judged), len(judged)


def _found(strings: dict[str, str], answer: str, *given: str) -> list[str]:
    return [text for text in strings.values() if contains(answer, text) and not any(contains(g, text) for g in given)]


def leaked(answer: str, question: str, base_answer: str, strings: dict[str, dict[str, str]]) -> list[str]:
    """Trained names and values in `answer` that neither the question nor the base model's answer contains."""
    return _found({**strings["entities"], **strings["values"]}, answer, question, base_answer)


def invented(answer: str, question: str, strings: dict[str, dict[str, str]]) -> list[str]:
    """Trained attribute values stated in an answer about someone in no data. A value the question holds is not
    counted when the answer repeats it, except when the question offers alternatives ("男性还是女性?", "male or
    female?") and the answer picks one of them."""
    values = strings["values"]
    offered = [v for v in values.values() if contains(question, v)]
    said = [v for v in values.values() if contains(answer, v)]
    new = [v for v in said if v not in offered]
    picked = [v for v in offered if v in said]
    if len(offered) >= 2 and len(picked) == 1:
        new += picked
    return new


def specificity_rows(train_rows: Iterable[dict] | Callable[[], Iterable[dict]], language: str,
                     probe_file: str | None, n_names: int, name_list: str = "probe") -> list[Row]:
    """The rows eval answers for leak (split "probe") and invention (split "unknown"), in the shape of data rows.

    Invention questions are the train phrasings themselves (one per attribute and name, picked by hash), with the
    entity's name replaced by an invented one, so they ask exactly what training taught, about nobody.
    `train_rows` may be a function returning a fresh iterator (e.g. over a large train.jsonl): the rows are then
    read twice, one at a time, and never held. `name_list`: which invented names (`invented_names`)."""
    def rows() -> Iterable[dict]:
        return train_rows() if callable(train_rows) else train_rows

    entities: set[str] = set()
    system = None
    for r in rows():
        if is_fact(r) and r.get("value"):
            entities.add(r["entity"])
            if system is None:
                system = [m for m in r["messages"] if m["role"] == "system"]
    if not entities:  # e.g. a conversation dataset without entity/value fields: no trained strings to look for
        return []

    def row(split: str, question: str, entity: str = "", attribute: str = "", template: str = "") -> Row:
        return qa_row(row_id(split, entity, attribute, question), system, question, "", template or split,
                      entity=entity, attribute=attribute, split=split)

    out = [row(PROBE, q) for q in probe_questions(language, probe_file)]
    names = invented_names(language, n_names, entities, name_list)
    # For each (name, attribute): the train row with the smallest hash of (name, attribute, row id), kept as it
    # streams past (attributes in order of first appearance).
    picks: dict[str, dict[str, tuple[str, str, str, str]]] = {}
    for r in rows():
        if is_fact(r) and r.get("value") and r["entity"] in question_of(r):
            best = picks.setdefault(r["attribute"], {})
            for name in names:
                key = row_id(name, r["attribute"], r["id"])
                if name not in best or key < best[name][0]:
                    best[name] = (key, question_of(r), r["entity"], r["template"])
    for name in names:
        for attribute, best in picks.items():
            _, question, entity, template = best[name]
            out.append(row(UNKNOWN, question.replace(entity, name), name, attribute, template))
    return out
