"""The report a person reads: summary.md, summary.json, scores.csv and the plots, written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

from kit.files import temp_dir


def _specificity_markdown(sp: dict) -> list[str]:
    models = list(sp["models"])
    m = sp["models"]
    any_model = m[models[0]]
    lines = ["", "## Specificity: knows its facts, and stays a chat model", "",
             "| | " + " | ".join(models) + " |", "|---|" + "---|" * len(models),
             "| value match: held-out questions with the right value | "
             + " | ".join(pct(m[x]["value_match"]) for x in models)
             + " |",
             f"| leak: everyday questions answered with a trained name or value ({any_model['probe_questions']}) | "
             + " | ".join(pct(m[x]["leak_rate"]) for x in models) + " |",
             f"| invention: questions about people in no data given a trained value "
             f"({any_model['unknown_questions']}) | " + " | ".join(pct(m[x]["invention_rate"]) for x in models) + " |"]
    drift = sp.get("drift")
    if drift:
        lines.append("| drift: BERTScore F1 of each everyday answer to the base's, mean | "
                     + " | ".join(f"{drift['f1_mean']:.4f}" if x == drift["model"] else ("1.0000" if x == "base"
                                  else "-") for x in models) + " |")
    lines += ["", "Leak counts a name or value the question and the base model's answer do not contain; the base "
                  "model's own figure counts what it says unprompted.", ""]
    lines += [f"**{w}**" + "  " for w in sp["warnings"]] or ["Leak and invention are within the targets "
                                                             f"({pct(sp['thresholds']['leak'])}, "
                                                             f"{pct(sp['thresholds']['invention'])})."]
    for label in models:
        if label == "base":
            continue
        if m[label]["leaks"]:
            lines += ["", f"### Leaking answers ({label})", "", "| question | base answer | answer | leaked |",
                      "|---|---|---|---|"]
            lines += [f"| {_md_escape(r['question'])} | {_md_escape(r['base'][:80])} | "
                      f"{_md_escape(r['prediction'][:80])} | {_md_escape(', '.join(r['leaked']))} |"
                      for r in m[label]["leaks"]]
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
             "each answer is judged.", "", "| | rows | " + " | ".join(models) + " |",
             "|---|---|" + "---|" * len(models)]
    for label, key, rows_key in [
            (f"verification: true claims confirmed (target {pct(t['true_confirmed'])})", "true_confirmed",
             "true_claims"),
            (f"verification: false claims denied (target {pct(t['false_denied'])})", "false_denied", "false_claims"),
            ("verification: false claims denied with the true value named", "false_denied_naming_value",
             "false_claims"),
            ("verification: denials that name the true value", "denials_naming_value", None),
            (f"reverse: value -> the one entity that has it (target {pct(t['reverse'])})", "reverse", "reverse_rows"),
            (f"one-hop, all (aim {pct(t['onehop'])})", "onehop", "onehop_rows"),
            ("one-hop: same value? (two entities)", "onehop_same", "onehop_same_rows"),
            ("one-hop: every entity with a value", "onehop_list", "onehop_list_rows"),
            ("one-hop: how many have a value", "onehop_count", "onehop_count_rows")]:
        n = first[rows_key] if rows_key else "-"
        lines.append(f"| {label} | {n} | " + " | ".join(pct(m[x][key]) for x in models) + " |")
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


def pct(x: float | None) -> str:
    """A share as the report writes it: 0.95 -> "95.0%", None -> "n/a"."""
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
    """summary.md from summary.json's dict: overall, specificity, beyond, per attribute, lowest-scoring answers."""
    models = list(summary["models"])
    lines = ["# Evaluation report", "",
             f"Source: `{summary['source']}`  ", f"BERTScore encoder: `{summary['encoder']}` "
             f"(hash `{summary['bertscore_hash']}`)  ",
             "Value match: the attribute's value appears in the prediction (Latin-script words and numbers whole, "
             "CJK anywhere; case and punctuation do not count).", ""]
    lines += ["## Overall", "", "| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    o = {m: summary["models"][m]["overall"] for m in models}
    for label, key, fmt in [("rows", "rows", str), ("value match", "value_match_rate", pct),
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
                cells += [pct(s["value_match_rate"]), f"{s['f1_mean']:.4f}"] if s else ["-", "-"]
            rows = max(summary["models"][m].get(key, {}).get(name, {}).get("rows", 0) for m in models)
            lines.append(f"| {_md_escape(name)} | {rows} | " + " | ".join(cells) + " |")
    for m in models:
        lines += ["", f"## Lowest-scoring answers ({m})", "",
                  "| F1 | match | question | expected answer | prediction |", "|---|---|---|---|---|"]
        for r in summary["models"][m]["lowest"]:
            match = {True: "yes", False: "no", None: "-"}[r["value_match"]]
            lines.append(f"| {r['f1']:.3f} | {match} | {_md_escape(r['question'])} | {_md_escape(r['answer'])} | "
                         f"{_md_escape(r['prediction'][:120])} |")
    v = summary["versions"]
    lines += ["", "Versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)), ""]
    return "\n".join(lines)


def plots(rows: list[dict], summary: dict, out: Path, cjk: bool = True) -> None:
    """f1_hist.png (BERTScore F1 per model) and attributes.png (value match and F1 per attribute) into `out`; without
    a CJK font (`cjk` false) Chinese attribute names are drawn as #n, numbered as in summary.md."""
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


COLUMNS = ["model", "split", "entity", "attribute", "direction", "question", "answer", "prediction", "precision",
           "recall", "f1", "value_match", "expected", "raw_prediction", "hash", "id", "truncated"]
