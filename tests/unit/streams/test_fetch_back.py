"""Which notifications the gateway fetches back, and what it will fetch."""

from __future__ import annotations

from typing import Any

import pytest

from streams.fetch_back import (
    FocusRefusedError,
    focus_references,
    needs_fetch,
    notification_type,
    resolve,
)

BASE = "https://ehr.example/fhir"


def r5(*refs: str, ntype: str = "event-notification") -> dict[str, Any]:
    return {"resource": {"resourceType": "SubscriptionStatus", "type": ntype,
                         "notificationEvent": [{"eventNumber": "1", "focus": {"reference": r}}
                                               for r in refs]}}  # fmt: skip


def backport(*refs: str) -> dict[str, Any]:
    params: list[dict[str, Any]] = [{"name": "type", "valueCode": "event-notification"}]
    params += [{"name": "notification-event", "part": [
        {"name": "event-number", "valueString": "1"},
        {"name": "focus", "valueReference": {"reference": r}}]} for r in refs]  # fmt: skip
    return {"resource": {"resourceType": "Parameters", "parameter": params}}


def test_id_only_and_empty_need_a_fetch_full_resource_does_not() -> None:
    obs = {"resource": {"resourceType": "Observation"}}
    assert needs_fetch([r5("Observation/1"), {"fullUrl": f"{BASE}/Observation/1"}])
    assert needs_fetch([r5()])
    assert not needs_fetch([r5("Observation/1"), obs])
    assert not needs_fetch([{"fullUrl": f"{BASE}/Observation/1"}])  # no status: not one


def test_focus_references_from_both_status_shapes_and_full_urls() -> None:
    entries = [backport("Observation/1", f"{BASE}/Observation/2"),
               {"fullUrl": f"{BASE}/Observation/2"},
               {"fullUrl": f"{BASE}/Observation/3"}]  # fmt: skip
    assert focus_references(entries) == ["Observation/1", f"{BASE}/Observation/2",
                                         f"{BASE}/Observation/3"]  # fmt: skip
    assert focus_references([r5("Patient/p", ntype="heartbeat")]) == ["Patient/p"]
    assert notification_type([r5(ntype="heartbeat")]) == "heartbeat"
    assert notification_type([backport()]) == "event-notification"
    assert notification_type([r5(ntype="x\nInjected: 1")]) == "unknown"


def test_resolve_stays_under_the_base() -> None:
    assert resolve("Observation/1", BASE) == (f"{BASE}/Observation/1", "Observation")
    assert resolve(f"{BASE}/Observation/a.b-1/_history/2", BASE + "/")[1] == "Observation"
    for bad in ("https://evil.example/fhir/Observation/1", "https://ehr.example/fhirx/Obs/1",
                f"{BASE}/../admin/Observation/1", "Observation/1?_format=xml",
                "urn:uuid:0b1c", "Observation", f"{BASE}/Observation/1/../2"):  # fmt: skip
        with pytest.raises(FocusRefusedError, match=r"outside|not <Type>"):
            resolve(bad, BASE)
