"""Several workers in one consumer group: nothing lost, nothing doubled.

Two and three workers share the patient-keyed partitions of one app id while real
PhysioNet stays are replayed; a third joins mid-replay; one of three leaves with SIGTERM
and another is SIGKILLed mid-replay. Each test ends by checking the database message by
message (every published message has exactly one score, equal to what `wardwatch score`
computes offline), the alerts (none lost or invented, cards as the offline command's)
and the scores topic (every score on it is for a published message, and every published
message has one).

Faust acknowledges messages its streams skip during a rebalance, which can commit past
a message nobody processed, can hand a stream a partition's messages out of order after
a seek, and lets a stream go on with later messages of a partition after skipping some;
``streams/faust_fixes.py`` refuses those acknowledgements, restores the order of
delivery, and holds back what follows a skipped message until it is read again (so
every score matches the offline scorer's, which needs each patient's hours in order).
Set ``WARDWATCH_TEST_KEEP_RUN=1`` to keep a run's topics and database for inspection
(``tests/integration/harness.py``).
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer

from streams.settings import Settings
from tests.integration.harness import (
    Workers,
    assert_alerts_match_offline,
    assert_exactly_once,
    isolated_run,
    wait_for_members,
    wait_for_scores,
)
from tests.integration.test_chaos import Replayer, _files

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.triton, pytest.mark.e2e]

# About 40 messages a stay: ~470 messages over ~20 s, long enough for a rebalance to
# land mid-stream, short enough for the suite's budget.
N_FILES = 12
RATE = 25.0


def _scores_on_topic(s: Settings, want: int, timeout: float = 60) -> list[str]:
    """The ``source`` of every record on the run's scores topic (duplicates kept)."""
    c = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": f"scale-check-{secrets.token_hex(3)}",
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([s.topic_scores])
    out: list[str] = []
    deadline, idle_until = time.monotonic() + timeout, time.monotonic() + 10
    try:
        while time.monotonic() < deadline and (len(out) < want or time.monotonic() < idle_until):
            m = c.poll(0.5)
            if m is not None and not m.error():
                out.append(orjson.loads(m.value() or b"{}")["source"])
                idle_until = time.monotonic() + 2
    finally:
        c.close()
    return out


def _check(s: Settings, workers: Workers, rep: Replayer, files: list[Path]) -> None:
    expected = rep.expected()
    rows = wait_for_scores(s, set(expected), timeout=240)
    assert_exactly_once(s, rows, expected, files, logs=workers.logs())
    assert_alerts_match_offline(s, files, rows, require_alerts=False)
    # At-least-once: a batch in flight during a rebalance may be scored again by the new
    # owner (the database keeps one), but no score is for anything not published.
    on_topic = _scores_on_topic(s, len(expected))
    assert set(on_topic) == set(expected), "the scores topic holds one per published message"


def _started(workers: Workers, n: int) -> None:
    for _ in range(n):
        workers.start()
    parts = wait_for_members(workers.s, workers.s.topic_inbound, n, timeout=120)
    assert len([p for p in parts if p]) == n, f"{n} workers must share the partitions: {parts}"


def test_two_workers_share_the_stream(tmp_path: Path) -> None:
    files = _files(N_FILES, skip=600)
    with isolated_run("scale-two") as s:
        workers = Workers(s, tmp_path)
        try:
            _started(workers, 2)
            rep = Replayer(s, files, rate=RATE)
            rep.start()
            _check(s, workers, rep, files)
            assert all(p.poll() is None for p in workers.procs), workers.logs()
        finally:
            workers.stop_all()


def test_third_worker_joins_mid_replay(tmp_path: Path) -> None:
    files = _files(N_FILES, skip=650)
    with isolated_run("scale-join") as s:
        workers = Workers(s, tmp_path)
        try:
            _started(workers, 2)
            # Slower: a worker takes 10-20 s to start on a busy 2-core machine, and the
            # rebalance it causes must land while messages are still arriving.
            rep = Replayer(s, files, rate=RATE / 2)
            rep.start()
            time.sleep(4)
            workers.start()  # joins mid-stream: a rebalance moves partitions to it
            parts = wait_for_members(s, s.topic_inbound, 3, timeout=120)
            assert len([p for p in parts if p]) == 3, f"the third worker got none: {parts}"
            assert rep.is_alive(), "the join must land mid-replay"
            _check(s, workers, rep, files)
            assert all(p.poll() is None for p in workers.procs), workers.logs()
        finally:
            workers.stop_all()


def test_workers_leave_mid_replay_sigterm_and_sigkill(tmp_path: Path) -> None:
    files = _files(N_FILES, skip=700)
    with isolated_run("scale-leave") as s:
        workers = Workers(s, tmp_path)
        try:
            _started(workers, 3)
            first, second, last = workers.procs
            rep = Replayer(s, files, rate=RATE)
            rep.start()
            time.sleep(5)
            # A graceful leave: it hands its partitions back and must not hang doing so.
            first.send_signal(signal.SIGTERM)
            try:
                first.wait(60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"a SIGTERMed worker hung leaving the group\n{workers.logs()}")
            time.sleep(4)
            assert rep.is_alive(), "the leaves must land mid-replay"
            # No goodbye at all: its partitions move on after the session timeout.
            second.send_signal(signal.SIGKILL)
            second.wait(10)
            _check(s, workers, rep, files)
            parts = wait_for_members(s, s.topic_inbound, 1, timeout=60)
            assert [p for p in parts if p] == [set(range(s.topic_partitions))], parts
            assert last.poll() is None, workers.logs()
        finally:
            workers.stop_all()
