"""Export the fine-tuned model as GGUF files with an Ollama Modelfile each, then check that every file still knows
the facts, read by code the kit did not write.

    python -m eval.export configs/quickstart.yaml
    python -m eval.export configs/quickstart.yaml eval.export_formats=[f16,q8_0,q4_0]
    ollama create genshin -f runs/quickstart/gguf/quickstart-q8_0.Modelfile

From the merged export (made first when missing), writes <output_dir>/gguf/<run>-<format>.gguf and
<run>-<format>.Modelfile (eval/gguf.py says what is in them). Then each artifact answers the test questions:
the adapter (base + LoRA) and the merged export through the kit, each GGUF through transformers' GGUF loader and,
where llama-cpp-python is installed, through llama.cpp with the chat template stored in the file (in a child
process: a llama.cpp build that crashes, e.g. SIGILL on an instruction the machine cannot run, becomes a row saying
so and what to do, and every other artifact is still checked). The table
(value match, BERTScore F1, answers equal to the merged model's) goes to <eval dir>/artifacts.md and .json, the
answers to <eval dir>/artifacts/, and into summary.md when the report exists.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

from eval.gguf import FORMATS, ExportError, check_architecture, modelfile, ollama_template, write_gguf
from kit.config import Config, parse_args, run_main
from kit.files import write_text_atomic

SECTION_START = "<!-- kit:artifacts -->"
SECTION_END = "<!-- /kit:artifacts -->"


def export_dir(cfg: Config) -> Path:
    return Path(cfg.eval.export_dir) if cfg.eval.export_dir else cfg.out / "gguf"


def gguf_path(cfg: Config, fmt: str) -> Path:
    return export_dir(cfg) / f"{cfg.out.resolve().name}-{fmt}.gguf"


def check_inputs(cfg: Config) -> None:
    """Everything that can fail before any work: formats, existing files, a model to export, its architecture."""
    from eval.merge import check_adapter
    from kit.models import resolve

    formats = cfg.eval.export_formats
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"eval.export_formats: {unknown or formats} not known; choose from {list(FORMATS)}")
    for fmt in formats:
        for path in (gguf_path(cfg, fmt), gguf_path(cfg, fmt).with_suffix(".Modelfile")):
            if path.exists() and not cfg.eval.overwrite:
                raise ExportError(f"{path}: already exists; set eval.overwrite=true to replace it, or "
                                  f"eval.export_dir to write elsewhere")
    merged = cfg.merged_dir / "config.json"
    if merged.is_file():
        source = cfg.merged_dir
    else:
        if not (cfg.adapter_dir / "adapter_config.json").is_file():
            raise ExportError(f"nothing to export: no merged model in {cfg.merged_dir} and no adapter in "
                              f"{cfg.adapter_dir}; train first with `python -m sft.train CONFIG`")
        check_adapter(cfg.adapter_dir)
        source = Path(resolve(cfg.model))
    config = json.loads((source / "config.json").read_text(encoding="utf-8")) if source.is_dir() else {}
    if config:
        check_architecture(config, str(source))


def export(cfg: Config, check: bool = True) -> dict:
    """Write the GGUF files and Modelfiles; with `check`, answer the test questions with every artifact."""
    from kit.lock import run_lock

    with run_lock(cfg, "eval.export"):
        check_inputs(cfg)
        if not (cfg.merged_dir / "config.json").is_file():
            from eval.merge import merge

            merge(cfg)
        files = write_all(cfg)
        result = {"files": files}
        if check:
            result["check"] = check_artifacts(cfg, [Path(f["file"]) for f in files])
        return result


def write_all(cfg: Config) -> list[dict]:
    from kit.generation import stop_token_ids
    from kit.models import load_tokenizer

    out_dir = export_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(str(cfg.merged_dir), cfg.model.trust_remote_code)
    gen_file = cfg.merged_dir / "generation_config.json"
    gen = json.loads(gen_file.read_text(encoding="utf-8")) if gen_file.is_file() else {}
    # stop_token_ids reads model.generation_config.eos_token_id: the merged model's, without loading its weights
    merged = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=gen.get("eos_token_id")))
    stops = stop_token_ids(tok, merged)
    template = ollama_template(tok, cfg.model.thinking)  # a template Ollama cannot follow fails before any write
    stop_text = [tok.convert_ids_to_tokens(i) for i in stops]
    written = []
    for fmt in cfg.eval.export_formats:
        path = gguf_path(cfg, fmt)
        start = time.perf_counter()
        info = write_gguf(cfg.merged_dir, tok, path, fmt, stops, cfg.out.resolve().name)
        write_text_atomic(path.with_suffix(".Modelfile"), modelfile(path, template, stop_text, cfg.data.system_prompt))
        path.with_suffix(".Modelfile").chmod(0o644)
        info["seconds"] = round(time.perf_counter() - start, 1)
        print(f"wrote {path} ({info['bytes'] / 2**20:.1f} MiB, {', '.join(info['tensor_types'])}, "
              f"pre-tokenizer {info['pre_tokenizer']}) and {path.with_suffix('.Modelfile').name} "
              f"in {info['seconds']} s", flush=True)
        written.append(info)
    return written


# ---------------------------------------------------------------------------------------------------------------------
# The check: every artifact answers the test questions


def test_rows(cfg: Config) -> list[dict]:
    from eval.generate import eval_rows
    from kit.specificity import SPECIFICITY_SPLITS

    return [r for r in eval_rows(cfg) if r["split"] not in SPECIFICITY_SPLITS]


def answer_with_kit(cfg: Config, model, tok, rows: list[dict]) -> list[str]:
    from kit.chat import final_answer, generation_prompt, opens_think
    from kit.generation import generate_batched

    prompts = [generation_prompt(tok, r["messages"][:-1]) for r in rows]
    raw = generate_batched(model, tok, prompts, cfg.eval.batch_size, cfg.eval.max_new_tokens)
    return [final_answer(a, cfg.model.thinking, opens_think(p)) for a, p in zip(raw, prompts)]


def load_gguf_with_transformers(path: Path):
    """transformers' own GGUF reader (dequantises to float32; reorders Llama q/k back)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.eval()
    return model, tok


def tokens_lost(gguf_tok, tok) -> list[str]:
    """Special and added tokens of `tok` that `gguf_tok` (transformers' tokenizer rebuilt from a GGUF file written from
    `tok`) does not give the same id. transformers 5 skips control tokens spelled outside the byte-level alphabet, such
    as DeepSeek-R1's <｜begin▁of▁sentence｜>: it cuts them into pieces, and gives BOS and EOS new ids past the
    vocabulary. llama.cpp reads them as written."""
    names = set(tok.all_special_tokens) | {t.content for t in tok.added_tokens_decoder.values()}
    return sorted(n for n in names if gguf_tok.convert_tokens_to_ids(n) != tok.convert_tokens_to_ids(n))


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def load_llama_cpp(path: Path, n_ctx: int = 1024, logits_all: bool = False, n_threads: int | None = None):
    import torch
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads or torch.get_num_threads(),
                 logits_all=logits_all, seed=0, verbose=False)


def answer_with_llama_cpp(path: Path, rows: list[dict], max_new_tokens: int, thinking: str,
                          n_threads: int | None = None, opened: bool = False) -> list[str]:
    """Greedy answers from llama.cpp's chat completion: the prompt is rendered by llama-cpp-python from the chat
    template stored in the GGUF (not by the kit), and generation stops at the file's end-of-generation tokens.
    `opened`: the template's generation prompt opens a <think> block (kit.chat.final_answer).
    check_artifacts runs this in a child process (eval.native.run_native): llama.cpp's native code may crash."""
    from kit.chat import final_answer

    llm = load_llama_cpp(path, n_threads=n_threads)
    out = []
    for r in rows:
        got = llm.create_chat_completion(messages=r["messages"][:-1], temperature=0.0, top_k=1,
                                         max_tokens=max_new_tokens, seed=0)
        text = got["choices"][0]["message"]["content"] or ""
        out.append(final_answer(text, thinking, opened))
    return out


def check_artifacts(cfg: Config, gguf_files: list[Path]) -> dict:
    import torch

    from eval.generate import load_for_generation
    from eval.native import NativeCrash, run_native
    from eval.score import make_scorer, value_match
    from kit.chat import generation_prompt, opens_think
    from kit.models import load_tokenizer, pick_device, resolve, set_threads

    scorer = make_scorer(cfg)  # the encoder may need a hub or a local copy: fail before the long part
    rows = test_rows(cfg)
    device = pick_device(cfg.train.device)
    set_threads(cfg.train.threads, device)
    answers: dict[str, list[str]] = {}
    readers: dict[str, str] = {}
    timings: dict[str, float] = {}

    failures: dict[str, str] = {}

    def run(label: str, reader: str, fn) -> None:
        start = time.perf_counter()
        readers[label] = reader
        try:
            answers[label] = fn()
        except NativeCrash as e:  # the child died; this artifact gets a row saying so, the others are still checked
            failures[label] = str(e)
            print(f"{label}: {e}", flush=True)
            return
        finally:
            timings[label] = round(time.perf_counter() - start, 1)
        print(f"{label}: {len(rows)} answers ({readers[label]}) in {timings[label]} s", flush=True)

    def kit_answers(path: str, adapter: str | None):
        model, tok = load_for_generation(cfg, path, adapter, device)
        return answer_with_kit(cfg, model, tok, rows)

    if (cfg.adapter_dir / "adapter_config.json").is_file():
        run("adapter", "transformers + peft, the kit's generation", lambda: kit_answers(resolve(cfg.model),
                                                                                        str(cfg.adapter_dir)))
    run("merged", "transformers, the kit's generation", lambda: kit_answers(str(cfg.merged_dir), None))
    merged_tok = load_tokenizer(str(cfg.merged_dir), cfg.model.trust_remote_code)
    opened = opens_think(generation_prompt(merged_tok, rows[0]["messages"][:-1])) if rows else False
    for path in gguf_files:
        fmt = path.stem.rsplit("-", 1)[-1]

        def via_transformers(path=path, label=f"gguf {fmt} (transformers)"):
            model, tok = load_gguf_with_transformers(path)
            lost = tokens_lost(tok, merged_tok)
            if lost:  # the weights are still checked, with the tokenizer the file was written from
                readers[label] = (f"transformers' GGUF loader, weights only: its tokenizer loses {', '.join(lost)} "
                                  f"(llama.cpp reads them), so the merged export's tokenizer and template")
                tok = merged_tok
            return answer_with_kit(cfg, model, tok, rows)

        run(f"gguf {fmt} (transformers)", "transformers' GGUF loader, tokenizer and template from the file",
            via_transformers)
        if llama_cpp_available():
            run(f"gguf {fmt} (llama.cpp)", "llama-cpp-python, chat template from the file",
                lambda path=path: run_native(answer_with_llama_cpp, path, rows, cfg.eval.max_new_tokens,
                                             cfg.model.thinking, torch.get_num_threads(), opened,
                                             what=f"reading {path.name}"))
    merged = answers["merged"]
    table = []
    for label in readers:
        if label in failures:
            table.append({"artifact": label, "reader": readers[label], "rows": len(rows), "value_match": None,
                          "value_match_n": None, "bertscore_f1": None, "equal_to_merged": None,
                          "seconds": timings[label], "error": failures[label]})
            continue
        preds = answers[label]
        _, _, f1 = scorer.score(preds, [r["messages"][-1]["content"] for r in rows])
        matches = [value_match(r.get("expected") or r.get("value") or "", p) for r, p in zip(rows, preds)]
        judged = [m for m in matches if m is not None]
        table.append({"artifact": label, "reader": readers[label], "rows": len(rows),
                      "value_match": sum(judged) / len(judged) if judged else None,
                      "value_match_n": f"{sum(judged)}/{len(judged)}",
                      "bertscore_f1": sum(f1) / len(f1), "equal_to_merged": sum(a == b for a, b in zip(preds, merged)),
                      "seconds": timings[label]})
    result = {"rows": len(rows), "artifacts": table, "llama_cpp": llama_cpp_available(), "encoder": scorer.label,
              "failed": sorted(failures)}
    write_check(cfg, result, rows, answers)
    return result


def markdown(result: dict) -> str:
    lines = [SECTION_START, "## Exported artifacts", "",
             f"Each artifact answered the same {result['rows']} test questions (greedy). Value match: the expected "
             f"value found in the answer; equal: answers identical to the merged model's.", "",
             "| artifact | value match | BERTScore F1 | equal to merged | read by |", "|---|---|---|---|---|"]
    for a in result["artifacts"]:
        if a.get("error"):
            lines.append(f"| {a['artifact']} | **failed** | - | - | {a['reader']} |")
            continue
        vm = "n/a" if a["value_match"] is None else f"{100 * a['value_match']:.1f}% ({a['value_match_n']})"
        lines.append(f"| {a['artifact']} | {vm} | {a['bertscore_f1']:.3f} | {a['equal_to_merged']}/{a['rows']} | "
                     f"{a['reader']} |")
    merged = next(a for a in result["artifacts"] if a["artifact"] == "merged")
    for a in result["artifacts"]:
        if a.get("error"):
            lines += ["", f"**{a['artifact']} was not checked.** {a['error']}"]
        elif a["value_match"] is not None and merged["value_match"] is not None \
                and a["value_match"] < merged["value_match"] - 0.01:
            lines += ["", f"**{a['artifact']} forgets facts: value match {100 * a['value_match']:.1f}% against "
                          f"{100 * merged['value_match']:.1f}% for the merged model.**"]
    if not result["llama_cpp"]:
        lines += ["", "llama.cpp was not checked: llama-cpp-python is not installed (`pip install "
                      "llama-cpp-python`, which compiles llama.cpp)."]
    return "\n".join(lines + [SECTION_END]) + "\n"


def write_check(cfg: Config, result: dict, rows: list[dict], answers: dict[str, list[str]]) -> None:
    out = cfg.eval_dir
    out.mkdir(parents=True, exist_ok=True)
    for label, preds in answers.items():
        name = label.replace(" ", "-").replace("(", "").replace(")", "").replace(".", "")
        write_text_atomic(out / "artifacts" / f"{name}.jsonl", "".join(
            json.dumps({"id": r["id"], "question": r["messages"][-2]["content"], "expected": r.get("expected"),
                        "prediction": p}, ensure_ascii=False) + "\n" for r, p in zip(rows, preds)))
    md = markdown(result)
    write_text_atomic(out / "artifacts.json", json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    write_text_atomic(out / "artifacts.md", md)
    summary = out / "summary.md"
    if summary.is_file():
        text = summary.read_text(encoding="utf-8")
        if SECTION_START in text:
            text = text.split(SECTION_START)[0] + text.split(SECTION_END, 1)[-1].lstrip("\n")
        write_text_atomic(summary, text.rstrip("\n") + "\n\n" + md)


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv, __doc__.splitlines()[0], extra=lambda p: p.add_argument(
        "--no-check", action="store_true", help="write the files only; skip answering the test questions"))
    result = export(cfg, check=not args.no_check)
    if "check" in result:
        print(markdown(result["check"]))
        print(f"table written to {cfg.eval_dir / 'artifacts.md'}")
    return 0


if __name__ == "__main__":
    run_main(main)
