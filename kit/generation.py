"""Batched greedy answers: left padding, prompts sorted by length, stopping at the end-of-turn token.

Used by `sft.train` (before/after examples) and `eval.generate` (every test question).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator


def stop_token_ids(tok, model=None) -> list[int]:
    """Every token that ends an answer: eos, the generation config's eos, and end-of-turn specials of the template."""
    ids: list[int] = []

    def add(x):
        for i in [x] if isinstance(x, int) else list(x or []):
            if i is not None and i not in ids:
                ids.append(int(i))

    add(tok.eos_token_id)
    if model is not None and getattr(model, "generation_config", None) is not None:
        add(model.generation_config.eos_token_id)
    vocab = tok.get_vocab()
    for s in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<｜end▁of▁sentence｜>"):
        if s in vocab and s in tok.all_special_tokens:
            add(vocab[s])
    return ids


def generate_batched(model, tok, prompts: list[str], batch_size: int = 16, max_new_tokens: int = 64,
                     do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                     on_batch: Callable[[list[int], list[str]], None] | None = None) -> list[str]:
    """Answers (special tokens removed) in the order of `prompts`.

    Sorting by length keeps padding small; left padding keeps every prompt's last token at the end of the row, so
    greedy answers equal one-by-one generation. `on_batch(indices, answers)` is called as each batch finishes."""
    import torch

    out: list[str | None] = [None] * len(prompts)
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    stop = stop_token_ids(tok, model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else stop[0]
    device = next(model.parameters()).device
    gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=stop, pad_token_id=pad_id)
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p)
    else:  # silence "generation flags are not valid" warnings from sampling defaults in generation_config.json
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    was_training = model.training
    model.eval()
    try:
        for batch in _chunks(order, batch_size):
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                n = len(encoded[i])
                ids[row, width - n:] = torch.tensor(encoded[i])
                mask[row, width - n:] = 1
            with torch.no_grad():
                gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **gen_kwargs)
            answers = [tok.decode(g[width:], skip_special_tokens=True).strip() for g in gen]
            for i, a in zip(batch, answers):
                out[i] = a
            if on_batch:
                on_batch(batch, answers)
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def _chunks(items: list[int], n: int) -> Iterator[list[int]]:
    for k in range(0, len(items), n):
        yield items[k:k + n]
