"""The alert policy: enter, stay (hysteresis), suppress, escalate, clear."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fhir.resources.R4B.riskassessment import RiskAssessment

from streams.alerting import AlertPolicy, AlertState, alert_fields, risk_assessment, step

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = AlertPolicy(threshold=0.5, clear_margin=0.1, suppress_hours=6)


def run(
    seq: list[tuple[float | None, int | None]], policy: AlertPolicy = POLICY
) -> list[tuple[bool, str | None]]:
    state = AlertState()
    out = []
    for h, (risk, news2) in enumerate(seq):
        state, decision = step(
            state,
            patient="pt-x",
            as_of=T0 + timedelta(hours=h),
            risk=risk,
            news2=news2,
            policy=policy,
        )
        out.append((state.active, None if decision is None else decision.severity))
    return out


def test_quiet_patient_never_alerts() -> None:
    assert run([(0.1, 0), (0.2, 1), (0.49, 4)]) == [(False, None)] * 3


def test_enter_at_threshold_and_hysteresis() -> None:
    got = run([(0.5, 0), (0.45, 0), (0.41, 0), (0.39, 0)])
    assert got == [(True, "warning"), (True, None), (True, None), (False, None)]


def test_news2_high_alerts_without_the_model() -> None:
    assert run([(None, 7)]) == [(True, "warning")]
    assert run([(None, 6)]) == [(False, None)]


def test_missing_risk_never_clears() -> None:
    assert run([(0.9, 0), (None, 0), (None, None)]) == [
        (True, "warning"),
        (True, None),
        (True, None),
    ]


def test_escalation_raises_again_and_severity_holds() -> None:
    got = run([(0.6, 2), (0.7, 8), (0.7, 2)])
    assert got == [(True, "warning"), (True, "critical"), (True, None)]


def test_suppression_window() -> None:
    # leaves and re-enters within 6 h: no second alert; after 6 h: a new one
    seq = [(0.9, 0), (0.1, 0), (0.9, 0), (0.1, 0), (0.1, 0), (0.1, 0), (0.1, 0), (0.9, 0)]
    got = run(seq)
    assert [d for _, d in got] == ["warning", None, None, None, None, None, None, "warning"]


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


def test_alert_ids_are_deterministic() -> None:
    a = step(AlertState(), patient="p", as_of=T0, risk=0.9, news2=None, policy=POLICY)[1]
    b = step(AlertState(), patient="p", as_of=T0, risk=0.9, news2=None, policy=POLICY)[1]
    assert a is not None and b is not None and a.alert_id == b.alert_id


def test_state_round_trip() -> None:
    s = AlertState(
        active=True, severity="critical", last_raised_s=1.5, last_raised_severity="warning"
    )
    assert AlertState.from_dict(s.to_dict()) == s
    assert AlertState.from_dict(None) == AlertState()
