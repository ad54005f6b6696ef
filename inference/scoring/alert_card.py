"""What a raised alert looks like to the world: its CDS Hooks card and FHIR RiskAssessment.

The policy that decides when an alert is raised is the scoring core's
(:mod:`inference.alert_policy`); this module only dresses its decisions.
"""

from __future__ import annotations

import copy
import hashlib
from datetime import datetime
from typing import Any

import orjson

from fhir.risk_assessment import HOURS, MODEL_SYSTEM, SEPSIS, fhir_instant
from inference.alert_policy import AlertDecision, AlertPolicy, percent, risk_phrase

ALERT_EXTENSION = "https://wardwatch.example.org/fhir/StructureDefinition/alert"
CARD_EXTENSION = "https://wardwatch.example.org/fhir/StructureDefinition/cds-hooks-card"
_QUALITATIVE = {"warning": "moderate", "critical": "high", "info": "low"}
SUMMARY_MAX = 139  # CDS Hooks: the summary must be under 140 characters
BUNDLE_SOURCE = (
    "Surviving Sepsis Campaign hour-1 bundle (Levy, Evans, Rhodes 2018; SSC guidelines 2021)"
)


def bundle_actions(
    readings: dict[str, Any], context: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The SSC hour-1 bundle as CDS Hooks suggestions, each marked recommended when the
    patient's latest readings meet its condition. Suggestions, not orders. Raises nothing.

    ``readings`` maps canonical codes to their latest values (``Pending.readings``);
    ``context`` may hold ``antibiotic``/``vasopressor`` lists of recorded administrations.
    """
    ctx = context or {}

    def num(code: str) -> float | None:
        v = readings.get(code)
        return float(v) if isinstance(v, int | float) else None

    lactate, sbp, mbp = num("lactate"), num("systolic_bp"), num("mean_bp")
    hypotension = (sbp is not None and sbp < 90) or (mbp is not None and mbp < 65)
    lact4 = lactate is not None and lactate >= 4
    on_abx = bool(ctx.get("antibiotic"))
    on_vaso = bool(ctx.get("vasopressor"))
    lact_txt = "no lactate on record" if lactate is None else f"last lactate {lactate:g} mmol/L"
    out: list[dict[str, Any]] = [
        {
            "label": "Measure lactate; re-measure within 2-4 h if above 2 mmol/L",
            "reason": lact_txt,
            "isRecommended": True,
        },
        {
            "label": "Take blood cultures before antibiotics",
            "reason": "cultures first, without delaying antibiotics",
            "isRecommended": not on_abx,
        },
        {
            "label": "Give broad-spectrum antibiotics",
            "reason": "antibiotic administration on record" if on_abx else "none on record",
            "isRecommended": not on_abx,
        },
        {
            "label": "Give 30 mL/kg crystalloid for hypotension or lactate >= 4 mmol/L",
            "reason": ("hypotension" if hypotension else "no hypotension on record")
            + ("; lactate >= 4" if lact4 else ""),
            "isRecommended": hypotension or lact4,
        },
        {
            "label": "Start vasopressors if MAP < 65 mmHg during or after fluids",
            "reason": (f"last MAP {mbp:g} mmHg" if mbp is not None else "no MAP on record")
            + ("; vasopressor on record" if on_vaso else ""),
            "isRecommended": mbp is not None and mbp < 65 and not on_vaso,
        },
    ]
    return out


def card_summary(
    decision: AlertDecision,
    policy: AlertPolicy | None,
    news2_band: str | None,
    top: list[str] | None = None,
) -> str:
    """The card's one-line summary (under 140 characters): the risk as a percentage, its
    multiple of the base rate and the threshold (:func:`~inference.alert_policy.risk_phrase`),
    NEWS2 with its band, and the top contributing measurements, each part kept whole and
    dropped from the end when it does not fit. Raises nothing."""
    head = f"{decision.severity.capitalize()}: "
    parts = []
    if decision.risk is not None:
        if policy is not None:
            parts.append(risk_phrase(decision.risk, policy))
        else:
            parts.append(f"sepsis risk {percent(decision.risk)}")
    if decision.news2 is not None:
        band = f" ({news2_band})" if news2_band else ""
        parts.append(f"NEWS2 {decision.news2}{band}")
    if top:
        parts.append("top: " + ", ".join(t.replace("_", " ") for t in top[:3]))
    text = head + (parts[0] if parts else "escalation")
    for part in [*parts[1:], "review for sepsis now"]:
        if len(text) + 2 + len(part) <= SUMMARY_MAX:
            text += "; " + part
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 3] + "..."


def build_card(
    decision: AlertDecision,
    *,
    model: str,
    model_version: str,
    policy: AlertPolicy | None = None,
    news2: dict[str, Any] | None = None,
    top_features: list[dict[str, Any]] | None = None,
    attribution_method: str | None = None,
    readings: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A CDS Hooks-style card for one alert (see https://cds-hooks.org, "Card").

    Standard fields: ``uuid``, ``summary`` (< 140 chars), ``indicator``
    (info/warning/critical = the alert's severity), ``detail`` (markdown), ``source``,
    ``suggestions`` (the hour-1 bundle). WardWatch's structured facts travel in
    ``extension``: ``news2`` (total, band, per-parameter breakdown, SpO2 scale, partial),
    ``top_features`` (up to five ``{"feature", "contribution", "value"}``, largest increase
    of risk first) and ``attribution_method``. ``policy`` states the threshold and base
    rate the summary compares the risk with. Raises nothing.
    """
    readings = readings or {}
    n2 = news2 or {}
    top = [{**f, "value": readings.get(str(f.get("feature")))} for f in (top_features or [])[:5]]
    actions = bundle_actions(readings, context)
    lines = [f"**{decision.reason}**", ""]
    if n2.get("breakdown"):
        br = ", ".join(f"{k} {v}" for k, v in n2["breakdown"].items() if v is not None)
        lines.append(
            f"NEWS2 {n2.get('total')} ({n2.get('band')}, SpO2 scale {n2.get('spo2_scale', 1)}"
            f"{', consciousness not recorded' if n2.get('partial') else ''}): {br}"
        )
    if top:
        lines.append(
            "Top contributing measurements: "
            + ", ".join(f"{f['feature']} {f['contribution']:+.3f}" for f in top)
            + f" ({attribution_method or 'method not stated'})"
        )
    lines.append("Hour-1 bundle: " + "; ".join(a["label"] for a in actions if a["isRecommended"]))
    lines.append("Decision support, not a diagnosis.")
    return {
        "uuid": decision.alert_id,
        "summary": card_summary(
            decision, policy, n2.get("band"), [str(f.get("feature")) for f in top]
        ),
        "indicator": decision.severity,
        "detail": "\n".join(lines),
        "source": {
            "label": f"WardWatch {model} v{model_version}",
            "topic": {"system": MODEL_SYSTEM, "code": model, "display": "Sepsis risk"},
        },
        "suggestions": [
            {
                "label": a["label"],
                "uuid": hashlib.blake2b(
                    f"{decision.alert_id}|{i}".encode(), digest_size=8
                ).hexdigest(),
                "isRecommended": a["isRecommended"],
                "reason": a["reason"],
            }
            for i, a in enumerate(actions)
        ],
        "links": [
            {
                "label": "Surviving Sepsis Campaign hour-1 bundle",
                "url": "https://www.sccm.org/SurvivingSepsisCampaign/Guidelines/Adult-Patients",
                "type": "absolute",
            }
        ],
        "extension": {
            "news2": n2,
            "top_features": top,
            "attribution_method": attribution_method,
            "bundle_source": BUNDLE_SOURCE,
        },
    }


def risk_assessment(
    decision: AlertDecision,
    *,
    model: str,
    model_version: str,
    basis: list[str],
    card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The alert as a FHIR R4 RiskAssessment (the value published on ``risk.alerts``).

    ``basis`` are references (``Observation/<id>``) of the observations the scores used.
    The CDS Hooks card, when given, travels as the JSON text of an extension
    (:data:`CARD_EXTENSION`), so the resource still validates; :func:`alert_fields` reads
    it back. Its summary is also the resource's first note, its bundle suggestions
    ``mitigation``. Raises nothing.
    """
    prediction: dict[str, Any] = {
        "outcome": {
            "coding": [dict(SEPSIS)],
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
            "low": {"value": 0, **HOURS},
            "high": {"value": 6, **HOURS},
        },
    }
    if decision.risk is not None:
        prediction["probabilityDecimal"] = round(decision.risk, 6)
    notes = [{"text": f"{decision.severity}: {decision.reason}"}]
    extensions: list[dict[str, Any]] = [
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
    ]
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": decision.alert_id,
        "status": "final",
        "subject": {"reference": f"Patient/{decision.patient}"},
        "occurrenceDateTime": fhir_instant(decision.raised_at),
        "method": {
            "coding": [
                {
                    "system": MODEL_SYSTEM,
                    "code": model,
                    "version": str(model_version),
                    "display": f"{model} version {model_version}",
                }
            ],
            "text": f"{model} {model_version} (WardWatch); NEWS2 (RCP 2017)",
        },
        "basis": [{"reference": ref} for ref in basis[:50]],
        "prediction": [prediction],
        "note": notes,
        "extension": extensions,
    }
    if card is not None:
        notes.insert(0, {"text": card["summary"]})
        extensions.append({"url": CARD_EXTENSION, "valueString": orjson.dumps(card).decode()})
        recommended = [s["label"] for s in card.get("suggestions", []) if s.get("isRecommended")]
        if recommended:
            resource["mitigation"] = "Suggested (SSC hour-1 bundle): " + "; ".join(recommended)
    if not resource["basis"]:
        del resource["basis"]
    return resource


WORKFLOW_KINDS = ("acknowledged", "resolved")


def workflow_update(resource: dict[str, Any], kind: str, at: datetime) -> dict[str, Any]:
    """The alert's RiskAssessment after a clinician ``kind`` (acknowledged or resolved)
    it at ``at``: the same id, status ``amended``, the alert extension's ``status`` and
    ``statusAt`` parts, and a note saying so. Who did it stays in the database, not in
    what subscribers are sent. ``resource`` is not changed. Raises ValueError for another
    kind or a naive ``at``."""
    if kind not in WORKFLOW_KINDS:
        raise ValueError(f"not an alert workflow step: {kind!r}")
    when = fhir_instant(at)
    out = copy.deepcopy(resource)
    out["status"] = "amended"
    extensions = out.setdefault("extension", [])
    ext = next((e for e in extensions if e.get("url") == ALERT_EXTENSION), None)
    if ext is None:
        ext = {"url": ALERT_EXTENSION, "extension": []}
        extensions.append(ext)
    ext["extension"] = [
        *(x for x in ext.get("extension", []) if x.get("url") not in ("status", "statusAt")),
        {"url": "status", "valueCode": kind},
        {"url": "statusAt", "valueDateTime": when},
    ]
    out["note"] = [*out.get("note", []), {"time": when, "text": f"Alert {kind} at {when}."}]
    return out


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
        "card": card_of(resource),
    }


def card_of(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The CDS Hooks card carried by a RiskAssessment from :func:`risk_assessment`, or None.

    Raises ``orjson.JSONDecodeError`` (a ``ValueError``) when the extension is not JSON.
    """
    for e in resource.get("extension", []):
        if e.get("url") == CARD_EXTENSION:
            card: dict[str, Any] = orjson.loads(e["valueString"])
            return card
    return None
