"""Run native code (llama.cpp through llama-cpp-python) in a child process, so that a crash inside it cannot take the
kit command down with it.

A llama.cpp build compiled for what the CPU advertises can use instructions the machine cannot run: on Intel CPUs
with AMX, a build made with `-march=native` takes llama.cpp's AMX int8 kernels for q8_0/q4_0 and dies with SIGILL
where the operating system or the sandbox does not grant the AMX tile state (llama.cpp issues #13678 "AMX is not
ready to be used!", #28328: ISA selected from CPUID that XCR0 does not enable). A signal ends only the child; the
caller gets a `NativeCrash` naming the signal, the file and what to do.

    answers = run_native(answer_with_llama_cpp, cfg, path, rows, what=f"reading {path.name}")
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kit.errors import NativeCrash

# The build the README's install gives (README: llama.cpp's build): nothing chosen from the building machine's CPUID.
# With GGML_NATIVE off, llama.cpp's CMake turns on SSE4.2, AVX, AVX2, BMI2, FMA and F16C on x86-64 and leaves
# AVX-512 and AMX off (ggml/CMakeLists.txt, INS_ENB), so the library runs where it was built and on any AVX2 machine
# it is copied to.
PORTABLE_CMAKE_ARGS = "-DGGML_NATIVE=OFF"
REBUILD = (f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" pip install --force-reinstall --no-cache-dir --no-deps '
           f'"llama-cpp-python>=0.3.8,<0.4"')


def crash_message(signal_name: str, what: str) -> str:
    """What a user reads when llama.cpp died of `signal_name` while doing `what` ("reading run-q8_0.gguf")."""
    if signal_name == "SIGILL":
        why = ("your llama-cpp-python build uses instructions this machine cannot run (a build made for the CPU's "
               "advertised features, e.g. AMX or AVX-512, where the OS does not enable them); rebuild it with: "
               + REBUILD)
    elif signal_name == "SIGKILL":
        why = "it was killed from outside, most often by the out-of-memory killer: free memory or use a smaller file"
    elif signal_name in ("SIGSEGV", "SIGBUS", "SIGABRT", "SIGFPE"):
        why = (f"llama.cpp crashed ({signal_name}); try another llama-cpp-python version, or rebuild it with: "
               + REBUILD)
    else:
        why = "the process ended by a signal"
    return f"llama.cpp was killed by {signal_name} {what}: {why}"


def _child(fn: Callable, args: tuple, kwargs: dict, result_file: str) -> None:
    try:
        out = ("ok", fn(*args, **kwargs))
    except BaseException as e:  # noqa: BLE001 - handed to the parent, which raises it
        try:
            pickle.dumps(e)
            out = ("error", e)
        except Exception:  # noqa: BLE001 - an exception that cannot travel goes as text
            out = ("error", RuntimeError("".join(traceback.format_exception(e))))
    Path(result_file).write_bytes(pickle.dumps(out))


def run_native(fn: Callable, *args: Any, what: str, **kwargs: Any) -> Any:
    """Call `fn(*args, **kwargs)` in a fresh (spawned) Python process and return its result.

    `fn` and the arguments must be picklable (a module-level function). An exception raised in the child is raised
    here; a child ended by a signal raises `NativeCrash` with `crash_message(signal, what)`, and so does a child that
    exits without a result (os._exit), naming its exit code. Spawned, not forked: the parent's OpenMP and
    torch threads are not copied into a child that starts llama.cpp's own thread pool.
    """
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="kit-native-") as tmp:
        result_file = str(Path(tmp) / "result.pkl")
        proc = ctx.Process(target=_child, args=(fn, args, kwargs, result_file), daemon=True)
        proc.start()
        try:
            proc.join()
        except BaseException:  # Ctrl-C: do not leave the child running
            proc.kill()
            proc.join()
            raise
        code = proc.exitcode
        if code < 0:  # ended by a signal
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            raise NativeCrash(crash_message(name, what), name)
        if not Path(result_file).is_file():
            raise NativeCrash(f"llama.cpp's process exited with code {code} {what} and gave no result", None)
        status, value = pickle.loads(Path(result_file).read_bytes())
    if status == "error":
        raise value
    return value
