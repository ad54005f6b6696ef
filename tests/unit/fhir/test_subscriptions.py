"""Backport IG Subscriptions: reading a Subscription, building notification Bundles."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir.subscriptions import (
    HEARTBEAT_EXT,
    PAYLOAD_EXT,
    SEPSIS_TOPIC,
    STATUS_PROFILE,
    NotificationEvent,
    StatusOf,
    SubscriptionRequestError,
    notification_bundle,
    parse_subscription,
)

T = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def subscription(**channel: Any) -> dict[str, Any]:
    ch = {"type": "rest-hook", "endpoint": "https://r.example/hook",
          "payload": "application/fhir+json",
          "_payload": {"extension": [{"url": PAYLOAD_EXT, "valueCode": "full-resource"}]},
          "header": ["Authorization: Bearer x"],
          "extension": [{"url": HEARTBEAT_EXT, "valueUnsignedInt": 60}]} | channel  # fmt: skip
    return {"resourceType": "Subscription", "status": "requested", "criteria": SEPSIS_TOPIC,
            "channel": ch}  # fmt: skip


def test_parse_backport_subscription() -> None:
    req = parse_subscription(subscription())
    assert (req.topic, req.endpoint, req.payload, req.heartbeat_s) == (
        SEPSIS_TOPIC, "https://r.example/hook", "full-resource", 60,
    )  # fmt: skip
    assert req.headers == ["Authorization: Bearer x"]
    bare = parse_subscription(subscription(_payload=None, extension=None, header=None))
    assert (bare.payload, bare.heartbeat_s, bare.headers) == ("id-only", None, [])


@pytest.mark.parametrize(
    "bad",
    [
        {"criteria": "RiskAssessment?"},
        {"channel": {"type": "websocket", "endpoint": "https://x"}},
        {"channel": {"type": "rest-hook", "endpoint": "ftp://x"}},
        {"channel": {"type": "rest-hook", "endpoint": "https://x", "header": ["a\r\nb: c"]}},
        {"channel": {"type": "rest-hook", "endpoint": "https://x",
                     "extension": [{"url": HEARTBEAT_EXT, "valueUnsignedInt": 0}]}},
        {"channel": {"type": "rest-hook", "endpoint": "https://x",
                     "_payload": {"extension": [{"url": PAYLOAD_EXT, "valueCode": "all"}]}}},
        {"resourceType": "Patient"},
    ],
)  # fmt: skip
def test_refused_subscriptions(bad: dict[str, Any]) -> None:
    with pytest.raises(SubscriptionRequestError):
        parse_subscription(subscription() | bad)


def events() -> list[NotificationEvent]:
    return [
        NotificationEvent(number=n, timestamp=T, resource={"resourceType": "RiskAssessment",
                                                           "id": f"a{n}"})
        for n in (7, 8)
    ]  # fmt: skip


def bundle(payload: str) -> dict[str, Any]:
    of = StatusOf(
        subscription_url="https://w/fhir/Subscription/s1", topic=SEPSIS_TOPIC,
        status="active", kind="event-notification", events_since_start=8, events=events(),
        payload=payload, base_url="https://w/fhir",
    )  # fmt: skip
    return notification_bundle(of, bundle_id="b1", now=T)


def params(b: dict[str, Any]) -> list[dict[str, Any]]:
    status = b["entry"][0]["resource"]
    assert status["resourceType"] == "Parameters"
    assert status["meta"]["profile"] == [STATUS_PROFILE]
    p: list[dict[str, Any]] = status["parameter"]
    return p


def test_event_notification_full_resource() -> None:
    b = bundle("full-resource")
    assert b["type"] == "history"
    p = params(b)
    by = {x["name"]: x for x in p}
    assert by["type"]["valueCode"] == "event-notification"
    assert by["events-since-subscription-start"]["valueString"] == "8"
    evs = [x["part"] for x in p if x["name"] == "notification-event"]
    assert [e[0]["valueString"] for e in evs] == ["7", "8"]
    assert evs[0][2]["valueReference"]["reference"] == "https://w/fhir/RiskAssessment/a7"
    assert [e["resource"]["id"] for e in b["entry"][1:]] == ["a7", "a8"]
    assert b["entry"][1]["fullUrl"] == "https://w/fhir/RiskAssessment/a7"


def test_id_only_and_empty_payloads() -> None:
    ids = bundle("id-only")
    assert [e["fullUrl"] for e in ids["entry"][1:]] == [
        "https://w/fhir/RiskAssessment/a7", "https://w/fhir/RiskAssessment/a8",
    ]  # fmt: skip
    assert all("resource" not in e for e in ids["entry"][1:])
    empty = bundle("empty")
    assert len(empty["entry"]) == 1
    parts = [x["part"] for x in params(empty) if x["name"] == "notification-event"]
    assert [len(p) for p in parts] == [2, 2]  # number and timestamp, no focus
