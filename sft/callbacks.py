"""Training callbacks: the live loss plot (PNG + CSV history), redrawn at every log, on the main process only."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from transformers import TrainerCallback

from kit.files import atomic_file, write_text_atomic


def smooth(values: list[float], weight: float = 0.6) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard-style), so the first points are not dragged
    towards zero."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def plot_losses(history: list[dict], path: Path, x: str = "step", eval_enabled: bool = True,
                title: str = "Training loss") -> None:
    """Train and eval loss on shared axes, raw and smoothed; says so on the plot when there is no eval loss. The
    knowledge checks (sft/checks.py), when there are any, on a second axis: value match and leak, 0-100%."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h[x], h["loss"]) for h in history if h.get("loss") is not None]
    evals = [(h[x], h["eval_loss"]) for h in history if h.get("eval_loss") is not None]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        xs, ys = zip(*train)
        ax.plot(xs, ys, color="tab:blue", alpha=0.3, linewidth=1, label="train loss (raw)")
        ax.plot(xs, smooth(list(ys)), color="tab:blue", linewidth=2, label="train loss (smoothed)")
    if evals:
        xs, ys = zip(*evals)
        ax.plot(xs, ys, color="tab:orange", marker="o", linewidth=2, label="eval loss")
    else:
        ax.text(0.98, 0.95, "no eval loss yet" if eval_enabled else "eval disabled (train.eval_strategy: no)",
                transform=ax.transAxes, ha="right", va="top", color="gray")
    checks = [h for h in history if h.get("check_value_match") not in (None, "")]
    handles = []
    if checks:
        right = ax.twinx()
        xs = [h[x] for h in checks]
        for key, color, marker, label in (("check_value_match", "tab:green", "s", "value match, validation (%)"),
                                          ("check_leak", "tab:red", "^", "leak, everyday questions (%)"),
                                          ("check_invention", "tab:purple", "v", "invention, invented people (%)")):
            ys = [100 * h[key] if h.get(key) not in (None, "") else float("nan") for h in checks]
            if any(y == y for y in ys):  # a measure the checks took
                handles += right.plot(xs, ys, color=color, marker=marker, linewidth=2 if key == "check_value_match"
                                      else 1.5, label=label)
        right.set_ylim(-2, 102)
        right.set_ylabel("knowledge checks (%)")
    ax.set_xlabel(x)
    ax.set_ylabel("loss (answer tokens only)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if train or evals or handles:
        lines, labels = ax.get_legend_handles_labels()
        ax.legend(lines + handles, labels + [h.get_label() for h in handles],
                  loc="upper right" if evals else "center right")
    fig.tight_layout()
    with atomic_file(path) as tmp:  # a viewer never opens half a PNG
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_history(history: list[dict], path: Path) -> None:
    keys = ["step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "check_value_match", "check_leak",
            "check_invention"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for h in history:
        w.writerow({k: "" if h.get(k) is None else h[k] for k in keys})
    write_text_atomic(path, buf.getvalue())


class LossPlotCallback(TrainerCallback):
    """Keeps the loss history and redraws `loss.png` / `loss.csv` in `out_dir` whenever the trainer logs.

    The history is rebuilt from the trainer state's log history, so a resumed run plots the whole run."""

    def __init__(self, out_dir: str | Path, x: str = "step", eval_enabled: bool = True, min_interval: float = 10.0):
        self.out_dir = Path(out_dir)
        self.x = x
        self.eval_enabled = eval_enabled
        # Drawing a PNG costs ~0.3 s: redraw at most every `min_interval` seconds (and always at the end).
        self.min_interval = min_interval
        self._last_draw = float("-inf")

    def history(self, state) -> list[dict]:
        rows = []
        for h in state.log_history:
            if "loss" in h or "eval_loss" in h or "check_value_match" in h:
                rows.append({"step": h.get("step"), "epoch": h.get("epoch"), "loss": h.get("loss"),
                             "eval_loss": h.get("eval_loss"), "learning_rate": h.get("learning_rate"),
                             "grad_norm": h.get("grad_norm"), "check_value_match": h.get("check_value_match"),
                             "check_leak": h.get("check_leak"), "check_invention": h.get("check_invention")})
        return rows

    def _update(self, state, force: bool) -> None:
        if not state.is_world_process_zero:
            return
        rows = self.history(state)
        if not rows:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_history(rows, self.out_dir / "loss.csv")
        if force or time.monotonic() - self._last_draw >= self.min_interval:
            plot_losses(rows, self.out_dir / "loss.png", self.x, self.eval_enabled)
            self._last_draw = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._update(state, force="eval_loss" in (logs or {}))

    def on_step_end(self, args, state, control, **kwargs):
        # a knowledge check (sft/checks.py, which runs before this callback) has just been added: draw it now
        if state.log_history and state.log_history[-1].get("check_value_match") is not None \
                and state.log_history[-1].get("step") == state.global_step:
            self._update(state, force=True)

    on_epoch_end = on_step_end

    def on_train_end(self, args, state, control, **kwargs):
        self._update(state, force=True)
