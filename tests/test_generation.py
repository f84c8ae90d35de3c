"""Batched greedy generation must give exactly the answers of one `model.generate` call per prompt."""

from collections import Counter

import pytest
import torch

import kit.generation as gen
from kit.chat import generation_prompt
from kit.generation import generate_batched, reference_greedy
from kit.models import load_tokenizer

QUESTIONS = ["钟离是什么性别?", "请问丽莎的国籍是什么?", "你好", "丽莎使用哪种元素?", "钟离从哪里来的?",
             "很长的问题" * 5, "Who is Zhongli?", "a", "凯亚的身份是什么?请简单回答。"]


def _model_with_early_stops(path, n_new: int = 12, questions: list[str] = QUESTIONS):
    """A tiny random model plus the prompts, with an extra end token picked from its own greedy output so that
    rows stop after different numbers of tokens (random models rarely emit their real end token)."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(str(path))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = [generation_prompt(tok, [{"role": "user", "content": q}]) for q in questions]
    firsts: dict[int, set[int]] = {}
    for p in prompts:
        ids = tok(p, add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=n_new, do_sample=False, pad_token_id=tok.pad_token_id or 0,
                             temperature=None, top_p=None, top_k=None)[0, ids.shape[1]:].tolist()
        for t in set(out):
            firsts.setdefault(t, set()).add(out.index(t))
    # the token whose first appearance falls on the most different steps across prompts
    stop = max(firsts, key=lambda t: (len(firsts[t]), -t))
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [*([eos] if isinstance(eos, int) else eos or []), stop]
    return model, tok, prompts, firsts[stop]


def _forbid_fallback(monkeypatch) -> None:
    """Make sure the kit's own loop is what runs: plain greedy must not fall back to model.generate."""

    def no_hf(*a, **k):
        raise AssertionError("plain greedy must not fall back to model.generate")

    monkeypatch.setattr(gen, "_hf_generate", no_hf)


@pytest.mark.parametrize("kind", ["chatml", "llama3", "deepseek"])
def test_batched_greedy_equals_one_by_one(tiny_models, kind, monkeypatch):
    model, tok, prompts, stop_steps = _model_with_early_stops(tiny_models[kind])
    assert len(stop_steps) >= 2, "the test needs rows that finish at different steps"
    single = reference_greedy(model, tok, prompts, max_new_tokens=12)
    _forbid_fallback(monkeypatch)
    for batch_size in (1, 4, len(prompts)):
        assert generate_batched(model, tok, prompts, batch_size=batch_size, max_new_tokens=12) == single
    lengths = Counter(len(tok(a, add_special_tokens=False)["input_ids"]) for a in single)
    assert len(lengths) > 1 and len(set(single)) > 1  # rows of several lengths: some left the batch early


def test_prompts_that_start_alike_share_stems_and_answers_do_not_change(tiny_model, monkeypatch):
    """Questions about one character start alike: their shared stem is computed once (a second level of prefix),
    rows of different stems and rows without one are prefilled together, and no answer changes."""
    stemmed = ["请问钟离的性别是什么?", "请问钟离的国籍是什么?", "请问钟离的身份是什么?", "请问丽莎的性别是什么?",
               "请问丽莎的元素是什么?", "你好", "Who is Zhongli?", "Who is Lisa, the librarian?"]
    model, tok, prompts, stop_steps = _model_with_early_stops(tiny_model, questions=stemmed)
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    with torch.no_grad():
        prefix = gen._SharedPrefix(model, encoded, tok.pad_token_id)
    p = len(prefix.ids)
    with_stem = [i for i, c in enumerate(prefix.stem_of) if c]
    assert len(prefix.stems) >= 3 and 3 <= len(with_stem) < len(prompts)  # zhongli, lisa; "你好" has none
    for i, e in enumerate(encoded):
        assert e == prefix.ids + prefix.stems[prefix.stem_of[i]] + prefix.rest[i] and prefix.rest[i]
    assert sum(len(r) for r in prefix.rest) <= sum(len(e) - p for e in encoded) - 16  # tokens saved
    single = reference_greedy(model, tok, prompts, max_new_tokens=12)
    _forbid_fallback(monkeypatch)
    for batch_size in (1, 3, len(prompts)):
        assert generate_batched(model, tok, prompts, batch_size=batch_size, max_new_tokens=12) == single
    assert len(stop_steps) >= 2


def test_shared_prefix_is_computed_once_and_is_the_common_token_prefix(tiny_model):
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    prompts = [generation_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    with torch.no_grad():
        prefix = gen._SharedPrefix(model, encoded)
    system = tok(generation_prompt(tok, [{"role": "user", "content": "x"}]).split("x")[0],
                 add_special_tokens=False)["input_ids"]
    assert prefix.usable and len(prefix.ids) >= len(system) - 1 > 10
    assert all(e[: len(prefix.ids)] == prefix.ids for e in encoded)
    assert prefix.cache.get_seq_length() == len(prefix.ids)
    # the same prompt twice: its last token still has to be computed per row
    with torch.no_grad():
        assert len(gen._SharedPrefix(model, [encoded[0], encoded[0]]).ids) == len(encoded[0]) - 1


def test_logits_processors_in_generation_config_fall_back_to_generate(tiny_model, monkeypatch):
    """A repetition penalty changes greedy answers: the kit's loop does not implement it, model.generate does."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    model.generation_config.repetition_penalty = 1.5
    prompts = [generation_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS[:4]]
    single = reference_greedy(model, tok, prompts, max_new_tokens=8)

    def no_loop(*a, **k):
        raise AssertionError("the kit's loop must not run when the generation config asks for processors")

    monkeypatch.setattr(gen, "_greedy_stream", no_loop)
    assert generate_batched(model, tok, prompts, batch_size=4, max_new_tokens=8) == single



def test_prefill_passes_are_the_cheapest_cut_of_the_queue():
    """The queue (sorted by length) is cut into consecutive passes with the least padded tokens + per-pass cost,
    checked against every possible cut; no pass goes over max_tokens unless it is a single row."""
    import itertools
    import random

    rng = random.Random(0)
    for _ in range(30):
        lengths = sorted(rng.randrange(1, 40) for _ in range(rng.randrange(1, 10)))
        rows, ids = [[0] * n for n in lengths], list(range(len(lengths)))
        overhead, max_tokens = rng.choice([0, 8, 48]), rng.choice([30, 80, 2048])

        def cost(groups, rows=rows, max_tokens=max_tokens, overhead=overhead):
            sizes = [len(rows[g[-1]]) * len(g) for g in groups]
            if any(s > max_tokens and len(g) > 1 for s, g in zip(sizes, groups)):
                return float("inf")
            return sum(sizes) + overhead * len(groups)

        cuts = [[ids[a:b] for a, b in zip((0, *c), (*c, len(ids)))]
                for k in range(len(ids)) for c in itertools.combinations(range(1, len(ids)), k)]
        got = gen._prefill_passes(rows, ids, overhead=overhead, max_tokens=max_tokens)
        assert [i for g in got for i in g] == ids
        assert cost(got) == min(map(cost, cuts))


# The cache layer, against the plain DynamicLayer it replaces: the same updates must leave the same keys/values.

def _kv(rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 2, cols, 4, generator=g), torch.randn(rows, 2, cols, 4, generator=g))


def test_growing_layer_holds_what_dynamic_layer_holds_past_its_headroom():
    from transformers.cache_utils import DynamicLayer

    grow, plain = gen.GrowingLayer(), DynamicLayer()
    k, v = _kv(3, 5, 0)  # a prefill of 5 columns, then single-column steps well past the 32 headroom
    for layer in (grow, plain):
        layer.update(k, v)
    buffers = set()
    for step in range(1, 71):
        k, v = _kv(3, 1, step)
        out = grow.update(k, v)
        plain.update(k, v)
        torch.testing.assert_close(out[0], plain.keys, rtol=0, atol=0)
        torch.testing.assert_close(out[1], plain.values, rtol=0, atol=0)
        buffers.add(grow._buf[0].data_ptr())
    assert grow.get_seq_length() == 75
    # 5 + 32 columns, then 37 + 1 + 32 ...: two reallocations in 70 steps, not one per step
    assert len(buffers) == 3


def test_growing_layer_move_rows_drops_finished_rows_and_leading_columns():
    from transformers.cache_utils import DynamicLayer

    grow, plain = gen.GrowingLayer(), DynamicLayer()
    k, v = _kv(5, 6, 1)
    grow.update(k, v)
    plain.update(k, v)
    # rows 1 and 3 finish: live rows 4 moves into slot 1, slot 3 is past the new end (3 rows left); the first 2
    # columns are padding no live row attends to any more
    grow.move_rows(torch.tensor([4]), torch.tensor([1]), 3, 2)
    keep = torch.tensor([0, 4, 2])
    torch.testing.assert_close(grow.keys, plain.keys[keep][:, :, 2:], rtol=0, atol=0)
    torch.testing.assert_close(grow.values, plain.values[keep][:, :, 2:], rtol=0, atol=0)
    assert grow.get_seq_length() == 4
    k, v = _kv(3, 1, 2)  # and it keeps growing in place after the move
    grow.update(k, v)
    torch.testing.assert_close(grow.keys[:, :, -1:], k, rtol=0, atol=0)
    torch.testing.assert_close(grow.keys[:, :, :4], plain.keys[keep][:, :, 2:], rtol=0, atol=0)


def test_growing_layer_concat_left_pads_with_zeros():
    a, b = gen.GrowingLayer(), gen.GrowingLayer()
    ka, va = _kv(2, 3, 3)
    kb, vb = _kv(1, 5, 4)
    a.update(ka, va)
    b.update(kb, vb)
    a.concat([b], 5)
    assert a.keys.shape == (3, 2, 5, 4)
    assert torch.equal(a.keys[:2, :, :2], torch.zeros(2, 2, 2, 4))  # masked columns: zeros, never NaN
    torch.testing.assert_close(a.keys[:2, :, 2:], ka, rtol=0, atol=0)
    torch.testing.assert_close(a.values[2:], vb, rtol=0, atol=0)
    assert a._buf[0].shape[2] == 5 + 32  # room to grow after the concat too
