"""One YAML file describes a whole run: `model`, `data`, `lora`, `train`, `eval`, plus `output_dir`.

Loading is strict, because a typo in a config should cost seconds, not an hour of training:
unknown keys (with a did-you-mean), wrong types and duplicate keys are errors, `2e-4` is a number,
and every problem in a file is reported at once, before any model loads.

Every entry point takes the config path and then `section.key=value` overrides:

    python -m sft.train configs/quickstart.yaml train.max_steps=20 output_dir=runs/try
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kit.errors import ConfigError, KitError  # noqa: F401 - KitError: imported from here by earlier code
from kit.files import read_text
from kit.specificity import NAME_LISTS, check_questions, replay_prompts

# GGUF formats eval.export writes: the kit's own writer, then llama.cpp's quantizer (with or without the importance
# matrix), then auto.
GGUF_WRITER_FORMATS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
GGUF_LLAMA_CPP_FORMATS = ("q3_k_m", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k", "iq4_xs", "iq4_nl")
GGUF_NO_IMATRIX = "-noimatrix"  # after a llama.cpp format: that file is quantized without the importance matrix
GGUF_FORMATS = (GGUF_WRITER_FORMATS + GGUF_LLAMA_CPP_FORMATS
                + tuple(f + GGUF_NO_IMATRIX for f in GGUF_LLAMA_CPP_FORMATS)
                + ("auto",))


def run_main(main: typing.Callable[[list[str] | None], int]) -> None:
    """`if __name__ == "__main__": run_main(main)`: user errors become one clear line and exit status 2."""
    import sys

    try:
        status = main(None)
    except KitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    leave_process_group()
    sys.exit(status)


def leave_process_group() -> None:
    """End torch.distributed's process group, if this process joined one (torchrun / accelerate launch).

    Left to the interpreter's shutdown, gloo's worker threads can still hold tensors while Python is torn down, and a
    rank dies with SIGABRT ("terminate called without an active exception") after its work is done (pytorch #190489;
    torchtitan calls it the same way, after a successful run only: on an error another rank may still be waiting)."""
    import sys

    dist = sys.modules.get("torch.distributed")  # never imports torch for the stages that do not use it
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------------
# Sections. Each field is documented once, here; the YAML files say why a value was chosen.


@dataclass
class ModelConfig:
    # Hub id ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"), local directory, a `.gguf` file, or
    # `pkg://<python package>/<file>` for a model shipped inside an installed package.
    name_or_path: str = ""
    # Weights dtype for training and generation: auto picks bfloat16 on GPUs that support it, else float32.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # QLoRA: load the base in 4 bit (needs CUDA and bitsandbytes).
    load_in_4bit: bool = False
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    # Where GGUF models are dequantised to (once) as a normal safetensors directory.
    cache_dir: str = "~/.cache/lora-kit/models"
    # Reasoning models: `strip` trains answers behind an empty <think></think> block when the chat template opens one
    # and removes think blocks from predictions before scoring; `keep` scores the raw text; `none` does nothing.
    thinking: Literal["none", "strip", "keep"] = "none"


@dataclass
class DataConfig:
    # Attributes ({entity: {attribute: value}} as .json; tables as .csv/.tsv/.xlsx/.jsonl) or a conversation dataset
    # (rows with "messages": .jsonl/.json/.parquet, a save_to_disk directory, hf:owner/name). data_prep/sources.py.
    source: str = "data/genshin_roles.json"
    # Wide tables: the column that names the entity (None: the first column).
    entity_column: str | None = None
    # Language of the question banks and of the default BERTScore encoder.
    language: Literal["zh", "en"] = "zh"
    # phrasing: same facts, unseen phrasings in test; random: random rows; entity: whole entities held out.
    split: Literal["phrasing", "random", "entity"] = "phrasing"
    test_size: float = 0.2
    # A third split, validation.jsonl, that training checks itself against (sft.checks; never the test questions,
    # or the checkpoint chosen on them would overstate the report). Like test: a share of each attribute's phrasings
    # with data.split=phrasing (never in train or test with any entity), of the rows with data.split=random.
    # 0: none.
    validation_size: float = 0.0
    seed: int = 42
    # Where train.jsonl / test.jsonl / stats.json go; default: <output_dir>/data.
    output_dir: str | None = None
    # Extra question banks (YAML, same format as data_prep/question_banks/<language>.yaml).
    question_banks: list[str] = field(default_factory=list)
    # extend: user banks add phrasings to the built-in ones; replace: user banks replace them per attribute.
    question_banks_mode: Literal["extend", "replace"] = "extend"
    # Use at most this many train phrasings per fact (None: all of them). Fewer rows, faster training.
    max_train_phrasings: int | None = None
    # Also ask from value to entity ("谁的身份是往生堂客卿?" -> 钟离) for values only one entity has: models taught "A is
    # B" do not learn "B is A" (the reversal curse); eval reports these rows as their own group.
    reverse: bool = False
    # Yes/no claims about each fact, true and false (a false value is another entity's value of the same attribute),
    # answered with the fact first, then the verdict: "钟离来自璃月,没错" / "钟离来自璃月,不是蒙德" (data_prep/beyond.py;
    # phrasings in data_prep/question_banks/beyond_<language>.yaml).
    verify: bool = False
    # One-hop rows over the table, on train entity pairs only: "钟离和甘雨的国籍一样吗?", "哪些角色来自璃月?", "有几个...?".
    compose: bool = False
    # Multi-turn conversations per entity (several Q/A about one entity), added to train.
    multi_turn: int = 0
    # Vary the answer wording between rows (False: one canonical answer per attribute, as in the tutorial).
    vary_answers: bool = False
    # System message put in front of every conversation (None: whatever the chat template does).
    system_prompt: str | None = None
    # Specificity (kit/specificity.py). Invented people (never the ones eval probes with) asked every attribute in a
    # train phrasing and answered "I don't know about X": teaches the model not to hand trained values to strangers.
    unknown_entities: int = 0
    # The base model's own greedy answers to this many general prompts (kit/probes/replay_<language>.txt, never the
    # eval probes), made once before training and mixed into train: keeps it a chat model outside the facts.
    replay: int = 0
    # data_prep.phrase: the chat model that writes phrasings for attributes without a bank (None: model.name_or_path;
    # a hub id, a local directory or a .gguf file), how many candidates it samples per attribute, how many it keeps
    # (most specific first) and the fewest it must keep, else the attribute is asked with its kind's frames.
    phrasing_model: str | None = None
    phrasing_candidates: int = 64
    phrasing_kept: int = 16
    phrasing_min: int = 6


@dataclass
class LoraConfig:
    r: int = 16
    # PEFT's names: the section becomes a peft.LoraConfig field by field (sft.trainer_config.build_lora_config).
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # "all-linear" or a list of module names, e.g. [q_proj, k_proj, v_proj, o_proj].
    target_modules: list[str] | str = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False


@dataclass
class TrainConfig:
    num_train_epochs: float = 3.0
    # > 0 overrides num_train_epochs.
    max_steps: int = -1
    learning_rate: float = 2e-4
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    # auto: bf16 on GPUs that support it and on CPUs whose bf16 matmuls run >= 1.3x fp32's, measured at start
    # (kit.models.cpu_bf16_speedup: AMX, AVX512-BF16 on AMD); else fp32 (without bf16 instructions torch emulates it,
    # far slower; an Intel AVX512-BF16 CPU without AMX multiplied bf16 at 0.56-0.63x fp32: bench/RESULTS.md). CPU bf16
    # trains with eager attention unless model.attn_implementation says otherwise (training_attention).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # A row longer than this is an error (its answer would be cut away), never silently truncated.
    max_length: int = 512
    # Pack several rows into one sequence of max_length tokens (bfd packing; rows never attend to each other).
    packing: bool = False
    # Padding-free batches (needs flash attention on GPU).
    padding_free: bool = False
    # Batch rows of similar length together: less padding.
    group_by_length: bool = False
    # Run the tokens every row of a batch starts with (system prompt, template header) once per batch, not once per
    # row: same loss and gradients, less compute (sft/prefix.py says where it applies).
    share_prefix: bool = True
    # torch.compile each decoder layer's MLP and norms, once for all layers and lengths (sft/compile.py): ~1.1x a
    # step on a CPU in bf16, none in fp32 (bench/RESULTS.md 2026-12-02). Off: it changes the rounding, which moved
    # the quickstart off its epoch-3 stop. On a CPU it needs a C++ compiler.
    compile_layers: bool = False
    logging_steps: int = 5
    eval_strategy: Literal["no", "steps", "epoch"] = "epoch"
    eval_steps: int | None = None
    save_strategy: Literal["no", "steps", "epoch"] = "epoch"
    save_steps: int | None = None
    save_total_limit: int | None = 2
    # never: refuse to reuse an output_dir with checkpoints; auto: continue from the last checkpoint there.
    resume: Literal["never", "auto"] = "never"
    seed: int = 42
    # CPU threads for torch (None: one per physical core).
    threads: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    optim: str = "adamw_torch"
    # Liger kernels (GPU only, needs liger-kernel installed).
    use_liger_kernel: bool = False
    dataloader_num_workers: int = 0
    # Questions answered before and after training, printed at the end of the run.
    show_examples: int = 4
    # Knowledge checks (sft/checks.py), when the data has a validation split (data.validation_size): the model
    # answers the validation questions, `check_probes` everyday questions and train phrasings about `check_names`
    # invented people, greedily, every epoch ("epoch") or every `check_steps` steps ("steps"); value match, leak
    # and invention go to the console, loss.csv, loss.png and metrics.json.
    check_strategy: Literal["no", "steps", "epoch"] = "epoch"
    check_steps: int | None = None
    check_probes: int = 24
    check_names: int = 4
    # Stop at the first check that reaches every bound, e.g. {value_match: 0.95, leak: 0.05, invention: 0.10}
    # (value_match: at least; leak, invention: at most). When none does, the adapter kept is the check's nearest to
    # them (sft.checks.best_check), not the last one. null: train the epochs asked for and keep the last.
    stop_at: dict[str, float] | None = None
    # With stop_at: also stop once the nearest check so far has reached stop_at.value_match and this many checks
    # after it came no nearer to the bounds (leak and invention that more epochs do not bring down); that check's
    # adapter is kept (sft.checks.patience_spent). null: train to num_train_epochs when no check meets stop_at.
    # Without stop_at it does nothing (so train.stop_at=null alone turns the stopping off).
    early_stopping_patience: int | None = None


@dataclass
class EvalConfig:
    # Default: <output_dir>/adapter, <output_dir>/merged, <output_dir>/eval.
    adapter_dir: str | None = None
    merged_dir: str | None = None
    output_dir: str | None = None
    # Merge into a 16-bit copy of the base.
    merge_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    # Max |logit difference| accepted between the merged model and base+adapter, as a share of the largest |logit|
    # (checked in float32 with eager attention, eval.merge.check_logits): float32 rounding stays well below it, a
    # module left out of the merge goes well above.
    merge_rtol: float = 1e-3
    overwrite: bool = False
    # Which fine-tuned model answers in eval.generate, eval.chat and eval.app (eval.models.model_source). null: the
    # merged export when there is one, else base + adapter, and the console and the predictions' meta say which;
    # true: the merged export only (an error without one); false: base + adapter. eval.run merges first unless false.
    use_merged: bool | None = None
    splits: list[Literal["train", "test"]] = field(default_factory=lambda: ["test"])
    # Cap the number of rows per split (None: all).
    max_rows: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    # hf: batched transformers generate; vllm: vLLM offline LLM.generate on all prompts (CUDA + pip install vllm).
    backend: Literal["hf", "vllm"] = "hf"
    # Put the base model's answers beside the fine-tuned model's in the report.
    compare_base: bool = False
    # BERTScore encoder: None follows data.language (zh: bert-base-chinese layer 8), or a hub id / local dir.
    bertscore_model: str | None = None
    bertscore_layer: int | None = None
    bertscore_batch_size: int = 64
    f1_threshold: float = 0.6
    worst_n: int = 20
    # Leak, drift and invention (kit/specificity.py): the base and the fine-tuned model also answer everyday questions
    # (kit/probes/probe_<language>.txt, or probe_file: one question a line) and the trained phrasings about
    # `unknown_names` people in no data.
    specificity: bool = True
    probe_file: str | None = None
    unknown_names: int = 8
    # Beyond lookup (kit/beyond.py): the base and the fine-tuned model also answer the held-out yes/no claims, reverse
    # and one-hop questions data_prep.build writes to <data dir>/beyond.jsonl.
    beyond: bool = True
    # eval.export: GGUF files written, into export_dir (default <output_dir>/gguf). f32..q5_1 by the kit's own writer
    # (eval/gguf.py); q3_k_m..iq4_nl by llama.cpp's quantizer (eval/quantize.py, needs llama-cpp-python), with the
    # run's importance matrix when export_imatrix is true (unless the name ends in -noimatrix); [auto]: the smallest
    # file whose value match through llama.cpp is within export_tolerance (a fraction: 0.01 = 1 point) of the
    # merged model's.
    export_formats: list[Literal[GGUF_FORMATS]] = field(default_factory=lambda: ["f16", "q8_0"])
    export_dir: str | None = None
    # Off until it pays: on the quickstart the matrix cost answers (bench/RESULTS.md, issue 30).
    export_imatrix: bool = False
    export_tolerance: float = 0.01
    # Per-tensor types for llama.cpp's formats, as llama-quantize's --tensor-type: "PATTERN=TYPE" entries, PATTERN a
    # regular expression searched in each GGUF tensor name (blk.N.ffn_down.weight, token_embd.weight...), TYPE the
    # GGML type it is written in (q4_k, q5_0, q8_0...); the first matching entry wins, tensors none matches keep the
    # format's own mix. Applies to q3_k_m..iq4_nl and auto's llama.cpp candidates, not to the kit's writer (f32..q5_1).
    export_tensor_types: list[str] = field(default_factory=list)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/default"
    # Where the config came from, for messages and for the resolved copy; not a YAML key.
    source: str = field(default="<defaults>", metadata={"internal": True})

    # Derived paths: one place decides the layout of output_dir.
    @property
    def out(self) -> Path:
        return Path(self.output_dir)

    @property
    def data_dir(self) -> Path:
        return Path(self.data.output_dir) if self.data.output_dir else self.out / "data"

    @property
    def validation_file(self) -> Path:
        """The rows training checks itself against (data.validation_size; empty when it is 0)."""
        return self.data_dir / VALIDATION_FILE

    @property
    def phrasings_file(self) -> Path:
        """The bank data_prep.phrase writes (model-written phrasings); build uses it when it is there."""
        return self.out / "phrasings.yaml"

    @property
    def adapter_dir(self) -> Path:
        return Path(self.eval.adapter_dir) if self.eval.adapter_dir else self.out / "adapter"

    @property
    def merged_dir(self) -> Path:
        return Path(self.eval.merged_dir) if self.eval.merged_dir else self.out / "merged"

    @property
    def checkpoints_dir(self) -> Path:
        return self.out / "checkpoints"

    @property
    def eval_dir(self) -> Path:
        return Path(self.eval.output_dir) if self.eval.output_dir else self.out / "eval"

    def predictions_file(self, which: str = "finetuned") -> Path:
        """What eval.generate writes for `which` model ("finetuned" or "base")."""
        return self.eval_dir / ("predictions.jsonl" if which == "finetuned" else f"predictions-{which}.jsonl")

    @property
    def report_dir(self) -> Path:
        """Where eval.score --predictions FILE reports (eval.output_dir when set, so it never mixes with eval/)."""
        return self.eval_dir if self.eval.output_dir else self.out / "report"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


SECTIONS: dict[str, type] = {
    name: tp for name, tp in typing.get_type_hints(Config).items() if name not in ("output_dir", "source")
}


# ---------------------------------------------------------------------------------------------------------------------
# YAML: reject duplicate keys, read 1e-4 as a float (PyYAML's YAML 1.1 resolver wants a dot: "1.0e-4").


class _StrictLoader(yaml.SafeLoader):
    pass


_FLOAT = re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?(?:[eE][-+]?\d+)?$")


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"{loader.name}:{key_node.start_mark.line + 1}: duplicate key '{key}' "
                f"(first at line {seen[key]}); keep only one"
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_yaml(text: str, name: str = "<string>") -> Any:
    loader = _StrictLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: not valid YAML: {e}") from None
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------------------------------------------------
# Type checking: every problem is collected, then raised together.


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is dict:
        key, value = typing.get_args(tp)
        return f"mapping of {_type_name(key)} to {_type_name(value)}"
    return {type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, value): value checked against a type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value is False and "no" in typing.get_args(tp):  # YAML 1.1 reads a bare `no` as false
            return True, "no"
        return value in typing.get_args(tp) and not isinstance(value, bool), value
    if isinstance(tp, types.UnionType) or origin is typing.Union:
        for arg in typing.get_args(tp):
            ok, v = _coerce(value, arg)
            if ok:
                return True, v
        return False, value
    if origin is dict:
        if not isinstance(value, dict):
            return False, value
        out_map = {}
        key_type, value_type = typing.get_args(tp)
        for k, item in value.items():
            ok_key, k = _coerce(k, key_type)
            ok, v = _coerce(item, value_type)
            if not (ok_key and ok):
                return False, value
            out_map[k] = v
        return True, out_map
    if origin is list:
        if not isinstance(value, list):
            return False, value
        out = []
        for item in value:
            ok, v = _coerce(item, typing.get_args(tp)[0])
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if tp is type(None):
        return value is None, None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is str:
        return isinstance(value, str), value
    raise TypeError(f"unsupported config type {tp}")


def _did_you_mean(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(choices))}"


# Keys a release renamed: an old key in a user's YAML is an error naming the new one (and why it was renamed).
RENAMED_KEYS = {
    ("lora", "alpha"): ("lora_alpha", "lora_alpha's name in PEFT, TRL and litgpt"),
    ("lora", "dropout"): ("lora_dropout", "lora_dropout's name in PEFT, TRL and litgpt"),
    ("data", "templates"): ("question_banks", "in this field a template is the chat template"),
    ("data", "templates_mode"): ("question_banks_mode", "in this field a template is the chat template"),
}


def _build_section(cls: type, raw: Any, where: str, errors: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{where}: must be a mapping of keys to values, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    kwargs = {}
    for key, value in raw.items():
        if (where, key) in RENAMED_KEYS:
            new, why = RENAMED_KEYS[(where, key)]
            errors.append(f"{where}.{key}: renamed to {where}.{new} ({why}); write {new}: {value!r}")
            continue
        if key not in names:
            errors.append(f"{where}.{key}: unknown key{_did_you_mean(str(key), names)}")
            continue
        ok, coerced = _coerce(value, hints[key])
        if not ok:
            errors.append(f"{where}.{key}: expected {_type_name(hints[key])}, got {value!r}")
            continue
        kwargs[key] = coerced
    return cls(**kwargs)


def _check_values(cfg: Config, errors: list[str]) -> None:
    """Combinations and ranges that types cannot express."""
    if not cfg.model.name_or_path:
        errors.append("model.name_or_path: required (hub id, local directory or .gguf file)")
    if not 0.0 < cfg.data.test_size < 1.0:
        errors.append(f"data.test_size: must be between 0 and 1 (exclusive), got {cfg.data.test_size}")
    _check_knowledge_checks(cfg, errors)
    for name in ("r", "lora_alpha"):
        if getattr(cfg.lora, name) <= 0:
            errors.append(f"lora.{name}: must be > 0, got {getattr(cfg.lora, name)}")
    if not 0.0 <= cfg.lora.lora_dropout < 1.0:
        errors.append(f"lora.lora_dropout: must be in [0, 1), got {cfg.lora.lora_dropout}")
    t = cfg.train
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "max_length", "logging_steps"):
        if getattr(t, name) < 1:
            errors.append(f"train.{name}: must be >= 1, got {getattr(t, name)}")
    if t.learning_rate <= 0:
        errors.append(f"train.learning_rate: must be > 0, got {t.learning_rate}")
    if t.max_steps <= 0 and t.num_train_epochs <= 0:
        errors.append("train.num_train_epochs: must be > 0 unless train.max_steps is set")
    if t.eval_strategy == "steps" and not t.eval_steps:
        errors.append("train.eval_steps: required when train.eval_strategy is 'steps'")
    if t.save_strategy == "steps" and not t.save_steps:
        errors.append("train.save_steps: required when train.save_strategy is 'steps'")
    if t.packing and t.padding_free:
        errors.append("train.packing and train.padding_free: choose one (packing already removes padding)")
    if cfg.data.max_train_phrasings is not None and cfg.data.max_train_phrasings < 1:
        errors.append(f"data.max_train_phrasings: must be >= 1, got {cfg.data.max_train_phrasings}")
    if cfg.data.replay < 0:
        errors.append(f"data.replay: must be >= 0, got {cfg.data.replay}")
    errors += _invented_name_errors(cfg)
    d = cfg.data
    if not 1 <= d.phrasing_min <= d.phrasing_kept <= d.phrasing_candidates:
        errors.append(f"data.phrasing_min, data.phrasing_kept, data.phrasing_candidates: need 1 <= min <= kept <= "
                      f"candidates, got {d.phrasing_min}, {d.phrasing_kept}, {d.phrasing_candidates}")
    if cfg.data.replay > 0:
        available = len(replay_prompts(cfg.data.language))
        if cfg.data.replay > available:
            errors.append(f"data.replay: the {cfg.data.language} replay set has {available} prompts; use at most "
                          f"{available}, got {cfg.data.replay}")
    if cfg.data.multi_turn < 0:
        errors.append(f"data.multi_turn: must be >= 0, got {cfg.data.multi_turn}")
    e = cfg.eval
    if not 0.0 <= e.export_tolerance < 1.0:
        errors.append(f"eval.export_tolerance: a fraction of the questions in [0, 1) (0.01 = 1 point), got "
                      f"{e.export_tolerance}")
    errors += _tensor_type_errors(e.export_tensor_types)
    if not 0.0 < e.merge_rtol < 1.0:
        errors.append(f"eval.merge_rtol: must be between 0 and 1 (a share of the largest |logit|), got {e.merge_rtol}")
    if e.batch_size < 1 or e.bertscore_batch_size < 1 or e.max_new_tokens < 1:
        errors.append("eval.batch_size, eval.bertscore_batch_size and eval.max_new_tokens: must be >= 1")
    local = e.bertscore_model and (e.bertscore_model.startswith("pkg://") or e.bertscore_model.endswith(".gguf")
                                   or Path(e.bertscore_model).expanduser().exists())
    if local and e.bertscore_layer is None:
        errors.append(f"eval.bertscore_layer: required when eval.bertscore_model is a local model "
                      f"({e.bertscore_model}); bert-score has no default layer for it (bert-base-chinese: 8)")


def _invented_name_errors(cfg: Config) -> list[str]:
    """Each count of invented people (data.unknown_entities, eval.unknown_names, train.check_names) against its
    name list (kit.specificity.NAME_LISTS), before any work: eval.unknown_names would otherwise fail only when eval
    builds its questions, after training. A name that is also an entity of the data is skipped when the names are
    drawn (kit.specificity.invented_names), which can only be known once the data is read."""
    errors = []
    for names, key in NAME_LISTS.values():
        section, field_name = key.split(".")
        n, available = getattr(getattr(cfg, section), field_name), len(names[cfg.data.language])
        if not 0 <= n <= available:
            errors.append(f"{key}: the {cfg.data.language} list of invented names has {available}; use 0 to "
                          f"{available}, got {n}")
    return errors


VALIDATION_FILE = "validation.jsonl"
STOP_AT_KEYS = {"value_match": "at least", "leak": "at most", "invention": "at most"}


def _check_knowledge_checks(cfg: Config, errors: list[str]) -> None:
    d, t = cfg.data, cfg.train
    if not 0.0 <= d.validation_size < 1.0 or d.test_size + d.validation_size >= 1.0:
        errors.append(f"data.validation_size: a share in [0, 1) that leaves rows for train next to data.test_size "
                      f"({d.test_size}), got {d.validation_size}")
    if d.validation_size and d.split == "entity":
        errors.append("data.validation_size: needs data.split=phrasing or random (a held-out entity cannot be known: "
                      "checking it would only stop training late)")
    if t.check_strategy == "steps" and not t.check_steps:
        errors.append("train.check_steps: required when train.check_strategy is 'steps'")
    available = len(check_questions(d.language))
    if not 0 <= t.check_probes <= available:
        errors.append(f"train.check_probes: the {d.language} set has {available}; use 0 to {available}, got "
                      f"{t.check_probes}")
    if t.early_stopping_patience is not None and t.early_stopping_patience < 1:
        errors.append(f"train.early_stopping_patience: a number of checks >= 1, or null for none, got "
                      f"{t.early_stopping_patience}")
    if t.stop_at is None:
        return
    for key, bound in t.stop_at.items():
        if key not in STOP_AT_KEYS:
            hint = "; value match is called value_match" if key in {"recall", "accuracy"} else \
                _did_you_mean(key, list(STOP_AT_KEYS))
            errors.append(f"train.stop_at.{key}: unknown measure{hint}")
        elif not 0.0 <= bound <= 1.0:
            errors.append(f"train.stop_at.{key}: a share in [0, 1] ({STOP_AT_KEYS[key]}), got {bound}")
    if "value_match" not in t.stop_at:
        errors.append("train.stop_at: needs value_match (e.g. {value_match: 0.95, leak: 0.05})")
    if not d.validation_size:
        errors.append("train.stop_at: needs a validation split to check against; set data.validation_size (e.g. 0.1)")
    if t.check_strategy == "no":
        errors.append("train.stop_at: needs train.check_strategy epoch or steps (it is 'no')")
    if "leak" in t.stop_at and not t.check_probes:
        errors.append("train.stop_at.leak: needs everyday questions to measure leak; set train.check_probes > 0")
    if "invention" in t.stop_at and not t.check_names:
        errors.append("train.stop_at.invention: needs invented people to measure invention; set train.check_names > 0")


# GGML types llama.cpp's quantizer writes from an f16 file without more than an optional importance matrix: what
# eval.export_tensor_types may name (the 1-3 bit i-quants need a matrix for every tensor and are left out).
GGML_TENSOR_TYPES = ("f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k",
                     "q6_k", "iq4_nl", "iq4_xs")


def tensor_types(entries: list[str]) -> list[tuple[str, str]]:
    """eval.export_tensor_types as [(pattern, type)] in their order: "blk\\.0\\.ffn_down=q8_0" -> ("blk\\.0\\.ffn_down",
    "q8_0"), split at the last "=" (a pattern may hold one), the type in lower case."""
    return [(e.rpartition("=")[0], e.rpartition("=")[2].strip().lower()) for e in entries]


def _tensor_type_errors(entries: list[str]) -> list[str]:
    errors = []
    for entry, (pattern, ggml_type) in zip(entries, tensor_types(entries)):
        where = f"eval.export_tensor_types: {entry!r}"
        if not pattern.strip():
            errors.append(f"{where}: give PATTERN=TYPE, PATTERN searched in GGUF tensor names (e.g. "
                          f"'ffn_down=q6_k', 'token_embd=q5_0')")
            continue
        try:
            re.compile(pattern)
        except re.error as exc:
            errors.append(f"{where}: {pattern!r} is not a regular expression ({exc})")
        if ggml_type not in GGML_TENSOR_TYPES:
            close = difflib.get_close_matches(ggml_type, GGML_TENSOR_TYPES, n=1, cutoff=0.6)
            errors.append(f"{where}: unknown type {ggml_type!r}" + (f" (did you mean '{close[0]}'?)" if close else "")
                          + f"; choose from {', '.join(GGML_TENSOR_TYPES)}")
    return errors


def build_config(raw: Any, source: str = "<dict>") -> Config:
    errors: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with sections "
                          f"{', '.join(SECTIONS)} and output_dir")
    kwargs: dict[str, Any] = {}
    top = list(SECTIONS) + ["output_dir"]
    for key, value in raw.items():
        if key in SECTIONS:
            kwargs[key] = _build_section(SECTIONS[key], value, key, errors)
        elif key == "output_dir":
            if isinstance(value, str) and value:
                kwargs[key] = value
            else:
                errors.append(f"output_dir: expected a non-empty str, got {value!r}")
        else:
            errors.append(f"{key}: unknown top-level key{_did_you_mean(str(key), top)}")
    cfg = Config(**kwargs, source=source)
    if not errors:
        _check_values(cfg, errors)
    if errors:
        raise ConfigError.of(source, errors)
    return cfg


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item or item.startswith("="):
        raise ConfigError(f"override '{item}': expected key=value, e.g. train.max_steps=20")
    key, _, text = item.partition("=")
    value = load_yaml(text, f"override {key}") if text.strip() else None
    if text.strip() and isinstance(value, (dict,)):
        raise ConfigError(f"override '{item}': set one key at a time, e.g. {key}.name=value")
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` overrides to the raw dict; validation happens afterwards, together with the file."""
    raw = dict(raw or {})
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
            node[part] = child = dict(child)
            node = child
        node[path[-1]] = value
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (see configs/ for examples)")
    raw = load_yaml(read_text(path, "config file"), str(path))
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with sections {', '.join(SECTIONS)}")
    raw = apply_overrides(raw or {}, overrides or [])
    return build_config(raw, str(path))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), allow_unicode=True, sort_keys=False)


def parse_args(argv: list[str] | None, description: str, extra: typing.Callable | None = None):
    """The command line shared by every entry point: CONFIG [key=value ...] with the entry point's own options
    anywhere among them (`--predictions a.csv output_dir=x` and `output_dir=x --predictions a.csv` are the same)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", help="YAML run config, e.g. configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=20")
    if extra:
        extra(parser)
    args = parser.parse_intermixed_args(argv)
    return args, load_config(args.config, args.overrides)
