"""Retrying what is transient and stopping the worker loudly on what is not."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import faust
from faust.types import StreamT

from ..errors import WorkerStopError, is_permanent, reason_of
from ..observe import Metrics, safe_reason

log = logging.getLogger("wardwatch.stream")
T = TypeVar("T")


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


class Stopper:
    """Stops the worker on a failure it cannot handle (retries exhausted, a send that
    failed, the dead-letter limit): /readyz says not ready first (``stopping``), then
    the app crashes, the process exits non-zero and nothing unacknowledged is
    committed."""

    def __init__(self, app: faust.App, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # Why the worker is stopping, once it is: /readyz reports it before the crash.
        self.stopping: dict[str, str] = {}

    async def stop_loudly(self, exc: BaseException, agent: str) -> None:
        """Record why, log it and crash the app. Raises nothing itself."""
        kind = (
            "dead-letter limit"
            if isinstance(exc, WorkerStopError)
            else "failed"
            if is_permanent(exc)
            else "retries exhausted"
        )
        self.stopping.setdefault("stopping", f"agent {agent}: {kind}: {reason_of(exc)}")
        self.metrics.stopping.labels(kind).inc()
        log.critical(
            "agent %s cannot go on (%s: %s): stopping the worker without committing",
            agent,
            kind,
            safe_reason(reason_of(exc)),
        )
        await self.app.crash(exc)

    def wrap(
        self, agent: str, body: Callable[[StreamT[Any]], Awaitable[None]]
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
                await self.stop_loudly(exc, agent)
                raise

        return run
