"""The live dashboard in a real browser (Debian's chromium and chromium-driver, through selenium)
against a real deployment under load: replicas and rising counts appear, and the page scales a model.

Every run saves a screenshot in its tmp dir; with SCHOONER_UPDATE_ARTIFACTS=1 it also replaces the one
kept in the repository, tests/artifacts/dashboard.png (so a plain test run leaves the tree clean).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import requests
from polling import wait_for

from management import admin_token
from management.stack import Stack

pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOT = Path(__file__).resolve().parent / "artifacts" / "dashboard.png"
READY_S = 90.0

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                 reason="needs Debian's chromium and chromium-driver (bin/test installs them)")]


def _post(url: str, path: str, body: dict, token: str) -> requests.Response:
    resp = requests.post(f"{url}/admin/{path}", json=body, timeout=120, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text}"
    return resp


@pytest.fixture
def deployment(tmp_path):
    """A Stack serving app "echo" on one noop replica, with its admin token."""
    stack = Stack(state_dir=tmp_path / "state").start()
    try:
        token = admin_token.read_file(admin_token.path(stack.state_dir))
        url = stack.management_url
        _post(url, "add_app", {"name": "echo", "input_type": "doubles", "latency_slo_micros": 2_000_000}, token)
        _post(url, "add_model", {"model_name": "noop", "model_version": "1", "input_type": "doubles"}, token)
        _post(url, "add_model_links", {"app_name": "echo", "model_names": ["noop"]}, token)
        _post(url, "set_num_replicas", {"model_name": "noop", "num_replicas": 1, "wait_s": READY_S}, token)
        yield stack, token
    finally:
        stack.stop()


@pytest.fixture
def load(deployment):
    """Queries to "echo" over HTTP from a background thread until the test ends."""
    stack, _ = deployment
    stop = threading.Event()

    def run() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    session.post(f"{stack.frontend_http_url}/echo/predict", json={"input": [1.0, 2.0]}, timeout=10)
                except requests.RequestException:
                    time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(15)


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _read(fn, fallback):
    """``fn()``, or ``fallback`` when the page re-rendered the element meanwhile (it does every second)."""
    try:
        return fn()
    except (StaleElementReferenceException, IndexError, ValueError):
        return fallback


def _model_cell(browser, index: int) -> str:
    row = browser.find_element(By.CSS_SELECTOR, '#models tr[data-model="noop:1"]')
    return row.find_elements(By.TAG_NAME, "td")[index].text


def _answers(browser) -> int:
    return _read(lambda: int(_model_cell(browser, 12)), -1)


def _throughput(browser) -> float:
    return _read(lambda: float(_model_cell(browser, 5)), 0.0)


def _serving(browser) -> int:
    return _read(lambda: sum(s.text in ("ready", "busy") for s in
                             browser.find_elements(By.CSS_SELECTOR, "#replicas tr.replica td.state")), 0)


def _replica_cores(browser) -> str:
    return _read(lambda: browser.find_elements(By.CSS_SELECTOR, "#replicas tr.replica td")[4].text, "")


def test_dashboard_shows_replicas_and_rising_counts_and_scales_a_model(deployment, load, browser, tmp_path):
    stack, token = deployment
    assert requests.get(f"{stack.management_url}/dashboard/data", timeout=10).status_code == 200  # no token
    browser.get(f"{stack.management_url}/dashboard")
    wait_for(lambda: _serving(browser) == 1, 60, "the replica to show as serving")
    wait_for(lambda: _replica_cores(browser) not in ("", "—"), 30, "the replica's cores")
    wait_for(lambda: _answers(browser) > 0, 60, "answers to appear")
    first = _answers(browser)
    wait_for(lambda: _answers(browser) > first, 60, "the answer count to rise")
    wait_for(lambda: _throughput(browser) > 0, 60, "a throughput above zero")

    # Without the token the page's scale request is refused; with it, the model gets two replicas.
    Select(browser.find_element(By.ID, "scale-model")).select_by_visible_text("noop:1 (current)")
    count = browser.find_element(By.ID, "scale-count")
    count.clear()
    count.send_keys("2")
    browser.find_element(By.ID, "scale-button").click()
    wait_for(lambda: "refused: HTTP 401" in browser.find_element(By.ID, "scale-msg").text, 30,
             "the scale request without a token to be refused")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "scale-button").click()
    wait_for(lambda: _serving(browser) == 2, READY_S, "two serving replicas on the page")
    wait_for(lambda: _answers(browser) > first + 10, 60, "answers to keep rising")
    time.sleep(6)  # a few more polls, so the charts in the kept screenshot have a history
    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(os.fspath(shot))
    if os.environ.get("SCHOONER_UPDATE_ARTIFACTS") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
