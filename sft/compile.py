"""Regional compilation of the training step: `torch.compile` of each decoder layer's MLP and norms.

On a CPU in bf16 the quickstart's step is made of thousands of small operations (~3,300 matrix products, ~6,800 dtype
casts and ~2,700 elementwise products a step by torch.profiler; bench/RESULTS.md), not of arithmetic. Inductor fuses
the elementwise work around the matrix products. Compiling the whole model recompiles for every padded batch length
and takes minutes (bench/RESULTS.md, 2026-12-01 sixth session); compiling one repeated block with dynamic shapes
compiles its code once for all layers and lengths: PyTorch's "regional compilation" recipe
(https://docs.pytorch.org/tutorials/recipes/regional_compilation.html). The attention stays eager: the shared prefix
(sft/prefix.py) hands it a key/value cache whose per-layer state would make dynamo compile each layer apart.

Only while gradients are on: the kit's own answers during training (replay rows, knowledge checks, examples) run the
eager modules, so they are the answers eval.run gets from the saved adapter.

Measured (bench/RESULTS.md, 2026-12-02, 2-core Xeon with AMX): ~1.1x a training step in bf16, none in fp32 (0.96x),
~20 s of compiling on a first run. Off by default (`train.compile_layers`): fused kernels round differently, and on
the quickstart that moved its shipped seed off the epoch-3 stop of train.stop_at (5 epochs instead of 3).
"""

from __future__ import annotations

from kit.config import Config, KitError

# The parts of a transformers decoder layer (Llama, Qwen2, Mistral, SmolLM...) compiled: names of its children.
COMPILED_PARTS = ("mlp", "input_layernorm", "post_attention_layernorm")


def cpp_compiler() -> str | None:
    """The C++ compiler torch's inductor builds CPU kernels with (None when there is none)."""
    from torch._inductor import exc
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        return get_cpp_compiler()
    except (exc.InvalidCxxCompiler, OSError):
        return None


def use_compile(cfg: Config, device: str) -> bool:
    """Whether the run compiles its decoder layers (`train.compile_layers`). Raises KitError, before the model loads,
    on a CPU without the C++ compiler inductor needs."""
    if not cfg.train.compile_layers:
        return False
    if device == "cpu" and cpp_compiler() is None:
        raise KitError("train.compile_layers=true: torch compiles CPU kernels with a C++ compiler and none was found "
                       "(g++ or clang++ on PATH, or the CXX variable); install one (Debian: apt install g++) or set "
                       "train.compile_layers=false")
    return True


def compile_layers(model) -> int:
    """Compile, in place, the `COMPILED_PARTS` of every decoder layer of `model` (a PEFT or transformers model) with
    dynamic shapes, used only while gradients are on. Returns how many modules were compiled (0: no decoder layer of
    the expected shape found; the model trains eager)."""
    import torch

    parts = layer_parts(model)
    for part in parts:
        part.forward = _when_training(part.forward, torch.compile(part.forward, dynamic=True))
    return len(parts)


def layer_parts(model) -> list:
    """The `COMPILED_PARTS` modules of every module of `model` that has all of them (its decoder layers), in order."""
    layers = [m for m in model.modules() if all(getattr(m, n, None) is not None for n in COMPILED_PARTS)]
    return [getattr(layer, name) for layer in layers for name in COMPILED_PARTS]


def _when_training(eager, compiled):
    import torch

    def forward(*args, **kwargs):
        return (compiled if torch.is_grad_enabled() else eager)(*args, **kwargs)

    return forward
