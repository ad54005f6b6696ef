"""``wardwatch`` commands for the edge: gateway, convert, dead letters."""

from __future__ import annotations

import asyncio
import signal
from datetime import datetime
from pathlib import Path

import click

from .settings import Settings


def _settings() -> Settings:
    from .cli_context import settings

    return settings()


@click.command(name="gateway")
@click.option("--mllp-port", type=int, default=None, help="Override WARDWATCH_GATEWAY_MLLP_PORT.")
@click.option("--http-port", type=int, default=None, help="Override WARDWATCH_GATEWAY_HTTP_PORT.")
def gateway_cmd(mllp_port: int | None, http_port: int | None) -> None:
    """Run the edge gateway: HL7 v2 over MLLP and FHIR R4 over HTTP, into fhir.inbound.

    \b
    MLLP (default port 2575): ADT A01 A02 A03 A04 A08 A11 A13 and ORU^R01. Each message is
    mapped to a pseudonymised FHIR transaction Bundle (fhir/data/hl7v2.yaml) and answered
    AA only once Kafka acknowledged it; AE/AR (reason in MSA-3 and ERR) otherwise, the
    original bytes going to the dead-letter topic. Resends (same MSH-10 from the same
    MSH-3/MSH-4) are answered AA and not published twice.
    FHIR (default port 8081): POST /fhir/{type}, PUT /fhir/{type}/{id}, POST /fhir with a
    batch, transaction or subscription-notification Bundle, GET /fhir/metadata.
    202 (or the batch response) once Kafka has the data; 4xx + OperationOutcome for bad input.

    Stop with Ctrl-C (SIGINT) or SIGTERM: it stops listening and flushes Kafka.
    """
    from .cli_context import require_safe
    from .gateway import run_gateway

    s = _settings()
    require_safe(s, "gateway", database=False, dead_letters=True)
    updates: dict[str, object] = {}
    if mllp_port is not None:
        updates["gateway_mllp_port"] = mllp_port
    if http_port is not None:
        updates["gateway_http_port"] = http_port
    if updates:
        s = s.model_copy(update=updates)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_gateway(s, stop)

    try:
        asyncio.run(main())
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen: {exc}; is another gateway running? choose other ports with "
            "--mllp-port/--http-port"
        ) from exc


@click.command(name="convert")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Canonical events, one JSON object per line.",
)
@click.option(
    "--rejects",
    type=click.Path(path_type=Path),
    required=True,
    help="Rejected inputs and Bundle entries: input, position, reason per line.",
)
@click.option(
    "--psv-sample", type=int, default=0, help="Take only the first N .psv files (0: all)."
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def convert_cmd(
    inputs: tuple[Path, ...], out: Path, rejects: Path, psv_sample: int, no_progress: bool
) -> None:
    """Run the edge's parsing offline: INPUTS -> canonical events + rejects (no Kafka).

    INPUTS are files or folders (searched for *.json, *.ndjson, *.jsonl, *.hl7, *.psv):
    FHIR resources and Bundles, FHIR Bulk Data NDJSON, HL7 v2 files with one or many
    messages, PhysioNet .psv. Identity is pseudonymised as at the gateway. Each --out line
    has patient (pseudonym), time (ISO 8601), code, loinc, value, unit; each --rejects line
    has input, position (file, file:line or file:message N) and reason. A summary per file
    kind and per code is printed at the end; the exit status is 1 if an input crashed the
    parser (a bug), never for bad input.
    """
    from .convert import convert, summary_lines

    stats = convert(
        list(inputs), out, rejects, _settings(), psv_sample=psv_sample, progress=not no_progress
    )
    for line in summary_lines(stats):
        click.echo(line)
    if stats.crashes:
        raise SystemExit(1)


@click.group(name="dlq")
def dlq_group() -> None:
    """Inspect and re-drive dead letters (WARDWATCH_TOPIC_DLQ)."""


@dlq_group.command(name="list")
@click.option("--limit", type=int, default=50, help="Show at most N (the newest; 0: all).")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="Only dead letters written at or after this UTC time.",
)
def dlq_list_cmd(limit: int, since: datetime | None) -> None:
    """Print dead letters as a table: partition:offset, time, stage, size, key id and
    reason. Shows no payload (see `dlq show --decrypt`); reasons quote no values."""
    from datetime import UTC

    from .dlq import format_table, read_dead_letters

    s = _settings()
    try:
        letters = list(read_dead_letters(s, since=since.replace(tzinfo=UTC) if since else None))
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    shown = letters[-limit:] if limit > 0 else letters
    for line in format_table(shown):
        click.echo(line)
    click.echo(f"{len(shown)} of {len(letters)} dead letters on {s.topic_dlq}")


@dlq_group.command(name="show")
@click.argument("position")
@click.option(
    "--decrypt",
    is_flag=True,
    help="Decrypt and print the original bytes (patient data: audited first).",
)
def dlq_show_cmd(position: str, decrypt: bool) -> None:
    """Print one dead letter (POSITION is PARTITION:OFFSET, see `dlq list`): its headers
    and, with --decrypt, its original bytes. The read is written to the audit log
    (WARDWATCH_DATABASE_URL) before anything is decrypted; no audit, no plaintext."""
    from storage import access
    from storage.db import make_engine, migrate
    from storage.errors import StorageError

    from .cli_context import who
    from .dlq import read_dead_letters
    from .sealing import key_ring

    p, _, off = position.partition(":")
    if not (p.isdigit() and off.isdigit()):
        raise click.BadParameter(f"{position!r} is not PARTITION:OFFSET", param_hint="POSITION")
    s = _settings()
    try:
        found = [d for d in read_dead_letters(s) if (d.partition, d.offset) == (int(p), int(off))]
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    if not found:
        raise click.ClickException(f"no dead letter at {position} on {s.topic_dlq}")
    d = found[0]
    for name, value in sorted(d.headers.items()):
        click.echo(f"{name}: {value}")
    click.echo(f"bytes: {d.size} ({'encrypted, key ' + d.key_id if d.sealed else 'plain'})")
    if not decrypt:
        return
    from .cli_context import require_safe

    require_safe(s, "dlq show --decrypt", dead_letters=True)
    try:
        ring = key_ring(s)
        engine = make_engine(s.database_url)
        migrate(engine)
        # before decrypting: a read of patient data that cannot be audited is not made
        access.audit(
            engine,
            access.Principal(who(), "cli"),
            "decrypt",
            f"dead letter {d.topic}/{d.partition}/{d.offset} (stage {d.stage})",
        )
        original = d.original(ring)
    except (ValueError, StorageError) as exc:  # bad key, unopenable record, no audit
        raise click.ClickException(str(exc)) from exc
    click.echo("--- original bytes")
    click.echo(original.decode("utf-8", "replace").replace("\r", "\n"))


@dlq_group.command(name="replay")
@click.option(
    "--offset",
    "offsets",
    multiple=True,
    help="A dead letter to re-drive, as PARTITION:OFFSET (see `dlq list`); repeatable.",
)
@click.option("--all", "all_", is_flag=True, help="Re-drive every dead letter.")
@click.option("--dry-run", is_flag=True, help="Say what would be sent; send nothing.")
def dlq_replay_cmd(offsets: tuple[str, ...], all_: bool, dry_run: bool) -> None:
    """Decrypt dead letters and send them back to fhir.inbound after a fix.

    What the gateway refused goes through its pseudonymisation again: HL7 v2 is mapped
    again with the current fhir/data/hl7v2.yaml, FHIR pseudonymised again (still refused:
    reported, not sent). What the stream refused goes as its original bytes under its
    original key. Each re-driven message carries a wardwatch.redrive header.
    """
    from .dlq import read_dead_letters, redrive

    if not offsets and not all_:
        raise click.UsageError(
            "name dead letters with --offset P:O (see `wardwatch dlq list`) or use --all"
        )
    wanted: set[tuple[int, int]] = set()
    for o in offsets:
        p, _, off = o.partition(":")
        if not (p.isdigit() and off.isdigit()):
            raise click.BadParameter(f"{o!r} is not PARTITION:OFFSET", param_hint="--offset")
        wanted.add((int(p), int(off)))
    s = _settings()
    from .cli_context import require_safe

    require_safe(s, "dlq replay", database=False, dead_letters=True)
    try:
        letters = [d for d in read_dead_letters(s) if all_ or (d.partition, d.offset) in wanted]
        missing = wanted - {(d.partition, d.offset) for d in letters}
        if missing:
            raise click.ClickException(
                f"no dead letter at {', '.join(f'{p}:{o}' for p, o in sorted(missing))} on "
                f"{s.topic_dlq}; see `wardwatch dlq list`"
            )
        results = redrive(s, letters, dry_run=dry_run)
    except (RuntimeError, ValueError) as exc:  # Kafka away; no usable dead-letter key
        raise click.ClickException(str(exc)) from exc
    for r in results:
        verb = (
            "would send"
            if dry_run and "refused" not in r.note
            else ("sent" if r.sent else "skipped")
        )
        click.echo(f"{r.letter.position:<17} {verb:<10} {r.note[:120]}")
    sent = sum(1 for r in results if r.sent)
    click.echo(
        f"{'dry run: ' if dry_run else ''}{sent} of {len(results)} re-driven to {s.topic_inbound}"
    )


COMMANDS: tuple[click.Command, ...] = (gateway_cmd, convert_cmd, dlq_group)
