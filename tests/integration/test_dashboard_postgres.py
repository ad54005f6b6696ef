"""The dashboard in headless Chromium (Debian's chromium + chromedriver, via selenium),
served by the API over a fresh PostgreSQL database with seeded scores and alerts.

It logs in with a token, sees the open alerts, sees a new alert arrive over the SSE
stream, clicks "Acknowledge" and "Resolve" and checks the database, opens a patient's
risk/NEWS2 chart, and saves a screenshot to ``var/artifacts/dashboard.png``; and the API's
``/docs`` page renders the schema from the vendored Swagger UI. Markers: ``e2e`` and
``postgres``; it FAILS (never skips) when PostgreSQL or Chromium is missing (`.ci/run`
installs Chromium).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url

from storage import access
from storage.db import AlertRow, ScoreRow, make_engine, migrate, write_alerts, write_scores
from streams.api import create_api

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "var" / "artifacts"
DEFAULT_URL = "postgresql+psycopg://wardwatch:wardwatch@127.0.0.1:5433/wardwatch"
CHROMIUM = os.environ.get("WARDWATCH_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("WARDWATCH_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=47)
PATIENT = "pz-7f3a9c21"


def base_url() -> URL:
    return make_url(os.environ.get("WARDWATCH_TEST_POSTGRES_URL", DEFAULT_URL))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[URL]:
    """A fresh, migrated database for this session; dropped afterwards."""
    admin = make_engine(base_url()).execution_options(isolation_level="AUTOCOMMIT")
    name = f"ww_dash_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL at {base_url().render_as_string(hide_password=True)} is not usable "
            f"({type(e).__name__}: {e}); start it with `make up`",
            pytrace=False,
        )
    url = base_url().set(database=name)
    try:
        migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def seed(engine: Engine) -> None:
    rows = []
    for h in range(48):
        for i, patient in enumerate((PATIENT, "pz-0b42d7e8", "pz-c19e5a30")):
            risk = min(0.05 + (0.018 * h if i == 0 else 0.004 * h * i), 0.99)
            news2 = min(1 + (h // 6 if i == 0 else h // 16), 20)
            rows.append(
                ScoreRow(
                    patient=patient,
                    scored_at=T0 + timedelta(hours=h),
                    model="sepsis_transformer",
                    model_version="1",
                    risk=round(risk, 3),
                    news2=news2,
                    qsofa=min(news2 // 4, 3),
                    sirs=min(news2 // 3, 4),
                    alert=i == 0 and h in (34, 44),
                )
            )
    write_scores(engine, rows)
    write_alerts(
        engine,
        [
            AlertRow(
                alert_id="alert-1", patient=PATIENT, raised_at=T0 + timedelta(hours=34),
                severity="warning", reason="sepsis risk 0.66 >= 0.60", risk=0.662, news2=6,
            ),
            AlertRow(
                alert_id="alert-2", patient=PATIENT, raised_at=T0 + timedelta(hours=44),
                severity="critical", reason="NEWS2 8 >= 7", risk=0.842, news2=8,
            ),
            AlertRow(
                alert_id="alert-3", patient="pz-c19e5a30", raised_at=T0 + timedelta(hours=40),
                severity="info", reason="qSOFA 2", risk=0.37, news2=4,
            ),
        ],
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def engine(pg_url: URL) -> Iterator[Engine]:
    eng = make_engine(pg_url)
    seed(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def server(engine: Engine) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        create_api(engine, stream_poll_s=0.2), host="127.0.0.1", port=port, log_level="warning"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the API server did not start", pytrace=False)
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(
                f"{path} is missing: apt-get install chromium chromium-driver (.ci/run does)",
                pytrace=False,
            )
    profile = tempfile.mkdtemp(prefix="ww-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--no-first-run",
        "--disable-sync", f"--user-data-dir={profile}", "--window-size=1280,1000",
    ):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def alert_status(engine: Engine, alert_id: str) -> tuple[str, str | None]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, acknowledged_by FROM alerts WHERE alert_id = :a"), {"a": alert_id}
        ).one()
    return row[0], row[1]


def test_dashboard_live_alerts_acknowledge_and_chart(
    engine: Engine, server: str, browser: webdriver.Chrome
) -> None:
    token = access.create_token(engine, "ward-7-nurse", "admin")
    wait = WebDriverWait(browser, 20)
    browser.get(server + "/")
    wait.until(ec.visibility_of_element_located((By.ID, "token"))).send_keys(token)
    browser.find_element(By.ID, "login-button").click()

    row = '#alerts tr[data-alert-id="{}"]'
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, row.format("alert-2"))))
    wait.until(ec.text_to_be_present_in_element((By.ID, "conn"), "live"))
    assert browser.execute_script("return sessionStorage.getItem('wardwatch.token')") == token
    assert token not in browser.find_element(By.TAG_NAME, "body").text

    # a new alert stored by the worker arrives over the SSE stream
    write_alerts(
        engine,
        [
            AlertRow(
                alert_id="alert-4", patient="pz-0b42d7e8", raised_at=T0 + timedelta(hours=47),
                severity="warning", reason="sepsis risk 0.61 >= 0.60", risk=0.61, news2=5,
            )
        ],
    )  # fmt: skip
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, row.format("alert-4"))))

    # acknowledge alert-2 in the page; the database records who and when
    browser.find_element(By.CSS_SELECTOR, row.format("alert-2") + " button.ack").click()
    deadline = time.monotonic() + 15
    while alert_status(engine, "alert-2")[0] != "acknowledged":
        assert time.monotonic() < deadline, "alert-2 was not acknowledged in the database"
        time.sleep(0.2)
    assert alert_status(engine, "alert-2") == ("acknowledged", "ward-7-nurse")
    wait.until(
        ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, row.format("alert-2") + " td.status"), "acknowledged"
        )
    )

    # resolve it: the page asks first (dismissing changes nothing), then the database
    # records who and when
    resolve = row.format("alert-2") + " button.resolve"
    browser.find_element(By.CSS_SELECTOR, resolve).click()
    wait.until(ec.alert_is_present()).dismiss()
    time.sleep(0.5)
    assert alert_status(engine, "alert-2") == ("acknowledged", "ward-7-nurse")
    browser.find_element(By.CSS_SELECTOR, resolve).click()
    prompt = wait.until(ec.alert_is_present())
    assert "pz-" in prompt.text
    prompt.accept()
    deadline = time.monotonic() + 15
    while alert_status(engine, "alert-2")[0] != "resolved":
        assert time.monotonic() < deadline, "alert-2 was not resolved in the database"
        time.sleep(0.2)
    with engine.connect() as conn:
        by = conn.execute(text("SELECT resolved_by FROM alerts WHERE alert_id = 'alert-2'"))
        assert by.scalar_one() == "ward-7-nurse"
    wait.until(
        ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, row.format("alert-2") + " td.status"), "resolved by ward-7-nurse"
        )
    )

    # the patient's trajectory: risk and NEWS2 over 48 h with the two alert markers
    browser.find_element(By.CSS_SELECTOR, row.format("alert-1") + " a.patient").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "patient-info"), "48 scores"))
    sizes = browser.execute_script(
        "const c = Chart.getChart('chart');"
        "return c ? c.data.datasets.map(d => d.data.length) : null"
    )
    assert sizes == [48, 48, 2]
    time.sleep(0.5)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    # no PHI: the page shows pseudonyms only (the seeded data has nothing else to show)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert PATIENT in body


def test_docs_page_renders_the_schema_from_vendored_files(
    server: str, browser: webdriver.Chrome
) -> None:
    # Swagger UI 4 could not show FastAPI's OpenAPI 3.1; the vendored 5 must render it.
    browser.get(server + "/docs")
    wait = WebDriverWait(browser, 20)
    title = (By.CSS_SELECTOR, ".swagger-ui .info .title")
    wait.until(ec.text_to_be_present_in_element(title, "WardWatch analyst API"))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".opblock")))
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/scores", "/alerts", "/alerts/{alert_id}/resolve"} <= paths
