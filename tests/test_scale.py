"""Scale-out plumbing: accelerate configs, several processes, the vLLM request plan."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kit.config import KitError, build_config

ROOT = Path(__file__).resolve().parents[1]
ACCEL = ["ddp.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"]  # the README's launch configs


def test_the_accelerate_folder_holds_the_configs_the_readme_names():
    assert sorted(p.name for p in (ROOT / "configs" / "accelerate").glob("*.yaml")) == ACCEL


@pytest.mark.parametrize("name", ACCEL)
def test_accelerate_configs(name):
    path = ROOT / "configs" / "accelerate" / name
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# accelerate launch --config_file configs/accelerate/")
    cfg = yaml.safe_load(text)
    assert cfg["distributed_type"] in {"MULTI_GPU", "FSDP", "DEEPSPEED"}
    if cfg["distributed_type"] == "DEEPSPEED":
        ds = json.loads((ROOT / cfg["deepspeed_config"]["deepspeed_config_file"]).read_text())
        assert ds["zero_optimization"]["stage"] == 3


def test_vllm_missing_is_a_clear_error(tiny_model, tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    from eval.generate import check_vllm

    with pytest.raises(KitError, match=r"eval\.backend=vllm: vLLM is not installed"):
        check_vllm()


def test_vllm_plan_matches_the_hf_path(trained_adapter):
    from eval.generate import vllm_plan
    from kit.models import load_tokenizer

    cfg, rows = trained_adapter
    tok = load_tokenizer(str(cfg.adapter_dir))
    plan = vllm_plan(cfg, tok, rows, str(cfg.adapter_dir))
    # The prompt as SmolLM2's template writes it (its default system prompt included), written out here.
    question = rows[0]["messages"][0]["content"]
    assert tok.decode(plan["prompt_token_ids"][0]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
    assert plan["sampling"]["temperature"] == 0.0 and plan["sampling"]["max_tokens"] == 6
    assert plan["sampling"]["stop_token_ids"] == [2, 0]  # SmolLM2: <|im_end|> (eos, end of turn), <|endoftext|>
    assert plan["enable_lora"] and plan["max_lora_rank"] == 8  # adapter r=4 -> vLLM's smallest rank that fits


@pytest.fixture(scope="module")
def trained_adapter(tiny_model, tmp_path_factory):
    from kit.files import load_jsonl
    from sft.train import train

    root = tmp_path_factory.mktemp("scale")
    cfg = two_proc_cfg(root, tiny_model, per_device=8, max_steps=2)
    train(cfg)
    return cfg, [r for r in load_jsonl(cfg.data_dir / "test.jsonl")][:3]


def two_proc_cfg(root: Path, model, per_device: int, max_steps: int = 4, out: str = "run"):
    src = root / "roles.json"
    src.write_text(json.dumps({"钟离": {"性别": "成年男性", "国籍": "璃月"}, "丽莎": {"性别": "成年女性", "国籍": "蒙德"}},
                              ensure_ascii=False), encoding="utf-8")
    return build_config({
        "model": {"name_or_path": str(model)},
        "data": {"source": str(src), "max_train_phrasings": 4},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "train": {"max_steps": max_steps, "learning_rate": 1e-2, "per_device_train_batch_size": per_device,
                  "eval_strategy": "no", "save_strategy": "steps", "save_steps": 2, "logging_steps": 1,
                  "show_examples": 2, "seed": 3,
                  # fp32: one batch of 8 and two of 4 give the same sums to float rounding; bf16 autocast (auto where
                  # the CPU has it) rounds the two matmul shapes differently, up to 1e-2 on these 4 steps
                  "precision": "fp32"},
        "eval": {"batch_size": 3, "max_new_tokens": 6, "use_merged": False, "splits": ["train", "test"]},
        "output_dir": str(root / out)})


def write_yaml(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.to_dict(), allow_unicode=True), encoding="utf-8")
    return path


def launch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Two CPU processes on the gloo backend. (`accelerate launch --cpu` starts only one process without MPI;
    torchrun sets the same environment that accelerate reads on GPUs.)"""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_two_processes_write_once_and_match_one_process(tiny_model, tmp_path):
    from safetensors.torch import load_file

    from sft.train import train

    single = two_proc_cfg(tmp_path, tiny_model, per_device=8, out="single")
    train(single)
    multi = two_proc_cfg(tmp_path, tiny_model, per_device=4, out="multi")
    p = launch([str(ROOT / "sft" / "train.py"), str(write_yaml(multi, tmp_path / "multi.yaml"))], ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    run = tmp_path / "multi"
    assert sorted(x.name for x in run.iterdir()) == sorted(x.name for x in (tmp_path / "single").iterdir())
    assert sorted(x.name for x in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert p.stdout.count("mask audit") == 1 and p.stdout.count("before -> after") == 1
    a = load_file(str(tmp_path / "single" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    import torch

    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)


def test_two_processes_answer_every_row_once_in_order(trained_adapter, tmp_path):
    from kit.files import load_jsonl

    cfg, _ = trained_adapter
    p = launch([str(ROOT / "eval" / "generate.py"), str(write_yaml(cfg, tmp_path / "gen.yaml"))], ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    got = list(load_jsonl(cfg.eval_dir / "predictions.jsonl"))
    # 2 people x 2 attributes: 4 train phrasings each (16 rows), the 3 held-out ones (12); then the kit's 100
    # everyday probes and 8 invented people (eval.unknown_names) x 2 attributes (16) for specificity; then beyond
    # lookup: 4 facts x 2 held-out claim phrasings x (true, false) (16) and the 2 nations asked back (性别 never is).
    assert [r["split"] for r in got] == (["train"] * 16 + ["test"] * 12 + ["probe"] * 100 + ["unknown"] * 16
                                         + ["verify"] * 16 + ["reverse"] * 2)
    data = [r["id"] for split in ("train", "test") for r in load_jsonl(cfg.data_dir / f"{split}.jsonl")]
    assert [r["id"] for r in got[:28]] == data
    assert len({r["id"] for r in got}) == 162
    assert not list(cfg.eval_dir.glob("*.rank*.jsonl"))


def test_a_finished_process_leaves_its_process_group(tmp_path):
    """Left to the interpreter's shutdown, gloo's threads can abort a rank that has finished its work (SIGABRT,
    "terminate called without an active exception": CI, 2026-12-01); run_main ends the group first."""
    import torch.distributed as dist

    from kit.config import leave_process_group

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    leave_process_group()
    assert not dist.is_initialized()
    leave_process_group()  # nothing to leave: no error
