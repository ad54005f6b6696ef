"""The gateway against the real Kafka: a real MLLP client (socket) and a real HTTP client.

Needs the local Kafka (`make up`); fails, never skips, when it is not there.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Consumer

from fhir.hl7v2 import frame
from streams.gateway import GatewayServer
from streams.sealing import key_ring
from streams.settings import Settings

pytestmark = pytest.mark.kafka

ORU = (
    "MSH|^~\\&|LAB|HOSP|WW|WARD|20260101120000+0000||ORU^R01|{cid}|P|2.5\r"
    "PID|1||MRN-4711^^^HOSP^MR||MUSTERMANN^ERIKA||19640812|F|||HAUPTSTR 1^^BERLIN\r"
    "OBX|1|NM|8867-4^HR^LN||{hr}|/min|||||F|||20260101115500+0000\r"
)


class Running:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server = GatewayServer(settings)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as exc:
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.server.stop())

    def __enter__(self) -> Running:
        self.thread.start()
        assert self.ready.wait(60), "gateway did not start in 60 s"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def gateway_settings(folder: Path, **kw: Any) -> Settings:
    """A gateway on free ports with topics of its own (a fresh run id)."""
    run = uuid.uuid4().hex[:10]
    return Settings(
        topic_inbound=f"gw-{run}.fhir.inbound",
        topic_dlq=f"gw-{run}.fhir.inbound.dlq",
        gateway_mllp_port=0,
        gateway_http_port=0,
        gateway_dedup_path=folder / "seen.sqlite",
        gateway_delivery_timeout_s=20,
        **kw,
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with Running(gateway_settings(tmp_path_factory.mktemp("gw"))) as r:
        yield r


def mllp_send(port: int, messages: list[bytes]) -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"".join(frame(m) for m in messages))
        buf = b""
        acks: list[str] = []
        while len(acks) < len(messages):
            chunk = sock.recv(65536)
            assert chunk, "gateway closed the connection"
            buf += chunk
            while b"\x1c\r" in buf:
                one, buf = buf.split(b"\x1c\r", 1)
                acks.append(one.lstrip(b"\x0b").decode())
    return acks


def opened(settings: Settings, m: Any) -> bytes:
    """A dead letter's original bytes, decrypted (at rest they are encrypted)."""
    hdrs = {k: v.decode() for k, v in m.headers()}
    return key_ring(settings).open(m.value(), hdrs, topic=m.topic(), key=m.key())


def consume_all(settings: Settings, topic: str, expect: int, wait_s: float = 20) -> list[Any]:
    c = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"t-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + wait_s
    try:
        while time.monotonic() < deadline:
            for m in c.consume(100, timeout=0.5):
                if m.error() is None:
                    out.append(m)
            if len(out) >= expect:
                # read a little longer: nothing more must come
                out += [m for m in c.consume(100, timeout=2.0) if m.error() is None]
                break
    finally:
        c.close()
    return out


def msa(ack: str) -> list[str]:
    return next(s for s in ack.split("\r") if s.startswith("MSA")).split("|")


def test_mllp_ack_duplicate_reject_and_topics(gateway: Running) -> None:
    s, port = gateway.settings, gateway.server.mllp_port
    good = ORU.format(cid="IT-1", hr=88).encode()
    bad = ORU.format(cid="IT-2", hr="8x8").encode()
    unsupported = b"MSH|^~\\&|A|B|C|D|20260101||ORM^O01|IT-3|P|2.5\rPID|||1"
    acks = mllp_send(port, [good, bad, unsupported])
    assert [msa(a)[1] for a in acks] == ["AA", "AE", "AR"]
    assert [msa(a)[2] for a in acks] == ["IT-1", "IT-2", "IT-3"]
    assert "ERR|||102" in acks[1] and "not a number" in msa(acks[1])[3]
    # the resend on another connection: AA, nothing new published
    again = mllp_send(port, [good])
    assert msa(again[0])[1] == "AA" and "duplicate" in msa(again[0])[3]

    inbound = consume_all(s, s.topic_inbound, 1)
    assert len(inbound) == 1
    value = inbound[0].value()
    for secret in (b"MRN-4711", b"MUSTERMANN", b"ERIKA", b"HAUPTSTR", b"BERLIN", b"0812"):
        assert secret not in value and secret not in inbound[0].key()
    bundle = orjson.loads(value)
    assert bundle["type"] == "transaction" and inbound[0].key().startswith(b"pt-")

    dead = consume_all(s, s.topic_dlq, 2)
    assert len(dead) == 2
    reasons = sorted(dict(m.headers())["wardwatch.reason"].decode() for m in dead)
    # reasons at rest say what was wrong, not the value (the ACK, above, quotes it)
    assert any("not a number" in r for r in reasons) and any("is not taken" in r for r in reasons)
    assert not any("8x8" in r for r in reasons)
    assert {opened(s, m) for m in dead} == {bad, unsupported}  # original bytes kept
    assert not any(b"MRN-4711" in m.value() for m in dead)  # encrypted at rest


def test_over_long_mllp_frame_is_dead_lettered_truncated(tmp_path: Path) -> None:
    s = gateway_settings(tmp_path, gateway_max_body_bytes=4096)
    big = ORU.format(cid="IT-BIG", hr=88).encode() + b"NTE|1||" + b"z" * 6000 + b"\r"
    good = ORU.format(cid="IT-OK", hr=90).encode()
    with Running(s) as r:
        acks = mllp_send(r.server.mllp_port, [big, good])
    assert [msa(a)[1] for a in acks] == ["AR", "AA"]
    assert "WARDWATCH_GATEWAY_MAX_BODY_BYTES" in msa(acks[0])[3]
    dead = consume_all(s, s.topic_dlq, 1)
    assert len(dead) == 1 and opened(s, dead[0]) == big[:4096]  # the head, byte for byte
    h = dict(dead[0].headers())
    assert h["wardwatch.truncated"] == b"true" and h["wardwatch.stage"] == b"gateway.mllp"
    assert h["wardwatch.original_length"] in (str(len(big)).encode(), b"")
    assert len(consume_all(s, s.topic_inbound, 1)) == 1  # the next message still got in


def test_http_fhir_to_kafka(gateway: Running) -> None:
    s = gateway.settings
    base = f"http://127.0.0.1:{gateway.server.http_port}"
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]},
        "subject": {"reference": "Patient/MRN-0815", "display": "Max Mustermann"},
        "effectiveDateTime": "2026-01-01T00:00:00Z",
        "valueQuantity": {"value": 22, "unit": "/min", "code": "/min"},
    }
    with httpx.Client(base_url=base, timeout=30) as c:
        assert c.get("/fhir/metadata").json()["resourceType"] == "CapabilityStatement"
        r = c.post("/fhir/Observation", content=orjson.dumps(obs))
        assert r.status_code == 202, r.text
        r = c.post("/fhir/Observation", content=b'{"resourceType": "Observation",')
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
        batch = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"resource": obs, "request": {"method": "POST", "url": "Observation"}}] * 3,
        }
        r = c.post("/fhir", content=orjson.dumps(batch))
        assert r.status_code == 200 and r.json()["type"] == "batch-response"
    landed = consume_all(s, s.topic_inbound, 5)
    http_msgs = [
        m for m in landed if dict(m.headers() or []).get("wardwatch.source") == b"fhir-http"
    ]
    assert len(http_msgs) == 4
    for m in http_msgs:
        assert b"Mustermann" not in m.value() and b"MRN-0815" not in m.value()
        assert m.key().startswith(b"pt-")


def test_pipelined_load_on_several_connections(gateway: Running) -> None:
    port = gateway.server.mllp_port
    results: list[list[str]] = []

    def client(n: int) -> None:
        msgs = [ORU.format(cid=f"L{n}-{i}", hr=60 + i).encode() for i in range(25)]
        results.append(mllp_send(port, msgs))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4
    assert all(msa(a)[1] == "AA" for acks in results for a in acks)


def test_port_in_use_is_a_clear_error(gateway: Running, tmp_path: Path) -> None:
    s = gateway.settings.model_copy(
        update={"gateway_mllp_port": gateway.server.mllp_port, "gateway_dedup_path": tmp_path / "x"}
    )
    with pytest.raises(OSError, match="in use"):
        asyncio.run(GatewayServer(s).start())
