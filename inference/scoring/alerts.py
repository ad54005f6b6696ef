"""Alert decisions: combine a Pending's rule scores with the model's risk, advance the
patient's alert state (:mod:`inference.alert_policy`, the policy evaluation simulates
too) and dress a raised alert as a FHIR RiskAssessment with its CDS Hooks card."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from inference.alert_policy import AlertDecision, AlertPolicy, step
from inference.attribution import TOP_K, Attribution

from .alert_card import build_card, risk_assessment
from .model_info import Explainer, ModelInfo
from .prepare import Pending
from .record import PatientRecord


def advance(
    record: PatientRecord,
    pending: Pending,
    risk: float | None,
    *,
    model: ModelInfo,
    policy: AlertPolicy,
) -> tuple[dict[str, Any], AlertDecision | None]:
    """Combine rule scores and the model's risk and advance the alert state.

    ``risk`` is None when the model was unavailable: the score is then marked degraded.
    Returns the score record (``risk.scores``) and the alert decision when an alert is
    raised (turn it into a RiskAssessment with :func:`alert_resource`). Mutates
    ``record.alert``. Raises nothing.
    """
    n2 = pending.news2
    record.alert, decision = step(
        record.alert,
        patient=pending.patient,
        as_of=pending.as_of,
        risk=risk,
        news2=n2.total,
        policy=policy,
    )
    score = {
        "patient": pending.patient,
        "time": pending.as_of.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "model": model.name,
        "model_version": model.version,
        "risk": None if risk is None else float(risk),
        "degraded": risk is None,
        "news2": n2.total,
        "news2_band": n2.band,
        "news2_breakdown": n2.breakdown,
        "qsofa": pending.qsofa.total,
        "sirs": pending.sirs.total,
        "alert": record.alert.active,
        "source": pending.source,
        "inbound_ts_ms": pending.inbound_ts_ms,
        "features": {
            **pending.readings,
            "news2_spo2_scale": n2.spo2_scale,
            "news2_on_oxygen": n2.on_oxygen,
            "news2_partial": n2.partial,
            "news2_red_flag": n2.red_flag,
        },
    }
    return score, decision


def alert_resource(
    decision: AlertDecision,
    pending: Pending,
    attribution: Attribution | str | None,
    *,
    model: ModelInfo,
    policy: AlertPolicy,
) -> dict[str, Any]:
    """The FHIR RiskAssessment for a raised alert, carrying its CDS Hooks card.

    ``attribution`` gives the card its top-five contributing features; a string says why
    none is available (the card states it); None means none was asked for. Raises nothing.
    """
    top: list[dict[str, Any]] = []
    method: str | None = None
    if isinstance(attribution, Attribution):
        top = [c.to_dict() for c in attribution.top(TOP_K)]
        method = attribution.method
    elif attribution is not None:
        method = f"unavailable ({attribution})"
    card = build_card(
        decision,
        model=model.name,
        model_version=model.version,
        policy=policy,
        news2=pending.news2.to_dict(),
        top_features=top,
        attribution_method=method,
        readings=pending.readings,
        context=pending.context,
    )
    return risk_assessment(
        decision,
        model=model.name,
        model_version=model.version,
        basis=list(pending.basis),
        card=card,
    )


def finish(
    record: PatientRecord,
    pending: Pending,
    risk: float | None,
    *,
    model: ModelInfo,
    policy: AlertPolicy,
    explain: Explainer | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """:func:`advance`, then :func:`alert_resource` with ``explain``'s attribution when an
    alert is raised (``explain`` is called for alerts with a risk only; when it is None or
    fails, the card says no attribution is available). Used where the model runs
    in-process (offline scoring); the stream explains a batch's alerts in one server
    request instead. Mutates ``record.alert``. Raises nothing (an ``explain`` failure is
    stated in the card).
    """
    score, decision = advance(record, pending, risk, model=model, policy=policy)
    if decision is None:
        return score, None
    attribution: Attribution | str | None = None
    if explain is not None and risk is not None:
        try:
            attribution = explain(pending.window)
        except Exception as exc:  # an explanation must never stop an alert
            attribution = f"{type(exc).__name__}: {exc}"
    return score, alert_resource(decision, pending, attribution, model=model, policy=policy)
