"""Which tokens are supervised, on three chat templates, without added tokens."""

import re
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from kit.chat import generation_prompt, strip_think
from kit.models import load_tokenizer
from sft.encode import (
    EncodeError,
    audit,
    cut_answers_warning,
    encode,
    encode_rows,
    longest_answers,
    token_counts,
    with_counts,
)

from .conftest import CHATML, DEEPSEEK, LLAMA3

Q, A = "钟离先生是什么性别?", "钟离是男性"
ONE = [{"role": "user", "content": Q}, {"role": "assistant", "content": A}]
TWO = ONE + [{"role": "user", "content": "钟离来自哪个国家?"}, {"role": "assistant", "content": "钟离来自璃月"}]
END = {CHATML: "<|im_end|>", LLAMA3: "<|eot_id|>", DEEPSEEK: "<｜end▁of▁sentence｜>"}


def supervised_runs(tok, ids, labels):
    runs, cur = [], []
    for i, label in zip(ids, labels):
        if label != -100:
            assert label == i
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


@pytest.mark.parametrize("kind", [CHATML, LLAMA3])
def test_exactly_answer_and_end_token_supervised(tokenizer_dirs, kind):
    tok = load_tokenizer(str(tokenizer_dirs[kind]))
    n_vocab = len(tok)
    e = encode(tok, ONE)
    assert supervised_runs(tok, e.input_ids, e.labels) == [A + END[kind]]
    assert len(tok) == n_vocab  # nothing added
    # what precedes the answer is exactly the prompt generation will use
    assert e.text.startswith(generation_prompt(tok, ONE[:1]))
    assert e.input_ids[: len(tok(generation_prompt(tok, ONE[:1]), add_special_tokens=False)["input_ids"])] == \
        tok(generation_prompt(tok, ONE[:1]), add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kind", [CHATML, LLAMA3])
def test_multi_turn_supervises_every_answer(tokenizer_dirs, kind):
    tok = load_tokenizer(str(tokenizer_dirs[kind]))
    e = encode(tok, TWO)
    assert supervised_runs(tok, e.input_ids, e.labels) == [A + END[kind], "钟离来自璃月" + END[kind]]


def test_reasoning_template_trains_behind_an_empty_think_block(tokenizer_dirs):
    tok = load_tokenizer(str(tokenizer_dirs[DEEPSEEK]))
    prompt = generation_prompt(tok, ONE[:1])
    assert prompt.endswith("<｜Assistant｜><think>\n")
    e = encode(tok, ONE, thinking="strip")
    (run,) = supervised_runs(tok, e.input_ids, e.labels)
    assert run.replace(" ", "") == ("\n</think>\n\n" + A + END[DEEPSEEK]).replace(" ", "")
    assert e.text.startswith(prompt)
    with pytest.raises(EncodeError, match=r"opens a <think> block .* set model\.thinking: strip"):
        encode(tok, ONE, thinking="none")
    # multi-turn: earlier answers are context, the last one is learned behind its empty think block
    e = encode(tok, TWO, thinking="strip")
    (run,) = supervised_runs(tok, e.input_ids, e.labels)
    assert run.replace(" ", "") == ("\n</think>\n\n钟离来自璃月" + END[DEEPSEEK]).replace(" ", "")
    assert e.text.startswith(generation_prompt(tok, TWO[:-1]))


def test_pad_equal_to_eos_never_masks_the_end_token(tokenizer_dirs):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tok = AutoTokenizer.from_pretrained(tokenizer_dirs[DEEPSEEK])
    assert tok.pad_token_id == tok.eos_token_id  # the tutorial's situation, kept on purpose here
    rows = [{"id": "a", "messages": ONE}, {"id": "b", "messages": [ONE[0], {"role": "assistant", "content": "男"}]}]
    enc = encode_rows(tok, rows, 128, "strip", "t")
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(enc)
    eos = tok.eos_token_id
    for row, e in zip(batch["labels"].tolist(), enc):
        n = len(e["input_ids"])
        assert row[n - 1] == eos  # the end token is learned
        assert all(x == -100 for x in row[n:])  # padding (also eos) is not


def test_pad_token_chosen_from_existing_tokens(tokenizer_dirs):
    raw = AutoTokenizer.from_pretrained(tokenizer_dirs[LLAMA3])
    assert raw.pad_token is None
    tok = load_tokenizer(str(tokenizer_dirs[LLAMA3]))
    assert tok.pad_token is not None and tok.pad_token != tok.eos_token and len(tok) == len(raw)


def test_rows_too_long_or_unsupervised_are_errors_naming_the_row(tokenizer_dirs):
    tok = load_tokenizer(str(tokenizer_dirs[CHATML]))
    rows = [{"id": "ok", "messages": ONE}, {"id": "long", "messages": [ONE[0], {"role": "assistant",
                                                                                   "content": "很长" * 100}]}]
    with pytest.raises(EncodeError, match=r"train\.jsonl row 2 \(id long\): \d+ tokens is more than "
                                          r"train\.max_length=64; its answer would be cut away"):
        encode_rows(tok, rows, 64, "none", "train.jsonl")
    with pytest.raises(EncodeError, match=r"row 1 \(id q\): conversation has no assistant message"):
        encode_rows(tok, [{"id": "q", "messages": ONE[:1]}], 64, "none", "train.jsonl")


def test_audit_marks_the_supervised_span(tokenizer_dirs):
    tok = load_tokenizer(str(tokenizer_dirs[CHATML]))
    enc = encode_rows(tok, [{"id": "a", "messages": ONE}], 128, "none", "t")
    text = audit(tok, enc)
    assert f"[[{A}<|im_end|>]]" in text and "tokens supervised" in text


def test_strip_think():
    assert strip_think("<think>\nhmm\n</think>\n\n岩元素") == "岩元素"
    assert strip_think("岩元素") == "岩元素"
    assert strip_think("岩元素<think>unfinished") == "岩元素"
    assert strip_think("<think>a</think>b</think> c") == "c"


def _jsonl(path, rows):
    import json

    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _file_rows(n):
    return [{"id": f"r{i}", "messages": [{"role": "user", "content": f"{i}号角色来自哪里?"},
                                         {"role": "assistant", "content": f"{i}号角色来自璃月。"}]} for i in range(n)]


def test_encoded_file_equals_the_rows_encoded_one_by_one_in_parallel_too(tokenizer_dirs, tmp_path, monkeypatch):
    import sft.encode

    tok = load_tokenizer(str(tokenizer_dirs[CHATML]))
    rows = _file_rows(40)
    path = _jsonl(tmp_path / "train.jsonl", rows)
    want = encode_rows(tok, rows, 128, "none", "t")
    ds = sft.encode.encode_file(tok, path, 128, "none", tmp_path / "one")
    assert [dict(r) for r in ds] == want
    monkeypatch.setattr(sft.encode, "PARALLEL_FROM_ROWS", 10)
    ds2 = sft.encode.encode_file(tok, path, 128, "none", tmp_path / "two", num_proc=2)
    assert [dict(r) for r in ds2] == want
    assert "over 40 rows" in audit(tok, ds2) and audit(tok, ds2) == audit(tok, want)
    # the answer lengths are counted while tokenising (the cut-answer warning reads no row again), in parallel too
    assert token_counts(ds)["answer_runs"] == token_counts(ds2)["answer_runs"] == token_counts(want)["answer_runs"]
    assert longest_answers(ds2, 0) == (40, 40, max(int(k) for k in token_counts(want)["answer_runs"]))


def test_a_tokenisation_cached_by_older_code_is_not_reused(tokenizer_dirs, tmp_path, monkeypatch):
    """Version 1 kept no answer lengths beside the rows: its caches are tokenised again, not read without them."""
    import sft.encode

    tok = load_tokenizer(str(tokenizer_dirs[CHATML]))
    path = _jsonl(tmp_path / "train.jsonl", _file_rows(5))
    monkeypatch.setattr(sft.encode, "ENCODE_VERSION", 1)
    sft.encode.encode_file(tok, path, 128, "none", tmp_path / "cache")
    monkeypatch.undo()
    assert sft.encode.ENCODE_VERSION == 2
    again = sft.encode.encode_file(tok, path, 128, "none", tmp_path / "cache")
    assert sum(token_counts(again)["answer_runs"].values()) == 5


def test_encoded_file_is_reused_and_redone_when_the_file_changes(tokenizer_dirs, tmp_path, monkeypatch, capsys):
    import sft.encode

    tok = load_tokenizer(str(tokenizer_dirs[CHATML]))
    path = _jsonl(tmp_path / "train.jsonl", _file_rows(5))
    sft.encode.encode_file(tok, path, 128, "none", tmp_path / "cache")

    def no_tokenising(*args, **kwargs):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(sft.encode, "_encode_batch", no_tokenising)
    again = sft.encode.encode_file(tok, path, 128, "none", tmp_path / "cache")
    assert len(again) == 5 and "tokenised rows reused" in capsys.readouterr().out
    _jsonl(path, _file_rows(6))
    with pytest.raises(AssertionError, match="tokenised again"):
        sft.encode.encode_file(tok, path, 128, "none", tmp_path / "cache")
    monkeypatch.undo()
    assert len(sft.encode.encode_file(tok, path, 128, "none", tmp_path / "cache")) == 6
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the older tokenisation was removed


def test_encoded_file_errors_name_file_and_row(tokenizer_dirs, tmp_path):
    import sft.encode

    tok = load_tokenizer(str(tokenizer_dirs[CHATML]))
    rows = _file_rows(4)
    rows[2]["messages"][1]["content"] = "很长" * 100
    rows[3]["messages"] = rows[3]["messages"][:1]
    path = _jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(EncodeError, match=r"2 rows cannot be trained on:\n  .*train\.jsonl row 3 \(id r2\): \d+ tokens "
                                          r"is more than train\.max_length=100.*\n  .*train\.jsonl row 4 \(id r3\): "
                                          r"conversation has no assistant message"):
        sft.encode.encode_file(tok, path, 100, "none", tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())  # nothing cached


def test_longest_answers_counts_supervised_runs_and_the_warning_names_the_setting():
    rows = [{"input_ids": [0] * 8, "labels": [-100, -100, 5, 6, 7, -100, 8, 9]},  # runs of 3 and 2
            {"input_ids": [0] * 3, "labels": [-100, 1, 2]}]  # a run of 2
    assert token_counts(rows)["answer_runs"] == {"3": 1, "2": 1}
    assert longest_answers(rows, 2) == (1, 2, 3)
    assert longest_answers(rows, 3) == (0, 2, 3)
    both = with_counts(SimpleNamespace(), [token_counts(rows), token_counts(rows[1:])])
    assert both.kit_counts["answer_runs"] == {"3": 1, "2": 2}  # train rows and replay rows counted together
    assert cut_answers_warning(rows, 3) is None
    assert re.search(r"1 of 2 training answers are longer than eval\.max_new_tokens=2 tokens \(the longest 3.*"
                     r"set eval\.max_new_tokens=3 or more", cut_answers_warning(rows, 2))


def test_longest_answer_is_the_answer_and_its_end_token(tokenizer_dirs):
    tok = load_tokenizer(str(tokenizer_dirs[CHATML]))
    enc = encode_rows(tok, [{"id": "a", "messages": TWO}], 128, "none", "t")
    # "钟离是男性<|im_end|>" and "钟离来自璃月<|im_end|>": the longer is the second, whatever the tokenizer splits into
    runs = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in supervised_runs(tok, enc[0]["input_ids"],
                                                                                       enc[0]["labels"])]
    assert len(runs) == 2 and longest_answers(enc, 1)[2] == max(runs)
