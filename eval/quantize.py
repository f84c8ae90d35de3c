"""llama.cpp's own quantizer (k-quants, i-quants) for eval.export, with an importance matrix computed by the kit from
the run's own training conversations.

    python -m eval.export configs/quickstart.yaml "eval.export_formats=[q4_k_m,q4_k_m-noimatrix]"
    python -m eval.export configs/quickstart.yaml "eval.export_formats=[auto]"

The f16 GGUF the kit writes (eval/gguf.py) is handed to `llama_model_quantize` (llama-cpp-python) in a child process
(eval/native.py: a crash in native code is a message, not the end of the command). With `eval.export_imatrix`
the quantizer gets an importance matrix: for every linear layer, the mean of the squared inputs per input column,
over the tokens of the run's training conversations (facts, invented people, replayed general answers: what the
model must keep, general ability included). It is what llama.cpp's `llama-imatrix` tool computes (its
`IMatrixCollector`: sum of x^2 over tokens divided by their count, per column of each matmul's weight), taken here
with forward hooks in torch on the merged model, and handed over through llama.cpp's typed
`llama_model_imatrix_data` list. The matrix is saved beside the files (`<run>-imatrix.npz`) and reused while the
merged model and the training rows are the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from eval.gguf import ExportError, tensor_name_map
from kit.config import GGUF_LLAMA_CPP_FORMATS, GGUF_NO_IMATRIX
from kit.files import TEMP_PREFIX, atomic_file

# llama.cpp's file types the kit offers, by llama-quantize's names in lower case ("q4_k_m" ->
# LLAMA_FTYPE_MOSTLY_Q4_K_M).
LLAMA_CPP_FORMATS = GGUF_LLAMA_CPP_FORMATS
NO_IMATRIX = GGUF_NO_IMATRIX
# eval.export_formats=[auto]: tried from the smallest file to the largest; the first that keeps the merged model's
# value match (within eval.export_tolerance) is kept.
AUTO_CANDIDATES = ("iq4_xs", "q4_k_m", "q5_k_m", "q6_k", "q8_0")
INSTALL = "CMAKE_ARGS=-DGGML_NATIVE=OFF pip install -e '.[llamacpp]'"


def base_format(fmt: str) -> str:
    """'q4_k_m-noimatrix' -> 'q4_k_m'."""
    return fmt[: -len(NO_IMATRIX)] if fmt.endswith(NO_IMATRIX) else fmt


def is_llama_cpp_format(fmt: str) -> bool:
    return base_format(fmt) in LLAMA_CPP_FORMATS


def uses_imatrix(fmt: str, enabled: bool) -> bool:
    return enabled and is_llama_cpp_format(fmt) and not fmt.endswith(NO_IMATRIX)


# ---------------------------------------------------------------------------------------------------------------------
# The importance matrix


def _key(merged_dir: Path, train_file: Path, max_length: int) -> str:
    """What the matrix depends on: the merged weights (name, size, mtime of each file), the training rows' bytes and
    the token budget per row."""
    h = hashlib.sha256()
    for f in sorted(merged_dir.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    with open(train_file, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    h.update(str(max_length).encode())
    return h.hexdigest()


def gguf_names(model, config: dict) -> dict[str, str]:
    """{module name of each nn.Linear: GGUF tensor name of its weight} ("model.layers.0.self_attn.q_proj" ->
    "blk.0.attn_q.weight"). A tied lm_head maps to "output.weight"."""
    import torch

    names = tensor_name_map(config)
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            mapped = names.get_name(f"{name}.weight", try_suffixes=(".weight",))
            if mapped is not None:
                out[name] = mapped
    return out


def compute_imatrix(merged_dir: Path, tok, conversations: list[list[dict]], max_length: int,
                    batch_size: int = 8) -> tuple[dict[str, np.ndarray], int]:
    """({GGUF tensor name: float32 [in_features]}, tokens seen): mean x^2 per input column of every linear layer over
    all tokens of `conversations` rendered by the chat template (truncated to `max_length` tokens each), padding
    excluded. With tied embeddings the lm_head's entry is also given as "token_embd.weight", which llama.cpp
    quantizes as the output matrix."""
    import torch
    from transformers import AutoModelForCausalLM

    from kit.chat import render

    config = json.loads((merged_dir / "config.json").read_text(encoding="utf-8"))
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    names = gguf_names(model, config)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    mask_now: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(module, args):
            x = args[0].detach().float()
            m = mask_now["m"]
            x = x.reshape(-1, x.shape[-1])[m.reshape(-1)]
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    handles = [dict(model.named_modules())[n].register_forward_pre_hook(hook(g)) for n, g in names.items()]
    texts = [render(tok, c) for c in conversations]
    seen = 0
    try:
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                ids = [tok(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts[i:i + batch_size]]
                width = max(len(x) for x in ids)
                pad = tok.pad_token_id if tok.pad_token_id is not None else 0
                input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
                attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
                mask_now["m"] = attention.bool()
                model(input_ids=input_ids, attention_mask=attention)
                seen += int(attention.sum())
    finally:
        for h in handles:
            h.remove()
    matrix = {g: (sums[g] / counts[g]).numpy().astype(np.float32) for g in sums}
    if config.get("tie_word_embeddings") and "output.weight" in matrix:
        matrix["token_embd.weight"] = matrix["output.weight"]
    return matrix, seen


def imatrix_for(cfg, tok, path: Path) -> dict:
    """The run's importance matrix at `path` (eval.export: <export dir>/<run>-imatrix.npz), computed when missing or
    stale (another merged model, other training rows). Returns {"file", "reused", "tokens", "tensors"}."""
    from kit.files import iter_jsonl

    train_file = cfg.data_dir / "train.jsonl"
    if not train_file.is_file():
        raise ExportError(f"{train_file}: no training rows to compute the importance matrix from; build the data "
                          f"(`python -m data_prep.build CONFIG`) or set eval.export_imatrix=false")
    key = _key(cfg.merged_dir, train_file, cfg.train.max_length)
    if path.is_file():
        with np.load(path) as z:
            if str(z["__key__"]) == key:
                return {"file": str(path), "reused": True, "tokens": int(z["__tokens__"]),
                        "tensors": len(z.files) - 2}
    conversations = [r["messages"] for r in iter_jsonl(train_file)]
    matrix, tokens = compute_imatrix(cfg.merged_dir, tok, conversations, cfg.train.max_length)
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:  # a handle: np.savez would add ".npz" to a name
        np.savez(fh, __key__=np.array(key), __tokens__=np.array(tokens), **matrix)
    print(f"importance matrix: {len(matrix)} tensors from {len(conversations)} training conversations "
          f"({tokens} tokens) -> {path}", flush=True)
    return {"file": str(path), "reused": False, "tokens": tokens, "tensors": len(matrix)}


# ---------------------------------------------------------------------------------------------------------------------
# The quantizer (runs in a child process: eval.native.run_native)


def quantize(src: Path, dst: Path, fmt: str, imatrix_file: Path | None, n_threads: int,
             tensor_types: list[tuple[str, str]] = ()) -> None:
    """llama.cpp's quantizer: `src` (f16/f32 GGUF) -> `dst` as `fmt` ("q4_k_m"...), with the importance matrix in
    `imatrix_file` when given, and `tensor_types` [(regex searched in the tensor name, GGML type "q8_0"...)] before
    the format's own choice, the first match winning (llama-quantize's --tensor-type; the type still falls back
    where its block does not divide the row). Written beside `dst` and renamed (kit.files.atomic_file)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{base_format(fmt).upper()}")
    params.nthread = n_threads
    keep = []  # the ctypes buffers must live until the call returns
    if tensor_types:
        overrides = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
        for i, (pattern, ggml_type) in enumerate(tensor_types):
            b = pattern.encode()
            keep.append(b)
            overrides[i].pattern = b
            overrides[i].type = getattr(llama_cpp, f"GGML_TYPE_{ggml_type.upper()}")
        overrides[len(tensor_types)].pattern = None  # the list ends at a null pattern
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep.append(overrides)
    if imatrix_file is not None:
        with np.load(imatrix_file) as z:
            entries = {k: np.ascontiguousarray(z[k], dtype=np.float32) for k in z.files if not k.startswith("__")}
        arr = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
        for i, (name, values) in enumerate(entries.items()):
            b = name.encode()
            keep += [b, values]
            arr[i].name = b
            arr[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = values.size
        arr[len(entries)].name = None  # the list ends at a null name
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(arr)
    log = dst.with_name(f"{TEMP_PREFIX}{dst.name}.log")
    try:
        with atomic_file(dst) as tmp:
            with _output_to(log):  # llama.cpp logs every tensor; shown only when it fails
                code = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
            if code != 0:
                tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-15:])
                raise ExportError(f"llama.cpp's quantizer failed ({code}) writing {dst.name} from {src.name}:\n{tail}")
    finally:
        log.unlink(missing_ok=True)
    dst.chmod(0o644)  # Ollama may read it as another user, whatever this process's umask


@contextlib.contextmanager
def _output_to(path: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2, where llama.cpp's C code writes) to `path`.
    Only for the child process that quantizes."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def tensor_stats(path: Path) -> tuple[dict[str, int], float]:
    """({GGML type name: number of tensors}, bits per weight) of a GGUF file, read once. Bits per weight: all tensor
    data over all weights, embeddings and norms included: what the file really spends, whatever types llama.cpp fell
    back to for rows a block size does not divide."""
    from gguf import GGUFReader

    types: dict[str, int] = {}
    nbytes = nweights = 0
    for t in GGUFReader(str(path)).tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        nbytes += int(t.n_bytes)
        nweights += int(t.n_elements)
    return types, 8 * nbytes / nweights
