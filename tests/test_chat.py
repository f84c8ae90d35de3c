"""eval.chat: streamed, greedy, multi-turn answers equal to eval.generate's, /reset, /quit, Ctrl-C."""

import json
from pathlib import Path

import pytest

from eval.chat import Chat, chat_loop, main
from kit.chat import generation_prompt
from kit.config import build_config
from kit.generation import generate_batched

SYSTEM = "你只回答事实。"


def make_cfg(tmp_path: Path, model: Path, **eval_):
    src = tmp_path / "roles.json"
    src.write_text(json.dumps({"钟离": {"国籍": "璃月"}, "丽莎": {"国籍": "蒙德"}}, ensure_ascii=False), encoding="utf-8")
    return build_config({"model": {"name_or_path": str(model)},
                         "data": {"source": str(src), "system_prompt": SYSTEM},
                         "eval": {"merged_dir": str(model), "max_new_tokens": 10, **eval_},
                         "output_dir": str(tmp_path / "run")})


@pytest.fixture(scope="module")
def chat(tiny_model, tmp_path_factory):
    return Chat(make_cfg(tmp_path_factory.mktemp("chat"), tiny_model))


def expected(chat: Chat, conversation: list[dict]) -> str:
    """The answer eval.generate gives to this conversation (kit.generation's batched greedy loop)."""
    prompt = generation_prompt(chat.tok, [{"role": "system", "content": SYSTEM}] + conversation)
    return generate_batched(chat.model, chat.tok, [prompt], max_new_tokens=10)[0].strip()


def scripted(lines: list[str]):
    it = iter(lines)

    def read(prompt: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read


def test_streamed_multi_turn_answers_equal_eval_generate(chat):
    chat.reset()
    pieces: list[str] = []
    first = chat.reply("钟离来自哪里?", on_text=pieces.append)
    assert first == expected(chat, [{"role": "user", "content": "钟离来自哪里?"}])
    assert "".join(pieces).strip() == first and len(pieces) >= 1
    second = chat.reply("丽莎呢?")
    assert second == expected(chat, [{"role": "user", "content": "钟离来自哪里?"},
                                     {"role": "assistant", "content": first},
                                     {"role": "user", "content": "丽莎呢?"}])
    assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]


def test_loop_reset_quit_and_unknown_commands(chat):
    chat.reset()
    out: list[str] = []
    chat_loop({"finetuned": chat}, scripted(["钟离来自哪里?", "/reset", "/help", "丽莎呢?", "/quit", "never read"]),
              out.append)
    text = "".join(out)
    one = expected(chat, [{"role": "user", "content": "钟离来自哪里?"}])
    two = expected(chat, [{"role": "user", "content": "丽莎呢?"}])  # after /reset: no history
    assert f"finetuned> {one}" in text and f"finetuned> {two}" in text
    assert text.index("(conversation forgotten)") < text.index("unknown command /help") < text.index(two)
    assert len(chat.history) == 2  # the turn after /reset only


def test_ctrl_c_stops_the_answer_not_the_chat(chat):
    chat.reset()
    full = expected(chat, [{"role": "user", "content": "钟离来自哪里?"}])
    out: list[str] = []
    interrupted = []

    def write(text: str) -> None:
        if text not in ("finetuned> ", "\n") and not interrupted and not text.startswith("chatting"):
            interrupted.append(text)
            raise KeyboardInterrupt  # Ctrl-C while the first answer streams
        out.append(text)

    chat_loop({"finetuned": chat}, scripted(["钟离来自哪里?", "丽莎呢?"]), write)
    assert interrupted  # the first answer was cut
    assert len(chat.history) == 4  # and the chat went on to the second question
    assert len(chat.history[1]["content"]) <= len(full)


def test_main_with_compare(tiny_model, tmp_path, monkeypatch, capsys):
    import yaml

    cfg = make_cfg(tmp_path, tiny_model)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict(), allow_unicode=True), encoding="utf-8")
    monkeypatch.setattr("builtins.input", scripted(["钟离来自哪里?"]))
    assert main([str(path), "--compare"]) == 0
    printed = capsys.readouterr().out
    assert "chatting with finetuned, base" in printed
    assert printed.index("finetuned> ") < printed.index("base> ")


def test_missing_model_names_the_command(tiny_model, tmp_path):
    from kit.errors import KitError

    cfg = make_cfg(tmp_path, tiny_model, merged_dir=str(tmp_path / "none"))
    with pytest.raises(KitError, match=r"no merged export in .*none and no trained adapter in .*adapter; train first "
                                       r"with `python -m sft\.train CONFIG`"):
        Chat(cfg)
    with pytest.raises(KitError, match=r"no merged export here, and eval\.use_merged=true asks for one; run "
                                       r"`python -m eval\.merge CONFIG` first"):
        Chat(make_cfg(tmp_path, tiny_model, merged_dir=str(tmp_path / "none"), use_merged=True))
