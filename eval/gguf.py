"""A merged Hugging Face model directory -> one GGUF file (llama.cpp, Ollama, LM Studio), in pure Python with the
`gguf` package, and the Ollama Modelfile that goes beside it.

What llama.cpp reads from the file, and where it comes from here:
- architecture metadata (`llama.*` / `qwen2.*`) from config.json;
- tensors under llama.cpp's names (gguf.TensorNameMap), q/k rows of Llama models reordered from the rotate-half
  layout of transformers to the interleaved pairs llama.cpp's rope expects (Qwen2 uses NeoX rope: no reorder);
- the tokenizer (byte-level BPE): tokens, token types, merges, the pre-tokenizer name, special ids, add-bos;
- the chat template and the end-of-turn tokens.
The weights are read one tensor at a time from the safetensors files and written as they are converted, so memory
stays at about one tensor whatever the model size.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.config import GGUF_WRITER_FORMATS
from kit.errors import ExportError

# Output formats: the types the gguf package can write (its quantizers are numpy; k-quants it can only read, and
# eval/quantize.py has llama.cpp write them).
FORMATS = GGUF_WRITER_FORMATS
# Architectures written, keyed by config.model_type.
ARCHITECTURES = ("llama", "qwen2")


def _gguf():
    import gguf

    return gguf


def quant_type(fmt: str):
    g = _gguf()
    return {"f32": g.GGMLQuantizationType.F32, "f16": g.GGMLQuantizationType.F16,
            "bf16": g.GGMLQuantizationType.BF16, "q8_0": g.GGMLQuantizationType.Q8_0,
            "q4_0": g.GGMLQuantizationType.Q4_0, "q4_1": g.GGMLQuantizationType.Q4_1,
            "q5_0": g.GGMLQuantizationType.Q5_0, "q5_1": g.GGMLQuantizationType.Q5_1}[fmt]


def file_type(fmt: str):
    t = _gguf().LlamaFileType
    return {"f32": t.ALL_F32, "f16": t.MOSTLY_F16, "bf16": t.MOSTLY_BF16, "q8_0": t.MOSTLY_Q8_0,
            "q4_0": t.MOSTLY_Q4_0, "q4_1": t.MOSTLY_Q4_1, "q5_0": t.MOSTLY_Q5_0, "q5_1": t.MOSTLY_Q5_1}[fmt]


def check_architecture(config: dict, where: str) -> str:
    """config.model_type when this module writes it, else an error naming it and what is supported."""
    kind = config.get("model_type")
    if kind not in ARCHITECTURES:
        raise ExportError(f"{where}: architecture '{kind}' ({', '.join(config.get('architectures') or [])}) cannot "
                          f"be exported to GGUF by the kit; supported: {', '.join(ARCHITECTURES)}. Convert it with "
                          f"llama.cpp's convert_hf_to_gguf.py instead")
    rope = config.get("rope_scaling") or {}
    params = config.get("rope_parameters") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or params.get("rope_type") or "default"
    if rope_type != "default":
        raise ExportError(f"{where}: rope scaling '{rope_type}' is not written by the kit's GGUF export (only "
                          f"default rope); convert with llama.cpp's convert_hf_to_gguf.py")
    return kind


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for the pre-tokenizer (how text is split before BPE), read from tokenizer.json. Only splits
    this function recognises are written: a wrong name would tokenize differently in llama.cpp, silently."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    regexes = [(s.get("pattern") or {}).get("Regex", "") for s in steps if s.get("type") == "Split"]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    if kinds == ["ByteLevel"] and byte_level[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level[0].get("use_regex", True):
        return "smollm"
    if len(regexes) == 1 and kinds == ["Split", "ByteLevel"]:
        r = regexes[0]
        if r.startswith("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"):
            return "llama-bpe" if "\\p{N}{1,3}" in r else "qwen2"
    if len(regexes) == 3 and kinds == ["Split", "Split", "Split", "ByteLevel"] and regexes[0] == "\\p{N}{1,3}":
        return "deepseek-r1-qwen"
    raise ExportError(f"tokenizer pre-tokenizer {json.dumps(pre)[:300]} is not one the kit can name for llama.cpp "
                      f"(known: gpt-2, smollm, qwen2, llama-bpe, deepseek-r1-qwen); convert with llama.cpp's "
                      f"convert_hf_to_gguf.py, which recognises more")


@dataclass
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    bos: int | None
    eos: int | None
    pad: int | None
    unk: int | None
    add_bos: bool
    eot: int | None
    chat_template: str | None


def vocab_of(tok, n_vocab: int, stops: list[int]) -> Vocab:
    g = _gguf()
    spec = json.loads(tok.backend_tokenizer.to_str())
    decoder = spec.get("decoder") or {}
    if spec["model"]["type"] != "BPE" or not any(d.get("type") == "ByteLevel"
                                                  for d in [decoder, *decoder.get("decoders", [])]):
        raise ExportError(f"tokenizer model '{spec['model']['type']}' (not byte-level BPE) is not exported by the "
                          f"kit; convert with llama.cpp's convert_hf_to_gguf.py")
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    if max(by_id) >= n_vocab:
        raise ExportError(f"tokenizer has token id {max(by_id)} but the model's embedding has {n_vocab} rows")
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(g.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i]["content"])
            types.append(g.TokenType.CONTROL if added[i].get("special") else g.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(g.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    eos = stops[0] if stops else tok.eos_token_id
    eot = next((s for s in stops[1:] if s != eos), None)
    template = tok.chat_template if isinstance(tok.chat_template, str) else None
    return Vocab(tokens, [int(t) for t in types], merges, pre_tokenizer_name(spec), tok.bos_token_id, eos,
                 tok.pad_token_id, tok.unk_token_id, adds_bos(tok), eot, template)


def adds_bos(tok) -> bool:
    """The tokenizer puts BOS in front of text it tokenises with special tokens (DeepSeek-R1-Distill's `add_bos_token:
    true`). Written to the GGUF as add_bos_token: llama.cpp and Ollama then add BOS to every prompt they tokenise."""
    plain = tok("a", add_special_tokens=False)["input_ids"]
    with_special = tok("a")["input_ids"]
    return tok.bos_token_id is not None and len(with_special) > len(plain) and with_special[0] == tok.bos_token_id


# ---------------------------------------------------------------------------------------------------------------------
# Tensors


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a Llama q/k projection from transformers' rotate-half layout (each head: first halves, then second
    halves of the rotated pairs) to llama.cpp's, where the two members of a pair are adjacent."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [model_dir / n for n in names]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise ExportError(f"{model_dir}: no model.safetensors (or index) to export; make the merged export with "
                      f"`python -m eval.merge CONFIG`")


def _tensor_names(model_dir: Path) -> list[tuple[Path, str]]:
    from safetensors import safe_open

    out = []
    for f in safetensors_files(model_dir):
        with safe_open(str(f), framework="pt") as st:
            out.extend((f, k) for k in st.keys())
    return out


@dataclass
class Planned:
    gguf_name: str
    file: Path
    hf_name: str
    shape: tuple[int, ...]
    qtype: object  # gguf.GGMLQuantizationType
    permute_heads: int | None


def tensor_name_map(config: dict):
    """gguf's map from a Hugging Face tensor name to llama.cpp's ("model.layers.0.self_attn.q_proj.weight" ->
    "blk.0.attn_q.weight") for the model config.json describes."""
    g = _gguf()
    arch = {"llama": g.MODEL_ARCH.LLAMA, "qwen2": g.MODEL_ARCH.QWEN2}[config["model_type"]]
    return g.get_tensor_name_map(arch, config["num_hidden_layers"])


def plan_tensors(model_dir: Path, config: dict, fmt: str) -> list[Planned]:
    """What each stored tensor becomes: GGUF name, type (1-D tensors stay f32; a row length the block size does not
    divide stays f16, as llama.cpp's converter does), and whether its rows are reordered."""
    from safetensors import safe_open

    g = _gguf()
    names = tensor_name_map(config)
    target = quant_type(fmt)
    block = g.GGML_QUANT_SIZES[target][0]
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    planned = []
    for file, key in _tensor_names(model_dir):
        if key.endswith("rotary_emb.inv_freq"):
            continue
        if key == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"{model_dir}: tensor '{key}' has no GGUF name for architecture "
                              f"{config['model_type']}; this checkpoint is not a plain {config['model_type']} model")
        with safe_open(str(file), framework="pt") as st:
            shape = tuple(st.get_slice(key).get_shape())
        if len(shape) == 1:
            qtype = g.GGMLQuantizationType.F32
        elif target not in (g.GGMLQuantizationType.F32, g.GGMLQuantizationType.F16) and shape[-1] % block:
            qtype = g.GGMLQuantizationType.F16
        else:
            qtype = target
        permute = None
        if config["model_type"] == "llama" and name.endswith(("attn_q.weight", "attn_q.bias")):
            permute = heads
        elif config["model_type"] == "llama" and name.endswith(("attn_k.weight", "attn_k.bias")):
            permute = kv_heads
        planned.append(Planned(name, file, key, shape, qtype, permute))
    return planned


def _convert(p: Planned) -> np.ndarray:
    from safetensors import safe_open

    g = _gguf()
    with safe_open(str(p.file), framework="pt") as st:
        w = st.get_tensor(p.hf_name).float().numpy()
    if p.permute_heads:
        w = permute_rows(w, p.permute_heads)
    if p.qtype == g.GGMLQuantizationType.F32:
        return np.ascontiguousarray(w, dtype=np.float32)
    if p.qtype == g.GGMLQuantizationType.F16:
        return np.ascontiguousarray(w, dtype=np.float16)
    return g.quants.quantize(w, p.qtype)


def _nbytes(p: Planned) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape as the writer is given it, dtype, bytes) without converting the tensor."""
    g = _gguf()
    if p.qtype == g.GGMLQuantizationType.F32:
        return p.shape, np.dtype(np.float32), int(np.prod(p.shape)) * 4
    if p.qtype == g.GGMLQuantizationType.F16:
        return p.shape, np.dtype(np.float16), int(np.prod(p.shape)) * 2
    byte_shape = g.quant_shape_to_byte_shape(p.shape, p.qtype)
    return byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape))


# ---------------------------------------------------------------------------------------------------------------------
# The file


def write_gguf(model_dir: Path, tok, out: Path, fmt: str, stops: list[int], name: str) -> dict:
    """Write `out` (beside, then renamed: a crash leaves no half file under its name). Returns what was written."""
    g = _gguf()
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    kind = check_architecture(config, str(model_dir))
    n_vocab = config["vocab_size"]
    vocab = vocab_of(tok, n_vocab, stops)
    planned = plan_tensors(model_dir, config, fmt)
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))

    tmp = out.with_name(f".kit-tmp-{out.name}")
    w = g.GGUFWriter(str(tmp), kind)
    try:
        w.add_name(name)
        w.add_context_length(config["max_position_embeddings"])
        w.add_embedding_length(config["hidden_size"])
        w.add_block_count(config["num_hidden_layers"])
        w.add_feed_forward_length(config["intermediate_size"])
        w.add_head_count(heads)
        w.add_head_count_kv(config.get("num_key_value_heads") or heads)
        w.add_rope_freq_base(float(theta))
        w.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
        if head_dim != config["hidden_size"] // heads:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        if kind == "llama":
            w.add_rope_dimension_count(head_dim)
            w.add_vocab_size(n_vocab)
        w.add_file_type(file_type(fmt))
        if fmt not in ("f32", "f16", "bf16"):
            w.add_quantization_version(g.GGML_QUANT_VERSION)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(vocab.pre)
        w.add_token_list(vocab.tokens)
        w.add_token_types(vocab.types)
        w.add_token_merges(vocab.merges)
        for setter, value in ((w.add_bos_token_id, vocab.bos), (w.add_eos_token_id, vocab.eos),
                              (w.add_pad_token_id, vocab.pad), (w.add_unk_token_id, vocab.unk),
                              (w.add_eot_token_id, vocab.eot)):
            if value is not None:
                setter(int(value))
        w.add_add_bos_token(vocab.add_bos)
        if vocab.chat_template:
            w.add_chat_template(vocab.chat_template)
        for p in planned:
            shape, dtype, nbytes = _nbytes(p)
            w.add_tensor_info(p.gguf_name, shape, dtype, nbytes, raw_dtype=p.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for p in planned:
            w.write_tensor_data(_convert(p))
        w.close()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    types = sorted({p.qtype.name for p in planned})
    return {"file": str(out), "format": fmt, "architecture": kind, "pre_tokenizer": vocab.pre, "tensors": len(planned),
            "tensor_types": types, "bytes": out.stat().st_size}


# ---------------------------------------------------------------------------------------------------------------------
# Ollama


def ollama_template(tok, thinking: str) -> str:
    """A Go template (Ollama's TEMPLATE) that renders a conversation as the chat template does, with the generation
    prompt at the end. Derived by rendering conversations of marker strings with the chat template and cutting the
    text at the markers; refused when the template cannot be written this way (an error names what differs).

    With model.thinking=strip the generation prompt also closes the empty think block the kit trained answers behind,
    so Ollama shows the answer alone, as the report does. A system message may be rendered apart from the turns
    (DeepSeek-R1 puts it right after BOS, before the first <｜User｜>). When the tokenizer adds BOS itself (`adds_bos`),
    the BOS the chat template writes is left out: Ollama tokenises the rendered prompt with the model's special tokens,
    so it would otherwise start with two."""
    from kit.chat import THINK_CLOSE, opens_think, render

    marks = {"S": "KITSYSTEMMARK", "U1": "KITUSERMARKONE", "A1": "KITASSISTANTMARK", "U2": "KITUSERMARKTWO"}

    def cut(messages: list[dict], order: list[str]) -> list[str]:
        text = render(tok, messages, generation_prompt=True)
        pieces = []
        for key in order:
            head, sep, text = text.partition(marks[key])
            if not sep:
                return []
            pieces.append(head)
        return pieces + [text]

    msg = {"S": ("system", "S"), "U1": ("user", "U1"), "A1": ("assistant", "A1"), "U2": ("user", "U2")}

    def conv(keys):
        return [{"role": msg[k][0], "content": marks[k]} for k in keys]

    plain = cut(conv(["U1", "A1", "U2"]), ["U1", "A1", "U2"])
    if not plain:
        raise ExportError("the chat template does not render user and assistant messages as given; an Ollama "
                          "TEMPLATE cannot be derived from it (write the Modelfile's TEMPLATE by hand)")
    first_user, user_to_assistant, assistant_to_user, end = plain
    with_system = cut(conv(["S", "U1", "A1", "U2"]), ["S", "U1", "A1", "U2"])
    system_rule = ""
    before_system = after_system = ""  # after_system: what opens a user message right after the system message
    bos = tok.bos_token if tok.bos_token and adds_bos(tok) else ""
    if bos and first_user.startswith(bos):
        first_user = first_user[len(bos):]
    if with_system:
        before_system, system_to_user, s_u_a, s_a_u, s_end = with_system
        if (s_u_a, s_a_u, s_end) != (user_to_assistant, assistant_to_user, end):
            raise ExportError("the chat template renders a conversation differently with a system message in a way an "
                              "Ollama TEMPLATE cannot follow (write the Modelfile's TEMPLATE by hand)")
        if bos and before_system.startswith(bos):
            before_system = before_system[len(bos):]
        system_rule = f'{{{{ if eq $m.Role "system" }}}}{before_system}{{{{ $m.Content }}}}{{{{ else }}}}'
        if system_to_user != assistant_to_user:
            after_system = system_to_user
    elif render(tok, conv(["S", "U1"]), generation_prompt=True) != render(tok, conv(["U1"]), generation_prompt=True):
        raise ExportError("the chat template changes the conversation when given a system message without showing "
                          "it; an Ollama TEMPLATE cannot follow it (write the Modelfile's TEMPLATE by hand)")
    if thinking == "strip" and opens_think(end):
        end = end + "\n" + THINK_CLOSE + "\n\n"
    for piece in (first_user, user_to_assistant, assistant_to_user, before_system, after_system, end):
        if "{{" in piece or '"""' in piece:
            raise ExportError(f"the chat template's text {piece!r} cannot be put in a Modelfile TEMPLATE")
    # The first user message opens the conversation, also after a system message the template does not show.
    after_sys = '(and (eq $i 1) (eq (index $.Messages 0).Role "system"))'
    first = "eq $i 0" if system_rule else f"or (eq $i 0) {after_sys}"
    opening = f"{{{{ if {first} }}}}{first_user}"
    if after_system:
        opening += f"{{{{ else if {after_sys[1:-1]} }}}}{after_system}"
    user = (f'{{{{ if eq $m.Role "user" }}}}{opening}{{{{ else }}}}{assistant_to_user}'
            f'{{{{ end }}}}{{{{ $m.Content }}}}')
    assistant = f'{{{{ else if eq $m.Role "assistant" }}}}{user_to_assistant}{{{{ $m.Content }}}}{{{{ end }}}}'
    return ("{{ range $i, $m := .Messages }}" + system_rule + user + assistant + ("{{ end }}" if system_rule else "")
            + "{{ end }}" + end)


def check_system_prompt(system: str | None) -> None:
    """data.system_prompt goes into the Modelfile as SYSTEM \"\"\"...\"\"\"; Ollama's parser ends that string at the
    first three quotes, so a prompt holding them, or ending in a quote (four in a row at its end), would be cut
    short and the rest read as Modelfile commands. Refused before any file is written."""
    if system and ('"""' in system or system.endswith('"')):
        raise ExportError('data.system_prompt: contains three double quotes in a row or ends with a double quote, '
                          'which Ollama\'s Modelfile parser reads as the end of SYSTEM """...""" (the rest of the '
                          'prompt would be cut off); reword it (e.g. use “ ” or single quotes)')


def modelfile(gguf_file: Path, template: str, stops: list[str], system: str | None) -> str:
    lines = [f"# Ollama: ollama create <name> -f {gguf_file.with_suffix('.Modelfile').name}   (run in this folder)",
             f"FROM ./{gguf_file.name}", f'TEMPLATE """{template}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += ["PARAMETER temperature 0", "PARAMETER top_k 1", "PARAMETER seed 0"]
    return "\n".join(lines) + "\n"
