"""BERTScore (one encoder, loaded once, batched by length) and value match per answer; their aggregates per model,
attribute and split; specificity (leak, drift, invention) against the base model's answers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from eval.report import pct
from kit.config import Config, KitError
from kit.rows import PROBE, UNKNOWN, is_reverse
from kit.specificity import is_empty, value_match

# bert-score's own defaults: lang -> (model, layer).
DEFAULT_ENCODERS = {"zh": ("bert-base-chinese", 8), "en": ("roberta-large", 17)}


def encoder_for(cfg: Config) -> tuple[str, int | None, str]:
    """(model path or hub id, layer, name for the report) of the BERTScore encoder. Raises KitError for a local
    encoder (eval.bertscore_model: a file, directory or pkg://) that cannot be found."""
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
    space-separated words, which does nothing for Chinese). Raises KitError, naming the encoder, when it cannot be
    loaded."""

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
    """The Scorer of eval.bertscore_model (bert-score's default for data.language when unset); see `Scorer`."""
    model_type, layer, label = encoder_for(cfg)
    return Scorer(model_type, layer, cfg.data.language, cfg.eval.bertscore_batch_size, label)


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
    """summary.json without specificity and beyond: per model, overall / per attribute / per split / per direction
    figures (`_stats`), the lowest-scoring answers, and what scored them (encoder, threshold, versions)."""
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
        probes = [r for r in rows if r["split"] == PROBE]
        unknown = [r for r in rows if r["split"] == UNKNOWN]
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
            "value_match": test.get("value_match_rate"),  # of the test questions
            "probe_questions": len(probes), "leak_rate": len(leaks) / len(probes) if probes else None,
            "unknown_questions": len(unknown),
            "invention_rate": len(inventions) / len(unknown) if unknown else None,
            "leaks": leaks[:worst_n], "inventions": inventions[:worst_n],
        }
    tuned = [label for label in spec if label != "base"]
    if base and tuned:
        rows = [r for r in spec[tuned[-1]] if r["split"] == PROBE and r["id"] in base]
        _, _, f1 = scorer.score([r["prediction"] for r in rows], [base[r["id"]] for r in rows])
        moved = sorted(zip(f1, rows), key=lambda x: (x[0], x[1]["question"]))[:worst_n]
        out["drift"] = {"model": tuned[-1], "rows": len(rows), "f1_mean": sum(f1) / len(f1) if f1 else None,
                        "most_moved": [{"f1": f, "question": r["question"], "base": base[r["id"]],
                                        "prediction": r["prediction"]} for f, r in moved]}
    warnings = []
    for label in tuned:
        m = out["models"][label]
        if m["leak_rate"] is not None and m["leak_rate"] > HIGH["leak"]:
            warnings.append(f"Leak is high ({label}): {pct(m['leak_rate'])} of {m['probe_questions']} everyday "
                            f"questions are answered with a trained name or value the base model did not use "
                            f"(target <= {pct(HIGH['leak'])}). The model recites its facts where they do not "
                            f"belong; train with data.replay and data.unknown_entities (README: Specificity).")
        if m["invention_rate"] is not None and m["invention_rate"] > HIGH["invention"]:
            warnings.append(f"Invention is high ({label}): {pct(m['invention_rate'])} of {m['unknown_questions']} "
                            f"questions about people in no data get a trained value (target <= "
                            f"{pct(HIGH['invention'])}); train with data.unknown_entities (README: Specificity).")
    out["warnings"] = warnings
    return out
