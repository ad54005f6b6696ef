"""/fhir/Subscription: create, read, list, delete, $status and $events, by role."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from fhir.subscriptions import PAYLOAD_EXT, SEPSIS_TOPIC
from storage import access, outbox
from storage.db import AlertRow, make_engine, migrate, write_alerts
from streams.api import create_api

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
SUB = {"resourceType": "Subscription", "status": "requested", "criteria": SEPSIS_TOPIC,
       "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:1/hook",
                   "payload": "application/fhir+json", "header": ["X-Key: secret"],
                   "_payload": {"extension": [{"url": PAYLOAD_EXT,
                                               "valueCode": "full-resource"}]}}}  # fmt: skip


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    migrate(url)
    eng = make_engine(url)
    yield eng
    eng.dispose()


def auth(engine: Engine, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access.create_token(engine, f'{role}-user', role)}"}


def post(client: TestClient, headers: dict[str, str], body: Any) -> Any:
    h = headers | {"Content-Type": "application/fhir+json"}
    return client.post("/fhir/Subscription", content=orjson.dumps(body), headers=h)


def test_subscription_lifecycle(engine: Engine) -> None:
    client = TestClient(create_api(engine))
    h = auth(engine, "alerting")
    assert post(client, auth(engine, "analyst"), SUB).status_code == 403
    bad = post(client, h, SUB | {"criteria": "RiskAssessment?"})
    assert bad.status_code == 422 and bad.json()["resourceType"] == "OperationOutcome"
    r = post(client, h, SUB)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert r.headers["location"].endswith(f"/fhir/Subscription/{sid}")
    assert r.json()["status"] == "requested"
    assert "header" not in r.json()["channel"]  # credentials are not echoed
    rows = [AlertRow(alert_id=f"a{i}", patient=f"p{i}", raised_at=T0 + timedelta(hours=i),
                     severity="warning", reason="r",
                     explanation={"risk_assessment": {"resourceType": "RiskAssessment",
                                                      "id": f"a{i}"}})
            for i in range(1, 4)]  # fmt: skip
    write_alerts(engine, rows, outbox.enqueue)
    status = client.get(f"/fhir/Subscription/{sid}/$status", headers=h).json()
    p = {x["name"]: x for x in status["entry"][0]["resource"]["parameter"]}
    assert p["events-since-subscription-start"]["valueString"] == "3"
    assert p["type"]["valueCode"] == "query-status"
    ev = client.get(f"/fhir/Subscription/{sid}/$events?eventsSinceNumber=2&eventsUntilNumber=3",
                    headers=h).json()  # fmt: skip
    nums = [x["part"][0]["valueString"] for x in ev["entry"][0]["resource"]["parameter"]
            if x["name"] == "notification-event"]  # fmt: skip
    assert nums == ["2", "3"]
    assert [e["resource"]["id"] for e in ev["entry"][1:]] == ["a2", "a3"]
    reads = [e for e in access.fetch_audit(engine) if e["action"] == "read"]
    assert len(reads) == 1 and reads[0]["patients"] == ["p2", "p3"]
    assert reads[0]["patient_count"] == 2 and reads[0]["query_sha256"]
    listed = client.get("/fhir/Subscription", headers=h).json()
    assert [e["resource"]["id"] for e in listed["entry"]] == [sid]
    assert client.delete(f"/fhir/Subscription/{sid}", headers=h).json()["status"] == "off"
    assert client.get(f"/fhir/Subscription/{sid}", headers=h).json()["status"] == "off"
    assert client.get("/fhir/Subscription/nope", headers=h).status_code == 404
    assert client.get("/fhir/SubscriptionTopic/sepsis-risk", headers=h).json()["url"] == (
        SEPSIS_TOPIC
    )


def test_openapi_lists_the_subscription_routes(engine: Engine) -> None:
    paths = TestClient(create_api(engine)).get("/openapi.json").json()["paths"]
    assert {"/fhir/Subscription", "/fhir/Subscription/{sid}/$events"} <= set(paths)
