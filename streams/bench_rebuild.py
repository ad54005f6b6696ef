"""How long a fresh worker takes to rebuild the per-patient table from its changelog.

The ``patients`` table lives in memory (``store="memory://"``, no standby replicas), so
a worker that takes over partitions — at start-up, after a crash, or when another worker
joins or leaves — reads their changelog from the beginning before it scores anything.
:func:`rebuild_time` fills a changelog with one realistic record for each of ``patients``
pseudonyms (the state a real stay leaves behind: PhysioNet stays from ``../shared``
when present, the seeded synthetic feed otherwise, run through the stream's own
:func:`inference.scoring.prepare.score_envelopes`), starts a worker on it and times the recovery
from the worker's own log lines. Everything it creates (topics, the worker) is removed
afterwards; it needs Kafka only.

    python -m streams.bench_rebuild --patients 10000
"""

from __future__ import annotations

import argparse
import re
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import orjson
from aiokafka.partitioner import murmur2
from confluent_kafka import Producer

# NewTopic is public API, but confluent-kafka's stubs do not re-export it.
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from fhir.synthetic import generate_stays
from inference.scoring.envelope import Envelope, normalise
from inference.scoring.prepare import score_envelopes
from inference.scoring.record import PatientRecord
from streams.model_settings import load_model_info

from .client_security import kafka_config
from .demo import stop_worker
from .settings import PROJECT_ROOT, Settings, settings_env
from .sources import file_messages

PHYSIONET = PROJECT_ROOT.parent / "shared" / "data" / "physionet2019" / "training_setB"
# Distinct stays whose end-of-stay state is reused round-robin for all pseudonyms.
TEMPLATES = 200
_LOG_TIME = re.compile(rb"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


@dataclass(frozen=True, slots=True)
class RebuildResult:
    """One measurement: ``seconds`` reading the changelog (Faust's "Restoring state"
    to "Done reading"), ``ready_seconds`` from process start to "Worker ready"."""

    patients: int
    records: int
    bytes: int
    bytes_per_record: float
    seconds: float
    ready_seconds: float
    records_per_s: float


def _stay_files(workdir: Path, n: int) -> list[Path]:
    """``n`` PhysioNet stays, or seeded synthetic ones written to ``workdir``."""
    if PHYSIONET.is_dir():
        files = sorted(PHYSIONET.glob("*.psv"))[:n]
        if files:
            return files
    out = []
    for name, text in generate_stays(n, seed=7):
        p = workdir / f"{name}.psv"
        p.write_text(text)
        out.append(p)
    return out


def template_records(settings: Settings, files: list[Path]) -> list[bytes]:
    """Each stay's table value at its end, as the stream's changelog stores it (the
    record's JSON text, JSON-encoded again: the table's value type is ``str``)."""
    spec = load_model_info(settings).spec
    key = settings.pseudonym_key.get_secret_value().encode()
    start = datetime.fromisoformat(settings.physionet_stay_start)
    out = []
    for path in files:
        records: dict[str, PatientRecord] = {}
        envelopes: list[Envelope] = []
        for msg in file_messages(path, key, start):
            envelopes += normalise(msg.value, source=msg.origin, inbound_ts_ms=None).envelopes
        score_envelopes(records, envelopes, spec=spec, staleness_hours=settings.staleness_hours)
        out += [orjson.dumps(r.to_json()) for r in records.values()]
    return out


def _fill_changelog(settings: Settings, topic: str, values: list[bytes], patients: int) -> int:
    """Write one record per pseudonym to ``topic``, each to the partition the stream's
    own producer (aiokafka's murmur2 of the raw key) would have used. Returns bytes."""
    producer = Producer({**kafka_config(settings), "linger.ms": 20})
    n_parts, total = settings.topic_partitions, 0
    for i in range(patients):
        patient = secrets.token_hex(32)  # same shape as an HMAC-SHA256 pseudonym
        key, value = orjson.dumps(patient), values[i % len(values)]
        partition = (murmur2(patient.encode()) & 0x7FFFFFFF) % n_parts
        while True:
            try:
                producer.produce(topic, key=key, value=value, partition=partition)
                break
            except BufferError:  # local queue full: let it drain
                producer.poll(0.1)
        total += len(key) + len(value)
    if producer.flush(120) != 0:
        raise RuntimeError(f"Kafka did not acknowledge every changelog record on {topic}")
    return total


def _log_time(line: bytes) -> float:
    """The time of a worker log line: JSON lines (``"time"``, ISO 8601) or Faust's
    plain ``[YYYY-mm-dd HH:MM:SS,mmm]`` prefix. Raises ``ValueError`` for neither."""
    if line.startswith(b"{"):
        stamp = str(orjson.loads(line)["time"]).replace("Z", "+00:00")
        return datetime.fromisoformat(stamp).timestamp()
    m = _LOG_TIME.match(line)
    if m is None:
        raise ValueError(f"no timestamp in log line {line[:80]!r}")
    return datetime.strptime(m.group(1).decode(), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def rebuild_time(
    settings: Settings, patients: int = 10_000, *, timeout_s: float = 600.0
) -> RebuildResult:
    """Measure a fresh worker's rebuild of ``patients`` patients' table records.

    Uses its own app id and topics on ``settings.kafka_bootstrap`` and deletes them after.
    Raises ``RuntimeError`` when Kafka does not take the records or the worker does not
    finish recovery within ``timeout_s`` (with the worker's log tail). Not retried.
    """
    run = secrets.token_hex(4)
    with tempfile.TemporaryDirectory(prefix="wardwatch-rebuild-") as tmp:
        workdir = Path(tmp)
        s = settings.model_copy(
            update={
                "app_id": f"wardwatch-rebuild-{run}",
                "topic_inbound": f"rebuild-{run}.fhir.inbound",
                "topic_dlq": f"rebuild-{run}.fhir.inbound.dlq",
                "topic_events": f"rebuild-{run}.clinical.events",
                "topic_scores": f"rebuild-{run}.risk.scores",
                "topic_alerts": f"rebuild-{run}.risk.alerts",
                "database_url": f"sqlite:///{workdir / 'rebuild.db'}",
                "worker_web_port": 6100 + secrets.randbelow(800),
            }
        )
        changelog = f"{s.app_id}-patients-changelog"
        topics = [s.topic_inbound, s.topic_dlq, s.topic_events, s.topic_scores, s.topic_alerts]
        admin = AdminClient(kafka_config(s))
        new = [NewTopic(t, s.topic_partitions, 1) for t in topics]
        new.append(NewTopic(changelog, s.topic_partitions, 1, config={"cleanup.policy": "compact"}))
        for fut in admin.create_topics(new).values():
            fut.result(30)
        proc = None
        try:
            values = template_records(s, _stay_files(workdir, TEMPLATES))
            size = _fill_changelog(s, changelog, values, patients)
            log_path = workdir / "worker.log"
            t0 = time.time()
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "streams", "worker", "-l", "info"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=PROJECT_ROOT,
                    env=settings_env(s),
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout_s
            start = done = ready = None
            while ready is None:
                if time.monotonic() > deadline or proc.poll() is not None:
                    tail = log_path.read_bytes()[-3000:].decode(errors="replace")
                    raise RuntimeError(f"the worker did not finish recovery:\n{tail}")
                time.sleep(0.5)
                for line in log_path.read_bytes().splitlines():
                    if start is None and b"Restoring state from changelog" in line:
                        start = _log_time(line)
                    elif done is None and b"Done reading from changelog" in line:
                        done = _log_time(line)
                    elif b"Worker ready" in line and done is not None:
                        ready = _log_time(line)
            assert start is not None and done is not None
            seconds = done - start
            return RebuildResult(
                patients=patients,
                records=patients,
                bytes=size,
                bytes_per_record=size / patients,
                seconds=round(seconds, 2),
                ready_seconds=round(ready - t0, 2),
                records_per_s=round(patients / seconds, 1) if seconds > 0 else float("inf"),
            )
        finally:
            if proc is not None:
                stop_worker(proc)
            admin.delete_topics([*topics, changelog])


def main(argv: list[str] | None = None) -> None:
    """``python -m streams.bench_rebuild``: print one measurement as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000)
    args = ap.parse_args(argv)
    print(orjson.dumps(asdict(rebuild_time(Settings(), args.patients))).decode())


if __name__ == "__main__":
    main()
