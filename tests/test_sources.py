"""data.source beyond the attribute JSON: tables (CSV, TSV, XLSX, JSONL; wide or long), conversation datasets
(JSONL, JSON, parquet, save_to_disk, hub ids) and reverse questions."""

import datetime as dt
import json
from pathlib import Path

import pytest

from data_prep.build import DataError, build
from data_prep.sources import load_source
from kit.config import KitError, build_config

FACTS = {"钟离": {"性别": "成年男性", "国籍": "璃月", "年龄": "6000"},
         "丽莎": {"性别": "成年女性", "国籍": "蒙德"},
         "香菱": {"性别": "少女", "国籍": "璃月", "年龄": "18"}}
WIDE = "名字,性别,国籍,年龄\n钟离,成年男性,璃月,6000\n丽莎,成年女性,蒙德,\n香菱,少女,璃月,18\n"
LONG = ("entity,attribute,value\n钟离,性别,成年男性\n钟离,国籍,璃月\n钟离,年龄,6000\n丽莎,性别,成年女性\n"
        "丽莎,国籍,蒙德\n香菱,性别,少女\n香菱,国籍,璃月\n香菱,年龄,18\n")


def cfg_for(source, out, **data):
    return build_config({"model": {"name_or_path": "m"}, "data": {"source": str(source), **data},
                         "output_dir": str(out)})


def write_xlsx(path: Path, rows: list[list]) -> Path:
    from openpyxl import Workbook

    book = Workbook()
    for r in rows:
        book.active.append(r)
    book.save(path)
    return path


def test_every_table_form_gives_the_json_files_byte_for_byte(tmp_path):
    forms = {
        "facts.json": lambda p: p.write_text(json.dumps(FACTS, ensure_ascii=False), encoding="utf-8"),
        "wide.csv": lambda p: p.write_text(WIDE, encoding="utf-8-sig"),  # Excel's "CSV UTF-8" writes a BOM
        "wide.tsv": lambda p: p.write_text(WIDE.replace(",", "\t"), encoding="utf-8"),
        "long.csv": lambda p: p.write_text(LONG, encoding="utf-8"),
        # numbers as a spreadsheet stores them: 6000.0 is a float there, and must still read "6000"
        "wide.xlsx": lambda p: write_xlsx(p, [["名字", "性别", "国籍", "年龄"], ["钟离", "成年男性", "璃月", 6000.0],
                                              ["丽莎", "成年女性", "蒙德", None], ["香菱", "少女", "璃月", 18]]),
        "facts.jsonl": lambda p: p.write_text(
            '{"名字": "钟离", "性别": "成年男性", "国籍": "璃月", "年龄": 6000}\n'
            '{"名字": "丽莎", "性别": "成年女性", "国籍": "蒙德"}\n'
            '{"名字": "香菱", "性别": "少女", "国籍": "璃月", "年龄": 18}\n', encoding="utf-8"),
    }
    built = {}
    for name, write in forms.items():
        write(tmp_path / name)
        assert load_source(str(tmp_path / name)) == FACTS, name
        out = build(cfg_for(tmp_path / name, tmp_path / name.replace(".", "-"), split="random"))
        built[name] = [(out / f).read_bytes() for f in ("train.jsonl", "test.jsonl")]
    assert len(built["facts.json"][0]) > 1000
    for name in forms:
        assert built[name] == built["facts.json"], name


def test_entity_column_by_name_and_spreadsheet_dates(tmp_path):
    src = write_xlsx(tmp_path / "staff.xlsx", [["部门", "姓名", "入职日期", "工号"],
                                               ["研发", "王工", dt.datetime(2024, 5, 1), 1024.0],
                                               ["销售", "李经理", dt.datetime(2023, 1, 9, 14, 30), 7]])
    got = load_source(str(src), entity_column="姓名")
    assert got == {"王工": {"部门": "研发", "入职日期": "2024-05-01", "工号": "1024"},
                   "李经理": {"部门": "销售", "入职日期": "2023-01-09 14:30:00", "工号": "7"}}


def saved_by_excel(path: Path, values: dict[str, object]) -> Path:
    """What Excel writes on saving and openpyxl never does: each formula cell with its last value (a str: a text
    result)."""
    import re
    import zipfile

    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    sheet = files["xl/worksheets/sheet1.xml"].decode()
    for cell, value in values.items():
        kind = ' t="str"' if isinstance(value, str) else ""
        sheet, n = re.subn(rf'<c r="{cell}"([^>]*)><f>(.*?)</f><v ?/>',
                           rf'<c r="{cell}"\1{kind}><f>\2</f><v>{value}</v>', sheet)
        assert n == 1, cell
    files["xl/worksheets/sheet1.xml"] = sheet.encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def test_spreadsheet_cells_read_as_excel_shows_them(tmp_path):
    from openpyxl import Workbook

    book = Workbook()
    notes = book.active
    notes.title = "说明"
    notes.append(["这张表是隐藏的草稿"])
    notes.sheet_state = "hidden"  # the first sheet, hidden: not what a person sees on opening the file
    sheet = book.create_sheet("人物")
    sheet.append(["名字", "部门", "年龄", "身高", "入职", "打卡", "占比", "工号", "编号", "时长", "下一年", "备注", "爱好"])
    sheet.append(["钟离", "往生堂", 6000.0, 1.8 + 0.1, dt.datetime(2021, 3, 1), dt.datetime(2021, 3, 1, 14, 30), 0.15,
                  "007", 123, dt.timedelta(hours=26, minutes=5), "=C2+1", '=IF(C2>9999,"老","")', "  喝茶 "])
    sheet.append(["胡桃", None, 18, 1.6, dt.datetime(2022, 7, 15, 9, 5), dt.time(9, 5), 0.125, "010", 45, None,
                  "=C3+1", '=IF(C3>9999,"老","")', None])
    sheet.merge_cells("B2:B3")  # one 部门 shown across both rows
    sheet["E2"].number_format = "yyyy/m/d"
    sheet["E3"].number_format = "yyyy/m/d"  # a date format: the time of day is not shown
    sheet["F2"].number_format = "yyyy/m/d h:mm"
    sheet["F3"].number_format = "h:mm"
    sheet["G2"].number_format = "0%"
    sheet["G3"].number_format = "0.0%"
    sheet["I2"].number_format = sheet["I3"].number_format = "00000"
    book.save(tmp_path / "people.xlsx")
    book.move_sheet("人物", offset=-1)  # the same table as the first sheet: Excel keeps the formulas' values there
    book.save(tmp_path / "first.xlsx")
    saved_by_excel(tmp_path / "first.xlsx", {"K2": 6001, "L2": "老", "K3": 19, "L3": ""})
    assert load_source(str(tmp_path / "first.xlsx")) == {
        "钟离": {"部门": "往生堂", "年龄": "6000", "身高": "1.9", "入职": "2021-03-01", "打卡": "2021-03-01 14:30",
               "占比": "15%", "工号": "007", "编号": "00123", "时长": "26:05:00", "下一年": "6001", "备注": "老",
               "爱好": "喝茶"},
        "胡桃": {"部门": "往生堂", "年龄": "18", "身高": "1.6", "入职": "2022-07-15", "打卡": "09:05", "占比": "12.5%",
               "工号": "010", "编号": "00045", "下一年": "19"}}
    # the formulas of a workbook no spreadsheet program has calculated have no value to read, on a sheet after a
    # hidden one
    with pytest.raises(DataError, match=r"people\.xlsx: 4 problem\(s\):\n  sheet 人物, cell K2: the formula =C2\+1 "
                                        r"has no saved value \(the workbook was written by a program and never "
                                        r"calculated\); open it in Excel or LibreOffice and save it, or type the value "
                                        r"in its place\n  sheet 人物, cell L2: the formula =IF\(C2>9999,\"老\",\"\"\) "
                                        r"has no saved value"):
        load_source(str(tmp_path / "people.xlsx"))


EXCEL_ERRORS = ["#N/A", "#DIV/0!", "#VALUE!", "#REF!", "#NAME?", "#NUM!", "#NULL!"]
BAD_SHEETS = [  # what each sheet holds, and the problems listed, written out
    ("errors", [["name", "team size"], *([f"P{i}", code] for i, code in enumerate(EXCEL_ERRORS))],
     "\n  ".join(f"sheet Sheet, cell B{row}: {code} is an Excel error, not a value; fix what it computes from, or "
                 f"clear the cell" for row, code in enumerate(EXCEL_ERRORS, start=2))),
    ("bool", [["name", "vegetarian"], ["Lisa", True]],
     "sheet Sheet, cell B2: TRUE says nothing to phrase as a fact; write the value as words (yes / no, 是 / 否)"),
    ("across", [["name", "nation", "region"], ["Lisa", "Mondstadt", None]],
     'sheet Sheet, cells B2:C2: merged across columns, so "Mondstadt" would belong to column B only; unmerge them '
     "(Home > Merge & Center) and give each column its own value"),
    ("header", [["name", "nation"], [None, "Mondstadt"]],
     "sheet Sheet, cells A1:A2: merged down from the header row; unmerge them: the header is one row, one name a "
     "column"),
]


@pytest.mark.parametrize("name,rows,problems", BAD_SHEETS, ids=[b[0] for b in BAD_SHEETS])
def test_spreadsheet_cells_that_hold_no_value_name_the_cell(tmp_path, name, rows, problems):
    import re

    src = write_xlsx(tmp_path / f"{name}.xlsx", rows)
    if name in ("across", "header"):
        from openpyxl import load_workbook

        book = load_workbook(src)
        book.active.merge_cells("B2:C2" if name == "across" else "A1:A2")
        book.save(src)
    with pytest.raises(DataError, match=rf"{name}\.xlsx: \d+ problem\(s\):\n  " + re.escape(problems) + "$"):
        build(cfg_for(src, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_spreadsheet_errors_exported_to_csv_name_the_row_and_column(tmp_path):
    src = tmp_path / "export.csv"
    src.write_text("name,team size,nation\nLisa,#N/A,Mondstadt\nXiangling,4,#REF!\n", encoding="utf-8")
    with pytest.raises(DataError, match=r'export\.csv: 2 problem\(s\):\n  row 2, column B: "#N/A" is a '
                                        r"spreadsheet error, not a value; fix what the formula computes from in the "
                                        r'spreadsheet and export again, or empty the cell\n  row 3, column C: "#REF!" '
                                        r"is a spreadsheet"):
        build(cfg_for(src, tmp_path / "out"))


BAD_TABLES = [
    ("dup.csv", "名字,性别\n钟离,男\n丽莎,女\n钟离,男\n",
     r'dup\.csv: 1 problem\(s\):\n  row 4: entity "钟离" again \(first in row 2\); merge the two rows'),
    ("dupcol.csv", "名字,性别,性别\n钟离,男,男\n", r'columns B and C are both named "性别"'),
    ("nohead.csv", "名字,性别,\n钟离,男,璃月\n", r"column C has values but no name in the header row"),
    ("noent.csv", "名字,性别\n,男\n丽莎,女\n", r'row 2: the entity column "名字" is empty'),
    ("empty.csv", "名字,性别\n钟离,\n", r'row 2: entity "钟离" has no attributes'),
    ("onlyhead.csv", "名字,性别\n", r"a header row and no data rows"),
    ("onecol.csv", "名字\n钟离\n", r'only the entity column "名字"'),
    ("longdup.csv", "entity,attribute,value\n钟离,性别,男\n钟离,性别,女\n",
     r'row 3: "钟离" / "性别" again \(first in row 2\)'),
    ("longempty.tsv", "实体\t属性\t值\n钟离\t性别\t\n", r"row 2: empty 值"),
    ("quote.csv", '名字,性别\n"钟离,男\n', r"quote\.csv: line 2: unexpected end of data; check the quotes"),
    ("roles.txt", "x", r"unknown data\.source type '\.txt'"),
    # true/false and a list with an empty item are refused as in the JSON form, not read as "true" or no value
    ("bool.jsonl", '{"name": "Lisa", "vegetarian": true}\n',
     r'bool\.jsonl: line 1: "vegetarian" must be a string, a number or a non-empty list of strings, got true'),
    ("list.jsonl", '{"name": "Lisa", "languages": ["German", ""]}\n',
     r'"languages" must be a string, a number or a non-empty list of strings, got \["German", ""\]'),
]


@pytest.mark.parametrize("name,text,pattern", BAD_TABLES, ids=[b[0] for b in BAD_TABLES])
def test_bad_tables_name_the_row_or_column_and_write_nothing(tmp_path, name, text, pattern):
    src = tmp_path / name
    src.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=pattern):
        build(cfg_for(src, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# One name written two ways (issue 26: "钟离 " wiped 钟离's facts): an error naming both, in every source form.
ZHONGLI_TWICE = {"钟离": {"国籍": "璃月", "元素力": "岩元素"}, "钟离 ": {"身份": "往生堂客卿"}}
SAME_ZHONGLI = r'"钟离" and "钟离 " are the same entity after trimming spaces'
SAME_NAMES = [
    ("twice.json", lambda p: p.write_text(json.dumps(ZHONGLI_TWICE, ensure_ascii=False), encoding="utf-8"),
     SAME_ZHONGLI + r"; merge the two into one"),
    ("twice.csv", lambda p: p.write_text("名字,国籍,元素力,身份\n钟离,璃月,岩元素,\n钟离 ,,,往生堂客卿\n", encoding="utf-8"),
     r"row 3: " + SAME_ZHONGLI + r" \(first in row 2\); merge the two rows into one"),
    ("twice.tsv", lambda p: p.write_text("名字\t国籍\t身份\n钟离\t璃月\t\n 钟离\t\t往生堂客卿\n", encoding="utf-8"),
     r'row 3: "钟离" and " 钟离" are the same entity after trimming spaces \(first in row 2\)'),
    ("twice.xlsx", lambda p: write_xlsx(p, [["名字", "国籍", "身份"], ["钟离", "璃月", None], ["钟离 ", None, "往生堂客卿"]]),
     r"row 3: " + SAME_ZHONGLI + r" \(first in row 2\)"),
    ("twice.jsonl", lambda p: p.write_text('{"名字": "钟离", "国籍": "璃月"}\n{"名字": "钟离 ", "身份": "往生堂客卿"}\n',
                                           encoding="utf-8"),
     r"row 2: " + SAME_ZHONGLI + r" \(first in row 1\)"),
    ("fullwidth.json", lambda p: p.write_text('{"ABC": {"nation": "Mondstadt"}, "ＡＢＣ": {"role": "knight"}}',
                                              encoding="utf-8"),
     r'"ABC" and "ＡＢＣ" are the same entity after Unicode NFKC normalisation \(full-width and half-width forms '
     r"alike\), ignoring spaces; merge the two into one"),
    ("spaces.csv", lambda p: p.write_text("name,nation\nTomas Lind,Sweden\nTomas  Lind,Norway\n", encoding="utf-8"),
     r'row 3: "Tomas Lind" and "Tomas  Lind" are the same entity after removing spaces'),
    ("long.csv", lambda p: p.write_text("entity,attribute,value\nＡＢＣ,nation,Mondstadt\nABC,role,knight\n",
                                        encoding="utf-8"),
     r'row 3: "ＡＢＣ" and "ABC" are the same entity after Unicode NFKC .*\(first in row 2\); write it one way'),
    # attributes of one entity, and columns
    ("attr.json", lambda p: p.write_text('{"钟离": {"性别": "男", "性别 ": "女"}}', encoding="utf-8"),
     r'entity "钟离": "性别" and "性别 " are the same attribute after trimming spaces; keep one'),
    ("attr.csv", lambda p: p.write_text("名字,性别,性别 \n钟离,男,女\n", encoding="utf-8"),
     r'columns B and C: "性别" and "性别 " are the same column after trimming spaces; rename or merge one'),
    ("attr.xlsx", lambda p: write_xlsx(p, [["name", "Age", "Ａｇｅ"], ["Lisa", 25, 26]]),
     r'columns B and C: "Age" and "Ａｇｅ" are the same column after Unicode NFKC'),
    ("attr.jsonl", lambda p: p.write_text('{"名字": "钟离", "性别": "男", "性别 ": "女"}\n', encoding="utf-8"),
     r'columns B and C: "性别" and "性别 " are the same column after trimming spaces'),
    ("key.jsonl", lambda p: p.write_text('{"名字": "钟离", "性别": "男", "性别": "女"}\n', encoding="utf-8"),
     r'key\.jsonl: line 1: duplicate key "性别" \(json would silently keep the last one\)'),
    ("attr-long.csv", lambda p: p.write_text("entity,attribute,value\n钟离,性别,男\n钟离,性别 ,女\n", encoding="utf-8"),
     r'row 3: "钟离" / "性别" again \(first in row 2\); keep one value per entity and attribute'),
    ("attr-long.tsv", lambda p: p.write_text("entity\tattribute\tvalue\n钟离\tAge\t6000\n钟离\tＡｇｅ\t6001\n",
                                             encoding="utf-8"),
     r'row 3: "钟离" / "Age" and "Ａｇｅ" are the same attribute after Unicode NFKC .*\(first in row 2\)'),
]


@pytest.mark.parametrize("name,write,pattern", SAME_NAMES, ids=[c[0] for c in SAME_NAMES])
def test_one_name_written_two_ways_is_an_error_naming_both(tmp_path, name, write, pattern):
    write(tmp_path / name)
    with pytest.raises(DataError, match=pattern):
        build(cfg_for(tmp_path / name, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_names_are_kept_as_written_and_case_still_tells_them_apart(tmp_path):
    src = tmp_path / "people.json"
    src.write_text('{" ＡＢＣ ": {"nation": "Mondstadt"}, "Apple": {"kind ": "fruit"}, "apple": {"kind": "tree"}}',
                   encoding="utf-8")
    assert load_source(str(src), "en") == {"ＡＢＣ": {"nation": "Mondstadt"}, "Apple": {"kind": "fruit"},
                                           "apple": {"kind": "tree"}}
    long = tmp_path / "long.csv"  # the long form names an entity on every row: trimmed, they are one
    long.write_text("entity,attribute,value\n钟离,国籍,璃月\n钟离 ,身份,往生堂客卿\n", encoding="utf-8")
    assert load_source(str(long)) == {"钟离": {"国籍": "璃月", "身份": "往生堂客卿"}}


def test_missing_entity_column_lists_the_header(tmp_path):
    src = tmp_path / "t.csv"
    src.write_text(WIDE, encoding="utf-8")
    with pytest.raises(DataError, match=r'no column "姓名" \(data\.entity_column\) in the header: 名字, 性别, 国籍, 年龄'):
        build(cfg_for(src, tmp_path / "out", entity_column="姓名"))


def test_gbk_csv_is_refused_with_the_encoding_and_the_fix(tmp_path):
    src = tmp_path / "excel.csv"
    src.write_bytes(WIDE.encode("gbk"))
    with pytest.raises(KitError, match=r"excel\.csv: the data\.source is not UTF-8 .*line 1.*GBK / GB18030.*iconv"):
        build(cfg_for(src, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_damaged_xlsx_is_named(tmp_path):
    src = tmp_path / "broken.xlsx"
    src.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"broken\.xlsx: not a readable \.xlsx workbook"):
        build(cfg_for(src, tmp_path / "out"))


# Conversation datasets ----------------------------------------------------------------------------------------------

TUTORIAL_ROWS = [  # the shape of the tutorial's dataset (seed 003): one user question, one answer
    {"messages": [{"content": "砂糖女士来自什么国家?", "role": "user"}, {"content": "砂糖来自蒙德", "role": "assistant"}]},
    {"messages": [{"content": "钟离是男性还是女性?", "role": "user"}, {"content": "钟离是男性", "role": "assistant"}]},
    {"messages": [{"content": "丽莎使用哪种元素?", "role": "user"}, {"content": "丽莎使用雷元素", "role": "assistant"}]},
    {"messages": [{"content": "香菱是哪国人?", "role": "user"}, {"content": "香菱来自璃月", "role": "assistant"}]},
    {"messages": [{"content": "温迪的身份是什么?", "role": "user"}, {"content": "温迪是吟游诗人", "role": "assistant"}]},
    {"messages": [{"content": "甘雨是什么性格?", "role": "user"}, {"content": "甘雨,温柔的麒麟少女", "role": "assistant"}]},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_messages_jsonl_is_split_by_seed_and_kept_as_written(tmp_path):
    src = write_jsonl(tmp_path / "chat.jsonl", TUTORIAL_ROWS + [TUTORIAL_ROWS[0]])  # a repeat, kept once
    out = build(cfg_for(src, tmp_path / "o", test_size=0.34))
    train = [json.loads(x) for x in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    test = [json.loads(x) for x in (out / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(train) + len(test) == 6 and train and test
    assert sorted(r["messages"][0]["content"] for r in train + test) == sorted(
        r["messages"][0]["content"] for r in TUTORIAL_ROWS)
    assert {r["template"] for r in train + test} == {"conversation"}
    assert all(r["entity"] == "" and r["expected"] == "" and r["turns"] == 1 for r in train + test)
    again = build(cfg_for(src, tmp_path / "o2", test_size=0.34))
    assert (again / "test.jsonl").read_bytes() == (out / "test.jsonl").read_bytes()


def test_attribute_only_options_on_conversations_are_named_not_silent(tmp_path, capsys):
    src = write_jsonl(tmp_path / "chat.jsonl", TUTORIAL_ROWS)
    build(cfg_for(src, tmp_path / "o", unknown_entities=2, reverse=True))
    assert "note: data.unknown_entities, data.reverse ignored" in capsys.readouterr().out


def test_a_saved_dataset_with_splits_keeps_them(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(TUTORIAL_ROWS[:4]),
                 "test": Dataset.from_list(TUTORIAL_ROWS[4:])}).save_to_disk(str(tmp_path / "ds"))
    out = build(cfg_for(tmp_path / "ds", tmp_path / "o"))
    test = [json.loads(x)["messages"][0]["content"] for x in (out / "test.jsonl").read_text("utf-8").splitlines()]
    assert test == ["温迪的身份是什么?", "甘雨是什么性格?"]
    assert len((out / "train.jsonl").read_text("utf-8").splitlines()) == 4


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_test_questions_asked_in_train_are_dropped_once_read_alike_and_counted(tmp_path, capsys):
    """Issue 26: full-width ？ and a trailing space made train questions look new to the test split."""
    from datasets import Dataset, DatasetDict

    train = [chat("甘雨来自哪里?", "甘雨来自璃月"), chat("温迪是什么元素?", "温迪是风元素"), chat("钟离是男性还是女性?", "钟离是男性")]
    test = [chat("甘雨来自哪里？", "甘雨来自璃月"),  # full-width question mark
            chat("温迪是什么元素? ", "温迪是风元素 "),  # trailing spaces
            chat("钟离是男性还是女性?", "钟离是男性"),  # the exact copy
            chat("钟离是男性还是女性？", "钟离是男性。"),  # a train question with another answer
            chat("  丽莎使用哪种元素?", "丽莎使用雷元素\n"), chat("丽莎使用哪种元素?", "丽莎使用雷元素")]  # a repeat
    DatasetDict({"train": Dataset.from_list(train), "test": Dataset.from_list(test)}).save_to_disk(str(tmp_path / "ds"))
    out = build(cfg_for(tmp_path / "ds", tmp_path / "o"))
    rows = {f: [json.loads(x) for x in (out / f"{f}.jsonl").read_text("utf-8").splitlines()] for f in ("train", "test")}
    assert [r["messages"] for r in rows["test"]] == [[{"role": "user", "content": "丽莎使用哪种元素?"},
                                                      {"role": "assistant", "content": "丽莎使用雷元素"}]]
    assert [r["messages"][0]["content"] for r in rows["train"]] == ["甘雨来自哪里?", "温迪是什么元素?", "钟离是男性还是女性?"]
    stats = json.loads((out / "stats.json").read_text("utf-8"))
    assert stats["conversations_dropped"] == {"test_in_train": 4, "repeated": 1}
    assert ("; dropped 4 test conversation(s) asking what train ones ask and 1 repeat(s) (compared after Unicode NFKC, "
            "ignoring spaces)") in capsys.readouterr().out


def test_messages_are_trained_without_leading_and_trailing_whitespace(tmp_path):
    src = write_jsonl(tmp_path / "chat.jsonl", [chat("温迪是什么元素? ", " 温迪是风元素\n"), chat("\t香菱是哪国人?", "香菱来自璃月  ")])
    out = build(cfg_for(src, tmp_path / "o", test_size=0.5))
    rows = [json.loads(x) for f in ("train.jsonl", "test.jsonl") for x in (out / f).read_text("utf-8").splitlines()]
    assert sorted(r["messages"][0]["content"] + "|" + r["messages"][1]["content"] for r in rows) == [
        "温迪是什么元素?|温迪是风元素", "香菱是哪国人?|香菱来自璃月"]


def test_a_test_split_made_only_of_train_questions_is_an_error(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list([chat("甘雨来自哪里?", "甘雨来自璃月")]),
                 "validation": Dataset.from_list([chat("甘雨来自哪里？", "甘雨来自璃月。")])}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=r"1 train and 0 test conversations \(1 test conversation\(s\) dropped: they "
                                        r"ask what train ones ask\); add validation rows that ask what no train row "
                                        r"asks$"):
        build(cfg_for(tmp_path / "ds", tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_parquet_and_json_lists_of_messages(tmp_path):
    from datasets import Dataset

    Dataset.from_list(TUTORIAL_ROWS).to_parquet(str(tmp_path / "chat.parquet"))
    (tmp_path / "chat.json").write_text(json.dumps(TUTORIAL_ROWS, ensure_ascii=False), encoding="utf-8")
    a = build(cfg_for(tmp_path / "chat.parquet", tmp_path / "a"))
    b = build(cfg_for(tmp_path / "chat.json", tmp_path / "b"))
    assert (a / "train.jsonl").read_bytes() == (b / "train.jsonl").read_bytes()


def test_a_hub_dataset_without_the_hub_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"hf:maxwell60701/genshin-impact-role-chat-model: could not load the hub "
                                        r"dataset .*save_to_disk"):
        build(cfg_for("hf:maxwell60701/genshin-impact-role-chat-model", tmp_path / "o"))
    assert not (tmp_path / "o").exists()


BAD_CHATS = [
    ({"messages": [{"role": "assistant", "content": "hi"}]}, r'line 2: message 1 is "assistant" where "user" comes'),
    ({"messages": [{"role": "user", "content": "q"}]}, r"line 2: the last message must be the assistant's"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
     r"line 2: message 2 \(assistant\): content is empty"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
     r'line 2: message 2: role must be one of system, user, assistant, got "bot"'),
    ({"messages": []}, r'line 2: "messages" must be a non-empty list'),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                   {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a"}]},
     r'line 2: message 3 is "user" where "assistant" comes'),
]


@pytest.mark.parametrize("row,pattern", BAD_CHATS)
def test_bad_conversations_name_the_line(tmp_path, row, pattern):
    src = write_jsonl(tmp_path / "chat.jsonl", [TUTORIAL_ROWS[0], row])
    with pytest.raises(DataError, match=pattern):
        build(cfg_for(src, tmp_path / "o"))
    assert not (tmp_path / "o").exists()


# Reverse questions --------------------------------------------------------------------------------------------------


def test_reverse_questions_only_for_values_one_entity_has(tmp_path):
    src = tmp_path / "f.json"
    src.write_text(json.dumps(FACTS, ensure_ascii=False), encoding="utf-8")
    out = build(cfg_for(src, tmp_path / "o", reverse=True))
    rows = [json.loads(x) for f in ("train.jsonl", "test.jsonl") for x in (out / f).read_text("utf-8").splitlines()]
    reverse = [r for r in rows if r["template"].startswith("reverse/")]
    # 璃月 belongs to two people, 性别 is never reversed: 蒙德 (丽莎), 6000 (钟离), 18 (香菱) are left
    assert sorted({(r["value"], r["entity"]) for r in reverse}) == [("18", "香菱"), ("6000", "钟离"), ("蒙德", "丽莎")]
    assert all(r["expected"] == r["entity"] and r["entity"] not in r["messages"][0]["content"] for r in reverse)
    assert {r["messages"][0]["content"] for r in reverse if r["value"] == "蒙德"} >= {"谁的国籍是蒙德?"}
    plain = build(cfg_for(src, tmp_path / "p"))
    assert "reverse/" not in (plain / "train.jsonl").read_text("utf-8") + (plain / "test.jsonl").read_text("utf-8")


def test_a_tutorial_shaped_messages_file_trains_and_gets_a_report(tiny_model, tiny_bert, tmp_path, capsys):
    from eval.run import run
    from sft.train import train

    src = write_jsonl(tmp_path / "chat.jsonl", TUTORIAL_ROWS)
    cfg = build_config({
        "model": {"name_or_path": str(tiny_model)},
        "data": {"source": str(src), "test_size": 0.34},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "train": {"max_steps": 2, "learning_rate": 1e-2, "eval_strategy": "no", "save_strategy": "no",
                  "logging_steps": 1, "show_examples": 0},
        "eval": {"merge_dtype": "float32", "batch_size": 4, "max_new_tokens": 6, "bertscore_model": str(tiny_bert),
                 "bertscore_layer": 2},
        "output_dir": str(tmp_path / "run")})
    train(cfg)
    assert "mask audit" in capsys.readouterr().out
    out = run(cfg)
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    test_rows = len((cfg.data_dir / "test.jsonl").read_text("utf-8").splitlines())
    assert summary["models"]["finetuned"]["overall"]["rows"] == test_rows == 2
    assert summary["models"]["finetuned"]["overall"]["value_match_rate"] is None  # no entity/value: n/a
    report = (out / "summary.md").read_text("utf-8")
    assert "| value match | n/a | n/a |" in report
    assert "Specificity (leak, invention, drift): not measured" in report
    assert "Beyond lookup (claims, reverse, one-hop): not measured" in report
