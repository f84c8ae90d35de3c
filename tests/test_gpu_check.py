"""bench/gpu_check: what it will measure is decided without a GPU, and without one it stops at once, saying so."""

from pathlib import Path

import pytest

from bench.gpu_check import build_plan, cuda_tests, main, parse_args
from kit.errors import KitError


def test_arguments_and_plan(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    args = parse_args([])
    assert args.out == tmp_path / "gpu_check.json" and (args.steps, args.warmup, args.budget) == (5, 2, 540.0)
    plan = build_plan(args)
    assert {k: plan["model"][k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                          "num_key_value_heads", "intermediate_size", "vocab_size")} == \
        {"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
         "intermediate_size": 18944, "vocab_size": 152064}
    assert plan["model"]["dtype"] == "bfloat16"
    assert plan["lora"] == {"r": 32, "lora_alpha": 64, "lora_dropout": 0.05,
                            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    assert (plan["train"]["per_device_train_batch_size"], plan["train"]["gradient_accumulation_steps"]) == (2, 8)
    assert plan["runs"] == [{"trainer": "kit", "gradient_checkpointing": True},
                            {"trainer": "kit", "gradient_checkpointing": False},
                            {"trainer": "trl", "gradient_checkpointing": True},
                            {"trainer": "trl", "gradient_checkpointing": False}]
    assert plan["generation"] == {"prompts": 64, "batch_size": 32, "max_new_tokens": 128}
    assert plan["tests"][-2:] == ["tests/test_e2e.py::test_cli_chain", "tests/test_7b.py"]
    assert build_plan(parse_args(["--no-tests", "--steps", "3"]))["tests"] == []
    with pytest.raises(SystemExit):
        parse_args(["--steps", "0"])


def test_tests_that_mention_cuda_are_found(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text(
        "import torch\n\ndef test_on_gpu():\n    x = torch.ones(1, device='cuda')\n\n\n"
        "@pytest.mark.slow\ndef test_cpu():\n    pass\n\ndef test_named():\n    assert pick('CUDA')\n",
        encoding="utf-8")
    assert cuda_tests(tmp_path) == ["tests/test_a.py::test_on_gpu", "tests/test_a.py::test_named",
                                    "tests/test_e2e.py::test_cli_chain", "tests/test_7b.py"]


def test_without_cuda_it_stops_before_building_anything(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "figures.json"
    with pytest.raises(KitError, match=r"bench/gpu_check needs a CUDA GPU and torch sees none \(torch .*\); run it on "
                                       r"a GPU machine with a CUDA build of torch"):
        main(["--out", str(out), "--work", str(tmp_path / "work")])
    assert not out.exists() and not (tmp_path / "work").exists()


def test_shell_entry_point_hands_its_arguments_to_the_module(tmp_path):
    import subprocess

    root = Path(__file__).resolve().parents[1]
    p = subprocess.run(["bash", str(root / "bench" / "gpu_check.sh"), str(tmp_path / "f.json"), "--steps", "0"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and "--steps, --warmup, --prompts and --max-new-tokens must be >= 1" in p.stderr
