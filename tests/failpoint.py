"""Run a kit stage in a subprocess that stops at a named point and waits there to be killed from outside.

    python tests/failpoint.py POINT[:N] MARKER_FILE MODULE [args...]

At the N-th time (default 1) the process reaches POINT it writes its pid to MARKER_FILE and sleeps; the test then
sends SIGKILL. The points patch library functions, so the kit's own code carries no test hooks:

    train-step        Trainer.training_step, before the step runs
    checkpoint-write  Trainer._save_rng_state: weights and optimizer of the checkpoint are on disk, its RNG state and
                      trainer_state.json are not
    adapter-save      Trainer.save_model outside checkpoints (the final adapter): after the weights, before the
                      tokenizer and before the directory is moved into place
    merge-write       PreTrainedModel.save_pretrained (the merged export): after the weights, before the tokenizer
    generate-row      eval.generate.prediction_row: in the middle of writing a batch of answers
    report-move       os.replace of a report file into the eval dir: some report files moved, others not
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> None:
    point, _, nth = sys.argv[1].partition(":")
    marker, module, args = Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
    nth = int(nth or 1)
    calls = {"n": 0}

    def reached() -> bool:
        calls["n"] += 1
        return calls["n"] == nth

    def stop() -> None:
        marker.write_text(str(os.getpid()), encoding="utf-8")
        while True:
            time.sleep(60)

    def wrap(owner, name, before=None, after=None):
        original = getattr(owner, name)

        def patched(*a, **kw):
            if before and before(*a, **kw) and reached():
                stop()
            out = original(*a, **kw)
            if after and after(*a, **kw) and reached():
                stop()
            return out

        setattr(owner, name, patched)

    always = lambda *a, **kw: True  # noqa: E731
    if point in ("train-step", "checkpoint-write", "adapter-save"):
        from transformers import Trainer

        if point == "train-step":
            wrap(Trainer, "training_step", before=always)
        elif point == "checkpoint-write":
            wrap(Trainer, "_save_rng_state", before=always)
        else:
            wrap(Trainer, "save_model", after=lambda self, *a, _internal_call=False, **kw: not _internal_call)
    elif point == "merge-write":
        from transformers import PreTrainedModel

        wrap(PreTrainedModel, "save_pretrained", after=always)
    elif point == "generate-row":
        import eval.generate

        wrap(eval.generate, "prediction_row", before=always)
    elif point == "report-move":
        report = {"scores.csv", "f1_hist.png", "attributes.png", "summary.md", "summary.json"}
        wrap(os, "replace", after=lambda src, dst, *a, **kw: Path(dst).name in report)
    else:
        raise SystemExit(f"unknown failpoint {point}")
    import importlib

    from kit.config import run_main

    sys.argv = [module, *args]
    run_main(importlib.import_module(module).main)  # the real module, so the patched names are the ones it calls


if __name__ == "__main__":
    main()
