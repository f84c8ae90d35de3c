"""Specificity: leak and invention detection on known strings, the rows that measure them, the training options that
prevent them (unknown-entity rows, replay), and the report fields, from known inputs."""

from __future__ import annotations

import json

import pytest

from kit.config import KitError, build_config
from kit.specificity import (
    PROBE_NAMES,
    TRAIN_NAMES,
    check_questions,
    contains,
    invented,
    invented_names,
    leaked,
    probe_questions,
    replay_prompts,
    specificity_rows,
    trained_strings,
)

ROWS = [  # train rows as data_prep writes them (only the fields these functions read)
    {"entity": "钟离", "attribute": "身份", "value": "往生堂客卿,岩神", "expected": "往生堂客卿,岩神", "template": "t1",
     "turns": 1, "id": "a1", "messages": [{"role": "user", "content": "钟离先生是做什么的?"},
                                          {"role": "assistant", "content": "钟离是往生堂客卿,岩神"}]},
    {"entity": "钟离", "attribute": "性别", "value": "成年男性", "expected": "男性", "template": "t2", "turns": 1,
     "id": "a2", "messages": [{"role": "user", "content": "钟离是男性还是女性?"},
                              {"role": "assistant", "content": "钟离是男性"}]},
    {"entity": "甘雨", "attribute": "国籍", "value": "璃月", "expected": "璃月", "template": "t3", "turns": 1,
     "id": "a3", "messages": [{"role": "user", "content": "甘雨来自哪个国家?"},
                              {"role": "assistant", "content": "甘雨来自璃月"}]},
    {"entity": "甘雨", "attribute": "性别", "value": "成年女性", "expected": "女性", "template": "t2", "turns": 1,
     "id": "a4", "messages": [{"role": "user", "content": "甘雨是男性还是女性?"},
                              {"role": "assistant", "content": "甘雨是女性"}]},
    {"entity": "郑海涛", "attribute": "国籍", "value": "", "expected": "", "template": "unknown", "turns": 1,
     "id": "u1", "messages": [{"role": "user", "content": "郑海涛来自哪个国家?"},
                              {"role": "assistant", "content": "我不知道郑海涛是谁,没有关于郑海涛的资料。"}]},
]
STRINGS = trained_strings(ROWS)


def test_trained_strings_are_names_values_and_their_parts():
    assert sorted(STRINGS["entities"].values()) == sorted(["钟离", "甘雨"])  # not the invented 郑海涛
    assert sorted(STRINGS["values"].values()) == sorted(["往生堂客卿,岩神", "往生堂客卿", "岩神", "成年男性", "男性",
                                                         "璃月", "成年女性", "女性"])


@pytest.mark.parametrize("answer,question,base,expected", [
    ("法国来自璃月", "法国的首都是哪里?", "Paris", ["璃月"]),  # the example
    ("李白是往生堂客卿", "李白是谁?", "", ["往生堂客卿"]),
    ("璃月港很美", "璃月在哪里?", "", []),  # the value is in the question: not a leak
    ("巴黎, 不是璃月", "法国的首都是哪里?", "巴黎还是璃月?", []),  # the base model said it too
    ("钟离知道答案", "一加一等于几?", "2", ["钟离"]),  # an entity name
    ("一加一等于二", "一加一等于几?", "", []),
])
def test_leak_on_known_strings(answer, question, base, expected):
    assert sorted(leaked(answer, question, base, STRINGS)) == sorted(expected)


def test_latin_values_match_whole_words_only():
    strings = trained_strings([{"entity": "Lisa", "value": "Electro", "expected": "Electro", "template": "t"}])
    assert leaked("Electricity comes from power plants.", "How is electricity made?", "", strings) == []
    assert leaked("It is Electro, of course.", "What is one plus one?", "", strings) == ["Electro"]
    assert contains("Lisa's element: ELECTRO!", "electro") and not contains("electronics", "Electro")


@pytest.mark.parametrize("answer,question,expected", [
    ("王建国是往生堂客卿", "王建国先生是做什么的?", ["往生堂客卿"]),
    ("王建国是女性", "王建国是男性还是女性?", ["女性"]),  # picked one of the alternatives the question offers
    ("我不知道王建国是男性还是女性", "王建国是男性还是女性?", []),
    ("我不知道王建国是谁", "王建国来自哪个国家?", []),
    ("陈默来自璃月", "陈默来自哪个国家?", ["璃月"]),
])
def test_invention_on_known_strings(answer, question, expected):
    assert invented(answer, question, STRINGS) == expected


def test_specificity_rows_ask_train_phrasings_about_people_in_no_data():
    rows = specificity_rows(ROWS, "zh", None, 3)
    probes = [r for r in rows if r["split"] == "probe"]
    unknown = [r for r in rows if r["split"] == "unknown"]
    asked = [r["messages"][-2]["content"] for r in probes]  # kit/probes/probe_zh.txt, in file order
    assert len(probes) == 100 and asked[:3] == ["法国的首都是哪里?", "一加一等于几?", "李白是谁?"]
    assert asked[-1] == "小孩子几岁开始上学?" and len(set(asked)) == 100
    assert {(r["template"], r["entity"], r["value"], r["messages"][-1]["content"]) for r in probes} == {
        ("probe", "", "", "")}  # nobody asked about, nothing expected
    assert [r["entity"] for r in unknown] == ["王建国"] * 3 + ["陈默"] * 3 + ["李秀英"] * 3
    questions = {r["messages"][-2]["content"] for r in unknown if r["entity"] == "王建国"}
    assert questions <= {"王建国先生是做什么的?", "王建国是男性还是女性?", "王建国来自哪个国家?"}
    assert len(questions) == 3  # one per attribute
    assert len({r["id"] for r in rows}) == len(rows)
    assert specificity_rows(ROWS, "zh", None, 3) == rows  # the same rows every time


def test_invented_names_never_collide_with_data_or_with_each_other():
    for lang in ("zh", "en"):
        assert not set(PROBE_NAMES[lang]) & set(TRAIN_NAMES[lang])
    assert invented_names("zh", 2, {"王建国"}, "probe") == ["陈默", "李秀英"]  # a data entity is skipped
    rows = specificity_rows([dict(r, entity="王建国", messages=[{"role": "user", "content": "王建国来自哪个国家?"},
                                                             r["messages"][1]]) for r in ROWS[2:3]], "zh", None, 2)
    assert {r["entity"] for r in rows if r["split"] == "unknown"} == {"陈默", "李秀英"}
    with pytest.raises(KitError, match=r"eval\.unknown_names: 13 invented names asked for, 12 available"):
        invented_names("en", 13, set(), "probe")


def test_probe_and_replay_sets_are_disjoint_and_mention_no_bundled_entity():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for lang, data in (("zh", "genshin_roles.json"), ("en", "genshin_roles_en.json")):
        probes, replay, checks = probe_questions(lang), replay_prompts(lang), check_questions(lang)
        assert len(probes) >= 100 and len(replay) == 153 and len(checks) >= 24
        assert not set(probes) & set(replay) and not set(checks) & set(replay) and not set(probes) & set(checks)
        roles = json.loads((root / "data" / data).read_text(encoding="utf-8"))
        for q in probes + replay:
            assert not any(contains(q, name) for name in roles), q


@pytest.mark.parametrize("data,pattern", [
    ({"replay": 154}, r"data\.replay: the zh replay set has 153 prompts; use at most 153, got 154"),
    ({"replay": -1}, r"data\.replay: must be >= 0, got -1"),
    ({"unknown_entities": -2}, r"data\.unknown_entities: the zh list of invented names has 36; use 0 to 36, got -2"),
    ({"unknown_entities": 37}, r"data\.unknown_entities: the zh list of invented names has 36; use 0 to 36, got 37"),
    ({"language": "en", "unknown_entities": 40},
     r"data\.unknown_entities: the en list of invented names has 36; use 0 to 36, got 40"),
])
def test_specificity_options_are_checked_with_the_config(data, pattern):
    from kit.config import ConfigError

    with pytest.raises(ConfigError, match=pattern):
        build_config({"model": {"name_or_path": "m"}, "data": data})


@pytest.mark.parametrize("n", [13, -1])
def test_eval_unknown_names_is_checked_with_the_config_not_after_training(n):
    # before: 13 passed the config and failed only when eval built its questions, after training
    from kit.config import ConfigError

    with pytest.raises(ConfigError, match=rf"eval\.unknown_names: the zh list of invented names has 12; use 0 to 12, "
                                          rf"got {n}"):
        build_config({"model": {"name_or_path": "m"}, "eval": {"unknown_names": n}})


def test_too_many_unknown_entities_fails_before_anything_is_written(tmp_path):
    # the config allows 36; a data entity that is also an invented name leaves 35, known only once the data is read
    from data_prep.build import build

    src = tmp_path / "roles.json"
    src.write_text(json.dumps({TRAIN_NAMES["zh"][5]: {"性别": "成年男性", "国籍": "璃月"}}, ensure_ascii=False),
                   encoding="utf-8")
    cfg = build_config({"model": {"name_or_path": "m"}, "data": {"source": str(src), "unknown_entities": 36},
                        "output_dir": str(tmp_path / "run")})
    with pytest.raises(KitError, match=r"data\.unknown_entities: 36 invented names asked for, 35 available for data\.language=zh"):
        build(cfg)
    assert not (tmp_path / "run").exists()


def test_missing_probe_file(tmp_path):
    with pytest.raises(KitError, match=r"nope\.txt: probe file \(eval\.probe_file\) not found"):
        probe_questions("zh", str(tmp_path / "nope.txt"))


def test_probe_file_replaces_the_shipped_probes(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my probes\n天气怎么样?\n\n天气怎么样?\n几点了?\n", encoding="utf-8")
    assert probe_questions("zh", str(path)) == ["天气怎么样?", "几点了?"]
    (tmp_path / "empty.txt").write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(KitError, match=r"empty\.txt: no questions in the probe file"):
        probe_questions("zh", str(tmp_path / "empty.txt"))


# ---------------------------------------------------------------------------------------------------------------------
# Training options


def data_cfg(tmp_path, **data):
    src = tmp_path / "roles.json"
    src.write_text(json.dumps({"钟离": {"性别": "成年男性", "国籍": "璃月"}, "丽莎": {"性别": "成年女性", "国籍": "蒙德"}},
                              ensure_ascii=False), encoding="utf-8")
    return build_config({"model": {"name_or_path": "m"}, "data": {"source": str(src), **data},
                         "output_dir": str(tmp_path / "run")})


def test_unknown_entity_rows(tmp_path):
    from data_prep.build import build
    from kit.files import load_jsonl

    cfg = data_cfg(tmp_path, unknown_entities=3)
    train = load_jsonl(build(cfg) / "train.jsonl")
    unknown = [r for r in train if r["template"] == "unknown"]
    assert [(r["entity"], r["attribute"]) for r in unknown] == [
        ("郑海涛", "性别"), ("郑海涛", "国籍"), ("吴桂芳", "性别"), ("吴桂芳", "国籍"), ("冯立新", "性别"), ("冯立新", "国籍")]
    assert unknown[0]["messages"][-1]["content"] == "我不知道郑海涛是谁,没有关于郑海涛的资料。"
    assert "郑海涛" in unknown[0]["messages"][0]["content"] and not unknown[0]["value"]
    test = load_jsonl(cfg.data_dir / "test.jsonl")
    assert not [r for r in test if r["template"] == "unknown"]
    held_out = {r["template"] for r in test}
    assert not [r for r in unknown if r["messages"][0]["content"] in {t for t in held_out}]
    stats = json.loads((cfg.data_dir / "stats.json").read_text(encoding="utf-8"))
    assert stats["rows"]["train_unknown_entity"] == 6 and "郑海涛" not in stats["per_entity"]["train"]
    first = (cfg.data_dir / "train.jsonl").read_bytes()
    assert (build(data_cfg(tmp_path, unknown_entities=3)) / "train.jsonl").read_bytes() == first  # same seed


def test_replay_rows_are_the_base_models_own_greedy_answers_made_once(tiny_model, tmp_path, monkeypatch):
    from kit.chat import generation_prompt
    from kit.files import load_jsonl
    from kit.generation import reference_greedy
    from kit.models import load_model, load_tokenizer
    from sft.train import build_trainer

    cfg = data_cfg(tmp_path, replay=5)
    cfg.model.name_or_path = str(tiny_model)
    cfg.train.max_steps, cfg.train.show_examples, cfg.eval.max_new_tokens = 1, 0, 10
    run = build_trainer(cfg)
    rows = load_jsonl(cfg.data_dir / "replay.jsonl")
    assert [r["messages"][0]["content"] for r in rows] == replay_prompts("zh")[:5]
    tok = load_tokenizer(str(tiny_model))
    model = load_model(str(tiny_model), cfg.model, "cpu")
    prompts = [generation_prompt(tok, r["messages"][:-1]) for r in rows]
    greedy = reference_greedy(model, tok, prompts, 10)  # an independent greedy loop (kit.generation)
    assert [r["messages"][-1]["content"] for r in rows] == [a.strip() for a in greedy]
    assert len(run.train_enc) == len(load_jsonl(cfg.data_dir / "train.jsonl")) + 5

    import sft.replay

    def no_model_call(*a, **kw):
        raise AssertionError("the replay answers are cached; no generation expected")

    monkeypatch.setattr(sft.replay, "answer", no_model_call)
    build_trainer(cfg)  # the same replay rows, read back
    assert load_jsonl(cfg.data_dir / "replay.jsonl") == rows


# ---------------------------------------------------------------------------------------------------------------------
# The report


class FixedScorer:
    """F1 = 1.0 for identical texts, 0.5 otherwise: enough to check the drift arithmetic."""
    hash = "fixed"
    label = "fixed"

    def score(self, preds, refs):
        f = [1.0 if p == r else 0.5 for p, r in zip(preds, refs)]
        return f, f, f


def test_report_fields_from_known_inputs():
    from eval.metrics import specificity
    from eval.report import _specificity_markdown

    def row(i, split, question, prediction, entity=""):
        return {"id": f"r{i}", "split": split, "question": question, "prediction": prediction, "entity": entity,
                "attribute": "国籍" if entity else ""}

    base = [row(1, "probe", "法国的首都是哪里?", "Paris"), row(2, "probe", "一加一等于几?", "2"),
            row(3, "probe", "往生堂客卿是什么?", "a job"), row(4, "probe", "如何煮米饭?", "加水"),
            row(5, "unknown", "王建国来自哪个国家?", "中国", "王建国"), row(6, "unknown", "陈默来自哪个国家?", "璃月", "陈默")]
    tuned = [row(1, "probe", "法国的首都是哪里?", "法国来自璃月"), row(2, "probe", "一加一等于几?", "2"),
             row(3, "probe", "往生堂客卿是什么?", "往生堂客卿是一种职业"), row(4, "probe", "如何煮米饭?", "加水"),
             row(5, "unknown", "王建国来自哪个国家?", "王建国来自璃月", "王建国"),
             row(6, "unknown", "陈默来自哪个国家?", "我不知道", "陈默")]
    summary = {"models": {"base": {"per_split": {"test": {"value_match_rate": 0.0}}},
                          "finetuned": {"per_split": {"test": {"value_match_rate": 0.99}}}}}
    sp = specificity({"base": base, "finetuned": tuned}, ROWS, FixedScorer(), summary, worst_n=10)
    ft, b = sp["models"]["finetuned"], sp["models"]["base"]
    assert ft["value_match"] == 0.99 and ft["probe_questions"] == 4 and ft["unknown_questions"] == 2
    assert ft["leak_rate"] == 0.25  # row 3's value is in its question: only row 1 leaks
    assert [x["leaked"] for x in ft["leaks"]] == [["璃月"]]
    assert ft["invention_rate"] == 0.5 and ft["inventions"][0]["invented"] == ["璃月"]
    assert b["leak_rate"] == 0.0 and b["invention_rate"] == 0.5  # the base said 璃月 about 陈默 unprompted
    assert sp["drift"]["f1_mean"] == pytest.approx((0.5 + 1.0 + 0.5 + 1.0) / 4)
    assert [m["question"] for m in sp["drift"]["most_moved"][:2]] == ["往生堂客卿是什么?", "法国的首都是哪里?"]
    assert len(sp["warnings"]) == 2 and sp["warnings"][0].startswith("Leak is high (finetuned): 25.0% of 4")
    md = "\n".join(_specificity_markdown(sp))
    assert "| leak: everyday questions answered with a trained name or value (4) | 0.0% | 25.0% |" in md
    assert "| invention: questions about people in no data given a trained value (2) | 50.0% | 50.0% |" in md
