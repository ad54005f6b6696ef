"""The analyst API on SQLite through FastAPI's TestClient: roles, audit, queries,
alert workflow, the SSE stream and the dashboard files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from storage import access
from storage.db import AlertRow, ScoreRow, make_engine, migrate, write_alerts, write_scores
from streams.api import create_api

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    migrate(url)
    eng = make_engine(url)
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
                qsofa=i % 3,
                sirs=i % 4,
                features={"hr": [80.0]},
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


def test_health_ready_docs_and_dashboard(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "schema": "0005_cds_feedback"}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/scores", "/alerts", "/alerts/stream", "/patients/{patient}/timeline"} <= set(paths)
    assert "/alerts/{alert_id}/acknowledge" in paths
    assert "Live alerts" in client.get("/").text
    assert client.get("/static/app.js").status_code == 200
    assert "window.Chart" in client.get("/static/vendor/chart.umd.min.js").text


def test_docs_load_nothing_from_outside(client: TestClient) -> None:
    # A hospital network often has no internet: every script, style and icon of the
    # OpenAPI page must come from this server.
    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(urls) == 3 and all(u.startswith("/static/vendor/swagger-ui/") for u in urls)
    for url in urls:
        assert client.get(url).status_code == 200, url
    assert "url: '/openapi.json'" in page.text
    assert client.get("/redoc").status_code == 404  # ReDoc needs a CDN: off


def test_ready_is_503_without_a_schema(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    assert TestClient(create_api(eng)).get("/ready").status_code == 503
    eng.dispose()


def test_401_without_or_with_a_bad_or_revoked_token(engine: Engine, client: TestClient) -> None:
    for path in ("/scores", "/alerts", "/patients/p0/timeline"):
        r = client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert client.get(path, headers={"Authorization": "Bearer ww_nope"}).status_code == 401
    h = auth(engine, "admin")
    assert client.get("/scores", headers=h).status_code == 200
    access.revoke_token(engine, "admin-user")
    assert client.get("/scores", headers=h).status_code == 401
    assert client.post("/alerts/a1/acknowledge").status_code == 401


@pytest.mark.parametrize(
    ("role", "scores", "alerts", "ack"),
    [("analyst", 200, 200, 403), ("alerting", 403, 200, 200), ("admin", 200, 200, 200)],
)
def test_roles(
    engine: Engine, client: TestClient, role: str, scores: int, alerts: int, ack: int
) -> None:
    h = auth(engine, role)
    assert client.get("/scores", headers=h).status_code == scores
    assert client.get("/patients/p0/timeline", headers=h).status_code == scores
    assert client.get("/alerts", headers=h).status_code == alerts
    assert client.post("/alerts/a1/acknowledge", headers=h).status_code == ack
    assert client.post("/alerts/a2/resolve", headers=h).status_code == ack


def test_scores_filters_and_cursor_pagination(engine: Engine, client: TestClient) -> None:
    h = auth(engine, "analyst")
    seen: list[int] = []
    params: dict[str, str | int] = {"limit": 7}
    while True:
        body = client.get("/scores", headers=h, params=params).json()
        seen += [s["id"] for s in body["scores"]]
        assert all("features" not in s for s in body["scores"])
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert len(seen) == 30 == len(set(seen))
    body = client.get(
        "/scores",
        headers=h,
        params={
            "patient": "p1", "from": "2026-01-01T10:00:00Z", "to": "2026-01-02T00:00:00+00:00",
            "min_risk": 0.2, "model": "sepsis_transformer", "features": "true",
        },
    ).json()  # fmt: skip
    assert body["scores"] and all(
        s["patient"] == "p1" and s["risk"] >= 0.2 and s["features"] == {"hr": [80.0]}
        for s in body["scores"]
    )
    assert all(s["scored_at"] < "2026-01-02" for s in body["scores"])
    assert client.get("/scores", headers=h, params={"cursor": "bad!"}).status_code == 400
    assert client.get("/scores", headers=h, params={"min_risk": 2}).status_code == 422
    assert client.get("/scores", headers=h, params={"from": "2026-01-01T08:00"}).status_code == 422


def test_timeline_and_alert_filters(engine: Engine, client: TestClient) -> None:
    h = auth(engine, "admin")
    tl = client.get("/patients/p0/timeline", headers=h).json()
    assert tl["patient"]["patient"] == "p0" and len(tl["scores"]) == 10
    assert [a["alert_id"] for a in tl["alerts"]] == ["a1"]
    assert client.get("/patients/nobody/timeline", headers=h).status_code == 404
    body = client.get("/alerts", headers=h, params={"severity": "warning"}).json()
    assert [a["alert_id"] for a in body["alerts"]] == ["a2"]
    body = client.get("/alerts", headers=h, params={"since": "2026-01-01T09:00:00Z"}).json()
    assert [a["alert_id"] for a in body["alerts"]] == ["a2"]
    assert client.get("/alerts", headers=h, params={"status": "bogus"}).status_code == 422


def test_acknowledge_and_resolve_record_who_and_when(engine: Engine, client: TestClient) -> None:
    h = auth(engine, "alerting")
    r = client.post("/alerts/a1/acknowledge", headers=h).json()
    assert r["status"] == "acknowledged" and r["acknowledged_by"] == "alerting-user"
    assert r["acknowledged_at"]
    r = client.post("/alerts/a1/resolve", headers=h).json()
    assert r["status"] == "resolved" and r["resolved_by"] == "alerting-user"
    assert client.post("/alerts/a1/acknowledge", headers=h).status_code == 409
    assert client.post("/alerts/zzz/resolve", headers=h).status_code == 404
    body = client.get("/alerts", headers=h, params={"status": "resolved"}).json()
    assert [a["alert_id"] for a in body["alerts"]] == ["a1"]


def test_every_read_of_patient_data_is_audited(engine: Engine, client: TestClient) -> None:
    h = auth(engine, "admin")
    client.get("/scores", headers=h, params={"patient": "p2"})
    client.get("/patients/p0/timeline", headers=h)
    client.get("/alerts", headers=h)
    client.post("/alerts/a2/acknowledge", headers=h)
    client.get("/scores", headers={"Authorization": "Bearer ww_nope"})  # refused: no data
    log = access.fetch_audit(engine)[::-1]
    assert [(e["who"], e["role"], e["action"], e["patient"]) for e in log] == [
        ("admin-user", "admin", "read", "p2"),
        ("admin-user", "admin", "read", "p0"),
        ("admin-user", "admin", "read", None),
        ("admin-user", "admin", "acknowledge", "p1"),
    ]
    assert log[0]["resource"] == "GET /scores?patient=p2"
    assert log[3]["resource"] == "POST /alerts/a2/acknowledge"


def test_alert_stream_sends_new_alerts_in_order(engine: Engine, client: TestClient) -> None:
    h = auth(engine, "alerting")
    # after=0: everything stored so far, as `alert` events with the row id as event id
    with client.stream("GET", "/alerts/stream", headers=h, params={"after": 0, "limit": 2}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = [b for b in text.replace("\r\n", "\n").split("\n\n") if "event: alert" in b]
    assert len(events) == 2
    data = [
        orjson.loads(next(ln[6:] for ln in e.split("\n") if ln.startswith("data: ")))
        for e in events
    ]
    assert [d["alert_id"] for d in data] == ["a1", "a2"]
    assert "id: 1" in events[0]
    # Last-Event-ID resumes after the last one seen; a new alert arrives
    write_alerts(
        engine,
        [AlertRow(alert_id="a3", patient="p2", raised_at=T0, severity="info", reason="r3")],
    )
    with client.stream(
        "GET", "/alerts/stream", headers={**h, "Last-Event-ID": "2"}, params={"limit": 1}
    ) as r:
        text = "".join(r.iter_text())
    assert '"alert_id":"a3"' in text and '"a2"' not in text
    assert client.get("/alerts/stream").status_code == 401
