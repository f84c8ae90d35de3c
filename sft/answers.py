"""Greedy answers from the model being trained: replay rows, the before/after examples, the knowledge checks."""

from __future__ import annotations

from contextlib import contextmanager

from kit.chat import final_answer, generation_prompt, opens_think
from kit.config import Config
from kit.models import unwrapped


def answer(model, tok, rows: list[dict], max_new_tokens: int = 48, attention: str | None = None,
           thinking: str = "none") -> list[str]:
    """Greedy answers to rows whose last message is the one to answer (an assistant turn, dropped) or a question,
    as the report reads them (kit.chat.final_answer with model.thinking `thinking`: no reasoning with "strip").
    attention: the implementation to answer with, for this call only (see `answering_attention`)."""
    from kit.generation import generate_batched

    prompts = [generation_prompt(tok, r["messages"][:-1] if r["messages"][-1]["role"] == "assistant"
                                 else r["messages"]) for r in rows]
    with attention_for(model, attention):
        raw = generate_batched(model, tok, prompts, batch_size=min(len(prompts), 128) or 1,
                               max_new_tokens=max_new_tokens)
    return [final_answer(a, thinking, opens_think(p)) for a, p in zip(raw, prompts)]


def answering_attention(cfg: Config, training: str | None) -> str | None:
    """SDPA for the answers a run writes (replay rows, before/after examples) when the kit, not the user, chose eager
    for training: the same greedy answers, sooner (bench/RESULTS.md, 2026-11-30)."""
    return "sdpa" if training == "eager" and not cfg.model.attn_implementation else None


@contextmanager
def attention_for(model, attention: str | None):
    """Run the block with `attention` as the model's attention implementation, then put the training one back."""
    inner = unwrapped(model)
    current = getattr(inner.config, "_attn_implementation", None)
    if not attention or attention == current or (attention == "sdpa" and not getattr(inner, "_supports_sdpa", False)):
        yield
        return
    inner.set_attn_implementation(attention)
    try:
        yield
    finally:
        inner.set_attn_implementation(current)
