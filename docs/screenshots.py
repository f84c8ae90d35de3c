"""The README's screenshots of the web app: serve a run with eval.app, ask one question in headless Chromium, save a
PNG of each tab.

    python docs/screenshots.py configs/quickstart.yaml "钟离来自哪里?" output_dir=runs/quickstart

Needs what the tests need (Debian's chromium and chromium-driver, selenium) and, for Chinese text, a CJK font
(fonts-noto-cjk).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from eval.app import build_app, load_chats
    from kit.config import load_config

    config, question, *overrides = argv
    cfg = load_config(config, overrides)
    chats, why = load_chats(cfg)
    app = build_app(cfg, chats, why)
    app.launch(server_name="127.0.0.1", server_port=7899, prevent_thread_lock=True, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    wait = WebDriverWait(driver, 300)
    try:
        driver.get("http://127.0.0.1:7899")
        wait.until(lambda d: d.find_elements(By.ID, "kit-title"))
        box = driver.find_element(By.CSS_SELECTOR, "#chat-input textarea")
        box.send_keys(question, Keys.ENTER)
        wait.until(lambda d: len(d.find_element(By.ID, "chat-base").text.splitlines()) >= 3)
        time.sleep(5)
        driver.save_screenshot(str(ROOT / "docs" / "app-chat.png"))
        for name in ("Report", "Data"):
            next(t for t in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text.strip() == name).click()
            time.sleep(4)
            driver.save_screenshot(str(ROOT / "docs" / f"app-{name.lower()}.png"))
    finally:
        driver.quit()
        app.close()
    print("wrote docs/app-chat.png, app-report.png, app-data.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
