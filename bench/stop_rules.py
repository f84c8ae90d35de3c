"""What train.stop_at and train.early_stopping_patience would have done on runs already trained.

The knowledge checks answer under no_grad and change no weights, so a run's check history (metrics.json `checks`)
is what any stopping rule would have seen up to the epoch it stops at: replaying the rule on it says when that rule
would have stopped and which check it would have kept, without training again (sft.checks.best_check and
patience_spent, the code training runs).

    python -m bench.stop_rules runs/s3 runs/n8-s11 ... [--stop-at 0.85,0.05,0.10] [--patience 1 2]

Prints a markdown table: per run, the checks (value match / leak / invention, %), and per rule the check it stops
after and the one it keeps. A run whose history ends early (stopped by its own rule or by hand) shows what it has.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sft.checks import Check, best_check, patience_spent


def replay(checks: list[Check], stop_at: dict[str, float], patience: int | None) -> tuple[Check, Check]:
    """(the check training would stop after, the check it would keep) under stop_at and patience."""
    for n in range(1, len(checks) + 1):
        seen = checks[:n]
        if seen[-1].meets(stop_at) or patience_spent(seen, stop_at, patience):
            return seen[-1], best_check(seen, stop_at)
    return checks[-1], best_check(checks, stop_at)


def load_checks(run: Path) -> list[Check]:
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    return [Check(c["step"], c["epoch"], c["value_match"], c.get("leak"), c.get("invention"), c.get("seconds", 0.0))
            for c in metrics.get("checks") or []]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run output dirs with a metrics.json")
    ap.add_argument("--stop-at", default="0.85,0.05,0.10", help="value_match,leak,invention (the quickstart's)")
    ap.add_argument("--patience", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    stop_at = dict(zip(("value_match", "leak", "invention"), map(float, args.stop_at.split(","))))
    rules = [None, *args.patience]

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    print("| run | checks per epoch (value match / leak / invention) | "
          + " | ".join(f"patience {p or 'off'}: stops after / keeps" for p in rules) + " |")
    print("|---|---|" + "---|" * len(rules))
    for run in args.runs:
        checks = load_checks(run)
        if not checks:
            continue
        history = ", ".join(f"{pct(c.value_match)}/{pct(c.leak)}/{pct(c.invention)}" for c in checks)
        cells = []
        for p in rules:
            stop, kept = replay(checks, stop_at, p)
            cells.append(f"{stop.epoch:g} / {kept.epoch:g}")
        print(f"| `{run.name}` | {history} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
