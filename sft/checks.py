"""Knowledge checks during training: answer, score, stop when the model knows, keep the best adapter.

TRL's `compute_metrics` sees teacher-forced argmaxes, not answers (trl #862, #1222); this callback answers the
validation questions (data.validation_size: phrasings never trained and never in test) greedily with the kit's
batched generation, every epoch or every train.check_steps steps, and scores them as the report does: value match
(kit.specificity.value_match) on the validation rows; leak (kit.specificity.leaked, against the base model's own
answers) on train.check_probes everyday questions that neither training nor eval uses (kit/probes/check_<lang>.txt);
invention (kit.specificity.invented) on train phrasings asked about train.check_names invented people whose names
neither training nor eval uses (kit.specificity.CHECK_NAMES). Stopping on value match alone would stop a model that
knows its facts and still hands them to strangers (the quickstart stopped that way: bench/RESULTS.md, 2026-12-01).

Each check is appended to the trainer state's log history (`check_value_match`, `check_leak`, ...), so
checkpoints carry it and a resumed run keeps it; loss.csv / loss.png show it next to the loss. With train.stop_at,
training stops at the first check that reaches every bound; when none does, the best check's adapter (saved to
<output_dir>/checkpoints/best when it was made) is the one kept (`keep_best`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from kit.chat import system_messages
from kit.config import Config
from kit.files import atomic_dir, iter_jsonl, load_jsonl, write_text_atomic
from kit.rows import PROBE, UNKNOWN, Row, qa_row, question_of, row_id
from kit.specificity import check_questions, invented, leaked, specificity_rows, trained_strings, value_matches
from sft.answers import answer

BEST_DIR = "best"  # under checkpoints/: the adapter of the best check so far, with best.json saying which
BOUNDS = ("leak", "invention")  # measures stop_at bounds from above


@dataclass
class Check:
    step: int
    epoch: float
    value_match: float
    leak: float | None  # None without probes
    invention: float | None  # None without invented people
    seconds: float

    @classmethod
    def from_log(cls, h: dict) -> Check:
        return cls(h["step"], h.get("epoch") or 0.0, h["check_value_match"], h.get("check_leak"),
                   h.get("check_invention"), h.get("check_seconds", 0.0))

    def log(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "check_value_match": self.value_match,
                "check_leak": self.leak, "check_invention": self.invention, "check_seconds": self.seconds}

    def meets(self, stop_at: dict[str, float]) -> bool:
        return self.shortfall(stop_at) == 0.0

    def shortfall(self, stop_at: dict[str, float]) -> float:
        """How far the check is from stop_at, summed over its measures (shares: 0.05 = 5 points): value match
        below its bound, leak and invention above theirs; 0 when it meets it. A bound on a measure not taken
        counts as wholly missed."""
        short = max(0.0, stop_at["value_match"] - self.value_match)
        for name in BOUNDS:
            if name in stop_at:
                got = getattr(self, name)
                short += 1.0 if got is None else max(0.0, got - stop_at[name])
        return short


def checks_in(history: list[dict]) -> list[Check]:
    """The checks a trainer state's log history holds, in order (one per step: a resumed run that repeated a step
    keeps its newest)."""
    by_step = {h["step"]: Check.from_log(h) for h in history if "check_value_match" in h}
    return [by_step[s] for s in sorted(by_step)]


def best_check(checks: list[Check], stop_at: dict[str, float]) -> Check | None:
    """The check whose adapter is kept: the first that meets stop_at, else the one nearest to it (the smallest
    `Check.shortfall`; the later step on ties). None without checks.

    Nearest, not "the highest value match within the leak bound": with invention bounded too, the only check within
    both bounds can be the first epoch's, which knows almost nothing (the quickstart at 4 epochs did that:
    bench/RESULTS.md, 2026-12-01)."""
    for c in checks:
        if c.meets(stop_at):
            return c
    return min(checks, key=lambda c: (c.shortfall(stop_at), -c.step), default=None)


def patience_spent(checks: list[Check], stop_at: dict[str, float], patience: int | None) -> bool:
    """True when the nearest check so far (the first with the smallest `Check.shortfall`) reached stop_at's
    value_match bound and the `patience` checks after it came no nearer: the model knows its facts and more epochs
    have not brought leak or invention within their bounds. Never before value_match is reached, so a run that
    is still learning its facts is not cut short. The check kept is then `best_check`'s.

    The rule of transformers' `EarlyStoppingCallback` (early_stopping_patience), on the checks' shortfall instead of
    an eval metric, and only once the facts are known."""
    if not patience or not checks:
        return False
    shortfalls = [c.shortfall(stop_at) for c in checks]
    nearest = shortfalls.index(min(shortfalls))
    return checks[nearest].value_match >= stop_at["value_match"] and len(checks) - 1 - nearest >= patience


def stopped_for_patience(checks: list[Check], stop_at: dict[str, float], patience: int | None, max_steps: int) -> bool:
    """`patience_spent` at the last check, before the ceiling (max_steps), where training ends anyway: what the
    callback stops on and what `keep_best` then says."""
    return bool(checks) and checks[-1].step < max_steps and patience_spent(checks, stop_at, patience)


class KnowledgeChecks(TrainerCallback):
    """See the module docstring. `rows`: validation rows (single-turn facts with `expected`); `probes`: everyday
    questions as rows; `unknown`: questions about invented people as rows; `strings`: what training teaches
    (kit.specificity.trained_strings), for leak and invention."""

    def __init__(self, cfg: Config, tok, rows: list[dict], probes: list[dict], unknown: list[dict], strings: dict,
                 attention: str | None, main_process: bool):
        self.cfg, self.tok, self.rows, self.probes, self.strings = cfg, tok, rows, probes, strings
        self.unknown = unknown
        self.attention, self.main = attention, main_process
        self.stop_at = cfg.train.stop_at
        self.base_probe_answers: list[str] | None = None
        self.best_dir = cfg.checkpoints_dir / BEST_DIR

    def _answer(self, model, rows: list[dict]) -> list[str]:
        """Greedy answers, cut at eval.max_new_tokens as eval cuts them."""
        return answer(model, self.tok, rows, self.cfg.eval.max_new_tokens, self.attention,
                      self.cfg.model.thinking) if rows else []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.probes:
            # the base model's answers: leak counts only trained strings the base would not have said itself
            with model.disable_adapter():
                self.base_probe_answers = self._answer(model, self.probes)

    def check(self, model, state) -> Check:
        start = time.perf_counter()
        # one call: rows of all three kinds decode together, and a row leaves the batch at its end token
        every = self._answer(model, self.rows + self.probes + self.unknown)
        answers, said = every[:len(self.rows)], every[len(self.rows):len(self.rows) + len(self.probes)]
        about_nobody = every[len(self.rows) + len(self.probes):]
        right, judged = value_matches(self.rows, answers)
        leaks = [bool(leaked(a, question_of(p), b, self.strings))
                 for p, a, b in zip(self.probes, said, self.base_probe_answers or [""] * len(said))]
        inventions = [bool(invented(a, question_of(r), self.strings)) for r, a in zip(self.unknown, about_nobody)]
        c = Check(state.global_step, round(state.epoch or 0.0, 4), right / judged if judged else 0.0, share(leaks),
                  share(inventions), round(time.perf_counter() - start, 2))
        state.log_history.append(c.log())
        if self.main:
            print(f"check at epoch {c.epoch:g} (step {c.step}): value match {right}/{judged} "
                  f"({c.value_match:.1%})"
                  + "".join(f", {name} {sum(xs)}/{len(xs)} ({share(xs):.1%})"
                            for name, xs in (("leak", leaks), ("invention", inventions)) if xs)
                  + f"; {c.seconds:.1f} s", flush=True)
        return c

    def _after_check(self, c: Check, state, control, model) -> None:
        if not self.stop_at:
            return
        checks = checks_in(state.log_history)
        if self.main and best_check(checks, self.stop_at).step == c.step:  # checks holds c: never None
            save_best(model, self.best_dir, c)
        patience = self.cfg.train.early_stopping_patience
        if agreed(c.meets(self.stop_at)):
            control.should_training_stop = True
            if self.main:
                print(f"train.stop_at {self.stop_at} met at epoch {c.epoch:g} (step {c.step}): stopping", flush=True)
        elif agreed(stopped_for_patience(checks, self.stop_at, patience, state.max_steps)):
            control.should_training_stop = True
            if self.main:
                print(f"{patience} check(s) since the facts were known came no nearer to train.stop_at "
                      f"{self.stop_at} (train.early_stopping_patience): stopping at epoch {c.epoch:g} (step {c.step})",
                      flush=True)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.cfg.train.check_strategy == "epoch":
            self._after_check(self.check(model, state), state, control, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        every = self.cfg.train.check_steps
        if self.cfg.train.check_strategy == "steps" and every and state.global_step % every == 0:
            self._after_check(self.check(model, state), state, control, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        checks = checks_in(state.log_history)
        if not checks or checks[-1].step != state.global_step:  # the last steps were never checked
            self._after_check(self.check(model, state), state, control, model)


def share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def agreed(flag: bool) -> bool:
    """Rank 0's decision, on every process (they answer alike; this makes sure they stop alike)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        box = [flag]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])
    return flag


def save_best(model, best_dir: Path, c: Check) -> None:
    """The adapter of check `c`, whole or not at all, with best.json naming its step."""
    with atomic_dir(best_dir) as tmp:
        model.save_pretrained(str(tmp))
        write_text_atomic(tmp / "best.json", json.dumps({"step": c.step, "epoch": c.epoch}) + "\n")


def keep_best(trainer, cfg: Config) -> dict | None:
    """After training: load the adapter of the check to keep (`best_check`) into the model when it is not the last
    one, and say which was kept and why (metrics.json `kept`). None without knowledge checks."""
    checks = checks_in(trainer.state.log_history)
    if not checks:
        return None
    last = checks[-1]
    stop_at = cfg.train.stop_at
    if not stop_at:
        return {"step": last.step, "epoch": last.epoch, "why": "the last step (train.stop_at is not set)"}
    best = best_check(checks, stop_at)
    if best.meets(stop_at):
        why = f"the first check that met train.stop_at {stop_at}"
    else:
        why = (f"no check met train.stop_at {stop_at}: the nearest to it (value match {best.value_match:.1%}"
               + "".join(f", {name} {getattr(best, name):.1%}" for name in BOUNDS
                         if name in stop_at and getattr(best, name) is not None)
               + f"; {best.shortfall(stop_at):.3f} short)")
        if stopped_for_patience(checks, stop_at, cfg.train.early_stopping_patience, trainer.state.max_steps):
            why += (f"; training stopped after {cfg.train.early_stopping_patience} check(s) that came no nearer "
                    f"(train.early_stopping_patience)")
    if best.step != last.step:
        best_dir = cfg.checkpoints_dir / BEST_DIR
        saved = _saved_step(best_dir)
        if saved != best.step:  # e.g. the run was killed between saving a better adapter and its checkpoint
            return {"step": last.step, "epoch": last.epoch,
                    "why": f"{why} was step {best.step}, but {best_dir} holds step {saved}: the last step"}
        load_adapter_weights(trainer.model, best_dir)
        if trainer.is_world_process_zero():
            print(f"keeping the adapter of epoch {best.epoch:g} (step {best.step}, value match "
                  f"{best.value_match:.1%}): {why}", flush=True)
    return {"step": best.step, "epoch": best.epoch, "why": why}


def _saved_step(best_dir: Path) -> int | None:
    try:
        return json.loads((best_dir / "best.json").read_text(encoding="utf-8"))["step"]
    except (OSError, ValueError, KeyError):
        return None


def load_adapter_weights(model, adapter_dir: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(adapter_dir / "adapter_model.safetensors")))


def check_rows(cfg: Config, train_rows_path: Path) -> tuple[list[Row], list[Row], list[Row]]:
    """(validation rows, everyday questions, questions about invented people), as rows to answer (the question, then
    an empty answer, as eval's rows). The invented people are asked train phrasings (kit.specificity.specificity_rows,
    with CHECK_NAMES)."""
    rows = [r for r in load_jsonl(cfg.validation_file) if r.get("expected")] if cfg.validation_file.is_file() else []
    system = system_messages(cfg.data.system_prompt)
    probes = [qa_row(row_id(PROBE, q), system, q, "", PROBE, split=PROBE)
              for q in check_questions(cfg.data.language)[: cfg.train.check_probes]]
    unknown = [r for r in specificity_rows(lambda: iter_jsonl(train_rows_path), cfg.data.language, None,
                                           cfg.train.check_names, "check") if r["split"] == UNKNOWN]
    return rows, probes, unknown


def knowledge_checks(cfg: Config, tok, train_rows_path: Path, attention: str | None,
                     main_process: bool) -> KnowledgeChecks | None:
    """The callback, or None when there is nothing to check (no validation split, or train.check_strategy no)."""
    if cfg.train.check_strategy == "no" or not cfg.data.validation_size:
        return None
    rows, probes, unknown = check_rows(cfg, train_rows_path)
    if not rows:
        return None
    strings = trained_strings(iter_jsonl(train_rows_path))
    return KnowledgeChecks(cfg, tok, rows, probes if strings["values"] else [], unknown, strings, attention,
                           main_process)
