"""``wardwatch demo``: the main job end to end on the running services, with a summary.

It starts a worker, replays a sample feed (real PhysioNet stays from ../shared when
present, else a synthetic feed) plus a few deliberately malformed messages, then follows
``risk.scores`` and the dead-letter topic until every published message is accounted
for. Each run pseudonymises with its own key, so its patients are new to the stream and
the database and a second run's counts are as meaningful as the first's.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from pydantic import SecretStr

from . import dlq_headers
from .client_security import database_connect_args, kafka_config
from .replay import publish, replay
from .settings import PROJECT_ROOT, VAR_DIR, Settings, settings_env
from .sources import psv_messages

SHARED_PHYSIONET = PROJECT_ROOT.parent / "shared" / "data" / "physionet2019" / "training_setB"

# Inputs a real feed does send now and then; each must end in the dead-letter topic with
# a reason, and nothing else may stop.
MALFORMED: tuple[bytes, ...] = (
    b'{"resourceType": "Observation", "status": "final", "code": {"coding": [{"sys',
    b'{"resourceType": "Observation", "status": "final", "subject": {"reference": '
    b'"Patient/pt-demo"}, "effectiveDateTime": "2026-01-01T00:00:00Z", "code": {"coding": '
    b'[{"system": "http://loinc.org", "code": "8867-4"}]}, "valueQuantity": {"value": "72",'
    b' "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}',
    b"\x00\x01\x02 not FHIR at all \xff",
)


@dataclass(slots=True)
class Follow:
    """What the demo saw come out of the stream for its own messages."""

    scored: set[tuple[int, int]] = field(default_factory=set)
    dead: dict[tuple[int, int], str] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    alert_latencies_ms: list[float] = field(default_factory=list)
    scores: int = 0
    alerts: int = 0
    alert_ids: set[str] = field(default_factory=set)
    degraded: int = 0


def _pick_inputs(data: Path | None, patients: int, workdir: Path) -> tuple[list[Path], str]:
    if data is not None:
        return sorted(data.glob("*.psv"))[:patients], f"{data}"
    if SHARED_PHYSIONET.is_dir():
        return sorted(SHARED_PHYSIONET.glob("*.psv"))[:patients], "PhysioNet 2019 (../shared)"
    from fhir.synthetic import generate_stays

    for pid, text in generate_stays(patients, seed=2019):
        (workdir / f"{pid}.psv").write_text(text)
    return sorted(workdir.glob("*.psv")), "synthetic (seed 2019)"


# Errors of a partition whose leader is still starting (a topic created moments ago).
_STARTING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)


def end_offsets(
    settings: Settings, topics: list[str], *, retry_s: float = 30.0
) -> dict[str, dict[int, int]]:
    """Each partition's end offset. A topic created moments ago (metadata without its
    partitions yet, or leaders still starting: NOT_LEADER_FOR_PARTITION, seen from a fresh
    clone's ``make bench``) or another retriable broker error is retried for ``retry_s``;
    then, or on any other error, the ``KafkaException`` is raised."""
    c = Consumer({**kafka_config(settings), "group.id": "wardwatch-demo"})
    deadline = time.monotonic() + retry_s
    try:
        while True:
            try:
                out: dict[str, dict[int, int]] = {}
                for t in topics:
                    md = c.list_topics(t, timeout=10).topics[t]
                    if not md.partitions:  # just created: metadata names no partition yet
                        raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
                    out[t] = {
                        p: c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                        for p in md.partitions
                    }
                return out
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() not in _STARTING and not err.retriable():
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        c.close()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def start_worker(
    settings: Settings, log_path: Path, *, web_port: int | None = None
) -> subprocess.Popen[bytes]:
    """A ``wardwatch worker`` process running with ``settings``, logging to ``log_path``.

    ``web_port`` gives the worker's web server a port of its own (several workers on one
    host); by default it is ``settings.worker_web_port``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    port = web_port or settings.worker_web_port
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streams", "worker", "-l", "warn", "--web-port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
            env=settings_env(settings),
            start_new_session=True,
        )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (graceful), then SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run_demo(
    settings: Settings, *, patients: int, rate: float, timeout: float, data: Path | None
) -> bool:
    """Run the demo; True when every message was accounted for. Prints the summary."""
    run_id = secrets.token_hex(4)
    # A key of its own: this run's patients are new to the state table and the database.
    demo_settings = settings.model_copy(
        update={"pseudonym_key": SecretStr(f"{settings.pseudonym_key.get_secret_value()}-{run_id}")}
    )
    topics = [settings.topic_scores, settings.topic_dlq, settings.topic_alerts]
    start_offsets = end_offsets(settings, topics)
    worker_log = VAR_DIR / "log" / "demo-worker.log"
    print(f"demo run {run_id}: starting a worker (log: {worker_log})", flush=True)
    worker = start_worker(settings, worker_log)
    t0 = time.monotonic()
    tmp = tempfile.TemporaryDirectory()
    try:
        inputs, source = _pick_inputs(data, patients, Path(tmp.name))
        if not inputs:
            raise FileNotFoundError(f"no .psv stays to replay in {source}")
        ready_s = warm_up(settings, inputs[0], start_offsets, worker, deadline=t0 + timeout)
        print(f"worker ready after {ready_s:.1f}s (a warm-up message was scored)", flush=True)
        print(f"replaying {len(inputs)} ICU stays from {source} at {rate:.0f} msg/s", flush=True)
        stats = replay(inputs, demo_settings, rate=rate, topic=settings.topic_inbound)
        bad = publish(
            settings,
            settings.topic_inbound,
            [(f"demo-bad-{i}".encode(), raw) for i, raw in enumerate(MALFORMED)],
        )
        bad_landed = {at: f"malformed-{i}" for i, at in enumerate(bad)}
        expected = set(stats.landed) | set(bad_landed)
        n_events = _count_events(inputs, demo_settings)
        follow = follow_scores(
            settings, start_offsets, expected, deadline=t0 + timeout, worker=worker
        )
        pseudonyms = _pseudonyms(inputs, demo_settings)
        # The persist agent writes a batch behind the topic: wait for the database too.
        db_scores, db_alerts = _db_counts(settings, pseudonyms, follow.alert_ids)
        # Scores and alerts are persisted by agents of their own: wait for both.
        while (db_scores < len(follow.scored) or db_alerts < len(follow.alert_ids)) and (
            time.monotonic() < t0 + timeout
        ):
            time.sleep(0.5)
            db_scores, db_alerts = _db_counts(settings, pseudonyms, follow.alert_ids)
        wall = time.monotonic() - t0
    finally:
        stop_worker(worker)
        tmp.cleanup()
    accounted = follow.scored | set(follow.dead)
    missing = expected - accounted
    reasons = Counter(r.split(":")[0] for r in follow.dead.values())
    print()
    print("WardWatch demo summary")
    print("----------------------")
    print(f"input                     {len(inputs)} stays ({source})")
    print(f"messages published        {stats.sent} FHIR Bundles + {len(bad_landed)} malformed")
    print(f"clinical events in        {n_events}")
    print(f"messages scored           {len(follow.scored)}")
    print(
        f"scores published          {follow.scores} ({follow.degraded} degraded: model unavailable)"
    )
    print(f"alerts published          {follow.alerts}")
    print(
        f"dead letters              {len(follow.dead)} " + (f"({dict(reasons)})" if reasons else "")
    )
    print(f"scores in database        {db_scores}")
    print(f"alerts in database        {db_alerts}")
    print(
        f"event-to-score latency    p50 {percentile(follow.latencies_ms, 50):.0f} ms, "
        f"p99 {percentile(follow.latencies_ms, 99):.0f} ms"
    )
    print(f"unaccounted messages      {len(missing)}")
    print(f"wall time                 {wall:.1f} s")
    return not missing and db_scores >= len(follow.scored)


def warm_up(
    settings: Settings,
    first: Path,
    start: dict[str, dict[int, int]],
    worker: subprocess.Popen[bytes],
    *,
    deadline: float,
) -> float:
    """Send one message of a throw-away patient and wait until it is scored.

    The replay starts only once the whole path (worker, table recovery, model) answers,
    so the latencies measured are the pipeline's, not the worker's start-up. Raises
    ``TimeoutError`` when nothing is scored before ``deadline``.
    """
    t0 = time.monotonic()
    key = f"warm-up-{secrets.token_hex(4)}".encode()
    start_at = datetime.fromisoformat(settings.physionet_stay_start)
    msg = next(psv_messages(first, key, start_at))
    landed = publish(settings, settings.topic_inbound, [(msg.key, msg.value)])
    follow = follow_scores(
        settings,
        {settings.topic_scores: start[settings.topic_scores]},
        set(landed),
        deadline=deadline,
        worker=worker,
    )
    if not follow.scored:
        if worker.poll() is not None:
            raise RuntimeError(
                f"the worker exited with code {worker.returncode}; see var/log/demo-worker.log"
            )
        raise TimeoutError(
            f"the worker scored nothing in {deadline - t0:.0f}s; see var/log/demo-worker.log"
        )
    return time.monotonic() - t0


def _pseudonyms(inputs: list[Path], settings: Settings) -> list[str]:
    from fhir.pseudonym import pseudonymise

    key = settings.pseudonym_key.get_secret_value().encode()
    return [pseudonymise(p.stem, key, system="physionet2019") for p in inputs]


def _count_events(inputs: list[Path], settings: Settings) -> int:
    """Observations offered: the entries of every Bundle the replay published."""
    key = settings.pseudonym_key.get_secret_value().encode()
    start = datetime.fromisoformat(settings.physionet_stay_start)
    return sum(
        len(orjson.loads(m.value).get("entry", []))
        for p in inputs
        for m in psv_messages(p, key, start)
    )


def headers(msg: Message) -> dict[str, str]:
    """A Kafka message's headers as text."""
    return dlq_headers.as_text(msg.headers())


def follow_scores(
    settings: Settings,
    start: dict[str, dict[int, int]],
    expected: set[tuple[int, int]],
    *,
    deadline: float,
    worker: subprocess.Popen[bytes],
) -> Follow:
    """Read scores, alerts and dead letters from ``start`` until every ``expected``
    inbound (partition, offset) is scored or dead-lettered, the deadline passes or the
    worker exits. Latencies are Kafka timestamps: score (or alert) minus inbound."""
    follow = Follow()
    inbound_ts: dict[tuple[str, str], int] = {}  # (patient, time) -> inbound timestamp
    alerts_seen: list[tuple[tuple[str, str], int]] = []
    consumer = Consumer(
        {
            **kafka_config(settings),
            "group.id": f"wardwatch-demo-{secrets.token_hex(4)}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign(
        [TopicPartition(t, p, off) for t, parts in start.items() for p, off in parts.items()]
    )
    inbound_prefix = f"{settings.topic_inbound}/"
    try:
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                print(f"the worker exited with code {worker.returncode}; see its log", flush=True)
                break
            msg = consumer.poll(0.5)
            if msg is None:
                if expected <= follow.scored | set(follow.dead):
                    break
                continue
            if msg.error():
                continue
            topic = msg.topic()
            if topic == settings.topic_scores:
                score = orjson.loads(msg.value() or b"{}")
                src = str(score.get("source", ""))
                if src.startswith(inbound_prefix):
                    _, part, off = src.rsplit("/", 2)
                    key = (int(part), int(off))
                    if key in expected:
                        follow.scored.add(key)
                        follow.scores += 1
                        follow.degraded += bool(score.get("degraded"))
                        if score.get("inbound_ts_ms"):
                            follow.latencies_ms.append(msg.timestamp()[1] - score["inbound_ts_ms"])
                            inbound_ts[(score["patient"], score["time"])] = score["inbound_ts_ms"]
            elif topic == settings.topic_dlq:
                h = headers(msg)
                where = (h.get(dlq_headers.SOURCE_PARTITION), h.get(dlq_headers.SOURCE_OFFSET))
                if where[0] and where[1]:
                    at = (int(where[0]), int(where[1]))
                    if at in expected:
                        follow.dead[at] = h.get(dlq_headers.REASON, "?")
            elif topic == settings.topic_alerts:
                follow.alerts += 1
                alert = orjson.loads(msg.value() or b"{}")
                follow.alert_ids.add(str(alert.get("id")))
                ref = str(alert.get("subject", {}).get("reference", "")).removeprefix("Patient/")
                alerts_seen.append(
                    ((ref, str(alert.get("occurrenceDateTime"))), msg.timestamp()[1])
                )
    finally:
        consumer.close()
    # An alert leaves in the same batch as its score: match it to the score's input time.
    follow.alert_latencies_ms = [
        at - inbound_ts[key] for key, at in alerts_seen if key in inbound_ts
    ]
    return follow


def _db_counts(settings: Settings, run_patients: list[str], alert_ids: set[str]) -> tuple[int, int]:
    """Scores of this run's patients, and how many of the alerts this run saw on the topic
    are in the database (counted by id: counting by patient missed one whose subject was
    not among the replayed stays, and the summary then waited out its whole timeout)."""
    from sqlalchemy import func, select

    from storage.db import make_engine
    from storage.models import Alert, Score

    engine = make_engine(settings.database_url, connect_args=database_connect_args(settings))
    try:
        with engine.connect() as conn:
            n_scores = conn.scalar(
                select(func.count()).select_from(Score).where(Score.patient.in_(run_patients))
            )
            n_alerts = conn.scalar(
                select(func.count()).select_from(Alert).where(Alert.alert_id.in_(alert_ids))
            )
        return int(n_scores or 0), int(n_alerts or 0)
    finally:
        engine.dispose()
