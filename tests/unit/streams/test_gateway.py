"""The gateway's logic without Kafka: MLLP ACKs, resends, dead letters, FHIR over HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from fhir.hl7v2 import frame
from streams.gateway import DeliveryError, Gateway, SeenStore, build_http_app
from streams.sealing import key_ring
from streams.settings import Settings

ORU = (
    "MSH|^~\\&|LAB|HOSP|WW|WARD|20260101120000+0000||ORU^R01|{cid}|P|2.5\r"
    "PID|1||12345^^^HOSP^MR||DOE^JOHN||19500304|M\r"
    "OBX|1|NM|8867-4^HR^LN||88|/min|||||F|||20260101115500+0000\r"
)
OBS: dict[str, Any] = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    "subject": {"reference": "Patient/p1", "display": "John Doe"},
    "effectiveDateTime": "2026-01-01T00:00:00Z",
    "valueQuantity": {"value": 80, "unit": "/min", "code": "/min"},
}


class FakeBridge:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, list[Any]]] = []
        self.fail = False

    async def send(
        self, topic: str, key: bytes, value: bytes, headers: Any = None
    ) -> tuple[int, int]:
        await asyncio.sleep(0)
        if self.fail:
            raise DeliveryError("broker away")
        self.sent.append((topic, key, value, list(headers or [])))
        return 0, len(self.sent) - 1

    def close(self, timeout: float = 0) -> None:
        pass


def make(tmp_path: Path, **kw: Any) -> tuple[Gateway, FakeBridge]:
    s = Settings(
        topic_inbound="in", topic_dlq="dlq", gateway_dedup_path=tmp_path / "seen.sqlite", **kw
    )
    bridge = FakeBridge()
    gw = Gateway(s, bridge, SeenStore(s.gateway_dedup_path, 30))  # type: ignore[arg-type]
    return gw, bridge


def opened(s: Settings, sent: tuple[str, bytes, bytes, list[Any]]) -> bytes:
    """The original bytes of a dead letter the fake bridge took (decrypted)."""
    topic, key, value, headers = sent
    hdrs = {k: v.decode() for k, v in headers}
    return key_ring(s).open(value, hdrs, topic=topic, key=key)


def msa(ack: bytes) -> list[str]:
    return ack.decode().split("\r")[1].split("|")


def test_accept_duplicate_and_restart(tmp_path: Path) -> None:
    gw, bridge = make(tmp_path)
    msg = ORU.format(cid="C1").encode()
    assert msa(asyncio.run(gw.handle_hl7(msg)))[1] == "AA"
    assert len(bridge.sent) == 1 and bridge.sent[0][0] == "in"
    assert b"DOE" not in bridge.sent[0][2] and b"12345" not in bridge.sent[0][2]
    dup = msa(asyncio.run(gw.handle_hl7(msg)))
    assert dup[1] == "AA" and "duplicate" in dup[3] and len(bridge.sent) == 1
    gw.seen.close()
    gw2, bridge2 = make(tmp_path)  # a restarted gateway still knows it
    assert msa(asyncio.run(gw2.handle_hl7(msg)))[1] == "AA" and bridge2.sent == []


def test_concurrent_resends_publish_once(tmp_path: Path) -> None:
    gw, bridge = make(tmp_path)
    msg = ORU.format(cid="C9").encode()

    async def both() -> list[bytes]:
        return list(await asyncio.gather(gw.handle_hl7(msg), gw.handle_hl7(msg)))

    acks = asyncio.run(both())
    assert [msa(a)[1] for a in acks] == ["AA", "AA"] and len(bridge.sent) == 1


def test_rejects_go_to_dlq_with_reason(tmp_path: Path) -> None:
    gw, bridge = make(tmp_path)
    bad = ORU.format(cid="C2").replace("||88|", "||abc|").encode()
    ack = asyncio.run(gw.handle_hl7(bad)).decode()
    assert "MSA|AE|C2|" in ack and "ERR|||102" in ack
    topic, _key, value, headers = bridge.sent[0]
    h = dict(headers)
    # kept whole but encrypted at rest; the reason says what was wrong, not the value
    assert topic == "dlq" and value != bad and opened(gw.settings, bridge.sent[0]) == bad
    assert b"abc" not in h["wardwatch.reason"] and h["wardwatch.sealed"] == b"aesgcm-v1"
    assert b"not a number" in h["wardwatch.reason"] and h["wardwatch.stage"] == b"gateway.mllp"
    assert h["wardwatch.format"] == b"hl7v2" and "wardwatch.source.topic" in h
    assert msa(asyncio.run(gw.handle_hl7(b"\x00\x01garbage")))[1] == "AR"


def test_kafka_away_gives_ae_and_no_dedup_record(tmp_path: Path) -> None:
    gw, bridge = make(tmp_path)
    bridge.fail = True
    msg = ORU.format(cid="C3").encode()
    ack = msa(asyncio.run(gw.handle_hl7(msg)))
    assert ack[1] == "AE" and "resend" in ack[3]
    bridge.fail = False
    assert msa(asyncio.run(gw.handle_hl7(msg)))[1] == "AA" and len(bridge.sent) == 1


def test_mllp_connection_pipelined_partial_oversize(tmp_path: Path) -> None:
    gw, bridge = make(tmp_path, gateway_max_body_bytes=2000)

    async def run() -> list[bytes]:
        server = await asyncio.start_server(gw.serve_mllp, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        wire = (
            frame(ORU.format(cid="P1").encode())
            + frame(b"x" * 3000)
            + frame(ORU.format(cid="P2").replace("\r", "\n").encode())
        )
        for i in range(0, len(wire), 7):  # partial frames
            w.write(wire[i : i + 7])
            await w.drain()
        acks = [await r.readuntil(b"\x1c\r") for _ in range(3)]
        w.write(b"\x0bMSH|unfinished")
        w.close()
        server.close()
        await server.wait_closed()
        return acks

    acks = asyncio.run(run())
    assert [msa(a[1:-2])[1] for a in acks] == ["AA", "AR", "AA"]
    assert [msa(a[1:-2])[2] for a in acks] == ["P1", "", "P2"]
    # the over-long frame is dead-lettered (its first 2,000 bytes, marked truncated)
    assert [t for t, *_ in bridge.sent] == ["in", "dlq", "in"]
    _topic, _key, value, headers = bridge.sent[1]
    h = dict(headers)
    assert opened(gw.settings, bridge.sent[1]) == b"x" * 2000 and b"xxxx" not in value
    assert h["wardwatch.truncated"] == b"true"
    # its whole length when its end came in the read that passed the limit, else unknown
    assert h["wardwatch.original_length"] in (b"3000", b"")
    assert b"longer than 2000" in h["wardwatch.reason"] and h["wardwatch.hl7.ack"] == b"AR"


def test_over_long_frame_without_a_dead_letter_gets_ae(tmp_path: Path) -> None:
    from fhir.hl7v2 import Hl7TooLongError

    gw, bridge = make(tmp_path, gateway_max_body_bytes=10)
    exc = Hl7TooLongError("MLLP message of 12 bytes is longer than 10", b"x" * 10, 12)
    bridge.fail = True  # Kafka away: the sender must resend, so AE, not AR
    ack = msa(asyncio.run(gw.reject_too_long(exc)))
    assert ack[1] == "AE" and "dead letter was not written" in ack[3]
    bridge.fail = False
    assert msa(asyncio.run(gw.reject_too_long(exc)))[1] == "AR"
    assert dict(bridge.sent[0][3])["wardwatch.original_length"] == b"12"


@pytest.fixture
def http(tmp_path: Path) -> tuple[TestClient, FakeBridge]:
    gw, bridge = make(tmp_path, gateway_max_body_bytes=20_000)
    return TestClient(build_http_app(gw)), bridge


def test_http_single_resource(http: tuple[TestClient, FakeBridge]) -> None:
    c, bridge = http
    r = c.post("/fhir/Observation", content=orjson.dumps(OBS))
    assert r.status_code == 202, r.text
    key, value = bridge.sent[0][1], bridge.sent[0][2]
    assert key.startswith(b"pt-") and b"John" not in value and b"Patient/p1" not in value
    assert c.put("/fhir/Observation/x", content=orjson.dumps(OBS)).status_code == 202


@pytest.mark.parametrize(
    ("body", "path", "status", "code"),
    [
        (b"{nope", "/fhir/Observation", 400, "structure"),
        (b"[1]", "/fhir/Observation", 400, "structure"),
        (orjson.dumps(OBS), "/fhir/Patient", 400, "invalid"),
        (orjson.dumps({**OBS, "resourceType": "Foo"}), "/fhir/Foo", 400, "not-supported"),
        (
            orjson.dumps({k: v for k, v in OBS.items() if k != "subject"}),
            "/fhir/Observation",
            422,
            "required",
        ),
        (
            orjson.dumps({**OBS, "valueQuantity": {"value": "80", "unit": "/min"}}),
            "/fhir/Observation",
            400,
            "invalid",
        ),
        (
            orjson.dumps({**OBS, "valueQuantity": {"value": 900, "unit": "/min"}}),
            "/fhir/Observation",
            422,
            "value",
        ),
        (b"x" * 20_001, "/fhir/Observation", 413, "too-long"),
    ],
)
def test_http_bad_input(
    http: tuple[TestClient, FakeBridge], body: bytes, path: str, status: int, code: str
) -> None:
    c, bridge = http
    r = c.post(path, content=body)
    assert r.status_code == status, r.text
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome" and oo["issue"][0]["code"] == code
    if status == 413:
        assert bridge.sent == []  # over the limit: not read whole, the sender keeps it
    else:
        # refused, and kept: the original bytes in the dead-letter topic with the reason
        assert [t for t, *_ in bridge.sent] == ["dlq"]
        assert opened(Settings(topic_dlq="dlq"), bridge.sent[0]) == body
        headers = dict(bridge.sent[0][3])
        assert headers["wardwatch.reason"] and headers["wardwatch.stage"] == b"gateway.http"


def test_http_unknown_code_is_accepted_and_ignored(http: tuple[TestClient, FakeBridge]) -> None:
    c, bridge = http
    obs = {**OBS, "code": {"coding": [{"system": "http://loinc.org", "code": "0000-0"}]}}
    r = c.post("/fhir/Observation", content=orjson.dumps(obs))
    assert r.status_code == 202 and "0 clinical events" in r.text and len(bridge.sent) == 1


def _bundle(btype: str, *resources: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": btype,
            "entry": [
                {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
                for r in resources
            ],
        }
    )


def test_http_batch_and_transaction(http: tuple[TestClient, FakeBridge]) -> None:
    c, bridge = http
    bad = {**OBS, "valueQuantity": {"value": "x"}}
    r = c.post("/fhir", content=_bundle("batch", OBS, bad))
    assert r.status_code == 200
    body = r.json()
    assert body["type"] == "batch-response"
    assert [e["response"]["status"][:3] for e in body["entry"]] == ["201", "400"]
    assert sorted(t for t, *_ in bridge.sent) == ["dlq", "in"]  # the good entry, and the body
    r = c.post("/fhir", content=_bundle("transaction", OBS, bad))
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Bundle.entry[1]"]
    assert [t for t, *_ in bridge.sent[2:]] == ["dlq"]  # all or nothing, and kept
    r = c.post("/fhir", content=_bundle("transaction", OBS, OBS))
    assert r.status_code == 200 and r.json()["type"] == "transaction-response"
    assert [t for t, *_ in bridge.sent[3:]] == ["in", "in"]


def test_http_subscription_notifications(http: tuple[TestClient, FakeBridge]) -> None:
    c, bridge = http
    status = {
        "resourceType": "SubscriptionStatus",
        "status": "active",
        "type": "event-notification",
    }
    r = c.post("/fhir", content=_bundle("subscription-notification", status, OBS))
    assert r.status_code == 200 and len(bridge.sent) == 1
    params = {"resourceType": "Parameters", "parameter": []}
    bad = {**OBS, "subject": None}
    r = c.post("/fhir", content=_bundle("history", params, OBS, bad))
    assert r.status_code == 200 and "1 dead-lettered" in r.text
    topics = [s[0] for s in bridge.sent]
    assert topics.count("in") == 2 and topics.count("dlq") == 1


def test_http_metadata(http: tuple[TestClient, FakeBridge]) -> None:
    c, _ = http
    r = c.get("/fhir/metadata")
    assert r.status_code == 200 and r.json()["resourceType"] == "CapabilityStatement"
    assert r.json()["fhirVersion"] == "4.0.1"
    assert c.get("/metadata").json() == r.json()


def test_http_kafka_away_is_503(http: tuple[TestClient, FakeBridge]) -> None:
    c, bridge = http
    bridge.fail = True
    r = c.post("/fhir/Observation", content=orjson.dumps(OBS))
    assert r.status_code == 503 and r.json()["issue"][0]["code"] == "transient"


def test_internal_error_is_an_ae_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, bridge = make(tmp_path)

    def broken(*_: object) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(gw.seen, "verdict", broken)
    ack = msa(asyncio.run(gw.handle_hl7(ORU.format(cid="X").encode())))
    assert ack[1] == "AE" and "resend later" in ack[3] and bridge.sent == []


def test_http_deeply_nested_json_is_a_400(http: tuple[TestClient, FakeBridge]) -> None:
    c, bridge = http
    nested = '{"resourceType": "Observation", "extension": ' + '{"a": ' * 900 + "1" + "}" * 901
    r = c.post("/fhir/Observation", content=nested.encode())
    assert r.status_code == 400 and [t for t, *_ in bridge.sent] == ["dlq"]
