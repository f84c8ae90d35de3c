"""A local web app over a run: chat with the base and the fine-tuned model side by side, read the report, look at
the data.

    pip install -e '.[app]'
    python -m eval.app configs/quickstart.yaml                 # http://127.0.0.1:7860
    python -m eval.app configs/quickstart.yaml --port 8000     # --host 0.0.0.0 to let other machines in

It reads output_dir and changes nothing in it; what is missing (no data, no model, no report yet) is shown with
the command that makes it. Chat uses eval.chat, so answers are the report's (same prompt, greedy, end tokens).
"""

from __future__ import annotations

import html
import json
import os
import queue
import threading

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline and private by default: no usage pings

from eval.report import pct
from kit.config import Config, KitError, parse_args, run_main

MATCH_FILTERS = ["all", "wrong", "right", "no value"]
ALL = "(all)"


# ---------------------------------------------------------------------------------------------------------------------
# What the run holds (plain functions: tested without a browser)


def load_chats(cfg: Config) -> tuple[dict, str | None]:
    """({"finetuned": Chat, "base": Chat}, None), or ({}, why not) when there is no fine-tuned model yet. The
    fine-tuned model is eval.generate's (`eval.models.model_source`): the merged export when there is one, else base + adapter
    (the app never merges: it writes nothing)."""
    from eval.chat import Chat

    if not (cfg.merged_dir / "config.json").is_file() and not (cfg.adapter_dir / "adapter_config.json").is_file():
        return {}, (f"No fine-tuned model yet (no adapter in {cfg.adapter_dir}). Train one with "
                    f"`python -m sft.train {cfg.source}`.")
    try:
        return {"finetuned": Chat(cfg, "finetuned"), "base": Chat(cfg, "base")}, None
    except KitError as e:
        return {}, str(e)


def load_report(cfg: Config) -> tuple[dict | None, list[dict]]:
    """(summary.json, scores.csv rows) of the run's report, or (None, []) before there is one."""
    import csv

    summary = cfg.eval_dir / "summary.json"
    scores = cfg.eval_dir / "scores.csv"
    if not (summary.is_file() and scores.is_file()):
        return None, []
    with scores.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return json.loads(summary.read_text(encoding="utf-8")), rows


FIGURES = [  # (metric key, label, value from a model's summary, specificity part of summary)
    ("value_match", "value match (held-out questions)", lambda m, s: pct(m["per_split"].get("test", m["overall"])
                                                                           ["value_match_rate"])),
    ("f1_mean", "BERTScore F1 mean", lambda m, s: f"{m['overall']['f1_mean']:.3f}"),
    ("below_threshold", "answers with F1 below the threshold", lambda m, s: str(m["overall"]["below_threshold"])),
    ("leak", "leak (everyday questions)", lambda m, s: pct(s["leak_rate"]) if s else "n/a"),
    ("invention", "invention (people in no data)", lambda m, s: pct(s["invention_rate"]) if s else "n/a"),
]


def figures_html(summary: dict) -> str:
    """The headline figures, one column per model; each cell carries data-metric / data-model for tests and tools."""
    models = list(summary["models"])
    spec = (summary.get("specificity") or {}).get("models", {})
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    body = []
    for key, label, value in FIGURES:
        cells = "".join(f'<td data-metric="{key}" data-model="{html.escape(m)}">'
                        f"{html.escape(value(summary['models'][m], spec.get(m)))}</td>" for m in models)
        body.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
    return (f'<table id="report-figures"><thead><tr><th>metric</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def per_attribute(summary: dict, model: str):
    import pandas as pd

    stats = summary["models"][model]["per_attribute"]
    return pd.DataFrame([{"attribute": a, "value match %": round(100 * (s["value_match_rate"] or 0), 1)}
                         for a, s in stats.items()])


def f1_histogram(rows: list[dict], model: str, bins: int = 10):
    import pandas as pd

    counts = [0] * bins
    for r in rows:
        if r["model"] == model:
            counts[min(int(float(r["f1"]) * bins), bins - 1)] += 1
    return pd.DataFrame([{"F1": f"{k / bins:.1f}-{(k + 1) / bins:.1f}", "answers": n} for k, n in enumerate(counts)])


def _match(r: dict) -> str:
    return {"1": "right", "0": "wrong"}.get(r["value_match"], "no value")


def table(rows: list[dict], entity: str = ALL, attribute: str = ALL, split: str = ALL, match: str = "all"):
    """(rows as a DataFrame, "k of n rows"): filtered, worst first (wrong values, then no value to check, then
    right ones; lowest F1 first within each)."""
    import pandas as pd

    order = {"wrong": 0, "no value": 1, "right": 2}
    picked = [r for r in rows
              if (entity == ALL or r["entity"] == entity) and (attribute == ALL or r["attribute"] == attribute)
              and (split == ALL or r["split"] == split) and (match == "all" or _match(r) == match)]
    picked.sort(key=lambda r: (order[_match(r)], float(r["f1"]), r["question"]))
    df = pd.DataFrame([{"model": r["model"], "match": _match(r), "f1": round(float(r["f1"]), 3),
                        "entity": r["entity"], "attribute": r["attribute"], "split": r["split"],
                        "question": r["question"], "expected": r["expected"], "prediction": r["prediction"]}
                       for r in picked],
                      columns=["model", "match", "f1", "entity", "attribute", "split", "question", "expected",
                               "prediction"])
    return df, f"{len(picked)} of {len(rows)} rows"


def supervised_html(cfg: Config, row: dict) -> str:
    """One training row as the model sees it, the supervised (trained-on) text highlighted."""
    from kit.encode import encode
    from kit.models import load_tokenizer, resolve

    source = cfg.adapter_dir if (cfg.adapter_dir / "tokenizer_config.json").is_file() else resolve(cfg.model)
    tok = load_tokenizer(str(source), cfg.model.trust_remote_code)
    e = encode(tok, row["messages"], cfg.model.thinking)
    parts, cut = [], 0
    for start, stop in e.spans:
        parts.append(html.escape(e.text[cut:start]))
        parts.append(f"<mark>{html.escape(e.text[start:stop])}</mark>")
        cut = stop
    parts.append(html.escape(e.text[cut:]))
    return ('<pre id="supervised" style="white-space: pre-wrap">' + "".join(parts) + "</pre>"
            "<p>Highlighted: the tokens the loss is computed on (the answer and its end-of-turn token).</p>")


def data_view(cfg: Config, n: int = 20) -> dict | None:
    """Stats, the first n train and test rows, and the supervised part of the first train row; None before the
    data is built."""
    import itertools

    import pandas as pd

    from kit.files import iter_jsonl

    stats = cfg.data_dir / "stats.json"
    if not stats.is_file():
        return None

    def sample(split: str):
        rows = list(itertools.islice(iter_jsonl(cfg.data_dir / f"{split}.jsonl"), n))
        return rows, pd.DataFrame([{"entity": r["entity"], "attribute": r["attribute"],
                                    "question": r["messages"][-2]["content"] if len(r["messages"]) > 1 else "",
                                    "answer": r["messages"][-1]["content"], "template": r["template"]}
                                   for r in rows])

    train_rows, train = sample("train")
    _, test = sample("test")
    return {"stats": json.loads(stats.read_text(encoding="utf-8")), "train": train, "test": test,
            "supervised": supervised_html(cfg, train_rows[0]) if train_rows else ""}


def _missing(text: str) -> str:
    return f'<div class="kit-missing">{html.escape(text).replace("`", "")}</div>'


# ---------------------------------------------------------------------------------------------------------------------
# The app


def stream_turn(chats: dict, lock: threading.Lock, message: str, finetuned: list, base: list):
    """Both models answer `message`, the fine-tuned one first, each streamed into its own chat window."""
    if not message.strip():
        yield finetuned, base, ""
        return
    windows = {"finetuned": finetuned + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}],
               "base": base + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]}
    with lock:  # one generation at a time: the models are shared by every browser tab
        for label in ("finetuned", "base"):
            chat = chats[label]
            chat.history = [{"role": m["role"], "content": m["content"]} for m in windows[label][:-2]]
            pieces: queue.Queue = queue.Queue()
            done = object()
            failed: list[BaseException] = []

            def run(chat=chat, pieces=pieces, done=done, failed=failed):
                try:
                    pieces.put(("answer", chat.reply(message, on_text=lambda t: pieces.put(("piece", t)))))
                except BaseException as e:  # noqa: BLE001 - shown in the window
                    failed.append(e)
                pieces.put((done, None))

            threading.Thread(target=run, daemon=True).start()
            while True:
                kind, text = pieces.get()
                if kind is done:
                    break
                if kind == "piece":
                    windows[label][-1]["content"] += text
                else:
                    windows[label][-1]["content"] = text  # the final answer (stripped, as in the report)
                yield windows["finetuned"], windows["base"], ""
            if failed:
                windows[label][-1]["content"] = f"(error: {failed[0]})"
                yield windows["finetuned"], windows["base"], ""


def build_app(cfg: Config, chats: dict | None = None, why_no_chat: str | None = None):
    import gradio as gr

    summary, rows = load_report(cfg)
    data = data_view(cfg)
    lock = threading.Lock()
    with gr.Blocks(title=f"lora-fact-kit: {cfg.out}") as app:
        gr.Markdown(f"# lora-fact-kit: `{cfg.out}`", elem_id="kit-title")
        with gr.Tab("Chat", id="chat"):
            if chats:
                with gr.Row():
                    finetuned = gr.Chatbot(label="fine-tuned", elem_id="chat-finetuned", height=420)
                    base = gr.Chatbot(label="base", elem_id="chat-base", height=420)
                message = gr.Textbox(label="Ask both models", placeholder="钟离来自哪里?", elem_id="chat-input")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="chat-send")
                    reset = gr.Button("Reset", elem_id="chat-reset")
                gr.Markdown(f"Greedy, at most {cfg.eval.max_new_tokens} new tokens, the chat template and end tokens "
                            f"of eval.generate: the answers the report scores.")

                def turn(text, ft, bs):
                    yield from stream_turn(chats, lock, text, ft or [], bs or [])

                for event in (message.submit, send.click):
                    event(turn, [message, finetuned, base], [finetuned, base, message])
                reset.click(lambda: ([], [], ""), None, [finetuned, base, message])
            else:
                gr.HTML(_missing(why_no_chat or "No model loaded."), elem_id="chat-missing")
        with gr.Tab("Report", id="report"):
            if summary is None:
                gr.HTML(_missing(f"No report yet in {cfg.eval_dir}. Make it with `python -m eval.run {cfg.source}`."),
                        elem_id="report-missing")
            else:
                gr.HTML(figures_html(summary), elem_id="report-figures-box")
                with gr.Row():
                    for model in summary["models"]:
                        gr.BarPlot(per_attribute(summary, model), x="attribute", y="value match %",
                                   title=f"value match per attribute ({model})", y_lim=[0, 100])
                with gr.Row():
                    for model in summary["models"]:
                        gr.BarPlot(f1_histogram(rows, model), x="F1", y="answers", title=f"BERTScore F1 ({model})")
                values = {k: sorted({r[k] for r in rows}) for k in ("entity", "attribute", "split")}
                with gr.Row():
                    entity = gr.Dropdown([ALL, *values["entity"]], value=ALL, label="entity", elem_id="filter-entity")
                    attribute = gr.Dropdown([ALL, *values["attribute"]], value=ALL, label="attribute",
                                            elem_id="filter-attribute")
                    split = gr.Radio([ALL, *values["split"]], value=ALL, label="split", elem_id="filter-split")
                    match = gr.Radio(MATCH_FILTERS, value="all", label="value match", elem_id="filter-match")
                first, count = table(rows)
                shown = gr.Markdown(count, elem_id="row-count")
                grid = gr.Dataframe(first, elem_id="rows-table", wrap=True, interactive=False)
                for box in (entity, attribute, split, match):
                    box.change(lambda e, a, s, m: table(rows, e, a, s, m), [entity, attribute, split, match],
                               [grid, shown])
        with gr.Tab("Data", id="data"):
            if data is None:
                gr.HTML(_missing(f"No data yet in {cfg.data_dir}. Build it with "
                                 f"`python -m data_prep.build {cfg.source}`."), elem_id="data-missing")
            else:
                r = data["stats"]["rows"]
                gr.Markdown(f"**{r['train']} train rows, {r['test']} test rows, {data['stats']['facts']} facts** "
                            f"(split: {data['stats'].get('split', '?')}; source: {data['stats'].get('source', '?')})",
                            elem_id="data-stats")
                gr.HTML(data["supervised"], elem_id="data-supervised")
                gr.Markdown("First train rows")
                gr.Dataframe(data["train"], interactive=False, wrap=True)
                gr.Markdown("First test rows")
                gr.Dataframe(data["test"], interactive=False, wrap=True)
    return app


def main(argv: list[str] | None = None) -> int:
    def extra(p):
        p.add_argument("--port", type=int, default=7860)
        p.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default): this machine only")

    args, cfg = parse_args(argv, __doc__.splitlines()[0], extra=extra)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise KitError("the web app needs gradio: pip install -e '.[app]'") from None
    chats, why = load_chats(cfg)
    build_app(cfg, chats, why).launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    run_main(main)
