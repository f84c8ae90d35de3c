"""Question phrasings for attributes no question bank covers, written by a chat model (seed 000's augmentation).

    python -m data_prep.phrase configs/quickstart.yaml data.source=staff.json data.language=en output_dir=runs/staff
    (read and edit runs/staff/phrasings.yaml, then)  python -m sft.train configs/quickstart.yaml data.source=... (same)

For each attribute without a bank of its own (asked otherwise with its kind's frames, data_prep/kinds.py), the model
(data.phrasing_model, default model.name_or_path) is shown the attribute, its language and a few of its values, with two built-in
attributes as worked examples, and samples data.phrasing_candidates questions. A candidate is kept when it passes
`check_question` (the entity placeholder once, no value of the attribute in it, a question in the data language, not
a repeat of a kept one, within length bounds) and when the same model, asked it about a real entity, finds that
entity's answer about *this* attribute more likely than about any other (`specific`: against the answers a neutral
question gets, so "Where is X from?" is not kept for office_city). The best data.phrasing_kept are written, with a
few set apart as `held_out` (the test split asks those only: phrasings that never shared a template with training),
and answer templates the model wrote (checked the same way) after the plain "X's start year is 2019." sentence.

The result is a question bank YAML (`data_prep/question_banks/<language>.yaml`'s format) at <output_dir>/phrasings.yaml,
for a person to read and edit. data_prep.build and sft.train with the same config use it as a user bank, so a rebuild
never calls the model again and writes the same bytes. An attribute with fewer than data.phrasing_min good
phrasings is left out (a comment in the file and a line on the console say so) and asked with its kind's frames; a
model that cannot write the data language at all (a short probe first) writes nothing, with a one-line reason. A
bigger data.phrasing_model (a GPU user's 7B chat model) is the way to better phrasings than the frames.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.banks import Banks, humanise, load_banks, render, spoken
from data_prep.sources import Attributes, Conversations, DataError, load_source
from kit.config import Config, parse_args, run_main
from kit.files import write_text_atomic
from kit.specificity import normalise

__all__ = ["Written", "check_question", "main", "phrase", "to_yaml"]

PLACEHOLDER = "X"  # how the prompts name the person; {entity} in the bank

# Worked examples for the prompt: a built-in bank's attribute, how a person would call it, and two values.
SHOTS = {
    "en": [("nation", "nationality", ["Japan", "Brazil"]), ("role", "occupation", ["nurse", "engineer"]),
           ("personality", "personality", ["calm and patient", "cheerful"])],
    "zh": [("国籍", "国籍", ["璃月", "蒙德"]), ("身份", "身份", ["图书管理员", "骑士"]),
           ("性格特征", "性格特征", ["温柔体贴", "活泼开朗"])],
}
ASK = {
    "en": "Write one question a person would ask to find out someone's {attribute} (for example: {examples}). "
          "Call the person X. Reply with the question only.",
    "zh": "写一个问题,用来询问某人的{attribute}(例如:{examples})。用X指代这个人。只回复这个问题。",
}
ANSWER = {
    "en": "Answer the question in one short sentence that states the value.\nQuestion: {question}\nValue: {value}",
    "zh": "用一句简短的话回答这个问题,并说出这个值。\n问题:{question}\n值:{value}",
}
NEUTRAL = {"en": "Tell me about {entity}.", "zh": "介绍一下{entity}。"}
QUESTION_WORDS = {
    "en": ("what", "what's", "which", "when", "where", "who", "whose", "how", "do", "does", "did", "is", "are", "was",
           "were", "can", "could", "would", "will", "has", "have", "tell", "since", "in", "at", "for", "from", "to"),
    "zh": ("什么", "哪", "几", "吗", "谁", "多少", "怎么", "怎样", "如何", "何", "呢", "请问", "告诉我", "是否"),
}
PERSON = {"en": r"\b(?:the|this|that) (?:person|employee|individual)\b", "zh": r"这个人|此人|该人"}
TEMPERATURE = 0.7  # sampling: lower writes fewer broken sentences, higher more varied ones (measured: bench/RESULTS.md)
MARGIN = 2.0  # nats: how much more a kept question must make its own attribute's answer expected than any other's
LENGTH = {"en": (3, 20), "zh": (4, 40)}  # words (en) or characters (zh) besides the placeholder
# Candidates sampled per attribute before writing, and how many must pass check_question; fewer for most attributes:
# the model cannot write questions in the data language, and nothing is written. (SmolLM2-135M in Chinese passes it:
# 12-37% of its candidates pass check_question, as in English; its Chinese fails later, at the specificity check.)
PROBE = (16, 2)
FAMILY = 0.6  # two phrasings sharing this much of their words (or characters) are one family: the second is dropped


@dataclass
class Written:
    """One attribute's outcome: kept phrasings (train and held out), answers, and why candidates were dropped."""
    attribute: str
    questions: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    candidates: int = 0
    dropped: Counter = field(default_factory=Counter)
    # Set when too few passed (data.phrasing_min): what the attribute is asked with instead ("kind frames (year)").
    fallback: str = ""


# ---------------------------------------------------------------------------------------------------------------------
# Checks


def _as_template(text: str, language: str) -> str | None:
    """The first line of a model reply, cleaned, with the placeholder as {entity}; None when it has no placeholder
    or uses braces of its own."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    line = re.sub(r"^(question|q|问题)\s*[::]\s*", "", line, flags=re.I).strip().strip("\"'“”「」")
    mark = re.search(r"[??]", line)
    if mark:  # small models run on after the question: "X的生日是什么?;;;;"
        line = line[:mark.end()]
    else:
        line = re.sub(r"[\W_]+$", lambda m: m.group(0)[:1] if m.group(0)[:1] in ".。" else "", line)
    if re.search(r"[^\w\s]{3}", line.replace("{", "").replace("}", "")):
        return None
    if "{" in line or "}" in line:
        return None
    pattern = r"\bX\b" if language == "en" else r"(?<![A-Za-z])X(?![A-Za-z])"
    if not re.search(pattern, line):  # small models often write "the person" for the placeholder
        line = re.sub(PERSON[language], PLACEHOLDER, line, count=1, flags=re.I)
    if len(re.findall(pattern, line)) != 1:
        return None
    return re.sub(pattern, "{entity}", line)


def _words(template: str, language: str) -> list[str]:
    text = unicodedata.normalize("NFKC", template.replace("{entity}", " ")).lower()
    if language == "zh":
        return [ch for ch in text if not (ch.isspace() or unicodedata.category(ch)[0] in "PZS")]
    return re.findall(r"[a-z0-9']+", text)


def _overlap(a: list[str], b: list[str]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / max(1, len(sa | sb))


def check_question(template: str | None, language: str, values: list[str], kept: list[str]) -> str | None:
    """Why a candidate question template is not kept (None: keep it). `values` are the attribute's values (no
    question may give the answer away), `kept` the templates kept so far (no repeats, no same family)."""
    if template is None:
        return "no placeholder"
    words = _words(template, language)
    cjk = sum("\u4e00" <= ch <= "\u9fff" for ch in template)
    if (language == "en" and cjk) or (language == "zh" and cjk < 0.8 * len(words)):
        return "wrong language"
    low, high = LENGTH[language]
    if not low <= len(words) <= high:
        return "length"
    plain = normalise(template.replace("{entity}", ""))
    for value in values:
        for piece in [value, *getattr(value, "items", ())]:
            if len(normalise(piece)) >= 2 and normalise(piece) in plain:
                return "gives the value away"
    text = unicodedata.normalize("NFKC", template).lower()
    if language == "en":
        if not (text.rstrip().endswith("?") or words[0] in QUESTION_WORDS["en"]):
            return "not a question"
        if re.search(r"\b(you|your|i|my|me)\b", text.replace("do you know", "").replace("can you tell me", "")
                     .replace("could you tell me", "").replace("tell me", "")):
            return "not about the person"
        # a capital after the first word is a name or a place (or made-up caps) the attribute did not give
        if re.search(r"(?<!^)\b[A-Z]", template.replace("{entity}", "").replace(" I ", " ").lstrip()):
            return "names someone else"
    else:
        if not (text.rstrip().endswith("?") or any(w in template for w in QUESTION_WORDS["zh"])):
            return "not a question"
        if re.search(r"[A-Za-z]", template.replace("{entity}", "")):
            return "names someone else"
    for other in kept:
        if normalise(other.replace("{entity}", "")) == plain:
            return "repeat"
        if _overlap(_words(other, language), words) >= FAMILY:
            return "same family as a kept one"
    return None


def check_answer(text: str, language: str, value: str, values: list[str]) -> str | None:
    """An answer template from a model reply about `value`: the placeholder and the value once each, no other value
    of the attribute; None when the reply is not usable."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    if "{" in line or "}" in line or line.count(value) != 1 or any(v != value and v in line for v in values):
        return None
    template = _as_template(line.replace(value, "zzvaluezz"), language)
    if template is None:
        return None
    template = template.replace("zzvaluezz", "{value}")
    words = _words(template.replace("{value}", " "), language)
    if not 2 <= len(words) <= LENGTH[language][1] // 2 or not template.rstrip().endswith((".", "。", "!", "!")):
        return None
    # a phrasing that talks about the task, not the person
    if re.search(r"answer|question|value|回答|问题", template.replace("{value}", ""), re.I):
        return None
    if language == "en" and re.search(r"(?<!^)\b[A-Z][a-z]+", template.replace("{entity}", "")):
        return None  # a name or place the value does not give
    return template


# ---------------------------------------------------------------------------------------------------------------------
# The model's part


class Writer:
    """The phrasing model, loaded once: samples replies, and scores answers given a question."""

    def __init__(self, cfg: Config) -> None:
        import torch

        from kit.models import load_model, load_tokenizer, pick_device, resolve, set_threads

        name = cfg.data.phrasing_model or cfg.model.name_or_path
        path = resolve(name, cfg.model.cache_dir)
        self.device = pick_device(cfg.train.device)
        set_threads(cfg.train.threads, self.device)
        self.name, self.tok = name, load_tokenizer(path, cfg.model.trust_remote_code)
        self.model = load_model(path, cfg.model, self.device, dtype=torch.float32 if self.device == "cpu" else None)
        self.model.eval()
        self.seed = cfg.data.seed

    def sample(self, conversations: list[list[dict]], n: int, max_new_tokens: int = 32) -> list[str]:
        """n sampled replies to each conversation (seeded: the same inputs give the same replies on one machine)."""
        import torch

        from kit.chat import generation_prompt

        out = []
        for k, messages in enumerate(conversations):
            ids = self.tok(generation_prompt(self.tok, messages), return_tensors="pt",
                           add_special_tokens=False).to(self.device)
            torch.manual_seed(self.seed + k)
            with torch.inference_mode():
                got = self.model.generate(**ids, do_sample=True, temperature=TEMPERATURE, top_p=0.95, top_k=0,
                                          max_new_tokens=max_new_tokens, num_return_sequences=n,
                                          pad_token_id=self.tok.pad_token_id)
            start = ids["input_ids"].shape[1]
            out += [self.tok.decode(g[start:], skip_special_tokens=True) for g in got]
        return out

    def answer_logprobs(self, pairs: list[tuple[str, str]], batch_size: int = 32) -> list[float]:
        """log P(answer | question) summed over the answer's tokens, for (question, answer) pairs."""
        import torch

        from kit.chat import generation_prompt

        rows = []
        for question, answer in pairs:
            prompt = self.tok(generation_prompt(self.tok, [{"role": "user", "content": question}]),
                              add_special_tokens=False)["input_ids"]
            rows.append((prompt, self.tok(answer, add_special_tokens=False)["input_ids"]))
        scores = []
        pad = self.tok.pad_token_id
        for i in range(0, len(rows), batch_size):
            batch = rows[i:i + batch_size]
            width = max(len(p) + len(a) for p, a in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, (p, a) in enumerate(batch):
                ids[j, :len(p) + len(a)] = torch.tensor(p + a)
                mask[j, :len(p) + len(a)] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logp = torch.log_softmax(logits.float(), -1).cpu()
            for j, (p, a) in enumerate(batch):
                positions = torch.arange(len(p) - 1, len(p) + len(a) - 1)
                scores.append(float(logp[j, positions, torch.tensor(a)].sum()))
        return scores


def _prompts(attribute: str, examples: list[str], banks: Banks, language: str, variants: int) -> list[list[dict]]:
    """`variants` few-shot conversations asking for a question about `attribute`; each shows other phrasings of
    the built-in examples, so the samples vary in style."""
    out = []
    for k in range(variants):
        messages = []
        for bank_name, called, values in SHOTS[language][:2] if k % 2 == 0 else SHOTS[language][1:]:
            # shots with {honorific} & co. would teach the model to write braces: only those with {entity} alone
            questions = [q for q in banks.attributes[bank_name].questions if q.count("{") == 1]
            shot = questions[(k * 5 + len(messages)) % len(questions)].replace("{entity}", PLACEHOLDER)
            messages += [{"role": "user", "content": ASK[language].format(attribute=called,
                                                                          examples="; ".join(values))},
                         {"role": "assistant", "content": shot}]
        messages.append({"role": "user", "content": ASK[language].format(attribute=humanise(attribute),
                                                                         examples="; ".join(examples))})
        out.append(messages)
    return out


def specific(writer: Writer, templates: list[str], attribute: str, attrs: Attributes, banks: Banks,
             language: str) -> list[float]:
    """For each question template, how much more it makes the model expect the answer about `attribute` than the
    answer about any other attribute of the same entities (log-probability gains over a neutral question, averaged
    over two entities): > 0 means the question asks for this attribute."""
    entities = [e for e in attrs if attribute in attrs[e] and len(attrs[e]) > 1][:2]
    if not entities:
        return [1.0] * len(templates)
    answer = banks.generic.answers[0]
    pairs, shape = [], []
    for entity in entities:
        names = list(attrs[entity])
        answers = [render(answer, {"entity": entity, "attribute": humanise(a), "value": spoken(attrs[entity][a],
                                                                                                   language)})
                   for a in names]
        shape.append((entity, names, len(pairs)))
        for template in [NEUTRAL[language], *templates]:
            question = template.replace("{entity}", entity)
            pairs += [(question, a) for a in answers]
    logp = writer.answer_logprobs(pairs)
    margins = [0.0] * len(templates)
    for _entity, names, start in shape:
        n = len(names)
        neutral = logp[start:start + n]
        own = names.index(attribute)
        for t in range(len(templates)):
            got = logp[start + (t + 1) * n:start + (t + 2) * n]
            gain = [g - z for g, z in zip(got, neutral)]
            margins[t] += (gain[own] - max(g for i, g in enumerate(gain) if i != own)) / len(shape)
    return margins


def write_for(writer: Writer, attribute: str, attrs: Attributes, banks: Banks, cfg: Config) -> Written:
    data = cfg.data
    language = data.language
    variants = max(1, min(8, data.phrasing_candidates // 12))
    per = -(-data.phrasing_candidates // variants)
    values, replies, passed, dropped = _checked_candidates(writer, attribute, attrs, banks, language, variants, per,
                                                           data.phrasing_candidates)
    got = Written(attribute, candidates=len(replies), dropped=dropped)
    margins = specific(writer, passed, attribute, attrs, banks, language) if passed else []
    ranked = sorted((m, i) for i, m in enumerate(margins) if m > MARGIN)
    got.dropped["asks for another attribute"] += len(passed) - len(ranked)
    best = [passed[i] for _, i in sorted(ranked, key=lambda x: (-x[0], x[1]))[:data.phrasing_kept]]
    got.dropped["beyond data.phrasing_kept"] += len(ranked) - len(best)
    if len(best) < data.phrasing_min:  # too few: reported (with this count) by phrase(), nothing written
        got.questions = best
        return got
    n_held = min(max(1, round(len(best) * data.test_size)), len(best) - 1)  # at least one left to train on
    # Held out: every k-th of the ranked list, so test gets good and weaker phrasings alike.
    step = len(best) / max(1, n_held)
    held_idx = {int(step * i + step / 2) for i in range(n_held)}
    got.held_out = [q for i, q in enumerate(best) if i in held_idx]
    got.questions = [q for i, q in enumerate(best) if i not in held_idx]
    got.answers = [render(banks.generic.answers[0], {"entity": "{entity}", "attribute": humanise(attribute),
                                                      "value": "{value}"})]
    value = values[0]
    asked = got.questions[0].replace("{entity}", PLACEHOLDER)
    said = spoken(value, language)
    replies = writer.sample([[{"role": "user", "content": ANSWER[language].format(question=asked, value=said)}]],
                            8, max_new_tokens=32)
    for reply in replies:
        template = check_answer(reply, language, said, [spoken(v, language) for v in values])
        if template and template not in got.answers and len(got.answers) < 3:
            got.answers.append(template)
    return got


# ---------------------------------------------------------------------------------------------------------------------
# Output


def to_yaml(written: list[Written], model: str, language: str, when: str) -> str:
    """The bank file: a header saying where it came from, then one bank per attribute."""
    import yaml

    lines = [f"# Question phrasings written by data_prep.phrase with {model} on {when} (language: {language}).",
             "# A question bank like data_prep/question_banks/*.yaml: read it, edit or delete phrasings, add your own.",
             "# questions: used for training; held_out: asked in the test split only (data.split=phrasing);",
             "# answers: the first is the canonical answer, the others are used with data.vary_answers=true.",
             "# data_prep.build and sft.train with the same config use this file; delete it to go back to the",
             "# generic phrasings, or rerun data_prep.phrase --overwrite to write it again."]
    attributes = {}
    for w in written:
        dropped = ", ".join(f"{why} {n}" for why, n in w.dropped.most_common() if n)
        lines.append(f"# {w.attribute}: {w.candidates} candidates; kept {len(w.questions) + len(w.held_out)}; "
                     f"dropped: {dropped or 'none'}" + (f"; too few, not written: asked with the {w.fallback}"
                                                        if w.fallback else ""))
        if w.fallback:
            continue
        attributes[w.attribute] = {"questions": w.questions, "held_out": w.held_out, "answers": w.answers,
                                   "match": "{value}"}
    body = yaml.safe_dump({"written_by": model, "attributes": attributes}, allow_unicode=True, sort_keys=False,
                          width=1000)
    return "\n".join(lines) + "\n" + body


def phrase(cfg: Config, overwrite: bool = False) -> Path | None:
    """Write <output_dir>/phrasings.yaml for the attributes without a bank; returns its path (None: nothing written,
    every attribute is asked with its kind's frames or has a bank).

    An attribute for which the model writes fewer than data.phrasing_min usable phrasings is left out of the file
    (a comment says so) and asked with its kind's frames (data_prep/kinds.py); so is every attribute when a short
    probe shows the model cannot write usable questions in the data language for most of them (PROBE)."""
    from data_prep.kinds import resolve_banks

    data = cfg.data
    out = cfg.phrasings_file
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already written (and perhaps edited); data_prep.build and sft.train use it as it is. "
                        f"Delete it or pass --overwrite to write it again")
    source = load_source(data.source, data.language, data.entity_column)
    if isinstance(source, Conversations):
        raise DataError(f"{data.source}: a conversation dataset; data_prep.phrase writes questions for an attribute "
                        f"file ({{entity: {{attribute: value}}}} or a table)")
    banks = load_banks(data.language, list(data.question_banks), data.question_banks_mode)
    origins = resolve_banks(source, banks, data.source)  # checks kinds before the model is loaded
    todo = [a for a, o in origins.items() if o.source in ("kind frames", "generic")]
    covered = [a for a in origins if a not in todo]
    if not todo:
        print(f"every attribute of {data.source} has a question bank ({', '.join(covered)}): nothing to write")
        return None
    print(f"writing phrasings for {', '.join(todo)}"
          + (f" (with a bank already: {', '.join(covered)})" if covered else ""), flush=True)
    writer = Writer(cfg)
    need = min(PROBE[1], data.phrasing_min)
    probed = {a: probe(writer, a, source, banks, data.language) for a in todo}
    able = [a for a, (usable, _) in probed.items() if usable >= need]
    print(f"probe: usable questions of {PROBE[0]}: " + ", ".join(f"{a} {u}" for a, (u, _) in probed.items()),
          flush=True)
    if len(able) * 2 < len(todo):
        print(f"{writer.name} wrote {need} or more usable {data.language} questions of {PROBE[0]} in a probe for "
              f"{len(able)} of {len(todo)} attribute(s) ("
              + ", ".join(f"{a} {usable}" for a, (usable, _) in probed.items())
              + "): it cannot write questions in this language, so nothing is written and "
              + ", ".join(f"{a} is asked with the {origins[a].describe()}" for a in todo)
              + "; a bigger data.phrasing_model writes better ones", flush=True)
        return None
    written = []
    for attribute in todo:
        w = write_for(writer, attribute, source, banks, cfg)
        kept = len(w.questions) + len(w.held_out)
        if kept < data.phrasing_min:
            w.fallback = origins[attribute].describe()
        print(f"  {attribute}: {w.candidates} candidates, kept {kept}"
              + (f" (fewer than data.phrasing_min={data.phrasing_min}: not written, asked with the {w.fallback})"
                 if w.fallback else f" ({len(w.held_out)} held out for test), {len(w.answers)} answer template(s)"),
              flush=True)
        written.append(w)
    if all(w.fallback for w in written):
        print(f"nothing written: {writer.name} wrote fewer than data.phrasing_min={data.phrasing_min} usable "
              f"phrasings for every attribute; data_prep.build asks them with their kind frames. Write a bank "
              f"(data.question_banks: a YAML like data_prep/question_banks/{data.language}.yaml), use a bigger "
              f"data.phrasing_model, or raise data.phrasing_candidates")
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, to_yaml(written, writer.name, data.language, dt.date.today().isoformat()))
    origin = {a: w.fallback or "model-written + " + origins[a].describe() for a, w in zip(todo, written)}
    print("question banks: " + ", ".join(f"{a} {o}" for a, o in origin.items())
          + (f", {', '.join(covered)} bank" if covered else ""))
    return out


def probe(writer: Writer, attribute: str, attrs: Attributes, banks: Banks, language: str) -> tuple[int, int]:
    """(usable, asked): how many of PROBE[0] candidate questions about `attribute` pass `check_question`."""
    _, replies, passed, _ = _checked_candidates(writer, attribute, attrs, banks, language, 2, PROBE[0] // 2)
    return len(passed), len(replies)


def _checked_candidates(writer: Writer, attribute: str, attrs: Attributes, banks: Banks, language: str,
                        variants: int, per: int, limit: int | None = None
                        ) -> tuple[list[str], list[str], list[str], Counter]:
    """(the attribute's values, the model's replies (at most `limit`), the templates that pass `check_question`, why
    the others were dropped): `per` samples from each of `variants` few-shot prompts."""
    values = list(dict.fromkeys(attrs[e][attribute] for e in attrs if attribute in attrs[e]))
    examples = [spoken(v, language) for v in values[:2]]
    replies = writer.sample(_prompts(attribute, examples, banks, language, variants), per)[:limit]
    passed: list[str] = []
    dropped: Counter = Counter()
    for reply in replies:
        template = _as_template(reply, language)
        why = check_question(template, language, values, passed)
        if why:
            dropped[why] += 1
        else:
            passed.append(template)
    return values, replies, passed, dropped


def main(argv: list[str] | None = None) -> int:
    def options(parser) -> None:
        parser.add_argument("--overwrite", action="store_true", help="write phrasings.yaml again if it exists")

    args, cfg = parse_args(argv, __doc__.splitlines()[0], options)
    out = phrase(cfg, overwrite=args.overwrite)
    if out:
        print(f"wrote {out}: read it, then build or train with the same config (it is used as a question bank)")
    return 0


if __name__ == "__main__":
    run_main(main)
