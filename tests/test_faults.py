"""Kill anywhere: each stage is SIGKILLed from outside at a chosen point (tests/failpoint.py), then run again as a user
would (`train.resume=auto`, or a plain rerun for eval), and must end where an uninterrupted run ends.

Runs use the shipped quickstart settings (per-epoch checkpoints, save_total_limit 1 as shipped and 2, 5 epochs, its
learning rate and eval section) on a tiny model and two characters: 24 train rows, 3 steps an epoch, 15 steps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from kit.lock import Busy

ROOT = Path(__file__).resolve().parents[1]
ROLES = {"钟离": {"性别": "成年男性", "国籍": "璃月", "元素力": "岩元素"},
         "丽莎": {"性别": "成年女性", "国籍": "蒙德", "元素力": "雷元素"}}
# The adapter of a resumed run against an uninterrupted one: the same steps on the same batches in the same order,
# so only float summation order may differ.
ADAPTER_ATOL = 1e-5


def quickstart_yaml(root: Path, model: Path, bert: Path, out: str, **train) -> Path:
    """configs/quickstart.yaml as shipped, with only the model, the data and the BERTScore encoder made tiny."""
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text(encoding="utf-8"))
    src = root / "roles.json"
    src.write_text(json.dumps(ROLES, ensure_ascii=False), encoding="utf-8")
    cfg["model"]["name_or_path"] = str(model)
    # The specificity rows are data, not checkpointing: off here to keep 3 steps an epoch (replay's reuse across
    # reruns is tested in test_specificity).
    cfg["data"].update(source=str(src), max_train_phrasings=4, unknown_entities=0, replay=0)
    cfg["train"].update(show_examples=0, resume="auto", **train)
    cfg["eval"].update(bertscore_model=str(bert), bertscore_layer=2, max_new_tokens=12)
    cfg["output_dir"] = str(root / out)
    path = root / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def start(point: str, module: str, config: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    marker = config.with_name(f"{config.stem}.{point.replace(':', '-')}.stopped")
    marker.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "failpoint.py"), point, str(marker), module,
                             str(config), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    return proc, marker


def wait_stopped(proc: subprocess.Popen, marker: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not marker.is_file():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before its failpoint:\n"
                                 + proc.stdout.read()[-3000:])
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("failpoint not reached in time")
        time.sleep(0.1)


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)  # from outside, no chance to clean up
    proc.wait(timeout=30)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def kill_at(point: str, module: str, config: Path, *args: str) -> None:
    proc, marker = start(point, module, config, *args)
    wait_stopped(proc, marker)
    kill(proc)


def run_stage(module: str, config: Path, *args: str) -> None:
    import importlib

    assert importlib.import_module(module).main([str(config), *args]) == 0


def adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def assert_same_adapter(a: Path, b: Path) -> None:
    wa, wb = adapter(a), adapter(b)
    assert wa.keys() == wb.keys() and len(wa) > 0
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=ADAPTER_ATOL)


@pytest.fixture(scope="module")
def reference(tiny_model, tiny_bert, tmp_path_factory) -> Path:
    """An uninterrupted quickstart-settings run: training, then eval.run."""
    root = tmp_path_factory.mktemp("reference")
    config = quickstart_yaml(root, tiny_model, tiny_bert, "run")
    run_stage("sft.train", config)
    run_stage("eval.run", config)
    return root / "run"


def checkpoints(run_dir: Path) -> list[str]:
    return sorted((p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))


# ---------------------------------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("limit", [1, 2])
def test_killed_during_a_step_resumes_to_the_same_adapter(limit, reference, tiny_model, tiny_bert, tmp_path, capsys):
    config = quickstart_yaml(tmp_path, tiny_model, tiny_bert, "run", save_total_limit=limit)
    proc, marker = start("train-step:8", "sft.train", config)  # step 8 of 15: in epoch 3, after checkpoint-6
    wait_stopped(proc, marker)
    # While it runs, a second run on the same output_dir refuses at once and names it.
    with pytest.raises(Busy, match=rf"run: another run is writing here \(process {proc.pid}: sft\.train\)"):
        run_stage("sft.train", config)
    kill(proc)
    assert checkpoints(tmp_path / "run") == (["checkpoint-6"] if limit == 1 else ["checkpoint-3", "checkpoint-6"])
    assert not (tmp_path / "run" / "adapter").exists() and not (tmp_path / "run" / "metrics.json").exists()
    capsys.readouterr()
    run_stage("sft.train", config)
    out = capsys.readouterr().out
    assert f"taking over the lock left by process {proc.pid}, which is no longer running" in out
    assert "resuming from" in out and "checkpoint-6" in out
    assert_same_adapter(reference, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["steps"] == 15 and metrics["epochs"] == 5.0
    assert checkpoints(tmp_path / "run") == (["checkpoint-15"] if limit == 1 else ["checkpoint-12", "checkpoint-15"])


def test_killed_while_writing_a_checkpoint_falls_back_to_the_one_before(reference, tiny_model, tiny_bert, tmp_path,
                                                                       capsys):
    config = quickstart_yaml(tmp_path, tiny_model, tiny_bert, "run")  # save_total_limit 1, as shipped
    kill_at("checkpoint-write:2", "sft.train", config)  # checkpoint-6 half-written, checkpoint-3 still there
    partial = tmp_path / "run" / "checkpoints" / "checkpoint-6"
    assert (partial / "adapter_model.safetensors").is_file() and not (partial / "trainer_state.json").exists()
    assert checkpoints(tmp_path / "run") == ["checkpoint-3", "checkpoint-6"]
    capsys.readouterr()
    run_stage("sft.train", config)
    out = capsys.readouterr().out
    assert f"{partial}: incomplete checkpoint" in out
    assert f"resuming from {tmp_path / 'run' / 'checkpoints' / 'checkpoint-3'}" in out
    assert_same_adapter(reference, tmp_path / "run")


def test_killed_while_saving_the_adapter_leaves_none_then_finishes(reference, tiny_model, tiny_bert, tmp_path):
    config = quickstart_yaml(tmp_path, tiny_model, tiny_bert, "run")
    kill_at("adapter-save", "sft.train", config)  # all 15 steps and checkpoint-15 done, adapter half-written
    run = tmp_path / "run"
    assert checkpoints(run) == ["checkpoint-15"]
    assert not (run / "adapter").exists()  # the half-written adapter is in a temp dir, never at adapter/
    assert [p.name for p in run.glob(".kit-tmp-adapter*")]
    run_stage("sft.train", config)
    assert_same_adapter(reference, run)
    assert not list(run.glob(".kit-tmp-*"))
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    reference_metrics = json.loads((reference / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["steps"] == 15 and metrics["resumed_from_epoch"] == 5.0
    # the whole run's loss from the logged history, not 0 for the no steps this process ran
    assert metrics["train_loss"] == pytest.approx(reference_metrics["train_loss"], rel=0.05)


def test_killed_twice_in_a_row(reference, tiny_model, tiny_bert, tmp_path):
    config = quickstart_yaml(tmp_path, tiny_model, tiny_bert, "run")
    kill_at("train-step:5", "sft.train", config)  # after checkpoint-3
    kill_at("train-step:4", "sft.train", config)  # resumed at step 4: killed at step 7, after checkpoint-6
    assert checkpoints(tmp_path / "run") == ["checkpoint-6"]
    run_stage("sft.train", config)
    assert_same_adapter(reference, tmp_path / "run")


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation: a copy of the reference run's adapter and data, then eval.run killed and rerun.


def trained_copy(reference: Path, tmp_path: Path, tiny_model, tiny_bert) -> Path:
    config = quickstart_yaml(tmp_path, tiny_model, tiny_bert, "run")
    for name in ("adapter", "data"):
        shutil.copytree(reference / name, tmp_path / "run" / name)
    return config


def summary_numbers(run: Path) -> dict:
    summary = json.loads((run / "eval" / "summary.json").read_text(encoding="utf-8"))
    return {k: v for k, v in summary.items() if k != "source"}  # source names this run's paths


def assert_same_eval(reference: Path, run: Path) -> None:
    for name in ("predictions.jsonl", "predictions-base.jsonl"):
        assert (run / "eval" / name).read_text(encoding="utf-8") == (reference / "eval" / name).read_text(
            encoding="utf-8")
    assert summary_numbers(run) == summary_numbers(reference)
    ref_scores = (reference / "eval" / "scores.csv").read_text(encoding="utf-8")
    assert (run / "eval" / "scores.csv").read_text(encoding="utf-8") == ref_scores
    assert not [p for p in run.rglob(".kit-tmp-*")]


@pytest.mark.parametrize("point", ["merge-write", "generate-row:7", "report-move:2"])
def test_eval_killed_then_rerun_gives_the_same_report(point, reference, tiny_model, tiny_bert, tmp_path):
    config = trained_copy(reference, tmp_path, tiny_model, tiny_bert)
    run = tmp_path / "run"
    kill_at(point, "eval.run", config)
    if point == "merge-write":
        assert not (run / "merged").exists()  # the half-written export is only in a temp dir
    if point.startswith("generate-row"):
        # rows answered before the kill are kept, and a file short of rows is never scored as whole
        from eval.score import score
        from kit.config import KitError, load_config

        with pytest.raises(KitError, match=r"predictions\.jsonl: \d+ of \d+ questions answered"):
            score(load_config(config))
    if point.startswith("report-move"):
        assert (run / "eval" / "scores.csv").is_file() and not (run / "eval" / "summary.json").exists()
    run_stage("eval.run", config)
    assert_same_eval(reference, run)


def test_replacing_an_export_never_leaves_none(reference, tiny_model, tiny_bert, tmp_path):
    config = trained_copy(reference, tmp_path, tiny_model, tiny_bert)
    merged = tmp_path / "run" / "merged"
    shutil.copytree(reference / "merged", merged)
    before = {p.name: p.read_bytes() for p in merged.iterdir()}
    kill_at("merge-write", "eval.merge", config, "eval.overwrite=true")
    assert {p.name: p.read_bytes() for p in merged.iterdir()} == before  # the old export, whole
    run_stage("eval.merge", config, "eval.overwrite=true")
    after = {p.name: p.read_bytes() for p in merged.iterdir()}
    assert after.keys() == before.keys() and after["model.safetensors"] == before["model.safetensors"]
    assert not list((tmp_path / "run").glob(".kit-tmp-*"))
