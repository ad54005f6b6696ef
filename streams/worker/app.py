"""The Faust app: its topics and table, and the thin agents of :mod:`.agents` wired to
them (the scoring itself is :mod:`inference.scoring`'s).

score      fhir.inbound, clinical.events -> risk.scores, risk.alerts (+ fhir.inbound.dlq;
           per-patient state in a table). An inbound message on its patients' home
           partition is normalised and scored in place; other envelopes go through
           clinical.events to their home partition and come back to this agent.
persist    risk.scores, risk.alerts -> the SQL database (its own agents, so a database
           outage holds back the stored copy, never the alerts on risk.alerts)

Processing is at-least-once with idempotent effects: every agent takes a batch with
``noack_take`` and acknowledges its events only after its effects are durable or handed
to the producer (Faust flushes the producer before it commits offsets). Faust's
exactly-once mode has open bugs, and agent concurrency > 1 reorders events, so neither is
used.
"""

from __future__ import annotations

from typing import Any

import faust
from mode import CrashingSupervisor

from fhir import parse as fhir_parse
from inference.client import TritonRiskClient
from inference.scoring.model_port import ServedModel

from .. import faust_fixes, persist
from ..client_security import database_connect_args, faust_credentials, triton_tls
from ..logs import logging_config as log_config
from ..model_settings import load_model_info
from ..observe import (
    DatabaseProbe,
    FlowSensor,
    Metrics,
    QuietWorker,
    install_web,
    wardwatch_version,
)
from ..sealing import key_ring
from ..settings import Settings
from .agents import Scoring, Writing, persist_agents, score_agent
from .deadletters import DeadLetters
from .outputs import Outputs
from .supervision import Stopper


def faust_app(settings: Settings, scoring: bool) -> faust.App:
    """The Faust app of ``settings`` (a writer-only worker is a consumer group of its
    own: app id + "-writer"; it holds no table and reads other topics). Raises
    nothing of its own."""
    return faust.App(
        settings.app_id if scoring else f"{settings.app_id}-writer",
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=faust_credentials(settings),  # TLS / SASL (client_security)
        store="memory://",
        processing_guarantee="at_least_once",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=settings.producer_linger_ms / 1000,
        # A killed worker's partitions go to the others after this, not Kafka's 45-60 s.
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.worker_session_timeout_s / 3),
        # A dead letter carries its original bytes, up to the gateway's body limit.
        producer_max_request_size=10_485_760,
        web_port=settings.worker_web_port,
        # web_bind is the interface the server listens on (Faust's default is 0.0.0.0);
        # web_host only names it in the canonical URL.
        web_bind=settings.worker_web_host,
        web_host="127.0.0.1",
        # Faust's /table and /router views would serve patient records, unauthenticated.
        web_tables_enabled=False,
        web_router_enabled=False,
        logging_config=log_config(settings.log_format),  # JSON lines (streams/observe.py)
        Worker=QuietWorker,  # no terminal spinner in the log output
        autodiscover=False,
        datadir=str(settings.data_dir / "faust"),
        # Table values are whole patient records; recovery replays the changelog.
        table_standby_replicas=0,
    )


def raw_topic(app: faust.App, *names: str) -> faust.TopicT:
    """A topic of raw bytes: agents parse them themselves, because Faust acknowledges a
    message whose value fails to decode before it raises, which would lose it."""
    return app.topic(
        *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def patients_table(app: faust.App, settings: Settings) -> Any:
    """Per-patient records, keyed by pseudonym. Keys and values are str with Faust's
    json codec: a table takes its codecs from key_type/value_type and ignores a schema's
    serializers, so raw bytes would be written one way and recovered another."""
    return app.Table(
        "patients", key_type=str, value_type=str, default=None, partitions=settings.topic_partitions
    )


def triton_client(settings: Settings, n_features: int, metrics: Metrics) -> TritonRiskClient:
    """The model server's client (connects on first use)."""
    return TritonRiskClient(
        settings.triton_grpc_url,
        settings.triton_model,
        n_features=n_features,
        timeout_s=settings.triton_timeout_s,
        max_batch=settings.triton_max_batch,
        max_inflight=settings.triton_max_inflight,
        observer=metrics.triton_request,
        **triton_tls(settings),
    )


async def no_database(timeout_s: float = 0.0) -> str | None:
    """The database probe of a scoring-only worker, which never touches the database."""
    return None


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app and its agents for ``settings``.

    Raises ``ValueError`` when the code table is unreadable or inconsistent, or
    (``DeadLetterKeyError``) no dead-letter key is usable (checked here, at start-up, rather
    than by the first message).
    """
    fhir_parse.preload()
    # Faust creates its data directory without parents: a fresh volume has none.
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    # Roles (settings.worker_role): "all" runs every agent in one process; "score" and
    # "persist" split the alert path from the database writers.
    scoring = settings.worker_role != "persist"
    writing = settings.worker_role != "score"
    app = faust_app(settings, scoring)
    # Never commit past a message skipped in a rebalance; fetch with a broker-side wait.
    metrics = Metrics()  # served at /metrics; events in/out per topic come from the sensor
    faust_fixes.install(
        app,
        fetch_min_bytes=settings.fetch_min_bytes,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        on_reread=metrics.reread,
    )
    app.sensors.add(FlowSensor(metrics))
    # Dead letters keep their input encrypted; no usable key (outside development mode)
    # refuses to build the app rather than fail at the first dead letter.
    dlq = raw_topic(app, settings.topic_dlq)
    dead_letters = DeadLetters(dlq, key_ring(settings), settings, metrics)
    scores, alerts = raw_topic(app, settings.topic_scores), raw_topic(app, settings.topic_alerts)
    model = load_model_info(settings)
    sink = persist.Sink(settings.database_url, database_connect_args(settings))
    stopper = Stopper(app, metrics)
    install_web(
        app,
        metrics,
        lag_topics=(
            *((settings.topic_inbound, settings.topic_events) if scoring else ()),
            *(
                (settings.topic_scores, settings.topic_alerts, settings.topic_dlq)
                if writing
                else ()
            ),
        ),
        database=DatabaseProbe(sink.engine) if writing else no_database,
        stopping=stopper.stopping,
    )
    metrics.set_build_info(wardwatch_version(), model.info.name, model.info.version)
    # A crashing supervisor: an agent that raises takes the worker down with it.
    crash = CrashingSupervisor
    if scoring:
        outputs = Outputs(
            raw_topic(app, settings.topic_events), scores, alerts, dead_letters, metrics
        )
        port = ServedModel(triton_client(settings, model.spec.n_features, metrics), model.spec)
        w = Scoring(settings, model, port, patients_table(app, settings), outputs, metrics)
        # One agent reads the inbound topic and the events topic. Edge-published messages
        # are keyed by the pseudonym, so they already sit on the patient's home partition:
        # they are normalised and scored in place, which saves a produce, a consume and a
        # second batch wait per message. Anything else (a foreign key, another partition
        # count) takes the events topic to its home partition, read by this same agent,
        # so one patient's record is never updated by two tasks at once.
        sources = raw_topic(app, settings.topic_inbound, settings.topic_events)
        app.agent(sources, name="score", supervisor_strategy=crash)(
            stopper.wrap("score", score_agent(w))
        )
    if writing:
        writer = Writing(settings, sink, dead_letters, metrics)
        topics = {"persist_scores": scores, "persist_alerts": alerts, "persist_dead_letters": dlq}
        for name, body in persist_agents(writer).items():
            app.agent(topics[name], name=name, supervisor_strategy=crash)(stopper.wrap(name, body))
    return app
