"""CDS Hooks 2.0 cards from a patient's latest stored score and open alert.

Pure (no I/O): ``streams/cds_hooks.py`` reads the rows and answers the EHR. The card's
indicator is the open alert's severity band (info/warning/critical, the alert policy's
own bands); a patient scored but without an open alert gets an ``info`` card. When the
worker's alert carried its card (:func:`inference.scoring.alert_card.card_of`), its summary and
detail (NEWS2 breakdown, top contributing measurements) are reused.

Suggestions are deliberately modest: for a warning or critical alert, draft
ServiceRequest proposals for a serum lactate and blood cultures (the first two steps of
the Surviving Sepsis Campaign hour-1 bundle) that the clinician may accept; nothing is
ordered without them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from fhir.risk_assessment import MODEL_SYSTEM, fhir_instant
from inference.alert_policy import percent
from inference.early_warning import news2_band
from inference.scoring.alert_card import SUMMARY_MAX, card_of

SSC_URL = "https://www.sccm.org/SurvivingSepsisCampaign/Guidelines/Adult-Patients"
# (label, LOINC code, LOINC display, why)
_ORDERS = (
    (
        "Propose a serum lactate",
        "2524-7",
        "Lactate [Moles/volume] in Serum or Plasma",
        "SSC hour-1 bundle: measure lactate",
    ),
    (
        "Propose blood cultures",
        "600-7",
        "Bacteria identified in Blood by Culture",
        "SSC hour-1 bundle: blood cultures before antibiotics",
    ),
)


def card_uuid(score: Mapping[str, Any], alert: Mapping[str, Any] | None) -> str:
    """A stable card uuid: one per alert (or per score without an alert), so feedback on
    the same alert's card is counted together. Raises KeyError for a row without id."""
    key = f"alert:{alert['alert_id']}" if alert is not None else f"score:{score['id']}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://wardwatch.example.org/cds/{key}"))


def _stored_card(alert: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if alert is None:
        return None
    explanation = alert.get("explanation") or {}
    resource = explanation.get("risk_assessment") if isinstance(explanation, dict) else None
    try:
        return card_of(resource) if isinstance(resource, dict) else None
    except ValueError:  # a damaged extension: fall back to the card built here
        return None


def _news2_text(score: Mapping[str, Any]) -> str | None:
    if score.get("news2") is None:
        return None
    breakdown = score.get("news2_breakdown") or {}
    red = any(v == 3 for v in breakdown.values()) if isinstance(breakdown, dict) else False
    band = news2_band(int(score["news2"]), red)
    return f"NEWS2 {score['news2']}" + (f" ({band})" if band else "")


def _summary(score: Mapping[str, Any], indicator: str, alert: Mapping[str, Any] | None) -> str:
    risk = score.get("risk")
    head = f"{indicator.capitalize()}: "
    parts = [f"sepsis risk {percent(float(risk))}" if risk is not None else "model unavailable"]
    n2 = _news2_text(score)
    if n2:
        parts.append(n2)
    parts.append("open WardWatch alert" if alert is not None else "no open alert")
    text = head + parts[0]
    for part in parts[1:]:
        if len(text) + 2 + len(part) <= SUMMARY_MAX:
            text += "; " + part
    return text[:SUMMARY_MAX]


def _suggestions(patient_id: str, alert_key: str) -> list[dict[str, Any]]:
    out = []
    for i, (label, code, display, why) in enumerate(_ORDERS):
        request = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "proposal",
            "code": {
                "coding": [{"system": "http://loinc.org", "code": code, "display": display}],
                "text": display,
            },
            "subject": {"reference": f"Patient/{patient_id}"},
            "reasonCode": [{"text": f"WardWatch sepsis risk alert; {why}"}],
        }
        out.append(
            {
                "label": label,
                "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{alert_key}#suggestion-{i}")),
                "isRecommended": True,
                "actions": [
                    {"type": "create", "description": f"{label} ({why})", "resource": request}
                ],
            }
        )
    return out


def sepsis_cards(
    score: Mapping[str, Any] | None,
    alert: Mapping[str, Any] | None,
    *,
    patient_id: str,
) -> list[dict[str, Any]]:
    """The cards for one patient: none without a score, else one card from the latest
    ``score`` (a ``scores`` row) and the open ``alert`` (an ``alerts`` row with
    ``explanation``, or None). ``patient_id`` is the EHR's own Patient id: suggestions
    are resources for the EHR's FHIR server. Raises KeyError for rows missing columns,
    ValueError for a naive ``scored_at``."""
    if score is None:
        return []
    indicator = str(alert["severity"]) if alert is not None else "info"
    stored = _stored_card(alert)
    uid = card_uuid(score, alert)
    risk = score.get("risk")
    risk_text = percent(float(risk)) if risk is not None else "not available (degraded score)"
    lines = [
        f"**Sepsis risk:** {risk_text} ({score['model']} v{score['model_version']})",
        f"**Band:** {indicator}"
        + (
            f" (open alert since {fhir_instant(alert['raised_at'])}: {alert['reason']})"
            if alert is not None
            else " (no open alert)"
        ),
        f"**NEWS2:** {_news2_text(score) or 'not recorded'}; "
        f"**qSOFA:** {score['qsofa'] if score.get('qsofa') is not None else 'not recorded'}",
        f"**Scored at:** {fhir_instant(score['scored_at'])}",
    ]
    if stored is not None and stored.get("detail"):
        lines += ["", "Alert detail:", "", str(stored["detail"])]
    lines += ["", "_Decision support, not a diagnosis._"]
    card: dict[str, Any] = {
        "uuid": uid,
        "summary": str(stored["summary"])[:SUMMARY_MAX]
        if stored is not None and stored.get("summary")
        else _summary(score, indicator, alert),
        "indicator": indicator,
        "detail": "\n".join(lines),
        "source": {
            "label": f"WardWatch {score['model']} v{score['model_version']}",
            "topic": {
                "system": MODEL_SYSTEM,
                "code": str(score["model"]),
                "display": "Sepsis risk",
            },
        },
        "links": [
            {"label": "Surviving Sepsis Campaign guidelines", "url": SSC_URL, "type": "absolute"}
        ],
    }
    if alert is not None and indicator in ("warning", "critical"):
        card["suggestions"] = _suggestions(patient_id, uid)
        card["selectionBehavior"] = "any"
    return [card]
