"""FHIR topic-based Subscriptions (R5 Backport IG for R4) in the API: create, read, list
and delete rest-hook subscriptions to the sepsis-risk topic, and the Backport operations
``$status`` and ``$events`` with which a receiver checks its subscription and recovers
a gap. The deliveries themselves are ``wardwatch deliver``'s (streams/deliver_rest_hook.py).

Access: the alerting and admin roles (the dependency comes from ``streams.api``); reads
of ``$events`` (alerts of patients) are audited before they are returned.
"""

# No ``from __future__ import annotations``: FastAPI resolves the handlers' annotations.
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from fhir.subscriptions import (
    StatusOf,
    SubscriptionRequest,
    SubscriptionRequestError,
    notification_bundle,
    parse_subscription,
    status_parameters,
    subscription_resource,
    subscription_topic,
)
from storage import access, outbox
from storage.access import Principal
from storage.outbox import SubscriberState

FHIR_JSON = "application/fhir+json"
KIND = "rest-hook"
# Backport IG status codes of R4's Subscription.status; "off" is our "deleted".
_SHOWN = {"requested": "requested", "active": "active", "error": "error", "off": "off"}


def _fhir(body: dict[str, Any], status: int = 200, **headers: str) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON, headers=headers)


def _outcome(status: int, text: str, code: str = "invalid") -> JSONResponse:
    return _fhir(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}],
        },
        status,
    )


def _base(request: Request) -> str:
    return f"{str(request.base_url).rstrip('/')}/fhir"


def _shown(sub: SubscriberState) -> dict[str, Any]:
    req = SubscriptionRequest(
        topic=sub.topic, endpoint=sub.endpoint, payload=sub.payload, headers=sub.headers,
        heartbeat_s=sub.heartbeat_s,
    )  # fmt: skip
    return subscription_resource(sub.id, req, _SHOWN[sub.status], error=sub.last_error)


def subscription_router(engine: Engine, may_subscribe: Callable[..., Principal]) -> APIRouter:
    """The ``/fhir/Subscription`` and ``/fhir/SubscriptionTopic`` routes. ``may_subscribe``
    is the API's role dependency (alerting, admin). Raises nothing; handlers answer 404
    for an unknown id, 422 (an OperationOutcome) for a request they refuse, and 503 when
    the database is away (the API's handler)."""
    router = APIRouter(prefix="/fhir", tags=["subscriptions"])

    def found(sid: str) -> SubscriberState:
        sub = outbox.get_subscriber(engine, sid)
        if sub is None or sub.kind != KIND:
            raise HTTPException(404, f"no Subscription {sid}")
        return sub

    @router.get("/SubscriptionTopic/sepsis-risk", summary="The sepsis-risk SubscriptionTopic")
    def topic(who: Annotated[Principal, Depends(may_subscribe)]) -> JSONResponse:
        return _fhir(subscription_topic())

    @router.post(
        "/Subscription",
        summary="Create a rest-hook Subscription (Backport profile) to the sepsis-risk topic",
        status_code=201,
    )
    def create(
        request: Request,
        who: Annotated[Principal, Depends(may_subscribe)],
        resource: Annotated[dict[str, Any], Body(media_type=FHIR_JSON)],
    ) -> JSONResponse:
        try:
            req = parse_subscription(resource)
        except SubscriptionRequestError as exc:
            return _outcome(422, exc.reason)
        sub = outbox.create_subscriber(
            engine, kind=KIND, topic=req.topic, endpoint=req.endpoint, payload=req.payload,
            headers=req.headers, heartbeat_s=req.heartbeat_s, resource=resource, who=who.name,
        )  # fmt: skip
        access.audit(engine, who, "subscribe", f"Subscription/{sub.id}", None)
        return _fhir(_shown(sub), 201, Location=f"{_base(request)}/Subscription/{sub.id}")

    @router.get("/Subscription", summary="Every rest-hook Subscription (a searchset Bundle)")
    def search(who: Annotated[Principal, Depends(may_subscribe)]) -> JSONResponse:
        subs = outbox.list_subscribers(engine, KIND)
        return _fhir(
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(subs),
                "entry": [{"resource": _shown(s)} for s in subs],
            }
        )

    @router.get("/Subscription/{sid}", summary="One Subscription and its status")
    def read(sid: str, who: Annotated[Principal, Depends(may_subscribe)]) -> JSONResponse:
        return _fhir(_shown(found(sid)))

    @router.delete("/Subscription/{sid}", summary="Stop a Subscription (its events are kept)")
    def remove(sid: str, who: Annotated[Principal, Depends(may_subscribe)]) -> JSONResponse:
        found(sid)
        outbox.switch_off(engine, sid)
        access.audit(engine, who, "unsubscribe", f"Subscription/{sid}", None)
        return _fhir(_shown(found(sid)))

    @router.get("/Subscription/{sid}/$status", summary="SubscriptionStatus (Backport $status)")
    def status(
        request: Request, sid: str, who: Annotated[Principal, Depends(may_subscribe)]
    ) -> JSONResponse:
        sub = found(sid)
        params = status_parameters(
            StatusOf(
                subscription_url=f"{_base(request)}/Subscription/{sid}",
                topic=sub.topic,
                status=_SHOWN[sub.status],
                kind="query-status",
                events_since_start=sub.events_since_start,
                error=sub.last_error,
            )
        )
        return _fhir({"resourceType": "Bundle", "type": "searchset", "total": 1,
                      "entry": [{"resource": params}]})  # fmt: skip

    @router.get(
        "/Subscription/{sid}/$events",
        summary="Events by number (Backport $events): recover a gap",
    )
    def events(
        request: Request,
        sid: str,
        who: Annotated[Principal, Depends(may_subscribe)],
        events_since: Annotated[int, Query(alias="eventsSinceNumber", ge=1)] = 1,
        events_until: Annotated[int | None, Query(alias="eventsUntilNumber", ge=1)] = None,
        content: Annotated[str | None, Query(pattern="^(empty|id-only|full-resource)$")] = None,
    ) -> JSONResponse:
        sub = found(sid)
        if events_until is not None and events_until < events_since:
            return _outcome(422, "eventsUntilNumber is below eventsSinceNumber")
        if events_until is None or events_until - events_since >= 1000:
            events_until = events_since + 999  # bounded answer; ask again for more
        evs = outbox.events(engine, sid, events_since, events_until)
        # one audit row for the read, with the patients it returned
        access.audit(
            engine,
            who,
            "read",
            f"GET /fhir/Subscription/{sid}/$events",
            patients=[e.patient for e in evs],
            query=access.query_sha256(
                "subscription-events", {"id": sid, "since": events_since, "until": events_until}
            ),
        )
        of = StatusOf(
            subscription_url=f"{_base(request)}/Subscription/{sid}",
            topic=sub.topic,
            status=_SHOWN[sub.status],
            kind="query-event",
            events_since_start=sub.events_since_start,
            events=[e.notification() for e in evs],
            payload=content or sub.payload,
            base_url=_base(request),
        )
        bundle = notification_bundle(of, bundle_id=f"{sid}-{events_since}-{events_until}")
        return _fhir(bundle)

    return router
