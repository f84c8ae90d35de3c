"""Batched greedy answers, equal to one `generate` call per prompt: prompt prefixes computed once (the one all
prompts share, then the stems groups of them share), prompts sorted by length, continuous batching, stopping at the
end-of-turn token.

Used by `sft.train` (before/after examples) and `eval.generate` (every test question).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from kit.models import unwrapped

# Tuning of the greedy loop, all in one place. Each changes speed only, never an answer (tests/test_generation.py).
# Columns a cache buffer is allocated beyond what it holds: a decode step then writes in place instead of copying
# the cache, and one reallocation serves this many steps.
CACHE_HEADROOM = 32
# What one prefill pass costs beyond its tokens, in tokens: a pass reads every weight however few rows it has
# (measured on 2 cores: bench/RESULTS.md).
PASS_OVERHEAD_TOKENS = 48
# Largest prefill pass, in padded tokens: past this, activations fall out of cache (one long pass ran fewer tokens/s
# than two halves on 2 cores).
PASS_MAX_TOKENS = 2048
# A stem (a prompt prefix a group of prompts shares) is computed once only if that saves this many tokens.
STEM_MIN_SAVED = 8
# Rows wait for free slots to fill 1/REFILL_FRACTION of the batch before a prefill: a prefill of one short row
# uses the matmuls poorly.
REFILL_FRACTION = 4


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
    """Answers (special tokens removed) in the order of `prompts`; `on_batch(indices, answers)` gets rows as they
    finish, in any order.

    Greedy decoding (the default) runs the kit's own loop (`_greedy_stream`): the token prefix every prompt shares
    (system prompt, template header) is computed once, and so is each stem a group of prompts shares after it
    (questions about one character); the rest of each prompt is sorted by length and prefilled in passes cut to
    waste least; up to `batch_size` rows decode together, a row leaves the moment it has its end token and a
    waiting row takes its place (continuous batching). Sampling, generation configs that ask for logits
    processors (repetition penalty, ...) and caches other than plain key/value layers fall back to
    `model.generate` on left-padded batches. Either way greedy answers equal one `model.generate` call per prompt
    (tests/test_generation.py)."""
    out: list[str | None] = [None] * len(prompts)
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    stop, pad_id = _stop_and_pad(tok, model)
    fast = not do_sample and _plain_greedy(model)

    def finished(indices: list[int], tokens: list[list[int]]) -> None:
        answers = [tok.decode(t, skip_special_tokens=True).strip() for t in tokens]
        for i, a in zip(indices, answers):
            out[i] = a
        if on_batch:
            on_batch(indices, answers)

    with _inference(model):
        prefix = _SharedPrefix(model, encoded, pad_id) if fast else None
        if prefix is not None and prefix.usable:
            order = sorted(range(len(prompts)), key=lambda i: (len(prefix.rest[i]), i))
            _greedy_stream(model, prefix, order, stop, pad_id, max_new_tokens, batch_size, finished)
        else:
            order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
            for batch in _chunks(order, batch_size):
                finished(batch, _hf_generate(model, [encoded[i] for i in batch], stop, pad_id, max_new_tokens,
                                             do_sample, temperature, top_p))
    return out  # type: ignore[return-value]


def reference_greedy(model, tok, prompts: list[str], max_new_tokens: int = 64) -> list[str]:
    """One `model.generate` call per prompt, greedy: what batched answers must equal."""
    stop, pad_id = _stop_and_pad(tok, model)
    with _inference(model):
        return [tok.decode(_hf_generate(model, [tok(p, add_special_tokens=False)["input_ids"]], stop, pad_id,
                                        max_new_tokens, False, 1.0, 1.0)[0], skip_special_tokens=True).strip()
                for p in prompts]


def _stop_and_pad(tok, model) -> tuple[list[int], int]:
    stop = stop_token_ids(tok, model)
    return stop, tok.pad_token_id if tok.pad_token_id is not None else stop[0]


@contextmanager
def _inference(model):
    """Eval mode without autograd, restoring training mode afterwards (sft.train generates mid-training)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _left_pad(rows: list[list[int]], pad_id: int):
    """Token ids right-aligned in one (rows, longest) tensor, and the mask of the real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, width - len(r):] = torch.tensor(r)
        mask[k, width - len(r):] = 1
    return ids, mask


def _hf_generate(model, rows: list[list[int]], stop: list[int], pad_id: int, max_new_tokens: int,
                 do_sample: bool, temperature: float, top_p: float) -> list[list[int]]:
    ids, mask = _left_pad(rows, pad_id)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=stop, pad_token_id=pad_id)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:  # silence "generation flags are not valid" warnings from sampling defaults in generation_config.json
        kwargs.update(temperature=None, top_p=None, top_k=None)
    device = next(model.parameters()).device
    gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
    return [g[ids.shape[1]:].tolist() for g in gen]


# generation_config fields that change greedy answers; with any of them set the loop defers to model.generate
_PROCESSORS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
               "bad_words_ids": None, "min_length": 0, "min_new_tokens": None, "forced_bos_token_id": None,
               "forced_eos_token_id": None, "suppress_tokens": None, "begin_suppress_tokens": None,
               "sequence_bias": None, "renormalize_logits": False, "num_beams": 1, "penalty_alpha": None,
               "prompt_lookup_num_tokens": None, "assistant_model": None, "watermarking_config": None}


def _plain_greedy(model) -> bool:
    gc = getattr(model, "generation_config", None)
    if gc is None:
        return False
    return all(getattr(gc, k, d) in (d, None) for k, d in _PROCESSORS.items())


class _SharedPrefix:
    """Key/values of prompt prefixes, each computed once: the tokens every prompt starts with (a batch of one), then
    the stems groups of prompts share after it (questions about one character start alike), in one pass.

    `rest[i]` is what prompt i still has to run on top of its stem (at least one token)."""

    def __init__(self, model, encoded: list[list[int]], pad_id: int = 0):
        self.ids = os.path.commonprefix(encoded) if encoded else []
        self.ids = self.ids[: min(len(e) for e in encoded) - 1] if encoded else []  # each row keeps >= 1 own token
        self.config = getattr(model, "config", None)
        self.keep = _keep_last(model)
        self.cache_kw = cache_kwarg(model)
        cache = DynamicCache(config=self.config)
        self.usable = _cache_is_plain(cache)
        self.cache = None
        device = next(model.parameters()).device
        if self.usable and self.ids:
            model(input_ids=torch.tensor([self.ids], device=device), use_cache=True, **{self.cache_kw: cache},
                  **self.keep)
            self.cache = cache
        own = [e[len(self.ids):] for e in encoded]
        self.stems, self.stem_of = _stems(own) if self.usable else ([[]], [0] * len(own))
        self.rest = [o[len(self.stems[c]):] for o, c in zip(own, self.stem_of)]
        self.stem_rows: _Rows | None = None
        if len(self.stems) > 1:
            self.stem_rows = _prefill(model, self, None, self.stems, pad_id, device)

    def cache_for(self, stems: list[int] | None, n: int):
        """A cache for `n` rows holding the prefix (and stems `stems`, one per row), with room to grow in place,
        and the mask over its columns."""

        cache = DynamicCache(config=self.config)
        cache.layers = [GrowingLayer() for _ in cache.layers]
        if stems is not None and self.stem_rows is not None:
            idx = torch.tensor(stems, device=self.stem_rows.mask.device)
            for layer, done in zip(cache.layers, self.stem_rows.cache.layers):
                layer.update(done.keys[idx], done.values[idx])
            return cache, self.stem_rows.mask[idx]
        if self.cache is not None:
            for layer, done in zip(cache.layers, self.cache.layers):
                layer.update(done.keys.expand(n, -1, -1, -1), done.values.expand(n, -1, -1, -1))
        return cache, torch.ones((n, len(self.ids)), dtype=torch.long)


def _stems(own: list[list[int]], least: int = STEM_MIN_SAVED) -> tuple[list[list[int]], list[int]]:
    """Stems shared by groups of token lists, and which stem each list starts with (stem 0: none).

    Lists sorted by tokens put the ones that start alike next to each other; a run of neighbours shares the
    longest prefix common to all of them (leaving each at least one token of its own), and a neighbour joins the
    run while that saves more tokens than it costs. Runs that save fewer than `least` tokens get no stem."""
    runs: list[tuple[list[int], int]] = []  # (members, stem length)
    for i in sorted(range(len(own)), key=lambda i: own[i]):
        if runs:
            members, n = runs[-1]
            first = own[members[0]]
            common = 0
            while common < min(n, len(own[i]) - 1) and first[common] == own[i][common]:
                common += 1
            if common and len(members) * common >= (len(members) - 1) * n:
                members.append(i)
                runs[-1] = (members, common)
                continue
        runs.append(([i], len(own[i]) - 1))
    stems: list[list[int]] = [[]]
    stem_of = [0] * len(own)
    for members, n in runs:
        if (len(members) - 1) * n >= least:
            for i in members:
                stem_of[i] = len(stems)
            stems.append(own[members[0]][:n])
    return stems, stem_of


def _cache_is_plain(cache) -> bool:
    """Full-attention key/value layers only: what row selection and prefix copies are right for."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _forward_params(model) -> set[str]:
    return set(inspect.signature(unwrapped(model).forward).parameters)


def cache_kwarg(model) -> str:
    """The keyword the model's forward takes a key/value cache under: `cache` from transformers 5.24 (where
    `past_key_values` warns, and is to go in 5.40), `past_key_values` before."""
    return "cache" if "cache" in _forward_params(model) else "past_key_values"


def _keep_last(model) -> dict:
    """`logits_to_keep=1` where the model takes it: the LM head runs on the last position only."""
    return {"logits_to_keep": 1} if "logits_to_keep" in _forward_params(model) else {}


class _Rows:
    """Rows decoded together: their key/value cache, the mask over it, and the token each one feeds next.

    Cache layout per row: [padding][shared prefix][padding][stem][padding][rest of the prompt][answer so far].
    Padding is masked and positions are passed explicitly, so rows of any length share one cache tensor; rows that
    finish are dropped and new rows are padded in."""

    def __init__(self, ids: list[int], cache, mask, pos, nxt):
        self.ids, self.cache, self.mask, self.pos, self.nxt = ids, cache, mask, pos, nxt

    def drop(self, ended: list[int]) -> None:
        """Drop the rows at positions `ended` from the batch, and leading columns no remaining row attends to.

        Live rows past the new end move into the freed slots before it, so only as many rows are copied as have
        finished (row order does not matter: rows are known by their ids)."""

        gone = set(ended)
        n = len(self.ids) - len(gone)
        src = [k for k in range(n, len(self.ids)) if k not in gone]
        dst = [k for k in range(n) if k in gone]
        order = list(range(n))
        for s, d in zip(src, dst):
            order[d] = s
        self.ids = [self.ids[k] for k in order]
        rows = torch.tensor(order, device=self.nxt.device)
        self.mask, self.pos, self.nxt = self.mask[rows], self.pos[rows], self.nxt[rows]
        first = int(self.mask.any(0).int().argmax())
        self.mask = self.mask[:, first:]
        src_t, dst_t = (torch.tensor(x, device=self.nxt.device) for x in (src, dst))
        for layer in self.cache.layers:
            layer.move_rows(src_t, dst_t, n, first)

    @staticmethod
    def concat(parts: list[_Rows]) -> _Rows:
        """One batch of all parts' rows, each left-padded (masked zeros) to the longest; one copy of every cache."""

        if len(parts) == 1:
            return parts[0]
        width = max(r.mask.shape[1] for r in parts)
        first = parts[0].cache
        for k, layer in enumerate(first.layers):
            layer.concat([r.cache.layers[k] for r in parts[1:]], width)
        return _Rows([i for r in parts for i in r.ids], first,
                     torch.cat([F.pad(r.mask, (width - r.mask.shape[1], 0)) for r in parts]),
                     torch.cat([r.pos for r in parts]), torch.cat([r.nxt for r in parts]))


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views into a buffer with room to grow (`CACHE_HEADROOM` columns).

    `DynamicLayer.update` concatenates, which copies the whole cache at every decode step (hundreds of MB a step for
    SmolLM2-135M at eval's batch sizes); here a step writes one column in place. Dropping
    finished rows copies only the live rows that move into their slots; dropping leading columns moves an offset.
    `keys`/`values` always hold exactly what a DynamicLayer given the same updates would (tests/test_generation.py).
    """

    headroom = CACHE_HEADROOM

    def _view(self, kb, vb, start: int, n: int) -> None:
        self._buf, self._start = (kb, vb), start
        self.keys, self.values = kb[:, :, start:start + n], vb[:, :, start:start + n]

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, q = self.get_seq_length(), key_states.shape[-2]
        buf = getattr(self, "_buf", None)
        if buf is None or buf[0].shape[0] != key_states.shape[0] or self._start + n + q > buf[0].shape[2]:
            shape = (*key_states.shape[:2], n + q + self.headroom, key_states.shape[-1])
            kb, vb = key_states.new_empty(shape), value_states.new_empty(shape)  # columns past n + q: unread
            if n:
                kb[:, :, :n], vb[:, :, :n] = self.keys, self.values
            self._view(kb, vb, 0, n)
        kb, vb = self._buf
        end = self._start + n
        kb[:, :, end:end + q], vb[:, :, end:end + q] = key_states, value_states
        self._view(kb, vb, self._start, n + q)
        return self.keys, self.values

    def move_rows(self, src, dst, n: int, first: int) -> None:
        """Copy rows `src` onto rows `dst`, keep the first `n` rows and drop the first `first` columns."""
        kb, vb = self._buf
        a, b = self._start + first, self._start + self.get_seq_length()
        if len(src):
            kb[dst, :, a:b], vb[dst, :, a:b] = kb[src, :, a:b], vb[src, :, a:b]
        self._view(kb[:n], vb[:n], a, b - a)

    def concat(self, others: list[GrowingLayer], width: int) -> None:
        """Append the rows of `others`; every part is left-padded with zeros (masked) to `width` columns."""
        parts = [self, *others]
        shape = (sum(p.keys.shape[0] for p in parts), self.keys.shape[1], width + self.headroom, self.keys.shape[3])
        kb, vb = self.keys.new_empty(shape), self.values.new_empty(shape)
        row = 0
        for p in parts:
            n, pad = p.keys.shape[0], width - p.keys.shape[2]
            for buf, x in ((kb, p.keys), (vb, p.values)):
                buf[row:row + n, :, :pad] = 0  # masked, but must be finite: 0 * NaN is NaN in attention
                buf[row:row + n, :, pad:width] = x
            row += n
        self._view(kb, vb, 0, width)


def _greedy_stream(model, prefix: _SharedPrefix, order: list[int], stop: list[int], pad_id: int,
                   max_new_tokens: int, slots: int, finished: Callable[[list[int], list[list[int]]], None]) -> None:
    """Greedy tokens of every prompt (end token included, like `generate`), at most `slots` rows at a time.

    Continuous batching: a row leaves as soon as it has its end token and waiting rows take the free slots, so
    every step decodes a full batch until the queue runs dry. Waiting rows are prefilled in passes of similar
    length (the queue is sorted by length; `_prefill_passes`), which keeps padding in the prefill small."""
    device = next(model.parameters()).device
    queue = list(order)
    tokens: dict[int, list[int]] = {}
    rows: _Rows | None = None
    refill = max(1, slots // REFILL_FRACTION)
    while queue or rows is not None:
        free = slots - (len(rows.ids) if rows else 0)
        if queue and (rows is None or free >= min(refill, len(queue))):
            admitted, queue = queue[:free], queue[free:]
            parts = [_prefill(model, prefix, group, [prefix.rest[i] for i in group], pad_id, device)
                     for group in _prefill_passes([prefix.rest[i] for i in admitted], admitted)]
            for part in parts:
                for i, t in zip(part.ids, part.nxt.tolist()):
                    tokens[i] = [t]
            rows = _Rows.concat(([rows] if rows is not None else []) + parts)
        else:  # one step for every row in the batch
            mask = torch.cat([rows.mask, rows.mask.new_ones((len(rows.ids), 1))], dim=1)
            logits = model(input_ids=rows.nxt[:, None], attention_mask=mask, position_ids=rows.pos[:, None],
                           use_cache=True, **{prefix.cache_kw: rows.cache}, **prefix.keep).logits[:, -1]
            rows.mask, rows.pos, rows.nxt = mask, rows.pos + 1, logits.argmax(-1)
            for i, t in zip(rows.ids, rows.nxt.tolist()):
                tokens[i].append(t)
        ended = [k for k, i in enumerate(rows.ids) if tokens[i][-1] in stop or len(tokens[i]) >= max_new_tokens]
        if ended:
            finished([rows.ids[k] for k in ended], [tokens.pop(rows.ids[k]) for k in ended])
            if len(ended) == len(rows.ids):
                rows = None
            else:  # a finished row would cost compute every step; dropping it copies at most one live row
                rows.drop(ended)


def _prefill_passes(rows: list[list[int]], ids: list[int], overhead: int = PASS_OVERHEAD_TOKENS,
                     max_tokens: int = PASS_MAX_TOKENS) -> list[list[int]]:
    """`ids` (sorted by the length of `rows`) cut into consecutive groups, each prefilled in one left-padded pass,
    for the least work: padded tokens, plus `overhead` tokens' worth for every pass, and no pass over `max_tokens`
    padded tokens. Exact, by dynamic programming."""
    n = len(ids)
    best, cut = [0] + [0] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        best[j] = -1
        for i in range(j - 1, -1, -1):
            size = len(rows[j - 1]) * (j - i)
            if size > max_tokens and i < j - 1:
                break
            if best[j] < 0 or best[i] + size + overhead < best[j]:
                best[j], cut[j] = best[i] + size + overhead, i
    groups: list[list[int]] = []
    while n:
        groups.append(ids[cut[n]:n])
        n = cut[n]
    return groups[::-1]


def _prefill(model, prefix: _SharedPrefix, group: list[int] | None, own: list[list[int]], pad_id: int,
             device) -> _Rows:
    """Run rows' own tokens `own` on top of the prefix (and each row's stem, for rows `group` of the prompts);
    the result holds each row's first token."""

    ids, own_mask = _left_pad(own, pad_id)
    stems = [prefix.stem_of[i] for i in group] if group is not None else None
    cache, before = prefix.cache_for(stems, len(own))
    mask = torch.cat([before.to(device), own_mask.to(device)], dim=1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, before.shape[1]:]
    ids = ids.to(device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{prefix.cache_kw: cache},
                   **prefix.keep).logits[:, -1]
    return _Rows(list(group) if group is not None else list(range(len(own))), cache, mask, pos[:, -1] + 1,
                 logits.argmax(-1))


def _chunks(items: list[int], n: int) -> Iterator[list[int]]:
    for k in range(0, len(items), n):
        yield items[k:k + n]
