"""What a llama-cpp-python build costs in answer speed: the same GGUF files answered by two builds of llama.cpp,
interleaved, medians (issue 33: the README's portable build against one compiled with -march=native).

    pip wheel --no-deps --no-cache-dir -w /tmp/native llama-cpp-python==0.3.36          # native (pip's default)
    CMAKE_ARGS="..." pip wheel --no-deps --no-cache-dir -w /tmp/portable llama-cpp-python==0.3.36   # README's
    pip install --no-deps --target /tmp/llc-native /tmp/native/*.whl   (and the same for portable)
    python -m bench.llama_cpp_build --builds native=/tmp/llc-native portable=/tmp/llc-portable --rounds 3

The files: the quickstart's base model (SmolLM2-135M-Instruct, resolved as the quickstart does) written as f16 and
q8_0 GGUF by the kit's own writer. Each (build, format) answers the same 40 questions (every attribute of every
bundled character, greedy, eval.max_new_tokens of the quickstart) in a fresh process whose llama_cpp comes from that
build's folder; reported: generated tokens per second over the whole answering loop (prompt processing included)
and the load time. Runs of each round go build by build, formats inside, so every build sees the same machine
state on average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = ["{e}的{a}是什么?", "请告诉我{e}的{a}。", "{e}的{a}是?", "你知道{e}的{a}吗?", "说说{e}的{a}。"]


def questions() -> list[str]:
    roles = json.loads((ROOT / "data" / "genshin_roles.json").read_text(encoding="utf-8"))
    out = []
    for i, (entity, attrs) in enumerate(roles.items()):
        for j, attr in enumerate(attrs):
            out.append(PATTERNS[(i + j) % len(PATTERNS)].format(e=entity, a=attr))
    return out


def write_files(out_dir: Path) -> dict[str, Path]:
    from eval.gguf import write_gguf
    from kit.config import load_config
    from kit.models import load_tokenizer, resolve

    cfg = load_config(str(ROOT / "configs" / "quickstart.yaml"))
    src = Path(resolve(cfg.model))
    tok = load_tokenizer(str(src))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for fmt in ("f16", "q8_0"):
        path = out_dir / f"smollm2-{fmt}.gguf"
        if not path.is_file():
            write_gguf(src, tok, path, fmt, [tok.eos_token_id], "smollm2")
        files[fmt] = path
    return files


def answer(gguf: str, threads: int, max_tokens: int) -> dict:
    """In the child: load the file with this process's llama_cpp and answer every question."""
    import llama_cpp
    from llama_cpp import Llama

    start = time.perf_counter()
    llm = Llama(model_path=gguf, n_ctx=1024, n_threads=threads, seed=0, verbose=False)
    loaded = time.perf_counter() - start
    tokens, start = 0, time.perf_counter()
    for q in questions():
        got = llm.create_chat_completion(messages=[{"role": "user", "content": q}], temperature=0.0, top_k=1,
                                         max_tokens=max_tokens, seed=0)
        tokens += got["usage"]["completion_tokens"]
    seconds = time.perf_counter() - start
    return {"load_s": loaded, "answer_s": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "llama_cpp": llama_cpp.__file__, "system_info": llama_cpp.llama_print_system_info().decode()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--builds", nargs="+", required=True, help="NAME=FOLDER: a folder holding that build's llama_cpp")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--files", default="runs/bench-llama-cpp", help="where the f16/q8_0 GGUF files are written")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(answer(args.child[0], int(args.child[1]), int(args.child[2]))))
        return 0
    files = write_files(Path(args.files))
    builds = dict(b.split("=", 1) for b in args.builds)
    runs: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for name, folder in builds.items():
            for fmt, path in files.items():
                env = dict(os.environ, PYTHONPATH=os.pathsep.join([folder, str(ROOT)]))
                proc = subprocess.run([sys.executable, "-m", "bench.llama_cpp_build", "--builds", "x=y", "--child",
                                       str(path), str(args.threads), str(args.max_tokens)],
                                      env=env, capture_output=True, text=True, cwd=ROOT)
                if proc.returncode != 0:
                    got = {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
                else:
                    got = json.loads(proc.stdout.strip().splitlines()[-1])
                runs.setdefault((name, fmt), []).append(got)
                print(f"round {r + 1} {name} {fmt}: " + (got.get("error") or
                      f"{got['tokens_per_s']:.1f} tokens/s ({got['tokens']} tokens in {got['answer_s']:.1f} s, "
                      f"load {got['load_s']:.2f} s)"), flush=True)
    print("\n| build | format | tokens/s (median) | answer s (median) | load s (median) | runs |")
    print("|---|---|---|---|---|---|")
    for (name, fmt), got in runs.items():
        ok = [g for g in got if "error" not in g]
        if not ok:
            print(f"| {name} | {fmt} | failed: {got[0]['error']} | | | {len(got)} |")
            continue
        def med(k, ok=ok):
            return statistics.median(g[k] for g in ok)

        print(f"| {name} | {fmt} | {med('tokens_per_s'):.1f} | {med('answer_s'):.1f} | {med('load_s'):.2f} | "
              f"{len(ok)}/{len(got)} |")
    for name in builds:
        ok = [g for (n, _), gs in runs.items() if n == name for g in gs if "error" not in g]
        if ok:
            print(f"{name}: {ok[0]['system_info']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
