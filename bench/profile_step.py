"""Where one training step of the kit goes, as `sft.train` runs it with a config's own settings.

    python -m bench.profile_step                                  # configs/quickstart.yaml, 12 steps (~3 min)
    python -m bench.profile_step configs/quickstart.yaml --steps 20 train.logging_steps=1

Builds the trainer exactly as `sft.train` does (`sft.train.build_trainer`), then times each part of the Trainer's
step from the outside, without changing what runs: fetching and collating the batch, the model's backbone forward,
TRL's fused LM head (log-probabilities, plus entropy and top-1 accuracy for its per-step metrics), the rest of
`compute_loss` (metrics gathering), backward (split into the LM head's and the backbone's part), gradient clipping,
the optimizer, and logging (the kit's loss plot included). The first `--warmup` steps are left out. Prints seconds
per step and shares, and real (non-pad) tokens/s.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

from transformers import TrainerCallback

PARTS = ["data: fetch + collate", "forward: backbone", "forward: LM head (log-probs, entropy, top-1)",
         "forward: rest of compute_loss (metrics)", "backward: LM head", "backward: backbone + LoRA",
         "grad clipping", "optimizer", "logging (loss plot, metrics)", "other (scheduler, zero_grad, callbacks)"]


class Timers:
    def __init__(self):
        self.total = defaultdict(float)
        self.on = False

    @contextmanager
    def time(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.on:
                self.total[name] += time.perf_counter() - start

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            with self.time(name):
                return fn(*args, **kwargs)
        return timed


class Steps(TrainerCallback):
    """Switches the timers on after `warmup` steps and counts the timed steps' wall time and real tokens."""

    def __init__(self, timers: Timers, warmup: int):
        self.timers, self.warmup, self.steps, self.start, self.wall = timers, warmup, 0, None, 0.0

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.warmup:
            self.timers.on, self.start = True, time.perf_counter()

    def on_train_end(self, args, state, control, **kw):
        if self.start is not None:
            self.wall = time.perf_counter() - self.start
            self.steps = state.global_step - self.warmup


def profile(cfg, steps: int, warmup: int) -> dict:
    import trl.trainer.utils as trl_utils

    from sft.train import build_trainer

    timers = Timers()
    counter = Steps(timers, warmup)
    run = build_trainer(cfg, [counter])
    trainer = run.trainer
    tokens = [0]

    fetch = trainer.get_batch_samples

    def get_batch_samples(*a, **k):
        with timers.time(PARTS[0]):
            batches, n = fetch(*a, **k)
        if timers.on:
            tokens[0] += sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                             for b in batches)
        return batches, n

    trainer.get_batch_samples = get_batch_samples
    backbone = trainer.model.get_base_model().model
    backbone.forward = timers.wrap(PARTS[1], backbone.forward)
    head_fn = trl_utils._ChunkedLogProbFunction
    head_apply, head_backward = head_fn.apply, head_fn.backward

    class TimedHead:
        @staticmethod
        def apply(*a):
            with timers.time(PARTS[2]):
                return head_apply(*a)

    def backward(ctx, *grads):
        with timers.time(PARTS[4]):
            return head_backward(ctx, *grads)

    trl_utils._ChunkedLogProbFunction = TimedHead
    head_fn.backward = staticmethod(backward)
    trainer.compute_loss = timers.wrap("compute_loss", trainer.compute_loss)
    trainer.accelerator.backward = timers.wrap("backward", trainer.accelerator.backward)
    trainer._clip_grad_norm = timers.wrap(PARTS[6], trainer._clip_grad_norm)
    trainer._maybe_log_save_evaluate = timers.wrap(PARTS[8], trainer._maybe_log_save_evaluate)

    class Optimizer(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kw):
            if timers.on:
                timers.total[PARTS[7]] += time.perf_counter() - self.t

    trainer.add_callback(Optimizer())
    try:
        trainer.train()
    finally:
        trl_utils._ChunkedLogProbFunction = head_fn
        head_fn.backward = staticmethod(head_backward)
    t = timers.total
    parts = {
        PARTS[0]: t[PARTS[0]],
        PARTS[1]: t[PARTS[1]],
        PARTS[2]: t[PARTS[2]],
        PARTS[3]: t["compute_loss"] - t[PARTS[1]] - t[PARTS[2]],
        PARTS[4]: t[PARTS[4]],
        PARTS[5]: t["backward"] - t[PARTS[4]],
        PARTS[6]: t[PARTS[6]],
        PARTS[7]: t[PARTS[7]],
        PARTS[8]: t[PARTS[8]],
    }
    parts[PARTS[9]] = counter.wall - sum(parts.values())
    return {"steps": counter.steps, "wall": counter.wall, "tokens": tokens[0], "parts": parts,
            "rows_per_step": trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps}


def main(argv: list[str] | None = None) -> int:
    from kit.config import parse_args

    def extra(p):
        p.add_argument("--steps", type=int, default=12, help="optimizer steps to time (after the warm-up)")
        p.add_argument("--warmup", type=int, default=2, help="first steps left out")

    import sys

    args, cfg = parse_args((sys.argv[1:] if argv is None else argv) or ["configs/quickstart.yaml"],
                           __doc__.splitlines()[0], extra)
    from dataclasses import replace

    cfg = replace(cfg, output_dir="runs/bench-profile",
                  train=replace(cfg.train, max_steps=args.steps + args.warmup, save_strategy="no", resume="never",
                                show_examples=0))
    import shutil

    shutil.rmtree(cfg.out / "checkpoints", ignore_errors=True)
    r = profile(cfg, args.steps, args.warmup)
    per = r["wall"] / r["steps"]
    print(f"\n{r['steps']} steps of {r['rows_per_step']} rows timed after {args.warmup} warm-up: {per:.2f} s/step, "
          f"{r['tokens'] / r['wall']:.0f} real tokens/s, {r['steps'] * r['rows_per_step'] / r['wall']:.2f} rows/s")
    for name, seconds in r["parts"].items():
        print(f"  {name:45s} {seconds / r['steps']:7.3f} s  {100 * seconds / r['wall']:5.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
