"""Score predictions against references with BERTScore (one encoder, loaded once, batched by length) and a
fact-level value match, and write a report a person can act on.

    python -m eval.score configs/quickstart.yaml                              # the kit's own predictions
    python -m eval.score configs/quickstart.yaml --predictions answers.csv    # any CSV/JSONL with
                                                                              # question, answer, prediction

Writes scores.csv (one row per answer), summary.md and summary.json, f1_hist.png and attributes.png: to <eval dir>
for the kit's own predictions; with --predictions, to <output_dir>/report (or eval.output_dir when set).
"""

from __future__ import annotations

from pathlib import Path

from eval.metrics import Scorer, make_scorer, score_rows, specificity, summarise
from eval.predictions import check_complete, read_predictions
from eval.report import markdown, write_report
from kit.beyond import BEYOND_FILE, BEYOND_SPLITS
from kit.beyond import summarise as beyond_summary
from kit.config import Config, KitError, parse_args, run_main
from kit.files import iter_jsonl
from kit.specificity import SPECIFICITY_SPLITS


def score(cfg: Config, models: dict[str, Path] | None = None, scorer: Scorer | None = None) -> Path:
    """Score the kit's own predictions (eval.generate's files, checked complete) into <eval dir>; returns it.

    models: {label: predictions file} side by side, e.g. {"base": ..., "finetuned": ...} (eval.run passes the files it
    just wrote); by default the fine-tuned model's file, and the base model's beside it when eval.compare_base or
    eval.specificity asks for it and it exists. Raises KitError for a file that does not answer every question, or
    files that answer different numbers of them."""
    from kit.lock import run_lock

    if models is None:
        models = {"finetuned": cfg.predictions_file("finetuned")}
        if (cfg.eval.compare_base or cfg.eval.specificity) and cfg.predictions_file("base").is_file():
            models = {"base": cfg.predictions_file("base"), **models}
    with run_lock(cfg, "eval.score"):
        check_complete(cfg, models.values())  # a file cut short by a stop is not scored
        return _report(cfg, models, cfg.eval_dir, scorer, own=True)


def score_file(cfg: Config, predictions: Path, scorer: Scorer | None = None) -> Path:
    """Score a predictions file from anywhere (CSV or JSONL with question, answer, prediction columns; see
    eval.predictions.read_predictions) into <output_dir>/report (eval.output_dir when set); returns that directory.
    Raises KitError naming the file and row of anything missing, before the encoder loads."""
    from kit.lock import run_lock

    with run_lock(cfg, "eval.score"):
        return _report(cfg, {Path(predictions).stem: Path(predictions)}, cfg.report_dir, scorer, own=False)


def _report(cfg: Config, models: dict[str, Path], out: Path, scorer: Scorer | None, own: bool) -> Path:
    """Read, score and aggregate every file of `models`, then write the report to `out`. own: the kit's files, whose
    data split is at hand, so specificity and beyond are said to be "not measured" when they are missing."""
    loaded = {label: read_predictions(path) for label, path in models.items()}
    aside = SPECIFICITY_SPLITS + BEYOND_SPLITS  # scored by their own measures, not as test questions
    counts = {label: sum(r.get("split") not in aside for r in rows) for label, rows in loaded.items()}
    if len(set(counts.values())) > 1:
        raise KitError(f"predictions to compare have different row counts {counts}; answer the same questions with "
                       f"each model (same eval.splits and eval.max_rows)")
    scorer = scorer or make_scorer(cfg)
    spec = {label: [r for r in rows if r.get("split") in SPECIFICITY_SPLITS] for label, rows in loaded.items()}
    beyond = {label: [r for r in rows if r.get("split") in BEYOND_SPLITS and r.get("check")]
              for label, rows in loaded.items()}
    scored = []
    for label in list(loaded):
        scored += score_rows([r for r in loaded[label] if r.get("split") not in aside], scorer, label)
        del loaded[label]  # the scored rows hold the text now; the rows as read go
    summary = summarise(scored, cfg, scorer, ", ".join(str(p) for p in models.values()))
    if any(spec.values()):
        summary["specificity"] = specificity(spec, iter_jsonl(cfg.data_dir / "train.jsonl"), scorer, summary,
                                             cfg.eval.worst_n)
    elif cfg.eval.specificity and own:
        summary["specificity_skipped"] = ("not measured: the train rows carry no entity / value fields (a "
                                          "conversation dataset without them), so there are no trained names or "
                                          "values to look for")
    if any(beyond.values()):
        summary["beyond"] = beyond_summary(beyond, cfg.data.language, cfg.eval.worst_n)
    elif cfg.eval.beyond and own:
        summary["beyond_skipped"] = ("not measured: no held-out claims, reverse or one-hop questions in "
                                     f"{cfg.data_dir / BEYOND_FILE} (data_prep.build writes them from an attribute "
                                     "file; a conversation dataset has no table to ask them from, and data built "
                                     "before this kit version has no such file: rebuild it)")
    write_report(scored, summary, out)
    print(markdown(summary).split("## Per attribute")[0].split("\n### ")[0])
    return out


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv, __doc__.splitlines()[0], extra=lambda p: p.add_argument(
        "--predictions", type=Path, help="score this CSV/JSONL (question, answer, prediction columns) instead"))
    out = score_file(cfg, args.predictions) if args.predictions else score(cfg)
    print(f"report written to {out}: scores.csv, summary.md, summary.json, f1_hist.png, attributes.png")
    return 0


if __name__ == "__main__":
    run_main(main)
