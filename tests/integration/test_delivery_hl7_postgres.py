"""HL7 v2 ORU^R01 delivery over MLLP from the outbox, against an unreliable receiver.

Alerts are stored through the writer's own path (``streams.persist.Sink``, outbox rows in
the alerts' transaction) in an isolated PostgreSQL database while ``Hl7Delivery`` sends
them to the test's own loopback MLLP receiver (an asyncio server using the project's
framing, ``fhir.hl7v2.MllpDecoder``/``build_ack``). The receiver answers, seeded at
random, AA, AE, AR, nothing at all (the sender times out), or takes the message and
loses its ACK (so the resend arrives twice). Every alert must end up accepted, in event
order; duplicates are counted (a receiver drops them by MSH-10) and reported. A receiver
that refuses everything gets the first message ``delivery_hl7_max_attempts`` times, then
the subscriber is ``error`` with every event kept.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import hl7
import pytest

from fhir.hl7v2 import MllpDecoder, build_ack, frame, read_header
from inference.scoring.alert_card import risk_assessment
from storage import outbox
from storage.db import AlertRow, make_engine, migrate
from streams.deliver_hl7 import KIND, Hl7Delivery, endpoint
from streams.persist import Sink

from .harness import isolated_run

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
N = 300


class Receiver:
    """A loopback MLLP destination. ``plan(i)`` picks the answer to the i-th message:
    AA, AE, AR, "silent" (no ACK, not taken) or "lost" (taken, ACK never sent)."""

    def __init__(self, plan: Any) -> None:
        self.plan = plan
        self.received: list[str] = []  # MSH-10 of every message that arrived
        self.accepted: list[str] = []  # MSH-10 of every message taken (AA or lost ACK)
        self.answers: dict[str, int] = {}
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dec = MllpDecoder()
        try:
            while chunk := await reader.read(65536):
                for f in dec.feed(chunk):
                    assert isinstance(f, bytes)
                    text = f.decode()
                    msg = hl7.parse(text)  # it is HL7 python-hl7 reads
                    assert str(msg.segment("MSH")(9)) == "ORU^R01^ORU_R01"
                    header = read_header(text.rstrip("\r"))
                    self.received.append(header.control_id)
                    what = self.plan(len(self.received))
                    self.answers[what] = self.answers.get(what, 0) + 1
                    if what in ("AA", "lost"):
                        self.accepted.append(header.control_id)
                    if what in ("AA", "AE", "AR"):
                        writer.write(frame(build_ack(header, what)))
                        await writer.drain()
        except ConnectionError:
            pass  # the sender closed after a timeout
        finally:
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def alert(i: int) -> AlertRow:
    from inference.alert_policy import AlertDecision

    at = T0 + timedelta(minutes=i)
    d = AlertDecision(alert_id=f"a{i:05d}", patient=f"pt-{i % 40}", severity="warning",
                      raised_at=at, risk=0.7, news2=5, reason="risk")  # fmt: skip
    ra = risk_assessment(d, model="m", model_version="1", basis=[])
    return AlertRow(alert_id=d.alert_id, patient=d.patient, raised_at=d.raised_at,
                    severity="warning", reason="risk", risk=0.7, news2=5,
                    explanation={"risk_assessment": ra})  # fmt: skip


def _settings(**kw: Any) -> dict[str, Any]:
    return {"delivery_backoff_initial_s": 0.02, "delivery_backoff_max_s": 0.2,
            "delivery_poll_s": 0.05, "delivery_timeout_s": 0.4, **kw}  # fmt: skip


def test_every_alert_is_accepted_once_in_order_through_refusals_and_timeouts() -> None:
    with isolated_run("hl7out", **_settings(delivery_hl7_max_attempts=3)) as s:
        migrate(s.database_url)
        engine = make_engine(s.database_url)
        try:
            asyncio.run(_unreliable(s, engine))
        finally:
            engine.dispose()


async def _unreliable(s: Any, engine: Any) -> None:
    rng = random.Random(19)
    choices = ["AA"] * 70 + ["AE"] * 10 + ["AR"] * 8 + ["silent"] * 6 + ["lost"] * 6
    receiver = Receiver(lambda i: rng.choice(choices))
    await receiver.start()
    sub = _subscribe(engine, receiver.port)
    sink = Sink(s.database_url)
    stop = asyncio.Event()
    delivery = Hl7Delivery(engine, s)
    task = asyncio.create_task(delivery.run(stop))
    started = time.monotonic()
    for b in range(N // 20):  # 20 alerts every 0.1 s while delivery runs
        await sink.write_alerts([alert(b * 20 + i) for i in range(20)])
        await asyncio.sleep(0.1)
    await _until(lambda: len(set(receiver.accepted)) >= N and _done(engine, sub.id), 240)
    took = time.monotonic() - started
    stop.set()
    await task
    await receiver.stop()

    expected = [f"{sub.id[:8]}-{n}" for n in range(1, N + 1)]
    deduped = list(dict.fromkeys(receiver.accepted))
    duplicates = len(receiver.accepted) - len(deduped)
    print(
        f"\nhl7 delivery: {N} alerts accepted in {took:.1f} s; {len(receiver.received)} "
        f"messages received, answers {dict(sorted(receiver.answers.items()))}; "
        f"{duplicates} duplicates after lost ACKs (dropped by MSH-10)"
    )
    assert deduped == expected  # every event, in event order, after dedupe by MSH-10
    # order is never broken, even counting duplicates: a duplicate is always a resend of
    # the message just taken, never an older one after a newer one
    numbers = [int(c.rsplit("-", 1)[1]) for c in receiver.accepted]
    assert numbers == sorted(numbers)
    assert duplicates <= receiver.answers.get("lost", 0)
    # refusals happened and were resent (the test would prove nothing otherwise)
    assert receiver.answers.get("AE", 0) and receiver.answers.get("silent", 0)
    state = outbox.get_subscriber(engine, sub.id)
    assert state is not None
    assert (state.status, state.delivered_through) == ("active", N)
    assert outbox.pending(engine, sub.id, 10) == []


def _subscribe(engine: Any, port: int) -> Any:
    return outbox.create_subscriber(engine, kind=KIND, topic="t", payload="full-resource",
                                    endpoint=endpoint("127.0.0.1", port), who="test")  # fmt: skip


def _done(engine: Any, sid: str) -> bool:
    state = outbox.get_subscriber(engine, sid)
    return state is not None and state.delivered_through >= N


def test_a_receiver_refusing_forever_gets_bounded_resends_then_error_events_kept() -> None:
    with isolated_run("hl7out", **_settings(delivery_hl7_max_attempts=4)) as s:
        migrate(s.database_url)
        engine = make_engine(s.database_url)
        try:
            asyncio.run(_refusing(s, engine))
        finally:
            engine.dispose()


async def _refusing(s: Any, engine: Any) -> None:
    receiver = Receiver(lambda i: "AR")
    await receiver.start()
    sub = _subscribe(engine, receiver.port)
    await Sink(s.database_url).write_alerts([alert(i) for i in range(5)])
    stop = asyncio.Event()
    task = asyncio.create_task(Hl7Delivery(engine, s).run(stop))

    def status() -> str:
        st = outbox.get_subscriber(engine, sub.id)
        return "" if st is None else st.status

    await _until(lambda: status() == "error", 30)
    sends_at_error = len(receiver.received)
    stop.set()
    await task
    await receiver.stop()
    state = outbox.get_subscriber(engine, sub.id)
    assert state is not None and state.last_error is not None
    assert "event 1" in state.last_error and "AR" in state.last_error
    # bounded: marked error at the 4th send (one more may have been in flight)
    assert 4 <= sends_at_error <= 5
    # only ever the first event: the rest wait behind it, in order
    assert set(receiver.received) == {f"{sub.id[:8]}-1"}
    assert state.delivered_through == 0
    assert [e.event_number for e in outbox.pending(engine, sub.id, 10)] == [1, 2, 3, 4, 5]


async def _until(cond: Any, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not await asyncio.to_thread(cond):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
