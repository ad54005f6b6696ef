"""Bounded chaos on the real services: nothing lost, nothing doubled.

Each test replays real PhysioNet stays through real workers while it breaks something —
a worker killed, the broker restarted, Triton or PostgreSQL stopped for 30 s — and ends
by checking the database message by message: every published message has exactly one
score, equal to what `wardwatch score` computes offline (degraded scores, while Triton is
away, carry the rule scores and no risk).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from streams.replay import ReplayStats, make_producer, replay
from streams.settings import Settings
from tests.conftest import PHYSIONET, require_shared
from tests.integration.harness import (
    Workers,
    assert_alerts_match_offline,
    assert_exactly_once,
    isolated_run,
    service,
    wait_for_scores,
)
from tests.integration.test_gateway import opened

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.triton, pytest.mark.e2e]

OUTAGE_S = 30.0


def _files(n: int, skip: int = 0) -> list[Path]:
    require_shared(PHYSIONET)
    return sorted(PHYSIONET.glob("*.psv"))[skip : skip + n]


class Replayer(threading.Thread):
    """``wardwatch replay`` in the background, at a fixed rate."""

    def __init__(self, s: Settings, files: list[Path], rate: float) -> None:
        super().__init__(daemon=True)
        self.s, self.files, self.rate = s, files, rate
        self.stats: ReplayStats | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.stats = replay(
                self.files, self.s, rate=self.rate, topic=self.s.topic_inbound, progress=False
            )
        except BaseException as exc:  # kept for expected(), which fails with it
            self.error = exc
            raise

    def expected(self) -> dict[str, tuple[str, int | None]]:
        self.join(600)
        assert not self.is_alive(), "replay still running after 600 s"
        assert self.error is None, f"replay raised {self.error!r}"
        assert self.stats is not None
        assert self.stats.failed == 0, f"replay lost messages: {self.stats.errors[:5]}"
        return {f"{self.s.topic_inbound}/{p}/{o}": v for (p, o), v in self.stats.landed.items()}


def _set_max_message_bytes(admin: AdminClient, topic: str, n: int) -> None:
    entry = ConfigEntry("max.message.bytes", str(n), incremental_operation=AlterConfigOpType.SET)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    for fut in admin.incremental_alter_configs([res]).values():
        fut.result(30)


def test_worker_killed_mid_replay_and_restarted(tmp_path: Path) -> None:
    files = _files(25)
    with isolated_run("chaos-kill") as s:
        workers = Workers(s, tmp_path)
        try:
            proc = workers.start()
            rep = Replayer(s, files, rate=80)
            rep.start()
            # SIGKILL twice (no goodbye at all), then a graceful SIGTERM, each mid-stream.
            for sig in (signal.SIGKILL, signal.SIGKILL, signal.SIGTERM):
                time.sleep(5)
                proc.send_signal(sig)
                proc.wait(60)
                proc = workers.start()
            expected = rep.expected()
            rows = wait_for_scores(s, set(expected), timeout=300)
            assert_exactly_once(s, rows, expected, files, logs=workers.logs())
            # Every alert raised exactly as offline: none lost to a crash between the
            # state's changelog and the alerts topic.
            assert_alerts_match_offline(s, files, rows, require_alerts=False)
        finally:
            workers.stop_all()


def test_broker_restarted_mid_stream(tmp_path: Path) -> None:
    """A worker may exit when the broker goes away; its supervisor restarts it."""
    files = _files(20, skip=100)
    with isolated_run("chaos-kafka") as s:
        workers = Workers(s, tmp_path)
        supervisor = workers.supervise()
        try:
            workers.start()
            rep = Replayer(s, files, rate=60)
            rep.start()
            time.sleep(10)
            service("down", "kafka")
            time.sleep(5)
            service("up", "kafka")
            expected = rep.expected()
            rows = wait_for_scores(s, set(expected), timeout=300)
            assert_exactly_once(s, rows, expected, files, logs=workers.logs())
            # Every alert raised exactly as offline: none lost to a crash between the
            # state's changelog and the alerts topic.
            assert_alerts_match_offline(s, files, rows, require_alerts=False)
        finally:
            supervisor.set()
            workers.stop_all()


def test_triton_away_for_30s_degrades_then_resumes(tmp_path: Path) -> None:
    files = _files(25, skip=200)
    with isolated_run("chaos-triton") as s:
        workers = Workers(s, tmp_path)
        try:
            workers.start()
            rep = Replayer(s, files, rate=15)
            rep.start()
            time.sleep(5)
            service("down", "triton")
            time.sleep(OUTAGE_S)
            service("up", "triton")
            expected = rep.expected()
            rows = wait_for_scores(s, set(expected), timeout=300)
            assert_exactly_once(s, rows, expected, files, allow_degraded=True, logs=workers.logs())
            degraded = [r for r in rows if r.degraded]
            assert degraded, "Triton was stopped for 30 s: some scores must be degraded"
            assert all(r.news2 is not None or r.qsofa is not None for r in degraded[:1])
            # The model came back by itself: the last scores of the run have a risk again.
            last = sorted(rows, key=lambda r: r.created_at)[-20:]
            assert not any(r.degraded for r in last), "the model did not resume"
        finally:
            workers.stop_all()


def test_postgres_away_for_30s_applies_backpressure(tmp_path: Path) -> None:
    files = _files(20, skip=300)
    with isolated_run("chaos-pg") as s:
        workers = Workers(s, tmp_path)
        try:
            workers.start()
            rep = Replayer(s, files, rate=40)
            rep.start()
            time.sleep(5)
            service("down", "postgres")
            time.sleep(OUTAGE_S)
            service("up", "postgres")
            expected = rep.expected()
            rows = wait_for_scores(s, set(expected), timeout=300)
            assert_exactly_once(s, rows, expected, files, logs=workers.logs())
            # Every alert raised exactly as offline: none lost to a crash between the
            # state's changelog and the alerts topic.
            assert_alerts_match_offline(s, files, rows, require_alerts=False)
            assert all(p.poll() is None for p in workers.procs), "the worker must ride it out"
        finally:
            workers.stop_all()


def test_dead_letter_write_failing_stops_the_worker_without_committing(tmp_path: Path) -> None:
    with isolated_run("chaos-dlq") as s:
        admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
        _set_max_message_bytes(admin, s.topic_dlq, 2000)
        poison = b"\x00not FHIR " + b"x" * 20_000  # too big for the dead-letter topic
        workers = Workers(s, tmp_path)
        try:
            proc = workers.start()
            producer = make_producer(s)
            producer.produce(s.topic_inbound, key=b"poison", value=poison)
            assert producer.flush(30) == 0
            assert proc.wait(120) != 0, "the worker must stop when it cannot dead-letter"
            # Fix the topic; a new worker gets the same message again (nothing was
            # committed), dead-letters it, and the stream goes on.
            _set_max_message_bytes(admin, s.topic_dlq, 1_048_588)
            workers.start()
            files = _files(2, skip=400)
            stats = replay(files, s, topic=s.topic_inbound, progress=False)
            expected = {f"{s.topic_inbound}/{p}/{o}": v for (p, o), v in stats.landed.items()}
            rows = wait_for_scores(s, set(expected), timeout=180)
            assert_exactly_once(s, rows, expected, files, logs=workers.logs())
            c = Consumer(
                {
                    "bootstrap.servers": s.kafka_bootstrap,
                    "group.id": f"chaos-dlq-{s.app_id}",
                    "auto.offset.reset": "earliest",
                }
            )
            c.subscribe([s.topic_dlq])
            dead: list[bytes] = []
            deadline = time.monotonic() + 60
            while not dead and time.monotonic() < deadline:
                m = c.poll(0.5)
                if m is not None and not m.error():
                    dead.append(opened(s, m))
            c.close()
            # the poison message, original bytes (sealed at rest), dead-lettered once
            assert dead == [poison]
        finally:
            workers.stop_all()
