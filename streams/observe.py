"""Operating the worker: Prometheus metrics, health endpoints and JSON logs.

* :class:`Metrics` — the worker's metrics, in a registry of their own (tests read values
  from it; nothing leaks into ``prometheus_client``'s global registry). Events in and out
  per topic are counted by a Faust sensor (:class:`FlowSensor`), so the agents need only
  one-line calls for what only they know: dead letters, alerts, degraded scores, batch
  sizes, latencies.
* :func:`install_web` — ``/metrics`` (Prometheus text format), ``/healthz`` (liveness)
  and ``/readyz`` (readiness) on the worker's own Faust web server.
* Log lines (one JSON object each, payloads redacted) are set up by :mod:`streams.logs`.

Patient data never goes into a log line: the stream carries pseudonyms only, Faust's
reprs of messages and events (which carry the payload) are cut out of every record
(:func:`streams.logs.redact_payloads`), and dead-letter reasons, which can quote the
refused input, are logged, and written into dead-letter headers, through
:func:`safe_reason` (the input itself is kept encrypted in the dead letter:
:mod:`streams.sealing`).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, cast

import faust
from faust import web
from faust.types import TP, EventT
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from sqlalchemy import text

from .errors import safe_reason as safe_reason  # re-exported: logs use it from here

# Event-to-score latency: 10 ms (a warm worker on loopback) to a minute (a backlog).
LATENCY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# One Triton request: ~1 ms (GPU, small batch) to the client's deadline (5 s by default).
TRITON_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Batch sizes up to the agents' batch_size (500) and Triton's max batch (64).
BATCH_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
TRITON_BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128)
# How long a readiness probe waits for Kafka or the database before saying "not ready".
PROBE_TIMEOUT_S: Final = 2.0


class Metrics:
    """The worker's Prometheus metrics, registered in ``registry`` (a new one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_in = Counter(
            "wardwatch_events_in", "Messages consumed, per topic.", ["topic"], registry=r
        )
        self.events_out = Counter(
            "wardwatch_events_out",
            "Messages produced and acknowledged by Kafka, per topic.",
            ["topic"],
            registry=r,
        )
        self.send_errors = Counter(
            "wardwatch_send_errors",
            "Messages Kafka did not accept, per topic.",
            ["topic"],
            registry=r,
        )
        self.dead_letters = Counter(
            "wardwatch_dead_letters",
            "Messages dead-lettered, per stage that refused them.",
            ["stage"],
            registry=r,
        )
        self.alerts_raised = Counter(
            "wardwatch_alerts_raised", "Alerts raised, per severity.", ["severity"], registry=r
        )
        self.scores = Counter("wardwatch_scores", "Scores produced.", registry=r)
        self.scores_degraded = Counter(
            "wardwatch_scores_degraded",
            "Scores produced without the model's risk (Triton away or failing).",
            registry=r,
        )
        self.envelopes = Counter(
            "wardwatch_envelopes",
            "Normalised envelopes, per path: scored in place (the inbound partition is the "
            "patient's home partition) or forwarded through the events topic.",
            ["path"],
            registry=r,
        )
        self.replayed = Counter(
            "wardwatch_replayed_envelopes",
            "Envelopes read again after a rebalance or restart whose effects the patient's "
            "record already held: skipped (their scores and alerts were sent the first time).",
            registry=r,
        )
        self.dead_letter_limit = Counter(
            "wardwatch_dead_letter_limit_exceeded",
            "Times an agent stopped the worker because too many of its messages were "
            "dead-lettered (WARDWATCH_DEAD_LETTER_MAX_RATIO), per agent.",
            ["agent"],
            registry=r,
        )
        self.stopping = Counter(
            "wardwatch_worker_stops",
            "Times the worker stopped itself on a failure it cannot handle, per reason "
            "(retries exhausted, send failed, dead-letter limit).",
            ["reason"],
            registry=r,
        )
        self.rereads = Counter(
            "wardwatch_partition_rereads",
            "Source partitions read again from an earlier offset, per kind: hole (a stream "
            "skipped a record in a rebalance), out_of_order (records fetched before a seek "
            "arrived after it), stall (records waited 15 s with nothing taken).",
            ["kind"],
            registry=r,
        )
        self.batch_size = Histogram(
            "wardwatch_batch_size",
            "Events per batch an agent took.",
            ["agent"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.event_to_score = Histogram(
            "wardwatch_event_to_score_seconds",
            "From the inbound message's Kafka timestamp to its score being produced.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.triton_latency = Histogram(
            "wardwatch_triton_request_seconds",
            "Duration of one Triton request, per outcome (ok, unavailable, error).",
            ["outcome"],
            buckets=TRITON_BUCKETS,
            registry=r,
        )
        self.triton_batch = Histogram(
            "wardwatch_triton_batch_size",
            "Windows per Triton request.",
            buckets=TRITON_BATCH_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "wardwatch_consumer_lag",
            "Messages not yet committed (log end offset - committed offset), per partition "
            "assigned to this worker.",
            ["topic", "partition"],
            registry=r,
        )
        self.build_info = Gauge(
            "wardwatch_build_info",
            "Always 1; the labels say which WardWatch and which model this worker runs.",
            ["version", "model", "model_version"],
            registry=r,
        )

    # -- small recorders the agents call (one line each at the call site)

    def batch(self, agent: str, size: int) -> None:
        """Record one batch an agent took."""
        self.batch_size.labels(agent).observe(size)

    def routed(self, local: int, forwarded: int) -> None:
        """Record envelopes scored in place and envelopes forwarded to the events topic."""
        if local:
            self.envelopes.labels("local").inc(local)
        if forwarded:
            self.envelopes.labels("forwarded").inc(forwarded)

    def reread(self, kind: str) -> None:
        """Record one source partition read again (see ``faust_fixes.Consumer``)."""
        self.rereads.labels(kind).inc()

    def dead_letter(self, stage: str) -> None:
        """Record one dead letter refused at ``stage``."""
        self.dead_letters.labels(stage).inc()

    def scored(
        self, score: Mapping[str, Any], severity: str | None, now_s: float | None = None
    ) -> None:
        """Record a score made durable: count, degraded, event-to-score latency, and the
        alert it raised (``severity``; None when it raised none).

        ``now_s`` is the current Unix time (default ``time.time()``). A score without
        ``inbound_ts_ms`` records no latency. Never raises.
        """
        self.scores.inc()
        if score.get("degraded"):
            self.scores_degraded.inc()
        now = time.time() if now_s is None else now_s
        latency = event_to_score_s(score.get("inbound_ts_ms"), now)
        if latency is not None:
            self.event_to_score.observe(latency)
        if severity is not None:
            self.alerts_raised.labels(severity).inc()

    def triton_request(self, batch: int, seconds: float, outcome: str) -> None:
        """Record one Triton request (observer of :class:`inference.client.TritonRiskClient`)."""
        self.triton_batch.observe(batch)
        self.triton_latency.labels(outcome).observe(seconds)

    def set_build_info(self, version: str, model: str, model_version: str) -> None:
        self.build_info.labels(version, model, model_version).set(1)

    def set_lag(self, lag: Mapping[tuple[str, int], int]) -> None:
        """Replace the lag gauge with ``lag`` (partitions no longer assigned disappear)."""
        self.consumer_lag.clear()
        for (topic, partition), value in lag.items():
            self.consumer_lag.labels(topic, str(partition)).set(value)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """A sample's current value (0.0 when absent), e.g. ``value("wardwatch_scores_total")``."""
        got = self.registry.get_sample_value(name, dict(labels or {}))
        return 0.0 if got is None else got


def wardwatch_version() -> str:
    """The installed WardWatch package's version ("unknown" when not installed)."""
    try:
        return importlib.metadata.version("wardwatch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def event_to_score_s(inbound_ts_ms: object, now_s: float) -> float | None:
    """Seconds from the inbound message's timestamp (ms) to ``now_s``; None if unknown.

    Clock skew between the producer and this worker can make it slightly negative: it is
    clamped at 0 so the histogram's sum stays meaningful.
    """
    if not isinstance(inbound_ts_ms, int | float) or isinstance(inbound_ts_ms, bool):
        return None
    if inbound_ts_ms <= 0:
        return None
    return max(0.0, now_s - inbound_ts_ms / 1000.0)


# ----------------------------------------------------------------------- events in/out


class FlowSensor(faust.Sensor):
    """Counts messages consumed and produced per topic (a Faust sensor, so every agent,
    table changelog and dead letter is counted without code in the agents)."""

    def __init__(self, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        self.metrics.events_in.labels(tp.topic).inc()

    def on_send_initiated(
        self, producer: Any, topic: str, message: Any, keysize: int, valsize: int
    ) -> Any:
        return topic  # handed back to on_send_completed / on_send_error as ``state``

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        self.metrics.events_out.labels(str(getattr(metadata, "topic", state))).inc()

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        self.metrics.send_errors.labels(str(state)).inc()


# ----------------------------------------------------------------------- consumer lag


def consumer_lag(
    highwaters: Mapping[TP, int | None], committed: Mapping[TP, int | None]
) -> dict[tuple[str, int], int]:
    """Lag per (topic, partition): log end offset minus committed offset.

    A partition with no commit yet counts from 0 (the group reads from the earliest
    offset); one whose end offset is unknown is left out. Never negative.
    """
    out: dict[tuple[str, int], int] = {}
    for tp, high in highwaters.items():
        if high is None:
            continue
        done = committed.get(tp) or 0
        out[(tp.topic, tp.partition)] = max(0, int(high) - int(done))
    return out


async def read_lag(app: faust.App, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """The lag of this worker's partitions of ``topics`` (the agents' source topics).

    End offsets are asked of the broker (bounded by :data:`PROBE_TIMEOUT_S`); when that
    fails, the consumer's last fetched high-water marks are used. Never raises: a worker
    not yet in its group has no lag to report.
    """
    wanted = set(topics)
    consumer = app.consumer
    try:
        tps = [tp for tp in consumer.assignment() if tp.topic in wanted]
    except Exception:  # consumer not started yet
        return {}
    if not tps:
        return {}
    highwaters: dict[TP, int | None]
    try:
        highwaters = dict(await asyncio.wait_for(consumer.highwaters(*tps), PROBE_TIMEOUT_S))
    except Exception:  # broker slow or away: the cached marks are better than nothing
        highwaters = {}
        for tp in tps:
            try:
                highwaters[tp] = consumer.highwater(tp)
            except Exception:
                highwaters[tp] = None
    # Faust keeps the offsets it committed (Kafka's "next offset to read") here; there is
    # no public accessor.
    committed: Mapping[TP, int | None] = getattr(consumer, "_committed_offset", {})
    return consumer_lag(highwaters, {tp: committed.get(tp) for tp in tps})


# ----------------------------------------------------------------------- readiness


def readiness_problems(
    *,
    assigned: bool,
    rebalancing: bool,
    recovering: bool,
    producer: str | None,
    database: str | None,
) -> dict[str, str]:
    """What keeps the worker from being ready (empty: ready).

    ``assigned``: the group has given this worker its partitions and their table state
    is recovered (a spare worker's assignment may be empty: it is still ready to take
    partitions); ``producer``/``database``: None when reachable, else why not.
    """
    problems: dict[str, str] = {}
    if not assigned:
        problems["partitions"] = "no partition assignment from the consumer group yet"
    elif rebalancing:
        problems["partitions"] = "the consumer group is rebalancing"
    if recovering:
        problems["tables"] = "table recovery in progress"
    if producer is not None:
        problems["producer"] = producer
    if database is not None:
        problems["database"] = database
    return problems


async def probe_producer(app: faust.App, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the producer is started and a broker answers, else why not. Never raises."""
    producer = app.producer
    if producer.crashed:
        return "producer crashed"
    if not producer.started:
        return "producer not started"
    # Faust's aiokafka producer keeps its client here (no public accessor). ``ready``
    # opens (or reuses) a connection to a known broker.
    client = getattr(getattr(producer, "_producer", None), "client", None)
    if client is None:
        return "producer not started"
    try:
        node = client.get_random_node()
        if node is None:
            return "no Kafka broker known"
        ok = await asyncio.wait_for(client.ready(node), timeout_s)
    except Exception as exc:
        return f"Kafka unreachable ({type(exc).__name__})"
    return None if ok else "Kafka unreachable"


class DatabaseProbe:
    """Checks that the database answers ``SELECT 1`` (migrating it first, as the first
    write would). At most one check is in flight: probes that come while the database
    hangs wait on the same check instead of piling threads up."""

    def __init__(self, engine: Callable[[], Any]) -> None:
        self._engine = engine
        self._pending: asyncio.Future[None] | None = None

    def _check(self) -> None:
        with self._engine().connect() as conn:
            conn.execute(text("SELECT 1"))

    async def __call__(self, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
        """None if the database answered within ``timeout_s``, else why not. Never raises."""
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(asyncio.to_thread(self._check))
        try:
            await asyncio.wait_for(asyncio.shield(self._pending), timeout_s)
        except TimeoutError:
            return f"database did not answer within {timeout_s:g}s"
        except Exception as exc:
            # The type only: the readiness body is served without authentication, and a
            # driver's message can name hosts and users.
            return f"database unavailable ({type(exc).__name__})"
        return None


async def check_ready(
    app: faust.App,
    database: Callable[[], Awaitable[str | None]],
    stopping: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Readiness of this worker: :func:`readiness_problems` from the live app, and why
    it is stopping once it is (``stopping``, set before the worker crashes)."""
    if stopping:
        return dict(stopping)
    # TableManager's recovery service (TableManagerT does not declare it); its
    # ``completed`` event is set once the first assignment is recovered.
    recovery = cast(Any, app.tables).recovery
    producer, db = await asyncio.gather(probe_producer(app), database())
    return readiness_problems(
        assigned=recovery.completed.is_set(),
        rebalancing=bool(app.rebalancing),
        recovering=bool(app.in_recovery),
        producer=producer,
        database=db,
    )


def install_web(
    app: faust.App,
    metrics: Metrics,
    *,
    lag_topics: Iterable[str],
    database: Callable[[], Awaitable[str | None]],
    stopping: Mapping[str, str] | None = None,
) -> None:
    """Add ``/metrics``, ``/healthz`` and ``/readyz`` to the worker's web server
    (``stopping``: why the worker is stopping, once it is; /readyz then says not ready).

    * ``/metrics``: Prometheus text format; consumer lag is refreshed on each scrape.
    * ``/healthz``: 200 ``{"status": "ok"}`` whenever the event loop answers (liveness).
    * ``/readyz``: 200 ``{"status": "ready", ...}``, or 503 with ``"not_ready"`` listing
      each problem (readiness: assignment and recovery done, Kafka and database reachable).
    """
    topics = tuple(lag_topics)

    @app.page("/metrics", name="wardwatch_metrics")
    class MetricsView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            metrics.set_lag(await read_lag(app, topics))
            return self.bytes(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz", name="wardwatch_healthz")
    class HealthView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            return self.json({"status": "ok"})

    @app.page("/readyz", name="wardwatch_readyz")
    class ReadyView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            problems = await check_ready(app, database, stopping)
            try:
                partitions = len(app.consumer.assignment())
            except Exception:  # consumer not started yet
                partitions = 0
            if problems:
                return self.json(
                    {"status": "not_ready", "not_ready": problems, "partitions": partitions},
                    status=503,
                )
            return self.json({"status": "ready", "partitions": partitions})

    _ = (MetricsView, HealthView, ReadyView)


# ----------------------------------------------------------------------- logs


def event_fields(event: EventT[Any], **more: Any) -> dict[str, Any]:
    """``extra=`` fields of a log line about ``event``: topic, partition, offset."""
    msg = event.message
    return {
        "topic": str(msg.topic),
        "partition": int(msg.partition),
        "offset": int(msg.offset),
        **more,
    }


class QuietWorker(faust.Worker):
    """Faust's worker without its terminal spinner.

    The spinner writes terminal escape codes to stdout even when stdout is a file or a
    pipe, which breaks one-JSON-object-per-line output, and to drive it Faust lowers the
    root logger to DEBUG, so every debug record is built only to be dropped.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)
