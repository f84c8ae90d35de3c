"""One run at a time per output_dir.

Every stage holds `<output_dir>/.lock` while it writes there. A second run on the same directory refuses at once,
naming the process that holds it. The lock is an OS file lock (filelock's: flock on Linux and macOS, LockFileEx on
Windows), which the system drops when its process dies, however it dies: a lock file left by a killed run is simply
taken over (with a message), never waited on.

Under `accelerate launch` / torchrun only rank 0 takes it (the other ranks are the same run). Taking it again in the
same process (eval.run calls merge, generate and score) is free.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from filelock import lock_descriptor

from kit.errors import Busy
from kit.files import clean_temps

_held: set[Path] = set()  # lock paths this process holds


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


# The lock file holds " <pid> <what>": Windows locks byte 0 (filelock's LockFileEx), which no other process may then
# read, so the holder is written after it. Plain reads and writes at offsets: os.pread / os.pwrite are POSIX only.
def _read_holder(fd: int) -> list[str]:
    """[pid, what...] of the last holder, or [] when the file is empty."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200)
    except OSError:  # Windows: byte 0 is locked by the holder
        os.lseek(fd, 1, os.SEEK_SET)
        text = os.read(fd, 200)
    return text.decode("utf-8", "replace").split()


def _write_holder(fd: int, what: str) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f" {os.getpid()} {what}\n".encode())


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
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
    untouched = False  # the stage stopped (a user error) before writing anything: leave no trace of it
    try:
        if not lock_descriptor(fd, blocking=False):
            pid, *doing = _read_holder(fd) or ["unknown"]
            raise Busy(f"{out_dir}: another run is writing here (process {pid}: {' '.join(doing) or 'unknown'}); "
                       f"wait for it to finish or stop it (kill {pid}), or choose another output_dir")
        previous = _read_holder(fd)
        if previous and previous[0] != str(os.getpid()):
            print(f"{out_dir}: taking over the lock left by process {previous[0]}, which is no longer running",
                  flush=True)
        _write_holder(fd, what)
        _held.add(path)
        try:
            yield True
        finally:
            _held.discard(path)
            os.ftruncate(fd, 0)  # a clean exit leaves an empty lock file: nothing to take over
            untouched = created and [p.name for p in out_dir.iterdir()] == [".lock"]
            if untouched:
                with contextlib.suppress(PermissionError):  # Windows deletes no open file: done below, once closed
                    path.unlink()  # while still held, so no other run can have taken this file meanwhile
    finally:
        os.close(fd)  # closing the descriptor drops the lock
        if untouched:
            path.unlink(missing_ok=True)
            out_dir.rmdir()


@contextlib.contextmanager
def run_lock(cfg, what: str):
    """A stage's hold on its run: the output lock, and what a killed run left half-written removed first."""
    with output_lock(cfg.out, what) as took:
        if took:
            removed = clean_temps(cfg.out, cfg.data_dir, cfg.adapter_dir.parent, cfg.merged_dir.parent, cfg.eval_dir,
                                  cfg.checkpoints_dir)
            if removed:
                print(f"removed {len(removed)} half-written file(s) left by an interrupted run: "
                      + ", ".join(p.name for p in removed[:5]), flush=True)
        yield
