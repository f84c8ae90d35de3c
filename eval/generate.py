"""Answer every test question with the fine-tuned model (merged export or base + adapter), in batches.

    python -m eval.generate configs/quickstart.yaml
    python -m eval.generate configs/quickstart.yaml eval.splits=[train,test] eval.use_merged=false
    python -m eval.generate configs/quickstart.yaml --model base      # the untuned base, for comparison

The merged export answers when there is one, else base + adapter (`eval.models.model_source`: eval.chat and eval.app follow
the same rule); the console and predictions.meta.json say which. Writes <eval dir>/predictions.jsonl
(predictions-base.jsonl for the base), one row per question, appended as each batch finishes; a rerun skips the
rows already there. Greedy by default; <think> blocks are removed from `prediction` according to model.thinking,
and the raw text is kept in `raw_prediction`.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from eval.models import load_for_generation, model_source
from eval.questions import iter_eval_rows
from kit.chat import final_answer, generation_prompt, opens_think
from kit.config import Config, KitError, parse_args, run_main
from kit.files import atomic_file, iter_jsonl, write_text_atomic
from kit.generation import generate_batched
from kit.models import load_tokenizer, pick_device, process_state, set_threads
from kit.rows import question_of

# Rows are read, answered and written this many at a time: memory stays bounded however large the test set is.
CHUNK_ROWS = 4096


# What makes two predictions files answers of the same model (the meta's other keys only describe it).
SAME_MODEL = ("model", "adapter", "max_new_tokens", "do_sample")


def _prepare_output(out: Path, meta: dict, overwrite: bool) -> None:
    """Keep earlier rows of the same model (resume), refuse those of another, drop a line cut by a crash."""
    meta_path = out.with_suffix(".meta.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    _fold_shards(out)
    if out.is_file() and (overwrite or not meta_path.is_file()):
        out.unlink()
    elif out.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if any(old.get(k) != meta.get(k) for k in SAME_MODEL):
            raise KitError(f"{out}: holds predictions of another model ({old}); set eval.overwrite=true to "
                           f"replace them, or choose another eval.output_dir")
        _rewrite_complete_lines(out)
    write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")


def generate(cfg: Config, which: str = "finetuned") -> Path:
    """Returns the predictions file."""
    from kit.lock import run_lock

    with run_lock(cfg, f"eval.generate --model {which}"):
        return _generate(cfg, which)


def _generate(cfg: Config, which: str) -> Path:
    from tqdm.auto import tqdm

    rows = iter_eval_rows(cfg)
    path, adapter, answered_by = model_source(cfg, which)  # fail on a missing model before anything loads
    if cfg.eval.backend == "vllm":
        check_vllm()
        print(f"answering ({which}) with {answered_by}")
        return generate_with_vllm(cfg, which, list(rows), path, adapter, answered_by)
    device = pick_device(cfg.train.device)
    set_threads(cfg.train.threads, device)
    state = process_state(device)  # under `accelerate launch` / torchrun, each process answers its share
    out = cfg.predictions_file(which)
    meta = {"model": path, "adapter": adapter, "max_new_tokens": cfg.eval.max_new_tokens,
            "do_sample": cfg.eval.do_sample, "answered_by": answered_by}
    if state.is_main_process:
        print(f"answering ({which}) with {answered_by}")
        _prepare_output(out, meta, cfg.eval.overwrite)
    state.wait_for_everyone()
    model, tok = load_for_generation(cfg, path, adapter, device)
    done = {r["id"] for r in iter_jsonl(out)} if out.is_file() else set()
    if done and state.is_main_process:
        print(f"{out}: {len(done)} rows already answered; answering the rest")
    target = out if state.num_processes == 1 else _shard(out, state.process_index)
    bar = tqdm(desc=f"answering ({which})", unit="row", disable=not state.is_local_main_process)
    order: list[str] = []  # row ids in data order: the file is put in this order at the end
    answered = 0
    start = time.perf_counter()
    with target.open("a", encoding="utf-8") as f:
        for chunk in _batches(rows, CHUNK_ROWS):
            order += [r["id"] for r in chunk]
            todo = [r for r in chunk if r["id"] not in done]
            with state.split_between_processes(list(range(len(todo)))) as share:
                mine = [todo[i] for i in share]
            prompts = [generation_prompt(tok, r["messages"][:-1]) for r in mine]

            def write(indices: list[int], answers: list[str], mine=mine, prompts=prompts) -> None:
                for i, raw in zip(indices, answers):
                    row = prediction_row(mine[i], raw, cfg.model.thinking, opens_think(prompts[i]))
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                bar.update(len(indices))

            if prompts:
                generate_batched(model, tok, prompts, cfg.eval.batch_size, cfg.eval.max_new_tokens, cfg.eval.do_sample,
                                 cfg.eval.temperature, cfg.eval.top_p, on_batch=write)
            answered += len(todo)
    bar.close()
    elapsed = time.perf_counter() - start
    state.wait_for_everyone()
    if state.is_main_process:
        _fold_shards(out)
        _in_row_order(out, order)
        if answered:
            print(f"{answered} answers in {elapsed:.1f} s ({answered / elapsed:.1f} rows/s, "
                  f"{state.num_processes} process(es))")
    state.wait_for_everyone()
    return out


def _batches(items: Iterable[dict], n: int) -> Iterator[list[dict]]:
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch


# ---------------------------------------------------------------------------------------------------------------------
# vLLM: the same prompts (token ids from the same chat template), stop tokens and think handling as the hf path.

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def check_vllm() -> None:
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None:
        raise KitError("eval.backend=vllm: vLLM is not installed (pip install vllm, on a machine with a CUDA GPU); "
                       "or use eval.backend=hf")
    if not torch.cuda.is_available():
        raise KitError("eval.backend=vllm needs a CUDA GPU and none is visible; use eval.backend=hf")


def vllm_plan(cfg: Config, tok, rows: list[dict], adapter: str | None) -> dict:
    """Everything vLLM is given, computed without vLLM: prompt token ids, sampling and LoRA settings."""
    from kit.generation import stop_token_ids

    prompts = [tok(generation_prompt(tok, r["messages"][:-1]), add_special_tokens=False)["input_ids"] for r in rows]
    sampling = {"max_tokens": cfg.eval.max_new_tokens, "stop_token_ids": stop_token_ids(tok),
                "skip_special_tokens": True,
                "temperature": cfg.eval.temperature if cfg.eval.do_sample else 0.0,
                "top_p": cfg.eval.top_p if cfg.eval.do_sample else 1.0}
    plan = {"prompt_token_ids": prompts, "sampling": sampling, "enable_lora": adapter is not None}
    if adapter:
        r = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))["r"]
        fits = [k for k in VLLM_LORA_RANKS if k >= r]
        if not fits:
            raise KitError(f"{adapter}: LoRA rank {r} is above what vLLM serves ({VLLM_LORA_RANKS[-1]}); "
                           f"merge it (eval.use_merged=true) instead")
        plan.update(max_lora_rank=fits[0], adapter=adapter)
    return plan


def generate_with_vllm(cfg: Config, which: str, rows: list[dict], path: str, adapter: str | None,
                       answered_by: str) -> Path:  # pragma: no cover - needs a GPU
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    tok = load_tokenizer(adapter or path, cfg.model.trust_remote_code)
    plan = vllm_plan(cfg, tok, rows, adapter)
    kwargs = {"enable_lora": plan["enable_lora"]}
    if adapter:
        kwargs["max_lora_rank"] = plan["max_lora_rank"]
    llm = LLM(model=path, tokenizer=adapter or path, dtype=cfg.model.dtype, seed=cfg.train.seed, **kwargs)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in plan["prompt_token_ids"]],
                           SamplingParams(**plan["sampling"]),
                           lora_request=LoRARequest("kit", 1, adapter) if adapter else None)
    out = cfg.predictions_file(which)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for r, o in zip(rows, outputs):
        raw = o.outputs[0].text
        opened = opens_think(generation_prompt(tok, r["messages"][:-1]))
        lines.append(json.dumps(prediction_row(r, raw, cfg.model.thinking, opened), ensure_ascii=False))
    write_text_atomic(out, "".join(line + "\n" for line in lines))
    write_text_atomic(out.with_suffix(".meta.json"),
                      json.dumps({"model": path, "adapter": adapter, "backend": "vllm", "answered_by": answered_by},
                                 indent=2) + "\n")
    return out


def prediction_row(r: dict, raw: str, thinking: str, opened: bool = False) -> dict:
    """A predictions file row; `opened`: the prompt opened a <think> block (kit.chat.final_answer)."""
    pred = final_answer(raw, thinking, opened)
    return {"id": r["id"], "split": r["split"], "question": question_of(r),
            "answer": r["messages"][-1]["content"], "prediction": pred, "raw_prediction": raw,
            "entity": r["entity"], "attribute": r["attribute"], "value": r["value"], "expected": r["expected"],
            "template": r["template"], **({"check": r["check"]} if "check" in r else {})}


def _shard(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.stem}.rank{rank}.jsonl")


def _fold_shards(out: Path) -> None:
    """Append the rows of per-process shard files (this run's, or a crashed run's) to the main file."""
    shards = sorted(out.parent.glob(f"{out.stem}.rank*.jsonl"))
    if not shards:
        return
    with out.open("a", encoding="utf-8") as f:
        for shard in shards:
            f.writelines(line + "\n" for line in _complete_lines(shard.read_text(encoding="utf-8").splitlines()))
            shard.unlink()


def _in_row_order(out: Path, order: list[str]) -> None:
    """Rewrite the predictions in data order (rows finish in order of length and answer), keeping the first line of
    a row written twice (a run stopped between folding a shard and deleting it). Only line offsets are held, and the
    file is left as it is when already in order."""
    position = {row_id: i for i, row_id in enumerate(order)}
    offsets: dict[str, tuple[int, int]] = {}
    ordered, last = True, -1
    with out.open("rb") as f:
        at = 0
        for line in f:
            if line.strip():
                row_id = json.loads(line)["id"]
                if row_id in offsets:
                    ordered = False
                else:
                    offsets[row_id] = (at, len(line))
                    here = position.get(row_id, len(position))
                    ordered = ordered and here >= last and line.endswith(b"\n")
                    last = here
            else:
                ordered = False
            at += len(line)
    if ordered:
        return
    with atomic_file(out) as tmp, out.open("rb") as src, tmp.open("wb") as dst:
        for row_id in sorted(offsets, key=lambda r: position.get(r, len(position))):
            src.seek(offsets[row_id][0])
            dst.write(src.read(offsets[row_id][1]).rstrip(b"\n") + b"\n")


def _complete_lines(lines: list[str]) -> list[str]:
    """The JSONL lines before the first one a crash cut short (those rows are answered again on the next run)."""
    good = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            break
        good.append(line)
    return good


def _rewrite_complete_lines(path: Path) -> None:
    """Drop a half-written last line left by a crash, so appending continues a valid JSONL file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    good = _complete_lines(lines)
    if len(good) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in good))


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv, __doc__.splitlines()[0], extra=lambda p: p.add_argument(
        "--model", choices=["finetuned", "base"], default="finetuned", help="which model answers"))
    out = generate(cfg, args.model)
    if process_state(pick_device(cfg.train.device)).is_main_process:
        print(f"predictions written to {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
