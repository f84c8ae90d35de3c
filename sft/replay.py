"""Replay rows: the base model's own answers to general prompts, mixed into train (self-distillation)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kit.chat import system_messages
from kit.config import Config, KitError
from kit.files import load_jsonl, write_text_atomic
from kit.models import pick_device, process_state
from kit.rows import REPLAY, Row, qa_row, row_id
from kit.specificity import replay_prompts
from sft.answers import answer


def replay_rows(cfg: Config, model, tok, model_path: str, data_dir: Path, attention: str | None = None) -> list[Row]:
    """data.replay general prompts (kit/probes/replay_<language>.txt) answered greedily by the base model, as train
    rows: self-distillation that keeps the model's behaviour outside the facts. Made once and kept in
    <data dir>/replay.jsonl, keyed by everything they depend on, so a rerun or a resumed run trains on the same rows.
    Raises KitError when the base model answered none of the prompts within eval.max_new_tokens."""
    prompts = replay_prompts(cfg.data.language)[: cfg.data.replay]  # at most all of them: checked in kit.config
    system = system_messages(cfg.data.system_prompt)
    key = hashlib.sha256(json.dumps([cfg.model.name_or_path, model_path, prompts, system, cfg.eval.max_new_tokens,
                                     cfg.model.thinking], ensure_ascii=False).encode()).hexdigest()[:16]
    path = data_dir / "replay.jsonl"
    if path.is_file():
        cached = load_jsonl(path)  # answers that were left out (below) are left out of the file too
        if cached and all(r.get("key") == key for r in cached):
            return cached
    answers = answer(model, tok, [qa_row("", system, p, "", REPLAY) for p in prompts], cfg.eval.max_new_tokens,
                     attention, cfg.model.thinking)
    rows = []
    for prompt, text in zip(prompts, answers):
        rows.append({**qa_row(row_id(REPLAY, prompt), system, prompt, text, REPLAY), "key": key})
    # An empty answer teaches nothing; a reasoning model's answer still reasoning when eval.max_new_tokens ran out is
    # empty here (final_answer), so its reasoning is never trained as an answer.
    rows = [r for r in rows if r["messages"][-1]["content"]]
    if not rows:
        raise KitError(f"data.replay: the base model answered none of the {len(prompts)} replay prompts within "
                       f"eval.max_new_tokens={cfg.eval.max_new_tokens} (with model.thinking=strip, an answer still "
                       f"reasoning when they ran out is none); raise eval.max_new_tokens, or set data.replay=0")
    if process_state(pick_device(cfg.train.device)).is_main_process:
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
    left = len(prompts) - len(rows)
    print(f"replay: {len(rows)} answers of the base model to general prompts added to train ({path})"
          + (f"; {left} left out, empty or cut off by eval.max_new_tokens={cfg.eval.max_new_tokens} while still "
             f"reasoning" if left else ""), flush=True)
    return rows
