"""Train until it knows: the validation split, knowledge checks during training, train.stop_at, the best adapter."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from data_prep.build import build
from data_prep.sources import DataError
from kit.config import KitError, build_config
from kit.files import load_jsonl
from sft.checks import Check, best_check, patience_spent
from sft.train import train
from tests.test_train import Crash, tiny_cfg


def checked_cfg(model, tmp_path, data=None, **train_kw):
    """tiny_cfg with a validation split (2 phrasings per attribute) and knowledge checks every epoch (3 steps)."""
    stop_at = train_kw.pop("stop_at", None)
    patience = train_kw.pop("early_stopping_patience", None)
    cfg = tiny_cfg(model, tmp_path, **{"max_steps": -1, "num_train_epochs": 3, "check_probes": 4,
                                       "learning_rate": 2e-2, **train_kw})
    raw = cfg.to_dict()
    raw["data"].update({"validation_size": 0.15, **(data or {})})
    raw["train"]["stop_at"] = stop_at
    raw["train"]["early_stopping_patience"] = patience
    return build_config(raw)


# ---------------------------------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("data, train_kw, message", [
    ({}, {"stop_at": {"value_match": 0.9}}, r"train\.stop_at: needs a validation split .* data\.validation_size"),
    ({"validation_size": 0.1}, {"stop_at": {"recall": 0.9}}, r"train\.stop_at\.recall: unknown measure; value match "
                                                               r"is called value_match"),
    ({"validation_size": 0.1}, {"stop_at": {"value_match": 95}}, r"train\.stop_at\.value_match: a share in \[0, 1\]"),
    ({"validation_size": 0.1}, {"stop_at": {"leak": 0.05}}, r"train\.stop_at: needs value_match"),
    ({"validation_size": 0.1}, {"stop_at": {"value_match": 0.9}, "check_strategy": "no"},
     r"train\.stop_at: needs train\.check_strategy epoch or steps"),
    ({"validation_size": 0.1}, {"check_strategy": "steps"}, r"train\.check_steps: required"),
    ({"validation_size": 0.1, "split": "entity"}, {}, r"data\.validation_size: needs data\.split=phrasing or random"),
    ({"validation_size": 0.8}, {}, r"data\.validation_size: a share in \[0, 1\) that leaves rows for train"),
    ({}, {"stop_at": "0.95"}, r"train\.stop_at: expected mapping of str to float or null"),
    ({"validation_size": 0.1}, {"stop_at": {"value_match": 0.9, "invention": 0.1}, "check_names": 0},
     r"train\.stop_at\.invention: needs invented people .* train\.check_names > 0"),
    ({"validation_size": 0.1}, {"check_names": 9}, r"train\.check_names: the zh list of invented names has 8; use 0 to 8, got 9"),
    ({"validation_size": 0.1}, {"stop_at": {"value_match": 0.9}, "early_stopping_patience": 0},
     r"train\.early_stopping_patience: a number of checks >= 1, or null for none, got 0"),
])
def test_config_errors_name_the_key(data, train_kw, message):
    raw = {"model": {"name_or_path": "m"}, "data": data, "train": train_kw}
    with pytest.raises(KitError, match=message):
        build_config(raw)


# ---------------------------------------------------------------------------------------------------------------------
# The validation split


def test_validation_phrasings_are_never_trained_or_tested_and_leave_test_as_it_was(tiny_model, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = build(tiny_cfg(tiny_model, tmp_path / "a"))
    checked = build(checked_cfg(tiny_model, tmp_path / "b"))
    assert (plain / "test.jsonl").read_bytes() == (checked / "test.jsonl").read_bytes()
    assert (plain / "validation.jsonl").read_bytes() == b""
    train, validation = load_jsonl(checked / "train.jsonl"), load_jsonl(checked / "validation.jsonl")
    test = load_jsonl(checked / "test.jsonl")
    # 2 people x 3 attributes, 2 held-out phrasings of each attribute's ~14: 12 rows; 4 train phrasings a fact
    assert len(validation) == 12 and len(train) == 24 and len(test) == 18
    held = {r["template"] for r in validation}
    assert len(held) == 6
    assert not held & {r["template"] for r in train + test}
    assert {(r["entity"], r["attribute"]) for r in validation} == {(r["entity"], r["attribute"]) for r in train}
    stats = json.loads((checked / "stats.json").read_text(encoding="utf-8"))
    assert stats["rows"]["validation"] == 12 and stats["rows"]["train"] == 24


def test_a_conversation_dataset_with_a_validation_size_is_refused_before_anything_is_written(tiny_model, tmp_path):
    src = tmp_path / "chats.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "你好"},
                                            {"role": "assistant", "content": "你好!"}]}, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    cfg = checked_cfg(tiny_model, tmp_path, data={"source": str(src)})
    with pytest.raises(DataError, match=r"data\.validation_size=0\.15: .*chats\.jsonl is a conversation dataset"):
        build(cfg)
    assert not cfg.data_dir.exists()


# ---------------------------------------------------------------------------------------------------------------------
# Which check is kept


def c(step, vm, leak, invention=0.0):
    return Check(step, step / 3, vm, leak, invention, 1.0)


def test_the_first_check_that_meets_stop_at_wins():
    checks = [c(3, 0.5, 0.0), c(6, 0.96, 0.04), c(9, 1.0, 0.0)]
    assert best_check(checks, {"value_match": 0.95, "leak": 0.05}).step == 6


def test_without_a_check_that_meets_it_the_nearest_to_it_wins():
    stop_at = {"value_match": 0.95, "leak": 0.05}
    # shortfalls: 0.45; 0.05 + 0.05 = 0.10; 0.15; 0.15 -> step 6
    checks = [c(3, 0.5, 0.0), c(6, 0.9, 0.10), c(9, 0.8, 0.04), c(12, 0.8, 0.0)]
    assert best_check(checks, stop_at).step == 6
    assert best_check(checks[2:], stop_at).step == 12  # a tie: the later step
    assert best_check(checks, {"value_match": 0.95}).step == 6  # no leak bound: the highest value match
    assert best_check([], stop_at) is None


def test_invention_above_its_bound_keeps_training_going():
    """The quickstart at 4 epochs (bench/RESULTS.md): only epoch 1 was within both the leak and the invention bound;
    the nearest to stop_at is epoch 3."""
    stop_at = {"value_match": 0.95, "leak": 0.05, "invention": 0.10}
    checks = [c(55, 13 / 48, 1 / 24, 0.10), c(110, 34 / 48, 0.0, 0.30), c(165, 43 / 48, 2 / 24, 0.10),
              c(220, 43 / 48, 1 / 24, 0.15)]
    assert not any(x.meets(stop_at) for x in checks)
    assert best_check(checks, stop_at).step == 165
    assert c(9, 0.98, 0.0, 0.05).meets(stop_at) and not c(9, 0.98, 0.0, 0.11).meets(stop_at)
    assert not c(9, 0.98, None, None).meets(stop_at)  # a bound on a measure not taken is not met


QUICKSTART_STOP_AT = {"value_match": 0.85, "leak": 0.05, "invention": 0.10}


def test_patience_stops_a_run_that_knows_its_facts_and_comes_no_nearer():
    """The quickstart with train.seed=11 (runs qs-s85d, bench/RESULTS.md): the facts are known at epoch 3 (93.8% on
    the checks), invention holds it (20%), epochs 4 and 5 come no nearer. Patience 1 stops after epoch 4 and keeps
    epoch 3, the check the 5-epoch run kept."""
    checks = [c(55, 13 / 48, 0 / 24, 0.25), c(110, 21 / 48, 1 / 24, 0.15), c(165, 45 / 48, 0 / 24, 0.20),
              c(220, 46 / 48, 3 / 24, 0.30), c(275, 46 / 48, 2 / 24, 0.25)]
    assert [patience_spent(checks[:n], QUICKSTART_STOP_AT, 1) for n in range(1, 6)] == [False, False, False, True,
                                                                                        True]
    assert [patience_spent(checks[:n], QUICKSTART_STOP_AT, 2) for n in range(1, 6)] == [False] * 4 + [True]
    assert not any(patience_spent(checks[:n], QUICKSTART_STOP_AT, None) for n in range(1, 6))
    assert best_check(checks[:4], QUICKSTART_STOP_AT).step == 165


def test_patience_never_cuts_short_a_run_still_learning_its_facts():
    # batch 16 (bench/RESULTS.md, seventh session): value match never reached; epoch 2 came no nearer than epoch 1
    learning = [c(28, 8 / 48, 1 / 24, 0.10), c(56, 21 / 48, 1 / 24, 0.40), c(84, 28 / 48, 5 / 24, 0.30)]
    assert not any(patience_spent(learning[:n], QUICKSTART_STOP_AT, 1) for n in range(1, 4))
    # the prefix in bf16: epoch 4 reached value match but came no nearer than epoch 3, which had not: train on
    prefix = [c(55, 10 / 48, 1 / 24, 0.10), c(110, 31 / 48, 1 / 24, 0.15), c(165, 39 / 48, 2 / 24, 0.10),
              c(220, 42 / 48, 1 / 24, 0.30)]
    assert not patience_spent(prefix, QUICKSTART_STOP_AT, 1)
    # a check as near as the nearest (a tie) is no nearer
    tie = [c(3, 0.9, 0.0, 0.25), c(6, 0.9, 0.0, 0.25)]
    assert patience_spent(tie, QUICKSTART_STOP_AT, 1) and best_check(tie, QUICKSTART_STOP_AT).step == 6


# ---------------------------------------------------------------------------------------------------------------------
# Training with checks


def test_training_stops_at_the_first_check_that_meets_stop_at(tiny_model, tmp_path):
    cfg = checked_cfg(tiny_model, tmp_path, save_strategy="epoch", stop_at={"value_match": 0.0, "leak": 1.0})
    train(cfg)
    m = json.loads((cfg.out / "metrics.json").read_text(encoding="utf-8"))
    assert m["steps"] == 3 and m["epochs"] == 1.0  # 24 rows / 8 a step: one epoch of the three asked
    assert [(x["step"], x["epoch"]) for x in m["checks"]] == [(3, 1.0)]
    assert m["kept"]["step"] == 3 and m["kept"]["why"].startswith("the first check that met train.stop_at")
    rows = list(csv.DictReader((cfg.out / "loss.csv").open(encoding="utf-8")))
    assert [r["step"] for r in rows if r["check_value_match"]] == ["3"]
    assert json.loads((cfg.checkpoints_dir / "best" / "best.json").read_text()) == {"step": 3, "epoch": 1.0}


def test_without_stop_at_checks_are_logged_and_the_last_step_is_kept(tiny_model, tmp_path, capsys):
    cfg = checked_cfg(tiny_model, tmp_path)
    train(cfg)
    m = json.loads((cfg.out / "metrics.json").read_text(encoding="utf-8"))
    assert [x["step"] for x in m["checks"]] == [3, 6, 9] and m["steps"] == 9
    assert m["kept"] == {"step": 9, "epoch": 3.0, "why": "the last step (train.stop_at is not set)"}
    assert not (cfg.checkpoints_dir / "best").exists()
    out = capsys.readouterr().out
    # 12 validation rows, 4 everyday questions, 4 invented people x 3 attributes
    assert "check at epoch 1 (step 3): value match " in out and "/12 (" in out and ", leak " in out and "/4 (" in out
    assert ", invention " in out and out.count("/12 (") >= 2
    assert all(x["invention"] is not None and x["leak"] is not None for x in m["checks"])


def test_when_no_check_meets_stop_at_the_best_checks_adapter_is_saved(tiny_model, tmp_path, monkeypatch):
    """Value matches scripted 6/12, 11/12, 9/12 over the three epochs: stop_at 0.95 is never met, epoch 2 is kept,
    and the saved adapter is epoch 2's, not the last epoch's."""
    import kit.specificity

    script = iter([True] * 6 + [False] * 6 + [True] * 11 + [False] + [True] * 9 + [False] * 3)
    # the checks count with kit.specificity.value_matches, which judges each row with value_match
    monkeypatch.setattr(kit.specificity, "value_match", lambda expected, answer: next(script))
    cfg = checked_cfg(tiny_model, tmp_path, save_strategy="epoch", save_total_limit=None,
                      stop_at={"value_match": 0.95, "leak": 1.0})
    adapter = train(cfg)
    m = json.loads((cfg.out / "metrics.json").read_text(encoding="utf-8"))
    assert [(x["step"], x["value_match"]) for x in m["checks"]] == [(3, 0.5), (6, 11 / 12), (9, 0.75)]
    assert m["steps"] == 9
    assert m["kept"]["step"] == 6 and m["kept"]["why"].endswith("the nearest to it (value match 91.7%, leak 0.0%; "
                                                                "0.033 short)")
    kept = load_file(str(adapter / "adapter_model.safetensors"))
    epoch2 = load_file(str(cfg.checkpoints_dir / "checkpoint-6" / "adapter_model.safetensors"))
    epoch3 = load_file(str(cfg.checkpoints_dir / "checkpoint-9" / "adapter_model.safetensors"))
    assert kept.keys() == epoch2.keys()
    for k in kept:
        torch.testing.assert_close(kept[k], epoch2[k], rtol=0, atol=0)
    assert any(not torch.equal(kept[k], epoch3[k]) for k in kept)


@pytest.mark.parametrize("patience, steps, said", [
    (1, 6, "; training stopped after 1 check(s) that came no nearer (train.early_stopping_patience)"),
    (2, 9, ""),  # spent only at the last epoch, the ceiling: training ended anyway, and nothing says otherwise
])
def test_patience_stops_training_and_keeps_the_nearest_checks_adapter(tiny_model, tmp_path, monkeypatch, capsys,
                                                                      patience, steps, said):
    """Invention scripted 6/12 at epoch 1 and 12/12 after against a bound of 0: value match (bound 0) is reached at
    once and no later epoch comes nearer, so patience 1 stops after epoch 2 of 3; both keep epoch 1's adapter."""
    import sft.checks

    script = iter([True] * 6 + [False] * 6 + [True] * 24)
    monkeypatch.setattr(sft.checks, "invented", lambda answer, question, strings: next(script))
    cfg = checked_cfg(tiny_model, tmp_path, save_strategy="epoch", save_total_limit=None,
                      early_stopping_patience=patience, stop_at={"value_match": 0.0, "invention": 0.0})
    adapter = train(cfg)
    m = json.loads((cfg.out / "metrics.json").read_text(encoding="utf-8"))
    assert [x["invention"] for x in m["checks"]] == [0.5, 1.0, 1.0][: steps // 3] and m["steps"] == steps
    assert m["kept"]["step"] == 3
    assert m["kept"]["why"].endswith("invention 50.0%; 0.500 short)" + said)
    assert ("check(s) since the facts were known came no nearer" in capsys.readouterr().out) == bool(said)
    kept = load_file(str(adapter / "adapter_model.safetensors"))
    epoch1 = load_file(str(cfg.checkpoints_dir / "checkpoint-3" / "adapter_model.safetensors"))
    for k in kept:
        torch.testing.assert_close(kept[k], epoch1[k], rtol=0, atol=0)


def test_a_resumed_run_keeps_the_checks_made_before_the_kill(tiny_model, tmp_path):
    kw = dict(max_steps=6, check_strategy="steps", check_steps=2, save_strategy="steps", save_steps=2,
              resume="auto")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    train(checked_cfg(tiny_model, tmp_path / "a", **kw))
    cfg_b = checked_cfg(tiny_model, tmp_path / "b", **kw)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_b, callbacks=[Crash(at=5)])
    train(cfg_b)

    def checks(root):
        m = json.loads((root / "run" / "metrics.json").read_text(encoding="utf-8"))
        return [(x["step"], x["value_match"], x["leak"]) for x in m["checks"]]

    assert [s for s, _, _ in checks(tmp_path / "b")] == [2, 4, 6]
    assert checks(tmp_path / "b") == checks(tmp_path / "a")
