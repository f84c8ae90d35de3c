"""llama.cpp's quantizer in eval.export: k-quants and i-quants from the kit's f16 file, the importance matrix from the
run's training conversations, eval.export_formats=[auto], and the errors (issue 30)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.export import export, gguf_path
from eval.gguf import ExportError
from tests.conftest import CHATML
from tests.test_export import export_main, llama_cpp, make_cfg


@pytest.fixture(scope="session")
def wide_model(tokenizer_dirs, tmp_path_factory) -> Path:
    """A tiny Llama whose rows (256, 512) are whole k-quant blocks of 256, saved in float16 as a merged export: the
    quickstart's SmolLM2 is 576 wide, which llama.cpp quantizes with fallback types instead."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dirs[CHATML])
    torch.manual_seed(3)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, initializer_range=0.05,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    out = tmp_path_factory.mktemp("merged-wide")
    model.to(torch.float16).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _types(path: Path) -> dict[str, str]:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def test_k_quants_are_written_by_llama_cpp_with_and_without_the_importance_matrix(wide_model, tmp_path):
    from data_prep.build import build

    llama_cpp()
    cfg = make_cfg(tmp_path, wide_model, export_formats=["q4_k_m", "q4_k_m-noimatrix", "iq4_xs"], export_imatrix=True)
    build(cfg)
    result = export(cfg, check=False)
    infos = {f["format"]: f for f in result["files"]}
    with_m, without = gguf_path(cfg, "q4_k_m"), gguf_path(cfg, "q4_k_m-noimatrix")
    types = _types(with_m)
    # llama.cpp's q4_K_M mix: Q4_K for most matrices, Q6_K for some (attn_v, ffn_down of the first layers), the tied
    # embedding (used as the output matrix) Q6_K, norms F32
    assert types["blk.0.attn_q.weight"] == "Q4_K" and types["blk.1.ffn_up.weight"] == "Q4_K"
    assert types["token_embd.weight"] == "Q6_K" and types["blk.0.attn_norm.weight"] == "F32"
    assert _types(gguf_path(cfg, "iq4_xs"))["blk.0.attn_q.weight"] == "IQ4_XS"
    assert infos["q4_k_m"]["imatrix"] is True and infos["q4_k_m-noimatrix"]["imatrix"] is False
    # the matrix changes how the blocks are quantized: same types, other bytes
    assert _types(without) == types and with_m.read_bytes() != without.read_bytes()
    assert 4.5 < infos["q4_k_m"]["bits_per_weight"] < 6.6  # mostly Q6_K embedding (6.56) with Q4_K (4.5) layers
    assert 4.2 < infos["iq4_xs"]["bits_per_weight"] < infos["q4_k_m"]["bits_per_weight"]
    assert (with_m.with_suffix(".Modelfile")).read_text(encoding="utf-8").startswith("# Ollama")
    assert not list(with_m.parent.glob(".kit-*"))  # the f16 source llama.cpp read from is gone
    assert with_m.stat().st_mode & 0o777 == 0o644  # readable by Ollama running as another user
    imatrix = with_m.parent / "run-imatrix.npz"
    with np.load(imatrix) as z:
        names = sorted(k for k in z.files if not k.startswith("__"))
    assert names == ["blk.0.attn_k.weight", "blk.0.attn_output.weight", "blk.0.attn_q.weight", "blk.0.attn_v.weight",
                     "blk.0.ffn_down.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight",
                     "blk.1.attn_k.weight", "blk.1.attn_output.weight", "blk.1.attn_q.weight", "blk.1.attn_v.weight",
                     "blk.1.ffn_down.weight", "blk.1.ffn_gate.weight", "blk.1.ffn_up.weight", "output.weight",
                     "token_embd.weight"]


def test_tensor_types_override_the_formats_own_mix(wide_model, tmp_path):
    """eval.export_tensor_types, as llama-quantize's --tensor-type: the first matching pattern names the type, the
    tensors no pattern matches keep q4_k_m's mix."""
    llama_cpp()
    cfg = make_cfg(tmp_path, wide_model, export_formats=["q4_k_m"],
                   export_tensor_types=["blk\\.0\\.ffn_down=q8_0", "ffn_down=q5_k", "token_embd=Q5_0"])
    result = export(cfg, check=False)
    types = _types(gguf_path(cfg, "q4_k_m"))
    assert types["blk.0.ffn_down.weight"] == "Q8_0"  # the first entry wins over the second
    assert types["blk.1.ffn_down.weight"] == "Q5_K"
    assert types["token_embd.weight"] == "Q5_0"  # the format's own choice: Q6_K (above)
    assert types["blk.0.attn_q.weight"] == "Q4_K" and types["blk.1.ffn_up.weight"] == "Q4_K"
    assert result["files"][0]["tensor_overrides"] == ["blk\\.0\\.ffn_down=q8_0", "ffn_down=q5_k", "token_embd=Q5_0"]


@pytest.mark.parametrize("entry, message", [
    ("ffn_down=q6k", r"'ffn_down=q6k': unknown type 'q6k' \(did you mean 'q6_k'\?\); choose from f32, f16"),
    ("q5_0", r"'q5_0': give PATTERN=TYPE, PATTERN searched in GGUF tensor names"),
    ("blk.[0-3=q8_0", r"'blk.\[0-3=q8_0': 'blk.\[0-3' is not a regular expression"),
])
def test_tensor_types_are_checked_before_any_work(merged_models, tmp_path, entry, message):
    from kit.config import ConfigError

    with pytest.raises(ConfigError, match=r"eval\.export_tensor_types: " + message):
        make_cfg(tmp_path, merged_models["llama"], export_formats=["q4_k_m"], export_tensor_types=[entry])
    assert not (tmp_path / "run").exists()


def test_the_importance_matrix_is_the_mean_squared_input_of_each_layer(wide_model, tokenizer_dirs):
    """Checked against the layer's input computed by hand: the first attention's input is the RMS-normed embedding
    of the rendered conversation; padding in a batch changes nothing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.quantize import compute_imatrix

    tok = AutoTokenizer.from_pretrained(wide_model)
    short = [{"role": "user", "content": "钟离来自哪里?"}, {"role": "assistant", "content": "璃月"}]
    long = [{"role": "user", "content": "Where is Lisa from, and what is her element?"},
            {"role": "assistant", "content": "Lisa is from Mondstadt; her element is Electro."}]
    together, n_together = compute_imatrix(wide_model, tok, [short, long], max_length=512, batch_size=2)
    alone, n_alone = compute_imatrix(wide_model, tok, [short], max_length=512, batch_size=1)
    ids_short = tok(tok.apply_chat_template(short, tokenize=False), add_special_tokens=False)["input_ids"]
    ids_long = tok(tok.apply_chat_template(long, tokenize=False), add_special_tokens=False)["input_ids"]
    assert n_alone == len(ids_short) and n_together == len(ids_short) + len(ids_long)
    model = AutoModelForCausalLM.from_pretrained(wide_model, dtype=torch.float32)
    x = model.model.embed_tokens.weight[torch.tensor(ids_short)].detach()
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + model.config.rms_norm_eps)
    normed = normed * model.model.layers[0].input_layernorm.weight.detach()
    want = normed.pow(2).mean(0).numpy()
    assert alone["blk.0.attn_q.weight"].shape == (256,)
    np.testing.assert_allclose(alone["blk.0.attn_q.weight"], want, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(alone["blk.0.attn_q.weight"], alone["blk.0.attn_v.weight"])  # same input
    assert alone["blk.0.ffn_down.weight"].shape == (512,)
    assert len(ids_long) > len(ids_short)  # the short row was padded in the batch of two, and the pads not counted
    assert not np.allclose(together["blk.0.attn_q.weight"], alone["blk.0.attn_q.weight"])


def test_auto_keeps_the_smallest_file_that_keeps_the_facts(merged_models, tiny_bert, tmp_path, monkeypatch):
    """The merged model answers every question right (patched); llama.cpp answers right only from the q8_0 file
    (patched, in its child process): iq4_xs, q4_k_m, q5_k_m and q6_k are tried, found short and removed; q8_0 is
    kept, and the table says why for each."""
    import eval.export
    from tests.native_crash import right_only_from_q8_0

    llama_cpp()
    monkeypatch.setattr(eval.export, "answer_with_kit", lambda cfg, model, tok, rows: [
        r["messages"][-1]["content"] for r in rows])
    monkeypatch.setattr(eval.export, "answer_with_llama_cpp", right_only_from_q8_0)
    result = export_main(make_cfg(tmp_path, merged_models["llama"], tiny_bert, export_formats=["auto"]), tmp_path)
    assert result["auto"]["format"] == "q8_0" and result["auto"]["tried"] == ["iq4_xs", "q4_k_m", "q5_k_m", "q6_k",
                                                                                "q8_0"]
    reasons = {a["format"]: a["auto"] for a in result["artifacts"] if a.get("auto")}
    assert reasons["iq4_xs"] == "not kept: value match 0.0% < 99.0%"
    assert reasons["q6_k"] == "not kept: value match 0.0% < 99.0%"
    assert reasons["q8_0"] == "kept: the smallest file within 1 point(s) of the merged model's value match"
    out = tmp_path / "run" / "gguf"
    assert sorted(p.name for p in out.iterdir()) == ["run-q8_0.Modelfile", "run-q8_0.gguf"]  # matrix off: default
    md = (tmp_path / "run" / "eval" / "artifacts.md").read_text(encoding="utf-8")
    assert "**auto kept run-q8_0.gguf** (tried iq4_xs, q4_k_m, q5_k_m, q6_k, q8_0, smallest first" in md


def test_auto_stops_at_the_first_file_that_keeps_the_facts(merged_models, tiny_bert, tmp_path):
    """The random tiny model's value match is whatever it is; the smallest candidate through llama.cpp is within the
    tolerance when the merged model knows nothing (0%): iq4_xs is kept and nothing larger is written."""
    from data_prep.build import build

    llama_cpp()
    cfg = make_cfg(tmp_path, merged_models["llama"], tiny_bert, export_formats=["auto"], export_tolerance=1.0 - 1e-6,
                   export_imatrix=True)
    build(cfg)
    result = export(cfg)["check"]
    assert result["auto"]["format"] == "iq4_xs" and result["auto"]["tried"] == ["iq4_xs"]
    assert sorted(p.name for p in (tmp_path / "run" / "gguf").iterdir()) == [
        "run-imatrix.npz", "run-iq4_xs.Modelfile", "run-iq4_xs.gguf"]


def test_the_importance_matrix_is_reused_while_model_and_rows_are_the_same(wide_model, tmp_path, capsys):
    from data_prep.build import build

    llama_cpp()
    cfg = make_cfg(tmp_path, wide_model, export_formats=["q4_k_s"], overwrite=True, export_imatrix=True)
    build(cfg)
    export(cfg, check=False)
    assert "importance matrix: 16 tensors from" in capsys.readouterr().out
    export(cfg, check=False)
    assert "importance matrix:" not in capsys.readouterr().out  # reused, not computed again
    with open(cfg.data_dir / "train.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "新的问题?"},
                                         {"role": "assistant", "content": "新的回答。"}]}, ensure_ascii=False) + "\n")
    export(cfg, check=False)
    assert "importance matrix: 16 tensors from" in capsys.readouterr().out  # other rows: computed again


# ---------------------------------------------------------------------------------------------------------------------
# Errors, before any work


def test_llama_cpp_formats_without_llama_cpp_say_how_to_install(merged_models, tmp_path, monkeypatch):
    import eval.export

    monkeypatch.setattr(eval.export, "llama_cpp_available", lambda: False)
    cfg = make_cfg(tmp_path, merged_models["llama"], export_formats=["f16", "q4_k_m"])
    with pytest.raises(ExportError, match=r"\['q4_k_m'\] are written by llama\.cpp's quantizer, and llama-cpp-python "
                                          r"is not installed: CMAKE_ARGS=-DGGML_NATIVE=OFF pip install -e "
                                          r"'\.\[llamacpp\]'"):
        export(cfg, check=False)
    assert not (tmp_path / "run" / "gguf").exists()


def test_auto_goes_alone_and_needs_the_check(merged_models, tmp_path):
    cfg = make_cfg(tmp_path, merged_models["llama"], export_formats=["auto", "f16"])
    with pytest.raises(ExportError, match=r"auto picks the format itself; give it alone, not with \['f16'\]"):
        export(cfg)
    cfg = make_cfg(tmp_path, merged_models["llama"], export_formats=["auto"])
    with pytest.raises(ExportError, match=r"cannot run with --no-check"):
        export(cfg, check=False)
    assert not (tmp_path / "run" / "gguf").exists()


@pytest.mark.parametrize("prompt", ['Answer in one line. Say """yes""" when sure.', 'Always end with "ok"'])
def test_a_system_prompt_ollama_would_cut_short_is_refused(merged_models, tmp_path, prompt):
    from kit.config import build_config

    cfg = make_cfg(tmp_path, merged_models["llama"], export_formats=["f16"])
    raw = cfg.to_dict()
    raw["data"]["system_prompt"] = prompt
    cfg = build_config(raw)
    with pytest.raises(ExportError, match=r"data\.system_prompt: contains three double quotes in a row or ends with "
                                          r"a double quote"):
        export(cfg, check=False)
    assert not (tmp_path / "run" / "gguf").exists()


def test_export_tolerance_is_a_fraction(merged_models, tmp_path):
    from kit.config import ConfigError

    with pytest.raises(ConfigError, match=r"eval\.export_tolerance: a fraction of the questions in \[0, 1\)"):
        make_cfg(tmp_path, merged_models["llama"], export_tolerance=1.5)
