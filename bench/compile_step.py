"""The training step with and without `train.compile_layers`, paired: the same batches, eager and compiled
alternating in one process (this machine is noisy), medians.

    python -m bench.compile_step                                  # the quickstart's step (~4 minutes on 2 cores)
    python -m bench.compile_step configs/quickstart.yaml train.precision=fp32

Builds the trainer as `sft.train` does (shared prefix, precision, attention), compiles the layers with
`sft.compile.compile_layers`, and times the trainer's own `training_step` on `--batches` batches of the training
rows, switching each compiled module's forward between its eager and compiled code. Prints the first losses of each
(they agree to rounding, not to the bit), the time of the compiling pass, each round and the ratio of medians.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import replace

from kit.config import parse_args
from sft.compile import compile_layers, layer_parts
from sft.train import build_trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    own, rest = parser.parse_known_args(argv)
    _, cfg = parse_args(rest or ["configs/quickstart.yaml"], "bench.compile_step")
    cfg = replace(cfg, output_dir="runs/bench-compile-step",
                  train=replace(cfg.train, max_steps=own.batches, save_strategy="no", resume="never", show_examples=0,
                                check_strategy="no", stop_at=None, compile_layers=False))
    run = build_trainer(cfg, [])
    trainer = run.trainer
    model = trainer.accelerator.prepare_model(trainer.model)  # as Trainer.train does: autocast around forward
    size = cfg.train.per_device_train_batch_size
    rows = random.Random(0).sample(range(len(trainer.train_dataset)), own.batches * size)
    batches = [trainer.data_collator([trainer.train_dataset[i] for i in rows[j:j + size]])
               for j in range(0, own.batches * size, size)]
    model.train()
    trainer.current_gradient_accumulation_steps = 1

    def steps() -> tuple[float, list[float]]:
        start = time.perf_counter()
        losses = [float(trainer.training_step(model, b, None)) for b in batches]
        model.zero_grad()
        return time.perf_counter() - start, losses

    parts = layer_parts(model)
    eager = [p.forward for p in parts]
    print(f"{compile_layers(model)} modules compiled; precision {run.precision}", flush=True)
    compiled = [p.forward for p in parts]

    def use(on: bool) -> None:
        for p, e, c in zip(parts, eager, compiled):
            p.forward = c if on else e

    use(False)
    print("eager losses", [round(x, 4) for x in steps()[1][:3]], flush=True)
    use(True)
    seconds, losses = steps()
    print(f"compiled losses {[round(x, 4) for x in losses[:3]]}; first pass (compiling) {seconds:.1f} s", flush=True)
    times = {"eager": [], "compiled": []}
    for r in range(own.rounds):
        for name in times:
            use(name == "compiled")
            times[name].append(steps()[0])
            print(f"round {r} {name}: {times[name][-1]:.2f} s for {own.batches} steps", flush=True)
    ratio = statistics.median(times["eager"]) / statistics.median(times["compiled"])
    print(f"median eager {statistics.median(times['eager']):.2f} s, compiled "
          f"{statistics.median(times['compiled']):.2f} s: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
