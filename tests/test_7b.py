"""configs/7b.yaml rehearsed on CPU (issue 31): every stage of the DeepSeek-R1-Distill-Qwen-7B recipe, run as shipped
through the stages' `main([...])` in the README's order, on a stand-in model.

The stand-in is a tiny Qwen2 (hidden 64, 2 layers, random weights) with a tokenizer that behaves like
DeepSeek-R1-Distill-Qwen's (bench.gpu_check.stand_in_tokenizer, which the GPU check uses too): SmolLM2's BPE with
R1's special tokens (BOS, EOS, <｜User｜>, <｜Assistant｜>, <think> and </think> as plain added tokens), BOS added
by the tokenizer itself when asked for special tokens (the real tokenizer_config's `add_bos_token: true`) AND
written by the chat template, the system prompt right after BOS, a generation prompt `<｜Assistant｜><think>\\n`,
reasoning before `</think>` dropped from earlier assistant turns, pad ==
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
    history = tok.apply_chat_template([{"role": "user", "content": "a"},
                                       {"role": "assistant", "content": "x</think>y"}], tokenize=False)
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


class Spy:
    """What the model was given during the stages: where BOS tokens sat (by position id) in every input of the
    backbone (training, replay answers, examples, eval, export check, chat), and the training batches' labels."""

    def __init__(self):
        self.calls = 0
        self.bos_positions: list[int] = []
        self.batches: list[tuple[list[list[int]], list[list[int]]]] = []

    def backbone(self, forward):
        import inspect

        signature = inspect.signature(forward)

        def spied(*args, **kwargs):
            given = signature.bind(*args, **kwargs).arguments
            ids, pos = given.get("input_ids"), given.get("position_ids")
            if ids is not None:
                self.calls += 1
                if pos is None:
                    cache = given.get("cache") or given.get("past_key_values") or given.get("kwargs", {}).get("cache")
                    start = cache.get_seq_length() if cache is not None else 0
                    pos = torch.arange(start, start + ids.shape[1]).expand_as(ids)
                self.bos_positions += pos[ids == BOS].tolist()
            return forward(*args, **kwargs)

        return spied

    def loss(self, compute_loss):
        def spied(trainer, model, inputs, *args, **kwargs):
            if "labels" in inputs:
                self.batches.append((inputs["input_ids"].tolist(), inputs["labels"].tolist()))
            return compute_loss(trainer, model, inputs, *args, **kwargs)

        return spied


@pytest.fixture(scope="module")
def rehearsal(stand_in, tiny_bert, tmp_path_factory):
    """Runs every stage once through its main([...]), as the README orders the arguments."""
    import transformers.modeling_utils
    from transformers import Qwen2Model
    from trl import SFTTrainer

    from data_prep.build import main as build_main
    from eval.chat import main as chat_main
    from eval.export import main as export_main
    from eval.run import main as run_main
    from sft.train import main as train_main

    root = tmp_path_factory.mktemp("rehearsal-7b")
    probes = root / "probes.txt"
    probes.write_text("今天天气怎么样?\n推荐一本书。\n怎么煮米饭?\n", encoding="utf-8")
    overrides = [f"model.name_or_path={stand_in}", f"output_dir={root / 'run'}", "train.num_train_epochs=2",
                 "data.max_train_phrasings=1", "data.unknown_entities=1", "data.replay=4", "eval.max_rows=6",
                 f"eval.probe_file={probes}", "eval.unknown_names=1", "eval.max_new_tokens=24", "train.threads=1",
                 f"eval.bertscore_model={tiny_bert}", "eval.bertscore_layer=2"]
    spy = Spy()
    checkpointed = []
    real_checkpoint = transformers.modeling_utils.checkpoint
    seconds, printed = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Qwen2Model, "forward", spy.backbone(Qwen2Model.forward))
        mp.setattr(SFTTrainer, "compute_loss", spy.loss(SFTTrainer.compute_loss))
        mp.setattr(transformers.modeling_utils, "checkpoint",
                   lambda *a, **k: checkpointed.append(1) or real_checkpoint(*a, **k))
        mp.setattr("sys.stdin", io.StringIO("钟离来自哪里?\n丽莎呢?\n/quit\n"))  # what eval.chat reads
        for name, stage in (("data_prep.build", build_main), ("sft.train", train_main), ("eval.run", run_main),
                            ("eval.export", export_main), ("eval.chat", chat_main)):
            start = time.perf_counter()
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert stage([str(CONFIG), *overrides]) == 0, name
            seconds[name] = round(time.perf_counter() - start, 1)
            printed[name] = out.getvalue()
    print("seconds per stage:", seconds)
    return SimpleNamespace(run=root / "run", spy=spy, checkpointed=len(checkpointed), printed=printed,
                           seconds=seconds)


def tokenised(run: Path, split: str):
    """The rows the trainer is given for a split: the kit's cache of ids and labels (sft/encode.py)."""
    from datasets import load_from_disk

    (path,) = (run / "data" / "tokenized").glob(f"{split}-*")
    return load_from_disk(str(path))


def supervised(ids: list[int], labels: list[int]) -> list[list[int]]:
    """The supervised runs of a row: consecutive tokens whose label is the token itself."""
    runs: list[list[int]] = []
    for k, (i, label) in enumerate(zip(ids, labels)):
        if label == -100:
            continue
        assert label == i
        if k and labels[k - 1] != -100:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def llama(path: Path):
    from eval.export import load_llama_cpp

    return load_llama_cpp(path, n_ctx=512)


def test_every_training_row_prompt_and_gguf_prompt_starts_with_exactly_one_bos(rehearsal, stand_in):
    from transformers import AutoTokenizer

    from eval.export import gguf_path
    from kit.config import load_config
    from kit.files import load_jsonl
    from sft.encode import encode_rows
    from tests.test_export import render_go

    run = rehearsal.run
    # what the trainer is given: the cached train and eval rows, and the replay rows (encoded in the run)
    tok = AutoTokenizer.from_pretrained(stand_in)
    replay = encode_rows(tok, load_jsonl(run / "data" / "replay.jsonl"), 512, "strip", "replay.jsonl")
    rows = list(tokenised(run, "train")) + list(tokenised(run, "test")) + replay
    assert len(rows) == 61 + 120 + 4
    assert [r["input_ids"].count(BOS) for r in rows] == [1] * len(rows)
    assert {r["input_ids"][0] for r in rows} == {BOS}
    # what the model was given, in every stage (training batches, replay, before/after examples, eval, chat): a
    # BOS only ever at position 0
    assert rehearsal.spy.calls > 200 and len(rehearsal.spy.bos_positions) > 200
    assert set(rehearsal.spy.bos_positions) == {0}
    # llama.cpp: the GGUF says BOS is added, and the prompt llama-cpp-python builds from the template in the file
    # (what eval.export's check and a user's create_chat_completion send) holds one
    cfg = load_config(CONFIG, [f"output_dir={run}"])
    conversation = [{"role": "system", "content": "你只回答事实。"}, {"role": "user", "content": "钟离来自哪里?"},
                    {"role": "assistant", "content": ANSWER}, {"role": "user", "content": "丽莎呢?"}]
    for fmt in ("f16", "q8_0"):
        llm = llama(gguf_path(cfg, fmt))
        assert llm.metadata["tokenizer.ggml.add_bos_token"] == "true"
        assert llm.metadata["tokenizer.ggml.bos_token_id"] == str(BOS)
        tokenised_prompts = []
        real = llm.tokenize

        def tokenize(text, *a, _seen=tokenised_prompts, _real=real, **k):
            _seen.append(_real(text, *a, **k))
            return _seen[-1]

        llm.tokenize = tokenize
        llm.create_chat_completion(messages=conversation, max_tokens=1, temperature=0.0, top_k=1)
        prompt = tokenised_prompts[0]
        assert prompt[0] == BOS and prompt.count(BOS) == 1, fmt
        # Ollama renders the Modelfile's TEMPLATE and tokenises it adding the model's BOS (add_bos_token)
        modelfile = gguf_path(cfg, fmt).with_suffix(".Modelfile").read_text(encoding="utf-8")
        template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
        for conv in (conversation, conversation[1:]):
            ollama = real(render_go(template, conv).encode(), add_bos=True, special=True)
            assert ollama[0] == BOS and ollama.count(BOS) == 1, (fmt, conv[0]["role"])


def test_supervised_span_is_the_answer_behind_an_empty_think_block_and_its_end_token(rehearsal, stand_in):
    from transformers import AutoTokenizer

    from kit.files import load_jsonl
    from sft.encode import encode_rows

    tok = AutoTokenizer.from_pretrained(stand_in)
    train = tokenised(rehearsal.run, "train")
    replay = encode_rows(tok, load_jsonl(rehearsal.run / "data" / "replay.jsonl"), 512, "strip", "replay.jsonl")
    spans = [supervised(r["input_ids"], r["labels"]) for r in list(train) + replay]
    assert [len(s) for s in spans] == [1] * len(spans)  # one answer per row: the last one (multi-turn: earlier
    runs = [s[0] for s in spans]                         # answers are context, as the template renders them)
    assert {r[-1] for r in runs} == {EOS}
    assert all(THINK not in r and r[1] == THINK_END and r.count(THINK_END) == 1 for r in runs)
    texts = [tok.decode(r) for r in runs]
    assert texts[0] == "\n</think>\n\n丽莎是女性<｜end▁of▁sentence｜>"
    assert texts[-4:] == ["\n</think>\n\n" + ANSWER + "<｜end▁of▁sentence｜>"] * 4  # replay: the base's answer,
    assert not any("Hmm" in t for t in texts)                                       # its reasoning left out
    multi = [r for r in train if r["input_ids"].count(ASSISTANT) > 1]
    assert len(multi) == 16  # data.multi_turn: 2 conversations for each of 8 characters
    # the batches as the model was given them: padding (pad == eos here) never hides the end token
    rows = [(ids, labels) for batch in rehearsal.spy.batches for ids, labels in zip(*batch)]
    assert len(rows) >= 2 * (61 + 4)  # two epochs of train rows, and eval rows
    for ids, labels in rows:
        last = max(k for k, label in enumerate(labels) if label != -100)
        assert labels[last] == ids[last] == EOS and ids.count(BOS) == 1


def test_trains_with_gradient_checkpointing_and_evaluates_each_epoch(rehearsal):
    from safetensors.torch import load_file

    run = rehearsal.run
    printed = rehearsal.printed["sft.train"]
    assert "device cpu, precision bf16" in printed
    assert rehearsal.checkpointed > 0  # the decoder layers ran under torch.utils.checkpoint
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert [h["epoch"] for h in metrics["log_history"] if "eval_loss" in h] == [1.0, 2.0]
    assert metrics["epochs"] == 2.0
    config = json.loads((run / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == \
        (32, 64, ["k_proj", "o_proj", "q_proj", "v_proj"])
    lora_b = [w for name, w in load_file(run / "adapter" / "adapter_model.safetensors").items() if "lora_B" in name]
    assert len(lora_b) == 2 * 4 and all(float(w.abs().max()) > 0 for w in lora_b)  # gradients reached every LoRA
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-5"]


def test_predictions_carry_no_reasoning(rehearsal):
    run = rehearsal.run
    for name in ("predictions.jsonl", "predictions-base.jsonl"):
        rows = [json.loads(line) for line in (run / "eval" / name).read_text(encoding="utf-8").splitlines()]
        # test rows, everyday questions, questions about one unknown person, and eval.max_rows (6) of each split of
        # the beyond-lookup questions (claims, reverse, one-hop)
        assert len(rows) == 6 + 3 + 5 + 3 * 6
        assert {r["prediction"] for r in rows} == {ANSWER}
        assert {r["raw_prediction"] for r in rows} == {RAW}
    for path in sorted((run / "eval" / "artifacts").glob("*.jsonl")):
        assert {json.loads(line)["prediction"] for line in path.read_text(encoding="utf-8").splitlines()} == {ANSWER}
    artifacts = json.loads((run / "eval" / "artifacts.json").read_text(encoding="utf-8"))
    assert artifacts["failed"] == [] and [a["equal_to_merged"] for a in artifacts["artifacts"]] == [6] * 6


def test_merged_and_gguf_answers_stop_at_the_end_token(rehearsal):
    from eval.export import gguf_path
    from kit.config import load_config

    run = rehearsal.run
    generation = json.loads((run / "merged" / "generation_config.json").read_text(encoding="utf-8"))
    assert generation["eos_token_id"] in (EOS, [EOS])
    cfg = load_config(CONFIG, [f"output_dir={run}"])
    for fmt in ("f16", "q8_0"):
        llm = llama(gguf_path(cfg, fmt))
        assert llm.metadata["tokenizer.ggml.eos_token_id"] == str(EOS)
        assert llm.metadata.get("tokenizer.ggml.eot_token_id", str(EOS)) == str(EOS)
        modelfile = gguf_path(cfg, fmt).with_suffix(".Modelfile").read_text(encoding="utf-8")
        assert [line for line in modelfile.splitlines() if line.startswith("PARAMETER stop")] == \
            ['PARAMETER stop "<｜end▁of▁sentence｜>"']
        # the stand-in writes RAW, then EOS, then more text when nothing stops it (checked when it was made):
        # llama.cpp stops at EOS, within a budget that would let it go on
        got = llm.create_chat_completion(messages=[{"role": "user", "content": "温迪来自哪里?"}], max_tokens=32,
                                         temperature=0.0, top_k=1)
        assert got["choices"][0]["message"]["content"] == RAW
        assert got["choices"][0]["finish_reason"] == "stop" and got["usage"]["completion_tokens"] == RAW_TOKENS
    # and so did the kit with the merged export (raw_prediction == RAW above, with eval.max_new_tokens=24)


def test_chat_answers_each_turn_without_reasoning(rehearsal):
    printed = rehearsal.printed["eval.chat"]
    assert printed.count(f"finetuned> {ANSWER}\n") == 2
    assert "Hmm" not in printed and "think>" not in printed


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


def test_the_transformers_gguf_reader_is_checked_with_the_tokenizer_it_loses(rehearsal):
    """eval.export's check crashed (IndexError) on an R1 GGUF: transformers' reader skips control tokens spelled
    outside the byte-level alphabet (<｜begin▁of▁sentence｜>...) and gives BOS and EOS ids past the vocabulary. The
    weights are now checked with the merged export's tokenizer, and the row says why."""
    artifacts = json.loads((rehearsal.run / "eval" / "artifacts.json").read_text(encoding="utf-8"))
    rows = {a["artifact"]: a for a in artifacts["artifacts"]}
    for fmt in ("f16", "q8_0"):
        row = rows[f"gguf {fmt} (transformers)"]
        assert row["reader"].startswith("transformers' GGUF loader, weights only: its tokenizer loses <｜Assistant｜>, "
                                        "<｜User｜>, <｜begin▁of▁sentence｜>, <｜end▁of▁sentence｜> (llama.cpp reads them)")
        assert row["equal_to_merged"] == 6 and "error" not in row
        assert rows[f"gguf {fmt} (llama.cpp)"]["reader"] == "llama-cpp-python, chat template from the file"


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
                     "eval.beyond=false",
                     "eval.max_new_tokens=5")
    assert build_main(args) == 0 and generate_main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [(r["prediction"], r["raw_prediction"]) for r in rows] == [("", "Hmm, the user")] * 2


def test_replay_never_trains_reasoning_and_none_left_is_an_error(stand_in, tmp_path):
    from kit.errors import KitError
    from sft.train import main as train_main

    with pytest.raises(KitError, match=r"data\.replay: the base model answered none of the 2 replay prompts within "
                                       r"eval\.max_new_tokens=5 \(with model\.thinking=strip, an answer still "
                                       r"reasoning when they ran out is none\); raise eval\.max_new_tokens, or set "
                                       r"data\.replay=0"):
        train_main(small_run(stand_in, tmp_path, "data.replay=2", "eval.max_new_tokens=5"))
