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

from eval.gguf import ExportError, check_architecture, check_system_prompt, modelfile, ollama_template, write_gguf
from eval.quantize import AUTO_CANDIDATES, INSTALL, is_llama_cpp_format, uses_imatrix
from kit.config import GGUF_FORMATS, Config, parse_args, run_main, tensor_types
from kit.files import TEMP_PREFIX, write_text_atomic
from kit.rows import question_of

SECTION_START = "<!-- kit:artifacts -->"
SECTION_END = "<!-- /kit:artifacts -->"


def export_dir(cfg: Config) -> Path:
    return Path(cfg.eval.export_dir) if cfg.eval.export_dir else cfg.out / "gguf"


def gguf_path(cfg: Config, fmt: str) -> Path:
    return export_dir(cfg) / f"{cfg.out.resolve().name}-{fmt}.gguf"


def check_inputs(cfg: Config, check: bool = True) -> None:
    """Everything that can fail before any work: formats, llama.cpp where its quantizer is needed, existing files,
    a model to export, its architecture."""
    from eval.merge import check_adapter
    from kit.models import resolve

    formats = cfg.eval.export_formats
    known = list(GGUF_FORMATS)
    unknown = [f for f in formats if f not in known]
    if unknown or not formats:
        raise ExportError(f"eval.export_formats: {unknown or formats} not known; choose from {known}")
    if "auto" in formats and len(formats) > 1:
        raise ExportError(f"eval.export_formats: auto picks the format itself; give it alone, not with "
                          f"{[f for f in formats if f != 'auto']}")
    if "auto" in formats and not check:
        raise ExportError("eval.export_formats=[auto] answers the test questions with each candidate to choose "
                          "one; it cannot run with --no-check")
    check_system_prompt(cfg.data.system_prompt)
    needs_llama_cpp = [f for f in formats if f == "auto" or is_llama_cpp_format(f)]
    if needs_llama_cpp and not llama_cpp_available():
        raise ExportError(f"eval.export_formats: {needs_llama_cpp} are written by llama.cpp's quantizer, and "
                          f"llama-cpp-python is not installed: {INSTALL}")
    for fmt in (AUTO_CANDIDATES if formats == ["auto"] else formats):
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
    """Write the GGUF files and Modelfiles; with `check`, answer the test questions with every artifact (and, for
    eval.export_formats=[auto], choose the format)."""
    from kit.lock import run_lock

    with run_lock(cfg, "eval.export"):
        check_inputs(cfg, check)
        if not (cfg.merged_dir / "config.json").is_file():
            from eval.merge import merge

            merge(cfg)
        writer = Writer(cfg)
        try:
            files = [] if cfg.eval.export_formats == ["auto"] else [writer.write(f) for f in cfg.eval.export_formats]
            result = {"files": files}
            if check:
                result["check"] = check_artifacts(cfg, files, writer)
        finally:
            writer.close()
        return result


class Writer:
    """Writes one format at a time: the kit's own writer for FORMATS, llama.cpp's quantizer (from an f16 file) for
    the k-quants and i-quants, with the run's importance matrix where eval.export_imatrix asks for it."""

    def __init__(self, cfg: Config):
        from kit.generation import stop_token_ids
        from kit.models import load_tokenizer

        self.cfg = cfg
        self.out_dir = export_dir(cfg)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.tok = load_tokenizer(str(cfg.merged_dir), cfg.model.trust_remote_code)
        gen_file = cfg.merged_dir / "generation_config.json"
        gen = json.loads(gen_file.read_text(encoding="utf-8")) if gen_file.is_file() else {}
        # stop_token_ids reads model.generation_config.eos_token_id: the merged model's, without loading its weights
        merged = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=gen.get("eos_token_id")))
        self.stops = stop_token_ids(self.tok, merged)
        self.template = ollama_template(self.tok, cfg.model.thinking)  # one Ollama cannot follow fails here
        self.stop_text = [self.tok.convert_ids_to_tokens(i) for i in self.stops]
        self._source: Path | None = None  # the f16 file llama.cpp quantizes from
        self._temporary_source = False
        self.imatrix: dict | None = None

    def source(self) -> Path:
        if self._source is None:
            wanted = gguf_path(self.cfg, "f16")
            if wanted.is_file() and "f16" in self.cfg.eval.export_formats:
                self._source = wanted
            else:
                self._source = self.out_dir / f"{TEMP_PREFIX}src-{self.cfg.out.resolve().name}-f16.gguf"
                self._temporary_source = True
                write_gguf(self.cfg.merged_dir, self.tok, self._source, "f16", self.stops, self.cfg.out.resolve().name)
        return self._source

    def imatrix_file(self) -> Path:
        from eval.quantize import imatrix_for

        if self.imatrix is None:
            path = self.out_dir / f"{self.cfg.out.resolve().name}-imatrix.npz"
            self.imatrix = imatrix_for(self.cfg, self.tok, path)
        return Path(self.imatrix["file"])

    def write(self, fmt: str) -> dict:
        import torch

        from eval.native import run_native
        from eval.quantize import quantize, tensor_stats

        path = gguf_path(self.cfg, fmt)
        start = time.perf_counter()
        if is_llama_cpp_format(fmt):
            imatrix = self.imatrix_file() if uses_imatrix(fmt, self.cfg.eval.export_imatrix) else None
            source = self.source()
            overrides = tensor_types(self.cfg.eval.export_tensor_types)
            run_native(quantize, source, path, fmt, imatrix, torch.get_num_threads(), overrides,
                       what=f"quantizing {source.name} to {fmt}")
            info = {"file": str(path), "format": fmt, "writer": "llama.cpp's quantizer",
                    "imatrix": imatrix is not None, "bytes": path.stat().st_size,
                    "tensor_overrides": list(self.cfg.eval.export_tensor_types)}
        else:
            info = write_gguf(self.cfg.merged_dir, self.tok, path, fmt, self.stops, self.cfg.out.resolve().name)
            info.update(writer="the kit (gguf package)", imatrix=False)
        types, bits = tensor_stats(path)
        info.update(tensor_types=sorted(types), bits_per_weight=round(bits, 2))
        write_text_atomic(path.with_suffix(".Modelfile"),
                          modelfile(path, self.template, self.stop_text, self.cfg.data.system_prompt))
        path.with_suffix(".Modelfile").chmod(0o644)
        info["seconds"] = round(time.perf_counter() - start, 1)
        print(f"wrote {path} ({info['bytes'] / 2**20:.1f} MiB, {info['bits_per_weight']} bits/weight, "
              f"{', '.join(info['tensor_types'])}{', importance matrix' if info['imatrix'] else ''}) and "
              f"{path.with_suffix('.Modelfile').name} in {info['seconds']} s", flush=True)
        return info

    def remove(self, info: dict) -> None:
        """An auto candidate that was not kept: its file and Modelfile go."""
        path = Path(info["file"])
        for p in (path, path.with_suffix(".Modelfile")):
            p.unlink(missing_ok=True)

    def close(self) -> None:
        if self._temporary_source and self._source is not None:
            self._source.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------------
# The check: every artifact answers the test questions


def test_rows(cfg: Config) -> list[dict]:
    from eval.questions import eval_rows
    from kit.beyond import BEYOND_SPLITS
    from kit.specificity import SPECIFICITY_SPLITS

    return [r for r in eval_rows(cfg) if r["split"] not in SPECIFICITY_SPLITS + BEYOND_SPLITS]


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
    return [final_answer(chat_answer(llm, r["messages"][:-1], max_new_tokens), thinking, opened) for r in rows]


def chat_answer(llm, messages: list[dict], max_new_tokens: int, processors: tuple = ()) -> str:
    """One greedy chat completion of at most `max_new_tokens` tokens. llama-cpp-python (0.3.x) does not count a
    token that leaves a UTF-8 character unfinished against max_tokens, so a file that has lost its facts and writes
    byte after byte of broken characters ran to the end of the context, and llama_decode failed there
    ("llama_decode returned 1": the whole check died on one question). A logits processor that allows only an
    end-of-generation token after `max_new_tokens` tokens caps every answer; it runs after `processors`
    (llama-cpp-python's logits processors: f(input_ids, scores) -> scores)."""
    import numpy as np
    from llama_cpp import LogitsProcessorList

    eog = llm.token_eos()
    seen = 0

    def cap(_input_ids, scores):
        nonlocal seen
        seen += 1
        if seen > max_new_tokens:
            scores = np.full_like(scores, -np.inf)
            scores[eog] = 0.0
        return scores

    got = llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, max_tokens=max_new_tokens,
                                     seed=0, logits_processor=LogitsProcessorList([*processors, cap]))
    return got["choices"][0]["message"]["content"] or ""


def check_artifacts(cfg: Config, files: list[dict], writer: Writer) -> dict:
    """Every artifact answers the test questions: the adapter and the merged export through the kit, each GGUF file
    in `files` (`writer.write`'s infos) through transformers' GGUF loader and llama.cpp. For
    eval.export_formats=[auto], `writer` writes AUTO_CANDIDATES from the smallest file up, each checked through
    llama.cpp, until one keeps the merged model's value match within eval.export_tolerance; the others are removed.
    A llama.cpp read that crashes is a row saying so (eval.native), and the rest is still checked."""
    import torch

    from eval.metrics import make_scorer
    from eval.models import load_for_generation
    from eval.native import NativeCrash, run_native
    from kit.chat import generation_prompt, opens_think
    from kit.models import pick_device, resolve, set_threads

    scorer = make_scorer(cfg)  # the encoder may need a hub or a local copy: fail before the long part
    rows = test_rows(cfg)
    device = pick_device(cfg.train.device)
    set_threads(cfg.train.threads, device)
    answers: dict[str, list[str]] = {}
    table: list[dict] = []
    reader_notes: dict[str, str] = {}  # a reader that had to differ from its label's (set while answering)

    def run(label: str, reader: str, fn, info: dict | None = None) -> dict:
        start = time.perf_counter()
        row = {"artifact": label, "reader": reader, "rows": len(rows)}
        if info is not None:
            row.update(format=info["format"], file=Path(info["file"]).name, mib=round(info["bytes"] / 2**20, 1),
                       bits_per_weight=info["bits_per_weight"], imatrix=info["imatrix"])
            if info.get("tensor_overrides"):
                row["tensor_overrides"] = info["tensor_overrides"]
        try:
            preds = fn()
        except NativeCrash as e:  # the child died; this artifact gets a row saying so, the others are still checked
            row.update(value_match=None, value_match_n=None, bertscore_f1=None, equal_to_merged=None,
                       seconds=round(time.perf_counter() - start, 1), error=str(e))
            print(f"{label}: {e}", flush=True)
            table.append(row)
            return row
        seconds = round(time.perf_counter() - start, 1)
        answers[label] = preds
        reader = row["reader"] = reader_notes.get(label, reader)
        row.update(artifact_scores(scorer, rows, preds, answers.get("merged", preds)), seconds=seconds)
        print(f"{label}: {len(rows)} answers ({reader}) in {seconds} s, value match {row['value_match_n']}",
              flush=True)
        table.append(row)
        return row

    def kit_answers(path: str, adapter: str | None):
        model, tok = load_for_generation(cfg, path, adapter, device)
        return answer_with_kit(cfg, model, tok, rows)

    def via_llama_cpp(path: Path):
        return run_native(answer_with_llama_cpp, path, rows, cfg.eval.max_new_tokens, cfg.model.thinking,
                          torch.get_num_threads(), opened, what=f"reading {path.name}")

    if (cfg.adapter_dir / "adapter_config.json").is_file():
        run("adapter", "transformers + peft, the kit's generation", lambda: kit_answers(resolve(cfg.model),
                                                                                        str(cfg.adapter_dir)))
    merged = run("merged", "transformers, the kit's generation", lambda: kit_answers(str(cfg.merged_dir), None))
    merged_tok = writer.tok  # the merged export's tokenizer
    opened = opens_think(generation_prompt(merged_tok, rows[0]["messages"][:-1])) if rows else False
    for info in files:
        path, fmt = Path(info["file"]), info["format"]

        def via_transformers(path=path, label=f"gguf {fmt} (transformers)"):
            model, tok = load_gguf_with_transformers(path)
            lost = tokens_lost(tok, merged_tok)
            if lost:  # the weights are still checked, with the tokenizer the file was written from
                reader_notes[label] = (f"transformers' GGUF loader, weights only: its tokenizer loses "
                                       f"{', '.join(lost)} (llama.cpp reads them), so the merged export's tokenizer "
                                       f"and template")
                tok = merged_tok
            return answer_with_kit(cfg, model, tok, rows)

        run(f"gguf {fmt} (transformers)", "transformers' GGUF loader, tokenizer and template from the file",
            via_transformers, info)
        if llama_cpp_available():
            run(f"gguf {fmt} (llama.cpp)", "llama-cpp-python, chat template from the file",
                lambda path=path: via_llama_cpp(path), info)
    chosen = None
    if cfg.eval.export_formats == ["auto"]:
        chosen = choose_format(cfg, writer, merged, lambda info: run(
            f"gguf {info['format']} (llama.cpp)", "llama-cpp-python, chat template from the file",
            lambda: via_llama_cpp(Path(info["file"])), info))
    result = {"rows": len(rows), "artifacts": table, "llama_cpp": llama_cpp_available(), "encoder": scorer.label,
              "failed": [a["artifact"] for a in table if a.get("error")], "tolerance": cfg.eval.export_tolerance}
    if writer.imatrix is not None:
        result["imatrix"] = writer.imatrix
    if chosen is not None:
        result["auto"] = chosen
    write_check(cfg, result, rows, answers)
    return result


def keeps_facts(value_match: float | None, merged: float | None, tolerance: float) -> bool:
    """An artifact's value match is within `tolerance` (a fraction: 0.01 = 1 point) of the merged model's; False
    when either has no value to compare."""
    return value_match is not None and merged is not None and value_match >= merged - tolerance - 1e-9


def choose_format(cfg: Config, writer: Writer, merged: dict, check) -> dict:
    """eval.export_formats=[auto]: write AUTO_CANDIDATES from the smallest file up, `check` each (its table row), keep
    the first whose value match through llama.cpp is within eval.export_tolerance of the merged model's; remove the
    others. When none is, the largest (q8_0) is kept and the table says so."""
    tolerance = cfg.eval.export_tolerance
    target = None if merged["value_match"] is None else merged["value_match"] - tolerance
    tried = []
    for fmt in AUTO_CANDIDATES:
        info = writer.write(fmt)
        row = check(info)
        passed = keeps_facts(row.get("value_match"), merged["value_match"], tolerance)
        last = fmt == AUTO_CANDIDATES[-1]
        if passed:
            row["auto"] = (f"kept: the smallest file within {100 * tolerance:g} point(s) of the merged model's value "
                           f"match")
        elif last:
            row["auto"] = "kept: no smaller candidate kept the facts, and no larger one is tried"
        else:
            why = row.get("error") or (f"value match {100 * row['value_match']:.1f}% < {100 * target:.1f}%"
                                       if row.get("value_match") is not None and target is not None
                                       else "no value to match")
            row["auto"] = f"not kept: {why}"
            writer.remove(info)
        tried.append(fmt)
        print(f"auto: {fmt}: {row['auto']}", flush=True)
        if passed or last:
            return {"format": fmt, "file": info["file"], "tried": tried, "met_tolerance": passed}
    raise AssertionError("unreachable: the last candidate is always kept")


def artifact_scores(scorer, rows: list[dict], preds: list[str], merged: list[str]) -> dict:
    """One artifact's line of the table: its answers to `rows` scored as eval.metrics scores them (an empty answer:
    F1 0, no value), against the merged model's answers."""
    from kit.specificity import is_empty, value_matches

    _, _, f1 = scorer.score(preds, [r["messages"][-1]["content"] for r in rows])
    right, judged = value_matches(rows, preds)
    return {"rows": len(rows), "value_match": right / judged if judged else None,
            "value_match_n": f"{right}/{judged}", "bertscore_f1": sum(f1) / len(f1),
            "equal_to_merged": sum(a == b for a, b in zip(preds, merged)),
            "empty_answers": sum(is_empty(p) for p in preds)}


def markdown(result: dict) -> str:
    tol = 100 * result.get("tolerance", 0.01)
    lines = [SECTION_START, "## Exported artifacts", "",
             f"Each artifact answered the same {result['rows']} test questions (greedy). Value match: the expected "
             f"value found in the answer; equal: answers identical to the merged model's. Bits/weight: all tensor "
             f"data of the file over all its weights (embeddings and norms included).", "",
             "| artifact | MiB | bits/weight | imatrix | value match | BERTScore F1 | equal to merged | empty answers "
             "| read by |", "|---|---|---|---|---|---|---|---|---|"]
    for a in result["artifacts"]:
        size = f"{a['mib']:.1f} | {a['bits_per_weight']:.2f} | {'yes' if a['imatrix'] else 'no'}" if "mib" in a \
            else "- | - | -"
        if a.get("error"):
            lines.append(f"| {a['artifact']} | {size} | **failed** | - | - | - | {a['reader']} |")
            continue
        vm = "n/a" if a["value_match"] is None else f"{100 * a['value_match']:.1f}% ({a['value_match_n']})"
        lines.append(f"| {a['artifact']} | {size} | {vm} | {a['bertscore_f1']:.3f} | "
                     f"{a['equal_to_merged']}/{a['rows']} | {a['empty_answers']} | {a['reader']} |")
    merged = next(a for a in result["artifacts"] if a["artifact"] == "merged")
    for a in result["artifacts"]:
        if a.get("error"):
            lines += ["", f"**{a['artifact']} was not checked.** {a['error']}"]
        elif a["value_match"] is not None and merged["value_match"] is not None \
                and not keeps_facts(a["value_match"], merged["value_match"], result.get("tolerance", 0.01)):
            lines += ["", f"**{a['artifact']} forgets facts: value match {100 * a['value_match']:.1f}% against "
                          f"{100 * merged['value_match']:.1f}% for the merged model.**"]
    if "auto" in result:
        auto = result["auto"]
        lines += ["", f"**auto kept {Path(auto['file']).name}** (tried {', '.join(auto['tried'])}, smallest first; "
                      f"kept the first within {tol:g} point(s) of the merged model's value match"
                      + ("" if auto["met_tolerance"] else "; none met it, so the largest is kept") + ")."]
        lines += [f"- {a['format']}: {a['auto']}" for a in result["artifacts"] if a.get("auto")]
    overrides = next((a["tensor_overrides"] for a in result["artifacts"] if a.get("tensor_overrides")), None)
    if overrides:
        lines += ["", f"llama.cpp's files were written with eval.export_tensor_types "
                      f"{', '.join(f'`{o}`' for o in overrides)} (the first matching pattern names a tensor's type; "
                      f"the others keep the format's own mix)."]
    if result.get("imatrix"):
        m = result["imatrix"]
        lines += ["", f"Importance matrix: {m['tensors']} tensors from {m['tokens']} tokens of the training "
                      f"conversations ({'reused' if m['reused'] else 'computed'}: {Path(m['file']).name})."]
    if not result["llama_cpp"]:
        lines += ["", f"llama.cpp was not checked: llama-cpp-python is not installed (`{INSTALL}`, which compiles "
                      f"llama.cpp)."]
    return "\n".join(lines + [SECTION_END]) + "\n"


def write_check(cfg: Config, result: dict, rows: list[dict], answers: dict[str, list[str]]) -> None:
    out = cfg.eval_dir
    out.mkdir(parents=True, exist_ok=True)
    for label, preds in answers.items():
        name = label.replace(" ", "-").replace("(", "").replace(")", "").replace(".", "")
        write_text_atomic(out / "artifacts" / f"{name}.jsonl", "".join(
            json.dumps({"id": r["id"], "question": question_of(r), "expected": r.get("expected"),
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
