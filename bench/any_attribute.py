"""Attributes without a question bank, asked the way people ask: the fine-tuned model answers a CSV of questions
written without looking at the kit's phrasings (entity, attribute, question), and each answer is value-matched
against the attribute file (every item of a list value).

    python -m data_prep.phrase configs/quickstart.yaml data.source=bench/any_attribute/people_en.json \
        data.language=en output_dir=runs/attr-en
    python -m sft.train configs/quickstart.yaml data.source=... data.language=en output_dir=runs/attr-en
    python -m bench.any_attribute configs/quickstart.yaml data.source=... data.language=en output_dir=runs/attr-en \
        --questions bench/any_attribute/questions_en.csv

Generates with base + adapter (<output_dir>/adapter), greedy, eval.max_new_tokens; writes
<output_dir>/any_attribute.json and prints right values per attribute, and by where the attribute's training phrasings
came from (data_prep.kinds: a bank, model-written, kind frames, the generic bank), and for all attributes without a
built-in bank together.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict

from data_prep.banks import GENERIC, bank_files, load_banks
from data_prep.kinds import resolve_banks
from data_prep.sources import load_source
from eval.models import load_for_generation
from kit.chat import final_answer, generation_prompt, system_messages
from kit.config import parse_args, run_main
from kit.generation import generate_batched
from kit.models import pick_device, resolve, set_threads
from kit.specificity import value_match


def main(argv: list[str] | None = None) -> int:
    def options(parser) -> None:
        parser.add_argument("--questions", required=True, help="CSV with entity, attribute, question")
        parser.add_argument("--base", action="store_true", help="ask the base model instead of the fine-tuned one")
        parser.add_argument("--seen", help="CSV of questions the frames' writer saw before writing them: also "
                                           "reported without them ('unseen')")

    args, cfg = parse_args(argv, __doc__.splitlines()[0], options)
    attrs = load_source(cfg.data.source, cfg.data.language, cfg.data.entity_column)
    banks = load_banks(cfg.data.language)  # built-in banks only: which attributes had one before data_prep.phrase
    trained = resolve_banks(attrs, load_banks(cfg.data.language, bank_files(cfg), cfg.data.question_banks_mode),
                            cfg.data.source)
    with open(args.questions, encoding="utf-8", newline="") as f:
        questions = list(csv.DictReader(f))
    seen = set()
    if args.seen:
        with open(args.seen, encoding="utf-8", newline="") as f:
            seen = {r["question"] for r in csv.DictReader(f)}
    device = pick_device(cfg.train.device)
    set_threads(cfg.train.threads, device)
    model, tok = load_for_generation(cfg, resolve(cfg.model), None if args.base else str(cfg.adapter_dir), device)
    system = system_messages(cfg.data.system_prompt)
    prompts = [generation_prompt(tok, system + [{"role": "user", "content": q["question"]}]) for q in questions]
    answers = generate_batched(model, tok, prompts, cfg.eval.batch_size, cfg.eval.max_new_tokens)
    rows, groups = [], defaultdict(lambda: [0, 0])
    for q, raw in zip(questions, answers):
        value = attrs[q["entity"]][q["attribute"]]
        expected = " | ".join(value.items) if hasattr(value, "items") else value
        answer = final_answer(raw, cfg.model.thinking)
        right = bool(value_match(expected, answer))
        bank = "without a bank" if banks.for_attribute(q["attribute"])[0] == GENERIC else "with a bank"
        keys = [bank, trained[q["attribute"]].describe(), q["attribute"]]
        if seen and q["question"] not in seen:
            keys += [f"{bank}, unseen", f"{trained[q['attribute']].describe()}, unseen"]
        for key in keys:
            groups[key][0] += right
            groups[key][1] += 1
        rows.append({**q, "expected": expected, "answer": answer, "right": right})
    result = {"questions": args.questions, "model": "base" if args.base else str(cfg.adapter_dir),
              "groups": {k: {"right": r, "asked": n} for k, (r, n) in groups.items()}, "rows": rows}
    out = cfg.out / ("any_attribute-base.json" if args.base else "any_attribute.json")
    out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    for key, (r, n) in groups.items():
        print(f"{key:>40}: {r}/{n} ({100 * r / n:.1f}%)")
    for row in rows:
        if not row["right"]:
            print(f"  wrong: {row['question']} -> {row['answer']!r} (expected {row['expected']})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
