"""Beyond lookup: yes/no claims, reverse and one-hop questions (kit/beyond.py, data_prep/beyond.py)."""

import json

import pytest

from data_prep.banks import load_banks
from data_prep.beyond import load_beyond
from data_prep.build import build, build_rows, load_attributes
from data_prep.sources import DataError, text_key
from kit.beyond import first_number, judge, polarity
from kit.config import build_config

from .conftest import ROOT

ZH_FALSE = {"kind": "claim", "truth": False, "entity": "钟离", "value": "璃月", "claimed": "蒙德",
            "values": ["蒙德", "璃月", "须弥"]}
ZH_TRUE = {**ZH_FALSE, "truth": True, "claimed": "璃月"}
EN_FALSE = {"kind": "claim", "truth": False, "entity": "Zhongli", "value": "Liyue", "claimed": "Mondstadt",
            "values": ["Mondstadt", "Liyue", "Sumeru"]}
EN_TRUE = {**EN_FALSE, "truth": True, "claimed": "Liyue"}


@pytest.mark.parametrize("check,answer,passed,names_value", [
    # a false claim: denied, best with the true value
    (ZH_FALSE, "不是,钟离来自璃月", True, True),
    (ZH_FALSE, "钟离不是蒙德人,他是璃月人", True, True),
    (ZH_FALSE, "不是,钟离来自蒙德", True, False),  # a denial, but not the right value
    (ZH_FALSE, "是", False, False),  # "是" alone to a false claim
    (ZH_FALSE, "是的", False, False),
    (ZH_FALSE, "没错,钟离来自蒙德", False, False),  # 没错 confirms, its 错 is no denial
    (ZH_FALSE, "钟离来自蒙德,不是吗?", False, False),  # 不是 inside 不是吗 is no denial
    (ZH_FALSE, "不是,钟离来自须弥", False, False),  # denies with another value of the table: a wrong correction
    (ZH_FALSE, "是的,不是", False, False),  # confirms and denies
    (ZH_FALSE, "我不知道钟离是谁,没有关于钟离的资料。", False, False),  # "I don't know" denies nothing
    (ZH_FALSE, "钟离来自璃月", False, False),  # a statement, no denial of the claim
    (ZH_FALSE, "钟离来自璃月,不是蒙德", True, True),  # the fact first, then the denial: the order the kit trains
    (ZH_FALSE, "钟离来自蒙德,没错", False, False),
    (ZH_FALSE, "钟离来自璃月,没错,不是蒙德", False, False),  # confirms and denies
    (ZH_FALSE, "", False, False),
    # a true claim: confirmed, by a first word or by stating the value, never denied
    (ZH_TRUE, "是的,钟离来自璃月", True, False),
    (ZH_TRUE, "钟离来自璃月", False, False),  # the value said back: the question holds it, no confirmation
    (ZH_TRUE, "钟离来自璃月,没错", True, False),  # the fact, then a clause that only confirms
    (ZH_TRUE, "钟离来自璃月,所以是的。", True, False),
    (ZH_TRUE, "钟离来自璃月,是没错", True, False),
    (ZH_TRUE, "钟离来自璃月,是璃月人", False, False),  # a later 是 that is a verb, not a yes
    (ZH_TRUE, "钟离来自须弥,没错", False, False),  # confirms with another value
    (ZH_TRUE, "是的,钟离来自璃月,不是吗?", True, False),  # a tag question is no denial: not confirm + deny
    (ZH_TRUE, "不错,钟离来自璃月", True, False),
    (ZH_TRUE, "不是", False, False),
    (ZH_TRUE, "是的,钟离来自须弥", False, False),
    (ZH_TRUE, "是的,但钟离不是璃月人", False, False),
    (ZH_TRUE, "我不知道", False, False),
    # English, the same rules
    (EN_FALSE, "No, Zhongli is from Liyue.", True, True),
    (EN_FALSE, "Zhongli isn't from Mondstadt.", True, False),
    (EN_FALSE, "That's not right: he is from Liyue", True, True),
    (EN_FALSE, "Yes.", False, False),
    (EN_FALSE, "Zhongli is from Liyue, not Mondstadt.", True, True),
    (EN_FALSE, "Zhongli is from Mondstadt, so yes.", False, False),
    (EN_FALSE, "Yes, Zhongli is from Mondstadt.", False, False),
    (EN_FALSE, "Zhongli is from Mondstadt, isn't he?", False, False),  # a tag question is no denial
    (EN_FALSE, "No, Zhongli is from Sumeru.", False, False),
    (EN_FALSE, "Yes, but no.", False, False),
    (EN_FALSE, "I don't know who Zhongli is; I have no information about Zhongli.", False, False),
    (EN_TRUE, "Yes, Zhongli is from Liyue.", True, False),
    (EN_TRUE, "Yes, Zhongli is from Liyue, isn't he?", True, False),
    (EN_TRUE, "Zhongli is from Liyue.", False, False),
    (EN_TRUE, "Zhongli is from Liyue, so yes.", True, False),
    (EN_TRUE, "Zhongli is from Liyue, right?", False, False),  # a tag question is no confirmation either
    (EN_TRUE, "Zhongli is from Liyue, yes, he is not.", False, False),
    (EN_TRUE, "No.", False, False),
    (EN_TRUE, "Yes, he is not from Liyue.", False, False),
    (EN_TRUE, "Yes, Zhongli is from Sumeru.", False, False),
])
def test_claims_are_judged_so_that_they_cannot_be_fooled(check, answer, passed, names_value):
    got = judge(check, answer, "zh" if check is ZH_FALSE or check is ZH_TRUE else "en")
    assert (got["pass"], got["names_value"]) == (passed, names_value), got


@pytest.mark.parametrize("check,question,answer,passed", [
    # the question said back is not an answer (the base model often repeats it)
    (ZH_TRUE, "钟离难道来自璃月?", "钟离难道来自璃月！你可能知道", False),
    (ZH_TRUE, "有人说钟离来自璃月,是真的吗?", "有人说钟离来自璃月,是真的吗?是的", True),
    (ZH_TRUE, "钟离难道来自璃月?", "钟离难道来自璃月?不是", False),
    (ZH_TRUE, "钟离难道来自璃月?", "钟离难道来自璃月是一名献茧的名称", False),  # the question goes on: no 是 first
    (ZH_FALSE, "钟离难道来自蒙德?", "钟离不仅来自蒙德,还很强", False),  # 不仅: "not only", no denial
    (ZH_FALSE, "钟离难道来自蒙德?", "不,钟离不断地说他来自璃月", True),
    (EN_TRUE, "Would you say Zhongli comes from Liyue?", "Would you say Zhongli comes from Liyue? Maybe.", False),
    (EN_TRUE, "Would you say Zhongli comes from Liyue?", "Would you say Zhongli comes from Liyue? Yes.", True),
    (EN_FALSE, "Is Zhongli from Mondstadt? No?", "Is Zhongli from Mondstadt? No?", False),  # the question's "no"
])
def test_an_echo_or_a_question_back_is_no_answer(check, question, answer, passed):
    language = "en" if question.isascii() else "zh"
    assert judge(check, answer, language, question)["pass"] is passed


def test_a_value_inside_the_true_value_is_not_a_wrong_value():
    check = {"kind": "claim", "truth": False, "entity": "钟离", "value": "成年男性", "claimed": "少年男性",
             "values": ["成年男性", "少年男性", "男性", "成年女性"]}
    assert judge(check, "不是,钟离是成年男性", "zh") == {"pass": True, "why": "", "names_value": True}
    assert judge(check, "不是,钟离是成年女性", "zh")["pass"] is False


def test_a_name_with_a_negation_in_it_denies_nothing():
    check = {"kind": "claim", "truth": False, "entity": "不死鸟", "value": "火", "claimed": "水", "values": ["火", "水"]}
    assert polarity("不死鸟使用水", "zh", ["不死鸟", "火", "水"]) == (False, False)
    assert judge(check, "不死鸟使用水", "zh")["pass"] is False
    assert judge(check, "不对,不死鸟使用火", "zh")["pass"] is True


@pytest.mark.parametrize("check,answer,passed", [
    ({"kind": "same", "truth": True, "entity": "钟离", "other": "甘雨", "value": "璃月", "other_value": "璃月"},
     "是的,钟离和甘雨都来自璃月", True),
    ({"kind": "same", "truth": True, "entity": "钟离", "other": "甘雨", "value": "璃月", "other_value": "璃月"},
     "不是,它们不同", False),
    ({"kind": "same", "truth": False, "entity": "钟离", "other": "丽莎", "value": "璃月", "other_value": "蒙德"},
     "是", False),
    ({"kind": "same", "truth": False, "entity": "钟离", "other": "丽莎", "value": "璃月", "other_value": "蒙德"},
     "不是,钟离来自璃月,丽莎来自蒙德", True),
    ({"kind": "same", "truth": True, "entity": "钟离", "other": "甘雨", "value": "璃月", "other_value": "璃月"},
     "钟离的国籍是璃月,甘雨的也是璃月,一样", True),  # the facts first, then the verdict, as the kit trains
    ({"kind": "same", "truth": False, "entity": "钟离", "other": "丽莎", "value": "璃月", "other_value": "蒙德"},
     "钟离的国籍是璃月,丽莎的国籍是蒙德,一样", False),
    ({"kind": "same", "truth": False, "entity": "钟离", "other": "丽莎", "value": "璃月", "other_value": "蒙德"},
     "钟离的国籍是璃月,丽莎的国籍是蒙德,不一样", True),
    ({"kind": "same", "truth": True, "entity": "Zhongli", "other": "Ganyu", "value": "Liyue",
      "other_value": "Liyue"}, "Zhongli's nation is Liyue and Ganyu's is Liyue too, so yes.", True),
    ({"kind": "same", "truth": False, "entity": "Zhongli", "other": "Lisa", "value": "Liyue",
      "other_value": "Mondstadt"}, "They have different nations.", True),
    ({"kind": "list", "entities": ["钟离", "甘雨"], "others": ["丽莎"]}, "钟离和甘雨", True),
    ({"kind": "list", "entities": ["钟离", "甘雨"], "others": ["丽莎"]}, "钟离", False),
    ({"kind": "list", "entities": ["钟离", "甘雨"], "others": ["丽莎"]}, "钟离、甘雨和丽莎", False),
    ({"kind": "reverse", "entities": ["钟离"], "others": ["丽莎"]}, "身份是往生堂客卿的是钟离", True),
    ({"kind": "reverse", "entities": ["钟离"], "others": ["丽莎"]}, "钟离或者丽莎", False),
    ({"kind": "count", "count": 4, "entities": ["钟离"], "others": []}, "有4个:钟离、甘雨、行秋和香菱", True),
    ({"kind": "count", "count": 4, "entities": ["钟离"], "others": []}, "一共有四个", True),
    ({"kind": "count", "count": 4, "entities": ["钟离"], "others": []}, "有3个", False),
    ({"kind": "count", "count": 4, "entities": ["钟离"], "others": []}, "很多", False),
    ({"kind": "count", "count": 2, "entities": [], "others": []}, "Two: Venti and Sucrose.", True),
])
def test_one_hop_and_reverse_answers(check, answer, passed):
    language = "en" if answer.isascii() else "zh"
    assert judge(check, answer, language)["pass"] is passed


@pytest.mark.parametrize("answer,number", [("有4个", 4), ("一共有十二个", 12), ("二十三", 23), ("两个", 2),
                                           ("There are three.", 3), ("1,815", 1815), ("没有数字", None)])
def test_first_number(answer, number):
    assert first_number(answer) == number


def _cfg(tmp_path, source=None, **data):
    return build_config({"model": {"name_or_path": "unused"},
                         "data": {"source": str(source or ROOT / "data" / "genshin_roles.json"),
                                  "max_train_phrasings": 6, **data},
                         "output_dir": str(tmp_path / "run")})


def _jsonl(path):
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_options_off_build_no_train_row_and_every_eval_row(tmp_path):
    out = build(_cfg(tmp_path))
    stats = json.loads((out / "stats.json").read_text("utf-8"))
    assert (stats["rows"]["train_verify"], stats["rows"]["train_compose"]) == (0, 0)
    # 40 facts x 2 held-out claim phrasings x (true, false); 20 values one entity has (身份 8, 性格特征 8, 元素力 4)
    # x 1 held-out reverse phrasing; one-hop: 24 comparisons (4 held-out pairs x 3 attributes x 2 phrasings) and
    # a list and a count question for each of the 8 shared values
    assert stats["beyond_eval_rows"] == {"verify": 160, "reverse": 20, "onehop": 40}
    rows = _jsonl(out / "beyond.jsonl")
    assert len(rows) == 220 and all(r["check"] for r in rows)


def test_options_only_add_rows_and_eval_questions_are_never_trained(tmp_path):
    off = build(_cfg(tmp_path / "off"))
    on = build(_cfg(tmp_path / "on", verify=True, compose=True, reverse=True))
    stats = json.loads((on / "stats.json").read_text("utf-8"))
    # claims: 40 facts x (2 true + 2 false); compose: 24 train pairs x 3 comparable attributes + 8 shared values x
    # (2 list + 2 count phrasings)
    assert (stats["rows"]["train_verify"], stats["rows"]["train_compose"], stats["rows"]["train_reverse"]) == (
        160, 104, 120)
    train_on = _jsonl(on / "train.jsonl")
    added = ("claim/", "compose/", "reverse/")
    assert [r for r in train_on if not r["template"].startswith(added)] == _jsonl(off / "train.jsonl")
    assert (on / "beyond.jsonl").read_bytes() == (off / "beyond.jsonl").read_bytes()
    asked = {text_key(r["messages"][-2]["content"]) for r in train_on}
    beyond = _jsonl(on / "beyond.jsonl")
    assert not [r for r in beyond if text_key(r["messages"][-2]["content"]) in asked]
    # comparisons: no held-out pair is trained, in either order
    pairs = {frozenset(r["entity"].split("+")) for r in train_on if "+" in r["entity"]}
    checks = [json.loads(r["check"]) for r in beyond]
    held = {frozenset([c["entity"], c["other"]]) for c in checks if c["kind"] == "same"}
    assert len(held) == 4 and not pairs & held and len(pairs) == 24


def test_false_claims_state_another_entitys_value_of_the_same_attribute(tmp_path):
    attrs = load_attributes(ROOT / "data" / "genshin_roles.json")
    train, _ = build_rows(attrs, _cfg(tmp_path, verify=True).data, load_banks("zh"))
    claims = [r for r in train if r["template"].startswith("claim/")]
    no = [r for r in claims if ",不是" in r["messages"][-1]["content"]]  # the fact first, then the verdict
    assert len(no) == len(claims) - len(no) == 80
    zhongli_nation = [r["messages"] for r in no if (r["entity"], r["attribute"]) == ("钟离", "国籍")]
    assert len(zhongli_nation) == 2
    for m in zhongli_nation:  # 蒙德 is the only other nation of the table
        assert "蒙德" in m[-2]["content"] and m[-1]["content"] == "钟离来自璃月,不是蒙德"


def test_english_table_builds_claims_and_one_hop_rows(tmp_path):
    src = tmp_path / "people.csv"
    src.write_text("name,nation,element\nAda,Mondstadt,Anemo\nBea,Mondstadt,Pyro\nCy,Liyue,Pyro\nDee,Liyue,Geo\n",
                   encoding="utf-8")
    out = build(_cfg(tmp_path, src, language="en", verify=True, compose=True))
    train = _jsonl(out / "train.jsonl")
    answers = {r["messages"][-1]["content"] for r in train}
    assert "Ada is from Mondstadt, not Liyue." in answers and "Ada is from Mondstadt, so yes." in answers
    assert "2: Ada and Bea." in answers
    kinds = {json.loads(r["check"])["kind"] for r in _jsonl(out / "beyond.jsonl")}
    assert kinds == {"claim", "reverse", "same", "list", "count"}


@pytest.mark.parametrize("option,pattern", [
    ("verify", r"people.json: data.verify=true, but no attribute has two different values.*set data.verify=false"),
    ("compose", r"people.json: data.compose=true, but no attribute has a value two entities share.*"
                r"set data.compose=false"),
])
def test_options_that_have_nothing_to_work_on_fail_before_training(tmp_path, option, pattern):
    src = tmp_path / "people.json"
    src.write_text(json.dumps({"Ada": {"nation": "Mondstadt"}}), encoding="utf-8")
    with pytest.raises(DataError, match=pattern):
        build(_cfg(tmp_path, src, language="en", **{option: True}))


@pytest.mark.parametrize("language", ["zh", "en"])
def test_shipped_phrasings_load_and_keep_held_out_apart(language):
    bank = load_beyond(language)
    for ph in [bank.claims, bank.same, bank.list, bank.count, *bank.claims_by_attribute.values()]:
        assert ph.held_out and not set(ph.questions) & set(ph.held_out)


class OnesScorer:
    hash, label, max_tokens = "ones", "ones", 512

    def score(self, preds, refs):
        return [1.0] * len(preds), [1.0] * len(preds), [1.0] * len(preds)

    def too_long(self, texts):
        return []


def test_report_gives_each_model_its_figures_and_failed_answers_beside_the_base(tiny_model, tmp_path):
    from eval.questions import eval_rows
    from eval.score import score

    from .conftest import tiny_run_config

    cfg = tiny_run_config(tiny_model, tmp_path, specificity=False, compare_base=True)
    build(cfg)
    rows = eval_rows(cfg)
    beyond = [r for r in rows if r["split"] in ("verify", "reverse", "onehop")]
    # two characters, three attributes: 6 facts x 2 held-out phrasings x (true, false); 4 values one entity has
    # (性别 is never reversed); no value is shared, so no one-hop question
    assert [sum(r["split"] == s for r in beyond) for s in ("verify", "reverse", "onehop")] == [24, 4, 0]

    def predictions(label, answer):
        path = tmp_path / f"{label}.jsonl"
        path.write_text("".join(json.dumps({
            "id": r["id"], "split": r["split"], "question": r["messages"][-2]["content"],
            "answer": r["messages"][-1]["content"], "prediction": answer(r), "entity": r["entity"],
            "attribute": r["attribute"], "value": r["value"], "expected": r["expected"], "template": r["template"],
            **({"check": r["check"]} if "check" in r else {})}, ensure_ascii=False) + "\n" for r in rows),
            encoding="utf-8")
        return path

    wrong = next(r["id"] for r in beyond if r["split"] == "verify" and not json.loads(r["check"])["truth"])
    models = {"base": predictions("base", lambda r: "是"),
              "finetuned": predictions("finetuned", lambda r: "是的" if r["id"] == wrong
                                       else r["messages"][-1]["content"])}
    out = score(cfg, models=models, scorer=OnesScorer())
    b = json.loads((out / "summary.json").read_text("utf-8"))["beyond"]["models"]
    assert (b["base"]["true_confirmed"], b["base"]["false_denied"], b["base"]["reverse"]) == (1.0, 0.0, 0.0)
    assert (b["finetuned"]["true_confirmed"], b["finetuned"]["false_denied"]) == (1.0, 11 / 12)
    assert b["finetuned"]["denials_naming_value"] == 1.0 and b["finetuned"]["reverse"] == 1.0
    assert b["finetuned"]["onehop"] is None and b["finetuned"]["true_claims"] == 12
    md = (out / "summary.md").read_text("utf-8")
    assert "## Beyond lookup: claims, reverse and one-hop questions" in md
    failed = [line for line in md.splitlines() if line.startswith("| claim |")]
    assert len(failed) == 1 and "| 是的 | confirms a false claim | 是 |" in failed[0]
