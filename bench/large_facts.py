"""Large fact sets: time and peak memory of `data_prep.build` and `sft.train ... train.max_steps=1` as a user runs
them, on N synthetic characters x 5 attributes with the whole question bank.

    python -m bench.large_facts 2000 20000          # entity counts; writes runs/large-<N>/
    python -m bench.large_facts 20000 --rebuild     # build again from scratch (else a second sft run shows the cache)

Peak memory is the largest sum of PSS (resident memory, pages shared between processes counted once) over the
command's whole process tree (tokenizer workers included), sampled every 0.2 s, and at least the largest single
process's peak RSS as the kernel counts it. The whole output of each command is kept in runs/large-<N>/<step>.log.
Figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

ATTRIBUTES = {
    "性别": ["成年男性", "成年女性", "少年", "少女"],
    "国籍": ["蒙德", "璃月", "稻妻", "须弥", "枫丹", "纳塔", "至冬"],
    "元素力": ["风元素", "岩元素", "雷元素", "草元素", "水元素", "火元素", "冰元素"],
    "身份": ["商人", "骑士", "学者", "医生", "厨师", "冒险家", "工匠", "歌手", "侦探", "船长"],
    "性格特征": ["沉稳", "活泼", "冷静", "热情", "腼腆", "严肃", "乐观", "谨慎"],
}
SURNAMES = "赵钱孙李周吴郑王冯陈褚卫蒋沈韩杨朱秦尤许何吕施张孔曹严华金魏陶姜"
GIVEN = "安白晨东凡光海华佳杰静兰磊林敏宁平琪然荣森涛薇文翔雪阳逸云哲智"


def synthetic(n: int, seed: int = 0) -> dict[str, dict[str, str]]:
    rng = random.Random(seed)
    out: dict[str, dict[str, str]] = {}
    while len(out) < n:
        name = rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(GIVEN) + f"{len(out):06d}"
        out[name] = {k: rng.choice(v) for k, v in ATTRIBUTES.items()}
    return out


def measure(cmd: list[str], log: Path) -> dict:
    """Wall seconds and peak summed RSS of the process tree of `cmd`."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    root = psutil.Process(proc.pid)
    peak = 0
    import threading

    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            rss = 0
            for p in tree:  # PSS: pages shared between processes (forked tokenizer workers) are counted once
                try:
                    rss += p.memory_full_info().pss
                except psutil.Error:
                    pass
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    reader.join()
    log.write_text("".join(lines), encoding="utf-8")
    return {"cmd": " ".join(cmd), "rc": proc.returncode, "seconds": round(time.perf_counter() - start, 1),
            "peak_gb": round(peak / 2**30, 2), "tail": "".join(lines[-15:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("entities", type=int, nargs="+")
    parser.add_argument("--rebuild", action="store_true", help="remove runs/large-<N> first")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args(argv)
    results = []
    for n in args.entities:
        out = Path(f"runs/large-{n}")
        if args.rebuild and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        source = out / "facts.json"
        if not source.is_file():
            source.write_text(json.dumps(synthetic(n), ensure_ascii=False), encoding="utf-8")
        common = ["configs/quickstart.yaml", f"data.source={source}", "data.max_train_phrasings=null",
                  f"output_dir={out}"]
        runs = {"build": measure([sys.executable, "-m", "data_prep.build", *common], out / "build.log")}
        if not args.skip_train:
            runs["train"] = measure([sys.executable, "-m", "sft.train", *common, "train.max_steps=1",
                                     "train.save_strategy=no", "train.show_examples=0", "train.resume=auto"],
                                    out / "train.log")
        stats = json.loads((out / "data" / "stats.json").read_text(encoding="utf-8"))
        for name, r in runs.items():
            print(f"{n} entities ({stats['rows']['train']} train rows): {name} {r['seconds']} s, peak "
                  f"{r['peak_gb']} GB, rc {r['rc']}\n{r['tail']}", flush=True)
        results.append({"entities": n, "train_rows": stats["rows"]["train"], "test_rows": stats["rows"]["test"],
                        **{k: {kk: v[kk] for kk in ("seconds", "peak_gb", "rc")} for k, v in runs.items()}})
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
