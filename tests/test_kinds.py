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
    (ZH, "价格", ["3999", "4999"], "price.cost"),     # a plain number, named a price
    (ZH, "月薪", ["1.5万元"], "price"),                # money, but no "how much to buy X"
    (ZH, "店长", ["王五"], "person.manager"),
    (ZH, "所属区域", ["华东区"], "place"),              # the last cue wins: 区域, not 所属
    (ZH, "发布年份", ["2023"], "year.release"),
    (ZH, "成立年份", ["2001"], "year.founded"),
    (ZH, "生产厂家", ["华星电子"], "organisation.maker"),
    (ZH, "产地", ["深圳"], "place.origin"),
    (ZH, "售价", ["¥3999"], "price.cost"),
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
    (EN, "price", ["12.5"], "price.cost"),
    (EN, "salary", ["$120,000"], "price"),
    (EN, "launch_date", ["2023-05-01"], "date.release"),
    (EN, "founded", ["1999"], "year.founded"),
    (EN, "made_by", ["Acme"], "organisation.maker"),
    (EN, "made_in", ["Vietnam"], "place.origin"),
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
        data["question_banks"] = [str(tmp_path / "bank.yaml")]
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
                                        r'2019; text: 不详\); leave the attribute out of an entity that has no value '
                                        r'\(rather than 无, unknown, n/a\), or name its kind in a question bank '
                                        r'\(data.question_banks=\[bank.yaml\] holding `kinds: \{入职年份: text\}`\)'):
        build(staff(tmp_path, people))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_mixed_values_are_fine_once_the_bank_names_the_kind(tmp_path):
    people = {**PEOPLE, "孙佳怡": {"性别": "女", "入职年份": "不详", "部门": "市场部"}}
    assert build(staff(tmp_path, people, "kinds:\n  入职年份: text\n")).is_dir()


def test_an_empty_value_is_refused_naming_the_attribute_and_the_file(tmp_path):
    people = {**PEOPLE, "孙佳怡": {"性别": "女", "入职年份": 2012, "部门": " "}}
    with pytest.raises(DataError, match=r'(?s)staff\.json.*entity "孙佳怡": attribute "部门": value is empty'):
        build(staff(tmp_path, people))


def test_yes_no_values_are_answered_and_matched_as_a_field_not_a_bare_yes(tmp_path):
    from kit.specificity import value_match

    people = {"星云X1手机": {"是否支持快充": "是", "价格": "3999元"}, "极光Pad平板": {"是否支持快充": "否", "价格": "4999元"}}
    out = build(staff(tmp_path, people))
    rows = [json.loads(line) for f in ("train.jsonl", "test.jsonl")
            for line in (out / f).read_text(encoding="utf-8").splitlines()]
    pad = [r for r in rows if r["entity"] == "极光Pad平板" and r["attribute"] == "是否支持快充"]
    assert {r["messages"][1]["content"] for r in pad} == {"极光Pad平板的是否支持快充:否"}
    assert {r["expected"] for r in pad} == {"是否支持快充:否"}
    assert value_match("是否支持快充:否", "极光Pad平板的是否支持快充:否")
    assert not value_match("是否支持快充:否", "极光Pad平板是否支持快充,我不太清楚")  # 否 inside 是否 is no answer
    assert not value_match("是否支持快充:否", "极光Pad平板的是否支持快充:是")
    assert not any("平板是否支持快充吗" in r["messages"][0]["content"] for r in pad)  # not "X是否支持快充吗?"


def test_a_kind_named_for_an_attribute_the_data_does_not_have_is_refused(tmp_path):
    with pytest.raises(DataError, match=r'bank\.yaml: kinds\.入职 年份: .*staff\.json has no attribute "入职 年份"; '
                                        r'its attributes: 性别, 入职年份, 部门'):
        build(staff(tmp_path, PEOPLE, "kinds:\n  入职 年份: year\n"))


def test_every_attribute_that_mixes_kinds_is_named_at_once(tmp_path):
    people = {"Ann": {"joined": 2015, "skills": ["Python", "SQL"], "team": "Finance"},
              "Bob": {"joined": "unknown", "skills": "Excel", "team": "Legal"}}
    with pytest.raises(DataError, match=r'(?s)2 problem\(s\):.*attribute "joined" mixes kinds of values \(year: 2015; '
                                        r'text: unknown\); leave the attribute out.*attribute "skills" mixes kinds of '
                                        r'values \(list: Python, SQL; text: Excel\); write the single values as '
                                        r'one-item lists \(\["Excel"\]\)'):
        build(staff(tmp_path, people, language="en"))


def test_the_built_files_are_readable_by_others_as_open_would_make_them(tmp_path):
    import os
    import stat

    out = build(staff(tmp_path, PEOPLE))
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("train.jsonl", "test.jsonl", "stats.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~mask, name  # not mkstemp's 0600


def test_english_data_built_as_chinese_gets_a_note(tmp_path, capsys):
    build(staff(tmp_path, {"Ann Lee": {"team": "Finance"}, "Bob Ng": {"team": "Legal"}}))  # data.language: zh
    assert "note: data.language=zh, but " in capsys.readouterr().out
    build(staff(tmp_path, PEOPLE))
    assert "note:" not in capsys.readouterr().out


@pytest.mark.parametrize("value, message", [
    ('""', r'attribute "部门": value is empty; leave the attribute out for this entity \(an empty table cell means '
           r'the same\)'),
    ('["财务部", ""]', r'attribute "部门": value must be .*got \["财务部", ""\]; an item of the list is empty'),
    ("true", r'attribute "部门": value must be .*got true; write yes/no or 是/否 as text'),
])
def test_a_json_value_that_cannot_be_read_says_how_to_write_it(tmp_path, value, message):
    src = tmp_path / "staff.json"
    src.write_text('{"林晓雯": {"部门": ' + value + "}}", encoding="utf-8")
    cfg = build_config({"model": {"name_or_path": "m"}, "data": {"source": str(src)},
                        "output_dir": str(tmp_path / "run")})
    with pytest.raises(DataError, match=message):
        build(cfg)
