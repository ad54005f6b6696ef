"""Stored scores as FHIR R4 RiskAssessment resources and searchset Bundles.

The codings are those of the alerts the worker publishes on ``risk.alerts``
(``inference.scoring.alert_card.risk_assessment``: SNOMED CT 91302008 *Sepsis*, the model as
``method``, a 0-6 h window), so a client reads an alert and a score alike. A score's id is
``score-<row id>``. Pure: dicts in, dicts out, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

MODEL_SYSTEM = "https://wardwatch.example.org/fhir/CodeSystem/risk-model"
ID_PREFIX = "score-"
# One definition of the codings for both the alerts and the stored scores.
SEPSIS = {"system": "http://snomed.info/sct", "code": "91302008", "display": "Sepsis"}
HOURS = {"unit": "h", "system": "http://unitsofmeasure.org", "code": "h"}


def fhir_instant(at: datetime) -> str:
    """``at`` as a FHIR dateTime in UTC (``...Z``). Raises ValueError for a naive time."""
    if at.tzinfo is None:
        raise ValueError("a FHIR dateTime needs a time zone")
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def score_id(resource_id: str) -> int | None:
    """The score row id named by a RiskAssessment id ``score-<n>``, or None for any other
    id. Raises nothing."""
    digits = resource_id.removeprefix(ID_PREFIX)
    if not resource_id.startswith(ID_PREFIX) or not digits.isdigit() or len(digits) > 18:
        return None
    return int(digits)


def score_risk_assessment(score: Mapping[str, Any]) -> dict[str, Any]:
    """One ``scores`` row (``id``, ``patient``, ``scored_at``, ``model``,
    ``model_version``, ``risk``, ``degraded``, ``news2``, ``qsofa``, ``sirs``, ``alert``)
    as a FHIR R4 RiskAssessment. A degraded score (no model risk) has no probability and
    says so in a note. Raises KeyError for a missing column, ValueError for a naive time.
    """
    prediction: dict[str, Any] = {
        "outcome": {"coding": [SEPSIS], "text": "Sepsis"},
        "whenRange": {"low": {"value": 0, **HOURS}, "high": {"value": 6, **HOURS}},
    }
    if score["risk"] is not None:
        prediction["probabilityDecimal"] = round(float(score["risk"]), 6)
    bedside = [
        f"{name} {score[col]}"
        for name, col in (("NEWS2", "news2"), ("qSOFA", "qsofa"), ("SIRS", "sirs"))
        if score[col] is not None
    ]
    notes = [{"text": "Bedside scores: " + (", ".join(bedside) or "none recorded")}]
    if score["degraded"]:
        notes.append({"text": "Degraded: the model was unavailable; no model risk."})
    if score["alert"]:
        notes.append({"text": "This score raised or held an alert."})
    notes.append({"text": "Decision support, not a diagnosis."})
    model, version = str(score["model"]), str(score["model_version"])
    return {
        "resourceType": "RiskAssessment",
        "id": f"{ID_PREFIX}{score['id']}",
        "status": "final",
        "subject": {"reference": f"Patient/{score['patient']}"},
        "occurrenceDateTime": fhir_instant(score["scored_at"]),
        "method": {
            "coding": [
                {
                    "system": MODEL_SYSTEM,
                    "code": model,
                    "version": version,
                    "display": f"{model} version {version}",
                }
            ],
            "text": f"{model} {version} (WardWatch); NEWS2 (RCP 2017)",
        },
        "prediction": [prediction],
        "note": notes,
    }


def searchset(
    resources: Sequence[Mapping[str, Any]],
    *,
    base: str,
    total: int,
    self_url: str,
    next_url: str | None,
    outcome: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A FHIR R4 searchset Bundle of ``resources`` (each ``search.mode`` match, fullUrl
    ``<base>/<type>/<id>``), with ``total``, ``self`` and ``next`` links, and an
    OperationOutcome entry (``search.mode`` outcome) when ``outcome`` is given.
    Raises KeyError for a resource without resourceType or id."""
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"{base.rstrip('/')}/{r['resourceType']}/{r['id']}",
            "resource": dict(r),
            "search": {"mode": "match"},
        }
        for r in resources
    ]
    if outcome is not None:
        entries.append({"resource": dict(outcome), "search": {"mode": "outcome"}})
    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
    }
    if entries:
        bundle["entry"] = entries
    return bundle


def operation_outcome(severity: str, code: str, text: str) -> dict[str, Any]:
    """A one-issue OperationOutcome (``severity`` fatal/error/warning/information, ``code``
    from FHIR's issue-type codes, e.g. ``invalid``, ``not-found``, ``not-supported``).
    Raises nothing."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": text}],
    }
