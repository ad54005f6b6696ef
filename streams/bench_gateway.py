"""Gateway throughput on this machine: ``python -m streams.bench_gateway [--messages N]``.

Starts a gateway in-process on free ports with run-unique topics (real Kafka at
WARDWATCH_KAFKA_BOOTSTRAP), then measures, wall clock, every message acknowledged:

* MLLP ORU^R01 messages/s on 1 connection (pipelined, up to ``--window`` in flight) and on
  8 connections;
* FHIR HTTP resources/s: POST /fhir/Observation with ``--http-concurrency`` clients.

Not a test: no assertions on time. Raises RuntimeError when an ACK is not AA.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from fhir.hl7v2 import frame

from .gateway import GatewayServer
from .settings import Settings

ORU = (
    "MSH|^~\\&|BENCH|HOSP|WW|WARD|20260101120000+0000||ORU^R01|{cid}|P|2.5\r"
    "PID|1||{mrn}^^^HOSP^MR||DOE^JOHN||19500304|M\r"
    "OBR|1|P1|F{cid}|VS|||20260101115500+0000\r"
    "OBX|1|NM|8867-4^HR^LN||{hr}|/min|||||F|||20260101115500+0000\r"
    "OBX|2|NM|9279-1^RR^LN||18|/min|||||F|||20260101115500+0000\r"
    "OBX|3|NM|59408-5^SpO2^LN||97|%|||||F|||20260101115500+0000\r"
    "OBX|4|NM|8480-6^SBP^LN||120|mm[Hg]|||||F|||20260101115500+0000\r"
    "OBX|5|NM|8310-5^Temp^LN||37.2|Cel|||||F|||20260101115500+0000\r"
)


async def mllp_client(port: int, tag: str, n: int, window: int) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    got = 0
    while got < n:
        while sent < n and sent - got < window:
            msg = ORU.format(cid=f"{tag}-{sent}", mrn=sent % 97, hr=60 + sent % 40)
            w.write(frame(msg.encode()))
            sent += 1
        await w.drain()
        ack = await r.readuntil(b"\x1c\r")
        if b"MSA|AA|" not in ack:
            raise RuntimeError(f"not AA: {ack[:200]!r}")
        got += 1
    w.close()


async def http_clients(port: int, n: int, concurrency: int) -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/bench"},
        "effectiveDateTime": "2026-01-01T00:00:00Z",
        "valueQuantity": {"value": 80, "unit": "/min", "code": "/min"},
    }
    body = orjson.dumps(obs)
    left = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as c:

        async def worker() -> None:
            for _ in left:
                r = await c.post("/fhir/Observation", content=body)
                if r.status_code != 202:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


@dataclass(frozen=True, slots=True)
class GatewayRates:
    """Messages acknowledged per second, wall clock."""

    mllp_one: float
    mllp_eight: float
    http: float
    messages: int
    window: int
    http_n: int
    http_conc: int


async def measure(
    base: Settings, messages: int, window: int, http_n: int, http_conc: int
) -> GatewayRates:
    """Run a gateway in-process on ``base``'s Kafka with run-unique topics and measure it.

    Raises RuntimeError when an ACK is not AA; Kafka errors propagate (not retried).
    """
    run = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="ww-bench-"))
    s = base.model_copy(
        update={
            "topic_inbound": f"bench-{run}.fhir.inbound",
            "topic_dlq": f"bench-{run}.dlq",
            "gateway_mllp_port": 0,
            "gateway_http_port": 0,
            "gateway_dedup_path": tmp / "seen.sqlite",
        }
    )
    srv = GatewayServer(s)
    await srv.start()
    try:
        await mllp_client(srv.mllp_port, "warm", 50, window)
        t = time.perf_counter()
        await mllp_client(srv.mllp_port, "one", messages, window)
        one = messages / (time.perf_counter() - t)
        t = time.perf_counter()
        per = messages // 8
        await asyncio.gather(*(mllp_client(srv.mllp_port, f"c{i}", per, window) for i in range(8)))
        eight = per * 8 / (time.perf_counter() - t)
        t = time.perf_counter()
        await http_clients(srv.http_port, http_n, http_conc)
        http = http_n / (time.perf_counter() - t)
    finally:
        await srv.stop()
    return GatewayRates(one, eight, http, messages, window, http_n, http_conc)


async def main(messages: int, window: int, http_n: int, http_conc: int) -> None:
    r = await measure(Settings(), messages, window, http_n, http_conc)
    print(
        f"MLLP ORU^R01 (5 OBX): 1 connection {r.mllp_one:.0f} msg/s, 8 connections "
        f"{r.mllp_eight:.0f} msg/s (window {window}, {messages} messages each run)\n"
        f"FHIR HTTP POST /fhir/Observation: {r.http:.0f} resources/s "
        f"({http_n} requests, {http_conc} concurrent clients)"
    )


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--http", type=int, default=1000)
    ap.add_argument("--http-concurrency", type=int, default=16)
    a = ap.parse_args()
    asyncio.run(main(a.messages, a.window, a.http, a.http_concurrency))


if __name__ == "__main__":
    cli()
