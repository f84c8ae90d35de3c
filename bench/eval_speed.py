"""Evaluation speed: the tutorial's loop vs the kit's batched paths, same model, same rows, one run.

    python -m bench.eval_speed                       # after the quickstart: train, then eval.merge (~4 min)
    python -m bench.eval_speed --rows 48 --model runs/quickstart/merged

Generation: the tutorial calls `generate` once per question with max_new_tokens=512 (its temperature 0.1 / top-p 0.1
without do_sample is greedy); the kit runs `generate_batched` (shared prefix, continuous batching) with the config's
eval.batch_size, three times (median; the tutorial's loop runs once: its rate is per row and it is slow). The kit's
answers must equal one `model.generate` greedy call per prompt with the same max_new_tokens: batching must not
change them. Default rows: the whole single-turn test set, as `eval.generate` answers it.
transformers' own continuous batching (`model.generate_batch`, prefix block sharing on) runs on the same prompts,
interleaved with the kit's loop, as the candidate to replace the hand-written cache (issue 14).
Scoring: the tutorial makes one BERTScore call per row (here on a scorer loaded once, as `evaluate` caches it; plain
`bert_score.score()` would also reload the model every row); the kit scores length-sorted batches.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from data_prep.build import ensure_built
from eval.metrics import Scorer, encoder_for
from kit.chat import generation_prompt
from kit.config import KitError, load_config
from kit.files import load_jsonl
from kit.generation import generate_batched, reference_greedy, stop_token_ids
from kit.models import load_tokenizer, set_threads


def tutorial_generate(model, tok, rows: list[dict]) -> list[str]:
    out = []
    for row in rows:
        ids = tok.apply_chat_template(row["messages"][:-1], tokenize=True, add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            gen = model.generate(ids, temperature=0.1, top_p=0.1, top_k=10, max_new_tokens=512,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        out.append(tok.decode(gen[0][ids.shape[1]:], skip_special_tokens=True).strip())
    return out


def library_generate(model, tok, prompts: list[str], max_new_tokens: int) -> list[str]:
    """transformers' continuous batching: `generate_batch` with prefix block sharing, greedy."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_token_ids(tok),
                           pad_token_id=tok.pad_token_id)
    out = model.generate_batch(ids, generation_config=gen, max_new_tokens=max_new_tokens,
                               continuous_batching_config=ContinuousBatchingConfig(allow_block_sharing=True))
    by_id = {o.request_id: o for o in out.values()}
    return [tok.decode(by_id[f"req_{i}"].generated_tokens, skip_special_tokens=True).strip()
            for i in range(len(prompts))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--model", default=None, help="model directory (default: the config's merged export)")
    parser.add_argument("--rows", type=int, default=0, help="test questions (default: all single-turn ones)")
    parser.add_argument("--score-rows", type=int, default=480, help="answer pairs to score")
    args = parser.parse_args(argv)

    cfg = load_config(args.config)
    set_threads(cfg.train.threads, "cpu")
    model_dir = Path(args.model) if args.model else cfg.merged_dir
    if not (model_dir / "config.json").is_file():
        raise KitError(f"{model_dir}: no model; run `python -m sft.train {args.config}` and "
                       f"`python -m eval.merge {args.config}` first, or pass --model DIR")
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = [r for r in load_jsonl(ensure_built(cfg) / "test.jsonl") if r["turns"] == 1][: args.rows or None]
    prompts = [generation_prompt(tok, r["messages"][:-1]) for r in rows]
    print(f"{len(rows)} test questions, model {model_dir}, {torch.get_num_threads()} threads", flush=True)

    t = time.perf_counter()
    tutorial = tutorial_generate(model, tok, rows)
    t_tut = time.perf_counter() - t
    kit_times, lib_times = [], []
    for _ in range(3):  # interleaved: the machine's noise falls on both
        t = time.perf_counter()
        batched = generate_batched(model, tok, prompts, batch_size=cfg.eval.batch_size,
                                   max_new_tokens=cfg.eval.max_new_tokens)
        kit_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        library = library_generate(model, tok, prompts, cfg.eval.max_new_tokens)
        lib_times.append(time.perf_counter() - t)
    t_kit, t_lib = statistics.median(kit_times), statistics.median(lib_times)
    single = reference_greedy(model, tok, prompts, max_new_tokens=cfg.eval.max_new_tokens)
    same = sum(a == b for a, b in zip(batched, single))
    same_lib = sum(a == b for a, b in zip(library, single))
    same_tut = sum(a == b for a, b in zip(batched, tutorial))
    print(f"\ngeneration   tutorial loop {len(rows) / t_tut:6.2f} answers/s   kit batched {len(rows) / t_kit:6.2f} "
          f"answers/s   -> {t_tut / t_kit:.1f}x   (kit runs: {', '.join(f'{x:.1f}' for x in kit_times)} s, "
          f"batch {cfg.eval.batch_size})")
    print(f"  kit batched == one-by-one greedy (same max_new_tokens): {same}/{len(rows)}; "
          f"== tutorial loop answers: {same_tut}/{len(rows)}")
    print(f"  transformers generate_batch (block sharing) {len(rows) / t_lib:6.2f} answers/s = "
          f"{t_kit / t_lib:.2f} of the kit's speed (runs: {', '.join(f'{x:.1f}' for x in lib_times)} s); "
          f"== one-by-one greedy: {same_lib}/{len(rows)}")

    model_type, layer, label = encoder_for(cfg)
    scorer = Scorer(model_type, layer, cfg.data.language, cfg.eval.bertscore_batch_size, label)
    refs = [r["messages"][-1]["content"] for r in rows]
    n = args.score_rows
    preds_n = [batched[i % len(rows)] for i in range(n)]
    refs_n = [refs[i % len(rows)] for i in range(n)]
    k = min(n, 60)  # the per-row loop on a subset: its rate does not depend on how many rows
    t = time.perf_counter()
    loop_f1 = [float(scorer.scorer.score([p], [r])[2][0]) for p, r in zip(preds_n[:k], refs_n[:k])]
    t_loop = (time.perf_counter() - t) / k
    t = time.perf_counter()
    _, _, f1 = scorer.score(preds_n, refs_n)
    t_batch = (time.perf_counter() - t) / n
    diff = max(abs(a - b) for a, b in zip(loop_f1, f1[:k]))
    print(f"scoring      tutorial loop {1 / t_loop:6.1f} pairs/s     kit batched {1 / t_batch:6.1f} pairs/s     "
          f"-> {t_loop / t_batch:.1f}x   (encoder {label}; max |F1 difference| {diff:.1e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
