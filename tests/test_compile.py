"""train.compile_layers: torch.compile of each decoder layer's MLP and norms (sft/compile.py)."""

from __future__ import annotations

import json

import pytest
import torch

import sft.compile as sc
from kit.config import KitError, build_config

ROLES = {"钟离": {"性别": "成年男性", "国籍": "璃月"}, "丽莎": {"性别": "成年女性", "国籍": "蒙德"}}


def cfg_with(tmp_path, model_dir="unused", **train):
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "roles.json"
    src.write_text(json.dumps(ROLES, ensure_ascii=False), encoding="utf-8")
    t = {"max_steps": 2, "learning_rate": 5e-3, "eval_strategy": "no", "save_strategy": "no", "logging_steps": 1,
         "show_examples": 0}
    t.update(train)
    return build_config({"model": {"name_or_path": str(model_dir)}, "data": {"source": str(src)},
                         "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}, "train": t,
                         "output_dir": str(tmp_path / "run")})


@pytest.mark.parametrize("choice, device, compiler, want", [
    (False, "cpu", "g++", False),     # the default
    (True, "cpu", "g++", True),
    (True, "cuda", None, True),       # the GPU backend needs no C++ compiler
    (False, "cpu", None, False),      # off: no compiler needed
])
def test_when_layers_are_compiled(tmp_path, monkeypatch, choice, device, compiler, want):
    monkeypatch.setattr(sc, "cpp_compiler", lambda: compiler)
    assert sc.use_compile(cfg_with(tmp_path, compile_layers=choice), device) is want


def test_compile_asked_for_without_a_compiler_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sc, "cpp_compiler", lambda: None)
    with pytest.raises(KitError, match=r"train\.compile_layers=true: .* C\+\+ compiler .* set "
                                       r"train\.compile_layers=false"):
        sc.use_compile(cfg_with(tmp_path, compile_layers=True), "cpu")


def test_a_misspelt_choice_is_a_config_error(tmp_path):
    with pytest.raises(KitError, match=r"train\.compile_layers: expected bool"):
        cfg_with(tmp_path, compile_layers="yes please")


class Layer(torch.nn.Module):
    """The shape of a transformers decoder layer, as far as sft.compile looks."""

    def __init__(self):
        super().__init__()
        self.input_layernorm = torch.nn.LayerNorm(4)
        self.mlp = torch.nn.Linear(4, 4)
        self.post_attention_layernorm = torch.nn.LayerNorm(4)


def test_the_compiled_code_runs_only_while_gradients_are_on(monkeypatch):
    """The kit's answers during training (replay, checks, examples) run under no_grad and must be eval.run's: the eager
    modules; the training step runs the compiled ones."""
    calls = []

    def fake_compile(fn, dynamic):
        assert dynamic is True  # one compilation for every padded length

        def compiled(*a, **k):
            calls.append(fn)
            return fn(*a, **k)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = torch.nn.Sequential(Layer(), torch.nn.Linear(4, 4), Layer())
    assert sc.compile_layers(model) == 6  # 2 layers x (mlp, 2 norms); the lone Linear is no layer
    x = torch.randn(2, 4)
    for layer in (model[0], model[2]):
        layer.mlp(layer.input_layernorm(x)).sum().backward()
    assert len(calls) == 4
    with torch.no_grad():
        model[0].mlp(model[0].post_attention_layernorm(x))
    assert len(calls) == 4


def test_compiled_training_matches_eager_and_saves_the_same_adapter(tiny_model, tmp_path):
    """A real torch.compile (inductor, this machine's C++ compiler) of the tiny model's layers: the same losses as
    eager (fp32, so rounding is the only difference) and an adapter with the same keys and close weights."""
    from peft import get_peft_model_state_dict
    from torch._dynamo.utils import counters

    from sft.train import build_trainer

    runs = {}
    for on in (False, True):
        counters.clear()
        cfg = cfg_with(tmp_path / str(on), tiny_model, compile_layers=on, precision="fp32", max_steps=3)
        run = build_trainer(cfg)
        assert run.compiled == (3 * run.trainer.model.config.num_hidden_layers if on else 0)
        run.trainer.train()
        assert (counters["stats"]["unique_graphs"] > 0) is on  # inductor really compiled, and only when asked
        losses = [h["loss"] for h in run.trainer.state.log_history if "loss" in h]
        runs[on] = losses, get_peft_model_state_dict(run.trainer.model)
    (eager_losses, eager_weights), (compiled_losses, compiled_weights) = runs[False], runs[True]
    assert len(eager_losses) == 3
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert compiled_weights.keys() == eager_weights.keys()
    for k in eager_weights:
        torch.testing.assert_close(compiled_weights[k], eager_weights[k], rtol=1e-3, atol=1e-5)


def test_no_decoder_layer_means_nothing_compiled():
    assert sc.compile_layers(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))) == 0


def test_a_model_without_such_layers_is_said_to_train_eager(tiny_model, tmp_path, monkeypatch, capsys):
    from sft.train import build_trainer

    monkeypatch.setattr(sc, "COMPILED_PARTS", ("feed_forward", "attention_norm", "ffn_norm"))  # another family's names
    monkeypatch.setattr("sft.train.COMPILED_PARTS", sc.COMPILED_PARTS)
    run = build_trainer(cfg_with(tmp_path, tiny_model, compile_layers=True))
    assert run.compiled == 0
    assert "train.compile_layers: no decoder layer with feed_forward, attention_norm, ffn_norm in this model; it " \
           "trains eager" in capsys.readouterr().out
