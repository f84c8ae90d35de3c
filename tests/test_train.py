"""LoRA training on tiny models: what changes, that loss falls, the loss plot, resume."""

import csv
import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from kit.config import KitError, build_config
from sft.callbacks import plot_losses, smooth, write_history
from sft.train import build_trainer, main, train

ROLES = {"钟离": {"性别": "成年男性", "国籍": "璃月", "元素力": "岩元素"},
         "丽莎": {"性别": "成年女性", "国籍": "蒙德", "元素力": "雷元素"}}


def tiny_cfg(model_dir, tmp_path, **train):
    src = tmp_path / "roles.json"
    src.write_text(json.dumps(ROLES, ensure_ascii=False), encoding="utf-8")
    t = {"max_steps": 6, "learning_rate": 5e-3, "per_device_train_batch_size": 8, "eval_strategy": "no",
         "save_strategy": "no", "logging_steps": 1, "show_examples": 0, "warmup_ratio": 0.0}
    t.update(train)
    return build_config({"model": {"name_or_path": str(model_dir)},
                         "data": {"source": str(src), "max_train_phrasings": 4},
                         "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}, "train": t,
                         "output_dir": str(tmp_path / "run")})


def test_lora_weights_change_base_weights_do_not(tiny_model, tmp_path):
    run = build_trainer(tiny_cfg(tiny_model, tmp_path))
    model = run.trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run.trainer.train()
    lora_changed = base_changed = 0
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        if "lora_" in n:
            lora_changed += changed
        else:
            base_changed += changed
    assert lora_changed > 0 and base_changed == 0
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())


def test_loss_falls_on_a_set_it_can_memorise(tiny_model, tmp_path):
    out = train(tiny_cfg(tiny_model, tmp_path, max_steps=30, learning_rate=2e-2))
    history = list(csv.DictReader((tmp_path / "run" / "loss.csv").open(encoding="utf-8")))
    losses = [float(h["loss"]) for h in history if h["loss"]]
    assert len(losses) >= 25
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:3]) / 3
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["tokens_per_second"] > 0 and metrics["steps"] == 30
    for name in ("config.yaml", "versions.json", "loss.png"):
        assert (tmp_path / "run" / name).is_file()


def test_plot_with_and_without_eval(tmp_path):
    hist = [{"step": s, "epoch": s / 10, "loss": 3 / s} for s in range(1, 11)]
    hist_eval = hist + [{"step": 5, "epoch": 0.5, "eval_loss": 1.0}, {"step": 10, "epoch": 1.0, "eval_loss": 0.6}]
    plot_losses(hist, tmp_path / "no_eval.png", eval_enabled=False)
    plot_losses(hist_eval, tmp_path / "eval.png", x="epoch")
    for name in ("no_eval.png", "eval.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert (tmp_path / "no_eval.png").read_bytes() != (tmp_path / "eval.png").read_bytes()
    write_history(hist_eval, tmp_path / "loss.csv")
    rows = list(csv.DictReader((tmp_path / "loss.csv").open()))
    assert len(rows) == 12 and rows[-1]["eval_loss"] == "0.6"
    assert smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])  # bias-corrected: no drag towards 0


class Crash(TrainerCallback):
    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt("simulated kill")


def adapter_weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "adapter" / "adapter_model.safetensors"))


def test_resume_ends_where_an_uninterrupted_run_ends(tiny_model, tmp_path):
    kw = dict(max_steps=6, save_strategy="steps", save_steps=2, resume="auto", lr_scheduler_type="cosine")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    train(tiny_cfg(tiny_model, tmp_path / "a", **kw))
    cfg_b = tiny_cfg(tiny_model, tmp_path / "b", **kw)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_b, callbacks=[Crash(at=5)])
    assert (tmp_path / "b" / "run" / "checkpoints" / "checkpoint-4").is_dir()
    assert not (tmp_path / "b" / "run" / "adapter").exists()
    train(cfg_b)
    a, b = adapter_weights(tmp_path / "a" / "run"), adapter_weights(tmp_path / "b" / "run")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_existing_checkpoints_need_resume_auto(tiny_model, tmp_path):
    cfg = tiny_cfg(tiny_model, tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    train(cfg)
    with pytest.raises(KitError, match=r"holds checkpoints of an earlier run .* set train\.resume=auto"):
        train(cfg)


def test_missing_model_fails_before_anything_loads(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name_or_path: ./no/such/model}\n", encoding="utf-8")
    with pytest.raises(KitError, match=r"model './no/such/model': no such file or directory"):
        main([str(cfg), f"output_dir={tmp_path / 'o'}"])
    with pytest.raises(KitError, match=r"model 'nobody/nothing-here' could not be found .* Hub access may be missing"):
        from kit.models import resolve

        resolve("nobody/nothing-here")
    with pytest.raises(KitError, match=r"Python package 'no_such_pkg' is not installed"):
        resolve("pkg://no_such_pkg/x.gguf")


@pytest.mark.parametrize("speedup, want", [(2.2, ("bf16", "eager")), (1.3, ("bf16", "eager")),
                                           (1.2, ("fp32", None)), (0.59, ("fp32", None)), (0.0, ("fp32", None))])
def test_auto_precision_on_cpu_follows_the_measured_bf16_speedup(tiny_model, tmp_path, monkeypatch, speedup, want):
    """precision=auto (the quickstart's): bf16 with eager attention only where the CPU's bf16 matmuls ran >= 1.3x
    fp32's: an AMD EPYC with AVX512-BF16 measured 2.2x; an Intel Xeon with AVX512-BF16 and no AMX 0.56-0.63x (fp32
    is its faster format); 0.0 is a CPU without bf16 instructions, where torch would emulate it ~40x slower."""
    import kit.models as km
    import sft.trainer_config as tc

    monkeypatch.setattr(km, "cpu_bf16_speedup", lambda: speedup)
    cfg = tiny_cfg(tiny_model, tmp_path, precision="auto")
    precision = tc.resolve_precision(cfg, "cpu")
    assert (precision, tc.training_attention(cfg, "cpu", precision)) == want


def test_the_bf16_speedup_is_a_measurement_and_zero_without_bf16_instructions(monkeypatch):
    """The figure auto precision decides on: timed where the CPU has bf16 instructions (a ratio of two timings of
    the same matmul, so positive and finite), not timed where it has none."""
    import math

    import kit.models as km

    km.cpu_bf16_speedup.cache_clear()
    monkeypatch.setattr(km, "cpu_has_bf16", lambda: False)
    assert km.cpu_bf16_speedup() == 0.0
    km.cpu_bf16_speedup.cache_clear()
    monkeypatch.setattr(km, "cpu_has_bf16", lambda: True)
    timed = km.cpu_bf16_speedup()
    km.cpu_bf16_speedup.cache_clear()
    assert timed > 0.0 and math.isfinite(timed)


def test_an_attention_the_user_set_is_kept_and_long_rows_keep_sdpa(tiny_model, tmp_path, monkeypatch):
    from dataclasses import replace

    import kit.models as km
    import sft.trainer_config as tc

    monkeypatch.setattr(km, "cpu_bf16_speedup", lambda: 2.2)
    cfg = tiny_cfg(tiny_model, tmp_path, precision="auto")
    assert tc.training_attention(replace(cfg, model=replace(cfg.model, attn_implementation="sdpa")), "cpu",
                                 "bf16") == "sdpa"
    assert tc.training_attention(cfg, "cpu", "fp32") is None
    assert tc.training_attention(replace(cfg, train=replace(cfg.train, max_length=4096)), "cpu", "bf16") is None
    assert tc.training_attention(cfg, "cuda", "bf16") is None
    run = build_trainer(cfg)  # the model really trains with what was chosen
    assert run.precision == "bf16" and run.trainer.model.config._attn_implementation == "eager"
    assert run.trainer.args.bf16


def test_answers_are_written_with_sdpa_when_the_kit_chose_eager_and_training_keeps_eager(tiny_model, tmp_path,
                                                                                         monkeypatch):
    """Replay rows and before/after examples are answered with SDPA (faster, same greedy answers), and the model
    goes back to the eager attention it trains with; an eager the user set is kept for answering too."""
    from dataclasses import replace

    import kit.generation
    import kit.models as km
    from sft.answers import answer, answering_attention

    monkeypatch.setattr(km, "cpu_bf16_speedup", lambda: 2.2)
    cfg = tiny_cfg(tiny_model, tmp_path, precision="auto")
    assert answering_attention(cfg, "eager") == "sdpa"
    assert answering_attention(replace(cfg, model=replace(cfg.model, attn_implementation="eager")), "eager") is None
    assert answering_attention(cfg, None) is None
    run = build_trainer(cfg)
    model, rows = run.trainer.model, [{"messages": [{"role": "user", "content": q}], "turns": 1}
                                      for q in ("钟离来自哪里?", "丽莎是什么性别?", "法国的首都是哪里?")]
    eager = answer(model, run.tok, rows, 8)
    seen = []
    real = kit.generation.generate_batched

    def spy(m, *a, **k):
        seen.append(m.get_base_model().config._attn_implementation)
        return real(m, *a, **k)

    monkeypatch.setattr(kit.generation, "generate_batched", spy)
    assert answer(model, run.tok, rows, 8, attention="sdpa") == eager
    assert seen == ["sdpa"]
    assert model.get_base_model().config._attn_implementation == "eager"
