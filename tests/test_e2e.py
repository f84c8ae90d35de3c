"""The real CLI chain on a tiny model: data_prep -> train -> merge -> generate -> score (and eval.run)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kit.errors import KitError

ROOT = Path(__file__).resolve().parents[1]
# The shipped quickstart's measured figures (bench/RESULTS.md), with some room for the machine.
VALUE_MATCH_AT_LEAST = 0.9    # measured 113/120 = 0.942
LEAK_AT_MOST = 0.08      # measured 0.04
INVENTION_AT_MOST = 0.15  # measured 0.075


def write_cfg(tmp_path, model, bert):
    src = tmp_path / "roles.json"
    src.write_text(json.dumps({"钟离": {"性别": "成年男性", "国籍": "璃月"}, "丽莎": {"性别": "成年女性", "国籍": "蒙德"}},
                              ensure_ascii=False), encoding="utf-8")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""
model: {{name_or_path: "{model}"}}
data: {{source: "{src}", max_train_phrasings: 3}}
lora: {{r: 4, lora_alpha: 8, lora_dropout: 0.0}}
train: {{max_steps: 4, learning_rate: 1.0e-2, eval_strategy: epoch, save_strategy: "no", logging_steps: 2,
        show_examples: 2}}
eval: {{batch_size: 8, max_new_tokens: 8, bertscore_model: "{bert}", bertscore_layer: 2, merge_dtype: float32}}
output_dir: "{tmp_path / 'run'}"
""", encoding="utf-8")
    return cfg


def test_cli_chain(tiny_model, tiny_bert, tmp_path, capsys):
    from data_prep.build import main as build_main
    from eval.generate import main as generate_main
    from eval.merge import main as merge_main
    from eval.run import main as run_main
    from eval.score import main as score_main
    from sft.train import main as train_main

    cfg = str(write_cfg(tmp_path, tiny_model, tiny_bert))
    run = tmp_path / "run"
    assert build_main([cfg]) == 0
    assert train_main([cfg]) == 0
    printed = capsys.readouterr().out
    assert "mask audit" in printed and "before -> after" in printed
    assert merge_main([cfg]) == 0
    assert generate_main([cfg]) == 0
    assert score_main([cfg]) == 0
    for name in ["data/train.jsonl", "data/test.jsonl", "data/stats.json", "adapter/adapter_model.safetensors",
                 "adapter/adapter_config.json", "config.yaml", "versions.json", "metrics.json", "loss.png",
                 "loss.csv", "merged/model.safetensors", "merged/merge_check.json", "eval/predictions.jsonl",
                 "eval/scores.csv", "eval/summary.md", "eval/summary.json", "eval/f1_hist.png",
                 "eval/attributes.png"]:
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert "eval_loss" in metrics and metrics["steps"] == 4
    n_test = len((run / "data" / "test.jsonl").read_text(encoding="utf-8").splitlines())
    scores = list(csv.DictReader((run / "eval" / "scores.csv").open(encoding="utf-8")))
    assert len(scores) == n_test and all(0.0 <= float(r["f1"]) <= 1.0001 for r in scores)
    summary = json.loads((run / "eval" / "summary.json").read_text(encoding="utf-8"))
    assert summary["models"]["finetuned"]["overall"]["rows"] == n_test
    # the whole evaluation with the base model beside the fine-tuned one
    assert run_main([cfg, "eval.compare_base=true", "eval.overwrite=true"]) == 0
    summary = json.loads((run / "eval" / "summary.json").read_text(encoding="utf-8"))
    assert list(summary["models"]) == ["base", "finetuned"]
    assert "| value match |" in (run / "eval" / "summary.md").read_text(encoding="utf-8")


def test_errors_from_the_command_line_are_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name_or_path: m}\ntrain: {learnig_rate: 1}\n", encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for module in ("data_prep.build", "sft.train", "eval.merge", "eval.generate", "eval.score", "eval.run"):
        p = subprocess.run([sys.executable, "-m", module, str(cfg)], capture_output=True, text=True, cwd=ROOT,
                           env=env)
        assert p.returncode == 2, module
        assert "did you mean 'learning_rate'" in p.stderr and "Traceback" not in p.stderr, module


def test_generate_refuses_predictions_of_another_model(tiny_model, tiny_bert, tmp_path):
    from eval.generate import main as generate_main

    cfg = str(write_cfg(tmp_path, tiny_model, tiny_bert))
    from data_prep.build import main as build_main

    build_main([cfg])
    (tmp_path / "run" / "eval").mkdir(parents=True)
    (tmp_path / "run" / "eval" / "predictions-base.jsonl").write_text('{"id": "x"}\n', encoding="utf-8")
    (tmp_path / "run" / "eval" / "predictions-base.meta.json").write_text('{"model": "other"}', encoding="utf-8")
    with pytest.raises(KitError, match=r"holds predictions of another model"):
        generate_main([cfg, "--model", "base"])


@pytest.mark.slow
def test_quickstart_learns_the_facts_and_keeps_them_in_place(tmp_path):
    """The README's main job and evaluation on the real offline model, as a user runs them: held-out phrasings
    answered with the right value, and no trained facts where they do not belong (the figures the README quotes
    from bench/RESULTS.md, with some room for the machine)."""
    from eval.run import main as eval_main
    from sft.train import main as train_main

    cfg = str(ROOT / "configs" / "quickstart.yaml")
    out = tmp_path / "qs"
    assert train_main([cfg, f"output_dir={out}"]) == 0
    assert eval_main([cfg, f"output_dir={out}"]) == 0
    summary = json.loads((out / "eval" / "summary.json").read_text(encoding="utf-8"))
    tuned = summary["specificity"]["models"]["finetuned"]
    assert tuned["probe_questions"] == 100 and tuned["unknown_questions"] == 40
    assert tuned["value_match"] >= VALUE_MATCH_AT_LEAST, tuned["value_match"]
    assert tuned["leak_rate"] <= LEAK_AT_MOST, tuned["leaks"]
    assert tuned["invention_rate"] <= INVENTION_AT_MOST, tuned["inventions"]

    # What a user ships: the GGUF files, read back by llama.cpp with the template stored in them (README: Ship it).
    from eval.export import main as export_main

    assert export_main([cfg, f"output_dir={out}"]) == 0
    rows = {a["artifact"]: a for a in json.loads((out / "eval" / "artifacts.json").read_text())["artifacts"]}
    merged = rows["merged"]["value_match"]
    assert rows["gguf f16 (transformers)"]["equal_to_merged"] == rows["merged"]["rows"]  # f16 of an f16 export
    # Measured (bench/RESULTS.md): q8_0 through llama.cpp 116/120 = merged; f16 115 vs 116. The target is 1 point;
    # CI allows 3 of 120 answers, as a rerun may land a near tie the other way.
    assert rows["gguf q8_0 (llama.cpp)"]["value_match"] >= merged - 0.025, rows
    assert rows["gguf f16 (llama.cpp)"]["value_match"] >= merged - 0.025, rows
    assert "## Exported artifacts" in (out / "eval" / "summary.md").read_text(encoding="utf-8")
