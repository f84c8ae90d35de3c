"""Merge the trained LoRA adapter into a 16-bit copy of the base model and export a self-contained directory.

    python -m eval.merge configs/quickstart.yaml
    python -m eval.merge configs/7b.yaml eval.overwrite=true

The export holds sharded safetensors, the tokenizer and chat template, and a generation config whose end tokens
stop generation. Before writing, the merged model's logits are compared with base + adapter on the first test
prompts (`check_logits`); the result is written beside the weights as merge_check.json, and a failed check writes
nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from kit.chat import generation_prompt
from kit.config import Config, KitError, parse_args, run_main
from kit.files import atomic_dir, load_jsonl
from kit.generation import stop_token_ids
from kit.models import load_tokenizer, pick_device, resolve, set_threads

# The check's arithmetic, the same on every run and machine: float32 weights and matmuls (no TF32 or bf16 inside),
# eager attention (plain matmul and softmax, whatever SDPA or flash kernels the platform has), prompts one at a time.
CHECK_ATTENTION = "eager"


def check_adapter(adapter_dir: Path) -> None:
    if not (adapter_dir / "adapter_config.json").is_file():
        raise KitError(f"{adapter_dir}: no trained adapter here (adapter_config.json missing); train first with "
                       f"`python -m sft.train CONFIG`, or set eval.adapter_dir")


def check_prompts(cfg: Config, tok, n: int = 4) -> list[str]:
    """The first `n` questions of test.jsonl in file order (the same every run), or one greeting without data."""
    test = cfg.data_dir / "test.jsonl"
    rows = load_jsonl(test)[:n] if test.is_file() else []
    messages = [r["messages"][:-1] for r in rows] or [[{"role": "user", "content": "Hello, who are you?"}]]
    return [generation_prompt(tok, m) for m in messages]


def logits_for(model, tok, prompts: list[str]):
    """Each prompt's logits at every position, one prompt at a time (no padding), matmuls in full float32."""
    import torch

    device = next(model.parameters()).device
    out = []
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.no_grad():
            for p in prompts:
                ids = tok(p, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
                out.append(model(input_ids=ids, use_cache=False).logits[0].float().cpu())
    finally:
        torch.set_float32_matmul_precision(precision)
    return out


def max_diff(a: list, b: list) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def check_logits(adapted: list, merged: list, rtol: float) -> dict:
    """Merged logits against base + adapter's, relative to the largest |logit| of base + adapter: float32 rounding
    (merged W + BA against x W + x B A) scales with the logits, so an absolute bound is met or missed by chance on
    one model and means nothing on another. A module left out of the merge moves the logits by far more than
    `rtol` of their scale. Raises when the difference is over `rtol` of it."""
    diff = max_diff(adapted, merged)
    scale = max(float(x.abs().max()) for x in adapted)
    check = {"float32_max_abs_logit_diff": diff, "max_abs_logit": scale,
             "relative_diff": diff / scale if scale else 0.0, "rtol": rtol, "passed": diff <= rtol * scale}
    if not check["passed"]:
        raise KitError(f"merge check failed: merged and base+adapter logits differ by {diff:.3g}, "
                       f"{check['relative_diff']:.2g} of the largest |logit| ({scale:.3g}) > eval.merge_rtol={rtol} "
                       f"on {len(adapted)} prompts; nothing was exported. Check that eval.adapter_dir was trained on "
                       f"model.name_or_path; if it was, the merge is wrong: please report it with this message")
    return check


def merge(cfg: Config) -> Path:
    """Returns the export directory."""
    from kit.lock import run_lock

    with run_lock(cfg, "eval.merge"):
        return _merge(cfg)


def _merge(cfg: Config) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir, out = cfg.adapter_dir, cfg.merged_dir
    check_adapter(adapter_dir)
    if out.exists() and any(out.iterdir()) and not cfg.eval.overwrite:
        raise KitError(f"{out}: an export already exists; set eval.overwrite=true to replace it, or eval.merged_dir")
    device = pick_device(cfg.train.device)
    set_threads(cfg.train.threads, device)
    base_path = resolve(cfg.model)
    tok = load_tokenizer(str(adapter_dir), cfg.model.trust_remote_code)
    prompts = check_prompts(cfg, tok)

    # Always merge into an unquantised copy (never into a 4-bit base), in float32 for the check.
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, attn_implementation=CHECK_ATTENTION,
                                                trust_remote_code=cfg.model.trust_remote_code).to(device)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    before = logits_for(model, tok, prompts)
    merged = model.merge_and_unload()
    check = check_logits(before, logits_for(merged, tok, prompts), cfg.eval.merge_rtol)
    export_dtype = getattr(torch, cfg.eval.merge_dtype)
    merged = merged.to(export_dtype)
    exported = logits_for(merged, tok, prompts)
    agree = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(before, exported))
    positions = sum(x.shape[0] for x in before)
    check = {
        "prompts": len(prompts),
        "positions": positions,
        "attention": CHECK_ATTENTION,
        **check,
        "export_dtype": cfg.eval.merge_dtype,
        "export_max_abs_logit_diff": max_diff(before, exported),
        "export_argmax_agreement": agree / positions,
        "base": cfg.model.name_or_path,
        "adapter": str(adapter_dir),
    }

    stops = stop_token_ids(tok, merged)
    merged.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    merged.generation_config.pad_token_id = tok.pad_token_id
    with atomic_dir(out) as tmp:  # an existing export is swapped for the new one in one step, never removed first
        merged.save_pretrained(tmp, max_shard_size="2GB")
        tok.save_pretrained(tmp)
        (tmp / "merge_check.json").write_text(json.dumps(check, indent=2) + "\n", encoding="utf-8")
    print(f"merge check: max |logit diff| {check['float32_max_abs_logit_diff']:.2e} = "
          f"{check['relative_diff']:.1e} of the largest |logit| (float32, eval.merge_rtol {cfg.eval.merge_rtol}); "
          f"{cfg.eval.merge_dtype} export agrees on {100 * check['export_argmax_agreement']:.1f}% of next-token "
          f"argmaxes")
    return out


def main(argv: list[str] | None = None) -> int:
    _, cfg = parse_args(argv, __doc__.splitlines()[0])
    out = merge(cfg)
    print(f"merged model exported to {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
