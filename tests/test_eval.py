"""Merge, batched generation, BERTScore and the report, on tiny models."""

import csv
import json

import pytest
import torch

from eval.generate import generate
from eval.merge import merge
from eval.metrics import Scorer, score_rows, summarise
from eval.report import markdown
from eval.score import _report, score_file
from kit.chat import generation_prompt
from kit.errors import KitError
from kit.files import load_jsonl
from kit.generation import generate_batched, reference_greedy
from kit.specificity import value_match
from sft.train import train

from .conftest import tiny_run_config

make_cfg = tiny_run_config  # (model_dir, root, bert=None, **eval overrides)


@pytest.fixture(scope="session")
def trained(tiny_model, tiny_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    cfg = make_cfg(tiny_model, root, tiny_bert)
    train(cfg)
    return root


def cfg_for(trained, tiny_model, tiny_bert, **eval_):
    return make_cfg(tiny_model, trained, tiny_bert, **eval_)


def test_merged_equals_base_plus_adapter(trained, tiny_model, tiny_bert, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = cfg_for(trained, tiny_model, tiny_bert, merged_dir=str(tmp_path / "merged"))
    out = merge(cfg)
    check = json.loads((out / "merge_check.json").read_text())
    assert check["passed"] and check["relative_diff"] <= cfg.eval.merge_rtol and check["attention"] == "eager"
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json", "config.json"):
        assert (out / name).is_file(), name
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (out / "tokenizer_config.json").read_text()
    gen = json.loads((out / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids("<|im_end|>") in (gen["eos_token_id"] if isinstance(gen["eos_token_id"], list)
                                                       else [gen["eos_token_id"]])
    # independently: the export and base + adapter give the same logits
    ids = tok(generation_prompt(tok, [{"role": "user", "content": "钟离来自哪个国家?"}]),
              add_special_tokens=False, return_tensors="pt")["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                        str(cfg.adapter_dir))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, rtol=0, atol=1e-4)
        assert not torch.allclose(merged(ids).logits,
                                  AutoModelForCausalLM.from_pretrained(tiny_model)(ids).logits, atol=1e-3)
    with pytest.raises(KitError, match=r"an export already exists; set eval\.overwrite=true"):
        merge(cfg)


def test_merge_check_is_relative_to_the_logit_scale():
    """Issue 26, fault 6: the same 0.004 is float32 rounding next to logits of 50, and a wrong merge next to 2."""
    from eval.merge import check_logits

    adapted = [torch.tensor([[50.0, -2.0], [1.0, 0.5]])]
    check = check_logits(adapted, [torch.tensor([[50.0, -2.0], [1.004, 0.5]])], rtol=1e-3)
    assert check == {"float32_max_abs_logit_diff": pytest.approx(0.004, rel=1e-4), "max_abs_logit": 50.0,
                     "relative_diff": pytest.approx(8e-5, rel=1e-4), "rtol": 1e-3, "passed": True}
    with pytest.raises(KitError, match=r"merge check failed: merged and base\+adapter logits differ by 0\.004, 0\.002 "
                                       r"of the largest \|logit\| \(2\) > eval\.merge_rtol=0\.001 on 1 prompts; "
                                       r"nothing was exported"):
        check_logits([torch.tensor([[2.0, -1.0]])], [torch.tensor([[2.004, -1.0]])], rtol=1e-3)


def test_merge_check_fails_when_the_merged_weights_are_off(trained, tiny_model, tiny_bert, tmp_path, monkeypatch):
    """A merge that leaves one module's LoRA update out (here: layer 0's q_proj put back to the base weight) is
    refused and nothing is exported; the real merge of the same adapter passes (test_merged_equals_base_plus_adapter).
    """
    from peft.tuners.lora import LoraModel

    merge_and_unload = LoraModel.merge_and_unload

    def one_module_unmerged(self, *args, **kwargs):
        original = self.model.model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
        merged = merge_and_unload(self, *args, **kwargs)
        with torch.no_grad():
            merged.model.layers[0].self_attn.q_proj.weight.copy_(original)
        return merged

    monkeypatch.setattr(LoraModel, "merge_and_unload", one_module_unmerged)
    cfg = cfg_for(trained, tiny_model, tiny_bert, merged_dir=str(tmp_path / "merged"))
    with pytest.raises(KitError, match=r"merge check failed: merged and base\+adapter logits differ by .* of the "
                                       r"largest \|logit\| .* > eval\.merge_rtol=0\.001 on 4 prompts; nothing was "
                                       r"exported"):
        merge(cfg)
    assert not (tmp_path / "merged").exists()


def test_merge_needs_an_adapter(tiny_model, tmp_path):
    cfg = make_cfg(tiny_model, tmp_path)
    with pytest.raises(KitError, match=r"adapter: no trained adapter here .* `python -m sft\.train CONFIG`"):
        merge(cfg)


def test_batched_answers_equal_one_by_one(trained, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kit.models import load_tokenizer

    tok = load_tokenizer(str(trained / "run" / "adapter"))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                      str(trained / "run" / "adapter")).eval()
    questions = ["钟离是什么性别?", "请问丽莎的国籍是什么?", "你好", "丽莎使用哪种元素?", "钟离从哪里来的?",
                 "很长的问题" * 5]
    prompts = [generation_prompt(tok, [{"role": "user", "content": q}]) for q in questions]
    batched = generate_batched(model, tok, prompts, batch_size=4, max_new_tokens=10)
    assert batched == reference_greedy(model, tok, prompts, max_new_tokens=10)  # base + adapter, unmerged
    assert len(set(batched)) > 1


def test_generate_writes_rows_and_resumes(trained, tiny_model, tiny_bert, tmp_path):
    cfg = cfg_for(trained, tiny_model, tiny_bert, use_merged=False, output_dir=str(tmp_path / "ev"))
    out = generate(cfg)
    rows = load_jsonl(out)
    assert len(rows) == len({r["id"] for r in rows}) > 4
    for key in ("question", "answer", "prediction", "raw_prediction", "entity", "attribute", "expected", "split"):
        assert key in rows[0]
    # a crash after 3 rows, mid-line: the rerun keeps those 3 and answers the rest
    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10], encoding="utf-8")
    generate(cfg)
    again = load_jsonl(out)
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in rows)
    assert {r["id"]: r["prediction"] for r in again} == {r["id"]: r["prediction"] for r in rows}
    with pytest.raises(KitError, match=r"none: no merged export here, and eval\.use_merged=true asks for one; run "
                                       r"`python -m eval\.merge CONFIG` first"):
        generate(cfg_for(trained, tiny_model, tiny_bert, use_merged=True, merged_dir=str(tmp_path / "none")))


def test_every_entry_point_answers_with_base_plus_adapter_without_an_export(trained, tiny_model, tiny_bert,
                                                                            tmp_path, capsys):
    """Issue 26, fault 7: eval.generate, eval.chat and eval.app follow one rule (eval.models.model_source)."""
    from eval.app import load_chats
    from eval.chat import Chat
    from eval.models import ModelSource, model_source

    adapter, merged = trained / "run" / "adapter", tmp_path / "merged"
    cfg = cfg_for(trained, tiny_model, tiny_bert, merged_dir=str(merged), output_dir=str(tmp_path / "ev"))
    said = (f"base {tiny_model} + adapter {adapter}: no merged export in {merged} "
            f"(`python -m eval.merge CONFIG` makes one)")
    assert model_source(cfg, "finetuned") == ModelSource(str(tiny_model), str(adapter), said)
    out = generate(cfg)
    meta = json.loads(out.with_suffix(".meta.json").read_text(encoding="utf-8"))
    assert (meta["model"], meta["adapter"], meta["answered_by"]) == (str(tiny_model), str(adapter), said)
    assert f"answering (finetuned) with {said}" in capsys.readouterr().out
    assert hasattr(Chat(cfg).model, "get_base_model")  # a PEFT model: base + adapter
    assert f"finetuned: {said}" in capsys.readouterr().out
    chats, why = load_chats(cfg)
    assert why is None and hasattr(chats["finetuned"].model, "get_base_model")

    merge(cfg)  # with an export, the export answers; eval.use_merged=false keeps base + adapter
    assert model_source(cfg, "finetuned") == ModelSource(str(merged), None, f"the merged export {merged}")
    kept = cfg_for(trained, tiny_model, tiny_bert, merged_dir=str(merged), use_merged=False)
    assert model_source(kept, "finetuned") == ModelSource(
        str(tiny_model), str(adapter), f"base {tiny_model} + adapter {adapter}: eval.use_merged=false")
    (tmp_path / "untrained").mkdir()
    with pytest.raises(KitError, match=r"no fine-tuned model: no merged export in .*merged and no trained adapter in "
                                       r".*adapter; train first with `python -m sft\.train CONFIG`"):
        model_source(cfg_for(tmp_path / "untrained", tiny_model, tiny_bert), "finetuned")


def test_generate_in_small_chunks_writes_the_same_file(trained, tiny_model, tiny_bert, tmp_path, monkeypatch):
    import eval.generate

    whole = generate(cfg_for(trained, tiny_model, tiny_bert, use_merged=False, output_dir=str(tmp_path / "a")))
    monkeypatch.setattr(eval.generate, "CHUNK_ROWS", 3)  # rows read, answered and written 3 at a time
    chunked = generate(cfg_for(trained, tiny_model, tiny_bert, use_merged=False, output_dir=str(tmp_path / "b")))
    assert chunked.read_bytes() == whole.read_bytes()
    got = load_jsonl(whole)
    test = [r["id"] for r in load_jsonl(cfg_for(trained, tiny_model, tiny_bert).data_dir / "test.jsonl")]
    assert [r["id"] for r in got[:len(test)]] == test  # the test questions first, in file order
    assert [r["split"] for r in got[len(test):len(test) + 100]] == ["probe"] * 100  # then the everyday probes
    assert len({r["id"] for r in got}) == len(got)


def test_predictions_are_put_in_data_order_keeping_the_first_of_a_repeat(tmp_path):
    from eval.generate import _in_row_order

    out = tmp_path / "p.jsonl"
    lines = ['{"id": "c", "prediction": "3"}', '{"id": "a", "prediction": "1"}', '{"id": "c", "prediction": "x"}',
             '{"id": "z", "prediction": "?"}', '{"id": "b", "prediction": "2"}']
    out.write_text("\n".join(lines), encoding="utf-8")  # no newline after the last line either
    _in_row_order(out, ["a", "b", "c"])
    assert out.read_text(encoding="utf-8") == (
        '{"id": "a", "prediction": "1"}\n{"id": "b", "prediction": "2"}\n{"id": "c", "prediction": "3"}\n'
        '{"id": "z", "prediction": "?"}\n')
    before = out.stat().st_mtime_ns
    _in_row_order(out, ["a", "b", "c"])  # already in order: left as it is
    assert out.stat().st_mtime_ns == before


def test_tiny_bert_scores_identical_strings_one(tiny_bert):
    s = Scorer(str(tiny_bert), 2, "zh", batch_size=4)
    p, r, f = s.score(["钟离是男性", "岩元素", "钟离来自璃月"], ["钟离是男性", "雷元素", "丽莎来自蒙德"])
    assert f[0] == pytest.approx(1.0, abs=1e-5)
    assert f[1] < 0.999 and f[2] < 0.999
    assert "L2" in s.hash


def test_encoder_that_cannot_load_names_itself(tmp_path):
    (tmp_path / "enc").mkdir()
    with pytest.raises(KitError, match=r"BERTScore encoder '.*enc' could not be loaded .* "
                                       r"eval\.bertscore_model=/path/to/local/dir"):
        Scorer(str(tmp_path / "enc"), 2, "zh")


class FakeScorer:
    hash = "fake-hash"
    label = "fake"
    max_tokens = 512

    def __init__(self, f1):
        self.f1 = f1

    def score(self, preds, refs):
        return self.f1, self.f1, self.f1

    def too_long(self, texts):
        return []


def test_report_numbers_from_known_inputs(tiny_model, tmp_path):
    cfg = make_cfg(tiny_model, tmp_path, f1_threshold=0.6, worst_n=2)
    rows = [
        {"question": "q1", "answer": "钟离是男性", "prediction": "钟离是男性", "entity": "钟离", "attribute": "性别",
         "expected": "男性", "split": "test"},
        {"question": "q2", "answer": "岩元素", "prediction": "雷元素", "entity": "钟离", "attribute": "元素力",
         "expected": "岩元素", "split": "test"},
        {"question": "q3", "answer": "丽莎来自蒙德", "prediction": "来自 蒙德!", "entity": "丽莎", "attribute": "国籍",
         "expected": "蒙德", "split": "test"},
        {"question": "q4", "answer": "丽莎是女性", "prediction": "", "entity": "丽莎", "attribute": "性别",
         "expected": "女性", "split": "test"},
    ]
    scored = score_rows(rows, FakeScorer([1.0, 0.5, 0.8, 0.2]), "finetuned")
    assert [r["value_match"] for r in scored] == [True, False, True, False]
    summary = summarise(scored, cfg, FakeScorer([]), "known")
    o = summary["models"]["finetuned"]["overall"]
    assert o["f1_mean"] == pytest.approx(0.625) and o["f1_median"] == pytest.approx(0.65)
    assert o["value_match_rate"] == pytest.approx(0.5) and o["below_threshold"] == 2
    per = summary["models"]["finetuned"]["per_attribute"]
    assert per["性别"]["rows"] == 2 and per["性别"]["value_match_rate"] == 0.5
    assert [r["question"] for r in summary["models"]["finetuned"]["lowest"]] == ["q4", "q2"]
    md = markdown(summary)
    assert "| value match | 50.0% |" in md and "fake-hash" in md


def test_reverse_questions_are_their_own_group(tiny_model, tmp_path):
    cfg = make_cfg(tiny_model, tmp_path)
    rows = [
        {"question": "钟离的身份?", "answer": "钟离是往生堂客卿", "prediction": "钟离是往生堂客卿", "entity": "钟离",
         "attribute": "身份", "expected": "往生堂客卿", "split": "test", "template": "身份/1a2b3c4d"},
        {"question": "谁的身份是往生堂客卿?", "answer": "身份是往生堂客卿的是钟离", "prediction": "丽莎",
         "entity": "钟离", "attribute": "身份", "expected": "钟离", "split": "test", "template": "reverse/5e6f7a8b"},
        {"question": "谁的国籍是蒙德?", "answer": "国籍是蒙德的是丽莎", "prediction": "是丽莎", "entity": "丽莎",
         "attribute": "国籍", "expected": "丽莎", "split": "test", "template": "reverse/9c0d1e2f"},
    ]
    summary = summarise(score_rows(rows, FakeScorer([1.0, 0.3, 0.9]), "finetuned"), cfg, FakeScorer([]), "known")
    m = summary["models"]["finetuned"]
    assert {k: (v["rows"], v["value_match_rate"]) for k, v in m["per_direction"].items()} == {
        "forward": (1, 1.0), "reverse": (2, 0.5)}
    assert {k: v["rows"] for k, v in m["per_attribute"].items()} == {"身份": 1}  # reverse rows kept apart
    assert "## Per direction (reverse: the value asked, the entity answered)" in markdown(summary)


@pytest.mark.parametrize("expected,prediction,right", [
    # Latin-script values: whole words, any case (issue 26: "male" was found in "female")
    ("male", "Tomas Lind is female.", False),
    ("male", "Tomas Lind is male.", True),
    ("Male", "tomas lind is MALE", True),
    ("Geo", "She is a geologist.", False),
    ("Geo", "Her element is Geo.", True),
    ("Liyue", "Liyue's harbour is busy", True),  # an apostrophe ends a word
    ("adult male", "He is an adult male.", True),
    ("adult male", "He is male, an adult.", False),  # the words of one value in their order
    ("Jean-Luc", "Jean Luc Picard", True),  # a hyphen separates words, as punctuation does
    ("Luc", "Jean-Luc Picard", True),
    ("Mondstadt", "lisa is from MONDSTADT.", True),
    # numbers: whole, with their sign and decimal point, compared as values
    ("1.5", "It is 15 metres tall.", False),
    ("1.5", "It is 1.5 metres tall.", True),
    ("1815", "Founded in 18150.", False),
    ("1815", "Founded in 1815.", True),
    ("1,815", "1815 people live there", True),  # commas between groups of three digits: thousands
    ("1815", "1,815 people live there", True),
    ("1,815", "1,816 people live there", False),
    ("3.0", "3 metres", True),
    ("3", "3.5 metres", False),
    ("-3", "The low was -3 degrees.", True),
    ("-3", "The low was \u22123 degrees.", True),  # U+2212 MINUS SIGN
    ("-3", "The low was 3 degrees.", False),
    ("3", "The low was -3 degrees.", False),
    ("3", "It takes 2-3 days.", True),  # a minus after a digit is a hyphen
    ("3", "She came 3rd.", False),  # digits glued to letters are a word
    ("2019", "She started in 2019.Then she left.", True),
    # CJK: anywhere, as a substring; full-width punctuation does not count
    ("往生堂客卿,岩神", "钟离是往生堂客卿，岩神。", True),
    ("往生堂客卿,岩神", "钟离是往生堂客卿", False),
    ("璃月", "钟离来自璃月港", True),
    ("女性", "钟离是男性", False),
    ("175", "身高175厘米", True),
    ("17", "身高175厘米", False),  # numbers are whole next to CJK too
    # mixed CJK + Latin: the Latin part whole
    ("B站", "我在B站看的", True),
    ("B站", "我在AB站看的", False),
    # a list value: every part, in any order
    ("Yoruba | Portuguese", "She speaks Portuguese and Yoruba.", True),
    ("Yoruba | Portuguese", "She speaks Yoruba.", False),
    # nothing to look for
    ("", "anything", None),
    ("?!", "anything", None),
])
def test_value_match(expected, prediction, right):
    assert value_match(expected, prediction) is right


def test_an_empty_answer_scores_zero_in_the_cli(tiny_model, tiny_bert, tmp_path, capsys):
    """Issue 26, fault 1: `eval.score --predictions p.csv` with an empty and a whitespace-only prediction."""
    import yaml

    from eval.score import main

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(make_cfg(tiny_model, tmp_path, tiny_bert).to_dict(), allow_unicode=True),
                      encoding="utf-8")
    pred = tmp_path / "p.csv"
    pred.write_text("question,answer,prediction,expected\n"
                    "钟离是什么性别?,钟离是男性,钟离是男性,男性\n"
                    "丽莎来自哪里?,丽莎来自蒙德,,蒙德\n"
                    "钟离的元素?,岩元素,\"   \",岩元素\n", encoding="utf-8")
    assert main([str(config), "--predictions", str(pred), f"output_dir={tmp_path / 'x'}"]) == 0
    rows = list(csv.DictReader((tmp_path / "x" / "report" / "scores.csv").open(encoding="utf-8")))
    assert [(r["precision"], r["recall"], r["f1"], r["value_match"]) for r in rows[1:]] == [
        ("0.0", "0.0", "0.0", "0"), ("0.0", "0.0", "0.0", "0")]
    assert float(rows[0]["f1"]) == pytest.approx(1.0, abs=1e-5) and rows[0]["value_match"] == "1"
    summary = json.loads((tmp_path / "x" / "report" / "summary.json").read_text(encoding="utf-8"))
    assert summary["models"]["p"]["overall"]["empty_answers"] == 2
    assert "| empty answers | 2 |" in (tmp_path / "x" / "report" / "summary.md").read_text(encoding="utf-8")
    assert "| empty answers | 2 |" in capsys.readouterr().out


def test_null_answers_and_answers_that_were_all_thinking_score_zero(tiny_model, tiny_bert, tmp_path):
    """JSON null and NaN, and the kit's own rows (eval.generate) where the model said nothing or `thinking: strip`
    left nothing: each row scores 0 and holds no value."""
    from eval.generate import prediction_row

    data = {"id": "r", "split": "test", "messages": [{"role": "user", "content": "丽莎来自哪里?"},
                                                      {"role": "assistant", "content": "丽莎来自蒙德"}],
            "entity": "丽莎", "attribute": "国籍", "value": "蒙德", "expected": "蒙德", "template": "t"}
    thought = prediction_row(data, "<think>丽莎来自蒙德</think>\n", "strip")
    silent = prediction_row(data, "", "none")
    assert (thought["prediction"], thought["raw_prediction"]) == ("", "<think>丽莎来自蒙德</think>\n")
    pred = tmp_path / "p.jsonl"
    pred.write_text("\n".join([json.dumps(thought, ensure_ascii=False), json.dumps(silent, ensure_ascii=False),
                               '{"question": "q", "answer": "丽莎来自蒙德", "prediction": null, "expected": "蒙德"}',
                               '{"question": "q", "answer": "丽莎来自蒙德", "prediction": NaN, "expected": "蒙德"}',
                               json.dumps(dict(silent, prediction="丽莎来自蒙德"), ensure_ascii=False)]) + "\n",
                    encoding="utf-8")
    out = score_file(make_cfg(tiny_model, tmp_path, tiny_bert), pred)
    rows = list(csv.DictReader((out / "scores.csv").open(encoding="utf-8")))
    assert [(r["f1"], r["value_match"]) for r in rows[:4]] == [("0.0", "0")] * 4
    assert rows[0]["raw_prediction"] == "<think>丽莎来自蒙德</think>\n"
    assert float(rows[4]["f1"]) == pytest.approx(1.0, abs=1e-5) and rows[4]["value_match"] == "1"
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["models"]["p"]["overall"]["empty_answers"] == 4


@pytest.mark.parametrize("prediction", ["", "   ", "\n\t", None, float("nan")])
def test_the_scorer_gives_an_empty_answer_zero(tiny_bert, prediction):
    """What every caller (eval.score, specificity drift, eval.export's artifact check) goes through."""
    from kit.specificity import is_empty

    s = Scorer(str(tiny_bert), 2, "zh", batch_size=4)
    p, r, f = s.score([prediction, "钟离是男性"], ["钟离是男性", "钟离是男性"])
    assert (p[0], r[0], f[0]) == (0.0, 0.0, 0.0) and f[1] == pytest.approx(1.0, abs=1e-5)
    assert is_empty(prediction) and value_match("男性", prediction) is False


def test_texts_longer_than_the_encoder_reads_are_named(tiny_model, tiny_bert, tmp_path, capsys):
    """Issue 26, fault 8. The tiny BERT reads 128 tokens: one per Chinese character, plus [CLS] and [SEP]."""
    cfg = make_cfg(tiny_model, tmp_path, tiny_bert)
    pred = tmp_path / "p.csv"
    pred.write_text("question,answer,prediction,expected\n"
                    "钟离是什么性别?,钟离是男性,钟离是男性,男性\n"
                    f"钟离是什么性别?,钟离是男性,{'男' * 127},男性\n"  # 129 tokens: cut
                    f"钟离是什么性别?,{'男' * 126},钟离是男性,男性\n"  # 128 tokens: read whole
                    f"钟离是什么性别?,{'男' * 200},钟离是男性,男性\n", encoding="utf-8")
    out = score_file(cfg, pred)
    rows = list(csv.DictReader((out / "scores.csv").open(encoding="utf-8")))
    assert [(r["id"], r["truncated"]) for r in rows] == [("row 2", "0"), ("row 3", "1"), ("row 4", "0"),
                                                         ("row 5", "1")]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["encoder_max_tokens"] == 128
    assert summary["models"]["p"]["truncated_rows"] == ["row 3", "row 5"]
    warning = ("**Truncated (p): in 2 row(s) the prediction or the reference answer is longer than the BERTScore "
               "encoder reads (128 tokens); their F1 compares the first 128 tokens only: row 3, row 5.**")
    assert warning in (out / "summary.md").read_text(encoding="utf-8")
    assert warning in capsys.readouterr().out


def test_score_a_foreign_predictions_file(tiny_model, tiny_bert, tmp_path):
    cfg = make_cfg(tiny_model, tmp_path, tiny_bert)
    pred = tmp_path / "answers.csv"
    with pred.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer", "prediction", "value"])
        w.writerow(["钟离是什么性别?", "钟离是男性", "钟离是男性", "男性"])
        w.writerow(["钟离的元素?", "岩元素", "雷元素", "岩元素"])
    out = score_file(cfg, pred)
    rows = list(csv.DictReader((out / "scores.csv").open(encoding="utf-8")))
    for col in ("question", "answer", "prediction", "precision", "recall", "f1", "hash", "entity", "attribute",
                "split", "raw_prediction", "value_match"):
        assert col in rows[0]
    assert float(rows[0]["f1"]) == pytest.approx(1.0, abs=1e-5) and rows[1]["value_match"] == "0"
    for name in ("summary.md", "summary.json", "f1_hist.png", "attributes.png"):
        assert (out / name).is_file()


@pytest.mark.parametrize("content,suffix,pattern", [
    ("question,answer\nq,a\n", ".csv", r"missing column\(s\) \['prediction'\]"),
    ("question,answer,prediction\nq,a,p\n,a2,p2\n", ".csv", r"row 3: empty 'question'"),
    ('{"question": "q", "answer": "", "prediction": "p"}\n', ".jsonl", r"row 1: empty 'answer'"),
    ("question,answer,prediction\n", ".csv", r"has no rows"),
    ('{"question": "q", "answer": "a", "prediction": "p"}\n{"question": "q2", "answer"\n', ".jsonl",
     r"line 2 is not JSON"),
    ('{"question": "q", "answer": "a"}\n', ".jsonl", r"missing column\(s\) \['prediction'\]"),
    ("\n", ".jsonl", r"has no rows"),
    ("x", ".txt", r"unsupported predictions format"),
])
def test_bad_predictions_files(tiny_model, tmp_path, content, suffix, pattern):
    pred = tmp_path / f"p{suffix}"
    pred.write_text(content, encoding="utf-8")
    cfg = make_cfg(tiny_model, tmp_path)
    with pytest.raises(KitError, match=pattern):
        score_file(cfg, pred)
    assert not (tmp_path / "run" / "report").exists()


def test_mismatched_row_counts(tiny_model, tiny_bert, tmp_path):
    cfg = make_cfg(tiny_model, tmp_path, tiny_bert)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    row = {"question": "q", "answer": "a", "prediction": "a"}
    a.write_text(json.dumps(row) + "\n", encoding="utf-8")
    b.write_text((json.dumps(row) + "\n") * 2, encoding="utf-8")
    with pytest.raises(KitError, match=r"different row counts \{'a': 1, 'b': 2\}"):
        _report(cfg, {"a": a, "b": b}, tmp_path / "report", None, own=False)
