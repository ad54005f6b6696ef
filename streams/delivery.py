"""What every alert delivery loop shares: one task per live subscriber, the retry
schedule and the database calls made off the event loop, with storage outages retried
for the retry budget (then they stop the process loudly), and the lock that makes one
process per database the one delivering (:func:`hold_lock`, :func:`watch_lock`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from sqlalchemy import Engine

from storage import outbox
from storage.errors import StorageUnavailable
from storage.process_lock import ProcessLock

from .settings import Settings

log = logging.getLogger("wardwatch.deliver")
T = TypeVar("T")
LOCK_POLL_S = 5.0  # how often a standby tries the lock, and the holder checks it


def backoff_s(failures: int, initial_s: float, max_s: float) -> float:
    """The wait before the next attempt after ``failures`` consecutive failures (1, 2...):
    ``initial_s`` doubling each time, at most ``max_s``; 0 after no failure. Raises nothing.
    No jitter: each subscriber has one sender, so there is no herd to spread."""
    if failures <= 0:
        return 0.0
    return min(max_s, initial_s * 2.0 ** min(failures - 1, 60))


async def db(call: Callable[[], T], budget_s: float) -> T:
    """Run a blocking storage call in a thread. StorageUnavailable is retried with
    backoff for ``budget_s`` seconds, then raised (the delivery stops: nothing was
    acknowledged that is not recorded, so a restart resumes). Other errors are raised at
    once (not retried)."""
    deadline = time.monotonic() + budget_s
    failures = 0
    while True:
        try:
            return await asyncio.to_thread(call)
        except StorageUnavailable as exc:
            failures += 1
            if time.monotonic() >= deadline:
                raise
            wait = backoff_s(failures, 0.5, 10.0)
            log.warning("database unavailable (%s); retrying in %.1f s", exc.reason, wait)
            await asyncio.sleep(wait)


async def serve_each_subscriber(
    engine: Engine,
    settings: Settings,
    kind: str,
    serve: Callable[[str], Coroutine[Any, Any, None]],
    stop: asyncio.Event,
) -> None:
    """Run ``serve(subscriber id)`` as one task per live subscriber of ``kind`` until
    ``stop``, starting tasks for new subscribers as they appear.

    Raises what a subscriber task raises (storage down past the retry budget, a
    permanent error): the process stops loudly and a restart resumes from the outbox.
    On the way out each task may finish the exchange in hand and record its answer
    (else the receiver gets that message again after a restart), then is cancelled.
    """
    tasks: dict[str, asyncio.Task[None]] = {}
    try:
        while not stop.is_set():
            subs = await db(lambda: outbox.list_subscribers(engine, kind), settings.retry_budget_s)
            for sub in subs:
                task = tasks.get(sub.id)
                if sub.status != "off" and (task is None or task.done()):
                    if task is not None:
                        task.result()  # a failed subscriber task stops us loudly
                    tasks[sub.id] = asyncio.create_task(serve(sub.id), name=f"{kind}-{sub.id}")
            for task in [t for t in tasks.values() if t.done()]:
                task.result()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.delivery_poll_s * 4)
    finally:
        pending = list(tasks.values())
        if pending:
            await asyncio.wait(pending, timeout=2 * settings.delivery_timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def hold_lock(lock: ProcessLock, settings: Settings, stop: asyncio.Event) -> bool:
    """Wait until ``lock`` is ours (another delivering process stopped) or ``stop``;
    True once held. Logs once that this process is a standby. Raises StorageUnavailable
    when the database stays away past the retry budget."""
    waiting = False
    while not stop.is_set():
        if await db(lock.try_acquire, settings.retry_budget_s):
            if waiting:
                log.warning("deliver: the lock is ours now; taking over delivery")
            return True
        if not waiting:
            log.warning(
                "deliver: another process is delivering from this database; standing by "
                "until it stops"
            )
            waiting = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LOCK_POLL_S)
    return False


async def watch_lock(lock: ProcessLock, settings: Settings, stop: asyncio.Event) -> None:
    """Check ``lock`` every few seconds until ``stop``. Raises LockLostError (the process
    stops loudly, before a standby that took over could send alongside it)."""
    while not stop.is_set():
        await asyncio.to_thread(lock.check)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LOCK_POLL_S)
