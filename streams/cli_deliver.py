"""``wardwatch deliver``: send stored alerts out from the outbox (FHIR rest-hook
Subscriptions), until interrupted."""

from __future__ import annotations

import asyncio
import signal

import click

from storage.db import make_engine, migrate
from storage.errors import StorageError


@click.command(name="deliver")
def deliver_cmd() -> None:
    """Deliver alerts to subscribers: FHIR rest-hook Subscriptions (Backport IG).

    \b
    Reads the outbox the database writer fills (WARDWATCH_DATABASE_URL, migrated here),
    sends each subscriber its handshake, events (in order, at least once) and heartbeats,
    and retries a receiver that is away with exponential backoff for
    WARDWATCH_DELIVERY_RETRY_HOURS before marking it error (events kept). Stops cleanly
    on SIGINT/SIGTERM; a restart resumes where the receivers' acknowledgements stopped.
    """
    from .cli_context import require_safe, settings
    from .deliver_rest_hook import RestHookDelivery

    s = settings()
    require_safe(s, "deliver")
    engine = make_engine(s.database_url)
    try:
        migrate(engine)

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await RestHookDelivery(engine, s).run(stop)

        asyncio.run(main())
    except StorageError as exc:
        # Storage away past the retry budget or refusing our writes: stop loudly.
        raise click.ClickException(f"database: {exc.reason}") from exc
    finally:
        engine.dispose()


COMMANDS: tuple[click.Command, ...] = (deliver_cmd,)
