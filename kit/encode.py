"""Conversations -> token ids and labels, with the loss only on the assistant's answers and their end-of-turn token.

Works from the chat template itself, for any template, without response-marker strings, added tokens or
embedding resizes: the text before answer i is what the template renders for the conversation up to i with a
generation prompt, and the answer ends at the first special token after its content (<|im_end|>, <|eot_id|>,
<｜end▁of▁sentence｜> ...). Labels are built here, before batching, so padding can never mask the end token,
even when pad == eos.

Used by sft (training rows) and eval (the app shows which part of a row is trained on).
"""

from __future__ import annotations

from dataclasses import dataclass

from kit.chat import THINK_CLOSE, generation_prompt, opens_think, render
from kit.errors import EncodeError


def _special_strings(tok) -> list[str]:
    specials = set(tok.all_special_tokens)
    for added in getattr(tok, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False):
            specials.add(added.content)
    return sorted((s for s in specials if s), key=len, reverse=True)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    text: str
    spans: list[tuple[int, int]]  # character spans of the supervised text


def _end_of_answer(text: str, start: int, end: int, content: str, specials: list[str]) -> int | None:
    """Character index just past the first special token after the answer's content, within [start, end)."""
    pos = text.find(content.strip(), start, end) if content.strip() else -1
    search_from = pos + len(content.strip()) if pos >= 0 else start
    best = None
    for s in specials:
        i = text.find(s, search_from, end)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, i + len(s))
    return best[1] if best else None


def _template_spans(tok, messages: list[dict]) -> tuple[str, list[tuple[int, int, str]]] | None:
    """(text, [(start, end, content)]) when the template renders each conversation prefix as a prefix of the
    whole; None when it does not (e.g. a generation prompt that opens a <think> block the history never shows)."""
    text = render(tok, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(tok, messages[:i], generation_prompt=True)
        upto = text if i == len(messages) - 1 else render(tok, messages[: i + 1])
        if not (upto.startswith(prompt) and text.startswith(upto)):
            return None
        spans.append((len(prompt), len(upto), m["content"]))
    return text, spans


def encode(tok, messages: list[dict], thinking: str = "none") -> Encoded:
    if not any(m["role"] == "assistant" for m in messages):
        raise EncodeError("conversation has no assistant message to learn from")
    specials = _special_strings(tok)
    found = _template_spans(tok, messages)
    if found is not None:
        text, raw_spans = found
    else:
        # The template's generation prompt is not a prefix of the rendered answer (reasoning models). Train on what
        # generation will see: the prompt, then an empty think block when it opens one, then the answer. Earlier
        # answers of a multi-turn conversation stay as the template renders them, as context, unsupervised.
        prompt = generation_prompt(tok, messages[:-1])
        if messages[-1]["role"] != "assistant":
            raise EncodeError("with this chat template (its generation prompt differs from how it renders answers) "
                              "a conversation must end with the assistant's answer")
        if opens_think(prompt) and thinking == "none":
            raise EncodeError("the chat template opens a <think> block in the generation prompt (a reasoning model); "
                              "set model.thinking: strip (or keep) so answers are trained behind an empty think block")
        content = messages[-1]["content"]
        completion = ("\n" + THINK_CLOSE + "\n\n" if opens_think(prompt) else "") + content
        text = prompt + completion
        raw_spans = [(len(prompt), len(text), content)]
    spans = []
    for k, (start, end, content) in enumerate(raw_spans):
        stop = _end_of_answer(text, start, end, content, specials)
        if stop is None:
            if k == len(raw_spans) - 1 and end == len(text):
                # The template ends the turn without a special token: add the eos so the model learns to stop.
                text += tok.eos_token
                stop = end = len(text)
            else:
                stop = end
        spans.append((start, stop))
    # Tokenise piece by piece (prompt, answer, prompt, answer...): BPE merges never cross a prompt/answer boundary,
    # so the prompt's tokens are exactly those generation will see for the prompt alone.
    pieces: list[tuple[str, bool]] = []
    cut = 0
    for start, stop in spans:
        pieces += [(text[cut:start], False), (text[start:stop], True)]
        cut = stop
    pieces.append((text[cut:], False))
    pieces = [(p, supervised) for p, supervised in pieces if p]
    ids: list[int] = []
    labels: list[int] = []
    for (_, supervised), piece_ids in zip(pieces, token_ids(tok, [p for p, _ in pieces])):
        ids += piece_ids
        labels += piece_ids if supervised else [-100] * len(piece_ids)
    return Encoded(ids, labels, text, spans)


def token_ids(tok, pieces: list[str]) -> list[list[int]]:
    """`tok(piece, add_special_tokens=False)["input_ids"]` for each piece, in one call to a fast tokenizer's Rust
    backend (the same ids without transformers' per-call overhead, which dominates on short pieces)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return [tok(p, add_special_tokens=False)["input_ids"] for p in pieces]
    return [e.ids for e in backend.encode_batch(pieces, add_special_tokens=False)]
