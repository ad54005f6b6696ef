"""The CDS Hooks 2.0 service (https://cds-hooks.hl7.org/2.0/) as a FastAPI router.

* ``GET /cds-services`` — discovery: ``wardwatch-sepsis`` (hook ``patient-view``) and
  ``wardwatch-sepsis-encounter`` (hook ``encounter-start``), no token.
* ``POST /cds-services/{service_id}`` — the EHR names the patient by its FHIR logical id
  (``context.patientId``); it is pseudonymised with the edge's key exactly as the edge
  pseudonymises ``Patient/<id>`` (:func:`fhir.pseudonym.pseudonymise`, system ""), and
  the cards come from that pseudonym's latest score and open alert
  (:func:`streams.cds_cards.sepsis_cards`). No score: ``{"cards": []}``.
* ``POST /cds-services/{service_id}/feedback`` — card outcomes, stored and counted;
  ``GET`` of the same path (an API token, analyst or admin) returns the counts.

Hook and feedback calls carry the EHR's signed JWT (:mod:`streams.cds_auth`); each hook
call is written to the audit log (who = ``cds:<iss>``, role ``cds-client``) before the
cards are returned. ``prefetch.patient``, when sent, must be that same Patient (400
otherwise); nothing else of it is read or kept, and the EHR's id is never stored or logged.
"""

# ruff: noqa: N815  (the models' field names are the spec's camelCase JSON names)
# No ``from __future__ import annotations``: FastAPI resolves the annotations of the
# handlers, which name parameters of the factory, at definition time.
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine

from fhir.pseudonym import pseudonymise
from storage import access, cds_feedback, score_search
from storage.access import Principal
from streams.cds_auth import CdsAuthError, CdsTokenVerifier
from streams.cds_cards import sepsis_cards

PREFETCH = {"patient": "Patient/{{context.patientId}}"}
SERVICES: dict[str, dict[str, Any]] = {
    "wardwatch-sepsis": {
        "hook": "patient-view",
        "title": "WardWatch sepsis risk",
        "description": "The patient's latest WardWatch sepsis risk score and open alert "
        "(risk, band, NEWS2, qSOFA), with lactate and blood-culture proposals for a "
        "warning or critical alert. Decision support, not a diagnosis.",
        "prefetch": PREFETCH,
    },
    "wardwatch-sepsis-encounter": {
        "hook": "encounter-start",
        "title": "WardWatch sepsis risk at encounter start",
        "description": "The same card as wardwatch-sepsis when an encounter starts.",
        "prefetch": PREFETCH,
    },
}
CDS_ROLE = "cds-client"

_cds_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="CdsClientJWT",
    description="The EHR's signed JWT (CDS Hooks 2.0, Trusting CDS Clients).",
)


class HookContext(BaseModel):
    """The hook's context: WardWatch reads ``patientId`` only."""

    model_config = ConfigDict(extra="allow")
    patientId: str = Field(pattern=r"^[A-Za-z0-9\-.]{1,64}$", description="FHIR Patient id")


class HookRequest(BaseModel):
    """A CDS Hooks 2.0 request body."""

    hook: str
    hookInstance: str = Field(min_length=1, max_length=200)
    context: HookContext
    fhirServer: str | None = None
    fhirAuthorization: dict[str, Any] | None = None
    prefetch: dict[str, Any] | None = None


class AcceptedSuggestion(BaseModel):
    """A suggestion the user accepted (by its uuid)."""

    id: str


class OverrideReason(BaseModel):
    """Why a card was overridden; WardWatch keeps the coded reason, never the comment."""

    reason: dict[str, Any] | None = None
    userComment: str | None = None


class FeedbackItem(BaseModel):
    """One card outcome."""

    card: str = Field(min_length=1, max_length=200)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] = []
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: datetime


class FeedbackRequest(BaseModel):
    """A CDS Hooks 2.0 feedback body."""

    feedback: list[FeedbackItem] = Field(min_length=1, max_length=100)


def _reason_code(item: FeedbackItem) -> str | None:
    reason = item.overrideReason.reason if item.overrideReason is not None else None
    if not isinstance(reason, dict):
        return None
    code, system = reason.get("code"), reason.get("system")
    if not isinstance(code, str):
        return None
    return f"{system}|{code}" if isinstance(system, str) else code


def cds_router(
    engine: Engine,
    *,
    verifier: CdsTokenVerifier | None,
    pseudonym_key: bytes,
    base_url: str | None,
    reader: Callable[..., Principal],
) -> APIRouter:
    """The CDS Hooks routes over ``engine``. ``verifier`` None: hook and feedback calls
    answer 503 (not configured). ``base_url``: the public URL of ``/cds-services`` (the
    JWT audience's stem), None to take it from each request. ``reader``: the API's
    dependency for a principal allowed to read scores (for the feedback counts). Raises
    nothing; handlers raise HTTPException (400/401/404/503)."""
    router = APIRouter(tags=["cds-hooks"])

    def service(service_id: str) -> dict[str, Any]:
        found = SERVICES.get(service_id)
        if found is None:
            raise HTTPException(404, f"no CDS service {service_id!r}")
        return found

    def endpoint(request: Request, service_id: str) -> str:
        stem = base_url or str(request.base_url).rstrip("/") + "/cds-services"
        return f"{stem.rstrip('/')}/{service_id}"

    def client(
        request: Request,
        service_id: str,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_cds_bearer)],
    ) -> Principal:
        service(service_id)
        if verifier is None:
            raise HTTPException(
                503, "CDS Hooks is not configured (WARDWATCH_CDS_JWKS, WARDWATCH_CDS_ISSUERS)"
            )
        url = endpoint(request, service_id)
        audience = [url, f"{url}/feedback"] if request.url.path.endswith("/feedback") else [url]
        token = creds.credentials if creds is not None else None
        try:
            claims = verifier.verify(token, audience)
        except CdsAuthError as e:
            raise HTTPException(
                401, e.reason, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            ) from e
        return Principal(f"cds:{claims['iss']}"[:200], CDS_ROLE)

    @router.get("/cds-services", summary="CDS Hooks discovery: the services offered")
    def discovery() -> dict[str, Any]:
        return {"services": [{"id": sid, **spec} for sid, spec in SERVICES.items()]}

    @router.post(
        "/cds-services/{service_id}",
        summary="Call a CDS service (EHR JWT): cards from the latest score and open alert",
    )
    def call(
        request: Request,
        service_id: str,
        body: HookRequest,
        who: Annotated[Principal, Depends(client)],
    ) -> dict[str, Any]:
        spec = service(service_id)
        if body.hook != spec["hook"]:
            raise HTTPException(400, f"service {service_id!r} answers hook {spec['hook']!r}")
        patient_id = body.context.patientId
        pre = (body.prefetch or {}).get("patient")
        if isinstance(pre, dict) and pre.get("id") not in (None, patient_id):
            raise HTTPException(400, "prefetch.patient is not the context's patient")
        pseudonym = pseudonymise(patient_id, pseudonym_key)
        score = score_search.latest_score(engine, pseudonym)
        alert = score_search.open_alert(engine, pseudonym) if score is not None else None
        # The audit row names the pseudonym and the hook instance, never the EHR's id.
        access.audit(
            engine, who, "cds-hook", f"POST /cds-services/{service_id} {body.hook}", pseudonym
        )
        return {"cards": sepsis_cards(score, alert, patient_id=patient_id)}

    @router.post(
        "/cds-services/{service_id}/feedback",
        summary="CDS Hooks feedback (EHR JWT): card outcomes, stored as counts",
    )
    def feedback(
        service_id: str,
        body: FeedbackRequest,
        who: Annotated[Principal, Depends(client)],
    ) -> dict[str, int]:
        now = datetime.now(UTC)
        rows = [
            cds_feedback.FeedbackRow(
                service_id=service_id,
                card_uuid=item.card,
                outcome=item.outcome,
                accepted_suggestions=len(item.acceptedSuggestions),
                override_reason=_reason_code(item),
                outcome_at=item.outcomeTimestamp
                if item.outcomeTimestamp.tzinfo is not None
                else item.outcomeTimestamp.replace(tzinfo=UTC),
                received_at=now,
                client=who.name,
            )
            for item in body.feedback
        ]
        return {"stored": cds_feedback.record_feedback(engine, rows)}

    @router.get(
        "/cds-services/{service_id}/feedback",
        summary="Feedback counts of a CDS service (API token: analyst, admin)",
    )
    def feedback_counts(
        request: Request,
        service_id: str,
        who: Annotated[Principal, Depends(reader)],
    ) -> dict[str, Any]:
        service(service_id)
        counts = cds_feedback.feedback_counts(engine, service_id)
        access.audit(engine, who, "read", f"GET {request.url.path}", None)
        return {"service": service_id, **counts}

    return router
