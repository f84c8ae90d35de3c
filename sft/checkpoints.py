"""The Trainer's checkpoints: which one a run resumes from, and at what epoch."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from kit.config import Config


def checkpoint_step(path: Path) -> int | None:
    """The step of a complete checkpoint directory, else None. The Trainer writes trainer_state.json last (after
    weights, optimizer, scheduler and RNG states), so a checkpoint whose state file is missing or cut short was
    interrupted while being written."""
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    step = state.get("global_step")
    return step if isinstance(step, int) and path.name == f"checkpoint-{step}" else None


def last_checkpoint(cfg: Config) -> str | None:
    """The newest complete checkpoint. Newer incomplete ones (a run killed while writing one) are removed, with a
    message, so neither the resumed run nor the Trainer's rotation ever reads them."""
    ckpt_dir = cfg.checkpoints_dir
    if not ckpt_dir.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir()
                   if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    for step, path in reversed(found):
        if checkpoint_step(path) == step:
            return str(path)
        print(f"{path}: incomplete checkpoint (no readable trainer_state.json: the run was stopped while writing "
              f"it); removing it and resuming from the one before", flush=True)
        shutil.rmtree(path, ignore_errors=True)
    return None


def checkpoint_epoch(checkpoint: str | None) -> float:
    """The epoch a checkpoint was saved at (0 without one). Read before training: with save_total_limit the Trainer
    deletes the checkpoint it resumed from as soon as it saves the next one."""
    if not checkpoint:
        return 0.0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return float(state.get("epoch") or 0.0)
