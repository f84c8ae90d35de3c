"""The whole evaluation: merge (if needed), answer the test questions, score, report.

    python -m eval.run configs/quickstart.yaml
    python -m eval.run configs/quickstart.yaml eval.compare_base=true     # base vs fine-tuned, side by side

With eval.specificity (default) the base model answers too: leak and drift are measured against its answers.

Report in <output_dir>/eval: scores.csv, summary.md, summary.json, f1_hist.png, attributes.png.
"""

from __future__ import annotations

from pathlib import Path

from kit.config import Config, parse_args, run_main


def run(cfg: Config) -> Path:
    from eval.generate import generate
    from eval.merge import check_adapter, merge
    from eval.metrics import make_scorer
    from eval.score import score
    from kit.lock import run_lock

    with run_lock(cfg, "eval.run"):
        check_adapter(cfg.adapter_dir)
        scorer = make_scorer(cfg)  # the encoder may need a hub or a local copy: fail before the long part
        if cfg.eval.use_merged is not False and not (cfg.merged_dir / "config.json").is_file():
            merge(cfg)  # then the export answers (eval.models.model_source); use_merged=false keeps base + adapter
        models = {"finetuned": generate(cfg, "finetuned")}
        if cfg.eval.compare_base or cfg.eval.specificity:  # leak and drift are measured against the base's answers
            models = {"base": generate(cfg, "base"), **models}
        return score(cfg, models=models, scorer=scorer)


def main(argv: list[str] | None = None) -> int:
    _, cfg = parse_args(argv, __doc__.splitlines()[0])
    out = run(cfg)
    print(f"report written to {out}/summary.md")
    return 0


if __name__ == "__main__":
    run_main(main)
