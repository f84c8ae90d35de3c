"""The kit on macOS and Windows: no module may need what only Linux has (fcntl, os.sched_getaffinity, os.pread,
renameat2), and the run lock keeps its behaviour with the cross-platform lock it now takes (filelock)."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kit.files import replace_dir
from kit.lock import Busy, output_lock

ROOT = Path(__file__).resolve().parents[1]

# What macOS and Windows lack, taken away before anything of the kit is imported: fcntl is None in sys.modules (an
# import of it fails), the os functions are deleted.
WITHOUT_UNIX = """
import os, sys, warnings
sys.modules["fcntl"] = None
for name in ("sched_getaffinity", "process_cpu_count", "pread", "pwrite"):
    if hasattr(os, name):
        delattr(os, name)
warnings.simplefilter("ignore")  # filelock warns that only its soft lock is left on a Unix without fcntl
"""


def run_python(code: str, *args: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def test_every_module_imports_and_counts_cores_without_linux_only_calls():
    code = WITHOUT_UNIX + """
import importlib, pkgutil
for package in ("kit", "data_prep", "sft", "eval"):
    for module in pkgutil.iter_modules([package]):
        importlib.import_module(f"{package}.{module.name}")
import torch
from kit.models import set_threads
set_threads(None, "cpu")
print("threads", torch.get_num_threads(), "cores", os.cpu_count())
"""
    proc = run_python(code)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    # without an affinity mask, every core of the machine: what os.cpu_count says there
    assert out.splitlines()[-1] == f"threads {os.cpu_count()} cores {os.cpu_count()}"


HOLD = WITHOUT_UNIX.replace('sys.modules["fcntl"] = None\n', "") + """
import time
from kit.lock import output_lock
with output_lock(sys.argv[1], "sft.train"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_run_is_refused_while_the_first_lives_and_takes_over_once_it_is_killed(tmp_path, capsys):
    out = tmp_path / "run"
    proc = run_python(HOLD, str(out))  # without os.pread / os.pwrite, as on Windows
    try:
        assert proc.stdout.readline() == "held\n"
        with pytest.raises(Busy, match=rf"^{re.escape(str(out))}: another run is writing here \(process {proc.pid}: "
                                       rf"sft\.train\); wait for it to finish or stop it \(kill {proc.pid}\), or "
                                       rf"choose another output_dir$"):
            with output_lock(out, "eval.run"):
                pass
    finally:
        proc.kill()  # SIGKILL: no chance to let go of the lock itself
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with output_lock(out, "eval.run") as took:
        assert took
        assert (out / ".lock").read_text(encoding="utf-8") == f" {os.getpid()} eval.run\n"
        with output_lock(out, "eval.merge") as again:  # eval.run calls merge: taken already, free
            assert not again
    assert capsys.readouterr().out == (f"{out}: taking over the lock left by process {proc.pid}, which is no longer "
                                       f"running\n")
    assert (out / ".lock").read_bytes() == b""  # a clean exit: nothing to take over next time


def test_a_run_that_stops_before_writing_leaves_no_directory(tmp_path):
    with pytest.raises(ValueError, match="bad config"):
        with output_lock(tmp_path / "new", "data_prep.build"):
            raise ValueError("bad config")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with output_lock(tmp_path / "old", "data_prep.build"):
        pass
    assert [p.name for p in (tmp_path / "old").iterdir()] == [".lock"]  # a directory that was there stays


def no_libc(name, *args, **kwargs):
    raise TypeError("argument of type 'NoneType' is not iterable")  # ctypes.CDLL(None) on Windows


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_replacing_a_directory_where_renameat2_does_not_exist(platform, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "model.safetensors").write_text("old", encoding="utf-8")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "model.safetensors").write_text("new", encoding="utf-8")
    replace_dir(tmp_path / "new", tmp_path / "merged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    assert (tmp_path / "merged" / "model.safetensors").read_text(encoding="utf-8") == "new"
