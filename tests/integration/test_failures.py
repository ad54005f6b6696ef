"""Failures the worker cannot handle stop it loudly, and nothing is lost.

On the real services: a PostgreSQL outage longer than the retry budget, and a scores table
that rejects every row (the dead-letter limit). Each time the worker must exit non-zero
with a log line that says why, having committed nothing it had not made durable; a new
worker after the cause is fixed must then store every published message's score exactly
once, equal to the offline score.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import text

from storage.db import make_engine, migrate
from tests.conftest import PHYSIONET, require_shared
from tests.integration.harness import (
    Workers,
    assert_exactly_once,
    isolated_run,
    service,
    wait_for_scores,
)
from tests.integration.test_chaos import Replayer

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.triton, pytest.mark.e2e]


def _files(n: int, skip: int) -> list[Path]:
    require_shared(PHYSIONET)
    return sorted(PHYSIONET.glob("*.psv"))[skip : skip + n]


def _readyz(port: int) -> tuple[int, dict[str, object]] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except (OSError, ValueError):
        return None


def _full_logs(log_dir: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(log_dir.glob("worker-*.log")))


def _wait_exit(workers: Workers, port: int, timeout: float) -> tuple[int, list[int]]:
    """The newest worker's exit code, and the /readyz statuses seen while it ran."""
    proc = workers.procs[-1]
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        got = _readyz(port)
        if got is not None:
            seen.append(got[0])
        time.sleep(0.25)
    assert proc.poll() is not None, f"the worker did not stop\n{workers.logs()}"
    return proc.returncode, seen


def test_postgres_outage_longer_than_the_retry_budget(tmp_path: Path) -> None:
    files = _files(12, skip=500)
    with isolated_run("fail-pg", retry_budget_s=5.0) as s:
        workers = Workers(s, tmp_path)
        try:
            workers.start()
            port = s.worker_web_port + workers.n
            rep = Replayer(s, files, rate=40)
            rep.start()
            time.sleep(8)
            service("down", "postgres")
            try:
                code, seen = _wait_exit(workers, port, timeout=120)
            finally:
                service("up", "postgres")
            assert code != 0, "a spent retry budget must stop the worker, non-zero"
            assert 503 in seen, "readiness must go false before the worker stops"
            logs = _full_logs(tmp_path)
            assert "retries exhausted" in logs and "without committing" in logs, logs[-3000:]
            # A new worker, the database back: every message scored exactly once.
            workers.start()
            expected = rep.expected()
            rows = wait_for_scores(s, set(expected), timeout=240)
            assert_exactly_once(s, rows, expected, files, logs=workers.logs())
        finally:
            workers.stop_all()


def test_a_table_that_rejects_everything_trips_the_dead_letter_limit(tmp_path: Path) -> None:
    files = _files(6, skip=520)
    # A minimum of one message: the first batch trips the limit, whatever its size. With a
    # larger minimum a first batch smaller than it is dead-lettered and acknowledged (as it
    # should be: it is durable on the dead-letter topic), and how many scores the fixed
    # table gets back would hang on how the batches fell.
    with isolated_run("fail-table", dead_letter_min_messages=1) as s:
        migrate(s.database_url)
        engine = make_engine(s.database_url)
        with engine.begin() as conn:
            conn.execute(
                text("ALTER TABLE scores ADD CONSTRAINT reject_all CHECK (false) NOT VALID")
            )
        workers = Workers(s, tmp_path)
        try:
            workers.start()
            rep = Replayer(s, files, rate=0)
            rep.start()
            code, _ = _wait_exit(workers, s.worker_web_port + workers.n, timeout=180)
            assert code != 0, "the dead-letter limit must stop the worker, non-zero"
            logs = _full_logs(tmp_path)
            assert "dead-letter limit exceeded" in logs, logs[-3000:]
            assert "agent persist_scores cannot go on" in logs, logs[-3000:]
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE scores DROP CONSTRAINT reject_all"))
            # The batch that tripped the limit was not acknowledged: a new worker, the
            # table fixed, stores every message's score exactly once.
            workers.start()
            expected = rep.expected()
            rows = wait_for_scores(s, set(expected), timeout=240)
            assert_exactly_once(s, rows, expected, files, logs=workers.logs())
        finally:
            workers.stop_all()
            engine.dispose()
