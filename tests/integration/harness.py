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
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from inference.attribution import METHOD
from inference.scoring.alert_card import card_of
from storage.db import make_engine
from storage.models import Alert, Score
from streams.demo import start_worker, stop_worker
from streams.model_settings import load_model_info
from streams.offline import score_files
from streams.settings import PROJECT_ROOT, Settings

PG_ADMIN = os.environ.get(
    "WARDWATCH_TEST_POSTGRES_ADMIN", "postgresql://wardwatch:wardwatch@127.0.0.1:5433/wardwatch"
)
# Set to 1 to keep a run's topics and database after the test (for inspecting a failure).
KEEP_RUN_ENV = "WARDWATCH_TEST_KEEP_RUN"
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
        if os.environ.get(KEEP_RUN_ENV) == "1":
            # Debugging a run: its topics and database stay, to be inspected.
            print(f"{KEEP_RUN_ENV}: kept app id {s.app_id}, database {db}")
        else:
            admin.delete_topics(topics)
            drop_database(db)


def drop_database(db: str, within_s: float = 30.0) -> None:
    """Drop a run's database, forcing its sessions off. Retried (on a new connection)
    while that is refused: an autovacuum worker on the database is a session the test
    role may not terminate, and it ends by itself within seconds."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            return
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class Workers:
    """Worker processes of one run, started and stopped (or killed) by the test."""

    def __init__(self, s: Settings, log_dir: Path) -> None:
        self.s, self.log_dir, self.n = s, log_dir, 0
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, settings: Settings | None = None) -> subprocess.Popen[bytes]:
        """Start a worker with the run's settings (or ``settings``, e.g. another role)."""
        self.n += 1
        # each worker process on this host needs a web port of its own
        port = self.s.worker_web_port + self.n
        proc = start_worker(
            settings or self.s, self.log_dir / f"worker-{self.n}.log", web_port=port
        )
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


def offline_alerts(s: Settings, files: list[Path]) -> dict[str, dict[str, Any]]:
    """The RiskAssessments the pure pipeline raises (model and explanations run
    in-process), by alert id, over exactly the messages a replay of ``files`` publishes,
    patient by patient in order: the stream sees only the hours with a measurement, and
    the alert state (clearing, suppression, re-raising) depends on which hours are
    scored, so the reference must score the same ones (``wardwatch score`` on the .psv
    files also scores the hours without one)."""
    from inference.runtime import LocalTorchModel
    from inference.scoring.alerts import finish
    from inference.scoring.envelope import normalise
    from inference.scoring.model_info import occlusion_explainer
    from inference.scoring.prepare import prepare, stack_windows
    from inference.scoring.record import PatientRecord
    from streams.sources import messages

    model = LocalTorchModel.from_dir(s.model_dir)
    loaded = load_model_info(s)
    explain = occlusion_explainer(s.model_dir, model)
    records: dict[str, PatientRecord] = {}
    alerts: dict[str, dict[str, Any]] = {}
    key = s.pseudonym_key.get_secret_value().encode()
    for m in messages(files, key, datetime.fromisoformat(s.physionet_stay_start)):
        for env in normalise(m.value, source=m.origin, inbound_ts_ms=None).envelopes:
            rec = records.setdefault(env.patient, PatientRecord())
            pending = prepare(rec, env, spec=loaded.spec, staleness_hours=s.staleness_hours)
            if pending is None:
                continue
            risk = float(model.predict(stack_windows([pending]))[0])
            _, alert = finish(
                rec, pending, risk, model=loaded.info, policy=loaded.policy, explain=explain
            )
            if alert is not None:
                alerts[str(alert["id"])] = alert
    return alerts


def assert_alerts_match_offline(
    s: Settings, files: list[Path], rows: list[Any], *, require_alerts: bool = True
) -> None:
    """No alert lost or invented: the database holds exactly the alerts the offline
    command raises over the same messages, and each card's attribution (occlusion
    computed by Triton for the stream) equals the one computed in-process offline.
    ``rows`` (the run's score rows) must be complete: call after :func:`wait_for_scores`.
    """
    want = offline_alerts(s, files)
    assert want or not require_alerts, "the replayed stays raise alerts"
    scored = {(r.patient, r.scored_at) for r in rows}

    def at_scored_hour(a: dict[str, Any]) -> bool:
        patient = str(a["subject"]["reference"]).removeprefix("Patient/")
        return (patient, datetime.fromisoformat(a["occurrenceDateTime"])) in scored

    must = set(want)
    engine = create_engine(s.database_url)
    deadline = time.monotonic() + 60
    try:
        while True:
            with Session(engine) as db:
                got = {a.alert_id: a.explanation for a in db.scalars(select(Alert))}
            if must <= set(got) or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        engine.dispose()
    lost = must - set(got)
    assert not lost, f"{len(lost)} of {len(must)} alerts never reached the database"
    extra = set(got) - must
    assert not extra, f"{len(extra)} alerts the offline command never raised"
    assert all(at_scored_hour(want[k]) for k in must), "an alert at an hour never scored"
    for alert_id in must:
        card = card_of(got[alert_id]["risk_assessment"])
        expected = card_of(want[alert_id])
        assert card is not None and expected is not None
        assert card["extension"]["attribution_method"] == METHOD, card["extension"]
        top = {f["feature"]: f["contribution"] for f in card["extension"]["top_features"]}
        ref = {f["feature"]: f["contribution"] for f in expected["extension"]["top_features"]}
        assert len(top) == 5
        # Served and in-process outputs agree within 1e-5, so near-ties may swap places
        # at the fifth feature; the shared ones must carry the same contribution.
        assert len(top.keys() & ref.keys()) >= 4, (top, ref)
        for k in top.keys() & ref.keys():
            assert top[k] == pytest.approx(ref[k], abs=1e-4), (alert_id, k)


def group_partitions(s: Settings, topic: str) -> list[set[int]]:
    """The partitions of ``topic`` each member of the run's consumer group holds now
    (one set per member; empty while the group is rebalancing or has no members)."""
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    desc = admin.describe_consumer_groups([s.app_id])[s.app_id].result(30)
    return [
        {tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic}
        for m in desc.members
    ]


def wait_for_members(s: Settings, topic: str, n: int, timeout: float) -> list[set[int]]:
    """Poll until ``n`` group members share all of ``topic``'s partitions, each holding
    at least one; returns the last assignment seen (the caller asserts on it)."""
    deadline = time.monotonic() + timeout
    parts: list[set[int]] = []
    while time.monotonic() < deadline:
        parts = group_partitions(s, topic)
        held = [p for p in parts if p]
        if len(held) == n and set().union(*held) == set(range(s.topic_partitions)):
            break
        time.sleep(1)
    return parts
