"""Delivery: the retry schedule, and the notifications a subscriber is sent."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from storage.outbox import OutboxEvent, SubscriberState
from streams.deliver_rest_hook import build_notification
from streams.delivery import backoff_s
from streams.settings import Settings

T = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("failures", "wait"), [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (9, 256.0), (10, 300.0),
                           (10_000, 300.0)],
)  # fmt: skip
def test_backoff_doubles_up_to_the_cap(failures: int, wait: float) -> None:
    assert backoff_s(failures, 1.0, 300.0) == wait


def state(**kw: object) -> SubscriberState:
    base = SubscriberState(
        id="s1", kind="rest-hook", topic="t", endpoint="http://r", payload="id-only",
        headers=[], heartbeat_s=None, resource={}, status="active", events_since_start=12,
        delivered_through=10, handshake_done=True, failing_since=None, last_error=None,
        created_at=T, created_by="w",
    )  # fmt: skip
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_notifications_carry_the_event_numbers() -> None:
    s = Settings(delivery_fhir_base="https://w/fhir/")
    evs = [OutboxEvent(event_number=n, queued_at=T, alert_id=f"a{n}", patient="p",
                       resource={"resourceType": "RiskAssessment", "id": f"a{n}"})
           for n in (11, 12)]  # fmt: skip
    b = build_notification(s, state(), "event-notification", evs)
    p = b["entry"][0]["resource"]["parameter"]  # type: ignore[index]
    assert p[0]["valueReference"]["reference"] == "https://w/fhir/Subscription/s1"
    assert p[4] == {"name": "events-since-subscription-start", "valueString": "12"}
    assert [x["part"][0]["valueString"] for x in p[5:]] == ["11", "12"]
    hb = build_notification(s, state(status="requested"), "handshake")
    hp = hb["entry"][0]["resource"]["parameter"]  # type: ignore[index]
    assert (hp[2]["valueCode"], hp[3]["valueCode"]) == ("active", "handshake")
    assert len(hb["entry"]) == 1  # type: ignore[arg-type]
