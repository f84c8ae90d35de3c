"""Beyond lookup: is a yes/no claim confirmed or denied, is the right entity named, is a count right.

Eval rows (data_prep/beyond.py writes them to <data dir>/beyond.jsonl, eval.generate answers them after the test and
specificity rows) carry `check`, a JSON string saying how to judge the answer:
- claim  {"truth", "entity", "value", "claimed", "values"}: a true claim passes when it is confirmed and nothing is
  denied; a false claim passes when it is denied and not confirmed. A confirmation is a confirming first word
  (是的, 对, 没错, yes, correct...: "是的,钟离来自璃月") or a clause that is nothing but one after the fact is stated
  ("钟离来自璃月,没错" / "Zhongli is from Liyue, so yes": the order the kit trains, the fact first, then the
  verdict). Stating the value back is not a confirmation: the question holds the value, and an untuned model that
  repeats the question (or babbles around its words) would pass.
  Either fails when the answer names another value of the attribute that is neither the true nor the claimed one
  ("不是,钟离来自须弥" to "钟离来自蒙德吗?" when 须弥 is a value of the table: a wrong correction is a wrong answer).
  `names_value`: a passed denial that also states the true value ("钟离来自璃月,不是蒙德").
- same   {"truth"}: a same-value comparison of two entities, judged as a claim, without values.
- reverse / list {"entities", "others"}: every entity of `entities` named, none of `others`.
- count  {"count"}: the first number in the answer (digits, 一..九十, one..twenty) is the count.

Why: a model taught "A is B" by rote does not answer "B is A" (the reversal curse, Berglund et al. 2023), and facts
taught or edited one at a time fail on questions that combine them (portability in EasyEdit, Wang et al. 2023;
MQuAKE, Zhong et al. 2023).

Confirm and deny are read so that they cannot be had cheaply: a tag question ("不是吗", "isn't it?") is not a
denial, "I don't know" / "我不知道" is neither, a bare "是" / "yes" to a false claim is a confirmation, and an answer
that both confirms and denies fails. Entity names and table values are masked before the words are looked for, so a
value such as "不死鸟" cannot deny. Strings are found with kit.specificity.contains.
"""

from __future__ import annotations

import json
import re
import unicodedata
from decimal import Decimal

from kit.specificity import contains, tokens

__all__ = ["BEYOND_FILE", "BEYOND_SPLITS", "first_number", "judge", "polarity", "summarise"]
BEYOND_SPLITS = ("verify", "reverse", "onehop")  # the `split` of the rows eval answers for these measures
BEYOND_FILE = "beyond.jsonl"


# --- reading yes and no ---------------------------------------------------------------------------------------------

_ZH_IGNORANCE = re.compile(r"不知道|不清楚|不确定|不了解|不太了解|无法(确定|回答|判断)?|没有(关于|相关)?.{0,12}?(资料|信息|记录)")
_ZH_TAGS = re.compile(r"不是吗|是不是|对不对|对吗|是吗|对吧|是吧|不是么|是否|吗")
# 不 and 没 deny, except in words where they do not: 不错/没错 (right), 不仅/不但 (not only), 不断, 不少, 不久, 不过...
_ZH_DENY = re.compile(r"不(?!错|仅|但|断|少|久|过|管|论|禁)|没(?!错)|并非|否|(?<![没不])错")
_ZH_CONFIRM = re.compile(r"^(是|对|没错|不错|正确|确实|当然|嗯)")
# A later clause confirms only when it is nothing but a confirmation ("钟离来自璃月,没错"), never a bare 是 ("...,是璃月人").
_ZH_CLAUSE_CONFIRM = re.compile(r"(所以|因此|那么|那)?(是的|是啊|是呀|对的|对啊|对|是?没错|不错|正确|说得对|确实如此|确实是这样"
                                r"|是?一样|相同)的?")

_EN_IGNORANCE = re.compile(r"\b(i\s+)?(do\s*n[o']?t|don't|dont|cannot|can't|am\s+not\s+sure|not\s+sure|unsure)\s+"
                           r"(know|say|tell|sure|confirm)\b|\bno\s+(information|idea|data|record)\b|\bnot\s+sure\b")
_EN_TAGS = re.compile(r",?\s*\b(is|are|does|do|did|was|were|has|have|can|will)(n't|\s+not)?\s+(it|he|she|they|that|"
                      r"this|there|we|you)\s*\?|,\s*(right|correct)\s*\?")
_EN_DENY = re.compile(r"\b(no|not|nope|never|neither|nor|incorrect|false|wrong|different|differ|differs)\b|n't\b")
_EN_CONFIRM = re.compile(r"^(yes|yeah|yep|yup|correct|right|true|indeed|exactly|sure|absolutely|that's right|"
                         r"that is right|that's correct|that is correct)\b")
_EN_CLAUSE_CONFIRM = re.compile(r"((so|then|therefore|thus|hence|and)\s+)?(yes|yeah|yep|correct|right|true|indeed|"
                                r"that's right|that is right|that's correct|that is correct|that's true|that is true)")


def _masked(answer: str, names: list[str]) -> str:
    """`answer` (NFKC, lower case) with every name in `names` replaced by a space, longest first."""
    text = unicodedata.normalize("NFKC", str(answer)).lower()
    for name in sorted({unicodedata.normalize("NFKC", n).lower() for n in names if n}, key=len, reverse=True):
        text = text.replace(name, " ")
    return text


# What ends a clause, in ASCII and full width: polarity reads a confirmation in a clause of its own after the fact.
CLAUSE_ENDS = ",.!?:;，。！？：；"


def polarity(answer: str, language: str, names: list[str] = ()) -> tuple[bool, bool]:
    """(confirms, denies): whether the answer says yes (its first word, or a later clause that is nothing but a
    confirmation: "钟离来自璃月,没错"), and whether it says no anywhere. Tag questions and "I don't know" count as
    neither; `names` (entities, values) are masked before "no" is looked for. Words are read before masking:
    "钟离是成年男性" starts with a name, not with "是"."""
    ignorance, tags, deny, confirm, clause_confirm = (
        (_ZH_IGNORANCE, _ZH_TAGS, _ZH_DENY, _ZH_CONFIRM, _ZH_CLAUSE_CONFIRM) if language == "zh" else
        (_EN_IGNORANCE, _EN_TAGS, _EN_DENY, _EN_CONFIRM, _EN_CLAUSE_CONFIRM))

    def cleaned(text: str) -> str:
        return tags.sub(" ", ignorance.sub(" ", text.replace("\u2019", "'")))

    punctuation = " 、\"'“”" + CLAUSE_ENDS
    text = cleaned(_masked(answer, []))
    head = text.lstrip(punctuation)
    if head.startswith(ECHO):  # "<the question>? Yes" confirms; "<the question>是一名..." goes on with the question
        rest = head[1:]
        head = rest.lstrip(punctuation) if rest[:1] and rest[:1] in punctuation.replace(" ", "") else ""
    clauses = [c.strip(punctuation) for c in re.split(f"[{re.escape(CLAUSE_ENDS)}\n]", head)[1:]]
    confirms = bool(confirm.match(head)) or any(clause_confirm.fullmatch(c) for c in clauses)
    text = text.replace(ECHO, " ")
    return confirms, bool(deny.search(_masked(text, list(names))))


# --- numbers ---------------------------------------------------------------------------------------------------------

_ZH_DIGITS = {"零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_EN_NUMBERS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}


_ZH_NOT_NUMBERS = re.compile(r"一共|一些|一样|一起|一般|一直|一致|统一|同一|唯一")


def _zh_number(run: str) -> int | None:
    """一..九十九 written out ("四", "十二", "二十", "二十三"); None for anything else."""
    if run in _ZH_DIGITS:
        return _ZH_DIGITS[run]
    m = re.fullmatch(r"([一二两三四五六七八九]?)十([一二三四五六七八九]?)", run)
    if not m:
        return None
    return (_ZH_DIGITS[m.group(1)] if m.group(1) else 1) * 10 + (_ZH_DIGITS[m.group(2)] if m.group(2) else 0)


def first_number(answer: str, names: list[str] = ()) -> Decimal | None:
    """The first number in `answer`: digits (commas between groups of three are thousands separators), Chinese
    numerals up to 九十九, English words up to twenty; `names` are masked first (a name with a numeral in it is no count)."""
    text = _ZH_NOT_NUMBERS.sub(" ", _masked(answer, list(names)))
    found = []
    for m in re.finditer(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|[零一二两三四五六七八九十]+|[a-z]+", text):
        run = m.group()
        if run[0].isdigit():
            found.append((m.start(), Decimal(run.replace(",", ""))))
        elif run.isascii():
            if run in _EN_NUMBERS:
                found.append((m.start(), Decimal(_EN_NUMBERS[run])))
        elif (n := _zh_number(run)) is not None:
            found.append((m.start(), Decimal(n)))
    return min(found)[1] if found else None


# --- judging one answer ----------------------------------------------------------------------------------------------


ECHO = "\x00"  # where the question stood in an answer that repeated it


def without_echo(answer: str, question: str) -> str:
    """`answer` (NFKC, lower case) without the question repeated in it: "丽莎难道来自蒙德！..." to "丽莎难道来自蒙德?"
    states nothing."""
    text = unicodedata.normalize("NFKC", "" if answer is None else str(answer)).lower()
    asked = unicodedata.normalize("NFKC", str(question or "")).lower().strip().rstrip("?？!！.。 ")
    return text.replace(asked, ECHO) if asked else text


def judge(check: dict | str, answer: str, language: str, question: str = "") -> dict:
    """{"pass": bool, "why": str} for one answer, plus "names_value" (bool) for claims. `check` as written by
    data_prep/beyond.py (a dict or its JSON); `language`: "zh" or "en"; `question`: what was asked, never counted
    as said when the answer repeats it. See the module docstring for the rules."""
    c = json.loads(check) if isinstance(check, str) else check
    kind = c["kind"]
    answer = without_echo(answer, question)
    if kind in ("reverse", "list"):
        missing = [e for e in c["entities"] if not contains(answer, e)]
        extra = [e for e in c["others"] if contains(answer, e)]
        why = "; ".join(x for x in (f"missing {', '.join(missing)}" if missing else "",
                                    f"also names {', '.join(extra)}" if extra else "") if x)
        return {"pass": not missing and not extra, "why": why}
    if kind == "count":
        n = first_number(answer, [*c.get("entities", []), *c.get("others", [])])
        return {"pass": n is not None and n == c["count"], "why": "no number" if n is None else
                ("" if n == c["count"] else f"says {n}, is {c['count']}")}
    if kind == "same":
        names = [c["entity"], c["other"], c["value"], c["other_value"]]
        confirms, denies = polarity(answer, language, names)
        return _polarity_verdict(c["truth"], confirms, denies)
    if kind != "claim":
        raise ValueError(f"unknown check kind {kind!r}")
    value, claimed = c["value"], c["claimed"]
    names = [c["entity"], *c["values"]]
    confirms, denies = polarity(answer, language, names)
    # other values of the attribute, except those inside the true or claimed value ("男性" in "成年男性")
    wrong = [v for v in c["values"] if v not in (value, claimed) and contains(answer, v)
             and not contains(value, v) and not contains(claimed, v)]
    stated = bool(tokens(value)) and contains(answer, value)
    out = _polarity_verdict(c["truth"], confirms, denies)
    if wrong and out["pass"]:
        out = {"pass": False, "why": f"names {', '.join(wrong)}, not the true {value}"}
    out["names_value"] = bool(out["pass"] and not c["truth"] and stated)
    return out


def _polarity_verdict(truth: bool, confirms: bool, denies: bool) -> dict:
    if confirms and denies:
        return {"pass": False, "why": "confirms and denies"}
    if truth:
        ok = confirms and not denies
        return {"pass": ok, "why": "" if ok else ("denies a true claim" if denies else "neither confirms nor denies")}
    return {"pass": denies, "why": "" if denies else ("confirms a false claim" if confirms
                                                     else "does not deny a false claim")}


# --- a report --------------------------------------------------------------------------------------------------------

# Below these the report calls a figure out (issue 28's targets on the quickstart; onehop is an aim).
TARGETS = {"true_confirmed": 0.90, "false_denied": 0.90, "reverse": 0.80, "onehop": 0.70}


def _rate(passed: int, rows: int) -> float | None:
    return passed / rows if rows else None


def summarise(rows_by_model: dict[str, list[dict]], language: str, worst_n: int) -> dict:
    """Per model: verification (true claims confirmed, false claims denied, denials that name the true value), reverse
    and one-hop (per kind and overall) rates with their row counts, and the failed rows of each model but "base",
    with the base model's answer to the same question beside each. `rows_by_model`: {label: prediction rows of the
    splits in BEYOND_SPLITS, each with `check`}."""
    base = {r["id"]: r["prediction"] for r in rows_by_model.get("base", [])}
    out: dict = {"models": {}, "targets": TARGETS}
    for label, rows in rows_by_model.items():
        judged = [(r, judge(r["check"], r["prediction"], language, r["question"])) for r in rows]

        def count(split: str, kind: str | None = None, truth: bool | None = None, judged=judged) -> tuple[int, int]:
            sel = [(r, v) for r, v in judged if r["split"] == split
                   and (kind is None or json.loads(r["check"])["kind"] == kind)
                   and (truth is None or json.loads(r["check"]).get("truth") is truth)]
            return sum(v["pass"] for _, v in sel), len(sel)

        t_pass, t_rows = count("verify", truth=True)
        f_pass, f_rows = count("verify", truth=False)
        named = sum(v.get("names_value", False) for r, v in judged if r["split"] == "verify")
        r_pass, r_rows = count("reverse")
        o_pass, o_rows = count("onehop")
        m = {"true_claims": t_rows, "true_confirmed": _rate(t_pass, t_rows),
             "false_claims": f_rows, "false_denied": _rate(f_pass, f_rows),
             "denials_naming_value": _rate(named, f_pass), "false_denied_naming_value": _rate(named, f_rows),
             "reverse_rows": r_rows, "reverse": _rate(r_pass, r_rows),
             "onehop_rows": o_rows, "onehop": _rate(o_pass, o_rows)}
        for kind in ("same", "list", "count"):
            p, n = count("onehop", kind)
            m[f"onehop_{kind}_rows"], m[f"onehop_{kind}"] = n, _rate(p, n)
        if label != "base":
            failed = [{"split": r["split"], "kind": json.loads(r["check"])["kind"], "question": r["question"],
                       "answer": r["answer"], "prediction": r["prediction"], "base": base.get(r["id"], ""),
                       "why": v["why"]} for r, v in judged if not v["pass"]]
            m["failed"] = {s: [f for f in failed if f["split"] == s][:worst_n] for s in BEYOND_SPLITS}
        out["models"][label] = m
    return out
