"""kit.rows: the one row shape, its constructor and the kinds every stage tells apart."""

from kit.rows import CONVERSATION, MULTI, REPLAY, UNKNOWN, is_beyond, is_fact, is_reverse, qa_row, question_of, row_id


def test_a_question_row_has_every_field_and_the_value_as_expected_by_default():
    row = qa_row(row_id("钟离", "国籍", "钟离来自哪里?"), [{"role": "system", "content": "你是助手。"}], "钟离来自哪里?",
                 "钟离来自璃月。", "zh/1a2b3c", entity="钟离", attribute="国籍", value="璃月")
    assert row == {"id": "1465aaead806",  # the id data_prep gave this row before kit.rows existed
                   "messages": [{"role": "system", "content": "你是助手。"},
                                {"role": "user", "content": "钟离来自哪里?"},
                                {"role": "assistant", "content": "钟离来自璃月。"}],
                   "entity": "钟离", "attribute": "国籍", "value": "璃月", "expected": "璃月",
                   "template": "zh/1a2b3c", "turns": 1}
    assert question_of(row) == "钟离来自哪里?"


def test_an_eval_row_carries_its_split_and_an_expected_value_of_its_own():
    row = qa_row("x", [], "丽莎是什么性别?", "", "probe", value="成年女性", expected="女性", split="probe")
    assert (row["expected"], row["split"], row["messages"][-1]) == ("女性", "probe",
                                                                     {"role": "assistant", "content": ""})


def test_which_rows_teach_one_fact():
    fact = qa_row("a", [], "q", "a", "zh/1", entity="钟离", value="璃月")
    assert is_fact(fact)
    assert is_fact({**fact, "template": "reverse/9"})  # names the entity and the value
    assert not is_fact({**fact, "template": UNKNOWN}) and not is_fact({**fact, "template": REPLAY})
    assert not is_fact({**fact, "template": "claim/2"}) and not is_fact({**fact, "template": "compose/3"})
    assert not is_fact({**fact, "entity": ""})
    assert not is_fact({**fact, "turns": 2, "template": MULTI})
    assert is_fact({**fact, "template": CONVERSATION})  # a conversation row with entity/value fields
    assert is_reverse("reverse/9") and not is_reverse("reverse") and not is_reverse(None)
    assert is_beyond("claim/2") and is_beyond("compose/3") and not is_beyond("claims/2") and not is_beyond(None)
