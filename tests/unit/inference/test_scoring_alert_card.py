"""A raised alert dressed for the world: its CDS Hooks card and FHIR RiskAssessment."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from fhir.resources.R4B.riskassessment import RiskAssessment

from inference.alert_policy import AlertDecision, AlertPolicy, AlertState, step
from inference.scoring.alert_card import (
    alert_fields,
    build_card,
    bundle_actions,
    card_of,
    card_summary,
    risk_assessment,
    workflow_update,
)
from streams.persist import alert_row

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = AlertPolicy(threshold=0.5, clear_ratio=0.8, news2_enter=7, news2_stay=5)


@pytest.mark.parametrize("severity_news2", [2, 9])
def test_alert_is_a_valid_risk_assessment_and_reads_back(severity_news2: int) -> None:
    _, decision = step(
        AlertState(), patient="pt-abc", as_of=T0, risk=0.8, news2=severity_news2, policy=POLICY
    )
    assert decision is not None
    res = risk_assessment(
        decision, model="sepsis_transformer", model_version="1", basis=["Observation/o1"]
    )
    RiskAssessment.model_validate(res)  # raises if not valid FHIR
    f = alert_fields(res)
    assert f["patient"] == "pt-abc" and f["risk"] == pytest.approx(0.8)
    assert f["severity"] == decision.severity and f["news2"] == severity_news2
    assert f["raised_at"] == T0


def _decision(risk: float | None = 0.8, news2: int | None = 8) -> AlertDecision:
    _, d = step(AlertState(), patient="pt-abc", as_of=T0, risk=risk, news2=news2, policy=POLICY)
    assert d is not None
    return d


TOP = [
    {"feature": "lactate", "contribution": 0.21},
    {"feature": "heart_rate", "contribution": 0.1},
    {"feature": "mean_bp", "contribution": 0.05},
    {"feature": "wbc", "contribution": 0.02},
    {"feature": "temperature", "contribution": 0.01},
    {"feature": "bun", "contribution": 0.0},
]
NEWS2 = {
    "total": 8,
    "band": "high",
    "breakdown": {"respiratory_rate": 3, "spo2": 0, "heart_rate": 2},
    "spo2_scale": 1,
    "partial": False,
}
READINGS = {"lactate": 4.5, "systolic_bp": 85.0, "mean_bp": 60.0, "heart_rate": 125.0}


def test_card_fields() -> None:
    d = _decision()
    card = build_card(
        d,
        model="sepsis_transformer",
        model_version="2",
        policy=POLICY,
        news2=NEWS2,
        top_features=TOP,
        attribution_method="occlusion",
        readings=READINGS,
    )
    assert len(card["summary"]) < 140 and "80%" in card["summary"]
    assert card["indicator"] == d.severity == "critical"
    ext = card["extension"]
    assert ext["news2"]["breakdown"] == NEWS2["breakdown"]
    assert [f["feature"] for f in ext["top_features"]] == [
        "lactate",
        "heart_rate",
        "mean_bp",
        "wbc",
        "temperature",
    ]
    assert ext["top_features"][0]["value"] == 4.5 and ext["attribution_method"] == "occlusion"
    rec = {s["label"]: s["isRecommended"] for s in card["suggestions"]}
    assert len(rec) == 5 and all(rec.values())  # hypotension, lactate >= 4, MAP < 65


def test_bundle_actions_follow_the_readings_and_context() -> None:
    acts = bundle_actions({"lactate": 1.2, "systolic_bp": 120.0, "mean_bp": 80.0})
    rec = [a["isRecommended"] for a in acts]
    assert rec == [True, True, True, False, False]
    acts = bundle_actions({"lactate": 4.0}, {"antibiotic": ["http://snomed.info/sct|372687004"]})
    assert [a["isRecommended"] for a in acts] == [True, False, False, True, False]


def test_summary_is_cut_below_140() -> None:
    d = replace(_decision(), reason="x" * 300, severity="warning")
    s = card_summary(d, POLICY, "medium" * 30)
    assert len(s) < 140


@pytest.mark.parametrize(("risk", "news2"), [(0.8, 2), (0.8, 9), (None, 9)])
def test_alert_with_card_validates_and_reads_back(risk: float | None, news2: int) -> None:
    d = _decision(risk, news2)
    card = build_card(
        d, model="sepsis_transformer", model_version="2", news2=NEWS2, top_features=TOP[:5]
    )
    res = risk_assessment(
        d,
        model="sepsis_transformer",
        model_version="2",
        basis=["Observation/o1", "Observation/o2"],
        card=card,
    )
    ra = RiskAssessment.model_validate(res)
    assert ra.method is not None and ra.method.coding is not None
    assert ra.method.coding[0].version == "2"
    assert res["prediction"][0]["whenRange"]["high"]["value"] == 6
    assert res["note"][0]["text"] == card["summary"] and res["mitigation"]
    f = alert_fields(res)
    assert f["card"] == card and f["severity"] == d.severity
    assert card_of(res) == card
    assert alert_row(res).alert_id == d.alert_id


def test_alert_without_card_or_basis_still_validates() -> None:
    res = risk_assessment(_decision(), model="m", model_version="1", basis=[])
    RiskAssessment.model_validate(res)
    assert card_of(res) is None and alert_fields(res)["card"] is None


def test_an_acknowledged_then_resolved_alert_is_the_same_assessment_amended() -> None:
    _, decision = step(AlertState(), patient="pt-abc", as_of=T0, risk=0.8, news2=9, policy=POLICY)
    assert decision is not None
    raised = risk_assessment(decision, model="sepsis_transformer", model_version="4", basis=[])
    ack = workflow_update(raised, "acknowledged", T0.replace(hour=1))
    done = workflow_update(ack, "resolved", T0.replace(hour=2))
    for res in (ack, done):
        RiskAssessment.model_validate(res)  # raises if not valid FHIR
        assert res["id"] == raised["id"] and res["status"] == "amended"
        assert alert_fields(res)["severity"] == decision.severity  # still reads back
    assert raised["status"] == "final" and len(raised["note"]) < len(done["note"])
    parts = {x["url"]: x for x in done["extension"][0]["extension"]}
    assert parts["status"]["valueCode"] == "resolved"
    assert parts["statusAt"]["valueDateTime"] == "2026-01-01T02:00:00Z"
    assert [x["url"] for x in done["extension"][0]["extension"]].count("status") == 1
    assert done["note"][-2:] == [
        {"time": "2026-01-01T01:00:00Z", "text": "Alert acknowledged at 2026-01-01T01:00:00Z."},
        {"time": "2026-01-01T02:00:00Z", "text": "Alert resolved at 2026-01-01T02:00:00Z."},
    ]
    with pytest.raises(ValueError, match="time zone"):
        workflow_update(raised, "resolved", datetime(2026, 1, 1))
