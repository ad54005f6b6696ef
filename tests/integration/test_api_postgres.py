"""The analyst API against the local PostgreSQL (``make up``; port 5433): roles, the
audit log, queries, the alert workflow and the SSE stream.

The session works in a database of its own (``CREATE DATABASE`` with a random name,
dropped at the end; the role may create databases). If PostgreSQL is down these tests
FAIL, never skip. ``WARDWATCH_TEST_POSTGRES_URL`` overrides the server URL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url

from storage import access
from storage.db import (
    AlertRow,
    ScoreRow,
    head_revision,
    make_engine,
    migrate,
    write_alerts,
    write_scores,
)
from streams.api import create_api

pytestmark = pytest.mark.postgres

DEFAULT_URL = "postgresql+psycopg://wardwatch:wardwatch@127.0.0.1:5433/wardwatch"
T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def base_url() -> URL:
    return make_url(os.environ.get("WARDWATCH_TEST_POSTGRES_URL", DEFAULT_URL))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[URL]:
    """A fresh, migrated database for this session; dropped afterwards."""
    admin = make_engine(base_url()).execution_options(isolation_level="AUTOCOMMIT")
    name = f"ww_api_test_{uuid.uuid4().hex[:10]}"
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


@pytest.fixture
def engine(pg_url: URL) -> Iterator[Engine]:
    eng = make_engine(pg_url)
    with eng.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE scores, alerts, patients, dead_letters, audit_log, api_tokens, "
                "outbox, subscribers, cds_feedback"
            )
        )
    write_scores(
        eng,
        [
            ScoreRow(
                patient=f"p{i % 3}",
                scored_at=T0 + timedelta(hours=i),
                model="sepsis_transformer",
                model_version="1",
                risk=i / 30,
                news2=i % 10,
                news2_breakdown={"respiratory_rate": 1},
                qsofa=i % 3,
                sirs=i % 4,
                features={"hr": [80.0, None]},
            )
            for i in range(30)
        ],
    )
    write_alerts(
        eng,
        [
            AlertRow(alert_id="a1", patient="p0", raised_at=T0, severity="critical", reason="r1"),
            AlertRow(
                alert_id="a2", patient="p1", raised_at=T0 + timedelta(hours=2),
                severity="warning", reason="r2", risk=0.7,
            ),
        ],
    )  # fmt: skip
    yield eng
    eng.dispose()


@pytest.fixture
def client(engine: Engine) -> TestClient:
    return TestClient(create_api(engine, stream_poll_s=0.05))


def auth(engine: Engine, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access.create_token(engine, f'{role}-user', role)}"}


def test_ready_reports_the_schema(client: TestClient) -> None:
    assert client.get("/ready").json() == {"status": "ready", "schema": head_revision()}


def test_tokens_and_roles(engine: Engine, client: TestClient) -> None:
    assert client.get("/scores").status_code == 401
    assert client.get("/alerts", headers={"Authorization": "Bearer ww_x"}).status_code == 401
    analyst, alerting, admin = (auth(engine, r) for r in ("analyst", "alerting", "admin"))
    assert client.get("/scores", headers=analyst).status_code == 200
    assert client.get("/scores", headers=alerting).status_code == 403
    assert client.get("/patients/p0/timeline", headers=alerting).status_code == 403
    assert client.get("/alerts", headers=alerting).status_code == 200
    assert client.post("/alerts/a1/acknowledge", headers=analyst).status_code == 403
    assert client.post("/alerts/a1/acknowledge", headers=alerting).status_code == 200
    assert client.post("/alerts/a1/resolve", headers=admin).status_code == 200
    access.revoke_token(engine, "analyst-user")
    assert client.get("/scores", headers=analyst).status_code == 401
    with engine.connect() as conn:
        hashes = conn.execute(text("SELECT token_sha256 FROM api_tokens")).scalars().all()
    assert len(hashes) == 3 and all(len(h) == 64 for h in hashes)


def test_queries_pagination_and_workflow(engine: Engine, client: TestClient) -> None:
    h = auth(engine, "admin")
    seen: list[int] = []
    params: dict[str, str | int] = {"limit": 8, "min_risk": 0.1}
    while True:
        body = client.get("/scores", headers=h, params=params).json()
        seen += [s["id"] for s in body["scores"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert len(seen) == len(set(seen)) == 27  # risks 3/30 .. 29/30
    body = client.get(
        "/scores", headers=h, params={"patient": "p2", "to": "2026-01-01T20:00:00Z"}
    ).json()
    assert [s["scored_at"][:13] for s in body["scores"]] == [
        "2026-01-01T10", "2026-01-01T13", "2026-01-01T16", "2026-01-01T19",
    ]  # fmt: skip
    tl = client.get("/patients/p1/timeline", headers=h).json()
    assert tl["patient"]["last_risk"] == pytest.approx(28 / 30)
    assert [a["alert_id"] for a in tl["alerts"]] == ["a2"]
    r = client.post("/alerts/a2/acknowledge", headers=h).json()
    assert r["status"] == "acknowledged" and r["acknowledged_by"] == "admin-user"
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM alerts WHERE alert_id = 'a2'")).mappings().one()
    assert row["status"] == "acknowledged" and row["acknowledged_at"] is not None
    assert (
        client.get("/alerts", headers=h, params={"status": "open"}).json()["alerts"][0]["alert_id"]
        == "a1"
    )


def test_every_read_is_audited(engine: Engine, client: TestClient) -> None:
    h = auth(engine, "analyst")
    client.get("/scores", headers=h, params={"patient": "p1"})
    client.get("/patients/p2/timeline", headers=h)
    client.get("/alerts", headers=h, params={"severity": "critical"})
    client.post("/alerts/a1/acknowledge", headers=h)  # 403: not audited as a change
    client.get("/scores")  # 401
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT who, role, action, resource, patient, at, patients FROM audit_log "
                "ORDER BY id"
            )
        ).all()
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        ("analyst-user", "analyst", "read", "GET /scores?patient=p1", "p1"),
        ("analyst-user", "analyst", "read", "GET /patients/p2/timeline", "p2"),
        # the one critical alert is p0's: a list read names the patients it returned
        ("analyst-user", "analyst", "read", "GET /alerts?severity=critical", "p0"),
    ]
    assert all(r[5].tzinfo is not None for r in rows)
    assert [r[6] for r in rows] == [["p1"], ["p2"], ["p0"]]


def test_alert_stream(engine: Engine, client: TestClient) -> None:
    h = auth(engine, "alerting")
    write_alerts(
        engine,
        [AlertRow(alert_id="a3", patient="p2", raised_at=T0, severity="info", reason="r3")],
    )
    with client.stream("GET", "/alerts/stream", headers=h, params={"after": 0, "limit": 3}) as r:
        text_ = "".join(r.iter_text())
    data = [
        orjson.loads(line[6:])
        for line in text_.replace("\r\n", "\n").split("\n")
        if line.startswith("data: ")
    ]
    assert [d["alert_id"] for d in data] == ["a1", "a2", "a3"]
