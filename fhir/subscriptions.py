"""Topic-based Subscriptions for FHIR R4 (Subscriptions R5 Backport IG, STU 1.1): the
sepsis-risk SubscriptionTopic, reading a Backport Subscription, and building its
notification Bundles. Pure: no I/O.

A notification is a ``history`` Bundle whose first entry is a ``Parameters`` resource
(profile ``backport-subscription-status-r4``) saying which subscription, topic, status,
notification type (handshake, heartbeat, event-notification, query-status, query-event)
and, for events, each event's number and focus; the focus resources follow, in full for
``full-resource`` subscriptions, as bare ``fullUrl`` entries for ``id-only``, and not at
all for ``empty``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from .errors import PermanentInputError

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
SUBSCRIPTION_PROFILE = f"{BACKPORT}/backport-subscription"
STATUS_PROFILE = f"{BACKPORT}/backport-subscription-status-r4"
PAYLOAD_EXT = f"{BACKPORT}/backport-payload-content"
HEARTBEAT_EXT = f"{BACKPORT}/backport-heartbeat-period"
SEPSIS_TOPIC = "https://wardwatch.example/fhir/SubscriptionTopic/sepsis-risk"
TOPICS = (SEPSIS_TOPIC,)
PAYLOADS = ("empty", "id-only", "full-resource")
MAX_HEARTBEAT_S = 86_400

NotificationType = Literal[
    "handshake", "heartbeat", "event-notification", "query-status", "query-event"
]


class SubscriptionRequestError(PermanentInputError):
    """A Subscription the server cannot accept as asked (never retried: fix the request)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionRequest:
    """What a client asked for in a Backport Subscription."""

    topic: str
    endpoint: str
    payload: str
    headers: list[str]
    heartbeat_s: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationEvent:
    """One event of a notification: its number, when it happened, its focus resource."""

    number: int
    timestamp: datetime
    resource: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusOf:
    """What a SubscriptionStatus says: the subscription, its topic and state, the
    notification's type, the events it carries and how (``payload``: empty, id-only or
    full-resource; focus references are made absolute under ``base_url`` when given)."""

    subscription_url: str
    topic: str
    status: str
    kind: NotificationType
    events_since_start: int
    events: Sequence[NotificationEvent] = ()
    payload: str = "id-only"
    base_url: str = ""
    error: str | None = None


def subscription_topic() -> dict[str, Any]:
    """The R4B/R5-shaped SubscriptionTopic of new and updated sepsis RiskAssessments
    (served as JSON for discovery; R4 servers have no such resource type). Raises nothing."""
    return {
        "resourceType": "SubscriptionTopic",
        "id": "sepsis-risk",
        "url": SEPSIS_TOPIC,
        "title": "WardWatch sepsis risk alerts",
        "status": "active",
        "description": "A sepsis-risk RiskAssessment (an alert) was created or updated.",
        "resourceTrigger": [
            {
                "description": "An alert is raised or its assessment updated.",
                "resource": "RiskAssessment",
                "supportedInteraction": ["create", "update"],
            }
        ],
        "canFilterBy": [],
        "notificationShape": [{"resource": "RiskAssessment"}],
    }


def _ext(element: dict[str, Any], url: str) -> Any:
    for e in element.get("extension") or []:
        if isinstance(e, dict) and e.get("url") == url:
            return next((v for k, v in e.items() if k.startswith("value")), None)
    return None


def parse_subscription(resource: Any) -> SubscriptionRequest:
    """Read a Backport (R4) Subscription: ``criteria`` the topic's canonical URL, channel
    type ``rest-hook`` with an http(s) ``endpoint``, payload content (extension, default
    ``id-only``), ``header`` values and heartbeat period (extension, seconds).

    Raises :class:`SubscriptionRequestError` (permanent) saying what is wrong.
    """
    if not isinstance(resource, dict) or resource.get("resourceType") != "Subscription":
        raise SubscriptionRequestError("expected a Subscription resource")
    topic = resource.get("criteria")
    if topic not in TOPICS:
        raise SubscriptionRequestError(f"criteria must be a topic this server has: {TOPICS}")
    channel = resource.get("channel")
    if not isinstance(channel, dict) or channel.get("type") != "rest-hook":
        raise SubscriptionRequestError("channel.type must be rest-hook")
    endpoint = channel.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
        raise SubscriptionRequestError("channel.endpoint must be an http(s) URL")
    payload_el = channel.get("_payload")
    payload_el = payload_el if isinstance(payload_el, dict) else {}
    payload = _ext(payload_el, PAYLOAD_EXT) or "id-only"
    if payload not in PAYLOADS:
        raise SubscriptionRequestError(f"payload content must be one of {PAYLOADS}")
    mime = channel.get("payload", "application/fhir+json")
    if mime not in ("application/fhir+json", "application/json"):
        raise SubscriptionRequestError("channel.payload must be application/fhir+json")
    headers = channel.get("header") or []
    if not isinstance(headers, list) or not all(
        isinstance(h, str) and ":" in h and "\n" not in h and "\r" not in h for h in headers
    ):
        raise SubscriptionRequestError("channel.header must be 'Name: value' strings")
    heartbeat = _ext(channel, HEARTBEAT_EXT)
    if heartbeat is not None and (
        not isinstance(heartbeat, int)
        or isinstance(heartbeat, bool)
        or not 1 <= heartbeat <= MAX_HEARTBEAT_S
    ):
        raise SubscriptionRequestError(f"heartbeat period must be 1..{MAX_HEARTBEAT_S} seconds")
    return SubscriptionRequest(
        topic=str(topic), endpoint=endpoint, payload=str(payload), headers=headers,
        heartbeat_s=heartbeat,
    )  # fmt: skip


def subscription_resource(
    sid: str, request: SubscriptionRequest, status: str, *, error: str | None = None
) -> dict[str, Any]:
    """The stored Subscription as the server shows it (header values are not echoed:
    they may carry the receiver's credentials). Raises nothing."""
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": request.endpoint,
        "payload": "application/fhir+json",
        "_payload": {"extension": [{"url": PAYLOAD_EXT, "valueCode": request.payload}]},
    }
    if request.heartbeat_s is not None:
        channel["extension"] = [{"url": HEARTBEAT_EXT, "valueUnsignedInt": request.heartbeat_s}]
    out: dict[str, Any] = {
        "resourceType": "Subscription",
        "id": sid,
        "meta": {"profile": [SUBSCRIPTION_PROFILE]},
        "status": status,
        "reason": "WardWatch sepsis-risk alerts",
        "criteria": request.topic,
        "channel": channel,
    }
    if error:
        out["error"] = error
    return out


def _instant(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_parameters(of: StatusOf) -> dict[str, Any]:
    """The SubscriptionStatus (R4 Backport: a Parameters resource). Raises nothing."""
    params: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": of.subscription_url}},
        {"name": "topic", "valueCanonical": of.topic},
        {"name": "status", "valueCode": of.status},
        {"name": "type", "valueCode": of.kind},
        # R4 has no integer64: the Backport IG carries these numbers as strings.
        {"name": "events-since-subscription-start", "valueString": str(of.events_since_start)},
    ]
    for ev in of.events:
        part: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(ev.number)},
            {"name": "timestamp", "valueInstant": _instant(ev.timestamp)},
        ]
        if of.payload != "empty":
            focus = _focus(ev, of.base_url)
            part.append({"name": "focus", "valueReference": {"reference": focus}})
        params.append({"name": "notification-event", "part": part})
    if of.error:
        params.append({"name": "error", "valueCodeableConcept": {"text": of.error}})
    return {
        "resourceType": "Parameters",
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": params,
    }


def _focus(ev: NotificationEvent, base_url: str) -> str:
    ref = f"{ev.resource.get('resourceType', 'RiskAssessment')}/{ev.resource.get('id', '')}"
    return f"{base_url.rstrip('/')}/{ref}" if base_url else ref


def notification_bundle(
    of: StatusOf, *, bundle_id: str, now: datetime | None = None
) -> dict[str, Any]:
    """A Backport notification: a ``history`` Bundle, SubscriptionStatus first, then the
    events' focus resources as ``payload`` asks. Raises nothing."""
    status_res = status_parameters(of)
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{bundle_id}",
            "resource": status_res,
            "request": {"method": "GET", "url": f"{of.subscription_url}/$status"},
            "response": {"status": "200"},
        }
    ]
    if of.payload != "empty":
        for ev in of.events:
            entry: dict[str, Any] = {"fullUrl": _focus(ev, of.base_url)}
            if of.payload == "full-resource":
                entry["resource"] = ev.resource
            entry["request"] = {"method": "POST", "url": "RiskAssessment"}
            entry["response"] = {"status": "201"}
            entries.append(entry)
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "type": "history",
        "timestamp": _instant(now or datetime.now(UTC)),
        "entry": entries,
    }
