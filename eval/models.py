"""Which model answers in eval (merged export, or base + adapter, or the base), and loading it for generation."""

from __future__ import annotations

from typing import NamedTuple

from eval.merge import check_adapter
from kit.config import Config, KitError
from kit.models import load_model, load_tokenizer, resolve


class ModelSource(NamedTuple):
    path: str  # what from_pretrained loads
    adapter: str | None  # a LoRA adapter put on top of it, or None
    answered_by: str  # in words, for the console and the predictions' meta


def model_source(cfg: Config, which: str) -> ModelSource:
    """The model that answers, by one rule for every entry point that answers (eval.generate, eval.chat, eval.app):
    the merged export when there is one, else base + adapter, unless eval.use_merged says which. Checks that it
    exists before anything loads: raises KitError naming what is missing and the command that makes it."""
    if which == "base":
        return ModelSource(resolve(cfg.model), None, f"the base model {cfg.model.name_or_path}")
    merged = (cfg.merged_dir / "config.json").is_file()
    if cfg.eval.use_merged and not merged:
        raise KitError(f"{cfg.merged_dir}: no merged export here, and eval.use_merged=true asks for one; run "
                       f"`python -m eval.merge CONFIG` first, or leave eval.use_merged unset to answer with base + "
                       f"adapter when there is no export")
    if merged and cfg.eval.use_merged is not False:
        return ModelSource(str(cfg.merged_dir), None, f"the merged export {cfg.merged_dir}")
    if not merged and not (cfg.adapter_dir / "adapter_config.json").is_file():
        raise KitError(f"no fine-tuned model: no merged export in {cfg.merged_dir} and no trained adapter in "
                       f"{cfg.adapter_dir}; train first with `python -m sft.train CONFIG`, or set eval.adapter_dir")
    check_adapter(cfg.adapter_dir)
    why = ("eval.use_merged=false" if cfg.eval.use_merged is False
           else f"no merged export in {cfg.merged_dir} (`python -m eval.merge CONFIG` makes one)")
    return ModelSource(resolve(cfg.model), str(cfg.adapter_dir),
                       f"base {cfg.model.name_or_path} + adapter {cfg.adapter_dir}: {why}")


def load_for_generation(cfg: Config, path: str, adapter: str | None, device: str):
    """(model in eval mode, tokenizer) for a `model_source`: the tokenizer saved with the adapter when there is one
    (it carries the chat template the run trained with), the weights from `path`, the adapter on top, unmerged."""
    tok = load_tokenizer(adapter or path, cfg.model.trust_remote_code)
    model = load_model(path, cfg.model, device)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model, tok
