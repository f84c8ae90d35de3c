"""LoRA fine-tuning with TRL's SFTTrainer, loss on the answers only, with a live loss plot.

    python -m sft.train configs/quickstart.yaml          # offline, CPU, minutes
    python -m sft.train configs/7b.yaml                  # the tutorial's recipe on one GPU
    python -m sft.train configs/quickstart.yaml train.max_steps=20 output_dir=runs/try

Builds the data set from the `data` section first if needed. Leaves in output_dir: adapter/ (LoRA safetensors and
tokenizer), config.yaml (resolved), versions.json, metrics.json, loss.png and loss.csv, checkpoints/.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

from data_prep.build import ensure_built
from kit.config import Config, KitError, dump_config, parse_args, run_main
from kit.files import atomic_dir, write_text_atomic
from kit.models import (
    choose_pad_token,
    cpu_bf16_speedup,
    load_model,
    load_tokenizer,
    pick_device,
    process_state,
    resolve,
    set_threads,
    versions,
)
from kit.rows import question_of
from sft.answers import answer, answering_attention
from sft.callbacks import LossPlotCallback
from sft.checkpoints import checkpoint_epoch, last_checkpoint
from sft.checks import BEST_DIR, KnowledgeChecks, checks_in, keep_best, knowledge_checks
from sft.compile import COMPILED_PARTS, compile_layers, use_compile
from sft.encode import audit, cut_answers_warning, encode_file, encode_rows, token_counts, with_counts
from sft.replay import replay_rows
from sft.trainer_config import (
    build_lora_config,
    build_sft_config,
    resolve_precision,
    score_only_supervised_positions,
    training_attention,
)


def train(cfg: Config, callbacks: list | None = None) -> Path:
    """Fine-tune; returns the adapter directory."""
    from kit.lock import run_lock

    with run_lock(cfg, "sft.train"):
        return _train(cfg, callbacks)


def _train(cfg: Config, callbacks: list | None) -> Path:
    import torch

    run = build_trainer(cfg, callbacks)
    trainer, tok = run.trainer, run.tok
    trainable, total = trainer.model.get_nb_trainable_parameters()
    if trainer.is_world_process_zero():
        timed = cfg.train.precision == "auto" and run.device == "cpu" and cpu_bf16_speedup()  # 0.0: not timed
        auto = f" (auto: bf16 matmuls run {timed:.2f}x fp32's on this CPU)" if timed else ""
        print(f"device {run.device}, precision {run.precision}{auto}, attention "
              f"{getattr(trainer.model.config, '_attn_implementation', None) or 'default'}, "
              f"threads {torch.get_num_threads()}"
              + (f", {run.compiled} modules compiled (train.compile_layers)" if run.compiled else "")
              + f"; LoRA trains "
              f"{trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)"
              + (f"; resuming from {run.resume_from}" if run.resume_from else ""), flush=True)

    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=run.resume_from)
    wall = time.perf_counter() - start
    kept = keep_best(trainer, cfg) if run.checks else None

    adapter_dir = cfg.adapter_dir
    if trainer.is_world_process_zero():
        with atomic_dir(adapter_dir) as tmp:  # the adapter appears whole or not at all
            trainer.save_model(str(tmp))
            tok.save_pretrained(str(tmp))
    metrics = summarise(trainer, result, run.train_enc, wall, run.resume_epoch)
    if run.eval_enc:
        metrics["eval_loss"] = final_eval_loss(trainer)
    if kept:
        metrics["checks"] = [vars(c) for c in checks_in(trainer.state.log_history)]
        metrics["kept"] = kept
    if trainer.is_world_process_zero():
        write_json(cfg.out / "metrics.json", metrics)
        if run.examples:
            after = answer(trainer.model, tok, run.examples, attention=run.answer_attention,
                           thinking=cfg.model.thinking)
            print(show_examples(run.examples, run.before, after), flush=True)
        print(f"train loss {metrics['train_loss']:.4f}"
              + (f", eval loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else "")
              + f"; {metrics['tokens_per_second']:.0f} tokens/s; {wall:.0f} s", flush=True)
    return adapter_dir


@dataclass
class Run:
    """What `build_trainer` prepared: the trainer and what `train` reports about."""

    trainer: object
    tok: object
    train_enc: object  # datasets.Dataset: input_ids, labels
    eval_enc: object | None
    examples: list[dict]
    before: list[str]
    resume_from: str | None
    resume_epoch: float
    device: str
    precision: str
    answer_attention: str | None  # what replay rows and examples are answered with (`answering_attention`)
    checks: KnowledgeChecks | None  # the knowledge checks' callback, when the data has a validation split
    compiled: int = 0  # modules compiled for the training step (sft.compile)


def build_trainer(cfg: Config, callbacks: list | None = None) -> Run:
    """Check, build the data, tokenise and mask, load the model, and set up the SFTTrainer (nothing trained yet)."""
    device = pick_device(cfg.train.device)
    state = process_state(device)  # one process, or one of several under `accelerate launch` / torchrun
    resume_from = check_before_loading(cfg, device)
    compiled = use_compile(cfg, device)  # on a CPU without a C++ compiler: an error, before any work
    with state.main_process_first():  # files (data, dequantised GGUF) are written once, then read by the others
        data_dir = ensure_built(cfg)
        model_path = resolve(cfg.model)
    set_threads(cfg.train.threads, device)
    score_only_supervised_positions(device)
    tok = load_tokenizer(model_path, cfg.model.trust_remote_code)
    t = cfg.train
    with state.main_process_first():  # tokenised once (in parallel for large files), then read from the cache
        train_enc = encode_file(tok, data_dir / "train.jsonl", t.max_length, cfg.model.thinking,
                                data_dir / "tokenized")
        eval_enc = (encode_file(tok, data_dir / "test.jsonl", t.max_length, cfg.model.thinking,
                                data_dir / "tokenized") if t.eval_strategy != "no" else None)
    from datasets import Dataset, concatenate_datasets

    from sft.prefix import trainer_class

    precision = resolve_precision(cfg, device)
    main = state.is_main_process
    if main:
        print(audit(tok, train_enc), flush=True)
        if cut := cut_answers_warning(train_enc, cfg.eval.max_new_tokens):
            print(cut, flush=True)
        write_text_atomic(cfg.out / "config.yaml", dump_config(cfg))
        write_json(cfg.out / "versions.json", versions())
    attention = training_attention(cfg, device, precision)
    model = load_model(model_path, replace(cfg.model, attn_implementation=attention), device, for_training=True)
    answer_attention = answering_attention(cfg, attention)
    if cfg.data.replay:
        with state.main_process_first():  # answered once, then read from the cache by the other processes
            replay = replay_rows(cfg, model, tok, model_path, data_dir, answer_attention)
        replay_enc = encode_rows(tok, replay, t.max_length, cfg.model.thinking, str(data_dir / "replay.jsonl"))
        train_enc = with_counts(
            concatenate_datasets([train_enc, Dataset.from_list(replay_enc, features=train_enc.features)]),
            [token_counts(train_enc), token_counts(replay_enc)])
    examples = pick_examples(data_dir / "test.jsonl", t.show_examples) if main else []
    before = (answer(model, tok, examples, attention=answer_attention, thinking=cfg.model.thinking)
              if examples and not resume_from else [])
    checks = knowledge_checks(cfg, tok, data_dir / "train.jsonl", answer_attention, main)
    if main and not resume_from:  # an earlier run's best adapter is never this run's
        shutil.rmtree(cfg.checkpoints_dir / BEST_DIR, ignore_errors=True)
    trainer = trainer_class(t.share_prefix)(
        model=model,
        args=build_sft_config(cfg, device, precision),
        train_dataset=train_enc,
        eval_dataset=eval_enc,
        processing_class=tok,
        peft_config=build_lora_config(cfg.lora),
        # the checks first: the loss plot draws a check the moment it is made
        callbacks=[*([checks] if checks else []), LossPlotCallback(cfg.out, eval_enabled=t.eval_strategy != "no"),
                   *(callbacks or [])],
    )
    choose_pad_token(tok)  # SFTTrainer falls back to eos when the tokenizer had no pad token; keep ours
    n_compiled = compile_layers(trainer.model) if compiled else 0
    if compiled and not n_compiled and main:
        print(f"train.compile_layers: no decoder layer with {', '.join(COMPILED_PARTS)} in this model; it trains "
              f"eager", flush=True)
    return Run(trainer, tok, train_enc, eval_enc, examples, before, resume_from, checkpoint_epoch(resume_from), device,
               precision, answer_attention, checks, n_compiled)


def check_before_loading(cfg: Config, device: str) -> str | None:
    """Everything that can be checked cheaply, before the model loads. Returns the checkpoint to resume from. Raises
    KitError for checkpoints of an earlier run with train.resume=never, and for GPU-only options on a CPU."""
    t = cfg.train
    if t.resume == "never" and cfg.checkpoints_dir.is_dir() and any(cfg.checkpoints_dir.glob("checkpoint-*")):
        raise KitError(f"{cfg.out}: holds checkpoints of an earlier run ({cfg.checkpoints_dir}); set "
                       f"train.resume=auto to continue it, or choose another output_dir")
    ckpt = last_checkpoint(cfg) if t.resume == "auto" else None
    if t.use_liger_kernel and device != "cuda":
        raise KitError("train.use_liger_kernel needs a CUDA GPU; set it to false on CPU")
    if t.padding_free and device != "cuda":
        raise KitError("train.padding_free needs flash attention on a GPU; use train.packing on CPU")
    return ckpt


def pick_examples(path: Path, n: int, scan: int = 10_000) -> list[dict]:
    """Up to n single-turn test rows, one per attribute, from the first `scan` rows of the file (read line by line:
    a large test file is never loaded for this)."""
    picked, seen = [], set()
    if n <= 0:
        return picked
    with path.open(encoding="utf-8") as f:
        for line in islice(f, scan):
            row = json.loads(line)
            if row["turns"] == 1 and row["attribute"] not in seen:
                picked.append(row)
                seen.add(row["attribute"])
                if len(picked) == n:
                    break
    return picked


def show_examples(rows: list[dict], before: list[str], after: list[str]) -> str:
    lines = ["", "before -> after fine-tuning (held-out test questions):"]
    for i, row in enumerate(rows):
        lines.append(f"  Q: {question_of(row)}")
        lines.append(f"     expected: {row['messages'][-1]['content']}")
        if before:
            lines.append(f"     before:   {before[i][:80]}")
        lines.append(f"     after:    {after[i][:80]}")
    return "\n".join(lines)


def summarise(trainer, result, train_enc, wall: float, from_epoch: float) -> dict:
    tokens_per_epoch = token_counts(train_enc)["tokens"]
    epochs = trainer.state.epoch or 0.0
    return {
        # The Trainer's figure covers the steps this process ran; after a resume, the whole run's comes from the loss
        # logged every logging_steps (each logged mean weighted by the steps it covers).
        "train_loss": result.training_loss if not from_epoch else logged_loss(trainer.state.log_history),
        "steps": trainer.state.global_step,
        "resumed_from_epoch": from_epoch,
        "epochs": epochs,
        "train_rows": len(train_enc),
        "real_tokens_per_epoch": tokens_per_epoch,
        # Real (non-pad) tokens per second of this process's training (a resumed run counts its own part).
        "tokens_per_second": tokens_per_epoch * (epochs - from_epoch) / wall if wall else 0.0,
        "train_seconds": wall,
        "log_history": trainer.state.log_history,
    }


def logged_loss(history: list[dict]) -> float | None:
    """Mean training loss over the steps the logged losses cover, each logged mean weighted by its steps."""
    total = steps = 0.0
    last = 0
    for h in history:
        if "loss" in h and "step" in h:
            total += h["loss"] * (h["step"] - last)
            steps += h["step"] - last
            last = h["step"]
    return total / steps if steps else None


def final_eval_loss(trainer) -> float:
    """The eval loss of the trained model: the one logged at the last step when there is one (eval_strategy epoch
    evaluates there already), else from one more pass over the eval set."""
    logged = [h for h in trainer.state.log_history if "eval_loss" in h]
    if logged and logged[-1].get("step") == trainer.state.global_step:
        return logged[-1]["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    _, cfg = parse_args(argv, __doc__.splitlines()[0])
    out = train(cfg)
    if process_state(pick_device(cfg.train.device)).is_main_process:
        print(f"adapter saved to {out}; loss plot: {cfg.out / 'loss.png'}")
    return 0


if __name__ == "__main__":
    run_main(main)
