"""Reading and writing files so that a reader (or a crash) never sees half of one.

Writers: `write_text_atomic` for one file, `atomic_dir` for a directory that appears whole (an export, an adapter, a
data set). Temp files and dirs are named `.kit-tmp-*` beside their target, so `clean_temps` can remove what a killed
run left behind (it runs under the output lock, when no other run can be writing them).

Reader: `read_text` decodes UTF-8 (with or without a BOM) or UTF-16 with a BOM, and refuses anything else with a
message naming the file, the line, the encoding it looks like and how to save it as UTF-8, never a traceback and
never garbled text.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kit.errors import KitError

TEMP_PREFIX = ".kit-tmp-"


@contextlib.contextmanager
def atomic_file(path: Path):
    """`with atomic_file(p) as tmp:` write the file at tmp; on success it replaces `p` in one step (readers see the
    old file or the whole new one), on any error (or a kill) `p` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private: give it what open() would
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    """Write beside `path`, then rename over it: the file is either the old one or the whole new one."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):  # and on Windows ctypes.CDLL(None) is a TypeError, not an OSError
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: Path, target: Path) -> None:
    """Put the directory `new` at `target`. An existing target is swapped out in one step where the system can, so
    readers see the old directory or the new one, never none; the old one is then deleted."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):  # `new` now holds the old directory
        shutil.rmtree(new, ignore_errors=True)
        return
    old = target.with_name(f"{TEMP_PREFIX}old-{target.name}-{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def temp_dir(parent: Path, name: str = "dir"):
    """A `.kit-tmp-*` directory in `parent`, removed with whatever is left in it when the block ends."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{name}.", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: Path):
    """`with atomic_dir(out) as tmp:` write everything into tmp; on success it becomes `out` in one step, on any
    error (or a kill) nothing of it is at `out`."""
    target = Path(target)
    with temp_dir(target.parent, target.name) as tmp:
        yield tmp
        replace_dir(tmp, target)


def clean_temps(*dirs: Path) -> list[Path]:
    """Remove `.kit-tmp-*` files and directories a killed run left in `dirs`; returns what was removed. Call only
    while holding the output lock (kit.lock), so no live run is still writing them."""
    removed = []
    for d in dict.fromkeys(Path(d) for d in dirs):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.name.startswith(TEMP_PREFIX):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        p.unlink()
                removed.append(p)
    return removed


# ---------------------------------------------------------------------------------------------------------------------
# Reading text a user wrote


def _looks_like(data: bytes) -> str:
    """A guess at the encoding of bytes that are not UTF-8, for the error message only (never used to decode)."""
    try:
        if any("\u4e00" <= ch <= "\u9fff" for ch in data.decode("gb18030")):
            return "GBK / GB18030 (what Chinese Windows tools save by default)"
    except UnicodeDecodeError:
        pass
    return "an 8-bit encoding such as Latin-1 / Windows-1252"


def decode_text(data: bytes, path: str | Path, what: str = "file") -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with a byte order mark: unambiguous
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        enc = _looks_like(data)
        iconv = "GB18030" if enc.startswith("GBK") else "CP1252"
        raise KitError(
            f"{path}: the {what} is not UTF-8 (byte 0x{data[e.start]:02x} at line {line}, column {col}); it looks "
            f"like {enc}. Save it as UTF-8 and run again: e.g. "
            f"`iconv -f {iconv} -t UTF-8 {path} > fixed{Path(path).suffix}`, or in Excel 'Save as > CSV UTF-8', "
            f"in Notepad 'Save as > Encoding: UTF-8'") from None


def load_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file the kit wrote (UTF-8)."""
    import json

    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Rows of a JSONL file the kit wrote, one at a time (a large file is never held whole)."""
    import json

    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_text(path: str | Path, what: str = "file") -> str:
    """The text of a file a user gave the kit, decoded as described in the module docstring."""
    return decode_text(Path(path).read_bytes(), path, what)
