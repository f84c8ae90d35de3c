"""The kit's `lora` and `train` sections as PEFT's LoraConfig and TRL's SFTConfig, and the precision and attention a
run trains with."""

from __future__ import annotations

import dataclasses

from kit.config import Config, LoraConfig
from kit.models import cpu_prefers_bf16


def resolve_precision(cfg: Config, device: str) -> str:
    """fp32 / bf16 / fp16. On CPUs, bf16 where its matmuls run at least BF16_MIN_SPEEDUP times as fast as fp32's,
    measured (`kit.models.cpu_prefers_bf16`): the quickstart's step runs faster there (with eager attention,
    `training_attention`); elsewhere fp32, since torch emulates bf16 on CPUs without bf16 instructions (far slower) and
    some CPUs with them multiply fp32 faster (bench/RESULTS.md, 2026-11-23, 2026-11-30, 2026-12-02)."""
    p = cfg.train.precision
    if p != "auto":
        return p
    import torch

    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_prefers_bf16() else "fp32"


def training_attention(cfg: Config, device: str, precision: str) -> str | None:
    """The attention the model trains with: the user's model.attn_implementation, else eager for bf16 on a CPU (torch's
    CPU SDPA backward in bf16 is slow: the quickstart's forward + backward gained less over fp32 with SDPA than with
    eager; bench/RESULTS.md 2026-11-30), else the model's default. Eager holds a rows x length x length score matrix
    per layer, which for CPU-sized rows (train.max_length <= 1024) is small."""
    if cfg.model.attn_implementation:
        return cfg.model.attn_implementation
    if device == "cpu" and precision == "bf16" and cfg.train.max_length <= 1024 and not cfg.train.packing:
        return "eager"
    return None


def build_lora_config(lora: LoraConfig):
    """The one place the kit's `lora` section becomes a peft.LoraConfig: field by field, under the same names."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(**{f.name: getattr(lora, f.name) for f in dataclasses.fields(lora)}, task_type="CAUSAL_LM")


# How the `train` section reaches trl.SFTConfig. Fields with the same name in both pass as they are; these are the
# exceptions, written once: the kit's own fields, and those TRL takes under another name or form.
KIT_ONLY_TRAIN_FIELDS = frozenset({"resume", "threads", "device", "precision", "show_examples", "share_prefix",
                                   "compile_layers", "check_strategy", "check_steps", "check_probes", "check_names",
                                   "stop_at", "early_stopping_patience"})


RENAMED_TRAIN_FIELDS = {
    "warmup_ratio": lambda v: {"warmup_steps": v},  # transformers 5: a float < 1 is a fraction of the total steps
    "group_by_length": lambda v: {"train_sampling_strategy": "group_by_length" if v else "random"},
    "save_steps": lambda v: {"save_steps": v or 500},  # unused unless save_strategy is "steps", which requires it
}


def build_sft_config(cfg: Config, device: str = "cpu", precision: str | None = None):
    """The one place the kit's `train` section becomes a trl.SFTConfig."""
    from trl import SFTConfig

    t = cfg.train
    precision = precision or resolve_precision(cfg, device)
    kwargs = {}
    for f in dataclasses.fields(t):
        value = getattr(t, f.name)
        if f.name in RENAMED_TRAIN_FIELDS:
            kwargs.update(RENAMED_TRAIN_FIELDS[f.name](value))
        elif f.name not in KIT_ONLY_TRAIN_FIELDS:
            kwargs[f.name] = value
    return SFTConfig(
        **kwargs,
        output_dir=str(cfg.checkpoints_dir),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        logging_first_step=True,
        report_to="none",
        push_to_hub=False,
        # The kit tokenises and masks itself (sft.encode), and has checked every row fits max_length with something
        # supervised: TRL's own pass over the rows (truncate, drop) would only cost time on a large set. Packing
        # still needs it.
        truncation_mode="keep_start",
        dataset_kwargs=None if t.packing else {"skip_prepare_dataset": True},
        dataset_num_proc=None,
        shuffle_dataset=False,
    )


def score_only_supervised_positions(device: str) -> None:
    """Make TRL's fused LM head project only the supervised positions on CPU, as it already does on GPUs.

    TRL 1.16 scores every position off Triton devices, to keep tile shapes fixed for compilers (Neuron); eager CPU
    has no compiler to please, and answers are a small share of the tokens, so this saves much of the step time there
    (bench/train_speed.py measures it). A private switch: if TRL renames it, training stays correct, only slower."""
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if device == "cpu" and original is not None and not getattr(original, "_kit_patched", False):
        def use_compact(dev, _original=original):
            return dev.type == "cpu" or _original(dev)

        use_compact._kit_patched = True
        trl_utils._use_triton = use_compact
