"""FHIR rest-hook delivery from the outbox through a 60 s receiver outage.

Alerts are stored through the writer's own path (``streams.persist.Sink``, the outbox
rows in the alerts' transaction) in an isolated PostgreSQL database, while
``RestHookDelivery`` sends them to the test's own loopback HTTP receiver. The receiver
is stopped for 60 s in the middle of the run (the issue's outage); afterwards every
event number must have been received exactly once (duplicates counted, not hidden) and
in order. Prints notifications/s and the time to catch up after the outage.
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web

from storage import outbox
from storage.db import AlertRow, make_engine, migrate
from streams.deliver_rest_hook import RestHookDelivery
from streams.persist import Sink

from .harness import isolated_run

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]
OUTAGE_S = 60.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Receiver:
    """The other side: a loopback rest-hook endpoint recording every notification."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.kinds: list[str] = []
        self.numbers: list[int] = []  # every event number received, duplicates kept
        self.last_at = 0.0
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        bundle = orjson.loads(await request.read())
        params = bundle["entry"][0]["resource"]["parameter"]
        self.kinds.append(next(p["valueCode"] for p in params if p["name"] == "type"))
        for p in params:
            if p["name"] == "notification-event":
                self.numbers.append(int(p["part"][0]["valueString"]))
        assert request.headers["X-Receiver-Key"] == "k1"
        self.last_at = time.monotonic()
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alert(i: int) -> AlertRow:
    resource: dict[str, Any] = {"resourceType": "RiskAssessment", "id": f"a{i:05d}"}
    return AlertRow(alert_id=f"a{i:05d}", patient=f"p{i % 40}", raised_at=T0 + timedelta(minutes=i),
                    severity="warning", reason="risk", risk=0.5,
                    explanation={"risk_assessment": resource})  # fmt: skip


def test_rest_hook_delivery_survives_a_60_s_receiver_outage() -> None:
    overrides = {"delivery_backoff_initial_s": 0.2, "delivery_backoff_max_s": 2.0,
                 "delivery_poll_s": 0.05, "delivery_max_events": 100}  # fmt: skip
    with isolated_run("deliver", **overrides) as s:
        migrate(s.database_url)
        engine = make_engine(s.database_url)
        try:
            asyncio.run(_run(s, engine))
        finally:
            engine.dispose()


async def _run(s: Any, engine: Any) -> None:
    receiver = Receiver(free_port())
    await receiver.start()
    sub = outbox.create_subscriber(
        engine, kind="rest-hook", topic="t", endpoint=f"http://127.0.0.1:{receiver.port}/hook",
        payload="id-only", headers=["X-Receiver-Key: k1"], who="test",
    )  # fmt: skip
    sink = Sink(s.database_url)
    stop = asyncio.Event()
    delivery = RestHookDelivery(engine, s)
    task = asyncio.create_task(delivery.run(stop))
    written = 0

    async def write(n_batches: int, per_batch: int, every_s: float) -> None:
        nonlocal written
        for _ in range(n_batches):
            await sink.write_alerts([alert(written + i) for i in range(per_batch)])
            written += per_batch
            await asyncio.sleep(every_s)

    # 1. live, receiver up: 10 alerts every 0.1 s for ~2 s
    await write(20, 10, 0.1)
    await _until(lambda: len(receiver.numbers) == written, 30)
    # 2. receiver away for 60 s while alerts keep coming (a backlog builds)
    await receiver.stop()
    down_at = time.monotonic()
    await write(int(OUTAGE_S / 0.5) - 4, 20, 0.5)
    backlog_from = len(receiver.numbers)
    await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    await receiver.start()
    up_at, kinds_before = time.monotonic(), len(receiver.kinds)
    await _until(lambda: len(receiver.numbers) >= written, 120)
    catch_up_s = receiver.last_at - up_at
    backlog = written - backlog_from
    stop.set()
    await task  # lets the last send record its answer
    bundles = receiver.kinds.count("event-notification")
    after = len(receiver.kinds) - kinds_before
    span = max(receiver.last_at - up_at, 1e-3)
    print(
        f"\ndelivery: {written} events in {bundles} notifications; the {OUTAGE_S:.0f} s outage "
        f"left {backlog} events queued; caught up {catch_up_s:.2f} s after the receiver "
        f"returned: {after} notifications ({after / span:.1f} notifications/s, "
        f"{backlog / span:.0f} events/s)"
    )

    assert receiver.kinds[0] == "handshake"
    # exactly once and in order: the full list, duplicates included
    assert receiver.numbers == list(range(1, written + 1))
    state = outbox.get_subscriber(engine, sub.id)
    assert state is not None
    assert (state.status, state.delivered_through, state.events_since_start) == (
        "active", written, written,
    )  # fmt: skip
    assert outbox.pending(engine, sub.id, 10) == []


async def _until(cond: Any, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
