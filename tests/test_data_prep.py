import json
from pathlib import Path

import pytest

from data_prep.banks import load_banks
from data_prep.build import DataError, build, build_rows, load_attributes, main
from kit.config import ConfigError, DataConfig, build_config

ROOT = Path(__file__).resolve().parents[1]
ZH_ATTRS = ["性别", "国籍", "元素力", "身份", "性格特征"]
EN_ATTRS = ["gender", "nation", "element", "role", "personality"]


def cfg_for(source, out, **data):
    return build_config({"model": {"name_or_path": "m"}, "data": {"source": str(source), **data},
                         "output_dir": str(out)})


def rows(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_same_input_same_bytes(roles_file, tmp_path):
    a = build(cfg_for(roles_file, tmp_path / "a", multi_turn=2))
    b = build(cfg_for(roles_file, tmp_path / "b", multi_turn=2))
    for name in ("train.jsonl", "test.jsonl", "stats.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    c = build(cfg_for(roles_file, tmp_path / "c", multi_turn=2, seed=7))
    assert (a / "test.jsonl").read_bytes() != (c / "test.jsonl").read_bytes()


def test_same_bytes_across_processes_with_different_hash_seeds(roles_file, tmp_path):
    """Two runs in one process share a string-hash seed: output that depended on set or dict-of-str order would
    still agree there. Separate processes with different PYTHONHASHSEED would not."""
    import os
    import subprocess
    import sys

    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"h{seed}"
        subprocess.run([sys.executable, "-m", "data_prep.build", str(ROOT / "configs" / "quickstart.yaml"),
                        f"data.source={roles_file}", f"output_dir={out}", "data.multi_turn=2",
                        "data.unknown_entities=4"], cwd=ROOT, check=True, capture_output=True,
                       env=dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT)))
        outs.append(out / "data")
    for name in ("train.jsonl", "test.jsonl", "stats.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    # the shipped data with the shipped settings: the first row, written out
    first = json.loads((outs[0] / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["entity"] == "丽莎" and first["attribute"] == "性别" and first["expected"] == "女性"


@pytest.mark.parametrize("split", ["phrasing", "random", "entity"])
def test_adding_an_entity_leaves_the_others_rows_alone(roles_file, tmp_path, split):
    before = build(cfg_for(roles_file, tmp_path / "before", split=split))
    data = json.loads(roles_file.read_text(encoding="utf-8"))
    data["胡桃"] = {"性别": "少女女性", "国籍": "璃月", "元素力": "火元素", "身份": "往生堂堂主", "性格特征": "古灵精怪"}
    roles_file.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    after = build(cfg_for(roles_file, tmp_path / "after", split=split))
    if split == "entity":
        # an entity's side depends on its own hash, except when that would leave a split empty (as with these 8
        # entities, seed 42): then the rows stay the same but may change side
        old = sorted(rows(before / "train.jsonl") + rows(before / "test.jsonl"), key=lambda r: r["id"])
        new = [r for r in rows(after / "train.jsonl") + rows(after / "test.jsonl") if r["entity"] != "胡桃"]
        assert old == sorted(new, key=lambda r: r["id"])
        return
    for name in ("train.jsonl", "test.jsonl"):
        old = rows(before / name)
        new = [r for r in rows(after / name) if r["entity"] != "胡桃"]
        assert old == new


def test_phrasing_split_same_facts_unseen_phrasings(roles_file, tmp_path):
    out = build(cfg_for(roles_file, tmp_path))
    train, test = rows(out / "train.jsonl"), rows(out / "test.jsonl")
    facts = lambda rs: {(r["entity"], r["attribute"]) for r in rs}  # noqa: E731
    assert facts(test) <= facts(train) and facts(train) == facts(test)
    questions = lambda rs: {r["messages"][0]["content"] for r in rs}  # noqa: E731
    assert not questions(train) & questions(test)
    # held-out phrasings are never seen in training with any entity
    assert not {r["template"] for r in train} & {r["template"] for r in test}


def test_random_split_is_about_80_20(roles_file, tmp_path):
    out = build(cfg_for(roles_file, tmp_path, split="random"))
    n_train, n_test = len(rows(out / "train.jsonl")), len(rows(out / "test.jsonl"))
    assert 0.12 < n_test / (n_train + n_test) < 0.28


def test_entity_split_holds_out_whole_entities(roles_file, tmp_path):
    out = build(cfg_for(roles_file, tmp_path, split="entity", test_size=0.25))
    train_e = {r["entity"] for r in rows(out / "train.jsonl")}
    test_e = {r["entity"] for r in rows(out / "test.jsonl")}
    assert train_e and test_e and not train_e & test_e


def test_rows_are_chat_conversations_with_metadata(roles_file, tmp_path):
    from datasets import load_dataset

    out = build(cfg_for(roles_file, tmp_path, multi_turn=1))
    ds = load_dataset("json", data_files={"train": str(out / "train.jsonl"), "test": str(out / "test.jsonl")})
    row = ds["test"][0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    for key in ("entity", "attribute", "value", "expected", "template", "id"):
        assert row[key]
    multi = [r for r in ds["train"] if r["turns"] > 1]
    assert len(multi) == 8 and all(len(r["messages"]) == 2 * r["turns"] for r in multi)
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["rows"]["test"] == ds["test"].num_rows and stats["per_entity"]["train"]["钟离"] > 0
    assert stats["phrasings_per_fact"]["test"]["min"] >= 1


def test_answers_read_like_the_tutorial(roles_file, tmp_path):
    out = build(cfg_for(roles_file, tmp_path))
    by = {(r["entity"], r["attribute"]): r["messages"][1]["content"] for r in rows(out / "train.jsonl")}
    assert by[("钟离", "性别")] == "钟离是男性"
    assert by[("钟离", "国籍")] == "钟离来自璃月"
    assert by[("钟离", "元素力")] == "岩元素"
    questions = {r["messages"][0]["content"] for r in rows(out / "train.jsonl") + rows(out / "test.jsonl")}
    assert any("钟离先生" in q for q in questions) and any("丽莎女士" in q for q in questions)
    assert any(q.startswith("你好") for q in questions) and any(not q.endswith("?") for q in questions)


def test_bank_sizes():
    zh, en = load_banks("zh"), load_banks("en")
    for name in ZH_ATTRS:
        assert len(set(zh.attributes[name].questions)) >= 12, name
    for name in EN_ATTRS:
        assert len(set(en.attributes[name].questions)) >= 12, name
    assert len(set(zh.generic.questions)) >= 8 and len(set(en.generic.questions)) >= 8
    assert en.for_attribute("Nationality")[0] == "nation" and zh.for_attribute("生日")[0] == "*"


def test_distinct_questions_per_fact(roles_file, tmp_path):
    out = build(cfg_for(roles_file, tmp_path))
    all_rows = rows(out / "train.jsonl") + rows(out / "test.jsonl")
    per_fact = {}
    for r in all_rows:
        per_fact.setdefault((r["entity"], r["attribute"]), set()).add(r["messages"][0]["content"])
    assert min(len(v) for v in per_fact.values()) >= 12


def test_any_attribute_works_through_the_generic_bank(tmp_path):
    src = tmp_path / "p.json"
    src.write_text(json.dumps({"Widget": {"price": 12.5, "colors": ["red", "blue"]},
                               "Gadget": {"price": 3, "colors": ["green"]}}), encoding="utf-8")
    out = build(cfg_for(src, tmp_path / "o", language="en"))
    all_rows = rows(out / "train.jsonl") + rows(out / "test.jsonl")
    assert {r["value"] for r in all_rows} == {"12.5", "red, blue", "3", "green"}
    assert any(r["messages"][1]["content"] == "Widget's price is 12.5." for r in all_rows)


def test_user_question_banks_extend_and_unknown_placeholder_fails(tmp_path, roles_file):
    bank = tmp_path / "bank.yaml"
    bank.write_text("attributes:\n  性别:\n    questions: ['{entity}到底是男是女?']\n", encoding="utf-8")
    cfg = cfg_for(roles_file, tmp_path / "o", question_banks=[str(bank)])
    out = build(cfg)
    qs = {r["messages"][0]["content"] for r in rows(out / "train.jsonl") + rows(out / "test.jsonl")}
    assert "钟离到底是男是女?" in qs
    bank.write_text("attributes:\n  性别:\n    questions: ['{entity}的{sex}是?']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bank\.yaml: attributes\.性别\.questions\[0\]: '\{entity\}的\{sex\}是\?' "
                                          r"uses unknown placeholder \{sex\}"):
        build(cfg)


ALIKE_BANK = """attributes:
  国籍:
    questions: ['{entity}来自哪里?', '{entity}来自哪里？', '{entity}来自哪里 ?', '{entity}是哪国人?', '{entity}的国籍是?',
                '{entity}是哪里人?']
    answers: ['{entity}来自{value}']
"""


def test_phrasings_that_read_alike_are_kept_once_and_never_in_both_splits(tmp_path):
    """Issue 26: "来自哪里?", "来自哪里？" and "来自哪里 ?" are one question to a reader; with seed 42 the first fell in
    test and the third in train."""
    bank = tmp_path / "bank.yaml"
    bank.write_text(ALIKE_BANK, encoding="utf-8")
    data = DataConfig(source="x", split="random", seed=42, test_size=0.5)
    train, test = build_rows({"钟离": {"国籍": "璃月"}}, data, load_banks("zh", [str(bank)], "replace"))
    assert [r["messages"][0]["content"] for r in train] == ["钟离来自哪里 ?"]
    assert [r["messages"][0]["content"] for r in test] == ["钟离是哪国人?", "钟离的国籍是?", "钟离是哪里人?"]


def test_a_held_out_phrasing_that_reads_like_a_training_one_is_refused(tmp_path):
    bank = tmp_path / "bank.yaml"
    bank.write_text("attributes:\n  国籍:\n    questions: ['{entity}来自哪里?', '{entity}是哪国人?']\n"
                    "    answers: ['{entity}来自{value}']\n    held_out: ['{entity}来自哪里？']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"held_out\[0\]: '\{entity\}来自哪里？' is also in questions as "
                                          r"'\{entity\}来自哪里\?' \(the same after Unicode NFKC, ignoring spaces\); a "
                                          r"held-out phrasing is for test only"):
        load_banks("zh", [str(bank)], "replace")


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: a clear error and nothing written


BAD_INPUTS = [
    ("", r"file is empty"),
    ('{"钟离": {"性别": "男"}', r"invalid JSON at line 1, column 19"),
    ('{"钟离": {"性别": "男"},\n "钟离": {"国籍": "璃月"}}', r'duplicate entity "钟离"'),
    ('{"钟离": {"性别": "男", "性别": "女"}}', r'duplicate key "性别"'),
    ('{"钟离": "岩神"}', r'entity "钟离": must be an object'),
    ('{"钟离": {}}', r'entity "钟离": has no attributes'),
    ('{"钟离": {"性别": "  "}}', r'entity "钟离": attribute "性别": value is empty'),
    ('{"钟离": {"性别": {"a": 1}}}', r'attribute "性别": nested objects are not supported'),
    ('{"钟离": {"性别": null}}', r'attribute "性别": value must be a string, a number or a non-empty list'),
    ('{"钟离": {"性别": [1, 2]}}', r'attribute "性别": value must be a string'),
    ('[1, 2]', r"the top level must be a non-empty object"),
]


@pytest.mark.parametrize("text,pattern", BAD_INPUTS)
def test_bad_input_clear_error_nothing_written(tmp_path, text, pattern):
    src = tmp_path / "roles.json"
    src.write_text(text, encoding="utf-8")
    cfg = cfg_for(src, tmp_path / "out")
    with pytest.raises(DataError, match=pattern):
        build(cfg)
    assert not (tmp_path / "out").exists()


def test_all_problems_in_a_file_at_once(tmp_path):
    src = tmp_path / "roles.json"
    src.write_text('{"a": {"x": ""}, "b": {"y": {"z": 1}}, "c": []}', encoding="utf-8")
    with pytest.raises(DataError, match=r"3 problem\(s\)"):
        load_attributes(src)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json: data\.source not found; give an attribute file"):
        build(cfg_for(tmp_path / "nope.json", tmp_path / "out"))


def test_test_size_leaving_a_split_empty(tmp_path):
    src = tmp_path / "r.json"
    src.write_text('{"a": {"性别": "男", "国籍": "x"}}', encoding="utf-8")
    with pytest.raises(DataError, match=r"leaves the test split empty"):
        build(cfg_for(src, tmp_path / "o", split="random", test_size=0.0001))
    with pytest.raises(DataError, match=r"data\.split=entity needs at least 2 entities"):
        build(cfg_for(src, tmp_path / "o", split="entity"))
    assert not (tmp_path / "o").exists()


def test_existing_output_untouched_on_error(roles_file, tmp_path):
    out = build(cfg_for(roles_file, tmp_path / "o"))
    before = (out / "train.jsonl").read_bytes()
    roles_file.write_text('{"bad": ', encoding="utf-8")
    with pytest.raises(DataError):
        build(cfg_for(roles_file, tmp_path / "o"))
    assert (out / "train.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.joinpath("o").iterdir()) == [".lock", "data"]  # the lock of the run


def test_main_prints_stats(roles_file, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name_or_path: m}}\ndata: {{source: '{roles_file}'}}\n", encoding="utf-8")
    assert main([str(cfg), f"output_dir={tmp_path / 'run'}", "data.split=random"]) == 0
    printed = capsys.readouterr().out
    assert "rows:" in printed and "per attribute" in printed
    assert (tmp_path / "run" / "data" / "train.jsonl").is_file()


def test_generate_is_pure(roles_file):
    attrs = load_attributes(roles_file)
    data = DataConfig(source=str(roles_file))
    assert build_rows(attrs, data, load_banks("zh")) == build_rows(attrs, data, load_banks("zh"))


# SHA-256 (first 16 hex digits) of the files the previous, in-memory data_prep.build (7fe408a) wrote for the bundled
# data with the shipped quickstart config, and with a random split + reverse questions + multi-turn + varied answers.
# stats.json since issue 13: its fingerprint hashes zh.yaml, whose generic bank's second answer became a sentence (no
# bundled attribute uses the generic bank: the rows are the same bytes). Since issue 27 it also hashes the kind frames
# (data_prep/question_banks/kinds/zh.yaml) and records each attribute's question bank ("question_banks"); every bundled
# attribute has a bank of its own, so train.jsonl and test.jsonl are the same bytes. Since issue 28 it also counts the
# claim and one-hop rows and the eval-only beyond.jsonl rows, and the fingerprint hashes beyond_zh.yaml (rows: the
# same bytes). Since issue 29 the quickstart holds 1-2 phrasings per attribute out for validation
# (data.validation_size: 0.1), so train.jsonl differs; without them (the first two) both splits are the same bytes,
# and with them (the third) test.jsonl still is; stats.json counts validation rows. Since issue 32 the fingerprint
# hashes the data settings under their new names (data.question_banks, data.question_banks_mode; rows: the same bytes).
# Since claims are answered fact first (issue 28, fifth session) it hashes the changed beyond_zh.yaml (rows: the same).
# Since beyond_zh.yaml has presumptive claim phrasings for data.verify (tenth session) it hashes that (rows: the same).
NO_VALIDATION = ("data.validation_size=0", "train.stop_at=null")
BEFORE_STREAMING = {
    NO_VALIDATION: {"train.jsonl": "1cccea0ae33c0524", "test.jsonl": "d0531a5a29fe4e2a",
                    "stats.json": "d3ae80b26536de80"},
    (*NO_VALIDATION, "data.split=random", "data.reverse=true", "data.multi_turn=3", "data.vary_answers=true"):
        {"train.jsonl": "0f60413bfa0a0821", "test.jsonl": "72ea4a340f6a43f9", "stats.json": "0ee248b12e80edba"},
    (): {"train.jsonl": "47aff77aab6c6a4a", "test.jsonl": "d0531a5a29fe4e2a", "stats.json": "154800bbf6208523",
         "validation.jsonl": "b29f12dbac14867f"},
}


@pytest.mark.parametrize("overrides", list(BEFORE_STREAMING),
                         ids=["quickstart-before-validation", "random-reverse-multi", "quickstart"])
def test_streaming_build_writes_the_bytes_of_the_in_memory_build(overrides, tmp_path, monkeypatch):
    import hashlib

    from data_prep.banks import load_banks
    from data_prep.build import build_rows
    from kit.config import load_config

    monkeypatch.chdir(ROOT)  # stats.json records data.source as given: the relative path of the config
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [*overrides, f"output_dir={tmp_path}"])
    out = build(cfg)
    for name, digest in BEFORE_STREAMING[overrides].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest()[:16] == digest, name
    # and the same rows as build_rows() collects in memory
    train, test = build_rows(load_attributes(cfg.data.source), cfg.data, load_banks("zh"))
    assert [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()] == train
    assert len(test) == len((out / "test.jsonl").read_text(encoding="utf-8").splitlines())
