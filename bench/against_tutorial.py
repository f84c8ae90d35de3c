"""The kit against the tutorial's own pinned stack (../shared/tutorial_stack/: trl 0.16, peft 0.14, transformers
4.46), as a user waits for each: whole processes, launched one after the other, interleaved.

    bash ../shared/tutorial_stack/setup.sh                    # once: the tutorial's stack in its own venv (~3 min)
    python -m bench.against_tutorial train                    # 3 x (tutorial 20 steps, kit 40 steps): ~45 min
    python -m bench.against_tutorial train --knowledge 40     # the last pair becomes the time-to-knowledge pair
    python -m bench.against_tutorial eval --run runs/quickstart   # 3 x (tutorial's eval loop, kit's eval.run)

train: the same rows (the quickstart's training rows plus the base model's replay answers, which the kit trains on
too); the tutorial's recipe as written by ../shared/tutorial_stack/train.py (batch 2 x accumulation 8 = 16 rows a
step, bf16 autocast), the kit as `python -m sft.train configs/quickstart.yaml` with only train.max_steps set (8 rows
a step, so the same number of rows). Loop: the training loop's seconds and real (non-pad) tokens each side reports. Whole process: the
command's wall time, from launch to exit, fresh output dir (the kit builds its data and answers its replay prompts
each time, as a first run does). With --knowledge N, the last pair is the tutorial for N steps and the kit's whole
shipped run with every epoch's checkpoint kept; each checkpoint and the tutorial's adapter then answer the held-out
questions (greedy, batched, 48 new tokens) and the value match is counted: minutes from launch to >= 95%.
--tutorial-precision: `auto` (default) runs the tutorial's bf16 as written where the CPU multiplies bf16 faster than
fp32 (the kit's own rule, `kit.models.cpu_prefers_bf16`), and fp32 where it does not (without bf16 instructions torch
emulates bf16 matmuls ~40x slower than fp32, and the tutorial's first 2 steps did not finish in 15 min:
bench/RESULTS.md 2026-11-23; some CPUs with them multiply fp32 faster, 2026-12-02): the tutorial at its fastest.

eval: the tutorial's evaluation loop as written (bench/tutorial_eval.py, on its stack: one generate and one
BERTScore call per question, loading included) against `python -m eval.run configs/quickstart.yaml` with
eval.specificity=false eval.compare_base=false (the same work: answer the test questions, score them), both on the
kit's merged export of --run; then the kit's answers are checked against one `generate` call per prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIG = "configs/quickstart.yaml"
OUT = Path("runs/bench-tutorial")
STACK = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tutorial-stack"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "tutorial_stack"
TUTORIAL_ROWS_PER_STEP = 16


def stack() -> tuple[Path, Path]:
    python, model = STACK / "venv" / "bin" / "python", STACK / "smollm2"
    if not python.is_file() or not (model / "model.safetensors").is_file():
        raise SystemExit(f"the tutorial's stack is not built under {STACK}: run `bash {SHARED}/setup.sh` first")
    return python, model


def timed(cmd: list[str], log: Path, env: dict | None = None) -> tuple[float, str]:
    """Wall seconds of a command run to its end, and its stdout; stops the benchmark if it fails."""
    start = time.perf_counter()
    with log.open("w") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                   **(env or {})})
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {done.returncode}); its log: {log}")
    return wall, done.stdout


def kit_train(run: int, max_steps: int, keep_checkpoints: bool) -> dict:
    out = OUT / f"kit-{run}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "sft.train", CONFIG, f"output_dir={out}"]
    if max_steps > 0:
        cmd.append(f"train.max_steps={max_steps}")
    if keep_checkpoints:
        cmd.append("train.save_total_limit=null")
    start = time.time()
    wall, _ = timed(cmd, OUT / f"kit-{run}.log")
    m = json.loads((out / "metrics.json").read_text())
    tokens = max(h.get("num_tokens", 0) for h in m["log_history"])
    return {"side": "kit", "out": str(out), "start": start, "whole_s": wall, "loop_s": m["train_seconds"],
            "tokens": tokens, "rows": m["steps"] * 8 if max_steps > 0 else m["train_rows"] * m["epochs"]}


def tutorial_data() -> Path:
    """The rows the kit trains on (its train.jsonl and replay.jsonl, from the first kit run), for the tutorial."""
    src = next(p for p in sorted(OUT.glob("kit-*/data")) if (p / "replay.jsonl").is_file())
    dst = OUT / "tutorial-data"
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "train.jsonl").write_text((src / "train.jsonl").read_text() + (src / "replay.jsonl").read_text())
    shutil.copy(src / "test.jsonl", dst / "test.jsonl")
    return dst


def tutorial_bf16(choice: str) -> bool:
    from kit.models import cpu_prefers_bf16

    return choice == "bf16" or (choice == "auto" and cpu_prefers_bf16())


def tutorial_train(run: int, steps: int, data: Path, bf16: bool) -> dict:
    python, model = stack()
    out = OUT / f"tutorial-{run}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    wall, stdout = timed([str(python), str(SHARED / "train.py"), str(model), str(data), str(out), str(steps)],
                         OUT / f"tutorial-{run}.log", {"SEED_BF16": "1" if bf16 else "0"})
    r = json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])
    return {"side": "tutorial", "out": str(out), "whole_s": wall, "loop_s": r["seconds"], "tokens": r["tokens"],
            "rows": steps * TUTORIAL_ROWS_PER_STEP, "precision": "bf16" if bf16 else "fp32"}


def value_match_count(model_dir: str, tok_dir: str, adapter: str | None, test: Path) -> tuple[int, int]:
    """Held-out questions whose value is in the greedy answer (48 new tokens, batched)."""
    import torch
    from transformers import AutoModelForCausalLM

    from kit.chat import generation_prompt
    from kit.files import load_jsonl
    from kit.generation import generate_batched
    from kit.models import load_tokenizer
    from kit.specificity import value_matches

    tok = load_tokenizer(tok_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    rows = [r for r in load_jsonl(test) if r["turns"] == 1]
    answers = generate_batched(model.eval(), tok, [generation_prompt(tok, r["messages"][:-1]) for r in rows],
                               batch_size=128, max_new_tokens=48)
    return value_matches(rows, answers)


MERGE_TUTORIAL = """
import sys, torch
from transformers import AutoTokenizer, AutoModelForCausalLM
from peft import PeftModel
base, adapter, out = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(adapter)
model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
model.resize_token_embeddings(len(tok))
PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(out)
tok.save_pretrained(out)
"""


def knowledge(kit: dict, tut: dict, test: Path) -> list[str]:
    from kit.config import load_config
    from kit.models import resolve

    lines = ["", "time to knowledge (held-out value match, 120 questions; minutes from launch):"]
    base = resolve(load_config(CONFIG).model)
    for ckpt in sorted(Path(kit["out"], "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        minutes = ((ckpt / "trainer_state.json").stat().st_mtime - kit["start"]) / 60
        right, n = value_match_count(base, base, str(ckpt), test)
        epoch = json.loads((ckpt / "trainer_state.json").read_text())["epoch"]
        lines.append(f"  kit       {ckpt.name:16s} epoch {epoch:4.1f}  {minutes:5.1f} min  {right}/{n} "
                     f"({100 * right / n:.1f}%){'  >= 95%' if right >= 0.95 * n else ''}")
    python, model = stack()
    merged = Path(tut["out"]) / "merged"
    timed([str(python), "-c", MERGE_TUTORIAL, str(model), str(Path(tut["out"]) / "adapter"), str(merged)],
          Path(tut["out"]) / "merge.log")
    right, n = value_match_count(str(merged), str(merged), None, test)
    lines.append(f"  tutorial  stopped after {tut['rows'] // TUTORIAL_ROWS_PER_STEP} steps ({tut['rows']} rows) "
                 f"{tut['whole_s'] / 60:5.1f} min  {right}/{n} ({100 * right / n:.1f}%)")
    return lines


def train(args) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    stack()
    runs: list[dict] = []
    data = None
    bf16 = tutorial_bf16(args.tutorial_precision)
    print(f"tutorial's recipe in {'bf16 autocast, as written' if bf16 else 'fp32 (bf16 is emulated or slower here)'}",
          flush=True)
    for rep in range(args.repeats):
        last = args.knowledge and rep == args.repeats - 1
        kit = kit_train(rep, 0 if last else args.steps * TUTORIAL_ROWS_PER_STEP // 8, keep_checkpoints=last)
        data = data or tutorial_data()
        tut = tutorial_train(rep, args.knowledge if last else args.steps, data, bf16)
        for r in (tut, kit):
            runs.append(r)
            print(f"[{rep + 1}/{args.repeats}] {r['side']:8s} {r['rows']:5.0f} rows: loop {r['loop_s']:7.1f} s "
                  f"{r['tokens'] / r['loop_s']:6.1f} real tokens/s; whole process {r['whole_s']:7.1f} s "
                  f"{r['rows'] / r['whole_s']:5.2f} rows/s", flush=True)
    med = {side: {"tok": statistics.median(r["tokens"] / r["loop_s"] for r in runs if r["side"] == side),
                  "rows": statistics.median(r["rows"] / r["whole_s"] for r in runs if r["side"] == side)}
           for side in ("tutorial", "kit")}
    print(f"\nmedians of {args.repeats} interleaved runs:")
    print(f"  training loop, real tokens/s: tutorial {med['tutorial']['tok']:.1f}, kit {med['kit']['tok']:.1f} -> "
          f"{med['kit']['tok'] / med['tutorial']['tok']:.2f}x")
    print(f"  whole process, rows/s:        tutorial {med['tutorial']['rows']:.3f}, kit {med['kit']['rows']:.3f} -> "
          f"{med['kit']['rows'] / med['tutorial']['rows']:.2f}x")
    if args.knowledge:
        print("\n".join(knowledge(runs[-1], runs[-2], data / "test.jsonl")))
    (OUT / "train.json").write_text(json.dumps(runs, indent=2))
    return 0


def evaluate(args) -> int:
    python, model = stack()
    src = Path(args.run)
    if not (src / "merged" / "config.json").is_file() or not (src / "adapter").is_dir():
        raise SystemExit(f"{src}: no trained and merged quickstart; run `python -m sft.train {CONFIG}` and "
                         f"`python -m eval.merge {CONFIG}` first, or pass --run DIR")
    run = OUT / "eval-run"
    if not run.is_dir():
        for part in ("adapter", "merged", "data"):
            shutil.copytree(src / part, run / part)
    test = run / "data" / "test.jsonl"
    rows = sum(1 for line in test.open(encoding="utf-8") if json.loads(line)["turns"] == 1)
    res: dict[str, list[float]] = {"tutorial": [], "kit": []}
    for rep in range(args.repeats):
        csv = OUT / f"tutorial-eval-{rep}.csv"
        csv.unlink(missing_ok=True)
        wall, stdout = timed([str(python), "bench/tutorial_eval.py", str(run / "merged"), str(test), str(csv),
                              str(model), "6", str(model)], OUT / f"tutorial-eval-{rep}.log")
        res["tutorial"].append(wall)
        print(f"[{rep + 1}/{args.repeats}] tutorial loop {wall:6.1f} s  {stdout.strip()}", flush=True)
        shutil.rmtree(run / "eval", ignore_errors=True)
        wall, _ = timed([sys.executable, "-m", "eval.run", CONFIG, f"output_dir={run}", "eval.specificity=false",
                         "eval.compare_base=false"], OUT / f"kit-eval-{rep}.log")
        res["kit"].append(wall)
        print(f"[{rep + 1}/{args.repeats}] kit eval.run  {wall:6.1f} s", flush=True)
    t, k = statistics.median(res["tutorial"]), statistics.median(res["kit"])
    print(f"\n{rows} questions, loading included, medians of {args.repeats} interleaved runs: tutorial {t:.1f} s, "
          f"kit {k:.1f} s -> {t / k:.2f}x")

    import torch
    from transformers import AutoModelForCausalLM

    from kit.chat import generation_prompt
    from kit.files import load_jsonl
    from kit.generation import reference_greedy
    from kit.models import load_tokenizer

    tok = load_tokenizer(str(run / "merged"))
    m = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32).eval()
    test_rows = [r for r in load_jsonl(test) if r["turns"] == 1]
    single = reference_greedy(m, tok, [generation_prompt(tok, r["messages"][:-1]) for r in test_rows], 48)
    kit_answers = {p["id"]: p["raw_prediction"] for p in load_jsonl(run / "eval" / "predictions.jsonl")}
    same = sum(kit_answers[r["id"]].strip() == s.strip() for r, s in zip(test_rows, single))
    print(f"kit eval.run answers == one generate per prompt (48 new tokens): {same}/{len(test_rows)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("train")
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--steps", type=int, default=20, help="tutorial steps (16 rows each); the kit runs the same rows")
    t.add_argument("--knowledge", type=int, default=0, metavar="N",
                   help="last pair: the tutorial for N steps, the kit's whole shipped run, then value match")
    t.add_argument("--tutorial-precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 as written where the CPU multiplies bf16 faster than fp32, else fp32 (its fastest)")
    e = sub.add_parser("eval")
    e.add_argument("--repeats", type=int, default=3)
    e.add_argument("--run", default="runs/quickstart", help="a trained and merged quickstart output_dir")
    args = parser.parse_args(argv)
    return train(args) if args.mode == "train" else evaluate(args)


if __name__ == "__main__":
    raise SystemExit(main())
