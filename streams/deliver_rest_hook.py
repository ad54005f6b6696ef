"""FHIR rest-hook delivery (Subscriptions R5 Backport IG for R4) from the outbox.

One task per subscriber sends, strictly one request at a time so the receiver sees them
in order: the handshake when the subscription is new, then its events as notification
Bundles (up to ``delivery_max_events`` each, lowest event number first), and a heartbeat
when nothing was sent for ``heartbeatPeriod``. A 2xx answer marks the Bundle's events
delivered; anything else (an error status, a refused connection, a timeout) is retried
with exponential backoff, the same Bundle again (at least once: a receiver may see an
event twice after a lost answer, never out of order). A subscriber failing for longer
than ``delivery_retry_hours`` is marked ``error`` and is still retried at the longest
backoff, so it recovers by itself; its events are kept (``$events``).

Logs name the subscriber id and the event numbers, never a patient.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta

import aiohttp
import orjson
from sqlalchemy import Engine

from fhir.subscriptions import NotificationType, StatusOf, notification_bundle
from storage import outbox
from storage.outbox import OutboxEvent, SubscriberState

from .delivery import backoff_s, db, serve_each_subscriber
from .settings import Settings

log = logging.getLogger("wardwatch.deliver.rest_hook")
KIND = "rest-hook"


class SendFailedError(Exception):
    """A receiver did not accept a notification (transient: retried with backoff)."""


def subscription_url(settings: Settings, sid: str) -> str:
    """The Subscription's URL under the API's FHIR base. Raises nothing."""
    return f"{settings.delivery_fhir_base.rstrip('/')}/Subscription/{sid}"


def build_notification(
    settings: Settings,
    sub: SubscriberState,
    kind: NotificationType,
    events: Sequence[OutboxEvent] = (),
) -> dict[str, object]:
    """The Bundle for ``sub``: a handshake or heartbeat (no events), or an
    event-notification of ``events``. Raises nothing."""
    since = events[-1].event_number if events else sub.events_since_start
    of = StatusOf(
        subscription_url=subscription_url(settings, sub.id),
        topic=sub.topic,
        status="active" if sub.status in ("requested", "active") else sub.status,
        kind=kind,
        events_since_start=since,
        events=[e.notification() for e in events],
        payload=sub.payload,
        base_url=settings.delivery_fhir_base,
    )
    return notification_bundle(of, bundle_id=str(uuid.uuid4()))


def _headers(sub: SubscriberState) -> dict[str, str]:
    out = {"Content-Type": "application/fhir+json"}
    for h in sub.headers:
        name, _, value = h.partition(":")
        out[name.strip()] = value.strip()
    return out


async def post(
    session: aiohttp.ClientSession, sub: SubscriberState, body: dict[str, object]
) -> None:
    """POST ``body`` to the subscriber's endpoint, with the Subscription's header values.
    Raises :class:`SendFailedError` (retried by the caller) on a non-2xx answer, a
    connection error or a timeout."""
    try:
        async with session.post(
            sub.endpoint, data=orjson.dumps(body), headers=_headers(sub)
        ) as resp:
            await resp.read()
            if not 200 <= resp.status < 300:
                raise SendFailedError(f"HTTP {resp.status}")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise SendFailedError(type(exc).__name__) from exc


class RestHookDelivery:
    """Delivers every rest-hook subscriber's outbox until ``stop`` is set."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._s = settings
        self.sent = 0  # notifications accepted by receivers (for the log and tests)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve every live subscriber until ``stop``. Raises what a subscriber task
        raises (storage down past the retry budget, a permanent storage error): the
        process stops loudly and a restart resumes from the outbox."""
        timeout = aiohttp.ClientTimeout(total=self._s.delivery_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await serve_each_subscriber(
                self._engine, self._s, KIND, lambda sid: self._serve(session, sid, stop), stop
            )

    async def _serve(self, session: aiohttp.ClientSession, sid: str, stop: asyncio.Event) -> None:
        budget = self._s.retry_budget_s
        give_up = timedelta(hours=self._s.delivery_retry_hours)
        failures = 0
        last_sent = time.monotonic()
        while not stop.is_set():
            sub = await db(lambda: outbox.get_subscriber(self._engine, sid), budget)
            if sub is None or sub.status == "off":
                return
            wait = self._s.delivery_poll_s
            try:
                if not sub.handshake_done:
                    await post(session, sub, build_notification(self._s, sub, "handshake"))
                    await db(lambda: outbox.mark_handshake(self._engine, sid), budget)
                    self.sent += 1
                    log.info("subscription %s: handshake accepted, active", sid)
                    last_sent, wait = time.monotonic(), 0.0
                else:
                    events = await db(
                        lambda: outbox.pending(self._engine, sid, self._s.delivery_max_events),
                        budget,
                    )
                    if events:
                        body = build_notification(self._s, sub, "event-notification", events)
                        await post(session, sub, body)
                        self.sent += 1
                        done = functools.partial(
                            outbox.mark_delivered, self._engine, sid, events[-1].event_number
                        )
                        await db(done, budget)
                        last_sent, wait = time.monotonic(), 0.0
                    elif sub.heartbeat_s and time.monotonic() - last_sent >= sub.heartbeat_s:
                        await post(session, sub, build_notification(self._s, sub, "heartbeat"))
                        self.sent += 1
                        last_sent = time.monotonic()
                    if failures:
                        log.info("subscription %s: receiver back after %d failures", sid, failures)
                failures = 0
            except SendFailedError as exc:
                failures += 1
                failed = functools.partial(
                    outbox.record_failure, self._engine, sid, str(exc), give_up
                )
                status = await db(failed, budget)
                wait = backoff_s(failures, self._s.delivery_backoff_initial_s,
                                 self._s.delivery_backoff_max_s)  # fmt: skip
                log.warning(
                    "subscription %s: send failed (%s), attempt %d, status %s; retry in %.1f s",
                    sid, exc, failures, status, wait,
                )  # fmt: skip
            if wait:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
