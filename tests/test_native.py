"""eval.native.run_native: native code runs in a child process, and its crash is a message, not the end of the
kit command (issue 33: llama.cpp killed by SIGILL on a CPU with AMX)."""

import signal

import pytest

from eval.native import NativeCrash, run_native
from tests import native_crash


def test_the_childs_result_comes_back():
    assert run_native(native_crash.double, 21, what="doubling") == 42


def test_an_exception_in_the_child_is_raised_as_itself():
    with pytest.raises(ValueError, match="^bad gguf$"):
        run_native(native_crash.raise_value_error, "bad gguf", what="reading x.gguf")


def test_sigill_names_the_file_and_the_rebuild():
    with pytest.raises(NativeCrash, match=r"^llama\.cpp was killed by SIGILL reading run-q8_0\.gguf: your "
                                          r"llama-cpp-python build uses instructions this machine cannot run .*"
                                          r"rebuild it with: CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" "
                                          r"pip install --force-reinstall --no-cache-dir") as e:
        run_native(native_crash.die, signal.SIGILL, what="reading run-q8_0.gguf")
    assert e.value.signal_name == "SIGILL"


def test_sigkill_says_out_of_memory_is_the_usual_cause():
    with pytest.raises(NativeCrash, match=r"killed by SIGKILL reading run-f16\.gguf: .*out-of-memory killer"):
        run_native(native_crash.die, signal.SIGKILL, what="reading run-f16.gguf")


def test_a_child_that_exits_without_a_result_is_named_with_its_code():
    with pytest.raises(NativeCrash, match=r"exited with code 3 reading run-f16\.gguf and gave no result"):
        run_native(native_crash.exit_without_result, 3, what="reading run-f16.gguf")


def test_the_installed_llama_cpp_is_the_portable_build():
    """The README's install builds llama.cpp with GGML_NATIVE=OFF: no AVX-512, no AMX compiled in, so it runs on
    any AVX2 machine, AMX CPUs without AMX enabled included. A build taken from an old pip cache fails here, not
    with SIGILL in the middle of eval.export."""
    import platform

    try:
        import llama_cpp
    except ImportError:  # fail, never skip: CI installs it (.ci/run)
        pytest.fail("llama-cpp-python is not installed: CMAKE_ARGS=-DGGML_NATIVE=OFF pip install -e '.[dev]'",
                    pytrace=False)
    info = llama_cpp.llama_print_system_info().decode()
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert "AVX2 = 1" in info, info
        native = [f for f in ("AVX512", "AMX") if f in info]
        assert not native, (f"llama-cpp-python was built with {native} ({info}); rebuild it portable: CMAKE_ARGS="
                            f"-DGGML_NATIVE=OFF pip install --force-reinstall --no-cache-dir --no-deps "
                            f"llama-cpp-python")
