"""The Faust app: thin agents over the pure functions of :mod:`streams.pipeline`.

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

import asyncio
import functools
import gc
import logging
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar, cast

import faust
import numpy as np
import numpy.typing as npt
import orjson
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from faust.streams import Stream, _current_event
from faust.types import EventT, StreamT
from mode import CrashingSupervisor

from fhir import parse as fhir_parse
from inference.attribution import (
    Attribution,
    from_occlusion,
    occluded_codes,
    occlusion_windows,
)
from inference.client import TritonRiskClient
from inference.errors import ModelError, ModelUnavailable
from storage.errors import StoragePermanentError

from . import faust_fixes, persist
from .client_security import (
    database_connect_args,
    faust_credentials,
    kafka_config,
    triton_tls,
)
from .dead_letter_limit import DeadLetterLimit
from .errors import WorkerStopError, is_permanent, reason_of
from .logs import logging_config as log_config
from .model_info import load_model_info
from .observe import (
    DatabaseProbe,
    FlowSensor,
    Metrics,
    QuietWorker,
    event_fields,
    install_web,
    safe_reason,
    wardwatch_version,
)
from .pipeline import (
    Envelope,
    PatientRecord,
    Pending,
    advance,
    alert_resource,
    normalise,
    route,
    score_envelopes,
    stack_windows,
)
from .sealing import key_ring
from .settings import Settings

log = logging.getLogger("wardwatch.stream")
T = TypeVar("T")


def dlq_headers(event: EventT[Any], reason: str, stage: str) -> list[tuple[str, bytes]]:
    """Headers of a dead letter: where it came from and why it was refused."""
    msg = event.message
    return [
        # the reason can quote the refused input: at rest it says what was wrong, not the
        # value (the input itself is kept encrypted)
        ("wardwatch.reason", safe_reason(reason, 1000).encode()),
        ("wardwatch.stage", stage.encode()),
        ("wardwatch.source.topic", str(msg.topic).encode()),
        ("wardwatch.source.partition", str(msg.partition).encode()),
        ("wardwatch.source.offset", str(msg.offset).encode()),
        ("wardwatch.dead_lettered_at", str(int(time.time() * 1000)).encode()),
    ]


def source_of(event: EventT[Any]) -> str:
    msg = event.message
    return f"{msg.topic}/{msg.partition}/{msg.offset}"


async def retry_transient(fn: Callable[[], Awaitable[T]], what: str, budget_s: float) -> T:
    """Run ``fn`` until it succeeds, backing off on transient errors.

    Raises the last transient error once ``budget_s`` is spent (the caller lets it stop
    the worker, unacknowledged); permanent errors propagate at once.
    """
    delay, deadline = 0.2, time.monotonic() + budget_s
    while True:
        try:
            return await fn()
        except Exception as exc:
            if is_permanent(exc) or time.monotonic() > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1fs", what, reason_of(exc), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def batches(stream: StreamT[Any]) -> Any:
    """``noack_take`` (missing from Faust's StreamT type): batches acknowledged by hand,
    holding each source partition's records contiguously in offset order (a record taken
    after a skipped one is released unprocessed and read again after it; see
    :func:`streams.faust_fixes.admit_in_order`), so no agent sees a later message of a
    partition before an earlier one."""
    faust_fixes.admit_in_order(stream)
    return cast(Stream[Any], stream).noack_take


def adaptive_batches(
    stream: StreamT[Any], max_: int, within: float, busy_within: float
) -> AsyncGenerator[Sequence[EventT[Any]], None]:
    """:func:`batches` with a wait that extends itself while a backlog pours in
    (:func:`streams.faust_fixes.adaptive_take`, :data:`BUSY_AT` events per wait)."""
    faust_fixes.admit_in_order(stream)
    return faust_fixes.adaptive_take(stream, max_, within, busy_within, BUSY_AT)


# Events per short wait that mean a backlog rather than live traffic: at 2,000 events/s
# offered (278 messages/s) a 5 ms wait gathers one or two messages; draining a backlog
# Faust buffers about 150.
BUSY_AT: Final = 16


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
    # "persist" split the alert path from the database writers. Writers are a consumer
    # group of their own (app id + "-writer"): they hold no table and read other topics.
    scoring = settings.worker_role != "persist"
    writing = settings.worker_role != "score"
    app = faust.App(
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
    # Never commit past a message skipped in a rebalance; fetch with a broker-side wait.
    metrics = Metrics()  # served at /metrics; events in/out per topic come from the sensor
    faust_fixes.install(
        app,
        fetch_min_bytes=settings.fetch_min_bytes,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        on_reread=metrics.reread,
    )
    app.sensors.add(FlowSensor(metrics))

    def raw_topic(name: str) -> faust.TopicT:
        # Agents take raw bytes and parse them themselves: Faust acknowledges a message
        # whose value fails to decode before it raises, which would lose it.
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

    dlq = raw_topic(settings.topic_dlq)
    # Dead letters keep their input encrypted; no usable key (outside development mode)
    # refuses to build the app rather than fail at the first dead letter.
    ring = key_ring(settings)
    events_topic = raw_topic(settings.topic_events)
    scores_topic = raw_topic(settings.topic_scores)
    alerts_topic = raw_topic(settings.topic_alerts)
    # Per-patient records, keyed by pseudonym. Keys and values are str with Faust's json
    # codec: a table takes its codecs from key_type/value_type and ignores a schema's
    # serializers, so raw bytes would be written one way and recovered another.
    patients: Any = (
        app.Table(
            "patients",
            key_type=str,
            value_type=str,
            default=None,
            partitions=settings.topic_partitions,
        )
        if scoring
        else None
    )
    model = load_model_info(settings)
    triton = TritonRiskClient(
        settings.triton_grpc_url,
        settings.triton_model,
        n_features=model.spec.n_features,
        timeout_s=settings.triton_timeout_s,
        max_batch=settings.triton_max_batch,
        max_inflight=settings.triton_max_inflight,
        observer=metrics.triton_request,
        **triton_tls(settings),
    )
    sink = persist.Sink(settings.database_url, database_connect_args(settings))
    lag_topics = (
        *((settings.topic_inbound, settings.topic_events) if scoring else ()),
        *((settings.topic_scores, settings.topic_alerts, settings.topic_dlq) if writing else ()),
    )

    async def no_database(timeout_s: float = 0.0) -> str | None:
        return None  # a scoring-only worker never touches the database

    # Transient failures are retried for the settings' budget, then stop the worker.
    retry = functools.partial(retry_transient, budget_s=settings.retry_budget_s)
    # Why the worker is stopping, once it is: /readyz reports it before the crash.
    stopping: dict[str, str] = {}
    install_web(
        app,
        metrics,
        lag_topics=lag_topics,
        database=DatabaseProbe(sink.engine) if writing else no_database,
        stopping=stopping,
    )
    metrics.set_build_info(wardwatch_version(), model.info.name, model.info.version)

    async def stop_loudly(exc: BaseException, agent: str) -> None:
        """Stop the worker on a failure it cannot handle (retries exhausted, a send that
        failed, the dead-letter limit): /readyz says not ready first, then the app
        crashes, the process exits non-zero and nothing unacknowledged is committed."""
        kind = (
            "dead-letter limit"
            if isinstance(exc, WorkerStopError)
            else "failed"
            if is_permanent(exc)
            else "retries exhausted"
        )
        stopping.setdefault("stopping", f"agent {agent}: {kind}: {reason_of(exc)}")
        metrics.stopping.labels(kind).inc()
        log.critical(
            "agent %s cannot go on (%s: %s): stopping the worker without committing",
            agent,
            kind,
            safe_reason(reason_of(exc)),
        )
        await app.crash(exc)

    def stops_loudly(
        agent: str, body: Callable[[StreamT[Any]], Awaitable[None]]
    ) -> Callable[[StreamT[Any]], Awaitable[None]]:
        """``body`` as an agent that stops the worker when it raises, rather than being
        restarted in the same process by Faust's supervisor with its batch unacknowledged
        (commits would freeze and later events be scored on incomplete state)."""

        @functools.wraps(body)
        async def run(stream: StreamT[Any]) -> None:
            try:
                await body(stream)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await stop_loudly(exc, agent)
                raise

        return run

    def dead_letter_limit() -> DeadLetterLimit:
        return DeadLetterLimit(
            settings.dead_letter_max_ratio,
            settings.dead_letter_window_s,
            settings.dead_letter_min_messages,
        )

    def check_limit(limit: DeadLetterLimit, agent: str, taken: int, dead: int) -> None:
        """Count a batch; raises :class:`WorkerStopError` (before the batch is
        acknowledged) when the agent's dead letters are over the limit."""
        now = time.monotonic()
        limit.record(taken, dead, now)
        why = limit.exceeded(now)
        if why is not None:
            metrics.dead_letter_limit.labels(agent).inc()
            raise WorkerStopError(f"dead-letter limit exceeded: {why}")

    async def dead_letter(
        event: EventT[Any], reason: str, stage: str, sent: list[Awaitable[Any]]
    ) -> None:
        """Hand ``event`` to the dead-letter topic; its broker ack joins ``sent``, which
        the batch awaits together (with its scores) before acknowledging anything.

        If the send fails the event can be neither processed nor parked: the agent
        raises, the worker stops (exits non-zero) with the event unacknowledged, so its
        offset is never committed and it is read again after the cause is fixed. Not
        retried here.
        """
        sealed, seal_headers = ring.seal(
            event.value or b"", topic=settings.topic_dlq, stage=stage, key=event.key
        )
        fut = await dlq.send(
            key=event.key, value=sealed, headers=[*dlq_headers(event, reason, stage), *seal_headers]
        )
        sent.append(_parked(fut, event, reason, stage))

    async def _parked(fut: Awaitable[Any], event: EventT[Any], reason: str, stage: str) -> None:
        """Await a dead letter's ack, then count and log it (only what landed)."""
        where = event_fields(event, stage=stage)
        try:
            await fut
        except Exception as exc:
            log.critical(
                "cannot dead-letter %s (%s): stopping without committing it",
                source_of(event),
                reason_of(exc),
                extra=where,
            )
            raise
        metrics.dead_letter(stage)
        # The reason can quote the refused input: the log gets it redacted, the dead
        # letter's headers (access-restricted, like the input itself) get it whole.
        log.warning(
            "dead-lettered %s at %s: %s", source_of(event), stage, safe_reason(reason), extra=where
        )

    async def predict(windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32] | None:
        """The model's risks, or None while Triton is away (scores are then degraded)."""
        try:
            return await triton.predict(windows)
        except ModelUnavailable as exc:
            log.warning("model unavailable, scoring rules only: %s", reason_of(exc))
            return None
        except ModelError as exc:
            # A permanent model fault (wrong shape, unknown model) must not stop the rule
            # scores either: every score says it is degraded, and this says why.
            log.error("model error, scoring rules only: %s", reason_of(exc))
            return None

    async def explain_alerts(
        raised: Sequence[tuple[Pending, float | None]],
    ) -> dict[int, Attribution | str]:
        """Occlusion attributions for a batch's new alerts, by ``id(pending)``, computed
        by the inference server in one request (the worker never runs the model). A
        failure gives every card the reason instead: an explanation never stops an alert.
        """
        todo = [p for p, risk in raised if risk is not None]
        if not todo:
            return {}
        try:
            # Codes never measured in a window are not run: their contribution is 0.
            plans = [(p, occluded_codes(p.window, model.spec)) for p in todo]
            windows = np.concatenate(
                [occlusion_windows(p.window, model.spec, codes) for p, codes in plans]
            )
            probs = await triton.predict(windows)
            out: dict[int, Attribution | str] = {}
            start = 0
            for p, codes in plans:
                end = start + 1 + len(codes)
                out[id(p)] = from_occlusion(probs[start:end], model.spec, codes)
                start = end
            return out
        except Exception as exc:
            log.warning("alert explanations unavailable: %s", reason_of(exc))
            reason = f"{type(exc).__name__}: {reason_of(exc)}"
            return dict.fromkeys((id(p) for p in todo), reason)

    async def prepare_and_predict(
        records: dict[str, PatientRecord], envelopes: Sequence[Envelope]
    ) -> tuple[list[tuple[PatientRecord, Pending]], list[float | None]]:
        """:func:`score_envelopes` over a batch, and the model's risk of each window (None
        where the model is away). The batch is prepared in chunks whose windows go to the
        model server as soon as they are ready, so the model runs (in its own process)
        while the next chunk is prepared instead of after the whole batch. Raises what
        :func:`score_envelopes` raises; a pending request is then cancelled."""
        prepared: list[tuple[PatientRecord, Pending]] = []
        replayed: list[Envelope] = []
        predictions: list[tuple[int, asyncio.Task[npt.NDArray[np.float32] | None]]] = []
        try:
            for at in range(0, len(envelopes), settings.predict_chunk):
                part = score_envelopes(
                    records,
                    envelopes[at : at + settings.predict_chunk],
                    spec=model.spec,
                    staleness_hours=settings.staleness_hours,
                    replayed=replayed,
                )
                if part:
                    prepared.extend(part)
                    windows = stack_windows([p for _, p in part])
                    predictions.append((len(part), asyncio.create_task(predict(windows))))
                    await asyncio.sleep(0)  # let the request leave now
            if replayed:
                metrics.replayed.inc(len(replayed))
                log.info(
                    "skipped %d envelopes read again whose effects their records hold "
                    "(first at %s)",
                    len(replayed),
                    replayed[0].source,
                )
            risks: list[float | None] = []
            for n, task in predictions:
                out = await task
                risks.extend([None] * n if out is None else [float(r) for r in out])
            return prepared, risks
        finally:
            for _, task in predictions:
                task.cancel()  # only if still pending: an error above left it behind

    async def copartitioned() -> int | None:
        """The partition count the inbound topic, the events topic and the state table
        share, or None when they differ (then everything is forwarded: a worker owning
        inbound partition k need not own table partition k).

        Read once, when the agent starts, so that every message of a partition takes
        the same path for the worker's lifetime: routing on metadata that comes and
        goes would let a patient's forwarded envelope be scored after a later one
        scored in place. Retries while the broker is away (transient); raises the
        last error once the retry budget (``WARDWATCH_RETRY_BUDGET_S``) is spent.
        """
        names = (settings.topic_inbound, settings.topic_events)

        def read() -> dict[str, int]:
            md = AdminClient(kafka_config(settings)).list_topics(timeout=10)
            missing = [t for t in names if t not in md.topics or md.topics[t].error]
            if missing:  # Faust creates them as the worker starts
                raise KafkaException(f"topics not there yet: {missing}")
            return {t: len(md.topics[t].partitions) for t in names}

        counts = await retry(lambda: asyncio.to_thread(read), "topic metadata")
        if set(counts.values()) == {settings.topic_partitions}:
            return settings.topic_partitions
        log.warning(
            "partition counts %s differ from the table's %d: every envelope goes through "
            "%s (slower); give the topics the same count to score in place",
            counts,
            settings.topic_partitions,
            settings.topic_events,
        )
        return None

    async def take_inbound(
        event: EventT[Any], partitions: int | None, sent: list[Awaitable[Any]]
    ) -> tuple[list[Envelope], bool]:
        """Normalise one inbound message: the envelopes to score here, and whether the
        message was dead-lettered whole. Envelopes whose home partition is another are
        sent to the events topic; a bad message, or its refused entries, dead-lettered
        (each send's ack joined to ``sent``)."""
        value = event.value
        try:
            if not isinstance(value, bytes):
                raise TypeError(f"expected raw bytes, got {type(value).__name__}")
            result = normalise(
                value, source=source_of(event), inbound_ts_ms=int(event.message.timestamp * 1000)
            )
        except Exception as exc:  # any failure to parse is this input's fault
            await dead_letter(event, reason_of(exc), "normalise", sent)
            return [], True
        local, forward = route(result.envelopes, event.message.partition, partitions)
        for env in forward:
            sent.append(await events_topic.send(key=env.patient.encode(), value=env.to_bytes()))
        metrics.routed(len(local), len(forward))
        if result.rejected:
            reason = f"{len(result.rejected)} Bundle entries refused: " + "; ".join(
                result.rejected[:10]
            )
            await dead_letter(event, reason, "normalise", sent)
        return local, False

    # One agent reads the inbound topic and the events topic. Edge-published messages
    # are keyed by the pseudonym, so they already sit on the patient's home partition:
    # they are normalised and scored in place, which saves a produce, a consume and a
    # second batch wait per message. Anything else (a foreign key, another partition
    # count) takes the events topic to its home partition, read by this same agent, so
    # one patient's record is never updated by two tasks at once.
    sources_topic = app.topic(
        settings.topic_inbound,
        settings.topic_events,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )

    async def score_agent(stream: StreamT[Any]) -> None:
        # What is imported and built by now lives as long as the worker (about 335,000
        # objects): freeze it out of the collector, whose full passes otherwise walk it
        # all, stopping the loop each time (200-230 ms at 2,000 events/s offered, three
        # times a run; 10 ms frozen), which was the longest stall on the alert path.
        gc.freeze()
        partitions = await copartitioned()
        limit = dead_letter_limit()
        async for batch in adaptive_batches(
            stream, settings.batch_size, settings.batch_within_s, settings.batch_busy_within_s
        ):
            metrics.batch("score", len(batch))
            envelopes: list[Envelope] = []
            last_event: dict[str, EventT[Any]] = {}
            sent: list[Awaitable[Any]] = []
            dead = 0  # messages of the batch dead-lettered whole
            for event in batch:
                if event.message.topic == settings.topic_inbound:
                    taken, refused = await take_inbound(event, partitions, sent)
                    dead += refused
                else:
                    try:
                        taken = [Envelope.from_bytes(event.value)]
                    except Exception as exc:
                        await dead_letter(event, reason_of(exc), "score", sent)
                        dead += 1
                        continue
                envelopes.extend(taken)
                for env in taken:
                    last_event[env.patient] = event
            records = {p: PatientRecord.from_json(patients.get(p)) for p in last_event}
            prepared, risks = await prepare_and_predict(records, envelopes)
            steps = [
                (
                    rec,
                    pending,
                    risk,
                    *advance(rec, pending, risk, model=model.info, policy=model.policy),
                )
                for (rec, pending), risk in zip(prepared, risks, strict=True)
            ]
            raised = [(p, r) for _, p, r, _, d in steps if d is not None]
            # New alerts' explanations run on the model server while the scores are sent.
            explaining = asyncio.create_task(explain_alerts(raised))
            try:
                for _, pending, _, score, _ in steps:
                    key = pending.patient.encode()
                    sent.append(await scores_topic.send(key=key, value=orjson.dumps(score)))
                attributions = await explaining
            finally:
                explaining.cancel()  # only if still pending: a send above failed
            for _, pending, _, _, decision in steps:
                if decision is not None:
                    alert = alert_resource(
                        decision,
                        pending,
                        attributions.get(id(pending)),
                        model=model.info,
                        policy=model.policy,
                    )
                    sent.append(
                        await alerts_topic.send(
                            key=pending.patient.encode(), value=orjson.dumps(alert)
                        )
                    )
            # Scores and alerts must be durable before the state that follows from them:
            # if the changelog (new alert state) landed and the alert did not, a replay
            # after a crash would find the alert already raised and never send it.
            # Awaiting the broker's acks first means a crash at any point replays the
            # batch from the old state, which re-emits the same records (idempotent).
            await asyncio.gather(*sent)
            check_limit(limit, "score", len(batch), dead)
            for *_, score, decision in steps:  # durable now: count them
                metrics.scored(score, None if decision is None else decision.severity)
            for patient, rec in records.items():
                # A table write goes to the changelog partition of the "current event";
                # in a batch that must be an event of this patient's own partition.
                _current_event.set(weakref.ref(last_event[patient]))
                patients[patient] = rec.to_json()
            for event in batch:
                await stream.ack(event)

    async def persist_batch(
        stream: StreamT[Any],
        batch: Sequence[EventT[Any]],
        to_row: Callable[[dict[str, Any]], Any],
        write: Callable[[Sequence[Any]], Awaitable[int]],
        limit: DeadLetterLimit,
        agent: str,
    ) -> None:
        """Write a batch idempotently, then acknowledge it.

        Transient failures are retried (backpressure: the stream waits), then raise. A
        permanent failure of the batch is narrowed down row by row, so one bad row is
        dead-lettered and the others are still written; too many dead letters raise
        :class:`WorkerStopError`. Either stops the worker with the batch unacknowledged.
        """
        sent: list[Awaitable[Any]] = []
        pairs, bad = persist.decode_batch(batch, to_row)
        dead = len(bad)
        for event, reason in bad:
            await dead_letter(event, reason, "persist", sent)
        if pairs:
            rows = [row for _, row in pairs]
            try:
                await retry(functools.partial(write, rows), "database write")
            except StoragePermanentError:
                for event, row in pairs:
                    try:
                        await retry(functools.partial(write, [row]), "database write")
                    except StoragePermanentError as exc:
                        await dead_letter(event, reason_of(exc), "persist", sent)
                        dead += 1
        await asyncio.gather(*sent)
        check_limit(limit, agent, len(batch), dead)
        for event in batch:
            await stream.ack(event)

    async def persist_scores(stream: StreamT[Any]) -> None:
        limit = dead_letter_limit()
        async for batch in batches(stream)(settings.batch_size, within=settings.persist_within_s):
            metrics.batch("persist_scores", len(batch))
            await persist_batch(
                stream, batch, persist.score_row, sink.write_scores, limit, "persist_scores"
            )

    async def persist_alerts(stream: StreamT[Any]) -> None:
        limit = dead_letter_limit()
        async for batch in batches(stream)(settings.batch_size, within=settings.persist_within_s):
            metrics.batch("persist_alerts", len(batch))
            await persist_batch(
                stream, batch, persist.alert_row, sink.write_alerts, limit, "persist_alerts"
            )

    async def persist_dead_letters(stream: StreamT[Any]) -> None:
        # The dead-letter index: where each dead letter came from, which stage refused it
        # and why (the bytes stay in Kafka). Transient errors are retried; a permanent one
        # cannot be dead-lettered again, so it is logged and the batch acknowledged.
        async for batch in batches(stream)(settings.batch_size, within=settings.persist_within_s):
            metrics.batch("persist_dead_letters", len(batch))
            rows = [
                persist.dead_letter_row(
                    e.message.headers,
                    (str(e.message.topic), int(e.message.partition), int(e.message.offset)),
                )
                for e in batch
            ]
            try:
                write = functools.partial(sink.write_dead_letters, rows)
                await retry(write, "dead-letter index write")
            except StoragePermanentError as exc:
                log.error("dead-letter index: %d entries not stored: %s", len(rows), exc)
            for event in batch:
                await stream.ack(event)

    # A crashing supervisor: an agent that raises takes the worker down with it.
    crash = CrashingSupervisor
    if scoring:
        app.agent(sources_topic, name="score", supervisor_strategy=crash)(
            stops_loudly("score", score_agent)
        )
    if writing:
        for topic, name, body in (
            (scores_topic, "persist_scores", persist_scores),
            (alerts_topic, "persist_alerts", persist_alerts),
            (dlq, "persist_dead_letters", persist_dead_letters),
        ):
            app.agent(topic, name=name, supervisor_strategy=crash)(stops_loudly(name, body))
    return app
