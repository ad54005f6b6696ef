"""The CDS Hooks service tested like an EHR: its own EC key pair, a JWKS file, signed
JWTs, discovery, patient-view on a database with scores and an open alert of a
pseudonymised patient, 401s for bad tokens, and feedback counts.

CDS Hooks 2.0 publishes no JSON schemas (HL7/cds-hooks at tag v2.0.1 holds prose only;
the later logical models are drafts for the next version), so the cards are checked
against the CDS Hooks 2.0 rules themselves (summary < 140
characters, indicator info/warning/critical, source.label, selectionBehavior with
suggestions, every action typed and described, create actions carrying a resource)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from fhir.pseudonym import pseudonymise
from storage import access
from storage.db import AlertRow, ScoreRow, make_engine, migrate, write_alerts, write_scores
from streams.api import create_api
from streams.settings import Settings

KEY = "unit-test-pseudonym-key-0123456789abcdef"
EHR = "https://ehr.example.org"
URL = "http://testserver/cds-services/wardwatch-sepsis"
T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def ehr_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture
def jwks_file(tmp_path: Path, ehr_key: ec.EllipticCurvePrivateKey) -> Path:
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(ehr_key.public_key(), as_dict=True)
    path = tmp_path / "ehr-jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "ehr-1", "alg": "ES384", "use": "sig"}]}))
    return path


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'cds.db'}"
    migrate(url)
    eng = make_engine(url)
    sick = pseudonymise("ehr-patient-42", KEY.encode())
    well = pseudonymise("ehr-patient-7", KEY.encode())
    write_scores(
        eng,
        [
            ScoreRow(
                patient=sick, scored_at=T0 + timedelta(hours=i), model="sepsis_transformer",
                model_version="3", risk=0.1 * (i + 1), news2=5 + i, qsofa=1, sirs=2,
                news2_breakdown={"respiratory_rate": 3},
            )
            for i in range(3)
        ]
        + [
            ScoreRow(
                patient=well, scored_at=T0, model="sepsis_transformer", model_version="3",
                risk=0.02, news2=0, qsofa=0, sirs=0,
            )
        ],
    )  # fmt: skip
    write_alerts(
        eng,
        [
            AlertRow(
                alert_id="al-1", patient=sick, raised_at=T0 + timedelta(hours=2),
                severity="critical", reason="risk above threshold", risk=0.3, news2=7,
            )
        ],
    )  # fmt: skip
    yield eng
    eng.dispose()


@pytest.fixture
def client(engine: Engine, jwks_file: Path) -> TestClient:
    settings = Settings(
        pseudonym_key=KEY, cds_jwks=str(jwks_file), cds_issuers=f"{EHR}, https://other.example"
    )
    return TestClient(create_api(engine, settings=settings))


def token(key: Any, *, aud: str = URL, iss: str = EHR, ttl: int = 120, **extra: Any) -> str:
    now = int(time.time())
    claims = {"iss": iss, "aud": aud, "iat": now, "exp": now + ttl, "jti": str(uuid.uuid4())}
    claims.update(extra)
    return jwt.encode(claims, key, algorithm="ES384", headers={"kid": "ehr-1"})


def hook_body(patient_id: str, hook: str = "patient-view") -> dict[str, Any]:
    return {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": "https://ehr.example.org/fhir",
        "fhirAuthorization": {
            "access_token": "x", "token_type": "Bearer", "scope": "patient/*.read",
            "subject": "cds",
        },
        "context": {"userId": "Practitioner/1", "patientId": patient_id},
        "prefetch": {"patient": {"resourceType": "Patient", "id": patient_id}},
    }  # fmt: skip


def check_card(card: dict[str, Any]) -> None:
    """The CDS Hooks 2.0 Card rules (https://cds-hooks.hl7.org/2.0/#card-attributes)."""
    assert isinstance(card["summary"], str) and 0 < len(card["summary"]) < 140
    assert card["indicator"] in ("info", "warning", "critical")
    assert isinstance(card["source"]["label"], str) and card["source"]["label"]
    uuid.UUID(card["uuid"])
    if card.get("suggestions"):
        assert card["selectionBehavior"] in ("at-most-one", "any")
        for s in card["suggestions"]:
            assert s["label"]
            uuid.UUID(s["uuid"])
            for a in s["actions"]:
                assert a["type"] in ("create", "update", "delete") and a["description"]
                if a["type"] == "create":
                    assert a["resource"]["resourceType"]
    for link in card.get("links", []):
        assert link["label"] and link["url"] and link["type"] in ("absolute", "smart")


def test_discovery_lists_both_hooks_with_a_prefetch(client: TestClient) -> None:
    services = {s["id"]: s for s in client.get("/cds-services").json()["services"]}
    assert services["wardwatch-sepsis"]["hook"] == "patient-view"
    assert services["wardwatch-sepsis-encounter"]["hook"] == "encounter-start"
    for s in services.values():
        assert s["title"] and s["description"]
        assert s["prefetch"] == {"patient": "Patient/{{context.patientId}}"}


def test_patient_view_cards_from_the_latest_score_and_open_alert(
    client: TestClient, engine: Engine, ehr_key: ec.EllipticCurvePrivateKey
) -> None:
    r = client.post(
        "/cds-services/wardwatch-sepsis",
        json=hook_body("ehr-patient-42"),
        headers={"Authorization": f"Bearer {token(ehr_key)}"},
    )
    assert r.status_code == 200, r.text
    (card,) = r.json()["cards"]
    check_card(card)
    assert card["indicator"] == "critical"
    assert "30%" in card["summary"] and "NEWS2 7 (high)" in card["summary"]
    assert "2026-01-01T10:00:00Z" in card["detail"] and "not a diagnosis" in card["detail"]
    assert "qSOFA:** 1" in card["detail"]
    resources = [a["resource"] for s in card["suggestions"] for a in s["actions"]]
    assert {r["resourceType"] for r in resources} == {"ServiceRequest"}
    assert all(r["subject"]["reference"] == "Patient/ehr-patient-42" for r in resources)
    # Audited under the pseudonym; the EHR's id appears nowhere in the audit log.
    entry = access.fetch_audit(engine, limit=1)[0]
    assert entry["patient"] == pseudonymise("ehr-patient-42", KEY.encode())
    assert entry["who"] == f"cds:{EHR}" and entry["role"] == "cds-client"
    assert "ehr-patient-42" not in str(access.fetch_audit(engine))


def test_no_alert_is_an_info_card_and_no_score_no_cards(
    client: TestClient, ehr_key: ec.EllipticCurvePrivateKey
) -> None:
    def call(pid: str, service: str = "wardwatch-sepsis", hook: str = "patient-view") -> Any:
        aud = f"http://testserver/cds-services/{service}"
        return client.post(
            f"/cds-services/{service}",
            json=hook_body(pid, hook),
            headers={"Authorization": f"Bearer {token(ehr_key, aud=aud)}"},
        )

    (card,) = call("ehr-patient-7").json()["cards"]
    check_card(card)
    assert card["indicator"] == "info" and "suggestions" not in card
    assert call("never-scored").json() == {"cards": []}
    enc = call("ehr-patient-42", "wardwatch-sepsis-encounter", "encounter-start")
    assert enc.json()["cards"][0]["indicator"] == "critical"
    assert call("ehr-patient-42", "wardwatch-sepsis-encounter").status_code == 400  # wrong hook


def test_untrusted_tokens_are_401(
    client: TestClient, ehr_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    def status(headers: dict[str, str]) -> int:
        r = client.post(
            "/cds-services/wardwatch-sepsis", json=hook_body("ehr-patient-42"), headers=headers
        )
        return int(r.status_code)

    forger = ec.generate_private_key(ec.SECP384R1())
    now = int(time.time())
    assert status({}) == 401
    assert status({"Authorization": "Bearer not-a-jwt"}) == 401
    assert status({"Authorization": f"Bearer {token(forger)}"}) == 401  # forged
    expired = token(ehr_key, iat=now - 600, exp=now - 300)
    assert status({"Authorization": f"Bearer {expired}"}) == 401
    wrong_aud = token(ehr_key, aud="http://testserver/cds-services/other")
    assert status({"Authorization": f"Bearer {wrong_aud}"}) == 401
    assert status({"Authorization": f"Bearer {token(ehr_key, iss='https://evil.example')}"}) == 401
    assert status({"Authorization": f"Bearer {token(ehr_key, ttl=3600)}"}) == 401  # too long
    no_jti = jwt.encode(
        {"iss": EHR, "aud": URL, "iat": now, "exp": now + 60}, ehr_key, algorithm="ES384",
        headers={"kid": "ehr-1"},
    )  # fmt: skip
    assert status({"Authorization": f"Bearer {no_jti}"}) == 401
    once = token(ehr_key)
    assert status({"Authorization": f"Bearer {once}"}) == 200
    assert status({"Authorization": f"Bearer {once}"}) == 401  # replayed


def test_not_configured_is_503(engine: Engine) -> None:
    r = TestClient(create_api(engine)).post(
        "/cds-services/wardwatch-sepsis", json=hook_body("ehr-patient-42")
    )
    assert r.status_code == 503


def test_feedback_is_stored_and_counted(
    client: TestClient, engine: Engine, ehr_key: ec.EllipticCurvePrivateKey
) -> None:
    fb_url = f"{URL}/feedback"
    card = str(uuid.uuid4())
    body: dict[str, list[dict[str, Any]]] = {
        "feedback": [
            {"card": card, "outcome": "accepted",
             "acceptedSuggestions": [{"id": "s1"}, {"id": "s2"}],
             "outcomeTimestamp": "2026-01-01T10:05:00Z"},
            {"card": card, "outcome": "overridden",
             "overrideReason": {"reason": {"code": "not-sepsis", "system": "https://x.example"},
                                "userComment": "free text is not kept"},
             "outcomeTimestamp": "2026-01-01T10:06:00Z"},
        ]
    }  # fmt: skip
    r = client.post(
        "/cds-services/wardwatch-sepsis/feedback",
        json=body,
        headers={"Authorization": f"Bearer {token(ehr_key, aud=fb_url)}"},
    )
    assert r.status_code == 200 and r.json() == {"stored": 2}
    assert client.post("/cds-services/wardwatch-sepsis/feedback", json=body).status_code == 401
    bad = {"feedback": [{**body["feedback"][0], "outcome": "ignored"}]}
    r = client.post(
        "/cds-services/wardwatch-sepsis/feedback",
        json=bad,
        headers={"Authorization": f"Bearer {token(ehr_key)}"},
    )
    assert r.status_code == 422
    analyst = {"Authorization": f"Bearer {access.create_token(engine, 'ana', 'analyst')}"}
    counts = client.get("/cds-services/wardwatch-sepsis/feedback", headers=analyst).json()
    assert counts == {
        "service": "wardwatch-sepsis", "accepted": 1, "overridden": 1,
        "accepted_suggestions": 2, "cards": 1,
    }  # fmt: skip
    alerting = {"Authorization": f"Bearer {access.create_token(engine, 'al', 'alerting')}"}
    assert (
        client.get("/cds-services/wardwatch-sepsis/feedback", headers=alerting).status_code == 403
    )


def test_openapi_lists_the_cds_and_fhir_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/cds-services",
        "/cds-services/{service_id}",
        "/cds-services/{service_id}/feedback",
    } <= set(paths)
    assert {"/fhir/metadata", "/fhir/RiskAssessment", "/fhir/RiskAssessment/{resource_id}"} <= set(
        paths
    )
