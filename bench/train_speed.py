"""Training speed: the kit's settings vs the tutorial's recipe, same model, same examples, one run.

    python -m bench.train_speed                      # speed: ~6 minutes on 2 CPU cores
    python -m bench.train_speed --examples 64 --repeats 3
    python -m bench.train_speed --accuracy           # also train each recipe on the quickstart's full budget and
                                                     # count held-out questions answered right (~25 minutes)

The tutorial's recipe (../shared/seeds/003): batch 2 x accumulation 8, gradient checkpointing, bf16, LoRA r=32 on
q/k/v/o + embed_tokens (+ lm_head, which TRL 1.16 refuses), completion-only loss, TRL's default LM head.
The kit's: configs/quickstart.yaml.
Both see the same rows in the same order; the recipes run interleaved and the medians are compared, since machines
here are noisy. Prints real (non-pad) tokens/s, their ratio, and model FLOPs utilisation against a matmul peak
measured here.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from data_prep.build import ensure_built
from kit.config import load_config
from kit.files import load_jsonl
from kit.models import load_model, load_tokenizer, resolve, set_threads
from sft.encode import encode_rows
from sft.trainer_config import build_lora_config, build_sft_config, score_only_supervised_positions


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n matmul on this machine's threads (best of `repeats`)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def tutorial_cfg(cfg):
    """The tutorial's hyperparameters on the quickstart model."""
    train = replace(cfg.train, per_device_train_batch_size=2, gradient_accumulation_steps=8,
                    gradient_checkpointing=True, precision="bf16", learning_rate=5e-5, lr_scheduler_type="cosine",
                    eval_strategy="no", save_strategy="no", group_by_length=False, packing=False)
    lora = replace(cfg.lora, r=32, lora_alpha=64, lora_dropout=0.05,
                   # TRL 1.16 refuses a LoRA on lm_head (its fused head reads lm_head.weight directly), so the
                   # tutorial's lm_head target is dropped; SmolLM2 ties lm_head to embed_tokens, which is kept.
                   target_modules=["embed_tokens", "q_proj", "k_proj", "v_proj", "o_proj"])
    return replace(cfg, train=train, lora=lora)


def kit_cfg(cfg):
    return replace(cfg, train=replace(cfg.train, eval_strategy="no", save_strategy="no"))


class CompactHead:
    """Switch the kit's supervised-positions-only LM head on or off (the tutorial ran TRL's default)."""

    def __init__(self):
        import trl.trainer.utils as trl_utils

        self.module = trl_utils
        self.original = trl_utils._use_triton
        score_only_supervised_positions("cpu")
        self.patched = trl_utils._use_triton

    def set(self, on: bool) -> None:
        self.module._use_triton = self.patched if on else self.original


def run_once(cfg, model_path, tok, encoded, epochs: float, out_dir: str) -> tuple[float, object]:
    """Seconds to train on `encoded` for `epochs`, and the trained model."""
    from datasets import Dataset
    from trl import SFTTrainer

    model = load_model(model_path, cfg.model, "cpu")
    cfg = replace(cfg, output_dir=out_dir, train=replace(cfg.train, num_train_epochs=epochs, max_steps=-1,
                                                          logging_steps=10**6))
    precision = cfg.train.precision if cfg.train.precision != "auto" else "fp32"
    trainer = SFTTrainer(model=model, args=build_sft_config(cfg, "cpu", precision),
                         train_dataset=Dataset.from_list(encoded), processing_class=tok,
                         peft_config=build_lora_config(cfg.lora))
    trainer.args.disable_tqdm = True
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start, trainer.model


def value_match_count(model, tok, rows) -> tuple[int, int]:
    from kit.chat import generation_prompt
    from kit.generation import generate_batched
    from kit.specificity import value_matches

    prompts = [generation_prompt(tok, r["messages"][:-1]) for r in rows]
    answers = generate_batched(model, tok, prompts, batch_size=32, max_new_tokens=48)
    return value_matches(rows, answers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--examples", type=int, default=96, help="train rows each recipe sees (speed mode)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--accuracy", action="store_true",
                        help="train each recipe on the config's full budget and count held-out answers right")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, ["output_dir=runs/bench"])
    set_threads(cfg.train.threads, "cpu")
    data_dir = ensure_built(cfg)
    model_path = resolve(cfg.model)
    tok = load_tokenizer(model_path)
    rows = load_jsonl(data_dir / "train.jsonl")
    test = [r for r in load_jsonl(data_dir / "test.jsonl") if r["turns"] == 1]
    head = CompactHead()
    recipes = {"tutorial": tutorial_cfg(cfg), "kit": kit_cfg(cfg)}

    if args.accuracy:
        encoded = encode_rows(tok, rows, cfg.train.max_length, cfg.model.thinking, "train")
        epochs, n_repeats = cfg.train.num_train_epochs, 1
    else:
        encoded = encode_rows(tok, rows[: args.examples], cfg.train.max_length, cfg.model.thinking, "train")
        epochs, n_repeats = 1.0, args.repeats
    tokens = sum(len(e["input_ids"]) for e in encoded) * epochs
    print(f"{len(encoded)} rows x {epochs:g} epochs = {tokens:.0f} real tokens per recipe; {torch.get_num_threads()} "
          f"threads", flush=True)

    times: dict[str, list[float]] = {name: [] for name in recipes}
    right: dict[str, tuple[int, int]] = {}
    for rep in range(n_repeats):
        for name, rcfg in recipes.items():
            head.set(name == "kit")
            seconds, model = run_once(rcfg, model_path, tok, encoded, epochs, f"runs/bench/{name}")
            times[name].append(seconds)
            print(f"  [{rep + 1}/{n_repeats}] {name:8s} {tokens / seconds:7.1f} tokens/s ({seconds:.1f} s)", flush=True)
            if args.accuracy:
                right[name] = value_match_count(model, tok, test)
    head.set(True)

    from transformers import AutoConfig
    from trl.trainer.utils import compute_flops_per_token

    seq = statistics.median(len(e["input_ids"]) for e in encoded)
    flops_per_token = compute_flops_per_token(AutoConfig.from_pretrained(model_path), int(seq))
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    peak = max(peak32, peak16)
    # TRL's convention counts 6N FLOPs per token (forward, input gradients, weight gradients); LoRA skips the base
    # weights' gradients, so ~4N is what it really computes. Both are shown against the best matmul rate here.
    lora_flops = flops_per_token * 4 / 6
    print(f"\nmatmul peak here: {peak32 / 1e9:.0f} GFLOP/s fp32, {peak16 / 1e9:.0f} GFLOP/s bf16 "
          f"(2048x2048, {torch.get_num_threads()} threads); model FLOPs/token {flops_per_token / 1e9:.2f} GFLOP "
          f"(6N + attention, TRL's convention)")
    print(f"{'recipe':10s} {'tokens/s (median)':>18s} {'MFU (6N)':>10s} {'MFU (4N, LoRA)':>15s}"
          + ("  held-out right" if args.accuracy else ""))
    med = {name: tokens / statistics.median(t) for name, t in times.items()}
    for name in recipes:
        line = (f"{name:10s} {med[name]:18.1f} {100 * med[name] * flops_per_token / peak:9.1f}% "
                f"{100 * med[name] * lora_flops / peak:14.1f}%")
        if name in right:
            line += f"  {right[name][0]}/{right[name][1]}"
        print(line)
    print(f"\nkit / tutorial speed: {med['kit'] / med['tutorial']:.2f}x (medians of {n_repeats} interleaved runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
