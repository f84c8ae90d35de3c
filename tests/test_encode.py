"""Which tokens are supervised, on three chat templates, without added tokens."""

import pytest
from transformers import AutoTokenizer

from kit.models import load_tokenizer
from kit.chat import generation_prompt, strip_think
from sft.encode import EncodeError, audit, encode, encode_rows

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
    text = audit(tok, [], enc)
    assert f"[[{A}<|im_end|>]]" in text and "tokens supervised" in text


def test_strip_think():
    assert strip_think("<think>\nhmm\n</think>\n\n岩元素") == "岩元素"
    assert strip_think("岩元素") == "岩元素"
    assert strip_think("岩元素<think>unfinished") == "岩元素"
    assert strip_think("<think>a</think>b</think> c") == "c"
