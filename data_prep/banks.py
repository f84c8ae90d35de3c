"""Question banks: how each attribute is asked about and answered, loaded from YAML files.

The built-in banks are `data_prep/question_banks/<language>.yaml`; `data.question_banks` adds user banks (extend) or
replaces the built-in ones attribute by attribute (replace).
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.sources import text_key
from kit.config import Config, ConfigError, load_yaml
from kit.files import read_text
from kit.rows import REVERSE_BANK

BUILTIN_DIR = Path(__file__).parent / "question_banks"
PLACEHOLDERS = {"entity", "attribute", "value", "gender", "honorific", "pronoun"}
GENERIC = "*"
REVERSE = REVERSE_BANK  # the bank of questions from value to entity (data.reverse)


@dataclass
class Bank:
    questions: list[str]
    answers: list[str]
    match: str = "{value}"
    aliases: list[str] = field(default_factory=list)
    # Phrasings kept for the test split (data.split=phrasing) instead of a random choice among `questions`, e.g. the
    # model-written ones data_prep.phrase sets apart: never used in training.
    held_out: list[str] = field(default_factory=list)
    # Where the bank comes from: "built-in", or the path of the user's file that added it.
    source: str = "built-in"
    # The model that wrote it (data_prep.phrase's file says so with `written_by:`); "" for banks people wrote.
    written_by: str = ""


@dataclass
class Banks:
    language: str
    attributes: dict[str, Bank]
    generic: Bank
    reverse: Bank
    gender_keys: list[str]
    gender_words: dict[str, dict[str, str]]
    # Kinds the user's banks name for attributes (`kinds: {入职年份: year}`): {attribute: (kind, file)};
    # data_prep/kinds.py checks and uses them.
    kinds: dict[str, tuple[str, str]] = field(default_factory=dict)

    def for_attribute(self, attribute: str) -> tuple[str, Bank]:
        """(bank name, bank): the attribute's own bank, found by name or alias, else the generic one."""
        key = attribute.strip().lower()
        for name, bank in self.attributes.items():
            if key == name.lower() or key in (a.lower() for a in bank.aliases):
                return name, bank
        return GENERIC, self.generic

    def gender_slots(self, entity_attrs: dict[str, str]) -> dict[str, str] | None:
        """{gender, honorific, pronoun} from the entity's gender attribute; None when it has none we can read."""
        keys = {k.lower() for k in self.gender_keys}
        for attr, value in entity_attrs.items():
            if attr.strip().lower() not in keys:
                continue
            text = value.lower()
            for words in self.gender_words.values():  # file order matters: "female" before "male"
                if words["match"].lower() in text:
                    return {k: v for k, v in words.items() if k != "match"}
        return None


def template_id(bank_name: str, text: str) -> str:
    """Stable id: reordering or extending a bank does not rename the other templates."""
    return f"{bank_name}/{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _check_template(text: object, where: str, errors: list[str]) -> None:
    if not isinstance(text, str) or not text.strip():
        errors.append(f"{where}: must be a non-empty string, got {text!r}")
        return
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as e:
        errors.append(f"{where}: '{text}': {e} (write literal braces as {{{{ and }}}})")
        return
    unknown = fields - PLACEHOLDERS
    if unknown or "" in fields:
        bad = ", ".join("{" + f + "}" for f in sorted(unknown))
        errors.append(f"{where}: '{text}' uses unknown placeholder {bad or '{}'}; "
                      f"known: {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}")


def _parse_bank(raw: object, where: str, errors: list[str], partial: bool = False) -> Bank | None:
    if not isinstance(raw, dict):
        errors.append(f"{where}: must be a mapping with questions/answers/match, got {type(raw).__name__}")
        return None
    unknown = set(raw) - {"questions", "answers", "match", "aliases", "held_out"}
    if unknown:
        errors.append(f"{where}: unknown key(s) {sorted(unknown)}; known: questions, answers, match, aliases, "
                      f"held_out")
    held_out = raw.get("held_out") or []
    if not isinstance(held_out, list):
        errors.append(f"{where}.held_out: must be a list of strings")
        held_out = []
    questions = {text_key(q): q for q in raw.get("questions") or [] if isinstance(q, str)}
    for i, text in enumerate(held_out):
        _check_template(text, f"{where}.held_out[{i}]", errors)
        if isinstance(text, str) and (same := questions.get(text_key(text))) is not None:
            also = "" if same == text else f" as '{same}' (the same after Unicode NFKC, ignoring spaces)"
            errors.append(f"{where}.held_out[{i}]: '{text}' is also in questions{also}; a held-out phrasing is for "
                          f"test only, so keep it in one of the two lists")
    for key in ("questions", "answers"):
        items = raw.get(key)
        if items is None and partial:
            continue
        if not isinstance(items, list) or not items:
            errors.append(f"{where}.{key}: must be a non-empty list of strings")
            continue
        for i, text in enumerate(items):
            _check_template(text, f"{where}.{key}[{i}]", errors)
    if "match" in raw:
        _check_template(raw["match"], f"{where}.match", errors)
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        errors.append(f"{where}.aliases: must be a list of strings")
        aliases = []
    return Bank(questions=list(raw.get("questions") or []), answers=list(raw.get("answers") or []),
                match=raw.get("match", "{value}"), aliases=aliases, held_out=list(held_out))


def _read(path: Path, errors: list[str], partial: bool) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: question bank not found (data.question_banks)")
    raw = load_yaml(read_text(path, "question bank"), str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping with 'attributes' and/or 'generic'")
    unknown = set(raw) - {"attributes", "generic", "reverse", "gender_keys", "gender_words", "kinds", "written_by"}
    if unknown:
        errors.append(f"{path}: unknown top-level key(s) {sorted(unknown)}; "
                      f"known: attributes, generic, reverse, gender_keys, gender_words, kinds, written_by")
    out = {"attributes": {}, "generic": None, "reverse": None}
    attrs = raw.get("attributes") or {}
    if not isinstance(attrs, dict):
        errors.append(f"{path}: 'attributes' must be a mapping of attribute name to bank")
        attrs = {}
    for name, bank in attrs.items():
        out["attributes"][str(name)] = _parse_bank(bank, f"{path}: attributes.{name}", errors, partial)
        if out["attributes"][str(name)] is not None:
            out["attributes"][str(name)].written_by = str(raw.get("written_by") or "")
    for name in ("generic", "reverse"):
        if raw.get(name) is not None:
            out[name] = _parse_bank(raw[name], f"{path}: {name}", errors, partial)
    out["gender_keys"] = raw.get("gender_keys")
    out["gender_words"] = raw.get("gender_words")
    kinds = raw.get("kinds") or {}
    if not isinstance(kinds, dict) or not all(isinstance(v, str) for v in kinds.values()):
        errors.append(f"{path}: 'kinds' must be a mapping of attribute name to kind, e.g. kinds: {{入职年份: year}}")
        kinds = {}
    out["kinds"] = {str(k): (v, str(path)) for k, v in kinds.items()}
    return out


def load_banks(language: str, extra: list[str] | None = None, mode: str = "extend") -> Banks:
    """The built-in bank for `language`, with the user's banks merged in; all template problems reported at once."""
    errors: list[str] = []
    base = _read(BUILTIN_DIR / f"{language}.yaml", errors, partial=False)
    attributes: dict[str, Bank] = dict(base["attributes"])
    generic: Bank = base["generic"]
    reverse: Bank = base["reverse"]
    gender_keys, gender_words = base["gender_keys"], base["gender_words"]
    kinds: dict[str, tuple[str, str]] = {}
    for path in extra or []:
        user = _read(Path(path).expanduser(), errors, partial=mode == "extend")
        kinds.update(user["kinds"])
        banks = [("attribute", name, bank) for name, bank in user["attributes"].items()]
        for kind, name, bank in banks + [(GENERIC, GENERIC, user["generic"]), (REVERSE, REVERSE, user["reverse"])]:
            if bank is None:
                continue
            own = {GENERIC: generic, REVERSE: reverse}.get(kind) or attributes.get(name)
            if mode == "extend" and own is not None:
                merged = Bank(questions=own.questions + [q for q in bank.questions if q not in own.questions],
                              answers=own.answers + [a for a in bank.answers if a not in own.answers],
                              match=bank.match if bank.match != "{value}" else own.match,
                              aliases=own.aliases + bank.aliases,
                              held_out=own.held_out + [q for q in bank.held_out if q not in own.held_out])
            else:
                if not bank.questions or not bank.answers:
                    errors.append(f"{path}: bank '{name}' needs both questions and answers (it is new here)")
                    continue
                merged = bank
                merged.source = str(path)
            if kind == GENERIC:
                generic = merged
            elif kind == REVERSE:
                reverse = merged
            else:
                attributes[name] = merged
        gender_keys = user["gender_keys"] or gender_keys
        gender_words = user["gender_words"] or gender_words
    if errors:
        raise ConfigError.of("question banks", errors)
    return Banks(language, attributes, generic, reverse, list(gender_keys or []), dict(gender_words or {}), kinds)


def bank_files(cfg: Config, say: bool = False) -> list[str]:
    """The user's banks: data.question_banks, then the phrasings data_prep.phrase wrote into output_dir, when there."""
    files = list(cfg.data.question_banks)
    written = cfg.phrasings_file
    if written.is_file() and str(written) not in files:
        files.append(str(written))
        if say:
            print(f"question banks: using the model-written phrasings in {written} (data_prep.phrase; edit it, or "
                  f"delete it to go back to the generic phrasings)")
    return files


def humanise(key: str) -> str:
    """An attribute key as words, for the questions: start_year -> start year, officeCity -> office city,
    spoken-languages -> spoken languages; other keys (性别, Nationality) unchanged."""
    text = re.sub(r"(?<=[a-z0-9])([A-Z])(?=[a-z])", lambda m: " " + m.group(1).lower(), key)
    return " ".join(re.sub(r"[_\-]+", " ", text).split()) or key


def join_items(items: list[str] | tuple[str, ...], language: str) -> str:
    """Every item of a list value, as a person says them: "Yoruba and Portuguese", "A, B and C", "约鲁巴语和葡萄牙语",
    "甲、乙和丙"."""
    items = list(items)
    if len(items) < 2:
        return "".join(items)
    sep, last = ("、", "和") if language == "zh" else (", ", " and ")
    return sep.join(items[:-1]) + last + items[-1]


def spoken(value: str, language: str) -> str:
    """A value as answers say it: a list value with every item named (join_items), any other value as it is."""
    from data_prep.sources import ListValue

    return join_items(value.items, language) if isinstance(value, ListValue) else value


def render(template: str, slots: dict[str, str]) -> str:
    return template.format(**slots).strip()
