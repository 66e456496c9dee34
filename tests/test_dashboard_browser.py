"""The dashboard in a real browser: Debian's chromium driven by Selenium against the app under gunicorn.

Every page loads without console errors and without serious or critical axe-core violations, at
1280 and 375 pixels wide (screenshots go to build/screenshots/); search, sort, paging, the CSV
download and signing in and out are done as a person would.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from riskwatch.core.config import Config, load_config
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.state.artifacts import current_version_folder, load_deployed_version
from riskwatch.web.dashboard import URL_PREFIX
from tests.helpers import (
    PROJECT_ROOT,
    active_clients,
    add_monitored_runs,
    add_runs,
    deploy,
    serving_api,
    skip_or_fail,
    train_and_score,
    write_clients,
    write_config,
)

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "browser-test-token"
PAGES = {
    "overview": "/",
    "clients": "/clients",
    "model-health": "/model-health",
    "model": "/model",
    "runs": "/runs",
    "diagnostics": "/system",
}
WIDTHS = (1280, 375)
SCREENSHOTS = PROJECT_ROOT / "build" / "screenshots"
BAD_IMPACTS = ("serious", "critical")


def find_browser() -> str | None:
    """Why the browser tests cannot run, or None when chromium and its driver are here (installed if need be)."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium", "chromium-driver"]):
            subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        if CHROMIUM.exists() and CHROMEDRIVER.exists():
            return None
    return "chromium and chromedriver are missing and cannot be installed here (run .ci/run as root)"


def build_project(root: Path) -> Config:
    """A small deployed project (two versions) with a run history, the monitoring statistics' tests included."""
    write_clients(root / "sourceddata" / "clients_a.csv", 600, seed=1)
    write_clients(root / "sourceddata" / "clients_b.csv", 400, seed=2)
    write_clients(root / "testdata" / "testdata.csv", 500, seed=3)
    config = load_config(write_config(root))
    ingest_folder(config.input_folder_path, config.output_folder_path)
    train_and_score(config, C=0.01)
    deploy(config)
    train_and_score(config)
    deploy(config)
    add_runs(config)
    add_monitored_runs(config)
    return config


def new_driver(downloads: Path, javascript: bool = True):  # noqa: ANN201 (selenium's WebDriver)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-profile-')}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    prefs = {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    if not javascript:
        prefs["profile.managed_default_content_settings.javascript"] = 2
    options.add_experimental_option("prefs", prefs)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.set_window_size(1280, 900)
    return driver


def sign_in(driver, url: str, token: str = TOKEN) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/sign-in")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form.sign-in button").click()
    # The answer has replaced the form: the page asked for, or the form again saying why the token was refused. Its
    # content is waited for, not the old button's staleness: chromium may answer a question about a node of the page
    # it has dropped with "Node with given id does not belong to the document" instead of a stale element.
    wait_for(lambda: "/sign-in" not in driver.current_url or driver.find_elements(By.CSS_SELECTOR, "[role=alert]"))


def console_errors(driver) -> list[str]:  # noqa: ANN001
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def axe_violations(driver) -> list[str]:  # noqa: ANN001
    """The serious and critical axe-core violations on the page, one line each."""
    from axe_selenium_python import Axe

    axe = Axe(driver)
    axe.inject()
    results = axe.run()
    return [
        f"{rule['id']} ({rule['impact']}): {rule['help']} at {[node['target'] for node in rule['nodes']][:3]}"
        for rule in results["violations"]
        if rule["impact"] in BAD_IMPACTS
    ]


def screenshot(driver, path: Path, width: int) -> Path:  # noqa: ANN001
    """The whole page at ``width`` pixels wide."""
    driver.set_window_size(width, 900)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(int(height), 600), 6000))
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)
    return path


def wait_for(check, timeout: float = 10):  # noqa: ANN001, ANN201
    """``check()``'s first truthy value; a page still being replaced counts as not yet.

    Chromium reports a node of a page being replaced as stale, missing, or "not belonging to the document": any
    error of the driver while waiting is taken as not yet, and the last one is given as the cause of a timeout.
    """
    from selenium.common.exceptions import WebDriverException

    deadline, last_error = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            value = check()
        except WebDriverException as error:
            value, last_error = None, error
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting in the browser") from last_error


@pytest.fixture(scope="module")
def browser_ready() -> None:
    reason = find_browser()
    if reason:
        skip_or_fail(reason)


@pytest.fixture(scope="module")
def site(browser_ready, tmp_path_factory) -> Iterator[tuple[str, Config]]:
    config = build_project(tmp_path_factory.mktemp("dashboard-site"))
    with serving_api(config.path, env={"RISK_API_TOKEN": TOKEN}) as url:
        yield f"{url}{URL_PREFIX}", config


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


@pytest.fixture
def driver(browser_ready, downloads):  # noqa: ANN201
    browser = new_driver(downloads)
    try:
        yield browser
    finally:
        browser.quit()


def test_every_page_loads_cleanly_passes_axe_and_is_photographed(site, driver):
    url, _ = site
    sign_in(driver, url)
    found: dict[str, list[str]] = {}
    for name, path in PAGES.items():
        driver.get(f"{url}{path}")
        assert driver.find_element("css selector", "h1").text
        found[f"{name} console"] = console_errors(driver)
        for width in WIDTHS:
            screenshot(driver, SCREENSHOTS / f"{name}-{width}.png", width)
            driver.set_window_size(width, 900)
            found[f"{name} axe at {width}px"] = axe_violations(driver)
            overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            found[f"{name} wider than {width}px"] = [f"{overflow}px"] if overflow > 1 else []
        driver.set_window_size(1280, 900)
    assert {key: value for key, value in found.items() if value} == {}


def test_the_model_health_page_draws_the_calibration_and_integrity_tests(site, driver):
    url, _ = site
    sign_in(driver, url)
    driver.get(f"{url}/model-health")
    headings = [element.text for element in driver.find_elements("css selector", "h2")]
    calibration = "Exits observed in each labelled batch, against those the serving model expected"
    integrity = "Data integrity: how far each batch's rows lie from the training rows' principal axes"
    assert calibration in headings and integrity in headings, headings
    charts = driver.find_elements("css selector", "figure svg, svg[role='img']")
    assert len(charts) >= 6, len(charts)  # F1, calibration, drift, integrity, missing cells, run times
    driver.get(f"{url}/")
    assert "672 observed (+14%), outside the range" in driver.find_element("tag name", "main").text


def test_a_client_page_and_the_sign_in_page_pass_axe(site, driver):
    url, config = site
    ids, _ = active_clients(config)
    driver.get(f"{url}/sign-in")
    assert console_errors(driver) == [] and axe_violations(driver) == []
    for width in WIDTHS:
        screenshot(driver, SCREENSHOTS / f"sign-in-{width}.png", width)
    sign_in(driver, url)
    driver.get(f"{url}/sign-in")
    assert "Overview" in driver.title  # a signed-in person is sent on
    driver.get(f"{url}/clients/{ids[0]}")
    assert driver.find_element("css selector", "h1").text == f"Client {ids[0]}"
    assert console_errors(driver) == [] and axe_violations(driver) == []
    for width in WIDTHS:
        screenshot(driver, SCREENSHOTS / f"client-{width}.png", width)


def test_search_for_a_client_and_open_its_page(site, driver):
    from selenium.webdriver.common.by import By

    url, config = site
    ids, _ = active_clients(config)
    sign_in(driver, url)
    driver.get(f"{url}/clients")
    box = driver.find_element(By.ID, "q")
    box.send_keys(ids[3])
    box.submit()
    wait_for(lambda: f"q={ids[3]}" in driver.current_url)
    links = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "table.clients tbody a"))
    assert ids[3] in [link.text for link in links]
    next(link for link in links if link.text == ids[3]).click()
    wait_for(lambda: "/clients/" in driver.current_url)  # the client's page has replaced the table's (and its h1)
    assert wait_for(lambda: driver.find_element(By.TAG_NAME, "h1").text) == f"Client {ids[3]}"
    assert "risk most" in driver.find_element(By.CSS_SELECTOR, "p.lead").text or "average" in driver.page_source


def test_sort_and_page_the_table(site, driver):
    from selenium.webdriver.common.by import By

    url, _ = site
    sign_in(driver, url)
    driver.get(f"{url}/clients?per=25")
    driver.find_element(By.LINK_TEXT, "Head-count").click()
    wait_for(lambda: "sort=number_of_employees" in driver.current_url)
    header = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "th[aria-sort]"))
    assert "Head-count" in header.text and header.get_attribute("aria-sort") == "descending"
    counts = [
        int(cell.text.replace(",", "")) for cell in driver.find_elements(By.CSS_SELECTOR, "tbody td:nth-child(6)")
    ]
    assert counts == sorted(counts, reverse=True) and len(counts) == 25
    driver.find_element(By.PARTIAL_LINK_TEXT, "Next").click()
    wait_for(lambda: "page=2" in driver.current_url and "Showing 26–50" in driver.page_source)
    more = [int(cell.text.replace(",", "")) for cell in driver.find_elements(By.CSS_SELECTOR, "tbody td:nth-child(6)")]
    assert max(more) <= min(counts)


def test_the_downloaded_csv_holds_the_models_probabilities(site, driver, downloads):
    from selenium.webdriver.common.by import By

    url, config = site
    sign_in(driver, url)
    driver.get(f"{url}/clients")
    driver.find_element(By.PARTIAL_LINK_TEXT, "as CSV").click()
    files = wait_for(lambda: [path for path in downloads.glob("*.csv")], timeout=20)
    with files[0].open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    ids, features = active_clients(config)
    model = load_deployed_version(current_version_folder(config.prod_deployment_path)).model
    expected = dict(zip(ids, model.predict_proba(features)[:, 1].tolist(), strict=True))
    assert len(rows) == len(ids)
    np.testing.assert_array_equal(
        [float(row["probability"]) for row in rows], [expected[row["corporation"]] for row in rows]
    )


def test_sign_in_with_a_wrong_token_then_the_right_one_then_sign_out(site, driver):
    from selenium.webdriver.common.by import By

    url, _ = site
    driver.get(f"{url}/runs")
    assert "/sign-in" in driver.current_url and TOKEN not in driver.current_url
    sign_in(driver, url, "not-the-token")
    assert "not the one" in driver.find_element(By.CSS_SELECTOR, "[role=alert]").text
    driver.get(f"{url}/runs")
    sign_in_here = driver.find_element(By.ID, "token")
    sign_in_here.send_keys(TOKEN)
    sign_in_here.submit()
    wait_for(lambda: "/sign-in" not in driver.current_url and driver.current_url.endswith("/runs"))
    assert TOKEN not in driver.current_url
    cookie = driver.get_cookie("risk_dashboard")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    driver.find_element(By.CSS_SELECTOR, ".sign-out button").click()
    wait_for(lambda: "/sign-in" in driver.current_url)
    driver.get(f"{url}/")
    assert "/sign-in" in driver.current_url


def test_the_pages_work_with_javascript_off(site, browser_ready, tmp_path):
    from selenium.webdriver.common.by import By

    url, config = site
    ids, _ = active_clients(config)
    driver = new_driver(tmp_path, javascript=False)
    try:
        sign_in(driver, url)
        driver.get(f"{url}/clients")
        box = driver.find_element(By.ID, "q")
        box.send_keys(ids[5])
        box.submit()
        wait_for(lambda: f"q={ids[5]}" in driver.current_url)
        wait_for(lambda: ids[5] in [a.text for a in driver.find_elements(By.CSS_SELECTOR, "table.clients tbody a")])
        driver.get(f"{url}/runs")
        details = driver.find_element(By.CSS_SELECTOR, "td.decision details")
        details.find_element(By.TAG_NAME, "summary").click()
        assert details.get_attribute("open") is not None
    finally:
        driver.quit()
