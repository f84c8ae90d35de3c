"""Score predictions against references with BERTScore (one encoder, loaded once, batched by length) and a
fact-level value match, and write a report a person can act on.

    python -m eval.score configs/quickstart.yaml                              # the kit's own predictions
    python -m eval.score configs/quickstart.yaml --predictions answers.csv    # any CSV/JSONL with
                                                                              # question, answer, prediction

Writes to <eval dir>: scores.csv (one row per answer), summary.md and summary.json, f1_hist.png, attributes.png.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable
from pathlib import Path

from kit.config import Config, KitError, parse_args, run_main
from kit.files import iter_jsonl, read_text, temp_dir
from kit.beyond import BEYOND_SPLITS
from kit.specificity import SPECIFICITY_SPLITS, is_empty, is_reverse, value_match

REQUIRED = ("question", "answer", "prediction")
# bert-score's own defaults: lang -> (model, layer).
DEFAULT_ENCODERS = {"zh": ("bert-base-chinese", 8), "en": ("roberta-large", 17)}


# ---------------------------------------------------------------------------------------------------------------------
# Input


def read_predictions(path: Path) -> list[dict]:
    """Rows of a CSV or JSONL predictions file, checked: required columns present, no empty question/answer."""
    import pandas as pd

    if not path.is_file():
        raise KitError(f"{path}: predictions file not found")
    if path.suffix.lower() == ".jsonl":
        return _check_rows(path, _read_jsonl_rows(path), first=1)
    text = io.StringIO(read_text(path, "predictions file"))
    try:
        if path.suffix.lower() == ".json":
            df = pd.read_json(text, dtype=False)
        elif path.suffix.lower() in (".csv", ".tsv"):
            df = pd.read_csv(text, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str,
                             keep_default_na=False)
        else:
            raise KitError(f"{path}: unsupported predictions format; use .csv, .tsv or .jsonl")
    except ValueError as e:
        if isinstance(e, KitError):
            raise
        raise KitError(f"{path}: could not be read as {path.suffix} ({str(e).splitlines()[0][:200]})") from None
    if df.empty:
        raise KitError(f"{path}: has no rows")
    df = df.fillna("")
    return _check_rows(path, df.to_dict("records"), first=2 if path.suffix.lower() in (".csv", ".tsv") else 1)


def _read_jsonl_rows(path: Path) -> list[dict]:
    """A JSONL predictions file, line by line (the kit's own files can be large: never held as text besides the
    rows). A file that is not UTF-8 goes through read_text: UTF-16 is decoded, anything else named in an error."""
    try:
        with path.open(encoding="utf-8-sig") as f:
            return _json_lines(path, f)
    except UnicodeDecodeError:
        return _json_lines(path, read_text(path, "predictions file").splitlines())


def _json_lines(path: Path, lines: Iterable[str]) -> list[dict]:
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise KitError(f"{path}: line {n} is not JSON ({e}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise KitError(f"{path}: line {n} is not a JSON object")
        rows.append(row)
    return rows


def _check_rows(path: Path, rows: list[dict], first: int) -> list[dict]:
    """Required columns present, no empty question/answer; every value as a string ("" for a missing one). A row
    without an id is known by its place in the file ("row 3": the line of a CSV, the row of a JSONL)."""
    if not rows:
        raise KitError(f"{path}: has no rows")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise KitError(f"{path}: missing column(s) {missing}; a predictions file needs columns "
                       f"{list(REQUIRED)} (optional: entity, attribute, value, expected, split); found {columns}")
    for n, row in enumerate(rows, start=first):
        for col in columns:
            v = row.get(col)
            row[col] = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
        row["id"] = row.get("id") or f"row {n}"
        for col in ("question", "answer"):
            if col == "answer" and row.get("split") in SPECIFICITY_SPLITS:
                continue  # everyday questions and questions about nobody have no reference answer
            if not row[col].strip():
                raise KitError(f"{path}: row {n}: empty '{col}'; every row needs a question and a reference answer "
                               f"(fill it in or delete the row)")
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Metrics


def encoder_for(cfg: Config) -> tuple[str, int | None, str]:
    """(model path or hub id, layer, name for the report) of the BERTScore encoder."""
    from kit.models import resolve

    name = cfg.eval.bertscore_model
    if not name:
        model, layer = DEFAULT_ENCODERS[cfg.data.language]
        return model, cfg.eval.bertscore_layer or layer, model
    if name.startswith("pkg://") or name.endswith(".gguf") or Path(name).expanduser().exists():
        try:
            path = resolve(name, cfg.model.cache_dir)
        except KitError as e:
            raise KitError(f"eval.bertscore_model: {e}") from None
        return path, cfg.eval.bertscore_layer, name
    return name, cfg.eval.bertscore_layer, name


class Scorer:
    """BERTScore with the encoder loaded once; pairs scored in length-sorted buckets (bert-score sorts by
    space-separated words, which does nothing for Chinese)."""

    def __init__(self, model_type: str, num_layers: int | None, lang: str, batch_size: int = 64, label: str = ""):
        import bert_score

        self.batch_size = batch_size
        try:
            self.scorer = bert_score.BERTScorer(model_type=model_type, num_layers=num_layers, lang=lang,
                                                batch_size=batch_size)
        except Exception as e:  # noqa: BLE001 - hub errors, missing files, unknown architectures
            raise KitError(
                f"BERTScore encoder '{label or model_type}' could not be loaded ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else ''}). Without hub access, download it where you "
                f"have access and set eval.bertscore_model=/path/to/local/dir and eval.bertscore_layer=N "
                f"(bert-base-chinese: 8)") from None
        tok = self.scorer._tokenizer
        # bert-score 0.3.13 + transformers 5 overflow on the "unset" sentinel max length (bert_score issue #205)
        if not tok.model_max_length or tok.model_max_length > 100_000:
            tok.model_max_length = 512
        if tok.pad_token is None:
            from kit.models import choose_pad_token

            choose_pad_token(tok)
        self.hash = self.scorer.hash
        self.label = label or model_type
        self.max_tokens = tok.model_max_length

    def too_long(self, texts: list[str]) -> list[int]:
        """Indices of the texts the encoder reads only the first `max_tokens` tokens of (special tokens included),
        counted as bert-score encodes them."""
        from transformers import GPT2Tokenizer, RobertaTokenizer

        tok = self.scorer._tokenizer
        prefix = {"add_prefix_space": True} if isinstance(tok, (GPT2Tokenizer, RobertaTokenizer)) else {}
        return [i for i, text in enumerate(texts) if not is_empty(text)
                and len(tok.encode(text.strip(), add_special_tokens=True, verbose=False, **prefix)) > self.max_tokens]

    def score(self, predictions: list[str], references: list[str]) -> tuple[list[float], list[float], list[float]]:
        """(precision, recall, F1) of each pair. A pair with an empty side (`is_empty`) scores 0, 0, 0 without the
        encoder: BERTScore has no value for nothing (bert-score strips the text and fails on what is left)."""
        n = len(predictions)
        p, r, f = [0.0] * n, [0.0] * n, [0.0] * n
        todo = [i for i in range(n) if not is_empty(predictions[i]) and not is_empty(references[i])]
        order = sorted(todo, key=lambda i: max(len(predictions[i]), len(references[i])))
        for k in range(0, len(order), self.batch_size):
            idx = order[k:k + self.batch_size]
            bp, br, bf = self.scorer.score([predictions[i] for i in idx], [references[i] for i in idx],
                                           batch_size=self.batch_size)
            for j, i in enumerate(idx):
                p[i], r[i], f[i] = float(bp[j]), float(br[j]), float(bf[j])
        return p, r, f


def make_scorer(cfg: Config) -> Scorer:
    model_type, layer, label = encoder_for(cfg)
    return Scorer(model_type, layer, cfg.data.language, cfg.eval.bertscore_batch_size, label)


# ---------------------------------------------------------------------------------------------------------------------
# Report


COLUMNS = ["model", "split", "entity", "attribute", "direction", "question", "answer", "prediction", "precision",
           "recall", "f1", "value_match", "expected", "raw_prediction", "hash", "id", "truncated"]


def score_rows(rows: list[dict], scorer: Scorer, model: str) -> list[dict]:
    """Rows with their scores; `truncated`: the prediction or the answer is longer than the encoder reads."""
    predictions, answers = [row["prediction"] for row in rows], [row["answer"] for row in rows]
    p, r, f = scorer.score(predictions, answers)
    cut = set(scorer.too_long(predictions)) | set(scorer.too_long(answers))
    out = []
    for i, row in enumerate(rows):
        expected = row.get("expected") or row.get("value") or ""
        out.append({
            "model": model, "split": row.get("split", ""), "entity": row.get("entity", ""),
            "attribute": row.get("attribute", ""),
            "direction": "reverse" if is_reverse(row.get("template")) else "forward",
            "question": row["question"], "answer": row["answer"],
            "prediction": row["prediction"], "precision": p[i], "recall": r[i], "f1": f[i],
            "value_match": value_match(expected, row["prediction"]), "expected": expected,
            "raw_prediction": row.get("raw_prediction", row["prediction"]), "hash": scorer.hash,
            "id": row.get("id", ""), "truncated": i in cut,
        })
    return out


def _stats(rows: list[dict], threshold: float) -> dict:
    import statistics

    f1 = [r["f1"] for r in rows]
    vm = [r["value_match"] for r in rows if r["value_match"] is not None]
    return {
        "rows": len(rows),
        "precision_mean": statistics.fmean(r["precision"] for r in rows),
        "recall_mean": statistics.fmean(r["recall"] for r in rows),
        "f1_mean": statistics.fmean(f1),
        "precision_median": statistics.median(r["precision"] for r in rows),
        "recall_median": statistics.median(r["recall"] for r in rows),
        "f1_median": statistics.median(f1),
        "value_match_rate": sum(vm) / len(vm) if vm else None,
        "value_match_rows": len(vm),
        "below_threshold": sum(x < threshold for x in f1),
        "empty_answers": sum(is_empty(r["prediction"]) for r in rows),
    }


def _group(rows: list[dict], key: str, threshold: float) -> dict:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r[key] or "-", []).append(r)
    return {k: _stats(v, threshold) for k, v in groups.items()}


def summarise(rows: list[dict], cfg: Config, scorer: Scorer, source: str) -> dict:
    from kit.models import versions

    threshold = cfg.eval.f1_threshold
    summary = {"source": source, "encoder": scorer.label, "bertscore_hash": scorer.hash, "f1_threshold": threshold,
               "encoder_max_tokens": scorer.max_tokens, "versions": versions(), "models": {}}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        worst = sorted(mine, key=lambda r: (r["f1"], r["question"]))[: cfg.eval.worst_n]
        summary["models"][model] = {
            "overall": _stats(mine, threshold),
            "per_split": _group(mine, "split", threshold),
            "per_attribute": _group([r for r in mine if r.get("direction") != "reverse"], "attribute", threshold),
            "per_entity": _group(mine, "entity", threshold),
            # predictions or answers longer than the encoder reads: BERTScore compared their beginnings only
            "truncated_rows": [r["id"] for r in mine if r["truncated"]],
            # asked from value to entity (the reversal curse): their own group, never mixed into per_attribute's
            **({"per_direction": _group(mine, "direction", threshold)}
               if any(r.get("direction") == "reverse" for r in mine) else {}),
            "lowest": [{k: r[k] for k in ("split", "entity", "attribute", "question", "answer", "prediction", "f1",
                                          "value_match")} for r in worst],
        }
    return summary


def specificity(spec: dict[str, list[dict]], train_rows: Iterable[dict], scorer: Scorer, summary: dict,
                worst_n: int) -> dict:
    """Leak, invention and drift per model (kit/specificity.py), with the rows behind them, worst first."""
    from kit.specificity import HIGH, invented, leaked, trained_strings

    strings = trained_strings(train_rows)
    base = {r["id"]: r["prediction"] for r in spec.get("base", [])}
    out: dict = {"models": {}, "thresholds": HIGH}
    for label, rows in spec.items():
        probes = [r for r in rows if r["split"] == "probe"]
        unknown = [r for r in rows if r["split"] == "unknown"]
        leaks = [{"question": r["question"], "base": base.get(r["id"], ""), "prediction": r["prediction"],
                  "leaked": found}
                 for r in probes
                 if (found := leaked(r["prediction"], r["question"], "" if label == "base" else base.get(r["id"], ""),
                                     strings))]
        inventions = [{"question": r["question"], "entity": r["entity"], "attribute": r["attribute"],
                       "prediction": r["prediction"], "invented": found}
                      for r in unknown if (found := invented(r["prediction"], r["question"], strings))]
        test = summary["models"].get(label, {}).get("per_split", {}).get("test") or {}
        out["models"][label] = {
            "recall": test.get("value_match_rate"),
            "probe_questions": len(probes), "leak_rate": len(leaks) / len(probes) if probes else None,
            "unknown_questions": len(unknown),
            "invention_rate": len(inventions) / len(unknown) if unknown else None,
            "leaks": leaks[:worst_n], "inventions": inventions[:worst_n],
        }
    tuned = [label for label in spec if label != "base"]
    if base and tuned:
        rows = [r for r in spec[tuned[-1]] if r["split"] == "probe" and r["id"] in base]
        _, _, f1 = scorer.score([r["prediction"] for r in rows], [base[r["id"]] for r in rows])
        moved = sorted(zip(f1, rows), key=lambda x: (x[0], x[1]["question"]))[:worst_n]
        out["drift"] = {"model": tuned[-1], "rows": len(rows), "f1_mean": sum(f1) / len(f1) if f1 else None,
                        "most_moved": [{"f1": f, "question": r["question"], "base": base[r["id"]],
                                        "prediction": r["prediction"]} for f, r in moved]}
    warnings = []
    for label in tuned:
        m = out["models"][label]
        if m["leak_rate"] is not None and m["leak_rate"] > HIGH["leak"]:
            warnings.append(f"Leak is high ({label}): {_pct(m['leak_rate'])} of {m['probe_questions']} everyday "
                            f"questions are answered with a trained name or value the base model did not use "
                            f"(target <= {_pct(HIGH['leak'])}). The model recites its facts where they do not "
                            f"belong; train with data.replay and data.unknown_entities (README: Specificity).")
        if m["invention_rate"] is not None and m["invention_rate"] > HIGH["invention"]:
            warnings.append(f"Invention is high ({label}): {_pct(m['invention_rate'])} of {m['unknown_questions']} "
                            f"questions about people in no data get a trained value (target <= "
                            f"{_pct(HIGH['invention'])}); train with data.unknown_entities (README: Specificity).")
    out["warnings"] = warnings
    return out


def _specificity_markdown(sp: dict) -> list[str]:
    models = list(sp["models"])
    m = sp["models"]
    any_model = m[models[0]]
    lines = ["", "## Specificity: knows its facts, and stays a chat model", "",
             "| | " + " | ".join(models) + " |", "|---|" + "---|" * len(models),
             "| recall: held-out questions with the right value | " + " | ".join(_pct(m[x]["recall"]) for x in models)
             + " |",
             f"| leak: everyday questions answered with a trained name or value ({any_model['probe_questions']}) | "
             + " | ".join(_pct(m[x]["leak_rate"]) for x in models) + " |",
             f"| invention: questions about people in no data given a trained value "
             f"({any_model['unknown_questions']}) | " + " | ".join(_pct(m[x]["invention_rate"]) for x in models) + " |"]
    drift = sp.get("drift")
    if drift:
        lines.append(f"| drift: BERTScore F1 of each everyday answer to the base's, mean | "
                     + " | ".join(f"{drift['f1_mean']:.4f}" if x == drift["model"] else ("1.0000" if x == "base"
                                  else "-") for x in models) + " |")
    lines += ["", "Leak counts a name or value the question and the base model's answer do not contain; the base "
                  "model's own figure counts what it says unprompted.", ""]
    lines += [f"**{w}**" + "  " for w in sp["warnings"]] or ["Leak and invention are within the targets "
                                                             f"({_pct(sp['thresholds']['leak'])}, "
                                                             f"{_pct(sp['thresholds']['invention'])})."]
    for label in models:
        if label == "base":
            continue
        if m[label]["leaks"]:
            lines += ["", f"### Leaking answers ({label})", "", "| question | base answer | answer | leaked |",
                      "|---|---|---|---|"]
            lines += [f"| {_md_escape(r['question'])} | {_md_escape(r['base'][:80])} | {_md_escape(r['prediction'][:80])}"
                      f" | {_md_escape(', '.join(r['leaked']))} |" for r in m[label]["leaks"]]
        if m[label]["inventions"]:
            lines += ["", f"### Inventions ({label})", "", "| question | answer | invented |", "|---|---|---|"]
            lines += [f"| {_md_escape(r['question'])} | {_md_escape(r['prediction'][:80])} | "
                      f"{_md_escape(', '.join(r['invented']))} |" for r in m[label]["inventions"]]
    if drift and drift["most_moved"]:
        lines += ["", f"### Everyday answers that moved most from the base's ({drift['model']})", "",
                  "| F1 to base | question | base answer | answer |", "|---|---|---|---|"]
        lines += [f"| {r['f1']:.3f} | {_md_escape(r['question'])} | {_md_escape(r['base'][:80])} | "
                  f"{_md_escape(r['prediction'][:80])} |" for r in drift["most_moved"][:10]]
    return lines


def _beyond_markdown(b: dict) -> list[str]:
    models = list(b["models"])
    m = b["models"]
    t = b["targets"]
    first = m[models[0]]
    lines = ["", "## Beyond lookup: claims, reverse and one-hop questions", "",
             "Held-out phrasings (and, for comparisons, held-out entity pairs) never trained; kit/beyond.py says how "
             "each answer is judged.", "", "| | rows | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for label, key, rows_key in [
            (f"verification: true claims confirmed (target {_pct(t['true_confirmed'])})", "true_confirmed",
             "true_claims"),
            (f"verification: false claims denied (target {_pct(t['false_denied'])})", "false_denied", "false_claims"),
            ("verification: false claims denied with the true value named", "false_denied_naming_value",
             "false_claims"),
            ("verification: denials that name the true value", "denials_naming_value", None),
            (f"reverse: value -> the one entity that has it (target {_pct(t['reverse'])})", "reverse", "reverse_rows"),
            (f"one-hop, all (aim {_pct(t['onehop'])})", "onehop", "onehop_rows"),
            ("one-hop: same value? (two entities)", "onehop_same", "onehop_same_rows"),
            ("one-hop: every entity with a value", "onehop_list", "onehop_list_rows"),
            ("one-hop: how many have a value", "onehop_count", "onehop_count_rows")]:
        n = first[rows_key] if rows_key else "-"
        lines.append(f"| {label} | {n} | " + " | ".join(_pct(m[x][key]) for x in models) + " |")
    for label in models:
        failed = m[label].get("failed") or {}
        shown = [f for split in failed for f in failed[split]]
        if not shown:
            continue
        lines += ["", f"### Failed beyond-lookup answers ({label}), with the base model's", "",
                  "| kind | question | expected | answer | why | base answer |", "|---|---|---|---|---|---|"]
        lines += [f"| {f['kind']} | {_md_escape(f['question'])} | {_md_escape(f['answer'][:60])} | "
                  f"{_md_escape(f['prediction'][:80])} | {_md_escape(f['why'])} | {_md_escape(f['base'][:80])} |"
                  for f in shown]
    return lines


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _truncation_warnings(summary: dict, shown: int = 20) -> list[str]:
    lines = []
    for model, m in summary["models"].items():
        ids = m.get("truncated_rows") or []
        if ids:
            more = f" and {len(ids) - shown} more (summary.json lists them all)" if len(ids) > shown else ""
            lines += ["", f"**Truncated ({model}): in {len(ids)} row(s) the prediction or the reference answer is "
                          f"longer than the BERTScore encoder reads ({summary['encoder_max_tokens']} tokens); their F1 "
                          f"compares the first {summary['encoder_max_tokens']} tokens only: "
                          f"{', '.join(map(str, ids[:shown]))}{more}.**"]
    return lines


def markdown(summary: dict) -> str:
    models = list(summary["models"])
    lines = ["# Evaluation report", "",
             f"Source: `{summary['source']}`  ", f"BERTScore encoder: `{summary['encoder']}` "
             f"(hash `{summary['bertscore_hash']}`)  ",
             "Value match: the attribute's value appears in the prediction (Latin-script words and numbers whole, "
             "CJK anywhere; case and punctuation do not count).", ""]
    lines += ["## Overall", "", "| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    o = {m: summary["models"][m]["overall"] for m in models}
    for label, key, fmt in [("rows", "rows", str), ("value match", "value_match_rate", _pct),
                            ("F1 mean", "f1_mean", lambda x: f"{x:.4f}"), ("F1 median", "f1_median",
                                                                         lambda x: f"{x:.4f}"),
                            ("precision mean", "precision_mean", lambda x: f"{x:.4f}"),
                            ("recall mean", "recall_mean", lambda x: f"{x:.4f}"),
                            (f"F1 < {summary['f1_threshold']}", "below_threshold", str),
                            ("empty answers", "empty_answers", str)]:
        lines.append(f"| {label} | " + " | ".join(fmt(o[m][key]) for m in models) + " |")
    if any(o[m]["empty_answers"] for m in models):
        lines += ["", "Empty answers (none given, or nothing left once think blocks are removed) score P = R = F1 = 0 "
                      "and hold no value."]
    lines += _truncation_warnings(summary)
    if "specificity" in summary:
        lines += _specificity_markdown(summary["specificity"])
    elif "specificity_skipped" in summary:
        lines += ["", f"Specificity (leak, invention, drift): {summary['specificity_skipped']}."]
    if "beyond" in summary:
        lines += _beyond_markdown(summary["beyond"])
    elif "beyond_skipped" in summary:
        lines += ["", f"Beyond lookup (claims, reverse, one-hop): {summary['beyond_skipped']}."]
    sections = [("Per attribute", "per_attribute"), ("Per entity", "per_entity"), ("Per split", "per_split")]
    if any("per_direction" in summary["models"][m] for m in models):
        sections.insert(0, ("Per direction (reverse: the value asked, the entity answered)", "per_direction"))
    for title, key in sections:
        lines += ["", f"## {title}", "", "| " + key.split("_")[1] + " | rows | "
                  + " | ".join(f"value match ({m}) | F1 ({m})" for m in models) + " |",
                  "|---|---|" + "---|---|" * len(models)]
        names = list(dict.fromkeys(k for m in models for k in summary["models"][m].get(key, {})))
        for name in names:
            cells = []
            for m in models:
                s = summary["models"][m].get(key, {}).get(name)
                cells += [_pct(s["value_match_rate"]), f"{s['f1_mean']:.4f}"] if s else ["-", "-"]
            rows = max(summary["models"][m].get(key, {}).get(name, {}).get("rows", 0) for m in models)
            lines.append(f"| {_md_escape(name)} | {rows} | " + " | ".join(cells) + " |")
    for m in models:
        lines += ["", f"## Lowest-scoring answers ({m})", "", "| F1 | match | question | expected answer | prediction |",
                  "|---|---|---|---|---|"]
        for r in summary["models"][m]["lowest"]:
            match = {True: "yes", False: "no", None: "-"}[r["value_match"]]
            lines.append(f"| {r['f1']:.3f} | {match} | {_md_escape(r['question'])} | {_md_escape(r['answer'])} | "
                         f"{_md_escape(r['prediction'][:120])} |")
    v = summary["versions"]
    lines += ["", "Versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)), ""]
    return "\n".join(lines)


def plots(rows: list[dict], summary: dict, out: Path, cjk: bool = True) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(summary["models"])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for m in models:
        ax.hist([r["f1"] for r in rows if r["model"] == m], bins=30, range=(0, 1), alpha=0.6, label=m)
    ax.axvline(summary["f1_threshold"], color="red", linestyle="--", label=f"threshold {summary['f1_threshold']}")
    ax.set_xlabel("BERTScore F1")
    ax.set_ylabel("answers")
    ax.set_title("F1 distribution")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "f1_hist.png")
    plt.close(fig)

    attrs = list(dict.fromkeys(a for m in models for a in summary["models"][m]["per_attribute"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    width = 0.8 / len(models)
    for k, m in enumerate(models):
        per = summary["models"][m]["per_attribute"]
        xs = [i + k * width for i in range(len(attrs))]
        axes[0].bar(xs, [(per.get(a, {}).get("value_match_rate") or 0) for a in attrs], width, label=m)
        axes[1].bar(xs, [per.get(a, {}).get("f1_mean", 0) for a in attrs], width, label=m)
    # Without a CJK font, Chinese names would draw as empty boxes: number them as in summary.md instead.
    readable = cjk or all(a.isascii() for a in attrs)
    labels = attrs if readable else [f"#{i + 1}" for i in range(len(attrs))]
    if not readable:
        fig.text(0.5, 0.01, "#n: the n-th attribute of the per-attribute table in summary.md (no CJK font installed)",
                 ha="center", fontsize=8, color="gray")
    for ax, title in zip(axes, ["value match rate", "mean BERTScore F1"]):
        ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(attrs))])
        ax.set_xticklabels(labels, rotation=30 if readable else 0, ha="right" if readable else "center")
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout(rect=(0, 0 if readable else 0.05, 1, 1))
    fig.savefig(out / "attributes.png")
    plt.close(fig)


def _cjk_font() -> bool:
    """Use a font with CJK glyphs when one is installed, so Chinese attribute names render in the plots."""
    import matplotlib
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    for name in ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei",
                 "PingFang SC", "AR PL UMing CN"):
        if name in names:
            matplotlib.rcParams["font.sans-serif"] = [name] + list(matplotlib.rcParams["font.sans-serif"])
            return True
    return False


REPORT_FILES = ("scores.csv", "f1_hist.png", "attributes.png", "summary.md", "summary.json")


def write_report(rows: list[dict], summary: dict, out: Path) -> None:
    """Every report file is written whole in a temp dir, then moved into `out` one by one, summary.json last (the
    file other tools read): an interrupted run leaves each file whole, and a rerun writes the same set."""
    import csv
    import logging
    import os
    import warnings

    with temp_dir(out, "report") as tmp:
        with (tmp / "scores.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({**r, "value_match": "" if r["value_match"] is None else int(r["value_match"]),
                            "truncated": int(r["truncated"])})
        (tmp / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        text = markdown(summary)
        if (out / "artifacts.md").is_file():  # eval.export's table of the exported files, kept across re-scoring
            text = text.rstrip("\n") + "\n\n" + (out / "artifacts.md").read_text(encoding="utf-8")
        (tmp / "summary.md").write_text(text, encoding="utf-8")
        cjk = _cjk_font()
        logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing CJK glyphs: the plot is still useful
            plots(rows, summary, tmp, cjk)
        for name in REPORT_FILES:
            os.replace(tmp / name, out / name)


def _ids(path: Path) -> set[str]:
    """The row ids of a predictions file the kit wrote, read line by line; a line a crash cut short is skipped."""
    ids = set()
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                ids.add(json.loads(line).get("id"))
            except (ValueError, AttributeError):
                continue
    return ids


def check_complete(cfg: Config, path: Path, got: set[str]) -> None:
    """The kit's own predictions must cover every question of the evaluated splits."""
    from eval.generate import iter_eval_rows

    expected = {r["id"] for r in iter_eval_rows(cfg)}
    if got != expected:
        raise KitError(f"{path}: {len(got & expected)} of {len(expected)} questions answered "
                       f"({len(got - expected)} unknown rows); run `python -m eval.generate CONFIG` again to finish, "
                       f"or set eval.overwrite=true to start over")


def score(cfg: Config, predictions: Path | None = None, models: dict[str, Path] | None = None,
          scorer: Scorer | None = None) -> Path:
    """Score one predictions file (or several, side by side: {label: path}); returns the report directory."""
    from kit.lock import run_lock

    with run_lock(cfg, "eval.score"):
        return _score(cfg, predictions, models, scorer)


def _score(cfg: Config, predictions: Path | None, models: dict[str, Path] | None, scorer: Scorer | None) -> Path:

    if models is None:
        if predictions is not None:
            models = {Path(predictions).stem: Path(predictions)}
        else:
            models = {"finetuned": cfg.predictions_file("finetuned")}
            if (cfg.eval.compare_base or cfg.eval.specificity) and cfg.predictions_file("base").is_file():
                models = {"base": cfg.predictions_file("base"), **models}
    loaded = {}
    for label, path in models.items():
        if predictions is None and path.is_file():  # the kit's own file: one cut short by a stop is not scored
            check_complete(cfg, path, _ids(path))
        loaded[label] = read_predictions(path)
    aside = SPECIFICITY_SPLITS + BEYOND_SPLITS  # scored by their own measures, not as test questions
    counts = {label: sum(r.get("split") not in aside for r in rows) for label, rows in loaded.items()}
    if len(set(counts.values())) > 1:
        raise KitError(f"predictions to compare have different row counts {counts}; answer the same questions with "
                       f"each model (same eval.splits and eval.max_rows)")
    out = cfg.eval_dir if predictions is None else cfg.report_dir
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
    elif cfg.eval.specificity and predictions is None:
        summary["specificity_skipped"] = ("not measured: the train rows carry no entity / value fields (a "
                                          "conversation dataset without them), so there are no trained names or "
                                          "values to look for")
    if any(beyond.values()):
        from kit.beyond import summarise as beyond_summary

        summary["beyond"] = beyond_summary(beyond, cfg.data.language, cfg.eval.worst_n)
    elif cfg.eval.beyond and predictions is None:
        summary["beyond_skipped"] = ("not measured: no held-out claims, reverse or one-hop questions in "
                                     f"{cfg.data_dir / 'beyond.jsonl'} (data_prep.build writes them from an attribute "
                                     "file; a conversation dataset has no table to ask them from, and data built "
                                     "before this kit version has no such file: rebuild it)")
    write_report(scored, summary, out)
    print(markdown(summary).split("## Per attribute")[0].split("\n### ")[0])
    return out


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv, __doc__.splitlines()[0], extra=lambda p: p.add_argument(
        "--predictions", type=Path, help="score this CSV/JSONL (question, answer, prediction columns) instead"))
    out = score(cfg, args.predictions)
    print(f"report written to {out}: scores.csv, summary.md, summary.json, f1_hist.png, attributes.png")
    return 0


if __name__ == "__main__":
    run_main(main)
