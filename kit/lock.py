"""One run at a time per output_dir.

Every stage holds `<output_dir>/.lock` while it writes there. A second run on the same directory refuses at once,
naming the process that holds it. The lock is an OS file lock (flock), which the kernel drops when its process dies,
however it dies: a lock file left by a killed run is simply taken over (with a message), never waited on.

Under `accelerate launch` / torchrun only rank 0 takes it (the other ranks are the same run). Taking it again in the
same process (eval.run calls merge, generate and score) is free.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from kit.config import KitError

_held: set[Path] = set()  # lock paths this process holds


class Busy(KitError):
    """Another live process is writing to this output_dir."""


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


@contextlib.contextmanager
def output_lock(out_dir: str | Path, what: str = "run"):
    """Hold the lock of `out_dir` for the block; yields True where this call took it (False: already held here, or
    not rank 0)."""
    out_dir = Path(out_dir)
    path = (out_dir / ".lock").absolute()
    if _rank() != 0 or path in _held:  # another rank of the same run, or this process already holds it
        yield False
        return
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            pid, _, doing = holder.partition(" ")
            raise Busy(f"{out_dir}: another run is writing here (process {pid}: {doing or 'unknown'}); wait for it "
                       f"to finish or stop it (kill {pid}), or choose another output_dir") from None
        previous = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        if previous and previous[0] != str(os.getpid()):
            print(f"{out_dir}: taking over the lock left by process {previous[0]}, which is no longer running",
                  flush=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        _held.add(path)
        try:
            yield True
        finally:
            _held.discard(path)
            os.ftruncate(fd, 0)  # a clean exit leaves an empty lock file: nothing to take over
            if created and [p.name for p in out_dir.iterdir()] == [".lock"]:
                # the stage stopped (a user error) before writing anything: leave no trace of it
                path.unlink()
                out_dir.rmdir()
    finally:
        os.close(fd)  # closing the descriptor drops the flock


@contextlib.contextmanager
def run_lock(cfg, what: str):
    """A stage's hold on its run: the output lock, and what a killed run left half-written removed first."""
    from kit.files import clean_temps

    with output_lock(cfg.out, what) as took:
        if took:
            removed = clean_temps(cfg.out, cfg.data_dir, cfg.adapter_dir.parent, cfg.merged_dir.parent, cfg.eval_dir,
                                  cfg.checkpoints_dir)
            if removed:
                print(f"removed {len(removed)} half-written file(s) left by an interrupted run: "
                      + ", ".join(p.name for p in removed[:5]), flush=True)
        yield
