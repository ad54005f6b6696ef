"""``wardwatch`` commands for analyst and alerting access: api, token, scores, alerts,
export, purge.

Every command reads the same database settings as the worker (``WARDWATCH_DATABASE_URL``)
and brings the schema up to date first (idempotent), except ``api``, which only checks it.
Every read of scores or alerts and every export is written to the audit log (who:
``cli:<login name>``, role ``cli``; the patients returned and the query's hash) before
anything is printed or the export file is moved into place. A database that cannot be reached
ends the command with a one-line error and exit status 1; nothing is retried.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Engine

from storage import access
from storage.db import make_engine, migrate, require_current_schema
from storage.errors import StorageError
from storage.models import ROLES

from .client_security import database_connect_args

EXPORT_COLUMNS = tuple(
    c for c in access.SCORE_COLUMNS if c != "id"
)  # the scores table, less its key


@contextmanager
def _database() -> Iterator[Engine]:
    """The migrated engine of the configured database; storage errors become a
    ClickException (exit 1) with the reason."""
    from .cli_context import settings

    s = settings()
    engine = make_engine(s.database_url, connect_args=database_connect_args(s))
    try:
        migrate(engine)
        yield engine
    except StorageError as exc:
        raise click.ClickException(f"database: {exc.reason}") from exc
    finally:
        engine.dispose()


def _when(value: str | None, name: str) -> datetime | None:
    """An ISO date or date-time; without a zone it is taken as UTC."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r} is not an ISO date or time (e.g. 2026-01-01 or 2026-01-01T08:00Z)",
            param_hint=name,
        ) from exc
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _audit_read(
    engine: Engine, what: str, resource: str, patients: Any, query: dict[str, Any]
) -> None:
    """Audit one CLI read (action ``read``, or ``export``). Raises StorageUnavailable
    (not retried: the command fails and shows nothing rather than unaudited data)."""
    from .cli_context import who

    access.audit(
        engine,
        access.Principal(who(), "cli"),
        "export" if what == "export" else "read",
        resource,
        query.get("patient"),
        patients=patients,
        query=access.query_sha256(what, query),
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


# ------------------------------------------------------------------ api


@click.command(name="api")
@click.option("--host", default=None, help="Address to listen on (default: WARDWATCH_API_HOST).")
@click.option(
    "--port", type=int, default=None, help="Port to listen on (default: WARDWATCH_API_PORT)."
)
def api_cmd(host: str | None, port: int | None) -> None:
    """Serve the analyst API and the dashboard (default http://127.0.0.1:8080/).

    \b
    Endpoints (OpenAPI docs at /docs):
      GET  /scores                       analyst, admin
      GET  /patients/{patient}/timeline  analyst, admin
      GET  /alerts, /alerts/stream (SSE) analyst, alerting, admin
      POST /alerts/{id}/acknowledge      alerting, admin
      POST /alerts/{id}/resolve          alerting, admin
      GET  /fhir/RiskAssessment[/{id}]   analyst, admin (FHIR R4 search/read)
      GET  /cds-services, /fhir/metadata no token
      POST /cds-services/{id}[/feedback] the EHR's signed JWT (CDS Hooks 2.0)
      GET  /health, /ready               no token
    Clients send `Authorization: Bearer <token>` (see `wardwatch token create`).
    Reads the same database as the worker (WARDWATCH_DATABASE_URL). It never migrates
    it (its role has no DDL rights): a schema behind this version's stops it at start-up
    with "run `wardwatch db upgrade`". Only in development mode on SQLite does it bring
    the schema up to date itself.
    """
    from .api import serve, server_config
    from .cli_context import require_safe, settings
    from .tls import TlsConfigError, TlsFiles

    s = settings()
    if host:  # the address the checks judge is the one it will listen on
        s = s.model_copy(update={"api_host": host})
    require_safe(s, "api")
    try:
        tls = TlsFiles.of(
            s.api_tls_cert, s.api_tls_key, s.api_tls_client_ca, s.tls_min_version, "api"
        )
    except TlsConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    engine = make_engine(s.database_url)
    try:
        if s.dev_mode and engine.dialect.name == "sqlite":
            migrate(engine)  # the embedded development database only
        require_current_schema(engine)
    except StorageError as exc:
        engine.dispose()
        raise click.ClickException(f"database: {exc.reason}") from exc
    try:
        config = server_config(
            engine,
            s.api_host,
            port if port is not None else s.api_port,
            stream_poll_s=s.api_stream_poll_s,
            stream_recheck_s=s.api_stream_recheck_s,
            tls=tls,
            settings=s,
        )
        serve(config)
    except TlsConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()


# ------------------------------------------------------------------ tokens


@click.group(name="token")
def token_cmd() -> None:
    """Create, revoke and list API tokens (only their SHA-256 is stored)."""


@token_cmd.command(name="create")
@click.option("--role", required=True, type=click.Choice(ROLES), help="What the token may do.")
@click.option("--name", required=True, help="Who holds it (unique; shown in the audit log).")
def token_create(role: str, name: str) -> None:
    """Create a token and print it once, alone on the last line.

    \b
    Roles: analyst   read scores and alerts
           alerting  read, acknowledge and resolve alerts
           admin     everything
    """
    with _database() as engine:
        try:
            token = access.create_token(engine, name, role)
        except access.TokenError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"Created {role} token {name!r}. It is shown only now; store it safely:")
    click.echo(token)


@token_cmd.command(name="revoke")
@click.argument("name")
def token_revoke(name: str) -> None:
    """Revoke the token NAME; it stops working at once."""
    with _database() as engine:
        try:
            access.revoke_token(engine, name)
        except access.TokenError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"Revoked token {name!r}.")


@token_cmd.command(name="list")
def token_list() -> None:
    """List tokens: name, role, created, revoked (never the token)."""
    from rich.console import Console
    from rich.table import Table

    with _database() as engine:
        rows = access.list_tokens(engine)
    table = Table("name", "role", "created (UTC)", "revoked (UTC)")
    for r in rows:
        table.add_row(r["name"], r["role"], _fmt(r["created_at"]), _fmt(r["revoked_at"]))
    Console().print(table)


# ------------------------------------------------------------------ tables


@click.command(name="scores")
@click.option("--patient", default=None, help="Only this pseudonym.")
@click.option("--from", "start", default=None, help="From this time (ISO; UTC if no zone).")
@click.option("--to", "end", default=None, help="Before this time (ISO; UTC if no zone).")
@click.option("--min-risk", type=click.FloatRange(0, 1), default=None, help="Risk at least.")
@click.option("--model", default=None, help="Model name or version.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
def scores_cmd(
    patient: str | None,
    start: str | None,
    end: str | None,
    min_risk: float | None,
    model: str | None,
    limit: int,
) -> None:
    """Print stored scores as a table (the newest LIMIT matching, oldest first)."""
    from rich.console import Console
    from rich.table import Table

    t0, t1 = _when(start, "--from"), _when(end, "--to")
    with _database() as engine:
        rows, _ = access.query_scores(
            engine,
            patient=patient,
            start=t0,
            end=t1,
            min_risk=min_risk,
            model=model,
            limit=limit,
            with_features=False,
            newest=True,
        )
        query = {"patient": patient, "from": t0, "to": t1, "min_risk": min_risk}
        query |= {"model": model, "limit": limit, "newest": True}
        _audit_read(
            engine, "scores", "cli scores " + _args(query), [r["patient"] for r in rows], query
        )
    table = Table(
        "scored at (UTC)", "patient", "model", "risk", "NEWS2", "qSOFA", "SIRS", "flags",
        title=f"{len(rows)} scores",
    )  # fmt: skip
    for r in rows:
        flags = " ".join(f for f, on in (("degraded", r["degraded"]), ("alert", r["alert"])) if on)
        table.add_row(
            _fmt(r["scored_at"]),
            r["patient"],
            f"{r['model']}:{r['model_version']}",
            _fmt(r["risk"]),
            _fmt(r["news2"]),
            _fmt(r["qsofa"]),
            _fmt(r["sirs"]),
            flags,
        )
    Console().print(table)


@click.command(name="alerts")
@click.option("--status", type=click.Choice(("open", "acknowledged", "resolved")), default=None)
@click.option("--severity", type=click.Choice(("info", "warning", "critical")), default=None)
@click.option("--since", default=None, help="Raised at or after (ISO; UTC if no zone).")
@click.option("--patient", default=None, help="Only this pseudonym.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
def alerts_cmd(
    status: str | None, severity: str | None, since: str | None, patient: str | None, limit: int
) -> None:
    """Print alerts as a table, newest first."""
    from rich.console import Console
    from rich.table import Table

    t0 = _when(since, "--since")
    with _database() as engine:
        rows = access.query_alerts(
            engine, status=status, severity=severity, since=t0, patient=patient, limit=limit
        )
        query: dict[str, Any] = {"status": status, "severity": severity, "since": t0}
        query |= {"patient": patient, "limit": limit}
        _audit_read(
            engine, "alerts", "cli alerts " + _args(query), [r["patient"] for r in rows], query
        )
    table = Table(
        "raised at (UTC)", "alert", "patient", "severity", "risk", "NEWS2", "reason", "status",
        title=f"{len(rows)} alerts",
    )  # fmt: skip
    colour = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
    for r in rows:
        who = r["acknowledged_by"] or r["resolved_by"]
        table.add_row(
            _fmt(r["raised_at"]),
            r["alert_id"][:12],
            r["patient"],
            f"[{colour[r['severity']]}]{r['severity']}[/]",
            _fmt(r["risk"]),
            _fmt(r["news2"]),
            r["reason"],
            r["status"] + (f" ({who})" if who else ""),
        )
    Console().print(table)


# ------------------------------------------------------------------ export


def _args(query: dict[str, Any]) -> str:
    """The query's parameters as ``name=value`` words for the audit row's resource."""
    return " ".join(
        f"{k}={v.isoformat() if isinstance(v, datetime) else v}"
        for k, v in query.items()
        if v is not None
    )


def _noting_patients(chunks: Iterator[list[dict[str, Any]]], seen: set[str]) -> Iterator[Any]:
    """``chunks`` unchanged, adding each row's patient to ``seen`` (for the audit)."""
    for chunk in chunks:
        seen.update(r["patient"] for r in chunk)
        yield chunk


def _export_value(name: str, value: Any) -> Any:
    if name in ("news2_breakdown", "features"):
        return None if value is None else json.dumps(value, separators=(",", ":"))
    return value


@click.command(name="export")
@click.argument("what", type=click.Choice(("scores",)))
@click.option("--from", "start", default=None, help="From this time (ISO; UTC if no zone).")
@click.option("--to", "end", default=None, help="Before this time (ISO; UTC if no zone).")
@click.option("--patient", default=None, help="Only this pseudonym.")
@click.option(
    "--format", "fmt", type=click.Choice(("csv", "parquet")), default="csv", show_default=True
)
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="File.")
def export_cmd(
    what: str, start: str | None, end: str | None, patient: str | None, fmt: str, out_path: Path
) -> None:
    """Write scores in [--from, --to) to a CSV or Parquet file, oldest first.

    Columns: patient, scored_at (UTC), model, model_version, risk, degraded, news2,
    news2_breakdown (JSON), qsofa, sirs, alert, features (JSON), event_offset. Rows are
    read in pages, so memory stays bounded. The file is written next to OUT and renamed
    into place when complete.
    """
    t0, t1 = _when(start, "--from"), _when(end, "--to")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    n = 0
    exported: set[str] = set()
    with _database() as engine:
        chunks = _noting_patients(
            access.iter_scores(engine, start=t0, end=t1, patient=patient), exported
        )
        if fmt == "csv":
            with tmp.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(EXPORT_COLUMNS)
                for chunk in chunks:
                    for r in chunk:
                        w.writerow(
                            [
                                r["scored_at"].isoformat()
                                if c == "scored_at"
                                else _export_value(c, r[c])
                                for c in EXPORT_COLUMNS
                            ]
                        )
                    n += len(chunk)
        else:
            import pyarrow as pa  # type: ignore[import-untyped]
            import pyarrow.parquet as pq  # type: ignore[import-untyped]

            schema = pa.schema(
                [
                    ("patient", pa.string()),
                    ("scored_at", pa.timestamp("us", tz="UTC")),
                    ("model", pa.string()),
                    ("model_version", pa.string()),
                    ("risk", pa.float64()),
                    ("degraded", pa.bool_()),
                    ("news2", pa.int16()),
                    ("news2_breakdown", pa.string()),
                    ("qsofa", pa.int16()),
                    ("sirs", pa.int16()),
                    ("alert", pa.bool_()),
                    ("features", pa.string()),
                    ("event_offset", pa.string()),
                ]
            )
            with pq.ParquetWriter(tmp, schema) as writer:
                for chunk in chunks:
                    cols = {c: [_export_value(c, r[c]) for r in chunk] for c in EXPORT_COLUMNS}
                    writer.write_table(pa.table(cols, schema=schema))
                    n += len(chunk)
        # Audited before the file is moved into place: a failed audit leaves no export.
        query = {"what": what, "from": t0, "to": t1, "patient": patient, "format": fmt}
        try:
            _audit_read(engine, "export", f"cli export {_args(query)} ({n} rows)", exported, query)
        except StorageError:
            tmp.unlink(missing_ok=True)
            raise
    tmp.replace(out_path)
    click.echo(f"exported {n} {what} to {out_path} ({fmt})")


# ------------------------------------------------------------------ retention


@click.command(name="purge")
@click.option(
    "--days",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Keep this many days (default: WARDWATCH_RETENTION_DAYS).",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
def purge_cmd(days: float | None, dry_run: bool) -> None:
    """Delete scores, alerts, dead-letter entries and patients older than the retention.

    Scores by scored_at, alerts by raised_at, dead letters by received_at, patients by
    last_seen; one transaction. The audit log and API tokens are kept.
    """
    from .cli_context import settings

    keep = days if days is not None else settings().retention_days
    with _database() as engine:
        counts = access.purge(engine, keep, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    parts = ", ".join(f"{n} {table}" for table, n in counts.items())
    click.echo(f"{verb} {parts} (older than {keep:g} days)")


COMMANDS: tuple[click.Command, ...] = (
    api_cmd,
    token_cmd,
    scores_cmd,
    alerts_cmd,
    export_cmd,
    purge_cmd,
)
