"""GGUF and Modelfile export on tiny Llama and Qwen2 models, read back by transformers' GGUF loader and by llama.cpp
(llama-cpp-python): logits, greedy answers, tokenizer ids, the Ollama template, and the errors."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.export import export, gguf_path, load_gguf_with_transformers, main
from eval.gguf import ExportError, ollama_template, permute_rows, pre_tokenizer_name
from kit.config import ConfigError, build_config
from tests.conftest import CHATML, DEEPSEEK, LLAMA3

ROLES = {"钟离": {"性别": "成年男性", "国籍": "璃月", "元素力": "岩元素"},
         "丽莎": {"性别": "成年女性", "国籍": "蒙德", "元素力": "雷元素"}}
SAMPLE = "钟离的国籍是哪里?他来自璃月。 Who is Zhongli? 42 apples,  3.14\n<|im_start|>user\nhi<|im_end|>"
# f16 weights read back as f16: the logits of the GGUF equal the merged model's (transformers' reader dequantises to
# float32, the same arithmetic); llama.cpp computes in its own kernels (f16 activations in places): within this
# share of the largest logit (measured: 0.34% llama, 0.42% qwen2).
LLAMA_CPP_LOGIT_RTOL = 0.01


def llama_cpp():
    try:
        import llama_cpp
    except ImportError:  # fail, never skip: CI installs it (.ci/run)
        pytest.fail("llama-cpp-python is not installed; the GGUF tests read the files with llama.cpp itself: "
                    "pip install llama-cpp-python", pytrace=False)
    return llama_cpp


def make_cfg(root: Path, merged: Path, bert: Path | None = None, **eval_):
    src = root / "roles.json"
    src.write_text(json.dumps(ROLES, ensure_ascii=False), encoding="utf-8")
    e = {"merged_dir": str(merged), "batch_size": 4, "max_new_tokens": 12, "export_formats": ["f16", "q8_0"]}
    if bert:
        e.update(bertscore_model=str(bert), bertscore_layer=2)
    e.update(eval_)
    return build_config({"model": {"name_or_path": str(merged)}, "data": {"source": str(src)}, "eval": e,
                         "output_dir": str(root / "run")})


@pytest.fixture(scope="session")
def exported(merged_models, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """{arch: {fmt: gguf path}} written once (no check)."""
    out = {}
    for arch, merged in merged_models.items():
        cfg = make_cfg(tmp_path_factory.mktemp(f"export-{arch}"), merged)
        export(cfg, check=False)
        out[arch] = {fmt: gguf_path(cfg, fmt) for fmt in cfg.eval.export_formats}
    return out


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def _merged(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


# ---------------------------------------------------------------------------------------------------------------------
# Read back by transformers


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_f16_gguf_has_the_merged_models_logits(exported, merged_models, arch):
    merged, tok = _merged(merged_models[arch])
    model, gguf_tok = load_gguf_with_transformers(exported[arch]["f16"])
    ids = tok(SAMPLE, add_special_tokens=False)["input_ids"]
    assert gguf_tok(SAMPLE, add_special_tokens=False)["input_ids"] == ids
    assert gguf_tok.chat_template == tok.chat_template
    diff = float((_logits(model, ids) - _logits(merged, ids)).abs().max())
    assert diff <= 1e-4, diff


def test_q8_0_gguf_stays_close_to_the_merged_model(exported, merged_models):
    from kit.chat import generation_prompt
    from kit.generation import generate_batched

    merged, tok = _merged(merged_models["llama"])
    model, _ = load_gguf_with_transformers(exported["llama"]["q8_0"])
    # q8_0: blocks of 32 weights, one scale each (the block's max |w| / 127): every weight read back within half a
    # step of its block's scale, so within max|w| / 254 of the tensor's largest weight.
    ours = dict(merged.named_parameters())
    for name, w in model.named_parameters():
        bound = float(ours[name].abs().max()) / 254 + 1e-3 * float(ours[name].abs().max())  # + f16 rounding of scales
        assert float((w - ours[name]).abs().max()) <= bound, name
    ids = tok(SAMPLE, add_special_tokens=False)["input_ids"]
    want, got = _logits(merged, ids), _logits(model, ids)
    agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    print(f"q8_0: next-token argmax agrees at {100 * agree:.0f}% of positions; max |logit diff| "
          f"{float((got - want).abs().max()):.2f} of max |logit| {float(want.abs().max()):.1f}")
    assert agree >= 0.8  # a random model with 0.3-std weights: errors grow through its layers; a trained one moves less
    prompts = [generation_prompt(tok, [{"role": "user", "content": f"{name}的{attr}是什么?"}])
               for name in ROLES for attr in ROLES[name]]
    same = sum(a == b for a, b in zip(generate_batched(merged, tok, prompts, 6, 8),
                                      generate_batched(model, tok, prompts, 6, 8)))
    # Stated, not asserted: a random model's next-token scores are near ties, so whole answers diverge easily.
    print(f"q8_0: {same}/{len(prompts)} greedy answers (8 tokens) equal to the float16 model's")


def test_tensor_types_and_metadata(exported):
    from gguf import GGUFReader

    r = GGUFReader(exported["llama"]["q8_0"])
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.ggml.")
              or k in ("tokenizer.ggml.pre", "tokenizer.ggml.model", "tokenizer.ggml.eos_token_id")}
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == 2 and fields["llama.attention.head_count_kv"] == 2
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.eos_token_id"] == 2  # <|im_end|>
    assert "<|im_start|>" in fields["tokenizer.chat_template"]
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.attn_q.weight"] == "Q8_0"
    assert "output.weight" not in types  # tied embeddings: llama.cpp reuses token_embd
    qwen = {t.name for t in GGUFReader(exported["qwen2"]["f16"]).tensors}
    assert {"blk.0.attn_q.bias", "output.weight"} <= qwen


def test_permute_pairs_rotated_halves():
    # One head of dim 4: transformers keeps rows (x0, x1 | y0, y1) where (x_i, y_i) rotate together; llama.cpp wants
    # the pairs adjacent: x0, y0, x1, y1.
    w = np.array([[0.0], [1.0], [10.0], [11.0]])
    assert permute_rows(w, 1)[:, 0].tolist() == [0.0, 10.0, 1.0, 11.0]


def test_pre_tokenizer_names():
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}) == "gpt-2"
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": True}]}}) == "smollm"
    qwen = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
            "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
    seq = {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": qwen}},
                                                 {"type": "ByteLevel", "use_regex": False}]}
    assert pre_tokenizer_name({"pre_tokenizer": seq}) == "qwen2"
    with pytest.raises(ExportError, match="not one the kit can name for llama.cpp"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "Whitespace"}})


# ---------------------------------------------------------------------------------------------------------------------
# The Ollama template: rendered by a small Go-template interpreter (the constructs ollama_template writes)


def render_go(template: str, messages: list[dict]) -> str:
    parts = re.split(r"(\{\{.*?\}\})", template)

    def parse(i: int, stop: tuple[str, ...]):
        nodes = []
        while i < len(parts):
            p = parts[i]
            action = p[2:-2].strip() if p.startswith("{{") else None
            if action is None:
                nodes.append(("text", p))
                i += 1
            elif action.startswith(stop) or action == "end":
                return nodes, i
            elif action.startswith("range "):
                body, i = parse(i + 1, ())
                nodes.append(("range", body))
                i += 1
            elif action.startswith("if "):
                branches = []
                cond = action[3:]
                while True:
                    body, i = parse(i + 1, ("else",))
                    branches.append((cond, body))
                    act = parts[i][2:-2].strip()
                    if act == "end":
                        break
                    cond = act[8:] if act.startswith("else if ") else "true"
                nodes.append(("if", branches))
                i += 1
            else:
                nodes.append(("expr", action))
                i += 1
        return nodes, i

    def test(cond: str, env: dict) -> bool:
        if cond == "true":
            return True
        m = re.fullmatch(r'eq \$m\.Role "(\w+)"', cond)
        if m:
            return env["m"]["role"] == m.group(1)
        after_system = env["i"] == 1 and messages[0]["role"] == "system"
        if cond == 'or (eq $i 0) (and (eq $i 1) (eq (index $.Messages 0).Role "system"))':
            return env["i"] == 0 or after_system
        if cond == 'and (eq $i 1) (eq (index $.Messages 0).Role "system")':
            return after_system
        m = re.fullmatch(r"eq \$i (\d+)", cond)
        assert m, cond
        return env["i"] == int(m.group(1))

    def run(nodes, env) -> str:
        out = ""
        for kind, x in nodes:
            if kind == "text":
                out += x
            elif kind == "expr":
                assert x == "$m.Content", x
                out += env["m"]["content"]
            elif kind == "range":
                for i, m in enumerate(messages):
                    out += run(x, {"i": i, "m": m})
            else:
                out += next((run(body, env) for cond, body in x if test(cond, env)), "")
        return out

    nodes, _ = parse(0, ())
    return run(nodes, {})


@pytest.mark.parametrize("kind", [CHATML, LLAMA3, DEEPSEEK])
@pytest.mark.parametrize("system", [False, True])
def test_modelfile_template_renders_as_the_chat_template(tokenizer_dirs, kind, system):
    from transformers import AutoTokenizer

    from kit.chat import generation_prompt

    tok = AutoTokenizer.from_pretrained(tokenizer_dirs[kind])
    conv = [{"role": "user", "content": "钟离来自哪里?"}, {"role": "assistant", "content": "钟离来自璃月。"},
            {"role": "user", "content": "Who is Lisa?"}]
    if system:
        conv = [{"role": "system", "content": "You answer briefly."}] + conv
    template = ollama_template(tok, "none")
    assert render_go(template, conv) == generation_prompt(tok, conv)


def test_modelfile_template_closes_the_think_block_with_strip(tokenizer_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dirs[DEEPSEEK])
    got = render_go(ollama_template(tok, "strip"), [{"role": "user", "content": "hi"}])
    assert got.endswith("<｜Assistant｜><think>\n\n</think>\n\n")


def test_modelfile(exported):
    text = exported["llama"]["f16"].with_suffix(".Modelfile").read_text(encoding="utf-8")
    assert f"FROM ./{exported['llama']['f16'].name}\n" in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature 0" in text
    assert 'TEMPLATE """{{ range $i, $m := .Messages }}' in text


# ---------------------------------------------------------------------------------------------------------------------
# Errors: each before any work, nothing half-written


def test_unknown_format_is_a_config_error(tmp_path, merged_models):
    with pytest.raises(ConfigError, match=r"eval.export_formats.*q4_k"):
        make_cfg(tmp_path, merged_models["llama"], export_formats=["f16", "q4_k"])


def test_unsupported_architecture(tmp_path, merged_models):
    fake = tmp_path / "mistral"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}))
    cfg = make_cfg(tmp_path, fake)
    with pytest.raises(ExportError, match=r"architecture 'gpt_neox' \(GPTNeoXForCausalLM\).*supported: llama, qwen2"):
        export(cfg, check=False)
    assert not (tmp_path / "run" / "gguf").exists()


def test_nothing_to_export(tmp_path):
    cfg = make_cfg(tmp_path, tmp_path / "no-merged")
    with pytest.raises(ExportError, match="nothing to export: no merged model .* and no adapter"):
        export(cfg, check=False)


def test_existing_output_is_refused_unless_overwrite(tmp_path, merged_models):
    cfg = make_cfg(tmp_path, merged_models["llama"], export_formats=["f16"])
    gguf_path(cfg, "f16").parent.mkdir(parents=True)
    gguf_path(cfg, "f16").write_bytes(b"old")
    with pytest.raises(ExportError, match=r"run-f16.gguf: already exists; set eval.overwrite=true"):
        export(cfg, check=False)
    assert gguf_path(cfg, "f16").read_bytes() == b"old"
    export(make_cfg(tmp_path, merged_models["llama"], export_formats=["f16"], overwrite=True), check=False)
    assert gguf_path(cfg, "f16").read_bytes()[:4] == b"GGUF"


def test_a_failed_write_leaves_nothing(tmp_path, merged_models, monkeypatch):
    import eval.gguf

    cfg = make_cfg(tmp_path, merged_models["llama"], export_formats=["f16"])
    real, calls = eval.gguf._convert, []

    def failing(p):
        calls.append(p)
        if len(calls) == 5:
            raise OSError("disk full")
        return real(p)

    monkeypatch.setattr(eval.gguf, "_convert", failing)
    with pytest.raises(OSError, match="disk full"):
        export(cfg, check=False)
    assert list(gguf_path(cfg, "f16").parent.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------------
# Read back by llama.cpp


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llama_cpp_reads_the_tokenizer_and_the_logits(exported, merged_models, arch):
    from eval.export import load_llama_cpp

    llama_cpp()
    merged, tok = _merged(merged_models[arch])
    llm = load_llama_cpp(exported[arch]["f16"], n_ctx=256, logits_all=True)
    ids = tok(SAMPLE, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(SAMPLE.encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    got = torch.tensor(np.array(llm.scores[: len(ids)]))
    want = _logits(merged, ids)
    diff = float((got - want).abs().max())
    print(f"{arch}: llama.cpp f16 logits within {diff:.2e} of the merged model's (max |logit| {want.abs().max():.1f})")
    assert diff <= LLAMA_CPP_LOGIT_RTOL * float(want.abs().max())
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.95


def test_an_answer_of_broken_characters_stops_at_max_new_tokens(exported, merged_models):
    """A file that lost its facts may write UTF-8 lead bytes without end; llama-cpp-python does not count those
    tokens against max_tokens, so the answer ran to the end of the context and llama_decode failed there."""
    from eval.export import chat_answer, load_llama_cpp

    llama_cpp()
    _, tok = _merged(merged_models["llama"])
    lead = tok.convert_tokens_to_ids("\u00e4")  # byte 0xE4 in the byte-level alphabet: opens a 3-byte character
    assert lead != tok.unk_token_id
    llm = load_llama_cpp(exported["llama"]["f16"], n_ctx=256)
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(RuntimeError, match="llama_decode returned"):  # llama-cpp-python's own loop, uncapped
        llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, max_tokens=12, seed=0,
                                   logit_bias={lead: 100.0})
    llm.reset()

    steps = []

    def lead_bytes(_ids, scores):
        steps.append(1)
        scores = scores.copy()
        scores[lead] += 100.0
        return scores

    # 12 lead bytes, then the end of generation the cap forces (13 tokens sampled); unfinished characters are
    # dropped from the text, so the answer is empty, and scored as an empty answer
    assert chat_answer(llm, messages, 12, processors=(lead_bytes,)) == ""
    assert len(steps) == 13
    # the cap changes nothing in an answer that ends by itself or at max_tokens: the same text as llama-cpp-python's own
    plain = llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, max_tokens=12, seed=0)
    assert chat_answer(llm, messages, 12) == (plain["choices"][0]["message"]["content"] or "")


def export_main(cfg, tmp_path: Path) -> dict:
    """Build the run's data, write its config as YAML and run `python -m eval.export CONFIG` (main) as a user does;
    the artifacts.json it wrote."""
    import yaml

    from data_prep.build import build

    build(cfg)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict(), allow_unicode=True), encoding="utf-8")
    assert main([str(config)]) == 0
    return json.loads((tmp_path / "run" / "eval" / "artifacts.json").read_text(encoding="utf-8"))


def test_export_main_checks_every_artifact(merged_models, tiny_bert, tmp_path, capsys):
    llama_cpp()
    result = export_main(make_cfg(tmp_path, merged_models["llama"], tiny_bert), tmp_path)
    rows = {a["artifact"]: a for a in result["artifacts"]}
    assert list(rows) == ["merged", "gguf f16 (transformers)", "gguf f16 (llama.cpp)", "gguf q8_0 (transformers)",
                          "gguf q8_0 (llama.cpp)"]
    n = result["rows"]
    assert n == len([r for r in map(json.loads, (tmp_path / "run" / "data" / "test.jsonl").open()) if r["turns"] == 1])
    assert rows["gguf f16 (transformers)"]["equal_to_merged"] == n
    print({k: (v["equal_to_merged"], v["value_match_n"]) for k, v in rows.items()})
    assert rows["gguf f16 (llama.cpp)"]["equal_to_merged"] >= n - 2  # its own f16 kernels: a near tie may flip
    md = (tmp_path / "run" / "eval" / "artifacts.md").read_text(encoding="utf-8")
    assert "| gguf f16 (transformers) |" in md and f"| {n}/{n} |" in md


def test_llama_cpp_killed_by_sigill_is_a_row_and_the_rest_is_still_checked(merged_models, tiny_bert, tmp_path, capsys,
                                                                           monkeypatch):
    """Issue 33: llama.cpp dies of SIGILL reading the q8_0 file (as its AMX int8 kernels do where the machine does not
    grant AMX). The command ends normally, the table has every artifact, the q8_0 llama.cpp row says what happened
    and how to rebuild, and the f16 file, read after the crash, is still checked by llama.cpp."""
    import eval.export
    from tests.native_crash import llama_cpp_dies_on_q8_0

    llama_cpp()
    monkeypatch.setattr(eval.export, "answer_with_llama_cpp", llama_cpp_dies_on_q8_0)
    cfg = make_cfg(tmp_path, merged_models["llama"], tiny_bert, export_formats=["q8_0", "f16"])
    result = export_main(cfg, tmp_path)
    rows = {a["artifact"]: a for a in result["artifacts"]}
    assert list(rows) == ["merged", "gguf q8_0 (transformers)", "gguf q8_0 (llama.cpp)", "gguf f16 (transformers)",
                          "gguf f16 (llama.cpp)"]
    assert result["failed"] == ["gguf q8_0 (llama.cpp)"]
    crashed = rows["gguf q8_0 (llama.cpp)"]
    assert crashed["value_match"] is None and crashed["equal_to_merged"] is None
    assert crashed["error"].startswith("llama.cpp was killed by SIGILL reading run-q8_0.gguf: your llama-cpp-python "
                                       "build uses instructions this machine cannot run")
    n = result["rows"]
    assert rows["gguf f16 (llama.cpp)"]["equal_to_merged"] >= n - 2  # checked after the crash, by llama.cpp itself
    assert "error" not in rows["gguf q8_0 (transformers)"]
    md = (tmp_path / "run" / "eval" / "artifacts.md").read_text(encoding="utf-8")
    assert "| gguf q8_0 (llama.cpp) | 3.3 | 8.50 | no | **failed** | - | - | - |" in md
    assert "**gguf q8_0 (llama.cpp) was not checked.** llama.cpp was killed by SIGILL reading run-q8_0.gguf" in md
    out = capsys.readouterr().out
    assert "gguf q8_0 (llama.cpp): llama.cpp was killed by SIGILL reading run-q8_0.gguf" in out
    assert "rebuild it with: CMAKE_ARGS=" in out


def test_value_matches_leaves_rows_without_a_value_unjudged():
    """The count bench/quant_mix.py and the artifact table share: a row with no expected value (a replay or
    unknown-person row) is neither right nor wrong, as in eval.metrics."""
    from kit.specificity import value_matches

    rows = [{"expected": "男性"}, {"value": "蒙德"}, {"expected": "璃月"}, {}]
    assert value_matches(rows, ["钟离是男性", "丽莎来自蒙德", "钟离来自蒙德", "我不知道"]) == (2, 3)
    assert value_matches(rows, ["", "", "", ""]) == (0, 3)


def test_an_empty_answer_scores_zero_in_the_artifact_check(tiny_bert):
    """Issue 26, fault 1: an artifact that answers nothing (llama.cpp's empty content, a think block only) scores
    F1 0 and no value, and the table counts it."""
    from eval.export import artifact_scores, markdown
    from eval.metrics import Scorer

    rows = [{"messages": [{"role": "user", "content": "钟离是什么性别?"}, {"role": "assistant", "content": "钟离是男性"}],
             "expected": "男性"},
            {"messages": [{"role": "user", "content": "丽莎来自哪里?"}, {"role": "assistant", "content": "丽莎来自蒙德"}],
             "expected": "蒙德"}]
    got = artifact_scores(Scorer(str(tiny_bert), 2, "zh"), rows, ["钟离是男性", ""], ["钟离是男性", "丽莎来自蒙德"])
    assert got == {"rows": 2, "value_match": 0.5, "value_match_n": "1/2", "bertscore_f1": pytest.approx(0.5, abs=1e-5),
                   "equal_to_merged": 1, "empty_answers": 1}
    md = markdown({"rows": 2, "llama_cpp": True,
                   "artifacts": [{**got, "artifact": "merged", "reader": "the kit", "seconds": 1.0}]})
    assert "| merged | - | - | - | 50.0% (1/2) | 0.500 | 1/2 | 1 | the kit |" in md
    assert "export_tensor_types" not in md
    q4 = {**got, "artifact": "gguf q4_k_m (llama.cpp)", "reader": "llama.cpp", "seconds": 1.0, "mib": 90.4,
          "bits_per_weight": 5.53, "imatrix": False, "tensor_overrides": ["token_embd=q5_0"]}
    md = markdown({"rows": 2, "llama_cpp": True,
                   "artifacts": [{**got, "artifact": "merged", "reader": "the kit", "seconds": 1.0}, q4]})
    assert "| gguf q4_k_m (llama.cpp) | 90.4 | 5.53 | no | 50.0% (1/2) | 0.500 | 1/2 | 1 | llama.cpp |" in md
    assert ("llama.cpp's files were written with eval.export_tensor_types `token_embd=q5_0` (the first matching "
            "pattern names a tensor's type; the others keep the format's own mix).") in md
