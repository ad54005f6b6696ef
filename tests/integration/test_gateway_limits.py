"""Edge limits and content-checked resends of the real gateway (real sockets, real Kafka).

Needs the local Kafka (`make up`); fails, never skips, when they are not
there. Each test runs a gateway of its own (free ports, topics and resend store of its
own).
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fhir.hl7v2 import frame
from tests.integration.test_gateway import (
    ORU,
    Running,
    consume_all,
    gateway_settings,
    mllp_send,
    msa,
    opened,
)


def _closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    """Whether the gateway closes ``sock`` within ``within_s`` (EOF or reset)."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


@pytest.mark.kafka
def test_resend_rules_same_bytes_duplicate_other_content_dead_letter(tmp_path: Path) -> None:
    s = gateway_settings(tmp_path)
    original = ORU.format(cid="RS-1", hr=88).encode()
    restamped = original.replace(b"20260101120000+0000", b"20260101121500+0000", 1)
    changed = ORU.format(cid="RS-1", hr=131).encode()
    with Running(s) as r:
        port = r.server.mllp_port
        first = mllp_send(port, [original])
        again = mllp_send(port, [original, restamped])  # another connection
        reused = mllp_send(port, [changed])
        stats = r.server.gateway.stats if r.server.gateway else None
    assert msa(first[0])[1] == "AA"
    assert [msa(a)[1] for a in again] == ["AA", "AA"]
    assert all("duplicate" in msa(a)[3] for a in again)
    assert msa(reused[0])[1] == "AE" and msa(reused[0])[2] == "RS-1"
    assert "control id reused with different content" in msa(reused[0])[3]
    assert "ERR|||205" in reused[0]
    assert stats is not None and (stats.hl7_duplicates, stats.hl7_reused) == (2, 1)

    inbound = consume_all(s, s.topic_inbound, 1)
    assert len(inbound) == 1  # published once
    dead = consume_all(s, s.topic_dlq, 1)
    assert len(dead) == 1 and opened(s, dead[0]) == changed  # nothing silently dropped
    h = dict(dead[0].headers())
    assert b"control id reused with different content" in h["wardwatch.reason"]
    assert h["wardwatch.source.control_id"] == b"RS-1" and h["wardwatch.hl7.ack"] == b"AE"


@pytest.mark.kafka
def test_mllp_idle_connection_is_closed(tmp_path: Path) -> None:
    s = gateway_settings(tmp_path, gateway_mllp_idle_timeout_s=0.5)
    with Running(s) as r:
        port = r.server.mllp_port
        with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
            t0 = time.monotonic()
            assert _closed_by_peer(silent, 5)
            assert 0.4 <= time.monotonic() - t0 < 4
        # a sender that talks is served, then closed once it falls silent
        with socket.create_connection(("127.0.0.1", port), timeout=30) as talker:
            talker.sendall(frame(ORU.format(cid="ID-1", hr=70).encode()))
            ack = b""
            while b"\x1c\r" not in ack:
                chunk = talker.recv(65536)
                assert chunk, "closed before the ACK"
                ack += chunk
            assert b"MSA|AA|ID-1" in ack
            assert _closed_by_peer(talker, 5)
        assert r.server.gateway is not None and r.server.gateway.stats.mllp_idle_closed == 2


@pytest.mark.kafka
def test_mllp_per_client_cap_does_not_starve_other_clients(tmp_path: Path) -> None:
    s = gateway_settings(tmp_path, gateway_mllp_max_connections_per_client=2)
    with Running(s) as r:
        port = r.server.mllp_port
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        try:
            time.sleep(0.2)  # both admitted
            for _ in range(5):  # the same client floods: each extra one is closed at once
                with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                    assert _closed_by_peer(extra, 3)
            # another client address (loopback 127.0.0.2) still gets in and is served
            other = mllp_send_from("127.0.0.2", port, ORU.format(cid="CAP-2", hr=71).encode())
            assert msa(other)[1] == "AA"
            # and the held connections of the first client still work
            held[0].sendall(frame(ORU.format(cid="CAP-1", hr=72).encode()))
            held[0].settimeout(30)
            assert b"MSA|AA|CAP-1" in held[0].recv(65536)
        finally:
            for sock in held:
                sock.close()
        assert r.server.gateway is not None and r.server.gateway.stats.mllp_refused == 5


def mllp_send_from(source: str, port: int, message: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0)) as c:
        c.sendall(frame(message))
        buf = b""
        while b"\x1c\r" not in buf:
            chunk = c.recv(65536)
            assert chunk, "gateway closed the connection"
            buf += chunk
    return buf.split(b"\x1c\r", 1)[0].lstrip(b"\x0b").decode()


OBS: dict[str, Any] = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]},
    "subject": {"reference": "Patient/MRN-0815"},
    "effectiveDateTime": "2026-01-01T00:00:00Z",
    "valueQuantity": {"value": 22, "unit": "/min", "code": "/min"},
}


@pytest.mark.kafka
def test_http_over_per_client_concurrency_is_429(tmp_path: Path) -> None:
    s = gateway_settings(
        tmp_path, gateway_http_max_concurrency_per_client=1, gateway_http_retry_after_s=2
    )
    body = orjson.dumps(OBS)

    async def scenario(port: int) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        base = f"http://127.0.0.1:{port}"
        release = asyncio.Event()

        async def slow_body() -> Any:
            yield body[:10]  # the request is in flight from here until the rest comes
            await release.wait()
            yield body[10:]

        async with (
            httpx.AsyncClient(base_url=base, timeout=30) as one,
            httpx.AsyncClient(base_url=base, timeout=30) as two,
            httpx.AsyncClient(
                base_url=base,
                timeout=30,
                transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"),
            ) as other,
        ):
            slow = asyncio.create_task(one.post("/fhir/Observation", content=slow_body()))
            await asyncio.sleep(0.5)
            refused = await two.post("/fhir/Observation", content=body)
            elsewhere = await other.post("/fhir/Observation", content=body)
            release.set()
            return await slow, refused, elsewhere

    with Running(s) as r:
        slow, refused, elsewhere = asyncio.run(scenario(r.server.http_port))
        throttled = r.server.gateway.stats.http_throttled if r.server.gateway else -1
    assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "throttled"
    assert slow.status_code == 202, slow.text  # the one in flight finished normally
    assert elsewhere.status_code == 202, elsewhere.text  # another client was not refused
    assert throttled == 1
    assert len(consume_all(s, s.topic_inbound, 2)) == 2  # the refused one was not published
