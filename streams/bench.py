"""``make bench`` (``python -m streams.bench``): measure the pipeline on the local services
and write BENCHMARKS.md. Development tooling, like the other ``bench*`` modules and
``profiling``: kept out of the wheel (pyproject.toml; tests/unit/test_packaging.py).

Every number is a ratio against a baseline measured in the same run, or a rate with the
command and machine it came from. Nothing here asserts a speed: benchmarks report, tests
check behaviour. Each run uses its own topics, consumer group and SQLite file, so it
neither sees nor disturbs other data.

Measured:

* baseline: a plain confluent-kafka consume + orjson parse loop over the inbound topic;
* the full pipeline per worker process (normalise, score with Triton, persist), drained
  from a pre-filled topic: messages/s and clinical events/s, and the ratio to baseline;
* event-to-score and event-to-alert latency, p50 and p99, at fixed offered loads;
* Triton: one request per window against batches of 64, inferences/s;
* the edge: FHIR Observations/s through ``fhir.parse.parse_resource`` (full R4B
  validation);
* database writes, rows/s, SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import platform
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

# NewTopic is public API, but confluent-kafka's stubs do not re-export it.
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from inference import bench_model

from . import bench_gateway, bench_hotpath, bench_rebuild
from .cli_context import settings
from .client_security import kafka_config, triton_tls
from .demo import (
    SHARED_PHYSIONET,
    end_offsets,
    follow_scores,
    percentile,
    start_worker,
    stop_worker,
    warm_up,
)
from .profiling import Sampler
from .replay import landed_at, make_producer
from .settings import PROJECT_ROOT, VAR_DIR, Settings
from .sources import psv_messages

PG_URL = "postgresql+psycopg://wardwatch:wardwatch@127.0.0.1:5433/wardwatch"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the results table."""

    what: str
    value: str
    note: str = ""
    target: str = ""


def _verdict(target: str, met: bool) -> str:
    return f"{target}: {'met' if met else '**not met**'}"


def _stays(n: int, tmp: Path) -> tuple[list[Path], str]:
    if SHARED_PHYSIONET.is_dir():
        return sorted(SHARED_PHYSIONET.glob("*.psv"))[:n], "PhysioNet 2019"
    from fhir.synthetic import generate_stays

    for pid, text in generate_stays(n, seed=7):
        (tmp / f"{pid}.psv").write_text(text)
    return sorted(tmp.glob("*.psv")), "synthetic"


def _messages(stays: list[Path], key: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out = [(m.key, m.value) for p in stays for m in psv_messages(p, key, start)]
    events = sum(len(orjson.loads(v)["entry"]) for _, v in out)
    return out, events


def _produce(
    producer: Producer, topic: str, items: list[tuple[bytes, bytes]], rate: float = 0.0
) -> tuple[set[tuple[int, int]], float]:
    """Send ``items`` (paced at ``rate``/s when > 0); their (partition, offset) and seconds."""
    landed: set[tuple[int, int]] = set()

    def done(err: object, msg: object) -> None:
        if err is None:
            landed.add(landed_at(msg))  # type: ignore[arg-type]

    t0 = time.monotonic()
    for n, (k, v) in enumerate(items, 1):
        while True:
            try:
                producer.produce(topic, key=k, value=v, on_delivery=done)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if rate > 0:
            ahead = n / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush(120)
    return landed, time.monotonic() - t0


def _baseline(s: Settings, n: int) -> float:
    """Messages/s of a plain consume + orjson parse loop over the inbound topic."""
    c = Consumer(
        {
            **kafka_config(s),
            "group.id": f"bench-baseline-{secrets.token_hex(3)}",
            "enable.auto.commit": False,
        }
    )
    md = c.list_topics(s.topic_inbound, timeout=10).topics[s.topic_inbound]
    c.assign([TopicPartition(s.topic_inbound, p, 0) for p in md.partitions])
    seen, t0 = 0, time.monotonic()
    try:
        while seen < n and time.monotonic() - t0 < 120:
            for msg in c.consume(1000, 0.5):
                if not msg.error():
                    orjson.loads(msg.value() or b"null")
                    seen += 1
    finally:
        c.close()
    return seen / (time.monotonic() - t0)


def _triton(s: Settings, seconds: float) -> tuple[float, float]:
    """Inferences/s: one window per request, and batches of ``triton_max_batch``."""
    from inference.client import TritonRiskClient
    from inference.features import FEATURE_SPEC_FILE, FeatureSpec, newest_version_dir

    spec = FeatureSpec.load(newest_version_dir(s.model_dir) / FEATURE_SPEC_FILE)
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(s.triton_max_batch, 48, spec.n_features)).astype(np.float32)

    async def run(batch: int) -> float:
        client = TritonRiskClient(s.triton_grpc_url, s.triton_model, timeout_s=30, **triton_tls(s))
        try:
            await client.predict(windows[:batch])  # warm-up
            n, t0 = 0, time.monotonic()
            while time.monotonic() - t0 < seconds:
                await client.predict(windows[:batch])
                n += batch
            return n / (time.monotonic() - t0)
        finally:
            await client.close()

    return asyncio.run(run(1)), asyncio.run(run(s.triton_max_batch))


def _edge(stays: list[Path]) -> tuple[float, float]:
    """FHIR Observations/s through parse_resource on one core: (full R4B validation, lean
    decoder with full-validation fallback). Both parse the same row Bundles, alternately, and
    each keeps its best of three passes, so a busy moment on the machine hurts neither more."""
    from fhir.parse import Validation, parse_resource

    msgs, _ = _messages(stays[:20], b"bench")
    bodies = [v for _, v in msgs]

    def one_pass(mode: Validation) -> float:
        n_obs, t0 = 0, time.perf_counter()
        for body in bodies:
            n_obs += parse_resource(body, validation=mode).observations
        return n_obs / (time.perf_counter() - t0)

    full = lean = 0.0
    for _ in range(3):
        full = max(full, one_pass("full"))
        lean = max(lean, one_pass("lean"))
    return full, lean


def _db(url: str, n_batches: int = 10) -> float:
    """Rows/s of idempotent batched score writes (batches of 500)."""
    from storage.db import ScoreRow, make_engine, migrate, write_scores

    engine = make_engine(url)
    migrate(engine)
    t = datetime.now(UTC)
    run = secrets.token_hex(4)
    batches = [
        [
            ScoreRow(
                patient=f"pt-bench-{run}-{b}-{i % 50}",
                scored_at=t + timedelta(hours=i),
                model="bench",
                model_version="0",
                risk=0.1,
                news2=3,
                news2_breakdown={"respiration_rate": 0},
                features={"heart_rate": 80.0},
            )
            for i in range(500)
        ]
        for b in range(n_batches)
    ]
    t0 = time.perf_counter()
    for rows in batches:
        write_scores(engine, rows)
    rate = 500 * n_batches / (time.perf_counter() - t0)
    engine.dispose()
    return rate


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc); 0 elsewhere.

    The worker's CPU per message is what a shared machine cannot blur: wall-clock rates
    move with whatever else runs, CPU seconds per message do not (much)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _isolated(base: Settings, run: str, db: Path) -> Settings:
    return base.model_copy(
        update={
            "app_id": f"wardwatch-bench-{run}",
            "topic_inbound": f"bench-{run}.fhir.inbound",
            "topic_dlq": f"bench-{run}.fhir.inbound.dlq",
            "topic_events": f"bench-{run}.clinical.events",
            "topic_scores": f"bench-{run}.risk.scores",
            "topic_alerts": f"bench-{run}.risk.alerts",
            "database_url": f"sqlite:///{db}",
            "worker_web_port": 6200 + secrets.randbelow(700),
        }
    )


def _create_topics(admin: AdminClient, s: Settings) -> list[str]:
    """Create the run's five project topics; returns their names (to delete after).
    Partitions whose leaders are still starting are waited for where offsets are read
    (:func:`streams.demo.end_offsets`). Raises what topic creation raises."""
    topics = [s.topic_inbound, s.topic_dlq, s.topic_events, s.topic_scores, s.topic_alerts]
    for fut in admin.create_topics([NewTopic(t, s.topic_partitions, 1) for t in topics]).values():
        fut.result(30)
    return topics


def run_bench(
    base: Settings,
    *,
    patients: int,
    loads: tuple[float, ...],
    seconds: float,
    out: Path,
    profile: bool = False,
    rebuild_patients: int = 10_000,
    say: Callable[[str], None] = print,
) -> list[Row]:
    """Run every measurement, print the table, write ``out`` (BENCHMARKS.md)."""
    run = secrets.token_hex(4)
    work = VAR_DIR / "bench" / run
    work.mkdir(parents=True, exist_ok=True)
    s = _isolated(base, run, work / "scores.db")
    admin = AdminClient(kafka_config(s))
    topics = _create_topics(admin, s)
    rows: list[Row] = []
    profile_md = ""
    stays, source = _stays(patients, work)
    msgs, n_events = _messages(stays, f"bench-{run}".encode())
    say(f"bench {run}: {len(msgs)} messages ({n_events} events) from {len(stays)} {source} stays")
    producer = make_producer(s)
    worker = None
    try:
        # 1. The full pipeline: a warmed-up worker drains a burst published at full speed.
        worker = start_worker(s, work / "worker.log")
        ready = warm_up(
            s, stays[0], end_offsets(s, [s.topic_scores]), worker, deadline=time.monotonic() + 300
        )
        say(f"worker ready after {ready:.1f}s")
        start = end_offsets(s, [s.topic_scores, s.topic_dlq, s.topic_alerts])
        sampler = Sampler(worker.pid, work / "worker.pyspy.txt") if profile else None
        cpu0 = _cpu_seconds(worker.pid)
        t0 = time.monotonic()
        landed, secs = _produce(producer, s.topic_inbound, msgs)
        rows.append(Row("publish (confluent-kafka, acks=all)", f"{len(msgs) / secs:,.0f} msg/s"))
        follow = follow_scores(s, start, landed, deadline=t0 + 900, worker=worker)
        rate = len(follow.scored) / (time.monotonic() - t0)
        worker_cpu = _cpu_seconds(worker.pid) - cpu0
        if sampler is not None:
            prof = sampler.stop()
            if prof is not None:
                profile_md = prof.markdown()
                say(profile_md)
        per_msg = n_events / len(msgs)
        # 2. The baseline reads the same topic: consume + parse, nothing else.
        base_rate = _baseline(s, len(msgs))
        rows.append(
            Row(
                "baseline: confluent-kafka consume + orjson parse",
                f"{base_rate:,.0f} msg/s",
                f"{base_rate * per_msg:,.0f} events/s",
            )
        )
        rows.append(
            Row(
                "full pipeline, 1 worker process",
                f"{rate * per_msg:,.0f} events/s",
                f"{rate:,.1f} msg/s; {rate / base_rate:.4f}x baseline; worker CPU "
                f"{1000 * worker_cpu / max(len(follow.scored), 1):,.2f} ms/msg = "
                f"{n_events / max(worker_cpu, 1e-9):,.0f} events per CPU-second; "
                f"{len(follow.scored)}/{len(landed)} scored, {follow.degraded} degraded",
                _verdict(">= 20,000 events/s", rate * per_msg >= 20_000),
            )
        )
        for r in rows[-3:]:
            say(f"{r.what}: {r.value} {r.note}")
        # 3. Latency at fixed offered loads (fresh patients per load).
        rows += _latency(s, producer, stays, loads, seconds, worker, per_msg, "", say)
    finally:
        if worker is not None:
            stop_worker(worker)
        admin.delete_topics(topics)
    # 3b. The same loads with scoring and database writing in two processes (worker_role).
    rows += _latency_split(base, stays, loads, seconds, per_msg, work, say)
    # 4. Triton, edge, database.
    one, batched = _triton(s, seconds=10)
    rows.append(Row("Triton, one window per request", f"{one:,.0f} inferences/s"))
    rows.append(
        Row(
            f"Triton, batches of {s.triton_max_batch}",
            f"{batched:,.0f} inferences/s",
            f"{batched / one:.1f}x one per request",
            _verdict(">= 10x one per request", batched >= 10 * one),
        )
    )
    model_speed = bench_model.run(s.model_dir, [1, s.triton_max_batch], 2.0, 1)
    for dev, by_batch in model_speed["results"].items():
        single, full = by_batch["1"], by_batch[str(s.triton_max_batch)]
        rows.append(
            Row(
                f"served model alone on {dev} (as Triton's backend runs it)",
                f"{full['windows_per_s']:,.0f} windows/s at batch {s.triton_max_batch}",
                f"{single['windows_per_s']:,.0f} at batch 1; {full['x_one_per_call']:.1f}x; "
                + (model_speed["gpu"] or f"{model_speed['cpu_threads']} CPU threads"),
            )
        )
    for dev, err in model_speed.get("errors", {}).items():
        rows.append(Row(f"served model alone on {dev}", "FAILED", err))
    edge_full, edge_lean = _edge(stays)
    rows.append(Row("edge: FHIR Observations, full R4B validation", f"{edge_full:,.0f} obs/s"))
    rows.append(
        Row(
            "edge: FHIR Observations, lean decoder (same decisions as full)",
            f"{edge_lean:,.0f} obs/s",
            f"{edge_lean / edge_full:.1f}x full validation",
        )
    )
    hot = bench_hotpath.run(n_stays=min(patients, 40), repeat=3, batch=s.batch_size)
    rows.append(
        Row(
            "pure per-message work, no Kafka/Triton (normalise + state + scores)",
            f"{hot['events_per_s_per_core']:,.0f} events/s per core",
            f"normalise {hot['normalise_us_per_message']:,.0f} us/msg, score path "
            f"{hot['score_path_us_per_message']:,.0f} us/msg (CPU time, batch {s.batch_size}); "
            "the ceiling for one worker process before Faust, Kafka and Triton",
        )
    )
    if rebuild_patients:
        rb = bench_rebuild.rebuild_time(base, patients=rebuild_patients)
        rows.append(
            Row(
                f"state rebuild from the changelog, {rb.records:,} patients",
                f"{rb.seconds:,.1f} s",
                f"{rb.records_per_s:,.0f} records/s, {rb.bytes_per_record / 1024:,.1f} KiB per "
                f"patient; worker start to ready {rb.ready_seconds:,.1f} s",
            )
        )
    gw = asyncio.run(bench_gateway.measure(base, 1000, 32, 500, 16))
    rows.append(
        Row(
            "edge: HL7 v2 ORU^R01 over MLLP (5 OBX each), to Kafka, ACKed",
            f"{gw.mllp_one:,.0f} msg/s on 1 connection",
            f"{gw.mllp_eight:,.0f} msg/s on 8 connections; window {gw.window}; "
            "includes mapping, R4B checks, pseudonymisation and the Kafka ack",
        )
    )
    rows.append(
        Row(
            "edge: FHIR HTTP POST /fhir/Observation, to Kafka",
            f"{gw.http:,.0f} resources/s",
            f"{gw.http_conc} concurrent clients",
        )
    )
    sqlite_url = f"sqlite:///{work / 'db.sqlite'}"
    rows.append(Row("database writes, SQLite", f"{_db(sqlite_url):,.0f} rows/s"))
    try:
        rows.append(Row("database writes, PostgreSQL", f"{_db(PG_URL):,.0f} rows/s"))
    except Exception as exc:  # a machine without the local PostgreSQL still gets the rest
        rows.append(Row("database writes, PostgreSQL", "not measured", str(exc)[:100]))
    _write(out, rows, profile_md)
    say(_table(rows))
    return rows


def _latency(
    s: Settings,
    producer: Producer,
    stays: list[Path],
    loads: tuple[float, ...],
    seconds: float,
    worker: subprocess.Popen[bytes],
    per_msg: float,
    label: str,
    say: Callable[[str], None],
) -> list[Row]:
    """Event-to-score and event-to-alert latency at each offered load (fresh patients per
    load) through the running worker(s); ``worker`` is the one whose exit ends a wait."""
    rows: list[Row] = []
    for load in loads:
        # ``load`` is clinical events/s offered; messages carry per_msg events each.
        msg_rate = load / per_msg
        lm, _ = _messages(stays, f"bench-{s.app_id}-{load}".encode())
        lm = lm[: int(msg_rate * seconds)]
        start = end_offsets(s, [s.topic_scores, s.topic_dlq, s.topic_alerts])
        landed, _ = _produce(producer, s.topic_inbound, lm, rate=msg_rate)
        f = follow_scores(s, start, landed, deadline=time.monotonic() + 300, worker=worker)
        alert_p99 = percentile(f.alert_latencies_ms, 99)
        rows.append(
            Row(
                f"latency at {load:,.0f} events/s offered ({msg_rate:,.0f} msg/s){label}",
                f"score p50 {percentile(f.latencies_ms, 50):,.0f} ms, "
                f"p99 {percentile(f.latencies_ms, 99):,.0f} ms",
                f"alert p50 {percentile(f.alert_latencies_ms, 50):,.0f} ms, "
                f"p99 {alert_p99:,.0f} ms "
                f"({len(f.alert_latencies_ms)} alerts); "
                f"{len(f.scored)}/{len(landed)} scored",
                _verdict(
                    "alert p99 <= 200 ms at 2,000 events/s",
                    bool(f.alert_latencies_ms) and alert_p99 <= 200,
                )
                if load >= 2000
                else "",
            )
        )
        say(rows[-1].what + ": " + rows[-1].value + "; " + rows[-1].note)
    return rows


def _latency_split(
    base: Settings,
    stays: list[Path],
    loads: tuple[float, ...],
    seconds: float,
    per_msg: float,
    work: Path,
    say: Callable[[str], None],
) -> list[Row]:
    """:func:`_latency` with a scoring-only worker and a database writer (two processes,
    ``worker_role`` score and persist) on topics of their own."""
    run = secrets.token_hex(4)
    s = _isolated(base, run, work / "scores-split.db")
    admin = AdminClient(kafka_config(s))
    topics = _create_topics(admin, s)
    scorer = writer = None
    try:
        scorer = start_worker(
            s.model_copy(update={"worker_role": "score"}), work / "worker-score.log"
        )
        writer = start_worker(
            s.model_copy(update={"worker_role": "persist"}),
            work / "worker-persist.log",
            web_port=s.worker_web_port + 1,
        )
        ready = warm_up(
            s, stays[0], end_offsets(s, [s.topic_scores]), scorer, deadline=time.monotonic() + 300
        )
        say(f"scoring worker (with a separate writer) ready after {ready:.1f}s")
        return _latency(
            s,
            make_producer(s),
            stays,
            loads,
            seconds,
            scorer,
            per_msg,
            ", scoring and writing in 2 processes",
            say,
        )
    finally:
        for proc in (scorer, writer):
            if proc is not None:
                stop_worker(proc)
        admin.delete_topics(topics)


def _table(rows: list[Row]) -> str:
    lines = ["| measurement | result | target | notes |", "|---|---|---|---|"]
    lines += [f"| {r.what} | {r.value} | {r.target} | {r.note} |" for r in rows]
    return "\n".join(lines)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def _write(out: Path, rows: list[Row], profile_md: str = "") -> None:
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=PROJECT_ROOT
    ).stdout.strip()
    out.write_text(
        "# Benchmarks\n\n"
        "Written by `make bench` (`python -m streams.bench`); numbers from one run on the "
        "local services (Kafka, PostgreSQL, Triton started by `make up`).\n\n"
        f"- when: {datetime.now(UTC).isoformat(timespec='seconds')}\n"
        f"- commit: {rev or 'unknown'}\n"
        f"- machine: {_machine()}\n\n"
        + _table(rows)
        + "\n"
        + (
            "\n## Where the worker's time goes (full-pipeline burst)\n\n" + profile_md
            if profile_md
            else ""
        )
    )


@click.command(name="python -m streams.bench")
@click.option("--patients", type=int, default=100, show_default=True, help="Stays replayed.")
@click.option(
    "--load",
    "loads",
    type=float,
    multiple=True,
    default=(500.0, 1000.0, 2000.0),
    show_default=True,
    help="Offered load, clinical events/s (FHIR Observations), for a latency measurement; "
    "repeat for several. The target is p99 event-to-alert <= 200 ms at 2,000.",
)
@click.option("--seconds", type=float, default=20.0, show_default=True, help="Per measurement.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("BENCHMARKS.md"),
    show_default=True,
    help="Markdown report to write.",
)
@click.option(
    "--profile/--no-profile",
    default=True,
    show_default=True,
    help="Sample the worker with py-spy during the throughput burst and add where its "
    "time goes to the report.",
)
@click.option(
    "--rebuild-patients",
    type=int,
    default=10_000,
    show_default=True,
    help="Patients in the state-rebuild measurement (0 skips it).",
)
def main(
    patients: int,
    loads: tuple[float, ...],
    seconds: float,
    out: Path,
    profile: bool,
    rebuild_patients: int,
) -> None:
    """Measure the pipeline on the running local services and write BENCHMARKS.md.

    Baseline (consume + parse), the full pipeline per worker, latency at fixed offered
    loads, Triton batching, the edge's FHIR validation rate and database writes. Needs
    `make up` (`make bench` does it all). Development tooling: not in the wheel.
    """
    run_bench(settings(), patients=patients, loads=loads, seconds=seconds, out=out, profile=profile)


if __name__ == "__main__":
    main()
