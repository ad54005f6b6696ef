"""Gateway edge limits and content-checked resend detection, without Kafka."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir.hl7v2 import content_digest, normalise
from streams.gateway import REUSED_CONTROL_ID, Gateway, GatewayStats, RequestLimit, SeenStore
from streams.sealing import key_ring
from streams.settings import Settings

ORU = (
    "MSH|^~\\&|LAB|HOSP|WW|WARD|{ts}||ORU^R01|{cid}|P|2.5\r"
    "PID|1||12345^^^HOSP^MR||DOE^JOHN||19500304|M\r"
    "OBX|1|NM|8867-4^HR^LN||{hr}|/min|||||F|||20260101115500+0000\r"
)


def oru(cid: str, hr: int = 88, ts: str = "20260101120000+0000") -> bytes:
    return ORU.format(cid=cid, hr=hr, ts=ts).encode()


class SlowBridge:
    """Takes every write after ``delay_s`` (an in-memory stand-in for Kafka)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.sent: list[tuple[str, bytes, bytes, list[Any]]] = []
        self.delay_s = delay_s

    async def send(
        self, topic: str, key: bytes, value: bytes, headers: Any = None
    ) -> tuple[int, int]:
        await asyncio.sleep(self.delay_s)
        self.sent.append((topic, key, value, list(headers or [])))
        return 0, len(self.sent) - 1

    def close(self, timeout: float = 0) -> None:
        pass


def make(tmp_path: Path, delay_s: float = 0.0, **kw: Any) -> tuple[Gateway, SlowBridge]:
    s = Settings(
        topic_inbound="in", topic_dlq="dlq", gateway_dedup_path=tmp_path / "seen.sqlite", **kw
    )
    bridge = SlowBridge(delay_s)
    gw = Gateway(s, bridge, SeenStore(s.gateway_dedup_path, 30))  # type: ignore[arg-type]
    return gw, bridge


def msa(ack: bytes) -> list[str]:
    return ack.decode().split("\r")[1].split("|")


def topics(bridge: SlowBridge) -> list[str]:
    return [t for t, *_ in bridge.sent]


# ------------------------------------------------------------------ content digest
def test_digest_ignores_msh7_and_line_endings_only() -> None:
    base = content_digest(normalise(oru("C1")))
    assert base == content_digest(normalise(oru("C1", ts="20270505050505+0100")))
    assert base == content_digest(normalise(oru("C1").replace(b"\r", b"\r\n")))
    assert base != content_digest(normalise(oru("C1", hr=89)))
    assert base != content_digest(normalise(oru("C2")))
    # MSH-6 sits next to MSH-7: it still counts
    assert base != content_digest(normalise(oru("C1").replace(b"|WARD|", b"|WARD2|")))
    assert len(base) == 64 and int(base, 16) >= 0


# ------------------------------------------------------------------ the store
def test_store_verdicts(tmp_path: Path) -> None:
    store = SeenStore(tmp_path / "s.sqlite", 30)
    assert store.verdict("LAB|HOSP", "C1", "aa") == "new"
    store.add("LAB|HOSP", "C1", "aa")
    assert store.verdict("LAB|HOSP", "C1", "aa") == "duplicate"
    assert store.verdict("LAB|HOSP", "C1", "bb") == "conflict"
    assert store.verdict("LAB|OTHER", "C1", "bb") == "new"  # control ids are per sender
    assert store.seen("LAB|HOSP", "C1") and not store.seen("LAB|OTHER", "C1")
    store.close()
    again = SeenStore(tmp_path / "s.sqlite", 30)  # survives a restart, digest included
    assert again.verdict("LAB|HOSP", "C1", "bb") == "conflict"
    again.close()


def test_store_from_before_digests_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE seen (sender TEXT NOT NULL, control_id TEXT NOT NULL,"
        " at REAL NOT NULL, PRIMARY KEY (sender, control_id))"
    )
    db.execute("INSERT INTO seen VALUES ('LAB|HOSP', 'OLD', strftime('%s','now'))")
    db.commit()
    db.close()
    store = SeenStore(path, 30)
    cols = [r[1] for r in store.db.execute("PRAGMA table_info(seen)")]
    assert cols == ["sender", "control_id", "at", "digest"]
    # an old row cannot tell: the old rule (a duplicate), whatever the content
    assert store.verdict("LAB|HOSP", "OLD", "anything") == "duplicate"
    store.add("LAB|HOSP", "NEW", "d1")
    assert store.verdict("LAB|HOSP", "NEW", "d2") == "conflict"
    store.close()
    SeenStore(path, 30).close()  # opening a migrated file again is a no-op


# ------------------------------------------------------------------ resend rules
def test_resend_same_content_is_a_duplicate_other_content_an_ae(tmp_path: Path) -> None:
    gw, bridge = make(tmp_path)
    first = msa(asyncio.run(gw.handle_hl7(oru("R1"))))
    assert first[1] == "AA" and topics(bridge) == ["in"]
    # byte-identical, and restamped (MSH-7 only): duplicates, nothing published
    for resend in (oru("R1"), oru("R1", ts="20260101120500+0000")):
        dup = msa(asyncio.run(gw.handle_hl7(resend)))
        assert dup[1] == "AA" and "duplicate" in dup[3]
    assert topics(bridge) == ["in"] and gw.stats.hl7_duplicates == 2
    changed = oru("R1", hr=140)
    ack = asyncio.run(gw.handle_hl7(changed)).decode()
    assert "MSA|AE|R1|" in ack and REUSED_CONTROL_ID in ack and "ERR|||205" in ack
    assert topics(bridge) == ["in", "dlq"] and gw.stats.hl7_reused == 1
    topic, key, value, headers = bridge.sent[1]
    h = dict(headers)
    # the original bytes, sealed, for an operator
    opened = key_ring(gw.settings).open(
        value, {k: v.decode() for k, v in headers}, topic=topic, key=key
    )
    assert opened == changed and value != changed
    assert REUSED_CONTROL_ID.encode() in h["wardwatch.reason"]
    assert h["wardwatch.source.control_id"] == b"R1" and h["wardwatch.hl7.ack"] == b"AE"
    # the conflict did not overwrite what was accepted: the true resend is still a duplicate
    assert msa(asyncio.run(gw.handle_hl7(oru("R1"))))[1] == "AA"
    assert topics(bridge) == ["in", "dlq"]


def test_concurrent_same_id_other_content_is_refused(tmp_path: Path) -> None:
    gw, bridge = make(tmp_path, delay_s=0.05)

    async def both() -> list[bytes]:
        return list(await asyncio.gather(gw.handle_hl7(oru("K1")), gw.handle_hl7(oru("K1", 99))))

    acks = [msa(a)[1] for a in asyncio.run(both())]
    assert acks == ["AA", "AE"] and sorted(topics(bridge)) == ["dlq", "in"]


# ------------------------------------------------------------------ MLLP limits
async def _server(gw: Gateway) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(gw.serve_mllp, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _closed(reader: asyncio.StreamReader, within_s: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), within_s) == b""
    except TimeoutError:
        return False


def test_mllp_per_client_cap_closes_the_extra_connection(tmp_path: Path) -> None:
    gw, _ = make(tmp_path, gateway_mllp_max_connections_per_client=2)

    async def run() -> None:
        server, port = await _server(gw)
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.05)
        r3, w3 = await asyncio.open_connection("127.0.0.1", port)
        assert await _closed(r3, 2.0)  # accepted and closed at once
        assert gw.stats.mllp_refused == 1
        r1, w1 = conns[0]
        w1.write(b"\x0b" + oru("M1") + b"\x1c\r")  # the admitted ones still work
        assert b"MSA|AA|M1" in await asyncio.wait_for(r1.readuntil(b"\x1c\r"), 5)
        w1.close()
        await asyncio.sleep(0.1)
        assert gw._mllp_clients == {"127.0.0.1": 1}
        r4, w4 = await asyncio.open_connection("127.0.0.1", port)  # a slot was freed
        assert not await _closed(r4, 0.3)
        for w in (conns[1][1], w3, w4):
            w.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.1)
        assert gw._mllp_open == 0 and gw._mllp_clients == {}  # nothing leaks

    asyncio.run(run())


def test_mllp_overall_cap(tmp_path: Path) -> None:
    gw, _ = make(tmp_path, gateway_mllp_max_connections=1)

    async def run() -> None:
        server, port = await _server(gw)
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.05)
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        assert await _closed(r2, 2.0) and not await _closed(r1, 0.2)
        w1.close()
        w2.close()
        server.close()
        await server.wait_closed()

    asyncio.run(run())
    assert gw.stats.mllp_refused == 1


def test_mllp_idle_connection_is_closed_but_not_one_awaiting_its_ack(tmp_path: Path) -> None:
    gw, _ = make(tmp_path, delay_s=0.8, gateway_mllp_idle_timeout_s=0.3)

    async def run() -> None:
        server, port = await _server(gw)
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        assert await _closed(r1, 2.0)
        assert gw.stats.mllp_idle_closed == 1
        # Kafka takes 0.8 s, longer than the idle timeout: the sender waits on us
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(b"\x0b" + oru("I1") + b"\x1c\r")
        assert b"MSA|AA|I1" in await asyncio.wait_for(r2.readuntil(b"\x1c\r"), 5)
        assert gw.stats.mllp_idle_closed == 1
        assert await _closed(r2, 2.0)  # then idle again: closed
        assert gw.stats.mllp_idle_closed == 2
        w1.close()
        w2.close()
        server.close()
        await server.wait_closed()

    asyncio.run(run())


# ------------------------------------------------------------------ HTTP limits
class Blocking:
    """An ASGI app whose requests wait until ``release`` is set, then answer 200."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def _request(app: Any, host: str) -> tuple[int, dict[bytes, bytes], bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/fhir/metadata",
        "raw_path": b"/fhir/metadata",
        "query_string": b"",
        "headers": [],
        "client": (host, 40000),
        "server": ("127.0.0.1", 8081),
    }
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    await app(scope, receive, send)
    start = out[0]
    body = b"".join(m.get("body", b"") for m in out[1:])
    return start["status"], dict(start["headers"]), body


def test_request_limit_per_client_and_overall() -> None:
    async def run() -> None:
        inner = Blocking()
        stats = GatewayStats()
        limit = RequestLimit(inner, overall=2, per_client=1, retry_after_s=3, stats=stats)
        first = asyncio.create_task(_request(limit, "10.0.0.1"))
        await asyncio.sleep(0.01)
        status, headers, body = await _request(limit, "10.0.0.1")
        assert status == 429 and headers[b"retry-after"] == b"3"
        outcome = orjson.loads(body)
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "throttled"
        second = asyncio.create_task(_request(limit, "10.0.0.2"))  # another client: in
        await asyncio.sleep(0.01)
        status, headers, body = await _request(limit, "10.0.0.3")  # but all slots are taken
        assert status == 503 and headers[b"retry-after"] == b"3"
        assert limit.in_flight == 2 and stats.http_throttled == 2
        inner.release.set()
        assert [(await t)[0] for t in (first, second)] == [200, 200]
        assert limit.in_flight == 0 and limit.by_client == {}  # cleaned up
        assert (await _request(limit, "10.0.0.1"))[0] == 200

    asyncio.run(run())


def test_request_limit_releases_on_error() -> None:
    async def boom(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("handler failed")

    async def run() -> None:
        limit = RequestLimit(boom, overall=1, per_client=1, retry_after_s=1, stats=GatewayStats())
        with pytest.raises(RuntimeError):
            await _request(limit, "10.0.0.1")
        assert limit.in_flight == 0 and limit.by_client == {}

    asyncio.run(run())
