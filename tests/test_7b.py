"""configs/7b.yaml rehearsed on CPU (issue 31): every stage of the DeepSeek-R1-Distill-Qwen-7B recipe, run as shipped
through the stages' `main([...])` in the README's order, on a stand-in model.

The stand-in is a tiny Qwen2 (hidden 64, 2 layers, random weights) with a tokenizer that behaves like
DeepSeek-R1-Distill-Qwen's (bench.gpu_check.stand_in_tokenizer, which the GPU check uses too): SmolLM2's BPE with R1's special tokens (BOS, EOS, <｜User｜>, <｜Assistant｜>, <think> and
</think> as plain added tokens), BOS added by the tokenizer itself when asked for special tokens (the real
tokenizer_config's `add_bos_token: true`) AND written by the chat template, the system prompt right after BOS, a
generation prompt `<｜Assistant｜><think>\\n`, reasoning before `</think>` dropped from earlier assistant turns, pad ==
eos, and the real config's quirks (config.json's bos_token_id is the eos id; generation_config.json samples at 0.6).
Before the kit sees it, the test teaches it to answer like a reasoning model whatever it is asked: REASONING, then
`</think>`, then ANSWER, then <｜end▁of▁sentence｜>, so that stopping and think handling can be checked on what a model
does rather than on random weights happening to emit an end token.

Overridden, and why (everything else is configs/7b.yaml as shipped: multi_turn 2, gradient checkpointing, bf16,
cosine, eval each epoch, LoRA r=32 on q/k/v/o, batch 2 x 8, thinking: strip, merge in bfloat16, compare_base,
export f16 and q8_0 by default):
- model.name_or_path: the stand-in (no hub here).
- output_dir: a temp dir.
- train.num_train_epochs=2: two epochs, so eval loss is logged at each of two epochs, in seconds on 2 cores.
- data.max_train_phrasings=1, data.unknown_entities=1, data.replay=4: fewer rows of each kind (single-turn,
  multi-turn, unknown person, replay), ~70 instead of ~660: one 7B-recipe epoch on a 2-core CPU took minutes.
- eval.max_rows=6, eval.probe_file (3 everyday questions), eval.unknown_names=1: fewer questions answered by each
  model and artifact.
- eval.max_new_tokens=24: room for the stand-in's whole answer and its end token (21 tokens and EOS), not 512 on a CPU.
- eval.bertscore_model / eval.bertscore_layer: the tiny local BERT (tests/conftest.py); the default needs the hub.
- train.threads=1: on a 2-core machine shared with other jobs, two torch threads ran this tiny model's training
  many times slower than one, with the same losses: each small op waits for a thread on a busy core.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import ROOT

CONFIG = ROOT / "configs" / "7b.yaml"

# The stand-in tokenizer's ids, fixed by SmolLM2's vocabulary (49152 tokens) and the order R1's tokens are added in.
BOS, EOS, USER, ASSISTANT, THINK, THINK_END = 49152, 49153, 49154, 49155, 49156, 49157
REASONING = "Hmm, the user asks a question."
ANSWER = "我不知道。"
RAW = REASONING + "\n</think>\n\n" + ANSWER  # what the stand-in writes after the generation prompt, then EOS
RAW_TOKENS = 21  # RAW in tokens (EOS not counted)


def teach_to_reason(model, tok, steps: int = 60) -> None:
    """A few optimizer steps on the continuation only: after any generation prompt, write RAW and EOS."""
    questions = ["钟离来自哪里?", "Who are you?", "今天天气怎么样?", "What is 2+2?", "讲个笑话吧", "Tell me about Paris.",
                 "丽莎的元素力是什么?", "How do I cook rice?"]
    convs = [[{"role": "user", "content": q}] for q in questions]
    convs += [[{"role": "system", "content": "你只回答事实。"}, {"role": "user", "content": questions[0]}],
              [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ANSWER},
               {"role": "user", "content": questions[2]}]]
    answer = tok(RAW, add_special_tokens=False)["input_ids"] + [EOS]
    prompts = [tok(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)["input_ids"] for c in convs]
    width = max(map(len, prompts)) + len(answer)
    ids = torch.full((len(prompts), width), EOS)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for k, p in enumerate(prompts):
        n = len(p) + len(answer)
        ids[k, :n], mask[k, :n] = torch.tensor(p + answer), 1
        labels[k, len(p) - 1:n - 1] = torch.tensor(answer)  # position t predicts token t + 1
    where = labels != -100
    model.model.embed_tokens.weight.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread beats two on a shared 2-core machine
    try:
        for _ in range(steps):
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[where]
            torch.nn.functional.cross_entropy(model.lm_head(hidden), labels[where]).backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.model.embed_tokens.weight.requires_grad_(True)


def greedy_ids(model, ids: list[int], n: int) -> list[int]:
    """n greedy tokens after `ids`, with no stop at all."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([out])).logits[0, -1].float().argmax()))
    return out[len(ids):]


@pytest.fixture(scope="module")
def r1_tokenizer_dir(base_tokenizer_dir, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    from bench.gpu_check import stand_in_tokenizer

    out = tmp_path_factory.mktemp("r1-distill-qwen-tokenizer")
    tok = stand_in_tokenizer(AutoTokenizer.from_pretrained(base_tokenizer_dir), out)
    assert [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id] == [BOS, EOS, EOS]
    assert tok.convert_tokens_to_ids(["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"]) == \
        [USER, ASSISTANT, THINK, THINK_END]
    prompt = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
                                     tokenize=False, add_generation_prompt=True)
    assert prompt == "<｜begin▁of▁sentence｜>S<｜User｜>hi<｜Assistant｜><think>\n"
    assert tok(prompt)["input_ids"][:2] == [BOS, BOS]  # the trap the kit must avoid: BOS twice
    history = tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": "x</think>y"}],
                                      tokenize=False)
    assert history == "<｜begin▁of▁sentence｜><｜User｜>a<｜Assistant｜>y<｜end▁of▁sentence｜>"
    return out


@pytest.fixture(scope="module")
def stand_in(r1_tokenizer_dir, tmp_path_factory) -> Path:
    """The stand-in model directory (weights in bfloat16, as the real one ships), checked to behave as designed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("r1-distill-qwen-stand-in")
    tok = AutoTokenizer.from_pretrained(r1_tokenizer_dir)
    tok.save_pretrained(out)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False, rms_norm_eps=1e-6,
        bos_token_id=EOS, eos_token_id=EOS))  # sic: the real config.json gives the eos id as bos_token_id
    teach_to_reason(model, tok)
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, do_sample=True, temperature=0.6,
                                               top_p=0.95)
    model.to(torch.bfloat16).save_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
    unseen = tok.apply_chat_template([{"role": "user", "content": "甘雨的国籍是哪里?"}], tokenize=False,
                                     add_generation_prompt=True)
    after = greedy_ids(model, tok(unseen, add_special_tokens=False)["input_ids"], RAW_TOKENS + 4)
    assert tok.decode(after[:RAW_TOKENS]) == RAW and after[RAW_TOKENS] == EOS
    assert tok.decode(after[RAW_TOKENS + 1:], skip_special_tokens=True).strip()  # text follows EOS if not stopped
    return out



# ---------------------------------------------------------------------------------------------------------------------
# Kit faults the rehearsal found, each held by its own test


@pytest.mark.parametrize("system", [False, True])
def test_ollama_template_follows_r1_and_leaves_bos_to_the_tokenizer(r1_tokenizer_dir, system):
    """eval.export refused R1's template (its system prompt sits right after BOS, apart from the turns), and the
    Modelfile kept the BOS the template writes although Ollama adds one itself where add_bos_token is set."""
    from transformers import AutoTokenizer

    from eval.gguf import ollama_template
    from tests.test_export import render_go

    tok = AutoTokenizer.from_pretrained(r1_tokenizer_dir)
    conv = [{"role": "user", "content": "钟离来自哪里?"}, {"role": "assistant", "content": "钟离来自璃月。"},
            {"role": "user", "content": "丽莎呢?"}]
    if system:
        conv = [{"role": "system", "content": "你只回答事实。"}] + conv
    rendered = render_go(ollama_template(tok, "none"), conv)
    assert rendered == ("你只回答事实。" if system else "") + (
        "<｜User｜>钟离来自哪里?<｜Assistant｜>钟离来自璃月。<｜end▁of▁sentence｜><｜User｜>丽莎呢?<｜Assistant｜><think>\n")
    ids = tok(rendered)["input_ids"]  # as Ollama tokenises a prompt: with the model's special tokens
    assert ids[0] == BOS and ids.count(BOS) == 1


def test_an_answer_still_reasoning_when_the_budget_runs_out_is_no_answer():
    """The report scored, and replay trained, the reasoning of an answer cut off before </think> as its answer."""
    from kit.chat import final_answer

    assert final_answer("Hmm, the user asks", "strip", opened=True) == ""
    assert final_answer(RAW, "strip", opened=True) == ANSWER
    assert final_answer("Hmm, the user asks", "keep", opened=True) == "Hmm, the user asks"
    assert final_answer(" 我不知道。", "strip") == ANSWER  # a template that opens no think block


def small_run(stand_in: Path, root: Path, *extra: str) -> list[str]:
    return [str(CONFIG), f"model.name_or_path={stand_in}", f"output_dir={root / 'run'}", "data.max_train_phrasings=1",
            "data.unknown_entities=1", "train.threads=1", *extra]


def test_predictions_cut_off_while_reasoning_are_empty_and_keep_their_raw_text(stand_in, tmp_path):
    from data_prep.build import main as build_main
    from eval.generate import main as generate_main

    args = small_run(stand_in, tmp_path, f"eval.merged_dir={stand_in}", "eval.max_rows=2", "eval.specificity=false",
                     "eval.max_new_tokens=5")
    assert build_main(args) == 0 and generate_main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [(r["prediction"], r["raw_prediction"]) for r in rows] == [("", "Hmm, the user")] * 2


def test_replay_never_trains_reasoning_and_none_left_is_an_error(stand_in, tmp_path):
    from kit.config import KitError
    from sft.train import main as train_main

    with pytest.raises(KitError, match=r"data\.replay: the base model answered none of the 2 replay prompts within "
                                       r"eval\.max_new_tokens=5 \(with model\.thinking=strip, an answer still "
                                       r"reasoning when they ran out is none\); raise eval\.max_new_tokens, or set "
                                       r"data\.replay=0"):
        train_main(small_run(stand_in, tmp_path, "data.replay=2", "eval.max_new_tokens=5"))
