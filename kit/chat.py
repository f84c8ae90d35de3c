"""Prompts and answers as the chat template makes them, shared by training (sft) and evaluation (eval), so both see
exactly the same text."""

from __future__ import annotations

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def system_messages(system_prompt: str | None) -> list[dict]:
    """The system turn every conversation starts with (data.system_prompt), or none: the chat template's own."""
    return [{"role": "system", "content": system_prompt}] if system_prompt else []


def render(tok, messages: list[dict], generation_prompt: bool = False) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def generation_prompt(tok, messages: list[dict]) -> str:
    """The exact prompt text the model sees before it answers, in training and in eval."""
    return render(tok, messages, generation_prompt=True)


def opens_think(prompt: str) -> bool:
    """Reasoning templates (DeepSeek-R1, Qwen3...) may end the generation prompt with an open <think> block."""
    return prompt.rstrip().endswith(THINK_OPEN)


def final_answer(raw: str, thinking: str, opened: bool = False) -> str:
    """The answer as the report scores it: without its reasoning when model.thinking is "strip", else stripped of
    surrounding whitespace. `opened`: the prompt opened a <think> block (`opens_think`); with "strip", an answer that
    never closes it is all reasoning, cut off by the token budget, and has no answer yet: "" (never its reasoning)."""
    if thinking != "strip":
        return raw.strip()
    if opened and THINK_CLOSE not in raw:
        return ""
    return strip_think(raw)


def strip_think(text: str) -> str:
    """The answer without its reasoning: everything up to the last </think>, or after a dangling <think>."""
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[-1].strip()
    if THINK_OPEN in text:
        return text.split(THINK_OPEN, 1)[0].strip()
    return text.strip()
