"""End to end on the real services: replay PhysioNet stays through a real worker.

Kafka, PostgreSQL and Triton are the ones `make up` started; the test gives itself its
own topics, consumer group and database so it cannot see (or disturb) a demo's data.
Every published message must be accounted for — scored in the database or dead-lettered
with its original bytes and a reason — and the stream's scores must equal what
`wardwatch score` computes offline for the same files.
"""

from __future__ import annotations

import io
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic
from sqlalchemy import select

from storage.db import make_engine
from storage.models import Score
from streams.model_info import load_model_info
from streams.offline import score_files
from streams.replay import make_producer, replay
from streams.settings import PROJECT_ROOT, Settings, settings_env
from tests.conftest import PHYSIONET, require_shared

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.triton, pytest.mark.e2e]

N_PATIENTS = 50
PG_ADMIN = os.environ.get(
    "WARDWATCH_TEST_POSTGRES_ADMIN", "postgresql://wardwatch:wardwatch@127.0.0.1:5433/wardwatch"
)
BAD = [b'{"resourceType": "Observation", "status": "fin', b"\xff\xfe binary garbage"]


@pytest.fixture(scope="module")
def run_settings() -> Iterator[Settings]:
    """Settings of an isolated run: own topics, consumer group, database and key."""
    run = secrets.token_hex(4)
    db = f"wardwatch_e2e_{run}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    s = Settings(
        app_id=f"wardwatch-e2e-{run}",
        topic_inbound=f"e2e-{run}.fhir.inbound",
        topic_dlq=f"e2e-{run}.fhir.inbound.dlq",
        topic_events=f"e2e-{run}.clinical.events",
        topic_scores=f"e2e-{run}.risk.scores",
        topic_alerts=f"e2e-{run}.risk.alerts",
        database_url=f"postgresql+psycopg://wardwatch:wardwatch@127.0.0.1:5433/{db}",
        worker_web_port=6100 + secrets.randbelow(800),
    )
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    topics = [s.topic_inbound, s.topic_dlq, s.topic_events, s.topic_scores, s.topic_alerts]
    for fut in admin.create_topics([NewTopic(t, s.topic_partitions, 1) for t in topics]).values():
        fut.result(30)
    yield s
    admin.delete_topics(topics)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@pytest.fixture(scope="module")
def worker(run_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker", "-l", "info"],
            cwd=PROJECT_ROOT,
            env=settings_env(run_settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield log
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _dead_letters(s: Settings, want: int, deadline: float) -> list[tuple[bytes, dict[str, bytes]]]:
    c = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": f"e2e-dlq-{secrets.token_hex(3)}",
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([s.topic_dlq])
    out: list[tuple[bytes, dict[str, bytes]]] = []
    try:
        while len(out) < want and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                out.append((m.value(), dict(m.headers() or [])))
    finally:
        c.close()
    return out


def test_replayed_stays_are_all_accounted_for_and_match_offline_scores(
    run_settings: Settings, worker: Path, tmp_path: Path
) -> None:
    require_shared(PHYSIONET)
    s = run_settings
    files = sorted(PHYSIONET.glob("*.psv"))[:N_PATIENTS]
    stats = replay(files, s, topic=s.topic_inbound, progress=False)
    assert stats.failed == 0 and stats.sent > 0
    producer = make_producer(s)
    for raw in BAD:
        producer.produce(s.topic_inbound, key=b"bad", value=raw)
    assert producer.flush(30) == 0

    expected = {f"{s.topic_inbound}/{p}/{o}": origin for (p, o), origin in stats.landed.items()}
    engine = make_engine(s.database_url)
    deadline = time.monotonic() + 240
    rows: list[Score] = []
    while time.monotonic() < deadline:
        try:
            with engine.connect() as conn:
                rows = list(conn.execute(select(Score)).all())  # type: ignore[arg-type]
        except Exception:  # the worker creates the schema on its first write
            rows = []
        if {r.event_offset for r in rows} >= set(expected):
            break
        time.sleep(1)
    got = {r.event_offset for r in rows}
    missing = set(expected) - got
    log_tail = worker.read_text()[-3000:]
    assert not missing, f"{len(missing)} of {len(expected)} not scored; worker log: {log_tail}"
    assert len(rows) == len(expected), "one score per message, no duplicates"

    dead = _dead_letters(s, len(BAD), time.monotonic() + 60)
    assert sorted(v for v, _ in dead) == sorted(BAD), "dead letters keep the original bytes"
    for _, headers in dead:
        assert (
            headers["wardwatch.reason"]
            and headers["wardwatch.source.topic"] == s.topic_inbound.encode()
        )

    # The stream's numbers are the offline command's numbers.
    out = io.StringIO()
    loaded = load_model_info(s)
    from inference.runtime import LocalTorchModel

    score_files(
        files,
        out,
        model=LocalTorchModel.from_dir(s.model_dir),
        loaded=loaded,
        key=s.pseudonym_key.get_secret_value().encode(),
        stay_start=datetime.fromisoformat(s.physionet_stay_start),
        staleness_hours=s.staleness_hours,
        progress=False,
    )
    offline = {(d["patient"], d["hour"]): d for d in map(orjson.loads, out.getvalue().splitlines())}
    start = datetime.fromisoformat(s.physionet_stay_start)
    for r in rows:
        stem, hour = expected[r.event_offset]
        assert r.scored_at == start + timedelta(hours=hour)
        o = offline[(stem, hour)]
        assert r.risk is not None and not r.degraded, "Triton was up: no degraded score"
        assert r.risk == pytest.approx(o["risk"], abs=1e-4), (stem, hour)
        assert (r.news2, r.qsofa, r.alert) == (o["news2"], o["qsofa"], o["alert"]), (stem, hour)
    engine.dispose()
