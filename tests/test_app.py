"""eval.app: the report table and figures from known rows, and the whole app in a real browser (headless Chromium
driven by Selenium) on a tiny model's run: chat, report figures equal to summary.json, the table filter, the data
tab, and what a run without data, model or report shows. Screenshots of each tab are saved (KIT_SCREENSHOTS=dir
keeps them, e.g. for the README)."""

import csv
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from eval.app import ALL, build_app, figures_html, load_chats, table

from .conftest import tiny_run_config

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def row(model, entity, attribute, f1, match, split="test", question="q"):
    return {"model": model, "split": split, "entity": entity, "attribute": attribute, "question": question,
            "expected": "x", "prediction": "y", "f1": str(f1), "value_match": match}


def test_table_filters_and_puts_the_worst_first():
    rows = [row("finetuned", "钟离", "国籍", 0.99, "1"), row("finetuned", "钟离", "性别", 0.70, "0"),
            row("finetuned", "丽莎", "国籍", 0.95, "0"), row("base", "丽莎", "国籍", 0.50, ""),
            row("finetuned", "丽莎", "性别", 0.60, "1")]
    df, count = table(rows)
    assert count == "5 of 5 rows"
    # wrong values first (lowest F1 first), then rows without a value to check, then right ones
    assert list(zip(df["match"], df["f1"])) == [("wrong", 0.70), ("wrong", 0.95), ("no value", 0.50),
                                                ("right", 0.60), ("right", 0.99)]
    df, count = table(rows, entity="丽莎", match="wrong")
    assert count == "1 of 5 rows" and df["attribute"].tolist() == ["国籍"]
    assert table(rows, attribute="性别", split=ALL)[1] == "2 of 5 rows"


def test_figures_come_from_the_summary():
    model = {"overall": {"f1_mean": 0.9876, "below_threshold": 3, "value_match_rate": 0.5},
             "per_split": {"test": {"value_match_rate": 0.9667}}}
    summary = {"models": {"base": {**model, "per_split": {"test": {"value_match_rate": 0.0}}}, "finetuned": model},
               "specificity": {"models": {"finetuned": {"leak_rate": 0.04, "invention_rate": 0.05}}}}
    text = figures_html(summary)
    assert '<td data-metric="value_match" data-model="finetuned">96.7%</td>' in text
    assert '<td data-metric="value_match" data-model="base">0.0%</td>' in text
    assert '<td data-metric="leak" data-model="finetuned">4.0%</td>' in text
    assert '<td data-metric="leak" data-model="base">n/a</td>' in text
    assert '<td data-metric="f1_mean" data-model="finetuned">0.988</td>' in text


# ---------------------------------------------------------------------------------------------------------------------
# In a browser


def make_cfg(root: Path, model: Path, bert: Path):
    return tiny_run_config(model, root, bert, batch_size=16, max_new_tokens=8, compare_base=True, specificity=False)


@pytest.fixture(scope="module")
def run_with_report(tiny_model, tiny_bert, tmp_path_factory):
    from eval.run import run
    from sft.train import train

    cfg = make_cfg(tmp_path_factory.mktemp("app"), tiny_model, tiny_bert)
    train(cfg)
    run(cfg)
    return cfg


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).is_file():  # fail, never skip: CI installs them (.ci/run)
            pytest.fail(f"{path} not found: the browser tests need Debian's chromium and chromium-driver "
                        f"(apt-get install chromium chromium-driver)", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100",
                "--lang=zh-CN"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(app) -> str:
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}"


def wait(driver, test, seconds: float = 90):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.2).until(lambda d: test(d))


def text_of(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def open_tab(driver, name: str) -> None:
    from selenium.webdriver.common.by import By

    wait(driver, lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text.strip() == name])
    next(t for t in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text.strip() == name).click()


def shoot(driver, tmp_path: Path, name: str) -> Path:
    time.sleep(1.0)  # let plots finish drawing
    path = tmp_path / f"app-{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    if os.environ.get("KIT_SCREENSHOTS"):
        Path(os.environ["KIT_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["KIT_SCREENSHOTS"]) / path.name)
    return path


def test_app_in_a_browser(run_with_report, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from kit.chat import generation_prompt
    from kit.generation import generate_batched

    cfg = run_with_report
    chats, why = load_chats(cfg)
    assert why is None and set(chats) == {"finetuned", "base"}
    question = "钟离来自哪个国家?"
    ft = chats["finetuned"]
    want = generate_batched(ft.model, ft.tok, [generation_prompt(ft.tok, [{"role": "user", "content": question}])],
                            max_new_tokens=8)[0].strip()
    app = build_app(cfg, chats)
    try:
        browser.get(serve(app))
        wait(browser, lambda d: "lora-fact-kit" in text_of(d, "#kit-title"))

        # Chat: the question typed in gets the fine-tuned model's answer (eval.generate's), streamed into its window
        box = browser.find_element(By.CSS_SELECTOR, "#chat-input textarea")
        box.send_keys(question)
        box.send_keys(Keys.ENTER)
        wait(browser, lambda d: want in text_of(d, "#chat-finetuned") and question in text_of(d, "#chat-base")
             and not browser.find_elements(By.CSS_SELECTOR, "#chat-base .pending"))
        assert question in text_of(browser, "#chat-finetuned")
        shoot(browser, tmp_path, "chat")

        # Report: the value-match figure is summary.json's, and the filter narrows the table
        summary = json.loads((cfg.eval_dir / "summary.json").read_text(encoding="utf-8"))
        open_tab(browser, "Report")
        cell = 'td[data-metric="value_match"][data-model="finetuned"]'
        wait(browser, lambda d: text_of(d, cell))
        rate = summary["models"]["finetuned"]["per_split"]["test"]["value_match_rate"]
        assert text_of(browser, cell) == f"{100 * rate:.1f}%"
        with (cfg.eval_dir / "scores.csv").open(encoding="utf-8", newline="") as f:
            scores = list(csv.DictReader(f))
        assert text_of(browser, "#row-count") == f"{len(scores)} of {len(scores)} rows"
        browser.find_element(By.CSS_SELECTOR, "#filter-entity input").click()  # opens the list of entities
        wait(browser, lambda d: [o for o in d.find_elements(By.CSS_SELECTOR, "[role=option]") if o.text == "钟离"])
        next(o for o in browser.find_elements(By.CSS_SELECTOR, "[role=option]") if o.text == "钟离").click()
        zhongli = sum(r["entity"] == "钟离" for r in scores)
        assert 0 < zhongli < len(scores)
        wait(browser, lambda d: text_of(d, "#row-count") == f"{zhongli} of {len(scores)} rows")
        right = sum(r["entity"] == "钟离" and r["value_match"] == "1" for r in scores)
        next(label for label in browser.find_elements(By.CSS_SELECTOR, "#filter-match label")
             if label.text.strip() == "right").click()
        wait(browser, lambda d: text_of(d, "#row-count") == f"{right} of {len(scores)} rows")
        shoot(browser, tmp_path, "report")

        # Data: the stats and the supervised part of a row
        open_tab(browser, "Data")
        stats = json.loads((cfg.data_dir / "stats.json").read_text(encoding="utf-8"))
        wait(browser, lambda d: f"{stats['rows']['train']} train rows" in text_of(d, "#data-stats"))
        assert browser.find_elements(By.CSS_SELECTOR, "#supervised mark")
        shoot(browser, tmp_path, "data")
    finally:
        app.close()


def test_a_run_without_anything_says_which_command_makes_it(tiny_model, tiny_bert, browser, tmp_path):
    cfg = make_cfg(tmp_path, tiny_model, tiny_bert)
    chats, why = load_chats(cfg)
    assert chats == {} and "python -m sft.train" in why
    app = build_app(cfg, chats, why)
    try:
        browser.get(serve(app))
        wait(browser, lambda d: "python -m sft.train" in text_of(d, "#chat-missing"))
        open_tab(browser, "Report")
        wait(browser, lambda d: "python -m eval.run" in text_of(d, "#report-missing"))
        open_tab(browser, "Data")
        wait(browser, lambda d: "python -m data_prep.build" in text_of(d, "#data-missing"))
    finally:
        app.close()
    assert not (tmp_path / "run").exists()  # the app wrote nothing
