"""Functions that a child process of eval.native.run_native runs in the tests (picklable by module and name)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def die(signum: int) -> None:
    os.kill(os.getpid(), signum)


def exit_without_result(code: int) -> None:
    os._exit(code)


def raise_value_error(text: str) -> None:
    raise ValueError(text)


def double(x: int) -> int:
    return 2 * x


def llama_cpp_dies_on_q8_0(path: Path, *args, **kwargs):
    """eval.export.answer_with_llama_cpp, except that reading a q8_0 file dies of SIGILL, as llama.cpp's AMX int8
    kernels do where the machine does not grant AMX (issue 33)."""
    from eval.export import answer_with_llama_cpp

    if path.name.endswith("-q8_0.gguf"):
        die(signal.SIGILL)
    return answer_with_llama_cpp(path, *args, **kwargs)


def right_only_from_q8_0(path: Path, rows: list[dict], *args, **kwargs) -> list[str]:
    """Stands in for eval.export.answer_with_llama_cpp: every expected answer from a q8_0 file, a wrong one from any
    other (what a 4-bit file that forgot the facts answers)."""
    if path.name.endswith("-q8_0.gguf"):
        return [r["messages"][-1]["content"] for r in rows]
    return ["不知道" for _ in rows]
