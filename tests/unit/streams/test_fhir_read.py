"""FHIR R4 read and search of stored scores as RiskAssessment through the API on
SQLite: searchset Bundles, date prefixes, sort, paging, unknown parameters, roles, the
audit log, and the CapabilityStatement; every resource validated with fhir.resources'
R4B models (R4B shares R4's RiskAssessment, Bundle and CapabilityStatement)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.riskassessment import RiskAssessment
from sqlalchemy import Engine

from storage import access
from storage.db import ScoreRow, make_engine, migrate, write_scores
from streams.api import create_api

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
P = "pt-aaaaaaaaaaaaaaaaaaaa"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'fhir.db'}"
    migrate(url)
    eng = make_engine(url)
    # 48 hourly scores of P from 2026-01-01T08:00Z, one degraded; one score of another.
    rows = [
        ScoreRow(
            patient=P, scored_at=T0 + timedelta(hours=i), model="sepsis_transformer",
            model_version="3", risk=None if i == 5 else i / 100, degraded=i == 5,
            news2=i % 8, qsofa=i % 3, sirs=1,
        )
        for i in range(48)
    ]  # fmt: skip
    rows.append(
        ScoreRow(
            patient="pt-other", scored_at=T0, model="sepsis_transformer", model_version="3",
            risk=0.5, news2=1, qsofa=0, sirs=0,
        )
    )  # fmt: skip
    write_scores(eng, rows)
    yield eng
    eng.dispose()


@pytest.fixture
def client(engine: Engine) -> TestClient:
    return TestClient(create_api(engine))


@pytest.fixture
def analyst(engine: Engine) -> dict[str, str]:
    return {"Authorization": f"Bearer {access.create_token(engine, 'ana', 'analyst')}"}


def search(client: TestClient, headers: dict[str, str], query: str) -> dict[str, Any]:
    r = client.get(f"/fhir/RiskAssessment?{query}", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = r.json()
    Bundle.model_validate(body)
    for e in body.get("entry", []):
        if e["search"]["mode"] == "match":
            RiskAssessment.model_validate(e["resource"])
    return body


def times(bundle: dict[str, Any]) -> list[str]:
    return [
        e["resource"]["occurrenceDateTime"]
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "match"
    ]


def test_search_by_subject_date_sort_and_count(
    client: TestClient, analyst: dict[str, str], engine: Engine
) -> None:
    b = search(client, analyst, f"subject=Patient/{P}&date=ge2026-01-02&_sort=-date&_count=5")
    assert b["type"] == "searchset" and b["total"] == 48 - 16  # from 2026-01-02T00:00Z
    assert times(b) == [f"2026-01-03T{h:02d}:00:00Z" for h in (7, 6, 5, 4, 3)]
    first = b["entry"][0]
    assert first["fullUrl"] == f"http://testserver/fhir/RiskAssessment/{first['resource']['id']}"
    assert first["resource"]["subject"] == {"reference": f"Patient/{P}"}
    assert first["resource"]["prediction"][0]["outcome"]["coding"][0]["code"] == "91302008"
    links = {link["relation"]: link["url"] for link in b["link"]}
    assert "_offset=5" in links["next"] and "_count=5" in links["next"]
    entry = access.fetch_audit(engine, limit=1)[0]
    assert entry["patients"] == [P] and entry["patient_count"] == 1 and entry["query_sha256"]
    assert (
        entry["patient"] == P
        and entry["action"] == "read"
        and "RiskAssessment" in entry["resource"]
    )


def test_paging_by_next_link_returns_every_score_once(
    client: TestClient, analyst: dict[str, str]
) -> None:
    seen: list[str] = []
    url: str | None = f"/fhir/RiskAssessment?patient={P}&_count=20"
    while url is not None:
        r = client.get(url, headers=analyst)
        b = r.json()
        Bundle.model_validate(b)
        seen += times(b)
        url = next((lk["url"] for lk in b["link"] if lk["relation"] == "next"), None)
    assert len(seen) == 48 and seen == sorted(seen) and len(set(seen)) == 48


@pytest.mark.parametrize(
    ("date", "n"),
    [
        ("ge2026-01-01T10:00:00Z", 46),
        ("gt2026-01-01T10:00:00Z", 45),
        ("le2026-01-01T10:00:00Z", 3),
        ("lt2026-01-01T10:00:00Z", 2),
        ("eq2026-01-01T10:00:00Z", 1),
        ("2026-01-02", 24),
        ("lt2026-01-02", 16),
        ("le2026-01-02", 40),
        ("gt2026-01", 0),
        ("2026", 48),
    ],
)
def test_date_prefixes(client: TestClient, analyst: dict[str, str], date: str, n: int) -> None:
    b = search(client, analyst, f"subject={P}&date={date.replace(':', '%3A')}")
    assert b["total"] == n


def test_two_date_bounds_and_a_degraded_score(client: TestClient, analyst: dict[str, str]) -> None:
    b = search(
        client, analyst, f"subject={P}&date=ge2026-01-01T12:00:00Z&date=lt2026-01-01T14:00:00Z"
    )
    assert times(b) == ["2026-01-01T12:00:00Z", "2026-01-01T13:00:00Z"]
    degraded = search(client, analyst, f"subject={P}&date=eq2026-01-01T13:00:00Z")["entry"][0]
    assert "probabilityDecimal" not in degraded["resource"]["prediction"][0]
    assert any("Degraded" in n["text"] for n in degraded["resource"]["note"])


def test_unknown_parameters_lenient_by_default_strict_on_request(
    client: TestClient, analyst: dict[str, str]
) -> None:
    b = search(client, analyst, f"subject={P}&_count=1&colour=blue")
    outcome = [e for e in b["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcome) == 1 and "colour" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    assert all("colour" not in lk["url"] for lk in b["link"])
    r = client.get(
        f"/fhir/RiskAssessment?subject={P}&colour=blue",
        headers={**analyst, "Prefer": "handling=strict"},
    )
    assert r.status_code == 400
    OperationOutcome.model_validate(r.json())


@pytest.mark.parametrize(
    "query",
    ["date=ne2026-01-01", "date=2026-13-01", "date=2026-01-01T10:00:00", "date=yesterday",
     f"subject=Patient/{P}&patient=pt-other", "subject=Observation/1/x"],
)  # fmt: skip
def test_bad_values_are_a_400_operation_outcome(
    client: TestClient, analyst: dict[str, str], query: str
) -> None:
    r = client.get(f"/fhir/RiskAssessment?{query}", headers=analyst)
    assert r.status_code == 400, query
    OperationOutcome.model_validate(r.json())


def test_read_by_id_and_404(client: TestClient, analyst: dict[str, str], engine: Engine) -> None:
    b = search(client, analyst, "subject=pt-other")
    rid = b["entry"][0]["resource"]["id"]
    r = client.get(f"/fhir/RiskAssessment/{rid}", headers=analyst)
    assert r.status_code == 200
    ra = RiskAssessment.model_validate(r.json())
    assert ra.subject.reference == "Patient/pt-other"
    assert access.fetch_audit(engine, limit=1)[0]["patient"] == "pt-other"
    for bad in ("score-999999", "nonsense", "score-x"):
        r = client.get(f"/fhir/RiskAssessment/{bad}", headers=analyst)
        assert r.status_code == 404
        OperationOutcome.model_validate(r.json())


def test_roles_apply(client: TestClient, engine: Engine) -> None:
    assert client.get("/fhir/RiskAssessment").status_code == 401
    alerting = {"Authorization": f"Bearer {access.create_token(engine, 'al', 'alerting')}"}
    assert client.get("/fhir/RiskAssessment", headers=alerting).status_code == 403
    assert client.get("/fhir/RiskAssessment/score-1", headers=alerting).status_code == 403


def test_capability_statement(client: TestClient) -> None:
    r = client.get("/fhir/metadata")
    assert r.status_code == 200
    CapabilityStatement.model_validate(r.json())
    cs = r.json()
    assert cs["kind"] == "instance" and cs["fhirVersion"] == "4.0.1" and cs["format"] == ["json"]
    (res,) = cs["rest"][0]["resource"]
    assert res["type"] == "RiskAssessment"
    assert {i["code"] for i in res["interaction"]} == {"read", "search-type"}
    assert {"subject", "patient", "date"} <= {p["name"] for p in res["searchParam"]}
    assert "Bearer" in cs["rest"][0]["security"]["description"]
