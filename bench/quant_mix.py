"""Which tensors of a fine-tune lose its facts when quantized: llama.cpp's quantizer with per-tensor types
(eval.export_tensor_types), each file answering the run's test questions through llama.cpp (issue 30).

    python -m eval.export configs/quickstart.yaml output_dir=runs/qs "eval.export_formats=[f16]"   # the source
    python -m bench.quant_mix configs/quickstart.yaml output_dir=runs/qs --mixes bench/quant_mixes.json

`--mixes`: a JSON list of {"name", "format" (any of llama.cpp's file types by llama-quantize's name in lower case:
q4_k_m, q8_0, q5_0...), "tensor_types" (as eval.export_tensor_types), "imatrix" (true: the run's matrix,
`<export dir>/<run>-imatrix.npz`, computed by eval.export)}. Each mix is quantized from `<export dir>/<run>-f16.gguf`
by `eval.quantize.quantize` and answers the same test questions as eval.export's check, with
`eval.export.answer_with_llama_cpp`, in a child process of its own; one JSON line per mix (MiB, share of the first
mix's size, bits per weight, tensor types, value match) on stdout. Faster than eval.export for a sweep: no
transformers reader, no adapter or merged answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from eval.export import answer_with_llama_cpp, export_dir, test_rows
from eval.native import run_native
from eval.quantize import quantize, tensor_stats
from kit.config import load_config, tensor_types
from kit.files import TEMP_PREFIX
from kit.specificity import value_matches


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--mixes", required=True, type=Path)
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    run = cfg.out.resolve().name
    out = export_dir(cfg)
    src = out / f"{run}-f16.gguf"
    if not src.is_file():
        sys.exit(f"{src}: write it first: python -m eval.export CONFIG output_dir=... \"eval.export_formats=[f16]\"")
    rows = test_rows(cfg)
    first_mib = None
    for i, mix in enumerate(json.loads(args.mixes.read_text(encoding="utf-8"))):
        dst = out / f"{TEMP_PREFIX}mix-{i}.gguf"
        imatrix = out / f"{run}-imatrix.npz" if mix.get("imatrix") else None
        start = time.perf_counter()
        run_native(quantize, src, dst, mix["format"], imatrix, 2, tensor_types(mix.get("tensor_types", [])),
                   what=f"quantizing {mix['name']}")
        seconds = time.perf_counter() - start
        types, bits = tensor_stats(dst)
        preds = run_native(answer_with_llama_cpp, dst, rows, cfg.eval.max_new_tokens, cfg.model.thinking, 2,
                           what=f"reading {mix['name']}")
        right, judged = value_matches(rows, preds)
        mib = dst.stat().st_size / 2**20
        first_mib = first_mib or mib
        print(json.dumps({"name": mix["name"], "mib": round(mib, 1), "share_of_first": round(mib / first_mib, 3),
                          "bits_per_weight": round(bits, 2), "types": types, "value_match": f"{right}/{judged}",
                          "quantize_s": round(seconds, 1)}), flush=True)
        dst.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
