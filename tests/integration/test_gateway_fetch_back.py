"""Id-only and empty subscription notifications at the gateway, on the real Kafka.

The test's own loopback FHIR server (``http.server``) serves Observations naming a
patient by MRN and name. An id-only notification posted to the real gateway makes it
fetch them (bearer token sent), and they land on the run's inbound topic pseudonymised,
as a full-resource notification would. A focus outside the configured base is refused
422, as is one the server answers 404 for (asked once, dead-lettered); a heartbeat is
answered 200 with nothing published, and with the FHIR server down the notification is
answered 503 with Retry-After (the sender resends).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from .test_gateway import Running, consume_all, gateway_settings

pytestmark = pytest.mark.kafka


def observation(oid: str, value: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": oid, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]},
        "subject": {"reference": "Patient/MRN-0815", "display": "Max Mustermann"},
        "effectiveDateTime": "2026-01-01T00:00:00Z",
        "valueQuantity": {"value": value, "unit": "/min", "code": "/min"},
    }  # fmt: skip


class FhirServer:
    """Serves ``/fhir/Observation/<id>`` from ``resources``; records what was asked."""

    def __init__(self, resources: dict[str, dict[str, Any]]) -> None:
        self.requests: list[tuple[str, str]] = []  # (path, Authorization)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("Authorization", "")))
                found = resources.get(self.path.removeprefix("/fhir/"))
                body = orjson.dumps(found or {"resourceType": "OperationOutcome"})
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def notification(*focus: str, ntype: str = "event-notification") -> dict[str, Any]:
    status = {"resourceType": "SubscriptionStatus", "status": "active", "type": ntype,
              "subscription": {"reference": "https://ehr.example/fhir/Subscription/s1"},
              "notificationEvent": [{"eventNumber": str(i), "focus": {"reference": f}}
                                    for i, f in enumerate(focus, start=1)]}  # fmt: skip
    return {"resourceType": "Bundle", "type": "subscription-notification",
            "entry": [{"fullUrl": "urn:uuid:9a1f", "resource": status},
                      *({"fullUrl": f} for f in focus)]}  # fmt: skip


def test_id_only_notifications_are_fetched_back_and_published(tmp_path: Path) -> None:
    fhir = FhirServer({"Observation/o1": observation("o1", 22),
                       "Observation/o2": observation("o2", 24)})  # fmt: skip
    base = f"http://127.0.0.1:{fhir.port}/fhir"
    s = gateway_settings(tmp_path, gateway_fetch_base_url=base, gateway_fetch_token="tok-1",
                         gateway_fetch_retries=1, gateway_fetch_backoff_s=0.05,
                         gateway_fetch_timeout_s=2.0, gateway_http_retry_after_s=7)  # fmt: skip
    try:
        with (
            Running(s) as gw,
            httpx.Client(base_url=f"http://127.0.0.1:{gw.server.http_port}", timeout=30) as c,
        ):
            r = c.post("/fhir", content=orjson.dumps(notification(f"{base}/Observation/o1",
                                                                  "Observation/o2")))  # fmt: skip
            assert r.status_code == 200, r.text
            assert "2 resources accepted" in r.text
            assert sorted(p for p, _ in fhir.requests) == ["/fhir/Observation/o1",
                                                           "/fhir/Observation/o2"]  # fmt: skip
            assert {a for _, a in fhir.requests} == {"Bearer tok-1"}

            outside = notification("https://elsewhere.example/fhir/Observation/o1")
            r = c.post("/fhir", content=orjson.dumps(outside))
            assert r.status_code == 422 and r.json()["resourceType"] == "OperationOutcome"
            assert len(fhir.requests) == 2  # nothing fetched from elsewhere

            # A focus the server does not have: refused at once, not retried, dead-lettered.
            r = c.post("/fhir", content=orjson.dumps(notification("Observation/deleted")))
            assert r.status_code == 422, r.text
            assert "HTTP 404" in r.json()["issue"][0]["diagnostics"]
            assert [p for p, _ in fhir.requests].count("/fhir/Observation/deleted") == 1

            r = c.post("/fhir", content=orjson.dumps(notification(ntype="heartbeat")))
            assert r.status_code == 200 and "0 resources accepted" in r.text

            fhir.stop()
            r = c.post("/fhir", content=orjson.dumps(notification("Observation/o1")))
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] == "7"
            assert r.json()["issue"][0]["code"] == "transient"
    finally:
        fhir.stop()

    dead = consume_all(s, s.topic_dlq, 2)  # outside the base, and the deleted focus
    reasons = sorted(dict(m.headers() or [])["wardwatch.reason"].decode() for m in dead)
    assert "HTTP 404" in reasons[1] and "outside" in reasons[0], reasons
    landed = consume_all(s, s.topic_inbound, 2)
    assert len(landed) == 2  # the two fetched Observations, nothing else
    for m in landed:
        assert b"Mustermann" not in m.value() and b"MRN-0815" not in m.value()
        assert m.key().startswith(b"pt-")
    values = sorted(orjson.loads(m.value())["valueQuantity"]["value"] for m in landed)
    assert values == [22, 24]
