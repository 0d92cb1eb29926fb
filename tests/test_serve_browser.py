"""xflow serve's web view in a real headless browser: Debian's chromium driven by Selenium (chromium-driver).

The page loads with the workflow's graph and the executions table; a failed execution opened from the table marks
the failing function failed in the graph and shows its error and log lines; re-driving it (after the cause is
removed) turns its row green without reloading the page; an event published from the page's form shows up; with a
token the page asks for it once. A screenshot of each state is saved under the test's tmp folder (the path printed).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_testing import Server, start_server, wait_for, write_shop

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="Debian's chromium and chromium-driver are not installed "
                                       "(source .ci/install-browser.sh)")


@pytest.fixture
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1366,860", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _shot(driver: Any, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path)), "the browser took no screenshot"
    print(f"screenshot: {path}")
    return path


def _css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def _row_status(driver: Any, execution_id: str) -> str | None:
    return driver.execute_script(
        "const row = [...document.querySelectorAll('#executions-table tbody tr')]"
        ".find(r => r.dataset.executionId === arguments[0]); return row ? row.dataset.status : null;", execution_id)


def _graph_state(driver: Any, function: str) -> str:
    return str(driver.execute_script(
        "const node = [...document.querySelectorAll('#graph svg .node.function')]"
        ".find(n => n.dataset.function === arguments[0]); return node ? node.getAttribute('class') : '';", function))


@pytest.fixture
def shop_server(tmp_path: Path) -> Iterator[Server]:
    server = start_server(tmp_path, write_shop(tmp_path / "flows"))
    yield server
    assert server.stop() == 0


def test_web_view_shows_a_failure_and_redrives_it_live(browser: Any, shop_server: Server, tmp_path: Path) -> None:
    server = shop_server
    gate = tmp_path / "card-blocked"
    gate.write_text("blocked")
    ok = server.post("/workflows/shop/events/Placed", json={"order": 1}).json()["execution_id"]
    bad = server.post("/workflows/shop/events/Placed", json={"order": 2, "fail_while": str(gate)}).json()["execution_id"]
    for execution_id in (ok, bad):
        wait_for(lambda x=execution_id: server.get(f"/workflows/shop/executions/{x}").json()["status"] != "running",
                 90, f"execution {execution_id} settling")

    browser.get(server.url + "/")
    wait_for(lambda: _css(browser, "#graph svg .node.function"), 30, "the graph")
    names = {n.get_attribute("data-function") for n in _css(browser, "#graph svg .node.function")}
    assert names == {"charge", "ship"}
    assert {n.get_attribute("data-event") for n in _css(browser, "#graph svg .node.event")} == {
        "Placed", "Charged", "Shipped"}
    wait_for(lambda: _row_status(browser, bad) == "failed" and _row_status(browser, ok) == "succeeded", 30,
             "both executions in the table")
    browser.execute_script("window.xflowNotReloaded = true;")

    row = next(r for r in _css(browser, "#executions-table tbody tr") if r.get_attribute("data-execution-id") == bad)
    row.click()
    wait_for(lambda: "state-failed" in _graph_state(browser, "charge"), 30, "charge marked failed in the graph")
    assert "state-not_reached" in _graph_state(browser, "ship")
    failure = wait_for(lambda: _css(browser, "#failures .failure"), 30, "the failure box")[0]
    assert failure.get_attribute("data-function") == "charge"
    assert "card declined: the bank said no" in failure.text
    assert "card declined for order 2" in failure.text  # the handler's log line
    assert "after 1 attempts" in failure.text
    assert _css(browser, "#detail-last")[0].text == "Placed"
    _shot(browser, tmp_path, "serve-failed-execution")

    gate.unlink()  # the cause is fixed: re-drive from the page
    _css(browser, "#redrive")[0].click()
    wait_for(lambda: _row_status(browser, bad) == "succeeded", 90, "the re-driven execution's row turning succeeded")
    wait_for(lambda: "state-succeeded" in _graph_state(browser, "ship"), 30, "ship marked succeeded in the graph")
    assert "Re-driven: Placed for charge" in _css(browser, "#message")[0].text
    assert browser.execute_script("return window.xflowNotReloaded === true;"), "the page was reloaded"
    assert not _css(browser, "#failures .failure")

    # publish from the page's form: a new execution appears and opens, and goes green
    data = _css(browser, "#publish-data")[0]
    data.clear()
    data.send_keys('{"order": 3}')
    _css(browser, "#publish-execution")[0].send_keys("from-the-page")
    _css(browser, "#publish-button")[0].click()
    wait_for(lambda: _row_status(browser, "from-the-page") == "succeeded", 90, "the published execution succeeding")
    assert browser.execute_script("return window.xflowNotReloaded === true;")
    _shot(browser, tmp_path, "serve-web-view")


def test_web_view_asks_for_the_token_once(browser: Any, tmp_path: Path) -> None:
    token = "page-token-" + "z" * 16
    server = start_server(tmp_path, write_shop(tmp_path / "flows"), "--no-worker", token=token)
    try:
        browser.get(server.url + "/")
        form = wait_for(lambda: [f for f in _css(browser, "#token-form") if f.is_displayed()], 30, "the token form")
        assert not _css(browser, "#main")[0].is_displayed()
        _css(browser, "#token-input")[0].send_keys(token)
        form[0].find_element("css selector", "button").click()
        wait_for(lambda: _css(browser, "#graph svg .node.function"), 30, "the graph after the token")
        browser.refresh()  # kept for the tab: not asked again
        wait_for(lambda: _css(browser, "#graph svg .node.function"), 30, "the graph after a reload")
        assert not _css(browser, "#token-form")[0].is_displayed()
        browser.get(server.url + "/docs")
        wait_for(lambda: "/workflows/{workflow_id}/events/{event}" in _css(browser, "#routes")[0].text, 30,
                 "the API page")
    finally:
        assert server.stop() == 0
