"""The alert policy: when a patient enters, stays in and leaves the alert state.

Pure functions over a small per-patient :class:`AlertState` kept beside the clinical
state. The policy is deliberately simple and stated in full, because a clinician must be
able to predict it:

* **enter** when the model's risk reaches the threshold, or NEWS2 reaches 7 (the RCP's
  "high" band, an emergency response whatever the model says — this keeps alerts flowing
  while the model is unavailable);
* **stay** while risk >= threshold - margin (hysteresis) or NEWS2 >= 5; a missing risk
  (model unavailable) never clears an alert on its own;
* **raise** an alert message on entering, unless one was raised less than the
  suppression window ago at the same or higher severity; an escalation of severity while
  in the alert state raises again;
* **clear** when neither condition holds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

Severity = Literal["info", "warning", "critical"]
_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}
NEWS2_ENTER = 7
NEWS2_STAY = 5


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """Thresholds of the policy (from settings and the model card)."""

    threshold: float
    clear_margin: float = 0.05
    suppress_hours: float = 6.0


@dataclass(frozen=True, slots=True)
class AlertState:
    """Where one patient stands: in the alert state or not, and the last alert raised."""

    active: bool = False
    severity: Severity | None = None
    last_raised_s: float | None = None
    last_raised_severity: Severity | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "severity": self.severity,
            "last_raised_s": self.last_raised_s,
            "last_raised_severity": self.last_raised_severity,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AlertState:
        if not d:
            return cls()
        return cls(
            active=bool(d.get("active", False)),
            severity=d.get("severity"),
            last_raised_s=d.get("last_raised_s"),
            last_raised_severity=d.get("last_raised_severity"),
        )


@dataclass(frozen=True, slots=True)
class AlertDecision:
    """An alert to raise now."""

    alert_id: str
    patient: str
    raised_at: datetime
    severity: Severity
    risk: float | None
    news2: int | None
    reason: str


def _severity(risk_high: bool, news2_high: bool) -> Severity:
    return "critical" if risk_high and news2_high else "warning"


def step(
    state: AlertState,
    *,
    patient: str,
    as_of: datetime,
    risk: float | None,
    news2: int | None,
    policy: AlertPolicy,
) -> tuple[AlertState, AlertDecision | None]:
    """Advance one patient's alert state by one score. Pure; raises nothing."""
    risk_high = risk is not None and risk >= policy.threshold
    news2_high = news2 is not None and news2 >= NEWS2_ENTER
    if not state.active:
        if not (risk_high or news2_high):
            return state, None
        severity = _severity(risk_high, news2_high)
        new = replace(state, active=True, severity=severity)
    else:
        stay = (
            risk_high
            or news2_high
            or risk is None  # the model being away never clears an alert by itself
            or risk >= policy.threshold - policy.clear_margin
            or (news2 is not None and news2 >= NEWS2_STAY)
        )
        if not stay:
            return replace(state, active=False, severity=None), None
        severity = _severity(risk_high, news2_high)
        if state.severity is not None and _RANK[severity] < _RANK[state.severity]:
            severity = state.severity  # severity only falls when the alert clears
        new = replace(state, severity=severity)

    now_s = as_of.timestamp()
    suppressed = (
        state.last_raised_s is not None
        and now_s - state.last_raised_s < policy.suppress_hours * 3600.0
        and state.last_raised_severity is not None
        and _RANK[severity] <= _RANK[state.last_raised_severity]
    )
    escalated = (
        state.active and state.severity is not None and _RANK[severity] > _RANK[state.severity]
    )
    if (state.active and not escalated) or suppressed:
        return new, None
    reasons = []
    if risk_high:
        reasons.append(f"sepsis risk {risk:.2f} >= {policy.threshold:.2f}")
    if news2_high:
        reasons.append(f"NEWS2 {news2} >= {NEWS2_ENTER}")
    decision = AlertDecision(
        alert_id=alert_id(patient, as_of, severity),
        patient=patient,
        raised_at=as_of,
        severity=severity,
        risk=risk,
        news2=news2,
        reason="; ".join(reasons) or "escalation",
    )
    new = replace(new, last_raised_s=now_s, last_raised_severity=severity)
    return new, decision


def alert_id(patient: str, at: datetime, severity: str) -> str:
    """Deterministic id: a redelivered score raises the same alert, stored once."""
    raw = f"{patient}|{at.astimezone(UTC).isoformat()}|{severity}"
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


ALERT_EXTENSION = "https://wardwatch.example.org/fhir/StructureDefinition/alert"
_QUALITATIVE = {"warning": "moderate", "critical": "high", "info": "low"}


def risk_assessment(
    decision: AlertDecision,
    *,
    model: str,
    model_version: str,
    basis: list[str],
) -> dict[str, Any]:
    """The alert as a FHIR R4 RiskAssessment (the value published on ``risk.alerts``)."""
    prediction: dict[str, Any] = {
        "outcome": {
            "coding": [
                {"system": "http://snomed.info/sct", "code": "91302008", "display": "Sepsis"}
            ],
            "text": "Sepsis",
        },
        "qualitativeRisk": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/risk-probability",
                    "code": _QUALITATIVE[decision.severity],
                }
            ]
        },
        "whenRange": {
            "low": {"value": 0, "unit": "h", "system": "http://unitsofmeasure.org", "code": "h"},
            "high": {"value": 6, "unit": "h", "system": "http://unitsofmeasure.org", "code": "h"},
        },
    }
    if decision.risk is not None:
        prediction["probabilityDecimal"] = round(decision.risk, 6)
    return {
        "resourceType": "RiskAssessment",
        "id": decision.alert_id,
        "status": "final",
        "subject": {"reference": f"Patient/{decision.patient}"},
        "occurrenceDateTime": decision.raised_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "method": {"text": f"{model} {model_version} (WardWatch); NEWS2 (RCP 2017)"},
        "basis": [{"reference": ref} for ref in basis[:50]],
        "prediction": [prediction],
        "note": [{"text": f"{decision.severity}: {decision.reason}"}],
        "extension": [
            {
                "url": ALERT_EXTENSION,
                "extension": [
                    {"url": "severity", "valueCode": decision.severity},
                    {"url": "reason", "valueString": decision.reason},
                    *(
                        [{"url": "news2", "valueInteger": decision.news2}]
                        if decision.news2 is not None
                        else []
                    ),
                ],
            }
        ],
    }


def alert_fields(resource: dict[str, Any]) -> dict[str, Any]:
    """Read back what :func:`risk_assessment` put in the alert (for persisting it).

    Raises ``KeyError``/``ValueError``/``TypeError`` on a resource it did not make.
    """
    ext = next(e for e in resource["extension"] if e["url"] == ALERT_EXTENSION)
    parts = {
        x["url"]: next(v for k, v in x.items() if k.startswith("value")) for x in ext["extension"]
    }
    pred = resource["prediction"][0]
    return {
        "alert_id": str(resource["id"]),
        "patient": str(resource["subject"]["reference"]).removeprefix("Patient/"),
        "raised_at": datetime.fromisoformat(resource["occurrenceDateTime"]),
        "severity": str(parts["severity"]),
        "reason": str(parts["reason"]),
        "news2": parts.get("news2"),
        "risk": pred.get("probabilityDecimal"),
    }


def suppression_window(policy: AlertPolicy) -> timedelta:
    """The suppression window as a timedelta (for display)."""
    return timedelta(hours=policy.suppress_hours)
