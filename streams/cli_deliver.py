"""``wardwatch deliver``: send stored alerts out from the outbox (FHIR rest-hook
Subscriptions and HL7 v2 MLLP destinations), until interrupted; ``wardwatch deliver
add-hl7`` / ``list`` / ``off`` manage the HL7 v2 destinations."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import signal
from collections.abc import Iterator

import click
from sqlalchemy import Engine

from fhir.subscriptions import SEPSIS_TOPIC
from storage import outbox
from storage.db import make_engine, migrate
from storage.errors import StorageError
from storage.process_lock import ProcessLock


@click.group(name="deliver", invoke_without_command=True)
@click.pass_context
def deliver_cmd(ctx: click.Context) -> None:
    """Deliver alerts to subscribers: FHIR rest-hook Subscriptions (Backport IG) and
    HL7 v2 ORU^R01 over MLLP.

    \b
    Reads the outbox the database writer fills (WARDWATCH_DATABASE_URL, migrated here),
    sends each subscriber its handshake, events (in order, at least once) and heartbeats,
    and retries a receiver that is away with exponential backoff for
    WARDWATCH_DELIVERY_RETRY_HOURS before marking it error (events kept). Stops cleanly
    on SIGINT/SIGTERM; a restart resumes where the receivers' acknowledgements stopped.
    One process per database delivers; another started beside it waits as a standby and
    takes over when the first stops. HL7 v2 destinations are added with `wardwatch
    deliver add-hl7`.
    """
    if ctx.invoked_subcommand is not None:
        return
    from .cli_context import require_safe, settings
    from .deliver_hl7 import Hl7Delivery
    from .deliver_rest_hook import RestHookDelivery
    from .delivery import hold_lock, watch_lock

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
            lock = ProcessLock(engine, "wardwatch-deliver")
            if not await hold_lock(lock, s, stop):
                return  # stopped while a standby
            loops = [
                asyncio.create_task(RestHookDelivery(engine, s).run(stop)),
                asyncio.create_task(Hl7Delivery(engine, s).run(stop)),
                asyncio.create_task(watch_lock(lock, s, stop)),
            ]
            try:
                await asyncio.gather(*loops)
            finally:
                # One loop failing stops the other (it records the send in hand) and
                # the process, with the first error.
                stop.set()
                await asyncio.gather(*loops, return_exceptions=True)
                lock.release()

        asyncio.run(main())
    except StorageError as exc:
        # Storage away past the retry budget or refusing our writes: stop loudly.
        raise click.ClickException(f"database: {exc.reason}") from exc
    finally:
        engine.dispose()


@contextlib.contextmanager
def _database() -> Iterator[Engine]:
    """The migrated database of the settings, disposed after; a storage error becomes
    the command's error (not retried)."""
    from .cli_context import settings

    engine = make_engine(settings().database_url)
    try:
        migrate(engine)
        yield engine
    except StorageError as exc:
        raise click.ClickException(f"database: {exc.reason}") from exc
    finally:
        engine.dispose()


@deliver_cmd.command(name="add-hl7")
@click.option("--host", required=True, help="The destination's MLLP host.")
@click.option("--port", required=True, type=int, help="The destination's MLLP port.")
@click.option("--name", required=True, help="What to call it (logs and `list`).")
@click.option("--receiving-application", default="", help="MSH-5 of the messages sent.")
@click.option("--receiving-facility", default="", help="MSH-6 of the messages sent.")
@click.option(
    "--tls/--no-tls",
    default=False,
    show_default=True,
    help="MLLP over TLS (mllps://): the destination's certificate is checked against "
    "WARDWATCH_DELIVERY_HL7_TLS_CA and its host name; WARDWATCH_DELIVERY_HL7_TLS_CERT/KEY "
    "are presented where it asks for a client certificate.",
)
def add_hl7_cmd(
    host: str,
    port: int,
    name: str,
    receiving_application: str,
    receiving_facility: str,
    tls: bool,
) -> None:
    """Add an HL7 v2 MLLP destination: every alert stored from now on (and each later
    acknowledge or resolve) is sent to it as an ORU^R01 by `wardwatch deliver`. Prints
    its subscriber id."""
    from .deliver_hl7 import KIND, endpoint

    try:
        url = endpoint(host, port, tls=tls)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    with _database() as engine:
        sub = outbox.create_subscriber(
            engine, kind=KIND, topic=SEPSIS_TOPIC, endpoint=url, payload="full-resource",
            who=f"cli:{getpass.getuser()}",
            resource={"name": name, "receiving_application": receiving_application,
                      "receiving_facility": receiving_facility},
        )  # fmt: skip
        outbox.mark_handshake(engine, sub.id)  # HL7 has no handshake: active at once
    click.echo(sub.id)


@deliver_cmd.command(name="list")
def list_cmd() -> None:
    """List the HL7 v2 destinations: id, status, delivered/queued events, name, endpoint."""
    from .deliver_hl7 import KIND

    with _database() as engine:
        subs = outbox.list_subscribers(engine, KIND)
    for sub in subs:
        click.echo(
            f"{sub.id}\t{sub.status}\t{sub.delivered_through}/{sub.events_since_start}\t"
            f"{sub.resource.get('name', '')}\t{sub.endpoint}\t{sub.last_error or ''}"
        )


@deliver_cmd.command(name="off")
@click.argument("subscriber_id")
def off_cmd(subscriber_id: str) -> None:
    """Stop sending to a destination (status off; its outbox rows are kept)."""
    with _database() as engine:
        found = outbox.switch_off(engine, subscriber_id)
    if not found:
        raise click.ClickException(f"no subscriber {subscriber_id}")


COMMANDS: tuple[click.Command, ...] = (deliver_cmd,)
