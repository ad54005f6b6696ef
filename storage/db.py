"""Engines, migrations and idempotent batched writes of scores and alerts.

SQLite by default (a file under ``var/``), PostgreSQL when the URL says
``postgresql+psycopg://...``. The write path is what the Faust agents call:

* :func:`write_scores` / :func:`write_alerts` write one batch in **one transaction**
  with ``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` built from the dialect's
  ``insert`` (``sqlite.insert`` with multi-row VALUES; ``postgresql.insert(...)
  .from_select(jsonb_to_recordset(:rows))`` so the whole batch is one JSON parameter) on
  the natural key (scores: patient, scored_at, model, model_version; alerts: alert_id).
  A batch redelivered after a crash is stored once; they return how many rows were
  *newly* inserted.
* Rows are sorted by their natural key before inserting, so concurrent writers with
  overlapping batches take row locks in the same order and cannot deadlock.
* Every database error is classified by :func:`storage.errors.classify` into
  :class:`~storage.errors.StoragePermanentError` (dead-letter) or
  :class:`~storage.errors.StorageUnavailable` (retry with backoff, then stop without
  committing offsets). Nothing here retries by itself: the caller owns the retry policy.

Row types are frozen keyword-only dataclasses (:class:`ScoreRow`, :class:`AlertRow`)
rather than TypedDicts: construction is checked by mypy, defaults are explicit, rows are
immutable, and :func:`fetch_scores` returns values equal to what was written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Engine,
    Text,
    bindparam,
    case,
    cast,
    column,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL, make_url

from storage.errors import SchemaOutOfDate, StoragePermanentError, classified, classify
from storage.models import SEVERITIES, STATUSES, Alert, Patient, Score, UTCDateTime

Severity = Literal["info", "warning", "critical"]
AlertStatus = Literal["open", "acknowledged", "resolved"]

# Called inside a write's transaction with the ids of the rows it newly inserted.
InTransaction = Callable[[Connection, list[int]], None]
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10
SCORE_KEY: tuple[str, ...] = ("patient", "scored_at", "model", "model_version")
ALERT_KEY: tuple[str, ...] = ("alert_id",)
MIGRATION_LOCK_KEY = 0x5741_5244_5741_5443  # "WARDWATC": pg advisory lock for migrate()


@dataclass(frozen=True, slots=True, kw_only=True)
class ScoreRow:
    """One row of ``scores``.

    ``risk`` is the model's probability in [0, 1], or None when the model was unavailable
    (then ``degraded`` must be True). ``news2_breakdown`` is ``News2Result.breakdown``;
    ``features`` what the model saw (JSON; NaN and infinities are stored as null).
    ``event_offset`` is ``topic/partition/offset`` of the input record, None for offline scoring.
    ``scored_at`` must be timezone-aware; it is read back in UTC.
    """

    patient: str
    scored_at: datetime
    model: str
    model_version: str
    risk: float | None
    degraded: bool = False
    news2: int | None = None
    news2_breakdown: dict[str, Any] = field(default_factory=dict)
    qsofa: int | None = None
    sirs: int | None = None
    alert: bool = False
    features: dict[str, Any] | None = None
    event_offset: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertRow:
    """One row of ``alerts``; ``alert_id`` is deterministic (see :mod:`inference.scoring.alerts`).

    Times must be timezone-aware; they are read back in UTC.
    """

    alert_id: str
    patient: str
    raised_at: datetime
    severity: Severity
    reason: str
    risk: float | None = None
    news2: int | None = None
    explanation: dict[str, Any] = field(default_factory=dict)
    status: AlertStatus = "open"
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None


# ------------------------------------------------------------------ engines


def _json_dumps(value: Any) -> str:
    """JSON for the JSON columns: NaN and ±Infinity (not JSON; model features use NaN for
    "not measured") become null; numpy arrays and scalars are accepted; a non-string dict
    key or an unserialisable object raises TypeError (a permanent error for the batch)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _sqlite_pragmas(busy_timeout_ms: int, dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def make_engine(
    url: str | URL,
    *,
    echo: bool = False,
    busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    connect_args: Mapping[str, str] | None = None,
) -> Engine:
    """An engine for a SQLite or PostgreSQL URL.

    SQLite: WAL journal, foreign keys on, a 30 s busy timeout (``busy_timeout_ms``), set
    on every new connection by an event listener; the parent directory of the database
    file is created. PostgreSQL: ``pool_pre_ping`` (dead pooled connections are
    replaced), a 10 s connect timeout, and ``connect_args`` (libpq parameters such as
    sslmode, sslrootcert, sslcert, sslkey) over the URL's. JSON is serialised by orjson,
    NaN/Infinity as null.

    Raises :class:`ValueError` for another database, or ``connect_args`` for SQLite (not
    retried: configuration error);
    :class:`OSError` if the SQLite directory cannot be created. Connecting is lazy, so an
    unreachable server shows up at the first query, classified as StorageUnavailable.
    """
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        if connect_args:
            raise ValueError(
                f"PostgreSQL connection options ({', '.join(sorted(connect_args))}) are set "
                "but the database is SQLite"
            )
        if u.database and u.database != ":memory:" and not u.database.startswith("file:"):
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            u, echo=echo, json_serializer=_json_dumps, json_deserializer=orjson.loads
        )
        listener: Callable[[Any, Any], None] = partial(_sqlite_pragmas, busy_timeout_ms)
        event.listen(engine, "connect", listener)
        return engine
    if backend == "postgresql":
        pg_args: dict[str, Any] = {}
        if "connect_timeout" not in u.query:
            pg_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
        if "application_name" not in u.query:
            pg_args["application_name"] = "wardwatch"
        pg_args.update(connect_args or {})
        return create_engine(
            u,
            echo=echo,
            pool_pre_ping=True,
            connect_args=pg_args,
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
        )
    raise ValueError(f"unsupported database {backend!r}: use sqlite or postgresql")


# ------------------------------------------------------------------ migrations


def alembic_config(connection: Connection | None = None) -> Config:
    """A programmatic Alembic config for ``storage/migrations`` (no alembic.ini needed);
    with ``connection``, the migration runs on it. Raises nothing."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _run_alembic(url: str | URL | Engine, fn: Callable[[Config], None]) -> None:
    engine = url if isinstance(url, Engine) else make_engine(url)
    try:
        with classified(), engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Workers starting together migrate one after the other, not at once.
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            fn(alembic_config(conn))
    finally:
        if not isinstance(url, Engine):
            engine.dispose()


def migrate(url: str | URL | Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (default: the newest), in one transaction.

    Idempotent: a database already at ``revision`` is left alone. Raises
    :class:`~storage.errors.StorageUnavailable` when the database cannot be reached
    (retryable) and :class:`~storage.errors.StoragePermanentError` for data errors; other
    errors (a broken migration) propagate unchanged. Not retried here.
    """
    _run_alembic(url, lambda cfg: command.upgrade(cfg, revision))


def downgrade(url: str | URL | Engine, revision: str = "base") -> None:
    """Downgrade the schema to ``revision`` (default: empty). Raises as :func:`migrate`;
    not retried. Destroys data: for tests and operators only."""
    _run_alembic(url, lambda cfg: command.downgrade(cfg, revision))


def head_revision() -> str:
    """The newest revision of ``storage/migrations``. Raises RuntimeError (not retried)
    when the migrations are missing."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations under {MIGRATIONS_DIR}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated). Only reads: works for a
    role without DDL rights. Raises StorageUnavailable when the database cannot be
    reached; not retried."""
    with classified(), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def require_current_schema(engine: Engine) -> str:
    """Check, without changing anything, that the schema is at the newest revision; return
    it. For processes that must not run DDL (the API): an operator migrates with
    ``wardwatch db upgrade`` and the owner's URL.

    Raises :class:`~storage.errors.SchemaOutOfDate` (not retried: the caller stops with
    its message) when the database is behind, empty or at an unknown revision;
    StorageUnavailable when it cannot be reached (not retried).
    """
    head, current = head_revision(), current_revision(engine)
    if current != head:
        raise SchemaOutOfDate(
            f"the database schema is at revision {current or '(none)'}, this version needs "
            f"{head}: run `wardwatch db upgrade` (with the schema owner's URL in "
            "WARDWATCH_MIGRATION_DATABASE_URL) before starting it"
        )
    return head


# ------------------------------------------------------------------ writes


@contextmanager
def _classified(values_error_is_permanent: bool = False) -> Iterator[None]:
    try:
        yield
    except (sa_exc.SQLAlchemyError, OSError) as e:
        c = classify(e)
        if c is e:
            raise
        raise c from e
    except (ValueError, TypeError, OverflowError) as e:
        # Raised while binding a row's values (psycopg serialises JSON inside the driver,
        # so an unserialisable JSON value surfaces here unwrapped): the data is at fault.
        if not values_error_is_permanent:
            raise
        raise StoragePermanentError(f"{type(e).__name__}: {e}") from e


def _pg_recordset_insert(model: type[Score] | type[Alert], key: Sequence[str]) -> Any:
    """``INSERT ... SELECT ... FROM jsonb_to_recordset(:rows) ON CONFLICT DO NOTHING
    RETURNING id``: the whole batch travels as ONE JSON parameter (serialised by orjson
    in C) and is unpacked by the server, so the statement is small and cached whatever
    the batch size (a multi-VALUES insert spends most of its time in psycopg's
    placeholder parsing and array escaping). Times travel as RFC 3339 with offset."""
    table = model.__table__
    names = [c.name for c in table.columns if c.name not in ("id", "created_at")]
    typed = []
    for name in names:
        col_type = table.c[name].type
        if isinstance(col_type, JSON):
            typed.append(column(name, JSONB))
        elif isinstance(col_type, UTCDateTime):
            typed.append(column(name, DateTime(timezone=True)))
        else:
            typed.append(column(name, col_type))
    rows = (
        func.jsonb_to_recordset(cast(bindparam("rows", type_=Text), JSONB))
        .table_valued(*typed)
        .render_derived(with_types=True)
    )
    return (
        postgresql.insert(model)
        .from_select(names, select(*[rows.c[n] for n in names]))
        .on_conflict_do_nothing(index_elements=list(key))
        .returning(model.id)
    )


_PG_INSERT_SCORES = _pg_recordset_insert(Score, SCORE_KEY)
_PG_INSERT_ALERTS = _pg_recordset_insert(Alert, ALERT_KEY)


def _patient_states(params: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per patient of a score batch: first and last ``scored_at`` and the latest score's
    state, sorted by patient (the lock order of the upsert)."""
    out: dict[str, dict[str, Any]] = {}
    for p in params:
        cur = out.get(p["patient"])
        if cur is None:
            cur = out[p["patient"]] = {"patient": p["patient"], "first_seen": p["scored_at"]}
            cur["last_seen"] = p["scored_at"]
        elif p["scored_at"] < cur["first_seen"]:
            cur["first_seen"] = p["scored_at"]
            continue
        elif p["scored_at"] < cur["last_seen"]:
            continue
        cur.update(
            last_seen=p["scored_at"],
            last_risk=p["risk"],
            last_news2=p["news2"],
            last_qsofa=p["qsofa"],
            last_sirs=p["sirs"],
            last_degraded=bool(p["degraded"]),
            last_alert=bool(p["alert"]),
            last_model_version=p["model_version"],
        )
    return [out[k] for k in sorted(out)]


_STATE_COLUMNS = (
    "last_risk",
    "last_news2",
    "last_qsofa",
    "last_sirs",
    "last_degraded",
    "last_alert",
    "last_model_version",
)


def _patients_upsert(dialect: str) -> Any:
    """``INSERT INTO patients ... ON CONFLICT (patient) DO UPDATE``: first_seen = min,
    last_seen = max, and the state columns follow the newest score (so a late, older
    score never overwrites a newer state, and a replay changes nothing)."""
    ins: Any = postgresql.insert(Patient) if dialect == "postgresql" else sqlite.insert(Patient)
    if dialect == "postgresql":
        # the whole batch as ONE JSON parameter, as for the scores (see _pg_recordset_insert)
        table = Patient.__table__
        typed = [
            column(c.name, DateTime(timezone=True) if isinstance(c.type, UTCDateTime) else c.type)
            for c in table.columns
        ]
        rows = (
            func.jsonb_to_recordset(cast(bindparam("rows", type_=Text), JSONB))
            .table_valued(*typed)
            .render_derived(with_types=True)
        )
        names = [c.name for c in table.columns]
        ins = ins.from_select(names, select(*[rows.c[n] for n in names]))
    exc = ins.excluded
    tbl = Patient.__table__.c
    newer = exc.last_seen >= tbl.last_seen
    updates: dict[str, Any] = {
        "first_seen": case((exc.first_seen < tbl.first_seen, exc.first_seen), else_=tbl.first_seen),
        "last_seen": case((newer, exc.last_seen), else_=tbl.last_seen),
    }
    for name in _STATE_COLUMNS:
        updates[name] = case((newer, exc[name]), else_=tbl[name])
    return ins.on_conflict_do_update(index_elements=["patient"], set_=updates)


_UPSERT_PATIENTS = {d: _patients_upsert(d) for d in ("postgresql", "sqlite")}


def _upsert_patients(conn: Connection, params: Sequence[dict[str, Any]]) -> None:
    """Upsert ``patients`` from a score batch (one row per patient, in patient order)."""
    states = _patient_states(params)
    if not states:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(_UPSERT_PATIENTS["postgresql"], {"rows": _json_dumps(states)})
    else:
        conn.execute(_UPSERT_PATIENTS["sqlite"], states)


def _write(
    engine: Engine,
    model: type[Score] | type[Alert],
    key: Sequence[str],
    params: list[dict[str, Any]],
    then: InTransaction | None = None,
) -> int:
    """Insert ``params`` (sorted by ``key``) in one transaction; return rows inserted.
    For scores, ``patients`` is upserted in the same transaction; ``then`` is called in
    it with the ids of the rows newly inserted (the alert outbox)."""
    name = engine.dialect.name
    if name == "postgresql":
        pg_stmt = _PG_INSERT_SCORES if model is Score else _PG_INSERT_ALERTS
        with _classified(values_error_is_permanent=True):
            doc = _json_dumps(params)
            with engine.begin() as conn:
                ids = [r[0] for r in conn.execute(pg_stmt, {"rows": doc}).all()]
                if model is Score:
                    _upsert_patients(conn, params)
                if then is not None and ids:
                    then(conn, ids)
                return len(ids)
    if name == "sqlite":
        stmt = (
            sqlite.insert(model)
            .on_conflict_do_nothing(index_elements=list(key))
            .returning(model.id)
        )
        with _classified(values_error_is_permanent=True), engine.begin() as conn:
            ids = [r[0] for r in conn.execute(stmt, params).all()]
            if model is Score:
                _upsert_patients(conn, params)
            if then is not None and ids:
                then(conn, ids)
            return len(ids)
    raise ValueError(f"unsupported database {name!r}")  # pragma: no cover - make_engine


def _as_params(row: ScoreRow | AlertRow) -> dict[str, Any]:
    return {f.name: getattr(row, f.name) for f in fields(row)}


def _aware(value: datetime | None) -> bool:
    return value is None or (value.tzinfo is not None and value.utcoffset() is not None)


def _bad_score(row: ScoreRow) -> str | None:
    if not isinstance(row.patient, str) or not row.patient.strip():
        return "patient pseudonym is empty"
    if not _aware(row.scored_at):
        return "scored_at has no time zone"
    if not row.model or not row.model_version:
        return "model or model_version is empty"
    if row.risk is None:
        if not row.degraded:
            return "risk is missing but the score is not marked degraded"
    elif not (math.isfinite(row.risk) and 0.0 <= row.risk <= 1.0):
        return f"risk {row.risk!r} is not a probability"
    for name, value, top in (
        ("news2", row.news2, 20),
        ("qsofa", row.qsofa, 3),
        ("sirs", row.sirs, 4),
    ):
        if value is not None and not 0 <= value <= top:
            return f"{name} {value!r} is outside 0..{top}"
    return None


def _bad_alert(row: AlertRow) -> str | None:
    if not row.alert_id:
        return "alert_id is empty"
    if not isinstance(row.patient, str) or not row.patient.strip():
        return "patient pseudonym is empty"
    if not (_aware(row.raised_at) and _aware(row.acknowledged_at) and _aware(row.resolved_at)):
        return "a time has no time zone"
    if row.severity not in SEVERITIES:
        return f"severity {row.severity!r} is not one of {SEVERITIES}"
    if row.status not in STATUSES:
        return f"status {row.status!r} is not one of {STATUSES}"
    if row.risk is not None and not (math.isfinite(row.risk) and 0.0 <= row.risk <= 1.0):
        return f"risk {row.risk!r} is not a probability"
    return None


def write_scores(engine: Engine, rows: Sequence[ScoreRow]) -> int:
    """Insert one batch of scores in one transaction; rows already stored are skipped.

    The ``patients`` rows of the batch's patients are upserted in the same transaction
    (first_seen = min, last_seen = max, state of the newest score), so a replay changes
    nothing. Returns the number of score rows newly inserted (0 for an empty batch or a
    full replay).
    Raises :class:`~storage.errors.StoragePermanentError` (dead-letter, not retried) when a
    row is invalid — checked before touching the database, with ``row_index`` set — or
    the database rejects the batch (constraint or data error: the whole batch is rolled
    back); :class:`~storage.errors.StorageUnavailable` (retry with backoff, then stop
    without committing offsets) when the database is unreachable, locked or busy.
    Does not retry by itself.
    """
    if not rows:
        return 0
    for i, row in enumerate(rows):
        bad = _bad_score(row)
        if bad is not None:
            raise StoragePermanentError(f"score row {i}: {bad}", row_index=i)
    params = sorted(
        (_as_params(r) for r in rows),
        key=lambda d: (d["patient"], d["scored_at"], d["model"], d["model_version"]),
    )
    return _write(engine, Score, SCORE_KEY, params)


def write_alerts(
    engine: Engine, rows: Sequence[AlertRow], then: InTransaction | None = None
) -> int:
    """Insert one batch of alerts in one transaction; alert ids already stored are skipped
    (the stored alert, including its workflow status, is left as it is). ``then`` (e.g.
    :func:`storage.outbox.enqueue`) runs in the same transaction with the new rows' ids;
    what it raises rolls the batch back.

    Returns the number of rows newly inserted. Raises exactly as :func:`write_scores`:
    :class:`~storage.errors.StoragePermanentError` (dead-letter, not retried; ``row_index``
    set for rows rejected before the database) or
    :class:`~storage.errors.StorageUnavailable` (retry, then stop uncommitted). Does not
    retry by itself.
    """
    if not rows:
        return 0
    for i, row in enumerate(rows):
        bad = _bad_alert(row)
        if bad is not None:
            raise StoragePermanentError(f"alert row {i}: {bad}", row_index=i)
    params = sorted((_as_params(r) for r in rows), key=lambda d: d["alert_id"])
    return _write(engine, Alert, ALERT_KEY, params, then)


# ------------------------------------------------------------------ reads


def count_scores(engine: Engine) -> int:
    """Number of rows in ``scores``. Raises StorageUnavailable (retryable) when the
    database is unreachable or not migrated; not retried here."""
    with _classified(), engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Score)).scalar_one())


def count_alerts(engine: Engine) -> int:
    """Number of rows in ``alerts``. Raises as :func:`count_scores`; not retried."""
    with _classified(), engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Alert)).scalar_one())


def fetch_scores(engine: Engine, patient: str | None = None) -> list[ScoreRow]:
    """All scores (of one patient if given), ordered by patient, scored_at, model,
    model_version. Raises as :func:`count_scores`; not retried."""
    fields = [getattr(Score, name) for name in ScoreRow.__dataclass_fields__]
    stmt = select(*fields).order_by(
        Score.patient, Score.scored_at, Score.model, Score.model_version
    )
    if patient is not None:
        stmt = stmt.where(Score.patient == patient)
    with _classified(), engine.connect() as conn:
        return [ScoreRow(**m) for m in conn.execute(stmt).mappings()]


def fetch_alerts(engine: Engine, patient: str | None = None) -> list[AlertRow]:
    """All alerts (of one patient if given), ordered by raised_at, alert_id. Raises as
    :func:`count_scores`; not retried."""
    fields = [getattr(Alert, name) for name in AlertRow.__dataclass_fields__]
    stmt = select(*fields).order_by(Alert.raised_at, Alert.alert_id)
    if patient is not None:
        stmt = stmt.where(Alert.patient == patient)
    with _classified(), engine.connect() as conn:
        return [AlertRow(**m) for m in conn.execute(stmt).mappings()]
