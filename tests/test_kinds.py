"""data_prep.kinds: attributes without a bank asked with frames written for their kind (issue 27)."""

import json

import pytest

from data_prep.build import DataError, build
from data_prep.kinds import KINDS, MIN_FRAMES, infer_kind, load_kinds, value_kind
from kit.config import build_config


@pytest.mark.parametrize("value, kind", [
    ("2019", "year"), ("2019年", "year"), ("1998", "year"),
    ("3月14日", "date"), ("2019年3月1日", "date"), ("2020-03-14", "date"), ("March 14", "date"),
    ("14 March 2020", "date"), ("Mar. 3, 2001", "date"), ("3/14", "date"),
    ("¥3,999", "price"), ("$12.50", "price"), ("4999元", "price"), ("20 euros", "price"),
    ("2年", "duration"), ("18个月", "duration"), ("18 months", "duration"), ("三年", "duration"),
    ("120cm", "number"), ("3.5 kg", "number"), ("42", "number"),
    ("是", "yes_no"), ("No", "yes_no"), ("true", "yes_no"),
    ("Marketing", "text"), ("May", "text"), ("杭州", "text"), ("twelve", "text"), ("往生堂客卿", "text"),
])
def test_the_kind_of_one_value(value, kind):
    assert value_kind(value) == kind


ZH, EN = load_kinds("zh"), load_kinds("en")
STAFF = {"王五", "Ann Lee"}


@pytest.mark.parametrize("kinds, name, values, kind", [
    (ZH, "入职年份", ["2015", "2019"], "year.start"),
    (ZH, "出生年份", ["1990"], "year.birth"),
    (ZH, "生日", ["3月14日"], "date.birth"),
    (ZH, "保修期", ["2年", "18个月"], "duration.warranty"),
    (ZH, "价格", ["3999", "4999"], "price"),          # a plain number, named a price
    (ZH, "售价", ["¥3999"], "price"),
    (ZH, "办公城市", ["杭州", "成都"], "place.office"),
    (ZH, "公司地址", ["北京"], "place"),               # the last cue wins: an address, not a company
    (ZH, "部门", ["财务部", "研发部"], "organisation.department"),
    (ZH, "所属组织", ["西风骑士团"], "organisation.member"),
    (ZH, "上级", ["王五"], "person.manager"),
    (ZH, "搭档", ["王五"], "person"),
    (ZH, "会说的语言", [], "language"),
    (ZH, "办公楼层", ["3", "12"], "number"),
    (ZH, "武器", ["长枪", "法器"], "text"),
    (ZH, "归属", ["采购部", "销售部"], "organisation"),   # no cue in the name: the values' endings
    (ZH, "驻地", ["杭州市", "苏州市"], "place.office"),
    (EN, "start_year", ["2014"], "year.start"),
    (EN, "office_city", ["Rotterdam"], "place.office"),
    (EN, "department", ["Finance", "Marketing"], "organisation.department"),
    (EN, "languages", [], "language"),
    (EN, "age", ["34"], "number"),                    # "age" is no "language"
    (EN, "department head", ["Ann"], "person.manager"),
    (EN, "warranty", ["2 years"], "duration.warranty"),
    (EN, "price", ["12.5"], "price"),
    (EN, "birthday", ["March 3"], "date.birth"),
    (EN, "home_city", ["Paris"], "place.home"),
    (EN, "employer", ["Acme"], "organisation.company"),
    (EN, "remote", ["yes", "no"], "yes_no"),
    (EN, "buddy", ["Ann Lee"], "person"),             # the value is another entity of the file
    (EN, "hobbies", ["chess"], "text"),
])
def test_the_kind_of_an_attribute_from_its_values_and_its_name(kinds, name, values, kind):
    from data_prep.sources import ListValue

    if not values:  # a list of languages
        values = [ListValue(["普通话", "粤语"], "zh")] if kinds is ZH else [ListValue(["Twi", "English"], "en")]
    assert infer_kind(name, values, kinds, STAFF) == kind


def test_a_list_that_is_not_languages_is_a_list():
    from data_prep.sources import ListValue

    assert infer_kind("爱好", [ListValue(["围棋", "游泳"], "zh")], ZH) == "list"
    assert infer_kind("tools", [ListValue(["hammer", "saw"], "en")], EN) == "list"


@pytest.mark.parametrize("language", ["zh", "en"])
def test_every_kind_has_as_many_frames_as_a_bundled_attribute(language):
    kinds = load_kinds(language)
    assert set(kinds) == set(KINDS) - {"text"}  # text is asked with the generic bank
    assert MIN_FRAMES == 15  # 性别's bank has 15 phrasings
    for name, kind in kinds.items():
        assert len(set(kind.questions)) >= 15, name
        for sense_name, sense in kind.senses.items():
            assert len(set(sense.questions)) >= 10, f"{name}.{sense_name}"
            assert all("{entity}" in q for q in sense.questions), f"{name}.{sense_name}"


def staff(tmp_path, people, bank=None, language="zh"):
    src = tmp_path / "staff.json"
    src.write_text(json.dumps(people, ensure_ascii=False), encoding="utf-8")
    data = {"source": str(src), "language": language, "split": "phrasing"}
    if bank is not None:
        (tmp_path / "bank.yaml").write_text(bank, encoding="utf-8")
        data["templates"] = [str(tmp_path / "bank.yaml")]
    return build_config({"model": {"name_or_path": "m"}, "data": data, "output_dir": str(tmp_path / "run")})


PEOPLE = {"林晓雯": {"性别": "女", "入职年份": 2015, "部门": "财务部"},
          "赵立伟": {"性别": "男", "入职年份": 2019, "部门": "研发部"}}


def test_build_says_which_kind_each_attribute_got_and_asks_with_its_frames(tmp_path, capsys):
    out = build(staff(tmp_path, PEOPLE))
    assert "question banks: 性别 bank, 入职年份 kind frames (year.start), 部门 kind frames (organisation.department)" \
        in capsys.readouterr().out
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["question_banks"] == {"性别": "bank", "入职年份": "kind frames (year.start)",
                                       "部门": "kind frames (organisation.department)"}
    rows = [json.loads(line) for f in ("train.jsonl", "test.jsonl")
            for line in (out / f).read_text(encoding="utf-8").splitlines()]
    year = {r["messages"][0]["content"]: r for r in rows if r["attribute"] == "入职年份" and r["entity"] == "林晓雯"}
    assert {"林晓雯是哪一年入职的?", "林晓雯哪年进的公司?", "林晓雯的入职年份是哪一年?"} <= set(year)
    assert {r["messages"][1]["content"] for r in year.values()} == {"林晓雯的入职年份是2015"}  # canonical answer
    assert {r["expected"] for r in year.values()} == {"2015"}
    assert all(r["template"].startswith("kind:year.start/") for r in year.values())


def test_a_bank_can_name_the_kind(tmp_path, capsys):
    bank = "kinds:\n  入职年份: year.birth\n  部门: text\n"
    build(staff(tmp_path, PEOPLE, bank))
    assert "入职年份 kind frames (year.birth), 部门 generic bank (kind text)" in capsys.readouterr().out


@pytest.mark.parametrize("bank, message", [
    ("kinds:\n  入职年份: yearly\n", r'bank\.yaml: kinds\.入职年份: unknown kind "yearly"; known: date, year, number'),
    ("kinds:\n  入职年份: year.hired\n",
     r'bank\.yaml: kinds\.入职年份: kind "year" has no sense "hired"; its senses: year\.start, year\.birth'),
    ("kinds: [year]\n", r"bank\.yaml: 'kinds' must be a mapping of attribute name to kind"),
])
def test_a_kind_that_does_not_exist_is_named_with_the_file(tmp_path, bank, message):
    with pytest.raises(Exception, match=message):
        build(staff(tmp_path, PEOPLE, bank))
    assert not (tmp_path / "run").exists()


def test_values_of_mixed_kinds_are_refused_naming_the_attribute_and_the_file(tmp_path):
    people = {**PEOPLE, "孙佳怡": {"性别": "女", "入职年份": "不详", "部门": "市场部"}}
    with pytest.raises(DataError, match=r'staff\.json: attribute "入职年份" mixes kinds of values \(year: 2015, '
                                        r'2019; text: 不详\); make its values one kind, or name its kind in a question '
                                        r'bank .*kinds: \{入职年份: text\}'):
        build(staff(tmp_path, people))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_mixed_values_are_fine_once_the_bank_names_the_kind(tmp_path):
    people = {**PEOPLE, "孙佳怡": {"性别": "女", "入职年份": "不详", "部门": "市场部"}}
    assert build(staff(tmp_path, people, "kinds:\n  入职年份: text\n")).is_dir()


def test_an_empty_value_is_refused_naming_the_attribute_and_the_file(tmp_path):
    people = {**PEOPLE, "孙佳怡": {"性别": "女", "入职年份": 2012, "部门": " "}}
    with pytest.raises(DataError, match=r'(?s)staff\.json.*entity "孙佳怡": attribute "部门": value is empty'):
        build(staff(tmp_path, people))
