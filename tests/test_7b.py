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
