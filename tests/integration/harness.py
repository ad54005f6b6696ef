"""Helpers for tests that run real workers against the local services.

Each run gets its own topics, consumer group and PostgreSQL database, so tests neither
see nor disturb each other's (or a demo's) data.
"""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from sqlalchemy import select

from storage.db import make_engine
from storage.models import Score
from streams.demo import start_worker, stop_worker
from streams.model_info import load_model_info
from streams.offline import score_files
from streams.settings import PROJECT_ROOT, Settings

PG_ADMIN = os.environ.get(
    "WARDWATCH_TEST_POSTGRES_ADMIN", "postgresql://wardwatch:wardwatch@127.0.0.1:5433/wardwatch"
)
SERVICES = ["bash", str(PROJECT_ROOT / "compose" / "services.sh")]


@contextmanager
def isolated_run(prefix: str, **overrides: Any) -> Iterator[Settings]:
    """Settings of an isolated run: own topics, consumer group, database and web port."""
    run = secrets.token_hex(4)
    db = f"wardwatch_{prefix}_{run}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    s = Settings(
        app_id=f"wardwatch-{prefix}-{run}",
        topic_inbound=f"{prefix}-{run}.fhir.inbound",
        topic_dlq=f"{prefix}-{run}.fhir.inbound.dlq",
        topic_events=f"{prefix}-{run}.clinical.events",
        topic_scores=f"{prefix}-{run}.risk.scores",
        topic_alerts=f"{prefix}-{run}.risk.alerts",
        database_url=f"postgresql+psycopg://wardwatch:wardwatch@127.0.0.1:5433/{db}",
        worker_web_port=6100 + secrets.randbelow(800),
        **overrides,
    )
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    topics = [s.topic_inbound, s.topic_dlq, s.topic_events, s.topic_scores, s.topic_alerts]
    for fut in admin.create_topics([NewTopic(t, s.topic_partitions, 1) for t in topics]).values():
        fut.result(30)
    try:
        yield s
    finally:
        admin.delete_topics(topics)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


class Workers:
    """Worker processes of one run, started and stopped (or killed) by the test."""

    def __init__(self, s: Settings, log_dir: Path) -> None:
        self.s, self.log_dir, self.n = s, log_dir, 0
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        self.n += 1
        # each worker process on this host needs a web port of its own
        port = self.s.worker_web_port + self.n
        proc = start_worker(self.s, self.log_dir / f"worker-{self.n}.log", web_port=port)
        self.procs.append(proc)
        return proc

    def supervise(self) -> threading.Event:
        """Restart the newest worker whenever it exits, as the deployment's restart
        policy does (compose: ``restart: unless-stopped``). Set the event to stop."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(1.0):
                if self.procs and self.procs[-1].poll() is not None:
                    self.start()

        threading.Thread(target=loop, daemon=True).start()
        return stop

    def logs(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in sorted(self.log_dir.glob("worker-*.log")))

    def stop_all(self) -> None:
        for p in self.procs:
            stop_worker(p)


def wait_for_scores(s: Settings, expected: set[str], timeout: float) -> list[Any]:
    """Poll the run's database until every expected event_offset has a score."""
    engine = make_engine(s.database_url)
    deadline = time.monotonic() + timeout
    rows: list[Any] = []
    try:
        while time.monotonic() < deadline:
            try:
                with engine.connect() as conn:
                    rows = list(conn.execute(select(Score)).all())
            except Exception:  # schema not created yet, or the database is away
                rows = []
            if {r.event_offset for r in rows} >= expected:
                break
            time.sleep(1)
    finally:
        engine.dispose()
    return rows


def offline_scores(s: Settings, files: list[Path]) -> dict[tuple[str, int], dict[str, Any]]:
    """``wardwatch score`` over ``files``: (stem, hour) -> line."""
    from inference.runtime import LocalTorchModel

    out = io.StringIO()
    score_files(
        files,
        out,
        model=LocalTorchModel.from_dir(s.model_dir),
        loaded=load_model_info(s),
        key=s.pseudonym_key.get_secret_value().encode(),
        stay_start=datetime.fromisoformat(s.physionet_stay_start),
        staleness_hours=s.staleness_hours,
        progress=False,
    )
    return {(d["patient"], d["hour"]): d for d in map(orjson.loads, out.getvalue().splitlines())}


def assert_exactly_once(
    s: Settings,
    rows: list[Any],
    expected: dict[str, tuple[str, int | None]],
    files: list[Path],
    *,
    allow_degraded: bool = False,
    logs: str = "",
) -> None:
    """One score per published message, none missing, each equal to the offline score."""
    got = [r.event_offset for r in rows]
    missing = set(expected) - set(got)
    assert not missing, f"{len(missing)} of {len(expected)} messages never scored\n{logs}"
    assert len(got) == len(set(got)) == len(expected), "a message scored twice"
    offline = offline_scores(s, files)
    start = datetime.fromisoformat(s.physionet_stay_start)
    for r in rows:
        stem, hour = expected[r.event_offset]
        assert hour is not None
        assert r.scored_at == start + timedelta(hours=hour)
        o = offline[(stem, hour)]
        assert (r.news2, r.qsofa) == (o["news2"], o["qsofa"]), (stem, hour)
        if r.degraded:
            assert allow_degraded, f"degraded score while the model was up: {stem} {hour}"
            assert r.risk is None
        else:
            assert r.risk == pytest.approx(o["risk"], abs=1e-4), (stem, hour)


def service(action: str, name: str) -> None:
    """Stop or start one local service (the tests' fault injection)."""
    subprocess.run([*SERVICES, action, name], check=True, capture_output=True, timeout=300)
