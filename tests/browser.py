"""A real headless Chromium for the dashboard's tests (Debian's chromium and chromium-driver, driven by
selenium), and what those tests read off the page: the numbers of each API's card as the page shows them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from common import require_binary
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from waits import until


@contextmanager
def chromium() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = require_binary("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(require_binary("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# One script, run in the page between two of its redraws (it redraws every refresh): a snapshot that
# cannot go stale halfway, as reading element by element from here would.
SNAPSHOT = """
const cards = {};
for (const card of document.querySelectorAll("section.api[data-api]")) {
  const numbers = {}, charts = {};
  for (const cell of card.querySelectorAll("[data-field]")) numbers[cell.dataset.field] = cell.textContent;
  for (const chart of card.querySelectorAll(".chart")) {
    const label = chart.querySelector("svg").getAttribute("aria-label");
    const axis = [...chart.querySelectorAll("svg text")].map((t) => t.textContent).find((t) => t.startsWith("-"));
    charts[label] = { last: chart.dataset.last ?? null, lines: chart.querySelectorAll("path").length, from: axis };
  }
  cards[card.dataset.api] = { numbers, charts, text: card.innerText,
    bad: [...card.querySelectorAll(".number.bad [data-field]")].map((c) => c.dataset.field) };
}
const splitters = {};
for (const s of document.querySelectorAll("[data-splitter]"))
  splitters[s.dataset.splitter] = {
    text: s.innerText, shares: [...s.querySelectorAll(".bar span")].map((b) => b.textContent) };
const gpus = {};
for (const g of document.querySelectorAll("[data-gpu]")) {
  gpus[g.dataset.gpu] = {};
  for (const chart of g.querySelectorAll(".chart"))
    gpus[g.dataset.gpu][chart.querySelector("svg").getAttribute("aria-label")] = chart.dataset.last ?? null;
}
return { cards, splitters, gpus, updated: document.body.dataset.updated ?? null, title: document.title,
  range: document.getElementById("range").value, search: location.search };
"""


def snapshot(driver: WebDriver) -> dict[str, Any]:
    """The page as drawn now: per API card its numbers (field -> text: "1,234", "–" for none), its
    charts (aria-label -> last value, lines drawn, the time axis' start: "-15m"), its text; the
    splitters' shares and text; per GPU its charts' last values; the chart range chosen and the URL's query."""
    return driver.execute_script(SNAPSHOT)  # type: ignore[no-any-return]


def card_numbers(driver: WebDriver, api: str) -> dict[str, str]:
    card = snapshot(driver)["cards"].get(api)
    return card["numbers"] if card else {}


def as_number(text: str) -> float | None:
    return None if text in ("", "–") else float(text.replace(",", ""))


def wait_for(driver: WebDriver, check: Callable[[WebDriver], Any], what: str, timeout: float) -> Any:
    """Poll the page until `check` gives something true; fail with the page's text and console if not."""

    def read() -> Any:
        try:
            return check(driver)
        except WebDriverException:  # the page is loading: read again
            return None

    def seen() -> str:
        body = driver.find_element(By.TAG_NAME, "body").text
        console = [entry["message"] for entry in driver.get_log("browser")]
        return f"{what}\npage:\n{body}\nconsole: {console}"

    return until(read, seen, timeout, every=0.1)


def console_errors(driver: WebDriver) -> list[str]:
    """What the page logged as an error (a blocked script, a failed fetch, an exception)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
