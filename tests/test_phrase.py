"""data_prep.phrase (model-written phrasings for attributes without a bank) and the defaults that need no model: keys
read as words, list values named in full."""

import json
from collections import Counter
from pathlib import Path

import pytest

from data_prep import phrase as phrase_mod
from data_prep.banks import humanise, join_items, load_banks
from data_prep.build import DataError, build, build_rows
from data_prep.phrase import Written, check_answer, check_question, phrase, to_yaml
from data_prep.sources import load_source
from kit.config import ConfigError, DataConfig, build_config

STAFF = {
    "Mara Okafor": {"occupation": "data engineer", "office_city": "Lisbon", "start_year": 2019,
                    "spoken_languages": ["Yoruba", "Portuguese"]},
    "Keiko Arai": {"occupation": "designer", "office_city": "Osaka", "start_year": 2015,
                   "spoken_languages": ["Japanese", "Korean", "English"]},
    "Ravi Menon": {"occupation": "accountant", "office_city": "Dublin", "start_year": 2021,
                   "spoken_languages": ["Malayalam", "Hindi"]},
}


def staff_config(tmp_path, **data):
    src = tmp_path / "staff.json"
    src.write_text(json.dumps(STAFF), encoding="utf-8")
    return build_config({"model": {"name_or_path": str(tmp_path / "no-model")},
                         "data": {"source": str(src), "language": "en", **data},
                         "output_dir": str(tmp_path / "run")})


def rows(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------------------------------
# Without a model


@pytest.mark.parametrize("key, words", [("start_year", "start year"), ("officeCity", "office city"),
                                        ("spoken-languages", "spoken languages"), ("所属组织", "所属组织"),
                                        ("Nationality", "Nationality"), ("DNA", "DNA"), ("a__b", "a b")])
def test_keys_read_as_words(key, words):
    assert humanise(key) == words


def test_list_values_are_named_in_full():
    assert join_items(["Yoruba", "Portuguese"], "en") == "Yoruba and Portuguese"
    assert join_items(["A", "B", "C"], "en") == "A, B and C"
    assert join_items(["约鲁巴语", "葡萄牙语"], "zh") == "约鲁巴语和葡萄牙语"
    assert join_items(["甲", "乙", "丙"], "zh") == "甲、乙和丙"


def test_rows_without_a_bank_use_the_words_and_every_list_item(tmp_path):
    cfg = staff_config(tmp_path, split="random", test_size=0.3)
    train, test = build_rows(load_source(cfg.data.source, "en"), cfg.data, load_banks("en"))
    by_q = {r["messages"][0]["content"]: r for r in train + test}
    year = by_q["What is Mara Okafor's start year?"]
    assert year["messages"][1]["content"] == "Mara Okafor's start year is 2019."
    assert year["attribute"] == "start_year"  # the report keeps the key
    langs = by_q["What are Keiko Arai's spoken languages?"]  # the language kind's frames
    assert langs["messages"][1]["content"] == "Keiko Arai speaks Japanese, Korean and English."
    assert langs["expected"] == "Japanese | Korean | English"  # value match asks for every item
    assert langs["value"] == "Japanese, Korean, English"


def test_chinese_list_values(tmp_path):
    src = tmp_path / "zh.json"
    src.write_text(json.dumps({"林若溪": {"语言": ["约鲁巴语", "葡萄牙语"], "国籍": "璃月"}}, ensure_ascii=False),
                   encoding="utf-8")
    data = DataConfig(source=str(src), split="random", test_size=0.3)
    train, test = build_rows(load_source(str(src), "zh"), data, load_banks("zh"))
    row = next(r for r in train + test if r["messages"][0]["content"] == "林若溪会说哪些语言?")  # language frames
    assert row["messages"][1]["content"] == "林若溪会说约鲁巴语和葡萄牙语"
    assert row["expected"] == "约鲁巴语 | 葡萄牙语"


# ---------------------------------------------------------------------------------------------------------------------
# The checks a model's candidates pass


VALUES = ["Lisbon", "Osaka", "Dublin"]


@pytest.mark.parametrize("template, why", [
    ("Which city does {entity} work in?", None),
    ("Where is {entity}'s office?", None),
    ("Tell me where {entity} is based.", None),
    ("In which city is the office of {entity}", None),     # no question mark, but a question word
    (None, "no placeholder"),
    ("Is {entity}'s office in Lisbon?", "gives the value away"),
    ("Where is your office, {entity}?", "not about the person"),
    ("{entity}?", "length"),
    ("{entity} works somewhere nice and sunny.", "not a question"),
    ("Does {entity} work with Y in the city?", "names someone else"),
    ("How does {entity}'s speech resemble YORUEBI?", "names someone else"),
    ("{entity}: which city is the office in?", None),
    ("{entity}在哪个城市工作?", "wrong language"),
])
def test_question_check_on_written_candidates(template, why):
    assert check_question(template, "en", VALUES, []) == why


def test_question_check_drops_repeats_and_the_same_family():
    kept = ["Which city does {entity} work in?"]
    assert check_question("which city does {entity} work in", "en", VALUES, kept) == "repeat"
    assert check_question("Hi, which city does {entity} work in?", "en", VALUES, kept) == "same family as a kept one"
    assert check_question("Where is {entity}'s office?", "en", VALUES, kept) is None


@pytest.mark.parametrize("template, why", [
    ("{entity}在哪个城市工作?", None),
    ("请问{entity}的办公城市是哪里", None),
    ("{entity}在里斯本工作吗?", "gives the value away"),
    ("Where does {entity} work?", "wrong language"),
    ("{entity}在城市里工作。", "not a question"),
    ("{entity}和Y在哪里工作?", "names someone else"),
])
def test_chinese_question_check(template, why):
    assert check_question(template, "zh", ["里斯本", "大阪"], []) == why


def test_model_replies_become_templates():
    assert phrase_mod._as_template('Question: "Where does X work?"\nmore text', "en") == "Where does {entity} work?"
    assert phrase_mod._as_template("Where does the person work?", "en") == "Where does {entity} work?"
    assert phrase_mod._as_template("Does X know X?", "en") is None
    assert phrase_mod._as_template("Where is {x}?", "en") is None
    assert phrase_mod._as_template("X在哪里工作?", "zh") == "{entity}在哪里工作?"
    assert phrase_mod._as_template("X的生日是什么?;;;;;; 3月", "zh") == "{entity}的生日是什么?"
    assert phrase_mod._as_template("X的生日是什么--;---", "zh") == "{entity}的生日是什么"  # run-on cut
    assert phrase_mod._as_template("X的;;;生日是什么?", "zh") is None
    assert phrase_mod._as_template("Tell me where X works.!!", "en") == "Tell me where {entity} works."
    assert check_answer("The answer is that X works in Lisbon.", "en", "Lisbon", VALUES) is None
    assert check_answer("X works in Lisbon, Portugal.", "en", "Lisbon", VALUES) is None
    assert check_answer("X works in Lisbon.", "en", "Lisbon", VALUES) == "{entity} works in {value}."
    assert check_answer("X works in Lisbon or Osaka.", "en", "Lisbon", VALUES) is None
    assert check_answer("Lisbon.", "en", "Lisbon", VALUES) is None


# ---------------------------------------------------------------------------------------------------------------------
# The command, with a stand-in model


class CannedWriter:
    """Replies from a script instead of a model: office_city gets good and bad questions, and the scores say which
    ask for the office city."""

    REPLIES = ["Which city does X work in?", "Where is X's office?", "Where is X from?",  # 'from' asks nationality
               "What city is X's office in?", "Which office is X based at?", "In what city does X work?",
               "Where does the person work?", "X works in Lisbon?", "Where does X work?",
               "Is X's office in Lisbon?", "Tell me the city where X works.", "hello"]

    def __init__(self, cfg):
        self.name = "canned-model"
        self.calls = Counter()

    def sample(self, conversations, n, max_new_tokens=32):
        self.calls["sample"] += 1
        if "Value:" in conversations[0][-1]["content"]:
            return ["X works in Lisbon.", "X's office is in Lisbon.", "Lisbon"][:n]
        return (self.REPLIES * n)[: n * len(conversations)]

    def answer_logprobs(self, pairs, batch_size=32):
        self.calls["score"] += 1
        # an answer about the office city is likely after a question that says city/office/work, except "from"
        return [-0.5 if "office city" in a and any(w in q for w in ("city", "office", "work")) and "from" not in q
                else -5.0 if "Tell me about" in q else -3.0 for q, a in pairs]


def office_config(tmp_path, **data):
    """Staff with one banked attribute (occupation) and one without (office_city)."""
    src = tmp_path / "staff.json"
    src.write_text(json.dumps({k: {"occupation": v["occupation"], "office_city": v["office_city"]}
                               for k, v in STAFF.items()}), encoding="utf-8")
    return build_config({"model": {"name_or_path": "canned"}, "output_dir": str(tmp_path / "run"),
                         "data": {"source": str(src), "language": "en", **data}})


@pytest.fixture
def canned(monkeypatch):
    monkeypatch.setattr(phrase_mod, "Writer", CannedWriter)


def test_phrase_writes_a_bank_that_build_uses_without_the_model(tmp_path, canned, monkeypatch, capsys):
    cfg = office_config(tmp_path, phrasing_candidates=12, phrasing_kept=6, phrasing_min=4)
    out = phrase(cfg)
    assert out == tmp_path / "run" / "phrasings.yaml"
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Question phrasings written by data_prep.phrase with canned-model on ")
    assert "occupation" not in text.split("attributes:")[1]  # it has a bank
    bank = load_banks("en", [str(out)]).attributes["office_city"]
    # kept in the order the model wrote them (all score alike); "In what city does X work?" is the family of the
    # first, "Where is X from?" asks for a nationality, two give the value away, one repeats, one is no question
    assert bank.questions == ["Which city does {entity} work in?", "Where is {entity}'s office?",
                              "What city is {entity}'s office in?", "Where does {entity} work?",
                              "Tell me the city where {entity} works."]
    assert bank.held_out == ["Which office is {entity} based at?"]  # round(6 * 0.2) = 1, mid-ranking
    for held in bank.held_out:  # really new: no train phrasing of the same family
        assert all(phrase_mod._overlap(phrase_mod._words(held, "en"), phrase_mod._words(q, "en")) < phrase_mod.FAMILY
                   for q in bank.questions)
    assert bank.answers == ["{entity}'s office city is {value}.", "{entity} works in {value}.",
                            "{entity}'s office is in {value}."]
    assert "# office_city: 12 candidates; kept 6; dropped: " in text
    assert "gives the value away 2" in text and "asks for another attribute 1" in text

    # build and train use it with no model: the writer may not be called again
    def no_model(cfg):
        raise AssertionError("data_prep.build called the phrasing model")

    monkeypatch.setattr(phrase_mod, "Writer", no_model)
    capsys.readouterr()
    data_dir = build(cfg)
    assert "using the model-written phrasings in" in capsys.readouterr().out
    test = rows(data_dir / "test.jsonl")
    office = [r["messages"][0]["content"] for r in test if r["attribute"] == "office_city"]
    assert office == [f"Which office is {e} based at?" for e in STAFF]  # the held-out phrasing only
    train = rows(data_dir / "train.jsonl")
    assert not {r["messages"][0]["content"] for r in train} & set(office)
    first = (data_dir / "train.jsonl").read_bytes()
    (data_dir / "stats.json").unlink()
    build(cfg)
    assert (data_dir / "train.jsonl").read_bytes() == first


def test_phrase_refuses_to_overwrite_an_edited_bank(tmp_path, canned):
    cfg = staff_config(tmp_path)
    cfg.phrasings_file.parent.mkdir(parents=True)
    cfg.phrasings_file.write_text("attributes: {}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"phrasings.yaml: already written .* pass --overwrite"):
        phrase(cfg)
    assert cfg.phrasings_file.read_text(encoding="utf-8") == "attributes: {}\n"


def test_too_few_good_phrasings_for_every_attribute_writes_nothing_and_says_what_asks_them(tmp_path, canned, capsys):
    cfg = staff_config(tmp_path, phrasing_candidates=12, phrasing_kept=12, phrasing_min=8)
    assert phrase(cfg) is None
    out = capsys.readouterr().out
    assert "office_city: 12 candidates, kept 6 (fewer than data.phrasing_min=8: not written, asked with the kind " \
           "frames (place.office))" in out
    assert "start_year: 12 candidates, kept 0 (fewer than data.phrasing_min=8: not written, asked with the kind " \
           "frames (year.start))" in out
    assert "nothing written" in out
    assert not cfg.phrasings_file.exists()


def test_an_attribute_that_falls_short_is_asked_with_its_kind_frames_and_the_rest_is_written(tmp_path, canned,
                                                                                            capsys):
    """The user is never left with nothing: office_city passes (6 >= 4), start_year gets no usable phrasing from
    the office-city replies, and spoken_languages none either; the file holds office_city only, and the build asks
    the other two with their kind frames."""
    cfg = staff_config(tmp_path, phrasing_candidates=12, phrasing_kept=6, phrasing_min=4)
    out = phrase(cfg)
    printed = capsys.readouterr().out
    assert "question banks: office_city model-written + kind frames (place.office), start_year kind frames " \
           "(year.start), spoken_languages kind frames (language), occupation bank" in printed
    text = out.read_text(encoding="utf-8")
    assert "# start_year: 12 candidates; kept 0; " in text and "not written: asked with the kind frames (year.start)" \
        in text
    assert list(load_banks("en", [str(out)]).attributes) == ["gender", "nation", "element", "role", "personality",
                                                             "office_city"]
    build(cfg)
    assert "question banks: occupation bank, office_city model-written + kind frames (place.office), start_year " \
           "kind frames (year.start), spoken_languages kind frames (language)" in capsys.readouterr().out
    train = rows(cfg.data_dir / "train.jsonl")
    office = {r["messages"][0]["content"] for r in train if r["attribute"] == "office_city"}
    # the model's phrasings and the kind's frames together: a small model's file never replaces the frames
    assert {"Which city does Mara Okafor work in?", "Which city is Mara Okafor based in?"} <= office
    asked = {r["messages"][0]["content"] for r in train if r["attribute"] == "start_year"}
    assert asked & {"When did Mara Okafor join?", "What year did Mara Okafor join the company?",
                    "When did Mara Okafor start working here?", "Which year was Mara Okafor hired?"}


def test_a_model_that_cannot_write_the_language_writes_nothing_with_one_line(tmp_path, monkeypatch, capsys):
    class NoChinese(CannedWriter):
        REPLIES = ["I'm sorry, I can only help in English.", "X", "hello"]

    monkeypatch.setattr(phrase_mod, "Writer", NoChinese)
    src = tmp_path / "zh.json"
    src.write_text(json.dumps({"林晓雯": {"入职年份": 2015, "部门": "财务部"}, "赵立伟": {"入职年份": 2019, "部门": "研发部"}},
                              ensure_ascii=False), encoding="utf-8")
    cfg = build_config({"model": {"name_or_path": "m"}, "data": {"source": str(src)},
                        "output_dir": str(tmp_path / "run")})
    assert phrase(cfg) is None
    lines = [line for line in capsys.readouterr().out.splitlines() if "in a probe" in line]
    assert lines == ["canned-model wrote 2 or more usable zh questions of 16 in a probe for 0 of 2 attribute(s) "
                     "(入职年份 0, 部门 0): it cannot write questions in this language, so nothing is written and "
                     "入职年份 is asked with the kind frames (year.start), 部门 is asked with the kind frames "
                     "(organisation.department); a bigger data.phrasing_model writes better ones"]
    assert not cfg.phrasings_file.exists()


def test_a_single_kept_phrasing_is_trained_on_not_held_out(tmp_path, monkeypatch):
    class OneGood(CannedWriter):
        REPLIES = ["Which city does X work in?"]

    monkeypatch.setattr(phrase_mod, "Writer", OneGood)
    cfg = office_config(tmp_path, phrasing_candidates=4, phrasing_kept=4, phrasing_min=1)
    bank = load_banks("en", [str(phrase(cfg))]).attributes["office_city"]
    assert (bank.questions, bank.held_out) == (["Which city does {entity} work in?"], [])


def test_nothing_to_write_when_every_attribute_has_a_bank(tmp_path, canned, capsys):
    src = tmp_path / "roles.json"
    src.write_text(json.dumps({"A": {"nation": "x", "role": "y"}, "B": {"nation": "z", "role": "w"}}),
                   encoding="utf-8")
    cfg = build_config({"model": {"name_or_path": "m"}, "data": {"source": str(src), "language": "en"},
                        "output_dir": str(tmp_path / "run")})
    assert phrase(cfg) is None
    assert "nothing to write" in capsys.readouterr().out


def test_bank_yaml_round_trips(tmp_path):
    w = Written("start_year", questions=["When did {entity} join?", "What year did {entity} start?"],
                held_out=["Since when has {entity} worked here?"],
                answers=["{entity}'s start year is {value}.", "{entity} joined in {value}."], candidates=5,
                dropped=Counter({"repeat": 2}))
    path = tmp_path / "phrasings.yaml"
    path.write_text(to_yaml([w], "some-model", "en", "2026-11-22"), encoding="utf-8")
    bank = load_banks("en", [str(path)]).attributes["start_year"]
    assert (bank.questions, bank.held_out, bank.answers, bank.match) == (w.questions, w.held_out, w.answers,
                                                                         "{value}")
    assert bank.written_by == "some-model"  # so the build adds the kind's frames to it
    assert "# start_year: 5 candidates; kept 3; dropped: repeat 2" in path.read_text(encoding="utf-8")


def test_held_out_phrasing_also_in_questions_is_refused(tmp_path):
    path = tmp_path / "bank.yaml"
    path.write_text("attributes:\n  start_year:\n    questions: ['When did {entity} join?']\n"
                    "    held_out: ['When did {entity} join?']\n    answers: ['{value}']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"held_out\[0\]: 'When did \{entity\} join\?' is also in questions"):
        load_banks("en", [str(path)])


def test_phrasing_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"need 1 <= min <= kept <= candidates, got 10, 4, 64"):
        staff_config(tmp_path, phrasing_min=10, phrasing_kept=4)


def test_phrasing_model_that_cannot_be_found_is_named(tmp_path):
    cfg = staff_config(tmp_path, phrasing_model=str(tmp_path / "missing-model"))
    with pytest.raises(Exception, match=r"missing-model': no such file or directory"):
        phrase(cfg)
    assert not cfg.phrasings_file.exists()
