"""Answer every test question with the fine-tuned model (merged export or base + adapter), in batches.

    python -m eval.generate configs/quickstart.yaml
    python -m eval.generate configs/quickstart.yaml eval.splits=[train,test] eval.use_merged=false
    python -m eval.generate configs/quickstart.yaml --model base      # the untuned base, for comparison

Writes <eval dir>/predictions.jsonl (predictions-base.jsonl for the base), one row per question, appended as each
batch finishes; a rerun skips the rows already there. Greedy by default; <think> blocks are removed from
`prediction` according to model.thinking, and the raw text is kept in `raw_prediction`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from data_prep.build import load_rows
from kit.config import Config, KitError, parse_args, run_main
from kit.generation import generate_batched
from kit.models import load_model, load_tokenizer, pick_device, resolve
from sft.encode import generation_prompt, strip_think


def predictions_path(cfg: Config, which: str) -> Path:
    return cfg.eval_dir / ("predictions.jsonl" if which == "finetuned" else f"predictions-{which}.jsonl")


def eval_rows(cfg: Config) -> list[dict]:
    """Single-turn rows of the configured splits, each with its split name."""
    rows = []
    for split in cfg.eval.splits:
        path = cfg.data_dir / f"{split}.jsonl"
        if not path.is_file():
            raise KitError(f"{path}: not found; build the data first with `python -m data_prep.build CONFIG`")
        picked = [dict(r, split=split) for r in load_rows(path) if r.get("turns", 1) == 1]
        rows.extend(picked[: cfg.eval.max_rows] if cfg.eval.max_rows else picked)
    if not rows:
        raise KitError(f"no single-turn rows to answer in {cfg.data_dir} for eval.splits={cfg.eval.splits}")
    return rows


def model_source(cfg: Config, which: str) -> tuple[str, str | None]:
    """(model path, adapter path or None) to generate with; checks they exist before anything loads."""
    if which == "base":
        return resolve(cfg.model), None
    if cfg.eval.use_merged:
        if not (cfg.merged_dir / "config.json").is_file():
            raise KitError(f"{cfg.merged_dir}: no merged export here; run `python -m eval.merge CONFIG` first, or "
                           f"set eval.use_merged=false to generate with base + adapter")
        return str(cfg.merged_dir), None
    from eval.merge import check_adapter

    check_adapter(cfg.adapter_dir)
    return resolve(cfg.model), str(cfg.adapter_dir)


def load_for_generation(cfg: Config, which: str, device: str):
    path, adapter = model_source(cfg, which)
    tok = load_tokenizer(adapter or path, cfg.model.trust_remote_code)
    model = load_model(path, cfg.model, device)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model, tok, {"model": path, "adapter": adapter}


def _done_ids(path: Path, meta: dict, overwrite: bool) -> set[str]:
    """Ids already answered by the same model; a file from another model is an error, not silently mixed in."""
    meta_path = path.with_suffix(".meta.json")
    if not path.is_file():
        return set()
    if overwrite or not meta_path.is_file():
        path.unlink()
        meta_path.unlink(missing_ok=True)
        return set()
    old = json.loads(meta_path.read_text(encoding="utf-8"))
    if {k: old.get(k) for k in meta} != meta:
        raise KitError(f"{path}: holds predictions of another model ({old}); set eval.overwrite=true to replace "
                       f"them, or choose another eval.output_dir")
    done = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            done.add(json.loads(line)["id"])
        except (ValueError, KeyError):
            break  # a line cut by a crash: the rows from here on are answered again
    return done


def generate(cfg: Config, which: str = "finetuned") -> Path:
    """Returns the predictions file."""
    from tqdm.auto import tqdm

    rows = eval_rows(cfg)
    model_source(cfg, which)  # fail on a missing model before the data or the model load
    device = pick_device(cfg.train.device)
    if cfg.eval.backend == "vllm":
        raise KitError("eval.backend=vllm is not available in this version; use eval.backend=hf")
    out = predictions_path(cfg, which)
    model, tok, meta = load_for_generation(cfg, which, device)
    meta["max_new_tokens"] = cfg.eval.max_new_tokens
    meta["do_sample"] = cfg.eval.do_sample
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done_ids(out, meta, cfg.eval.overwrite)
    _rewrite_complete_lines(out, done)
    out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    todo = [r for r in rows if r["id"] not in done]
    if done:
        print(f"{out}: {len(done)} rows already answered, {len(todo)} to go")
    prompts = [generation_prompt(tok, r["messages"][:-1]) for r in todo]
    bar = tqdm(total=len(todo), desc=f"answering ({which})", unit="row")
    start = time.perf_counter()
    with out.open("a", encoding="utf-8") as f:
        def write(indices: list[int], answers: list[str]) -> None:
            for i, raw in zip(indices, answers):
                r = todo[i]
                pred = strip_think(raw) if cfg.model.thinking == "strip" else raw.strip()
                f.write(json.dumps({
                    "id": r["id"], "split": r["split"], "question": r["messages"][-2]["content"],
                    "answer": r["messages"][-1]["content"], "prediction": pred, "raw_prediction": raw,
                    "entity": r["entity"], "attribute": r["attribute"], "value": r["value"],
                    "expected": r["expected"], "template": r["template"],
                }, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(indices))

        generate_batched(model, tok, prompts, cfg.eval.batch_size, cfg.eval.max_new_tokens, cfg.eval.do_sample,
                         cfg.eval.temperature, cfg.eval.top_p, on_batch=write)
    bar.close()
    if todo:
        print(f"{len(todo)} answers in {time.perf_counter() - start:.1f} s "
              f"({len(todo) / (time.perf_counter() - start):.1f} rows/s)")
    return out


def _rewrite_complete_lines(path: Path, done: set[str]) -> None:
    """Drop a half-written last line left by a crash, so appending continues a valid JSONL file."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    good = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            break
        good.append(line)
    if len(good) != len(lines):
        path.write_text("".join(line + "\n" for line in good), encoding="utf-8")


def load_predictions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv, __doc__.splitlines()[0], extra=lambda p: p.add_argument(
        "--model", choices=["finetuned", "base"], default="finetuned", help="which model answers"))
    out = generate(cfg, args.model)
    print(f"predictions written to {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
